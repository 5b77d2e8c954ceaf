//! Finite-difference checks of Einsum (`backward/einsum.rs`) in the forms
//! exporters emit: attention scores "bhqd,bhkd->bhqk" and context
//! "bhqk,bhkd->bhqd", "bid,jd->bij", the RoPE outer product "i,j->ij", a
//! summed-out index only in one operand ("ij,j->i" with a sum over a
//! letter of A alone), an implicit output and an ellipsis; plus the clear
//! error for a repeated index.
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 nets
//! (ORT has an f64 Einsum kernel): tolerance 1e-6.

mod common;

use common::{mse, mse_build_error, Net, F64};
use koala_graph::attrs::a_string;

/// Einsum(A, B) with A a leaf and B a weight.
fn einsum2(seed: u64, eq: &str, a: &[usize], b: &[usize]) {
    let mut n = Net::new(17, F64, seed);
    let x = n.rand_leaf("a", a);
    let w = n.rand_weight("b", b);
    n.node("Einsum", &[&x, &w], &["y"], vec![a_string("equation", eq)]);
    mse(&n, "y");
}

#[test]
fn einsum_attention_and_projection_forms() {
    einsum2(1100, "bhqd,bhkd->bhqk", &[2, 2, 3, 4], &[2, 2, 5, 4]);
    einsum2(1101, "bhqk,bhkd->bhqd", &[2, 2, 3, 5], &[2, 2, 5, 4]);
    einsum2(1102, "bid,jd->bij", &[2, 3, 4], &[5, 4]);
    einsum2(1103, "i,j->ij", &[3], &[4]);
}

#[test]
fn einsum_index_only_in_one_operand_is_expanded_back() {
    // k appears only in A: it is summed in the forward pass.
    einsum2(1104, "ikj,j->i", &[3, 2, 4], &[4]);
    // Implicit output (letters used once, sorted: "ik") and an ellipsis.
    einsum2(1105, "ij,jk", &[3, 4], &[4, 2]);
    einsum2(1106, "...ij,jk->...ik", &[2, 3, 4], &[4, 2]);
    // One operand: a transpose with a sum.
    let mut n = Net::new(12, F64, 1107);
    let x = n.rand_leaf("x", &[2, 3, 4]);
    n.node(
        "Einsum",
        &[&x],
        &["y"],
        vec![a_string("equation", "abc->ca")],
    );
    mse(&n, "y");
}

#[test]
fn einsum_with_a_repeated_index_is_a_clear_error() {
    let mut n = Net::new(17, F64, 1108);
    let x = n.rand_leaf("x", &[3, 3]);
    n.node("Einsum", &[&x], &["y"], vec![a_string("equation", "ii->i")]);
    let e = mse_build_error(&n);
    assert!(e.contains("repeats an index"), "{e}");
}
