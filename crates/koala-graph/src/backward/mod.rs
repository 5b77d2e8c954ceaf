//! The backward-graph generator: reverse-mode differentiation of an ONNX
//! graph, written out as standard ONNX operators.
//!
//! One rule per op family lives in a file named after it. A rule is a plain
//! function from the forward node and the gradients of its outputs to the
//! gradients of its inputs, expressed as new nodes emitted through
//! [`GradCtx`]. The pass here walks the nodes that lie on a path from a
//! trainable weight to the loss in reverse topological order, sums fan-out
//! gradients, and leaves integer/shape subgraphs alone.

mod activation;
mod batchnorm;
mod concat_split;
mod conv;
mod ctx;
mod einsum;
mod elementwise;
mod gather;
mod gemm;
mod instancenorm;
mod layernorm;
mod lrn;
pub use lrn::ort_refusals as lrn_ort_refusals;
mod math;
mod matmul;
mod pool;
mod reduce;
mod resize;
mod shape_ops;
mod slice_pad;
mod softmax;
mod table;
mod tile_expand;
mod where_;

pub use ctx::{broadcast_shape, norm_axis, GradCtx};
pub use gather::EmbeddingGrad;
pub use resize::{interpolation_matrices, AxisMatrix};
pub use table::{
    is_non_differentiable, rule_entry, rule_for, supported_op_names, supported_ops_markdown,
    NonDifferentiable, RuleEntry, NON_DIFFERENTIABLE, RULES,
};

use crate::model::node_label;
use crate::proto::{DataType, NodeProto};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};

/// What a rule receives.
pub struct RuleInput<'a> {
    /// The forward node.
    pub node: &'a NodeProto,
    /// Gradient of each output (None: no gradient flows into that output).
    pub dy: &'a [Option<String>],
    /// For each input: does the caller need its gradient?
    pub needs: &'a [bool],
    /// Options that select between equivalent formulations.
    pub options: &'a BackwardOptions,
}

impl RuleInput<'_> {
    /// Input `i` of the forward node ("" when absent).
    pub fn input(&self, i: usize) -> &str {
        self.node.input.get(i).map(|s| s.as_str()).unwrap_or("")
    }
    /// Output `i` of the forward node.
    pub fn output(&self, i: usize) -> &str {
        self.node.output.get(i).map(|s| s.as_str()).unwrap_or("")
    }
    /// Does input `i` need a gradient?
    pub fn need(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }
    /// The gradient of the first output (rules for single-output ops).
    pub fn dy0(&self) -> Result<&str> {
        self.dy
            .first()
            .and_then(|d| d.as_deref())
            .context("no gradient reaches the node's first output")
    }
    /// A result vector with no gradients, sized for the node's inputs.
    pub fn none(&self) -> Vec<Option<String>> {
        vec![None; self.node.input.len()]
    }
}

/// A gradient rule.
pub type Rule = fn(&mut GradCtx, &RuleInput) -> Result<Vec<Option<String>>>;

/// How the Conv weight gradient is written (both are standard ONNX; which is
/// faster depends on the runtime's kernels, so it is measured, see benches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvWeightGrad {
    /// The measured-fastest choice per conv on ORT's CPU kernels: dense convs
    /// with a small patch (the stem conv, Cin·taps ≤ 64) as im2col + one
    /// batched GEMM, all others as `TransposedConv`.
    #[default]
    Auto,
    /// One Conv with input and output-gradient transposed (batch as channels)
    /// for every non-pointwise conv.
    TransposedConv,
    /// `Auto`, and depthwise convs as shifted slices of the input times the
    /// output gradient, summed per kernel tap.
    UnfoldDepthwise,
}

/// Which runtime the training graph is written for. The exported model is standard ONNX
/// either way; only the internal training graph differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionTarget {
    /// Stock ONNX Runtime: 2-D convolutions (forward and gradients) run on ORT's blocked
    /// `com.microsoft.nchwc` kernels where the CPU has them (see `nchwc.rs`), with the
    /// gradient formulations that are fastest on those kernels. Falls back to `Portable`
    /// where ORT has no blocked kernels.
    #[default]
    Ort,
    /// Standard ONNX operators only (any runtime; the reference for tests).
    Portable,
}

/// Options of the backward generator.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackwardOptions {
    /// The runtime the training graph is written for.
    #[serde(default)]
    pub target: ExecutionTarget,
    /// Formulation of the Conv weight gradient.
    pub conv_weight_grad: ConvWeightGrad,
    /// Keep Conv → BatchNormalization as two nodes instead of folding BN
    /// into the Conv weights (see `fold.rs`; folding is faster and the
    /// default).
    #[serde(default)]
    pub keep_batchnorm: bool,
    /// Formulation of the gradient of a Gather on a weight (embeddings).
    #[serde(default)]
    pub embedding_grad: EmbeddingGrad,
    /// Recompute cheap element-wise forward values in the backward pass instead of keeping
    /// them (`recompute.rs`); on by default.
    #[serde(default = "yes")]
    pub recompute: bool,
}

fn yes() -> bool {
    true
}

impl Default for BackwardOptions {
    fn default() -> Self {
        BackwardOptions {
            target: ExecutionTarget::default(),
            conv_weight_grad: ConvWeightGrad::default(),
            keep_batchnorm: false,
            embedding_grad: EmbeddingGrad::default(),
            recompute: true,
        }
    }
}

/// Values that depend on a trainable weight through float computations.
/// Integer outputs (Shape, ArgMax, …) and the ops of
/// [`NON_DIFFERENTIABLE`] (Floor, comparisons, …) stop the propagation: no
/// gradient flows through shape arithmetic or piecewise-constant functions.
pub fn grad_reachable(
    nodes: &[NodeProto],
    trainable: &[String],
    is_float: impl Fn(&str) -> bool,
) -> HashSet<String> {
    let mut live: HashSet<String> = trainable.iter().cloned().collect();
    for n in nodes {
        if is_non_differentiable(n) {
            continue;
        }
        if reads(n).into_iter().any(|i| live.contains(i)) {
            live.extend(
                n.output
                    .iter()
                    .filter(|o| !o.is_empty() && is_float(o))
                    .cloned(),
            );
        }
    }
    live
}

/// Every value a node reads: its inputs plus whatever its subgraphs (If,
/// Loop, Scan bodies) read, which includes the outer values they capture.
/// Without the captured ones a weight used only inside a branch would look
/// disconnected from the loss: it would silently get no gradient through the
/// branch instead of the error that names the control-flow node. (Names the
/// subgraph defines itself are included too; they are never trainable
/// values, so the over-approximation is harmless.)
pub(crate) fn reads(node: &NodeProto) -> Vec<&str> {
    let mut out: Vec<&str> = node.input.iter().map(|s| s.as_str()).collect();
    for a in &node.attribute {
        for g in a.g.iter().map(|g| g.as_ref()).chain(&a.graphs) {
            out.extend(g.node.iter().flat_map(reads));
        }
    }
    out
}

/// Nodes that need a rule: on a path from a trainable weight to `target`.
pub fn nodes_on_path(nodes: &[NodeProto], live: &HashSet<String>, target: &str) -> Vec<usize> {
    let mut wanted: HashSet<&str> = HashSet::from([target]);
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| wanted.contains(o.as_str()))
            && reads(n).into_iter().any(|x| live.contains(x))
        {
            out.push(i);
            for x in reads(n) {
                if live.contains(x) {
                    wanted.insert(x);
                }
            }
        }
    }
    out.reverse();
    out
}

/// Runs reverse-mode differentiation from `target` (whose gradient is the
/// value `seed`) back to every name in `wrt`. Returns, for each of `wrt`, the
/// name of its gradient value (None when no path connects it to `target`).
pub fn differentiate(
    ctx: &mut GradCtx,
    nodes: &[NodeProto],
    wrt: &[String],
    target: &str,
    seed: &str,
    options: &BackwardOptions,
) -> Result<Vec<Option<String>>> {
    let live = grad_reachable(nodes, wrt, |v| {
        ctx.dtype(v)
            .is_ok_and(|d| matches!(d, DataType::Float | DataType::Double))
    });
    let order = nodes_on_path(nodes, &live, target);
    let mut pending: HashMap<String, Vec<String>> = HashMap::new();
    pending.insert(target.to_string(), vec![seed.to_string()]);
    for &idx in order.iter().rev() {
        let node = &nodes[idx];
        let dy: Vec<Option<String>> = node
            .output
            .iter()
            .map(|o| take_sum(ctx, &mut pending, o))
            .collect::<Result<_>>()?;
        if dy.iter().all(|d| d.is_none()) {
            continue;
        }
        let needs: Vec<bool> = node.input.iter().map(|i| live.contains(i)).collect();
        let rule = rule_for(node, ctx.opset()).with_context(|| {
            missing_rule_message(idx, node, ctx.opset())
                + &needs_gradient_remedy(nodes, idx, &live, wrt)
        })?;
        ctx.set_scope(if node.name.is_empty() {
            &node.op_type
        } else {
            &node.name
        });
        let input = RuleInput {
            node,
            dy: &dy,
            needs: &needs,
            options,
        };
        let dx = rule(ctx, &input)
            .with_context(|| format!("while writing the gradient of {}", node_label(idx, node)))?;
        for (i, g) in dx.into_iter().enumerate() {
            if let (Some(g), true) = (g, needs.get(i).copied().unwrap_or(false)) {
                pending.entry(node.input[i].clone()).or_default().push(g);
            }
        }
    }
    wrt.iter().map(|w| take_sum(ctx, &mut pending, w)).collect()
}

/// Removes and sums the gradient contributions of a value (fan-out).
fn take_sum(
    ctx: &mut GradCtx,
    pending: &mut HashMap<String, Vec<String>>,
    value: &str,
) -> Result<Option<String>> {
    let Some(parts) = pending.remove(value) else {
        return Ok(None);
    };
    Ok(Some(match parts.len() {
        1 => parts.into_iter().next().unwrap(),
        _ => {
            let shape = ctx.shape(value)?;
            let dt = ctx.dtype(value)?;
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            ctx.emit_shaped("Sum", &refs, vec![], dt, shape)
        }
    }))
}

/// The error text for an op without a gradient rule: the node and op, and
/// why. [`needs_gradient_remedy`] adds which tensor needs the gradient and
/// what to freeze.
pub fn missing_rule_message(idx: usize, node: &NodeProto, opset: i64) -> String {
    let other_opsets = RULES.iter().find(|e| e.op == node.op_type);
    let what = if let (Some(e), true) = (
        other_opsets,
        node.domain.is_empty() || node.domain == "ai.onnx",
    ) {
        format!(
            "has a gradient rule in koala only for opsets {}–{}, not {opset}",
            e.min_opset, e.max_opset
        )
    } else if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        format!(
            "is a custom-domain op ('{}'), which koala cannot differentiate",
            node.domain
        )
    } else if matches!(node.op_type.as_str(), "If" | "Loop" | "Scan") {
        "is control flow, which koala cannot differentiate".to_string()
    } else {
        "has no gradient rule in koala".to_string()
    };
    format!("{} {what}", node_label(idx, node))
}

/// Which inputs of node `idx` need a gradient (they depend on a trainable
/// weight), which trainable weights they depend on, and the `--freeze` flag
/// that removes the need: freezing exactly those weights leaves no gradient
/// to pass through the node. (Advice to "freeze the layers before it" alone
/// fails when the tensor needing the gradient is a weight of the node itself.)
pub fn needs_gradient_remedy(
    nodes: &[NodeProto],
    idx: usize,
    live: &HashSet<String>,
    trainable: &[String],
) -> String {
    let node = &nodes[idx];
    let needed: Vec<&str> = node
        .input
        .iter()
        .filter(|i| live.contains(*i))
        .map(|s| s.as_str())
        .collect();
    let upstream = upstream_weights(nodes, &needed, trainable);
    let shown: Vec<String> = needed.iter().map(|n| format!("'{n}'")).collect();
    let alternatives: Vec<String> = upstream.iter().map(|w| regex::escape(w)).collect();
    let freeze = format!("--freeze '^({})$'", alternatives.join("|"));
    let listed = if upstream.len() <= 6 {
        upstream.join(", ")
    } else {
        format!(
            "{}, … ({} in all)",
            upstream[..6].join(", "),
            upstream.len()
        )
    };
    format!(
        "; its input {} needs a gradient because it depends on the trainable weight(s) {listed}. Freeze them so no gradient has to pass through {}: {freeze} (or re-export the model without this op). Supported ops: {}",
        shown.join(", "),
        node.op_type,
        supported_op_names().join(", ")
    )
}

/// The trainable weights that `values` depend on (in `trainable` order).
pub fn upstream_weights(nodes: &[NodeProto], values: &[&str], trainable: &[String]) -> Vec<String> {
    let mut wanted: HashSet<String> = values.iter().map(|v| v.to_string()).collect();
    for n in nodes.iter().rev() {
        if n.output.iter().any(|o| wanted.contains(o)) {
            wanted.extend(reads(n).into_iter().map(str::to_string));
        }
    }
    trainable
        .iter()
        .filter(|w| wanted.contains(*w))
        .cloned()
        .collect()
}
