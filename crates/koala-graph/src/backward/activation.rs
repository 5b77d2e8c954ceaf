//! Gradients of point-wise activations: Relu, LeakyRelu, PRelu, Elu, Selu,
//! Clip, Sigmoid, HardSigmoid, HardSwish, Tanh.
//!
//! Math (dX = dY · f'(X)):
//! - PRelu(X, slope) = X for X ≥ 0, slope·X otherwise (slope broadcast
//!   unidirectionally to X: [C,1,1] on NCHW, [1], …): dX = dY · (X > 0 ? 1 :
//!   slope), dslope = unbroadcast(dY · min(X, 0)) (X·[X ≤ 0] = min(X, 0)).
//! - Elu(X; alpha) = X for X ≥ 0, alpha·(e^X − 1) otherwise:
//!   f' = 1 for X > 0, alpha·e^X = Y + alpha otherwise.
//! - Selu(X; alpha, gamma) = gamma·X for X > 0, gamma·alpha·(e^X − 1)
//!   otherwise: f' = gamma for X > 0, gamma·alpha·e^X = Y + gamma·alpha
//!   otherwise. (Elu and Selu read the output Y, as PyTorch's
//!   `elu_backward` with `is_result` does: no Exp pass in the backward.)
//!
//! Subgradients follow PyTorch (the reference): Relu'(0) = 0; LeakyRelu,
//! PRelu, Elu and Selu take the negative branch at 0 (dX(0) = alpha, slope,
//! alpha, gamma·alpha: `x > 0 ? … : …` in aten's backward kernels; numbers
//! checked with torch 2 in `tests/fixtures/activation_subgradients.py` and
//! written into `tests/fd_activation.rs`); Clip passes the gradient only
//! strictly inside (min, max); HardSwish's derivative is x/3 + 1/2 on [−3, 3].
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Relu.html, …/onnx__LeakyRelu.html,
//! …/onnx__PRelu.html, …/onnx__Elu.html, …/onnx__Selu.html,
//! …/onnx__Clip.html, …/onnx__Sigmoid.html, …/onnx__HardSigmoid.html,
//! …/onnx__HardSwish.html, …/onnx__Tanh.html.
//! Opsets: Clip's bounds are attributes before 11 and inputs from 11 (both
//! read); HardSwish exists from 14; PRelu broadcasts its slope
//! unidirectionally from 7 (6 shared a size-1 slope only; 9 and 16 added
//! types), so its rule starts at 7; Elu and Selu dropped `consumed_inputs`
//! in 6 (the rule starts there); the others changed only their types.
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

/// `Where(X > 0, pos, neg)` shaped like the broadcast of all three.
fn positive_branch(ctx: &mut GradCtx, x: &str, pos: &str, neg: &str) -> Result<String> {
    let zero = ctx.scalar_like(0.0, x)?;
    let cond = compare(ctx, "Greater", x, &zero)?;
    let shape = [x, pos, neg].iter().try_fold(Vec::new(), |acc, v| {
        let s = ctx.shape(v)?;
        Ok::<_, anyhow::Error>(super::broadcast_shape(&acc, &s).unwrap_or(s))
    })?;
    let dt = ctx.dtype(x)?;
    Ok(ctx.emit_shaped("Where", &[&cond, pos, neg], vec![], dt, shape))
}

/// PRelu(X, slope) → Y: dX = dY · (X > 0 ? 1 : slope),
/// dslope = unbroadcast(dY · min(X, 0)).
pub fn prelu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, slope, dy) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.dy0()?.to_string(),
    );
    let mut out = r.none();
    if r.need(0) {
        let scaled = ctx.binary("Mul", &dy, &slope)?;
        out[0] = Some(positive_branch(ctx, &x, &dy, &scaled)?);
    }
    if r.need(1) {
        let zero = ctx.scalar_like(0.0, &x)?;
        let neg_part = ctx.binary("Min", &x, &zero)?;
        let g = ctx.binary("Mul", &dy, &neg_part)?;
        let t = ctx.shape(&slope)?;
        out[1] = Some(ctx.unbroadcast(&g, &t)?);
    }
    Ok(out)
}

/// `dY · (X > 0 ? pos : Y + shift)`: the Elu/Selu derivative from the output.
fn exp_linear(
    ctx: &mut GradCtx,
    r: &RuleInput,
    pos: f64,
    shift: f64,
) -> Result<Vec<Option<String>>> {
    let (x, y, dy) = (
        r.input(0).to_string(),
        r.output(0).to_string(),
        r.dy0()?.to_string(),
    );
    let p = ctx.scalar_like(pos, &x)?;
    let s = ctx.scalar_like(shift, &y)?;
    let neg = ctx.binary("Add", &y, &s)?;
    let local = positive_branch(ctx, &x, &p, &neg)?;
    Ok(vec![Some(ctx.binary("Mul", &dy, &local)?)])
}

/// Elu(X; alpha) → Y: dX = dY · (X > 0 ? 1 : Y + alpha).
pub fn elu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let alpha = attrs::float(r.node, "alpha", 1.0) as f64;
    exp_linear(ctx, r, 1.0, alpha)
}

/// Selu(X; alpha, gamma) → Y: dX = dY · (X > 0 ? gamma : Y + gamma·alpha).
/// Defaults are the spec's (and PyTorch's `selu`) constants, as f32.
pub fn selu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let alpha = attrs::float(r.node, "alpha", 1.673_263_2) as f64;
    let gamma = attrs::float(r.node, "gamma", 1.050_701) as f64;
    exp_linear(ctx, r, gamma, gamma * alpha)
}
