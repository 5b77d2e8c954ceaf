//! The `koala` binary on a language model, end to end: fine-tune the shipped
//! tiny Llama-style LM on part of a play for a few steps, export, reload,
//! evaluate held-out text before and after, generate, and the messages for
//! bad text data and a mismatched tokenizer.
//!
//! The model (`models/tiny_llama_shakespeare`, 443k parameters) was
//! pre-trained on Hamlet and Macbeth; the data here is A Midsummer Night's
//! Dream, split by position: the first 90 % trains, the last 10 % is
//! held out (written to a temporary file), so the held-out text is never
//! seen in training.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::cli::{koala, number_after, ok, root, text};

fn model() -> PathBuf {
    root().join("models/tiny_llama_shakespeare/model.onnx")
}

fn run(args: &[&str]) -> Output {
    koala(args)
}

/// Splits the play into a training and a held-out file.
fn split_play(dir: &Path) -> (PathBuf, PathBuf) {
    let play =
        std::fs::read_to_string(root().join("data/shakespeare/midsummer_nights_dream_gut.txt"))
            .unwrap();
    let cut = play.len() * 9 / 10;
    let cut = (cut..play.len())
        .find(|&i| play.is_char_boundary(i) && play.as_bytes()[i] == b'\n')
        .unwrap();
    let (train, held) = (dir.join("train.txt"), dir.join("held_out.txt"));
    std::fs::write(&train, &play[..cut]).unwrap();
    std::fs::write(&held, &play[cut..]).unwrap();
    (train, held)
}

fn eval_loss(model: &Path, data: &Path) -> f64 {
    let tok = root().join("models/tiny_llama_shakespeare/tokenizer.json");
    let out = ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--block-size",
        "64",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ]);
    number_after(&out, "loss")
}

#[test]
fn a_causal_lm_fine_tunes_exports_and_the_file_reproduces_the_training_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = split_play(dir.path());
    let run_dir = dir.path().join("run");
    let m = model();
    let out = ok(&[
        "finetune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
        "--block-size",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "24",
        "--eval-every",
        "12",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--sample-tokens",
        "12",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    // The run's own validation loss fell.
    let before = number_after(&out, "eval before: loss");
    let after = number_after(&out, "eval after:  loss");
    assert!(after < before - 0.1, "val loss {before} -> {after}:\n{out}");
    // The exported file, reloaded by ORT, reproduces the training graph's
    // logits (f32 round-off of logits up to ~15: 1e-4 absolute).
    let diff = number_after(&out, "max |Δ| vs training graph");
    assert!(diff <= 1e-4, "export max |Δ| {diff}:\n{out}");
    let exported = run_dir.join("model.onnx");
    // Text the run never saw: the fine-tuned file beats the original.
    let (l0, l1) = (eval_loss(&m, &held), eval_loss(&exported, &held));
    assert!(l1 < l0 - 0.05, "held-out loss {l0} -> {l1}");
    // Sample completions before and after, and generation from the export.
    let samples = std::fs::read_to_string(run_dir.join("samples.txt")).unwrap();
    assert!(
        samples.contains("before training") && samples.contains("after training"),
        "{samples}"
    );
    // The tokenizer was copied beside the export: no --tokenizer needed.
    assert!(run_dir.join("tokenizer.json").exists());
    let gen = ok(&[
        "generate",
        "--model",
        exported.to_str().unwrap(),
        "--prompt",
        "LYSANDER.",
        "--max-new-tokens",
        "8",
        "--threads",
        "1",
    ]);
    assert!(
        gen.starts_with("LYSANDER.") && gen.trim().len() > "LYSANDER.".len(),
        "{gen}"
    );
}

/// KOALA++ on a language model gets the per-sample loss variance as V by default (with the
/// second moment, R ≈ E[l²] ≈ 12 swamps the innovation variance and the steps all but stop,
/// README "What KOALA++ gets as loss variance"). The run records the value it used, so
/// `--resume` keeps it; a flag overrides it.
#[test]
fn koala_on_a_language_model_defaults_to_the_loss_variance_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = split_play(dir.path());
    let m = model();
    let config = |run_dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            m.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--block-size",
            "32",
            "--batch-size",
            "2",
            "--max-steps",
            "1",
            "--sample-tokens",
            "0",
            "--threads",
            "1",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&args);
        std::fs::read_to_string(run_dir.join("config.toml")).unwrap()
    };
    let default = config(&dir.path().join("default"), &[]);
    assert!(default.contains("loss_var = \"variance\""), "{default}");
    let flag = config(&dir.path().join("flag"), &["--loss-var", "second-moment"]);
    assert!(flag.contains("loss_var = \"second-moment\""), "{flag}");
}

fn assert_fails(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "koala {args:?}: stderr:\n{err}");
    for n in needles {
        assert!(
            err.contains(n),
            "koala {args:?}: stderr should name '{n}':\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_text_data_and_a_mismatched_tokenizer_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"Enter LYSANDER.\"}\n{\"text\": \"broken\n",
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let r = run_dir.to_str().unwrap();
    assert_fails(
        &[
            "finetune",
            "--model",
            m.to_str().unwrap(),
            "--data",
            bad.to_str().unwrap(),
            "--run-dir",
            r,
        ],
        &["bad.jsonl:2"],
    );
    // tiny_llama reads 113 token ids; the shipped tokenizer makes 512.
    let small = root().join("tests/fixtures/reference/tiny_llama/model.onnx");
    let tok = root().join("models/tiny_llama_shakespeare/tokenizer.json");
    let play = root().join("data/shakespeare/midsummer_nights_dream_gut.txt");
    assert_fails(
        &[
            "finetune",
            "--model",
            small.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--data",
            play.to_str().unwrap(),
            "--run-dir",
            r,
        ],
        &["tokenizer.json", "113"],
    );
    // Too little text for one batch, and no evaluation text.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Enter LYSANDER and HERMIA.\n").unwrap();
    let (s, t) = (short.to_str().unwrap(), tok.to_str().unwrap());
    assert_fails(
        &[
            "finetune",
            "--model",
            m.to_str().unwrap(),
            "--data",
            s,
            "--eval-data",
            s,
            "--run-dir",
            r,
        ],
        &["short.txt", "fewer than one batch", "--batch-size"],
    );
    assert_fails(
        &[
            "finetune",
            "--model",
            m.to_str().unwrap(),
            "--data",
            play.to_str().unwrap(),
            "--val-fraction",
            "0",
            "--run-dir",
            r,
        ],
        &["--val-fraction 0", "--eval-data"],
    );
    // eval and generate check the tokenizer against the embedding too.
    assert_fails(
        &[
            "eval",
            "--model",
            small.to_str().unwrap(),
            "--tokenizer",
            t,
            "--data",
            s,
        ],
        &["tokenizer.json", "113"],
    );
    assert_fails(
        &[
            "generate",
            "--model",
            small.to_str().unwrap(),
            "--tokenizer",
            t,
            "--prompt",
            "HERMIA.",
        ],
        &["tokenizer.json", "113"],
    );
    // No tokenizer beside the model and none given.
    assert_fails(
        &[
            "finetune",
            "--model",
            small.to_str().unwrap(),
            "--data",
            play.to_str().unwrap(),
            "--run-dir",
            r,
        ],
        &["--tokenizer"],
    );
}

#[test]
fn a_reader_that_closes_the_pipe_early_does_not_make_koala_panic() {
    // `koala generate … | head -1`: stdout closes before koala writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args([
            "generate",
            "--model",
            model().to_str().unwrap(),
            "--prompt",
            "HERMIA.",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// A language model gets batches of 4 sequences by default, not the image default of 32
/// (which needed ~18 GB for SmolLM2-135M and was killed by the kernel in a new-user
/// tryout), and finetune and check say which batch × block they use.
#[test]
fn a_language_model_defaults_to_batches_of_four_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = split_play(dir.path());
    let m = model();
    let out = ok(&[
        "check",
        "--model",
        m.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(
        out.contains(
            "batches of 4 sequences × 128 tokens (--batch-size: the default for language models"
        ),
        "{out}"
    );
    let run_dir = dir.path().join("run");
    let out = ok(&[
        "finetune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
        "--block-size",
        "32",
        "--max-steps",
        "1",
        "--sample-tokens",
        "0",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("batches of 4 sequences × 32 tokens"), "{out}");
    let cfg = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(cfg.contains("batch_size = 4"), "{cfg}");
}
