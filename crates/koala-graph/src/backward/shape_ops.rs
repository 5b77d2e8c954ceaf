//! Gradients of pure data-movement ops: Flatten, Reshape, Squeeze,
//! Unsqueeze (a reshape back), Transpose (the inverse permutation),
//! Identity and Dropout in inference mode (pass-through), Cast between float
//! types (cast back), Trilu (the same triangle of dY).
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__<Op>.html for Reshape,
//! Flatten, Squeeze, Unsqueeze, Transpose, Identity, Dropout, Cast, Trilu.
//! Opsets: Squeeze/Unsqueeze take axes as an input from 13 (the rule reads
//! only shapes, so both forms work); Dropout has a training_mode input from
//! 12 (must be a known false); Trilu exists from 14.
//!
//! Tests: `crates/koala-graph/tests/fd_shape_ops.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs;
use anyhow::{bail, Result};

/// Flatten / Reshape / Squeeze / Unsqueeze: reshape dY to X's shape.
pub fn reshape_like(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let mut out = r.none();
    out[0] = Some(ctx.reshape(&dy, &xs)?);
    Ok(out)
}

/// Transpose(perm): dX = Transpose(dY, perm⁻¹).
pub fn transpose(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let rank = ctx.shape(&dy)?.len();
    let perm: Vec<usize> = attrs::ints(r.node, "perm")
        .map(|p| p.into_iter().map(|x| x as usize).collect())
        .unwrap_or_else(|| (0..rank).rev().collect());
    let mut inv = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Ok(vec![Some(ctx.transpose(&dy, &inv)?)])
}

/// Identity / Dropout (inference): dX = dY.
pub fn identity(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    if r.node.op_type == "Dropout" && !r.input(2).is_empty() {
        // Only a known-false training_mode makes Dropout the identity; an
        // unknown one must not silently be assumed false.
        match ctx.ints(r.input(2)) {
            Some(v) if v.iter().all(|&b| b == 0) => {}
            Some(_) => bail!("Dropout in training mode is not supported (its mask is random); export the model in eval mode"),
            None => bail!("Dropout's training_mode input '{}' is not a constant, so koala cannot tell whether it drops values; export the model in eval mode (no training_mode input, or a constant false)", r.input(2)),
        }
    }
    let mut out = r.none();
    out[0] = Some(r.dy0()?.to_string());
    Ok(out)
}

/// Cast between float types: the gradient is cast back to the input's type.
/// (Casts to integer types end the gradient path and never reach a rule.)
pub fn cast(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let dt = ctx.dtype(&x)?;
    if !matches!(
        dt,
        crate::proto::DataType::Float
            | crate::proto::DataType::Double
            | crate::proto::DataType::Float16
    ) {
        bail!("Cast from {dt:?} carries no gradient");
    }
    let dy = r.dy0()?.to_string();
    let shape = ctx.shape(&x)?;
    Ok(vec![Some(ctx.emit_shaped(
        "Cast",
        &[&dy],
        vec![crate::attrs::a_int("to", dt as i64)],
        dt,
        shape,
    ))])
}

/// Trilu(X, k?, upper): Y keeps one triangle of X (the rest is 0), so
/// dX = Trilu(dY, k, upper) with the same k and upper.
pub fn trilu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let shape = ctx.shape(&dy)?;
    let dt = ctx.dtype(&dy)?;
    let upper = attrs::int(r.node, "upper", 1);
    let mut inputs = vec![dy.as_str()];
    if !r.input(1).is_empty() {
        inputs.push(r.input(1));
    }
    let mut out = r.none();
    out[0] = Some(ctx.emit_shaped(
        "Trilu",
        &inputs,
        vec![attrs::a_int("upper", upper)],
        dt,
        shape,
    ));
    Ok(out)
}
