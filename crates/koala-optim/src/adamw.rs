//! AdamW with PyTorch semantics (`torch.optim.AdamW`, single-tensor path, no amsgrad):
//! decoupled decay θ ← θ·(1 − η·wd), moment EMAs, bias correction with a per-tensor step
//! counter that advances only when the tensor has a gradient.

use rayon::prelude::*;

use crate::config::{AdamWConfig, OptimizerConfig};
use crate::error::OptimError;
use crate::kernels::{simd_kernel, CHUNK};
use crate::optimizer::{step_each_tensor, Optimizer, StepContext, StepReport};
use crate::state::{OptimizerState, StateLayout, TensorSpec, TensorState};

const STEP: usize = 0;

static LAYOUT: StateLayout = StateLayout {
    kind: "adamw",
    vectors: &["exp_avg", "exp_avg_sq"],
    scalars: &["step"],
    globals: &[],
    scratch: 0,
};

/// The AdamW optimizer.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    config: OptimizerConfig,
}

impl AdamW {
    pub(crate) fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            config: OptimizerConfig::AdamW(cfg.clone()),
            cfg,
        }
    }
}

impl Optimizer for AdamW {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError> {
        OptimizerState::new(&LAYOUT, self.config.clone(), specs, vec![])
    }

    /// AdamW has no prediction step.
    fn predict(&self, state: &mut OptimizerState, _: &mut [&mut [f32]]) -> Result<(), OptimError> {
        state.expect_layout(&LAYOUT)
    }

    /// Only a missing gradient skips a tensor (PyTorch does not skip small gradients).
    fn step(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
        grads: &[Option<&[f32]>],
        ctx: &StepContext,
    ) -> Result<StepReport, OptimError> {
        state.expect_layout(&LAYOUT)?;
        step_each_tensor(state, params, grads, ctx.step, |t, p, g| {
            self.update_tensor(t, p, g, ctx.lr)
        })
    }
}

impl AdamW {
    fn update_tensor(&self, t: &mut TensorState, p: &mut [f32], g: &[f32], lr: f64) {
        t.scalars[STEP] += 1.0;
        t.initialized = true;
        let c = &self.cfg;
        let step = t.scalars[STEP];
        let bias_correction1 = 1.0 - c.beta1.powf(step);
        let bias_correction2 = 1.0 - c.beta2.powf(step);
        let k = Coefs {
            decay: (1.0 - lr * c.weight_decay) as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            step_size: (lr / bias_correction1) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            eps: c.eps as f32,
        };
        let [m, v] = t.vectors.as_mut_slice() else {
            unreachable!("AdamW layout has two vectors")
        };
        (
            p.par_chunks_mut(CHUNK),
            m.par_chunks_mut(CHUNK),
            v.par_chunks_mut(CHUNK),
            g.par_chunks(CHUNK),
        )
            .into_par_iter()
            .for_each(|(p, m, v, g)| adamw_chunk(p, m, v, g, &k));
    }
}

struct Coefs {
    decay: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

simd_kernel! {
/// PyTorch's order of operations: decay, lerp of m, v update, then
/// θ ← θ − step_size · m / (√v / √bc2 + ε).
fn adamw_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &Coefs) {
    let n = p.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = m[i] + (1.0 - k.beta1) * (gi - m[i]);
        let vi = k.beta2 * v[i] + (1.0 - k.beta2) * gi * gi;
        let denom = vi.sqrt() / k.bc2_sqrt + k.eps;
        p[i] = p[i] * k.decay - k.step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}
}
