//! [`Prefetch`]: a background thread that builds the batches of an [`EpochPlan`] ahead of the consumer, for
//! any kind of example (images, token blocks) through the [`Collate`] step.
//!
//! The thread walks the plan from a [`Cursor`] in order and sends each batch through a bounded channel, so at
//! most `depth` batches wait in memory. Consumed batches can hand their vectors back ([`Prefetch::recycle`])
//! so steady-state batching allocates nothing. What a batch holds depends only on its cursor, never on the
//! prefetch depth or thread timing: that is the exact-resume contract the loaders test.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cursor::Cursor;
use crate::epoch_plan::EpochPlan;

/// Turns the examples of one batch into a batch; runs on the prefetch thread.
///
/// `Clone` because the prefetch thread gets its own copy (implementations hold their data behind `Arc`s).
pub trait Collate: Clone + Send + 'static {
    /// What the consumer receives.
    type Batch: Send + 'static;
    /// The reusable vectors of a batch (`Default` = fresh, empty ones).
    type Buffers: Default + Send + 'static;
    /// A report of an example left out of its batch (an image that failed to decode).
    type Skip: Send + 'static;

    /// Which examples each batch holds.
    fn plan(&self) -> &EpochPlan;

    /// Builds batch `cursor` from the source examples `members`, reusing `buffers`. Returns `None` as the batch
    /// when no member could be used, and a report of each member left out.
    fn collate(
        &self,
        cursor: Cursor,
        members: &[usize],
        buffers: Self::Buffers,
    ) -> (Option<Self::Batch>, Vec<Self::Skip>);
}

/// One message of the prefetch thread: a batch (with the skips that happened while building it), or only the
/// skips of a batch that had no usable example left.
pub enum Prefetched<B, S> {
    /// A batch and the examples left out of it.
    Batch(B, Vec<S>),
    /// A batch that came out empty: only its skips.
    OnlySkips(Vec<S>),
}

/// The consumer end of the prefetch thread.
///
/// Dropping it stops the thread (after the batch it is working on). If the thread panics (e.g. a custom source
/// panics), the panic is re-raised in [`Prefetch::next_message`] rather than ending iteration early.
pub struct Prefetch<C: Collate> {
    receiver: Option<Receiver<Prefetched<C::Batch, C::Skip>>>,
    recycler: Sender<C::Buffers>,
    worker: Option<JoinHandle<()>>,
    wait_time: Duration,
}

impl<C: Collate> Prefetch<C> {
    /// Starts the thread: every batch from `from` to the end of epoch `until_epoch - 1`, at most `depth`
    /// batches ahead (0 = each batch is built only when the previous one was taken). A cursor past the end of
    /// its epoch starts at the next epoch.
    pub fn spawn(collate: C, from: Cursor, until_epoch: u64, depth: usize) -> Self {
        let (sender, receiver) = mpsc::sync_channel(depth);
        let (recycler, recycled) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("koala-data-prefetch".into())
            .spawn(move || produce(&collate, from, until_epoch, &sender, &recycled))
            .expect("the OS refused to start the data prefetch thread");
        Prefetch {
            receiver: Some(receiver),
            recycler,
            worker: Some(worker),
            wait_time: Duration::ZERO,
        }
    }

    /// The next message, blocking until the thread has it; `None` once every batch was sent.
    pub fn next_message(&mut self) -> Option<Prefetched<C::Batch, C::Skip>> {
        let started = Instant::now();
        let message = self.receiver.as_ref()?.recv();
        self.wait_time += started.elapsed();
        match message {
            Ok(message) => Some(message),
            Err(mpsc::RecvError) => {
                self.receiver = None;
                self.join_worker();
                None
            }
        }
    }

    /// Hands a consumed batch's vectors back so a later batch reuses them instead of allocating.
    pub fn recycle(&self, buffers: C::Buffers) {
        // The producer may already have finished; then the buffers are simply dropped.
        let _ = self.recycler.send(buffers);
    }

    /// Total time spent blocked in [`Prefetch::next_message`]. Near zero in steady state when the data keeps
    /// up with training; a growing value means the consumer outpaces batch building.
    pub fn wait_time(&self) -> Duration {
        self.wait_time
    }

    /// Joins the finished producer, re-raising its panic if it had one.
    fn join_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl<C: Collate> Drop for Prefetch<C> {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join(); // a panic here would abort if we are already unwinding
        }
    }
}

/// The background thread: builds every batch from `from` to the end of epoch `until_epoch - 1`, in order.
fn produce<C: Collate>(
    collate: &C,
    from: Cursor,
    until_epoch: u64,
    sender: &SyncSender<Prefetched<C::Batch, C::Skip>>,
    recycled: &Receiver<C::Buffers>,
) {
    let plan = collate.plan();
    let mut cursor = plan.normalize(from);
    while cursor.epoch < until_epoch {
        let epoch = cursor.epoch;
        let order = plan.epoch_order(epoch);
        while cursor.epoch == epoch {
            let buffers = recycled.try_recv().unwrap_or_default();
            let members = plan.members(cursor, &order);
            let message = match collate.collate(cursor, members, buffers) {
                (Some(batch), skipped) => Prefetched::Batch(batch, skipped),
                (None, skipped) => Prefetched::OnlySkips(skipped),
            };
            if sender.send(message).is_err() {
                return; // the consumer dropped the iterator
            }
            cursor = plan.advance(cursor);
        }
    }
}
