//! Finding and replacing the final classifier ("head") for a new number of
//! classes.
//!
//! The head is the last layer whose output axis is the classes, found by
//! walking back from the chosen graph output (see `classifier_output.rs`)
//! through class-preserving ops ([`CLASS_PRESERVING`]: Identity, Flatten,
//! Reshape, Squeeze, Relu, Dropout, average/max pooling, Softmax,
//! LogSoftmax). Three forms are recognised:
//!
//! * a Gemm (ResNet, VGG, AlexNet), its weight an initializer or a Reshape
//!   of one (Inception v1's `Reshape(loss3/classifier_w_0, [1000, 1024])`);
//! * a MatMul, optionally followed by a bias Add;
//! * a Conv (SqueezeNet's `conv10` → Relu → GlobalAveragePool → Softmax,
//!   DenseNet's GlobalAveragePool → `fc6` Conv 1×1), group 1.
//!
//! Its weight and bias keep their names (so export stays recognisable) and
//! get new shapes and a fresh initialisation, reproducible from a seed:
//! PyTorch's nn.Linear / nn.Conv2d default, U(−1/√fan_in, 1/√fan_in) for
//! both (fan_in = input features, or C_in·kH·kW for a Conv) — except a head
//! with a bias followed by a Relu (SqueezeNet), which starts with zero
//! weights and bias [`RELU_HEAD_BIAS`] so that no class starts dead behind
//! the Relu. A Reshape
//! between the head and the output whose constant shape names the old class
//! count (`[1, 1000]`, `[-1, 1000]`) is rewritten to the new count, or the
//! new head would break the graph; so is the declared shape of every output
//! of the head, and, in IR < 4 files that list initializers as graph inputs,
//! the declared shape of the weight, bias and shape inputs.

use crate::classifier_output::ClassifierOutput;
use crate::model::{node_label, Model};
use crate::proto::{dimension, type_proto, GraphProto, TensorProto, ValueInfoProto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Ops between a head and the output that keep the class axis as it is.
pub const CLASS_PRESERVING: &[&str] = &[
    "Identity",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Relu",
    "Dropout",
    "GlobalAveragePool",
    "AveragePool",
    "GlobalMaxPool",
    "MaxPool",
    "Softmax",
    "LogSoftmax",
];

/// The kind of layer a head is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Gemm; `trans_b` says the weight's rows are the classes.
    Gemm {
        /// The Gemm's `transB`.
        trans_b: bool,
    },
    /// MatMul (optionally + Add): weight `[in, classes]`.
    MatMul,
    /// Conv, group 1: weight `[classes, C_in, kH, kW]`.
    Conv,
}

/// A classifier head found in a model (what `--num-classes` replaces).
#[derive(Clone, Debug)]
pub struct Head {
    /// The node label of the head (index, name, op).
    pub node: String,
    /// The head's op (Gemm, MatMul, Conv).
    pub op: String,
    /// The node's name (may be empty).
    pub name: String,
    /// The kind of layer.
    pub kind: HeadKind,
    /// Weight initializer name.
    pub weight: String,
    /// Its shape.
    pub weight_dims: Vec<i64>,
    /// Bias initializer name, if any.
    pub bias: Option<String>,
    /// Number of classes the head has now.
    pub classes: usize,
    /// The axis of the weight initializer that holds the classes.
    class_axis: usize,
    /// The Reshape between the weight initializer and the Gemm, if any.
    weight_reshape: Option<usize>,
    /// Reshape nodes between the head and the output.
    reshapes: Vec<usize>,
    /// A Relu between the head and the output (SqueezeNet's `conv10` → Relu),
    /// whose zero region a fresh head must not start in (see [`replace_head`]).
    pub relu_after: Option<String>,
}

impl Head {
    /// One line for `check`: `head: Conv 'conv10' (1000 classes, weight conv10_w_0
    /// [1000,512,1,1]) — --num-classes N replaces it`; with the run's `--num-classes`,
    /// what it becomes.
    pub fn describe(&self, num_classes: Option<usize>) -> String {
        let name = if self.name.is_empty() {
            self.node.clone()
        } else {
            format!("{} '{}'", self.op, self.name)
        };
        let dims = self
            .weight_dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let what = match num_classes {
            Some(n) => format!("--num-classes {n} replaces it with a fresh {n}-class layer"),
            None => "--num-classes N replaces it".into(),
        };
        format!(
            "head: {name} ({} classes, weight {} [{dims}]) — {what}",
            self.classes, self.weight
        )
    }
}

/// What was replaced.
#[derive(Clone, Debug)]
pub struct HeadReplacement {
    /// The node label of the head.
    pub node: String,
    /// Weight initializer name.
    pub weight: String,
    /// Bias initializer name, if any.
    pub bias: Option<String>,
    /// Old and new number of outputs.
    pub classes: (usize, usize),
    /// Shape tensors of Reshapes rewritten to the new class count.
    pub reshapes: Vec<String>,
}

fn producer(g: &GraphProto, v: &str) -> Option<usize> {
    g.node.iter().position(|n| n.output.iter().any(|o| o == v))
}

fn initializer<'a>(g: &'a GraphProto, v: &str) -> Option<&'a TensorProto> {
    g.initializer.iter().find(|t| t.name == v)
}

/// Finds the head that produces `choice`'s output (see the module docs).
pub fn find_head(model: &Model, choice: &ClassifierOutput) -> Result<Head> {
    let name = model.display_name();
    let g = model.graph();
    let mut value = choice.output.clone();
    let mut reshapes = Vec::new();
    let mut relu_after = None;
    let mut idx =
        producer(g, &value).with_context(|| format!("{name}: no node produces '{value}'"))?;
    while CLASS_PRESERVING.contains(&g.node[idx].op_type.as_str()) && !g.node[idx].input.is_empty()
    {
        match g.node[idx].op_type.as_str() {
            "Reshape" => reshapes.push(idx),
            "Relu" => relu_after = Some(node_label(idx, &g.node[idx])),
            _ => {}
        }
        value = g.node[idx].input[0].clone();
        idx = producer(g, &value).with_context(|| format!("{name}: no node produces '{value}'"))?;
    }
    let node = &g.node[idx];
    let label = node_label(idx, node);
    let is_init = |v: &str| initializer(g, v).is_some();
    let bias_of = |i: usize| node.input.get(i).filter(|b| is_init(b)).cloned();
    let (kind, weight, bias, weight_reshape) = match node.op_type.as_str() {
        "Gemm" if node.input.len() > 1 => {
            let trans_b = crate::attrs::int(node, "transB", 0) != 0;
            let kind = HeadKind::Gemm { trans_b };
            if is_init(&node.input[1]) {
                (kind, node.input[1].clone(), bias_of(2), None)
            } else {
                match producer(g, &node.input[1]).filter(|&r| {
                    let r = &g.node[r];
                    r.op_type == "Reshape" && r.input.len() == 2 && is_init(&r.input[0])
                }) {
                    Some(r) if trans_b => (kind, g.node[r].input[0].clone(), bias_of(2), Some(r)),
                    Some(_) => bail!("{name}: the classifier {label} reads its weight through a Reshape without transB=1; koala cannot replace that head"),
                    None => bail!("{name}: the classifier {label} has no initializer weight (its input '{}' is computed); koala cannot replace the head", node.input[1]),
                }
            }
        }
        "Add" => {
            let (mm, b) = if is_init(&node.input[1]) {
                (&node.input[0], &node.input[1])
            } else {
                (&node.input[1], &node.input[0])
            };
            let mi = producer(g, mm)
                .filter(|&i| g.node[i].op_type == "MatMul" && is_init(&g.node[i].input[1]));
            match mi {
                Some(i) if is_init(b) => (HeadKind::MatMul, g.node[i].input[1].clone(), Some(b.clone()), None),
                _ => bail!("{name}: the output comes from {label}, which is not MatMul+Add with initializer weights; koala cannot find the classifier to replace"),
            }
        }
        "MatMul" if is_init(&node.input[1]) => (HeadKind::MatMul, node.input[1].clone(), None, None),
        "Conv" if node.input.len() > 1 && is_init(&node.input[1]) => {
            let group = crate::attrs::int(node, "group", 1);
            if group != 1 {
                bail!("{name}: the classifier {label} is a grouped Conv (group {group}); koala replaces Conv heads of group 1 only");
            }
            (HeadKind::Conv, node.input[1].clone(), bias_of(2), None)
        }
        _ => bail!("{name}: the output comes from {label}, not from a Gemm, MatMul(+Add) or Conv classifier (walking back through {}); koala cannot replace the head", CLASS_PRESERVING.join(", ")),
    };
    let dims = initializer(g, &weight).unwrap().dims.clone();
    let bad = || {
        anyhow::anyhow!("{name}: classifier weight '{weight}' of {label} has shape {dims:?}, which koala does not read as a classifier weight (expected [classes, in] for Gemm transB=1, [in, classes] for MatMul, [classes, C_in, kH, kW] for Conv, or a Reshape of a weight to [classes, in] with a constant shape)")
    };
    // Which axis of the weight initializer holds the classes.
    let class_axis = match (kind, weight_reshape) {
        (HeadKind::Conv, _) if dims.len() >= 3 => 0,
        (_, Some(r)) => {
            // Inception v1: `Reshape(w [1, 1, 1000, 1024] or [1000, 1024, 1, 1], [1000, 1024])`;
            // the shape's first entry is the class count.
            let c = constant_i64(g, &g.node[r].input[1])
                .and_then(|s| s.first().copied())
                .ok_or_else(bad)?;
            dims.iter().position(|&d| d == c).ok_or_else(bad)?
        }
        (HeadKind::Gemm { trans_b: true }, None) if dims.len() == 2 => 0,
        (HeadKind::Gemm { trans_b: false } | HeadKind::MatMul, None) if dims.len() == 2 => 1,
        _ => return Err(bad()),
    };
    let classes = dims[class_axis];
    if classes < 1 {
        return Err(bad());
    }
    Ok(Head {
        node: label,
        op: node.op_type.clone(),
        name: node.name.clone(),
        kind,
        weight,
        weight_dims: dims,
        bias,
        classes: classes as usize,
        class_axis,
        weight_reshape,
        reshapes,
        relu_after,
    })
}

/// The bias of a fresh head followed by a Relu: every class starts with this
/// positive pre-activation (its weights start at zero), so every class is in
/// the Relu's active region and gets a gradient from the first step. With
/// PyTorch's default init instead, a class whose random weights are negative
/// on every image stays at 0 behind the Relu and never learns (measured on a
/// tiny SqueezeNet: 2 of 4 seeds ended with a class never predicted).
pub const RELU_HEAD_BIAS: f32 = 0.1;

/// Replaces the head that produces `choice`'s logits by a fresh one with
/// `classes` outputs.
pub fn replace_head(
    model: &mut Model,
    choice: &ClassifierOutput,
    classes: usize,
    seed: u64,
) -> Result<HeadReplacement> {
    if classes < 1 {
        bail!("--num-classes must be at least 1");
    }
    let head = find_head(model, choice)?;
    let resized = crate::classifier_output::outputs_of_logits(model, &choice.logits);
    let old = head.classes as i64;
    let new = classes as i64;
    // Shapes first (they can fail; nothing is changed until they pass).
    let mut shape_nodes: Vec<usize> = head.reshapes.clone();
    shape_nodes.extend(head.weight_reshape);
    let mut rewritten = Vec::new();
    for &r in &shape_nodes {
        let first_only = Some(r) == head.weight_reshape;
        if let Some(s) = rewrite_reshape_shape(model, r, old, new, first_only)? {
            rewritten.push(s);
        }
    }
    let dims = &head.weight_dims;
    let fan_in: i64 = dims.iter().product::<i64>() / old;
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = classes * fan_in as usize;
    // Behind a Relu: zero weights and a positive bias (see RELU_HEAD_BIAS);
    // otherwise PyTorch's nn.Linear / nn.Conv2d default.
    let behind_relu = head.relu_after.is_some() && head.bias.is_some();
    let w: Vec<f32> = match behind_relu {
        true => vec![0.0; n],
        false => (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
    };
    let mut new_dims = dims.clone();
    new_dims[head.class_axis] = new;
    let gm = model.graph_mut();
    let wt = gm
        .initializer
        .iter_mut()
        .find(|t| t.name == head.weight)
        .unwrap();
    let dt = wt.data_type;
    *wt = tensor::from_f32(&head.weight, &new_dims, &w);
    wt.data_type = dt;
    tensor::overwrite_f32(wt, &w)?;
    set_declared_dims(&mut gm.input, &head.weight, &new_dims);
    if let Some(b) = &head.bias {
        let bt = gm.initializer.iter_mut().find(|t| &t.name == b).unwrap();
        let bv: Vec<f32> = match behind_relu {
            true => vec![RELU_HEAD_BIAS; classes],
            false => (0..classes)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
        };
        let bdims: Vec<i64> = if bt.dims.len() == 2 {
            vec![1, new]
        } else {
            vec![new]
        };
        let dt = bt.data_type;
        *bt = tensor::from_f32(b, &bdims, &bv);
        bt.data_type = dt;
        tensor::overwrite_f32(bt, &bv)?;
        set_declared_dims(&mut gm.input, b, &bdims);
    }
    // The declared shapes' class axis changes too (the chosen output and
    // every other output of the same logits, e.g. their Softmax): the last
    // axis that holds the old count ([N, C] or [N, C, 1, 1]).
    for o in gm.output.iter_mut().filter(|o| resized.contains(&o.name)) {
        if let Some(type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = t.shape.as_mut().and_then(|s| {
                s.dim
                    .iter_mut()
                    .rev()
                    .find(|d| d.value == Some(dimension::Value::DimValue(old)))
            }) {
                d.value = Some(dimension::Value::DimValue(new));
            }
        }
    }
    gm.value_info.clear();
    Ok(HeadReplacement {
        node: head.node,
        weight: head.weight,
        bias: head.bias,
        classes: (head.classes, classes),
        reshapes: rewritten,
    })
}

/// Sets the declared shape of graph input `name` (an initializer listed as
/// an input, IR < 4 style) to `dims`, if there is one.
fn set_declared_dims(inputs: &mut [ValueInfoProto], name: &str, dims: &[i64]) {
    let Some(i) = inputs.iter_mut().find(|i| i.name == name) else {
        return;
    };
    if let Some(type_proto::Value::TensorType(t)) = i.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if let Some(s) = t.shape.as_mut() {
            s.dim = dims
                .iter()
                .map(|&d| crate::proto::Dimension {
                    value: Some(dimension::Value::DimValue(d)),
                    ..Default::default()
                })
                .collect();
        }
    }
}

/// Rewrites the old class count `old` to `new` in the constant shape of
/// Reshape node `r` (in its first entry only when `first_only`: a weight's
/// `[classes, in]`). A shape shared with other nodes is copied first, so they
/// keep theirs. Returns the shape tensor's name when it changed; a shape
/// computed in the graph is left alone (it follows the data), and a shape
/// given as an attribute (Reshape-1) is refused.
fn rewrite_reshape_shape(
    model: &mut Model,
    r: usize,
    old: i64,
    new: i64,
    first_only: bool,
) -> Result<Option<String>> {
    let name = model.display_name();
    let ir = model.proto.ir_version;
    let g = model.graph_mut();
    let node = &g.node[r];
    let label = node_label(r, node);
    let Some(shape_name) = node.input.get(1).cloned() else {
        bail!("{name}: {label} has no shape input (Reshape-1 form); koala cannot rewrite its class count for --num-classes");
    };
    let values = if let Some(t) = g.initializer.iter().find(|t| t.name == shape_name) {
        tensor::to_i64(t)?
    } else if let Some(c) = producer(g, &shape_name).filter(|&c| g.node[c].op_type == "Constant") {
        match crate::attrs::get(&g.node[c], "value").and_then(|a| a.t.as_ref()) {
            Some(t) => tensor::to_i64(t)?,
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let hit = |i: usize, v: i64| v == old && (!first_only || i == 0);
    match values.iter().enumerate().filter(|&(i, &v)| hit(i, v)).count() {
        0 => return Ok(None),
        1 => {}
        _ => bail!("{name}: {label} reshapes the classifier's output to {values:?}, and koala cannot tell which {old} is the class count to change for --num-classes; re-export the model with -1 or 0 in the other places"),
    }
    let rewritten: Vec<i64> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| if hit(i, v) { new } else { v })
        .collect();
    let users = g
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == &shape_name))
        .count();
    let is_output = g.output.iter().any(|o| o.name == shape_name);
    let target = if users > 1 || is_output {
        format!("{shape_name}__koala_head")
    } else {
        shape_name.clone()
    };
    let t = tensor::from_i64(&target, &[rewritten.len() as i64], &rewritten);
    if target != shape_name {
        g.initializer.push(t);
        if ir < 4 {
            g.input.push(int64_input(&target, rewritten.len()));
        }
        g.node[r].input[1] = target.clone();
    } else if let Some(init) = g.initializer.iter_mut().find(|t| t.name == shape_name) {
        *init = t;
    } else {
        // A Constant node used by this Reshape alone: its value changes.
        let c = producer(g, &shape_name).unwrap();
        if let Some(a) = g.node[c].attribute.iter_mut().find(|a| a.name == "value") {
            a.t = Some(t);
        }
    }
    Ok(Some(target))
}

/// The values of an int64 constant: an initializer or a Constant node's output.
fn constant_i64(g: &GraphProto, name: &str) -> Option<Vec<i64>> {
    if let Some(t) = initializer(g, name) {
        return tensor::to_i64(t).ok();
    }
    let c = producer(g, name).filter(|&c| g.node[c].op_type == "Constant")?;
    let t = crate::attrs::get(&g.node[c], "value")?.t.as_ref()?;
    tensor::to_i64(t).ok()
}

/// The graph input of a 1-D int64 shape initializer (IR < 4 files list every
/// initializer as an input).
fn int64_input(name: &str, len: usize) -> ValueInfoProto {
    crate::training::value_info(name, crate::proto::DataType::Int64, &[len])
}
