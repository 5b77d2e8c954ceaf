//! Gradient of InstanceNormalization.
//!
//! Math: per (n, c), over the spatial axes 2..rank (N elements per group):
//! μ = mean(X), r = 1/√(mean((X−μ)²) + ε), x̂ = (X−μ)·r,
//! Y = scale_c·x̂ + B_c. With g = dY·scale_c:
//! - dB_c = Σ_{n, spatial} dY, dscale_c = Σ_{n, spatial} dY·x̂,
//! - dX = r·(g − mean(g) − x̂·mean(g·x̂)) (means over the spatial axes).
//!
//! This is LayerNormalization's math with other axes and a per-channel
//! affine, so the statistics and the dX formula are the ones of
//! `layernorm.rs` (`stats`, `normalized_input_grad`); the file is separate
//! because the op, its inputs and its axes are (one op family per file,
//! named after it), and BatchNormalization's rule (`batchnorm.rs`) is a
//! different thing: frozen running statistics, no per-sample statistics.
//! No subgradient choices (ε > 0 keeps r finite).
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html.
//! Opsets: 1 (with `consumed_inputs`), 6 (dropped it; same math), 22 (types
//! only, above koala's range): the rule starts at 6. ORT has f32 kernels
//! only.
//!
//! Tests: `crates/koala-graph/tests/fd_instancenorm.rs`.

use super::layernorm::{normalized_input_grad, stats};
use super::{GradCtx, RuleInput};
use crate::attrs;
use anyhow::{bail, Result};

/// InstanceNormalization(X, scale, B) → Y.
pub fn instance_norm(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, scale, dy) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.dy0()?.to_string(),
    );
    let xs = ctx.shape(&x)?;
    if xs.len() < 3 {
        bail!(
            "InstanceNormalization input '{x}' has shape {xs:?}; the spec needs [N, C, D1, …] (rank ≥ 3)"
        );
    }
    let rank = xs.len() as i64;
    let spatial: Vec<i64> = (2..rank).collect();
    let batch_and_spatial: Vec<i64> = std::iter::once(0).chain(2..rank).collect();
    let eps = attrs::float(r.node, "epsilon", 1e-5) as f64;
    let st = stats(ctx, &x, &spatial, eps)?;
    let mut out = r.none();
    if r.need(2) {
        out[2] = Some(ctx.reduce_sum(&dy, &batch_and_spatial, false)?);
    }
    if r.need(1) {
        let p = ctx.binary("Mul", &dy, &st.xhat)?;
        out[1] = Some(ctx.reduce_sum(&p, &batch_and_spatial, false)?);
    }
    if r.need(0) {
        // scale [C] as [C, 1, …, 1] to broadcast against [N, C, D1, …].
        let per_channel: Vec<usize> = std::iter::once(xs[1])
            .chain(std::iter::repeat_n(1, xs.len() - 2))
            .collect();
        let sb = ctx.reshape(&scale, &per_channel)?;
        let g = ctx.binary("Mul", &dy, &sb)?;
        out[0] = Some(normalized_input_grad(ctx, &g, &st, &spatial)?);
    }
    Ok(out)
}
