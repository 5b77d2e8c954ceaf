//! A run directory written by koala before the `Task` refactor (fixture `run_v1`: format-1
//! `trainer.json` with `best = [accuracy, step]` and no `best_metric`, a `config.toml` without
//! `task`) resumes with the current code, and ends with bitwise the weights the old binary
//! wrote for the same run uninterrupted (see `tests/fixtures/run_v1/README.md` for how it was
//! made, and `resume.rs` for why bitwise equality is the right bar).

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run_v1")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The fixture copied to `run_dir` with its path placeholders filled in.
fn materialise(run_dir: &Path) {
    copy_dir(&fixture(), run_dir);
    let cfg = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("@ROOT@", repo_root().to_str().unwrap())
        .replace("@RUN_DIR@", run_dir.to_str().unwrap());
    std::fs::write(&cfg, text).unwrap();
    std::fs::remove_dir_all(run_dir.join("expected")).unwrap();
}

#[test]
fn a_run_directory_of_the_old_format_resumes_to_the_old_binarys_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    materialise(&run_dir);
    let old_state = koala_train::checkpoint::read_state(&run_dir.join("checkpoints/step-00000002"))
        .expect("the old trainer.json reads");
    assert_eq!(
        old_state.best_metric,
        koala_train::BestMetric::default(),
        "an old checkpoint's best is top-1 accuracy, higher is better"
    );
    assert_eq!(old_state.best, Some((0.1, 2)));

    let summary = koala_train::resume(&run_dir).expect("the old run resumes");
    assert_eq!(summary.steps, 4);
    let want = std::fs::read(fixture().join("expected/step-00000004-weights.safetensors")).unwrap();
    assert!(
        checkpoint_weights(&run_dir, 4) == want,
        "the resumed run's step-4 weights differ from the old binary's uninterrupted run"
    );
    assert!(
        checkpoint_weights(&run_dir, 2) != want,
        "steps 3-4 changed nothing: the comparison would be vacuous"
    );

    // The trainer state continues the old one, now with the metric recorded.
    let state =
        koala_train::checkpoint::read_state(&run_dir.join("checkpoints/step-00000004")).unwrap();
    let old_final: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture().join("expected/step-00000004-trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (state.cursor_epoch, state.cursor_position as u64),
        (
            old_final["cursor_epoch"].as_u64().unwrap(),
            old_final["cursor_position"].as_u64().unwrap()
        ),
        "data cursor"
    );
    let old_best = old_final["best"].as_array().unwrap();
    assert_eq!(
        state.best,
        Some((old_best[0].as_f64().unwrap(), old_best[1].as_u64().unwrap())),
        "best accuracy and its step"
    );
    assert_eq!(state.best_metric, koala_train::BestMetric::default());
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("checkpoints/step-00000004/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["best_metric"]["name"], "accuracy");
    assert_eq!(written["best_metric"]["direction"], "higher");
}
