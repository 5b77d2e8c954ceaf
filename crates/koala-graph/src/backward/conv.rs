//! Gradients of Conv and ConvTranspose (any spatial rank, groups incl.
//! depthwise, strides, explicit pads or auto_pad, dilations).
//!
//! Conv:  dX = ConvTranspose(dY, W) with the forward's geometry (an
//! output_padding makes the result exactly X's size); dW is a correlation of
//! X with dY, written either as one Conv on transposed operands (batch
//! becomes the channel axis, forward strides become dilations) or, for
//! depthwise convs, as one shifted slice of X per kernel tap times dY.
//! dB = ReduceSum(dY) over batch and space.
//!
//! On the `ort` execution target (ORT's blocked kernels, `nchwc.rs`) three forms change,
//! because they are faster there: a pointwise conv's dX is a 1×1 Conv with Wᵀ; a
//! depthwise conv's dW is one depthwise Conv with the batch folded into the channels; a
//! strided depthwise dX inserts its zeros with one Pad (which the pass runs on blocked
//! data) instead of Concat.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Conv.html,
//! https://onnx.ai/onnx/operators/onnx__ConvTranspose.html.
//! Opsets: 1/11 (11 only clarified auto_pad and default attributes).
//!
//! Tests: `crates/koala-graph/tests/fd_conv.rs`.

use super::{ConvWeightGrad, ExecutionTarget, GradCtx, RuleInput};
use crate::attrs::{self, a_int, a_ints};
use anyhow::{bail, Result};

/// Geometry of a Conv node resolved to explicit numbers.
#[derive(Clone, Debug)]
struct Geometry {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
    group: usize,
}

impl Geometry {
    /// group, kernel_shape, strides, dilations and pads as node attributes
    /// (shared by the Conv/ConvTranspose nodes the rules emit).
    fn attrs(&self) -> Vec<crate::proto::AttributeProto> {
        let ints = |v: &[usize]| v.iter().map(|&k| k as i64).collect::<Vec<_>>();
        vec![
            a_int("group", self.group as i64),
            a_ints("kernel_shape", &ints(&self.kernel)),
            a_ints("strides", &ints(&self.strides)),
            a_ints("dilations", &ints(&self.dilations)),
            a_ints("pads", &self.pads_attr()),
        ]
    }

    fn pads_attr(&self) -> Vec<i64> {
        self.pads_begin
            .iter()
            .chain(&self.pads_end)
            .map(|&p| p as i64)
            .collect()
    }
}

/// Resolves attributes (incl. auto_pad) for a conv whose input spatial size
/// is `in_sp` and output spatial size is `out_sp`.
fn geometry(
    r: &RuleInput,
    kernel: Vec<usize>,
    in_sp: &[usize],
    out_sp: &[usize],
) -> Result<Geometry> {
    let n = kernel.len();
    let get = |name: &str| {
        attrs::ints(r.node, name).map(|v| v.into_iter().map(|x| x as usize).collect::<Vec<_>>())
    };
    let strides = get("strides").unwrap_or(vec![1; n]);
    let dilations = get("dilations").unwrap_or(vec![1; n]);
    let group = attrs::int(r.node, "group", 1) as usize;
    let auto_pad = attrs::string(r.node, "auto_pad", "NOTSET");
    let (pads_begin, pads_end) = match auto_pad.as_str() {
        "NOTSET" => {
            let p = get("pads").unwrap_or(vec![0; 2 * n]);
            (p[..n].to_vec(), p[n..].to_vec())
        }
        "VALID" => (vec![0; n], vec![0; n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut b = vec![0; n];
            let mut e = vec![0; n];
            for i in 0..n {
                let need = (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1;
                let total = need.saturating_sub(in_sp[i]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (b[i], e[i]) = (small, total - small);
                } else {
                    (b[i], e[i]) = (total - small, small);
                }
            }
            (b, e)
        }
        other => bail!("unknown auto_pad '{other}'"),
    };
    Ok(Geometry {
        kernel,
        strides,
        dilations,
        pads_begin,
        pads_end,
        group,
    })
}

/// X, W, dY and their shapes (plus Y's), as both conv rules start.
struct Operands {
    x: String,
    w: String,
    dy: String,
    xs: Vec<usize>,
    ws: Vec<usize>,
    ys: Vec<usize>,
}

fn operands(ctx: &GradCtx, r: &RuleInput) -> Result<Operands> {
    let (x, w, dy) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.dy0()?.to_string(),
    );
    let (xs, ws, ys) = (ctx.shape(&x)?, ctx.shape(&w)?, ctx.shape(r.output(0))?);
    Ok(Operands {
        x,
        w,
        dy,
        xs,
        ws,
        ys,
    })
}

/// Conv(X, W, B?) → Y.
pub fn conv(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let Operands {
        x,
        w,
        dy,
        xs,
        ws,
        ys,
    } = operands(ctx, r)?;
    let g = geometry(r, ws[2..].to_vec(), &xs[2..], &ys[2..])?;
    let mut out = r.none();
    let pointwise = is_pointwise(&g);
    let depthwise = g.group == xs[1] && ws[0] == xs[1] && ws[1] == 1;
    // The `ort` target's blocked kernels (`nchwc.rs`) change which form is fastest.
    let block = blocked_kernels(r, &xs);
    if r.need(0) {
        out[0] = Some(if pointwise && block.is_some() {
            pointwise_input_grad_conv(ctx, &dy, &w, &xs, &ys)?
        } else if pointwise {
            pointwise_input_grad(ctx, &dy, &w, &xs, &ys)?
        } else if depthwise {
            match depthwise_input_grad_conv(ctx, &dy, &w, &xs, &ys, &g, block.is_some())? {
                Some(dx) => dx,
                None => conv_input_grad(ctx, &dy, &w, &xs, &ys, &g)?,
            }
        } else {
            conv_input_grad(ctx, &dy, &w, &xs, &ys, &g)?
        });
    }
    if r.need(1) {
        out[1] = Some(if pointwise {
            pointwise_weight_grad(ctx, &x, &dy, &xs, &ws, &ys)?
        } else if block.is_some_and(|b| depthwise && (xs[0] * xs[1]) % b == 0)
            && r.options.conv_weight_grad == ConvWeightGrad::Auto
        {
            depthwise_weight_grad_batch_channels(ctx, &x, &dy, &xs, &ys, &g)?
        } else if depthwise && r.options.conv_weight_grad == ConvWeightGrad::UnfoldDepthwise {
            depthwise_weight_grad_unfold(ctx, &x, &dy, &xs, &ys, &g)?
        } else if r.options.conv_weight_grad != ConvWeightGrad::TransposedConv
            && dense_unfold_applies(&g, &xs)
        {
            dense_weight_grad_unfold(ctx, &x, &dy, &xs, &ws, &ys, &g)?
        } else {
            conv_weight_grad(ctx, &x, &dy, &xs, &ws, &ys, &g)?
        });
    }
    if r.node.input.len() > 2 && r.need(2) {
        let axes: Vec<i64> = std::iter::once(0).chain(2..ys.len() as i64).collect();
        out[2] = Some(ctx.reduce_sum(&dy, &axes, false)?);
    }
    Ok(out)
}

/// The channel block of ORT's blocked kernels when the graph is written for them (`ort`
/// target, a runtime that has them) and the conv is 2-D; None otherwise.
fn blocked_kernels(r: &RuleInput, xs: &[usize]) -> Option<usize> {
    (r.options.target == ExecutionTarget::Ort && xs.len() == 4)
        .then(crate::nchwc::block_size)
        .flatten()
}

/// dX of a pointwise conv as a 1×1 Conv of dY with Wᵀ ([Cin, Cout, 1, 1]): on the blocked
/// kernels this runs ≈ 2× faster than the MatMul form (34 MobileNetV2 layers, b16@96:
/// 19 vs 38–40 ms, `ort` target only).
fn pointwise_input_grad_conv(
    ctx: &mut GradCtx,
    dy: &str,
    w: &str,
    xs: &[usize],
    ys: &[usize],
) -> Result<String> {
    let (cin, cout) = (xs[1], ys[1]);
    let w2 = ctx.reshape(w, &[cout, cin])?;
    let wt = ctx.transpose(&w2, &[1, 0])?;
    let wt4 = ctx.reshape(&wt, &[cin, cout, 1, 1])?;
    let dt = ctx.dtype(dy)?;
    Ok(ctx.emit_shaped(
        "Conv",
        &[dy, &wt4],
        vec![a_ints("kernel_shape", &[1, 1])],
        dt,
        xs.to_vec(),
    ))
}

/// dW of a depthwise conv with the batch folded into the channels (`ort` target): with
/// X' = X as [1, N·C, H, W] and dY' = dY as [N·C, 1, Ho, Wo],
/// Z = Conv(X', dY', group N·C, kernel Ho×Wo, dilations = forward strides, strides =
/// forward dilations, forward begin pads) is [1, N·C, KH, KW] with
/// Z[n·C + c, i, j] = Σ_{y,x} dY[n, c, y, x]·Xpad[n, c, y·s + i·d, x·s + j·d], so
/// dW = Σₙ Z. A depthwise conv of N·C channels, which the blocked kernels run directly on
/// the blocked X and dY (both reshapes move whole channel blocks): 8.5–10 ms against
/// ≈ 100 ms for the transposed-operand form over MobileNetV2's 17 depthwise layers at
/// b16@96 (helper prototype, 1 thread).
fn depthwise_weight_grad_batch_channels(
    ctx: &mut GradCtx,
    x: &str,
    dy: &str,
    xs: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<String> {
    let (n, c) = (xs[0], xs[1]);
    let xr = ctx.reshape(x, &[1, n * c, xs[2], xs[3]])?;
    let dyr = ctx.reshape(dy, &[n * c, 1, ys[2], ys[3]])?;
    // End pads just large enough to reach the last tap (never negative: a larger Z is
    // sliced to the kernel below).
    let mut pe = [0usize; 2];
    let mut zs = [0usize; 2];
    for i in 0..2 {
        let reach = g.strides[i] * (ys[2 + i] - 1) + g.dilations[i] * (g.kernel[i] - 1) + 1;
        pe[i] = reach.saturating_sub(xs[2 + i] + g.pads_begin[i]);
        let span = xs[2 + i] + g.pads_begin[i] + pe[i];
        zs[i] = (span - (g.strides[i] * (ys[2 + i] - 1) + 1)) / g.dilations[i] + 1;
    }
    let dt = ctx.dtype(x)?;
    let attrs = vec![
        a_int("group", (n * c) as i64),
        a_ints("kernel_shape", &[ys[2] as i64, ys[3] as i64]),
        a_ints("dilations", &[g.strides[0] as i64, g.strides[1] as i64]),
        a_ints("strides", &[g.dilations[0] as i64, g.dilations[1] as i64]),
        a_ints(
            "pads",
            &[
                g.pads_begin[0] as i64,
                g.pads_begin[1] as i64,
                pe[0] as i64,
                pe[1] as i64,
            ],
        ),
    ];
    let mut z = ctx.emit_shaped(
        "Conv",
        &[&xr, &dyr],
        attrs,
        dt,
        vec![1, n * c, zs[0], zs[1]],
    );
    if zs[..] != g.kernel[..] {
        z = slice_spatial(ctx, &z, &g.kernel)?;
    }
    let k = g.kernel[0] * g.kernel[1];
    let z3 = ctx.reshape(&z, &[n, c, k])?;
    let dw = ctx.reduce_sum(&z3, &[0], false)?;
    ctx.reshape(&dw, &[c, 1, g.kernel[0], g.kernel[1]])
}

/// A 1×1 convolution without stride, padding or groups is a matrix product
/// per image; its gradients are matrix products too, which ORT runs as large
/// GEMMs instead of the degenerate convolutions of the general formulas.
fn is_pointwise(g: &Geometry) -> bool {
    g.group == 1
        && g.kernel.iter().all(|&k| k == 1)
        && g.strides.iter().all(|&s| s == 1)
        && g.pads_begin.iter().chain(&g.pads_end).all(|&p| p == 0)
}

/// dX of a pointwise conv: Wᵀ·dY per image, [Cin, Cout] × [N, Cout, S] → [N, Cin, S].
fn pointwise_input_grad(
    ctx: &mut GradCtx,
    dy: &str,
    w: &str,
    xs: &[usize],
    ys: &[usize],
) -> Result<String> {
    let (n, cin, cout) = (xs[0], xs[1], ys[1]);
    let sp: usize = ys[2..].iter().product();
    let w2 = ctx.reshape(w, &[cout, cin])?;
    let wt = ctx.transpose(&w2, &[1, 0])?;
    let dy3 = ctx.reshape(dy, &[n, cout, sp])?;
    let dt = ctx.dtype(dy)?;
    let dx3 = ctx.emit_shaped("MatMul", &[&wt, &dy3], vec![], dt, vec![n, cin, sp]);
    ctx.reshape(&dx3, xs)
}

/// dW of a pointwise conv: Σₙ dYₙ·Xₙᵀ, one batched MatMul and a sum over the batch.
fn pointwise_weight_grad(
    ctx: &mut GradCtx,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
) -> Result<String> {
    let (n, cin, cout) = (xs[0], xs[1], ys[1]);
    let sp: usize = ys[2..].iter().product();
    let x3 = ctx.reshape(x, &[n, cin, sp])?;
    let dy3 = ctx.reshape(dy, &[n, cout, sp])?;
    let dt = ctx.dtype(dy)?;
    // Per-image products summed over the batch write an [N, Cout, Cin]
    // intermediate; where that outweighs the activations (small spatial
    // size, wide layers) one GEMM over batch·space after moving the batch
    // axis next to space is cheaper.
    let dw = if n * cout * cin > n * sp * (cout + cin) {
        let xt = ctx.transpose(&x3, &[0, 2, 1])?; // [N, S, Cin]
        let xf = ctx.reshape(&xt, &[n * sp, cin])?;
        let dyt = ctx.transpose(&dy3, &[1, 0, 2])?; // [Cout, N, S]
        let dyf = ctx.reshape(&dyt, &[cout, n * sp])?;
        ctx.emit_shaped("MatMul", &[&dyf, &xf], vec![], dt, vec![cout, cin])
    } else {
        let xt = ctx.transpose(&x3, &[0, 2, 1])?;
        let per_image = ctx.emit_shaped("MatMul", &[&dy3, &xt], vec![], dt, vec![n, cout, cin]);
        ctx.reduce_sum(&per_image, &[0], false)?
    };
    ctx.reshape(&dw, ws)
}

/// dX of a depthwise conv as a depthwise Conv of dY (zero-inserted when
/// strided) with the spatially flipped kernel (a correlation with "full"
/// padding). ORT's depthwise Conv kernels are far faster than its grouped
/// ConvTranspose. Returns None where the padding would be negative (use
/// ConvTranspose).
fn depthwise_input_grad_conv(
    ctx: &mut GradCtx,
    dy: &str,
    w: &str,
    xs: &[usize],
    ys: &[usize],
    g: &Geometry,
    blocked: bool,
) -> Result<Option<String>> {
    let n = g.kernel.len();
    // A strided conv's input gradient is the stride-1 one applied to dY with
    // s−1 zeros inserted after every element (length OH·s per axis).
    let dilated: Vec<usize> = (0..n).map(|i| ys[2 + i] * g.strides[i]).collect();
    let mut pb = vec![0i64; n];
    let mut pe = vec![0i64; n];
    for i in 0..n {
        let span = ((g.kernel[i] - 1) * g.dilations[i]) as i64;
        pb[i] = span - g.pads_begin[i] as i64;
        pe[i] = xs[2 + i] as i64 + span - dilated[i] as i64 - pb[i];
        if pb[i] < 0 || pe[i] < 0 {
            return Ok(None);
        }
    }
    let dy = if g.strides.iter().all(|&s| s == 1) {
        dy.to_string()
    } else if blocked {
        insert_zeros_by_pad(ctx, dy, ys, &g.strides)?
    } else {
        insert_zeros(ctx, dy, ys, &g.strides)?
    };
    let dy = dy.as_str();
    // Flip the kernel on every spatial axis: Slice with step −1.
    let ws = ctx.shape(w)?;
    let dt = ctx.dtype(w)?;
    let starts = ctx.const_i64(&vec![-1; n]);
    let ends = ctx.const_i64(&vec![i64::MIN; n]);
    let axes = ctx.const_i64(&(2..2 + n as i64).collect::<Vec<_>>());
    let steps = ctx.const_i64(&vec![-1; n]);
    let flipped = ctx.emit_shaped("Slice", &[w, &starts, &ends, &axes, &steps], vec![], dt, ws);
    let pads: Vec<i64> = pb.iter().chain(&pe).copied().collect();
    let attrs = vec![
        a_int("group", g.group as i64),
        a_ints(
            "kernel_shape",
            &g.kernel.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints(
            "dilations",
            &g.dilations.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints("pads", &pads),
    ];
    Ok(Some(ctx.emit_shaped(
        "Conv",
        &[dy, &flipped],
        attrs,
        dt,
        xs.to_vec(),
    )))
}

/// [`insert_zeros`] for a 2-D [N, C, H, W] `t` as Reshape → [N, C, H, 1, W, 1], one Pad at
/// the end of the unit axes, Reshape back: the form the `ort` target's blocked-kernel pass
/// runs on blocked data (`nchwc.rs`, spatial views), so the strided depthwise input
/// gradient never leaves the blocked layout.
fn insert_zeros_by_pad(
    ctx: &mut GradCtx,
    t: &str,
    shape: &[usize],
    strides: &[usize],
) -> Result<String> {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let u = ctx.reshape(t, &[n, c, h, 1, w, 1])?;
    let (sh, sw) = (strides[0], strides[1]);
    let pads = ctx.const_i64(&[
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        (sh - 1) as i64,
        0,
        (sw - 1) as i64,
    ]);
    let dt = ctx.dtype(t)?;
    let p = ctx.emit_shaped("Pad", &[&u, &pads], vec![], dt, vec![n, c, h, sh, w, sw]);
    ctx.reshape(&p, &[n, c, h * sh, w * sw])
}

/// Inserts `s−1` zeros after every element of each spatial axis of `t`
/// ([N, C, *S] → [N, C, *(S·s)]): Unsqueeze a unit axis after each spatial
/// axis, Pad it to `s`, merge. Standard ops only, one pass over the result.
fn insert_zeros(ctx: &mut GradCtx, t: &str, shape: &[usize], strides: &[usize]) -> Result<String> {
    // Axis by axis: [.., L, ..] → unsqueeze after L → concat with s−1 zero
    // slabs → merge to L·s. (Concat is a plain copy in ORT; a 6-D Pad was
    // several times slower.)
    let mut cur = t.to_string();
    let mut cur_shape = shape.to_vec();
    for (i, &s) in strides.iter().enumerate() {
        if s == 1 {
            continue;
        }
        let axis = 2 + i;
        let u = ctx.unsqueeze(&cur, &[(axis + 1) as i64])?;
        let zeros = ctx.zeros_like(&u)?;
        let mut parts = vec![u.as_str()];
        parts.extend(std::iter::repeat_n(zeros.as_str(), s - 1));
        let mut cat_shape = ctx.shape(&u)?;
        cat_shape[axis + 1] = s;
        let dt = ctx.dtype(t)?;
        let cat = ctx.emit_shaped(
            "Concat",
            &parts,
            vec![a_int("axis", (axis + 1) as i64)],
            dt,
            cat_shape,
        );
        cur_shape[axis] *= s;
        cur = ctx.reshape(&cat, &cur_shape)?;
    }
    Ok(cur)
}

/// dX of a Conv: ConvTranspose of dY with the same weights and geometry.
fn conv_input_grad(
    ctx: &mut GradCtx,
    dy: &str,
    w: &str,
    xs: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<String> {
    let n = g.kernel.len();
    let mut out_pad = vec![0i64; n];
    for i in 0..n {
        let produced = g.strides[i] * (ys[2 + i] - 1) + (g.kernel[i] - 1) * g.dilations[i] + 1;
        let produced = produced as i64 - g.pads_begin[i] as i64 - g.pads_end[i] as i64;
        out_pad[i] = xs[2 + i] as i64 - produced;
        if out_pad[i] < 0 {
            bail!(
                "cannot size the input gradient (spatial axis {i}: {produced} > {})",
                xs[2 + i]
            );
        }
    }
    let dt = ctx.dtype(dy)?;
    let mut attrs = g.attrs();
    attrs.push(a_ints("output_padding", &out_pad));
    Ok(ctx.emit_shaped("ConvTranspose", &[dy, w], attrs, dt, xs.to_vec()))
}

/// dW of a Conv as one Conv over transposed operands:
/// Xr = X as [Cin/g, g·N, *S], dYr = dY as [Cout, N, *OS];
/// Conv(Xr, dYr, group g, strides = forward dilations, dilations = forward
/// strides, forward pads) = [Cin/g, Cout, *K'], sliced to K and transposed.
fn conv_weight_grad(
    ctx: &mut GradCtx,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<String> {
    let (nb, cin, cout, grp) = (xs[0], xs[1], ys[1], g.group);
    let (cin_g, cout_g) = (cin / grp, cout / grp);
    let sp = &xs[2..];
    let osp = &ys[2..];
    let rank = xs.len();
    // Xr: [N, g, Cin_g, *S] -> [Cin_g, g, N, *S] -> [Cin_g, g*N, *S]
    let xr = regroup(ctx, x, [nb, grp, cin_g], sp, [2, 1, 0], [cin_g, grp * nb])?;
    // dYr: [N, g, Cout_g, *OS] -> [g, Cout_g, N, *OS] -> [Cout, N, *OS]
    let dyr = regroup(ctx, dy, [nb, grp, cout_g], osp, [1, 2, 0], [cout, nb])?;
    let n = g.kernel.len();
    let kprime: Vec<usize> = (0..n)
        .map(|i| {
            (sp[i] + g.pads_begin[i] + g.pads_end[i] - ((osp[i] - 1) * g.strides[i] + 1))
                / g.dilations[i]
                + 1
        })
        .collect();
    let dt = ctx.dtype(x)?;
    let zshape: Vec<usize> = [cin_g, cout]
        .into_iter()
        .chain(kprime.iter().copied())
        .collect();
    let attrs = vec![
        a_int("group", grp as i64),
        a_ints(
            "kernel_shape",
            &osp.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints(
            "strides",
            &g.dilations.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints(
            "dilations",
            &g.strides.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        ),
        a_ints("pads", &g.pads_attr()),
    ];
    let mut z = ctx.emit_shaped("Conv", &[&xr, &dyr], attrs, dt, zshape);
    if kprime != g.kernel {
        z = slice_spatial(ctx, &z, &g.kernel)?;
    }
    let perm: Vec<usize> = [1, 0].into_iter().chain(2..rank).collect();
    let dw = ctx.transpose(&z, &perm)?;
    ctx.reshape(&dw, ws)
}

/// Views `t` [N, g·C, *S] as [N, g, C, *S], permutes those three axes by
/// `perm` and merges them into `lead` [a, b]: the batch-as-channels layouts
/// of the weight-gradient Conv. Without groups it is one Transpose.
fn regroup(
    ctx: &mut GradCtx,
    t: &str,
    split: [usize; 3],
    spatial: &[usize],
    perm: [usize; 3],
    lead: [usize; 2],
) -> Result<String> {
    let rank = spatial.len() + 2;
    if split[1] == 1 {
        let perm: Vec<usize> = [1, 0].into_iter().chain(2..rank).collect();
        return ctx.transpose(t, &perm);
    }
    let s5: Vec<usize> = split.into_iter().chain(spatial.iter().copied()).collect();
    let t5 = ctx.reshape(t, &s5)?;
    let p5: Vec<usize> = perm.into_iter().chain(3..rank + 1).collect();
    let tt = ctx.transpose(&t5, &p5)?;
    let s4: Vec<usize> = lead.into_iter().chain(spatial.iter().copied()).collect();
    ctx.reshape(&tt, &s4)
}

/// Keeps the first `keep[i]` entries of each spatial axis (axes 2..).
fn slice_spatial(ctx: &mut GradCtx, z: &str, keep: &[usize]) -> Result<String> {
    let mut shape = ctx.shape(z)?;
    let dt = ctx.dtype(z)?;
    let starts = ctx.const_i64(&vec![0; keep.len()]);
    let ends = ctx.const_i64(&keep.iter().map(|&k| k as i64).collect::<Vec<_>>());
    let axes = ctx.const_i64(&(2..2 + keep.len() as i64).collect::<Vec<_>>());
    for (i, &k) in keep.iter().enumerate() {
        shape[2 + i] = k;
    }
    Ok(ctx.emit_shaped("Slice", &[z, &starts, &ends, &axes], vec![], dt, shape))
}

/// For each kernel tap (row-major over the kernel), the strided slice of the
/// zero-padded X that the tap meets at every output position: [N, Cin, *OS]
/// each. The building block of both unfold weight gradients.
fn tap_slices(
    ctx: &mut GradCtx,
    x: &str,
    xs: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<Vec<String>> {
    let n = g.kernel.len();
    let dt = ctx.dtype(x)?;
    let pads: Vec<i64> = [0i64, 0]
        .into_iter()
        .chain(g.pads_begin.iter().map(|&p| p as i64))
        .chain([0i64, 0])
        .chain(g.pads_end.iter().map(|&p| p as i64))
        .collect();
    let padded_shape: Vec<usize> = xs
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if i < 2 {
                d
            } else {
                d + g.pads_begin[i - 2] + g.pads_end[i - 2]
            }
        })
        .collect();
    let xp = if pads.iter().any(|&p| p != 0) {
        let p = ctx.const_i64(&pads);
        ctx.emit_shaped("Pad", &[x, &p], vec![], dt, padded_shape)
    } else {
        x.to_string()
    };
    let mut slice_shape = ys.to_vec();
    slice_shape[1] = xs[1];
    let taps: usize = g.kernel.iter().product();
    let axes = ctx.const_i64(&(2..2 + n as i64).collect::<Vec<_>>());
    let steps = ctx.const_i64(&g.strides.iter().map(|&s| s as i64).collect::<Vec<_>>());
    let mut slices = Vec::with_capacity(taps);
    for t in 0..taps {
        let mut rem = t;
        let mut idx = vec![0usize; n];
        for i in (0..n).rev() {
            idx[i] = rem % g.kernel[i];
            rem /= g.kernel[i];
        }
        let starts: Vec<i64> = (0..n).map(|i| (idx[i] * g.dilations[i]) as i64).collect();
        let ends: Vec<i64> = (0..n)
            .map(|i| starts[i] + ((ys[2 + i] - 1) * g.strides[i] + 1) as i64)
            .collect();
        let s = ctx.const_i64(&starts);
        let e = ctx.const_i64(&ends);
        slices.push(ctx.emit_shaped(
            "Slice",
            &[&xp, &s, &e, &axes, &steps],
            vec![],
            dt,
            slice_shape.clone(),
        ));
    }
    Ok(slices)
}

/// dW of a depthwise conv (multiplier 1) as a sum over kernel taps: for tap
/// k, the strided slice of the zero-padded X that meets each output position,
/// times dY, summed over batch and space. Memory-light and free of the big
/// kernels the transposed-conv form needs.
fn depthwise_weight_grad_unfold(
    ctx: &mut GradCtx,
    x: &str,
    dy: &str,
    xs: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<String> {
    let dt = ctx.dtype(x)?;
    let axes_all: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
    let slices = tap_slices(ctx, x, xs, ys, g)?;
    let mut per_tap = Vec::with_capacity(slices.len());
    for sl in &slices {
        let prod = ctx.binary("Mul", sl, dy)?;
        let red = ctx.reduce_sum(&prod, &axes_all, false)?; // [C]
        per_tap.push(ctx.unsqueeze(&red, &[1])?); // [C, 1]
    }
    let refs: Vec<&str> = per_tap.iter().map(|s| s.as_str()).collect();
    let c = xs[1];
    let cat = ctx.emit_shaped(
        "Concat",
        &refs,
        vec![a_int("axis", 1)],
        dt,
        vec![c, slices.len()],
    );
    let wshape: Vec<usize> = [c, 1].into_iter().chain(g.kernel.iter().copied()).collect();
    ctx.reshape(&cat, &wshape)
}

/// Dense (one group) convs whose output position reads at most this many
/// input values (Cin · taps) get the unfold weight gradient under
/// [`ConvWeightGrad::Auto`]: the stem conv of image models (3 × 3×3 = 27).
/// There the transposed-conv form is one conv with a huge kernel whose
/// im2col dominates (MobileNetV2's stem: 16 ms vs 5 ms unfolded, ORT 1.31,
/// 2 threads, batch 16 at 96×96); for wide layers the unfolded input (taps ×
/// the activation) would outweigh it.
const UNFOLD_DENSE_MAX_PATCH: usize = 64;

fn dense_unfold_applies(g: &Geometry, xs: &[usize]) -> bool {
    g.group == 1 && xs[1] * g.kernel.iter().product::<usize>() <= UNFOLD_DENSE_MAX_PATCH
}

/// dW of a dense conv as im2col + one batched GEMM: the tap slices
/// concatenated over channels, U = [N, taps·Cin, P], then Σₙ dYₙ·Uₙᵀ
/// ([N, Cout, P] × [N, P, taps·Cin]) reordered to [Cout, Cin, *K].
fn dense_weight_grad_unfold(
    ctx: &mut GradCtx,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    g: &Geometry,
) -> Result<String> {
    let (nb, cin, cout) = (xs[0], xs[1], ys[1]);
    let p: usize = ys[2..].iter().product();
    let dt = ctx.dtype(x)?;
    let slices = tap_slices(ctx, x, xs, ys, g)?;
    let taps = slices.len();
    let refs: Vec<&str> = slices.iter().map(|s| s.as_str()).collect();
    let mut ushape = ys.to_vec();
    ushape[1] = taps * cin;
    let u = ctx.emit_shaped("Concat", &refs, vec![a_int("axis", 1)], dt, ushape);
    let u3 = ctx.reshape(&u, &[nb, taps * cin, p])?;
    let ut = ctx.transpose(&u3, &[0, 2, 1])?; // ORT fuses this into the MatMul
    let dy3 = ctx.reshape(dy, &[nb, cout, p])?;
    let per_image = ctx.emit_shaped(
        "MatMul",
        &[&dy3, &ut],
        vec![],
        dt,
        vec![nb, cout, taps * cin],
    );
    let sum = ctx.reduce_sum(&per_image, &[0], false)?; // [Cout, taps·Cin]
    let tci = ctx.reshape(&sum, &[cout, taps, cin])?;
    let cit = ctx.transpose(&tci, &[0, 2, 1])?; // [Cout, Cin, taps]
    ctx.reshape(&cit, ws)
}

/// ConvTranspose(X, W, B?) → Y. Its input gradient is a Conv of dY with the
/// same weights; its weight gradient is the Conv weight gradient with the
/// roles of X and dY swapped.
pub fn conv_transpose(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let Operands {
        x,
        w,
        dy,
        xs,
        ws,
        ys,
    } = operands(ctx, r)?;
    if attrs::get(r.node, "output_shape").is_some() && attrs::get(r.node, "pads").is_none() {
        bail!("ConvTranspose with output_shape and implicit pads is not supported; export the model with explicit pads");
    }
    // The transposed conv Y = ConvT(X) is the input-gradient of a conv
    // Y -> X; resolve that conv's geometry (its input is Y, its output X).
    let g = geometry(r, ws[2..].to_vec(), &ys[2..], &xs[2..])?;
    let mut out = r.none();
    if r.need(0) {
        let dt = ctx.dtype(&dy)?;
        out[0] = Some(ctx.emit_shaped("Conv", &[&dy, &w], g.attrs(), dt, xs.clone()));
    }
    if r.need(1) {
        // W of ConvTranspose is [Cin, Cout/g, *K]; as the forward conv dY -> X
        // it has the Conv layout [C_out' = Cin, C_in'/g = Cout/g, *K], so the
        // Conv weight gradient with input dY and output-gradient X applies.
        out[1] = Some(conv_weight_grad(ctx, &dy, &x, &ys, &ws, &xs, &g)?);
    }
    if r.node.input.len() > 2 && r.need(2) {
        let axes: Vec<i64> = std::iter::once(0).chain(2..ys.len() as i64).collect();
        out[2] = Some(ctx.reduce_sum(&dy, &axes, false)?);
    }
    Ok(out)
}
