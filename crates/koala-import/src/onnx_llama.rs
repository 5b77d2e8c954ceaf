//! The Llama forward as a standard ONNX graph (opset 17), in the form koala
//! trains: the same ops `torch.onnx.export` writes for
//! `tests/fixtures/reference/gen/llama_export.py` (`LlamaLMWithPast`), every
//! one of which has a gradient rule.
//!
//! - Inputs `input_ids`, `attention_mask`, `position_ids` (int64 `[B, T]`;
//!   the mask is `[B, P+T]`) and, with a KV cache, `past_key_values.{i}.key`
//!   / `.value` `[B, KV, P, hd]`; outputs `logits [B, T, V]` (and
//!   `present.{i}.key/value [B, KV, P+T, hd]`). Optimum's names, so
//!   `koala generate` uses the cache and training feeds P = 0.
//! - Weights keep HF names and the HF `[out, in]` layout, each used through
//!   a `Transpose`; a tied head is the one `model.embed_tokens.weight` read by
//!   `Gather` and by the head's `MatMul`.
//! - RoPE cos/sin are computed in the graph from `position_ids` with a
//!   `Constant` inv_freq: every float initializer is a trainable weight.
//! - RMSNorm is `Pow, ReduceMean, Add, Sqrt, Div, Mul` (HF `LlamaRMSNorm`);
//!   GQA repeats key/value heads by `Unsqueeze, Expand, Reshape`; blocked
//!   scores get f32's lowest value (as HF does) so a fully padded row stays
//!   finite.

use crate::llama_config::LlamaConfig;
use crate::Tensor;
use anyhow::{bail, Result};
use koala_graph::attrs::{a_int, a_ints, a_tensor};
use koala_graph::proto::{
    dimension, type_proto, AttributeProto, DataType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use koala_graph::tensor;
use std::collections::BTreeMap;

/// The default-domain opset the graph is written for (the fixtures' opset;
/// ReduceMean still takes `axes` as an attribute here).
pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17 (what torch.onnx writes).
const IR_VERSION: i64 = 8;

/// Options of the emitted graph.
#[derive(Clone, Copy, Debug)]
pub struct GraphOptions {
    /// Add Optimum's `past_key_values.*` inputs and `present.*` outputs.
    pub with_past: bool,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions { with_past: true }
    }
}

/// The initializers the graph reads, in file order, with their shapes.
pub fn expected_tensors(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, d],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.input_layernorm.weight"), vec![d]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        if c.attention_bias {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    v.push(("model.norm.weight".to_string(), vec![d]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
    }
    v
}

/// Checks `tensors` holds exactly what the graph reads, with the right
/// shapes. A tied checkpoint may carry a copy of the embedding as
/// `lm_head.weight` (some exporters write it): it must equal the embedding
/// and is dropped. `source` names the checkpoint for errors.
pub fn check_tensors(
    c: &LlamaConfig,
    tensors: &mut BTreeMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    if c.tie_word_embeddings {
        if let Some(head) = tensors.remove("lm_head.weight") {
            let same = tensors
                .get("model.embed_tokens.weight")
                .is_some_and(|e| e.data == head.data);
            if !same {
                bail!("{source}: the config says the head is tied to the embedding (tie_word_embeddings), but lm_head.weight differs from model.embed_tokens.weight; fix tie_word_embeddings in the config");
            }
        }
    }
    let expected = expected_tensors(c);
    for (name, shape) in &expected {
        let Some(t) = tensors.get(name) else {
            bail!("{source}: tensor '{name}' (shape {shape:?}) is missing; the checkpoint is incomplete or its config does not match it");
        };
        if &t.shape != shape {
            bail!(
                "{source}: tensor '{name}' has shape {:?} but the config implies {shape:?}; the checkpoint does not match its config",
                t.shape
            );
        }
        if t.data.len() != shape.iter().product::<usize>() {
            bail!("{source}: tensor '{name}' holds {} values for shape {shape:?}; the file is corrupt", t.data.len());
        }
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| !expected.iter().any(|(n, _)| n == *k))
    {
        bail!("{source}: tensor '{extra}' is not part of the decoder koala builds for this config (is it another architecture, or a bias the config does not declare?)");
    }
    Ok(())
}

/// Builds the ONNX model. `tensors` must have passed [`check_tensors`].
/// Each tensor is dropped once copied into its initializer, so the f32
/// weights are held once, not twice.
pub fn build(
    c: &LlamaConfig,
    mut tensors: BTreeMap<String, Tensor>,
    opts: GraphOptions,
) -> ModelProto {
    let mut g = Builder::default();
    for (name, shape) in expected_tensors(c) {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = tensors.remove(&name).expect("checked by check_tensors");
        g.initializers.push(tensor::from_f32(&name, &dims, &t.data));
    }
    let mut inputs = vec![
        int_input("input_ids", &["batch_size", "sequence_length"]),
        int_input(
            "attention_mask",
            &["batch_size", "past_sequence_length + sequence_length"],
        ),
        int_input("position_ids", &["batch_size", "sequence_length"]),
    ];
    let mut outputs = vec![float_info(
        "logits",
        &[
            Dim::P("batch_size"),
            Dim::P("sequence_length"),
            Dim::V(c.vocab_size),
        ],
    )];
    let kv_dims = |seq: &'static str| {
        [
            Dim::P("batch_size"),
            Dim::V(c.num_key_value_heads),
            Dim::P(seq),
            Dim::V(c.head_dim),
        ]
    };
    if opts.with_past {
        for i in 0..c.num_hidden_layers {
            for kind in ["key", "value"] {
                inputs.push(float_info(
                    &format!("past_key_values.{i}.{kind}"),
                    &kv_dims("past_sequence_length"),
                ));
                outputs.push(float_info(
                    &format!("present.{i}.{kind}"),
                    &kv_dims("past_sequence_length + sequence_length"),
                ));
            }
        }
    }
    let mut x = g.op(
        "Gather",
        &["model.embed_tokens.weight", "input_ids"],
        vec![a_int("axis", 0)],
    );
    let rope = rope_tables(&mut g, c);
    let blocked = attention_blocked(&mut g);
    for i in 0..c.num_hidden_layers {
        x = decoder_layer(&mut g, c, i, &x, &rope, &blocked, opts.with_past);
    }
    let h = rms_norm(&mut g, c, &x, "model.norm.weight");
    let head = if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    let wt = g.op("Transpose", &[head], vec![a_ints("perm", &[1, 0])]);
    g.op_into("MatMul", &[&h, &wt], "logits", vec![]);
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "koala import".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: format!("{}_causal_lm", c.architecture.model_type()),
            node: g.nodes,
            initializer: g.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        metadata_props: vec![StringStringEntryProto {
            key: "koala.architecture".into(),
            value: c.architecture.model_type().into(),
        }],
        ..Default::default()
    }
}

/// cos and sin of HF's default RoPE, `[B, 1, T, hd]`, from `position_ids`.
struct Rope {
    cos: String,
    sin: String,
}

fn rope_tables(g: &mut Builder, c: &LlamaConfig) -> Rope {
    let hd = c.head_dim;
    // HF: inv_freq = 1 / theta^(arange(0, hd, 2) / hd), computed in f32 there;
    // computed in f64 here and rounded once (at most 1 ulp from HF's).
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|j| (1.0 / (c.rope_theta as f64).powf((2 * j) as f64 / hd as f64)) as f32)
        .collect();
    let inv = g.const_f32(&inv_freq, &[(hd / 2) as i64]);
    let pos = g.op(
        "Cast",
        &["position_ids"],
        vec![a_int("to", DataType::Float as i64)],
    );
    let axis_last = g.const_i64(&[-1], &[1]);
    let pos = g.op("Unsqueeze", &[&pos, &axis_last], vec![]);
    let freqs = g.op("Mul", &[&pos, &inv], vec![]);
    let emb = g.op("Concat", &[&freqs, &freqs], vec![a_int("axis", -1)]);
    let axis_heads = g.const_i64(&[1], &[1]);
    let cos = g.op("Cos", &[&emb], vec![]);
    let cos = g.op("Unsqueeze", &[&cos, &axis_heads], vec![]);
    let sin = g.op("Sin", &[&emb], vec![]);
    let sin = g.op("Unsqueeze", &[&sin, &axis_heads], vec![]);
    Rope { cos, sin }
}

/// `[B, 1, T, S]` booleans, true where query t (at cache position P+t) may
/// *not* attend key s: s > P+t, or `attention_mask[b, s] == 0`.
fn attention_blocked(g: &mut Builder) -> String {
    let zero = g.const_i64(&[0], &[]);
    let one = g.const_i64(&[1], &[]);
    let ids_shape = g.op("Shape", &["input_ids"], vec![]);
    let t = g.op("Gather", &[&ids_shape, &one], vec![a_int("axis", 0)]);
    let mask_shape = g.op("Shape", &["attention_mask"], vec![]);
    let s = g.op("Gather", &[&mask_shape, &one], vec![a_int("axis", 0)]);
    let p = g.op("Sub", &[&s, &t], vec![]);
    let q_pos = g.op("Range", &[&p, &s, &one], vec![]);
    let k_pos = g.op("Range", &[&zero, &s, &one], vec![]);
    let axis0 = g.const_i64(&[0], &[1]);
    let axis1 = g.const_i64(&[1], &[1]);
    let k_row = g.op("Unsqueeze", &[&k_pos, &axis0], vec![]);
    let q_col = g.op("Unsqueeze", &[&q_pos, &axis1], vec![]);
    let causal = g.op("LessOrEqual", &[&k_row, &q_col], vec![]);
    let keep = g.op(
        "Cast",
        &["attention_mask"],
        vec![a_int("to", DataType::Bool as i64)],
    );
    let axes12 = g.const_i64(&[1, 2], &[2]);
    let keep = g.op("Unsqueeze", &[&keep, &axes12], vec![]);
    let allowed = g.op("And", &[&causal, &keep], vec![]);
    g.op("Not", &[&allowed], vec![])
}

/// `w * x / sqrt(mean(x^2) + eps)` over the last axis.
fn rms_norm(g: &mut Builder, c: &LlamaConfig, x: &str, weight: &str) -> String {
    let two = g.const_f32(&[2.0], &[]);
    let eps = g.const_f32(&[c.rms_norm_eps], &[]);
    let sq = g.op("Pow", &[x, &two], vec![]);
    let mean = g.op(
        "ReduceMean",
        &[&sq],
        vec![a_ints("axes", &[-1]), a_int("keepdims", 1)],
    );
    let var = g.op("Add", &[&mean, &eps], vec![]);
    let rms = g.op("Sqrt", &[&var], vec![]);
    let normed = g.op("Div", &[x, &rms], vec![]);
    g.op("Mul", &[&normed, weight], vec![])
}

/// `x @ W^T (+ b)` for an HF `[out, in]` weight.
fn linear(g: &mut Builder, x: &str, weight: &str, bias: Option<&str>) -> String {
    let wt = g.op("Transpose", &[weight], vec![a_ints("perm", &[1, 0])]);
    let y = g.op("MatMul", &[x, &wt], vec![]);
    match bias {
        Some(b) => g.op("Add", &[&y, b], vec![]),
        None => y,
    }
}

/// `[B, T, n*hd]` → `[B, n, T, hd]`.
fn split_heads(g: &mut Builder, x: &str, heads: usize, hd: usize) -> String {
    let shape = g.const_i64(&[0, 0, heads as i64, hd as i64], &[4]);
    let r = g.op("Reshape", &[x, &shape], vec![]);
    g.op("Transpose", &[&r], vec![a_ints("perm", &[0, 2, 1, 3])])
}

/// `t*cos + rotate_half(t)*sin`, rotate_half = `cat(-t2, t1)` (halves).
fn apply_rope(g: &mut Builder, t: &str, rope: &Rope, hd: usize) -> String {
    let half = (hd / 2) as i64;
    let axis = g.const_i64(&[-1], &[1]);
    let (s0, s1, s2) = (
        g.const_i64(&[0], &[1]),
        g.const_i64(&[half], &[1]),
        g.const_i64(&[hd as i64], &[1]),
    );
    let first = g.op("Slice", &[t, &s0, &s1, &axis], vec![]);
    let second = g.op("Slice", &[t, &s1, &s2, &axis], vec![]);
    let neg = g.op("Neg", &[&second], vec![]);
    let rot = g.op("Concat", &[&neg, &first], vec![a_int("axis", -1)]);
    let a = g.op("Mul", &[t, &rope.cos], vec![]);
    let b = g.op("Mul", &[&rot, &rope.sin], vec![]);
    g.op("Add", &[&a, &b], vec![])
}

/// HF `repeat_kv`: `[B, KV, S, hd]` → `[B, KV*rep, S, hd]`.
fn repeat_kv(g: &mut Builder, t: &str, c: &LlamaConfig) -> String {
    let rep = c.group_size();
    if rep == 1 {
        return t.to_string();
    }
    let axis = g.const_i64(&[2], &[1]);
    let u = g.op("Unsqueeze", &[t, &axis], vec![]);
    let shape = g.const_i64(&[1, 1, rep as i64, 1, 1], &[5]);
    let e = g.op("Expand", &[&u, &shape], vec![]);
    let out = g.const_i64(
        &[0, c.num_attention_heads as i64, -1, c.head_dim as i64],
        &[4],
    );
    g.op("Reshape", &[&e, &out], vec![])
}

fn decoder_layer(
    g: &mut Builder,
    c: &LlamaConfig,
    i: usize,
    x: &str,
    rope: &Rope,
    blocked: &str,
    with_past: bool,
) -> String {
    let p = format!("model.layers.{i}");
    let w = |s: &str| format!("{p}.{s}");
    let bias = |s: &str| {
        c.attention_bias
            .then(|| format!("{p}.self_attn.{s}_proj.bias"))
    };
    let (h_n, kv_n, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let h = rms_norm(g, c, x, &w("input_layernorm.weight"));
    let q = linear(g, &h, &w("self_attn.q_proj.weight"), bias("q").as_deref());
    let k = linear(g, &h, &w("self_attn.k_proj.weight"), bias("k").as_deref());
    let v = linear(g, &h, &w("self_attn.v_proj.weight"), bias("v").as_deref());
    let q = split_heads(g, &q, h_n, hd);
    let k = split_heads(g, &k, kv_n, hd);
    let v = split_heads(g, &v, kv_n, hd);
    let q = apply_rope(g, &q, rope, hd);
    let mut k = apply_rope(g, &k, rope, hd);
    let mut v = v;
    if with_past {
        let pk = format!("past_key_values.{i}.key");
        let pv = format!("past_key_values.{i}.value");
        k = g.op("Concat", &[&pk, &k], vec![a_int("axis", 2)]);
        v = g.op("Concat", &[&pv, &v], vec![a_int("axis", 2)]);
        g.op_into("Identity", &[&k], &format!("present.{i}.key"), vec![]);
        g.op_into("Identity", &[&v], &format!("present.{i}.value"), vec![]);
    }
    let kk = repeat_kv(g, &k, c);
    let vv = repeat_kv(g, &v, c);
    let kt = g.op("Transpose", &[&kk], vec![a_ints("perm", &[0, 1, 3, 2])]);
    let scores = g.op("MatMul", &[&q, &kt], vec![]);
    let scale = g.const_f32(&[1.0 / (hd as f32).sqrt()], &[]);
    let scores = g.op("Mul", &[&scores, &scale], vec![]);
    let lowest = g.const_f32(&[f32::MIN], &[]);
    let scores = g.op("Where", &[blocked, &lowest, &scores], vec![]);
    let probs = g.op("Softmax", &[&scores], vec![a_int("axis", -1)]);
    let y = g.op("MatMul", &[&probs, &vv], vec![]);
    let y = g.op("Transpose", &[&y], vec![a_ints("perm", &[0, 2, 1, 3])]);
    let merged = g.const_i64(&[0, 0, (h_n * hd) as i64], &[3]);
    let y = g.op("Reshape", &[&y, &merged], vec![]);
    let o = linear(g, &y, &w("self_attn.o_proj.weight"), None);
    let x = g.op("Add", &[x, &o], vec![]);
    let h2 = rms_norm(g, c, &x, &w("post_attention_layernorm.weight"));
    let gate = linear(g, &h2, &w("mlp.gate_proj.weight"), None);
    let up = linear(g, &h2, &w("mlp.up_proj.weight"), None);
    let sig = g.op("Sigmoid", &[&gate], vec![]);
    let silu = g.op("Mul", &[&gate, &sig], vec![]);
    let act = g.op("Mul", &[&silu, &up], vec![]);
    let down = linear(g, &act, &w("mlp.down_proj.weight"), None);
    g.op("Add", &[&x, &down], vec![])
}

/// Appends nodes with generated, unique output names.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<koala_graph::proto::TensorProto>,
}

impl Builder {
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("/{op}_{}", self.nodes.len());
        self.op_into(op, inputs, &out, attrs);
        out
    }

    fn op_into(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    fn const_f32(&mut self, v: &[f32], dims: &[i64]) -> String {
        let t = tensor::from_f32("", dims, v);
        self.op("Constant", &[], vec![a_tensor("value", t)])
    }

    fn const_i64(&mut self, v: &[i64], dims: &[i64]) -> String {
        let t = tensor::from_i64("", dims, v);
        self.op("Constant", &[], vec![a_tensor("value", t)])
    }
}

enum Dim {
    P(&'static str),
    V(usize),
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::P(p) => dimension::Value::DimParam(p.to_string()),
                Dim::V(v) => dimension::Value::DimValue(*v as i64),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

fn int_input(name: &str, dims: &[&'static str]) -> ValueInfoProto {
    let d: Vec<Dim> = dims.iter().map(|p| Dim::P(p)).collect();
    value_info(name, DataType::Int64, &d)
}

fn float_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    value_info(name, DataType::Float, dims)
}
