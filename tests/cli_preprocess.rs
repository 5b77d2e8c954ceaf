//! `koala eval` on a koala export uses the preprocessing the export records (issue 8,
//! fault 2): a run with `--mean/--std 0.5` on the bundled Fashion-MNIST subset, then `eval`
//! of its `model.onnx` with no preprocessing flag scores what the run's final evaluation
//! scored (the same t10k images), and says where each setting came from.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `X.XX%` right after `marker` in `s`.
fn percent_after(s: &str, marker: &str) -> String {
    let rest = &s[s
        .find(marker)
        .unwrap_or_else(|| panic!("no '{marker}' in:\n{s}"))
        + marker.len()..];
    rest.trim_start()
        .split('%')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn eval_of_an_export_without_flags_matches_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let model = root().join("tests/fixtures/reference/tiny_cnn/model.onnx");
    let data = root().join("data/fashion_mnist_small");
    let out = run(&[
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--image-size",
        "16",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
        "--batch-size",
        "8",
        "--limit-train",
        "64",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after = percent_after(&text(&out.stdout), "accuracy after:");
    let export = run_dir.join("model.onnx");
    let eval = run(&[
        "eval",
        "--model",
        export.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    let err = text(&eval.stderr);
    assert_eq!(eval.status.code(), Some(0), "{err}");
    assert!(
        err.contains("preprocessing: image size 16 (model metadata), mean 0.5,0.5,0.5 (model metadata), std 0.5,0.5,0.5 (model metadata)"),
        "{err}"
    );
    assert_eq!(percent_after(&text(&eval.stdout), "top-1"), after);
    // A flag overrides the record, and says so.
    let flagged = run(&[
        "eval",
        "--model",
        export.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--std",
        "0.25,0.25,0.25",
        "--threads",
        "1",
    ]);
    assert_eq!(flagged.status.code(), Some(0), "{}", text(&flagged.stderr));
    assert!(
        text(&flagged.stderr).contains("std 0.25,0.25,0.25 (flag)"),
        "{}",
        text(&flagged.stderr)
    );
}
