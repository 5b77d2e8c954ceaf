//! [`BatchIter`]: the consumer end of an image loader's background thread.

use std::collections::HashSet;

use super::batch::{Batch, LoaderStats, SkippedSample};
use super::loader::{Buffers, Loader};
use crate::cursor::Cursor;
use crate::prefetch::{Prefetch, Prefetched};

/// Iterator over batches, prepared `prefetch` batches ahead by a background thread ([`crate::Prefetch`]) that
/// decodes each batch's images in parallel.
///
/// Dropping it stops the thread (after the batch it is working on). If the thread panics (e.g. a custom
/// [`crate::ImageSource`] panics), the panic is re-raised in `next()` rather than ending iteration early.
pub struct BatchIter {
    prefetch: Prefetch<Loader>,
    loader: Loader,
    stats: LoaderStats,
    /// Source indices already counted in `stats`.
    counted: HashSet<usize>,
}

impl BatchIter {
    pub(crate) fn spawn(loader: Loader, from: Cursor, until_epoch: u64) -> Self {
        let depth = loader.config.prefetch;
        BatchIter {
            prefetch: Prefetch::spawn(loader.clone(), from, until_epoch, depth),
            loader,
            stats: LoaderStats::default(),
            counted: HashSet::new(),
        }
    }

    /// Counters so far: time spent waiting, batches, skipped samples.
    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// Hands a consumed batch's vectors back so a later batch reuses them instead of allocating.
    pub fn recycle(&self, batch: Batch) {
        self.prefetch.recycle(Buffers {
            images: batch.images,
            labels: batch.labels,
            indices: batch.indices,
        });
    }

    /// Counts each skipped sample once per iterator and tells the loader's callback about it once per loader
    /// (a corrupt file fails again in every epoch and every evaluation; one warning naming it is enough).
    fn record_skips(&mut self, skipped: Vec<SkippedSample>) {
        for s in skipped {
            if let Some(callback) = &self.loader.on_skip {
                if self.loader.first_report(s.index) {
                    callback(&s);
                }
            }
            if self.counted.insert(s.index) {
                self.stats.skipped += 1;
                self.stats.skipped_samples.push(s);
            }
        }
    }
}

impl Iterator for BatchIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            let message = self.prefetch.next_message();
            self.stats.wait_time = self.prefetch.wait_time();
            match message? {
                Prefetched::Batch(batch, skipped) => {
                    self.record_skips(skipped);
                    self.stats.batches += 1;
                    self.stats.samples += batch.len();
                    return Some(batch);
                }
                Prefetched::OnlySkips(skipped) => self.record_skips(skipped),
            }
        }
    }
}
