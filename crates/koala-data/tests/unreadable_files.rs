//! Unreadable image files: a text file named `.jpg`, a JPEG or PNG cut short. Each is refused with the reason,
//! skipped by the loader with one warning naming it, and counted once however many epochs meet it.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::write_png;
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use koala_data::{Cursor, ImageFiles, ImageSource, Loader, LoaderConfig, Preprocess};

/// A 64×64 JPEG with detail in every block (so its entropy-coded data is long enough to cut).
fn textured_jpeg() -> Vec<u8> {
    let image = RgbImage::from_fn(64, 64, |x, y| {
        Rgb([(x * 4) as u8, (y * 4) as u8, ((x * y) % 251) as u8])
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .unwrap();
    bytes
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The error `ImageFiles` gives for the only file under `root/c/`.
fn load_error(root: &Path) -> String {
    let files = ImageFiles::open_folder(root).unwrap();
    assert_eq!(files.len(), 1);
    files.load(0).unwrap_err().to_string()
}

#[test]
fn a_jpeg_cut_to_a_third_is_refused_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = textured_jpeg();
    let cut = &jpeg[..jpeg.len() / 3];
    write(&tmp.path().join("c/cut.jpg"), cut);
    let err = load_error(tmp.path());
    assert!(err.contains("cut.jpg"), "{err}");
    assert!(err.contains("truncated JPEG"), "{err}");
    assert!(err.contains(&format!("after {} bytes", cut.len())), "{err}");
}

#[test]
fn a_complete_jpeg_with_bytes_after_its_end_marker_is_read() {
    // Some cameras append data after the end-of-image marker; that is not truncation.
    let tmp = tempfile::tempdir().unwrap();
    let mut jpeg = textured_jpeg();
    jpeg.extend_from_slice(b"camera trailer");
    write(&tmp.path().join("c/full.jpg"), &jpeg);
    let files = ImageFiles::open_folder(tmp.path()).unwrap();
    assert_eq!(files.load(0).unwrap().width(), 64);
}

#[test]
fn every_other_format_cut_to_a_third_is_refused() {
    // Their decoders report the missing data themselves; JPEG's fills it with grey (the check above).
    let image = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
    for (format, ext) in [
        (image::ImageFormat::Png, "png"),
        (image::ImageFormat::Bmp, "bmp"),
        (image::ImageFormat::Gif, "gif"),
        (image::ImageFormat::WebP, "webp"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(image.clone())
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        let name = format!("cut.{ext}");
        write(&tmp.path().join("c").join(&name), &bytes[..bytes.len() / 3]);
        let err = load_error(tmp.path());
        assert!(err.contains(&name), "{ext}: {err}");
        // Called truncated with the remedy, not the decoder's bare "unexpected end of file".
        let kind = format!("truncated {}", ext.to_ascii_uppercase());
        assert!(err.contains(&kind), "{ext}: {err}");
        assert!(
            err.contains("replace the file or delete it"),
            "{ext}: {err}"
        );
    }
}

/// A JPEG cut inside its header segments (before any image data) is called truncated too,
/// not the decoder's "Not enough bytes" (found by a new-user tryout).
#[test]
fn a_jpeg_cut_inside_its_headers_is_refused_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = textured_jpeg();
    write(&tmp.path().join("c/head.jpg"), &jpeg[..120]);
    let err = load_error(tmp.path());
    assert!(err.contains("head.jpg"), "{err}");
    assert!(err.contains("truncated JPEG"), "{err}");
    assert!(err.contains("replace the file or delete it"), "{err}");
}

#[test]
fn a_text_file_named_jpg_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("c/notes.jpg"),
        b"these are my notes, not a picture\n",
    );
    let err = load_error(tmp.path());
    assert!(err.contains("notes.jpg"), "{err}");
    assert!(err.contains("not an image: it is a text file"), "{err}");
}

#[test]
fn an_html_page_and_an_empty_file_named_jpg_say_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("a/page.jpg"),
        b"<!DOCTYPE html>\n<html><body>Access denied</body></html>\n",
    );
    assert!(load_error(tmp.path()).contains("it is an HTML page"));
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("a/empty.jpg"), b"");
    assert!(load_error(tmp.path()).contains("the file is empty"));
}

/// `good/` with 4 images and `bad/` with 1 good image and a text file named `.jpg`.
fn one_bad_file(root: &Path) {
    for i in 0..4 {
        write_png(&root.join(format!("good/{i}.png")), 8, 8, [0, 200, 0]);
    }
    write_png(&root.join("bad/ok.png"), 8, 8, [200, 0, 0]);
    write(&root.join("bad/text.jpg"), b"not an image");
}

#[test]
fn a_bad_file_is_counted_and_warned_once_over_three_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    one_bad_file(tmp.path());
    let source = Arc::new(ImageFiles::open_folder(tmp.path()).unwrap());
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let log = warnings.clone();
    let loader = Loader::new(
        source,
        Preprocess::plain(4, 4, 3),
        LoaderConfig::train(2, 7),
    )
    .unwrap()
    .on_skip(move |s| log.lock().unwrap().push(s.to_string()));
    let mut it = loader.iter(Cursor::new(0, 0), 3);
    let samples: usize = it.by_ref().map(|b| b.len()).sum();
    assert_eq!(samples, 3 * 5, "5 readable images in each of 3 epochs");
    assert_eq!(it.stats().skipped, 1, "one bad file, counted once");
    assert_eq!(it.stats().skipped_samples.len(), 1);
    // A second pass over the same loader (an evaluation after each epoch) does not warn again.
    let again: usize = loader.epoch(3).map(|b| b.len()).sum();
    assert_eq!(again, 5);

    let warnings = warnings.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.starts_with("unreadable sample skipped (epoch 0, batch "),
        "{w}"
    );
    assert!(w.contains("text.jpg"), "{w}");
    assert_eq!(w.matches("skipped").count(), 1, "doubled word: {w}");
}

#[test]
fn each_iterator_counts_its_own_skips() {
    // The callback warns once per loader, but every iterator's stats count what it met, so a resumed
    // training stream still knows about the bad file.
    let tmp = tempfile::tempdir().unwrap();
    one_bad_file(tmp.path());
    let source = Arc::new(ImageFiles::open_folder(tmp.path()).unwrap());
    let loader = Loader::new(source, Preprocess::plain(4, 4, 3), LoaderConfig::eval(8)).unwrap();
    for _ in 0..2 {
        let mut it = loader.epoch(0);
        assert_eq!(it.by_ref().count(), 1);
        assert_eq!(it.stats().skipped, 1);
    }
}
