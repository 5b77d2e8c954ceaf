//! What the loader hands out: [`Batch`], the [`Cursor`] to resume from, skipped-sample reports and
//! [`LoaderStats`].

use std::time::Duration;

pub use crate::cursor::Cursor;

/// One batch of preprocessed images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `shape[0] × shape[1] × shape[2] × shape[3]` values, NCHW, row-major.
    pub images: Vec<f32>,
    /// Label of each image.
    pub labels: Vec<i64>,
    /// Index of each image in the loader's source.
    pub indices: Vec<usize>,
    /// `[N, C, H, W]`. `N` can be below the batch size for the last batch of an epoch (without `drop_last`) and
    /// when samples were skipped because they failed to decode.
    pub shape: [usize; 4],
    /// Where this batch sits in the stream.
    pub cursor: Cursor,
    /// The cursor of the batch after this one: save it with a checkpoint taken after training on this batch.
    pub next: Cursor,
}

impl Batch {
    /// Number of images (`shape[0]`).
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no images (never the case for batches the loader yields).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

/// A sample that was left out of its batch because it could not be loaded or preprocessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSample {
    /// Where it happened.
    pub cursor: Cursor,
    /// Index in the loader's source.
    pub index: usize,
    /// The sample's path (or `file:record`), from [`crate::ImageSource::describe`].
    pub what: String,
    /// The error message.
    pub error: String,
}

impl std::fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Decoding errors already name the file; saying it twice makes the line hard to read.
        if self.error.contains(&self.what) {
            write!(
                f,
                "unreadable sample skipped (epoch {}, batch {}): {}",
                self.cursor.epoch, self.cursor.position, self.error
            )
        } else {
            write!(
                f,
                "unreadable sample {} skipped (epoch {}, batch {}): {}",
                self.what, self.cursor.epoch, self.cursor.position, self.error
            )
        }
    }
}

/// Counters of one [`crate::BatchIter`], for judging whether data loading slows training down.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderStats {
    /// Total time the consumer spent blocked in `next()` waiting for a batch. In steady state with enough
    /// prefetch this stays near zero; a growing value means the training step outpaces decoding.
    pub wait_time: Duration,
    /// Batches yielded.
    pub batches: usize,
    /// Images yielded.
    pub samples: usize,
    /// Distinct samples skipped: a corrupt file counts once, however many epochs it fails in.
    pub skipped: usize,
    /// The first failure of each skipped sample, in stream order.
    pub skipped_samples: Vec<SkippedSample>,
}
