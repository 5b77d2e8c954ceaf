//! Finite-difference checks of Slice and Pad (`backward/slice_pad.rs`): steps, negative starts/axes/steps, RoPE rotate-half; f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, Check, Net, F64};
use koala_graph::attrs::{a_int, a_string};

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

#[test]
fn rope_rotate_half_with_cos_sin_tables() {
    // HF apply_rotary_pos_emb: q·cos + rotate_half(q)·sin, rotate_half(q) =
    // Concat(−q[..., D/2:], q[..., :D/2]) on the last (negative) axis; the
    // cos/sin tables are computed from a constant position table (Range,
    // Cast, Mul, Cos/Sin) and carry no gradient.
    for (seed, opset) in [(235u64, 14i64), (236, 18)] {
        let mut n = Net::new(opset, F64, seed);
        let q = n.rand_leaf("q", &[2, 2, 3, 4]);
        let start = n.ints("start", &[0]);
        let limit = n.ints("limit", &[3]);
        let delta = n.ints("delta", &[1]);
        n.node("Squeeze", &[&start], &["s0"], vec![]);
        n.node("Squeeze", &[&limit], &["l0"], vec![]);
        n.node("Squeeze", &[&delta], &["d0"], vec![]);
        n.node("Range", &["s0", "l0", "d0"], &["pos"], vec![]);
        let dt = n.dt as i64;
        n.node("Cast", &["pos"], &["posf"], vec![a_int("to", dt)]);
        let one = n.ints("one", &[1]);
        n.node("Unsqueeze", &["posf", &one], &["pos2"], vec![]);
        let freq = n.constant("inv_freq", &[1, 4], &[1.0, 0.1, 1.0, 0.1]);
        n.node("Mul", &["pos2", &freq], &["angles"], vec![]);
        n.node("Cos", &["angles"], &["cos"], vec![]);
        n.node("Sin", &["angles"], &["sin"], vec![]);
        let (h0, h1, h2) = (n.ints("h0", &[0]), n.ints("h1", &[2]), n.ints("h2", &[4]));
        let last = n.ints("last", &[-1]);
        n.node("Slice", &[&q, &h0, &h1, &last], &["q1"], vec![]);
        n.node("Slice", &[&q, &h1, &h2, &last], &["q2"], vec![]);
        n.node("Neg", &["q2"], &["nq2"], vec![]);
        n.node("Concat", &["nq2", "q1"], &["rot"], vec![a_int("axis", -1)]);
        n.node("Mul", &[&q, "cos"], &["qc"], vec![]);
        n.node("Mul", &["rot", "sin"], &["rs"], vec![]);
        n.node("Add", &["qc", "rs"], &["y"], vec![]);
        mse(&n, "y");
    }
}

#[test]
fn slice_with_negative_steps_on_the_sequence_axis() {
    // Reverse the sequence axis of [2, 5, 3] (start −1, step −1) and take
    // every second head-dim element from the end.
    let mut n = Net::new(17, F64, 237);
    let x = n.rand_leaf("x", &[2, 5, 3]);
    let s = n.ints("starts", &[-1, -1]);
    let e = n.ints("ends", &[-100, -100]);
    let a = n.ints("axes", &[1, -1]);
    let st = n.ints("steps", &[-1, -2]);
    n.node("Slice", &[&x, &s, &e, &a, &st], &["y"], vec![]);
    mse(&n, "y");
}
