//! Decoding one image file: format detection from the content, EXIF orientation, and the checks that turn a
//! file a decoder would half-read into an error naming the file.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat};

use crate::error::{DataError, Result};

/// How image files are read. The default is what a photo viewer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOptions {
    /// Keep the stored pixel order even when the file's EXIF `Orientation` tag says the camera was rotated.
    /// Off by default: phone photos are often stored sideways or upside down with the tag saying so, and a
    /// model trained on the stored pixels learns rotated objects.
    pub ignore_exif: bool,
}

/// Decodes the image file at `path`, detecting the format from its content rather than its extension
/// (files saved with the wrong extension are common in scraped data sets), and rotates/flips it as its EXIF
/// `Orientation` tag says unless `options.ignore_exif`.
///
/// A JPEG whose data stops before its end-of-image marker is refused: the decoder would otherwise fill the
/// missing rows with grey and the sample would train as if it were a real picture.
pub(crate) fn decode_file(path: &Path, options: ReadOptions) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let reader = image::ImageReader::new(Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let format = match reader.format() {
        None => return Err(not_an_image(path, &bytes)),
        Some(f) => f,
    };
    match format {
        ImageFormat::Jpeg => check_jpeg_complete(path, &bytes)?,
        ImageFormat::WebP => check_riff_complete(path, &bytes)?,
        _ => {}
    }
    let decode_error = |source| decode_error(path, format, bytes.len(), source);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = if options.ignore_exif {
        image::metadata::Orientation::NoTransforms
    } else {
        decoder.orientation().map_err(decode_error)?
    };
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(DataError::Input {
            what: path.display().to_string(),
            message: "the image has zero width or height".into(),
        });
    }
    Ok(image)
}

/// The error for a file whose content matches no image format, saying what it looks like where that is
/// easy to tell (text and HTML files saved under image names are common in scraped data sets).
fn not_an_image(path: &Path, bytes: &[u8]) -> DataError {
    let head = &bytes[..bytes.len().min(512)];
    let looks_like = if bytes.is_empty() {
        "the file is empty"
    } else if head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        if text.trim_start().starts_with('<') && text.contains("html") {
            "it is an HTML page (a failed download?)"
        } else {
            "it is a text file"
        }
    } else {
        "its first bytes match no image format"
    };
    DataError::Unreadable {
        what: path.display().to_string(),
        message: format!(
            "not an image: {looks_like}; replace the file or delete it (readable formats: {})",
            super::source::IMAGE_EXTENSIONS.join(", ")
        ),
    }
}

/// The error for a file the decoder gave up on: a file that ends too early (the decoder's
/// "unexpected end of file", "not enough bytes"…) is called truncated, with the remedy; any
/// other decoder error keeps its text, named as a damaged file of its format.
fn decode_error(
    path: &Path,
    format: ImageFormat,
    len: usize,
    source: image::ImageError,
) -> DataError {
    let text = source.to_string().to_ascii_lowercase();
    let eof = matches!(&source, image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        || [
            "end of file",
            "not enough bytes",
            "unexpected eof",
            "unexpected end",
        ]
        .iter()
        .any(|t| text.contains(t));
    let name = format!("{format:?}").to_ascii_uppercase(); // JPEG, PNG, WEBP, GIF, BMP
    if eof {
        return DataError::Unreadable {
            what: path.display().to_string(),
            message: format!(
                "truncated {name}: the file ends after {len} bytes, before its image data is complete (an interrupted download or copy); replace the file or delete it"
            ),
        };
    }
    DataError::Decode {
        what: path.display().to_string(),
        source,
    }
}

/// Refuses a WebP file shorter than its RIFF header says: its decoder reports only "corrupt
/// bitstream" for a file cut short.
fn check_riff_complete(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(size) = bytes.get(4..8) else {
        return Ok(());
    };
    let declared = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize + 8;
    if bytes.len() >= declared {
        return Ok(());
    }
    Err(DataError::Unreadable {
        what: path.display().to_string(),
        message: format!(
            "truncated WEBP: the file ends after {} of its {declared} bytes (an interrupted download or copy); replace the file or delete it",
            bytes.len()
        ),
    })
}

/// Refuses a JPEG that has no end-of-image marker (`FF D9`) after its first scan: the file was cut short
/// (an interrupted download or copy). Bytes after the marker (camera trailers) are allowed, and a thumbnail's
/// own marker inside the EXIF segment does not count because the search starts at the main image's scan.
fn check_jpeg_complete(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(scan) = first_scan_offset(bytes) else {
        // No scan at all: the decoder itself reports what is missing.
        return Ok(());
    };
    let has_end = bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
    if has_end {
        return Ok(());
    }
    Err(DataError::Unreadable {
        what: path.display().to_string(),
        message: format!(
            "truncated JPEG: the file ends after {} bytes, before its end-of-image marker (an interrupted \
             download or copy); replace the file or delete it",
            bytes.len()
        ),
    })
}

/// The offset of the first start-of-scan marker (`FF DA`), found by walking the marker segments from the
/// start of the file (each header segment carries its length, so data inside them is never mistaken for a
/// marker). `None` when the headers end or are malformed before a scan.
fn first_scan_offset(bytes: &[u8]) -> Option<usize> {
    let mut at = 2; // after SOI (FF D8)
    loop {
        // Markers may be preceded by fill bytes 0xFF.
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        if marker == 0xDA {
            return Some(at);
        }
        let standalone = marker == 0x01 || (0xD0..=0xD7).contains(&marker);
        if standalone {
            at += 2;
            continue;
        }
        let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
        at += 2 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_is_found_past_segments_that_contain_marker_bytes() {
        // SOI, APP1 whose payload holds FF D9 and FF DA, then SOS.
        let bytes = [
            0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xDA, 0xFF, 0xDA, 0x00, 0x02,
        ];
        assert_eq!(first_scan_offset(&bytes), Some(10));
        assert_eq!(first_scan_offset(&bytes[..8]), None);
    }
}
