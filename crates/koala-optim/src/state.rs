//! Caller-owned optimizer state (optax-style): `opt.init(&specs)` allocates everything a
//! step will ever need — state vectors, per-chunk reduction buffers and, for the literal
//! KOALA++ path, scratch vectors — so stepping never allocates.
//!
//! The layout is generic (named vector slots and scalar slots per tensor, plus named global
//! scalars) so that one checkpoint format and one inspection API serve every optimizer.

use crate::config::OptimizerConfig;
use crate::error::OptimError;
use crate::kernels::{num_chunks, Sums};

/// Number of f64 scratch slots per tensor in `TensorState::work`.
pub(crate) const WORK_SLOTS: usize = 8;

/// Name and shape of one parameter tensor. Parameters are flattened row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.into(),
        }
    }

    /// Number of scalars (product of the shape; 1 for a scalar tensor with shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The names of an optimizer's state slots. `kind` identifies the optimizer (and KOALA++
/// path), so a state cannot silently be used with, or loaded into, another optimizer.
#[derive(Debug)]
pub(crate) struct StateLayout {
    pub kind: &'static str,
    /// Per-tensor f32 vectors of length numel (saved in checkpoints).
    pub vectors: &'static [&'static str],
    /// Per-tensor f64 scalars (saved).
    pub scalars: &'static [&'static str],
    /// Global f64 scalars (saved).
    pub globals: &'static [&'static str],
    /// Per-tensor f32 scratch vectors of length numel (not saved).
    pub scratch: usize,
}

/// What happened to one tensor in the last `step`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TensorReport {
    /// The tensor was left untouched (no gradient, or ‖g‖₂ below the skip threshold).
    pub skipped: bool,
    /// Innovation variance used for this tensor (KOALA++ S, KOALA-V s_t, KOALA-M S);
    /// `None` for skipped tensors and for AdamW/SGD.
    pub s: Option<f64>,
    /// The optional S guard clamped this tensor's S.
    pub guard_hit: bool,
}

impl TensorReport {
    /// The report of a tensor left untouched in this step.
    pub(crate) fn skipped() -> Self {
        TensorReport {
            skipped: true,
            ..TensorReport::default()
        }
    }
}

/// State of one tensor.
#[derive(Debug)]
pub(crate) struct TensorState {
    pub spec: TensorSpec,
    /// False until the tensor's first non-skipped update (KOALA++'s "empty" state,
    /// SGD's missing momentum buffer).
    pub initialized: bool,
    pub vectors: Vec<Vec<f32>>,
    pub scalars: Vec<f64>,
    pub scratch: Vec<Vec<f32>>,
    /// One slot per fixed-size chunk, for deterministic parallel reductions.
    pub partials: Vec<Sums>,
    /// A per-tensor result handed from a parallel tensor loop to the sequential combine
    /// that follows it (combined in tensor order, so thread count never matters).
    pub aux: f64,
    /// Per-tensor f64 scratch handed between the phases of a step that is split across
    /// tensors (KOALA++ joint innovation: pass-1 sums, then the filter coefficients).
    /// Not saved; meaningless between steps.
    pub work: [f64; WORK_SLOTS],
    pub report: TensorReport,
}

impl TensorState {
    fn new(spec: &TensorSpec, layout: &StateLayout) -> Self {
        let n = spec.numel();
        TensorState {
            spec: spec.clone(),
            initialized: false,
            vectors: layout.vectors.iter().map(|_| vec![0.0; n]).collect(),
            scalars: vec![0.0; layout.scalars.len()],
            scratch: (0..layout.scratch).map(|_| vec![0.0; n]).collect(),
            partials: vec![Sums::default(); num_chunks(n)],
            aux: 0.0,
            work: [0.0; WORK_SLOTS],
            report: TensorReport::default(),
        }
    }

    pub fn numel(&self) -> usize {
        self.spec.shape.iter().product()
    }
}

/// All optimizer state for one set of tensors. Create with `Optimizer::init`.
#[derive(Debug)]
pub struct OptimizerState {
    pub(crate) layout: &'static StateLayout,
    pub(crate) config: OptimizerConfig,
    pub(crate) tensors: Vec<TensorState>,
    pub(crate) globals: Vec<f64>,
    pub(crate) last_step: Option<u64>,
}

impl OptimizerState {
    pub(crate) fn new(
        layout: &'static StateLayout,
        config: OptimizerConfig,
        specs: &[TensorSpec],
        globals: Vec<f64>,
    ) -> Result<Self, OptimError> {
        debug_assert_eq!(globals.len(), layout.globals.len());
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(OptimError::DuplicateTensor {
                    name: spec.name.clone(),
                });
            }
        }
        Ok(OptimizerState {
            layout,
            config,
            tensors: specs.iter().map(|s| TensorState::new(s, layout)).collect(),
            globals,
            last_step: None,
        })
    }

    /// Identifies the optimizer (and KOALA++ path) this state belongs to, e.g. `koala-pp/fused`.
    pub fn kind(&self) -> &'static str {
        self.layout.kind
    }

    /// The configuration of the optimizer that created this state.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The tensor specs, in the order given to `init`.
    pub fn specs(&self) -> impl Iterator<Item = &TensorSpec> {
        self.tensors.iter().map(|t| &t.spec)
    }

    /// `StepContext::step` of the last successful step, if any.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// Per-tensor outcome of the last step, in tensor order.
    pub fn tensor_reports(&self) -> impl Iterator<Item = &TensorReport> {
        self.tensors.iter().map(|t| &t.report)
    }

    /// Names of the per-tensor vector slots (e.g. `["v", "H"]` for KOALA++).
    pub fn vector_slots(&self) -> &'static [&'static str] {
        self.layout.vectors
    }

    /// Names of the per-tensor scalar slots (e.g. `["S", "x", "y"]` for KOALA++).
    pub fn scalar_slots(&self) -> &'static [&'static str] {
        self.layout.scalars
    }

    /// Names of the global scalars (e.g. `["R"]` for KOALA++).
    pub fn global_slots(&self) -> &'static [&'static str] {
        self.layout.globals
    }

    /// A per-tensor state vector, by tensor index and slot name.
    pub fn vector(&self, tensor: usize, slot: &str) -> Option<&[f32]> {
        let i = self.layout.vectors.iter().position(|s| *s == slot)?;
        Some(&self.tensors.get(tensor)?.vectors[i])
    }

    /// A per-tensor scalar, by tensor index and slot name.
    pub fn scalar(&self, tensor: usize, slot: &str) -> Option<f64> {
        let i = self.layout.scalars.iter().position(|s| *s == slot)?;
        Some(self.tensors.get(tensor)?.scalars[i])
    }

    /// Whether the tensor has had its first non-skipped update.
    pub fn is_initialized(&self, tensor: usize) -> Option<bool> {
        Some(self.tensors.get(tensor)?.initialized)
    }

    /// A global scalar by name.
    pub fn global(&self, slot: &str) -> Option<f64> {
        let i = self.layout.globals.iter().position(|s| *s == slot)?;
        Some(self.globals[i])
    }

    /// Fails unless this state was created for `layout`.
    pub(crate) fn expect_layout(&self, layout: &'static StateLayout) -> Result<(), OptimError> {
        if self.layout.kind == layout.kind {
            Ok(())
        } else {
            Err(OptimError::StateMismatch {
                state: self.layout.kind.to_string(),
                optimizer: layout.kind.to_string(),
            })
        }
    }
}
