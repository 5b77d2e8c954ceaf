//! KOALA++-specific checks beyond the reference vectors (which are 16 parameters, one
//! chunk): the spec's step invariant, fused versus literal on multi-chunk tensors, and the
//! optional S guard.

mod common;

use common::{h_dot_step, step_with_grads, train_step, Problem};
use koala_optim::{build, KoalaPPConfig, KoalaPPPath, OptimizerConfig};

fn config(path: KoalaPPPath, s_guard: bool, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        sigma: 0.1,
        q: 0.1,
        weight_decay,
        path,
        s_guard,
        ..KoalaPPConfig::default()
    })
}

/// Spec §5.3: h·Δθ = −η·ℓ·(S − R)/S for every updated tensor and step, with h = g + wd·θ
/// and ℓ = L + ½·wd·‖θ‖² − f* taken before the step, for the paper's target f* = 0 and a
/// target below zero (`loss_target`), on both paths. Tolerance 1e-4 relative: Δθ is a
/// difference of f32 parameters (≈1e-7 relative each) of modest cancellation.
#[test]
fn step_satisfies_the_linearised_loss_invariant() {
    let problem = Problem::quadratic(&[50_000, 64]);
    let (wd, lr) = (5e-4, 0.5);
    for (path, loss_target) in [
        (KoalaPPPath::Fused, 0.0),
        (KoalaPPPath::Literal, 0.0),
        (KoalaPPPath::Fused, -0.5),
        (KoalaPPPath::Literal, -0.5),
    ] {
        let mut cfg = config(path, false, wd);
        if let OptimizerConfig::KoalaPlusPlus(c) = &mut cfg {
            c.loss_target = loss_target;
        }
        let opt = build(&cfg).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        for k in 1..=12u64 {
            let before = params.clone();
            let (loss, grads) = problem.loss_and_grads(&params);
            step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, k);
            let r = state.global("R").unwrap();
            for (i, rep) in state.tensor_reports().enumerate() {
                let s = rep.s.unwrap();
                let (h_dtheta, theta_sq) = h_dot_step(&grads[i], &before[i], &params[i], wd);
                let ell = loss + 0.5 * wd * theta_sq - loss_target;
                let want = -lr * ell * (s - r) / s;
                let err = ((h_dtheta - want) / want).abs();
                assert!(
                    err < 1e-4,
                    "{path:?} f* {loss_target} step {k} tensor {i}: {h_dtheta} vs {want}"
                );
            }
        }
    }
}

/// The fused algebra (spec §5.5) against the literal step on tensors spanning several
/// chunks, 40 steps: the vectors README's f32 tolerances (1e-4 params), since both are f32
/// computations of the same f64-exact formula.
#[test]
fn fused_matches_literal_on_multi_chunk_tensors() {
    let problem = Problem::quadratic(&[100_000, 3_000, 1]);
    let run = |path| {
        let opt = build(&config(path, false, 5e-4)).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        for k in 1..=40 {
            train_step(opt.as_ref(), &mut state, &mut params, &problem, 0.5, k);
        }
        params
    };
    let (fused, literal) = (run(KoalaPPPath::Fused), run(KoalaPPPath::Literal));
    for (f, l) in fused.iter().zip(&literal) {
        let diff: f64 = f.iter().zip(l).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let norm: f64 = l.iter().map(|b| f64::from(*b).powi(2)).sum();
        assert!(
            (diff / norm).sqrt() < 1e-4,
            "relative difference {}",
            (diff / norm).sqrt()
        );
    }
}

/// On this quadratic the reference recursion produces S < R (the implicit covariance is
/// not positive along h) around step 50; the guard must catch exactly such steps, keep
/// every S above R, and the fused and literal paths must agree on when it fires.
#[test]
fn s_guard_restarts_only_when_s_is_not_above_r() {
    let problem = Problem::quadratic(&[100, 7]);
    let trace = |path, guard| {
        let opt = build(&config(path, guard, 0.0)).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        let mut out = Vec::new();
        for k in 1..=300 {
            train_step(opt.as_ref(), &mut state, &mut params, &problem, 1.0, k);
            let r = state.global("R").unwrap();
            for rep in state.tensor_reports().filter(|r| !r.skipped) {
                out.push((k, rep.s.unwrap() > r, rep.guard_hit));
            }
        }
        out
    };
    let unguarded = trace(KoalaPPPath::Fused, false);
    assert!(
        unguarded.iter().any(|(_, above, _)| !above),
        "the test problem no longer produces S <= R; pick one that does"
    );
    assert!(
        unguarded.iter().all(|(_, _, hit)| !hit),
        "guard off must never fire"
    );
    for path in [KoalaPPPath::Fused, KoalaPPPath::Literal] {
        let guarded = trace(path, true);
        assert!(
            guarded.iter().any(|(_, _, hit)| *hit),
            "{path:?}: guard never fired"
        );
        assert!(
            guarded.iter().all(|(_, above, _)| *above),
            "{path:?}: S <= R slipped through"
        );
    }
    let hits = |t: Vec<(u64, bool, bool)>| -> Vec<u64> {
        t.into_iter().filter(|x| x.2).map(|x| x.0).collect()
    };
    assert_eq!(
        hits(trace(KoalaPPPath::Fused, true)),
        hits(trace(KoalaPPPath::Literal, true))
    );
}
