//! Finite-difference checks of LRN (`backward/lrn.rs`) at opsets 11, 13, 17
//! and 21: odd `size` 3, 5 and 7, windows wider than the channel count, and attributes away from the
//! defaults, on NCHW inputs. Even sizes (an asymmetric window in the spec)
//! and inputs of rank ≠ 4 are not tested: ORT's LRN kernel refuses them
//! (`size_ % 2 == 1`, `X_shape.NumDimensions() == 4`), so such a model
//! cannot run at all. The default alpha (1e-4) makes the
//! cross-channel term ~1e-4 of the gradient, invisible to finite
//! differences, so the checks use alpha of order 1.
//!
//! ORT's LRN kernel is f32 only: f32 nets. LRN is curved in X, so the
//! smooth-f32 step h = 2⁻⁷ applies (`Fd::F32_SMOOTH`, see `common/mod.rs`),
//! with a tighter tolerance than its 1e-2: measured errors are ≤ 3e-4
//! (printed by the harness), and a cross-channel term off by only 10 % gave
//! 2e-2 to 5e-2 when tried, so 2e-3 leaves a margin on both sides.

mod common;

use common::{check, mse_build_error, Check, Fd, Net, F32};

/// h = 2⁻⁷ (as `Fd::F32_SMOOTH`), tolerance 2e-3 (see the module docs).
const LRN_FD: Fd = Fd {
    h: 1.0 / 128.0,
    tol: 2e-3,
};
use koala_graph::attrs::{a_float, a_int, a_ints};

fn lrn_case(seed: u64, opset: i64, x: &[usize], size: i64, alpha: f32, beta: f32, bias: f32) {
    let mut n = Net::new(opset, F32, seed);
    let xv = n.rand_leaf("x", x);
    n.node(
        "LRN",
        &[&xv],
        &["y"],
        vec![
            a_int("size", size),
            a_float("alpha", alpha),
            a_float("beta", beta),
            a_float("bias", bias),
        ],
    );
    check(&n, "y", &Check::mse(F32).with_fd(LRN_FD));
}

#[test]
fn lrn_odd_size_nchw() {
    // Inception v1's attributes (size 5, beta 0.75, bias 1) with alpha 2.
    lrn_case(900, 17, &[2, 6, 3, 3], 5, 2.0, 0.75, 1.0);
}

#[test]
fn lrn_size_three() {
    lrn_case(901, 11, &[2, 5, 2, 3], 3, 1.5, 0.6, 2.0);
    lrn_case(902, 21, &[1, 4, 3, 1], 3, 3.0, 0.9, 0.5);
}

#[test]
fn lrn_window_wider_than_the_channels() {
    lrn_case(903, 13, &[2, 3, 2, 2], 7, 1.0, 0.75, 1.0);
}

/// Conv → LRN as in Inception v1's stem (size 5, beta 0.75, bias 1; alpha
/// raised to 1 so the cross-channel term shows): the gradient reaches the
/// Conv weight and bias through LRN's.
#[test]
fn conv_then_lrn_trains_the_conv() {
    let mut n = Net::new(17, F32, 904);
    let x = n.input("x", &[2, 2, 4, 4]);
    let w = n.rand_weight("w", &[6, 2, 3, 3]);
    let b = n.rand_weight("b", &[6]);
    n.node(
        "Conv",
        &[&x, &w, &b],
        &["c"],
        vec![a_ints("pads", &[1, 1, 1, 1])],
    );
    n.node(
        "LRN",
        &["c"],
        &["y"],
        vec![
            a_int("size", 5),
            a_float("alpha", 1.0),
            a_float("beta", 0.75),
        ],
    );
    check(&n, "y", &Check::mse(F32).with_fd(LRN_FD));
}

/// An even `size` is refused before ONNX Runtime sees the graph (its kernel
/// accepts odd sizes only and its own refusal names no node), with the node
/// and an odd size to re-export with.
#[test]
fn an_even_size_is_refused_naming_the_node() {
    let mut n = Net::new(17, F32, 905);
    let xv = n.rand_leaf("x", &[1, 4, 3, 3]);
    n.node("LRN", &[&xv], &["y"], vec![a_int("size", 4)]);
    let e = mse_build_error(&n);
    assert!(
        e.contains("(LRN) has size 4: ONNX Runtime's LRN kernel accepts odd sizes only")
            && e.contains("re-export it with an odd size (e.g. 5)"),
        "{e}"
    );
}
