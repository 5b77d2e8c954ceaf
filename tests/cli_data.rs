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
    // The summary names the folder evaluated, not the root given.
    assert!(
        stdout.starts_with(&format!("4 samples of '{d}/val':")),
        "{stdout}"
    );
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
    // One warning for the training stream, one for the evaluation data (the same file, read by both):
    // the training one says where in the stream, the evaluation one (one pass, in order) does not.
    assert_eq!(named.len(), 2, "{stderr}");
    assert_eq!(
        named
            .iter()
            .filter(|l| l.starts_with("warning: unreadable sample skipped (epoch 0, batch "))
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        named
            .iter()
            .filter(|l| l.starts_with("warning: unreadable sample skipped: "))
            .count(),
        1,
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

/// A big-endian TIFF structure with one IFD entry: Orientation (0x0112), SHORT, count 1, `value`.
fn exif_orientation_tiff(value: u16) -> Vec<u8> {
    let mut t = b"MM\x00\x2A".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes()); // offset of the first IFD
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&value.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    t
}

/// `n` 16×16 JPEGs in `dir`, red on top and blue below as stored; with `rotated` each carries
/// EXIF Orientation = 3 (rotate 180°), so a viewer shows blue on top.
fn half_and_half_photos(dir: &Path, n: usize, rotated: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            let v = ((x + i as u32) % 4) as u8;
            if y < 8 {
                Rgb([220 + v, 20, 20])
            } else {
                Rgb([20, 20, 220 + v])
            }
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        if rotated {
            let tiff = exif_orientation_tiff(3);
            let mut with_exif = jpeg[..2].to_vec();
            with_exif.extend_from_slice(&[0xFF, 0xE1]);
            with_exif.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
            with_exif.extend_from_slice(b"Exif\x00\x00");
            with_exif.extend_from_slice(&tiff);
            with_exif.extend_from_slice(&jpeg[2..]);
            jpeg = with_exif;
        }
        std::fs::write(dir.join(format!("{i:02}.jpg")), jpeg).unwrap();
    }
}

/// The `accuracy after: ..% (loss ..` part of a finetune summary.
fn accuracy_after(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy after:"))
        .unwrap_or_else(|| panic!("no final accuracy in:\n{stdout}"));
    let tail = line.trim_start_matches("accuracy after:").trim();
    tail[..tail.find(',').unwrap_or(tail.len())].to_string()
}

#[test]
fn a_run_with_ignore_exif_is_evaluated_with_it_from_the_export() {
    // Stored pixels: every photo is red over blue; class `flipped` is tagged "rotate 180°". Read as
    // stored (--ignore-exif) the classes look alike, turned upright they differ: the choice
    // changes what the model sees, so eval must read as the run did.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    half_and_half_photos(&data.join("flipped"), 4, true);
    half_and_half_photos(&data.join("plain"), 4, false);
    let run_dir = tmp.path().join("run");
    let (stdout, _) = run_ok(&[
        "finetune",
        "--model",
        &s(&tiny_model()),
        "--data",
        &s(&data),
        "--eval-data",
        &s(&data),
        "--image-size",
        "16",
        "--num-classes",
        "2",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--no-augment",
        "--threads",
        "1",
        "--ignore-exif",
        "--run-dir",
        &s(&run_dir),
    ]);
    let run = accuracy_after(&stdout);
    let (export, data) = (s(&run_dir.join("model.onnx")), s(&data));
    let eval = |extra: &[&str]| {
        let mut args: Vec<&str> = vec!["eval", "--model", export.as_str(), "--data", data.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--threads", "1"]);
        run_ok(&args)
    };
    let (out, err) = eval(&[]);
    assert!(
        err.contains("EXIF orientation ignored (model metadata)"),
        "{err}"
    );
    // "8 samples of '…': loss L, top-1 A%" carries the run's loss and accuracy.
    let (acc, loss) = run.split_once(" (loss ").unwrap();
    assert!(
        out.contains(&format!("loss {loss}, top-1 {acc}")),
        "run: {run}\neval: {out}"
    );
    // --apply-exif overrides the record and reads other pixels: another loss.
    let (out, err) = eval(&["--apply-exif"]);
    assert!(err.contains("EXIF orientation applied (flag)"), "{err}");
    assert!(!out.contains(&format!("loss {loss},")), "{out}");
}

/// Too few images for `--val-fraction` to hold any out (it rounds per class): finetune and
/// check say so and name both remedies, instead of "the data source holds no samples"
/// (found by a new-user tryout).
#[test]
fn an_empty_validation_split_names_the_remedies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("few");
    images(&data.join("a"), 3, [200, 40, 40]);
    images(&data.join("b"), 3, [40, 40, 200]);
    let run_dir = tmp.path().join("run");
    for cmd in ["finetune", "check"] {
        let out = run(&[
            cmd,
            "--model",
            &s(&tiny_model()),
            "--data",
            &s(&data),
            "--image-size",
            "16",
            "--batch-size",
            "2",
            "--max-steps",
            "1",
            "--threads",
            "1",
            "--run-dir",
            &s(&run_dir),
        ]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{cmd}: {all}");
        for needle in [
            "no validation images: --val-fraction 0.1 of the 6 images",
            "--eval-data",
        ] {
            assert!(
                all.contains(needle),
                "{cmd}: '{needle}' missing from:\n{all}"
            );
        }
    }
}
