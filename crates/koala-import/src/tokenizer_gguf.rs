//! `tokenizer.json` + `tokenizer_config.json` from a GGUF file's
//! `tokenizer.ggml.*` metadata, in the form koala-data's `TextTokenizer`
//! (and transformers) read.
//!
//! A GGUF "gpt2" tokenizer is a byte-level BPE: `tokens` (GPT-2
//! byte-to-unicode spelling, `Ġ` = space), `merges` ("a b" strings),
//! `token_type` (3 = CONTROL → special added token, 4 = USER_DEFINED →
//! normal added token) and a `pre` name that selects llama.cpp's
//! pre-tokenizer regexes (`src/llama-vocab.cpp`). The JSON is written by hand
//! and then loaded by the `tokenizers` crate, so a file koala writes is
//! always one it can read.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// llama.cpp's token types (`convert_hf_to_gguf.py` `SentencePieceTokenTypes`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Qwen2's pre-tokenizer split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`; the
/// same string transformers' `tokenizer.json` for Qwen2 holds).
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split (digits in groups of up to three).
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `pre` values koala knows, for the error message.
const KNOWN_PRE: &str = "smollm (and the other llama.cpp names for its regex: starcoder, refact, codeshell), gpt2, default, qwen2, llama-bpe, llama3, smaug-bpe";

/// The `tokenizer.ggml.*` metadata, read out of the file by `gguf.rs`.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizerMeta {
    /// `tokenizer.ggml.model` ("gpt2" = byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre` (pre-tokenizer name), if present.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty when absent).
    pub token_types: Vec<i64>,
    /// `tokenizer.ggml.merges`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// The two JSON files written next to `model.onnx`.
#[derive(Clone, Debug)]
pub struct TokenizerFiles {
    /// `tokenizer.json` contents.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` contents.
    pub tokenizer_config_json: String,
    /// `chat_template.jinja` contents, when the source folder had one.
    pub chat_template_jinja: Option<String>,
}

/// Builds both files; `file` names the GGUF for errors and `vocab_rows` is
/// the token embedding's row count, which the vocabulary must match.
pub fn build(meta: &GgufTokenizerMeta, vocab_rows: usize, file: &str) -> Result<TokenizerFiles> {
    check(meta, vocab_rows, file)?;
    let pre = pre_pipeline(meta.pre.as_deref().unwrap_or("default"), file)?;
    let vocab: Map<String, Value> = meta
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = meta
        .merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').expect("checked");
            json!([a, b])
        })
        .collect();
    let added: Vec<Value> = added_tokens(meta);
    let mut tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": pre.normalizer,
        "pre_tokenizer": pre.pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    if let Some(unk) = meta.unk_id.and_then(|i| meta.tokens.get(i as usize)) {
        // Only a marker for tools; byte-level BPE never produces unknowns.
        tok["model"]["unk_token"] = json!(unk);
    }
    let tokenizer_json = serde_json::to_string(&tok)?;
    tokenizers::Tokenizer::from_bytes(tokenizer_json.as_bytes()).map_err(|e| {
        anyhow!("{file}: the tokenizer built from its tokenizer.ggml.* metadata does not load ({e}); the metadata is inconsistent")
    })?;
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json: serde_json::to_string_pretty(&tokenizer_config(meta))?,
        chat_template_jinja: None,
    })
}

/// The vocabulary must have one entry per embedding row, and every merge
/// must join two vocabulary entries into a third; otherwise the tokenizer
/// would emit ids the model has no row for, or fail at first use.
fn check(meta: &GgufTokenizerMeta, vocab_rows: usize, file: &str) -> Result<()> {
    if meta.model != "gpt2" {
        bail!(
            "{file}: tokenizer.ggml.model is '{}', but koala builds only byte-level BPE tokenizers ('gpt2': Llama 3, SmolLM2, Qwen2); for a SentencePiece ('llama') model import its Hugging Face folder with tokenizer.json instead",
            meta.model
        );
    }
    if meta.tokens.len() != vocab_rows {
        bail!(
            "{file}: tokenizer.ggml.tokens has {} entries but token_embd.weight has {vocab_rows} rows; the tokenizer does not belong to this model",
            meta.tokens.len()
        );
    }
    if !meta.token_types.is_empty() && meta.token_types.len() != meta.tokens.len() {
        bail!(
            "{file}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}; the file is corrupt",
            meta.token_types.len(),
            meta.tokens.len()
        );
    }
    let index: HashMap<&str, usize> = meta
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    if index.len() != meta.tokens.len() {
        bail!("{file}: tokenizer.ggml.tokens holds the same token string twice; the vocabulary is corrupt");
    }
    for (i, m) in meta.merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            bail!("{file}: tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by one space");
        };
        for part in [a, b] {
            if !index.contains_key(part) {
                bail!("{file}: tokenizer.ggml.merges[{i}] = {m:?} joins {part:?}, which is not in tokenizer.ggml.tokens; the tokenizer does not match its vocabulary");
            }
        }
        if !index.contains_key(format!("{a}{b}").as_str()) {
            bail!("{file}: tokenizer.ggml.merges[{i}] = {m:?} makes {:?}, which is not in tokenizer.ggml.tokens; the tokenizer does not match its vocabulary", format!("{a}{b}"));
        }
    }
    for (field, id) in [
        ("bos_token_id", meta.bos_id),
        ("eos_token_id", meta.eos_id),
        ("unknown_token_id", meta.unk_id),
        ("padding_token_id", meta.pad_id),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= meta.tokens.len()) {
            bail!(
                "{file}: tokenizer.ggml.{field} is {id}, past the {} tokens of the vocabulary",
                meta.tokens.len()
            );
        }
    }
    Ok(())
}

/// CONTROL tokens become special added tokens (never split, skipped when
/// decoding with `skip_special_tokens`); USER_DEFINED ones normal added
/// tokens, as transformers' GGUF loader does.
fn added_tokens(meta: &GgufTokenizerMeta) -> Vec<Value> {
    meta.token_types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(i, &t)| {
            let special = t == TOKEN_TYPE_CONTROL;
            json!({"id": i, "content": meta.tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": !special, "special": special})
        })
        .collect()
}

struct PrePipeline {
    normalizer: Value,
    pre_tokenizer: Value,
}

/// llama.cpp's pre-tokenizer for `pre`, in `tokenizers` JSON.
fn pre_pipeline(pre: &str, file: &str) -> Result<PrePipeline> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let seq = |items: Vec<Value>| json!({"type": "Sequence", "pretokenizers": items});
    Ok(match pre {
        // llama.cpp: "\p{N}" (each digit alone), then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => PrePipeline {
            normalizer: Value::Null,
            pre_tokenizer: seq(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]),
        },
        "gpt2" | "default" => PrePipeline {
            normalizer: Value::Null,
            pre_tokenizer: byte_level(true),
        },
        "qwen2" => PrePipeline {
            normalizer: json!({"type": "NFC"}),
            pre_tokenizer: seq(vec![split(REGEX_QWEN2), byte_level(false)]),
        },
        "llama-bpe" | "llama3" | "smaug-bpe" => PrePipeline {
            normalizer: Value::Null,
            pre_tokenizer: seq(vec![split(REGEX_LLAMA3), byte_level(false)]),
        },
        other => bail!(
            "{file}: tokenizer.ggml.pre is '{other}', a pre-tokenizer koala does not know (known: {KNOWN_PRE}); import the model's Hugging Face folder with its tokenizer.json instead"
        ),
    })
}

/// `tokenizer_config.json`: special-token roles and the chat template, the
/// keys koala-data's `TextTokenizer` reads.
fn tokenizer_config(meta: &GgufTokenizerMeta) -> Value {
    let name = |id: Option<u32>| id.and_then(|i| meta.tokens.get(i as usize)).cloned();
    let mut c = json!({
        "add_bos_token": meta.add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "GPT2Tokenizer",
    });
    for (key, id) in [
        ("bos_token", meta.bos_id),
        ("eos_token", meta.eos_id),
        ("unk_token", meta.unk_id),
        ("pad_token", meta.pad_id),
    ] {
        if let Some(t) = name(id) {
            c[key] = json!(t);
        }
    }
    if let Some(t) = &meta.chat_template {
        c["chat_template"] = json!(t);
    }
    c
}

/// Reads the vocabulary size of a `tokenizer.json` (largest id + 1), for the
/// HF-folder check against the embedding.
pub fn vocab_size_of(tokenizer_json: &[u8], file: &str) -> Result<usize> {
    let t = tokenizers::Tokenizer::from_bytes(tokenizer_json)
        .map_err(|e| anyhow!("{file}: cannot load it with the `tokenizers` library: {e}"))
        .context("pass the tokenizer.json that came with the model")?;
    Ok(t.get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| m as usize + 1))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 10-token byte-level BPE: bytes a, b, c, space (Ġ), two merges, and
    /// one control token.
    pub(crate) fn tiny_meta() -> GgufTokenizerMeta {
        let tokens = [
            "<|endoftext|>",
            "a",
            "b",
            "c",
            "Ġ",
            "ab",
            "Ġab",
            "1",
            "2",
            "d",
        ];
        GgufTokenizerMeta {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            token_types: vec![3, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            merges: vec!["a b".into(), "Ġ ab".into()],
            bos_id: Some(0),
            eos_id: Some(0),
            unk_id: None,
            pad_id: Some(0),
            add_bos: false,
            chat_template: Some("{{ messages }}".into()),
        }
    }

    fn encode(files: &TokenizerFiles, text: &str) -> Vec<u32> {
        let t = tokenizers::Tokenizer::from_bytes(files.tokenizer_json.as_bytes()).unwrap();
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn merges_apply_and_digits_split_one_by_one() {
        let files = build(&tiny_meta(), 10, "t.gguf").unwrap();
        assert_eq!(encode(&files, "ab ab12"), [5, 6, 7, 8]);
        assert_eq!(encode(&files, "<|endoftext|>c"), [0, 3]);
        let cfg: Value = serde_json::from_str(&files.tokenizer_config_json).unwrap();
        assert_eq!(cfg["eos_token"], "<|endoftext|>");
        assert_eq!(cfg["chat_template"], "{{ messages }}");
        assert_eq!(cfg["add_bos_token"], false);
    }

    #[test]
    fn token_count_that_differs_from_the_embedding_is_refused() {
        let e = build(&tiny_meta(), 12, "t.gguf").unwrap_err().to_string();
        assert!(
            e.contains(
                "t.gguf: tokenizer.ggml.tokens has 10 entries but token_embd.weight has 12 rows"
            ),
            "{e}"
        );
    }

    #[test]
    fn merge_of_unknown_parts_is_refused_by_index() {
        let mut m = tiny_meta();
        m.merges.push("c x".into());
        let e = build(&m, 10, "t.gguf").unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.ggml.merges[2] = \"c x\" joins \"x\""),
            "{e}"
        );
        let mut m = tiny_meta();
        m.merges.push("c d".into());
        let e = build(&m, 10, "t.gguf").unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.ggml.merges[2] = \"c d\" makes \"cd\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_pre_tokenizer_and_sentencepiece_are_named() {
        let mut m = tiny_meta();
        m.pre = Some("deepseek-coder".into());
        let e = build(&m, 10, "t.gguf").unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.pre is 'deepseek-coder'"), "{e}");
        let mut m = tiny_meta();
        m.model = "llama".into();
        let e = build(&m, 10, "t.gguf").unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.model is 'llama'"), "{e}");
    }
}
