//! Per-rule finite-difference verification of the backward-graph compiler.
//!
//! Every test builds a tiny random ONNX model around the op under test,
//! compiles its training graph with `koala_graph::build`, runs it in ONNX
//! Runtime and compares each weight gradient with central differences of the
//! loss (see `common` for the harness and `Fd` for the step/tolerance
//! reasoning). Ops whose ONNX Runtime CPU kernels exist for float64 are
//! checked in f64 (tolerance 1e-6); Conv, ConvTranspose, AveragePool,
//! GlobalAveragePool, HardSigmoid, HardSwish (a HardSigmoid function) and
//! Clip-11 only have f32 kernels (ORT 1.31: "Could not find an
//! implementation" for f64) and are checked in f32 (tolerance 1e-3, or 1e-2
//! through HardSwish's curvature). BatchNormalization runs in both.
//! Opsets 9, 11, 13, 15, 16, 17, 18 and 21 all appear, since rules must emit
//! ops in the form of the model's opset.

mod common;

use common::{check, Check, Fd, Net};
use koala_graph::attrs::{a_float, a_int, a_ints, a_string, a_tensor};
use koala_graph::proto::DataType;
use koala_graph::{BackwardOptions, ConvWeightGrad};

const F64: DataType = DataType::Double;
const F32: DataType = DataType::Float;

/// Checks `net` with MSE against random targets and the default step.
fn mse(net: &Net, output: &str) {
    check(net, output, &Check::mse(net.dt));
}

// ---------------------------------------------------------------- Conv ----

/// One Conv node on a leaf input; `bias` adds a trainable bias.
fn conv_case(
    seed: u64,
    x: &[usize],
    w: &[usize],
    bias: bool,
    attrs: Vec<koala_graph::proto::AttributeProto>,
    weight_grad: ConvWeightGrad,
) {
    let mut n = Net::new(17, F32, seed);
    let xv = n.rand_leaf("x", x);
    let wv = n.rand_weight("w", w);
    let mut inputs = vec![xv, wv];
    if bias {
        inputs.push(n.rand_weight("b", &[w[0]]));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    n.node("Conv", &refs, &["y"], attrs);
    let mut c = Check::mse(F32);
    c.backward = BackwardOptions {
        conv_weight_grad: weight_grad,
        ..BackwardOptions::default()
    };
    check(&n, "y", &c);
}

const TC: ConvWeightGrad = ConvWeightGrad::TransposedConv;
const UNFOLD: ConvWeightGrad = ConvWeightGrad::UnfoldDepthwise;
const AUTO: ConvWeightGrad = ConvWeightGrad::Auto;

/// Dense convs with a small patch (Cin·taps ≤ 64) take the unfold + GEMM
/// weight gradient under `Auto`: strides, asymmetric pads, dilations, a
/// stride that drops the last rows, 1-D, and a 3-channel stem-like conv.
#[test]
fn conv_dense_unfold_weight_grad() {
    conv_case(
        40,
        &[2, 2, 5, 5],
        &[3, 2, 3, 3],
        true,
        vec![a_ints("pads", &[1, 1, 1, 1])],
        AUTO,
    );
    let s2 = vec![a_ints("strides", &[2, 2]), a_ints("pads", &[0, 1, 1, 0])];
    conv_case(41, &[2, 2, 6, 5], &[3, 2, 3, 3], true, s2, AUTO);
    conv_case(
        42,
        &[2, 2, 6, 6],
        &[2, 2, 3, 3],
        true,
        vec![a_ints("strides", &[2, 2])],
        AUTO,
    );
    conv_case(
        43,
        &[2, 2, 7, 6],
        &[2, 2, 3, 3],
        true,
        vec![a_ints("dilations", &[2, 2])],
        AUTO,
    );
    conv_case(
        44,
        &[2, 3, 8],
        &[4, 3, 3],
        true,
        vec![a_ints("pads", &[1, 2])],
        AUTO,
    );
    let stem = vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])];
    conv_case(45, &[2, 3, 9, 9], &[4, 3, 3, 3], false, stem, AUTO);
}

#[test]
fn conv_2d_pads_bias() {
    conv_case(
        1,
        &[2, 2, 5, 5],
        &[3, 2, 3, 3],
        true,
        vec![a_ints("pads", &[1, 1, 1, 1])],
        TC,
    );
}

#[test]
fn conv_2d_no_bias_no_pads() {
    conv_case(2, &[2, 3, 5, 4], &[2, 3, 3, 2], false, vec![], TC);
}

#[test]
fn conv_pointwise_1x1() {
    // 1×1, stride 1, no pads, one group: the matrix-product special case.
    conv_case(18, &[2, 3, 4, 3], &[5, 3, 1, 1], true, vec![], TC);
    conv_case(19, &[3, 4, 5], &[2, 4, 1], false, vec![], TC);
    // Wide channels, small spatial size: the weight gradient is one GEMM over
    // batch·space instead of per-image products summed over the batch.
    conv_case(25, &[2, 8, 1, 2], &[8, 8, 1, 1], true, vec![], TC);
    // 1×1 but strided or grouped: the general formulas.
    conv_case(
        24,
        &[2, 3, 5, 5],
        &[2, 3, 1, 1],
        true,
        vec![a_ints("strides", &[2, 2])],
        TC,
    );
    conv_case(
        25,
        &[2, 4, 3, 3],
        &[4, 2, 1, 1],
        false,
        vec![a_int("group", 2)],
        TC,
    );
}

#[test]
fn conv_stride2_asymmetric_pads() {
    let attrs = vec![a_ints("strides", &[2, 2]), a_ints("pads", &[0, 1, 1, 0])];
    conv_case(3, &[2, 2, 6, 5], &[3, 2, 3, 3], true, attrs, TC);
}

#[test]
fn conv_stride2_drops_last_rows() {
    // 6 + 0 − 3 is odd: the last input row meets no window (dW's conv is
    // larger than the kernel and must be cropped; dX needs output_padding).
    let attrs = vec![a_ints("strides", &[2, 2])];
    conv_case(4, &[2, 2, 6, 6], &[2, 2, 3, 3], true, attrs, TC);
}

#[test]
fn conv_groups2_stride2() {
    let attrs = vec![
        a_int("group", 2),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
    ];
    conv_case(5, &[2, 4, 5, 5], &[4, 2, 3, 3], true, attrs, TC);
}

#[test]
fn conv_depthwise_both_weight_grad_forms() {
    for (seed, form) in [(6, TC), (7, UNFOLD)] {
        let attrs = vec![a_int("group", 3), a_ints("pads", &[1, 1, 1, 1])];
        conv_case(seed, &[2, 3, 5, 5], &[3, 1, 3, 3], true, attrs, form);
    }
}

#[test]
fn conv_depthwise_stride2_asymmetric_unfold() {
    for (seed, form) in [(8, TC), (9, UNFOLD)] {
        let attrs = vec![
            a_int("group", 3),
            a_ints("strides", &[2, 2]),
            a_ints("pads", &[1, 0, 0, 1]),
        ];
        conv_case(seed, &[2, 3, 6, 5], &[3, 1, 3, 3], false, attrs, form);
    }
}

/// Strided depthwise input gradients take the zero-insertion + flipped-kernel
/// Conv path (MobileNet's stride-2 blocks; a 1-D stride-3, dilation-2 case).
#[test]
fn conv_depthwise_strided_zero_insertion() {
    let attrs = vec![
        a_int("group", 3),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
    ];
    conv_case(11, &[2, 3, 6, 6], &[3, 1, 3, 3], true, attrs, TC);
    let attrs = vec![
        a_int("group", 2),
        a_ints("strides", &[3]),
        a_ints("dilations", &[2]),
        a_ints("pads", &[2, 2]),
    ];
    conv_case(12, &[2, 2, 11], &[2, 1, 3], false, attrs, TC);
}

#[test]
fn conv_depthwise_multiplier2() {
    let attrs = vec![a_int("group", 2), a_ints("pads", &[1, 1, 1, 1])];
    conv_case(10, &[2, 2, 4, 4], &[4, 1, 3, 3], true, attrs, UNFOLD);
}

#[test]
fn conv_auto_pad_same_upper_and_lower() {
    for (seed, mode) in [(11, "SAME_UPPER"), (12, "SAME_LOWER")] {
        // Size 6, kernel 4, stride 2: total padding 2·2 + 4 − 6 = 2 → 1/1;
        // size 5: 2·2 + 4 − 5 = 3 → asymmetric (1/2 or 2/1).
        let attrs = vec![a_string("auto_pad", mode), a_ints("strides", &[2, 2])];
        conv_case(seed, &[2, 2, 6, 5], &[2, 2, 4, 4], true, attrs, TC);
        let attrs = vec![a_string("auto_pad", mode), a_ints("strides", &[2, 2])];
        conv_case(
            seed + 100,
            &[1, 3, 5, 5],
            &[3, 1, 4, 4],
            false,
            attrs_group(attrs, 3),
            UNFOLD,
        );
    }
}

fn attrs_group(
    mut a: Vec<koala_graph::proto::AttributeProto>,
    g: i64,
) -> Vec<koala_graph::proto::AttributeProto> {
    a.push(a_int("group", g));
    a
}

#[test]
fn conv_auto_pad_valid() {
    let attrs = vec![a_string("auto_pad", "VALID"), a_ints("strides", &[2, 1])];
    conv_case(13, &[2, 2, 7, 5], &[3, 2, 3, 2], true, attrs, TC);
}

#[test]
fn conv_dilations2() {
    let attrs = vec![a_ints("dilations", &[2, 2]), a_ints("pads", &[2, 1, 2, 1])];
    conv_case(14, &[2, 2, 7, 6], &[2, 2, 3, 3], true, attrs, TC);
    let attrs = vec![
        a_ints("dilations", &[2, 2]),
        a_ints("strides", &[2, 2]),
        a_int("group", 2),
    ];
    conv_case(15, &[1, 2, 8, 7], &[2, 1, 3, 2], false, attrs, UNFOLD);
}

#[test]
fn conv_1d() {
    let attrs = vec![a_ints("strides", &[2]), a_ints("pads", &[1, 0])];
    conv_case(16, &[2, 3, 8], &[4, 3, 3], true, attrs, TC);
    let attrs = vec![a_int("group", 3), a_ints("pads", &[1, 1])];
    conv_case(17, &[2, 3, 6], &[3, 1, 3], false, attrs, UNFOLD);
}

// ------------------------------------------------------- ConvTranspose ----

fn conv_transpose_case(
    seed: u64,
    x: &[usize],
    w: &[usize],
    bias: bool,
    attrs: Vec<koala_graph::proto::AttributeProto>,
) {
    let mut n = Net::new(17, F32, seed);
    let xv = n.rand_leaf("x", x);
    let wv = n.rand_weight("w", w);
    let mut inputs = vec![xv, wv];
    if bias {
        let group = attrs
            .iter()
            .find(|a| a.name == "group")
            .map_or(1, |a| a.i as usize);
        inputs.push(n.rand_weight("b", &[w[1] * group]));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    n.node("ConvTranspose", &refs, &["y"], attrs);
    mse(&n, "y");
}

#[test]
fn conv_transpose_basic() {
    conv_transpose_case(20, &[2, 3, 3, 3], &[3, 2, 3, 3], true, vec![]);
}

#[test]
fn conv_transpose_stride2_pads_output_padding() {
    let attrs = vec![
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 0, 1, 1]),
        a_ints("output_padding", &[1, 1]),
    ];
    conv_transpose_case(21, &[2, 2, 3, 4], &[2, 3, 3, 3], true, attrs);
}

#[test]
fn conv_transpose_groups() {
    let attrs = vec![
        a_int("group", 2),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
    ];
    conv_transpose_case(22, &[2, 4, 3, 3], &[4, 1, 3, 3], true, attrs);
}

#[test]
fn conv_transpose_auto_pad() {
    // Output = input·stride; odd total padding (3·2: 1, 3/2/3: 1) is split
    // toward the end (SAME_UPPER) or the beginning (SAME_LOWER).
    let mut seed = 26;
    for mode in ["SAME_UPPER", "SAME_LOWER"] {
        for (x, k, s) in [(3usize, 3usize, 2i64), (4, 4, 2), (3, 2, 3)] {
            seed += 1;
            let attrs = vec![a_string("auto_pad", mode), a_ints("strides", &[s, s])];
            conv_transpose_case(seed, &[1, 2, x, x], &[2, 2, k, k], false, attrs);
        }
    }
}

#[test]
fn first_layer_data_input_needs_no_input_gradient() {
    // The image is data, not a leaf: only the weights need gradients.
    for (seed, op) in [(33, "Conv"), (34, "ConvTranspose")] {
        let mut n = Net::new(17, F32, seed);
        let x = n.input("image", &[2, 2, 4, 4]);
        let w = n.rand_weight("w", &[2, 3, 3, 3]);
        let b = n.rand_weight("b", &[3]);
        let w = if op == "Conv" {
            n.node(
                "Transpose",
                &[&w],
                &["wt"],
                vec![a_ints("perm", &[1, 0, 2, 3])],
            );
            "wt".to_string()
        } else {
            w
        };
        n.node(
            op,
            &[&x, &w, &b],
            &["y"],
            vec![a_ints("pads", &[1, 1, 1, 1])],
        );
        mse(&n, "y");
    }
}

#[test]
fn conv_transpose_1d_dilated() {
    let attrs = vec![
        a_ints("strides", &[3]),
        a_ints("dilations", &[2]),
        a_ints("output_padding", &[2]),
    ];
    conv_transpose_case(23, &[2, 2, 4], &[2, 3, 2], false, attrs);
}

// ---------------------------------------------------------------- Gemm ----

fn gemm_case(seed: u64, ta: bool, tb: bool, alpha: f32, beta: f32, bias: Option<&[usize]>) {
    let (m, k, nn) = (3, 4, 2);
    let mut n = Net::new(13, F64, seed);
    let a_shape = if ta { [k, m] } else { [m, k] };
    let b_shape = if tb { [nn, k] } else { [k, nn] };
    let a = n.rand_leaf("a", &a_shape);
    let b = n.rand_weight("b", &b_shape);
    let mut inputs = vec![a, b];
    if let Some(s) = bias {
        inputs.push(n.rand_weight("c", s));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    let attrs = vec![
        a_int("transA", ta as i64),
        a_int("transB", tb as i64),
        a_float("alpha", alpha),
        a_float("beta", beta),
    ];
    n.node("Gemm", &refs, &["y"], attrs);
    mse(&n, "y");
}

#[test]
fn gemm_transpose_flags() {
    for (i, (ta, tb)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        gemm_case(30 + i as u64, ta, tb, 1.0, 1.0, Some(&[2]));
    }
}

#[test]
fn gemm_alpha_beta_and_bias_shapes() {
    let shapes: [&[usize]; 5] = [&[2], &[1, 2], &[3, 2], &[3, 1], &[]];
    for (i, s) in shapes.into_iter().enumerate() {
        gemm_case(40 + i as u64, i % 2 == 1, i % 3 == 1, 0.5, 2.0, Some(s));
    }
    gemm_case(46, true, false, 1.5, 1.0, None);
}

// -------------------------------------------------------------- MatMul ----

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

// ---------------------------------------------------------- Arithmetic ----

/// `op(A, B)` with A a leaf and B a weight of the given shapes.
fn binary_case(seed: u64, op: &str, a: &[usize], b: &[usize]) {
    let mut n = Net::new(17, F64, seed);
    let av = n.rand_leaf("a", a);
    let bv = if op == "Div" {
        // Divisors bounded away from 0 so 1/B stays well conditioned.
        let v = n.away_from_zero(b.iter().product(), 0.5);
        n.weight("b", b, v)
    } else {
        n.rand_weight("b", b)
    };
    n.node(op, &[&av, &bv], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn arithmetic_broadcasting_both_sides() {
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[2, 3], &[2, 3]),
        (&[3, 1], &[1, 4]),
        (&[2, 3, 4], &[4]),
        (&[4], &[2, 3, 4]),
        (&[2, 1, 4], &[3, 1]),
    ];
    let mut seed = 70;
    for op in ["Add", "Sub", "Mul", "Div"] {
        for (a, b) in shapes {
            seed += 1;
            binary_case(seed, op, a, b);
        }
    }
}

#[test]
fn arithmetic_same_value_on_both_sides() {
    // x·x, x/x… : both operand gradients land on the same value (fan-in).
    for (seed, op) in [(95, "Mul"), (96, "Sub"), (97, "Add")] {
        let mut n = Net::new(17, F64, seed);
        let a = n.rand_leaf("a", &[2, 3]);
        n.node(op, &[&a, &a], &["y"], vec![]);
        let mut c = Check::mse(F64);
        c.may_be_zero = vec!["a_w".into()]; // x − x
        check(&n, "y", &c);
    }
}

#[test]
fn neg() {
    let mut n = Net::new(17, F64, 98);
    let a = n.rand_leaf("a", &[2, 3]);
    n.node("Neg", &[&a], &["y"], vec![]);
    mse(&n, "y");
}

// --------------------------------------------------------- Activations ----

/// `op(X)` with X a leaf whose values come from `values`.
fn unary_case(
    net: &mut Net,
    op: &str,
    shape: &[usize],
    values: Vec<f64>,
    attrs: Vec<koala_graph::proto::AttributeProto>,
) {
    let x = net.leaf("x", shape, values);
    net.node(op, &[&x], &["y"], attrs);
}

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

// ------------------------------------------------------------- Softmax ----

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

// --------------------------------------------------------- BatchNorm ----

fn batch_norm_case(seed: u64, opset: i64, dt: DataType, x: &[usize]) {
    let mut n = Net::new(opset, dt, seed);
    let c = x[1];
    let xv = n.rand_leaf("x", x);
    let scale = n.away_from_zero(c, 0.5);
    let scale = n.weight("scale", &[c], scale);
    let bias = n.rand_weight("bias", &[c]);
    let mean = n.uniform(c, -0.5, 0.5);
    let mean = n.float_init("mean", &[c], &mean);
    let var = n.uniform(c, 0.5, 1.5);
    let var = n.float_init("var", &[c], &var);
    n.node(
        "BatchNormalization",
        &[&xv, &scale, &bias, &mean, &var],
        &["y"],
        vec![a_float("epsilon", 1e-3)],
    );
    let r = check(&n, "y", &Check::mse(dt));
    let trained: Vec<&str> = r.graph.trainable.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        trained,
        ["x_w", "scale", "bias"],
        "running statistics must stay frozen"
    );
}

/// Conv → BatchNormalization: the training graph folds BN into the
/// Conv weights (`fold.rs`) unless told to keep it; both forms must give the
/// same, finite-difference-exact gradients for W, b, γ and β, with the
/// running statistics frozen.
fn conv_batch_norm_case(seed: u64, keep_batchnorm: bool, conv_bias: bool) {
    let mut n = Net::new(17, F32, seed);
    let xv = n.rand_leaf("x", &[2, 3, 6, 6]);
    let w = n.rand_weight("w", &[4, 3, 3, 3]);
    let mut conv_in = vec![xv, w];
    if conv_bias {
        conv_in.push(n.rand_weight("b", &[4]));
    }
    let refs: Vec<&str> = conv_in.iter().map(|s| s.as_str()).collect();
    n.node("Conv", &refs, &["c"], vec![a_ints("pads", &[1, 1, 1, 1])]);
    let scale = n.away_from_zero(4, 0.5);
    let scale = n.weight("scale", &[4], scale);
    let bias = n.rand_weight("bias", &[4]);
    let mean = n.uniform(4, -0.5, 0.5);
    let mean = n.float_init("mean", &[4], &mean);
    let var = n.uniform(4, 0.5, 1.5);
    let var = n.float_init("var", &[4], &var);
    n.node(
        "BatchNormalization",
        &["c", &scale, &bias, &mean, &var],
        &["y"],
        vec![a_float("epsilon", 1e-3)],
    );
    let mut c = Check::mse(F32);
    c.backward = BackwardOptions {
        keep_batchnorm,
        ..BackwardOptions::default()
    };
    let r = check(&n, "y", &c);
    let folded = !r
        .graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .any(|x| x.op_type == "BatchNormalization");
    assert_eq!(
        folded, !keep_batchnorm,
        "BatchNormalization folded into the Conv unless kept"
    );
    let trained: Vec<&str> = r.graph.trainable.iter().map(|t| t.name.as_str()).collect();
    assert!(
        trained.contains(&"scale")
            && trained.contains(&"bias")
            && !trained.contains(&"mean")
            && !trained.contains(&"var"),
        "{trained:?}"
    );
}

#[test]
fn conv_batch_norm_folded_and_kept() {
    conv_batch_norm_case(140, false, true);
    conv_batch_norm_case(141, false, false);
    conv_batch_norm_case(142, true, true);
}

#[test]
fn batch_norm_frozen_statistics() {
    batch_norm_case(130, 11, F32, &[2, 3, 4, 4]);
    batch_norm_case(131, 15, F64, &[3, 2, 5]);
    batch_norm_case(132, 9, F64, &[2, 2]);
}

// ------------------------------------------------------------- Pooling ----

fn pool_case(
    seed: u64,
    opset: i64,
    dt: DataType,
    op: &str,
    x: &[usize],
    attrs: Vec<koala_graph::proto::AttributeProto>,
) {
    let mut n = Net::new(opset, dt, seed);
    // Distinct values 1/8 apart: no MaxPool ties, and no perturbation
    // (≤ h·|d| ≤ 2⁻⁵) can change which element of a window is largest.
    let v = n.distinct(x.iter().product(), 0.125);
    unary_case(&mut n, op, x, v, attrs);
    mse(&n, "y");
}

#[test]
fn max_pool_2x2_stride2() {
    let attrs = vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])];
    pool_case(140, 13, F64, "MaxPool", &[2, 2, 4, 6], attrs);
}

#[test]
fn max_pool_3x3_stride2_overlapping_pads() {
    let attrs = vec![
        a_ints("kernel_shape", &[3, 3]),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
    ];
    pool_case(141, 17, F64, "MaxPool", &[2, 2, 5, 6], attrs);
    let attrs = vec![
        a_ints("kernel_shape", &[3, 2]),
        a_ints("strides", &[1, 1]),
        a_int("ceil_mode", 1),
    ];
    pool_case(142, 16, F64, "MaxPool", &[1, 2, 5, 4], attrs);
}

#[test]
fn max_pool_overlapping_before_opset16_is_a_clear_error() {
    let mut n = Net::new(13, F64, 143);
    let x = n.rand_leaf("x", &[1, 1, 5, 5]);
    let attrs = vec![a_ints("kernel_shape", &[3, 3]), a_ints("strides", &[2, 2])];
    n.node("MaxPool", &[&x], &["y"], attrs);
    let e = koala_graph::build(
        &n.model("y"),
        &n.spec(koala_graph::LossSpec::MeanSquaredError),
    )
    .expect_err("overlapping MaxPool at opset 13 must be refused");
    let e = format!("{e:#}");
    assert!(e.contains("MaxPool") && e.contains("opset 16"), "{e}");
}

#[test]
fn average_pool_count_include_pad_and_ceil_mode() {
    let mut seed = 150;
    for include in [0, 1] {
        for ceil in [0, 1] {
            seed += 1;
            let attrs = vec![
                a_ints("kernel_shape", &[3, 3]),
                a_ints("strides", &[2, 2]),
                a_ints("pads", &[1, 0, 1, 1]),
                a_int("count_include_pad", include),
                a_int("ceil_mode", ceil),
            ];
            pool_case(seed, 17, F32, "AveragePool", &[2, 2, 6, 5], attrs);
        }
    }
    let attrs = vec![
        a_ints("kernel_shape", &[2]),
        a_int("ceil_mode", 1),
        a_ints("strides", &[2]),
    ];
    pool_case(160, 11, F32, "AveragePool", &[2, 3, 7], attrs);
}

#[test]
fn global_average_pool() {
    pool_case(161, 17, F32, "GlobalAveragePool", &[2, 3, 3, 4], vec![]);
}

// -------------------------------------------------------------- Reduce ----

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

// ---------------------------------------------------------- Shape ops ----

#[test]
fn flatten_reshape_transpose() {
    for (seed, axis) in [(180, 1), (181, 2), (182, 0)] {
        let mut n = Net::new(13, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        n.node("Flatten", &[&x], &["f"], vec![a_int("axis", axis)]);
        // A second op so the gradient reaching Flatten is not the seed itself.
        n.node("Tanh", &["f"], &["y"], vec![]);
        mse(&n, "y");
    }
    let mut n = Net::new(17, F64, 183);
    let x = n.rand_leaf("x", &[2, 3, 4]);
    let s = n.ints("shape", &[0, -1, 2]);
    n.node("Reshape", &[&x, &s], &["r"], vec![]);
    n.node("Tanh", &["r"], &["y"], vec![]);
    mse(&n, "y");
    for (seed, perm) in [(184, Some(&[2, 0, 1][..])), (185, None)] {
        let mut n = Net::new(17, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        let attrs = perm.map(|p| vec![a_ints("perm", p)]).unwrap_or_default();
        n.node("Transpose", &[&x], &["t"], attrs);
        n.node("Tanh", &["t"], &["y"], vec![]);
        mse(&n, "y");
    }
}

#[test]
fn squeeze_unsqueeze_attribute_and_input_forms() {
    for opset in [11, 13] {
        let mut n = Net::new(opset, F64, 190 + opset as u64);
        let x = n.rand_leaf("x", &[2, 1, 3]);
        if opset >= 13 {
            let a = n.ints("a", &[1]);
            let b = n.ints("b", &[0, -1]);
            n.node("Squeeze", &[&x, &a], &["s"], vec![]);
            n.node("Unsqueeze", &["s", &b], &["u"], vec![]);
        } else {
            n.node("Squeeze", &[&x], &["s"], vec![a_ints("axes", &[1])]);
            n.node("Unsqueeze", &["s"], &["u"], vec![a_ints("axes", &[0, -1])]);
        }
        n.node("Tanh", &["u"], &["y"], vec![]);
        mse(&n, "y");
    }
}

#[test]
fn identity_and_inference_dropout() {
    let mut n = Net::new(17, F64, 200);
    let x = n.rand_leaf("x", &[2, 3]);
    let ratio = n.constant("ratio", &[], &[0.5]);
    n.node("Identity", &[&x], &["i"], vec![]);
    n.node("Dropout", &["i", &ratio], &["d"], vec![]);
    n.node("Tanh", &["d"], &["y"], vec![]);
    mse(&n, "y");
    let mut n = Net::new(11, F64, 201);
    let x = n.rand_leaf("x", &[2, 3]);
    n.node(
        "Dropout",
        &[&x],
        &["d", "mask"],
        vec![a_float("ratio", 0.3)],
    );
    n.node("Tanh", &["d"], &["y"], vec![]);
    mse(&n, "y");
}

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

/// Slice on a [4, 6] leaf with the given parameters (opset 13 inputs).
fn slice_case(seed: u64, starts: &[i64], ends: &[i64], axes: &[i64], steps: Option<&[i64]>) {
    let mut n = Net::new(13, F64, seed);
    let x = n.rand_leaf("x", &[4, 6]);
    let s = n.ints("starts", starts);
    let e = n.ints("ends", ends);
    let a = n.ints("axes", axes);
    let mut inputs = vec![x, s, e, a];
    if let Some(st) = steps {
        inputs.push(n.ints("steps", st));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    n.node("Slice", &refs, &["y"], vec![]);
    let mut c = Check::mse(F64);
    c.may_be_zero = vec![];
    check(&n, "y", &c);
}

#[test]
fn slice_steps_and_negative_starts() {
    slice_case(230, &[1], &[3], &[0], None);
    slice_case(231, &[-4, 1], &[100, -1], &[1, 0], None);
    slice_case(232, &[0, 1], &[4, 6], &[0, 1], Some(&[2, 2]));
    slice_case(233, &[-1], &[-100], &[1], Some(&[-2]));
    slice_case(234, &[-3], &[6], &[-1], Some(&[2]));
}

#[test]
fn slice_opset11_without_steps() {
    let mut n = Net::new(11, F64, 235);
    let x = n.rand_leaf("x", &[3, 5]);
    let s = n.ints("starts", &[-3]);
    let e = n.ints("ends", &[5]);
    n.node("Slice", &[&x, &s, &e], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn pad_constant() {
    let mut n = Net::new(11, F64, 240);
    let x = n.rand_leaf("x", &[2, 3, 2]);
    let p = n.ints("pads", &[0, 1, 2, 1, 0, 1]);
    let v = n.constant("v", &[], &[0.25]);
    n.node("Pad", &[&x, &p, &v], &["y"], vec![]);
    mse(&n, "y");
    let mut n = Net::new(18, F64, 241);
    let x = n.rand_leaf("x", &[2, 3, 2]);
    let p = n.ints("pads", &[1, 2, 0, 3]);
    let a = n.ints("axes", &[-1, 1]);
    n.node(
        "Pad",
        &[&x, &p, "", &a],
        &["y"],
        vec![a_string("mode", "constant")],
    );
    mse(&n, "y");
}

// ---------------------------------------------------------- Loss heads ----

/// Logits = Gemm(X, W, b) for [B, C], or MatMul + Add for [B, T, C].
fn classifier(seed: u64, opset: i64, dt: DataType, lead: &[usize], classes: usize) -> Net {
    let mut n = Net::new(opset, dt, seed);
    let k = 3;
    let x_shape: Vec<usize> = lead.iter().copied().chain([k]).collect();
    let x = n.rand_leaf("x", &x_shape);
    let w = n.uniform(k * classes, -2.0, 2.0);
    let w = n.weight("w", &[k, classes], w);
    let b = n.rand_weight("b", &[classes]);
    if lead.len() == 1 {
        n.node("Gemm", &[&x, &w, &b], &["logits"], vec![]);
    } else {
        n.node("MatMul", &[&x, &w], &["z"], vec![]);
        n.node("Add", &["z", &b], &["logits"], vec![]);
    }
    n
}

#[test]
fn cross_entropy_plain_f64_and_f32() {
    for (seed, dt, opset) in [(300, F64, 13), (301, F32, 17), (302, F64, 11)] {
        let n = classifier(seed, opset, dt, &[4], 5);
        check(
            &n,
            "logits",
            &Check::cross_entropy(dt, vec![0, 4, 2, 2], 0.0, None),
        );
    }
}

#[test]
fn cross_entropy_label_smoothing_and_ignore_index() {
    let n = classifier(303, 17, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![1, 3, 0, 4], 0.1, None),
    );
    let n = classifier(304, 17, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![1, -100, 0, -100], 0.0, Some(-100)),
    );
    let n = classifier(305, 13, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![-1, 3, -1, 2], 0.2, Some(-1)),
    );
}

#[test]
fn cross_entropy_sequence_logits_with_an_all_ignored_sample() {
    // [B=3, T=2, C=4]; sample 1 is entirely ignored (its per-sample loss is 0).
    let n = classifier(306, 18, F64, &[3, 2], 4);
    let labels = vec![0, 3, -100, -100, 2, -100];
    let r = check(
        &n,
        "logits",
        &Check::cross_entropy(F64, labels, 0.1, Some(-100)),
    );
    assert_eq!(r.graph.label_shape, vec![3, 2]);
}

#[test]
fn cross_entropy_reference_matches_a_value_worked_by_hand() {
    // logits [ln 1, ln 2, ln 1] → p = [1/4, 1/2, 1/4]; label 1: nll = ln 2.
    // With ε = 0.3: 0.7·ln 2 + 0.3·(ln 4 + ln 2 + ln 4)/3 = 0.7·ln2 + 0.5·ln2.
    let z = [0.0, 2f64.ln(), 0.0];
    let (l, per) = common::cross_entropy_reference(&z, &[1, 3], &[1], 0.3, None);
    let want = 1.2 * 2f64.ln();
    assert!(
        (l - want).abs() < 1e-15 && (per[0] - want).abs() < 1e-15,
        "{l} vs {want}"
    );
}

// ----------------------------------------------- Fan-out / reachability ----

#[test]
fn fan_out_sums_every_use() {
    // h = X·W feeds Tanh, Mul and Add; W is used by two MatMuls.
    let mut n = Net::new(17, F64, 310);
    let x = n.rand_leaf("x", &[3, 4]);
    let w = n.rand_weight("w", &[4, 4]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Tanh", &["h"], &["t"], vec![]);
    n.node("MatMul", &["t", &w], &["u"], vec![]);
    n.node("Mul", &["h", "t"], &["ht"], vec![]);
    n.node("Add", &["u", "ht"], &["v"], vec![]);
    n.node("Add", &["v", "h"], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn weights_without_a_float_path_to_the_loss_are_reported_unreachable() {
    let mut n = Net::new(17, F64, 311);
    let x = n.rand_leaf("x", &[2, 3]);
    let w = n.rand_weight("w", &[3, 2]);
    let dead = n.rand_weight("dead", &[2, 3]);
    let shape_only = n.rand_weight("shape_only", &[4, 1]);
    n.node("Mul", &[&x, &dead], &["unused"], vec![]);
    n.node("Shape", &[&shape_only], &["s"], vec![]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Reshape", &["h", "s"], &["y"], vec![]);
    let r = check(&n, "y", &Check::mse(F64));
    assert_eq!(r.graph.unreachable, ["dead", "shape_only"]);
    let inputs: Vec<&str> = r
        .graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert!(
        !inputs.contains(&"dead") && !inputs.contains(&"shape_only"),
        "{inputs:?}"
    );
}

// ------------------------------------------------------- Opset coverage ----

#[test]
fn reductions_emitted_by_rules_use_each_opsets_form() {
    // Broadcast gradients (ReduceSum), conv bias (ReduceSum) and the
    // depthwise unfold (Pad, Unsqueeze, Slice) at opsets with attribute and
    // input forms.
    for (i, opset) in [11i64, 13, 18].into_iter().enumerate() {
        let seed = 320 + 10 * i as u64;
        let dt = if opset < 12 { F32 } else { F64 };
        let mut n = Net::new(opset, dt, seed);
        let a = n.rand_leaf("a", &[2, 1, 4]);
        let b = n.rand_weight("b", &[3, 1]);
        n.node("Mul", &[&a, &b], &["m"], vec![]);
        n.node("Sub", &["m", &b], &["y"], vec![]);
        mse(&n, "y");

        let mut n = Net::new(opset, F32, seed + 1);
        let x = n.rand_leaf("x", &[2, 2, 5, 5]);
        let w = n.rand_weight("w", &[2, 1, 3, 3]);
        let bias = n.rand_weight("bias", &[2]);
        let attrs = vec![
            a_int("group", 2),
            a_ints("strides", &[2, 2]),
            a_ints("pads", &[1, 1, 0, 0]),
        ];
        n.node("Conv", &[&x, &w, &bias], &["y"], attrs);
        let mut c = Check::mse(F32);
        c.backward.conv_weight_grad = UNFOLD;
        check(&n, "y", &c);

        let mut n = Net::new(opset, F64, seed + 2);
        let a = n.rand_leaf("a", &[3, 4]);
        let c = n.rand_weight("c", &[3]);
        n.node(
            "Gemm",
            &[&a, &a, &c],
            &["y"],
            vec![a_int("transB", 1), a_float("beta", 0.5)],
        );
        mse(&n, "y");
    }
}

// ------------------------------------------------------------ Edge cases ----

#[test]
fn pooling_auto_pad_and_f32_max_pool() {
    for (seed, mode) in [(400, "SAME_UPPER"), (401, "SAME_LOWER")] {
        let attrs = vec![
            a_string("auto_pad", mode),
            a_ints("kernel_shape", &[3, 2]),
            a_ints("strides", &[2, 2]),
        ];
        pool_case(seed, 17, F32, "AveragePool", &[2, 2, 5, 5], attrs.clone());
        pool_case(seed + 2, 17, F32, "MaxPool", &[2, 2, 5, 5], attrs);
    }
    pool_case(404, 17, F32, "GlobalAveragePool", &[2, 3, 5], vec![]);
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

#[test]
fn squeeze_without_axes() {
    let mut n = Net::new(13, F64, 412);
    let x = n.rand_leaf("x", &[2, 1, 3, 1]);
    n.node("Squeeze", &[&x], &["y"], vec![]);
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
fn shape_arithmetic_is_not_differentiated() {
    // Exporters flatten with Shape → Gather → Unsqueeze → Concat → Reshape;
    // the integer branch must be skipped, the float one differentiated.
    let mut n = Net::new(13, F64, 414);
    let x = n.rand_leaf("x", &[2, 3, 2]);
    let w = n.rand_weight("w", &[2, 2]);
    let zero = n.ints("zero", &[0]);
    let minus_one = n.ints("minus_one", &[-1]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Shape", &["h"], &["s"], vec![]);
    n.node("Gather", &["s", &zero], &["batch"], vec![a_int("axis", 0)]);
    n.node(
        "Concat",
        &["batch", &minus_one],
        &["target"],
        vec![a_int("axis", 0)],
    );
    n.node("Reshape", &["h", "target"], &["y"], vec![]);
    mse(&n, "y");
}

/// A net `y = Dropout(x, 0.5, training_mode)` with the flag from a bool
/// Constant (`Some`) or computed from the data (`None`: unknown to koala).
fn dropout_net(seed: u64, training: Option<bool>) -> Net {
    let mut n = Net::new(17, F64, seed);
    let x = n.rand_leaf("x", &[2, 3]);
    let ratio = n.constant("ratio", &[], &[0.5]);
    let flag = match training {
        Some(t) => {
            let value = koala_graph::proto::TensorProto {
                data_type: DataType::Bool as i32,
                raw_data: vec![t as u8],
                ..Default::default()
            };
            n.node("Constant", &[], &["train"], vec![a_tensor("value", value)]);
            "train".to_string()
        }
        None => {
            n.node(
                "ReduceSum",
                &["x_data"],
                &["sum"],
                vec![a_int("keepdims", 0)],
            );
            n.node(
                "Cast",
                &["sum"],
                &["train"],
                vec![a_int("to", DataType::Bool as i64)],
            );
            "train".to_string()
        }
    };
    n.node("Dropout", &[&x, &ratio, &flag], &["d"], vec![]);
    n.node("Tanh", &["d"], &["y"], vec![]);
    n
}

fn mse_build_error(n: &Net) -> String {
    let e = koala_graph::build(
        &n.model("y"),
        &n.spec(koala_graph::LossSpec::MeanSquaredError),
    )
    .expect_err("build must refuse the model");
    format!("{e:#}")
}

#[test]
fn dropout_training_mode_must_be_a_known_false() {
    mse(&dropout_net(415, Some(false)), "y");
    let e = mse_build_error(&dropout_net(416, Some(true)));
    assert!(e.contains("Dropout in training mode"), "{e}");
    let e = mse_build_error(&dropout_net(417, None));
    assert!(
        e.contains("training_mode input 'train' is not a constant"),
        "{e}"
    );
}

#[test]
fn training_mode_batch_norm_is_refused() {
    let mut n = Net::new(15, F64, 418);
    let x = n.rand_leaf("x", &[2, 2, 3]);
    let s = n.rand_weight("s", &[2]);
    let b = n.rand_weight("b", &[2]);
    let m = n.float_init("m", &[2], &[0.0, 0.1]);
    let v = n.float_init("v", &[2], &[1.0, 0.5]);
    let attrs = vec![a_int("training_mode", 1)];
    n.node(
        "BatchNormalization",
        &[&x, &s, &b, &m, &v],
        &["y", "rm", "rv"],
        attrs,
    );
    let e = mse_build_error(&n);
    assert!(e.contains("BatchNormalization in training mode"), "{e}");
}

#[test]
fn mse_per_sample_loss_is_each_samples_mean() {
    let mut n = Net::new(17, F64, 416);
    let x = n.rand_leaf("x", &[3, 2, 2]);
    n.node("Tanh", &[&x], &["y"], vec![]);
    let model = n.model("y");
    let graph = koala_graph::build(&model, &n.spec(koala_graph::LossSpec::MeanSquaredError))
        .expect("build");
    let mut run = common::Run::new(&n, &graph, &common::Labels::RandomTargets, 3);
    let e = run.eval(&run.weights.clone());
    let per = &e.outputs["per_sample_loss"];
    assert_eq!(per.len(), 3);
    for (b, got) in per.iter().enumerate() {
        let want: f64 = (0..4)
            .map(|k| (e.model_output[4 * b + k] - run.targets[4 * b + k]).powi(2))
            .sum::<f64>()
            / 4.0;
        assert!(
            (got - want).abs() <= 1e-12 * want.max(1.0),
            "sample {b}: {got} vs {want}"
        );
    }
}

#[test]
fn small_smooth_cnn_at_opset21() {
    // Conv → BN → Sigmoid → AveragePool → ReduceMean (axes input) → Gemm →
    // cross-entropy with label smoothing: every rule at the newest opset ORT
    // 1.31 runs, composed. Smooth activations only, so perturbing any weight
    // cannot cross a kink; F32_SMOOTH covers the curvature.
    let mut n = Net::new(21, F32, 500);
    let x = n.input("image", &[3, 2, 6, 6]);
    let w = n.rand_weight("conv_w", &[4, 2, 3, 3]);
    let scale = n.rand_weight("bn_scale", &[4]);
    let bias = n.rand_weight("bn_bias", &[4]);
    let mean = n.uniform(4, -0.5, 0.5);
    let mean = n.float_init("bn_mean", &[4], &mean);
    let var = n.uniform(4, 0.5, 1.5);
    let var = n.float_init("bn_var", &[4], &var);
    let axes = n.ints("axes", &[2, 3]);
    let fc = n.rand_weight("fc_w", &[5, 4]);
    let fc_b = n.rand_weight("fc_b", &[5]);
    let conv_attrs = vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])];
    n.node("Conv", &[&x, &w], &["c"], conv_attrs);
    n.node(
        "BatchNormalization",
        &["c", &scale, &bias, &mean, &var],
        &["bn"],
        vec![],
    );
    n.node("Sigmoid", &["bn"], &["s"], vec![]);
    let pool = vec![
        a_ints("kernel_shape", &[2, 2]),
        a_ints("pads", &[0, 0, 1, 1]),
    ];
    n.node("AveragePool", &["s"], &["p"], pool);
    n.node(
        "ReduceMean",
        &["p", &axes],
        &["m"],
        vec![a_int("keepdims", 0)],
    );
    n.node(
        "Gemm",
        &["m", &fc, &fc_b],
        &["logits"],
        vec![a_int("transB", 1)],
    );
    let c = Check::cross_entropy(F32, vec![4, 0, 2], 0.1, None).with_fd(Fd::F32_SMOOTH);
    let r = check(&n, "logits", &c);
    assert_eq!(r.graph.trainable.len(), 5);
}
