//! Gradients of Gather and GatherElements.
//!
//! Math: `Y = Gather(X, I, axis)` has shape `X[:axis] ++ I.shape ++ X[axis+1:]`
//! and `Y[p, i, q] = X[p, I[i], q]`, so `dX[p, a, q] = Σ_{i: I[i] = a} dY[p, i, q]`:
//! a scatter-*add* of dY into zeros of X's shape (repeated ids, e.g. the same
//! token twice in a batch, accumulate). `GatherElements(X, I, axis)`:
//! `dX = ScatterElements(zeros, I, dY, axis, reduction="add")`.
//! Negative indices count from the end (`I + dim` where `I < 0`) in both ops.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Gather.html,
//! https://onnx.ai/onnx/operators/onnx__GatherElements.html,
//! https://onnx.ai/onnx/operators/onnx__ScatterElements.html (reduction from 16).
//!
//! Opsets: Gather 1/11/13 differ only in allowing negative indices (11) and
//! types; the scatter-add form needs `reduction` (ScatterElements opset 16),
//! so before 16 the one-hot MatMul form is the only one.
//! GatherElements' gradient needs ScatterElements' `reduction` and is
//! therefore opset ≥ 16 only (a clear error otherwise).
//!
//! Subgradient: none needed (linear in X; indices are data, never
//! differentiated).
//!
//! Which scatter-add form is fastest was measured per size class (49152×576
//! with 1×256 and 8×128 ids, 97×32): see [`EmbeddingGrad`] for the table
//! and the chosen default (ScatterElements from opset 16, one-hot MatMul
//! before). Not ScatterND: ONNX Runtime's CPU `ScatterND(reduction="add")`
//! splits the indices across threads and loses updates when two threads add
//! into the same row (microsoft/onnxruntime#18048), so repeated token ids
//! gave a wrong, run-to-run different embedding gradient with 2 threads
//! (SmolLM2-135M: up to 0.0067 off). ScatterElements adds sequentially:
//! exact and deterministic (`fd_gather.rs`,
//! `embedding_gradient_is_exact_and_deterministic_with_two_threads`).
//!
//! Tests: `crates/koala-graph/tests/fd_gather.rs`.

use super::{norm_axis, GradCtx, RuleInput};
use crate::attrs::{self, a_int, a_string};
use crate::proto::DataType;
use anyhow::{bail, Result};

/// How the gradient of a Gather on a weight (an embedding table) is written.
///
/// Measured on ORT 1.31.1 CPU, 2 intra-op threads, f32, the gradient
/// subgraph alone fed with dY [N, D] and ids [N] (median of 5 runs after 2
/// warm-ups, on the shared 2-core development VM; `fd_gather.rs`,
/// `embedding_gradient_forms_timings`, ignored). The baseline is a graph
/// that only materialises a dense [V, D] output from dY, which every form
/// must also do:
///
/// | table | ids | baseline ms | ScatterND add (removed) | ScatterElements add | one-hot MatMul |
/// |---|---|---|---|---|---|
/// | 49152×576 | 1×256 | 166 | 153 | 150 | 617 |
/// | 49152×576 | 8×128 | 163 | 164 | 182 | 2052 |
/// | 97×32 | 2×12 | ≤ 0.01 | 0.01 | 0.01 | 0.02 |
/// | 97×32 | 8×128 | 0.01 | 0.01 | 0.15 | 0.22 |
///
/// On the SmolLM2-sized table both scatter forms cost what the dense output
/// costs (the scatter itself is noise), ScatterElements falls behind when
/// the ids grow (it expands them to N·D), and the one-hot product is 4–13×
/// slower (O(V·N·D) flops). ScatterND, though fastest or tied in every size
/// class, races in ONNX Runtime's CPU kernel (see the module docs) and was
/// removed; `Auto` takes ScatterElements from opset 16 on (0–18 ms behind
/// ScatterND in the table, within the step's noise for SmolLM2: 6.5–7 s per
/// step either way under load). Before 16 only the one-hot form accumulates
/// repeated ids, so `Auto` falls back to it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbeddingGrad {
    /// ScatterElements with reduction "add" from opset 16, one-hot MatMul before.
    #[default]
    Auto,
    /// `ScatterElements(zeros[V, D], ids expanded to [N, D], dY, axis 0,
    /// reduction="add")` (opset ≥ 16).
    ScatterElements,
    /// `onehot(ids)[N, V]ᵀ · dY[N, D]` as Equal + Cast + Gemm (any opset).
    OneHotMatMul,
}

/// Gather(X, I, axis) → Y.
pub fn gather(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let mut out = r.none();
    if !r.need(0) {
        return Ok(out);
    }
    let (x, ids, dy) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.dy0()?.to_string(),
    );
    let xs = ctx.shape(&x)?;
    let is = ctx.shape(&ids)?;
    let axis = norm_axis(attrs::int(r.node, "axis", 0), xs.len());
    let dt = ctx.dtype(&dy)?;
    // Move the gathered axis first: dY [pre, idx, post] → [idx, pre, post].
    let (pre, q) = (axis, is.len());
    let rank_y = pre + q + (xs.len() - axis - 1);
    let perm_y: Vec<usize> = (pre..pre + q)
        .chain(0..pre)
        .chain(pre + q..rank_y)
        .collect();
    let identity = perm_y.iter().enumerate().all(|(i, &p)| i == p);
    let dy_t = if !identity {
        ctx.transpose(&dy, &perm_y)?
    } else {
        dy.clone()
    };
    let n: usize = is.iter().product();
    let rest: usize = xs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != axis)
        .map(|(_, &d)| d)
        .product();
    let rows = ctx.reshape(&dy_t, &[n, rest])?;
    let idx = flat_nonnegative_indices(ctx, &ids, n, xs[axis])?;
    let table = scatter_add_rows(ctx, r.options.embedding_grad, &idx, &rows, xs[axis], dt)?;
    // Back to X's layout: [A, pre…, post…] → X's order.
    let moved: Vec<usize> = std::iter::once(xs[axis])
        .chain(xs[..axis].iter().copied())
        .chain(xs[axis + 1..].iter().copied())
        .collect();
    let g = ctx.reshape(&table, &moved)?;
    out[0] = Some(if axis > 0 {
        let mut inv: Vec<usize> = (1..=axis).collect();
        inv.push(0);
        inv.extend(axis + 1..xs.len());
        ctx.transpose(&g, &inv)?
    } else {
        g
    });
    Ok(out)
}

/// The indices as an int64 vector of length `n` with negative ones wrapped
/// (`i + dim` where `i < 0`).
fn flat_nonnegative_indices(ctx: &mut GradCtx, ids: &str, n: usize, dim: usize) -> Result<String> {
    let ishape = ctx.shape(ids)?;
    let idt = ctx.dtype(ids)?;
    let ids64 = match idt {
        DataType::Int64 => ids.to_string(),
        DataType::Int32 => ctx.emit_shaped(
            "Cast",
            &[ids],
            vec![a_int("to", DataType::Int64 as i64)],
            DataType::Int64,
            ishape,
        ),
        other => bail!("Gather indices '{ids}' are {other:?}; ONNX allows int32/int64 only"),
    };
    let flat = ctx.reshape(&ids64, &[n])?;
    if let Some(v) = ctx.ints(ids) {
        if v.iter().all(|&i| i >= 0) {
            return Ok(flat);
        }
    }
    let zero = ctx.const_i64(&[0]);
    let d = ctx.const_i64(&[dim as i64]);
    let neg = ctx.emit_shaped("Less", &[&flat, &zero], vec![], DataType::Bool, vec![n]);
    let wrapped = ctx.emit_shaped("Add", &[&flat, &d], vec![], DataType::Int64, vec![n]);
    Ok(ctx.emit_shaped(
        "Where",
        &[&neg, &wrapped, &flat],
        vec![],
        DataType::Int64,
        vec![n],
    ))
}

/// `out[a, :] = Σ_{k: idx[k] = a} rows[k, :]`, shape [dim, D], in the chosen form.
fn scatter_add_rows(
    ctx: &mut GradCtx,
    form: EmbeddingGrad,
    idx: &str,
    rows: &str,
    dim: usize,
    dt: DataType,
) -> Result<String> {
    let [n, d] = ctx.shape(rows)?[..] else {
        bail!("internal: scatter rows must be 2-D");
    };
    let form = match form {
        EmbeddingGrad::Auto if ctx.opset() >= 16 => EmbeddingGrad::ScatterElements,
        EmbeddingGrad::Auto => EmbeddingGrad::OneHotMatMul,
        f if ctx.opset() < 16 && f != EmbeddingGrad::OneHotMatMul => bail!(
            "embedding gradient form {f:?} needs opset 16 (scatter reduction); use auto or one-hot-mat-mul"
        ),
        f => f,
    };
    let add = a_string("reduction", "add");
    Ok(match form {
        EmbeddingGrad::ScatterElements => {
            let zeros = zeros(ctx, &[dim, d], dt)?;
            let i2 = ctx.reshape(idx, &[n, 1])?;
            let shape = ctx.const_i64(&[n as i64, d as i64]);
            let ie = ctx.emit_shaped(
                "Expand",
                &[&i2, &shape],
                vec![],
                DataType::Int64,
                vec![n, d],
            );
            ctx.emit_shaped(
                "ScatterElements",
                &[&zeros, &ie, rows],
                vec![a_int("axis", 0), add],
                dt,
                vec![dim, d],
            )
        }
        _ => {
            let i2 = ctx.reshape(idx, &[n, 1])?;
            let range: Vec<i64> = (0..dim as i64).collect();
            let classes = ctx.const_i64(&range);
            let hit = ctx.emit_shaped(
                "Equal",
                &[&i2, &classes],
                vec![],
                DataType::Bool,
                vec![n, dim],
            );
            let onehot = ctx.emit_shaped(
                "Cast",
                &[&hit],
                vec![a_int("to", dt as i64)],
                dt,
                vec![n, dim],
            );
            ctx.emit_shaped(
                "Gemm",
                &[&onehot, rows],
                vec![a_int("transA", 1)],
                dt,
                vec![dim, d],
            )
        }
    })
}

fn zeros(ctx: &mut GradCtx, shape: &[usize], dt: DataType) -> Result<String> {
    let c = ctx.const_of(&[0.0], &[], dt)?;
    ctx.expand(&c, shape)
}

/// GatherElements(X, I, axis) → Y: dX = ScatterElements(0, I, dY, axis, add).
pub fn gather_elements(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let mut out = r.none();
    if !r.need(0) {
        return Ok(out);
    }
    if ctx.opset() < 16 {
        bail!("the gradient of GatherElements needs ScatterElements with reduction=\"add\" (opset 16); koala's upgrade lifts such models to 17 before differentiating (see upgrade.rs), and this graph skipped it: freeze the weights before this node to train the rest");
    }
    let (x, ids, dy) = (r.input(0), r.input(1), r.dy0()?.to_string());
    let xs = ctx.shape(x)?;
    let dt = ctx.dtype(&dy)?;
    let axis = norm_axis(attrs::int(r.node, "axis", 0), xs.len());
    let zeros = zeros(ctx, &xs, dt)?;
    out[0] = Some(ctx.emit_shaped(
        "ScatterElements",
        &[&zeros, ids, &dy],
        vec![a_int("axis", axis as i64), a_string("reduction", "add")],
        dt,
        xs,
    ));
    Ok(out)
}
