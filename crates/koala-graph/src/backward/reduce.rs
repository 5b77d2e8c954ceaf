//! Gradients of ReduceSum and ReduceMean: the output gradient broadcast back
//! over the reduced axes (divided by the count for the mean).
//!
//! `axes` is an attribute before opset 13 (ReduceSum) / 18 (ReduceMean) and
//! an input after; both forms are read here.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__ReduceSum.html,
//! https://onnx.ai/onnx/operators/onnx__ReduceMean.html.
//! Subgradient: none needed (linear).
//!
//! Tests: `crates/koala-graph/tests/fd_reduce.rs`.

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs;
use anyhow::{Context, Result};

/// Reduced axes (normalised, sorted) of a Reduce* node.
fn reduced_axes(ctx: &GradCtx, r: &RuleInput, rank: usize) -> Result<Vec<usize>> {
    let axes = if let Some(a) = attrs::ints(r.node, "axes") {
        Some(a)
    } else if !r.input(1).is_empty() {
        Some(
            ctx.ints(r.input(1))
                .with_context(|| format!("the axes input '{}' is not a constant", r.input(1)))?,
        )
    } else {
        None
    };
    let mut v: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a.iter().map(|&x| norm_axis(x, rank)).collect(),
        _ if attrs::int(r.node, "noop_with_empty_axes", 0) != 0 => vec![],
        _ => (0..rank).collect(),
    };
    v.sort();
    Ok(v)
}

fn reduce_grad(ctx: &mut GradCtx, r: &RuleInput, mean: bool) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let axes = reduced_axes(ctx, r, xs.len())?;
    let kept: Vec<usize> = xs
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let mut g = ctx.reshape(&dy, &kept)?;
    if mean {
        let count: usize = axes.iter().map(|&a| xs[a]).product();
        let s = ctx.scalar_like(1.0 / count.max(1) as f64, &dy)?;
        g = ctx.binary("Mul", &g, &s)?;
    }
    let mut out = r.none();
    out[0] = Some(ctx.expand(&g, &xs)?);
    Ok(out)
}

/// ReduceSum(X, axes?) → Y.
pub fn reduce_sum(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    reduce_grad(ctx, r, false)
}

/// ReduceMean(X, axes?) → Y.
pub fn reduce_mean(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    reduce_grad(ctx, r, true)
}
