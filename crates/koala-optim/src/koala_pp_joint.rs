//! KOALA++ with joint innovation (`innovation = "joint"`): a koala extension (issue 10).
//!
//! **Why.** The reference (spec §5.2) runs one Kalman filter per parameter tensor, each
//! with its own innovation variance S_t, and each tensor's step aims to remove the
//! fraction η of the *whole* loss along its own tensor (the invariant of spec §5.3). With
//! T tensors the combined step removes about T·η of the loss, so fine-tuning a whole
//! network needs η ≈ 4/T and η loses its meaning. Here the filter runs on the
//! concatenated parameter vector θ = (θ_1, …, θ_T) with a block-diagonal covariance (one
//! block per tensor, as before), so there is one scalar measurement and one innovation
//! variance for all tensors.
//!
//! **Math** (spec §2.1 with P = diag(P_1, …, P_T), and the v recursion of spec §5.1):
//! ```text
//! h_t = g_t + wd_t·θ_t,   v_t as in spec §5.3 h (per tensor)
//! S   = Σ_t h_t·P̂_t·h_t + R = Σ_t (v_t·h_t + Q_t·‖h_t‖²) + R
//! ℓ   = L + ½·Σ_t wd_t·‖θ_t‖² − f*                  (one measured loss; f* = loss_target)
//! θ_t ← θ_t − γ_t·(v_t + Q_t·h_t),   γ_t = η_t·ℓ/S   (optionally bounded: max_step)
//! P_t ← P̂_t − P̂_t·h_tᵀ·h_t·P̂_t / S                 (diagonal blocks of the EKF update)
//! ```
//! The EKF update also creates cross-covariances between tensors; keeping only the
//! diagonal blocks is the block-diagonal approximation, and with it the per-tensor v
//! recursion is unchanged except that λ_t = h_t·(v_p + Q·h_p) / S_p divides by the
//! *joint* S of the step that last updated tensor t (kept in the tensor's `S` slot, so
//! checkpoints and resume are unchanged).
//!
//! Lazy first step (spec §5.3 c, e): the phantom measurement is joint as well, over the
//! tensors whose first update is this step: S_p = Σ_{t lazy} (σ_t + Q_t)·‖h_t‖² + R. With
//! one tensor every formula reduces to the per-tensor step (tested bitwise).
//!
//! Invariant (tested): with a common η, Σ_t h_t·Δθ_t = −η·ℓ·(1 − R/S), i.e. the
//! linearised loss drops by the fraction η·(1 − R/S) of ℓ, whatever T is (with the optional
//! `max_step` bound, by γ·S·(1 − R/S) with γ the bounded step factor).
//!
//! Guard (optional `s_guard`): a tensor whose h·P̂·h ≤ 0 restarts from its own lazy state
//! with its own phantom ((σ+Q)‖h‖² + R), a tensor-local restart, so one bad tensor cannot
//! change the others' coefficients after the fact.
//!
//! **Cost.** The same two passes over memory as the fused per-tensor path (spec §5.5);
//! the only change is a barrier: pass 2 of any tensor needs every tensor's pass-1 sums.
//! Groups (e.g. decay / no-decay) stepped together by [`crate::step_groups`] share S, ℓ
//! and the lazy phantom; R and the loss target f* are the first group's (all groups of a
//! run see the same V and are built from one configuration).

use rayon::prelude::*;

use crate::error::OptimError;
use crate::kernels::below_skip_threshold;
use crate::koala_pp::{not_positive_along_h, prev_of, Dots, KoalaPP, StepScalars};
use crate::optimizer::{begin_koala_step, summarize, GroupStep, StepContext, StepReport};
use crate::state::{OptimizerState, TensorReport};

// Slots of `TensorState::work` between the phases.
// After pass 1: the dot products and flags.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const T: usize = 3;
const SKIPPED: usize = 4;
const GUARD_HIT: usize = 5;
// After the filter: v's coefficients and the next step's cached x, y.
const C_V: usize = 0;
const C_H: usize = 1;
const C_P: usize = 2;
const X_NEXT: usize = 6;
const Y_NEXT: usize = 7;

/// One group's part of a joint step: its optimizer and the inputs of `Optimizer::step`.
pub(crate) struct JointGroup<'g, 's, 'p> {
    pub koala: &'g KoalaPP,
    pub step: &'g mut GroupStep<'s, 'p>,
}

/// Steps all `groups` (KOALA++ with joint innovation) as one filter; returns one report
/// per group.
pub(crate) fn step_joint(
    groups: &mut [JointGroup<'_, '_, '_>],
    ctx: &StepContext,
) -> Result<Vec<StepReport>, OptimError> {
    let mut r = None;
    for g in groups.iter_mut() {
        let cfg = &g.koala.cfg;
        let rg = begin_koala_step(
            g.step.state,
            g.koala.layout(),
            g.step.params,
            g.step.grads,
            crate::koala_pp::R,
            (cfg.r, cfg.alpha_r),
            ctx.loss_var,
        )?;
        r.get_or_insert(rg);
    }
    let Some(r) = r else { return Ok(Vec::new()) };

    // Pass 1 everywhere, then the shared phantom S_p and the measured ℓ.
    let (mut lazy_hph, mut l2) = (0.0, 0.0);
    for g in groups.iter_mut() {
        let (lazy, half_wd_tt) = g.koala.joint_pass1(g.step);
        lazy_hph += lazy;
        l2 += half_wd_tt;
    }
    let lazy_s_p = lazy_hph + r;
    let ell = groups[0].koala.cfg.measured_loss(ctx.loss, l2);

    // Every tensor's filter, then the joint S.
    let mut hph = 0.0;
    for g in groups.iter_mut() {
        hph += g.koala.joint_filters(g.step.state, lazy_s_p, r);
    }
    let s = hph + r;

    let mut reports = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        let gamma = g.koala.cfg.step_size(ctx.lr, ell, s);
        g.koala.joint_pass2(g.step, gamma, s);
        g.step.state.last_step = Some(ctx.step);
        reports.push(summarize(g.step.state));
    }
    Ok(reports)
}

impl KoalaPP {
    /// Pass 1 of every tensor of the group (tensors in parallel). Leaves the dot products
    /// and the skip flag in `work`; returns this group's Σ_{t lazy} (σ+Q)·‖h_t‖² and
    /// ½·wd·Σ_t ‖θ_t‖² over the tensors that will be updated (summed in tensor order, so
    /// the result does not depend on the thread count).
    fn joint_pass1(&self, gs: &mut GroupStep<'_, '_>) -> (f64, f64) {
        let (sigma, q, wd) = (self.cfg.sigma, self.cfg.q, self.cfg.weight_decay);
        gs.state
            .tensors
            .par_iter_mut()
            .zip(gs.params.par_iter())
            .zip(gs.grads.par_iter())
            .for_each(|((t, p), g)| {
                t.work[SKIPPED] = 1.0;
                t.work[GUARD_HIT] = 0.0;
                let Some(g) = g else { return };
                let [a, b, c, tt, gg] = self.pass1(t, p, g);
                if below_skip_threshold(gg, self.cfg.skip_eps) {
                    return;
                }
                t.work[..4].copy_from_slice(&[a, b, c, tt]);
                t.work[SKIPPED] = 0.0;
            });
        let mut lazy = 0.0;
        let mut l2 = 0.0;
        for t in gs.state.tensors.iter().filter(|t| t.work[SKIPPED] == 0.0) {
            if !t.initialized {
                lazy += sigma * t.work[C] + q * t.work[C];
            }
            l2 += 0.5 * wd * t.work[T];
        }
        (lazy, l2)
    }

    /// Every updated tensor's filter (v coefficients and h·P̂·h) with the shared phantom
    /// `lazy_s_p` for first updates; applies the optional guard. Returns Σ_t h_t·P̂_t·h_t.
    fn joint_filters(&self, state: &mut OptimizerState, lazy_s_p: f64, r: f64) -> f64 {
        let mut hph = 0.0;
        for t in state.tensors.iter_mut().filter(|t| t.work[SKIPPED] == 0.0) {
            let w = &t.work;
            let dots = Dots {
                a: w[A],
                b: w[B],
                c: w[C],
                t: w[T],
            };
            let prev = prev_of(t);
            let mut f = self.filter(dots, prev, lazy_s_p);
            // S ≤ R for this tensor alone ⟺ h·P̂·h ≤ 0 (see `KoalaPP::guarded_scalars`).
            if self.cfg.s_guard && prev.is_some() && not_positive_along_h(f.hph + r, r) {
                f = self.filter(dots, None, self.own_lazy_s_p(dots.c, r));
                t.work[GUARD_HIT] = 1.0;
            }
            hph += f.hph;
            let w = &mut t.work;
            w[C_V] = f.c_v;
            w[C_H] = f.c_h;
            w[C_P] = f.c_p;
            w[X_NEXT] = f.x_next;
            w[Y_NEXT] = f.y_next;
        }
        hph
    }

    /// Pass 2 of every updated tensor with step −γ, γ = η·ℓ/S (bounded by the optional
    /// `max_step`), tensors in parallel; writes the per-tensor reports.
    fn joint_pass2(&self, gs: &mut GroupStep<'_, '_>, gamma: f64, s: f64) {
        let step = -gamma;
        gs.state
            .tensors
            .par_iter_mut()
            .zip(gs.params.par_iter_mut())
            .zip(gs.grads.par_iter())
            .for_each(|((t, p), g)| {
                let (Some(g), false) = (g, t.work[SKIPPED] != 0.0) else {
                    t.report = TensorReport::skipped();
                    return;
                };
                let w = t.work;
                let k = StepScalars {
                    c_v: w[C_V],
                    c_h: w[C_H],
                    c_p: w[C_P],
                    step,
                    s,
                    guard_hit: w[GUARD_HIT] != 0.0,
                    x_next: w[X_NEXT],
                    y_next: w[Y_NEXT],
                };
                self.pass2(t, p, g, &k);
                t.report = TensorReport {
                    skipped: false,
                    s: Some(s),
                    guard_hit: k.guard_hit,
                };
            });
    }
}
