//! The `koala` binary on image data sets built here: a data root one level too high
//! (`data/{train,val}/{cat,dog}`), class counts printed exactly, unreadable files named and counted once by
//! `finetune` and `eval`, and `--ignore-exif` recorded in the run's config.
//!
//! Runs use the tiny reference CNN (16×16 input, 10 logits) with one ORT thread.

use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/tiny_cnn/model.onnx")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

/// stdout and stderr of a run that must succeed.
fn run_ok(args: &[&str]) -> (String, String) {
    let out = run(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "koala {args:?} failed:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

/// `n` 16×16 PNGs in `dir`, `color` with a little per-image variation.
fn images(dir: &Path, n: usize, color: [u8; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            let v = ((x + y + i as u32) % 8) as u8;
            Rgb(color.map(|c| c.saturating_add(v)))
        });
        img.save(dir.join(format!("{i:02}.png"))).unwrap();
    }
}

/// `root/{train,val}/{cat,dog}`: 8 + 8 training and 2 + 2 validation images.
fn cats_and_dogs(root: &Path) {
    images(&root.join("train/cat"), 8, [200, 40, 40]);
    images(&root.join("train/dog"), 8, [40, 40, 200]);
    images(&root.join("val/cat"), 2, [200, 40, 40]);
    images(&root.join("val/dog"), 2, [40, 40, 200]);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_root_of_split_folders_trains_the_cat_dog_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cats_and_dogs(&data);
    let run_dir = tmp.path().join("run");
    let (stdout, stderr) = run_ok(&[
        "finetune",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--image-size",
        "16",
        "--num-classes",
        "2",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--run-dir",
        &s(&run_dir),
    ]);
    let d = s(&data);
    let expected = [
        format!("'{d}' holds data splits, not class folders: training data '{d}/train', evaluation (val) data '{d}/val'"),
        format!("training data '{d}/train': 16 images in 2 classes: cat 8, dog 8"),
        format!("val data '{d}/val': 4 images in 2 classes: cat 2, dog 2"),
        "(10 → 2 classes)".to_string(),
    ];
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing `{line}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("classes: train"), "{stderr}");
    // Evaluation ran on the 4 validation images, not on a split of the training folder.
    assert!(stdout.contains("4 samples"), "{stdout}");
}

#[test]
fn eval_names_each_unreadable_file_and_counts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pets");
    images(&data.join("cat"), 5, [200, 40, 40]);
    images(&data.join("dog"), 4, [40, 40, 200]);
    std::fs::write(data.join("dog/notes.jpg"), "a text file, not a picture\n").unwrap();
    let (stdout, stderr) = run_ok(&[
        "eval",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--image-size",
        "16",
        "--threads",
        "1",
    ]);
    let d = s(&data);
    assert!(
        stderr.contains(&format!("data '{d}': 10 images in 2 classes: cat 5, dog 5")),
        "{stderr}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: unreadable sample"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains(&format!("{d}/dog/notes.jpg")),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "9 samples of '{d}' (1 unreadable file skipped, named above)"
        )),
        "{stdout}"
    );
}

#[test]
fn eval_of_a_split_root_uses_its_val_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cats_and_dogs(&data);
    let (stdout, stderr) = run_ok(&[
        "eval",
        "--ignore-exif",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--image-size",
        "16",
        "--threads",
        "1",
    ]);
    let d = s(&data);
    assert!(
        stderr.contains(&format!("evaluating on '{d}/val'")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "data '{d}/val': 4 images in 2 classes: cat 2, dog 2"
        )),
        "{stderr}"
    );
    assert!(stdout.starts_with("4 samples"), "{stdout}");
}

#[test]
fn a_bad_file_over_three_epochs_is_warned_and_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pets");
    images(&data.join("cat"), 8, [200, 40, 40]);
    images(&data.join("dog"), 7, [40, 40, 200]);
    std::fs::write(data.join("dog/broken.jpg"), "not an image").unwrap();
    let run_dir = tmp.path().join("run");
    let (stdout, stderr) = run_ok(&[
        "finetune",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--eval-data",
        &s(&data),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--ignore-exif",
        "--run-dir",
        &s(&run_dir),
    ]);
    let named = stderr
        .lines()
        .filter(|l| l.contains("broken.jpg"))
        .collect::<Vec<_>>();
    // One warning for the training stream, one for the evaluation data (the same file, read by both).
    assert_eq!(named.len(), 2, "{stderr}");
    assert!(
        named
            .iter()
            .all(|l| l.starts_with("warning: unreadable sample skipped (epoch 0")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("skipped unreadable sample skipped"),
        "{stderr}"
    );
    assert!(stdout.contains("unreadable samples skipped: 1"), "{stdout}");
    // --ignore-exif is part of the run's recorded configuration.
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("ignore_exif = true"), "{config}");
}

#[test]
fn a_validation_folder_missing_a_class_keeps_the_training_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    images(&data.join("train/cat"), 4, [200, 40, 40]);
    images(&data.join("train/dog"), 4, [40, 40, 200]);
    images(&data.join("val/dog"), 2, [40, 40, 200]);
    let (_, stderr) = run_ok(&[
        "finetune",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--threads",
        "1",
        "--run-dir",
        &s(&tmp.path().join("run")),
    ]);
    let d = s(&data);
    // Numbered on its own, the validation folder's only class `dog` would be label 0 (`cat`).
    assert!(
        stderr.contains(&format!(
            "val data '{d}/val': 2 images in 2 classes: cat 0, dog 2"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: val data '{d}/val': 1 class(es) have no images: cat"
        )),
        "{stderr}"
    );
}
