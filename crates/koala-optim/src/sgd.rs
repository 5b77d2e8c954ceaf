//! SGD with PyTorch semantics (`torch.optim.SGD`): coupled weight decay added to the
//! gradient, momentum buffer initialised to the first gradient (no dampening on that
//! step), dampening, and Nesterov momentum.

use rayon::prelude::*;

use crate::config::{OptimizerConfig, SgdConfig};
use crate::error::OptimError;
use crate::kernels::{simd_kernel, CHUNK};
use crate::optimizer::{step_each_tensor, Optimizer, StepContext, StepReport};
use crate::state::{OptimizerState, StateLayout, TensorSpec, TensorState};

static MOMENTUM_LAYOUT: StateLayout = StateLayout {
    kind: "sgd/momentum",
    vectors: &["momentum_buffer"],
    scalars: &[],
    globals: &[],
    scratch: 0,
};

/// Without momentum PyTorch keeps no state; neither do we.
static PLAIN_LAYOUT: StateLayout = StateLayout {
    kind: "sgd/plain",
    vectors: &[],
    scalars: &[],
    globals: &[],
    scratch: 0,
};

/// The SGD optimizer.
#[derive(Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    config: OptimizerConfig,
}

impl Sgd {
    pub(crate) fn new(cfg: SgdConfig) -> Self {
        Sgd {
            config: OptimizerConfig::Sgd(cfg.clone()),
            cfg,
        }
    }

    fn layout(&self) -> &'static StateLayout {
        if self.cfg.momentum != 0.0 {
            &MOMENTUM_LAYOUT
        } else {
            &PLAIN_LAYOUT
        }
    }
}

impl Optimizer for Sgd {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError> {
        OptimizerState::new(self.layout(), self.config.clone(), specs, vec![])
    }

    /// SGD has no prediction step.
    fn predict(&self, state: &mut OptimizerState, _: &mut [&mut [f32]]) -> Result<(), OptimError> {
        state.expect_layout(self.layout())
    }

    /// Only a missing gradient skips a tensor (as in PyTorch).
    fn step(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
        grads: &[Option<&[f32]>],
        ctx: &StepContext,
    ) -> Result<StepReport, OptimError> {
        state.expect_layout(self.layout())?;
        step_each_tensor(state, params, grads, ctx.step, |t, p, g| {
            self.update_tensor(t, p, g, ctx.lr)
        })
    }
}

/// Per-step constants of the SGD update.
struct Coefs {
    lr: f32,
    wd: f32,
    momentum: f32,
    /// 1 − dampening, or 1 on the step that creates the buffer.
    grad_weight: f32,
    nesterov: bool,
    /// The buffer did not exist before this step: it becomes d = g + wd·θ.
    fresh: bool,
}

impl Sgd {
    fn update_tensor(&self, t: &mut TensorState, p: &mut [f32], g: &[f32], lr: f64) {
        let c = &self.cfg;
        let fresh = !t.initialized;
        t.initialized = true;
        let k = Coefs {
            lr: lr as f32,
            wd: c.weight_decay as f32,
            momentum: c.momentum as f32,
            grad_weight: if fresh {
                1.0
            } else {
                (1.0 - c.dampening) as f32
            },
            nesterov: c.nesterov,
            fresh,
        };
        match t.vectors.first_mut() {
            None => p
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(p, g)| plain_chunk(p, g, &k)),
            Some(buf) => (
                p.par_chunks_mut(CHUNK),
                buf.par_chunks_mut(CHUNK),
                g.par_chunks(CHUNK),
            )
                .into_par_iter()
                .for_each(|(p, b, g)| momentum_chunk(p, b, g, &k)),
        }
    }
}

simd_kernel! {
/// θ ← θ − lr·(g + wd·θ) over one chunk.
fn plain_chunk(p: &mut [f32], g: &[f32], k: &Coefs) {
    for (p, g) in p.iter_mut().zip(g) {
        let d = g + k.wd * *p;
        *p -= k.lr * d;
    }
}
}

simd_kernel! {
/// One chunk of the momentum update (PyTorch's `torch.optim.SGD` step).
fn momentum_chunk(p: &mut [f32], buf: &mut [f32], g: &[f32], k: &Coefs) {
    for ((p, b), g) in p.iter_mut().zip(buf).zip(g) {
        let d = g + k.wd * *p;
        *b = if k.fresh {
            d
        } else {
            k.momentum * *b + k.grad_weight * d
        };
        let d = if k.nesterov { d + k.momentum * *b } else { *b };
        *p -= k.lr * d;
    }
}
}
