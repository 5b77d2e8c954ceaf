//! [`TextTokenizer`]: a model's `tokenizer.json` (through the `tokenizers` crate) plus the special tokens and
//! chat template of the `tokenizer_config.json` beside it.
//!
//! Hugging Face model folders split the tokenizer in two files: `tokenizer.json` holds the pipeline
//! (normalizer, pre-tokenizer, model, decoder, added tokens) and `tokenizer_config.json` names the roles of
//! the special tokens (`eos_token`, `bos_token`, `pad_token`), whether a BOS is prepended (`add_bos_token`)
//! and the Jinja `chat_template` (newer exports put it in `chat_template.jinja` instead; both are read).
//! A token in `tokenizer_config.json` is a string or an `AddedToken` object `{"content": …}`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Result};

/// End-of-text tokens tried, in order, when `tokenizer_config.json` names no `eos_token` (GPT-2/SmolLM,
/// Llama/Mistral, Llama 3, Gemma, ChatML).
const EOS_FALLBACKS: &[&str] = &[
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|im_end|>",
];

/// Token ids of a text and the byte range of the text each came from (`offsets[k]` belongs to `ids[k]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<i64>,
    /// `start..end` byte offsets into the encoded text.
    pub offsets: Vec<(usize, usize)>,
}

/// A loaded tokenizer and the roles of its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    config_path: Option<PathBuf>,
    vocab_size: usize,
    eos: (String, i64),
    bos: Option<(String, i64)>,
    pad_id: i64,
    add_bos_token: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .field("bos", &self.bos)
            .field("pad_id", &self.pad_id)
            .field("add_bos_token", &self.add_bos_token)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `path`: a `tokenizer.json`, or a model folder holding one. `tokenizer_config.json` (and
    /// `chat_template.jinja`) beside it are read if present. Errors name the file that failed.
    pub fn open(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(DataError::tokenizer(
                &file,
                "no such file: pass the model's tokenizer.json (or the folder that holds it, as downloaded \
                 with the model)",
            ));
        }
        let inner = Tokenizer::from_file(&file).map_err(|e| {
            DataError::tokenizer(
                &file,
                format!(
                    "cannot load it with the `tokenizers` library: {e}; pass the tokenizer.json that came with \
                     the model"
                ),
            )
        })?;
        let folder = file.parent().unwrap_or(Path::new("."));
        let config_path = folder.join("tokenizer_config.json");
        let config = read_config(&config_path)?;
        let config_path = config.as_ref().map(|_| config_path);
        let config = config.unwrap_or(Value::Null);
        let template_file = folder.join("chat_template.jinja");
        let chat_template = match chat_template_of(&config) {
            Some(t) => Some(t),
            None if template_file.is_file() => Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| DataError::io(&template_file, e))?,
            ),
            None => None,
        };
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut tokenizer = TextTokenizer {
            inner,
            path: file,
            config_path,
            vocab_size,
            eos: (String::new(), 0),
            bos: None,
            pad_id: 0,
            add_bos_token: config
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_template,
        };
        tokenizer.eos = tokenizer.resolve_eos(&config)?;
        tokenizer.bos = tokenizer.resolve_role(&config, "bos_token")?;
        tokenizer.pad_id = match tokenizer.resolve_role(&config, "pad_token")? {
            Some((_, id)) => id,
            None => tokenizer.eos.1,
        };
        if tokenizer.add_bos_token && tokenizer.bos.is_none() {
            return Err(tokenizer.config_error(
                "`add_bos_token` is true but no `bos_token` is named; add one or set add_bos_token to false",
            ));
        }
        Ok(tokenizer)
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `tokenizer_config.json` read beside it, if there was one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// One more than the largest token id the tokenizer can produce (added tokens included): the number of
    /// embedding rows the model needs at least.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The end-of-sequence id: `eos_token` of `tokenizer_config.json`, else the first known end token.
    pub fn eos_id(&self) -> i64 {
        self.eos.1
    }

    /// The end-of-sequence token's text (`<|im_end|>`, `</s>`, …), as chat templates see it.
    pub fn eos_token(&self) -> &str {
        &self.eos.0
    }

    /// The beginning-of-sequence id, if `tokenizer_config.json` names a `bos_token`.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos.as_ref().map(|b| b.1)
    }

    /// The beginning-of-sequence token's text, as chat templates see it ("" without one).
    pub fn bos_token(&self) -> &str {
        self.bos.as_ref().map_or("", |b| b.0.as_str())
    }

    /// The id written into padding positions: `pad_token`, else EOS. Padding is never attended to or
    /// trained on (mask 0, label −100), so any valid id works.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Whether each document or example starts with BOS (`add_bos_token`, Llama-style tokenizers).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// The Jinja chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Token ids of `text`. `add_special` runs the tokenizer's post-processor (which may add BOS/EOS the way
    /// the model was trained to see them); the data formats pass `false` and place BOS/EOS themselves.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<i64>> {
        Ok(self.encode_with_offsets(text, add_special)?.ids)
    }

    /// Token ids of `text` and, for each, the byte range of `text` it came from.
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| DataError::tokenizer(&self.path, format!("cannot encode text: {e}")))?;
        Ok(Encoded {
            ids: encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// The text of `ids`, special tokens included (so masks and packing can be checked by eye).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < self.vocab_size)
                    .ok_or_else(|| {
                        DataError::tokenizer(
                            &self.path,
                            format!(
                                "cannot decode id {id}: ids run from 0 to {}",
                                self.vocab_size - 1
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        self.inner
            .decode(&ids, false)
            .map_err(|e| DataError::tokenizer(&self.path, format!("cannot decode: {e}")))
    }

    /// Fails if the tokenizer can produce an id the model has no embedding row for (`embedding_rows` = the
    /// first dimension of the model's token embedding). Fewer tokens than rows is normal: models often pad
    /// their embedding to a multiple of 64 or 128.
    pub fn check_vocab(&self, embedding_rows: usize) -> Result<()> {
        if self.vocab_size > embedding_rows {
            return Err(DataError::tokenizer(
                &self.path,
                format!(
                    "produces token ids up to {} ({} tokens) but the model's embedding has only {embedding_rows} \
                     rows, so these are not the model's tokenizer; use the tokenizer.json that came with the \
                     model",
                    self.vocab_size - 1,
                    self.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// The id of token `text`, if it is one token of the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<i64> {
        self.inner.token_to_id(text).map(i64::from)
    }

    fn resolve_eos(&self, config: &Value) -> Result<(String, i64)> {
        if let Some(eos) = self.resolve_role(config, "eos_token")? {
            return Ok(eos);
        }
        EOS_FALLBACKS
            .iter()
            .find_map(|t| self.token_id(t).map(|id| (t.to_string(), id)))
            .ok_or_else(|| {
                DataError::tokenizer(
                    &self.path,
                    format!(
                        "no end-of-sequence token: tokenizer_config.json beside it names no `eos_token` and none \
                         of {EOS_FALLBACKS:?} is in the vocabulary; add `\"eos_token\": \"…\"` to \
                         tokenizer_config.json"
                    ),
                )
            })
    }

    /// The token named by `role` (`eos_token`, …) in `tokenizer_config.json`, with its id.
    fn resolve_role(&self, config: &Value, role: &str) -> Result<Option<(String, i64)>> {
        let text = match config.get(role) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => match o.get("content").and_then(Value::as_str) {
                Some(s) => s.to_string(),
                None => {
                    return Err(self.config_error(&format!(
                        "`{role}` is an object without a string `content`"
                    )))
                }
            },
            Some(other) => {
                return Err(self.config_error(&format!(
                    "`{role}` should be a string or {{\"content\": …}}, found {other}"
                )))
            }
        };
        match self.token_id(&text) {
            Some(id) => Ok(Some((text, id))),
            None => Err(self.config_error(&format!(
                "`{role}` is {text:?}, which is not a token of {}; the two files come from different models",
                self.path.display()
            ))),
        }
    }

    fn config_error(&self, message: &str) -> DataError {
        let path = self
            .config_path
            .clone()
            .unwrap_or_else(|| self.path.with_file_name("tokenizer_config.json"));
        DataError::tokenizer(&path, message.to_string())
    }
}

/// `tokenizer_config.json` as JSON, or `None` if the file does not exist.
fn read_config(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        DataError::tokenizer(path, format!("invalid JSON at line {}: {e}", e.line()))
    })?;
    if !value.is_object() {
        return Err(DataError::tokenizer(path, "should hold a JSON object"));
    }
    Ok(Some(value))
}

/// The chat template of a config: a string, or a list of `{name, template}` of which `default` is used.
fn chat_template_of(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}
