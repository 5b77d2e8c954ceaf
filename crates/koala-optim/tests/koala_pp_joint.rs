//! KOALA++ with joint innovation (`koala_pp_joint.rs`): the summed invariant, the reduction
//! to the per-tensor step for one tensor, groups stepped together as one filter, and an
//! independent f64 re-computation of the joint step from its formulas. (Bitwise resume and
//! thread-count independence run in `properties.rs`, whose table has the joint entries.)

mod common;

use common::{h_dot_step, step_with_grads, train_step, Problem};
use koala_optim::{
    build, step_groups, GroupStep, KoalaPPConfig, KoalaPPInnovation, KoalaPPPath, OptimizerConfig,
    OptimizerState, StepContext,
};

fn config(innovation: KoalaPPInnovation, weight_decay: f64) -> KoalaPPConfig {
    KoalaPPConfig {
        sigma: 0.1,
        q: 0.1,
        weight_decay,
        innovation,
        ..KoalaPPConfig::default()
    }
}

fn joint(weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::KoalaPlusPlus(config(KoalaPPInnovation::Joint, weight_decay))
}

fn ctx(loss: f64, lr: f64, step: u64) -> StepContext {
    StepContext {
        loss,
        loss_var: loss * loss,
        lr,
        step,
    }
}

/// Σ_t h_t·Δθ_t = −η·ℓ·(1 − R/S) with the one joint S and ℓ = L + ½·wd·Σ_t ‖θ_t‖² − f*, at
/// every step, for the paper's target f* = 0 and a target below zero (`loss_target`); every
/// tensor reports the same S. Tolerance 1e-4 relative: Δθ is a difference of f32
/// parameters (≈1e-7 relative each) of modest cancellation, as in `koala_pp.rs`.
#[test]
fn the_joint_step_removes_eta_of_the_loss_summed_over_tensors() {
    let problem = Problem::quadratic(&[50_000, 64, 3]);
    let (wd, lr) = (5e-4, 0.3);
    for loss_target in [0.0, -0.5] {
        let opt = build(&OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            loss_target,
            ..config(KoalaPPInnovation::Joint, wd)
        }))
        .unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        for k in 1..=15u64 {
            let before = params.clone();
            let (loss, grads) = problem.loss_and_grads(&params);
            step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, k);
            let r = state.global("R").unwrap();
            let s: Vec<f64> = state.tensor_reports().map(|r| r.s.unwrap()).collect();
            assert!(
                s.iter().all(|x| *x == s[0]),
                "step {k}: one S for all tensors, got {s:?}"
            );
            let (mut h_dtheta, mut theta_sq) = (0.0, 0.0);
            for i in 0..grads.len() {
                let (hd, tt) = h_dot_step(&grads[i], &before[i], &params[i], wd);
                h_dtheta += hd;
                theta_sq += tt;
            }
            let ell = loss + 0.5 * wd * theta_sq - loss_target;
            let want = -lr * ell * (1.0 - r / s[0]);
            let err = ((h_dtheta - want) / want).abs();
            assert!(
                err < 1e-4,
                "f* {loss_target}, step {k}: Σ h·Δθ = {h_dtheta}, want {want}"
            );
        }
    }
}

/// `max_step` with joint innovation and a decaying η: Σ_t h_t·Δθ_t = −γ·(S − R) with the
/// one bounded step factor γ = min(η·ℓ/S, γ_max/(σ+Q)) (a constant bound, whatever η);
/// with γ_max at the median of the unbounded run's γ·(σ+Q) the bound acts on some steps
/// and not on others. Tolerance 1e-4 relative, as above.
#[test]
fn max_step_bounds_the_joint_step_factor() {
    let problem = Problem::quadratic(&[50_000, 64, 3]);
    let (wd, base_lr, sigma_plus_q) = (5e-4, 0.3, 0.2);
    let run = |max_step: Option<f64>| {
        let opt = build(&OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            max_step,
            lr: base_lr,
            ..config(KoalaPPInnovation::Joint, wd)
        }))
        .unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        let (mut acted, mut free_steps) = ([0usize; 2], Vec::new());
        for k in 1..=15u64 {
            let lr = base_lr * (1.0 - k as f64 / 20.0); // a decaying schedule
            let before = params.clone();
            let (loss, grads) = problem.loss_and_grads(&params);
            step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, k);
            let r = state.global("R").unwrap();
            let s = state.tensor_reports().next().unwrap().s.unwrap();
            let (mut h_dtheta, mut theta_sq) = (0.0, 0.0);
            for i in 0..grads.len() {
                let (hd, tt) = h_dot_step(&grads[i], &before[i], &params[i], wd);
                h_dtheta += hd;
                theta_sq += tt;
            }
            let free = lr * (loss + 0.5 * wd * theta_sq) / s;
            free_steps.push(free * sigma_plus_q);
            let gamma = max_step.map_or(free, |m| free.min(m / sigma_plus_q));
            acted[usize::from(gamma < free)] += 1;
            let want = -gamma * (s - r);
            let err = ((h_dtheta - want) / want).abs();
            assert!(
                err < 1e-4,
                "γ_max {max_step:?} step {k}: Σ h·Δθ = {h_dtheta}, want {want}"
            );
        }
        (acted, free_steps)
    };
    let (_, mut free_steps) = run(None);
    free_steps.sort_by(f64::total_cmp);
    let (acted, _) = run(Some(free_steps[free_steps.len() / 2]));
    assert!(
        acted[0] > 0 && acted[1] > 0,
        "want steps with and without the bound acting, got (free, bound) {acted:?}"
    );
}

/// With one tensor the joint filter is the per-tensor filter: bitwise equal parameters and
/// state over 30 steps (the joint sums add 0.0 first, which changes no bit).
#[test]
fn one_tensor_joint_equals_per_tensor_bitwise() {
    let problem = Problem::quadratic(&[20_000]);
    let run = |innovation| {
        let opt = build(&OptimizerConfig::KoalaPlusPlus(config(innovation, 5e-4))).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        for k in 1..=30 {
            train_step(opt.as_ref(), &mut state, &mut params, &problem, 0.5, k);
        }
        let bits: Vec<u32> = params[0].iter().map(|x| x.to_bits()).collect();
        let v: Vec<u32> = state
            .vector(0, "v")
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        (bits, v, state.scalar(0, "S").unwrap().to_bits())
    };
    assert!(run(KoalaPPInnovation::Joint) == run(KoalaPPInnovation::PerTensor));
}

/// The per-tensor and joint forms differ as soon as there are two tensors (else the joint
/// tests above could pass on a per-tensor implementation).
#[test]
fn two_tensors_joint_differs_from_per_tensor() {
    let problem = Problem::quadratic(&[500, 300]);
    let run = |innovation| {
        let opt = build(&OptimizerConfig::KoalaPlusPlus(config(innovation, 0.0))).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        train_step(opt.as_ref(), &mut state, &mut params, &problem, 0.5, 1);
        params
    };
    assert_ne!(
        run(KoalaPPInnovation::Joint),
        run(KoalaPPInnovation::PerTensor)
    );
}

/// Two groups (the decay / no-decay split a training loop makes) stepped together by
/// `step_groups` are one filter: with equal settings they give bitwise the same result as
/// one group holding every tensor.
#[test]
fn groups_stepped_together_share_one_innovation() {
    let problem = Problem::quadratic(&[3_000, 40, 7]);
    let opt = build(&joint(5e-4)).unwrap();
    // One group with all three tensors.
    let mut whole = opt.init(&problem.specs).unwrap();
    let mut p_whole = problem.init.clone();
    // The same tensors as groups {0, 2} and {1}.
    let mut ga = opt
        .init(&[problem.specs[0].clone(), problem.specs[2].clone()])
        .unwrap();
    let mut gb = opt.init(&[problem.specs[1].clone()]).unwrap();
    let mut p_split = problem.init.clone();
    for k in 1..=20 {
        train_step(opt.as_ref(), &mut whole, &mut p_whole, &problem, 0.4, k);
        let (loss, grads) = problem.loss_and_grads(&p_split);
        let [p0, p1, p2] = p_split.as_mut_slice() else {
            unreachable!()
        };
        let mut pa: Vec<&mut [f32]> = vec![p0, p2];
        let mut pb: Vec<&mut [f32]> = vec![p1];
        let grads_a = [Some(grads[0].as_slice()), Some(grads[2].as_slice())];
        let grads_b = [Some(grads[1].as_slice())];
        let mut groups = [
            group(opt.as_ref(), &mut ga, &mut pa, &grads_a),
            group(opt.as_ref(), &mut gb, &mut pb, &grads_b),
        ];
        let reports = step_groups(&mut groups, &ctx(loss, 0.4, k)).unwrap();
        assert_eq!(reports[0].updated + reports[1].updated, 3);
    }
    assert!(
        p_whole == p_split,
        "two groups stepped together differ from one group"
    );
    assert_eq!(
        whole.scalar(0, "S").unwrap().to_bits(),
        gb.scalar(0, "S").unwrap().to_bits()
    );
}

fn group<'s, 'p>(
    opt: &'s dyn koala_optim::Optimizer,
    state: &'s mut OptimizerState,
    params: &'s mut [&'p mut [f32]],
    grads: &'s [Option<&'s [f32]>],
) -> GroupStep<'s, 'p> {
    GroupStep {
        opt,
        state,
        params,
        grads,
    }
}

/// An independent f64 re-computation of the joint step from the formulas in
/// `koala_pp_joint.rs` (explicit h, v, λ, α, w per tensor, no fused algebra), over 12 steps
/// of a three-tensor quadratic with weight decay, one tensor frozen for steps 4–6 (skipped,
/// so its λ later divides by the joint S of an older step). Tolerance 1e-4 relative on the
/// parameters: the optimizer keeps f32 vectors, the reference f64.
#[test]
fn joint_step_matches_an_f64_reference() {
    let problem = Problem::quadratic(&[257, 64, 9]);
    let (sigma, q, wd, lr) = (0.1, 0.1, 5e-4, 0.3);
    // A small fixed R, so that R does not swamp h·P̂·h and every term of S counts.
    let r = 1e-3;
    let opt = build(&OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        r: Some(r),
        ..config(KoalaPPInnovation::Joint, wd)
    }))
    .unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut params = problem.init.clone();
    let mut reference = Reference::new(&problem, sigma, q, wd, r);
    for k in 1..=12u64 {
        let (loss, grads) = problem.loss_and_grads(&params);
        let frozen = (4..=6).contains(&k);
        let g: Vec<Option<&[f32]>> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| (!(frozen && i == 1)).then_some(g.as_slice()))
            .collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        opt.step(&mut state, &mut views, &g, &ctx(loss, lr, k))
            .unwrap();
        let (rloss, rgrads) = reference.loss_and_grads(&problem);
        reference.step(&rgrads, rloss, lr, frozen.then_some(1));
        for (i, (p, want)) in params.iter().zip(&reference.theta).enumerate() {
            let diff: f64 = p
                .iter()
                .zip(want)
                .map(|(a, b)| (f64::from(*a) - b).powi(2))
                .sum();
            let norm: f64 = want.iter().map(|b| b * b).sum();
            let rel = (diff / norm).sqrt();
            assert!(rel < 1e-4, "step {k} tensor {i}: relative difference {rel}");
        }
    }
}

/// A tensor's filter after an update: v, h and the S of that step.
type Filtered = (Vec<f64>, Vec<f64>, f64);

/// The joint filter written plainly in f64.
struct Reference {
    sigma: f64,
    q: f64,
    wd: f64,
    /// Fixed measurement noise.
    r: f64,
    theta: Vec<Vec<f64>>,
    /// Per tensor: (v, h, S of the step that last updated it), or None before the first.
    prev: Vec<Option<Filtered>>,
}

impl Reference {
    fn new(problem: &Problem, sigma: f64, q: f64, wd: f64, r: f64) -> Self {
        Reference {
            sigma,
            q,
            wd,
            r,
            theta: problem
                .init
                .iter()
                .map(|t| t.iter().map(|x| f64::from(*x)).collect())
                .collect(),
            prev: vec![None; problem.init.len()],
        }
    }

    /// The quadratic's loss and gradient at the reference's own parameters (rounded to
    /// f32, as the problem works in f32).
    fn loss_and_grads(&self, problem: &Problem) -> (f64, Vec<Vec<f64>>) {
        let p: Vec<Vec<f32>> = self
            .theta
            .iter()
            .map(|t| t.iter().map(|x| *x as f32).collect())
            .collect();
        let (loss, g) = problem.loss_and_grads(&p);
        (
            loss,
            g.iter()
                .map(|g| g.iter().map(|x| f64::from(*x)).collect())
                .collect(),
        )
    }

    fn step(&mut self, grads: &[Vec<f64>], loss: f64, lr: f64, skip: Option<usize>) {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let (q, r) = (self.q, self.r);
        let live: Vec<usize> = (0..grads.len()).filter(|i| Some(*i) != skip).collect();
        let h: Vec<Vec<f64>> = grads
            .iter()
            .zip(&self.theta)
            .map(|(g, t)| g.iter().zip(t).map(|(g, t)| g + self.wd * t).collect())
            .collect();
        // The joint phantom over tensors whose first update this is.
        let lazy_s_p = live
            .iter()
            .filter(|i| self.prev[**i].is_none())
            .map(|&i| (self.sigma + q) * dot(&h[i], &h[i]))
            .sum::<f64>()
            + r;
        let mut v_new = vec![Vec::new(); grads.len()];
        let mut s = r;
        for &i in &live {
            let (v_p, h_p, s_p) = match &self.prev[i] {
                Some((v, hp, s)) => (v.clone(), hp.clone(), *s),
                None => (
                    h[i].iter().map(|x| self.sigma * x).collect(),
                    h[i].clone(),
                    lazy_s_p,
                ),
            };
            let (x, y) = (dot(&h_p, &h_p), dot(&h_p, &v_p));
            let (a, b) = (dot(&h[i], &h_p), dot(&h[i], &v_p));
            let lambda = (b + q * a) / s_p;
            let alpha = a / x;
            let w = b / x - a * y / (x * x);
            let v: Vec<f64> = (0..h[i].len())
                .map(|j| (alpha - lambda) * v_p[j] + q * (h[i][j] - lambda * h_p[j]) + w * h_p[j])
                .collect();
            s += dot(&v, &h[i]) + q * dot(&h[i], &h[i]);
            v_new[i] = v;
        }
        let ell = loss
            + live
                .iter()
                .map(|&i| 0.5 * self.wd * dot(&self.theta[i], &self.theta[i]))
                .sum::<f64>();
        for &i in &live {
            for j in 0..self.theta[i].len() {
                self.theta[i][j] -= lr * ell * (v_new[i][j] + q * h[i][j]) / s;
            }
            self.prev[i] = Some((std::mem::take(&mut v_new[i]), h[i].clone(), s));
        }
    }
}

/// The literal path is the per-tensor reference form only: asking it for joint innovation
/// is a configuration error naming the field and the fix.
#[test]
fn joint_on_the_literal_path_is_refused() {
    let c = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        path: KoalaPPPath::Literal,
        ..config(KoalaPPInnovation::Joint, 0.0)
    });
    let err = build(&c).unwrap_err().to_string();
    assert!(err.contains("innovation") && err.contains("fused"), "{err}");
}
