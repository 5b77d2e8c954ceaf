//! The tokenizer wrapper against the Python `tokenizers` ground truth in `fixtures/text/expected.json`, and
//! its errors (each names the file at fault).

mod common;

use std::path::Path;

use common::{assert_mentions, text_fixtures};
use koala_data::TextTokenizer;
use serde_json::Value;

fn tokenizer() -> TextTokenizer {
    TextTokenizer::open(&text_fixtures().join("tokenizer.json")).unwrap()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(text_fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn encodes_exactly_like_python_tokenizers() {
    let (tok, exp) = (tokenizer(), expected());
    for (name, want) in exp["docs"].as_object().unwrap() {
        let text = std::fs::read_to_string(text_fixtures().join("docs").join(name)).unwrap();
        assert_eq!(tok.encode(&text, false).unwrap(), ids(want), "docs/{name}");
        assert_eq!(tok.decode(&ids(want)).unwrap(), text, "decode docs/{name}");
    }
}

#[test]
fn special_tokens_and_template_come_from_tokenizer_config() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 300);
    assert_eq!((tok.eos_token(), tok.eos_id()), ("<|im_end|>", 2));
    assert_eq!((tok.bos_token(), tok.bos_id()), ("<|im_start|>", Some(1)));
    assert_eq!(tok.pad_id(), 2);
    assert!(!tok.add_bos_token());
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn a_folder_is_read_like_its_tokenizer_json() {
    let tok = TextTokenizer::open(&text_fixtures()).unwrap();
    assert_eq!(tok.path(), text_fixtures().join("tokenizer.json"));
}

#[test]
fn without_tokenizer_config_eos_falls_back_to_endoftext() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let tok = TextTokenizer::open(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!((tok.eos_token(), tok.eos_id()), ("<|endoftext|>", 0));
    assert_eq!(tok.pad_id(), 0);
    assert!(tok.chat_template().is_none());
}

#[test]
fn check_vocab_accepts_a_padded_embedding_and_refuses_a_smaller_one() {
    let tok = tokenizer();
    tok.check_vocab(300).unwrap();
    tok.check_vocab(320).unwrap();
    let message = tok.check_vocab(299).unwrap_err().to_string();
    assert_mentions(
        &message,
        &[
            "tokenizer.json",
            "299 rows",
            "300 tokens",
            "use the tokenizer.json that came with the model",
        ],
    );
}

#[test]
fn a_broken_tokenizer_names_its_file() {
    let path = text_fixtures().join("bad/tokenizer/tokenizer.json");
    let message = TextTokenizer::open(&path).unwrap_err().to_string();
    assert_mentions(&message, &["bad/tokenizer/tokenizer.json", "cannot load"]);
}

#[test]
fn a_missing_tokenizer_names_the_path_and_what_to_pass() {
    let message = TextTokenizer::open(Path::new("/nonexistent/tok.json"))
        .unwrap_err()
        .to_string();
    assert_mentions(
        &message,
        &["/nonexistent/tok.json", "no such file", "tokenizer.json"],
    );
}

#[test]
fn an_eos_token_missing_from_the_vocabulary_names_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "</s>", "special": true}}"#,
    )
    .unwrap();
    let message = TextTokenizer::open(dir.path()).unwrap_err().to_string();
    assert_mentions(
        &message,
        &[
            "tokenizer_config.json",
            "`eos_token`",
            "\"</s>\"",
            "different models",
        ],
    );
}

#[test]
fn chat_template_is_read_from_a_named_list_or_chat_template_jinja() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    assert_eq!(
        TextTokenizer::open(dir.path()).unwrap().chat_template(),
        Some("D")
    );
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
    assert_eq!(
        TextTokenizer::open(dir.path()).unwrap().chat_template(),
        Some("J")
    );
}

#[test]
fn invalid_tokenizer_config_json_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        "{\n\"eos_token\": \n}",
    )
    .unwrap();
    let message = TextTokenizer::open(dir.path()).unwrap_err().to_string();
    assert_mentions(
        &message,
        &["tokenizer_config.json", "invalid JSON at line 3"],
    );
}
