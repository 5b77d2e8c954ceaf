//! The optimizer trait shared by all algorithms, the per-step inputs and outputs, and
//! `build`, which turns a configuration into a `Box<dyn Optimizer>` so a training loop
//! can switch optimizers by configuration alone.

use crate::config::OptimizerConfig;
use crate::error::OptimError;
use crate::state::{OptimizerState, StateLayout, TensorReport, TensorSpec, TensorState};
use rayon::prelude::*;

/// The scalars a training loop hands to every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepContext {
    /// Mini-batch mean loss L (KOALA family; ignored by AdamW/SGD).
    pub loss: f64,
    /// The loop's "loss variance" V that feeds the online R (spec §2.4: the vision loops
    /// pass L², the original KOALA loop mean(lᵢ²)). Ignored when R is fixed.
    pub loss_var: f64,
    /// Learning rate for this step (after any schedule).
    pub lr: f64,
    /// The loop's step counter; recorded in the state (and checkpoints) for bookkeeping.
    /// AdamW keeps its own per-tensor counters, as PyTorch does.
    pub step: u64,
}

/// Summary of one step; per-tensor details are in `OptimizerState::tensor_reports`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Tensors that were updated.
    pub updated: usize,
    /// Tensors left untouched (no gradient, or below the skip threshold).
    pub skipped: usize,
    /// Tensors whose S was clamped by the optional guard.
    pub guard_hits: usize,
}

/// An optimizer: immutable hyper-parameters; all mutable data lives in the caller's
/// `OptimizerState`.
///
/// Calling convention (spec §1): `predict` before the forward pass, then `step` with the
/// gradients taken at the (possibly moved) parameters.
pub trait Optimizer: Send + Sync + std::fmt::Debug {
    /// The configuration this optimizer was built from.
    fn config(&self) -> &OptimizerConfig;

    /// Allocates the state for these tensors (all of it: stepping never allocates).
    fn init(&self, specs: &[TensorSpec]) -> Result<OptimizerState, OptimError>;

    /// Prediction step before the forward pass. KOALA-M moves the parameters (θ += u),
    /// KOALA-V inflates its covariance; the others do nothing.
    fn predict(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
    ) -> Result<(), OptimError>;

    /// One update. `grads[i] = None` means tensor i got no gradient (it is skipped).
    fn step(
        &self,
        state: &mut OptimizerState,
        params: &mut [&mut [f32]],
        grads: &[Option<&[f32]>],
        ctx: &StepContext,
    ) -> Result<StepReport, OptimError>;

    /// KOALA++ with joint innovation: groups stepped together by [`step_groups`] share
    /// one innovation variance. `None` for every other optimizer.
    #[doc(hidden)]
    fn joint_koala_pp(&self) -> Option<&crate::koala_pp::KoalaPP> {
        None
    }
}

/// One optimizer group's share of a training step: the arguments of [`Optimizer::step`].
pub struct GroupStep<'s, 'p> {
    pub opt: &'s dyn Optimizer,
    pub state: &'s mut OptimizerState,
    pub params: &'s mut [&'p mut [f32]],
    pub grads: &'s [Option<&'s [f32]>],
}

/// Steps the optimizer groups of one model (e.g. the decay and no-decay groups) with the
/// same `ctx`; returns one report per group, in order.
///
/// Groups whose optimizer is KOALA++ with `innovation = joint` are one Kalman filter: they
/// share the innovation variance S, the measured loss ℓ and the lazy phantom
/// (`koala_pp_joint.rs`). Every other group steps on its own, exactly as
/// [`Optimizer::step`] would.
pub fn step_groups(
    groups: &mut [GroupStep<'_, '_>],
    ctx: &StepContext,
) -> Result<Vec<StepReport>, OptimError> {
    let mut reports = vec![StepReport::default(); groups.len()];
    let (joint, alone): (Vec<_>, Vec<_>) = groups
        .iter_mut()
        .enumerate()
        .partition(|(_, g)| g.opt.joint_koala_pp().is_some());
    for (i, g) in alone {
        reports[i] = g.opt.step(g.state, g.params, g.grads, ctx)?;
    }
    let (index, mut parts): (Vec<usize>, Vec<_>) = joint
        .into_iter()
        .map(|(i, g)| {
            let koala = g
                .opt
                .joint_koala_pp()
                .expect("partitioned on joint_koala_pp");
            (i, crate::koala_pp_joint::JointGroup { koala, step: g })
        })
        .unzip();
    for (i, r) in index
        .into_iter()
        .zip(crate::koala_pp_joint::step_joint(&mut parts, ctx)?)
    {
        reports[i] = r;
    }
    Ok(reports)
}

/// Builds the optimizer described by `config` after validating it.
pub fn build(config: &OptimizerConfig) -> Result<Box<dyn Optimizer>, OptimError> {
    config.validate()?;
    Ok(match config {
        OptimizerConfig::KoalaPlusPlus(c) => Box::new(crate::koala_pp::KoalaPP::new(c.clone())),
        OptimizerConfig::KoalaV(c) => Box::new(crate::koala_v::KoalaV::new(c.clone())),
        OptimizerConfig::KoalaM(c) => Box::new(crate::koala_m::KoalaM::new(c.clone())),
        OptimizerConfig::AdamW(c) => Box::new(crate::adamw::AdamW::new(c.clone())),
        OptimizerConfig::Sgd(c) => Box::new(crate::sgd::Sgd::new(c.clone())),
    })
}

/// Checks that `params` match the state's tensor specs.
pub(crate) fn check_params(
    state: &OptimizerState,
    params: &[&mut [f32]],
) -> Result<(), OptimError> {
    check_count("parameters", state.tensors.len(), params.len())?;
    for (t, p) in state.tensors.iter().zip(params) {
        check_len(&t.spec, "parameter", p.len())?;
    }
    Ok(())
}

/// Checks that `params` and `grads` match the state's tensor specs.
pub(crate) fn check_step_inputs(
    state: &OptimizerState,
    params: &[&mut [f32]],
    grads: &[Option<&[f32]>],
) -> Result<(), OptimError> {
    check_params(state, params)?;
    check_count("gradients", state.tensors.len(), grads.len())?;
    for (t, g) in state.tensors.iter().zip(grads) {
        if let Some(g) = g {
            check_len(&t.spec, "gradient", g.len())?;
        }
    }
    Ok(())
}

fn check_count(what: &'static str, expected: usize, got: usize) -> Result<(), OptimError> {
    if expected == got {
        Ok(())
    } else {
        Err(OptimError::TensorCount {
            what,
            expected,
            got,
        })
    }
}

fn check_len(spec: &TensorSpec, what: &'static str, got: usize) -> Result<(), OptimError> {
    if spec.numel() == got {
        Ok(())
    } else {
        Err(OptimError::TensorLength {
            tensor: spec.name.clone(),
            what,
            expected: spec.numel(),
            got,
        })
    }
}

/// The step of the element-wise optimizers (AdamW, SGD): every tensor with a
/// gradient gets `update` (tensors in parallel), the others are marked
/// skipped; records the step and summarises.
pub(crate) fn step_each_tensor(
    state: &mut OptimizerState,
    params: &mut [&mut [f32]],
    grads: &[Option<&[f32]>],
    step: u64,
    update: impl Fn(&mut TensorState, &mut [f32], &[f32]) + Sync + Send,
) -> Result<StepReport, OptimError> {
    check_step_inputs(state, params, grads)?;
    update_tensors(state, params, grads, |t, p, g| {
        update(t, p, g);
        TensorReport::default()
    });
    state.last_step = Some(step);
    Ok(summarize(state))
}

/// Runs `update` on every tensor that has a gradient, tensors in parallel, and
/// stores the report it returns; tensors without a gradient are reported as
/// skipped. The per-tensor loop of every optimizer.
pub(crate) fn update_tensors(
    state: &mut OptimizerState,
    params: &mut [&mut [f32]],
    grads: &[Option<&[f32]>],
    update: impl Fn(&mut TensorState, &mut [f32], &[f32]) -> TensorReport + Sync + Send,
) {
    state
        .tensors
        .par_iter_mut()
        .zip(params.par_iter_mut())
        .zip(grads.par_iter())
        .for_each(|((t, p), g)| {
            t.report = match g {
                Some(g) => update(t, p, g),
                None => TensorReport::skipped(),
            }
        });
}

/// The start of every KOALA-family update: layout and input checks, then the
/// measurement noise R in global slot `r_slot` (spec §2.3: fixed, or the EMA of
/// V), once per call and before any tensor, even if every tensor is skipped.
/// Returns the R to use in this step.
pub(crate) fn begin_koala_step(
    state: &mut OptimizerState,
    layout: &'static StateLayout,
    params: &[&mut [f32]],
    grads: &[Option<&[f32]>],
    r_slot: usize,
    (fixed_r, alpha_r): (Option<f64>, f64),
    loss_var: f64,
) -> Result<f64, OptimError> {
    state.expect_layout(layout)?;
    check_step_inputs(state, params, grads)?;
    crate::kernels::update_noise(&mut state.globals[r_slot], fixed_r, alpha_r, loss_var);
    Ok(state.globals[r_slot])
}

/// Counts the per-tensor reports of the step just taken.
pub(crate) fn summarize(state: &OptimizerState) -> StepReport {
    let mut report = StepReport::default();
    for r in state.tensor_reports() {
        if r.skipped {
            report.skipped += 1;
        } else {
            report.updated += 1;
        }
        report.guard_hits += usize::from(r.guard_hit);
    }
    report
}
