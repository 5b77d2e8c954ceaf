//! AdamW and SGD against f64 transcriptions of the algorithm boxes in PyTorch's
//! documentation (torch.optim.AdamW, torch.optim.SGD), which define their semantics.
//! Our f32 implementations must agree to 1e-5 relative over 30 steps (f32 rounding of
//! parameters and moments, ~1e-7 per step, accumulates slowly).

mod common;

use common::Problem;
use koala_optim::{build, AdamWConfig, OptimizerConfig, SgdConfig, StepContext};

fn run_ours(config: OptimizerConfig, problem: &Problem, lr: f64, steps: u64) -> Vec<f64> {
    let opt = build(&config).unwrap();
    let mut state = opt.init(&problem.specs).unwrap();
    let mut params = problem.init.clone();
    for k in 1..=steps {
        let (loss, grads) = problem.loss_and_grads(&params);
        let g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(g.as_slice())).collect();
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        let ctx = StepContext {
            loss,
            loss_var: 0.0,
            lr,
            step: k,
        };
        opt.step(&mut state, &mut views, &g, &ctx).unwrap();
    }
    params.concat().into_iter().map(f64::from).collect()
}

/// Gradient of the (one-tensor) quadratic in f64 at f64 parameters.
fn grad(problem: &Problem, theta: &[f64]) -> Vec<f64> {
    let common::Objective::Quadratic { d, c } = &problem.objective else {
        unreachable!("these tests use the quadratic")
    };
    theta
        .iter()
        .zip(d[0].iter().zip(&c[0]))
        .map(|(t, (d, c))| f64::from(*d) * (t - f64::from(*c)))
        .collect()
}

fn assert_close(ours: &[f64], reference: &[f64], what: &str) {
    let diff: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| b * b).sum();
    let err = (diff / norm).sqrt();
    assert!(err < 1e-5, "{what}: relative error {err:.2e}");
}

#[test]
fn adamw_matches_the_documented_algorithm() {
    let problem = Problem::quadratic(&[257]);
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let (lr, steps) = (0.01, 30);
    let ours = run_ours(OptimizerConfig::AdamW(cfg.clone()), &problem, lr, steps);
    // Documented: θ ← θ − γλθ; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
    // m̂ = m/(1−β1ᵗ); v̂ = v/(1−β2ᵗ); θ ← θ − γ m̂/(√v̂ + ε).
    let n = 257;
    let (mut theta, mut m, mut v) = (vec![0.0f64; n], vec![0.0; n], vec![0.0; n]);
    for t in 1..=steps as i32 {
        let g = grad(&problem, &theta);
        for i in 0..n {
            theta[i] -= lr * cfg.weight_decay * theta[i];
            m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
            v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - cfg.beta1.powi(t));
            let v_hat = v[i] / (1.0 - cfg.beta2.powi(t));
            theta[i] -= lr * m_hat / (v_hat.sqrt() + cfg.eps);
        }
    }
    assert_close(&ours, &theta, "AdamW");
}

#[test]
fn sgd_matches_the_documented_algorithm() {
    let problem = Problem::quadratic(&[129]);
    for (momentum, dampening, nesterov) in [(0.0, 0.0, false), (0.9, 0.1, false), (0.9, 0.0, true)]
    {
        let cfg = SgdConfig {
            momentum,
            dampening,
            nesterov,
            weight_decay: 1e-2,
            ..SgdConfig::default()
        };
        let (lr, steps) = (0.05, 30);
        let ours = run_ours(OptimizerConfig::Sgd(cfg.clone()), &problem, lr, steps);
        // Documented: g ← g + λθ; b ← g at t = 1, else μb + (1−τ)g;
        // g ← g + μb (Nesterov) or b; θ ← θ − γg.
        let n = 129;
        let (mut theta, mut b) = (vec![0.0f64; n], vec![0.0; n]);
        for t in 1..=steps {
            let g = grad(&problem, &theta);
            for i in 0..n {
                let mut gi = g[i] + cfg.weight_decay * theta[i];
                if momentum != 0.0 {
                    b[i] = if t == 1 {
                        gi
                    } else {
                        momentum * b[i] + (1.0 - dampening) * gi
                    };
                    gi = if nesterov { gi + momentum * b[i] } else { b[i] };
                }
                theta[i] -= lr * gi;
            }
        }
        assert_close(
            &ours,
            &theta,
            &format!("SGD momentum {momentum} nesterov {nesterov}"),
        );
    }
}
