//! Bad checkpoints: each is refused with one error that names the file and
//! the field or tensor at fault. Every input is built here from the
//! tiny_llama fixture weights.

mod common;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use common::*;
use koala_import::{import, ImportOptions};
use std::path::{Path, PathBuf};

/// A valid F32 GGUF of tiny_llama with `edit` applied to its metadata.
fn tiny_gguf(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> PathBuf {
    let c = tiny_llama_config();
    let mut md = model_metadata(&c);
    md.extend(tokenizer_metadata(c.vocab_size));
    edit(&mut md);
    let file = dir.join("tiny.gguf");
    write_gguf(&file, &c, &tiny_llama_weights(), &md, |_| GgmlDType::F32);
    file
}

fn import_error(input: &Path) -> String {
    let out = input.parent().unwrap().join("out");
    let e = import(input, &out, &ImportOptions::default()).expect_err("bad input must be refused");
    assert!(!out.join("model.onnx").exists(), "nothing written on error");
    format!("{e:#}")
}

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn truncated_gguf_names_the_file_and_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_gguf(tmp.path(), |_| {});
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let e = import_error(&file);
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(
        e.contains("cannot read tensor '") && e.contains("truncated"),
        "{e}"
    );
    // Cut inside the header: still the file, and what to do.
    std::fs::write(&file, &bytes[..200]).unwrap();
    let e = import_error(&file);
    assert!(
        e.contains(&file.display().to_string()) && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn non_gguf_file_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    std::fs::write(&file, b"PK\x03\x04 this is a zip, not a GGUF").unwrap();
    let e = import_error(&file);
    assert!(e.contains("model.gguf' is not a GGUF file"), "{e}");
}

/// Patches the ggml type id of `tensor` in the tensor-info table (GGUF v2/v3:
/// u64 name length, name, u32 n_dims, u64 dims, u32 type, u64 offset).
fn patch_type(bytes: &mut [u8], tensor: &str, type_id: u32) {
    let name = tensor.as_bytes();
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in the header")
        + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&type_id.to_le_bytes());
}

#[test]
fn unsupported_quantisation_type_names_the_tensor_and_the_supported_types() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_gguf(tmp.path(), |_| {});
    let mut bytes = std::fs::read(&file).unwrap();
    // 20 is IQ4_NL in ggml, which candle does not decode.
    patch_type(&mut bytes, "blk.1.attn_v.weight", 20);
    std::fs::write(&file, &bytes).unwrap();
    let e = import_error(&file);
    assert!(
        e.contains("tensor 'blk.1.attn_v.weight' is stored in ggml type 20"),
        "{e}"
    );
    assert!(e.contains("Q4_K") && e.contains("tiny.gguf"), "{e}");
}

#[test]
fn unknown_architecture_names_general_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_gguf(tmp.path(), |md| {
        set(md, "general.architecture", Value::String("gemma3".into()))
    });
    let e = import_error(&file);
    assert!(
        e.contains("tiny.gguf: general.architecture is 'gemma3'") && e.contains("qwen2"),
        "{e}"
    );
}

#[test]
fn safetensors_folder_without_config_json_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    write_hf_folder(&dir, &tiny_llama_config(), &tiny_llama_weights());
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = import_error(&dir);
    assert!(e.contains("hf' has no config.json"), "{e}");
}

/// Users pass the folder's config.json or weights file where the folder is wanted: the
/// error names the folder to pass instead of reading the file as a (bad) GGUF.
#[test]
fn a_file_of_a_hf_folder_names_the_folder_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    write_hf_folder(&dir, &tiny_llama_config(), &tiny_llama_weights());
    for file in ["config.json", "model.safetensors"] {
        let e = import_error(&dir.join(file));
        assert!(
            e.contains(&format!("'{}' is one file of a Hugging Face model folder; pass the folder itself: koala import '{}'", dir.join(file).display(), dir.display())),
            "{file}: {e}"
        );
    }
}

#[test]
fn hf_folder_with_a_missing_tensor_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    let mut w = tiny_llama_weights();
    w.remove("model.layers.1.mlp.up_proj.weight");
    write_hf_folder(&dir, &tiny_llama_config(), &w);
    let e = import_error(&dir);
    assert!(
        e.contains("tensor 'model.layers.1.mlp.up_proj.weight' (shape [128, 48]) is missing"),
        "{e}"
    );
}

#[test]
fn gguf_tokenizer_with_a_token_count_unlike_the_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_gguf(tmp.path(), |md| {
        let short = tokenizer_metadata(112);
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
            let v = short.iter().find(|(k, _)| k == key).unwrap().1.clone();
            set(md, key, v);
        }
    });
    let e = import_error(&file);
    assert!(
        e.contains(
            "tiny.gguf: tokenizer.ggml.tokens has 112 entries but token_embd.weight has 113 rows"
        ),
        "{e}"
    );
}

#[test]
fn gguf_merge_with_parts_outside_the_vocabulary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_gguf(tmp.path(), |md| {
        set(
            md,
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("Ā zz".into())]),
        )
    });
    let e = import_error(&file);
    assert!(
        e.contains("tiny.gguf: tokenizer.ggml.merges[0] = \"Ā zz\" joins \"zz\", which is not in tokenizer.ggml.tokens"),
        "{e}"
    );
}

#[test]
fn hf_tokenizer_larger_than_the_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    write_hf_folder(&dir, &tiny_llama_config(), &tiny_llama_weights());
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json(200)).unwrap();
    let e = import_error(&dir);
    assert!(
        e.contains("tokenizer.json' has token ids up to 199 but the model's embedding (vocab_size in config.json) has only 113 rows"),
        "{e}"
    );
}
