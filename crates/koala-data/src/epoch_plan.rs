//! [`EpochPlan`]: which examples each batch of each epoch holds, the same for images and text.

use crate::cursor::Cursor;
use crate::error::{DataError, Result};
use crate::seeding::{permutation, rng_for, Stream};

/// How `len` examples are cut into batches, epoch after epoch.
///
/// Epoch `e` visits the examples in a permutation drawn from `(seed, e)` (or in source order without
/// `shuffle`); batch `p` is the slice `p * batch_size ..` of it. Nothing else enters the order, which is what
/// makes a [`Cursor`] a complete resume state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    len: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
}

impl EpochPlan {
    /// A plan over `len` examples. Fails on an empty source, a zero batch size, or `drop_last` with fewer
    /// examples than one batch (no batch would ever be produced).
    pub fn new(
        len: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        drop_last: bool,
    ) -> Result<Self> {
        if len == 0 {
            return Err(DataError::config(
                "source",
                "the data source holds no samples",
            ));
        }
        if batch_size == 0 {
            return Err(DataError::config("batch_size", "must be at least 1"));
        }
        if drop_last && len < batch_size {
            return Err(DataError::config(
                "drop_last",
                format!(
                    "the source holds {len} samples, fewer than batch_size = {batch_size}, so no batch would be produced"
                ),
            ));
        }
        Ok(EpochPlan {
            len,
            batch_size,
            seed,
            shuffle,
            drop_last,
        })
    }

    /// Examples in the source.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: [`EpochPlan::new`] refuses an empty source.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Examples per full batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the source.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            permutation(self.len, &mut rng_for(self.seed, Stream::Shuffle, epoch, 0))
        } else {
            (0..self.len).collect()
        }
    }

    /// The examples of batch `cursor.position`, given its epoch's `order`.
    pub fn members<'a>(&self, cursor: Cursor, order: &'a [usize]) -> &'a [usize] {
        let start = cursor.position * self.batch_size;
        &order[start..(start + self.batch_size).min(order.len())]
    }

    /// The cursor after `cursor`, rolling over to the next epoch.
    pub fn advance(&self, cursor: Cursor) -> Cursor {
        if cursor.position + 1 >= self.batches_per_epoch() {
            Cursor::new(cursor.epoch + 1, 0)
        } else {
            Cursor::new(cursor.epoch, cursor.position + 1)
        }
    }

    /// `cursor`, or the start of the next epoch if it points past the end of its own (a cursor saved after
    /// the last batch of an epoch).
    pub fn normalize(&self, cursor: Cursor) -> Cursor {
        if cursor.position >= self.batches_per_epoch() {
            Cursor::new(cursor.epoch + 1, 0)
        } else {
            cursor
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_and_roll_over() {
        let plan = EpochPlan::new(10, 4, 3, true, false).unwrap();
        assert_eq!(plan.batches_per_epoch(), 3);
        let order = plan.epoch_order(0);
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|p| plan.members(Cursor::new(0, p), &order).to_vec())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(plan.advance(Cursor::new(0, 2)), Cursor::new(1, 0));
        assert_eq!(plan.normalize(Cursor::new(0, 3)), Cursor::new(1, 0));
        let dropping = EpochPlan::new(10, 4, 3, true, true).unwrap();
        assert_eq!(dropping.batches_per_epoch(), 2);
    }
}
