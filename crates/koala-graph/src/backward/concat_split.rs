//! Gradients of Concat (split dY back into the pieces) and Split (concatenate
//! the pieces' gradients, zeros for outputs that received none).
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Concat.html,
//! https://onnx.ai/onnx/operators/onnx__Split.html.
//! Opsets: Split's sizes are an attribute before 13, an input from 13, and
//! may be replaced by `num_outputs` from 18 (the rule reads only the output
//! shapes, so every form works); the Split the Concat rule emits uses the
//! model opset's form. Negative axes are normalised.
//!
//! Tests: `crates/koala-graph/tests/fd_concat_split.rs`.

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs::{self, a_int, a_ints};
use anyhow::Result;

/// Concat(X₁…Xₙ, axis) → Y.
pub fn concat(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let dy = r.dy0()?.to_string();
    let ys = ctx.shape(&dy)?;
    let axis = norm_axis(attrs::int(r.node, "axis", 0), ys.len());
    let shapes: Vec<Vec<usize>> = r
        .node
        .input
        .iter()
        .map(|i| ctx.shape(i))
        .collect::<Result<_>>()?;
    let sizes: Vec<i64> = shapes.iter().map(|s| s[axis] as i64).collect();
    let dt = ctx.dtype(&dy)?;
    let parts = if ctx.opset() >= 13 {
        let s = ctx.const_i64(&sizes);
        ctx.emit_n(
            "Split",
            &[&dy, &s],
            sizes.len(),
            vec![a_int("axis", axis as i64)],
        )
    } else {
        ctx.emit_n(
            "Split",
            &[&dy],
            sizes.len(),
            vec![a_int("axis", axis as i64), a_ints("split", &sizes)],
        )
    };
    let mut out = r.none();
    for (i, (p, s)) in parts.into_iter().zip(shapes).enumerate() {
        ctx.set_fact(&p, dt, s);
        if r.need(i) {
            out[i] = Some(p);
        }
    }
    Ok(out)
}

/// Split(X, axis) → Y₁…Yₙ.
pub fn split(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let xs = ctx.shape(r.input(0))?;
    let axis = norm_axis(attrs::int(r.node, "axis", 0), xs.len());
    let mut pieces = Vec::with_capacity(r.node.output.len());
    for (i, o) in r.node.output.iter().enumerate() {
        pieces.push(match r.dy.get(i).cloned().flatten() {
            Some(g) => g,
            None => ctx.zeros_like(o)?,
        });
    }
    let refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
    let dt = ctx.dtype(r.input(0))?;
    let mut out = r.none();
    out[0] = Some(ctx.emit_shaped("Concat", &refs, vec![a_int("axis", axis as i64)], dt, xs));
    Ok(out)
}
