//! `koala import` on the command line: a small Hugging Face folder (the
//! tiny_llama fixture's weights, written here as config.json +
//! model.safetensors + tokenizer.json) is imported, the summary names what
//! was read and written, a non-empty output folder needs --force, and a
//! file that is not a GGUF is refused with exit code 1.

mod support;

use koala::graph::{tensor, Model};
use std::path::Path;
use support::cli::{koala, root, text};

fn write_tiny_hf_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = koala_import::LlamaConfig {
        architecture: koala_import::Architecture::Llama,
        vocab_size: 113,
        hidden_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 12,
        intermediate_size: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: None,
        eos_token_id: Some(0),
    };
    std::fs::write(dir.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
    let m = Model::load(&root().join("tests/fixtures/reference/tiny_llama/model.onnx")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = m
        .graph()
        .initializer
        .iter()
        .map(|t| {
            let bytes = tensor::to_f32(t)
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (
                t.name.clone(),
                t.dims.iter().map(|&d| d as usize).collect(),
                bytes,
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), v.unwrap())
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    // 113 single-character tokens, no merges: a byte-level BPE that loads.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..113u32)
        .map(|i| (char::from_u32(0x100 + i).unwrap().to_string(), i.into()))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tok = serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}});
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

#[test]
fn import_writes_the_folder_and_refuses_to_overwrite_it_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny-hf");
    write_tiny_hf_folder(&src);
    let out_dir = tmp.path().join("imported");
    let out_arg = out_dir.to_str().unwrap();
    let src_arg = src.to_str().unwrap();
    let out = koala(&["import", src_arg, "--output", out_arg]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("llama (2 layers, hidden 48, 4 heads / 2 key-value heads of 12, MLP 128, vocab 113, tied head"),
        "{all}"
    );
    assert!(
        all.contains("weights stored as F32 x20; 56352 parameters"),
        "{all}"
    );
    for f in [
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
    ] {
        assert!(all.contains(&format!("{f} (")), "{f} reported: {all}");
        assert!(out_dir.join(f).is_file(), "{f} written");
    }
    let again = koala(&["import", src_arg, "--output", out_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("pass --force"),
        "{}",
        text(&again.stderr)
    );
    let forced = koala(&["import", src_arg, "--output", out_arg, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    // `koala inspect` reads it back, KV-cache inputs included.
    let inspect = koala(&["inspect", out_dir.join("model.onnx").to_str().unwrap()]);
    let s = text(&inspect.stdout);
    assert!(s.contains("input  past_key_values.1.value"), "{s}");
}

#[test]
fn import_of_a_file_that_is_not_gguf_exits_1_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("weights.gguf");
    std::fs::write(&bad, "not a model").unwrap();
    let out = koala(&[
        "import",
        bad.to_str().unwrap(),
        "--output",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("weights.gguf' is not a GGUF file"), "{err}");
    assert!(!tmp.path().join("o").exists(), "nothing created");
}
