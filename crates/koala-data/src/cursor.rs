//! [`Cursor`]: where a stream of batches stands, the whole of the exact-resume state of every loader.

/// A position in the stream of batches: batch `position` (0-based) of epoch `epoch`.
///
/// Batches are fixed slices of each epoch's order (see [`crate::EpochPlan`]), and that order is drawn from
/// `(seed, epoch)` alone, so a cursor fully determines the batches that follow it: resuming from the cursor
/// saved with a checkpoint reproduces an uninterrupted run exactly. Image and text loaders share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cursor {
    /// Epoch number (0-based).
    pub epoch: u64,
    /// Batch index within the epoch (0-based).
    pub position: usize,
}

impl Cursor {
    /// Batch `position` of `epoch`.
    pub fn new(epoch: u64, position: usize) -> Self {
        Cursor { epoch, position }
    }
}
