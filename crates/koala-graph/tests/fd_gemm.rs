//! Finite-difference checks of Gemm (`backward/gemm.rs`), f64 (tolerance 1e-6), and of
//! the MatMul-by-a-transposed-weight rewrite into Gemm (`transposed_matmul.rs`).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, rel_error, Labels, Net, Run, F64};
use koala_graph::attrs::{a_float, a_int, a_ints};
use koala_graph::LossSpec;

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

/// A linear layer as exporters write it, `MatMul(A, Transpose(W))` with `W` `[N, K]`, is
/// rewritten to `Gemm(A₂, W, transB = 1)` (`transposed_matmul.rs`), so that no transposed
/// copy of `W` lives from the forward pass to the backward. For every rank of `A` (1-D
/// promotion, 2-D, batched): the rewrite happened, the forward values equal `A·Wᵀ`
/// computed here (f64: summation order only, 1e-12), and the gradients of `A` and `W`
/// pass the finite-difference check (f64, 1e-6).
#[test]
fn matmul_by_transposed_weight_becomes_gemm() {
    let a_shapes: [&[usize]; 4] = [&[4], &[3, 4], &[2, 3, 4], &[2, 2, 3, 4]];
    for (i, a_shape) in a_shapes.into_iter().enumerate() {
        let mut n = Net::new(13, F64, 70 + i as u64);
        let av = n.uniform(a_shape.iter().product(), -1.0, 1.0);
        let a = n.leaf("a", a_shape, av.clone());
        let w = n.rand_weight("w", &[5, 4]);
        n.node("Transpose", &[&w], &["wt"], vec![a_ints("perm", &[1, 0])]);
        n.node("MatMul", &[&a, "wt"], &["y"], vec![]);
        let graph = koala_graph::build(&n.model("y"), &n.spec(LossSpec::MeanSquaredError))
            .expect("the training graph builds");
        let nodes = &graph.proto.graph.as_ref().expect("a graph").node;
        assert!(
            !nodes.iter().any(|x| x.op_type == "Transpose"),
            "A of shape {a_shape:?}: a Transpose is left in the training graph"
        );
        assert!(
            nodes
                .iter()
                .any(|x| x.op_type == "Gemm" && x.input.get(1) == Some(&w)),
            "A of shape {a_shape:?}: no Gemm reads '{w}' directly"
        );
        // Forward values against A·Wᵀ.
        let mut run = Run::new(&n, &graph, &Labels::RandomTargets, 7);
        let got = run.eval(&run.weights.clone()).model_output;
        let wv = &n.weights().iter().find(|t| t.name == w).unwrap().values;
        let want: Vec<f64> = av
            .chunks(4)
            .flat_map(|row| {
                (0..5).map(move |j| (0..4).map(|k| row[k] * wv[j * 4 + k]).sum::<f64>())
            })
            .collect();
        assert_eq!(got.len(), want.len(), "A of shape {a_shape:?}");
        let err = rel_error(&got, &want);
        assert!(
            err < 1e-12,
            "A of shape {a_shape:?}: forward off by {err:.2e}"
        );
        mse(&n, "y");
    }
}

/// Where the transposed weight has another reader (here a graph output), the copy exists
/// anyway: the MatMul is left as it is, and its gradients are still right.
#[test]
fn matmul_by_transposed_weight_with_other_readers_is_kept() {
    let mut n = Net::new(13, F64, 75);
    let a = n.rand_leaf("a", &[2, 3, 4]);
    let w = n.rand_weight("w", &[5, 4]);
    n.node("Transpose", &[&w], &["wt"], vec![a_ints("perm", &[1, 0])]);
    n.node("MatMul", &[&a, "wt"], &["ya"], vec![]);
    n.node("ReduceSum", &["wt"], &["s"], vec![a_int("keepdims", 0)]);
    n.node("Mul", &["ya", "s"], &["y"], vec![]);
    let graph = koala_graph::build(&n.model("y"), &n.spec(LossSpec::MeanSquaredError))
        .expect("the training graph builds");
    let nodes = &graph.proto.graph.as_ref().expect("a graph").node;
    assert!(nodes
        .iter()
        .any(|x| x.op_type == "MatMul" && x.input.get(1).map(String::as_str) == Some("wt")));
    mse(&n, "y");
}
