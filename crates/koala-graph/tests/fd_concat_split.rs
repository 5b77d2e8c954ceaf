//! Finite-difference checks of Concat and Split (`backward/concat_split.rs`), split sizes as attribute/input and num_outputs (18), negative axes; f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, Net, F64};
use koala_graph::attrs::{a_int, a_ints};

#[test]
fn concat_axes() {
    for (seed, axis) in [(210, 1), (211, -1), (212, 0)] {
        let mut n = Net::new(13, F64, seed);
        let a = n.rand_leaf("a", &[2, 3, 2]);
        let b = n.rand_weight("b", &[2, 3, 2]);
        n.node("Concat", &[&a, &b, &a], &["y"], vec![a_int("axis", axis)]);
        mse(&n, "y");
    }
}

/// Splits a [2, 6, 2] leaf along axis 1 into 1/2/3 and uses pieces 0 and 2
/// only, so one piece has no gradient (zeros must fill its place).
fn split_case(seed: u64, opset: i64) {
    let mut n = Net::new(opset, F64, seed);
    let x = n.rand_leaf("x", &[2, 6, 2]);
    let outs = ["p0", "p1", "p2"];
    if opset >= 13 {
        let s = n.ints("split", &[1, 2, 3]);
        n.node("Split", &[&x, &s], &outs, vec![a_int("axis", 1)]);
    } else {
        let attrs = vec![a_int("axis", 1), a_ints("split", &[1, 2, 3])];
        n.node("Split", &[&x], &outs, attrs);
    }
    n.node("Mul", &["p2", "p2"], &["q"], vec![]);
    n.node("Concat", &["p0", "q"], &["y"], vec![a_int("axis", 1)]);
    mse(&n, "y");
}

#[test]
fn split_attribute_and_input_forms() {
    split_case(220, 11);
    split_case(221, 13);
    split_case(222, 18);
    // Opset 18 equal split by num_outputs.
    let mut n = Net::new(18, F64, 223);
    let x = n.rand_leaf("x", &[2, 4]);
    n.node(
        "Split",
        &[&x],
        &["a", "b"],
        vec![a_int("axis", -1), a_int("num_outputs", 2)],
    );
    n.node("Mul", &["a", "b"], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn concat_opset11_uses_split_attribute() {
    let mut n = Net::new(11, F64, 413);
    let a = n.rand_leaf("a", &[2, 1, 2]);
    let b = n.rand_weight("b", &[2, 3, 2]);
    n.node("Concat", &[&a, &b], &["y"], vec![a_int("axis", 1)]);
    mse(&n, "y");
}

#[test]
fn split_num_outputs_on_a_negative_axis_from_opset18() {
    // Opset 18: Split by num_outputs (q, k, v from a fused projection).
    let mut n = Net::new(18, F64, 216);
    let x = n.rand_leaf("x", &[2, 3, 6]);
    n.node(
        "Split",
        &[&x],
        &["q", "k", "v"],
        vec![a_int("axis", -1), a_int("num_outputs", 3)],
    );
    n.node("Mul", &["q", "k"], &["qk"], vec![]);
    n.node("Concat", &["qk", "v"], &["y"], vec![a_int("axis", -2)]);
    mse(&n, "y");
}
