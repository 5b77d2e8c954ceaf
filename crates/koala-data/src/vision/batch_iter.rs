//! [`BatchIter`]: the consumer end of the loader's background thread.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use super::batch::{Batch, Cursor, LoaderStats, SkippedSample};
use super::loader::{Buffers, Loader};

/// What the background thread sends: a batch, or the skips of a batch that had no usable sample left.
enum Message {
    Batch(Batch, Vec<SkippedSample>),
    OnlySkips(Vec<SkippedSample>),
}

/// Iterator over batches, prepared `prefetch` batches ahead by a background thread that decodes each batch's
/// images in parallel.
///
/// Dropping it stops the thread (after the batch it is working on). If the thread panics (e.g. a custom
/// [`crate::ImageSource`] panics), the panic is re-raised in `next()` rather than ending iteration early.
pub struct BatchIter {
    receiver: Option<Receiver<Message>>,
    recycler: Sender<Buffers>,
    worker: Option<JoinHandle<()>>,
    loader: Loader,
    stats: LoaderStats,
}

impl BatchIter {
    pub(crate) fn spawn(loader: Loader, from: Cursor, until_epoch: u64) -> Self {
        let (sender, receiver) = mpsc::sync_channel(loader.config.prefetch);
        let (recycler, recycled) = mpsc::channel();
        let producer = loader.clone();
        let worker = std::thread::Builder::new()
            .name("koala-data-prefetch".into())
            .spawn(move || produce(&producer, from, until_epoch, &sender, &recycled))
            .expect("the OS refused to start the data prefetch thread");
        BatchIter {
            receiver: Some(receiver),
            recycler,
            worker: Some(worker),
            loader,
            stats: LoaderStats::default(),
        }
    }

    /// Counters so far: time spent waiting, batches, skipped samples.
    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// Hands a consumed batch's vectors back so a later batch reuses them instead of allocating.
    pub fn recycle(&self, batch: Batch) {
        // The producer may already have finished; then the buffers are simply dropped.
        let _ = self.recycler.send(Buffers {
            images: batch.images,
            labels: batch.labels,
            indices: batch.indices,
        });
    }

    fn record_skips(&mut self, skipped: Vec<SkippedSample>) {
        for s in &skipped {
            if let Some(callback) = &self.loader.on_skip {
                callback(s);
            }
        }
        self.stats.skipped += skipped.len();
        self.stats.skipped_samples.extend(skipped);
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

impl Iterator for BatchIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            let started = Instant::now();
            let message = self.receiver.as_ref()?.recv();
            self.stats.wait_time += started.elapsed();
            match message {
                Ok(Message::Batch(batch, skipped)) => {
                    self.record_skips(skipped);
                    self.stats.batches += 1;
                    self.stats.samples += batch.len();
                    return Some(batch);
                }
                Ok(Message::OnlySkips(skipped)) => self.record_skips(skipped),
                Err(mpsc::RecvError) => {
                    self.receiver = None;
                    self.join_worker();
                    return None;
                }
            }
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join(); // a panic here would abort if we are already unwinding
        }
    }
}

/// The background thread: builds every batch from `from` to the end of epoch `until_epoch - 1`, in order.
fn produce(
    loader: &Loader,
    from: Cursor,
    until_epoch: u64,
    sender: &SyncSender<Message>,
    recycled: &Receiver<Buffers>,
) {
    let per_epoch = loader.batches_per_epoch();
    let mut cursor = if from.position >= per_epoch {
        Cursor::new(from.epoch + 1, 0)
    } else {
        from
    };
    while cursor.epoch < until_epoch {
        let epoch = cursor.epoch;
        let order = loader.epoch_order(epoch);
        while cursor.epoch == epoch {
            let buffers = recycled.try_recv().unwrap_or_default();
            let message = match loader.build_batch(cursor, &order, buffers) {
                (Some(batch), skipped) => Message::Batch(batch, skipped),
                (None, skipped) => Message::OnlySkips(skipped),
            };
            if sender.send(message).is_err() {
                return; // the consumer dropped the iterator
            }
            cursor = loader.advance(cursor);
        }
    }
}
