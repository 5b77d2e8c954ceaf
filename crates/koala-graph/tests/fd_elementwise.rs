//! Finite-difference checks of Add, Sub, Mul, Div, Neg, Sum, Mean (`backward/elementwise.rs`) with broadcasting on both sides; f64 (tolerance 1e-6), Mean f32 (ORT's Mean kernels are f32 only; linear, so `Fd::F32`'s 1e-3 holds).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, Check, Net, F32, F64};

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

#[test]
fn variadic_sum_with_broadcasting() {
    let mut n = Net::new(13, F64, 45);
    let a = n.rand_leaf("a", &[2, 3]);
    let b = n.rand_weight("b", &[3]);
    let c = n.rand_weight("c", &[2, 1]);
    n.node("Sum", &[&a, &b, &c, &a], &["s"], vec![]);
    n.node("Mul", &["s", &a], &["y"], vec![]);
    mse(&n, "y");
}

/// Mean of four operands (one repeated) broadcasting against each other, at
/// opset 8 forms kept by 13 and 21; all operands trainable.
#[test]
fn variadic_mean_with_broadcasting() {
    for (seed, opset) in [(46, 13), (47, 21)] {
        let mut n = Net::new(opset, F32, seed);
        let a = n.rand_leaf("a", &[2, 3, 4]);
        let b = n.rand_weight("b", &[4]);
        let c = n.rand_weight("c", &[3, 1]);
        let d = n.rand_weight("d", &[2, 1, 1]);
        n.node("Mean", &[&a, &b, &c, &a, &d], &["y"], vec![]);
        mse(&n, "y");
    }
    // One operand: Mean is the identity.
    let mut n = Net::new(17, F32, 48);
    let a = n.rand_leaf("a", &[3, 2]);
    n.node("Mean", &[&a], &["y"], vec![]);
    mse(&n, "y");
}

/// Sum at the ends of the opset range koala differentiates (11 and 21).
#[test]
fn variadic_sum_at_the_ends_of_the_opset_range() {
    for (seed, opset) in [(49, 11), (50, 21)] {
        let mut n = Net::new(opset, F64, seed);
        let a = n.rand_leaf("a", &[2, 3]);
        let b = n.rand_weight("b", &[3]);
        n.node("Sum", &[&a, &b], &["s"], vec![]);
        n.node("Mul", &["s", &a], &["y"], vec![]);
        mse(&n, "y");
    }
}
