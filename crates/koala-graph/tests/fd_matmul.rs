//! Finite-difference checks of MatMul (`backward/matmul.rs`): 2-D, batched, broadcast (attention [B,H,T,D]×[B,H,D,T], GQA [B,1,T,D]), 1-D operands; f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, Net, F64};

fn matmul_case(seed: u64, a: &[usize], b: &[usize], both_leaves: bool) {
    let mut n = Net::new(13, F64, seed);
    let av = n.rand_leaf("a", a);
    let bv = if both_leaves {
        n.rand_leaf("b", b)
    } else {
        n.rand_weight("b", b)
    };
    n.node("MatMul", &[&av, &bv], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn matmul_2d() {
    matmul_case(50, &[3, 4], &[4, 2], false);
}

#[test]
fn matmul_batched_times_2d_weight() {
    matmul_case(51, &[2, 3, 4], &[4, 5], false);
    matmul_case(52, &[2, 2, 3, 4], &[4, 2], false);
}

#[test]
fn matmul_broadcast_batch() {
    matmul_case(53, &[2, 1, 3, 4], &[3, 4, 2], true);
    matmul_case(54, &[3, 4], &[2, 4, 2], true);
    matmul_case(55, &[2, 3, 4], &[1, 4, 2], true);
}

#[test]
fn matmul_1d_operands() {
    matmul_case(56, &[4], &[4, 3], false);
    matmul_case(57, &[3, 4], &[4], false);
    matmul_case(58, &[2, 3, 4], &[4], true);
    matmul_case(59, &[4], &[2, 4, 3], true);
    // 1-D · 1-D is a scalar; unsqueeze it so MSE has a batch axis.
    let mut n = Net::new(13, F64, 60);
    let a = n.rand_leaf("a", &[4]);
    let b = n.rand_weight("b", &[4]);
    let ax = n.ints("ax", &[0]);
    n.node("MatMul", &[&a, &b], &["s"], vec![]);
    n.node("Unsqueeze", &["s", &ax], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn matmul_attention_shapes() {
    // Scores [B,H,T,D]×[B,H,D,T], context [B,H,T,T]×[B,H,T,D], a [B,T,D]
    // activation times a [D,E] weight, and GQA-style [B,1,T,D] keys
    // broadcast over H query heads.
    matmul_case(56, &[2, 2, 3, 4], &[2, 2, 4, 3], true);
    matmul_case(57, &[2, 2, 3, 3], &[2, 2, 3, 4], true);
    matmul_case(58, &[2, 3, 4], &[4, 5], false);
    matmul_case(59, &[2, 3, 3, 4], &[2, 1, 4, 3], true);
    matmul_case(60, &[2, 1, 3, 4], &[2, 3, 4, 2], true);
}
