//! Finite-difference checks of Relu, LeakyRelu, PRelu, Elu, Selu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh (`backward/activation.rs`). HardSigmoid/HardSwish, Elu, Selu and Clip-11 have f32 kernels only (tolerance 1e-3, 1e-2 through HardSwish's, Elu's and Selu's curvature); the rest f64 (1e-6).
//!
//! At 0, where PRelu, Elu and Selu have a kink, finite differences cannot
//! judge the rule; there the local derivative is compared with PyTorch's
//! (numbers from `tests/fixtures/pytorch_subgradients/make_reference.py`).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, unary_case, Check, Fd, Labels, Net, Run, F32, F64};
use koala_graph::attrs::a_float;
use koala_graph::proto::DataType;
use koala_graph::LossSpec;

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

/// PRelu with a trainable slope of each broadcast form exporters write:
/// per channel [C, 1, 1] on NCHW (PyTorch's `nn.PReLU(C)`), one shared [1],
/// a full-rank [1, C, 1, 1], and [H, 1] (any broadcastable trailing shape);
/// f64 at opset 17 (ORT's PRelu-16 kernel has f64), f32 at opsets 11 and 21.
#[test]
fn prelu_x_and_slope_with_broadcast_slopes() {
    let cases: [(u64, i64, DataType, &[usize]); 5] = [
        (120, 17, F64, &[3, 1, 1]),
        (121, 17, F64, &[1]),
        (122, 17, F64, &[1, 3, 1, 1]),
        (123, 11, F32, &[3, 1, 1]),
        (119, 21, F32, &[2, 1]),
    ];
    for (seed, opset, dt, slope_shape) in cases {
        let mut n = Net::new(opset, dt, seed);
        let v = n.away_from_zero(2 * 3 * 2 * 2, 0.05);
        let x = n.leaf("x", &[2, 3, 2, 2], v);
        let s = n.uniform(slope_shape.iter().product(), -0.5, 1.5);
        let slope = n.weight("slope", slope_shape, s);
        n.node("PRelu", &[&x, &slope], &["y"], vec![]);
        mse(&n, "y");
    }
}

/// Elu and Selu with attributes away from their defaults and with the
/// defaults, at opsets 11, 17 and 21; f32 kernels only. The exponential
/// branch is curved, so the smooth-f32 step and tolerance apply
/// (`Fd::F32_SMOOTH`).
#[test]
fn elu_and_selu_with_and_without_attributes() {
    let cases: [(u64, i64, &str, Vec<_>); 4] = [
        (124, 11, "Elu", vec![]),
        (125, 17, "Elu", vec![a_float("alpha", 0.7)]),
        (126, 21, "Selu", vec![]),
        (
            127,
            17,
            "Selu",
            vec![a_float("alpha", 1.5), a_float("gamma", 1.25)],
        ),
    ];
    for (seed, opset, op, attrs) in cases {
        let mut n = Net::new(opset, F32, seed);
        let v = n.avoiding(24, -2.0, 2.0, &[0.0], 0.1);
        unary_case(&mut n, op, &[2, 3, 4], v, attrs);
        check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
    }
}

/// The local derivative dY/dX the training graph applies to each element of
/// leaf `x` (output `y`, MSE): the gradient of `x_w` divided by the MSE's
/// dL/dy = 2(y − t)/N, computed here from the graph's own output. Returns
/// (gradient, dL/dy) pairs so callers compare without dividing.
fn applied_local_derivative(n: &Net) -> Vec<(f64, f64)> {
    let graph = koala_graph::build(&n.model("y"), &n.spec(LossSpec::MeanSquaredError))
        .unwrap_or_else(|e| panic!("build failed: {e:#}"));
    let mut run = Run::new(n, &graph, &Labels::RandomTargets, 7);
    let w = run.weights.clone();
    let k = w.iter().position(|t| t.name == "x_w").expect("leaf x");
    let e = run.eval(&w);
    let count = e.model_output.len() as f64;
    e.grads[k]
        .iter()
        .zip(e.model_output.iter().zip(&run.targets))
        .map(|(g, (y, t))| (*g, 2.0 * (y - t) / count))
        .collect()
}

/// Asserts gradient = `want[i]` · dL/dy for every element (relative `tol`).
fn assert_local(op: &str, got: &[(f64, f64)], want: &[f64], tol: f64) {
    for (i, ((g, dy), w)) in got.iter().zip(want).enumerate() {
        let err = (g - w * dy).abs();
        assert!(
            err <= tol * dy.abs().max(1e-12),
            "{op}: element {i}: gradient {g} but PyTorch's local derivative {w} times dL/dy {dy} is {}",
            w * dy
        );
    }
}

/// At X = 0 PRelu, Elu and Selu take the negative branch, as PyTorch does
/// (`x > 0 ? … : …` in aten's backward kernels). The numbers are PyTorch's
/// local derivatives for X = [0, −0.5, 0, 0.75] from
/// `tests/fixtures/pytorch_subgradients/make_reference.py`; tolerance 1e-12
/// for f64 (the rule is exact), 1e-6 for f32 (a few f32 roundings of dY and
/// of the derivative).
#[test]
fn prelu_elu_selu_at_zero_match_pytorch() {
    const X: [f64; 4] = [0.0, -0.5, 0.0, 0.75];
    // PRelu, X [1, 2, 2], slope [2, 1] = [0.25, 1.5] (f64, opset 17).
    let mut n = Net::new(17, F64, 128);
    let x = n.leaf("x", &[1, 2, 2], X.to_vec());
    let slope = n.weight("slope", &[2, 1], vec![0.25, 1.5]);
    n.node("PRelu", &[&x, &slope], &["y"], vec![]);
    assert_local(
        "PRelu",
        &applied_local_derivative(&n),
        &[0.25, 0.25, 1.5, 1.0],
        1e-12,
    );
    let f32_cases: [(u64, &str, Vec<_>, [f64; 4]); 3] = [
        (
            129,
            "Elu",
            vec![a_float("alpha", 0.7)],
            [0.7, 0.424571461799, 0.7, 1.0],
        ),
        (
            130,
            "Selu",
            vec![a_float("alpha", 1.5), a_float("gamma", 1.2)],
            [1.8, 1.091755187483, 1.8, 1.2],
        ),
        (
            131,
            "Selu",
            vec![],
            [
                1.758099340847,
                1.066341153045,
                1.758099340847,
                1.050700987355,
            ],
        ),
    ];
    for (seed, op, attrs, want) in f32_cases {
        let mut n = Net::new(17, F32, seed);
        unary_case(&mut n, op, &[4], X.to_vec(), attrs);
        assert_local(op, &applied_local_derivative(&n), &want, 1e-6);
    }
}
