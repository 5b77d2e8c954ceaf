//! Which weights get trained.
//!
//! Default: every float initializer except BatchNorm running statistics,
//! operator settings (Resize scales, Clip bounds, Reshape shapes…),
//! in-graph preprocessing constants (mean/std/255 applied to the raw input)
//! and one-element constants of the architecture (GELU's 0.5, ε).
//! Regexes include/exclude by name. Weights stored in `Constant` nodes (some
//! exporters, e.g. PaddlePaddle's, put them there) can be promoted to
//! initializers so they become trainable too; export writes them back into
//! their Constant nodes.

use crate::model::Model;
use crate::proto::{DataType, TensorProto};
use crate::tensor;
use anyhow::{Context, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// User's choice of trainable weights.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainableSpec {
    /// Only weights whose name matches are trained (all when None).
    #[serde(default)]
    pub include: Option<String>,
    /// Weights whose name matches are frozen.
    #[serde(default)]
    pub exclude: Option<String>,
    /// Promote float tensors held in `Constant` nodes (≥ 2 elements) to trainable weights.
    #[serde(default)]
    pub train_constants: bool,
}

/// A Constant node whose tensor was promoted to an initializer.
#[derive(Clone, Debug, PartialEq)]
pub struct PromotedConstant {
    /// The Constant node's output value name (= the initializer name).
    pub value: String,
}

/// Moves float tensors of `Constant` nodes (≥ 2 elements) into initializers.
pub fn promote_constants(model: &mut Model) -> Vec<PromotedConstant> {
    let g = model.graph_mut();
    let mut promoted = Vec::new();
    let mut keep = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        let t = (n.op_type == "Constant")
            .then(|| {
                n.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.clone())
            })
            .flatten()
            .filter(|t| is_float(t) && tensor::numel(&t.dims) >= 2);
        match t {
            Some(mut t) => {
                t.name = n.output[0].clone();
                promoted.push(PromotedConstant {
                    value: t.name.clone(),
                });
                g.initializer.push(t);
            }
            None => keep.push(n),
        }
    }
    g.node = keep;
    promoted
}

fn is_float(t: &TensorProto) -> bool {
    matches!(
        DataType::try_from(t.data_type),
        Ok(DataType::Float | DataType::Double)
    )
}

/// Initializers that are BatchNorm running mean/variance (never trained).
pub fn batchnorm_statistics(model: &Model) -> HashSet<String> {
    model
        .graph()
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .flat_map(|n| n.input.iter().skip(3).take(2).cloned())
        .collect()
}

/// Operator-setting inputs, as `(op, input indices)`: values that configure
/// an op (a shape, bounds, scales, axes, pads, a count) rather than data it
/// computes on. Some exports store them as float initializers, but no
/// gradient rule differentiates them (PyTorch, the reference, treats them as
/// constants too), so they are never trainable: selecting Resize's `scales`
/// would, for instance, demand a gradient with respect to `scales`, which
/// Resize's rule refuses (it differentiates X only). One table, so every consumer
/// (selection, `check`, messages) agrees.
pub const OPERATOR_SETTINGS: &[(&str, &[usize])] = &[
    ("Clip", &[1, 2]),
    ("Dropout", &[1, 2]),
    ("Pad", &[1, 2, 3]),
    ("Resize", &[1, 2, 3]),
    ("Upsample", &[1]),
    ("Reshape", &[1]),
    ("Slice", &[1, 2, 3, 4]),
    ("Expand", &[1]),
    ("Tile", &[1]),
    ("TopK", &[1]),
    ("Split", &[1]),
    ("Squeeze", &[1]),
    ("Unsqueeze", &[1]),
    ("ConstantOfShape", &[0]),
    ("Range", &[0, 1, 2]),
    ("OneHot", &[1, 2]),
    ("Trilu", &[1]),
    ("CumSum", &[1]),
    ("ReduceSum", &[1]),
    ("ReduceMean", &[1]),
    ("ReduceMax", &[1]),
    ("ReduceMin", &[1]),
    ("ReduceProd", &[1]),
    ("ReduceL1", &[1]),
    ("ReduceL2", &[1]),
    ("ReduceLogSum", &[1]),
    ("ReduceLogSumExp", &[1]),
    ("ReduceSumSquare", &[1]),
    ("NonMaxSuppression", &[2, 3, 4]),
    ("CenterCropPad", &[1]),
    ("Col2Im", &[1, 2]),
];

/// The operator-setting input slots of `op` (empty for ops without any).
pub fn setting_slots(op: &str) -> &'static [usize] {
    OPERATOR_SETTINGS
        .iter()
        .find(|(o, _)| *o == op)
        .map_or(&[], |(_, s)| s)
}

/// Initializers used only as operator settings (see [`OPERATOR_SETTINGS`]).
/// Initializers also used as ordinary operands elsewhere stay selectable.
pub fn operator_settings(model: &Model) -> HashSet<String> {
    let mut settings = HashSet::new();
    let mut operands = HashSet::new();
    for n in &model.graph().node {
        let slots = setting_slots(&n.op_type);
        for (i, x) in n.input.iter().enumerate() {
            if slots.contains(&i) {
                settings.insert(x.clone());
            } else {
                operands.insert(x.clone());
            }
        }
    }
    settings.retain(|s| !operands.contains(s));
    settings
}

/// Ops that carry learned weights. Data that has passed through one of them
/// is a feature, no longer the raw input.
const PARAMETRISED: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "ConvInteger",
    "Gemm",
    "MatMul",
    "MatMulInteger",
    "Einsum",
    "BatchNormalization",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "RMSNormalization",
    "Gather",
    "PRelu",
    "LSTM",
    "GRU",
    "RNN",
    "Attention",
    "MultiHeadAttention",
];

/// Element-wise ops with which exporters write input normalisation:
/// `(x − mean) / std`, `x · (1/255)`, `x / 255`, `x + offset`.
const PREPROCESSING_OPS: &[&str] = &["Sub", "Div", "Mul", "Add"];

/// A float constant that only touches the data input before the first
/// parametrised op: the in-graph image normalisation (`Sub(mean)`, `Div(std)`,
/// `Mul(1/255)`, `Div(255)` after a Cast from uint8…).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessingConstant {
    /// Initializer name.
    pub name: String,
    /// The op that applies it (`Sub`, `Div`, `Mul` or `Add`).
    pub op: String,
    /// The node that applies it (its label).
    pub node: String,
    /// Its values (empty when they cannot be read as floats).
    pub values: Vec<f32>,
}

/// Float tensors of the graph that are constants: initializers, and the `value` of
/// `Constant` nodes (named by the node's output; torch exports often hold a normalisation's
/// mean and std there), as `(name, tensor)`.
fn float_constants(model: &Model) -> Vec<(String, &crate::proto::TensorProto)> {
    let g = model.graph();
    let initializers = g.initializer.iter().map(|t| (t.name.clone(), t));
    let nodes = g
        .node
        .iter()
        .filter(|n| n.op_type == "Constant" && n.output.len() == 1)
        .filter_map(|n| {
            let t = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
            Some((n.output[0].clone(), t))
        });
    initializers
        .chain(nodes)
        .filter(|(_, t)| is_float(t))
        .collect()
}

/// Values computed from the data inputs alone, before any parametrised op.
fn raw_data_values(model: &Model) -> HashSet<String> {
    let g = model.graph();
    // Constants: initializers and Constant-node outputs.
    let mut inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    inits.extend(
        g.node
            .iter()
            .filter(|n| n.op_type == "Constant")
            .flat_map(|n| n.output.iter().map(|o| o.as_str())),
    );
    let mut raw: HashSet<String> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    // Nodes are in topological order (ONNX requires it).
    for n in &g.node {
        if PARAMETRISED.contains(&n.op_type.as_str()) {
            continue;
        }
        let mut data = n
            .input
            .iter()
            .filter(|x| !x.is_empty() && !inits.contains(x.as_str()));
        let any_raw = n.input.iter().any(|x| raw.contains(x));
        if any_raw && data.all(|x| raw.contains(x)) {
            raw.extend(n.output.iter().cloned());
        }
    }
    raw
}

/// The preprocessing constants of `model`, in initializer order: scalar or
/// per-channel float initializers whose every use is an element-wise op
/// ([`PREPROCESSING_OPS`]) applied to raw data (see [`raw_data_values`]). They are frozen by default
/// and not counted as weights; `--train <regex>` naming them still selects
/// them.
pub fn preprocessing_constants(model: &Model) -> Vec<PreprocessingConstant> {
    let g = model.graph();
    let raw = raw_data_values(model);
    let mut out = Vec::new();
    for (name, t) in float_constants(model) {
        let uses: Vec<(usize, &crate::proto::NodeProto)> = g
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.input.iter().any(|x| x == &name))
            .collect();
        // Normalisation constants are per-channel or scalar (`[1,3,1,1]`,
        // `[3]`, `[]`); a full-size tensor added to the input is a learned
        // offset, a weight.
        let broadcast = t.dims.iter().filter(|&&d| d != 1).count() <= 1;
        let preprocessing = broadcast
            && !uses.is_empty()
            && uses.iter().all(|(_, n)| {
                PREPROCESSING_OPS.contains(&n.op_type.as_str())
                    && n.input.iter().any(|x| x != &name && raw.contains(x))
            });
        if preprocessing {
            let (i, n) = uses[0];
            out.push(PreprocessingConstant {
                name,
                op: n.op_type.clone(),
                node: crate::model::node_label(i, n),
                values: tensor::to_f32(t).unwrap_or_default(),
            });
        }
    }
    out
}

/// Names of the trainable initializers, in initializer order (stable).
pub fn select(model: &Model, spec: &TrainableSpec) -> Result<Vec<String>> {
    let inc = spec
        .include
        .as_deref()
        .map(Regex::new)
        .transpose()
        .context("invalid --train regex")?;
    let exc = spec
        .exclude
        .as_deref()
        .map(Regex::new)
        .transpose()
        .context("invalid --freeze regex")?;
    let mut never = batchnorm_statistics(model);
    never.extend(operator_settings(model));
    // Preprocessing constants and scalar constants of the architecture
    // train only when --train names them.
    let preprocessing: HashSet<String> = preprocessing_constants(model)
        .into_iter()
        .map(|p| p.name)
        .chain(architecture_scalars(model))
        .collect();
    let used: HashSet<&str> = model
        .graph()
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(|s| s.as_str()))
        .collect();
    Ok(model
        .graph()
        .initializer
        .iter()
        .filter(|t| is_float(t) && tensor::numel(&t.dims) > 0)
        .filter(|t| used.contains(t.name.as_str()) && !never.contains(&t.name))
        .filter(|t| match &inc {
            None => !preprocessing.contains(&t.name),
            Some(r) => r.is_match(&t.name),
        })
        .filter(|t| !exc.as_ref().is_some_and(|r| r.is_match(&t.name)))
        .map(|t| t.name.clone())
        .collect())
}

/// Arithmetic ops in which a one-element constant is a fixed number of the
/// architecture (GELU's 0.5 and √2, a normalisation's ε, attention's 1/√d).
const SCALAR_ARITHMETIC: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"];

/// One-element float initializers used only in element-wise arithmetic
/// ([`SCALAR_ARITHMETIC`]): numbers of the architecture written as
/// initializers by decomposed exports, not weights of a parametrised op. They
/// are frozen by default and not counted (a trainable count inflated by them
/// would lower KOALA++'s default η); `--train` naming one selects it.
/// Preprocessing scalars (`Div(255)`) are listed by
/// [`preprocessing_constants`] instead.
pub fn architecture_scalars(model: &Model) -> Vec<String> {
    let g = model.graph();
    let pre: HashSet<String> = preprocessing_constants(model)
        .into_iter()
        .map(|p| p.name)
        .collect();
    g.initializer
        .iter()
        .filter(|t| is_float(t) && tensor::numel(&t.dims) == 1 && !pre.contains(&t.name))
        .filter(|t| {
            let mut uses = g
                .node
                .iter()
                .filter(|n| n.input.iter().any(|x| x == &t.name))
                .peekable();
            uses.peek().is_some() && uses.all(|n| SCALAR_ARITHMETIC.contains(&n.op_type.as_str()))
        })
        .map(|t| t.name.clone())
        .collect()
}

/// A model whose weights are all float16/bfloat16 has no float32 initializer to train, and
/// naming tensors with `--train` cannot change that: say so, with the conversion that does.
/// `floats`: the model's float32/float64 initializers (None of this applies when there are).
fn half_precision_weights(model: &Model, floats: usize) -> Option<(String, String)> {
    let mut half: Vec<(&str, &str)> = model
        .graph()
        .initializer
        .iter()
        .filter_map(|t| match DataType::try_from(t.data_type) {
            Ok(DataType::Float16) => Some((t.name.as_str(), "float16")),
            Ok(DataType::Bfloat16) => Some((t.name.as_str(), "bfloat16")),
            _ => None,
        })
        .collect();
    if floats > 0 || half.is_empty() {
        return None;
    }
    half.sort_unstable();
    let mut kinds: Vec<&str> = half.iter().map(|h| h.1).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Some((
        format!(
            "no trainable weights: the model's {} weight initializer(s) are {} (e.g. '{}'); koala trains float32 weights",
            half.len(),
            kinds.join("/"),
            half[0].0
        ),
        "convert the model to float32 (PyTorch: export after `model.float()`; an ONNX file: convert its float16 initializers and Casts to float32) and fine-tune that".into(),
    ))
}

/// Why nothing is selected, and what to do: `(reason, remedy)`. Blames the
/// `--train`/`--freeze` patterns only when the user gave some, and names
/// `--train-constants` when the weights live in `Constant` nodes (as some
/// exporters write them).
pub fn nothing_selected(model: &Model, spec: &TrainableSpec) -> (String, String) {
    let g = model.graph();
    let held_in_constants: Vec<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Constant")
        .filter(|n| {
            n.attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
                .is_some_and(|t| is_float(t) && tensor::numel(&t.dims) >= 2)
        })
        .filter_map(|n| n.output.first().map(|s| s.as_str()))
        .collect();
    let floats = g.initializer.iter().filter(|t| is_float(t)).count();
    let patterns: Vec<String> = [("--train", &spec.include), ("--freeze", &spec.exclude)]
        .iter()
        .filter_map(|(flag, p)| p.as_ref().map(|p| format!("{flag} '{p}'")))
        .collect();
    let constants_hint = (!held_in_constants.is_empty() && !spec.train_constants).then(|| {
        format!(
            "its weights are held in {} Constant node(s) (e.g. '{}'), which are not trainable by default",
            held_in_constants.len(),
            held_in_constants[0]
        )
    });
    if let Some(found) = half_precision_weights(model, floats) {
        return found;
    }
    match (patterns.is_empty(), constants_hint) {
        (true, Some(hint)) => (
            format!("no trainable weights: the model has {floats} float initializer(s) to train, and {hint}"),
            "pass --train-constants to train the weights held in Constant nodes".into(),
        ),
        (true, None) => (
            format!("no trainable weights: none of the model's {floats} float initializer(s) is a weight of a parametrised op (preprocessing constants, operator settings and BatchNorm statistics stay frozen)"),
            "name the tensors to train with --train '<regex>'".into(),
        ),
        (false, hint) => (
            format!(
                "no trainable weights: {} leave(s) none of the model's {floats} float initializer(s) to train{}",
                patterns.join(" with "),
                hint.map(|h| format!("; {h}")).unwrap_or_default()
            ),
            format!(
                "change {} (`koala check` lists the trainable tensors){}",
                patterns.join(" / "),
                if spec.train_constants || held_in_constants.is_empty() { "" } else { ", or pass --train-constants" }
            ),
        ),
    }
}
