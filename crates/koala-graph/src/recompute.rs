//! Recomputation: cheap element-wise forward values are computed again in
//! the backward pass instead of being kept alive from the forward pass.
//!
//! A training step's memory peaks where the backward pass begins: every
//! forward value a gradient rule reads is alive at once. Some of those are
//! one element-wise op away from values the backward pass keeps anyway. In a
//! Llama MLP, `down(silu(gate)·up)` with `silu(g) = g·sigmoid(g)`: the rules
//! read `gate` and `up` (kept for the Mul rules) and also `sigmoid(gate)`,
//! `silu(gate)` and the product — three more `[tokens, intermediate]`
//! tensors per layer that are each one op from `gate` and `up`. RMSNorm's
//! `x/√(mean(x²)+ε)` and its scaled output are likewise one op from `x` and
//! the `[tokens, 1]` root. Recomputing them right before their first
//! backward reader turns them from values live across the whole backward
//! pass into short-lived ones: SmolLM2-135M at 4 × 128 tokens keeps about
//! 0.4 GiB less at the peak, for a few element-wise ops per layer.
//!
//! Rule: a forward node whose op is in [`RECOMPUTED`] is cloned when its
//! output is read by the backward pass and each of its inputs is available
//! there anyway — a graph input or initializer, a Constant, a value the
//! backward pass reads itself, or the output of another node cloned here
//! (chains like sigmoid → silu → product are recomputed together). The
//! clones read clones, are placed (in forward order) before the earliest
//! backward node that needs them, and every backward reader of the original
//! is redirected to its clone. Same op, same inputs: bitwise the same values,
//! so gradients do not change. ONNX Runtime's common-subexpression
//! elimination would merge a clone back into its original; the training
//! session turns that one optimizer off (`step.rs`).
//!
//! Tests: `crates/koala-graph/tests/recompute.rs`.

use crate::model::is_default_domain;
use crate::proto::NodeProto;
use std::collections::{HashMap, HashSet};

/// Ops cheap enough to run twice: element-wise ones (one pass over their output, no
/// reductions, no data-dependent indexing) and Reshape (a view in ONNX Runtime, which keeps
/// its input alive: a linear layer's flattened input is a Reshape of the value).
pub const RECOMPUTED: &[&str] = &[
    "Sigmoid", "Tanh", "Mul", "Div", "Add", "Sub", "Neg", "Reshape",
];

/// Ops of shape arithmetic: from shapes and constants they compute small int64 tensors,
/// which cost nothing to keep.
const SHAPE_OPS: &[&str] = &[
    "Shape",
    "Slice",
    "Concat",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Cast",
];

/// Values computed from shapes and constants alone (a `Shape` output, a `Constant`, and
/// shape arithmetic on them or on `available` initializers).
fn shape_values(forward: &[NodeProto], available: &HashSet<String>) -> HashSet<String> {
    let mut values: HashSet<String> = HashSet::new();
    for n in forward {
        let from_shapes = match n.op_type.as_str() {
            "Constant" | "Shape" => true,
            op if SHAPE_OPS.contains(&op) => n
                .input
                .iter()
                .all(|x| x.is_empty() || values.contains(x) || available.contains(x)),
            _ => false,
        };
        if from_shapes {
            values.extend(n.output.iter().cloned());
        }
    }
    values
}

/// Prefix of the clones' node and value names.
const PREFIX: &str = "koala_recompute/";

/// Clones eligible forward nodes (the first `n_forward` of `nodes`) into the backward part
/// (the rest); `available` holds the graph's inputs and initializers. Returns the
/// recomputed values as (original, clone) name pairs, in forward order (a clone has its
/// original's shape and type).
pub fn recompute_in_backward(
    nodes: &mut Vec<NodeProto>,
    n_forward: usize,
    available: &HashSet<String>,
) -> Vec<(String, String)> {
    // Each value the backward pass reads, with its first reader's index.
    let mut first_reader: HashMap<String, usize> = HashMap::new();
    for (k, n) in nodes.iter().enumerate().skip(n_forward) {
        for x in &n.input {
            first_reader.entry(x.clone()).or_insert(k);
        }
    }
    let shapes = shape_values(&nodes[..n_forward], available);
    let there = |x: &str| available.contains(x) || shapes.contains(x);
    // Forward order: which nodes could be recomputed from what the backward pass has.
    let mut recomputable: HashSet<String> = HashSet::new();
    for n in &nodes[..n_forward] {
        if is_default_domain(n)
            && RECOMPUTED.contains(&n.op_type.as_str())
            && n.output.len() == 1
            && n.input
                .iter()
                .all(|x| there(x) || recomputable.contains(x) || first_reader.contains_key(x))
        {
            recomputable.insert(n.output[0].clone());
        }
    }
    // Backward order: which of those are needed — read by the backward pass, or by a clone.
    let mut needed: HashSet<&str> = first_reader.keys().map(String::as_str).collect();
    let mut picked: Vec<usize> = Vec::new();
    for (i, n) in nodes[..n_forward].iter().enumerate().rev() {
        let out = n.output.first().map(String::as_str).unwrap_or("");
        if recomputable.contains(out) && needed.contains(out) {
            picked.push(i);
            needed.extend(n.input.iter().map(String::as_str));
        }
    }
    picked.reverse();
    if picked.is_empty() {
        return Vec::new();
    }
    // (original, clone) names, in forward order.
    let pairs: Vec<(String, String)> = picked
        .iter()
        .map(|&i| {
            let out = &nodes[i].output[0];
            (out.clone(), format!("{PREFIX}{out}"))
        })
        .collect();
    let cloned: HashMap<&str, &str> = pairs
        .iter()
        .map(|(o, c)| (o.as_str(), c.as_str()))
        .collect();
    // Where each clone must exist by: its own first backward reader, or the place of a
    // later clone that reads it (walk the picks backwards so readers are placed first).
    let mut position: HashMap<usize, usize> = HashMap::new(); // forward index → insert before
    for &i in picked.iter().rev() {
        let out = &nodes[i].output[0];
        let mut pos = first_reader.get(out).copied().unwrap_or(usize::MAX);
        for &j in &picked {
            if j > i && nodes[j].input.iter().any(|x| x == out) {
                pos = pos.min(position[&j]);
            }
        }
        position.insert(i, pos);
    }
    // Clones grouped by the node they go before, each group in forward order (so every
    // clone's inputs come before it).
    let mut insert_before: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    for (&i, (_, clone)) in picked.iter().zip(&pairs) {
        let mut c = nodes[i].clone();
        c.name = format!("{PREFIX}{}", nodes[i].name);
        redirect(&mut c, &cloned);
        c.output = vec![clone.clone()];
        insert_before.entry(position[&i]).or_default().push(c);
    }
    for n in nodes[n_forward..].iter_mut() {
        redirect(n, &cloned);
    }
    let old = std::mem::take(nodes);
    for (k, n) in old.into_iter().enumerate() {
        if let Some(pre) = insert_before.remove(&k) {
            nodes.extend(pre);
        }
        nodes.push(n);
    }
    pairs
}

/// Points `node`'s inputs at the clones of the values that have one.
fn redirect(node: &mut NodeProto, cloned: &HashMap<&str, &str>) {
    for x in node.input.iter_mut() {
        if let Some(y) = cloned.get(x.as_str()) {
            *x = y.to_string();
        }
    }
}
