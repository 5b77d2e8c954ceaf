//! Recomputation of cheap forward values in the backward pass (`recompute.rs`), on a
//! Llama-style block: RMSNorm (`x / √(mean(x²) + ε) · γ`), then a SiLU-gated MLP
//! `down(silu(x̂·Wg) · (x̂·Wu))` through linear layers written as exporters write them
//! (`MatMul(·, Transpose(W))`, which koala turns into Gemm on flattened inputs).
//!
//! Checked: the sigmoid, silu, product, normalised and scaled values are recomputed (no
//! backward node reads their forward originals), the gradients pass the finite-difference
//! check (f64, 1e-6; harness in `common/mod.rs`), and they are bitwise the gradients of the
//! same graph built without recomputation (same ops on the same inputs).

mod common;

use common::{check, Check, Labels, Net, Run, F64};
use koala_graph::attrs::{a_int, a_ints};
use koala_graph::{BackwardOptions, LossSpec};

fn llama_block() -> Net {
    let (b, t, d, h) = (2, 3, 4, 6);
    let mut n = Net::new(17, F64, 90);
    let x = n.rand_leaf("x", &[b, t, d]);
    let gamma = n.rand_weight("gamma", &[d]);
    let wg = n.rand_weight("wg", &[h, d]);
    let wu = n.rand_weight("wu", &[h, d]);
    let wd = n.rand_weight("wd", &[d, h]);
    let two = n.constant("two", &[], &[2.0]);
    let eps = n.constant("eps", &[], &[1e-5]);
    n.node("Pow", &[&x, &two], &["sq"], vec![]);
    n.node(
        "ReduceMean",
        &["sq"],
        &["ms"],
        vec![a_ints("axes", &[-1]), a_int("keepdims", 1)],
    );
    n.node("Add", &["ms", &eps], &["ms_eps"], vec![]);
    n.node("Sqrt", &["ms_eps"], &["rms"], vec![]);
    n.node("Div", &[&x, "rms"], &["xhat"], vec![]);
    n.node("Mul", &["xhat", &gamma], &["normed"], vec![]);
    let linear = |n: &mut Net, input: &str, w: &str, out: &str| {
        let wt = format!("{w}_t");
        n.node("Transpose", &[w], &[&wt], vec![a_ints("perm", &[1, 0])]);
        n.node("MatMul", &[input, &wt], &[out], vec![]);
    };
    linear(&mut n, "normed", &wg, "gate");
    linear(&mut n, "normed", &wu, "up");
    n.node("Sigmoid", &["gate"], &["sig"], vec![]);
    n.node("Mul", &["gate", "sig"], &["silu"], vec![]);
    n.node("Mul", &["silu", "up"], &["prod"], vec![]);
    linear(&mut n, "prod", &wd, "down");
    n.node("Add", &[&x, "down"], &["y"], vec![]);
    n
}

fn build(n: &Net, recompute: bool) -> koala_graph::TrainingGraph {
    let spec = koala_graph::TrainingSpec {
        backward: BackwardOptions {
            recompute,
            ..BackwardOptions::default()
        },
        ..n.spec(LossSpec::MeanSquaredError)
    };
    koala_graph::build(&n.model("y"), &spec).expect("the block builds")
}

#[test]
fn mlp_and_norm_values_are_recomputed_not_kept() {
    let n = llama_block();
    let graph = build(&n, true);
    let nodes = &graph.proto.graph.as_ref().unwrap().node;
    let grad_start = nodes
        .iter()
        .position(|x| x.name.starts_with("koala_grad/"))
        .expect("a backward pass");
    for kept_before in ["sig", "silu", "xhat", "normed"] {
        let readers: Vec<&str> = nodes[grad_start..]
            .iter()
            .filter(|x| x.input.iter().any(|i| i == kept_before))
            .map(|x| x.name.as_str())
            .collect();
        assert!(
            readers.is_empty(),
            "'{kept_before}' is still read by the backward pass: {readers:?}"
        );
        let clone = format!("koala_recompute/{kept_before}");
        assert!(
            nodes.iter().any(|x| x.output.contains(&clone)),
            "no recomputed '{kept_before}'"
        );
    }
    // Each clone comes after everything it reads (a valid topological order).
    let mut seen: std::collections::HashSet<String> = graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.clone())
        .chain(
            graph
                .proto
                .graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .map(|t| t.name.clone()),
        )
        .collect();
    seen.insert(String::new());
    for x in nodes {
        for i in &x.input {
            assert!(
                seen.contains(i),
                "node '{}' reads '{i}' before it exists",
                x.name
            );
        }
        seen.extend(x.output.iter().cloned());
    }
}

#[test]
fn recomputed_gradients_pass_finite_differences_and_match_kept_ones_bitwise() {
    let n = llama_block();
    check(&n, "y", &Check::mse(F64));
    let (with, without) = (build(&n, true), build(&n, false));
    let mut a = Run::new(&n, &with, &Labels::RandomTargets, 7);
    let mut b = Run::new(&n, &without, &Labels::RandomTargets, 7);
    let (ga, gb) = (a.eval(&a.weights.clone()), b.eval(&b.weights.clone()));
    assert_eq!(ga.loss.to_bits(), gb.loss.to_bits());
    for (k, (x, y)) in ga.grads.iter().zip(&gb.grads).enumerate() {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "gradient {k} differs with recomputation"
        );
    }
}
