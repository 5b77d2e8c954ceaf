//! [`TextDataset`]: the tokenized examples of one text data file or folder, their counts, and the
//! deterministic held-out split.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::formats;
use super::tokenizer::TextTokenizer;
use crate::error::{DataError, Result};
use crate::seeding::{permutation, rng_for, Stream};

/// The label of a position that is not trained on (PyTorch's `CrossEntropyLoss(ignore_index=-100)`, which
/// Hugging Face data collators use): prompt tokens, non-assistant chat turns, padding.
pub const IGNORE_INDEX: i64 = -100;

/// One training sequence, at most `block_size` tokens, not yet padded.
///
/// `labels[t]` is the token at position `t` (or [`IGNORE_INDEX`]); the causal shift (position `t` predicts
/// `labels[t + 1]`) happens inside the training graph, as in Hugging Face's `*ForCausalLM` models, so
/// `labels[0]` is never predicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextExample {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Targets, [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<i64>,
    /// 1 for every real token (0 only appears on padding, added when batching).
    pub attention_mask: Vec<i64>,
}

impl TextExample {
    /// A plain language-modelling sequence: every token is a target.
    pub fn causal(input_ids: Vec<i64>) -> Self {
        let n = input_ids.len();
        TextExample {
            labels: input_ids.clone(),
            input_ids,
            attention_mask: vec![1; n],
        }
    }

    /// Tokens in the sequence.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the sequence holds no token.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions that contribute to the loss: `labels[1..]` that are not [`IGNORE_INDEX`].
    pub fn predicted_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// How a data file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextFormat {
    /// Decide from the path: a folder or a non-JSON file is plain text; a `.jsonl`/`.json` file is read by
    /// the keys of its first record (`text`, `prompt` + `completion`, `messages`).
    #[default]
    Auto,
    /// A plain-text file (one document) or a folder of `.txt` files (one document each, in sorted path
    /// order), each followed by EOS and packed into blocks.
    Plain,
    /// JSONL `{"text": …}`: one document per line, packed like plain text.
    JsonlText,
    /// JSONL `{"prompt": …, "completion": …}`: one example per line, loss on the completion (and EOS).
    PromptCompletion,
    /// JSONL `{"messages": [{"role", "content"}, …]}`: rendered with the chat template, loss on assistant turns.
    Chat,
}

impl std::fmt::Display for TextFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TextFormat::Auto => "auto",
            TextFormat::Plain => "plain text",
            TextFormat::JsonlText => "JSONL {\"text\"}",
            TextFormat::PromptCompletion => "JSONL {\"prompt\", \"completion\"}",
            TextFormat::Chat => "JSONL {\"messages\"}",
        })
    }
}

impl std::str::FromStr for TextFormat {
    type Err = DataError;

    /// The kebab-case names used in config files and on the command line: `auto`, `plain`, `jsonl-text`,
    /// `prompt-completion`, `chat`.
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "auto" => TextFormat::Auto,
            "plain" => TextFormat::Plain,
            "jsonl-text" => TextFormat::JsonlText,
            "prompt-completion" => TextFormat::PromptCompletion,
            "chat" => TextFormat::Chat,
            other => {
                return Err(DataError::config(
                    "format",
                    format!(
                        "unknown text format `{other}`: use auto, plain, jsonl-text, prompt-completion or chat"
                    ),
                ))
            }
        })
    }
}

/// How to turn a data file into examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextOptions {
    /// Tokens per example: the sequence length the training graph is built for.
    pub block_size: usize,
    /// Which reader to use.
    #[serde(default)]
    pub format: TextFormat,
    /// Rows of the model's token embedding: any id at or above it is an error naming its file and line.
    /// `None` skips the check (do [`TextTokenizer::check_vocab`] instead, which covers every possible id).
    #[serde(default)]
    pub vocab_limit: Option<usize>,
}

impl TextOptions {
    /// Blocks of `block_size` tokens, format detected, no vocabulary limit.
    pub fn new(block_size: usize) -> Self {
        TextOptions {
            block_size,
            format: TextFormat::Auto,
            vocab_limit: None,
        }
    }
}

/// What a data set holds, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TextCounts {
    /// Training sequences (blocks or lines).
    pub examples: usize,
    /// Documents, lines or conversations read from disk.
    pub documents: usize,
    /// Real (non-padding) tokens over all examples.
    pub tokens: usize,
    /// Positions that contribute to the loss (see [`TextExample::predicted_tokens`]).
    pub predicted_tokens: usize,
    /// Examples cut to `block_size` (prompt/completion and chat lines longer than a block; their tail is
    /// dropped). Packed formats never truncate: a long document continues in the next block.
    pub truncated: usize,
}

/// Tokenized examples of one data file or folder, all at most `block_size` tokens.
#[derive(Debug, Clone)]
pub struct TextDataset {
    examples: Vec<TextExample>,
    block_size: usize,
    pad_id: i64,
    format: TextFormat,
    path: PathBuf,
    documents: usize,
    truncated: usize,
}

impl TextDataset {
    /// Reads and tokenizes `path` (a file or a folder of `.txt` files) with `tokenizer`. Errors name the file
    /// and, for content, the 1-based line; an empty result is an error.
    pub fn open(path: &Path, tokenizer: &TextTokenizer, options: &TextOptions) -> Result<Self> {
        check_block_size(options.block_size)?;
        if !path.exists() {
            return Err(DataError::layout(
                path,
                "does not exist: pass a .txt file, a folder of .txt files or a .jsonl file",
            ));
        }
        let read = formats::read(path, tokenizer, options)?;
        if read.examples.is_empty() {
            return Err(DataError::layout(
                path,
                format!("holds no examples ({} format)", read.format),
            ));
        }
        Ok(TextDataset {
            examples: read.examples,
            block_size: options.block_size,
            pad_id: tokenizer.pad_id(),
            format: read.format,
            path: path.to_path_buf(),
            documents: read.documents,
            truncated: read.truncated,
        })
    }

    /// A data set of ready-made examples (tests, synthetic data). Fails on an empty list or an example that
    /// is longer than `block_size` or whose three vectors differ in length.
    pub fn from_examples(
        examples: Vec<TextExample>,
        block_size: usize,
        pad_id: i64,
    ) -> Result<Self> {
        check_block_size(block_size)?;
        if examples.is_empty() {
            return Err(DataError::config("examples", "the list is empty"));
        }
        for (i, e) in examples.iter().enumerate() {
            if e.len() > block_size
                || e.labels.len() != e.len()
                || e.attention_mask.len() != e.len()
            {
                return Err(DataError::config(
                    "examples",
                    format!(
                        "example {i} has {} ids, {} labels and {} mask values; all must be equal and at most \
                         block_size = {block_size}",
                        e.len(),
                        e.labels.len(),
                        e.attention_mask.len()
                    ),
                ));
            }
        }
        let documents = examples.len();
        Ok(TextDataset {
            examples,
            block_size,
            pad_id,
            format: TextFormat::Auto,
            path: PathBuf::new(),
            documents,
            truncated: 0,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there is no example (never for a data set from [`TextDataset::open`]).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// All examples, in file order.
    pub fn examples(&self) -> &[TextExample] {
        &self.examples
    }

    /// Sequence length every batch is padded to.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Id written into padding positions.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The format the data was read as (detected if [`TextFormat::Auto`] was asked for).
    pub fn format(&self) -> TextFormat {
        self.format
    }

    /// The file or folder read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Examples, documents, tokens, predicted tokens, truncations.
    pub fn counts(&self) -> TextCounts {
        TextCounts {
            examples: self.examples.len(),
            documents: self.documents,
            tokens: self.examples.iter().map(TextExample::len).sum(),
            predicted_tokens: self
                .examples
                .iter()
                .map(TextExample::predicted_tokens)
                .sum(),
            truncated: self.truncated,
        }
    }

    /// Splits into `(train, held_out)`: `round(len · val_fraction)` examples (at least one if the fraction is
    /// positive) drawn by a permutation from `seed`, both parts in file order. Examples are blocks for packed
    /// formats, so neighbouring blocks of one long document can land on both sides; pass a separate eval
    /// file for a strict document-level split. Document and truncation counts stay with the training part.
    pub fn split(self, val_fraction: f64, seed: u64) -> Result<(TextDataset, TextDataset)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::config(
                "val_fraction",
                format!("{val_fraction} is not in [0, 1)"),
            ));
        }
        let n = self.examples.len();
        let mut n_val = (n as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 {
            n_val = n_val.max(1);
        }
        if n_val >= n {
            return Err(DataError::config(
                "val_fraction",
                format!(
                    "{} holds {n} examples; holding out {n_val} leaves none to train on: lower val_fraction, \
                     add data or lower block_size",
                    self.path.display()
                ),
            ));
        }
        let order = permutation(n, &mut rng_for(seed, Stream::TextSplit, 0, 0));
        let mut held_out = vec![false; n];
        for &i in &order[..n_val] {
            held_out[i] = true;
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (example, out) in self.examples.into_iter().zip(held_out) {
            if out {
                val.push(example);
            } else {
                train.push(example);
            }
        }
        let part = |examples, documents, truncated| TextDataset {
            examples,
            block_size: self.block_size,
            pad_id: self.pad_id,
            format: self.format,
            path: self.path.clone(),
            documents,
            truncated,
        };
        Ok((part(train, self.documents, self.truncated), part(val, 0, 0)))
    }
}

/// A block must hold at least two tokens: one to read and one to predict.
fn check_block_size(block_size: usize) -> Result<()> {
    if block_size < 2 {
        return Err(DataError::config(
            "block_size",
            format!("{block_size} is too small: a block needs at least 2 tokens (one to read, one to predict)"),
        ));
    }
    Ok(())
}
