//! Checkpoint failure modes: every mismatch is an error naming the file and the field or
//! tensor, and a failed load leaves the state untouched. (Bitwise resume for every
//! optimizer is in properties.rs.)

mod common;

use common::{train_step, Problem};
use koala_optim::{
    build, preset, KoalaPPConfig, KoalaPPInnovation, OptimizerConfig, OptimizerState, StatePaths,
    TensorSpec,
};

fn saved(dir: &std::path::Path) -> (StatePaths, Problem) {
    let problem = Problem::quadratic(&[300, 5]);
    let opt = build(&preset("vision-cnn").unwrap()).unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut params = problem.init.clone();
    for k in 1..=3 {
        train_step(opt.as_ref(), &mut state, &mut params, &problem, 0.1, k);
    }
    let paths = StatePaths::in_dir(dir);
    state.save(&paths).unwrap();
    (paths, problem)
}

fn fresh(specs: &[TensorSpec]) -> OptimizerState {
    build(&preset("vision-cnn").unwrap())
        .unwrap()
        .init(specs)
        .unwrap()
}

fn load_err(state: &mut OptimizerState, paths: &StatePaths) -> String {
    state.load(paths).unwrap_err().to_string()
}

#[test]
fn save_writes_both_files_and_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["optimizer_state.json", "optimizer_state.safetensors"]
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("optimizer_state.json")).unwrap())
            .unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["kind"], "koala-pp/fused");
}

#[test]
fn wrong_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, problem) = saved(dir.path());
    let mut specs = problem.specs.clone();
    specs[1] = TensorSpec::new("other", [5]);
    let err = load_err(&mut fresh(&specs), &paths);
    assert!(
        err.contains("optimizer_state.json") && err.contains("`t1`") && err.contains("`other`"),
        "{err}"
    );
}

/// Per-tensor and joint KOALA++ share a layout; resuming one as the other would silently
/// change the filter, so it is refused, naming both.
#[test]
fn other_koala_innovation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, problem) = saved(dir.path());
    let OptimizerConfig::KoalaPlusPlus(c) = preset("vision-cnn").unwrap() else {
        unreachable!()
    };
    let joint = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        innovation: KoalaPPInnovation::Joint,
        ..c
    });
    let mut state = build(&joint).unwrap().init(&problem.specs).unwrap();
    let err = load_err(&mut state, &paths);
    assert!(
        err.contains("PerTensor") && err.contains("Joint") && err.contains("innovation"),
        "{err}"
    );
}

#[test]
fn wrong_optimizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, problem) = saved(dir.path());
    let mut state = build(&preset("koala-v").unwrap())
        .unwrap()
        .init(&problem.specs)
        .unwrap();
    let err = load_err(&mut state, &paths);
    assert!(
        err.contains("`kind`") && err.contains("koala-pp/fused") && err.contains("koala-v"),
        "{err}"
    );
}

#[test]
fn mismatched_pair_of_files_is_detected_and_state_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, problem) = saved(dir.path());
    // Another save's vectors next to this save's scalars (as after an interrupted save).
    let other = tempfile::tempdir().unwrap();
    let opt = build(&preset("vision-cnn").unwrap()).unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut params = problem.init.clone();
    train_step(opt.as_ref(), &mut state, &mut params, &problem, 0.1, 1);
    state.save(&StatePaths::in_dir(other.path())).unwrap();
    std::fs::copy(
        other.path().join("optimizer_state.safetensors"),
        &paths.tensors,
    )
    .unwrap();

    let mut target = fresh(&problem.specs);
    let err = load_err(&mut target, &paths);
    assert!(
        err.contains("optimizer_state.safetensors") && err.contains("tensors_fnv1a64"),
        "{err}"
    );
    assert_eq!(
        target.is_initialized(0),
        Some(false),
        "failed load modified the state"
    );
}

#[test]
fn missing_scalar_and_bad_version_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, problem) = saved(dir.path());
    let text = std::fs::read_to_string(&paths.scalars).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["tensors"][1]["scalars"]
        .as_object_mut()
        .unwrap()
        .remove("S");
    std::fs::write(&paths.scalars, json.to_string()).unwrap();
    let err = load_err(&mut fresh(&problem.specs), &paths);
    assert!(
        err.contains("tensors[1] (`t1`).scalars.S") && err.contains("missing"),
        "{err}"
    );

    json["format_version"] = 99.into();
    std::fs::write(&paths.scalars, json.to_string()).unwrap();
    let err = load_err(&mut fresh(&problem.specs), &paths);
    assert!(err.contains("`format_version` is 99"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::in_dir(dir.path().join("nowhere"));
    let err = load_err(&mut fresh(&[TensorSpec::new("w", [3])]), &paths);
    assert!(
        err.contains("nowhere") && err.contains("optimizer_state.json"),
        "{err}"
    );
}

/// The same state saved repeatedly gives byte-identical files (checkpoints
/// can be compared and deduplicated by hash). Several saves, because a
/// hash-ordered header would differ only some of the time.
#[test]
fn saving_is_byte_reproducible() {
    let first = tempfile::tempdir().unwrap();
    let (p0, _) = saved(first.path());
    for _ in 0..8 {
        let other = tempfile::tempdir().unwrap();
        let (p, _) = saved(other.path());
        for (x, y) in [(&p0.tensors, &p.tensors), (&p0.scalars, &p.scalars)] {
            assert_eq!(
                std::fs::read(x).unwrap(),
                std::fs::read(y).unwrap(),
                "{} differs between two saves",
                y.display()
            );
        }
    }
}
