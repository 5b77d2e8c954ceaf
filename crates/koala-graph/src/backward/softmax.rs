//! Gradients of Softmax and LogSoftmax along one axis.
//!
//! Softmax: dX = Y ⊙ (dY − Σ_axis dY ⊙ Y). LogSoftmax: dX = dY − e^Y ⊙ Σ_axis dY.
//! Before opset 13 both ops flatten the input to 2-D at `axis`; the same
//! formulas then hold over all trailing axes at once.
//! Masked scores (−inf from `Where(mask, −inf, s)` or an additive mask) have
//! Y = 0, so their gradient is exactly 0 with no NaN.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Softmax.html,
//! https://onnx.ai/onnx/operators/onnx__LogSoftmax.html.
//!
//! Tests: `crates/koala-graph/tests/fd_softmax.rs` (masked: `fd_where.rs`).

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs;
use anyhow::Result;

/// The axes the normalisation runs over.
fn norm_axes(ctx: &GradCtx, r: &RuleInput, rank: usize) -> Vec<i64> {
    if ctx.opset() >= 13 {
        vec![norm_axis(attrs::int(r.node, "axis", -1), rank) as i64]
    } else {
        let a = norm_axis(attrs::int(r.node, "axis", 1), rank);
        (a as i64..rank as i64).collect()
    }
}

/// Softmax(X) → Y.
pub fn softmax(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let rank = ctx.shape(&y)?.len();
    let axes = norm_axes(ctx, r, rank);
    let prod = ctx.binary("Mul", &dy, &y)?;
    let s = ctx.reduce_sum(&prod, &axes, true)?;
    let diff = ctx.binary("Sub", &dy, &s)?;
    Ok(vec![Some(ctx.binary("Mul", &y, &diff)?)])
}

/// LogSoftmax(X) → Y.
pub fn log_softmax(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let shape = ctx.shape(&y)?;
    let axes = norm_axes(ctx, r, shape.len());
    let dt = ctx.dtype(&y)?;
    let p = ctx.emit_shaped("Exp", &[&y], vec![], dt, shape);
    let s = ctx.reduce_sum(&dy, &axes, true)?;
    let ps = ctx.binary("Mul", &p, &s)?;
    Ok(vec![Some(ctx.binary("Sub", &dy, &ps)?)])
}
