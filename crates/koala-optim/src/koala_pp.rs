//! KOALA++ (spec §5): per tensor, the covariance–gradient product v = H·P, the previous
//! H and the previous innovation variance S replace the n×n covariance.
//!
//! Two computations of the same step are provided (`KoalaPPPath`):
//! * fused (spec §5.5): pass 1 reads g, θ, H_prev, v_prev and reduces the five dot
//!   products a = h·h_p, b = h·v_p, c = h·h, t = θ·θ and ‖g‖²; all scalars follow from
//!   these and the cached x = ‖h_p‖², y = h_p·v_p; pass 2 writes v, H and θ. 44 bytes per
//!   parameter, chunk-parallel, no allocation.
//! * literal (spec §5.3): the reference code's operation order with separate reductions;
//!   slower, kept as an independent cross-check of the fused algebra.

use rayon::prelude::*;

use crate::config::{
    KoalaPPConfig, KoalaPPDiagonal, KoalaPPInnovation, KoalaPPPath, KoalaPPVariant, OptimizerConfig,
};
use crate::error::OptimError;
use crate::kernels::{below_skip_threshold, dot, par_chunk_sums, simd_kernel, Sums, CHUNK};
use crate::koala_pp_diagonal::{
    diagonal_pass2, diagonal_sums, Scale, FUSED_DIAGONAL_LAYOUT, N as DIAGONAL_N,
};
use crate::koala_pp_joint::{step_joint, JointGroup};
use crate::optimizer::{
    begin_koala_step, summarize, update_tensors, GroupStep, Optimizer, StepContext, StepReport,
};
use crate::simd::koala_pp_sums;
use crate::state::{OptimizerState, StateLayout, TensorReport, TensorSpec, TensorState};

// Scalar and global slot indices; must match the layouts below.
const S: usize = 0;
const X: usize = 1;
const Y: usize = 2;
pub(crate) const R: usize = 0;

static FUSED_LAYOUT: StateLayout = StateLayout {
    kind: "koala-pp/fused",
    vectors: &["v", "H"],
    scalars: &["S", "x", "y"],
    globals: &["R"],
    scratch: 0,
};

static LITERAL_LAYOUT: StateLayout = StateLayout {
    kind: "koala-pp/literal",
    vectors: &["v", "H"],
    scalars: &["S", "x", "y"],
    globals: &["R"],
    // The literal path's scratch: new h, new v, and v + Q·h.
    scratch: 3,
};

/// The KOALA++ optimizer.
#[derive(Debug)]
pub struct KoalaPP {
    pub(crate) cfg: KoalaPPConfig,
    config: OptimizerConfig,
}

impl KoalaPP {
    pub(crate) fn new(cfg: KoalaPPConfig) -> Self {
        KoalaPP {
            config: OptimizerConfig::KoalaPlusPlus(cfg.clone()),
            cfg,
        }
    }

    pub(crate) fn layout(&self) -> &'static StateLayout {
        match (self.cfg.path, self.cfg.diagonal) {
            (KoalaPPPath::Fused, KoalaPPDiagonal::None) => &FUSED_LAYOUT,
            (KoalaPPPath::Fused, KoalaPPDiagonal::SecondMoment) => &FUSED_DIAGONAL_LAYOUT,
            // Refused by `KoalaPPConfig::validate`; the layout is the literal one regardless.
            (KoalaPPPath::Literal, _) => &LITERAL_LAYOUT,
        }
    }
}

impl Optimizer for KoalaPP {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn joint_koala_pp(&self) -> Option<&KoalaPP> {
        (self.cfg.innovation == KoalaPPInnovation::Joint).then_some(self)
    }

    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError> {
        OptimizerState::new(
            self.layout(),
            self.config.clone(),
            specs,
            vec![self.cfg.r.unwrap_or(self.cfg.r_init)],
        )
    }

    /// KOALA++ has no prediction step (the reference method exists and does nothing).
    fn predict(&self, state: &mut OptimizerState, _: &mut [&mut [f32]]) -> Result<(), OptimError> {
        state.expect_layout(self.layout())
    }

    fn step(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
        grads: &[Option<&[f32]>],
        ctx: &StepContext,
    ) -> Result<StepReport, OptimError> {
        if self.cfg.innovation == KoalaPPInnovation::Joint {
            let mut gs = GroupStep {
                opt: self,
                state,
                params,
                grads,
            };
            let mut group = [JointGroup {
                koala: self,
                step: &mut gs,
            }];
            return Ok(step_joint(&mut group, ctx)?[0]);
        }
        let r = begin_koala_step(
            state,
            self.layout(),
            params,
            grads,
            R,
            (self.cfg.r, self.cfg.alpha_r),
            ctx.loss_var,
        )?;
        update_tensors(state, params, grads, |t, p, g| match self.cfg.path {
            KoalaPPPath::Fused => self.fused_tensor(t, p, g, r, ctx),
            KoalaPPPath::Literal => self.literal_tensor(t, p, g, r, ctx),
        });
        state.last_step = Some(ctx.step);
        Ok(summarize(state))
    }
}

/// Scalars of one tensor's step, all derived from the pass-1 dot products.
pub(crate) struct StepScalars {
    /// Coefficients of v = c_v·v_p + c_h·h + c_p·h_p.
    pub c_v: f64,
    pub c_h: f64,
    pub c_p: f64,
    /// θ ← θ + step·(v + Q·h), step = −η·ℓ/S.
    pub step: f64,
    /// S of this step, and whether the optional guard restarted the tensor's filter.
    pub s: f64,
    pub guard_hit: bool,
    /// Cached x and y of the next step: ‖h‖² and h·v.
    pub x_next: f64,
    pub y_next: f64,
}

/// A tensor's filter update before S is known: the v coefficients and h·P̂·h, this
/// tensor's share of S (S = h·P̂·h + R per tensor; Σ_t h_t·P̂_t·h_t + R when joint).
#[derive(Clone, Copy)]
pub(crate) struct Filter {
    pub c_v: f64,
    pub c_h: f64,
    pub c_p: f64,
    /// h·P̂·h = v·h + Q·‖h‖².
    pub hph: f64,
    /// ‖h‖² and h·v, the next step's cached x and y.
    pub x_next: f64,
    pub y_next: f64,
}

/// The tensor's previous filter state; `None` before its first update (the lazy step).
pub(crate) fn prev_of(t: &TensorState) -> Option<Prev> {
    t.initialized.then(|| Prev {
        s: t.scalars[S],
        x: t.scalars[X],
        y: t.scalars[Y],
    })
}

/// Previous state of a tensor as seen by the scalar computation.
#[derive(Clone, Copy)]
pub(crate) struct Prev {
    pub s: f64,
    pub x: f64,
    pub y: f64,
}

/// The fused form's dot products (spec §5.5).
#[derive(Clone, Copy)]
pub(crate) struct Dots {
    /// h·h_p
    pub a: f64,
    /// h·v_p
    pub b: f64,
    /// h·h
    pub c: f64,
    /// θ·θ
    pub t: f64,
}

impl KoalaPP {
    /// Spec §5.3 steps c–i in scalar form, up to h·P̂·h. `prev = None` is the lazy first
    /// step: the reference pretends h_p = h and v_p = σ·h (a phantom measurement update
    /// whose innovation variance is `lazy_s_p`), so a, b, x and y follow from c alone.
    pub(crate) fn filter(&self, dots: Dots, prev: Option<Prev>, lazy_s_p: f64) -> Filter {
        let (q, sigma) = (self.cfg.q, self.cfg.sigma);
        let c = dots.c;
        let (a, b, x, y, s_p) = match prev {
            Some(p) => (dots.a, dots.b, p.x, p.y, p.s),
            None => (c, sigma * c, c, sigma * c, lazy_s_p),
        };
        let lambda = (b + q * a) / s_p;
        let alpha = a / x;
        let w = match self.cfg.variant {
            KoalaPPVariant::Symmetric => b / x - a * y / (x * x),
            KoalaPPVariant::Vanilla => 0.0,
        };
        let c_v = alpha - lambda;
        let c_p = w - q * lambda;
        // v·h expanded so that S needs no second reduction.
        let vh = c_v * b + q * c + c_p * a;
        let (c_v, c_h, c_p) = match prev {
            Some(_) => (c_v, q, c_p),
            // v_p = σ·h and h_p = h fold into a single coefficient on h.
            None => (0.0, c_v * sigma + q + c_p, 0.0),
        };
        Filter {
            c_v,
            c_h,
            c_p,
            hph: vh + q * c,
            x_next: c,
            y_next: vh,
        }
    }

    /// The lazy first step's innovation variance for one tensor on its own (spec §5.3 e):
    /// (σ+Q)·‖h‖² + R, written as the reference sums it.
    pub(crate) fn own_lazy_s_p(&self, c: f64, r: f64) -> f64 {
        self.cfg.sigma * c + self.cfg.q * c + r
    }

    /// The per-tensor step (spec §5.3 c–k): S = h·P̂·h + R of this tensor alone.
    fn scalars(&self, dots: Dots, prev: Option<Prev>, r: f64, ctx: &StepContext) -> StepScalars {
        let f = self.filter(dots, prev, self.own_lazy_s_p(dots.c, r));
        let s = f.hph + r;
        let layer_loss = self
            .cfg
            .measured_loss(ctx.loss, 0.5 * self.cfg.weight_decay * dots.t);
        StepScalars {
            c_v: f.c_v,
            c_h: f.c_h,
            c_p: f.c_p,
            step: -self.cfg.step_size(ctx.lr, layer_loss, s),
            s,
            guard_hit: false,
            x_next: f.x_next,
            y_next: f.y_next,
        }
    }

    /// The scalars, with the optional guard applied: if S ≤ R, i.e. h·P̂·h = S − R ≤ 0
    /// (the implicit covariance is not positive along h, spec §5.4), the tensor's filter
    /// restarts from its lazy initial state (phantom step with P = σ·I, spec §5.3), whose
    /// S is always > R. Clamping S instead (e.g. to max(S, R)) keeps the inconsistent v and
    /// makes the step go uphill (h·Δθ = −η·ℓ·(S_raw − R)/S > 0); on a plain quadratic that
    /// diverged, which is why the guard restarts rather than clamps.
    fn guarded_scalars(
        &self,
        dots: Dots,
        prev: Option<Prev>,
        r: f64,
        ctx: &StepContext,
    ) -> StepScalars {
        let k = self.scalars(dots, prev, r, ctx);
        if self.cfg.s_guard && prev.is_some() && not_positive_along_h(k.s, r) {
            StepScalars {
                guard_hit: true,
                ..self.scalars(dots, None, r, ctx)
            }
        } else {
            k
        }
    }

    fn fused_tensor(
        &self,
        t: &mut TensorState,
        p: &mut [f32],
        g: &[f32],
        r: f64,
        ctx: &StepContext,
    ) -> TensorReport {
        let [a, b, c, tt, gg] = self.pass1(t, p, g);
        if below_skip_threshold(gg, self.cfg.skip_eps) {
            return TensorReport::skipped();
        }
        let dots = Dots { a, b, c, t: tt };
        let k = self.guarded_scalars(dots, prev_of(t), r, ctx);
        self.pass2(t, p, g, &k);
        TensorReport {
            skipped: false,
            s: Some(k.s),
            guard_hit: k.guard_hit,
        }
    }

    /// Pass 1 (spec §5.5): the dot products h·h_p, h·v_p, h·h, θ·θ and ‖g‖², with
    /// h = g + wd·θ formed on the fly (h_φ with the diagonal scale); chunk-parallel with a
    /// fixed combine order.
    pub(crate) fn pass1(&self, t: &mut TensorState, p: &[f32], g: &[f32]) -> Sums {
        let n = t.numel();
        let wd = self.cfg.weight_decay as f32;
        let scale = self.scale(t);
        let (v, h) = (&t.vectors[0], &t.vectors[1]);
        match scale {
            None => par_chunk_sums(&mut t.partials, n, |rg| {
                koala_pp_sums(&g[rg.clone()], &p[rg.clone()], &h[rg.clone()], &v[rg], wd)
            }),
            Some(k) => {
                let m = &t.vectors[2];
                par_chunk_sums(&mut t.partials, n, |rg| {
                    let (g, p, h, v) = (
                        &g[rg.clone()],
                        &p[rg.clone()],
                        &h[rg.clone()],
                        &v[rg.clone()],
                    );
                    diagonal_sums(g, p, h, v, &m[rg], wd, &k)
                })
            }
        }
    }

    /// The diagonal scale's constants for this tensor's next update, or `None` without it.
    fn scale(&self, t: &TensorState) -> Option<Scale> {
        (self.cfg.diagonal == KoalaPPDiagonal::SecondMoment)
            .then(|| Scale::new(self.cfg.beta2, self.cfg.eps, t.scalars[DIAGONAL_N] + 1.0))
    }

    /// Pass 2 (spec §5.5): writes v, H and θ with the step's coefficients, then stores
    /// the scalars the next step needs.
    pub(crate) fn pass2(&self, t: &mut TensorState, p: &mut [f32], g: &[f32], k: &StepScalars) {
        let coef = Pass2 {
            c_v: k.c_v as f32,
            c_h: k.c_h as f32,
            c_p: k.c_p as f32,
            q: self.cfg.q as f32,
            step: k.step as f32,
            wd: self.cfg.weight_decay as f32,
        };
        let scale = self.scale(t);
        match (scale, t.vectors.as_mut_slice()) {
            (None, [v, h]) => (
                p.par_chunks_mut(CHUNK),
                v.par_chunks_mut(CHUNK),
                h.par_chunks_mut(CHUNK),
                g.par_chunks(CHUNK),
            )
                .into_par_iter()
                .for_each(|(p, v, h, g)| pass2(p, v, h, g, &coef)),
            (Some(scale), [v, h, m]) => (
                (p.par_chunks_mut(CHUNK), v.par_chunks_mut(CHUNK)),
                (h.par_chunks_mut(CHUNK), m.par_chunks_mut(CHUNK)),
                g.par_chunks(CHUNK),
            )
                .into_par_iter()
                .for_each(|((p, v), (h, m), g)| diagonal_pass2(p, v, h, m, g, &coef, &scale)),
            _ => unreachable!("the layout matches the diagonal setting"),
        }
        t.scalars[S] = k.s;
        t.scalars[X] = k.x_next;
        t.scalars[Y] = k.y_next;
        if scale.is_some() {
            t.scalars[DIAGONAL_N] += 1.0;
        }
        t.initialized = true;
    }

    /// Spec §5.3 literally: h, then (lazy init) v_p, h_p, then x, y, S_p, a, b, λ, α, w,
    /// v, S, ℓ and θ, each as its own operation. Tensor-parallel only.
    fn literal_tensor(
        &self,
        t: &mut TensorState,
        p: &mut [f32],
        g: &[f32],
        r: f64,
        ctx: &StepContext,
    ) -> TensorReport {
        if below_skip_threshold(dot(g, g), self.cfg.skip_eps) {
            return TensorReport::skipped();
        }
        let (q, wd) = (self.cfg.q, self.cfg.weight_decay);
        let (qf, wdf) = (q as f32, wd as f32);
        let [hs, vs, vq] = t.scratch.as_mut_slice() else {
            unreachable!("literal layout has three scratch vectors")
        };
        for ((h, g), p) in hs.iter_mut().zip(g).zip(p.iter()) {
            *h = g + wdf * p; // b. h = g + wd·θ
        }
        let [v_p, h_p] = t.vectors.as_mut_slice() else {
            unreachable!("KOALA++ layout has two vectors")
        };
        let mut first = !t.initialized;
        let mut guard_hit = false;
        let s = loop {
            if first {
                // c. lazy init: v_p = σ·h, h_p = h
                let sigma = self.cfg.sigma as f32;
                for ((vp, hp), h) in v_p.iter_mut().zip(h_p.iter_mut()).zip(hs.iter()) {
                    *vp = sigma * h;
                    *hp = *h;
                }
            }
            let x = dot(h_p, h_p); // d.
            let y = dot(h_p, v_p);
            let s_p = if first { y + q * x + r } else { t.scalars[S] }; // e.
            let a = dot(hs, h_p); // f.
            let b = dot(hs, v_p);
            let lambda = (b + q * a) / s_p; // g.
            let alpha = a / x;
            let w = match self.cfg.variant {
                KoalaPPVariant::Symmetric => b / x - a * y / (x * x),
                KoalaPPVariant::Vanilla => 0.0,
            };
            let (c_vp, lam, wf) = ((alpha - lambda) as f32, lambda as f32, w as f32);
            for (((v, vp), hp), h) in vs.iter_mut().zip(v_p.iter()).zip(h_p.iter()).zip(hs.iter()) {
                *v = c_vp * vp + qf * (h - lam * hp) + wf * hp; // h. new v
            }
            for ((vq, v), h) in vq.iter_mut().zip(vs.iter()).zip(hs.iter()) {
                *vq = v + qf * h;
            }
            let s = dot(vq, hs) + r; // i.
                                     // Optional guard (see `guarded_scalars`): restart from the lazy init.
            if self.cfg.s_guard && !first && not_positive_along_h(s, r) {
                first = true;
                guard_hit = true;
                continue;
            }
            break s;
        };
        let layer_loss = self.cfg.measured_loss(ctx.loss, 0.5 * wd * dot(p, p)); // j.
        let step = (-self.cfg.step_size(ctx.lr, layer_loss, s)) as f32; // k.
        for (p, vq) in p.iter_mut().zip(vq.iter()) {
            *p += step * vq;
        }
        // l. state ← (v, h, S); swapping buffers keeps the step allocation-free.
        std::mem::swap(v_p, vs);
        std::mem::swap(h_p, hs);
        t.scalars[S] = s;
        t.scalars[X] = dot(h_p, h_p);
        t.scalars[Y] = dot(h_p, v_p);
        t.initialized = true;
        TensorReport {
            skipped: false,
            s: Some(s),
            guard_hit,
        }
    }
}

/// S ≤ R (or NaN) means h·P̂·h = S − R is not positive: the guard's trigger.
pub(crate) fn not_positive_along_h(s: f64, r: f64) -> bool {
    s.partial_cmp(&r) != Some(std::cmp::Ordering::Greater)
}

/// Pass-2 coefficients in f32 (the stored vectors are f32).
pub(crate) struct Pass2 {
    pub c_v: f32,
    pub c_h: f32,
    pub c_p: f32,
    pub q: f32,
    pub step: f32,
    pub wd: f32,
}

simd_kernel! {
/// Pass 2 over one chunk: h = g + wd·θ; v = c_v·v_p + c_h·h + c_p·h_p;
/// θ ← θ + step·(v + Q·h); v and h overwrite v_p and h_p in place.
pub(crate) fn pass2(p: &mut [f32], v: &mut [f32], h: &mut [f32], g: &[f32], k: &Pass2) {
    for (((p, v), h), g) in p.iter_mut().zip(v).zip(h).zip(g) {
        let hi = g + k.wd * *p;
        let vi = k.c_v * *v + k.c_h * hi + k.c_p * *h;
        *p += k.step * (vi + k.q * hi);
        *v = vi;
        *h = hi;
    }
}
}
