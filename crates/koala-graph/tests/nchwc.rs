//! The `ort` execution target's blocked-kernel convolutions (`src/nchwc.rs`): finite-
//! difference checks of every conv case the pass rewrites (dense with a blocked input, a
//! stem on a plain input, depthwise at strides 1 and 2, pointwise, output channels that
//! need padding) and of a residual block whose element-wise nodes run on blocked data.
//! `common::check` runs each case on both targets (portable, then ort); these tests also
//! assert that the ort graph really uses the blocked kernels, so they cannot pass by
//! falling back to the portable graph.
//!
//! Tolerance: f32 with the step of `Fd::F32` (1e-3 relative, reasoning in `common`); the
//! blocked kernels only reorder the sums, so the error stays at the portable graph's level.

mod common;

use common::{check, rel_error, Check, Labels, Net, Run, F32};
use koala_graph::attrs::{a_int, a_ints};
use koala_graph::nchwc::{block_size, is_blocked_op, NchwcStats};
use koala_graph::{ExecutionTarget, LossSpec};

/// The block this machine's ORT uses; every x86-64 CPU with AVX2 has the blocked kernels,
/// so a missing block there means the probe broke (and every other test here would
/// silently check the portable graph twice).
fn block() -> usize {
    let b = block_size();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            b.is_some(),
            "ORT's blocked kernels were not found on an AVX2 CPU"
        );
    }
    b.unwrap_or(16)
}

/// Checks `n` (output `y`) on both targets and returns the ort graph's pass statistics.
fn check_both(n: &Net) -> Option<NchwcStats> {
    let report = check(n, "y", &Check::mse(F32));
    let blocked = report
        .graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| is_blocked_op(n))
        .count();
    if block_size().is_some() {
        assert!(blocked > 0, "the ort graph has no blocked kernels");
    }
    report.graph.nchwc.clone()
}

fn conv_net(
    seed: u64,
    x: &[usize],
    w: &[usize],
    attrs: Vec<koala_graph::proto::AttributeProto>,
) -> Net {
    let mut n = Net::new(17, F32, seed);
    let xv = n.rand_leaf("x", x);
    let wv = n.rand_weight("w", w);
    let bv = n.rand_weight("b", &[w[0]]);
    n.node("Conv", &[&xv, &wv, &bv], &["y"], attrs);
    n
}

#[test]
fn dense_conv_with_padded_output_channels() {
    let b = block();
    // O = 1.5 blocks: the filter and bias are padded, the output sliced back by ReorderOutput.
    let n = conv_net(
        1,
        &[2, b, 5, 5],
        &[b + b / 2, b, 3, 3],
        vec![a_ints("pads", &[1, 1, 1, 1])],
    );
    let s = check_both(&n).expect("ort target");
    assert!(s.convs >= 2, "{s:?}"); // forward + input-gradient conv at least
}

#[test]
fn stem_conv_on_plain_input_strided() {
    let b = block();
    let n = conv_net(
        2,
        &[2, 3, 9, 9],
        &[b, 3, 3, 3],
        vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])],
    );
    let s = check_both(&n).expect("ort target");
    assert!(s.convs >= 1, "{s:?}");
}

#[test]
fn depthwise_conv_stride_1_and_2() {
    let b = block();
    for (seed, stride, size) in [(3, 1, 6), (4, 2, 7), (5, 2, 8)] {
        let n = conv_net(
            seed,
            &[2, b, size, size],
            &[b, 1, 3, 3],
            vec![
                a_int("group", b as i64),
                a_ints("strides", &[stride, stride]),
                a_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        let s = check_both(&n).expect("ort target");
        // forward, input gradient, batch-as-channels weight gradient
        assert!(s.convs >= 3, "stride {stride}: {s:?}");
    }
}

#[test]
fn pointwise_conv_gradients_as_blocked_convs() {
    let b = block();
    let n = conv_net(6, &[2, 2 * b, 4, 4], &[b, 2 * b, 1, 1], vec![]);
    let s = check_both(&n).expect("ort target");
    assert!(s.convs >= 2, "{s:?}"); // forward + the 1×1 input-gradient conv
}

/// An inverted-residual block (pointwise → Clip → depthwise → pointwise, + input): the
/// Clip, its masks and the residual Add run on blocked data. Clip's kinks make finite
/// differences unreliable here, so the ort graph's loss and gradients are compared with
/// the portable graph's (itself checked against finite differences in `fd_conv.rs` and
/// `fd_activation.rs`) on the same weights and targets: the blocked kernels only reorder
/// f32 sums of ≤ 300 terms of order 1, so 1e-4 relative per tensor is ~10× the rounding.
#[test]
fn residual_block_keeps_data_blocked() {
    let b = block();
    let c = b;
    let mut n = Net::new(17, F32, 7);
    let x = n.rand_leaf("x", &[2, c, 6, 6]);
    let w1 = n.rand_weight("w1", &[2 * c, c, 1, 1]);
    let w2 = n.rand_weight("w2", &[2 * c, 1, 3, 3]);
    let w3 = n.rand_weight("w3", &[c, 2 * c, 1, 1]);
    let lo = n.constant("lo", &[], &[0.0]);
    let hi = n.constant("hi", &[], &[0.5]);
    n.node("Conv", &[&x, &w1], &["e"], vec![]);
    n.node("Clip", &["e", &lo, &hi], &["r"], vec![]);
    n.node(
        "Conv",
        &["r", &w2],
        &["d"],
        vec![a_int("group", 2 * c as i64), a_ints("pads", &[1, 1, 1, 1])],
    );
    n.node("Conv", &["d", &w3], &["p"], vec![]);
    n.node("Add", &["p", &x], &["y"], vec![]);
    let model = n.model("y");
    let graph = |target| {
        let mut spec = n.spec(LossSpec::MeanSquaredError);
        spec.backward.target = target;
        koala_graph::build(&model, &spec).unwrap()
    };
    let (portable, ort) = (
        graph(ExecutionTarget::Portable),
        graph(ExecutionTarget::Ort),
    );
    if let Some(s) = &ort.nchwc {
        assert!(s.convs >= 6, "{s:?}");
        assert!(
            s.blocked_nodes >= 2,
            "Clip and Add should run blocked: {s:?}"
        );
    }
    let labels = Labels::RandomTargets;
    let mut rp = Run::new(&n, &portable, &labels, 11);
    let mut ro = Run::new(&n, &ort, &labels, 11);
    let (ep, eo) = (rp.eval(&rp.weights.clone()), ro.eval(&ro.weights.clone()));
    assert!(
        (ep.loss - eo.loss).abs() <= 1e-5 * ep.loss.abs(),
        "loss {} vs {}",
        ep.loss,
        eo.loss
    );
    for (k, w) in rp.weights.iter().enumerate() {
        let err = rel_error(&eo.grads[k], &ep.grads[k]);
        assert!(
            err <= 1e-4,
            "gradient of '{}': ort vs portable relative error {err:.2e}",
            w.name
        );
        assert!(
            ep.grads[k].iter().any(|&g| g != 0.0),
            "'{}' has a zero gradient",
            w.name
        );
    }
}

/// Spatial views of blocked data ([N, C/B, spatial…, B]): a Reshape to 6-D read only by a
/// Pad of the unit axes (the zero insertion of the strided depthwise input gradient) runs
/// on the blocked data, and a reader of the padded view that is neither Pad nor Reshape
/// (Mul) gets it turned back to plain.
/// Mul makes the loss quartic in the filter, hence the smooth-op step and tolerance.
#[test]
fn spatial_views_of_blocked_data() {
    let b = block();
    let mut n = Net::new(17, F32, 9);
    let x = n.rand_leaf("x", &[2, b, 3, 3]);
    let w = n.rand_weight("w", &[b, b, 1, 1]);
    let six = n.ints("six", &[2, b as i64, 3, 1, 3, 1]);
    let four = n.ints("four", &[2, b as i64, 6, 6]);
    let pads = n.ints("pads", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
    n.node("Conv", &[&x, &w], &["c"], vec![]);
    n.node("Reshape", &["c", &six], &["v"], vec![]);
    n.node("Pad", &["v", &pads], &["vp"], vec![]);
    n.node("Reshape", &["vp", &four], &["y1"], vec![]);
    n.node("Mul", &["vp", "vp"], &["q"], vec![]);
    n.node("Reshape", &["q", &four], &["y2"], vec![]);
    n.node("Add", &["y1", "y2"], &["y"], vec![]);
    let report = check(&n, "y", &Check::mse(F32).with_fd(common::Fd::F32_SMOOTH));
    if block_size().is_some() {
        let s = report.graph.nchwc.clone().expect("ort target");
        assert!(
            s.blocked_nodes >= 3,
            "reshape, pad, reshape on blocked data: {s:?}"
        );
    }
}
