//! EXIF orientation: a JPEG stored upside down with `Orientation = 3` (rotate 180°) is read upright by
//! default, and as stored with `ReadOptions { ignore_exif: true }`.
//!
//! The file is made here: an upright picture with four coloured quadrants is rotated by 180°, encoded as a
//! JPEG, and given an APP1 Exif segment holding only the Orientation tag (a byte-level writer below).

use image::codecs::jpeg::JpegEncoder;
use image::{imageops, Rgb, RgbImage};
use koala_data::{ImageFiles, ImageSource, ReadOptions};

/// 32×32, quadrants red / green over blue / white: every rotation and flip of it is different.
fn upright() -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| match (x < 16, y < 16) {
        (true, true) => Rgb([255, 0, 0]),
        (false, true) => Rgb([0, 255, 0]),
        (true, false) => Rgb([0, 0, 255]),
        (false, false) => Rgb([255, 255, 255]),
    })
}

/// A big-endian TIFF structure with one IFD entry: Orientation (0x0112), SHORT, count 1, `value`.
fn exif_orientation_tiff(value: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"MM\x00\x2A");
    t.extend_from_slice(&8u32.to_be_bytes()); // offset of the first IFD
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&value.to_be_bytes());
    t.extend_from_slice(&[0, 0]); // value field padding to 4 bytes
    t.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    t
}

/// `jpeg` with an APP1 `Exif\0\0` segment holding `tiff` inserted right after the start-of-image marker.
fn with_exif_segment(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "not a JPEG");
    let payload_len = 2 + 6 + tiff.len(); // the length field counts itself
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\x00\x00");
    out.extend_from_slice(tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn encode_jpeg(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode_image(image)
        .unwrap();
    bytes
}

/// Mean absolute difference per channel value.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// One class folder holding `photo.jpg` (stored upside down, Orientation = 3).
fn upside_down_photo(root: &std::path::Path) -> RgbImage {
    let stored = imageops::rotate180(&upright());
    let jpeg = with_exif_segment(&encode_jpeg(&stored), &exif_orientation_tiff(3));
    std::fs::create_dir_all(root.join("cats")).unwrap();
    std::fs::write(root.join("cats/photo.jpg"), jpeg).unwrap();
    stored
}

#[test]
fn orientation_3_is_applied_by_default_and_ignored_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let stored = upside_down_photo(tmp.path());
    let files = ImageFiles::open_folder(tmp.path()).unwrap();

    let read = files.load(0).unwrap().to_rgb8();
    let (to_upright, to_stored) = (
        mean_abs_diff(&read, &upright()),
        mean_abs_diff(&read, &stored),
    );
    // JPEG at quality 95 on flat 16×16 quadrants is within a few levels; the wrong orientation is off by
    // about 170 on average.
    assert!(
        to_upright < 4.0,
        "not read upright: {to_upright} from upright"
    );
    assert!(to_stored > 100.0, "read as stored: {to_stored}");

    let files = files.with_read_options(ReadOptions { ignore_exif: true });
    let raw = files.load(0).unwrap().to_rgb8();
    assert!(
        mean_abs_diff(&raw, &stored) < 4.0,
        "ignore_exif must keep the stored pixels"
    );
    assert!(mean_abs_diff(&raw, &upright()) > 100.0);
}

#[test]
fn the_exif_writer_makes_a_tag_the_image_crate_reads() {
    // Guards the test above: if the segment were malformed, both reads would return the stored pixels and the
    // default-orientation assertion would fail for the wrong reason.
    let tiff = exif_orientation_tiff(3);
    assert_eq!(
        image::metadata::Orientation::from_exif_chunk(&tiff),
        Some(image::metadata::Orientation::Rotate180)
    );
}

#[test]
fn a_photo_without_exif_is_read_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("cats")).unwrap();
    std::fs::write(tmp.path().join("cats/plain.jpg"), encode_jpeg(&upright())).unwrap();
    let read = ImageFiles::open_folder(tmp.path())
        .unwrap()
        .load(0)
        .unwrap()
        .to_rgb8();
    assert!(mean_abs_diff(&read, &upright()) < 4.0);
}
