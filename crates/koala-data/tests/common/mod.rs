//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

/// The Fashion-MNIST subset shipped in the repository (2000 train / 500 test images).
pub fn fashion_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion_mnist_small")
}

/// Writes a `w × h` PNG whose pixels are all `color`.
pub fn write_png(path: &Path, w: u32, h: u32, color: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(w, h, Rgb(color)).save(path).unwrap();
}

/// Writes garbage bytes under an image file name.
pub fn write_garbage(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        b"this is not a JPEG at all \x00\x01\x02\xff\xd8 garbage",
    )
    .unwrap();
}

/// Asserts that an error message names every one of `parts` (the file, the field, the remedy…).
pub fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "message should mention `{part}`: {message}"
        );
    }
}

/// The text-data fixtures (tokenizer, data files, Python ground truth), made by `make_fixtures.py` there.
pub fn text_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text")
}
