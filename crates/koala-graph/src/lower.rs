//! Lowering: rewrite the ONNX Runtime–specific ops that real exports contain
//! into standard ONNX ops before the backward pass differentiates the graph
//! (tract's `Expansion` idea: a fused op is "wired" as primitives that already
//! have gradient rules). Export keeps the user's original graph; only the
//! training graph sees the lowered form.
//!
//! Every rewrite keeps the value names: each output the original node
//! produced is produced, under the same name, by the last node of its
//! replacement, so consumers and graph outputs are untouched. New values and
//! nodes are named `<node name or lower_<index>>/<what>`, made unique.
//! Constants are `Constant` nodes, never initializers, so they are never
//! selected as trainable weights.
//!
//! # The ops and their math
//!
//! Sources: ORT's operator schemas (`onnxruntime/core/graph/contrib_ops/
//! contrib_defs.cc`, `bert_defs.cc`, rendered in `docs/ContribOperators.md`)
//! and its CPU kernels (`onnxruntime/contrib_ops/cpu/skip_layer_norm.cc`,
//! `contrib_ops/cpu/bert/rotary_embedding.cc`, `core/providers/cpu/nn/
//! layer_norm_impl.cc`), the ONNX operator spec for RotaryEmbedding-23,
//! RMSNormalization-23 and LayerNormalization-17
//! (<https://onnx.ai/onnx/operators/onnx__RotaryEmbedding.html> and the
//! pages beside it; contrib ops:
//! <https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md>).
//! `tests/lower.rs` checks every rewrite against ORT's own kernels (ORT
//! 1.31.1 CPU), all outputs within 4.8e-7 in f32.
//!
//! * **SimplifiedLayerNormalization** (RMSNorm; ORT registers it in the default
//!   domain, exporters sometimes write `com.microsoft`; inputs X, scale; attrs
//!   `axis` = −1, `epsilon` = 1e‑5; outputs Y, optional `inv_std_var`), and the
//!   standard **RMSNormalization** (opset 23, output Y only):
//!   `inv_std_var = 1 / sqrt(mean(X², axes = axis..rank−1) + ε)` (kept dims),
//!   `Y = X · inv_std_var · scale`.
//! * **SkipSimplifiedLayerNormalization** (`com.microsoft`; input, skip, gamma,
//!   bias?; `epsilon` = 1e‑12; outputs output, mean, inv_std_var,
//!   input_skip_bias_sum): `s = input + skip (+ bias)` over the last axis, then
//!   RMSNorm of `s` with gamma; `input_skip_bias_sum = s`; `mean` is unused by
//!   RMSNorm and ORT writes zeros there, so the lowering writes
//!   `0 · inv_std_var`.
//! * **SkipLayerNormalization** (`com.microsoft`; input, skip, gamma, beta?,
//!   bias?; `epsilon` = 1e‑12; same four outputs): `s = input + skip (+ bias)`,
//!   then LayerNormalization over the last axis: `mean = mean(s)`,
//!   `inv_std_var = 1/sqrt(mean((s − mean)²) + ε)`,
//!   `output = (s − mean) · inv_std_var · gamma (+ beta)`. Opset ≥ 17: the
//!   standard `LayerNormalization` node (whose Mean/InvStdDev outputs are
//!   exactly mean/inv_std_var); below 17, and for f64 data (whose statistics
//!   that node could only declare f32), its decomposition. A default-domain
//!   **LayerNormalization** in a model of opset < 17 is ORT's private
//!   pre‑standard registration of the same op; it is decomposed the same way.
//!   `skip` may be `[B,S,H]`, `[1,S,H]` or `[S,H]`: ONNX broadcasting of `Add`
//!   covers each.
//! * **FastGelu** (`com.microsoft`; X, bias?): `x = X (+ bias)`,
//!   `Y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, written as
//!   `tanh(x·(α + β·x²))` with α = √(2/π), β = 0.044715·α (the schema's
//!   0.797885 and 0.035677, at full precision).
//! * **Gelu** (`com.microsoft`; exact): `Y = 0.5·x·(1 + erf(x/√2))`;
//!   **BiasGelu** (`com.microsoft`; A, B): the same of `x = A + B`.
//! * **QuickGelu** (`com.microsoft`; X; `alpha` = 1.702, as in CLIP):
//!   `Y = x · sigmoid(alpha·x)`.
//! * **RotaryEmbedding**, `com.microsoft` (input, position_ids, cos_cache,
//!   sin_cache; attrs interleaved, num_heads, rotary_embedding_dim, scale,
//!   is_packed_batching) and standard opset 23 (X, cos_cache, sin_cache,
//!   position_ids?; interleaved, num_heads, rotary_embedding_dim). Both rotate
//!   the first R = rotary_embedding_dim (0: the whole head) features of every
//!   head of the input — `[B,S,N·H]` (viewed as `[B,S,N,H]`) or `[B,N,S,H]` —
//!   and copy the remaining H − R unchanged. With `c, s = cos/sin_cache[pos]`
//!   (R/2 values per token) and the pairs `(x1, x2)` = halves `x[:R/2]`,
//!   `x[R/2:R]` (or, interleaved, `x[0:R:2]`, `x[1:R:2]`):
//!   `x1' = x1·c − x2·s`, `x2' = x1·s + x2·c`, written back to the same slots.
//!   Positions: contrib `position_ids` `[B,S]` (`pos[b,s]`) or one element
//!   (offset: `pos[0] + s`); ONNX-23 `[B,S]`, or absent with 3-D caches
//!   `[B,S,R/2]` already indexed. The semantics coincide (ONNX's reference
//!   implementation and ORT's `RunRotaryEmbedding` apply the same formula),
//!   so one lowering serves both. The contrib `scale` attribute only scales
//!   caches ORT would regenerate, which its CPU kernel does not do; it does not
//!   change the output. `is_packed_batching = 1` is not lowered.
//!
//! Element type: the rewrites compute in the element type of the node's data
//! input (f32 or f64), as ORT's kernels do for Y. ORT declares the
//! statistics outputs in `stash_type` precision (f32 by default) even for f64
//! data, so an f64 node whose statistics are used is left unlowered; 16-bit
//! data is not lowered.
//!
//! Not lowered (see [`unsupported_custom_ops`]): every other op of a
//! non-default domain (e.g. `com.microsoft::MatMulNBits`, `Attention`,
//! `GroupQueryAttention`) and ORT's few private default-domain ops.

use crate::attrs::{self, a_int, a_ints, a_tensor};
use crate::model::{node_label, Model};
use crate::proto::{
    dimension, type_proto, AttributeProto, DataType, GraphProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use crate::tensor;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// ONNX Runtime's contrib-op domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// The advice given for every op koala cannot lower.
pub const REMEDY: &str = "re-export the model without ONNX Runtime fusions or quantization, e.g. \
`optimum-cli export onnx` without `--optimize`/`-O1..-O4` (and without `onnxruntime.transformers.optimizer`), \
or `torch.onnx.export`; or freeze the weights before this node (--freeze '<regex>') if it only runs in the forward pass";

/// The remedy when ONNX Runtime itself has no kernel for the op: freezing cannot help, since
/// the forward pass cannot run either.
pub const REEXPORT: &str = "re-export the model with standard ONNX ops only, e.g. \
`optimum-cli export onnx` without `--optimize`/`-O1..-O4`, or `torch.onnx.export` (freezing weights \
does not help: ONNX Runtime cannot run this op even in the forward pass)";

/// ORT-only ops registered in the default domain (ORT's schemas minus the
/// ONNX standard, ORT 1.32), besides the ones lowered here.
const ORT_PRIVATE_DEFAULT_DOMAIN: &[&str] = &[
    "Affine",
    "Crop",
    "DynamicSlice",
    "GRUUnit",
    "GivenTensorFill",
    "ImageScaler",
    "ParametricSoftplus",
    "Scale",
    "ScaledTanh",
    "MemcpyFromHost",
    "MemcpyToHost",
];

/// What [`lower`] rewrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lowered {
    /// Rewritten nodes per op, keyed like `koala check`'s op histogram
    /// (`com.microsoft::FastGelu`; default-domain ops by their bare name).
    pub rewritten: BTreeMap<String, usize>,
    /// Standard nodes emitted in their place (Constant nodes included).
    pub nodes_added: usize,
    /// Nodes of ORT-specific ops left in place because they cannot be lowered
    /// (the same list [`unsupported_custom_ops`] returns afterwards).
    pub left: Vec<UnsupportedOp>,
    /// Initializers the rewritten ops read as fixed tables, not weights: the
    /// cos/sin caches of RotaryEmbedding. Precomputed from the positions,
    /// they are no model parameter (PyTorch keeps them as non-trainable
    /// buffers); training should leave them frozen.
    pub fixed_tables: Vec<String>,
}

impl Lowered {
    /// Number of nodes rewritten.
    pub fn total(&self) -> usize {
        self.rewritten.values().sum()
    }

    /// True when nothing was rewritten.
    pub fn is_empty(&self) -> bool {
        self.rewritten.is_empty()
    }
}

impl fmt::Display for Lowered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no ONNX Runtime ops to lower");
        }
        let ops: Vec<String> = self
            .rewritten
            .iter()
            .map(|(op, n)| format!("{op} ×{n}"))
            .collect();
        write!(
            f,
            "lowered {} ONNX Runtime node(s) into {} standard node(s): {}",
            self.total(),
            self.nodes_added,
            ops.join(", ")
        )
    }
}

/// A node of a custom domain (or an ORT-private default-domain op) that
/// koala cannot rewrite into standard ops.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedOp {
    /// Index of the node in the main graph.
    pub index: usize,
    /// The node's name (may be empty).
    pub name: String,
    /// Its op type.
    pub op_type: String,
    /// Its domain ("" for the default domain).
    pub domain: String,
    /// Why it cannot be lowered.
    pub reason: String,
}

impl UnsupportedOp {
    /// The node as `node #i 'name' (domain::Op)`.
    pub fn label(&self) -> String {
        let node = NodeProto {
            name: self.name.clone(),
            op_type: self.op_type.clone(),
            domain: self.domain.clone(),
            ..Default::default()
        };
        node_label(self.index, &node)
    }

    /// What to do about it.
    pub fn remedy(&self) -> &'static str {
        REMEDY
    }
}

impl UnsupportedOp {
    /// "domain 'x'", or `default` for the default domain.
    fn domain_phrase(&self, default: &str) -> String {
        if self.domain.is_empty() {
            default.to_string()
        } else {
            format!("domain '{}'", self.domain)
        }
    }
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.domain_phrase("the default domain (an ONNX Runtime–only op)");
        write!(
            f,
            "{}: op '{}' of {domain} cannot be lowered to standard ONNX ops ({}); {}",
            self.label(),
            self.op_type,
            self.reason,
            REMEDY
        )
    }
}

/// Rewrites, in place, every ORT-specific node koala knows (see the module
/// docs) into standard ONNX ops of the model's default-domain opset, keeping
/// every value name. Nodes it cannot lower stay and are listed in
/// [`Lowered::left`] (they only block training when a gradient must pass
/// through them, which the backward pass reports). Only the main graph is
/// rewritten: control-flow bodies are not differentiated anyway. `com.microsoft` is dropped from `opset_import` when no
/// node uses it any more. Errors only for malformed nodes (a required input
/// missing), naming the node.
pub fn lower(model: &mut Model) -> Result<Lowered> {
    let plan = plan(model);
    if !plan.malformed.is_empty() {
        bail!("{}", plan.malformed.join("\n"));
    }
    let mut lowered = Lowered {
        left: plan.unsupported,
        ..Default::default()
    };
    if plan.replacements.is_empty() {
        return Ok(lowered);
    }
    let mut removed_domains = HashSet::new();
    let mut replacements: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    {
        let g = model.graph();
        for (i, nodes) in plan.replacements {
            let n = &g.node[i];
            *lowered.rewritten.entry(op_key(n)).or_insert(0) += 1;
            for c in rotary_caches(n) {
                let is_init = g.initializer.iter().any(|t| t.name == c);
                if is_init && !lowered.fixed_tables.contains(&c) {
                    lowered.fixed_tables.push(c);
                }
            }
            lowered.nodes_added += nodes.len();
            removed_domains.insert(n.domain.clone());
            replacements.insert(i, nodes);
        }
    }
    let g = model.graph_mut();
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        match replacements.remove(&i) {
            Some(new) => g.node.extend(new),
            None => g.node.push(n),
        }
    }
    let used = used_domains(&model.proto);
    model.proto.opset_import.retain(|o| {
        is_default(&o.domain) || !removed_domains.contains(&o.domain) || used.contains(&o.domain)
    });
    Ok(lowered)
}

/// The cos/sin cache inputs of a RotaryEmbedding node (either form).
fn rotary_caches(n: &NodeProto) -> impl Iterator<Item = String> + '_ {
    let slots: &[usize] = match (n.op_type.as_str(), n.domain.as_str()) {
        ("RotaryEmbedding", MS_DOMAIN) => &[2, 3],
        ("RotaryEmbedding", _) => &[1, 2],
        _ => &[],
    };
    slots.iter().filter_map(|&k| n.input.get(k).cloned())
}

/// Every node of the main graph in a non-default domain, or an ORT-only op
/// in the default domain, that [`lower`] cannot rewrite — each with its
/// reason; its `Display` is the error message (node, op, domain, remedy).
/// Empty after a successful [`lower`] of a model with only lowerable ORT ops.
pub fn unsupported_custom_ops(model: &Model) -> Vec<UnsupportedOp> {
    plan(model).unsupported
}

/// The list for the case where ONNX Runtime cannot load the model at all (an op of a domain
/// it does not know): one line per node, then [`REEXPORT`].
pub fn unrunnable_message(ops: &[UnsupportedOp]) -> String {
    let lines: Vec<String> = ops
        .iter()
        .map(|o| {
            let domain = o.domain_phrase("the default domain");
            format!(
                "{}: op '{}' of {domain} has no ONNX Runtime kernel and no koala lowering",
                o.label(),
                o.op_type
            )
        })
        .collect();
    format!("{}; {REEXPORT}", lines.join("\n"))
}

/// `Display` of the whole list, one line per node, for an error.
pub fn unsupported_message(ops: &[UnsupportedOp]) -> String {
    ops.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_default(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

fn op_key(n: &NodeProto) -> String {
    if is_default(&n.domain) {
        n.op_type.clone()
    } else {
        format!("{}::{}", n.domain, n.op_type)
    }
}

/// Domains used by any node of the model (subgraphs and functions included).
fn used_domains(p: &crate::proto::ModelProto) -> HashSet<String> {
    fn walk(nodes: &[NodeProto], out: &mut HashSet<String>) {
        for n in nodes {
            out.insert(n.domain.clone());
            for a in &n.attribute {
                if let Some(g) = &a.g {
                    walk(&g.node, out);
                }
                for g in &a.graphs {
                    walk(&g.node, out);
                }
            }
        }
    }
    let mut out = HashSet::new();
    if let Some(g) = &p.graph {
        walk(&g.node, &mut out);
    }
    for f in &p.functions {
        out.insert(f.domain.clone());
        walk(&f.node, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// Planning: which nodes become what.

struct Plan {
    replacements: Vec<(usize, Vec<NodeProto>)>,
    unsupported: Vec<UnsupportedOp>,
    /// Messages for nodes that lack a required input or output.
    malformed: Vec<String>,
}

/// The ops this pass knows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// SimplifiedLayerNormalization / RMSNormalization (`has_inv`: the op
    /// declares the inv_std_var output).
    Rms {
        has_inv: bool,
    },
    SkipRms,
    SkipLayerNorm,
    /// Default-domain LayerNormalization below opset 17.
    LayerNormPre17,
    FastGelu,
    Gelu,
    BiasGelu,
    QuickGelu,
    RotaryMs,
    Rotary23,
}

fn kind_of(n: &NodeProto, opset: i64) -> Option<Kind> {
    let ms = n.domain == MS_DOMAIN;
    let std = is_default(&n.domain);
    Some(match n.op_type.as_str() {
        "SimplifiedLayerNormalization" if ms || std => Kind::Rms { has_inv: true },
        "RMSNormalization" if std && opset >= 23 => Kind::Rms { has_inv: false },
        "SkipSimplifiedLayerNormalization" if ms => Kind::SkipRms,
        "SkipLayerNormalization" if ms => Kind::SkipLayerNorm,
        "LayerNormalization" if std && opset < 17 => Kind::LayerNormPre17,
        "FastGelu" if ms => Kind::FastGelu,
        "Gelu" if ms => Kind::Gelu,
        "BiasGelu" if ms => Kind::BiasGelu,
        "QuickGelu" if ms => Kind::QuickGelu,
        "RotaryEmbedding" if ms => Kind::RotaryMs,
        "RotaryEmbedding" if std && opset >= 23 => Kind::Rotary23,
        _ => return None,
    })
}

/// Whether a node needs lowering or reporting at all.
fn is_ort_specific(n: &NodeProto) -> bool {
    !is_default(&n.domain) || ORT_PRIVATE_DEFAULT_DOMAIN.contains(&n.op_type.as_str())
}

fn plan(model: &Model) -> Plan {
    let opset = model.opset();
    let g = model.graph();
    let types = ValueTable::new(g);
    let mut names = Namer::new(g);
    let mut plan = Plan {
        replacements: Vec::new(),
        unsupported: Vec::new(),
        malformed: Vec::new(),
    };
    for (i, n) in g.node.iter().enumerate() {
        let unsupported = |reason: String| UnsupportedOp {
            index: i,
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            reason,
        };
        let Some(kind) = kind_of(n, opset) else {
            if is_ort_specific(n) {
                plan.unsupported.push(unsupported(
                    "koala has no lowering for it and no gradient rule".into(),
                ));
            }
            continue;
        };
        if let Err(what) = check_required_inputs(n, kind) {
            plan.malformed.push(format!(
                "{} {what}; the file is corrupt or was written by a broken exporter: re-export the model",
                node_label(i, n)
            ));
            plan.unsupported.push(unsupported(what));
            continue;
        }
        let base = if n.name.is_empty() {
            format!("lower_{i}")
        } else {
            n.name.clone()
        };
        let mut e = Emitter {
            names: &mut names,
            base,
            opset,
            nodes: Vec::new(),
        };
        match lower_node(&mut e, n, kind, &types) {
            Ok(()) => plan.replacements.push((i, e.nodes)),
            Err(Skip(reason)) => plan.unsupported.push(unsupported(reason)),
        }
    }
    plan
}

/// Inputs each op cannot do without (a malformed file otherwise).
fn check_required_inputs(n: &NodeProto, kind: Kind) -> std::result::Result<(), String> {
    let required: &[&str] = match kind {
        Kind::Rms { .. } => &["X", "scale"],
        Kind::SkipRms | Kind::SkipLayerNorm => &["input", "skip", "gamma"],
        Kind::LayerNormPre17 => &["X", "Scale"],
        Kind::FastGelu | Kind::Gelu | Kind::QuickGelu => &["X"],
        Kind::BiasGelu => &["A", "B"],
        Kind::RotaryMs => &["input", "position_ids", "cos_cache", "sin_cache"],
        Kind::Rotary23 => &["X", "cos_cache", "sin_cache"],
    };
    for (k, name) in required.iter().enumerate() {
        if n.input.get(k).is_none_or(|s| s.is_empty()) {
            return Err(format!("lacks its required input #{k} ({name})"));
        }
    }
    if n.output.first().is_none_or(|s| s.is_empty()) {
        return Err("has no first output".into());
    }
    Ok(())
}

/// A node that this pass recognises but cannot lower, with the reason.
struct Skip(String);

type Lowering = std::result::Result<(), Skip>;

fn lower_node(e: &mut Emitter, n: &NodeProto, kind: Kind, types: &ValueTable) -> Lowering {
    match kind {
        Kind::Rms { has_inv } => lower_rms(e, n, has_inv, types),
        Kind::SkipRms => lower_skip_norm(e, n, true, types),
        Kind::SkipLayerNorm => lower_skip_norm(e, n, false, types),
        Kind::LayerNormPre17 => lower_layer_norm_pre17(e, n, types),
        Kind::FastGelu => lower_fast_gelu(e, n, types),
        Kind::Gelu | Kind::BiasGelu => lower_gelu(e, n, types),
        Kind::QuickGelu => lower_quick_gelu(e, n, types),
        Kind::RotaryMs | Kind::Rotary23 => lower_rotary(e, n, kind, types),
    }
}

/// Optional input `k` (None when absent or empty).
fn input(n: &NodeProto, k: usize) -> Option<&str> {
    n.input.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

/// Optional output `k` (None when absent or empty).
fn output(n: &NodeProto, k: usize) -> Option<&str> {
    n.output
        .get(k)
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
}

/// The element type the rewrite computes in: that of `x`, f32 or f64.
fn float_type(types: &ValueTable, x: &str) -> std::result::Result<DataType, Skip> {
    match types.dtype(x) {
        Some(dt @ (DataType::Float | DataType::Double)) => Ok(dt),
        Some(other) => Err(Skip(format!(
            "its input '{x}' is {other:?}; koala lowers f32 and f64 only"
        ))),
        None => Err(Skip(format!(
            "the element type of its input '{x}' is unknown; run ONNX shape inference on the file (onnx.shape_inference.infer_shapes) so value_info records it"
        ))),
    }
}

/// ORT declares the statistics outputs (mean, inv_std_var) in the
/// `stash_type` precision, f32 by default, even for f64 data; the rewrite
/// computes them in the data's type and has no Cast to match, so an f64
/// node whose statistics are used is not lowered.
fn check_statistics_type(n: &NodeProto, dt: DataType, used: bool) -> std::result::Result<(), Skip> {
    let stash = attrs::int(n, "stash_type", DataType::Float as i64);
    if dt == DataType::Double && used && stash != DataType::Double as i64 {
        return Err(Skip(format!(
            "f64 data whose mean/inv_std_var outputs are f32 (stash_type = {stash}); koala lowers f64 norms only when those outputs are unused"
        )));
    }
    Ok(())
}

/// Negative axes `[axis, …, −1]` for "from `axis` to the last axis".
fn trailing_axes(axis: i64, x: &str, types: &ValueTable) -> std::result::Result<Vec<i64>, Skip> {
    let first = if axis < 0 {
        axis
    } else {
        let rank = types.rank(x).ok_or_else(|| {
            Skip(format!(
                "axis = {axis} counts from the front but the rank of '{x}' is unknown; run ONNX shape inference on the file"
            ))
        })? as i64;
        if axis >= rank {
            return Err(Skip(format!(
                "axis = {axis} is out of range for rank {rank}"
            )));
        }
        axis - rank
    };
    Ok((first..0).collect())
}

/// One normalization to emit.
struct Norm<'a> {
    /// Element type of the data (for the epsilon constant).
    dt: DataType,
    /// The data.
    x: &'a str,
    /// Per-feature scale (gamma).
    scale: &'a str,
    /// Per-feature shift (beta), LayerNorm only.
    bias: Option<&'a str>,
    /// Reduced axes, negative: `[axis, …, −1]`.
    axes: Vec<i64>,
    epsilon: f32,
}

/// Output names of a normalization; the statistics only when requested.
struct NormOutputs<'a> {
    y: &'a str,
    mean: Option<&'a str>,
    inv_std_var: Option<&'a str>,
}

/// RMSNorm: `Y = x · 1/sqrt(mean(x²) + ε) · scale`. Returns the
/// inv_std_var value.
fn rms_norm(e: &mut Emitter, norm: &Norm, out: &NormOutputs) -> String {
    let x = norm.x;
    let sq = e.op("Mul", &[x, x], vec![], "x_squared");
    let ms = e.reduce_mean(&sq, &norm.axes, None, "mean_square");
    let eps = e.scalar(norm.dt, norm.epsilon as f64, "epsilon");
    let v = e.op("Add", &[&ms, &eps], vec![], "mean_square_eps");
    let rms = e.op("Sqrt", &[&v], vec![], "rms");
    let inv = e.op_named(
        "Reciprocal",
        &[&rms],
        vec![],
        out.inv_std_var,
        "inv_std_var",
    );
    let normed = e.op("Mul", &[x, &inv], vec![], "normalized");
    e.op_into("Mul", &[&normed, norm.scale], vec![], out.y);
    inv
}

/// LayerNorm decomposed as the function body of ONNX
/// LayerNormalization-17: `mean = mean(x)`, `d = x − mean`,
/// `inv_std_var = 1/sqrt(mean(d²) + ε)`, `Y = d · inv_std_var · scale (+ bias)`.
fn layer_norm_decomposed(e: &mut Emitter, norm: &Norm, out: &NormOutputs) {
    let x = norm.x;
    let mean = e.reduce_mean(x, &norm.axes, out.mean, "mean");
    let d = e.op("Sub", &[x, &mean], vec![], "centered");
    let dd = e.op("Mul", &[&d, &d], vec![], "centered_squared");
    let var = e.reduce_mean(&dd, &norm.axes, None, "variance");
    let eps = e.scalar(norm.dt, norm.epsilon as f64, "epsilon");
    let v = e.op("Add", &[&var, &eps], vec![], "variance_eps");
    let sd = e.op("Sqrt", &[&v], vec![], "std_dev");
    let inv = e.op_named("Reciprocal", &[&sd], vec![], out.inv_std_var, "inv_std_var");
    let normed = e.op("Mul", &[&d, &inv], vec![], "normalized");
    match norm.bias {
        Some(b) => {
            let scaled = e.op("Mul", &[&normed, norm.scale], vec![], "scaled");
            e.op_into("Add", &[&scaled, b], vec![], out.y);
        }
        None => e.op_into("Mul", &[&normed, norm.scale], vec![], out.y),
    }
}

fn lower_rms(e: &mut Emitter, n: &NodeProto, has_inv: bool, types: &ValueTable) -> Lowering {
    let x = &n.input[0];
    let norm = Norm {
        dt: float_type(types, x)?,
        x,
        scale: &n.input[1],
        bias: None,
        axes: trailing_axes(attrs::int(n, "axis", -1), x, types)?,
        epsilon: attrs::float(n, "epsilon", 1e-5),
    };
    let out = NormOutputs {
        y: &n.output[0],
        mean: None,
        inv_std_var: if has_inv { output(n, 1) } else { None },
    };
    check_statistics_type(n, norm.dt, out.inv_std_var.is_some())?;
    rms_norm(e, &norm, &out);
    Ok(())
}

/// SkipLayerNormalization / SkipSimplifiedLayerNormalization.
fn lower_skip_norm(
    e: &mut Emitter,
    n: &NodeProto,
    simplified: bool,
    types: &ValueTable,
) -> Lowering {
    let x = &n.input[0];
    let dt = float_type(types, x)?;
    let (beta, bias) = if simplified {
        (None, input(n, 3))
    } else {
        (input(n, 3), input(n, 4))
    };
    let sum_out = output(n, 3);
    let sum = match bias {
        Some(b) => {
            let s = e.op("Add", &[x, &n.input[1]], vec![], "input_skip");
            e.op_named("Add", &[&s, b], vec![], sum_out, "input_skip_bias_sum")
        }
        None => e.op_named("Add", &[x, &n.input[1]], vec![], sum_out, "input_skip_sum"),
    };
    let norm = Norm {
        dt,
        x: &sum,
        scale: &n.input[2],
        bias: beta,
        axes: vec![-1],
        epsilon: attrs::float(n, "epsilon", 1e-12),
    };
    let out = NormOutputs {
        y: &n.output[0],
        mean: output(n, 1),
        inv_std_var: output(n, 2),
    };
    check_statistics_type(n, dt, out.mean.is_some() || out.inv_std_var.is_some())?;
    if simplified {
        let no_mean = NormOutputs { mean: None, ..out };
        let inv = rms_norm(e, &norm, &no_mean);
        if let Some(m) = out.mean {
            let zero = e.scalar(dt, 0.0, "zero");
            e.op_into("Mul", &[&inv, &zero], vec![], m);
        }
    } else if e.opset >= 17 && dt == DataType::Float {
        standard_layer_norm(e, &norm, &out);
    } else {
        layer_norm_decomposed(e, &norm, &out);
    }
    Ok(())
}

/// One ONNX LayerNormalization-17 node over the last axis (f32 data only:
/// the spec allows Mean/InvStdDev in f32 or bf16, so f64 data, whose ORT
/// kernel keeps f64 statistics, takes the decomposition instead).
fn standard_layer_norm(e: &mut Emitter, norm: &Norm, out: &NormOutputs) {
    let mut ins = vec![norm.x, norm.scale];
    ins.extend(norm.bias);
    let mut outs = vec![out.y];
    match (out.mean, out.inv_std_var) {
        (m, Some(i)) => outs.extend([m.unwrap_or(""), i]),
        (Some(m), None) => outs.push(m),
        (None, None) => {}
    }
    let attrs = vec![a_int("axis", -1), attrs::a_float("epsilon", norm.epsilon)];
    e.push("LayerNormalization", &ins, &outs, attrs);
}

fn lower_layer_norm_pre17(e: &mut Emitter, n: &NodeProto, types: &ValueTable) -> Lowering {
    let x = &n.input[0];
    let norm = Norm {
        dt: float_type(types, x)?,
        x,
        scale: &n.input[1],
        bias: input(n, 2),
        axes: trailing_axes(attrs::int(n, "axis", -1), x, types)?,
        epsilon: attrs::float(n, "epsilon", 1e-5),
    };
    let out = NormOutputs {
        y: &n.output[0],
        mean: output(n, 1),
        inv_std_var: output(n, 2),
    };
    check_statistics_type(n, norm.dt, out.mean.is_some() || out.inv_std_var.is_some())?;
    layer_norm_decomposed(e, &norm, &out);
    Ok(())
}

/// √(2/π): the tanh approximation of GELU (Hendrycks & Gimpel 2016), the
/// schema's 0.797885.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// 0.044715: the cubic coefficient of the tanh approximation (Hendrycks & Gimpel 2016).
const GELU_CUBIC: f64 = 0.044_715;

fn lower_fast_gelu(e: &mut Emitter, n: &NodeProto, types: &ValueTable) -> Lowering {
    let dt = float_type(types, &n.input[0])?;
    let x = match input(n, 1) {
        Some(b) => e.op("Add", &[&n.input[0], b], vec![], "biased"),
        None => n.input[0].clone(),
    };
    let x2 = e.op("Mul", &[&x, &x], vec![], "x_squared");
    let beta = e.scalar(dt, GELU_CUBIC * SQRT_2_OVER_PI, "beta");
    let bx2 = e.op("Mul", &[&x2, &beta], vec![], "beta_x_squared");
    let alpha = e.scalar(dt, SQRT_2_OVER_PI, "alpha");
    let poly = e.op("Add", &[&bx2, &alpha], vec![], "poly");
    let inner = e.op("Mul", &[&x, &poly], vec![], "inner");
    let t = e.op("Tanh", &[&inner], vec![], "tanh");
    half_x_times_one_plus(e, dt, &x, &t, &n.output[0]);
    Ok(())
}

/// `y = 0.5·x·(1 + t)`.
fn half_x_times_one_plus(e: &mut Emitter, dt: DataType, x: &str, t: &str, y: &str) {
    let one = e.scalar(dt, 1.0, "one");
    let p = e.op("Add", &[t, &one], vec![], "one_plus");
    let half = e.scalar(dt, 0.5, "half");
    let hx = e.op("Mul", &[x, &half], vec![], "half_x");
    e.op_into("Mul", &[&hx, &p], vec![], y);
}

fn lower_gelu(e: &mut Emitter, n: &NodeProto, types: &ValueTable) -> Lowering {
    let dt = float_type(types, &n.input[0])?;
    let x = if n.op_type == "BiasGelu" {
        e.op("Add", &[&n.input[0], &n.input[1]], vec![], "biased")
    } else {
        n.input[0].clone()
    };
    let r = e.scalar(dt, std::f64::consts::FRAC_1_SQRT_2, "inv_sqrt2");
    let s = e.op("Mul", &[&x, &r], vec![], "scaled");
    let erf = e.op("Erf", &[&s], vec![], "erf");
    half_x_times_one_plus(e, dt, &x, &erf, &n.output[0]);
    Ok(())
}

fn lower_quick_gelu(e: &mut Emitter, n: &NodeProto, types: &ValueTable) -> Lowering {
    let x = &n.input[0];
    let dt = float_type(types, x)?;
    let alpha = e.scalar(dt, attrs::float(n, "alpha", 1.702) as f64, "alpha");
    let ax = e.op("Mul", &[x, &alpha], vec![], "alpha_x");
    let gate = e.op("Sigmoid", &[&ax], vec![], "gate");
    e.op_into("Mul", &[x, &gate], vec![], &n.output[0]);
    Ok(())
}

/// Where the rotation angles of each token come from.
enum Positions<'a> {
    /// `[B,S]` position ids: gather rows of the `[max_pos, R/2]` caches.
    PerToken(&'a str),
    /// One element: rows `pos[0] .. pos[0] + S` of the caches.
    Offset(&'a str),
    /// No ids (ONNX-23): the caches are `[B,S,R/2]` already.
    Indexed,
}

/// A RotaryEmbedding node, validated and with its sizes resolved.
struct Rope<'a> {
    x: &'a str,
    cos: &'a str,
    sin: &'a str,
    positions: Positions<'a>,
    /// 3 (`[B,S,N·H]`) or 4 (`[B,N,S,H]`).
    rank: usize,
    num_heads: i64,
    /// Rotated features per head (R).
    rotary_dim: i64,
    interleaved: bool,
    /// Whether features past R may exist (they pass through unchanged).
    pass_through: bool,
}

fn rotary_params<'a>(
    n: &'a NodeProto,
    kind: Kind,
    types: &ValueTable,
) -> std::result::Result<Rope<'a>, Skip> {
    let ms = kind == Kind::RotaryMs;
    let (x, cos, sin, pos) = if ms {
        (&n.input[0], &n.input[2], &n.input[3], input(n, 1))
    } else {
        (&n.input[0], &n.input[1], &n.input[2], input(n, 3))
    };
    if ms && attrs::int(n, "is_packed_batching", 0) != 0 {
        return Err(Skip(
            "is_packed_batching = 1 (packed token batches) is not supported".into(),
        ));
    }
    let rank = types.rank(x).ok_or_else(|| {
        Skip(format!(
            "the rank of its input '{x}' (3 or 4) is unknown; run ONNX shape inference on the file"
        ))
    })?;
    if rank != 3 && rank != 4 {
        return Err(Skip(format!(
            "its input '{x}' has rank {rank}; RotaryEmbedding takes rank 3 or 4"
        )));
    }
    let positions = match pos {
        None => Positions::Indexed,
        Some(p) => match types.rank(p) {
            Some(2) => Positions::PerToken(p),
            Some(0 | 1) if ms => Positions::Offset(p),
            Some(r) => {
                let or_offset = if ms { " or one element" } else { "" };
                return Err(Skip(format!(
                    "position_ids '{p}' has rank {r}; expected [batch, sequence]{or_offset}"
                )));
            }
            None => {
                return Err(Skip(format!(
                    "the rank of position_ids '{p}' is unknown (it decides between per-token ids and an offset); run ONNX shape inference on the file"
                )))
            }
        },
    };
    let num_heads = attrs::int(n, "num_heads", 0);
    let rd = attrs::int(n, "rotary_embedding_dim", 0);
    // R: with rotary_embedding_dim = 0 the whole head, whose size is twice
    // the caches' last dimension (ORT's rotary_embedding_helper.h derives
    // head_size the same way).
    let r = if rd > 0 {
        rd
    } else {
        let last = types
            .dims(cos)
            .and_then(|d| d.last().copied().flatten())
            .ok_or_else(|| {
                Skip(format!(
                    "the shape of cos_cache '{cos}' is unknown and rotary_embedding_dim is 0; store the caches as initializers"
                ))
            })?;
        2 * last
    };
    if r % 2 != 0 {
        return Err(Skip(format!("the rotary dimension {r} is odd")));
    }
    Ok(Rope {
        x,
        cos,
        sin,
        positions,
        rank,
        num_heads,
        rotary_dim: r,
        interleaved: attrs::int(n, "interleaved", 0) != 0,
        pass_through: rd > 0 && head_size(types, x, rank, num_heads) != Some(r),
    })
}

fn lower_rotary(e: &mut Emitter, n: &NodeProto, kind: Kind, types: &ValueTable) -> Lowering {
    let rope = rotary_params(n, kind, types)?;
    // View as 4-D: [B,S,N,H] (3-D input) or [B,N,S,H] (4-D input).
    let x4 = if rope.rank == 3 {
        let target = if rope.num_heads > 0 {
            [0, 0, rope.num_heads, -1]
        } else {
            [0, 0, -1, rope.rotary_dim]
        };
        e.reshape(rope.x, &target, "heads")
    } else {
        rope.x.to_string()
    };
    let (c, s) = rotary_angles(e, &rope);
    let y = n.output[0].as_str();
    let y4 = rotate(e, &rope, &x4, &c, &s, (rope.rank == 4).then_some(y));
    if rope.rank == 3 {
        let shape = e.ints(&[0, 0, -1], "merged_heads");
        e.op_into("Reshape", &[&y4, &shape], vec![], y);
    }
    Ok(())
}

/// cos and sin of every token's angles, shaped to broadcast against the
/// 4-D view's `[.., R/2]` halves.
fn rotary_angles(e: &mut Emitter, rope: &Rope) -> (String, String) {
    // Axis of the sequence in the input, and of the heads in the view.
    let (seq_axis, head_axis) = if rope.rank == 3 { (1, 2) } else { (2, 1) };
    let (cos, sin) = (rope.cos, rope.sin);
    match rope.positions {
        Positions::PerToken(p) => {
            let c = e.op("Gather", &[cos, p], vec![a_int("axis", 0)], "cos");
            let s = e.op("Gather", &[sin, p], vec![a_int("axis", 0)], "sin");
            (
                e.unsqueeze(&c, &[head_axis], "cos_b"),
                e.unsqueeze(&s, &[head_axis], "sin_b"),
            )
        }
        Positions::Indexed => (
            e.unsqueeze(cos, &[head_axis], "cos_b"),
            e.unsqueeze(sin, &[head_axis], "sin_b"),
        ),
        Positions::Offset(p) => {
            let shape1 = e.ints(&[1], "one_elem");
            let start = e.op("Reshape", &[p, &shape1], vec![], "first_position");
            let shape = e.op("Shape", &[rope.x], vec![], "input_shape");
            let len = e.slice(&shape, seq_axis, seq_axis + 1, 0, 1, "sequence_length");
            let end = e.op("Add", &[&start, &len], vec![], "last_position");
            let axis0 = e.ints(&[0], "axis0");
            let c = e.op("Slice", &[cos, &start, &end, &axis0], vec![], "cos");
            let s = e.op("Slice", &[sin, &start, &end, &axis0], vec![], "sin");
            if rope.rank == 3 {
                // [S,R/2] → [S,1,R/2] against [B,S,N,R/2].
                (
                    e.unsqueeze(&c, &[1], "cos_b"),
                    e.unsqueeze(&s, &[1], "sin_b"),
                )
            } else {
                (c, s) // [S,R/2] broadcasts against [B,N,S,R/2].
            }
        }
    }
}

/// The rotation of the 4-D view `x4` (into `out` when given).
fn rotate(e: &mut Emitter, rope: &Rope, x4: &str, c: &str, s: &str, out: Option<&str>) -> String {
    let r = rope.rotary_dim;
    let (x1, x2) = if rope.interleaved {
        (
            e.slice(x4, 0, r, -1, 2, "x_even"),
            e.slice(x4, 1, r, -1, 2, "x_odd"),
        )
    } else {
        (
            e.slice(x4, 0, r / 2, -1, 1, "x_first_half"),
            e.slice(x4, r / 2, r, -1, 1, "x_second_half"),
        )
    };
    let x1c = e.op("Mul", &[&x1, c], vec![], "x1_cos");
    let x2s = e.op("Mul", &[&x2, s], vec![], "x2_sin");
    let re = e.op("Sub", &[&x1c, &x2s], vec![], "rotated1");
    let x1s = e.op("Mul", &[&x1, s], vec![], "x1_sin");
    let x2c = e.op("Mul", &[&x2, c], vec![], "x2_cos");
    let im = e.op("Add", &[&x1s, &x2c], vec![], "rotated2");
    let rotated_out = if rope.pass_through { None } else { out };
    let last_axis = || vec![a_int("axis", -1)];
    let rotated = if rope.interleaved {
        // Back to pairs: [.., R/2, 2] → [.., R].
        let re1 = e.unsqueeze(&re, &[-1], "rotated1_pair");
        let im1 = e.unsqueeze(&im, &[-1], "rotated2_pair");
        let pairs = e.op("Concat", &[&re1, &im1], last_axis(), "pairs");
        let shape = e.ints(&[0, 0, 0, r], "shape");
        e.op_named("Reshape", &[&pairs, &shape], vec![], rotated_out, "rotated")
    } else {
        e.op_named("Concat", &[&re, &im], last_axis(), rotated_out, "rotated")
    };
    if !rope.pass_through {
        return rotated;
    }
    // ORT copies the features past R unchanged.
    let pass = e.slice(x4, r, i64::MAX, -1, 1, "pass_through");
    e.op_named(
        "Concat",
        &[&rotated, &pass],
        last_axis(),
        out,
        "rotated_all",
    )
}

/// The head size when rotary_embedding_dim is set, if the shapes tell it.
fn head_size(types: &ValueTable, x: &str, rank: usize, num_heads: i64) -> Option<i64> {
    let dims = types.dims(x)?;
    match rank {
        4 => dims[3],
        _ if num_heads > 0 => dims[2].map(|h| h / num_heads),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Emitting standard nodes.

/// Hands out value/node names not used anywhere in the graph.
pub(crate) struct Namer {
    used: HashSet<String>,
}

impl Namer {
    pub(crate) fn new(g: &GraphProto) -> Namer {
        let mut used: HashSet<String> = HashSet::new();
        used.extend(g.input.iter().map(|v| v.name.clone()));
        used.extend(g.output.iter().map(|v| v.name.clone()));
        used.extend(g.value_info.iter().map(|v| v.name.clone()));
        used.extend(g.initializer.iter().map(|t| t.name.clone()));
        for n in &g.node {
            used.extend(n.output.iter().cloned());
            used.insert(n.name.clone());
        }
        Namer { used }
    }

    pub(crate) fn fresh(&mut self, want: String) -> String {
        let mut name = want.clone();
        let mut k = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{want}_{k}");
            k += 1;
        }
        name
    }
}

/// Emits the replacement nodes of one original node.
pub(crate) struct Emitter<'a> {
    pub(crate) names: &'a mut Namer,
    pub(crate) base: String,
    pub(crate) opset: i64,
    pub(crate) nodes: Vec<NodeProto>,
}

impl Emitter<'_> {
    pub(crate) fn push(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) {
        let name = self.names.fresh(format!("{}/{op}", self.base));
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    pub(crate) fn value(&mut self, hint: &str) -> String {
        self.names.fresh(format!("{}/{hint}", self.base))
    }

    /// A node with one fresh output.
    pub(crate) fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        hint: &str,
    ) -> String {
        self.op_named(op, inputs, attrs, None, hint)
    }

    /// A node writing the given output name, or a fresh one.
    fn op_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        out: Option<&str>,
        hint: &str,
    ) -> String {
        let out = match out {
            Some(o) => o.to_string(),
            None => self.value(hint),
        };
        self.push(op, inputs, &[&out], attrs);
        out
    }

    /// A node writing exactly `out` (an output of the original node).
    pub(crate) fn op_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        out: &str,
    ) {
        self.push(op, inputs, &[out], attrs);
    }

    pub(crate) fn constant(&mut self, t: TensorProto, hint: &str) -> String {
        let out = self.value(hint);
        self.push("Constant", &[], &[&out], vec![a_tensor("value", t)]);
        out
    }

    /// A scalar of element type `dt`.
    pub(crate) fn scalar(&mut self, dt: DataType, v: f64, hint: &str) -> String {
        let t = match dt {
            DataType::Double => tensor::from_f64("value", &[], &[v]),
            _ => tensor::from_f32("value", &[], &[v as f32]),
        };
        self.constant(t, hint)
    }

    /// An int64 vector.
    pub(crate) fn ints(&mut self, v: &[i64], hint: &str) -> String {
        self.constant(tensor::from_i64("value", &[v.len() as i64], v), hint)
    }

    /// ReduceMean with kept dims, in the opset's form (axes attribute < 18,
    /// input ≥ 18).
    fn reduce_mean(&mut self, x: &str, axes: &[i64], out: Option<&str>, hint: &str) -> String {
        if self.opset >= 18 {
            let a = self.ints(axes, "axes");
            self.op_named(
                "ReduceMean",
                &[x, &a],
                vec![a_int("keepdims", 1)],
                out,
                hint,
            )
        } else {
            let attrs = vec![a_ints("axes", axes), a_int("keepdims", 1)];
            self.op_named("ReduceMean", &[x], attrs, out, hint)
        }
    }

    /// Unsqueeze in the opset's form (axes attribute < 13, input ≥ 13).
    fn unsqueeze(&mut self, x: &str, axes: &[i64], hint: &str) -> String {
        if self.opset >= 13 {
            let a = self.ints(axes, "axes");
            self.op("Unsqueeze", &[x, &a], vec![], hint)
        } else {
            self.op("Unsqueeze", &[x], vec![a_ints("axes", axes)], hint)
        }
    }

    /// `x[start:end:step]` along `axis` (Slice with inputs, opset ≥ 10).
    fn slice(&mut self, x: &str, start: i64, end: i64, axis: i64, step: i64, hint: &str) -> String {
        let s = self.ints(&[start], "starts");
        let en = self.ints(&[end], "ends");
        let a = self.ints(&[axis], "axes");
        let st = self.ints(&[step], "steps");
        self.op("Slice", &[x, &s, &en, &a, &st], vec![], hint)
    }

    fn reshape(&mut self, x: &str, shape: &[i64], hint: &str) -> String {
        let s = self.ints(shape, "shape");
        self.op("Reshape", &[x, &s], vec![], hint)
    }
}

// ---------------------------------------------------------------------------
// What the file says about element types and shapes (no runtime needed).

/// Element types and (partial) shapes of values, from initializers,
/// Constant nodes and declared value infos, with element types carried
/// forward through the nodes for values nothing declares.
pub(crate) struct ValueTable {
    dtypes: HashMap<String, DataType>,
    /// Dimensions (None for symbolic ones) of values whose rank is known.
    dims: HashMap<String, Vec<Option<i64>>>,
    /// Values of small constant integer tensors (Reshape targets, axes).
    ints: HashMap<String, Vec<i64>>,
}

impl ValueTable {
    pub(crate) fn new(g: &GraphProto) -> ValueTable {
        let mut t = ValueTable {
            dtypes: HashMap::new(),
            dims: HashMap::new(),
            ints: HashMap::new(),
        };
        for v in g.input.iter().chain(&g.value_info).chain(&g.output) {
            t.declare(v);
        }
        for init in &g.initializer {
            t.tensor(&init.name, init);
        }
        for n in &g.node {
            if n.op_type == "Constant" {
                if let (Some(o), Some(v)) = (
                    n.output.first(),
                    attrs::get(n, "value").and_then(|a| a.t.as_ref()),
                ) {
                    t.tensor(o, v);
                }
            }
            t.propagate(n);
            t.propagate_rank(n);
        }
        t
    }

    fn declare(&mut self, v: &ValueInfoProto) {
        let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return;
        };
        if let Ok(dt) = DataType::try_from(tt.elem_type) {
            if dt != DataType::Undefined {
                self.dtypes.insert(v.name.clone(), dt);
            }
        }
        if let Some(shape) = &tt.shape {
            let dims = shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(k)) if k >= 0 => Some(k),
                    _ => None,
                })
                .collect();
            self.dims.insert(v.name.clone(), dims);
        }
    }

    fn tensor(&mut self, name: &str, t: &TensorProto) {
        if let Ok(dt) = tensor::data_type(t) {
            self.dtypes.insert(name.to_string(), dt);
        }
        self.dims
            .insert(name.to_string(), t.dims.iter().map(|&d| Some(d)).collect());
        if t.dims.len() <= 1 && tensor::numel(&t.dims) <= 16 {
            if let (Ok(DataType::Int64 | DataType::Int32), Ok(v)) =
                (tensor::data_type(t), tensor::to_i64(t))
            {
                self.ints.insert(name.to_string(), v);
            }
        }
    }

    /// Ranks of values nothing declares, through the ops exporters put in
    /// front of normalizations and RotaryEmbedding (projections, reshapes,
    /// transposes, elementwise math). Dimensions stay unknown.
    fn propagate_rank(&mut self, n: &NodeProto) {
        let rank_of = |k: usize| {
            n.input
                .get(k)
                .filter(|s| !s.is_empty())
                .and_then(|i| self.dims.get(i))
                .map(|d| d.len())
        };
        let axes_len = || {
            attrs::ints(n, "axes").map(|a| a.len()).or_else(|| {
                n.input
                    .get(1)
                    .and_then(|a| self.ints.get(a))
                    .map(|a| a.len())
            })
        };
        let rank = match n.op_type.as_str() {
            "Identity"
            | "Cast"
            | "Relu"
            | "Sigmoid"
            | "Tanh"
            | "Erf"
            | "Sqrt"
            | "Neg"
            | "Exp"
            | "Log"
            | "Abs"
            | "Reciprocal"
            | "Softmax"
            | "LogSoftmax"
            | "Dropout"
            | "Slice"
            | "Concat"
            | "Clip"
            | "Transpose"
            | "Gelu"
            | "FastGelu"
            | "QuickGelu"
            | "LayerNormalization"
            | "SimplifiedLayerNormalization"
            | "SkipLayerNormalization"
            | "SkipSimplifiedLayerNormalization"
            | "RMSNormalization"
            | "RotaryEmbedding"
            | "Trilu"
            | "CumSum"
            | "MatMulNBits"
            | "Softplus"
            | "HardSigmoid"
            | "LeakyRelu"
            | "Split" => rank_of(0),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Where" | "Max" | "Min" | "Mod" | "Equal"
            | "Less" | "Greater" | "And" | "Or" | "BiasGelu" => (0..n.input.len())
                .map(rank_of)
                .collect::<Option<Vec<usize>>>()
                .and_then(|r| r.into_iter().max()),
            "MatMul" => match (rank_of(0), rank_of(1)) {
                (Some(a), Some(b)) if a >= 2 && b >= 2 => Some(a.max(b)),
                _ => None,
            },
            "Reshape" => n
                .input
                .get(1)
                .and_then(|s| self.ints.get(s))
                .map(|v| v.len()),
            "Unsqueeze" => rank_of(0).zip(axes_len()).map(|(r, a)| r + a),
            "Squeeze" => rank_of(0)
                .zip(axes_len())
                .and_then(|(r, a)| r.checked_sub(a)),
            "Gather" => rank_of(0)
                .zip(rank_of(1))
                .and_then(|(a, b)| (a + b).checked_sub(1)),
            "Shape" => Some(1),
            "Gemm" | "Flatten" => Some(2),
            _ => None,
        };
        let Some(rank) = rank else { return };
        let outputs = if n.op_type == "Split" {
            &n.output[..]
        } else {
            &n.output[..n.output.len().min(1)]
        };
        for o in outputs.iter().filter(|o| !o.is_empty()) {
            self.dims
                .entry(o.clone())
                .or_insert_with(|| vec![None; rank]);
        }
    }

    /// Output element types of a node whose outputs nothing declares: the
    /// ops that change the type are named, every other op keeps the type of
    /// its first (data) input.
    fn propagate(&mut self, n: &NodeProto) {
        let first_known = |k: usize| n.input.get(k).and_then(|i| self.dtypes.get(i)).copied();
        let dt = match n.op_type.as_str() {
            "Cast" => DataType::try_from(attrs::int(n, "to", 0) as i32).ok(),
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(DataType::Int64),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And"
            | "Or" | "Xor" | "IsNaN" | "IsInf" => Some(DataType::Bool),
            "Where" => first_known(1),
            "ConstantOfShape" => attrs::get(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| tensor::data_type(t).ok())
                .or(Some(DataType::Float)),
            "DequantizeLinear" => first_known(1),
            "Constant" => None,
            _ => first_known(0),
        };
        let Some(dt) = dt else { return };
        for (k, o) in n.output.iter().enumerate() {
            // Only the first output is sure to share the type (TopK's
            // indices, LayerNormalization's statistics may differ).
            if k == 0 && !o.is_empty() {
                self.dtypes.entry(o.clone()).or_insert(dt);
            }
        }
    }

    pub(crate) fn dtype(&self, name: &str) -> Option<DataType> {
        self.dtypes.get(name).copied()
    }

    fn dims(&self, name: &str) -> Option<&[Option<i64>]> {
        self.dims.get(name).map(|d| d.as_slice())
    }

    pub(crate) fn rank(&self, name: &str) -> Option<usize> {
        self.dims.get(name).map(|d| d.len())
    }
}
