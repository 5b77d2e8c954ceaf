//! [`LlamaConfig`]: the hyper-parameters of a Llama-family decoder, filled in
//! by both readers (GGUF metadata and HF `config.json`) so the ONNX emitter
//! sees one description whatever the checkpoint format.

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// The decoder families koala imports. They share one forward (RoPE, GQA,
/// RMSNorm, SiLU-gated MLP); they differ in how GGUF stores Q/K rows and
/// whether the projections carry biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3 and SmolLM2 (`general.architecture = "llama"`,
    /// `model_type = "llama"`). llama.cpp permutes Q/K rows for its
    /// interleaved RoPE; the GGUF reader undoes it.
    Llama,
    /// Mistral 7B-style dense models: the Llama forward (transformers maps
    /// Mistral GGUF files to Llama too); sliding windows are not applied.
    Mistral,
    /// Qwen2: Llama forward with Q/K/V biases; GGUF rows are not permuted
    /// (llama.cpp runs it with NEOX RoPE, which is the HF layout already).
    Qwen2,
}

/// What every "unknown architecture" error lists.
pub const SUPPORTED_ARCHITECTURES: &str = "llama (Llama, SmolLM2), mistral (read as llama), qwen2";

impl Architecture {
    /// Parses a GGUF `general.architecture` or HF `model_type` string.
    /// `field` names where it came from, for the error.
    pub fn parse(name: &str, field: &str) -> Result<Architecture> {
        Ok(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            other => bail!(
                "{field} is '{other}', which koala cannot import; supported: {SUPPORTED_ARCHITECTURES}"
            ),
        })
    }

    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// Whether llama.cpp's converter permuted Q/K rows for this family
    /// (`convert_hf_to_gguf.py` `LlamaModel.permute`; Qwen2 is not permuted).
    pub fn gguf_qk_permuted(self) -> bool {
        matches!(self, Architecture::Llama | Architecture::Mistral)
    }
}

/// One decoder's shape and constants, in HF `config.json` terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Model family.
    pub architecture: Architecture,
    /// Token-embedding rows (= logits width).
    pub vocab_size: usize,
    /// Residual width `D`.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads `H`.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than `H`).
    pub num_key_value_heads: usize,
    /// Per-head width (usually `D / H`).
    pub head_dim: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base (theta).
    pub rope_theta: f32,
    /// Trained context length (provenance; the graph takes any length).
    pub max_position_embeddings: usize,
    /// The LM head is the token embedding (one tensor used twice).
    pub tie_word_embeddings: bool,
    /// Q/K/V projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// BOS token id, if known.
    pub bos_token_id: Option<u32>,
    /// EOS token id, if known.
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Checks the shapes agree with each other; `source` names the file the
    /// values came from.
    pub fn validate(&self, source: &str) -> Result<()> {
        let nonzero = [
            ("vocab size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("layer count", self.num_hidden_layers),
            ("attention head count", self.num_attention_heads),
            ("key/value head count", self.num_key_value_heads),
            ("head dimension", self.head_dim),
            ("feed-forward size", self.intermediate_size),
        ];
        for (what, v) in nonzero {
            if v == 0 {
                bail!("{source}: the {what} is 0; the file is corrupt or not a decoder model");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "{source}: {} attention heads are not a multiple of {} key/value heads; grouped-query attention needs whole groups",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "{source}: head dimension {} is odd; rotary embeddings rotate pairs of dimensions",
                self.head_dim
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!(
                "{source}: RMSNorm epsilon {} must be a positive number",
                self.rms_norm_eps
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!(
                "{source}: RoPE base (theta) {} must be a positive number",
                self.rope_theta
            );
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// An HF-style `config.json` (transformers field names) recording what
    /// was imported, so the output folder says what model it holds.
    pub fn to_hf_json(&self) -> Value {
        let arch = match self.architecture {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps as f64,
            "rope_theta": self.rope_theta as f64,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = json!(e);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn smollm2_like() -> LlamaConfig {
        LlamaConfig {
            architecture: Architecture::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            intermediate_size: 1536,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    #[test]
    fn unknown_architecture_names_the_field_and_the_supported_ones() {
        let e = Architecture::parse("gemma3", "general.architecture")
            .unwrap_err()
            .to_string();
        assert!(e.contains("general.architecture is 'gemma3'"), "{e}");
        assert!(e.contains("llama") && e.contains("qwen2"), "{e}");
    }

    #[test]
    fn heads_that_do_not_group_are_refused() {
        let mut c = smollm2_like();
        c.num_key_value_heads = 4;
        let e = c.validate("m.gguf").unwrap_err().to_string();
        assert!(
            e.contains("9 attention heads are not a multiple of 4"),
            "{e}"
        );
        assert!(smollm2_like().validate("m.gguf").is_ok());
    }

    #[test]
    fn hf_json_round_trips_the_shape_fields() {
        let v = smollm2_like().to_hf_json();
        assert_eq!(v["num_key_value_heads"], 3);
        assert_eq!(v["tie_word_embeddings"], true);
        assert_eq!(v["architectures"][0], "LlamaForCausalLM");
    }
}
