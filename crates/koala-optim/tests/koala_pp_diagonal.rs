//! KOALA++ with the second-moment diagonal (`koala_pp_diagonal.rs`): the Adam-like first
//! step, the linearised-loss invariant (which holds in θ because h·Δθ = h_φ·Δφ), and an
//! independent f64 re-computation of several steps. (Convergence, bitwise resume and
//! thread-count independence run in `properties.rs`, whose table has the diagonal entries.)

mod common;

use common::{h_dot_step, step_with_grads, Problem};
use koala_optim::{
    build, KoalaPPConfig, KoalaPPDiagonal, KoalaPPInnovation, KoalaPPPath, OptimizerConfig,
};

fn config(innovation: KoalaPPInnovation, weight_decay: f64, r: Option<f64>) -> OptimizerConfig {
    OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        sigma: 0.1,
        q: 0.1,
        weight_decay,
        r,
        innovation,
        diagonal: KoalaPPDiagonal::SecondMoment,
        ..KoalaPPConfig::default()
    })
}

/// First step with R → 0 (fixed 1e-12): m̂ = h² and d = 1/(|h| + ε), so within a tensor
/// the step is a sign step, Δθ ∝ d·h ≈ sign(h); per-tensor its size is η·L/‖h‖₁ (v → 0),
/// joint the phantom's λ_t weights the tensors (formula below). Tolerance 1e-5 relative
/// plus θ's f32 rounding.
#[test]
fn the_first_step_is_a_sign_step_of_polyak_size() {
    let problem = Problem::quadratic(&[3_000, 50]);
    let lr = 0.3;
    for innovation in [KoalaPPInnovation::PerTensor, KoalaPPInnovation::Joint] {
        let opt = build(&config(innovation, 0.0, Some(1e-12))).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        let (loss, grads) = problem.loss_and_grads(&params);
        step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, 1);
        // d = 1/(|h| + ε) (m̂ = h² at the first step), so c_t = Σ d·h² = ‖h_t‖₁ up to ε.
        let d = |g: f32| 1.0 / (f64::from(g.abs()) + 1e-8);
        let dhh = |g: &[f32]| g.iter().map(|x| d(*x) * f64::from(*x).powi(2)).sum::<f64>();
        let c: Vec<f64> = grads.iter().map(|g| dhh(g)).collect();
        // The phantom step leaves v_t = (σ+Q)(1 − λ_t)·h_φ with λ_t = (σ+Q)c_t / S_p, S_p over
        // the tensor alone (per-tensor) or over all tensors (joint); then
        // Δθ_t = −η·L·k_t·d·h / S with k_t = (σ+Q)(1 − λ_t) + Q and S = Σ k_u·c_u + R.
        let (sq, q) = (0.2, 0.1);
        let scope = |i: usize| match innovation {
            KoalaPPInnovation::PerTensor => vec![i],
            KoalaPPInnovation::Joint => (0..grads.len()).collect(),
        };
        let k = |i: usize| {
            let s_p = sq * scope(i).iter().map(|u| c[*u]).sum::<f64>() + 1e-12;
            sq * (1.0 - sq * c[i] / s_p) + q
        };
        for i in 0..grads.len() {
            let s = scope(i).iter().map(|u| k(*u) * c[*u]).sum::<f64>() + 1e-12;
            for ((a, b), g) in params[i].iter().zip(&problem.init[i]).zip(&grads[i]) {
                let want = -lr * loss * k(i) * d(*g) * f64::from(*g) / s;
                let got = f64::from(*a) - f64::from(*b);
                // f32 θ: the difference carries ≈ 6e-8·|θ| of rounding.
                let tol = 1e-5 * want.abs() + 1.2e-7 * f64::from(b.abs());
                assert!(
                    (got - want).abs() < tol,
                    "{innovation:?} tensor {i}: Δθ {got}, want {want}"
                );
                // Within a tensor a sign step: |Δθ| is the same for every |h| ≫ ε.
                if g.abs() > 1e-4 {
                    let sign_step = lr * loss * k(i) / s;
                    assert!((got.abs() / sign_step - 1.0).abs() < 1e-3);
                }
            }
        }
    }
}

/// h·Δθ = −η·ℓ·(1 − R/S) at every step: per tensor with per-tensor innovation, summed over
/// the tensors with joint innovation. Tolerance 1e-4 relative, as in `koala_pp.rs`.
#[test]
fn the_invariant_holds_in_theta() {
    let problem = Problem::quadratic(&[40_000, 64]);
    let (wd, lr) = (5e-4, 0.3);
    for innovation in [KoalaPPInnovation::PerTensor, KoalaPPInnovation::Joint] {
        let opt = build(&config(innovation, wd, None)).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        for k in 1..=12u64 {
            let before = params.clone();
            let (loss, grads) = problem.loss_and_grads(&params);
            step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, k);
            let r = state.global("R").unwrap();
            let per: Vec<(f64, f64, f64)> = (0..grads.len())
                .map(|i| {
                    let (h_dtheta, theta_sq) = h_dot_step(&grads[i], &before[i], &params[i], wd);
                    let s = state.tensor_reports().nth(i).unwrap().s.unwrap();
                    (h_dtheta, 0.5 * wd * theta_sq, s)
                })
                .collect();
            let checks: Vec<(f64, f64)> = match innovation {
                KoalaPPInnovation::PerTensor => per
                    .iter()
                    .map(|(hd, l2, s)| (*hd, -lr * (loss + l2) * (1.0 - r / s)))
                    .collect(),
                KoalaPPInnovation::Joint => {
                    let ell = loss + per.iter().map(|p| p.1).sum::<f64>();
                    vec![(
                        per.iter().map(|p| p.0).sum(),
                        -lr * ell * (1.0 - r / per[0].2),
                    )]
                }
            };
            for (got, want) in checks {
                let err = ((got - want) / want).abs();
                assert!(err < 1e-4, "{innovation:?} step {k}: {got} vs {want}");
            }
        }
    }
}

/// Eight steps of one tensor against the formulas of `koala_pp_diagonal.rs` written
/// plainly in f64 (m, bias correction, h_φ, the spec §5.3 recursion in φ, Δθ = s·Δφ).
/// Tolerance 1e-4 relative on the parameters: the optimizer keeps f32 vectors.
#[test]
fn steps_match_an_f64_reference() {
    let problem = Problem::quadratic(&[700]);
    let (sigma, q, wd, lr, r, beta2, eps) = (0.1, 0.1, 5e-4, 0.3, 1e-3, 0.999f64, 1e-8);
    let opt = build(&config(KoalaPPInnovation::PerTensor, wd, Some(r))).unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut params = problem.init.clone();
    let mut theta: Vec<f64> = problem.init[0].iter().map(|x| f64::from(*x)).collect();
    let n = theta.len();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (mut m, mut prev) = (vec![0.0; n], None::<(Vec<f64>, Vec<f64>, f64)>);
    for k in 1..=8u64 {
        let (loss, grads) = problem.loss_and_grads(&params);
        step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, lr, k);
        // The reference at its own parameters.
        let p32: Vec<Vec<f32>> = vec![theta.iter().map(|x| *x as f32).collect()];
        let (rl, rg) = problem.loss_and_grads(&p32);
        let h: Vec<f64> = (0..n)
            .map(|i| f64::from(rg[0][i]) + wd * theta[i])
            .collect();
        let bc = 1.0 - beta2.powi(k as i32);
        let s: Vec<f64> = (0..n)
            .map(|i| {
                m[i] = beta2 * m[i] + (1.0 - beta2) * h[i] * h[i];
                1.0 / ((m[i] / bc).sqrt() + eps).sqrt()
            })
            .collect();
        let hf: Vec<f64> = (0..n).map(|i| s[i] * h[i]).collect();
        let c = dot(&hf, &hf);
        let (v_p, h_p, s_p) = prev.take().unwrap_or_else(|| {
            (
                hf.iter().map(|x| sigma * x).collect(),
                hf.clone(),
                (sigma + q) * c + r,
            )
        });
        let (x, y) = (dot(&h_p, &h_p), dot(&h_p, &v_p));
        let (a, b) = (dot(&hf, &h_p), dot(&hf, &v_p));
        let lambda = (b + q * a) / s_p;
        let (alpha, w) = (a / x, b / x - a * y / (x * x));
        let v: Vec<f64> = (0..n)
            .map(|i| (alpha - lambda) * v_p[i] + q * (hf[i] - lambda * h_p[i]) + w * h_p[i])
            .collect();
        let s_now = dot(&v, &hf) + q * c + r;
        let ell = rl + 0.5 * wd * dot(&theta, &theta);
        for i in 0..n {
            theta[i] -= lr * ell * s[i] * (v[i] + q * hf[i]) / s_now;
        }
        prev = Some((v, hf, s_now));
        let diff: f64 = (0..n)
            .map(|i| (f64::from(params[0][i]) - theta[i]).powi(2))
            .sum();
        let rel = (diff / dot(&theta, &theta)).sqrt();
        assert!(rel < 1e-4, "step {k}: relative difference {rel}");
    }
}

/// The diagonal scale changes the step (else the tests above could pass on the plain
/// filter), and the literal path refuses it with the field and the fix named.
#[test]
fn the_diagonal_changes_the_step_and_the_literal_path_refuses_it() {
    let problem = Problem::quadratic(&[500]);
    let run = |diagonal| {
        let c = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            diagonal,
            ..KoalaPPConfig::default()
        });
        let opt = build(&c).unwrap();
        let mut state = opt.init(&problem.specs).unwrap();
        let mut params = problem.init.clone();
        let (loss, grads) = problem.loss_and_grads(&params);
        step_with_grads(opt.as_ref(), &mut state, &mut params, &grads, loss, 0.5, 1);
        params
    };
    assert_ne!(
        run(KoalaPPDiagonal::SecondMoment),
        run(KoalaPPDiagonal::None)
    );
    let literal = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        path: KoalaPPPath::Literal,
        diagonal: KoalaPPDiagonal::SecondMoment,
        ..KoalaPPConfig::default()
    });
    let err = build(&literal).unwrap_err().to_string();
    assert!(err.contains("diagonal") && err.contains("fused"), "{err}");
}
