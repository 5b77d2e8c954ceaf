//! KOALA-M (KOALA with momentum, spec §4): each scalar parameter is a (weight, velocity)
//! pair with transition F = [[1, 1], [0, a]] and one 2×2 covariance P (f64) shared by all
//! tensors. Per tensor: velocity u and a running weight average θ̄.
//!
//! Constants are exact (0.9, not its f32 rounding as in the official class); the vectors
//! README quantifies the ~2e-7 difference.

use rayon::prelude::*;

use crate::config::{KoalaMConfig, OptimizerConfig};
use crate::error::OptimError;
use crate::kernels::{fold_partials, lane_sums2, norms_unless_skipped, simd_kernel, Sums, CHUNK};
use crate::optimizer::{
    begin_koala_step, check_params, summarize, update_tensors, Optimizer, StepContext, StepReport,
};
use crate::state::{OptimizerState, StateLayout, TensorReport, TensorSpec, TensorState};

const R: usize = 0;
const QW: usize = 1;
const P00: usize = 2;
const P01: usize = 3;
const P10: usize = 4;
const P11: usize = 5;

/// Weight of the old value in the running weight average θ̄ (fixed in the reference).
const WAVG_DECAY: f32 = 0.9;

static LAYOUT: StateLayout = StateLayout {
    kind: "koala-m",
    vectors: &["velocity", "wavg"],
    scalars: &[],
    globals: &["R", "qw", "P00", "P01", "P10", "P11"],
    scratch: 0,
};

/// The KOALA-M optimizer.
#[derive(Debug)]
pub struct KoalaM {
    cfg: KoalaMConfig,
    config: OptimizerConfig,
}

impl KoalaM {
    pub(crate) fn new(cfg: KoalaMConfig) -> Self {
        KoalaM {
            config: OptimizerConfig::KoalaM(cfg.clone()),
            cfg,
        }
    }
}

impl Optimizer for KoalaM {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError> {
        let c = &self.cfg;
        let globals = vec![c.r.unwrap_or(c.r_init), c.qw, c.sw, c.sc, c.sc, c.sv];
        OptimizerState::new(&LAYOUT, self.config.clone(), specs, globals)
    }

    /// For every tensor (including ones that will get no gradient): dᵢ = ‖θ̄ − θ‖ with θ
    /// before the move, θ ← θ + u, u ← a·u; then q_w ← EMA of ‖d‖/N and P ← F P Fᵀ + Q.
    fn predict(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
    ) -> Result<(), OptimError> {
        state.expect_layout(&LAYOUT)?;
        check_params(state, params)?;
        let a = self.cfg.a as f32;
        state
            .tensors
            .par_iter_mut()
            .zip(params.par_iter_mut())
            .for_each(|(t, p)| move_tensor(t, p, a));
        // Per-tensor squared distances, combined in tensor order.
        let d_sq: f64 = state.tensors.iter().map(|t| t.aux).sum();
        let total: usize = state.tensors.iter().map(TensorState::numel).sum();
        let g = &mut state.globals;
        let wdiff = d_sq.sqrt() / total.max(1) as f64;
        let alpha = self.cfg.qw_ema_alpha;
        g[QW] = alpha * g[QW] + (1.0 - alpha) * wdiff;
        let (a, p) = (self.cfg.a, [g[P00], g[P01], g[P10], g[P11]]);
        // (F P) Fᵀ with F = [[1, 1], [0, a]], plus diag(q_w, q_v).
        let fp = [p[0] + p[2], p[1] + p[3], a * p[2], a * p[3]];
        g[P00] = fp[0] + fp[1] + g[QW];
        g[P01] = fp[1] * a;
        g[P10] = fp[2] + fp[3];
        g[P11] = fp[3] * a + self.cfg.qv;
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
        let (p00, p10) = (state.globals[P00], state.globals[P10]);
        update_tensors(state, params, grads, |t, p, g| {
            self.update_tensor(t, p, g, (p00, p10), r, ctx)
        });
        // P ← P − hh·P[:,0]P[:,0]ᵀ with hh = max ‖h‖²/S. Its first column is P[:,0]·R/S of
        // the maximising tensor exactly (1 − hh·P00 = R/S): that stable form avoids the
        // cancellation seen with KOALA-V (spec §3). Unchanged if every tensor was skipped.
        let best = state
            .tensors
            .iter()
            .filter_map(|t| Some((t.aux, t.report.s?)))
            .fold(None, |m: Option<(f64, f64)>, e| match m {
                Some(m) if m.0 >= e.0 => Some(m),
                _ => Some(e),
            });
        if let Some((hh, s_max)) = best {
            let g = &mut state.globals;
            let keep = r / s_max;
            let (p00, p01, p10, p11) = (g[P00], g[P01], g[P10], g[P11]);
            g[P00] = p00 * keep;
            g[P10] = p10 * keep;
            g[P01] = p01 - hh * p00 * p10;
            g[P11] = p11 - hh * p10 * p10;
        }
        state.last_step = Some(ctx.step);
        Ok(summarize(state))
    }
}

/// One tensor of `predict`: leaves ‖θ̄ − θ‖² in `t.aux` and moves θ and u in the same pass.
fn move_tensor(t: &mut TensorState, p: &mut [f32], a: f32) {
    let [u, wavg] = t.vectors.as_mut_slice() else {
        unreachable!("KOALA-M layout has two vectors")
    };
    (
        p.par_chunks_mut(CHUNK),
        u.par_chunks_mut(CHUNK),
        wavg.par_chunks(CHUNK),
        t.partials.par_iter_mut(),
    )
        .into_par_iter()
        .for_each(|(p, u, wavg, partial)| *partial = move_chunk(p, u, wavg, a));
    t.aux = fold_partials(&t.partials)[0];
}

simd_kernel! {
/// ‖θ̄ − θ‖² over one chunk (θ before the move), then θ ← θ + u, u ← a·u.
fn move_chunk(p: &mut [f32], u: &mut [f32], wavg: &[f32], a: f32) -> Sums {
    let d = lane_sums2(wavg, p, |w, p| {
        let d = f64::from(w) - f64::from(p);
        [d * d]
    });
    for (p, u) in p.iter_mut().zip(u) {
        *p += *u;
        *u *= a;
    }
    d
}
}

impl KoalaM {
    /// θ ← θ − K1·h, u ← u − K2·h, θ̄ ← 0.9·θ̄ + 0.1·θ with h = g + wd·θ,
    /// S = ‖h‖²·P00 + R, K1 = P00/S·ℓ·η, K2 = P10/S·ℓ·η.
    fn update_tensor(
        &self,
        t: &mut TensorState,
        p: &mut [f32],
        g: &[f32],
        (p00, p10): (f64, f64),
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
        let s = hh * p00 + r;
        let layer_loss = ctx.loss + 0.5 * self.cfg.weight_decay * tt;
        let k1 = (p00 / s * layer_loss * ctx.lr) as f32;
        let k2 = (p10 / s * layer_loss * ctx.lr) as f32;
        let [u, wavg] = t.vectors.as_mut_slice() else {
            unreachable!("KOALA-M layout has two vectors")
        };
        (
            p.par_chunks_mut(CHUNK),
            u.par_chunks_mut(CHUNK),
            wavg.par_chunks_mut(CHUNK),
            g.par_chunks(CHUNK),
        )
            .into_par_iter()
            .for_each(|(p, u, wavg, g)| {
                gain_update(p, u, wavg, g, [k1, k2, self.cfg.weight_decay as f32])
            });
        t.aux = hh / s;
        TensorReport {
            skipped: false,
            s: Some(s),
            guard_hit: false,
        }
    }
}

simd_kernel! {
/// One chunk of the update: h = g + wd·θ; θ ← θ − K1·h; u ← u − K2·h;
/// θ̄ ← 0.9·θ̄ + 0.1·θ (θ after the step).
fn gain_update(p: &mut [f32], u: &mut [f32], wavg: &mut [f32], g: &[f32], k: [f32; 3]) {
    let [k1, k2, wd] = k;
    for (((p, u), wavg), g) in p.iter_mut().zip(u).zip(wavg).zip(g) {
        let h = g + wd * *p;
        *p -= k1 * h;
        *u -= k2 * h;
        *wavg = WAVG_DECAY * *wavg + (1.0 - WAVG_DECAY) * *p;
    }
}
}
