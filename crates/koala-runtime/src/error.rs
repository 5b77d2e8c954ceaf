//! Errors of the runtime crate.
//!
//! Every message names the thing that is wrong (the library file, the model file, the tensor) and,
//! where there is one, what to do about it, because these errors reach the command line unchanged.

use std::path::PathBuf;

use crate::provision::ProvisionError;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a tensor is a model input or a model output; used to name it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A graph input.
    Input,
    /// A graph output.
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable libonnxruntime could be found or fetched.
    #[error(transparent)]
    Provision(#[from] ProvisionError),

    /// A library file was found but could not be used as ONNX Runtime.
    #[error("cannot use {path} as ONNX Runtime: {reason}. Set ORT_DYLIB_PATH to a libonnxruntime.so.{wanted} (from the PyPI wheel onnxruntime=={wanted}), or unset it to let koala fetch one; if the file is koala's cached copy, delete it and koala fetches it again", path = path.display(), wanted = crate::provision::ORT_VERSION)]
    Load {
        /// The library file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// ONNX Runtime refused an operation; `context` says which.
    #[error("{context}: {message}")]
    Ort {
        /// What koala was doing (names the model file or the tensors).
        context: String,
        /// ONNX Runtime's own message.
        message: String,
    },

    /// A tensor name that the model does not have.
    #[error("model has no {direction} named {name:?}; its {direction}s are: {available}")]
    UnknownTensor {
        /// Input or output.
        direction: Direction,
        /// The name that was asked for.
        name: String,
        /// The names the model has, comma-separated.
        available: String,
    },

    /// The same tensor was given twice in one call.
    #[error("{direction} {name:?} was given twice in one call; give each tensor once")]
    DuplicateTensor {
        /// Input or output.
        direction: Direction,
        /// The repeated name.
        name: String,
    },

    /// Inputs the model needs but the call did not give.
    #[error("missing model inputs: {names}; every graph input must be given")]
    MissingInputs {
        /// The missing names, comma-separated.
        names: String,
    },

    /// A buffer whose element type differs from the model's.
    #[error(
        "{direction} {name:?}: the model expects element type {expected}, the buffer holds {got}"
    )]
    TypeMismatch {
        /// Input or output.
        direction: Direction,
        /// The tensor.
        name: String,
        /// The model's element type.
        expected: String,
        /// The buffer's element type.
        got: String,
    },

    /// A buffer whose shape differs from the model's (or whose length differs from its own shape).
    #[error("{direction} {name:?}: {detail}")]
    ShapeMismatch {
        /// Input or output.
        direction: Direction,
        /// The tensor.
        name: String,
        /// Expected versus got, in words.
        detail: String,
    },

    /// A model file that cannot be read.
    #[error("cannot read model file {path}: {source}", path = path.display())]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an `ort` error with what koala was doing when it happened.
    pub(crate) fn ort<R>(context: impl Into<String>, err: ort::Error<R>) -> Error {
        Error::Ort {
            context: context.into(),
            message: err.message().to_string(),
        }
    }
}
