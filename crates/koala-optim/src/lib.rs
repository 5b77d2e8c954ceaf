//! KOALA++ and friends on flat f32 tensors.
//!
//! * [`OptimizerConfig`]: plain serde data (with [`preset`]s from the paper) that
//!   [`build`] turns into a `Box<dyn Optimizer>`, so a training loop switches optimizers
//!   by configuration.
//! * [`OptimizerState`]: caller-owned, created by [`Optimizer::init`], holding every buffer
//!   a step needs (steps never allocate), savable/loadable for bitwise-exact resume.
//! * [`Optimizer::predict`] before the forward pass, [`Optimizer::step`] after backward,
//!   with a [`StepContext`] carrying loss, loss variance, learning rate and step number.
//!
//! Algorithms: KOALA++ (symmetric/vanilla, fused or literal path), KOALA-V, KOALA-M
//! (all following `koala-spec.md` and checked against its reference vectors), AdamW and
//! SGD (PyTorch semantics). Documented koala extensions of KOALA++, all off by default
//! so the reference form stays exact to the vectors: joint innovation (one innovation
//! variance for all tensors, `koala_pp_joint.rs`; several optimizer groups share it
//! through [`step_groups`]), a second-moment diagonal covariance scale
//! (`koala_pp_diagonal.rs`), a Polyak target f* ([`KoalaPPConfig::loss_target`]) and a
//! bound on the step factor ([`KoalaPPConfig::max_step`], SPS_max's). Parameters, gradients and state vectors are f32; reductions
//! and scalars are f64. Reductions use fixed-size chunks combined in a fixed order, so
//! results do not depend on the number of threads.

mod adamw;
mod checkpoint;
mod config;
mod error;
mod kernels;
mod koala_m;
mod koala_pp;
mod koala_pp_diagonal;
mod koala_pp_joint;
mod koala_v;
mod optimizer;
mod presets;
mod sgd;
mod simd;
mod state;
pub mod vectors;

pub use checkpoint::{StatePaths, FORMAT_VERSION};
pub use config::{
    AdamWConfig, KoalaMConfig, KoalaPPConfig, KoalaPPDiagonal, KoalaPPInnovation, KoalaPPPath,
    KoalaPPVariant, KoalaVConfig, OptimizerConfig, SgdConfig,
};
pub use error::OptimError;
pub use optimizer::{build, step_groups, GroupStep, Optimizer, StepContext, StepReport};
pub use presets::{preset, Preset, PRESETS};
pub use state::{OptimizerState, TensorReport, TensorSpec};
