//! Loss heads appended to the forward graph, each with its own fused
//! gradient (the seed of the backward pass).
//!
//! Softmax cross-entropy writes dlogits = (softmax − target)·w/denominator
//! directly instead of differentiating LogSoftmax + GatherElements: fewer
//! nodes, and the textbook numerically stable form.

use crate::attrs::a_int;
use crate::backward::GradCtx;
use crate::proto::DataType;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which loss to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LossSpec {
    /// Softmax cross-entropy over the last axis of the logits; labels are
    /// int64 class indices shaped like the logits without their last axis.
    SoftmaxCrossEntropy {
        /// Label smoothing ε ∈ [0, 1): target = (1−ε)·onehot + ε/C.
        #[serde(default)]
        label_smoothing: f32,
        /// Labels equal to this are ignored (no loss, no gradient), e.g. −100.
        #[serde(default)]
        ignore_index: Option<i64>,
    },
    /// Mean squared error; labels are float targets shaped like the output.
    MeanSquaredError,
}

impl Default for LossSpec {
    fn default() -> Self {
        LossSpec::SoftmaxCrossEntropy {
            label_smoothing: 0.0,
            ignore_index: None,
        }
    }
}

/// Names produced by a loss head.
pub struct LossHead {
    /// Scalar mean loss.
    pub loss: String,
    /// Per-sample losses [B].
    pub per_sample: String,
    /// Gradient of `loss` with respect to the model output.
    pub seed: String,
    /// Element type and shape of the label input.
    pub label_dtype: DataType,
    /// Shape of the label input.
    pub label_shape: Vec<usize>,
}

/// Appends the loss head on `output` with labels read from `labels`.
pub fn append(ctx: &mut GradCtx, spec: &LossSpec, output: &str, labels: &str) -> Result<LossHead> {
    ctx.set_scope("loss");
    match spec {
        LossSpec::SoftmaxCrossEntropy {
            label_smoothing,
            ignore_index,
        } => softmax_cross_entropy(ctx, output, labels, *label_smoothing as f64, *ignore_index),
        LossSpec::MeanSquaredError => mean_squared_error(ctx, output, labels),
    }
}

fn softmax_cross_entropy(
    ctx: &mut GradCtx,
    logits: &str,
    labels: &str,
    eps: f64,
    ignore: Option<i64>,
) -> Result<LossHead> {
    let shape = ctx.shape(logits)?;
    let dt = ctx.dtype(logits)?;
    if shape.len() < 2 {
        bail!("softmax cross-entropy needs logits with a batch and a class axis, got shape {shape:?} for '{logits}'");
    }
    if !(0.0..1.0).contains(&eps) {
        bail!("label smoothing must be in [0, 1), got {eps}");
    }
    let batch = shape[0];
    let classes = *shape.last().unwrap();
    let label_shape = shape[..shape.len() - 1].to_vec();
    let rows: usize = label_shape.iter().product();
    ctx.set_fact(labels, DataType::Int64, label_shape.clone());
    let z = ctx.reshape(logits, &[rows, classes])?;
    let y = ctx.reshape(labels, &[rows])?;
    // Ignored rows: mask them and use class 0 as a safe index.
    let (y_safe, weight) = match ignore {
        Some(ii) => {
            let ii_c = ctx.const_i64(&[ii]);
            let eq = ctx.emit_shaped("Equal", &[&y, &ii_c], vec![], DataType::Bool, vec![rows]);
            let keep = ctx.emit_shaped("Not", &[&eq], vec![], DataType::Bool, vec![rows]);
            let zero = ctx.const_i64(&[0]);
            let safe = ctx.emit_shaped(
                "Where",
                &[&keep, &y, &zero],
                vec![],
                DataType::Int64,
                vec![rows],
            );
            let w = ctx.emit_shaped(
                "Cast",
                &[&keep],
                vec![a_int("to", dt as i64)],
                dt,
                vec![rows],
            );
            (safe, Some(w))
        }
        None => (y.clone(), None),
    };
    let lsm = ctx.emit_shaped(
        "LogSoftmax",
        &[&z],
        vec![a_int("axis", 1)],
        dt,
        vec![rows, classes],
    );
    let yu = ctx.unsqueeze(&y_safe, &[1])?;
    let picked = ctx.emit_shaped(
        "GatherElements",
        &[&lsm, &yu],
        vec![a_int("axis", 1)],
        dt,
        vec![rows, 1],
    );
    let picked = ctx.reshape(&picked, &[rows])?;
    let mut per_row = ctx.emit_shaped("Neg", &[&picked], vec![], dt, vec![rows]);
    if eps > 0.0 {
        // (1−ε)·nll + ε·mean_c(−log p_c)
        let s = ctx.reduce_sum(&lsm, &[1], false)?;
        let k = ctx.scalar_like(-eps / classes as f64, logits)?;
        let smooth = ctx.binary("Mul", &s, &k)?;
        let a = ctx.scalar_like(1.0 - eps, logits)?;
        let nll = ctx.binary("Mul", &per_row, &a)?;
        per_row = ctx.binary("Add", &nll, &smooth)?;
    }
    if let Some(w) = &weight {
        per_row = ctx.binary("Mul", &per_row, w)?;
    }
    // Denominator: number of (non-ignored) rows.
    let denom = match &weight {
        Some(w) => {
            let cnt = ctx.reduce_sum(w, &[0], false)?;
            let one = ctx.scalar_like(1.0, logits)?;
            ctx.emit_shaped("Max", &[&cnt, &one], vec![], dt, vec![])
        }
        None => ctx.scalar_like(rows as f64, logits)?,
    };
    let total = ctx.reduce_sum(&per_row, &[0], false)?;
    let loss = ctx.binary("Div", &total, &denom)?;
    // Per-sample loss: the mean over each sample's rows (tokens), [B].
    let per_sample = per_sample_mean(ctx, &per_row, weight.as_deref(), batch, rows / batch)?;
    // Seed: (softmax − target)·w / denom.
    let p = ctx.emit_shaped(
        "Softmax",
        &[&z],
        vec![a_int("axis", 1)],
        dt,
        vec![rows, classes],
    );
    let target = smoothed_one_hot(ctx, &y_safe, rows, classes, eps, logits)?;
    let mut diff = ctx.binary("Sub", &p, &target)?;
    if let Some(w) = &weight {
        let wu = ctx.unsqueeze(w, &[1])?;
        diff = ctx.binary("Mul", &diff, &wu)?;
    }
    let scaled = ctx.binary("Div", &diff, &denom)?;
    let seed = ctx.reshape(&scaled, &shape)?;
    Ok(LossHead {
        loss,
        per_sample,
        seed,
        label_dtype: DataType::Int64,
        label_shape,
    })
}

/// The smoothed one-hot target [rows, C]: 1 − ε + ε/C at the label, ε/C
/// elsewhere, in the logits' element type.
///
/// Written as `Where(label == class, on, off)` rather than `OneHot`: ONNX
/// Runtime has no OneHot kernel with float64 values, and this form works for
/// every float type with ops every runtime has.
fn smoothed_one_hot(
    ctx: &mut GradCtx,
    labels: &str,
    rows: usize,
    classes: usize,
    eps: f64,
    like: &str,
) -> Result<String> {
    let dt = ctx.dtype(like)?;
    let class_ids: Vec<i64> = (0..classes as i64).collect();
    let range = ctx.const_i64(&class_ids);
    let range = ctx.reshape(&range, &[1, classes])?;
    let column = ctx.unsqueeze(labels, &[1])?;
    let hit = ctx.emit_shaped(
        "Equal",
        &[&column, &range],
        vec![],
        DataType::Bool,
        vec![rows, classes],
    );
    let on = ctx.scalar_like(1.0 - eps + eps / classes as f64, like)?;
    let off = ctx.scalar_like(eps / classes as f64, like)?;
    Ok(ctx.emit_shaped("Where", &[&hit, &on, &off], vec![], dt, vec![rows, classes]))
}

/// Mean of each sample's rows ([B·T] → [B]); with weights, over kept rows.
fn per_sample_mean(
    ctx: &mut GradCtx,
    per_row: &str,
    weight: Option<&str>,
    batch: usize,
    per: usize,
) -> Result<String> {
    if per == 1 && weight.is_none() {
        return Ok(per_row.to_string());
    }
    let m = ctx.reshape(per_row, &[batch, per])?;
    let s = ctx.reduce_sum(&m, &[1], false)?;
    let denom = match weight {
        Some(w) => {
            let wm = ctx.reshape(w, &[batch, per])?;
            let c = ctx.reduce_sum(&wm, &[1], false)?;
            let one = ctx.scalar_like(1.0, per_row)?;
            let dt = ctx.dtype(per_row)?;
            ctx.emit_shaped("Max", &[&c, &one], vec![], dt, vec![batch])
        }
        None => ctx.scalar_like(per as f64, per_row)?,
    };
    ctx.binary("Div", &s, &denom)
}

fn mean_squared_error(ctx: &mut GradCtx, output: &str, labels: &str) -> Result<LossHead> {
    let shape = ctx.shape(output)?;
    let dt = ctx.dtype(output)?;
    if shape.is_empty() {
        bail!("mean squared error needs an output with a batch axis, got a scalar '{output}'");
    }
    ctx.set_fact(labels, dt, shape.clone());
    let batch = shape[0];
    let per: usize = shape[1..].iter().product();
    let diff = ctx.binary("Sub", output, labels)?;
    let sq = ctx.binary("Mul", &diff, &diff)?;
    let rows = ctx.reshape(&sq, &[batch, per])?;
    let s = ctx.reduce_sum(&rows, &[1], false)?;
    let inv = ctx.scalar_like(1.0 / per as f64, output)?;
    let per_sample = ctx.binary("Mul", &s, &inv)?;
    let total = ctx.reduce_sum(&per_sample, &[0], false)?;
    let invb = ctx.scalar_like(1.0 / batch as f64, output)?;
    let loss = ctx.binary("Mul", &total, &invb)?;
    let k = ctx.scalar_like(2.0 / (batch * per) as f64, output)?;
    let seed = ctx.binary("Mul", &diff, &k)?;
    Ok(LossHead {
        loss,
        per_sample,
        seed,
        label_dtype: dt,
        label_shape: shape,
    })
}
