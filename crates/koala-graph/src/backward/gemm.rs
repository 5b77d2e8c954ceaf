//! Gradient of Gemm: Y = alpha·op(A)·op(B) + beta·C, op = optional transpose.
//!
//! Each gradient is itself one Gemm with the transpose flags chosen so no
//! explicit Transpose node is needed.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Gemm.html.
//! Opsets: C is optional from 11 and unidirectionally broadcast from 7.
//!
//! Tests: `crates/koala-graph/tests/fd_gemm.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::{self, a_float, a_int};
use anyhow::Result;

/// Gemm(A, B, C?) → Y.
pub fn gemm(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let (a, b) = (r.input(0).to_string(), r.input(1).to_string());
    let ta = attrs::int(r.node, "transA", 0) != 0;
    let tb = attrs::int(r.node, "transB", 0) != 0;
    let alpha = attrs::float(r.node, "alpha", 1.0);
    let beta = attrs::float(r.node, "beta", 1.0);
    let dt = ctx.dtype(&dy)?;
    let mut out = r.none();
    let gemm = |ctx: &mut GradCtx, p: &str, q: &str, tp: bool, tq: bool, shape: Vec<usize>| {
        ctx.emit_shaped(
            "Gemm",
            &[p, q],
            vec![
                a_float("alpha", alpha),
                a_int("transA", tp as i64),
                a_int("transB", tq as i64),
            ],
            dt,
            shape,
        )
    };
    if r.need(0) {
        let shape = ctx.shape(&a)?;
        out[0] = Some(if !ta {
            gemm(ctx, &dy, &b, false, !tb, shape)
        } else {
            gemm(ctx, &b, &dy, tb, true, shape)
        });
    }
    if r.need(1) {
        let shape = ctx.shape(&b)?;
        out[1] = Some(if !tb {
            gemm(ctx, &a, &dy, !ta, false, shape)
        } else {
            gemm(ctx, &dy, &a, true, ta, shape)
        });
    }
    if r.node.input.len() > 2 && r.need(2) {
        let c = r.input(2).to_string();
        let target = ctx.shape(&c)?;
        let mut g = dy.clone();
        if beta != 1.0 {
            let s = ctx.scalar_like(beta as f64, &dy)?;
            g = ctx.binary("Mul", &g, &s)?;
        }
        out[2] = Some(ctx.unbroadcast(&g, &target)?);
    }
    Ok(out)
}
