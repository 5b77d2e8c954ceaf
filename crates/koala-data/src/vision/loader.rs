//! [`Loader`]: turns a source and a [`Preprocess`] into deterministic batches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::batch::{Batch, SkippedSample};
use super::batch_iter::BatchIter;
use super::preprocess::Preprocess;
use super::source::ImageSource;
use super::transform::Transform;
use crate::cursor::Cursor;
use crate::epoch_plan::EpochPlan;
use crate::error::{DataError, Result};
use crate::prefetch::Collate;
use crate::seeding::{rng_for, Stream};

/// Batching, ordering and threading settings of a [`Loader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of the epoch order and of the augmentations.
    #[serde(default)]
    pub seed: u64,
    /// Visit samples in a fresh random order each epoch (otherwise in source order).
    #[serde(default)]
    pub shuffle: bool,
    /// Apply the training geometry (random crop, flip); otherwise the evaluation geometry.
    #[serde(default)]
    pub augment: bool,
    /// Drop the last, incomplete batch of each epoch.
    #[serde(default)]
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer by the background thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Decoding threads; 0 uses rayon's global pool (one thread per core).
    #[serde(default)]
    pub threads: usize,
}

fn default_prefetch() -> usize {
    2
}

impl LoaderConfig {
    /// Training: shuffled, augmented, last partial batch kept, 2 batches of prefetch.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            seed,
            shuffle: true,
            augment: true,
            drop_last: false,
            prefetch: 2,
            threads: 0,
        }
    }

    /// Evaluation: source order, no augmentation, every sample.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            seed: 0,
            shuffle: false,
            augment: false,
            drop_last: false,
            prefetch: 2,
            threads: 0,
        }
    }
}

/// Callback told about every skipped sample, on the consumer's thread, in stream order.
pub type SkipCallback = Arc<dyn Fn(&SkippedSample) + Send + Sync>;

/// Produces batches of preprocessed images from an [`ImageSource`].
///
/// **Determinism.** Epoch `e` visits the samples in a permutation drawn from `(seed, e)`; batch `p` is the
/// slice `p * batch_size ..` of it (the crate's shared [`EpochPlan`]). The augmentation of sample `i` in epoch `e` is drawn from
/// `(seed, e, i)`. Nothing depends on thread count, prefetch depth or where iteration started, so
/// [`Loader::iter`] from a saved [`Cursor`] yields exactly what an uninterrupted run would have.
///
/// **Corrupt samples** are skipped, not replaced: the batch simply holds fewer images (filling it with later
/// samples would shift every following batch and break resumption). Each skip is reported through
/// [`Loader::on_skip`] and [`crate::LoaderStats`]. A batch whose every sample fails is not yielded at all.
#[derive(Clone)]
pub struct Loader {
    pub(crate) source: Arc<dyn ImageSource>,
    transform: Arc<Transform>,
    pub(crate) config: LoaderConfig,
    plan: EpochPlan,
    pool: Option<Arc<rayon::ThreadPool>>,
    pub(crate) on_skip: Option<SkipCallback>,
    /// Source indices already passed to `on_skip`, shared by every clone and iterator of this loader.
    reported: Arc<Mutex<HashSet<usize>>>,
}

impl Loader {
    /// Validates the settings and prepares the decoding threads. Fails on an empty source, a zero batch size,
    /// an invalid [`Preprocess`], or `drop_last` with fewer samples than one batch.
    pub fn new(
        source: Arc<dyn ImageSource>,
        preprocess: Preprocess,
        config: LoaderConfig,
    ) -> Result<Self> {
        let plan = EpochPlan::new(
            source.len(),
            config.batch_size,
            config.seed,
            config.shuffle,
            config.drop_last,
        )?;
        let transform = Arc::new(Transform::new(preprocess)?);
        let pool = match config.threads {
            0 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("koala-data-{i}"))
                    .build()
                    .map_err(|e| {
                        DataError::config(
                            "threads",
                            format!("cannot start {n} decoding threads: {e}"),
                        )
                    })?,
            )),
        };
        Ok(Loader {
            source,
            transform,
            config,
            plan,
            pool,
            on_skip: None,
            reported: Arc::default(),
        })
    }

    /// Calls `f` for every skipped sample (e.g. to log it), in addition to recording it in the stats: once per
    /// sample for the life of this loader, however many epochs or iterators meet it.
    pub fn on_skip(mut self, f: impl Fn(&SkippedSample) + Send + Sync + 'static) -> Self {
        self.on_skip = Some(Arc::new(f));
        self
    }

    /// Whether sample `index` is reported for the first time (and remembers that it now is).
    pub(crate) fn first_report(&self, index: usize) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(index)
    }

    /// The source batches are drawn from.
    pub fn source(&self) -> &Arc<dyn ImageSource> {
        &self.source
    }

    /// The preprocessing applied to every image.
    pub fn preprocess(&self) -> &Preprocess {
        self.transform.preprocess()
    }

    /// The settings this loader was built with.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch()
    }

    /// Batches from `from` up to the end of epoch `until_epoch - 1`, prepared by a background thread. A cursor
    /// past the end of its epoch starts at the next epoch.
    pub fn iter(&self, from: Cursor, until_epoch: u64) -> BatchIter {
        BatchIter::spawn(self.clone(), from, until_epoch)
    }

    /// All batches of one epoch.
    pub fn epoch(&self, epoch: u64) -> BatchIter {
        self.iter(Cursor::new(epoch, 0), epoch + 1)
    }

    /// Loads sample `index` and writes it, preprocessed, to `slot`.
    fn prepare_sample(&self, epoch: u64, index: usize, slot: &mut [f32]) -> Result<()> {
        let image = self.source.load(index)?;
        if self.config.augment {
            let mut rng = rng_for(self.config.seed, Stream::Augment, epoch, index as u64);
            self.transform.apply(&image, Some(&mut rng), slot)
        } else {
            self.transform.apply(&image, None, slot)
        }
    }

    /// Moves the images that were prepared successfully to the front of `buffers.images`, fills labels and
    /// indices for them, and reports the rest as skipped.
    fn compact(
        &self,
        cursor: Cursor,
        members: &[usize],
        outcomes: Vec<Result<()>>,
        sample_len: usize,
        buffers: &mut Buffers,
    ) -> Vec<SkippedSample> {
        buffers.labels.clear();
        buffers.indices.clear();
        let mut skipped = Vec::new();
        for (k, (&index, outcome)) in members.iter().zip(outcomes).enumerate() {
            match outcome {
                Ok(()) => {
                    let kept = buffers.labels.len();
                    if kept != k {
                        buffers
                            .images
                            .copy_within(k * sample_len..(k + 1) * sample_len, kept * sample_len);
                    }
                    buffers.labels.push(self.source.label(index));
                    buffers.indices.push(index);
                }
                Err(e) => skipped.push(SkippedSample {
                    cursor,
                    index,
                    what: self.source.describe(index),
                    error: e.to_string(),
                }),
            }
        }
        buffers.images.truncate(buffers.labels.len() * sample_len);
        skipped
    }
}

impl Collate for Loader {
    type Batch = Batch;
    type Buffers = Buffers;
    type Skip = SkippedSample;

    fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    /// Decodes and preprocesses the images `members` of batch `cursor` into `buffers` (reused if they come
    /// from [`BatchIter::recycle`]). Returns the batch (`None` if every sample failed) and the skips.
    fn collate(
        &self,
        cursor: Cursor,
        members: &[usize],
        mut buffers: Buffers,
    ) -> (Option<Batch>, Vec<SkippedSample>) {
        let sample_len = self.transform.preprocess().sample_len();
        // Every slot is overwritten (or dropped by `compact`), so a recycled buffer of the right length is used
        // as is: clearing it first would zero-fill megabytes per batch for nothing.
        buffers.images.resize(members.len() * sample_len, 0.0);
        let mut decode = || -> Vec<Result<()>> {
            buffers
                .images
                .par_chunks_mut(sample_len)
                .zip(members.par_iter())
                .map(|(slot, &index)| self.prepare_sample(cursor.epoch, index, slot))
                .collect()
        };
        let outcomes = match &self.pool {
            Some(pool) => pool.install(decode),
            None => decode(),
        };
        let skipped = self.compact(cursor, members, outcomes, sample_len, &mut buffers);
        let n = buffers.labels.len();
        let batch = (n > 0).then(|| {
            let [c, h, w] = self.transform.preprocess().chw();
            Batch {
                images: buffers.images,
                labels: buffers.labels,
                indices: buffers.indices,
                shape: [n, c, h, w],
                cursor,
                next: self.plan.advance(cursor),
            }
        });
        (batch, skipped)
    }
}

/// The vectors of a batch, passed back through [`BatchIter::recycle`] so steady-state batching reuses them.
#[derive(Debug, Default)]
pub struct Buffers {
    pub(crate) images: Vec<f32>,
    pub(crate) labels: Vec<i64>,
    pub(crate) indices: Vec<usize>,
}
