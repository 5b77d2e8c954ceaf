//! Readers for the text data formats: plain text (a file or a folder of `.txt` files) and JSONL with
//! `{"text"}`, `{"prompt", "completion"}` or `{"messages"}` records. Each turns a path into
//! [`TextExample`]s of at most `block_size` tokens; every problem names the file and its 1-based line.
//!
//! **Long examples.** Prompt/completion and chat records longer than `block_size` are truncated at the right
//! and counted ([`super::TextCounts::truncated`]), as `transformers`/TRL truncate to `max_length`; a record
//! left with no trained token after the cut is an error naming its line, since it would only cost time.
//! Packed formats never truncate.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::chat::{ChatMessage, ChatTemplate};
use super::dataset::{TextExample, TextFormat, TextOptions, IGNORE_INDEX};
use super::packing::Packer;
use super::tokenizer::{Encoded, TextTokenizer};
use crate::error::{DataError, Result};

/// What a reader produced.
pub(crate) struct Read {
    pub examples: Vec<TextExample>,
    pub format: TextFormat,
    pub documents: usize,
    pub truncated: usize,
}

/// Reads `path` in `options.format` (detected for [`TextFormat::Auto`]).
pub(crate) fn read(path: &Path, tokenizer: &TextTokenizer, options: &TextOptions) -> Result<Read> {
    let format = match options.format {
        TextFormat::Auto => detect(path)?,
        f => f,
    };
    let reader = Reader { tokenizer, options };
    match format {
        TextFormat::Plain => reader.plain(path),
        _ => reader.jsonl(path, format),
    }
}

/// Plain text for folders and non-JSON files; for `.jsonl`/`.json`, the kind of the first record.
fn detect(path: &Path) -> Result<TextFormat> {
    let is_json = path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    if !is_json {
        return Ok(TextFormat::Plain);
    }
    let text = read_utf8(path)?;
    let Some((line, record)) = records(&text).next() else {
        return Err(DataError::layout(
            path,
            "holds no examples (the file is empty)",
        ));
    };
    let record = parse_record(path, line, record)?;
    if record.contains_key("messages") {
        Ok(TextFormat::Chat)
    } else if record.contains_key("prompt") || record.contains_key("completion") {
        Ok(TextFormat::PromptCompletion)
    } else if record.contains_key("text") {
        Ok(TextFormat::JsonlText)
    } else {
        let keys: Vec<&String> = record.keys().collect();
        Err(DataError::line(
            path,
            line,
            format!(
                "cannot tell the format from the keys {keys:?}: write {{\"text\": …}}, {{\"prompt\": …, \
                 \"completion\": …}} or {{\"messages\": [{{\"role\": …, \"content\": …}}, …]}} on every line"
            ),
        ))
    }
}

struct Reader<'a> {
    tokenizer: &'a TextTokenizer,
    options: &'a TextOptions,
}

impl Reader<'_> {
    /// A plain-text file or every `.txt` file under a folder: one document each, packed.
    fn plain(&self, path: &Path) -> Result<Read> {
        let files = if path.is_dir() {
            let files = txt_files(path)?;
            if files.is_empty() {
                return Err(DataError::layout(
                    path,
                    "holds no .txt files: put one document per .txt file in the folder (sub-folders are read \
                     too), or pass a .jsonl file",
                ));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut packer = Packer::new(self.options.block_size);
        for file in &files {
            let text = read_utf8(file)?;
            if text.trim().is_empty() {
                return Err(DataError::line(
                    file,
                    1,
                    "empty text: the document holds no characters besides white space; delete the file or \
                     fill it",
                ));
            }
            let ids = self.encode(&text, file, None)?;
            packer.push(&self.document(ids));
        }
        Ok(Read {
            examples: packer.finish(),
            format: TextFormat::Plain,
            documents: files.len(),
            truncated: 0,
        })
    }

    /// A JSONL file of `format` records.
    fn jsonl(&self, path: &Path, format: TextFormat) -> Result<Read> {
        let text = read_utf8(path)?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            && text.trim_start().starts_with('[')
        {
            return Err(DataError::line(
                path,
                1,
                "is a JSON array; koala reads JSON Lines: one JSON object per line (e.g. `jq -c '.[]' in.json > \
                 out.jsonl`)",
            ));
        }
        let template = match format {
            TextFormat::Chat => Some(self.chat_template(path)?),
            _ => None,
        };
        let mut packer = Packer::new(self.options.block_size);
        let (mut examples, mut documents, mut truncated) = (Vec::new(), 0, 0);
        for (line, record) in records(&text) {
            let record = parse_record(path, line, record)?;
            documents += 1;
            let at = Line { path, line };
            match format {
                TextFormat::JsonlText => {
                    let text = at.non_empty_string(&record, "text", format)?;
                    let ids = self.encode(text, path, Some(line))?;
                    packer.push(&self.document(ids));
                }
                TextFormat::PromptCompletion => {
                    let example = self.prompt_completion(&at, &record)?;
                    truncated += usize::from(self.truncate(&at, example, &mut examples)?);
                }
                _ => {
                    let template = template.as_ref().expect("compiled above for chat");
                    let example = self.chat(&at, &record, template)?;
                    truncated += usize::from(self.truncate(&at, example, &mut examples)?);
                }
            }
        }
        if format == TextFormat::JsonlText {
            examples = packer.finish();
        }
        Ok(Read {
            examples,
            format,
            documents,
            truncated,
        })
    }

    /// `[BOS] prompt completion EOS`, labels on the completion and EOS. Prompt and completion are tokenized
    /// apart so the boundary between them is exact (write the completion's leading space if it has one).
    fn prompt_completion(&self, at: &Line, record: &Map<String, Value>) -> Result<TextExample> {
        let format = TextFormat::PromptCompletion;
        let prompt = at.string(record, "prompt", format)?;
        let completion = at.non_empty_string(record, "completion", format)?;
        let mut input_ids: Vec<i64> = self
            .tokenizer
            .bos_id()
            .filter(|_| self.tokenizer.add_bos_token())
            .into_iter()
            .collect();
        input_ids.extend(self.encode(prompt, at.path, Some(at.line))?);
        let mut labels = vec![IGNORE_INDEX; input_ids.len()];
        let mut answer = self.encode(completion, at.path, Some(at.line))?;
        answer.push(self.tokenizer.eos_id());
        input_ids.extend_from_slice(&answer);
        labels.extend_from_slice(&answer);
        let n = input_ids.len();
        Ok(TextExample {
            input_ids,
            labels,
            attention_mask: vec![1; n],
        })
    }

    /// The conversation rendered with the chat template, labels on the assistant answers (see `chat.rs`).
    fn chat(
        &self,
        at: &Line,
        record: &Map<String, Value>,
        template: &ChatTemplate,
    ) -> Result<TextExample> {
        let messages = at.messages(record)?;
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(at.error(
                "the conversation has no assistant message, so nothing in it would be trained on; add the \
                 answer as {\"role\": \"assistant\", \"content\": …} or drop the line",
            ));
        }
        let (text, spans) = template
            .render_with_assistant_spans(&messages)
            .map_err(|e| at.error(e))?;
        let Encoded {
            ids: input_ids,
            offsets,
        } = self.encode_with_offsets(&text, at.path, Some(at.line))?;
        let labels = input_ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(start, _))| {
                if spans.iter().any(|s| s.contains(&start)) {
                    id
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let n = input_ids.len();
        Ok(TextExample {
            input_ids,
            labels,
            attention_mask: vec![1; n],
        })
    }

    /// Cuts `example` to `block_size` and keeps it; `true` if it was cut. A cut that leaves nothing to train
    /// on is an error.
    fn truncate(
        &self,
        at: &Line,
        mut example: TextExample,
        kept: &mut Vec<TextExample>,
    ) -> Result<bool> {
        let (n, block) = (example.len(), self.options.block_size);
        let cut = n > block;
        if cut {
            example.input_ids.truncate(block);
            example.labels.truncate(block);
            example.attention_mask.truncate(block);
        }
        if example.predicted_tokens() == 0 {
            return Err(at.error(format!(
                "no token of the answer is left to train on: the example has {n} tokens and the answer starts \
                 after the first {block} (block_size); raise the block size or shorten the prompt"
            )));
        }
        kept.push(example);
        Ok(cut)
    }

    /// `[BOS] ids EOS`: one document as it enters the packed stream.
    fn document(&self, ids: Vec<i64>) -> Vec<i64> {
        let mut doc = Vec::with_capacity(ids.len() + 2);
        if self.tokenizer.add_bos_token() {
            doc.extend(self.tokenizer.bos_id());
        }
        doc.extend(ids);
        doc.push(self.tokenizer.eos_id());
        doc
    }

    fn encode(&self, text: &str, path: &Path, line: Option<usize>) -> Result<Vec<i64>> {
        Ok(self.encode_with_offsets(text, path, line)?.ids)
    }

    /// Token ids and byte offsets of `text`, checked against the model's vocabulary. A bad id names `line`
    /// (a JSONL record) or, for plain text, the line of the file where its token starts.
    fn encode_with_offsets(&self, text: &str, path: &Path, line: Option<usize>) -> Result<Encoded> {
        let encoded = self.tokenizer.encode_with_offsets(text, false)?;
        let (ids, offsets) = (&encoded.ids, &encoded.offsets);
        if let Some(limit) = self.options.vocab_limit {
            if let Some(k) = ids.iter().position(|&id| id < 0 || id as usize >= limit) {
                let start = offsets[k].0.min(text.len());
                let line = line.unwrap_or_else(|| {
                    1 + text.as_bytes()[..start]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                });
                return Err(DataError::line(
                    path,
                    line,
                    format!(
                        "token id {} ({:?}) is outside the model's vocabulary of {limit} embedding rows; the \
                         tokenizer {} does not belong to this model: use the model's own tokenizer.json",
                        ids[k],
                        text.get(offsets[k].0..offsets[k].1).unwrap_or(""),
                        self.tokenizer.path().display()
                    ),
                ));
            }
        }
        Ok(encoded)
    }

    fn chat_template(&self, data: &Path) -> Result<ChatTemplate> {
        let config = self.tokenizer.config_path().map_or_else(
            || {
                self.tokenizer
                    .path()
                    .with_file_name("tokenizer_config.json")
            },
            Path::to_path_buf,
        );
        let Some(source) = self.tokenizer.chat_template() else {
            return Err(DataError::layout(
                data,
                format!(
                    "chat data needs the model's chat template, but {} has no `chat_template`; use the \
                     tokenizer files of a chat (instruct) model, or write the data as prompt/completion lines",
                    config.display()
                ),
            ));
        };
        ChatTemplate::new(
            source,
            self.tokenizer.bos_token(),
            self.tokenizer.eos_token(),
        )
        .map_err(|e| {
            DataError::tokenizer(
                &config,
                format!("the chat template does not compile: {e:#}"),
            )
        })
    }
}

/// A place in a JSONL file, for messages about one record's fields.
struct Line<'a> {
    path: &'a Path,
    line: usize,
}

impl Line<'_> {
    fn error(&self, message: impl Into<String>) -> DataError {
        DataError::line(self.path, self.line, message)
    }

    /// Field `key` of a record, which must be a string.
    fn string<'r>(
        &self,
        record: &'r Map<String, Value>,
        key: &str,
        format: TextFormat,
    ) -> Result<&'r str> {
        match record.get(key) {
            Some(Value::String(s)) => Ok(s),
            None => Err(self.error(format!(
                "missing field `{key}` (the file is read as {format}, from its first line or the --text-format \
                 given)"
            ))),
            Some(other) => Err(self.error(format!(
                "field `{key}` should be a string, found {}",
                kind(other)
            ))),
        }
    }

    /// Like [`Line::string`], and not only white space.
    fn non_empty_string<'r>(
        &self,
        record: &'r Map<String, Value>,
        key: &str,
        format: TextFormat,
    ) -> Result<&'r str> {
        let s = self.string(record, key, format)?;
        if s.trim().is_empty() {
            return Err(self.error(format!(
                "empty text: field `{key}` holds no characters besides white space; fill it or drop the line"
            )));
        }
        Ok(s)
    }

    /// The `messages` list of a chat record.
    fn messages(&self, record: &Map<String, Value>) -> Result<Vec<ChatMessage>> {
        let list = match record.get("messages") {
            Some(Value::Array(list)) => list,
            None => {
                return Err(self.error(format!(
                    "missing field `messages` (the file is read as {}, from its first line or the --text-format given)",
                    TextFormat::Chat
                )))
            }
            Some(other) => {
                return Err(self.error(format!(
                    "field `messages` should be a list of {{\"role\", \"content\"}} objects, found {}",
                    kind(other)
                )))
            }
        };
        if list.is_empty() {
            return Err(self.error("empty text: `messages` is an empty list"));
        }
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let Value::Object(m) = m else {
                    return Err(self.error(format!(
                        "`messages[{i}]` should be an object {{\"role\", \"content\"}}, found {}",
                        kind(m)
                    )));
                };
                let field = |key: &str| match m.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    None => Err(self.error(format!("missing field `messages[{i}].{key}`"))),
                    Some(other) => Err(self.error(format!(
                        "field `messages[{i}].{key}` should be a string, found {}",
                        kind(other)
                    ))),
                };
                Ok(ChatMessage {
                    role: field("role")?,
                    content: field("content")?,
                })
            })
            .collect()
    }
}

/// The non-blank lines of a JSONL text with their 1-based numbers.
fn records(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// One JSONL record, which must be an object.
fn parse_record(path: &Path, line: usize, record: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(record) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(DataError::line(
            path,
            line,
            format!("each line should be a JSON object, found {}", kind(&other)),
        )),
        Err(e) => Err(DataError::line(
            path,
            line,
            format!("invalid JSON: {e}; each line must be one complete JSON object"),
        )),
    }
}

/// The JSON type of `v`, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The file as UTF-8; invalid bytes name their line.
fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        DataError::line(
            path,
            line,
            "not UTF-8 text: convert the file to UTF-8 (e.g. with iconv)",
        )
    })
}

/// Every `.txt` file under `dir` (sub-folders included, hidden entries skipped), in sorted path order.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| DataError::io(&folder, e))? {
            let path = entry.map_err(|e| DataError::io(&folder, e))?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
