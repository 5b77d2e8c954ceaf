//! Reading plain text, JSONL text, prompt/completion and chat files: packing is exact, masks cover exactly
//! the trained tokens, and the token ids and rendered chats equal Python's (`tokenizers`, `jinja2`) in
//! `fixtures/text/expected.json`. All comparisons are exact: token ids are integers.

mod common;

use std::path::PathBuf;

use common::text_fixtures;
use koala_data::text::chat::{ChatMessage, ChatTemplate};
use koala_data::{TextDataset, TextExample, TextFormat, TextOptions, TextTokenizer, IGNORE_INDEX};
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

fn open(name: &str, block_size: usize) -> TextDataset {
    TextDataset::open(
        &text_fixtures().join(name),
        &tokenizer(),
        &TextOptions::new(block_size),
    )
    .unwrap()
}

fn concatenated(examples: &[TextExample]) -> Vec<i64> {
    examples.iter().flat_map(|e| e.input_ids.clone()).collect()
}

/// Each document's ids followed by EOS (= 2, `<|im_end|>`).
fn with_eos(docs: impl Iterator<Item = Vec<i64>>) -> Vec<i64> {
    docs.flat_map(|mut d| {
        d.push(2);
        d
    })
    .collect()
}

fn assert_packed(data: &TextDataset, stream: &[i64], block: usize) {
    assert_eq!(concatenated(data.examples()), stream);
    let (last, full) = data.examples().split_last().unwrap();
    assert!(
        full.iter().all(|e| e.len() == block),
        "every block but the last is full"
    );
    assert!(last.len() <= block);
    for e in data.examples() {
        assert_eq!(
            e.labels, e.input_ids,
            "packed labels are the inputs (the graph shifts)"
        );
        assert!(e.attention_mask.iter().all(|&m| m == 1));
    }
}

#[test]
fn a_folder_packs_its_sorted_txt_files_with_eos_after_each() {
    let exp = expected();
    let data = open("docs", 16);
    assert_eq!(data.format(), TextFormat::Plain);
    let docs = ["a.txt", "b.txt", "c.txt"].map(|n| ids(&exp["docs"][n]));
    let stream = with_eos(docs.into_iter());
    assert_packed(&data, &stream, 16);
    let counts = data.counts();
    assert_eq!(counts.documents, 3, "notes.md is not a .txt file");
    assert_eq!(counts.tokens, stream.len());
    assert_eq!(counts.examples, stream.len().div_ceil(16));
    assert_eq!(counts.predicted_tokens, stream.len() - counts.examples);
}

#[test]
fn a_single_text_file_is_one_document() {
    let exp = expected();
    let data = open("docs/c.txt", 8);
    assert_packed(
        &data,
        &with_eos(std::iter::once(ids(&exp["docs"]["c.txt"]))),
        8,
    );
}

#[test]
fn jsonl_text_lines_are_packed_like_documents() {
    let exp = expected();
    let data = open("text.jsonl", 10);
    assert_eq!(data.format(), TextFormat::JsonlText);
    let lines = exp["text_lines"].as_array().unwrap().iter().map(ids);
    assert_packed(&data, &with_eos(lines), 10);
    assert_eq!(data.counts().documents, 4);
}

#[test]
fn prompt_completion_trains_on_the_completion_and_eos_only() {
    let exp = expected();
    let data = open("prompt_completion.jsonl", 64);
    assert_eq!(data.format(), TextFormat::PromptCompletion);
    let want = exp["prompt_completion"].as_array().unwrap();
    assert_eq!(data.len(), want.len());
    for (e, w) in data.examples().iter().zip(want) {
        let (prompt, mut answer) = (ids(&w["prompt"]), ids(&w["completion"]));
        answer.push(2);
        assert_eq!(e.input_ids, [prompt.clone(), answer.clone()].concat());
        let mut labels = vec![IGNORE_INDEX; prompt.len()];
        labels.extend(&answer);
        assert_eq!(e.labels, labels);
        assert_eq!(e.predicted_tokens(), answer.len());
    }
    assert_eq!(data.counts().truncated, 0);
}

fn fixture_chats() -> Vec<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(text_fixtures().join("chat.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_chat_template_renders_like_jinja2() {
    let tok = tokenizer();
    let template = ChatTemplate::new(
        tok.chat_template().unwrap(),
        tok.bos_token(),
        tok.eos_token(),
    )
    .unwrap();
    let exp = expected();
    for (messages, want) in fixture_chats().iter().zip(exp["chats"].as_array().unwrap()) {
        assert_eq!(
            template.render(messages, false).unwrap(),
            want["rendered"].as_str().unwrap()
        );
    }
}

/// The maximal runs of trained positions, as (start, end) index pairs.
fn labelled_runs(labels: &[i64]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (t, &l) in labels
        .iter()
        .chain(std::iter::once(&IGNORE_INDEX))
        .enumerate()
    {
        match (l != IGNORE_INDEX, start) {
            (true, None) => start = Some(t),
            (false, Some(s)) => {
                runs.push((s, t));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

#[test]
fn chat_labels_cover_exactly_each_assistant_answer_and_its_end_token() {
    let (tok, exp) = (tokenizer(), expected());
    let data = open("chat.jsonl", 256);
    assert_eq!(data.format(), TextFormat::Chat);
    for ((e, messages), want) in data
        .examples()
        .iter()
        .zip(fixture_chats())
        .zip(exp["chats"].as_array().unwrap())
    {
        assert_eq!(e.input_ids, ids(&want["input_ids"]), "same ids as Python");
        let answers: Vec<String> = messages
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>", m.content))
            .collect();
        let trained: Vec<String> = labelled_runs(&e.labels)
            .into_iter()
            .map(|(s, t)| {
                assert_eq!(e.labels[s..t], e.input_ids[s..t]);
                tok.decode(&e.input_ids[s..t]).unwrap()
            })
            .collect();
        assert_eq!(trained, answers);
    }
}

#[test]
fn explicit_format_overrides_detection() {
    let options = TextOptions {
        format: TextFormat::Plain,
        ..TextOptions::new(8)
    };
    let path = text_fixtures().join("text.jsonl");
    let data = TextDataset::open(&path, &tokenizer(), &options).unwrap();
    let raw = std::fs::read_to_string(&path).unwrap();
    let mut stream = tokenizer().encode(&raw, false).unwrap();
    stream.push(2);
    assert_eq!(
        concatenated(data.examples()),
        stream,
        "the JSONL read as one plain document"
    );
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn long_examples_are_cut_to_the_block_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "long.jsonl",
        concat!(
            r#"{"prompt": "Hi", "completion": " a very long answer that does not fit in twelve tokens"}"#,
            "\n",
            r#"{"prompt": "Hi", "completion": " ok"}"#,
            "\n"
        ),
    );
    let data = TextDataset::open(&path, &tokenizer(), &TextOptions::new(12)).unwrap();
    assert_eq!(data.counts().truncated, 1);
    assert_eq!(data.examples()[0].len(), 12);
    assert!(data.examples()[1].len() < 12);
}

#[test]
fn the_held_out_split_is_deterministic_disjoint_and_seed_dependent() {
    let data = open("docs", 4);
    let n = data.len();
    let (train, val) = data.clone().split(0.25, 5).unwrap();
    assert_eq!(val.len(), (n as f64 * 0.25).round() as usize);
    assert_eq!(train.len() + val.len(), n);
    let mut all: Vec<TextExample> = train.examples().to_vec();
    all.extend(val.examples().iter().cloned());
    let mut sorted_all = all.clone();
    sorted_all.sort_by(|a, b| a.input_ids.cmp(&b.input_ids));
    let mut sorted_src = data.examples().to_vec();
    sorted_src.sort_by(|a, b| a.input_ids.cmp(&b.input_ids));
    assert_eq!(
        sorted_all, sorted_src,
        "the parts cover the data exactly once"
    );
    let (_, again) = data.clone().split(0.25, 5).unwrap();
    assert_eq!(again.examples(), val.examples());
    let (_, other) = data.split(0.25, 6).unwrap();
    assert_ne!(other.examples(), val.examples());
}

/// A copy of the fixture tokenizer whose `tokenizer_config.json` asks for BOS, like Llama's.
fn llama_style_tokenizer(dir: &tempfile::TempDir) -> TextTokenizer {
    std::fs::copy(
        text_fixtures().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": "<|im_start|>", "eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    TextTokenizer::open(dir.path()).unwrap()
}

#[test]
fn add_bos_token_starts_every_document_and_prompt_with_bos() {
    let dir = tempfile::tempdir().unwrap();
    let tok = llama_style_tokenizer(&dir);
    let exp = expected();
    let data =
        TextDataset::open(&text_fixtures().join("docs"), &tok, &TextOptions::new(32)).unwrap();
    let stream: Vec<i64> = ["a.txt", "b.txt", "c.txt"]
        .iter()
        .flat_map(|n| [vec![1], ids(&exp["docs"][*n]), vec![0]].concat())
        .collect();
    assert_eq!(
        concatenated(data.examples()),
        stream,
        "BOS (1) doc EOS (0) per document"
    );
    let data = TextDataset::open(
        &text_fixtures().join("prompt_completion.jsonl"),
        &tok,
        &TextOptions::new(64),
    )
    .unwrap();
    let first = &exp["prompt_completion"][0];
    let (prompt, completion) = (ids(&first["prompt"]), ids(&first["completion"]));
    let e = &data.examples()[0];
    assert_eq!(
        e.input_ids,
        [vec![1], prompt.clone(), completion.clone(), vec![0]].concat()
    );
    assert_eq!(
        e.labels[..=prompt.len()],
        vec![IGNORE_INDEX; prompt.len() + 1]
    );
}
