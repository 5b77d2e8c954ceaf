//! Gradients of selection ops: Where, Max, Min.
//!
//! Math: `Y = Where(C, X₁, X₂)` (broadcasting): dX₁ = unbroadcast(dY·C),
//! dX₂ = unbroadcast(dY·¬C); the condition is data and never differentiated.
//! A masked attention score `Where(mask, −inf, s)` therefore passes exactly
//! zero to the masked `s` (and Softmax already sends zero there).
//! `Y = Max(X₁…Xₙ)` (and Min): dXᵢ = unbroadcast(dY·[Xᵢ = Y] / #{j: Xⱼ = Y}).
//!
//! Subgradient at ties: the k operands equal to the output share the
//! gradient equally (1/k each). This is PyTorch's convention for
//! `torch.maximum`/`torch.minimum` of two tensors (and `amax`): a tie gives
//! each side ½, checked with torch 2 in
//! `tests/fixtures/pytorch_subgradients/make_reference.py` and held in
//! `tests/fd_where.rs`. (A chain of binary `torch.maximum` exported as one
//! variadic Max would split a three-way tie ¼, ¼, ½; the variadic op has no
//! order to follow, so koala splits it evenly.)
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Where.html,
//! https://onnx.ai/onnx/operators/onnx__Max.html,
//! https://onnx.ai/onnx/operators/onnx__Min.html.
//! Opsets: Where 9/16 (16 adds bfloat16); Max/Min 6 (no broadcasting),
//! 8 (multidirectional broadcasting), 12/13 (types only), so one rule serves
//! 8–21; it compares floats with Equal, which accepts floats from opset 11
//! on, so the table says 11 (models of opset 7–10 are upgraded to 17 before
//! differentiation).
//!
//! Tests: `crates/koala-graph/tests/fd_where.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::a_int;
use crate::proto::DataType;
use anyhow::Result;

/// Where(C, X₁, X₂) → Y.
pub fn where_(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (c, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let mut out = r.none();
    if r.need(1) {
        let g = masked(ctx, &c, &dy)?;
        let t = ctx.shape(r.input(1))?;
        out[1] = Some(ctx.unbroadcast(&g, &t)?);
    }
    if r.need(2) {
        let cs = ctx.shape(&c)?;
        let not_c = ctx.emit_shaped("Not", &[&c], vec![], DataType::Bool, cs);
        let g = masked(ctx, &not_c, &dy)?;
        let t = ctx.shape(r.input(2))?;
        out[2] = Some(ctx.unbroadcast(&g, &t)?);
    }
    Ok(out)
}

/// `dY` where `cond` holds, exactly 0 elsewhere, shaped like the broadcast
/// of both. Where (not Cast + Mul): a non-finite dY at a masked position must
/// still give 0, not NaN.
fn masked(ctx: &mut GradCtx, cond: &str, dy: &str) -> Result<String> {
    let shape =
        super::broadcast_shape(&ctx.shape(cond)?, &ctx.shape(dy)?).unwrap_or(ctx.shape(dy)?);
    let dt = ctx.dtype(dy)?;
    let zero = ctx.scalar_like(0.0, dy)?;
    Ok(ctx.emit_shaped("Where", &[cond, dy, &zero], vec![], dt, shape))
}

/// Max(X₁…Xₙ) → Y.
pub fn max(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    extremum(ctx, r)
}

/// Min(X₁…Xₙ) → Y.
pub fn min(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    extremum(ctx, r)
}

/// Shared rule of Max and Min: the gradient goes to the inputs equal to the
/// output, split evenly among ties.
fn extremum(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let ys = ctx.shape(&y)?;
    let dt = ctx.dtype(&y)?;
    let mut hits = Vec::with_capacity(r.node.input.len());
    for x in &r.node.input {
        let eq = ctx.emit_shaped("Equal", &[x, &y], vec![], DataType::Bool, ys.clone());
        hits.push(ctx.emit_shaped("Cast", &[&eq], vec![a_int("to", dt as i64)], dt, ys.clone()));
    }
    let count = if hits.len() == 1 {
        hits[0].clone()
    } else {
        let refs: Vec<&str> = hits.iter().map(|s| s.as_str()).collect();
        ctx.emit_shaped("Sum", &refs, vec![], dt, ys.clone())
    };
    let share = ctx.binary("Div", &dy, &count)?;
    let mut out = r.none();
    for (i, hit) in hits.iter().enumerate() {
        if r.need(i) {
            let g = ctx.binary("Mul", &share, hit)?;
            let t = ctx.shape(r.input(i))?;
            out[i] = Some(ctx.unbroadcast(&g, &t)?);
        }
    }
    Ok(out)
}
