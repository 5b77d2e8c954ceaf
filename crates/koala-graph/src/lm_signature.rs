//! The inputs of a causal language model, as exporters write them.
//!
//! Two signatures are accepted:
//! - `input_ids [batch, sequence]` alone (`torch.onnx.export` of a module
//!   that takes token ids);
//! - Optimum's `text-generation` signature: `input_ids`, `attention_mask`,
//!   `position_ids` (both `[batch, sequence]`) and, for exports "with past",
//!   `past_key_values.{i}.key` / `.value` `[batch, kv_heads, past_sequence,
//!   head_dim]`. For training, the past is fed as length-0 tensors (no cache):
//!   the model then attends over the current sequence only, exactly as
//!   without a cache. For generation the same inputs carry the KV cache.
//!
//! A *merged* decoder (Optimum's `decoder_model_merged.onnx`) chooses
//! between the two paths with an `If` node on a `use_cache_branch` input;
//! koala cannot differentiate control flow, so it says which file to use.

use crate::model::Model;
use crate::probe::{self, InputShapes};
use crate::proto::DataType;
use crate::training::declared_dims;
use anyhow::{bail, Result};
use std::collections::HashSet;

/// The token-id input name every LM export uses.
pub const INPUT_IDS: &str = "input_ids";
/// Optimum's attention-mask input.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Optimum's position-ids input.
pub const POSITION_IDS: &str = "position_ids";

/// A `past_key_values.*` input.
#[derive(Clone, Debug, PartialEq)]
pub struct PastInput {
    /// Input name (`past_key_values.0.key`, …).
    pub name: String,
    /// Its element type.
    pub dtype: DataType,
    /// Declared `[kv_heads, head_dim]` (axes 1 and 3).
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// The LM inputs a model has.
#[derive(Clone, Debug, PartialEq)]
pub struct LmSignature {
    /// Name of the token-id input.
    pub input_ids: String,
    /// The attention-mask input, if any.
    pub attention_mask: Option<String>,
    /// The position-ids input, if any.
    pub position_ids: Option<String>,
    /// Past key/value inputs (empty without a KV cache).
    pub past: Vec<PastInput>,
}

fn data_inputs(model: &Model) -> Vec<&crate::proto::ValueInfoProto> {
    let g = model.graph();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect()
}

/// Is this model a causal LM by its inputs: an int64 `input_ids` input (the
/// Hugging Face name of token ids)?
pub fn is_language_model(model: &Model) -> bool {
    data_inputs(model)
        .iter()
        .any(|i| i.name == INPUT_IDS && probe::input_dtype(i) == Some(DataType::Int64))
}

/// Reads the LM signature of `model`, or explains why it cannot be trained.
pub fn detect(model: &Model) -> Result<LmSignature> {
    let name = model.display_name();
    let inputs = data_inputs(model);
    let has = |n: &str| inputs.iter().any(|i| i.name == n);
    if has("use_cache_branch") || model.graph().node.iter().any(|n| n.op_type == "If") {
        bail!(
            "{name} is a merged decoder (an If node chooses between the with-cache and without-cache graphs), and koala cannot differentiate control flow; use the decoder without the merge: Optimum writes it as decoder_model.onnx (or decoder_with_past_model.onnx) next to decoder_model_merged.onnx, or export with `optimum-cli export onnx --task text-generation-with-past --no-post-process`, or with torch.onnx.export"
        );
    }
    if !has(INPUT_IDS) {
        bail!("{name} has no '{INPUT_IDS}' input, so it is not a causal language model koala can train (inputs: {})", inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "));
    }
    let ids = inputs
        .iter()
        .find(|i| i.name == INPUT_IDS)
        .expect("checked above");
    let rank = declared_dims(ids).len();
    // No declared shape (rank 0 here) is left to the probe.
    if rank != 0 && rank != 2 {
        bail!("{name}'s input '{INPUT_IDS}' has rank {rank}, but a causal language model takes token ids as [batch, sequence]; if this model is not a language model, pass --task image-classification");
    }
    let mut past = Vec::new();
    for i in &inputs {
        let n = i.name.as_str();
        if [INPUT_IDS, ATTENTION_MASK, POSITION_IDS].contains(&n) {
            continue;
        }
        if !n.starts_with("past_key_values.") && !n.starts_with("past_key_values_") {
            bail!(
                "{name} has an input '{n}' that koala does not know how to feed to a language model (known: {INPUT_IDS}, {ATTENTION_MASK}, {POSITION_IDS}, past_key_values.*); re-export with the text-generation signature"
            );
        }
        let dims = declared_dims(i);
        let (Some(Some(heads)), Some(Some(head_dim))) = (dims.get(1), dims.get(3)) else {
            bail!(
                "{name}: past input '{n}' must be [batch, kv_heads, past_sequence, head_dim] with kv_heads and head_dim fixed, got {dims:?}"
            );
        };
        past.push(PastInput {
            name: n.to_string(),
            dtype: probe::input_dtype(i).unwrap_or(DataType::Float),
            heads: *heads as usize,
            head_dim: *head_dim as usize,
        });
    }
    Ok(LmSignature {
        input_ids: INPUT_IDS.into(),
        attention_mask: has(ATTENTION_MASK).then(|| ATTENTION_MASK.to_string()),
        position_ids: has(POSITION_IDS).then(|| POSITION_IDS.to_string()),
        past,
    })
}

impl LmSignature {
    /// Input shapes for training batches of `batch × seq` tokens (the past
    /// has length 0).
    pub fn input_shapes(&self, batch: usize, seq: usize) -> InputShapes {
        let mut s: InputShapes = [(self.input_ids.clone(), vec![batch, seq])]
            .into_iter()
            .collect();
        for n in self.attention_mask.iter().chain(&self.position_ids) {
            s.insert(n.clone(), vec![batch, seq]);
        }
        for p in &self.past {
            s.insert(p.name.clone(), vec![batch, p.heads, 0, p.head_dim]);
        }
        s
    }

    /// Position ids for right-padded rows: `0, 1, …` along each row (what
    /// Hugging Face computes from an all-ones mask; right padding does not
    /// shift the real tokens' positions).
    pub fn position_ids_for(batch: usize, seq: usize) -> Vec<i64> {
        (0..batch).flat_map(|_| 0..seq as i64).collect()
    }
}
