//! Gradient of MatMul with numpy semantics (batched, broadcast, 1-D operands).
//!
//! dA = dY·Bᵀ and dB = Aᵀ·dY on the last two axes, summed over broadcast
//! batch axes. The common "activations [.., M, K] times a 2-D weight [K, N]"
//! case folds the batch axes into M and uses one Gemm for dB instead of a
//! batched MatMul followed by a ReduceSum, and one Gemm with `transB` for dA
//! instead of materialising Bᵀ.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__MatMul.html.
//! Opsets: 1/9/13 (types only). Attention shapes ([B,H,T,D]×[B,H,D,T],
//! GQA [B,1,T,D] broadcast over heads) are covered by the broadcast path.
//!
//! Tests: `crates/koala-graph/tests/fd_matmul.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::a_int;
use anyhow::Result;

fn swap_last_two(ctx: &mut GradCtx, x: &str) -> Result<String> {
    let rank = ctx.shape(x)?.len();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    ctx.transpose(x, &perm)
}

/// MatMul(A, B) → Y.
pub fn matmul(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let (a, b) = (r.input(0).to_string(), r.input(1).to_string());
    let sa = ctx.shape(&a)?;
    let sb = ctx.shape(&b)?;
    // Promote 1-D operands to matrices, as numpy does.
    let a2 = if sa.len() == 1 {
        ctx.reshape(&a, &[1, sa[0]])?
    } else {
        a.clone()
    };
    let b2 = if sb.len() == 1 {
        ctx.reshape(&b, &[sb[0], 1])?
    } else {
        b.clone()
    };
    let sa2 = ctx.shape(&a2)?;
    let sb2 = ctx.shape(&b2)?;
    let batch =
        super::broadcast_shape(&sa2[..sa2.len() - 2], &sb2[..sb2.len() - 2]).unwrap_or_default();
    let (m, n) = (sa2[sa2.len() - 2], sb2[sb2.len() - 1]);
    let y2_shape: Vec<usize> = batch.iter().copied().chain([m, n]).collect();
    let dy2 = ctx.reshape(&dy, &y2_shape)?;
    let dt = ctx.dtype(&dy)?;
    let mut out = r.none();
    if r.need(0) {
        let k = sa2[sa2.len() - 1];
        let g = if sb2.len() == 2 {
            // A 2-D B (a weight): dA_flat = dY_flat · Bᵀ as one Gemm with transB, so Bᵀ is
            // never a tensor. Written as Transpose + MatMul, ONNX Runtime constant-folds
            // the Transpose of a frozen weight into a second, transposed copy of it (a
            // LoRA run kept every base weight twice) and transposes a trained one every step.
            let rows: usize = y2_shape[..y2_shape.len() - 1].iter().product();
            let df = ctx.reshape(&dy2, &[rows, n])?;
            let g = ctx.emit_shaped(
                "Gemm",
                &[&df, &b2],
                vec![a_int("transB", 1)],
                dt,
                vec![rows, k],
            );
            let shape: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
            let g = ctx.reshape(&g, &shape)?;
            ctx.unbroadcast(&g, &sa2)?
        } else {
            let bt = swap_last_two(ctx, &b2)?;
            let shape: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
            let g = ctx.emit_shaped("MatMul", &[&dy2, &bt], vec![], dt, shape);
            ctx.unbroadcast(&g, &sa2)?
        };
        out[0] = Some(ctx.reshape(&g, &sa)?);
    }
    if r.need(1) {
        let k = sb2[sb2.len() - 2];
        let g = if sb2.len() == 2 && sa2.len() >= 2 {
            // Fold all batch axes of A and dY into rows: dB = A_flatᵀ · dY_flat.
            // With a 2-D B the batch axes are A's own, so A has exactly `rows` rows.
            let rows: usize = y2_shape[..y2_shape.len() - 1].iter().product();
            let af = ctx.reshape(&a2, &[rows, k])?;
            let df = ctx.reshape(&dy2, &[rows, n])?;
            ctx.emit_shaped(
                "Gemm",
                &[&af, &df],
                vec![a_int("transA", 1)],
                dt,
                vec![k, n],
            )
        } else {
            let at = swap_last_two(ctx, &a2)?;
            let shape: Vec<usize> = batch.iter().copied().chain([k, n]).collect();
            let g = ctx.emit_shaped("MatMul", &[&at, &dy2], vec![], dt, shape);
            ctx.unbroadcast(&g, &sb2)?
        };
        out[1] = Some(ctx.reshape(&g, &sb)?);
    }
    Ok(out)
}
