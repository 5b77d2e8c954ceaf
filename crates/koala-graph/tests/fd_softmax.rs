//! Finite-difference checks of Softmax and LogSoftmax (`backward/softmax.rs`) on every axis, before and after opset 13, and over masked (−inf) scores; f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, unary_case, Net, F64};
use koala_graph::attrs::a_int;

fn softmax_case(seed: u64, opset: i64, op: &str, axis: Option<i64>) {
    let mut n = Net::new(opset, F64, seed);
    let v = n.uniform(24, -2.0, 2.0);
    let attrs = axis.map(|a| vec![a_int("axis", a)]).unwrap_or_default();
    unary_case(&mut n, op, &[2, 3, 4], v, attrs);
    mse(&n, "y");
}

#[test]
fn softmax_and_log_softmax_axes_and_opsets() {
    let mut seed = 120;
    for op in ["Softmax", "LogSoftmax"] {
        for opset in [11, 13] {
            // Axis 1 differs between opsets: before 13 it means "flatten
            // axes 1.. and normalise over all of them".
            for axis in [Some(-1), Some(1), None] {
                seed += 1;
                softmax_case(seed, opset, op, axis);
            }
        }
    }
}
