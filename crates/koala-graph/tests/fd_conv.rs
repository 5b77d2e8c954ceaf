//! Finite-difference checks of Conv and ConvTranspose (`backward/conv.rs`). ORT 1.31 has only f32 kernels for both, so f32 (tolerance 1e-3).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, Check, Net, F32};
use koala_graph::attrs::{a_int, a_ints, a_string};
use koala_graph::{BackwardOptions, ConvWeightGrad};

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
