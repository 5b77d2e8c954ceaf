//! Gradients of point-wise math: Erf, Gelu, Pow, Sqrt, Reciprocal, Exp, Log,
//! Sin, Cos, Abs, Softplus, Softsign.
//!
//! Math (dX = dY · f'(X), reusing the output Y where it is cheaper):
//! - Erf: 2/√π · e^(−X²)
//! - Gelu, approximate "none": Φ(X) + X·φ(X), Φ(x) = ½(1 + erf(x/√2)),
//!   φ(x) = e^(−x²/2)/√(2π);
//!   approximate "tanh": ½(1 + t) + ½X(1 − t²)·√(2/π)(1 + 3·0.044715·X²),
//!   t = tanh(√(2/π)(X + 0.044715·X³)) (the formulas of PyTorch's
//!   `gelu_backward`, aten/src/ATen/native/cpu/Activation.cpp)
//! - Pow(X, P): P·X^(P−1) (the exponent must not need a gradient: exporters
//!   emit constant exponents, Pow(x, 2) in decomposed norms)
//! - Sqrt: ½/Y; Reciprocal: −Y²; Exp: Y; Log: 1/X; Sin: cos X; Cos: −sin X
//! - Abs: sign(X) (0 at 0, as PyTorch); Softplus: σ(X); Softsign: 1/(1+|X|)²
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Erf.html, …/onnx__Gelu.html,
//! …/onnx__Pow.html, …/onnx__Sqrt.html, …/onnx__Reciprocal.html,
//! …/onnx__Exp.html, …/onnx__Log.html, …/onnx__Sin.html, …/onnx__Cos.html,
//! …/onnx__Abs.html, …/onnx__Softplus.html, …/onnx__Softsign.html
//! (https://onnx.ai/onnx/operators/onnx__<Op>.html).
//! Opsets: Gelu exists from 20 (older exports spell it Erf/Tanh, handled by
//! those rules); Pow 7/12/13/15 differ in the exponent's types (int exponents
//! are cast to X's type here); the others changed only their type lists.
//!
//! Tests: `crates/koala-graph/tests/fd_math.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::{self, a_int};
use anyhow::{bail, Result};

/// A unary op on `x` with the shape/type of `x`.
fn unary(ctx: &mut GradCtx, op: &str, x: &str) -> Result<String> {
    let shape = ctx.shape(x)?;
    let dt = ctx.dtype(x)?;
    Ok(ctx.emit_shaped(op, &[x], vec![], dt, shape))
}

/// `dY · local` as the only input gradient.
fn times_dy(r: &RuleInput, ctx: &mut GradCtx, local: &str) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let mut out = r.none();
    out[0] = Some(ctx.binary("Mul", &dy, local)?);
    Ok(out)
}

/// Erf(X): dX = dY · 2/√π · e^(−X²).
pub fn erf(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let x2 = ctx.binary("Mul", &x, &x)?;
    let neg = unary(ctx, "Neg", &x2)?;
    let e = unary(ctx, "Exp", &neg)?;
    let k = ctx.scalar_like(std::f64::consts::FRAC_2_SQRT_PI, &x)?;
    let local = ctx.binary("Mul", &e, &k)?;
    times_dy(r, ctx, &local)
}

/// Gelu(X, approximate): see the module docs for both derivatives.
pub fn gelu(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let local = match attrs::string(r.node, "approximate", "none").as_str() {
        "none" => gelu_erf_derivative(ctx, &x)?,
        "tanh" => gelu_tanh_derivative(ctx, &x)?,
        other => bail!("Gelu approximate='{other}' is not in the ONNX spec (none, tanh)"),
    };
    times_dy(r, ctx, &local)
}

/// Φ(x) + x·φ(x).
fn gelu_erf_derivative(ctx: &mut GradCtx, x: &str) -> Result<String> {
    let inv_sqrt2 = ctx.scalar_like(std::f64::consts::FRAC_1_SQRT_2, x)?;
    let half = ctx.scalar_like(0.5, x)?;
    let one = ctx.scalar_like(1.0, x)?;
    let xs = ctx.binary("Mul", x, &inv_sqrt2)?;
    let erf = unary(ctx, "Erf", &xs)?;
    let erf1 = ctx.binary("Add", &erf, &one)?;
    let cdf = ctx.binary("Mul", &erf1, &half)?;
    let x2 = ctx.binary("Mul", x, x)?;
    let minus_half = ctx.scalar_like(-0.5, x)?;
    let ex = ctx.binary("Mul", &x2, &minus_half)?;
    let e = unary(ctx, "Exp", &ex)?;
    let k = ctx.scalar_like(1.0 / (2.0 * std::f64::consts::PI).sqrt(), x)?;
    let pdf = ctx.binary("Mul", &e, &k)?;
    let xpdf = ctx.binary("Mul", x, &pdf)?;
    ctx.binary("Add", &cdf, &xpdf)
}

/// ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715·x²), t = tanh(√(2/π)(x + 0.044715x³)).
fn gelu_tanh_derivative(ctx: &mut GradCtx, x: &str) -> Result<String> {
    const C: f64 = 0.044715;
    let s = (2.0 / std::f64::consts::PI).sqrt();
    let x2 = ctx.binary("Mul", x, x)?;
    let cx2 = {
        let c = ctx.scalar_like(C, x)?;
        ctx.binary("Mul", &x2, &c)?
    };
    let one = ctx.scalar_like(1.0, x)?;
    let inner1 = ctx.binary("Add", &one, &cx2)?; // 1 + c·x²
    let u0 = ctx.binary("Mul", x, &inner1)?; // x + c·x³
    let sk = ctx.scalar_like(s, x)?;
    let u = ctx.binary("Mul", &u0, &sk)?;
    let t = unary(ctx, "Tanh", &u)?;
    let half = ctx.scalar_like(0.5, x)?;
    let one_t = ctx.binary("Add", &one, &t)?;
    let left = ctx.binary("Mul", &one_t, &half)?;
    let t2 = ctx.binary("Mul", &t, &t)?;
    let sech2 = ctx.binary("Sub", &one, &t2)?;
    let k3 = ctx.scalar_like(3.0 * C, x)?;
    let k3x2 = ctx.binary("Mul", &x2, &k3)?;
    let du0 = ctx.binary("Add", &one, &k3x2)?;
    let du = ctx.binary("Mul", &du0, &sk)?;
    let hx = ctx.binary("Mul", x, &half)?;
    let a = ctx.binary("Mul", &hx, &sech2)?;
    let right = ctx.binary("Mul", &a, &du)?;
    ctx.binary("Add", &left, &right)
}

/// Pow(X, P): dX = dY · P · X^(P−1); an exponent that needs a gradient is refused.
pub fn pow(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    if r.need(1) {
        bail!(
            "the exponent '{}' of Pow depends on a trainable weight; koala differentiates Pow only in its base (freeze the weights that feed the exponent with --freeze <regex>)",
            r.input(1)
        );
    }
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let dt = ctx.dtype(&x)?;
    let mut p = r.input(1).to_string();
    if ctx.dtype(&p)? != dt {
        let ps = ctx.shape(&p)?;
        p = ctx.emit_shaped("Cast", &[&p], vec![a_int("to", dt as i64)], dt, ps);
    }
    let two = ctx.ints(r.input(1)).is_some_and(|v| v == [2]);
    let local = if two {
        // The common Pow(x, 2) of decomposed norms: 2·x, no Pow kernel.
        let k = ctx.scalar_like(2.0, &x)?;
        ctx.binary("Mul", &x, &k)?
    } else {
        let one = ctx.scalar_like(1.0, &x)?;
        let pm1 = ctx.binary("Sub", &p, &one)?;
        let pw = ctx.binary("Pow", &x, &pm1)?;
        ctx.binary("Mul", &pw, &p)?
    };
    let g = ctx.binary("Mul", &dy, &local)?;
    let mut out = r.none();
    out[0] = Some(ctx.unbroadcast(&g, &xs)?);
    Ok(out)
}

/// Sqrt(X) → Y: dX = dY · ½ / Y.
pub fn sqrt(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let y = r.output(0).to_string();
    let half = ctx.scalar_like(0.5, &y)?;
    let local = ctx.binary("Div", &half, &y)?;
    times_dy(r, ctx, &local)
}

/// Reciprocal(X) → Y: dX = −dY · Y².
pub fn reciprocal(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let y = r.output(0).to_string();
    let y2 = ctx.binary("Mul", &y, &y)?;
    let local = unary(ctx, "Neg", &y2)?;
    times_dy(r, ctx, &local)
}

/// Exp(X) → Y: dX = dY · Y.
pub fn exp(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let y = r.output(0).to_string();
    times_dy(r, ctx, &y)
}

/// Log(X): dX = dY / X.
pub fn log(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    Ok(vec![Some(ctx.binary("Div", &dy, &x)?)])
}

/// Sin(X): dX = dY · cos X.
pub fn sin(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let c = unary(ctx, "Cos", &x)?;
    times_dy(r, ctx, &c)
}

/// Cos(X): dX = −dY · sin X.
pub fn cos(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let s = unary(ctx, "Sin", &x)?;
    let local = unary(ctx, "Neg", &s)?;
    times_dy(r, ctx, &local)
}

/// Abs(X): dX = dY · sign(X).
pub fn abs(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let s = unary(ctx, "Sign", &x)?;
    times_dy(r, ctx, &s)
}

/// Softplus(X) = ln(1 + e^X): dX = dY · σ(X).
pub fn softplus(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let s = unary(ctx, "Sigmoid", &x)?;
    times_dy(r, ctx, &s)
}

/// Softsign(X) = X/(1+|X|): dX = dY / (1+|X|)².
pub fn softsign(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let a = unary(ctx, "Abs", &x)?;
    let one = ctx.scalar_like(1.0, &x)?;
    let d = ctx.binary("Add", &a, &one)?;
    let d2 = ctx.binary("Mul", &d, &d)?;
    Ok(vec![Some(ctx.binary("Div", &dy, &d2)?)])
}
