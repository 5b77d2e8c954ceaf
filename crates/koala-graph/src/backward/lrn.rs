//! Gradient of LRN (local response normalisation across channels).
//!
//! Math (ONNX's definition): for X of shape [N, C, D₁, …], with
//! lo = ⌊(size−1)/2⌋ and hi = ⌈(size−1)/2⌉,
//! S_c = Σ_{i = c−lo}^{c+hi} X_i² (channels outside [0, C) count as 0),
//! D_c = bias + (alpha/size)·S_c, Y_c = X_c · D_c^(−beta).
//! X_j enters Y_j directly and every D_c whose window holds j, i.e.
//! c ∈ [j−hi, j+lo] (the window mirrored), so with T_c = dY_c·Y_c/D_c:
//! dX_j = dY_j·D_j^(−beta) − (2·alpha·beta/size)·X_j·Σ_{c = j−hi}^{j+lo} T_c.
//! No subgradient choices (D > 0 for the spec's bias > 0).
//!
//! The channel-window sums are one AveragePool over a [N, 1, C, D₁·…] view
//! with kernel [size, 1], pads [lo, 0, hi, 0] (the mirrored window: [hi, 0,
//! lo, 0]) and count_include_pad = 1, i.e. S/size exactly up to one rounding;
//! the 1/size cancels the spec's alpha/size. Measured on ORT's CPU kernels
//! for a [8, 192, 28, 28] f32 input with size 5, one thread, two runs on a
//! shared machine (`benches/lrn_window_sum.py`): AveragePool 3.3–4.9 ms,
//! Pad + 5 shifted Slices + Sum 7.0–16 ms, Conv with a ones kernel 17–48 ms
//! (ORT's LRN forward: 49–65 ms). ORT has no LRN gradient kernel.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__LRN.html.
//! Opsets: 1 and 13 (13 added bfloat16 only): one rule serves both. ORT has
//! f32 kernels only, for NCHW inputs and odd `size` only (it refuses the
//! others when the model loads); the rule follows the spec for any rank and
//! size, but only odd sizes on NCHW are tested.
//!
//! Tests: `crates/koala-graph/tests/fd_lrn.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::{self, a_int, a_ints};
use crate::model::{node_label, Model};
use anyhow::{bail, Result};

/// LRN nodes ONNX Runtime refuses to load (an even `size`: its kernel
/// requires an odd one), each as a message naming the node and what to do.
/// Checked before ONNX Runtime sees the graph, whose own refusal is a raw
/// "size_ % 2 == 1 was false" without the node.
pub fn ort_refusals(model: &Model) -> Vec<String> {
    model
        .graph()
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "LRN" && (n.domain.is_empty() || n.domain == "ai.onnx"))
        .filter_map(|(i, n)| {
            let size = attrs::int(n, "size", 0);
            (size < 1 || size % 2 == 0).then(|| {
                format!(
                    "{} has size {size}: ONNX Runtime's LRN kernel accepts odd sizes only, so it runs neither this model nor the original file; re-export it with an odd size (e.g. {})",
                    node_label(i, n),
                    (size + 1).max(1)
                )
            })
        })
        .collect()
}

/// Σ over the channel window [c − before, c + after] of `x` (shape [N, C, …]),
/// divided by `before + after + 1`, shaped like `x`.
fn channel_window_mean(ctx: &mut GradCtx, x: &str, before: i64, after: i64) -> Result<String> {
    let shape = ctx.shape(x)?;
    let dt = ctx.dtype(x)?;
    let rest: usize = shape[2..].iter().product();
    let view = ctx.reshape(x, &[shape[0], 1, shape[1], rest])?;
    let attrs = vec![
        a_ints("kernel_shape", &[before + after + 1, 1]),
        a_ints("pads", &[before, 0, after, 0]),
        a_int("count_include_pad", 1),
    ];
    let pooled = ctx.emit_shaped(
        "AveragePool",
        &[&view],
        attrs,
        dt,
        vec![shape[0], 1, shape[1], rest],
    );
    ctx.reshape(&pooled, &shape)
}

/// LRN(X; size, alpha, beta, bias) → Y.
pub fn lrn(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, y, dy) = (
        r.input(0).to_string(),
        r.output(0).to_string(),
        r.dy0()?.to_string(),
    );
    let size = attrs::int(r.node, "size", 0);
    if size < 1 {
        bail!("LRN needs a positive 'size' attribute (got {size}); the ONNX spec requires it");
    }
    if ctx.shape(&x)?.len() < 2 {
        bail!("LRN input '{x}' must have at least 2 dimensions [N, C, …]");
    }
    let alpha = attrs::float(r.node, "alpha", 1e-4) as f64;
    let beta = attrs::float(r.node, "beta", 0.75) as f64;
    let bias = attrs::float(r.node, "bias", 1.0) as f64;
    let (lo, hi) = ((size - 1) / 2, size / 2);
    // D = bias + alpha · mean over the window of X².
    let sq = ctx.binary("Mul", &x, &x)?;
    let win = channel_window_mean(ctx, &sq, lo, hi)?;
    let a = ctx.scalar_like(alpha, &x)?;
    let scaled = ctx.binary("Mul", &win, &a)?;
    let b = ctx.scalar_like(bias, &x)?;
    let d = ctx.binary("Add", &scaled, &b)?;
    // Direct term dY · D^(−beta).
    let nb = ctx.scalar_like(-beta, &x)?;
    let d_pow = ctx.binary("Pow", &d, &nb)?;
    let direct = ctx.binary("Mul", &dy, &d_pow)?;
    // Cross term (2·alpha·beta)·X·mean over the mirrored window of dY·Y/D.
    let dyy = ctx.binary("Mul", &dy, &y)?;
    let t = ctx.binary("Div", &dyy, &d)?;
    let back = channel_window_mean(ctx, &t, hi, lo)?;
    let k = ctx.scalar_like(2.0 * alpha * beta, &x)?;
    let xk = ctx.binary("Mul", &x, &k)?;
    let cross = ctx.binary("Mul", &xk, &back)?;
    let mut out = r.none();
    out[0] = Some(ctx.binary("Sub", &direct, &cross)?);
    Ok(out)
}
