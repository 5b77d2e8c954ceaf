//! The crate's error type. Every variant names the thing that is wrong (field, tensor,
//! file) so that a training loop can surface it verbatim instead of panicking.

use std::path::PathBuf;

/// Errors from building optimizers, stepping them and saving/loading their state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyper-parameter is out of its valid range.
    #[error("invalid optimizer configuration: field `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// `preset(name)` was asked for a name that does not exist.
    #[error("unknown optimizer preset `{name}`; known presets: {known}")]
    UnknownPreset { name: String, known: String },

    /// Two tensor specs share a name, so state and checkpoints would be ambiguous.
    #[error("tensor name `{name}` appears twice in the tensor specs; names must be unique")]
    DuplicateTensor { name: String },

    /// A step/predict call got a different number of tensors than `init` was given.
    #[error("{what}: expected {expected} tensors (as passed to init), got {got}")]
    TensorCount {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// A parameter or gradient slice has the wrong length.
    #[error(
        "tensor `{tensor}`: {what} has {got} elements, expected {expected} (numel of its spec)"
    )]
    TensorLength {
        tensor: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// The state passed to an optimizer was created by a different optimizer or path.
    #[error("optimizer state was initialised for `{state}` but is used with `{optimizer}`; call init on this optimizer")]
    StateMismatch { state: String, optimizer: String },

    /// Reading or writing a checkpoint file failed at the OS level.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file exists but does not match the state it is loaded into.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
}

impl OptimError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        OptimError::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn checkpoint(path: &std::path::Path, reason: impl Into<String>) -> Self {
        OptimError::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
