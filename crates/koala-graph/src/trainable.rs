//! Which weights get trained.
//!
//! Default: every float initializer except BatchNorm running statistics.
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

/// Operator settings that ONNX passes as inputs: Clip's bounds, Dropout's
/// ratio and training flag, Pad's constant value. They are float
/// initializers in some exports, but no gradient rule differentiates them
/// (PyTorch, the reference, treats them as constants too), so selecting them
/// would only list them as weights that "do not influence the loss".
/// Initializers also used as ordinary operands elsewhere stay selectable.
pub fn operator_settings(model: &Model) -> HashSet<String> {
    let setting_slots = |op: &str| -> &'static [usize] {
        match op {
            "Clip" => &[1, 2],
            "Dropout" => &[1, 2],
            "Pad" => &[2],
            _ => &[],
        }
    };
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
        .filter(|t| inc.as_ref().is_none_or(|r| r.is_match(&t.name)))
        .filter(|t| !exc.as_ref().is_some_and(|r| r.is_match(&t.name)))
        .map(|t| t.name.clone())
        .collect())
}
