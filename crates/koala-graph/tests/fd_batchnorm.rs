//! Finite-difference checks of BatchNormalization with frozen statistics (`backward/batchnorm.rs`), folded into Conv or kept; f64 and f32.
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse_build_error, Check, Net, F32, F64};
use koala_graph::attrs::{a_float, a_int, a_ints};
use koala_graph::proto::DataType;
use koala_graph::BackwardOptions;

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
