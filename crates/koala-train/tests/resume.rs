//! Resume exactness: a run interrupted after a checkpoint and resumed ends
//! with bitwise the same weights and optimizer state as the uninterrupted run.
//!
//! The interruption is real in the sense that matters: the resumed run
//! starts in a fresh run directory that holds only what a killed process
//! leaves behind (config.toml and the step-5 checkpoint), in a new
//! `Run` with freshly built graph, loaders and optimizers. Step 5 is in the
//! middle of epoch 0 (6 batches per epoch) and the remaining steps cross
//! into epoch 1, so the data cursor, the per-epoch shuffle and the seeded
//! augmentation all have to be restored exactly.
//!
//! Bitwise equality is the right bar: with one ORT thread every kernel is
//! deterministic, the loader derives every random draw from (seed, epoch,
//! sample), the schedule is a pure function of the step, and the optimizer
//! state round-trips exactly (f32/f64 tensors as raw bytes, scalars in JSON
//! with shortest round-trip formatting). Any difference is a lost piece of
//! state, not rounding.

mod common;

use common::*;
use std::path::Path;

/// Runs A (8 steps, checkpoints at 5 and 8) and B (A's step-5 checkpoint
/// resumed in a new directory) and compares the step-8 checkpoints.
fn assert_resume_is_exact(optimizer: &str) {
    let (tmp, data) = scratch_with_data(8);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let cfg = koala_train::TrainConfig {
        optimizer: optimizer.into(),
        max_steps: Some(8),
        checkpoint_every: Some(5),
        keep_checkpoints: 3,
        ..fast_config(&data, &a)
    };
    let full = koala_train::finetune(cfg)
        .unwrap_or_else(|e| panic!("{optimizer}: uninterrupted run failed: {e:#}"));
    assert_eq!(full.steps, 8);
    assert_eq!(
        checkpoint_steps(&a),
        vec![5, 8],
        "{optimizer}: checkpoints of run A"
    );

    interrupted_copy(&a, &b, 5);
    let resumed =
        koala_train::resume(&b).unwrap_or_else(|e| panic!("{optimizer}: resume failed: {e:#}"));
    assert_eq!(resumed.steps, 8);
    assert!(
        resumed.before.is_none(),
        "a resumed run has no before-training evaluation"
    );

    let (wa, wb) = (checkpoint_weights(&a, 8), checkpoint_weights(&b, 8));
    assert!(
        wa == wb,
        "{optimizer}: resumed weights differ from the uninterrupted run's"
    );
    assert!(
        wa != checkpoint_weights(&a, 5),
        "{optimizer}: steps 6..8 changed nothing, the comparison would be vacuous"
    );
    for group in 0..2 {
        let rel = format!("checkpoints/step-00000008/optimizer-{group}");
        if a.join(&rel).exists() {
            assert_same_optimizer_state(&a.join(&rel), &b.join(&rel), optimizer);
        }
    }
    // The evaluation after training sees the same weights, so the same numbers.
    assert_eq!(
        full.after, resumed.after,
        "{optimizer}: final evaluation differs"
    );
    assert_eq!(
        std::fs::read(&full.export).unwrap(),
        std::fs::read(&resumed.export).unwrap(),
        "{optimizer}: exported models differ"
    );
}

/// Optimizer states are compared by content, not bytes: koala-optim writes
/// the safetensors `__metadata__` from a `HashMap`, whose iteration order
/// (and so the header bytes, and the file hash recorded in the JSON) differs
/// between processes. Every tensor's bytes and every other JSON field must
/// be identical.
fn assert_same_optimizer_state(a: &Path, b: &Path, optimizer: &str) {
    let (ta, tb) = (
        std::fs::read(a.join("optimizer_state.safetensors")).unwrap(),
        std::fs::read(b.join("optimizer_state.safetensors")).unwrap(),
    );
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&ta).unwrap(),
        safetensors::SafeTensors::deserialize(&tb).unwrap(),
    );
    let mut names = sa.names();
    names.sort();
    let mut names_b = sb.names();
    names_b.sort();
    assert_eq!(
        names, names_b,
        "{optimizer}: optimizer state tensors differ"
    );
    for n in names {
        let (x, y) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert!(
            x.data() == y.data() && x.shape() == y.shape(),
            "{optimizer}: optimizer state tensor '{n}' differs after resume"
        );
    }
    let json = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("optimizer_state.json")).unwrap())
                .unwrap();
        v.as_object_mut().unwrap().remove("tensors_fnv1a64");
        v
    };
    assert_eq!(
        json(a),
        json(b),
        "{optimizer}: optimizer scalars differ after resume"
    );
}

#[test]
fn koala_pp_resume_is_bitwise_exact() {
    assert_resume_is_exact("koala++");
}

#[test]
fn adamw_resume_is_bitwise_exact() {
    assert_resume_is_exact("adamw");
}

#[test]
fn sgd_resume_is_bitwise_exact() {
    assert_resume_is_exact("sgd");
}

#[test]
fn koala_v_resume_is_bitwise_exact() {
    assert_resume_is_exact("koala-v");
}

#[test]
fn koala_m_resume_is_bitwise_exact() {
    assert_resume_is_exact("koala-m");
}
