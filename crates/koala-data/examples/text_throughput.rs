//! Measures the text pipeline on a data set of your choice: reading + tokenizing + packing, then batching.
//!
//! ```text
//! cargo run --release -p koala-data --example text_throughput -- TOKENIZER_JSON DATA [BLOCK_SIZE] [BATCH]
//! ```
//!
//! Prints the time to open the data set (tokens/s), its counts, and batches/s of one training epoch
//! (shuffled, prefetched, vectors recycled) against the time it takes to only walk the examples.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use koala_data::{
    DataError, TextDataset, TextLoader, TextLoaderConfig, TextOptions, TextTokenizer,
};

fn main() -> Result<(), DataError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: text_throughput TOKENIZER_JSON DATA [BLOCK_SIZE=256] [BATCH=8]");
        std::process::exit(2);
    }
    let block: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let batch: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let tokenizer = TextTokenizer::open(&PathBuf::from(&args[0]))?;

    let started = Instant::now();
    let data = TextDataset::open(
        &PathBuf::from(&args[1]),
        &tokenizer,
        &TextOptions::new(block),
    )?;
    let open_s = started.elapsed().as_secs_f64();
    let c = data.counts();
    println!(
        "{}: {} format, {} documents, {} examples of <= {block} tokens, {} tokens, {} predicted, {} truncated",
        args[1],
        data.format(),
        c.documents,
        c.examples,
        c.tokens,
        c.predicted_tokens,
        c.truncated
    );
    println!(
        "open (read + tokenize + pack): {:.3} s = {:.0} tokens/s",
        open_s,
        c.tokens as f64 / open_s
    );

    let loader = TextLoader::new(Arc::new(data), TextLoaderConfig::train(batch, 1))?;
    let started = Instant::now();
    let mut iter = loader.epoch(0);
    let mut n = 0;
    while let Some(b) = iter.next() {
        n += 1;
        iter.recycle(b);
    }
    let epoch_s = started.elapsed().as_secs_f64();
    println!(
        "one epoch: {n} batches of [{batch}, {block}] in {:.4} s = {:.0} batches/s (waited {:.4} s)",
        epoch_s,
        n as f64 / epoch_s,
        iter.wait_time().as_secs_f64()
    );
    Ok(())
}
