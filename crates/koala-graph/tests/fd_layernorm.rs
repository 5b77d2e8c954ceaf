//! Finite-difference checks of LayerNormalization (`backward/layernorm.rs`)
//! and of the decomposed norms exporters write, which go through the
//! per-op rules: LayerNorm as ReduceMean, Sub, Pow 2, ReduceMean, Add ε,
//! Sqrt, Div (opsets 14, 17, 18: ReduceMean's axes become an input at 18),
//! and RMSNorm as Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul (Llama).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 nets
//! (ORT has f64 LayerNormalization, Pow, Sqrt, ReduceMean): tolerance 1e-6.

mod common;

use common::{check, mse, Check, Fd, Net, F32, F64};
use koala_graph::attrs::{a_float, a_int, a_ints};

#[test]
fn layer_norm_with_and_without_bias_on_the_last_and_two_axes() {
    for (seed, axis, bias) in [(1000u64, -1i64, true), (1001, 1, true), (1002, -1, false)] {
        let mut n = Net::new(17, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        let norm_shape: Vec<usize> = if axis == 1 { vec![3, 4] } else { vec![4] };
        let g = n.rand_weight("gamma", &norm_shape);
        let mut ins = vec![x, g];
        if bias {
            ins.push(n.rand_weight("beta", &norm_shape));
        }
        let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let attrs = vec![a_int("axis", axis), a_float("epsilon", 1e-3)];
        n.node("LayerNormalization", &refs, &["y"], attrs);
        mse(&n, "y");
    }
}

#[test]
fn layer_norm_mean_and_inv_std_dev_outputs_carry_gradient() {
    // y = LN(x) + Mean·c + InvStdDev·d: all three outputs read downstream.
    // f32: ORT's kernel computes Mean/InvStdDev in f32 only (stash_type 1),
    // so the net is f32 with the smooth-f32 step and tolerance (see `Fd`).
    let mut n = Net::new(21, F32, 1003);
    let x = n.rand_leaf("x", &[3, 5]);
    let g = n.rand_weight("gamma", &[5]);
    let b = n.rand_weight("beta", &[5]);
    n.node(
        "LayerNormalization",
        &[&x, &g, &b],
        &["ln", "mean", "inv"],
        vec![a_float("epsilon", 1e-2)],
    );
    let c = n.constant("c", &[5], &[0.5, -1.0, 2.0, 1.5, -0.5]);
    let d = n.constant("d", &[5], &[1.0, 0.25, -0.75, 0.5, 2.0]);
    n.node("Mul", &["mean", &c], &["mc"], vec![]);
    n.node("Mul", &["inv", &d], &["id"], vec![]);
    n.node("Add", &["ln", "mc"], &["s"], vec![]);
    n.node("Add", &["s", "id"], &["y"], vec![]);
    check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
}

/// ReduceMean over the last axis, keepdims, in the opset's form.
fn reduce_mean_last(n: &mut Net, x: &str, out: &str) {
    if n.opset >= 18 {
        let axes = n.ints(&format!("{out}_axes"), &[-1]);
        n.node(
            "ReduceMean",
            &[x, &axes],
            &[out],
            vec![a_int("keepdims", 1)],
        );
    } else {
        let attrs = vec![a_ints("axes", &[-1]), a_int("keepdims", 1)];
        n.node("ReduceMean", &[x], &[out], attrs);
    }
}

#[test]
fn decomposed_layer_norm_through_the_per_op_rules() {
    for (seed, opset) in [(1010u64, 14i64), (1011, 17), (1012, 18)] {
        let mut n = Net::new(opset, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        let g = n.rand_weight("gamma", &[4]);
        let b = n.rand_weight("beta", &[4]);
        let two = n.constant("two", &[], &[2.0]);
        let eps = n.constant("eps", &[], &[1e-3]);
        reduce_mean_last(&mut n, &x, "mu");
        n.node("Sub", &[&x, "mu"], &["xc"], vec![]);
        n.node("Pow", &["xc", &two], &["sq"], vec![]);
        reduce_mean_last(&mut n, "sq", "var");
        n.node("Add", &["var", &eps], &["ve"], vec![]);
        n.node("Sqrt", &["ve"], &["sd"], vec![]);
        n.node("Div", &["xc", "sd"], &["xhat"], vec![]);
        n.node("Mul", &["xhat", &g], &["scaled"], vec![]);
        n.node("Add", &["scaled", &b], &["y"], vec![]);
        mse(&n, "y");
    }
}

#[test]
fn decomposed_rms_norm_through_the_per_op_rules() {
    // Llama: x · 1/√(mean(x²) + ε) · γ.
    for (seed, opset) in [(1020u64, 14i64), (1021, 17), (1022, 18), (1023, 21)] {
        let mut n = Net::new(opset, F64, seed);
        let x = n.rand_leaf("x", &[2, 3, 4]);
        let g = n.rand_weight("gamma", &[4]);
        let two = n.constant("two", &[], &[2.0]);
        let eps = n.constant("eps", &[], &[1e-3]);
        n.node("Pow", &[&x, &two], &["sq"], vec![]);
        reduce_mean_last(&mut n, "sq", "ms");
        n.node("Add", &["ms", &eps], &["me"], vec![]);
        n.node("Sqrt", &["me"], &["rms"], vec![]);
        n.node("Reciprocal", &["rms"], &["inv"], vec![]);
        n.node("Mul", &[&x, "inv"], &["xn"], vec![]);
        n.node("Mul", &[&g, "xn"], &["y"], vec![]);
        mse(&n, "y");
    }
}
