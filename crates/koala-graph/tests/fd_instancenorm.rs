//! Finite-difference checks of InstanceNormalization (`backward/instancenorm.rs`):
//! X, scale and B all trainable, rank 3 and 4, epsilon away from the default.
//!
//! ORT's InstanceNormalization kernel is f32 only: f32 nets. The op is
//! curved in X (the statistics depend on it), so the smooth-f32 step and
//! tolerance apply (`Fd::F32_SMOOTH`: h = 2⁻⁷, 1e-2; see `common/mod.rs`);
//! it is affine in scale and B. The measured errors are printed by the harness.

mod common;

use common::{check, Check, Fd, Net, F32};
use koala_graph::attrs::{a_float, a_ints};

fn instance_norm_case(seed: u64, opset: i64, x: &[usize], epsilon: Option<f32>) {
    let mut n = Net::new(opset, F32, seed);
    let c = x[1];
    let xv = n.rand_leaf("x", x);
    let s = n.away_from_zero(c, 0.5);
    let scale = n.weight("scale", &[c], s);
    let bias = n.rand_weight("bias", &[c]);
    let attrs = epsilon
        .map(|e| vec![a_float("epsilon", e)])
        .unwrap_or_default();
    n.node(
        "InstanceNormalization",
        &[&xv, &scale, &bias],
        &["n"],
        attrs,
    );
    // A Mul by a fixed random pattern so that dY is not a plain function of
    // Y alone (MSE's dY = 2(Y − t)/N already is not, but this also breaks
    // any symmetry between channels).
    let m = n.uniform(x.iter().product(), -1.0, 1.0);
    let m = n.constant("m", x, &m);
    n.node("Mul", &["n", &m], &["y"], vec![]);
    check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
}

#[test]
fn instance_norm_nchw() {
    instance_norm_case(950, 17, &[2, 3, 4, 5], Some(1e-2));
}

#[test]
fn instance_norm_rank3_default_epsilon() {
    instance_norm_case(951, 11, &[3, 2, 6], None);
}

#[test]
fn instance_norm_at_opset_21() {
    instance_norm_case(952, 21, &[1, 4, 3, 3], Some(1e-4));
}

/// Conv → InstanceNormalization (the style-transfer and GAN block): the
/// gradient reaches the Conv weight through the per-sample statistics.
#[test]
fn conv_then_instance_norm_trains_the_conv() {
    let mut n = Net::new(17, F32, 953);
    let x = n.input("x", &[2, 2, 4, 4]);
    let w = n.rand_weight("w", &[3, 2, 3, 3]);
    n.node(
        "Conv",
        &[&x, &w],
        &["c"],
        vec![a_ints("pads", &[1, 1, 1, 1])],
    );
    let s = n.away_from_zero(3, 0.5);
    let scale = n.weight("scale", &[3], s);
    let bias = n.rand_weight("bias", &[3]);
    n.node(
        "InstanceNormalization",
        &["c", &scale, &bias],
        &["y"],
        vec![],
    );
    check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
}
