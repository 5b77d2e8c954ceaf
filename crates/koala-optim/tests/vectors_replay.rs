//! Replays the reference test vectors (README of tests/fixtures/koala-vectors) in
//! teacher-forced trajectory mode: parameters start at `initial_params` and evolve on their
//! own; only the inputs (gradients, loss, loss variance, learning rate) come from the file,
//! cast to f32 where the optimizer takes f32.
//!
//! Tolerances (norm-wise relative error per tensor, ‖a−b‖/‖b‖), from the vectors README's
//! row for f32 implementations: 1e-4 on parameters, 1e-3 on optimizer state. R is computed
//! in f64 from f64 inputs exactly as the reference does, so it gets 1e-12.
//!
//! `KOALA_VECTORS_DIR=<dir> cargo test -p koala-optim` replays any directory in the same
//! format.

use std::path::{Path, PathBuf};

use koala_optim::vectors::{self, ExpectedState, VectorAlgorithm, VectorCase, VectorStep};
use koala_optim::{build, KoalaPPPath, OptimizerConfig, OptimizerState, StepContext};

const PARAM_TOL: f64 = 1e-4;
const STATE_TOL: f64 = 1e-3;
const R_TOL: f64 = 1e-12;

/// The directory the replay test reads: `KOALA_VECTORS_DIR`, else the shipped vectors.
fn vectors_dir() -> PathBuf {
    match std::env::var_os("KOALA_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => shipped_vectors_dir(),
    }
}

/// The vectors shipped in the repository. Tests that edit one known case file read it from
/// here, whatever `KOALA_VECTORS_DIR` points at (another valid directory need not hold it).
fn shipped_vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/koala-vectors")
}

/// ‖a − b‖ / ‖b‖; the absolute ‖a‖ when b is exactly zero (e.g. KOALA-M's initial
/// velocity), so zero references still demand (near-)zero results.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

fn rel_err_scalar(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        a.abs()
    } else {
        ((a - b) / b).abs()
    }
}

/// Collects every mismatch of one replay, so a failure shows all of them at once.
struct Checker<'a> {
    case: &'a str,
    failures: Vec<String>,
    checks: usize,
    /// Largest error seen per tolerance class, for the summary line.
    worst: Worst,
}

#[derive(Default, Clone, Copy)]
struct Worst {
    params: f64,
    state: f64,
}

impl Worst {
    fn merge(&mut self, o: Worst) {
        self.params = self.params.max(o.params);
        self.state = self.state.max(o.state);
    }
}

impl Checker<'_> {
    fn check(&mut self, k: u64, what: &str, err: f64, tol: f64) {
        self.checks += 1;
        if tol == PARAM_TOL {
            self.worst.params = self.worst.params.max(err);
        } else if tol == STATE_TOL {
            self.worst.state = self.worst.state.max(err);
        }
        // NaN must fail too, hence "not within" rather than "above".
        let within = err <= tol;
        if !within {
            self.failures.push(format!(
                "{} step {k}: {what}: error {err:.3e} > {tol:.0e}",
                self.case
            ));
        }
    }

    fn check_flag(&mut self, k: u64, what: &str, got: bool, want: bool) {
        self.checks += 1;
        if got != want {
            self.failures.push(format!(
                "{} step {k}: {what}: got {got}, expected {want}",
                self.case
            ));
        }
    }
}

fn replay(case: &VectorCase, config: &OptimizerConfig, label: &str) -> (Vec<String>, usize, Worst) {
    let opt = build(config).expect("vector hyper-parameters are valid");
    let mut state = opt.init(&case.tensors).expect("init");
    let mut params: Vec<Vec<f32>> = case
        .initial_params
        .iter()
        .map(|p| p.iter().map(|x| *x as f32).collect())
        .collect();
    let name = format!("{} [{label}]", case.file.display());
    let mut chk = Checker {
        case: &name,
        failures: Vec::new(),
        checks: 0,
        worst: Worst::default(),
    };
    for step in &case.steps {
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        opt.predict(&mut state, &mut views).expect("predict");
        for (i, t) in case.tensors.iter().enumerate() {
            let err = rel_err(views[i], &step.params_eval[i]);
            chk.check(step.k, &format!("params_eval.{}", t.name), err, PARAM_TOL);
        }
        let grads: Vec<Option<Vec<f32>>> = step
            .grads
            .iter()
            .map(|g| g.as_ref().map(|g| g.iter().map(|x| *x as f32).collect()))
            .collect();
        let grad_views: Vec<Option<&[f32]>> = grads.iter().map(|g| g.as_deref()).collect();
        let ctx = StepContext {
            loss: step.loss,
            loss_var: step.loss_var,
            lr: step.lr,
            step: step.k,
        };
        opt.step(&mut state, &mut views, &grad_views, &ctx)
            .expect("step");
        compare_step(&mut chk, case, step, &params, &state);
    }
    (chk.failures, chk.checks, chk.worst)
}

fn compare_step(
    chk: &mut Checker,
    case: &VectorCase,
    step: &VectorStep,
    params: &[Vec<f32>],
    state: &OptimizerState,
) {
    let k = step.k;
    let r = state.global("R").expect("KOALA state has R");
    chk.check(k, "r_used", rel_err_scalar(r, step.r_used), R_TOL);
    for (i, (t, rep)) in case.tensors.iter().zip(state.tensor_reports()).enumerate() {
        chk.check_flag(
            k,
            &format!("skipped.{}", t.name),
            rep.skipped,
            step.skipped[i],
        );
        let err = rel_err(&params[i], &step.params_after[i]);
        chk.check(k, &format!("params_after.{}", t.name), err, PARAM_TOL);
    }
    match &step.expected {
        ExpectedState::KoalaPP(tensors) => {
            for (i, (t, want)) in case.tensors.iter().zip(tensors).enumerate() {
                let init = state.is_initialized(i).unwrap();
                chk.check_flag(
                    k,
                    &format!("state_after.{} present", t.name),
                    init,
                    want.is_some(),
                );
                let Some(want) = want else { continue };
                let v = state.vector(i, "v").unwrap();
                let h = state.vector(i, "H").unwrap();
                let s = state.scalar(i, "S").unwrap();
                chk.check(
                    k,
                    &format!("state_after.{}.v", t.name),
                    rel_err(v, &want.v),
                    STATE_TOL,
                );
                chk.check(
                    k,
                    &format!("state_after.{}.H", t.name),
                    rel_err(h, &want.h),
                    STATE_TOL,
                );
                chk.check(
                    k,
                    &format!("state_after.{}.S", t.name),
                    rel_err_scalar(s, want.s),
                    STATE_TOL,
                );
            }
        }
        ExpectedState::KoalaV { sigma_after_update } => {
            let s = state.global("s").unwrap();
            chk.check(
                k,
                "sigma_after_update",
                rel_err_scalar(s, *sigma_after_update),
                STATE_TOL,
            );
        }
        ExpectedState::KoalaM {
            p_after,
            velocity_after,
            wavg_after,
            qw,
        } => {
            let p: Vec<f32> = ["P00", "P01", "P10", "P11"]
                .iter()
                .map(|n| state.global(n).unwrap() as f32)
                .collect();
            chk.check(k, "P_after", rel_err(&p, p_after), STATE_TOL);
            let got_qw = state.global("qw").unwrap();
            chk.check(k, "predict.qw", rel_err_scalar(got_qw, *qw), STATE_TOL);
            for (i, t) in case.tensors.iter().enumerate() {
                let u = state.vector(i, "velocity").unwrap();
                let w = state.vector(i, "wavg").unwrap();
                chk.check(
                    k,
                    &format!("velocity_after.{}", t.name),
                    rel_err(u, &velocity_after[i]),
                    STATE_TOL,
                );
                chk.check(
                    k,
                    &format!("wavg_after.{}", t.name),
                    rel_err(w, &wavg_after[i]),
                    STATE_TOL,
                );
            }
        }
    }
}

fn with_path(config: &OptimizerConfig, path: KoalaPPPath) -> OptimizerConfig {
    match config {
        OptimizerConfig::KoalaPlusPlus(c) => {
            let mut c = c.clone();
            c.path = path;
            OptimizerConfig::KoalaPlusPlus(c)
        }
        other => other.clone(),
    }
}

#[test]
fn every_vector_case_replays_within_tolerance() {
    let dir = vectors_dir();
    let cases = vectors::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !cases.is_empty(),
        "no *.json case files in {} (set KOALA_VECTORS_DIR to a vectors directory)",
        dir.display()
    );
    let mut failures = Vec::new();
    let (mut replays, mut checks) = (0, 0);
    let mut worst = Worst::default();
    for case in &cases {
        let runs: Vec<(OptimizerConfig, &str)> = match case.algorithm {
            VectorAlgorithm::KoalaPP(_) => vec![
                (with_path(&case.config, KoalaPPPath::Fused), "fused"),
                (with_path(&case.config, KoalaPPPath::Literal), "literal"),
            ],
            _ => vec![(case.config.clone(), "default")],
        };
        for (config, label) in runs {
            let (f, n, w) = replay(case, &config, label);
            failures.extend(f);
            worst.merge(w);
            checks += n;
            replays += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checks} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "replayed {} case files ({replays} replays, {checks} checks) from {}; \
         worst params error {:.2e}, worst state error {:.2e}",
        cases.len(),
        dir.display(),
        worst.params,
        worst.state
    );
}

/// The three algorithms all appear in the default directory, so none is silently untested.
#[test]
fn default_vectors_cover_every_algorithm_and_path() {
    if std::env::var_os("KOALA_VECTORS_DIR").is_some() {
        return; // a custom directory may legitimately hold a subset
    }
    let cases = vectors::load_dir(&vectors_dir()).unwrap();
    for want in [
        VectorAlgorithm::KoalaPP(koala_optim::KoalaPPVariant::Symmetric),
        VectorAlgorithm::KoalaPP(koala_optim::KoalaPPVariant::Vanilla),
        VectorAlgorithm::KoalaV,
        VectorAlgorithm::KoalaM,
    ] {
        assert!(
            cases.iter().any(|c| c.algorithm == want),
            "no case for {want:?}"
        );
    }
    assert_eq!(cases.len(), 20, "the README lists 20 cases");
}

fn malformed_copy(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let src = shipped_vectors_dir().join("kpp_sym_wd0_rfixed.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&src).unwrap()).unwrap();
    edit(&mut value);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken_case.json");
    std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
    (dir, path)
}

#[test]
fn malformed_number_names_file_and_field() {
    let (dir, _) = malformed_copy(|v| v["steps"][2]["grads"]["W"][1] = "oops".into());
    let err = vectors::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("broken_case.json"), "{err}");
    assert!(err.contains("steps[2].grads.W[1]"), "{err}");
}

#[test]
fn missing_field_names_file_and_field() {
    let (dir, _) = malformed_copy(|v| {
        v["steps"][0].as_object_mut().unwrap().remove("loss");
    });
    let err = vectors::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("broken_case.json"), "{err}");
    assert!(err.contains("`steps[0].loss`"), "{err}");
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn wrong_length_and_format_are_reported() {
    let (_dir, path) = malformed_copy(|v| {
        v["initial_params"]["b"].as_array_mut().unwrap().pop();
    });
    let err = vectors::load_case(&path).unwrap_err().to_string();
    assert!(
        err.contains("initial_params.b") && err.contains("expected 4"),
        "{err}"
    );

    let (_dir, path) = malformed_copy(|v| v["format"] = "koala-test-vectors/2".into());
    let err = vectors::load_case(&path).unwrap_err().to_string();
    assert!(
        err.contains("`format`") && err.contains("koala-test-vectors/1"),
        "{err}"
    );
}

#[test]
fn empty_directory_yields_no_cases() {
    // The replay test asserts a non-zero count; this pins down that an empty directory
    // really produces zero cases (rather than an error that would hide the count check).
    let dir = tempfile::tempdir().unwrap();
    assert!(vectors::load_dir(dir.path()).unwrap().is_empty());
}

/// The first step of `kpp_sym_wd0_rfixed.json` with tensor `b`'s gradient set to zero, so the
/// `||grad|| < 1e-9` rule skips it and it has no state after the step; `no_state` is written
/// as `b`'s `state_after` entry. With fixed R and no weight decay, `W`'s filter does not
/// depend on `b`, so `W`'s expected values stay those of the original file.
fn first_step_with_b_unstarted(no_state: serde_json::Value) -> (tempfile::TempDir, PathBuf) {
    malformed_copy(|v| {
        let initial_b = v["initial_params"]["b"].clone();
        v["num_steps"] = 1.into();
        let steps = v["steps"].as_array_mut().unwrap();
        steps.truncate(1);
        let s = &mut steps[0];
        s["grads"]["b"] = serde_json::json!([0.0, 0.0, 0.0, 0.0]);
        s["skipped"]["b"] = true.into();
        s["params_after"]["b"] = initial_b;
        s["state_after"]["b"] = no_state;
    })
}

/// "No state yet" is `null` in the README and `{"v": null, "H": null, "S": null}` from the
/// reference generator (a tensor whose first gradient is zero); both parse to "no state" and
/// replay: the optimizer must also hold no state for `b` after the step.
#[test]
fn no_state_yet_may_be_null_or_an_object_of_nulls() {
    for no_state in [
        serde_json::Value::Null,
        serde_json::json!({"v": null, "H": null, "S": null}),
    ] {
        let (_dir, path) = first_step_with_b_unstarted(no_state.clone());
        let case = vectors::load_case(&path).unwrap_or_else(|e| panic!("{no_state}: {e}"));
        let ExpectedState::KoalaPP(states) = &case.steps[0].expected else {
            panic!("kpp_sym_wd0_rfixed.json is a KOALA++ case");
        };
        let names: Vec<&str> = case.tensors.iter().map(|t| t.name.as_str()).collect();
        let b = names.iter().position(|n| *n == "b").unwrap();
        let w = names.iter().position(|n| *n == "W").unwrap();
        assert!(states[b].is_none(), "{no_state}: b must have no state");
        assert!(states[w].is_some(), "{no_state}: W keeps its state");
        let (failures, checks, _) = replay(&case, &case.config, "b unstarted");
        assert!(checks > 0);
        assert!(failures.is_empty(), "{no_state}:\n{}", failures.join("\n"));
    }
}

#[test]
fn a_partly_null_state_names_the_entry_and_the_null_fields() {
    let (_dir, path) = first_step_with_b_unstarted(
        serde_json::json!({"v": null, "H": [0.0, 0.0, 0.0, 0.0], "S": null}),
    );
    let err = vectors::load_case(&path).unwrap_err().to_string();
    assert!(
        err.contains("broken_case.json")
            && err.contains("`steps[0].state_after.b`")
            && err.contains("null v, S"),
        "{err}"
    );
}
