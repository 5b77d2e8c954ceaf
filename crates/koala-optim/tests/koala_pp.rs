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

/// What [`checked_run`] saw: the final parameters, how many (tensor, step) updates the bound
/// left free / clamped, and every unbounded step factor in first-step units, γ·(σ+Q).
struct CheckedRun {
    params: Vec<Vec<f32>>,
    bound_acted: [usize; 2],
    free_steps: Vec<f64>,
}

/// Runs 12 steps of per-tensor KOALA++ (σ = Q = 0.1, wd 5e-4, η 0.5) with target `loss_target`
/// and bound `max_step` on `path`, asserting spec §5.3's invariant at every updated tensor and
/// step: h·Δθ = −γ·(S − R) with h = g + wd·θ, ℓ = L + ½·wd·‖θ‖² − f* taken before the step and
/// γ = min(η·ℓ/S, γ_max/(σ+Q)) (without a bound, −η·ℓ·(S − R)/S). Tolerance 1e-4 relative:
/// Δθ is a difference of f32 parameters (≈1e-7 relative each) of modest cancellation.
fn checked_run(path: KoalaPPPath, loss_target: f64, max_step: Option<f64>) -> CheckedRun {
    let problem = Problem::quadratic(&[50_000, 64]);
    let (wd, lr, sigma_plus_q) = (5e-4, 0.5, 0.2);
    let mut cfg = config(path, false, wd);
    if let OptimizerConfig::KoalaPlusPlus(c) = &mut cfg {
        c.loss_target = loss_target;
        c.max_step = max_step;
    }
    let opt = build(&cfg).unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut run = CheckedRun {
        params: problem.init.clone(),
        bound_acted: [0; 2],
        free_steps: Vec::new(),
    };
    for k in 1..=12u64 {
        let before = run.params.clone();
        let (loss, grads) = problem.loss_and_grads(&run.params);
        step_with_grads(
            opt.as_ref(),
            &mut state,
            &mut run.params,
            &grads,
            loss,
            lr,
            k,
        );
        let r = state.global("R").unwrap();
        for (i, rep) in state.tensor_reports().enumerate() {
            let s = rep.s.unwrap();
            let (h_dtheta, theta_sq) = h_dot_step(&grads[i], &before[i], &run.params[i], wd);
            let ell = loss + 0.5 * wd * theta_sq - loss_target;
            let free = lr * ell / s;
            run.free_steps.push(free * sigma_plus_q);
            let gamma = max_step.map_or(free, |m| free.min(m / sigma_plus_q));
            run.bound_acted[usize::from(gamma < free)] += 1;
            let want = -gamma * (s - r);
            let err = ((h_dtheta - want) / want).abs();
            assert!(
                err < 1e-4,
                "{path:?} f* {loss_target} γ_max {max_step:?} step {k} tensor {i}: {h_dtheta} vs {want}"
            );
        }
    }
    run
}

/// Spec §5.3's invariant (see [`checked_run`]) for the paper's target f* = 0 and a target
/// below zero (`loss_target`), on both paths.
#[test]
fn step_satisfies_the_linearised_loss_invariant() {
    for path in [KoalaPPPath::Fused, KoalaPPPath::Literal] {
        for loss_target in [0.0, -0.5] {
            checked_run(path, loss_target, None);
        }
    }
}

/// `max_step` (the bounded Polyak step, a koala extension): the invariant with the bounded
/// γ on both paths, the bound acting on some steps and not on others (so both branches are
/// checked), and a bound that never acts leaves the step bitwise the reference's.
#[test]
fn max_step_bounds_the_step_factor() {
    for path in [KoalaPPPath::Fused, KoalaPPPath::Literal] {
        let free = checked_run(path, 0.0, None);
        let loose = checked_run(path, 0.0, Some(1e30));
        assert_eq!(loose.bound_acted[1], 0);
        assert_eq!(
            free.params, loose.params,
            "{path:?}: a bound that never acts changed the step"
        );
        // A bound at the median of the unbounded run's γ·(σ+Q) acts on about half the steps.
        let mut steps = free.free_steps;
        steps.sort_by(f64::total_cmp);
        let acted = checked_run(path, 0.0, Some(steps[steps.len() / 2])).bound_acted;
        assert!(
            acted[0] > 0 && acted[1] > 0,
            "{path:?}: want steps with and without the bound acting, got (free, bound) {acted:?}"
        );
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
