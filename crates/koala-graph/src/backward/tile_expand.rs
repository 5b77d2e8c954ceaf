//! Gradients of the broadcasting copies Expand and Tile.
//!
//! Math: `Y = Expand(X, shape)` broadcasts X (numpy rules), so dX sums dY
//! over the broadcast axes (`GradCtx::unbroadcast`). `Y = Tile(X, repeats)`
//! has `Y[.., r·dᵢ + j, ..] = X[.., j, ..]`; viewing dY as
//! `[r₀, d₀, r₁, d₁, …]` and summing over the `rᵢ` axes gives dX.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Expand.html,
//! https://onnx.ai/onnx/operators/onnx__Tile.html.
//! Opsets: Expand 8/13 (types only); Tile 6/13 (repeats an input from 6).
//! The shape/repeats inputs must be known when the graph is built (constants
//! or shape arithmetic the probe evaluated).
//!
//! Tests: `crates/koala-graph/tests/fd_tile_expand.rs`.

use super::{GradCtx, RuleInput};
use anyhow::{Context, Result};

/// Expand(X, shape) → Y: dX = unbroadcast(dY).
pub fn expand(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let mut out = r.none();
    out[0] = Some(ctx.unbroadcast(&dy, &xs)?);
    Ok(out)
}

/// Tile(X, repeats) → Y: dY reshaped to [r₀, d₀, r₁, d₁, …], summed over the rᵢ.
pub fn tile(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let reps = ctx.ints(r.input(1)).with_context(|| {
        format!(
            "Tile's repeats '{}' are not known when the graph is built; export them as a constant",
            r.input(1)
        )
    })?;
    let interleaved: Vec<usize> = xs
        .iter()
        .zip(&reps)
        .flat_map(|(&d, &k)| [k as usize, d])
        .collect();
    let v = ctx.reshape(&dy, &interleaved)?;
    let axes: Vec<i64> = (0..xs.len() as i64).map(|i| 2 * i).collect();
    let s = ctx.reduce_sum(&v, &axes, false)?;
    let mut out = r.none();
    out[0] = Some(ctx.reshape(&s, &xs)?);
    Ok(out)
}
