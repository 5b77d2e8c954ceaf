//! Runs that meet damage: an unreadable image in the data set, and a
//! process killed while it was writing a checkpoint (and its metrics line).

mod common;

use common::*;
use koala_train::metrics;
use std::io::Write;
use std::path::Path;

/// A garbage `.jpg` in the training folder and one in the evaluation folder:
/// the run completes, the unreadable training sample is counted in the
/// summary, and evaluation reports the samples it could read.
#[test]
fn garbage_jpg_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = (tmp.path().join("train"), tmp.path().join("eval"));
    write_class_folders(&train, 6);
    write_class_folders(&eval, 2);
    // 24 readable + 1 garbage = 25 samples = exactly 5 batches of 5, so the
    // garbage file lies in one of the 5 batches of epoch 0 (nothing dropped).
    std::fs::write(
        train.join("class_1/broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a JPEG",
    )
    .unwrap();
    std::fs::write(eval.join("class_2/broken.jpg"), b"GIF89a garbage").unwrap();
    let cfg = koala_train::TrainConfig {
        eval_data: Some(eval.clone()),
        batch_size: 5,
        // Each epoch yields 4 full batches: the batch the garbage file makes
        // short is filled up from the next one, and the 4 readable samples left
        // at the epoch's end are unused (the training graph has a fixed batch).
        // So step 9 runs in epoch 2: epochs 0 and 1 both meet the garbage file.
        max_steps: Some(9),
        optimizer: "adamw".into(),
        checkpoint_every: Some(1),
        keep_checkpoints: 10,
        ..fast_config(&train, &tmp.path().join("run"))
    };
    let s = koala_train::finetune(cfg)
        .unwrap_or_else(|e| panic!("a corrupt image must not fail the run: {e:#}"));
    assert_eq!(s.steps, 9);
    // One unreadable file, met in two epochs: counted once.
    assert_eq!(s.skipped_samples, 1, "each unreadable file counts once");
    let readable_eval = CLASSES * 2;
    assert_eq!(
        s.after.samples, readable_eval,
        "evaluation counts the readable samples only"
    );
    assert_eq!(s.export_eval.samples, readable_eval);
    // No evaluation batch has the training batch size (both hold 4
    // readable images); the export is still verified, on the first one's rows.
    // Same bound and reasoning as in tests/export.rs.
    assert!(
        s.export_max_diff <= 1e-5,
        "export verified on a short batch: max |Δ| {:e}",
        s.export_max_diff
    );
    assert!(s.after.loss.is_finite());

    // Interrupted after any step and resumed, the run counts the same skips
    // (the checkpoint carries the indices the earlier segment met, so a file
    // met in both segments counts once) and ends the same.
    for k in 1..9 {
        let resumed_dir = tmp.path().join(format!("resumed-{k}"));
        interrupted_copy(&tmp.path().join("run"), &resumed_dir, k);
        let r = koala_train::resume(&resumed_dir).unwrap();
        assert_eq!(
            r.skipped_samples, s.skipped_samples,
            "resumed after step {k}"
        );
        assert!(
            checkpoint_weights(&resumed_dir, 9) == checkpoint_weights(&tmp.path().join("run"), 9),
            "resumed after step {k}: final weights"
        );
    }
}

/// The directory a process killed while saving `step` leaves behind: a
/// hidden temporary checkpoint directory with a truncated weights file and
/// no optimizer or trainer state.
fn leave_partial_checkpoint(run_dir: &Path, step: u64, complete_weights: &[u8]) {
    let tmp = run_dir.join(format!("checkpoints/.step-{step:08}.tmp"));
    std::fs::create_dir_all(tmp.join("optimizer-0")).unwrap();
    std::fs::write(
        tmp.join("weights.safetensors"),
        &complete_weights[..complete_weights.len() / 2],
    )
    .unwrap();
}

/// Killed while writing the step-8 checkpoint (and in the middle of a
/// metrics line): `list` ignores the temporary directory, `resume` continues
/// from step 4, redoes steps 5–8 exactly, and the metrics file ends up with
/// each step once.
#[test]
fn killed_while_checkpointing_resumes_from_the_previous_checkpoint() {
    let (tmp, data) = scratch_with_data(8);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let cfg = koala_train::TrainConfig {
        max_steps: Some(8),
        checkpoint_every: Some(4),
        eval_every: Some(4),
        ..fast_config(&data, &a)
    };
    koala_train::finetune(cfg).unwrap();
    let final_weights = checkpoint_weights(&a, 8);

    // Run B = run A killed during its last checkpoint: config, the step-4
    // checkpoint, the metrics logged up to step 8 plus a half-written line.
    interrupted_copy(&a, &b, 4);
    leave_partial_checkpoint(&b, 8, &final_weights);
    std::fs::copy(a.join("metrics.jsonl"), b.join("metrics.jsonl")).unwrap();
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("metrics.jsonl"))
        .unwrap();
    m.write_all(br#"{"step":8,"epoch":1.33,"split":"va"#)
        .unwrap();
    drop(m);

    assert_eq!(
        checkpoint_steps(&b),
        vec![4],
        "the temporary directory is not a checkpoint"
    );
    let s = koala_train::resume(&b)
        .unwrap_or_else(|e| panic!("resume after a kill mid-checkpoint failed: {e:#}"));
    assert_eq!(s.steps, 8);
    assert!(
        checkpoint_weights(&b, 8) == final_weights,
        "resumed from step 4, the step-8 weights equal the uninterrupted run's"
    );
    assert!(
        !b.join("checkpoints/.step-00000008.tmp").exists(),
        "the stale temporary directory was replaced by the real checkpoint"
    );

    let records = metrics::read(&b.join("metrics.jsonl")).unwrap();
    let mut keys: Vec<(u64, String)> = records.iter().map(|r| (r.step, r.split.clone())).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a resumed run logs each (step, split) once");
    assert_eq!(
        records.iter().filter(|r| r.split == "train").count(),
        8,
        "train records for steps 1..=8"
    );
}

/// The latest checkpoint directory exists but is damaged (a truncated
/// weights file, e.g. a disk problem): resume names the file instead of
/// panicking.
#[test]
fn damaged_latest_checkpoint_is_a_clear_error() {
    let (tmp, data) = scratch_with_data(8);
    let run = tmp.path().join("run");
    let cfg = koala_train::TrainConfig {
        max_steps: Some(2),
        checkpoint_every: Some(1),
        ..fast_config(&data, &run)
    };
    koala_train::finetune(cfg).unwrap();
    let w = run.join("checkpoints/step-00000002/weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 3]).unwrap();
    let err = format!("{:#}", koala_train::resume(&run).unwrap_err());
    assert!(
        err.contains("step-00000002") && err.contains("weights.safetensors"),
        "error names the damaged file: {err}"
    );
}
