//! Gradients of Slice (scatter dY into zeros at the sliced positions) and
//! constant-mode Pad (slice the padding off dY).
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Slice.html,
//! https://onnx.ai/onnx/operators/onnx__Pad.html.
//! Opsets: Slice parameters are attributes before 10 and inputs from 10
//! (steps from 10; negative starts, axes and steps handled); Pad's pads are an
//! input from 11 and it gains `axes` at 18.
//!
//! Tests: `crates/koala-graph/tests/fd_slice_pad.rs`.

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs;
use anyhow::{bail, Context, Result};

/// Resolved Slice parameters per axis of X: (start, step, count).
fn slice_params(ctx: &GradCtx, r: &RuleInput, xs: &[usize]) -> Result<Vec<(i64, i64, usize)>> {
    let rank = xs.len();
    let get = |idx: usize, attr: &str| -> Result<Option<Vec<i64>>> {
        if let Some(v) = attrs::ints(r.node, attr) {
            return Ok(Some(v));
        }
        if r.input(idx).is_empty() {
            return Ok(None);
        }
        ctx.ints(r.input(idx))
            .map(Some)
            .with_context(|| format!("Slice input '{}' is not a constant", r.input(idx)))
    };
    let starts = get(1, "starts")?.context("Slice without starts")?;
    // The ends are implied by the output shape, which the probe measured.
    let axes = get(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = if r.input(4).is_empty() {
        vec![1; starts.len()]
    } else {
        ctx.ints(r.input(4))
            .with_context(|| format!("Slice steps '{}' is not a constant", r.input(4)))?
    };
    let ys = ctx.shape(r.output(0))?;
    let mut p: Vec<(i64, i64, usize)> = (0..rank).map(|i| (0, 1, xs[i])).collect();
    for (j, &a) in axes.iter().enumerate() {
        let a = norm_axis(a, rank);
        let dim = xs[a] as i64;
        let step = steps[j];
        if step == 0 {
            bail!("Slice step 0 on axis {a}");
        }
        let mut s = starts[j];
        if s < 0 {
            s += dim;
        }
        s = if step > 0 {
            s.clamp(0, dim)
        } else {
            s.clamp(0, dim - 1)
        };
        p[a] = (s, step, ys[a]);
    }
    Ok(p)
}

/// Slice(X, starts, ends, axes?, steps?) → Y.
pub fn slice(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let params = slice_params(ctx, r, &xs)?;
    let dt = ctx.dtype(&dy)?;
    let mut out = r.none();
    if params.iter().all(|&(_, step, _)| step == 1) {
        // Contiguous slice: pad dY back to X's shape.
        let mut pads = vec![0i64; 2 * xs.len()];
        for (i, &(s, _, n)) in params.iter().enumerate() {
            pads[i] = s;
            pads[xs.len() + i] = xs[i] as i64 - s - n as i64;
        }
        let p = ctx.const_i64(&pads);
        out[0] = Some(ctx.emit_shaped("Pad", &[&dy, &p], vec![], dt, xs));
        return Ok(out);
    }
    // Strided slice: scatter dY into zeros at the flat indices it came from.
    let ys = ctx.shape(&dy)?;
    let ny: usize = ys.iter().product();
    let mut idx = Vec::with_capacity(ny);
    for flat in 0..ny {
        let mut rem = flat;
        let mut off = 0i64;
        let mut mult = 1i64;
        for i in (0..xs.len()).rev() {
            let o = (rem % ys[i]) as i64;
            rem /= ys[i];
            let (s, step, _) = params[i];
            off += (s + o * step) * mult;
            mult *= xs[i] as i64;
        }
        idx.push(off);
    }
    let total: usize = xs.iter().product();
    let idx_c = ctx.const_i64(&idx);
    let dy_flat = ctx.reshape(&dy, &[ny])?;
    let z = ctx.zeros_like(&x)?;
    let zf = ctx.reshape(&z, &[total])?;
    let sc = ctx.emit_shaped(
        "ScatterElements",
        &[&zf, &idx_c, &dy_flat],
        vec![attrs::a_int("axis", 0)],
        dt,
        vec![total],
    );
    out[0] = Some(ctx.reshape(&sc, &xs)?);
    Ok(out)
}

/// Pad(X, pads, value?) in constant mode: dX = the interior of dY.
pub fn pad(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let mode = attrs::string(r.node, "mode", "constant");
    if mode != "constant" {
        bail!("Pad mode '{mode}' has no gradient rule (only 'constant')");
    }
    let xs = ctx.shape(&x)?;
    let rank = xs.len();
    let pads = match attrs::ints(r.node, "pads") {
        Some(p) => p,
        None => ctx
            .ints(r.input(1))
            .with_context(|| format!("Pad input '{}' is not a constant", r.input(1)))?,
    };
    let axes: Vec<usize> = if r.input(3).is_empty() {
        (0..rank).collect()
    } else {
        ctx.ints(r.input(3))
            .context("Pad axes input is not a constant")?
            .into_iter()
            .map(|a| norm_axis(a, rank))
            .collect()
    };
    let k = axes.len();
    let mut starts = vec![0i64; rank];
    for (j, &a) in axes.iter().enumerate() {
        starts[a] = pads[j];
        if pads[j] < 0 || pads[k + j] < 0 {
            bail!("Pad with negative pads has no gradient rule");
        }
    }
    let ends: Vec<i64> = (0..rank).map(|i| starts[i] + xs[i] as i64).collect();
    let s = ctx.const_i64(&starts);
    let e = ctx.const_i64(&ends);
    let dt = ctx.dtype(&dy)?;
    let mut out = r.none();
    out[0] = Some(ctx.emit_shaped("Slice", &[&dy, &s, &e], vec![], dt, xs));
    Ok(out)
}
