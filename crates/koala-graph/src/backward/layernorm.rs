//! Gradient of LayerNormalization (all three outputs).
//!
//! Math, over the normalised axes `axis..rank` (N elements per group):
//! μ = mean(X), r = 1/√(mean((X−μ)²) + ε) (output InvStdDev), x̂ = (X−μ)·r,
//! Y = x̂·γ + β. With g = dY·γ:
//! - dβ = Σ_lead dY, dγ = Σ_lead dY·x̂ (summed back to their shapes),
//! - dX = r·(g − mean(g) − x̂·mean(g·x̂)) from Y, plus dMean/N from the Mean
//!   output, minus dInvStdDev·r²·x̂/N from the InvStdDev output
//!   (∂r/∂Xᵢ = −r³(Xᵢ−μ)/N).
//!
//! μ, r and x̂ are recomputed here from X (ReduceSum·1/N, so one form serves
//! every opset): the forward node need not expose Mean/InvStdDev, and
//! x̂ = (Y−β)/γ would divide by γ.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__LayerNormalization.html.
//! Opsets: 17 (the only version); `stash_type` (the precision of μ and r) is
//! ignored: the recomputation runs in X's type, which is what stash_type=1
//! means for f32 models (ORT 1.31 implements only stash_type=1, so an f64
//! model's Mean/InvStdDev are f32 and their gradients are cast to f64).
//! Decomposed forms (ReduceMean/Sub/Pow/Add/Sqrt/Div, RMSNorm's
//! Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul) need no rule here: they go
//! through the per-op rules.
//!
//! Tests: `crates/koala-graph/tests/fd_layernorm.rs`.

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs;
use anyhow::Result;

/// μ, r and x̂ of X over `axes`, with N (shared with `instancenorm.rs`).
pub(super) struct Stats {
    pub(super) r: String,
    pub(super) xhat: String,
    pub(super) n: usize,
}

/// Mean of `x` over `axes`, kept as size-1 axes (ReduceSum · 1/N).
pub(super) fn mean(ctx: &mut GradCtx, x: &str, axes: &[i64], n: usize) -> Result<String> {
    let s = ctx.reduce_sum(x, axes, true)?;
    let k = ctx.scalar_like(1.0 / n as f64, x)?;
    ctx.binary("Mul", &s, &k)
}

/// Recomputes the statistics of `x` over `axes` with variance epsilon `eps`.
pub(super) fn stats(ctx: &mut GradCtx, x: &str, axes: &[i64], eps: f64) -> Result<Stats> {
    let xs = ctx.shape(x)?;
    let n: usize = axes.iter().map(|&a| xs[a as usize]).product();
    let mu = mean(ctx, x, axes, n)?;
    let xc = ctx.binary("Sub", x, &mu)?;
    let sq = ctx.binary("Mul", &xc, &xc)?;
    let var = mean(ctx, &sq, axes, n)?;
    let e = ctx.scalar_like(eps, x)?;
    let ve = ctx.binary("Add", &var, &e)?;
    let (shape, dt) = (ctx.shape(&ve)?, ctx.dtype(&ve)?);
    let sd = ctx.emit_shaped("Sqrt", &[&ve], vec![], dt, shape.clone());
    let r = ctx.emit_shaped("Reciprocal", &[&sd], vec![], dt, shape);
    let xhat = ctx.binary("Mul", &xc, &r)?;
    Ok(Stats { r, xhat, n })
}

/// dX = r·(g − mean(g) − x̂·mean(g·x̂)) for g = dY·γ: the gradient of X
/// through x̂ (shared with `instancenorm.rs`).
pub(super) fn normalized_input_grad(
    ctx: &mut GradCtx,
    g: &str,
    st: &Stats,
    axes: &[i64],
) -> Result<String> {
    let m1 = mean(ctx, g, axes, st.n)?;
    let gx = ctx.binary("Mul", g, &st.xhat)?;
    let m2 = mean(ctx, &gx, axes, st.n)?;
    let c = ctx.binary("Sub", g, &m1)?;
    let xm2 = ctx.binary("Mul", &st.xhat, &m2)?;
    let c = ctx.binary("Sub", &c, &xm2)?;
    ctx.binary("Mul", &c, &st.r)
}

/// `g` cast to `like`'s element type: Mean and InvStdDev have the stash
/// type (f32 by default) even when X is f64.
fn as_type_of(ctx: &mut GradCtx, g: Option<String>, like: &str) -> Result<Option<String>> {
    let Some(g) = g else { return Ok(None) };
    let dt = ctx.dtype(like)?;
    if ctx.dtype(&g)? == dt {
        return Ok(Some(g));
    }
    let shape = ctx.shape(&g)?;
    Ok(Some(ctx.emit_shaped(
        "Cast",
        &[&g],
        vec![crate::attrs::a_int("to", dt as i64)],
        dt,
        shape,
    )))
}

/// LayerNormalization(X, Scale, B?) → Y, Mean?, InvStdDev?.
pub fn layer_norm(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let x = r.input(0).to_string();
    let xs = ctx.shape(&x)?;
    let axis = norm_axis(attrs::int(r.node, "axis", -1), xs.len());
    let axes: Vec<i64> = (axis as i64..xs.len() as i64).collect();
    let eps = attrs::float(r.node, "epsilon", 1e-5) as f64;
    let st = stats(ctx, &x, &axes, eps)?;
    let dy = r.dy.first().cloned().flatten();
    let dmean = as_type_of(ctx, r.dy.get(1).cloned().flatten(), &x)?;
    let dinv = as_type_of(ctx, r.dy.get(2).cloned().flatten(), &x)?;
    let mut out = r.none();
    let mut dx_parts: Vec<String> = Vec::new();
    if let Some(dy) = &dy {
        if r.need(2) {
            let t = ctx.shape(r.input(2))?;
            out[2] = Some(ctx.unbroadcast(dy, &t)?);
        }
        if r.need(1) {
            let p = ctx.binary("Mul", dy, &st.xhat)?;
            let t = ctx.shape(r.input(1))?;
            out[1] = Some(ctx.unbroadcast(&p, &t)?);
        }
        if r.need(0) {
            let g = ctx.binary("Mul", dy, r.input(1))?;
            dx_parts.push(normalized_input_grad(ctx, &g, &st, &axes)?);
        }
    }
    if r.need(0) {
        if let Some(dm) = &dmean {
            let k = ctx.scalar_like(1.0 / st.n as f64, &x)?;
            let s = ctx.binary("Mul", dm, &k)?;
            dx_parts.push(ctx.expand(&s, &xs)?);
        }
        if let Some(di) = &dinv {
            let k = ctx.scalar_like(-1.0 / st.n as f64, &x)?;
            let r2 = ctx.binary("Mul", &st.r, &st.r)?;
            let a = ctx.binary("Mul", di, &r2)?;
            let a = ctx.binary("Mul", &a, &k)?;
            dx_parts.push(ctx.binary("Mul", &a, &st.xhat)?);
        }
        out[0] = match dx_parts.len() {
            0 => None,
            1 => dx_parts.pop(),
            _ => {
                let dt = ctx.dtype(&x)?;
                let refs: Vec<&str> = dx_parts.iter().map(|s| s.as_str()).collect();
                Some(ctx.emit_shaped("Sum", &refs, vec![], dt, xs))
            }
        };
    }
    Ok(out)
}
