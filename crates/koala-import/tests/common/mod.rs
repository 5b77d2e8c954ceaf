//! Shared helpers of the import tests: small checkpoints written from Rust
//! (HF folders with safetensors, GGUF files with candle's writer) and an
//! ONNX Runtime forward of an imported model.
#![allow(dead_code)]

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor as CTensor};
use koala_graph::model::Model;
use koala_graph::tensor;
use koala_import::permute::permute_rows;
use koala_import::{Architecture, LlamaConfig, Tensor};
use koala_runtime::{Session, SessionOptions, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repo's reference fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name)
}

/// Little-endian f32 / i64 files of the fixtures.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn read_i64(path: &Path) -> Vec<i64> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The config of `tests/fixtures/reference/tiny_llama` (its case.json).
pub fn tiny_llama_config() -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
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
        eos_token_id: None,
    }
}

/// The tiny_llama fixture's weights (its ONNX initializers carry HF names).
pub fn tiny_llama_weights() -> BTreeMap<String, Tensor> {
    let m = Model::load(&fixture("tiny_llama/model.onnx")).unwrap();
    m.graph()
        .initializer
        .iter()
        .filter(|t| t.data_type == koala_graph::proto::DataType::Float as i32)
        .map(|t| {
            let w = Tensor {
                name: t.name.clone(),
                shape: t.dims.iter().map(|&d| d as usize).collect(),
                data: tensor::to_f32(t).unwrap(),
            };
            (t.name.clone(), w)
        })
        .collect()
}

/// A `tokenizer.json` of `n` single-character byte-level tokens (no merges),
/// enough for the folder reader's vocabulary check.
pub fn tiny_tokenizer_json(n: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                char::from_u32(0x100 + i as u32).unwrap().to_string(),
                i.into(),
            )
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// Writes `config.json`, `model.safetensors` (f32) and `tokenizer.json`.
pub fn write_hf_folder(dir: &Path, config: &LlamaConfig, weights: &BTreeMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config.to_hf_json()).unwrap(),
    )
    .unwrap();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .values()
        .map(|t| {
            let b: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (t.name.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let st = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tiny_tokenizer_json(config.vocab_size),
    )
    .unwrap();
}

/// HF name → GGUF name (the inverse of `koala_import::gguf::hf_name`).
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}")
}

/// Tokenizer metadata of `n` distinct tokens, no merges; token 0 is a
/// control token.
pub fn tokenizer_metadata(n: usize) -> Vec<(String, Value)> {
    let tokens: Vec<Value> = (0..n)
        .map(|i| Value::String(char::from_u32(0x100 + i as u32).unwrap().to_string()))
        .collect();
    let mut types = vec![Value::I32(1); n];
    types[0] = Value::I32(3);
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ]
}

/// The `general.architecture` and `{arch}.*` metadata of `c`.
pub fn model_metadata(c: &LlamaConfig) -> Vec<(String, Value)> {
    let a = c.architecture.model_type();
    let u = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture".into(), Value::String(a.into())),
        (format!("{a}.block_count"), u(c.num_hidden_layers)),
        (format!("{a}.context_length"), u(c.max_position_embeddings)),
        (format!("{a}.embedding_length"), u(c.hidden_size)),
        (format!("{a}.feed_forward_length"), u(c.intermediate_size)),
        (
            format!("{a}.attention.head_count"),
            u(c.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(c.num_key_value_heads),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(c.rope_theta)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps),
        ),
        (format!("{a}.rope.dimension_count"), u(c.head_dim)),
    ]
}

/// Writes a GGUF file the way llama.cpp's converter does (Q/K rows permuted
/// for llama-style architectures, head tied by leaving out `output.weight`),
/// storing each HF
/// tensor in the type `type_of` picks. Returns the stored (quantised)
/// tensors' raw block bytes by HF name, for hand decoding.
pub fn write_gguf(
    path: &Path,
    c: &LlamaConfig,
    weights: &BTreeMap<String, Tensor>,
    metadata: &[(String, Value)],
    type_of: impl Fn(&str) -> GgmlDType,
) -> BTreeMap<String, Vec<u8>> {
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    let mut raw = BTreeMap::new();
    for (name, t) in weights {
        let rows = t.shape[0];
        let cols = t.shape.get(1).copied().unwrap_or(1);
        let permuted = c.architecture.gguf_qk_permuted();
        let data = if permuted && name.contains("q_proj.") {
            permute_rows(&t.data, rows, cols, c.num_attention_heads).unwrap()
        } else if permuted && name.contains("k_proj.") {
            permute_rows(&t.data, rows, cols, c.num_key_value_heads).unwrap()
        } else {
            t.data.clone()
        };
        let ct = CTensor::from_vec(data, t.shape.clone(), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&ct, type_of(name)).unwrap();
        raw.insert(name.clone(), q.data().unwrap().to_vec());
        qtensors.push((gguf_name(name), q));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
    raw
}

/// Runs an imported model (Optimum signature, empty past) on `ids`
/// `[batch, seq]` and returns the logits.
pub fn run_logits(model: &Path, ids: &[i64], batch: usize, seq: usize) -> Vec<f32> {
    koala_runtime::init().expect("ONNX Runtime library");
    let mut s = Session::from_file(model, &SessionOptions::default()).expect("session");
    let mask = vec![1i64; batch * seq];
    let pos: Vec<i64> = (0..batch).flat_map(|_| 0..seq as i64).collect();
    let shape = [batch, seq];
    let past_names: Vec<String> = s
        .inputs()
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| n.starts_with("past_key_values."))
        .collect();
    let past_shapes: Vec<[usize; 4]> = s
        .inputs()
        .iter()
        .filter(|i| i.name.starts_with("past_key_values."))
        .map(|i| {
            let fixed = |k: usize| match i.dims[k] {
                koala_runtime::Dim::Fixed(n) => n,
                _ => panic!("{}: axis {k} not fixed", i.name),
            };
            [batch, fixed(1), 0, fixed(3)]
        })
        .collect();
    let empty: Vec<f32> = Vec::new();
    let mut inputs = vec![
        ("input_ids", TensorView::i64(ids, &shape)),
        ("attention_mask", TensorView::i64(&mask, &shape)),
        ("position_ids", TensorView::i64(&pos, &shape)),
    ];
    for (n, sh) in past_names.iter().zip(&past_shapes) {
        inputs.push((n.as_str(), TensorView::f32(&empty, sh)));
    }
    let out = s.run(&inputs).expect("run");
    let logits = out
        .iter()
        .find(|o| o.name == "logits")
        .expect("logits output");
    logits.as_f32().expect("f32 logits").to_vec()
}

/// Every output of one forward of an imported model: `ids` `[1, T]` at
/// cache positions `P..P+T` after `past` (`(name, data, [1, KV, P, hd])`
/// per past input, in input order; empty = no cache), with `mask`
/// `[1, P+T]`.
pub fn run_with_past(
    session: &mut Session,
    ids: &[i64],
    mask: &[i64],
    past: &[(String, Vec<f32>, [usize; 4])],
) -> Vec<koala_runtime::OwnedTensor> {
    let t = ids.len();
    let p = mask.len() - t;
    let pos: Vec<i64> = (p as i64..(p + t) as i64).collect();
    let (ids_shape, mask_shape) = ([1, t], [1, mask.len()]);
    let mut inputs = vec![
        ("input_ids", TensorView::i64(ids, &ids_shape)),
        ("attention_mask", TensorView::i64(mask, &mask_shape)),
        ("position_ids", TensorView::i64(&pos, &ids_shape)),
    ];
    for (name, data, shape) in past {
        inputs.push((name.as_str(), TensorView::f32(data, shape)));
    }
    session.run(&inputs).expect("run")
}
