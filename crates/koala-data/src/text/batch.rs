//! [`TextLoader`]: batches of token blocks with the shared epoch order, prefetch thread and exact resume.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dataset::{TextDataset, IGNORE_INDEX};
use crate::cursor::Cursor;
use crate::epoch_plan::EpochPlan;
use crate::error::Result;
use crate::prefetch::{Collate, Prefetch, Prefetched};

/// One batch of token blocks, `[batch, seq]` row-major `i64` each: the inputs of a causal-LM training graph.
///
/// Always exactly `batch × seq` (the graph is specialised to one shape): shorter examples are padded at the
/// right with the pad id, label [`IGNORE_INDEX`] and mask 0. When an epoch's last batch has fewer examples
/// (evaluation, without `drop_last`), the missing rows are *filler rows*: pad ids, all labels ignored, and a
/// mask of 1s, because a row that attends to nothing makes the attention softmax 0/0 (NaN) in exports that
/// mask with −∞; with every label ignored the row adds nothing to the loss. [`TextBatch::examples`] lists the
/// real rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    /// Rows (the loader's batch size).
    pub batch: usize,
    /// Tokens per row (the data set's block size).
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Targets, [`IGNORE_INDEX`] where no loss is taken (prompt, other chat turns, padding, filler rows).
    pub labels: Vec<i64>,
    /// 1 on real tokens and filler rows, 0 on padding.
    pub attention_mask: Vec<i64>,
    /// Index in the data set of the example in each real row (rows `examples.len()..batch` are filler).
    pub examples: Vec<usize>,
    /// Where this batch sits in the stream.
    pub cursor: Cursor,
    /// The cursor of the batch after this one: save it with a checkpoint taken after training on this batch.
    pub next: Cursor,
}

/// Batching and ordering settings of a [`TextLoader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextLoaderConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Seed of the epoch order.
    #[serde(default)]
    pub seed: u64,
    /// Visit examples in a fresh random order each epoch (otherwise in file order).
    #[serde(default)]
    pub shuffle: bool,
    /// Drop the last, incomplete batch of each epoch (otherwise it gets filler rows).
    #[serde(default)]
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer by the background thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
}

fn default_prefetch() -> usize {
    2
}

impl TextLoaderConfig {
    /// Training: shuffled from `seed`, incomplete last batch dropped (every step sees `batch_size` examples).
    pub fn train(batch_size: usize, seed: u64) -> Self {
        TextLoaderConfig {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            prefetch: 2,
        }
    }

    /// Evaluation: file order, every example (the last batch filled with filler rows).
    pub fn eval(batch_size: usize) -> Self {
        TextLoaderConfig {
            batch_size,
            seed: 0,
            shuffle: false,
            drop_last: false,
            prefetch: 2,
        }
    }
}

/// Produces [`TextBatch`]es from a [`TextDataset`].
///
/// **Determinism.** Epoch `e` visits the examples in a permutation drawn from `(seed, e)` (the crate's
/// [`EpochPlan`], shared with the image loader), so [`TextLoader::iter`] from a saved [`Cursor`] yields exactly
/// the batches an uninterrupted run would have seen.
#[derive(Clone)]
pub struct TextLoader {
    dataset: Arc<TextDataset>,
    config: TextLoaderConfig,
    plan: EpochPlan,
}

impl TextLoader {
    /// Fails on a zero batch size or `drop_last` with fewer examples than one batch.
    pub fn new(dataset: Arc<TextDataset>, config: TextLoaderConfig) -> Result<Self> {
        let plan = EpochPlan::new(
            dataset.len(),
            config.batch_size,
            config.seed,
            config.shuffle,
            config.drop_last,
        )?;
        Ok(TextLoader {
            dataset,
            config,
            plan,
        })
    }

    /// The data set batches are drawn from.
    pub fn dataset(&self) -> &Arc<TextDataset> {
        &self.dataset
    }

    /// The settings this loader was built with.
    pub fn config(&self) -> &TextLoaderConfig {
        &self.config
    }

    /// `[batch_size, block_size]`: the shape of every batch.
    pub fn batch_shape(&self) -> [usize; 2] {
        [self.config.batch_size, self.dataset.block_size()]
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch()
    }

    /// Batches from `from` up to the end of epoch `until_epoch - 1`, prepared by a background thread. A cursor
    /// past the end of its epoch starts at the next epoch.
    pub fn iter(&self, from: Cursor, until_epoch: u64) -> TextBatchIter {
        TextBatchIter {
            prefetch: Prefetch::spawn(self.clone(), from, until_epoch, self.config.prefetch),
        }
    }

    /// All batches of one epoch.
    pub fn epoch(&self, epoch: u64) -> TextBatchIter {
        self.iter(Cursor::new(epoch, 0), epoch + 1)
    }
}

/// The vectors of a [`TextBatch`], handed back through [`TextBatchIter::recycle`].
#[derive(Debug, Default)]
pub struct TextBuffers {
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    attention_mask: Vec<i64>,
    examples: Vec<usize>,
}

impl Collate for TextLoader {
    type Batch = TextBatch;
    type Buffers = TextBuffers;
    type Skip = std::convert::Infallible;

    fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    fn collate(
        &self,
        cursor: Cursor,
        members: &[usize],
        mut buffers: TextBuffers,
    ) -> (Option<TextBatch>, Vec<std::convert::Infallible>) {
        let [batch, seq] = self.batch_shape();
        let pad = self.dataset.pad_id();
        for v in [
            &mut buffers.input_ids,
            &mut buffers.labels,
            &mut buffers.attention_mask,
        ] {
            v.clear();
        }
        buffers.examples.clear();
        for &index in members {
            let e = &self.dataset.examples()[index];
            let padding = seq - e.len();
            buffers.input_ids.extend_from_slice(&e.input_ids);
            buffers.input_ids.extend(std::iter::repeat_n(pad, padding));
            buffers.labels.extend_from_slice(&e.labels);
            buffers
                .labels
                .extend(std::iter::repeat_n(IGNORE_INDEX, padding));
            buffers.attention_mask.extend_from_slice(&e.attention_mask);
            buffers
                .attention_mask
                .extend(std::iter::repeat_n(0, padding));
            buffers.examples.push(index);
        }
        let filler = (batch - members.len()) * seq;
        buffers.input_ids.extend(std::iter::repeat_n(pad, filler));
        buffers
            .labels
            .extend(std::iter::repeat_n(IGNORE_INDEX, filler));
        buffers
            .attention_mask
            .extend(std::iter::repeat_n(1, filler));
        let text_batch = TextBatch {
            batch,
            seq,
            input_ids: buffers.input_ids,
            labels: buffers.labels,
            attention_mask: buffers.attention_mask,
            examples: buffers.examples,
            cursor,
            next: self.plan.advance(cursor),
        };
        (Some(text_batch), Vec::new())
    }
}

/// Iterator over [`TextBatch`]es, built `prefetch` batches ahead by a background thread.
pub struct TextBatchIter {
    prefetch: Prefetch<TextLoader>,
}

impl TextBatchIter {
    /// Hands a consumed batch's vectors back so a later batch reuses them instead of allocating.
    pub fn recycle(&self, batch: TextBatch) {
        self.prefetch.recycle(TextBuffers {
            input_ids: batch.input_ids,
            labels: batch.labels,
            attention_mask: batch.attention_mask,
            examples: batch.examples,
        });
    }

    /// Time spent waiting for batches so far (stays near zero unless batching is the bottleneck).
    pub fn wait_time(&self) -> Duration {
        self.prefetch.wait_time()
    }
}

impl Iterator for TextBatchIter {
    type Item = TextBatch;

    fn next(&mut self) -> Option<TextBatch> {
        loop {
            match self.prefetch.next_message()? {
                Prefetched::Batch(batch, _) => return Some(batch),
                Prefetched::OnlySkips(_) => {} // text batches are never empty
            }
        }
    }
}
