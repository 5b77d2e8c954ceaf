//! [`Subset`] views of a source and the deterministic train/validation split built from them.

use std::sync::Arc;

use image::DynamicImage;

use super::source::ImageSource;
use crate::error::{DataError, Result};
use crate::seeding::{permutation, rng_for, Stream};

/// A view of some samples of another source, in the order given.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn ImageSource>,
    indices: Vec<usize>,
}

impl Subset {
    /// The samples `indices` of `inner`. Fails if an index is out of range.
    pub fn new(inner: Arc<dyn ImageSource>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(DataError::config(
                "indices",
                format!(
                    "index {bad} is out of range for a source of {} samples",
                    inner.len()
                ),
            ));
        }
        Ok(Subset { inner, indices })
    }

    /// The indices into the underlying source, in subset order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn label(&self, index: usize) -> i64 {
        self.inner.label(self.indices[index])
    }

    fn load(&self, index: usize) -> Result<DynamicImage> {
        self.inner.load(self.indices[index])
    }

    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }

    fn describe(&self, index: usize) -> String {
        self.inner.describe(self.indices[index])
    }
}

/// Splits `source` into `(train, validation)` subsets, stratified by label and deterministic in `seed`.
///
/// Within each class, the samples are shuffled with `seed` and the first `round(count * val_fraction)` go to
/// validation, so each class keeps its share (which matters for the small data sets people fine-tune on).
/// Both subsets list their indices in increasing source order; together they cover the source exactly once.
pub fn train_val_split(
    source: Arc<dyn ImageSource>,
    val_fraction: f64,
    seed: u64,
) -> Result<(Subset, Subset)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::config(
            "val_fraction",
            format!("{val_fraction} is not in [0, 1)"),
        ));
    }
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for i in 0..source.len() {
        by_class.entry(source.label(i)).or_default().push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (label, members) in by_class {
        let mut rng = rng_for(seed, Stream::Split, label as u64, 0);
        let order = permutation(members.len(), &mut rng);
        let n_val = (members.len() as f64 * val_fraction).round() as usize;
        val.extend(order[..n_val].iter().map(|&k| members[k]));
        train.extend(order[n_val..].iter().map(|&k| members[k]));
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((
        Subset {
            inner: source.clone(),
            indices: train,
        },
        Subset {
            inner: source,
            indices: val,
        },
    ))
}
