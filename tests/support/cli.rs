//! Running the `koala` binary from the top-level tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `koala` with `args`, capturing its output.
pub fn koala<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

/// Lossy UTF-8 of captured output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `koala finetune` on the tiny CNN and the shipped Fashion-MNIST subset at 16×16, followed
/// by `extra` (owned strings: paths are built per test).
pub fn tiny_finetune(extra: &[&str]) -> Vec<String> {
    let (m, d) = (
        root().join("tests/fixtures/reference/tiny_cnn/model.onnx"),
        root().join("data/fashion_mnist_small"),
    );
    let base = [
        "finetune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--image-size",
        "16",
    ];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Borrowed views of owned arguments (for [`ok`] and [`koala`]).
pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `koala` with `args`, which must succeed; returns its stdout and stderr together.
pub fn ok(args: &[&str]) -> String {
    let out = koala(args);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "koala {args:?} failed:\n{all}");
    all
}

/// The number after `key` in `s` (e.g. `number_after("loss 3.2145,", "loss")`).
pub fn number_after(s: &str, key: &str) -> f64 {
    let at = s.find(key).unwrap_or_else(|| panic!("no '{key}' in:\n{s}")) + key.len();
    s[at..]
        .trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no number after '{key}' in:\n{s}"))
}
