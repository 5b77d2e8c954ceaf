//! Finite-difference checks of Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Identity, Dropout, Cast, Trilu (`backward/shape_ops.rs`); f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, mse_build_error, Check, Net, F64};
use koala_graph::attrs::{a_float, a_int, a_ints, a_tensor};
use koala_graph::proto::DataType;

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
fn squeeze_without_axes() {
    let mut n = Net::new(13, F64, 412);
    let x = n.rand_leaf("x", &[2, 1, 3, 1]);
    n.node("Squeeze", &[&x], &["y"], vec![]);
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
fn trilu_keeps_the_same_triangle_of_the_gradient() {
    // Lower with k = 0 (causal masks), upper with k = 1 and with k = −1.
    for (seed, opset, upper, k) in [
        (420u64, 14i64, 0i64, None),
        (421, 17, 1, Some(1)),
        (422, 21, 1, Some(-1)),
    ] {
        let mut n = Net::new(opset, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        let mut ins = vec![x];
        if let Some(k) = k {
            let kk = n.ints("k1", &[k]);
            n.node("Squeeze", &[&kk], &["k"], vec![]);
            ins.push("k".into());
        }
        let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        n.node("Trilu", &refs, &["y"], vec![a_int("upper", upper)]);
        mse(&n, "y");
    }
}

#[test]
fn cast_between_float_types_casts_the_gradient_back() {
    // f64 → f32 → f64 around a Tanh: the gradient crosses both casts.
    let mut n = Net::new(17, F64, 423);
    let x = n.rand_leaf("x", &[2, 3]);
    n.node(
        "Cast",
        &[&x],
        &["x32"],
        vec![a_int("to", DataType::Float as i64)],
    );
    n.node("Tanh", &["x32"], &["t"], vec![]);
    n.node(
        "Cast",
        &["t"],
        &["y"],
        vec![a_int("to", DataType::Double as i64)],
    );
    // f32 inside: roundoff ≈ 6e-8·|y| per value over h = 2⁻²⁰ would swamp
    // the f64 step, so use the f32 step and tolerance.
    check(&n, "y", &Check::mse(F64).with_fd(common::Fd::F32_SMOOTH));
}
