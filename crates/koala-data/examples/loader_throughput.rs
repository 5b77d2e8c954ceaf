//! Measures the image pipeline on the shipped Fashion-MNIST subset: 28 × 28 greyscale → 3 × 96 × 96 ImageNet-
//! normalised tensors, in training mode (random resized crop + flip) and evaluation mode.
//!
//! ```text
//! cargo run --release -p koala-data --example loader_throughput [epochs]
//! ```
//!
//! Prints images/s with one decoding thread and with all cores, then the time a consumer that spends
//! `step_ms` per batch (a stand-in for the training step) waits on the loader in steady state.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use koala_data::{
    Cursor, DataError, IdxSource, IdxSplit, ImageSource, Loader, LoaderConfig, Preprocess,
};

const BATCH: usize = 64;

fn main() -> Result<(), DataError> {
    let epochs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion_mnist_small");
    let source: Arc<dyn ImageSource> = Arc::new(IdxSource::from_dir(dir, IdxSplit::Train)?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Fashion-MNIST train subset: {} images 28x28 grey -> 3x96x96 f32, batch {BATCH}, {epochs} epochs", source.len());

    for (mode, augment) in [
        ("train (RRC + flip)", true),
        ("eval (resize + crop)", false),
    ] {
        for threads in [1, cores] {
            let config = LoaderConfig {
                threads,
                augment,
                shuffle: augment,
                ..LoaderConfig::train(BATCH, 0)
            };
            let loader = Loader::new(source.clone(), Preprocess::imagenet(96), config)?;
            let (rate, _) = drain(&loader, epochs, Duration::ZERO);
            println!("{mode:<22} threads {threads:>2}: {rate:>9.0} images/s");
        }
    }

    // Steady state: the consumer "trains" for step_ms per batch; with prefetch the loader should keep up as long
    // as step_ms exceeds the per-batch decode time.
    let loader = Loader::new(
        source,
        Preprocess::imagenet(96),
        LoaderConfig::train(BATCH, 0),
    )?;
    let (rate, _) = drain(&loader, 1, Duration::ZERO);
    let decode_ms = BATCH as f64 / rate * 1e3;
    let step = Duration::from_secs_f64(decode_ms * 2.0 / 1e3);
    let (_, wait) = drain(&loader, epochs, step);
    println!(
        "consumer step {:.2} ms/batch (2x decode time {decode_ms:.2} ms): waited {:.3} ms/batch on average after the first batch",
        step.as_secs_f64() * 1e3,
        wait.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Iterates `epochs` epochs, sleeping `step` per batch; returns images/s and the mean wait per batch after the
/// first one (which necessarily waits for a cold start).
fn drain(loader: &Loader, epochs: u64, step: Duration) -> (f64, Duration) {
    let start = Instant::now();
    let mut iter = loader.iter(Cursor::new(0, 0), epochs);
    let mut first_wait = Duration::ZERO;
    while let Some(batch) = iter.next() {
        if iter.stats().batches == 1 {
            first_wait = iter.stats().wait_time;
        }
        std::thread::sleep(step);
        iter.recycle(batch);
    }
    let stats = iter.stats();
    let rate = stats.samples as f64 / start.elapsed().as_secs_f64();
    let steady = (stats.wait_time - first_wait) / (stats.batches.max(2) - 1) as u32;
    (rate, steady)
}
