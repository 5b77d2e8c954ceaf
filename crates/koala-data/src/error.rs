//! The crate's error type.
//!
//! Every variant names the file (or config field) at fault and, where there is one, what the user should do,
//! because these errors are shown verbatim to people pointing koala at their own data.

use std::path::{Path, PathBuf};

/// Errors raised while opening a data source or tokenizer, configuring preprocessing or decoding one sample.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying OS error.
        source: std::io::Error,
    },

    /// The data set on disk does not have the expected layout (missing folder, empty class, no images…).
    #[error("{path}: {message}")]
    Layout {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong and what to do about it.
        message: String,
    },

    /// An IDX (MNIST-style) file is malformed.
    #[error("IDX file {path}: {message}")]
    Idx {
        /// The IDX file.
        path: PathBuf,
        /// What is wrong (bad magic, truncation, count mismatch…).
        message: String,
    },

    /// One line of a CSV image list is invalid.
    #[error("{path}:{line}: {message}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },

    /// One line of a text data file (JSONL record, or the line of a plain-text document where a bad token
    /// starts) is invalid.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line and what to do about it.
        message: String,
    },

    /// A tokenizer (`tokenizer.json`, `tokenizer_config.json`) cannot be loaded or does not fit the model.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file at fault.
        path: PathBuf,
        /// What is wrong and what to do about it.
        message: String,
    },

    /// One image could not be decoded. The loader skips such samples and reports them in its stats.
    #[error("cannot decode image {what}: {source}")]
    Decode {
        /// The path of the image (or `file:record` for IDX).
        what: String,
        /// The decoder's error.
        source: image::ImageError,
    },

    /// An image file is not a readable image: not an image at all, cut short, or empty. The loader skips
    /// such samples and reports them in its stats.
    #[error("cannot read image {what}: {message}")]
    Unreadable {
        /// The path of the image.
        what: String,
        /// What is wrong with it and what to do.
        message: String,
    },

    /// An image or buffer handed to a transform is unusable (zero-sized image, output buffer of the wrong length).
    #[error("invalid input {what}: {message}")]
    Input {
        /// The image or buffer.
        what: String,
        /// What is wrong.
        message: String,
    },

    /// A preprocessing or loader setting is out of range.
    #[error("invalid setting `{field}`: {message}")]
    Config {
        /// The setting's name as written in the config file.
        field: &'static str,
        /// Why it is invalid and which values are accepted.
        message: String,
    },
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A [`DataError::Layout`] for `path`.
    pub(crate) fn layout(path: &Path, message: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A [`DataError::Idx`] for `path`.
    pub(crate) fn idx(path: &Path, message: impl Into<String>) -> Self {
        DataError::Idx {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A [`DataError::Line`] for line `line` (1-based) of `path`.
    pub(crate) fn line(path: &Path, line: usize, message: impl Into<String>) -> Self {
        DataError::Line {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// A [`DataError::Tokenizer`] for `path`.
    pub(crate) fn tokenizer(path: &Path, message: impl Into<String>) -> Self {
        DataError::Tokenizer {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A [`DataError::Config`] for `field`.
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        DataError::Config {
            field,
            message: message.into(),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
