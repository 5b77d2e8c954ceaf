//! [`with_training_classes`]: evaluation data labelled with the training data's class numbering.
//!
//! Class folders and CSV class names are numbered by sorting the names of each data set on its own. An
//! evaluation set that lacks a class (or has one the training set lacks) is then numbered differently, every
//! label after the gap is shifted, and a correct model is scored as wrong without a word.

use std::path::Path;
use std::sync::Arc;

use image::DynamicImage;

use super::source::ImageSource;
use crate::error::{DataError, Result};

/// `inner` with each label replaced by the index of its class name in the training classes.
struct Relabeled {
    inner: Arc<dyn ImageSource>,
    class_names: Vec<String>,
    /// Training label of each of `inner`'s labels.
    to_training: Vec<i64>,
}

impl ImageSource for Relabeled {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn label(&self, index: usize) -> i64 {
        let own = self.inner.label(index);
        usize::try_from(own)
            .ok()
            .and_then(|l| self.to_training.get(l).copied())
            .unwrap_or(own)
    }

    fn load(&self, index: usize) -> Result<DynamicImage> {
        self.inner.load(index)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

/// `eval` (read from `origin`) labelled with `training_classes`, matched by class name.
///
/// Returned unchanged when the names already agree, or when either side has only numeric class names
/// (`"0"`, `"1"`, …: integer CSV labels and IDX files, whose labels are already output indices). Fails,
/// naming the class and the training classes, when `eval` has a named class the training data lacks.
pub fn with_training_classes(
    eval: Arc<dyn ImageSource>,
    training_classes: &[String],
    origin: &Path,
) -> Result<Arc<dyn ImageSource>> {
    let own = eval.class_names();
    if own == training_classes || all_numeric(own) || all_numeric(training_classes) {
        return Ok(eval);
    }
    let mut to_training = Vec::with_capacity(own.len());
    for name in own {
        let Some(label) = training_classes.iter().position(|c| c == name) else {
            return Err(DataError::layout(
                origin,
                format!(
                    "class `{name}` is not a class of the training data ({}); rename or remove it, or add it \
                     to the training data",
                    training_classes.join(", ")
                ),
            ));
        };
        to_training.push(label as i64);
    }
    Ok(Arc::new(Relabeled {
        inner: eval,
        class_names: training_classes.to_vec(),
        to_training,
    }))
}

/// Whether every name is a bare integer (the names given to integer labels).
fn all_numeric(names: &[String]) -> bool {
    names
        .iter()
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
