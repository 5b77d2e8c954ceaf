//! Gradients of point-wise activations: Relu, LeakyRelu, Clip, Sigmoid,
//! HardSigmoid, HardSwish, Tanh.
//!
//! Subgradients follow PyTorch (the reference): Relu'(0) = 0; Clip passes the
//! gradient only strictly inside (min, max); HardSwish's derivative is
//! x/3 + 1/2 on [−3, 3].
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Relu.html, …/onnx__LeakyRelu.html,
//! …/onnx__Clip.html, …/onnx__Sigmoid.html, …/onnx__HardSigmoid.html,
//! …/onnx__HardSwish.html, …/onnx__Tanh.html.
//! Opsets: Clip's bounds are attributes before 11 and inputs from 11 (both
//! read); HardSwish exists from 14; the others changed only their types.
//!
//! Tests: `crates/koala-graph/tests/fd_activation.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs;
use crate::proto::DataType;
use anyhow::Result;

fn compare(ctx: &mut GradCtx, op: &str, a: &str, b: &str) -> Result<String> {
    let sa = ctx.shape(a)?;
    let sb = ctx.shape(b)?;
    let shape = super::broadcast_shape(&sa, &sb).unwrap_or(sa);
    Ok(ctx.emit_shaped(op, &[a, b], vec![], DataType::Bool, shape))
}

/// Y = max(X, 0). The mask reads the output (Y > 0 ⟺ X > 0), so the input
/// need not stay alive for the backward pass and ORT may fuse the producer
/// (e.g. Conv) with this activation.
pub fn relu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let zero = ctx.scalar_like(0.0, &y)?;
    let pos = compare(ctx, "Greater", &y, &zero)?;
    Ok(vec![Some(ctx.mask(&pos, &dy)?)])
}

/// Y = X for X ≥ 0, alpha·X otherwise.
pub fn leaky_relu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let alpha = attrs::float(r.node, "alpha", 0.01) as f64;
    let zero = ctx.scalar_like(0.0, &x)?;
    let a = ctx.scalar_like(alpha, &x)?;
    let pos = compare(ctx, "Greater", &x, &zero)?;
    let scaled = ctx.binary("Mul", &dy, &a)?;
    let shape = ctx.shape(&dy)?;
    let dt = ctx.dtype(&dy)?;
    Ok(vec![Some(ctx.emit_shaped(
        "Where",
        &[&pos, &dy, &scaled],
        vec![],
        dt,
        shape,
    ))])
}

/// Y = min(max(X, lo), hi); lo/hi are inputs (opset ≥ 11) or attributes.
/// The mask reads the output: lo < Y < hi ⟺ lo < X < hi (see `relu`).
pub fn clip(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let bound = |ctx: &mut GradCtx, idx: usize, attr: &str| -> Result<Option<String>> {
        if !r.input(idx).is_empty() {
            return Ok(Some(r.input(idx).to_string()));
        }
        match attrs::get(r.node, attr) {
            Some(a) => Ok(Some(ctx.scalar_like(a.f as f64, &x)?)),
            None => Ok(None),
        }
    };
    let lo = bound(ctx, 1, "min")?;
    let hi = bound(ctx, 2, "max")?;
    let mut cond: Option<String> = None;
    if let Some(lo) = lo {
        cond = Some(compare(ctx, "Greater", &x, &lo)?);
    }
    if let Some(hi) = hi {
        let c = compare(ctx, "Less", &x, &hi)?;
        cond = Some(match cond {
            Some(prev) => compare(ctx, "And", &prev, &c)?,
            None => c,
        });
    }
    let mut out = r.none();
    out[0] = Some(match cond {
        Some(c) => ctx.mask(&c, &dy)?,
        None => dy,
    });
    Ok(out)
}

/// Y = 1/(1+e^−X): dX = dY · Y · (1 − Y).
pub fn sigmoid(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let one = ctx.scalar_like(1.0, &y)?;
    let one_minus = ctx.binary("Sub", &one, &y)?;
    let local = ctx.binary("Mul", &y, &one_minus)?;
    Ok(vec![Some(ctx.binary("Mul", &dy, &local)?)])
}

/// Y = tanh(X): dX = dY · (1 − Y²).
pub fn tanh(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (y, dy) = (r.output(0).to_string(), r.dy0()?.to_string());
    let one = ctx.scalar_like(1.0, &y)?;
    let y2 = ctx.binary("Mul", &y, &y)?;
    let local = ctx.binary("Sub", &one, &y2)?;
    Ok(vec![Some(ctx.binary("Mul", &dy, &local)?)])
}

/// Y = clamp(alpha·X + beta, 0, 1): gradient alpha strictly inside.
pub fn hard_sigmoid(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let alpha = attrs::float(r.node, "alpha", 0.2) as f64;
    let beta = attrs::float(r.node, "beta", 0.5) as f64;
    let a = ctx.scalar_like(alpha, &x)?;
    let b = ctx.scalar_like(beta, &x)?;
    let ax = ctx.binary("Mul", &x, &a)?;
    let t = ctx.binary("Add", &ax, &b)?;
    let zero = ctx.scalar_like(0.0, &x)?;
    let one = ctx.scalar_like(1.0, &x)?;
    let above = compare(ctx, "Greater", &t, &zero)?;
    let below = compare(ctx, "Less", &t, &one)?;
    let inside = compare(ctx, "And", &above, &below)?;
    let scaled = ctx.binary("Mul", &dy, &a)?;
    Ok(vec![Some(ctx.mask(&inside, &scaled)?)])
}

/// Y = X · clamp(X/6 + 1/2, 0, 1). PyTorch: dX = 0 for X < −3,
/// dY·(X/3 + 1/2) for −3 ≤ X ≤ 3, dY for X > 3.
pub fn hard_swish(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let third = ctx.scalar_like(1.0 / 3.0, &x)?;
    let half = ctx.scalar_like(0.5, &x)?;
    let xs = ctx.binary("Mul", &x, &third)?;
    let mid = ctx.binary("Add", &xs, &half)?;
    let three = ctx.scalar_like(3.0, &x)?;
    let minus_three = ctx.scalar_like(-3.0, &x)?;
    let one = ctx.scalar_like(1.0, &x)?;
    let zero = ctx.scalar_like(0.0, &x)?;
    let hi = compare(ctx, "Greater", &x, &three)?;
    let lo = compare(ctx, "Less", &x, &minus_three)?;
    let shape = ctx.shape(&x)?;
    let dt = ctx.dtype(&x)?;
    let upper = ctx.emit_shaped("Where", &[&hi, &one, &mid], vec![], dt, shape.clone());
    let local = ctx.emit_shaped("Where", &[&lo, &zero, &upper], vec![], dt, shape);
    Ok(vec![Some(ctx.binary("Mul", &dy, &local)?)])
}
