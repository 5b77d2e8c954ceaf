//! `--execution-target` through the `koala` binary (issue 11): a run records its target,
//! `check --resume` names the target `finetune --resume` will use (also for a run
//! directory written before the option, which resumes on `portable`), and a resume on
//! another target than the checkpoint's says it is no longer bitwise the uninterrupted run.

mod support;

use std::path::Path;
use support::cli::{ok, refs, tiny_finetune};

/// A 2-step tiny-CNN run (16×16, one thread) into `run_dir`.
fn tiny_run(run_dir: &Path) -> String {
    ok(&refs(&tiny_finetune(&[
        "--batch-size",
        "16",
        "--limit-train",
        "64",
        "--threads",
        "1",
        "--max-steps",
        "2",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ])))
}

/// Rewrites `config.toml` of `run_dir` line by line.
fn edit_config(run_dir: &Path, f: impl Fn(&str) -> Option<String>) {
    let path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited: Vec<String> = text.lines().filter_map(&f).collect();
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
}

/// "ort target" where this machine's ONNX Runtime has the blocked kernels, else the
/// fallback's "portable target".
fn default_target_words() -> &'static str {
    if koala::graph::nchwc::block_size().is_some() {
        "training graph: ort target"
    } else {
        "portable target"
    }
}

#[test]
fn check_resume_names_the_target_resume_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let log = tiny_run(&run);
    assert!(log.contains(default_target_words()), "{log}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("execution_target = \"ort\""),
        "a new run records its target:\n{config}"
    );
    let checked = ok(&["check", "--resume", run.to_str().unwrap()]);
    if koala::graph::nchwc::block_size().is_some() {
        assert!(checked.contains("ort target"), "{checked}");
    }

    // A run directory from before the option: no key. Both commands say portable.
    edit_config(&run, |l| {
        (!l.starts_with("execution_target")).then(|| l.replace("max_steps = 2", "max_steps = 3"))
    });
    let checked = ok(&["check", "--resume", run.to_str().unwrap()]);
    assert!(checked.contains("portable target"), "{checked}");
    let resumed = ok(&["finetune", "--resume", run.to_str().unwrap()]);
    assert!(resumed.contains("portable target"), "{resumed}");
}

#[test]
fn resuming_on_another_target_says_it_is_no_longer_bitwise() {
    if koala::graph::nchwc::block_size().is_none() {
        return; // both targets build the same graph here: nothing to switch
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    edit_config(&run, |l| {
        Some(
            l.replace(
                "execution_target = \"ort\"",
                "execution_target = \"portable\"",
            )
            .replace("max_steps = 2", "max_steps = 3"),
        )
    });
    let resumed = ok(&["finetune", "--resume", run.to_str().unwrap()]);
    assert!(
        resumed.contains("trained on the ort target and continues on the portable target"),
        "{resumed}"
    );
    // Resuming again on the same target says nothing.
    edit_config(&run, |l| Some(l.replace("max_steps = 3", "max_steps = 4")));
    let again = ok(&["finetune", "--resume", run.to_str().unwrap()]);
    assert!(!again.contains("no longer bitwise"), "{again}");
}
