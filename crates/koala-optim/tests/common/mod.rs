//! Test problems with known minima and a small training loop shared by the test files.

#![allow(dead_code)] // each test binary uses a different subset

use koala_optim::{Optimizer, OptimizerState, StepContext, TensorSpec};

/// A deterministic pseudo-random value in [-1, 1) (no RNG dependency, stable forever).
pub fn noise(seed: u64, i: usize) -> f32 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Objective with a known minimum value of 0.
pub enum Objective {
    /// ½ Σ dᵢ (θᵢ − cᵢ)², curvatures dᵢ ∈ [0.5, 2], per tensor.
    Quadratic { d: Vec<Vec<f32>>, c: Vec<Vec<f32>> },
    /// (1 − x)² + 100 (y − x²)² on one tensor [x, y], minimum at (1, 1).
    Rosenbrock,
}

pub struct Problem {
    pub specs: Vec<TensorSpec>,
    pub init: Vec<Vec<f32>>,
    pub objective: Objective,
}

impl Problem {
    /// A quadratic over tensors of the given sizes, starting at θ = 0.
    pub fn quadratic(sizes: &[usize]) -> Self {
        let specs: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| TensorSpec::new(format!("t{i}"), [*n]))
            .collect();
        let d = sizes
            .iter()
            .enumerate()
            .map(|(t, n)| {
                (0..*n)
                    .map(|i| 1.25 + 0.75 * noise(10 + t as u64, i))
                    .collect()
            })
            .collect();
        let c = sizes
            .iter()
            .enumerate()
            .map(|(t, n)| (0..*n).map(|i| noise(20 + t as u64, i)).collect())
            .collect();
        Problem {
            specs,
            init: sizes.iter().map(|n| vec![0.0; *n]).collect(),
            objective: Objective::Quadratic { d, c },
        }
    }

    /// Rosenbrock from the classic start (−1.2, 1).
    pub fn rosenbrock() -> Self {
        Problem {
            specs: vec![TensorSpec::new("xy", [2])],
            init: vec![vec![-1.2, 1.0]],
            objective: Objective::Rosenbrock,
        }
    }

    /// Loss (f64) and gradients (f32) at `params`.
    pub fn loss_and_grads(&self, params: &[Vec<f32>]) -> (f64, Vec<Vec<f32>>) {
        match &self.objective {
            Objective::Quadratic { d, c } => {
                let mut loss = 0.0;
                let grads = params
                    .iter()
                    .zip(d.iter().zip(c))
                    .map(|(p, (d, c))| {
                        p.iter()
                            .zip(d.iter().zip(c))
                            .map(|(p, (d, c))| {
                                let e = f64::from(*p) - f64::from(*c);
                                loss += 0.5 * f64::from(*d) * e * e;
                                (f64::from(*d) * e) as f32
                            })
                            .collect()
                    })
                    .collect();
                (loss, grads)
            }
            Objective::Rosenbrock => {
                let (x, y) = (f64::from(params[0][0]), f64::from(params[0][1]));
                let loss = (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2);
                let gx = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
                let gy = 200.0 * (y - x * x);
                (loss, vec![vec![gx as f32, gy as f32]])
            }
        }
    }

    pub fn initial_loss(&self) -> f64 {
        self.loss_and_grads(&self.init).0
    }
}

/// One training iteration: predict, gradients at the (possibly moved) parameters, step.
/// V = L² as in the KOALA++ image-classification loops.
pub fn train_step(
    opt: &dyn Optimizer,
    state: &mut OptimizerState,
    params: &mut [Vec<f32>],
    problem: &Problem,
    lr: f64,
    step: u64,
) -> f64 {
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    opt.predict(state, &mut views).expect("predict");
    drop(views);
    let (loss, grads) = problem.loss_and_grads(params);
    step_with_grads(opt, state, params, &grads, loss, lr, step);
    loss
}

/// One `step` with given gradients (every tensor has one) and V = L².
pub fn step_with_grads(
    opt: &dyn Optimizer,
    state: &mut OptimizerState,
    params: &mut [Vec<f32>],
    grads: &[Vec<f32>],
    loss: f64,
    lr: f64,
    step: u64,
) {
    let grads: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(g.as_slice())).collect();
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    let ctx = StepContext {
        loss,
        loss_var: loss * loss,
        lr,
        step,
    };
    opt.step(state, &mut views, &grads, &ctx).expect("step");
}

/// Runs `steps` iterations from the problem's start; returns the final loss.
pub fn train(opt: &dyn Optimizer, problem: &Problem, lr: f64, steps: u64) -> (f64, Vec<Vec<f32>>) {
    let mut state = opt.init(&problem.specs).expect("init");
    let mut params = problem.init.clone();
    for k in 1..=steps {
        train_step(opt, &mut state, &mut params, problem, lr, k);
    }
    (problem.loss_and_grads(&params).0, params)
}

/// For the KOALA++ invariant (spec §5.3): h·Δθ and ‖θ‖² of one tensor's step, with
/// h = g + wd·θ (wd in f32, as the optimizer forms it) and θ taken before the step.
pub fn h_dot_step(grad: &[f32], before: &[f32], after: &[f32], wd: f64) -> (f64, f64) {
    let (mut h_dtheta, mut theta_sq) = (0.0, 0.0);
    for ((g, b), a) in grad.iter().zip(before).zip(after) {
        let h = f64::from(g + wd as f32 * b);
        h_dtheta += h * (f64::from(*a) - f64::from(*b));
        theta_sq += f64::from(*b).powi(2);
    }
    (h_dtheta, theta_sq)
}
