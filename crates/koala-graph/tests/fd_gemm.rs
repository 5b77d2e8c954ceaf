//! Finite-difference checks of Gemm (`backward/gemm.rs`), f64 (tolerance 1e-6).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, Net, F64};
use koala_graph::attrs::{a_float, a_int};

fn gemm_case(seed: u64, ta: bool, tb: bool, alpha: f32, beta: f32, bias: Option<&[usize]>) {
    let (m, k, nn) = (3, 4, 2);
    let mut n = Net::new(13, F64, seed);
    let a_shape = if ta { [k, m] } else { [m, k] };
    let b_shape = if tb { [nn, k] } else { [k, nn] };
    let a = n.rand_leaf("a", &a_shape);
    let b = n.rand_weight("b", &b_shape);
    let mut inputs = vec![a, b];
    if let Some(s) = bias {
        inputs.push(n.rand_weight("c", s));
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    let attrs = vec![
        a_int("transA", ta as i64),
        a_int("transB", tb as i64),
        a_float("alpha", alpha),
        a_float("beta", beta),
    ];
    n.node("Gemm", &refs, &["y"], attrs);
    mse(&n, "y");
}

#[test]
fn gemm_transpose_flags() {
    for (i, (ta, tb)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        gemm_case(30 + i as u64, ta, tb, 1.0, 1.0, Some(&[2]));
    }
}

#[test]
fn gemm_alpha_beta_and_bias_shapes() {
    let shapes: [&[usize]; 5] = [&[2], &[1, 2], &[3, 2], &[3, 1], &[]];
    for (i, s) in shapes.into_iter().enumerate() {
        gemm_case(40 + i as u64, i % 2 == 1, i % 3 == 1, 0.5, 2.0, Some(s));
    }
    gemm_case(46, true, false, 1.5, 1.0, None);
}
