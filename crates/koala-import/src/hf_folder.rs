//! Reading a Hugging Face model folder: `config.json`, the weights in
//! `*.safetensors` (one file, or shards listed by
//! `model.safetensors.index.json`), `tokenizer.json` and, if present,
//! `tokenizer_config.json` / `chat_template.jinja` (copied unchanged).
//! F16 and BF16 weights are widened to f32, the dtype koala trains in.

use crate::llama_config::{Architecture, LlamaConfig};
use crate::tokenizer_gguf::{vocab_size_of, TokenizerFiles};
use crate::{Checkpoint, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads the folder `dir` completely.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        bail!(
            "'{}' has no config.json, so koala cannot tell the model's architecture and shape; a Hugging Face model folder holds config.json next to its *.safetensors (download the whole folder), or pass a .gguf file",
            dir.display()
        );
    }
    let cfg_file = config_path.display().to_string();
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read '{cfg_file}'"))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("'{cfg_file}' is not valid JSON: {e}"))?;
    let config = config_from_json(&json, &cfg_file)?;
    config.validate(&cfg_file)?;
    let mut storage_types = BTreeMap::new();
    let tensors = read_weights(dir, &mut storage_types)?;
    let tokenizer = read_tokenizer(dir, config.vocab_size)?;
    Ok(Checkpoint {
        config,
        tensors,
        storage_types,
        tokenizer,
    })
}

/// The model fields of an HF `config.json` (transformers' names; defaults as
/// `LlamaConfig` in transformers).
pub fn config_from_json(json: &Value, file: &str) -> Result<LlamaConfig> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .with_context(|| {
            format!("'{file}' has no model_type; it is not a transformers config.json")
        })?;
    let architecture = Architecture::parse(model_type, &format!("{file}: model_type"))?;
    let usize_field = |k: &str| -> Result<Option<usize>> {
        match json.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .with_context(|| format!("'{file}': {k} is {v}, not a non-negative integer")),
        }
    };
    let need = |k: &str| -> Result<usize> {
        usize_field(k)?.with_context(|| format!("'{file}' has no {k}; the config is incomplete"))
    };
    let float_field = |k: &str| json.get(k).and_then(Value::as_f64);
    let rope = json
        .get("rope_parameters")
        .or_else(|| json.get("rope_scaling"));
    if let Some(r) = rope.filter(|r| !r.is_null()) {
        let kind = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            bail!("'{file}': rope type '{kind}' (rope_parameters/rope_scaling) is not supported; koala imports only the default RoPE (no scaling), because a scaled RoPE changes every position's rotation and dropping it would silently make another model. Import a checkpoint without RoPE scaling (e.g. SmolLM2, Llama 2, Qwen2 up to its native context)");
        }
    }
    let hidden = need("hidden_size")?;
    let heads = need("num_attention_heads")?;
    let rope_theta = float_field("rope_theta")
        .or_else(|| {
            rope.and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10000.0);
    refuse_other_activation(json, file)?;
    refuse_sliding_window(json, file)?;
    if json.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
        bail!("'{file}': mlp_bias is true; koala imports only bias-free MLPs");
    }
    let token_id = |k: &str| json.get(k).and_then(Value::as_u64).map(|v| v as u32);
    Ok(LlamaConfig {
        architecture,
        vocab_size: need("vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: need("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: usize_field("num_key_value_heads")?.unwrap_or(heads),
        head_dim: usize_field("head_dim")?.unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        intermediate_size: need("intermediate_size")?,
        rms_norm_eps: float_field("rms_norm_eps").unwrap_or(1e-6) as f32,
        rope_theta: rope_theta as f32,
        max_position_embeddings: usize_field("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        // Qwen2 always has Q/K/V biases (transformers hard-codes them).
        attention_bias: architecture == Architecture::Qwen2
            || json.get("attention_bias").and_then(Value::as_bool) == Some(true),
        bos_token_id: token_id("bos_token_id"),
        eos_token_id: token_id("eos_token_id"),
    })
}

/// The emitted MLP is SiLU-gated (`down(silu(gate(x)) · up(x))`); a config naming another
/// activation would import silently as a different model.
fn refuse_other_activation(json: &Value, file: &str) -> Result<()> {
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(act) = json.get(key).and_then(Value::as_str) {
            if !matches!(act, "silu" | "swish") {
                bail!("'{file}': {key} is '{act}'; koala imports SiLU-gated MLPs only ('silu', as Llama, Mistral and Qwen2 use), so this model cannot be imported");
            }
        }
    }
    Ok(())
}

/// koala emits full causal attention. A sliding window (Mistral's `sliding_window`, Qwen2's
/// `use_sliding_window`) makes the model attend differently on sequences longer than the
/// window, so the import would be a different model there: refused, with the one case
/// where the attention is identical.
fn refuse_sliding_window(json: &Value, file: &str) -> Result<()> {
    let window = json.get("sliding_window").and_then(Value::as_u64);
    let used = match json.get("use_sliding_window") {
        Some(v) => v.as_bool() == Some(true),
        // Mistral applies `sliding_window` whenever it is set.
        None => true,
    };
    if let (Some(w), true) = (window, used) {
        bail!("'{file}': sliding_window is {w} (sliding-window attention); koala emits full causal attention, which differs from this model on sequences longer than {w} tokens. If you will only train and generate within {w} tokens, set sliding_window to null (or use_sliding_window to false) in a copy of the folder: attention is then identical");
    }
    Ok(())
}

/// The safetensors files that hold the weights: the shards an index names,
/// else every `*.safetensors` in the folder.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let file = index.display().to_string();
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(&index).with_context(|| format!("cannot read '{file}'"))?,
        )
        .map_err(|e| anyhow!("'{file}' is not valid JSON: {e}"))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("'{file}' has no weight_map object"))?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|s| dir.join(s))
            .collect();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list '{}'", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "'{}' has config.json but no *.safetensors weights (PyTorch .bin files are not read: convert them to safetensors, or pass a .gguf file)",
            dir.display()
        );
    }
    Ok(files)
}

/// Every tensor of every shard, as f32, by HF name. Buffers transformers
/// used to save (`rotary_emb.inv_freq`) are dropped: the graph computes them.
fn read_weights(
    dir: &Path,
    types: &mut BTreeMap<String, usize>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for path in weight_files(dir)? {
        let file = path.display().to_string();
        let bytes = std::fs::read(&path).with_context(|| {
            format!("cannot read weights file '{file}' (listed by the folder's index?)")
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow!("'{file}' is not a readable safetensors file ({e}); it is truncated or corrupt")
        })?;
        for (name, view) in st.tensors() {
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            let data = to_f32(view.dtype(), view.data())
                .with_context(|| format!("'{file}': tensor '{name}'"))?;
            *types.entry(format!("{:?}", view.dtype())).or_default() += 1;
            out.insert(
                name.clone(),
                Tensor {
                    name,
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
    }
    Ok(out)
}

/// Little-endian F32/F16/BF16 bytes to f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("has dtype {other:?}; koala reads F32, F16 and BF16 weights (dequantise or convert the checkpoint first)"),
    })
}

/// `tokenizer.json` (required) and its companions, copied unchanged after
/// checking the vocabulary fits the embedding.
fn read_tokenizer(dir: &Path, vocab_rows: usize) -> Result<TokenizerFiles> {
    let path = dir.join("tokenizer.json");
    let file = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|_| {
        anyhow!("'{file}' is missing: koala needs the model's tokenizer.json next to config.json (download it with the model)")
    })?;
    let vocab = vocab_size_of(&bytes, &file)?;
    if vocab > vocab_rows {
        bail!("'{file}' has token ids up to {} but the model's embedding (vocab_size in config.json) has only {vocab_rows} rows; the tokenizer does not belong to this model", vocab - 1);
    }
    let tokenizer_json =
        String::from_utf8(bytes).map_err(|_| anyhow!("'{file}' is not UTF-8 text"))?;
    let read_opt = |name: &str| -> Result<Option<String>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        std::fs::read_to_string(&p)
            .map(Some)
            .with_context(|| format!("cannot read '{}'", p.display()))
    };
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json: read_opt("tokenizer_config.json")?.unwrap_or_else(|| "{}".into()),
        chat_template_jinja: read_opt("chat_template.jinja")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let j = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
                       "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"},
                       "tie_word_embeddings": true});
        let c = config_from_json(&j, "config.json").unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.head_dim, 4);
        assert!(c.tie_word_embeddings && !c.attention_bias);
    }

    #[test]
    fn scaled_rope_and_unknown_model_type_are_refused_by_name() {
        let j =
            json!({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
        let e = config_from_json(&j, "c.json").unwrap_err().to_string();
        assert!(e.contains("rope type 'llama3'"), "{e}");
        let j = json!({"model_type": "gpt_neox"});
        let e = config_from_json(&j, "c.json").unwrap_err().to_string();
        assert!(e.contains("c.json: model_type is 'gpt_neox'"), "{e}");
    }

    /// A non-SiLU activation and an active sliding window would import silently as another
    /// model (found by a new-user tryout: GELU imported as SiLU, logits off by 0.011;
    /// Mistral's window ignored, argmax 80 % on 40 tokens): refused naming file and field.
    #[test]
    fn other_activations_and_sliding_windows_are_refused_by_name() {
        let base = json!({"model_type": "mistral", "vocab_size": 10, "hidden_size": 8,
                          "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 16, "hidden_act": "silu"});
        assert!(config_from_json(&base, "c.json").is_ok());
        let with = |k: &str, v: Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        let e = config_from_json(&with("hidden_act", json!("gelu")), "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'c.json': hidden_act is 'gelu'"), "{e}");
        let e = config_from_json(&with("sliding_window", json!(16)), "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'c.json': sliding_window is 16"), "{e}");
        assert!(e.contains("set sliding_window to null"), "{e}");
        // A null window, or Qwen2's window switched off, is full attention: imported.
        assert!(config_from_json(&with("sliding_window", Value::Null), "c.json").is_ok());
        let mut qwen = with("sliding_window", json!(16));
        qwen["model_type"] = json!("qwen2");
        qwen["use_sliding_window"] = json!(false);
        assert!(config_from_json(&qwen, "c.json").is_ok());
        qwen["use_sliding_window"] = json!(true);
        assert!(config_from_json(&qwen, "c.json").is_err());
    }

    #[test]
    fn half_precision_widens_exactly() {
        let h = half::f16::from_f32(1.5).to_le_bytes();
        let b = half::bf16::from_f32(-2.25).to_le_bytes();
        assert_eq!(to_f32(Dtype::F16, &h).unwrap(), [1.5]);
        assert_eq!(to_f32(Dtype::BF16, &b).unwrap(), [-2.25]);
        assert!(to_f32(Dtype::I8, &[1]).is_err());
    }
}
