//! Gradients of broadcasting arithmetic: Add, Sub, Mul, Div, Neg, Sum, Mean.
//!
//! Each operand's gradient is the output gradient (times the other operand's
//! local derivative) summed back over the axes it was broadcast along.
//! Sum(X₁…Xₙ): dXᵢ = unbroadcast(dY); Mean(X₁…Xₙ) = Sum/n:
//! dXᵢ = unbroadcast(dY/n). No subgradient choices.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Add.html, …/onnx__Sub.html,
//! …/onnx__Mul.html, …/onnx__Div.html, …/onnx__Neg.html, …/onnx__Sum.html,
//! …/onnx__Mean.html.
//! Opsets: multidirectional broadcasting from 7, Sum and Mean from 8 (their
//! version 6 has no broadcasting: all inputs the same shape). The table
//! starts Sum and Mean at 8, the broadcasting form the tests cover; models
//! of opset 7–10 are upgraded to 17 before differentiation anyway. Later
//! versions (13) changed only the type lists.
//!
//! Tests: `crates/koala-graph/tests/fd_elementwise.rs`.

use super::{GradCtx, RuleInput};
use anyhow::Result;

/// Y = A + B.
pub fn add(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let mut out = r.none();
    for (i, slot) in out.iter_mut().enumerate().take(2) {
        if r.need(i) {
            let t = ctx.shape(r.input(i))?;
            *slot = Some(ctx.unbroadcast(&dy, &t)?);
        }
    }
    Ok(out)
}

/// Y = A − B.
pub fn sub(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let mut out = r.none();
    if r.need(0) {
        let t = ctx.shape(r.input(0))?;
        out[0] = Some(ctx.unbroadcast(&dy, &t)?);
    }
    if r.need(1) {
        let t = ctx.shape(r.input(1))?;
        let neg = negate(ctx, &dy)?;
        out[1] = Some(ctx.unbroadcast(&neg, &t)?);
    }
    Ok(out)
}

/// Y = −X.
pub fn neg(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    Ok(vec![Some(negate(ctx, &dy)?)])
}

fn negate(ctx: &mut GradCtx, x: &str) -> Result<String> {
    let shape = ctx.shape(x)?;
    let dt = ctx.dtype(x)?;
    Ok(ctx.emit_shaped("Neg", &[x], vec![], dt, shape))
}

/// Y = A · B.
pub fn mul(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let mut out = r.none();
    for (i, slot) in out.iter_mut().enumerate().take(2) {
        if r.need(i) {
            let other = r.input(1 - i).to_string();
            let prod = ctx.binary("Mul", &dy, &other)?;
            let t = ctx.shape(r.input(i))?;
            *slot = Some(ctx.unbroadcast(&prod, &t)?);
        }
    }
    Ok(out)
}

/// Y = A / B: dA = dY / B, dB = −dY · Y / B.
pub fn div(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let (a, b, y) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.output(0).to_string(),
    );
    let mut out = r.none();
    let dy_over_b = ctx.binary("Div", &dy, &b)?;
    if r.need(0) {
        let t = ctx.shape(&a)?;
        out[0] = Some(ctx.unbroadcast(&dy_over_b, &t)?);
    }
    if r.need(1) {
        let prod = ctx.binary("Mul", &dy_over_b, &y)?;
        let neg = negate(ctx, &prod)?;
        let t = ctx.shape(&b)?;
        out[1] = Some(ctx.unbroadcast(&neg, &t)?);
    }
    Ok(out)
}

/// Y = X₁ + … + Xₙ (variadic, broadcasting): dXᵢ = unbroadcast(dY).
pub fn sum(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let mut out = r.none();
    for (i, slot) in out.iter_mut().enumerate() {
        if r.need(i) {
            let t = ctx.shape(r.input(i))?;
            *slot = Some(ctx.unbroadcast(&dy, &t)?);
        }
    }
    Ok(out)
}

/// Y = (X₁ + … + Xₙ)/n (variadic, broadcasting): dXᵢ = unbroadcast(dY/n).
pub fn mean(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let k = ctx.scalar_like(1.0 / r.node.input.len() as f64, &dy)?;
    let share = ctx.binary("Mul", &dy, &k)?;
    let mut out = r.none();
    for (i, slot) in out.iter_mut().enumerate() {
        if r.need(i) {
            let t = ctx.shape(r.input(i))?;
            *slot = Some(ctx.unbroadcast(&share, &t)?);
        }
    }
    Ok(out)
}
