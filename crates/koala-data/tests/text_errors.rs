//! Every text-data error names the file, the 1-based line where there is one, and what to do.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_mentions, text_fixtures};
use koala_data::{
    TextDataset, TextFormat, TextLoader, TextLoaderConfig, TextOptions, TextTokenizer,
};

fn tokenizer() -> TextTokenizer {
    TextTokenizer::open(&text_fixtures().join("tokenizer.json")).unwrap()
}

fn error_of(path: &Path, options: &TextOptions) -> String {
    TextDataset::open(path, &tokenizer(), options)
        .unwrap_err()
        .to_string()
}

fn bad(name: &str) -> (PathBuf, String) {
    let path = text_fixtures().join("bad").join(name);
    // 256 tokens: the SmolLM2 template adds a default system prompt of about 70 tokens to each chat.
    let message = error_of(&path, &TextOptions::new(256));
    (path, message)
}

fn at(path: &Path, line: usize) -> String {
    format!("{}:{line}:", path.display())
}

#[test]
fn invalid_json_names_file_and_line() {
    let (path, m) = bad("invalid_json.jsonl");
    assert_mentions(
        &m,
        &[&at(&path, 2), "invalid JSON", "one complete JSON object"],
    );
}

#[test]
fn a_missing_field_names_the_field_and_the_format() {
    let (path, m) = bad("missing_field.jsonl");
    assert_mentions(&m, &[&at(&path, 3), "missing field `text`", "{\"text\"}"]);
}

#[test]
fn a_field_of_the_wrong_type_names_the_field_and_type() {
    let (path, m) = bad("wrong_type.jsonl");
    assert_mentions(
        &m,
        &[
            &at(&path, 2),
            "`completion` should be a string, found a number",
        ],
    );
}

#[test]
fn empty_text_names_its_line() {
    let (path, m) = bad("empty_text.jsonl");
    assert_mentions(&m, &[&at(&path, 2), "empty text", "`text`"]);
}

#[test]
fn an_empty_txt_document_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "words\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), " \n\n").unwrap();
    let m = error_of(dir.path(), &TextOptions::new(8));
    assert_mentions(&m, &[&at(&dir.path().join("b.txt"), 1), "empty text"]);
}

#[test]
fn a_chat_message_without_content_names_the_message() {
    let (path, m) = bad("chat_missing_content.jsonl");
    assert_mentions(&m, &[&at(&path, 2), "missing field `messages[1].content`"]);
}

#[test]
fn a_chat_without_assistant_turn_is_refused() {
    let (path, m) = bad("chat_no_assistant.jsonl");
    assert_mentions(&m, &[&at(&path, 1), "no assistant message"]);
}

#[test]
fn a_record_of_another_format_names_the_missing_field() {
    let (path, m) = bad("mixed_formats.jsonl");
    assert_mentions(&m, &[&at(&path, 2), "missing field `prompt`", "prompt"]);
}

#[test]
fn an_empty_file_is_an_empty_data_set() {
    let (path, m) = bad("empty.jsonl");
    assert_mentions(&m, &[&path.display().to_string(), "holds no examples"]);
}

#[test]
fn a_folder_without_txt_files_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.md"), "x").unwrap();
    let m = error_of(dir.path(), &TextOptions::new(8));
    assert_mentions(&m, &[&dir.path().display().to_string(), "no .txt files"]);
}

#[test]
fn unknown_keys_list_the_accepted_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, "{\"question\": \"q\"}\n").unwrap();
    let m = error_of(&path, &TextOptions::new(8));
    assert_mentions(
        &m,
        &[
            &at(&path, 1),
            "[\"question\"]",
            "\"prompt\"",
            "\"messages\"",
        ],
    );
}

#[test]
fn a_token_outside_the_model_vocabulary_names_file_line_and_tokenizer() {
    // The fixture tokenizer has 300 tokens; pretend the model embeds only the first 259 (3 specials + 256
    // bytes), so every merged token (ids 259..300) is out of range.
    let options = TextOptions {
        vocab_limit: Some(259),
        ..TextOptions::new(64)
    };
    let jsonl = text_fixtures().join("text.jsonl");
    let m = error_of(&jsonl, &options);
    assert_mentions(
        &m,
        &[
            &at(&jsonl, 1),
            "outside the model's vocabulary of 259",
            "tokenizer.json",
        ],
    );
    // In plain text the line is the file's line where the token starts.
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, "(\n(\n(( the end\n").unwrap();
    let m = error_of(&txt, &options);
    assert_mentions(&m, &[&at(&txt, 3), "outside the model's vocabulary"]);
}

#[test]
fn a_prompt_that_fills_the_block_names_its_line_and_the_remedy() {
    let m = error_of(
        &text_fixtures().join("prompt_completion.jsonl"),
        &TextOptions::new(4),
    );
    assert_mentions(
        &m,
        &[
            &at(&text_fixtures().join("prompt_completion.jsonl"), 1),
            "no token of the answer is left",
            "raise the block size",
        ],
    );
}

#[test]
fn chat_data_without_a_chat_template_names_the_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let tok = TextTokenizer::open(dir.path()).unwrap();
    let path = text_fixtures().join("chat.jsonl");
    let m = TextDataset::open(&path, &tok, &TextOptions::new(64))
        .unwrap_err()
        .to_string();
    assert_mentions(
        &m,
        &[
            &path.display().to_string(),
            "tokenizer_config.json",
            "no `chat_template`",
        ],
    );
}

#[test]
fn a_template_that_raises_names_the_line_and_its_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content.strip() + eos_token }}{% endfor %}"}"#,
    )
    .unwrap();
    let tok = TextTokenizer::open(dir.path()).unwrap();
    let data = dir.path().join("chat.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "yo"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let m = TextDataset::open(&data, &tok, &TextOptions::new(64))
        .unwrap_err()
        .to_string();
    assert_mentions(&m, &[&at(&data, 2), "System role not supported"]);
}

#[test]
fn a_json_array_file_is_told_to_become_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.json");
    std::fs::write(&path, "[{\"text\": \"a\"}]\n").unwrap();
    let options = TextOptions {
        format: TextFormat::JsonlText,
        ..TextOptions::new(8)
    };
    let m = error_of(&path, &options);
    assert_mentions(
        &m,
        &[&at(&path, 1), "JSON array", "one JSON object per line"],
    );
}

#[test]
fn non_utf8_text_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    std::fs::write(&path, b"fine\ncaf\xe9\n").unwrap();
    let m = error_of(&path, &TextOptions::new(8));
    assert_mentions(&m, &[&at(&path, 2), "not UTF-8"]);
}

#[test]
fn bad_settings_name_the_setting() {
    let m = error_of(&text_fixtures().join("docs"), &TextOptions::new(1));
    assert_mentions(&m, &["block_size", "at least 2"]);
    let data = Arc::new(
        TextDataset::open(
            &text_fixtures().join("docs/a.txt"),
            &tokenizer(),
            &TextOptions::new(64),
        )
        .unwrap(),
    );
    let m = TextLoader::new(data.clone(), TextLoaderConfig::train(8, 0))
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&m, &["drop_last", "fewer than batch_size = 8"]);
    let m = (*data).clone().split(0.5, 0).unwrap_err().to_string();
    assert_mentions(&m, &["val_fraction", "leaves none to train on"]);
    let m = error_of(Path::new("/nonexistent/data.txt"), &TextOptions::new(8));
    assert_mentions(&m, &["/nonexistent/data.txt", "does not exist"]);
}
