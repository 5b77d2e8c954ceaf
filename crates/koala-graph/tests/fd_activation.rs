//! Finite-difference checks of Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh (`backward/activation.rs`). HardSigmoid/HardSwish and Clip-11 have f32 kernels only (tolerance 1e-3, 1e-2 through HardSwish's curvature); the rest f64 (1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, unary_case, Check, Fd, Net, F32, F64};
use koala_graph::attrs::a_float;

#[test]
fn relu_sigmoid_tanh_f64() {
    for (seed, op) in [(100, "Relu"), (101, "Sigmoid"), (102, "Tanh")] {
        let mut n = Net::new(17, F64, seed);
        let v = n.away_from_zero(24, 0.05);
        unary_case(&mut n, op, &[2, 3, 4], v, vec![]);
        mse(&n, "y");
    }
}

#[test]
fn leaky_relu() {
    let mut n = Net::new(17, F64, 103);
    let v = n.away_from_zero(24, 0.1);
    unary_case(
        &mut n,
        "LeakyRelu",
        &[2, 3, 4],
        v,
        vec![a_float("alpha", 0.2)],
    );
    mse(&n, "y");
}

#[test]
fn hard_sigmoid() {
    // Kinks where alpha·x + beta hits 0 and 1: x = −2.5 and 2.5 for the
    // defaults (0.2, 0.5), −1.25 and 3.75 for alpha 0.4, beta 0.5.
    let cases: [(u64, [f64; 2], Vec<_>); 2] = [
        (104, [-2.5, 2.5], vec![]),
        (
            105,
            [-1.25, 3.75],
            vec![a_float("alpha", 0.4), a_float("beta", 0.5)],
        ),
    ];
    for (seed, kinks, attrs) in cases {
        let mut n = Net::new(17, F32, seed);
        let v = n.avoiding(30, -4.0, 4.0, &kinks, 0.1);
        unary_case(&mut n, "HardSigmoid", &[2, 15], v, attrs);
        mse(&n, "y");
    }
}

#[test]
fn hard_swish() {
    let mut n = Net::new(17, F32, 106);
    let v = n.avoiding(40, -5.0, 5.0, &[-3.0, 3.0], 0.1);
    unary_case(&mut n, "HardSwish", &[4, 10], v, vec![]);
    check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
}

/// Clip with bounds given as Constant nodes (not trainable), opset ≥ 11.
/// ONNX Runtime's Clip-11 kernel is f32 only; from opset 12 on it has f64.
fn clip_case(seed: u64, opset: i64, lo: Option<f64>, hi: Option<f64>) {
    let mut n = Net::new(opset, if opset < 12 { F32 } else { F64 }, seed);
    let kinks: Vec<f64> = lo.iter().chain(hi.iter()).copied().collect();
    let v = n.avoiding(24, -1.0, 1.0, &kinks, 0.05);
    let x = n.leaf("x", &[4, 6], v);
    let lo_name = lo.map(|l| n.constant("lo", &[], &[l])).unwrap_or_default();
    let hi_name = hi.map(|h| n.constant("hi", &[], &[h])).unwrap_or_default();
    let mut inputs = vec![x.as_str(), lo_name.as_str()];
    if hi.is_some() {
        inputs.push(&hi_name);
    }
    n.node("Clip", &inputs, &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn clip_bounds_and_pad_value_as_initializers_are_not_weights() {
    // Some exports store Clip bounds / Pad values as float initializers;
    // they are operator settings, neither trained nor reported unreachable.
    let mut n = Net::new(13, F64, 114);
    let v = n.avoiding(12, -1.0, 1.0, &[-0.5, 0.5], 0.05);
    let x = n.leaf("x", &[3, 4], v);
    let lo = n.float_init("lo", &[], &[-0.5]);
    let hi = n.float_init("hi", &[], &[0.5]);
    let p = n.ints("pads", &[1, 0, 0, 1]);
    let pv = n.float_init("pad_value", &[], &[0.25]);
    n.node("Clip", &[&x, &lo, &hi], &["c"], vec![]);
    n.node("Pad", &["c", &p, &pv], &["y"], vec![]);
    let r = check(&n, "y", &Check::mse(F64));
    let trained: Vec<&str> = r.graph.trainable.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(trained, ["x_w"]);
    assert!(r.graph.unreachable.is_empty(), "{:?}", r.graph.unreachable);
}

#[test]
fn clip_min_max_both() {
    clip_case(110, 11, Some(-0.3), None);
    clip_case(111, 13, None, Some(0.4));
    clip_case(112, 17, Some(-0.5), Some(0.25));
    clip_case(113, 11, None, None);
}
