//! The text pipeline: a model's tokenizer, text data files → tokenized examples → fixed-shape batches of
//! `input_ids`, `labels` and `attention_mask` (`[batch, block_size]`, `i64`) for causal-LM training.
//!
//! ```no_run
//! use std::{path::Path, sync::Arc};
//! use koala_data::{Cursor, TextDataset, TextLoader, TextLoaderConfig, TextOptions, TextTokenizer};
//!
//! let tokenizer = TextTokenizer::open(Path::new("models/smollm2/tokenizer.json"))?;
//! tokenizer.check_vocab(49152)?; // rows of the model's token embedding
//! let data = TextDataset::open(Path::new("data/chat.jsonl"), &tokenizer, &TextOptions::new(256))?;
//! let (train, val) = data.split(0.1, 42)?;
//! let train = TextLoader::new(Arc::new(train), TextLoaderConfig::train(8, 42))?;
//! for batch in train.iter(Cursor::new(0, 0), 3) {
//!     // batch.input_ids / labels / attention_mask: [8, 256] i64, labels -100 where no loss is taken
//!     # let _ = batch;
//! }
//! # let _ = val;
//! # Ok::<(), koala_data::DataError>(())
//! ```
//!
//! * [`tokenizer`]: `tokenizer.json` through the `tokenizers` crate; special tokens and chat template from
//!   `tokenizer_config.json`.
//! * formats (private): plain text / `{"text"}` packed into blocks with EOS after each document;
//!   `{"prompt","completion"}` with loss on the completion; chat `{"messages"}` rendered with the model's
//!   template (`minijinja`), loss on assistant turns. Errors name file and line.
//! * [`dataset`]: [`TextDataset`](dataset::TextDataset) (examples, counts, held-out split).
//! * [`batch`]: [`TextLoader`](batch::TextLoader) on the crate's shared epoch plan, prefetch thread and
//!   [`Cursor`](crate::Cursor) resume.

pub mod batch;
pub mod chat;
pub mod dataset;
mod formats;
mod packing;
pub mod tokenizer;

pub use batch::{TextBatch, TextBatchIter, TextLoader, TextLoaderConfig};
pub use dataset::{TextCounts, TextDataset, TextExample, TextFormat, TextOptions, IGNORE_INDEX};
pub use tokenizer::TextTokenizer;
