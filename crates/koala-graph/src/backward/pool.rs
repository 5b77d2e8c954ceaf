//! Gradients of MaxPool, AveragePool and GlobalAveragePool.
//!
//! MaxPool routes each output gradient to the first maximal input of its
//! window (PyTorch's convention, and ORT's Indices output), accumulating
//! where windows overlap. AveragePool spreads dY/divisor over each window with
//! a depthwise ConvTranspose of ones; the divisor map is computed here, since
//! with count_include_pad = 0 it differs at the borders.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__MaxPool.html,
//! …/onnx__AveragePool.html, …/onnx__GlobalAveragePool.html.
//! Opsets: MaxPool with overlapping windows needs ScatterElements' reduction
//! (16) and is a clear error before; ceil_mode from 10, dilations from 10/19.
//!
//! Tests: `crates/koala-graph/tests/fd_pool.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::{self, a_int, a_ints, a_string};
use crate::proto::DataType;
use anyhow::{bail, Result};

struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
}

fn window(r: &RuleInput, in_sp: &[usize], out_sp: &[usize]) -> Result<Window> {
    let kernel: Vec<usize> = attrs::ints(r.node, "kernel_shape")
        .unwrap_or_default()
        .into_iter()
        .map(|k| k as usize)
        .collect();
    let n = kernel.len();
    if n == 0 {
        bail!("pooling node has no kernel_shape");
    }
    if attrs::ints(r.node, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
        bail!("pooling with dilations is not supported");
    }
    let strides: Vec<usize> = attrs::ints(r.node, "strides")
        .map(|v| v.into_iter().map(|x| x as usize).collect())
        .unwrap_or(vec![1; n]);
    let auto_pad = attrs::string(r.node, "auto_pad", "NOTSET");
    let (pads_begin, pads_end) = match auto_pad.as_str() {
        "NOTSET" => {
            let p: Vec<usize> = attrs::ints(r.node, "pads")
                .map(|v| v.into_iter().map(|x| x as usize).collect())
                .unwrap_or(vec![0; 2 * n]);
            (p[..n].to_vec(), p[n..].to_vec())
        }
        "VALID" => (vec![0; n], vec![0; n]),
        _ => {
            let mut b = vec![0; n];
            let mut e = vec![0; n];
            for i in 0..n {
                let total = ((out_sp[i] - 1) * strides[i] + kernel[i]).saturating_sub(in_sp[i]);
                let small = total / 2;
                (b[i], e[i]) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
            }
            (b, e)
        }
    };
    Ok(Window {
        kernel,
        strides,
        pads_begin,
        pads_end,
    })
}

/// MaxPool(X) → Y [, Indices].
pub fn max_pool(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let ys = ctx.shape(r.output(0))?;
    let w = window(r, &xs[2..], &ys[2..])?;
    if attrs::int(r.node, "storage_order", 0) != 0 {
        bail!("MaxPool with storage_order=1 is not supported");
    }
    let overlapping = w.kernel.iter().zip(&w.strides).any(|(k, s)| k > s);
    if overlapping && ctx.opset() < 16 {
        bail!("MaxPool with overlapping windows needs ScatterElements(reduction=add), available from opset 16; this training graph has opset {} (koala's upgrade lifts such models to 17 before differentiating, see upgrade.rs; a graph that reaches this skipped it). Freeze the layers before this pool to train the rest", ctx.opset());
    }
    // Recompute the pool with its Indices output (flat indices into X).
    let mut attrs = r.node.attribute.clone();
    attrs.retain(|a| a.name != "storage_order");
    let outs = ctx.emit_n("MaxPool", &[&x], 2, attrs);
    let idx = outs[1].clone();
    ctx.set_fact(&idx, DataType::Int64, ys.clone());
    let total: usize = xs.iter().product();
    let ny: usize = ys.iter().product();
    let idx_flat = ctx.reshape(&idx, &[ny])?;
    let dy_flat = ctx.reshape(&dy, &[ny])?;
    let zeros = {
        let z = ctx.zeros_like(&x)?;
        ctx.reshape(&z, &[total])?
    };
    let dt = ctx.dtype(&x)?;
    let mut sattrs = vec![a_int("axis", 0)];
    if overlapping {
        sattrs.push(a_string("reduction", "add"));
    }
    let scattered = ctx.emit_shaped(
        "ScatterElements",
        &[&zeros, &idx_flat, &dy_flat],
        sattrs,
        dt,
        vec![total],
    );
    let mut out = r.none();
    out[0] = Some(ctx.reshape(&scattered, &xs)?);
    Ok(out)
}

/// AveragePool(X) → Y.
pub fn average_pool(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let ys = ctx.shape(r.output(0))?;
    let w = window(r, &xs[2..], &ys[2..])?;
    let include_pad = attrs::int(r.node, "count_include_pad", 0) != 0;
    let divisor = divisor_map(&w, &xs[2..], &ys[2..], include_pad);
    let osp: Vec<usize> = ys[2..].to_vec();
    let dshape: Vec<usize> = [1, 1].into_iter().chain(osp.iter().copied()).collect();
    let inv: Vec<f64> = divisor.iter().map(|&d| 1.0 / d as f64).collect();
    let inv_c = ctx.const_like(&inv, &dshape, &dy)?;
    let scaled = ctx.binary("Mul", &dy, &inv_c)?;
    let c = xs[1];
    let kshape: Vec<usize> = [c, 1].into_iter().chain(w.kernel.iter().copied()).collect();
    let ones = vec![1.0; kshape.iter().product()];
    let kernel = ctx.const_like(&ones, &kshape, &dy)?;
    let n = w.kernel.len();
    let mut out_pad = vec![0i64; n];
    for i in 0..n {
        let produced = (w.strides[i] * (ys[2 + i] - 1) + w.kernel[i]) as i64
            - (w.pads_begin[i] + w.pads_end[i]) as i64;
        out_pad[i] = (xs[2 + i] as i64 - produced).max(0);
    }
    // ceil_mode can make the last window overhang the padded input; the
    // ConvTranspose then produces extra rows, cropped by the pads below.
    let mut pads_end = w.pads_end.clone();
    for i in 0..n {
        let produced = (w.strides[i] * (ys[2 + i] - 1) + w.kernel[i]) as i64
            - (w.pads_begin[i] + w.pads_end[i]) as i64;
        if produced > xs[2 + i] as i64 {
            pads_end[i] += (produced - xs[2 + i] as i64) as usize;
        }
    }
    let pads: Vec<i64> = w
        .pads_begin
        .iter()
        .chain(&pads_end)
        .map(|&p| p as i64)
        .collect();
    let dt = ctx.dtype(&dy)?;
    let attrs = vec![
        a_int("group", c as i64),
        a_ints(
            "kernel_shape",
            &w.kernel.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints(
            "strides",
            &w.strides.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints("pads", &pads),
        a_ints("output_padding", &out_pad),
    ];
    let mut out = r.none();
    out[0] = Some(ctx.emit_shaped("ConvTranspose", &[&scaled, &kernel], attrs, dt, xs));
    Ok(out)
}

/// Number of elements averaged at every output position (row-major over the
/// output's spatial axes).
fn divisor_map(w: &Window, in_sp: &[usize], out_sp: &[usize], include_pad: bool) -> Vec<usize> {
    let n = out_sp.len();
    let per_axis: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            (0..out_sp[i])
                .map(|o| {
                    let start = (o * w.strides[i]) as i64 - w.pads_begin[i] as i64;
                    let end = start + w.kernel[i] as i64;
                    let (lo, hi) = if include_pad {
                        (-(w.pads_begin[i] as i64), (in_sp[i] + w.pads_end[i]) as i64)
                    } else {
                        (0, in_sp[i] as i64)
                    };
                    (end.min(hi) - start.max(lo)).max(1) as usize
                })
                .collect()
        })
        .collect();
    let total: usize = out_sp.iter().product();
    (0..total)
        .map(|flat| {
            let mut rem = flat;
            let mut prod = 1;
            for i in (0..n).rev() {
                prod *= per_axis[i][rem % out_sp[i]];
                rem /= out_sp[i];
            }
            prod
        })
        .collect()
}

/// GlobalAveragePool(X) → Y [N, C, 1, …]: dX = dY / |spatial| broadcast.
pub fn global_average_pool(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let count: usize = xs[2..].iter().product();
    let s = ctx.scalar_like(1.0 / count as f64, &dy)?;
    let scaled = ctx.binary("Mul", &dy, &s)?;
    Ok(vec![Some(ctx.expand(&scaled, &xs)?)])
}
