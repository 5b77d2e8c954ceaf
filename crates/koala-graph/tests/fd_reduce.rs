//! Finite-difference checks of ReduceSum and ReduceMean (`backward/reduce.rs`), axes as attribute (before 13/18) and as input; f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, Net, F64};
use koala_graph::attrs::{a_int, a_ints};

/// A Reduce* node on a [2, 3, 4] leaf; `axes_input` passes axes as an input.
fn reduce_case(seed: u64, opset: i64, op: &str, axes: Option<&[i64]>, axes_input: bool, keep: i64) {
    let mut n = Net::new(opset, F64, seed);
    let x = n.rand_leaf("x", &[2, 3, 4]);
    let mut attrs = vec![a_int("keepdims", keep)];
    let mut inputs = vec![x.clone()];
    match (axes, axes_input) {
        (Some(a), true) => inputs.push(n.ints("axes", a)),
        (Some(a), false) => attrs.push(a_ints("axes", a)),
        (None, _) => {}
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    n.node(op, &refs, &["r"], attrs);
    // A full reduction without keepdims is a scalar; give MSE a batch axis.
    let out = if axes.is_none() && keep == 0 {
        let ax = n.ints("ax0", &[0]);
        if opset >= 13 {
            n.node("Unsqueeze", &["r", &ax], &["y"], vec![]);
        } else {
            n.node("Unsqueeze", &["r"], &["y"], vec![a_ints("axes", &[0])]);
        }
        "y"
    } else {
        "r"
    };
    mse(&n, out);
}

#[test]
fn reduce_sum_attribute_and_input_forms() {
    reduce_case(170, 11, "ReduceSum", Some(&[1]), false, 1);
    reduce_case(171, 11, "ReduceSum", Some(&[0, -1]), false, 0);
    reduce_case(172, 13, "ReduceSum", Some(&[1]), true, 0);
    reduce_case(173, 18, "ReduceSum", Some(&[-1, 0]), true, 1);
    reduce_case(174, 13, "ReduceSum", None, false, 0);
}

#[test]
fn reduce_mean_attribute_and_input_forms() {
    reduce_case(175, 11, "ReduceMean", Some(&[2]), false, 0);
    reduce_case(176, 13, "ReduceMean", Some(&[1, 2]), false, 1);
    reduce_case(177, 18, "ReduceMean", Some(&[1]), true, 0);
    reduce_case(178, 18, "ReduceMean", Some(&[0, 2]), true, 1);
    reduce_case(179, 11, "ReduceMean", None, false, 0);
}

#[test]
fn reduce_with_empty_axes_input() {
    // Opset 18: empty axes reduce everything, or nothing with noop_with_empty_axes.
    for (seed, noop) in [(410, 0), (411, 1)] {
        let mut n = Net::new(18, F64, seed);
        let x = n.rand_leaf("x", &[2, 3]);
        let axes = n.ints("axes", &[]);
        let attrs = vec![a_int("keepdims", 1), a_int("noop_with_empty_axes", noop)];
        n.node("ReduceSum", &[&x, &axes], &["r"], attrs);
        n.node("Mul", &["r", &x], &["y"], vec![]);
        mse(&n, "y");
    }
}
