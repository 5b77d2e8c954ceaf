//! Finite-difference checks of point-wise math (`backward/math.rs`): Erf,
//! Gelu (opset 20, approximate none/tanh), Pow with scalar and tensor
//! constant exponents (and the error for a trainable one), Sqrt, Reciprocal,
//! Exp, Log, Sin, Cos, Abs, Softplus, Softsign, and the erf-GELU the
//! TorchScript exporter writes (Div, Erf, Add, Mul, Mul).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ORT 1.31 has the f64 kernel (tolerance 1e-6); Erf, Gelu, Softplus and
//! Softsign have f32 kernels only ("Could not find an implementation" for f64), so those nets
//! are f32 with `Fd::F32_SMOOTH` (h = 2⁻⁷, tolerance 1e-2: the functions are
//! curved, see `Fd`).

mod common;

use common::{check, mse, mse_build_error, Check, Fd, Net, F32, F64};
use koala_graph::attrs::a_string;
use koala_graph::proto::DataType;

/// `op(X)` on a leaf with the given values (f64 unless `dt` says otherwise).
fn unary(seed: u64, opset: i64, dt: DataType, op: &str, values: fn(&mut Net) -> Vec<f64>) {
    let mut n = Net::new(opset, dt, seed);
    let v = values(&mut n);
    let x = n.leaf("x", &[2, 6], v);
    n.node(op, &[&x], &["y"], vec![]);
    let fd = if dt == F64 { Fd::F64 } else { Fd::F32_SMOOTH };
    check(&n, "y", &Check::mse(dt).with_fd(fd));
}

#[test]
fn smooth_unary_ops_f64() {
    let any = |n: &mut Net| n.uniform(12, -2.0, 2.0);
    let positive = |n: &mut Net| n.uniform(12, 0.25, 3.0);
    let away = |n: &mut Net| n.away_from_zero(12, 0.2);
    for (seed, op, values) in [
        (800u64, "Exp", any as fn(&mut Net) -> Vec<f64>),
        (801, "Log", positive),
        (802, "Sqrt", positive),
        (803, "Reciprocal", away),
        (804, "Sin", any),
        (805, "Cos", any),
        (806, "Abs", away),
    ] {
        unary(seed, 17, F64, op, values);
    }
}

#[test]
fn erf_gelu_softplus_softsign_f32() {
    let any = |n: &mut Net| n.uniform(12, -2.5, 2.5);
    unary(810, 13, F32, "Erf", any);
    // Softplus and Softsign: f32 kernels only in ORT 1.31 too.
    // Softplus at 17 and at both ends of koala's opset range (its versions
    // are 1 and 22; nothing changed in between).
    for (seed, opset) in [(814, 17), (816, 11), (817, 21)] {
        unary(seed, opset, F32, "Softplus", any);
    }
    let away = |n: &mut Net| n.away_from_zero(12, 0.2);
    unary(815, 17, F32, "Softsign", away);
    for (seed, approx) in [(811, "none"), (812, "tanh")] {
        let mut n = Net::new(20, F32, seed);
        let v = n.uniform(12, -3.0, 3.0);
        let x = n.leaf("x", &[2, 6], v);
        n.node("Gelu", &[&x], &["y"], vec![a_string("approximate", approx)]);
        check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
    }
}

#[test]
fn gelu_as_the_torchscript_exporter_writes_it() {
    // 0.5·x·(1 + erf(x/√2)), as in the tiny_gpt reference model.
    let mut n = Net::new(17, F32, 813);
    let x = n.rand_leaf("x", &[3, 4]);
    let s2 = n.constant("s2", &[], &[std::f64::consts::SQRT_2]);
    let one = n.constant("one", &[], &[1.0]);
    let half = n.constant("half", &[], &[0.5]);
    n.node("Div", &[&x, &s2], &["d"], vec![]);
    n.node("Erf", &["d"], &["e"], vec![]);
    n.node("Add", &["e", &one], &["a"], vec![]);
    n.node("Mul", &[&x, "a"], &["m"], vec![]);
    n.node("Mul", &["m", &half], &["y"], vec![]);
    check(&n, "y", &Check::mse(F32).with_fd(Fd::F32_SMOOTH));
}

#[test]
fn pow_with_constant_scalar_and_tensor_exponents() {
    // Scalar float exponents (2 of variance, 0.5, −1.5 on positive bases),
    // an int64 exponent (cast to the base's type), a per-column tensor.
    for (seed, opset, exp) in [
        (820u64, 14i64, 2.0),
        (821, 17, 0.5),
        (822, 18, -1.5),
        (823, 21, 3.0),
    ] {
        let mut n = Net::new(opset, F64, seed);
        let v = n.uniform(12, 0.25, 2.0);
        let x = n.leaf("x", &[3, 4], v);
        let p = n.constant("p", &[], &[exp]);
        n.node("Pow", &[&x, &p], &["y"], vec![]);
        mse(&n, "y");
    }
    let mut n = Net::new(17, F64, 824);
    let x = n.rand_leaf("x", &[3, 4]);
    let p = n.ints("p", &[2]);
    n.node("Pow", &[&x, &p], &["y"], vec![]);
    mse(&n, "y");

    let mut n = Net::new(17, F64, 825);
    let v = n.uniform(12, 0.25, 2.0);
    let x = n.leaf("x", &[3, 4], v);
    let p = n.constant("p", &[4], &[1.0, 2.0, 0.5, -1.0]);
    n.node("Pow", &[&x, &p], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn pow_with_a_trainable_exponent_is_a_clear_error() {
    let mut n = Net::new(17, F64, 826);
    let v = n.uniform(6, 0.25, 2.0);
    let x = n.leaf("x", &[2, 3], v);
    let p = n.rand_weight("p", &[3]);
    n.node("Pow", &[&x, &p], &["y"], vec![]);
    let e = mse_build_error(&n);
    assert!(
        e.contains("exponent 'p' of Pow depends on a trainable weight"),
        "{e}"
    );
    assert!(e.contains("--freeze"), "{e}");
}
