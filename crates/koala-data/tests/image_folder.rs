//! The class-folder layout: discovery, label order, corrupt images skipped and reported with their path, and
//! layout errors.

mod common;

use std::sync::{Arc, Mutex};

use common::{assert_mentions, write_garbage, write_png};
use koala_data::{ImageFiles, ImageSource, Loader, LoaderConfig, Preprocess};

/// `cat/` with 2 images, `dog/` with 2 images + a corrupt `.jpg`, plus files that must be ignored.
fn pets(root: &std::path::Path) {
    write_png(&root.join("dog/b.png"), 10, 8, [0, 0, 255]);
    write_png(&root.join("dog/a.PNG"), 8, 10, [0, 255, 0]);
    write_garbage(&root.join("dog/broken.jpg"));
    write_png(&root.join("cat/x.png"), 12, 12, [255, 0, 0]);
    write_png(&root.join("cat/nested/y.png"), 12, 12, [255, 255, 255]);
    std::fs::write(root.join("cat/notes.txt"), "not an image").unwrap();
    write_garbage(&root.join("cat/._x.png")); // macOS metadata file: hidden, ignored
    std::fs::create_dir_all(root.join(".cache")).unwrap(); // hidden folder: not a class
}

#[test]
fn classes_sorted_by_name_and_files_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    pets(tmp.path());
    let folder = ImageFiles::open_folder(tmp.path()).unwrap();
    assert_eq!(folder.class_names(), ["cat", "dog"]);
    let listed: Vec<(String, i64)> = (0..folder.len())
        .map(|i| {
            (
                folder
                    .path(i)
                    .strip_prefix(tmp.path())
                    .unwrap()
                    .display()
                    .to_string(),
                folder.label(i),
            )
        })
        .collect();
    let expected = [
        ("cat/nested/y.png", 0),
        ("cat/x.png", 0),
        ("dog/a.PNG", 1),
        ("dog/b.png", 1),
        ("dog/broken.jpg", 1),
    ];
    assert_eq!(listed, expected.map(|(p, l)| (p.to_string(), l)));
}

#[test]
fn corrupt_image_is_skipped_counted_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    pets(tmp.path());
    let folder = Arc::new(ImageFiles::open_folder(tmp.path()).unwrap());
    let logged = Arc::new(Mutex::new(Vec::new()));
    let log = logged.clone();
    let loader = Loader::new(folder, Preprocess::plain(4, 4, 3), LoaderConfig::eval(2))
        .unwrap()
        .on_skip(move |s| log.lock().unwrap().push(s.to_string()));
    let mut iter = loader.epoch(0);
    let batches: Vec<_> = iter.by_ref().collect();
    // 5 samples in batches of 2: [y, x], [a, b], [broken] → the last batch is empty after the skip and is not
    // yielded, so 2 batches and 4 images.
    assert_eq!(batches.len(), 2);
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 4);
    assert_eq!(batches[1].labels, vec![1, 1]);
    let stats = iter.stats();
    assert_eq!((stats.batches, stats.samples, stats.skipped), (2, 4, 1));
    let skipped = &stats.skipped_samples[0];
    assert!(skipped.what.ends_with("dog/broken.jpg"), "{skipped:?}");
    assert_eq!(skipped.index, 4);
    assert_eq!(skipped.cursor.position, 2);
    let log = logged.lock().unwrap();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].contains("broken.jpg") && log[0].contains("skipped"),
        "{}",
        log[0]
    );
    // The PNGs decoded: a pure blue 10 × 8 image resized to 4 × 4 is exactly (0, 0, 1) in [0, 1].
    let b = &batches[1];
    let blue = &b.images[48..96];
    // Tolerance 1e-6: the filter weights are normalised in f64 and rounded to f32, so a constant image comes out
    // constant to within a few f32 ulps.
    assert!(blue[..32].iter().all(|v| v.abs() < 1e-6), "{blue:?}");
    assert!(
        blue[32..].iter().all(|v| (v - 1.0).abs() < 1e-6),
        "{blue:?}"
    );
}

#[test]
fn skipped_sample_shrinks_its_batch_only() {
    let tmp = tempfile::tempdir().unwrap();
    pets(tmp.path());
    let folder = Arc::new(ImageFiles::open_folder(tmp.path()).unwrap());
    let loader = Loader::new(folder, Preprocess::plain(4, 4, 3), LoaderConfig::eval(3)).unwrap();
    let batches: Vec<_> = loader.epoch(0).collect();
    // [y, x, a], [b, broken] → second batch has 1 image; later batches are unaffected.
    assert_eq!(
        batches
            .iter()
            .map(|b| b.indices.clone())
            .collect::<Vec<_>>(),
        vec![vec![0, 1, 2], vec![3]]
    );
    assert_eq!(batches[1].shape, [1, 3, 4, 4]);
    assert_eq!(batches[1].images.len(), 48);
}

#[test]
fn layout_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let err = ImageFiles::open_folder(&missing).unwrap_err().to_string();
    assert_mentions(&err, &["missing", "does not exist"]);

    let flat = tmp.path().join("flat");
    write_png(&flat.join("a.png"), 2, 2, [0, 0, 0]);
    let err = ImageFiles::open_folder(&flat).unwrap_err().to_string();
    assert_mentions(&err, &["flat", "no class folders"]);

    let empty_class = tmp.path().join("ec");
    write_png(&empty_class.join("cat/a.png"), 2, 2, [0, 0, 0]);
    std::fs::create_dir_all(empty_class.join("dog")).unwrap();
    std::fs::write(empty_class.join("dog/readme.txt"), "").unwrap();
    let err = ImageFiles::open_folder(&empty_class)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["dog", "holds no images"]);

    let file = tmp.path().join("file.png");
    write_png(&file, 2, 2, [0, 0, 0]);
    let err = ImageFiles::open_folder(&file).unwrap_err().to_string();
    assert_mentions(&err, &["file.png", "not a folder"]);
}
