//! IDX (MNIST-format) loading, checked against facts about the shipped Fashion-MNIST subset that were computed
//! independently with Python's `gzip` module (see the constants), and against malformed files.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{assert_mentions, fashion_dir};
use koala_data::{DataError, IdxSource, IdxSplit, ImageSource, FASHION_MNIST_CLASSES};

fn class_counts(source: &IdxSource) -> Vec<usize> {
    let mut counts = vec![0; 10];
    for i in 0..source.len() {
        counts[source.label(i) as usize] += 1;
    }
    counts
}

#[test]
fn shipped_train_split_has_2000_balanced_images() {
    let train = IdxSource::from_dir(fashion_dir(), IdxSplit::Train).unwrap();
    assert_eq!(train.len(), 2000);
    assert_eq!(train.image_size(), (28, 28));
    assert_eq!(class_counts(&train), vec![200; 10]);
    assert_eq!(
        train.class_names(),
        (0..10).map(|c| c.to_string()).collect::<Vec<_>>()
    );
    // First labels, from python: list(gzip.open('train-labels-idx1-ubyte.gz').read()[8:18]).
    let first: Vec<i64> = (0..10).map(|i| train.label(i)).collect();
    assert_eq!(first, vec![9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
}

#[test]
fn shipped_test_split_has_500_balanced_images() {
    let test = IdxSource::from_dir(fashion_dir(), IdxSplit::Test).unwrap();
    assert_eq!(test.len(), 500);
    assert_eq!(class_counts(&test), vec![50; 10]);
    let first: Vec<i64> = (0..10).map(|i| test.label(i)).collect();
    assert_eq!(first, vec![9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    assert_eq!(
        test.pixels(0).iter().map(|&p| u64::from(p)).sum::<u64>(),
        33456
    );
}

#[test]
fn decoded_pixels_match_python() {
    let train = IdxSource::from_dir(fashion_dir(), IdxSplit::Train).unwrap();
    // Python: sum(px[:784]) = 76247, px[14 * 28 + 14] = 217, sum of the last image = 63284.
    let image = train.load(0).unwrap().into_luma8();
    assert_eq!(image.dimensions(), (28, 28));
    assert_eq!(
        image.as_raw().iter().map(|&p| u64::from(p)).sum::<u64>(),
        76247
    );
    assert_eq!(image.get_pixel(14, 14).0[0], 217);
    assert_eq!(
        train
            .pixels(1999)
            .iter()
            .map(|&p| u64::from(p))
            .sum::<u64>(),
        63284
    );
    assert!(
        train.describe(5).ends_with("train-images-idx3-ubyte.gz:5"),
        "{}",
        train.describe(5)
    );
}

/// A file of the shipped subset.
fn shipped(name: &str) -> PathBuf {
    fashion_dir().join(name)
}

/// The error message of opening `images` + `labels`, which must fail.
fn open_error(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> String {
    IdxSource::open(images, labels).unwrap_err().to_string()
}

#[test]
fn explicit_paths_and_class_names() {
    let source = IdxSource::open(
        shipped("t10k-images-idx3-ubyte.gz"),
        shipped("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap()
    .with_class_names(FASHION_MNIST_CLASSES)
    .unwrap();
    assert_eq!(source.len(), 500);
    assert_eq!(source.class_names()[9], "Ankle boot");
    let too_few = IdxSource::from_dir(fashion_dir(), IdxSplit::Test)
        .unwrap()
        .with_class_names(["a", "b"]);
    assert!(matches!(
        too_few,
        Err(DataError::Config {
            field: "class_names",
            ..
        })
    ));
}

#[test]
fn plain_uncompressed_files_load_too() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(tmp.path().join(name), gunzip(&format!("{name}.gz"))).unwrap();
    }
    let plain = IdxSource::from_dir(tmp.path(), IdxSplit::Test).unwrap();
    let gz = IdxSource::from_dir(fashion_dir(), IdxSplit::Test).unwrap();
    assert_eq!(plain.len(), 500);
    assert_eq!(plain.pixels(499), gz.pixels(499));
}

#[test]
fn swapped_files_report_bad_magic_with_path() {
    let err = open_error(
        shipped("t10k-labels-idx1-ubyte.gz"),
        shipped("t10k-images-idx3-ubyte.gz"),
    );
    assert_mentions(
        &err,
        &[
            "t10k-labels-idx1-ubyte.gz",
            "bad magic 0x00000801",
            "expected 0x00000803",
        ],
    );
}

#[test]
fn truncated_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = shipped("t10k-labels-idx1-ubyte.gz");
    let images = gunzip("t10k-images-idx3-ubyte.gz");
    let cut = tmp.path().join("cut-images");
    std::fs::write(&cut, &images[..images.len() - 100]).unwrap();
    let err = open_error(&cut, &labels);
    assert_mentions(
        &err,
        &[
            "cut-images",
            "truncated",
            "392000 data bytes but only 391900",
        ],
    );

    let gz = std::fs::read(shipped("t10k-images-idx3-ubyte.gz")).unwrap();
    let cut_gz = tmp.path().join("cut-images.gz");
    std::fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    assert_mentions(
        &open_error(&cut_gz, &labels),
        &["cut-images.gz", "gzip stream is truncated"],
    );

    let header_only = tmp.path().join("short");
    std::fs::write(&header_only, [0, 0, 8, 3, 0, 0]).unwrap();
    assert_mentions(
        &open_error(&header_only, &labels),
        &["short", "truncated header"],
    );
}

#[test]
fn mismatched_counts_and_missing_files_are_reported() {
    let err = open_error(
        shipped("train-images-idx3-ubyte.gz"),
        shipped("t10k-labels-idx1-ubyte.gz"),
    );
    assert_mentions(&err, &["2000 images", "500 labels"]);

    let tmp = tempfile::tempdir().unwrap();
    let dir_error = |dir: &Path| {
        IdxSource::from_dir(dir, IdxSplit::Train)
            .unwrap_err()
            .to_string()
    };
    assert_mentions(
        &dir_error(tmp.path()),
        &["train-images-idx3-ubyte.gz", "no IDX images file"],
    );
    assert_mentions(
        &dir_error(&tmp.path().join("nope")),
        &["nope", "does not exist"],
    );
}

fn gunzip(name: &str) -> Vec<u8> {
    let raw = std::fs::read(shipped(name)).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .unwrap();
    out
}
