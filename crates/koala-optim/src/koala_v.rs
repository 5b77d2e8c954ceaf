//! KOALA-V (vanilla KOALA, spec §3): the covariance is s·I with one scalar s shared by all
//! tensors. Per tensor: one reduction pass (‖g‖², ‖h‖², ‖θ‖²) and one update pass.

use rayon::prelude::*;

use crate::config::{KoalaVConfig, OptimizerConfig};
use crate::error::OptimError;
use crate::kernels::{norms_unless_skipped, simd_kernel, CHUNK};
use crate::optimizer::{
    begin_koala_step, check_params, summarize, update_tensors, Optimizer, StepContext, StepReport,
};
use crate::state::{OptimizerState, StateLayout, TensorReport, TensorSpec, TensorState};

const R: usize = 0;
const SIGMA: usize = 1;

static LAYOUT: StateLayout = StateLayout {
    kind: "koala-v",
    vectors: &[],
    scalars: &[],
    globals: &["R", "s"],
    scratch: 0,
};

/// The KOALA-V optimizer.
#[derive(Debug)]
pub struct KoalaV {
    cfg: KoalaVConfig,
    config: OptimizerConfig,
}

impl KoalaV {
    pub(crate) fn new(cfg: KoalaVConfig) -> Self {
        KoalaV {
            config: OptimizerConfig::KoalaV(cfg.clone()),
            cfg,
        }
    }
}

impl Optimizer for KoalaV {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError> {
        let r0 = self.cfg.r.unwrap_or(self.cfg.r_init);
        OptimizerState::new(
            &LAYOUT,
            self.config.clone(),
            specs,
            vec![r0, self.cfg.sigma],
        )
    }

    /// s ← s + Q.
    fn predict(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
    ) -> Result<(), OptimError> {
        state.expect_layout(&LAYOUT)?;
        check_params(state, params)?;
        state.globals[SIGMA] += self.cfg.q;
        Ok(())
    }

    fn step(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
        grads: &[Option<&[f32]>],
        ctx: &StepContext,
    ) -> Result<StepReport, OptimError> {
        let r = begin_koala_step(
            state,
            &LAYOUT,
            params,
            grads,
            R,
            (self.cfg.r, self.cfg.alpha_r),
            ctx.loss_var,
        )?;
        let s = state.globals[SIGMA];
        update_tensors(state, params, grads, |t, p, g| {
            self.update_tensor(t, p, g, s, r, ctx)
        });
        // The largest ‖h‖²/s_t belongs to the largest s_t (x/(s·x+R) increases with x), and
        // s − s²·hh = s·R/s_t(max): that form avoids f32-level cancellation (spec §3).
        // If every tensor was skipped s is left as is (the reference raises instead).
        let s_max = state
            .tensor_reports()
            .filter_map(|rep| rep.s)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        if let Some(s_max) = s_max {
            state.globals[SIGMA] = s * r / s_max;
        }
        state.last_step = Some(ctx.step);
        Ok(summarize(state))
    }
}

impl KoalaV {
    /// θ ← θ − (η·ℓ·s/s_t)·g with s_t = s‖h‖² + R, h = g + wd·θ (the raw g in the step).
    fn update_tensor(
        &self,
        t: &mut TensorState,
        p: &mut [f32],
        g: &[f32],
        s: f64,
        r: f64,
        ctx: &StepContext,
    ) -> TensorReport {
        let Some((hh, tt)) = norms_unless_skipped(
            &mut t.partials,
            p,
            g,
            self.cfg.weight_decay,
            self.cfg.skip_eps,
        ) else {
            return TensorReport::skipped();
        };
        let s_t = s * hh + r;
        let layer_loss = ctx.loss + 0.5 * self.cfg.weight_decay * tt;
        let scale = (ctx.lr * layer_loss * s / s_t) as f32;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| scaled_sub(p, g, scale));
        TensorReport {
            skipped: false,
            s: Some(s_t),
            guard_hit: false,
        }
    }
}

simd_kernel! {
/// θ ← θ − scale·g over one chunk.
fn scaled_sub(p: &mut [f32], g: &[f32], scale: f32) {
    for (p, g) in p.iter_mut().zip(g) {
        *p -= scale * g;
    }
}
}
