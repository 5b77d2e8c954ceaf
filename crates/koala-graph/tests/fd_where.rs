//! Finite-difference checks of Where, Max and Min (`backward/where_.rs`):
//! broadcasting condition and operands, the masked-attention form
//! `Where(mask, −inf, scores)` feeding Softmax (zero gradient and no NaN at
//! masked positions), Max/Min of two and three operands, and Max/Min ties
//! against PyTorch (`torch.maximum`/`torch.minimum` split a tie equally;
//! numbers from `tests/fixtures/pytorch_subgradients/make_reference.py`).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 nets
//! (ORT has f64 Where/Max/Min/Softmax kernels): tolerance 1e-6.

mod common;

use common::{check, mse, Check, Labels, Net, Run, F64};
use koala_graph::attrs::{a_int, a_tensor};
use koala_graph::proto::DataType;
use koala_graph::proto::TensorProto;
use koala_graph::LossSpec;

/// A bool Constant node of the given shape and values.
fn bool_const(n: &mut Net, name: &str, shape: &[i64], values: &[bool]) -> String {
    let t = TensorProto {
        dims: shape.to_vec(),
        data_type: DataType::Bool as i32,
        raw_data: values.iter().map(|&b| b as u8).collect(),
        ..Default::default()
    };
    n.node("Constant", &[], &[name], vec![a_tensor("value", t)]);
    name.into()
}

#[test]
fn where_routes_the_gradient_by_the_condition_with_broadcasting() {
    // cond [3, 1] broadcasts over X [3, 4] and Y [4].
    let mut n = Net::new(17, F64, 700);
    let c = bool_const(&mut n, "c", &[3, 1], &[true, false, true]);
    let x = n.rand_leaf("x", &[3, 4]);
    let y = n.rand_weight("yw", &[4]);
    n.node("Where", &[&c, &x, &y], &["out"], vec![]);
    mse(&n, "out");
}

#[test]
fn where_condition_computed_from_the_data() {
    // cond = x > 0 (data), both branches trainable: a ReLU-like selector.
    let mut n = Net::new(9, F64, 701);
    let x = n.rand_leaf("x", &[2, 5]);
    let zero = n.constant("zero", &[], &[0.0]);
    n.node("Greater", &["x_data", &zero], &["c"], vec![]);
    let w = n.rand_weight("w", &[2, 5]);
    n.node("Where", &["c", &x, &w], &["y"], vec![]);
    mse(&n, "y");
}

/// Causal-masked attention probabilities: scores [2, 4, 4] from a leaf,
/// masked to −inf above the diagonal by `mask_form`, then Softmax.
fn masked_softmax(seed: u64, opset: i64, additive: bool) -> Net {
    let mut n = Net::new(opset, F64, seed);
    let s = n.rand_leaf("s", &[2, 4, 4]);
    let upper: Vec<bool> = (0..16).map(|k| k % 4 > k / 4).collect();
    if additive {
        // Add of a {0, −inf} mask (the HF form).
        let m: Vec<f64> = upper
            .iter()
            .map(|&u| if u { f64::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = n.constant("mask", &[4, 4], &m);
        n.node("Add", &[&s, &mask], &["masked"], vec![]);
    } else {
        // masked_fill(mask, −inf), exported as Where(mask, −inf, s).
        let mask = bool_const(&mut n, "mask", &[4, 4], &upper);
        let inf = n.constant("inf", &[], &[f64::NEG_INFINITY]);
        n.node("Where", &[&mask, &inf, &s], &["masked"], vec![]);
    }
    n.node("Softmax", &["masked"], &["p"], vec![a_int("axis", -1)]);
    n
}

#[test]
fn masked_softmax_scores_get_exactly_zero_gradient_and_no_nan() {
    for (seed, opset, additive) in [(702, 14, false), (703, 17, true), (704, 21, false)] {
        let n = masked_softmax(seed, opset, additive);
        let report = check(&n, "p", &Check::mse(F64));
        // The harness checked the gradient against finite differences; here
        // the masked entries must be exactly 0 (not NaN, not tiny).
        let mut run = common::Run::new(&n, &report.graph, &common::Labels::RandomTargets, 7);
        let w = run.weights.clone();
        let e = run.eval(&w);
        let g = &e.grads[0];
        for (k, v) in g.iter().enumerate() {
            let (row, col) = ((k / 4) % 4, k % 4);
            assert!(v.is_finite(), "gradient {k} is {v}");
            if col > row {
                assert_eq!(*v, 0.0, "masked score {k} got gradient {v}");
            }
        }
    }
}

#[test]
fn max_and_min_of_two_and_three_operands() {
    for (seed, op) in [(705, "Max"), (706, "Min")] {
        let mut n = Net::new(13, F64, seed);
        let a = n.rand_leaf("a", &[3, 4]);
        let b = n.rand_weight("b", &[4]);
        n.node(op, &[&a, &b], &["y"], vec![]);
        mse(&n, "y");

        let mut n = Net::new(12, F64, seed + 10);
        let a = n.rand_leaf("a", &[2, 3]);
        // b alternates ±1.5 and c holds ±0.875 so that each operand wins
        // some positions of both Max and Min (a is in [−1, 1)).
        let b = n.weight("b", &[2, 3], vec![1.5, -1.5, 1.5, -1.5, 1.5, -1.5]);
        let c = n.weight("c", &[1, 3], vec![0.875, -0.875, 0.0]);
        n.node(op, &[&a, &b, &c], &["y"], vec![]);
        mse(&n, "y");
    }
}

/// Exact ties: `torch.maximum(a, b)` / `torch.minimum` give each of two
/// equal operands half the output gradient (PyTorch's local derivatives for
/// a = [1, 0.5, −0.25], b = [1, 0.25, −0.25]: Max dA = [0.5, 1, 0.5],
/// dB = [0.5, 0, 0.5]; Min dA = [0.5, 0, 0.5], dB = [0.5, 1, 0.5]).
/// Finite differences cannot judge a tie, so the gradients are compared
/// with those numbers times the MSE's dL/dy = 2(y − t)/N (tolerance 1e-12:
/// f64, one multiplication).
#[test]
fn max_and_min_ties_split_the_gradient_like_pytorch() {
    let cases = [
        ("Max", [0.5, 1.0, 0.5], [0.5, 0.0, 0.5]),
        ("Min", [0.5, 0.0, 0.5], [0.5, 1.0, 0.5]),
    ];
    for (seed, (op, want_a, want_b)) in (707..).zip(cases) {
        let mut n = Net::new(13, F64, seed);
        let a = n.weight("a", &[3], vec![1.0, 0.5, -0.25]);
        let b = n.weight("b", &[3], vec![1.0, 0.25, -0.25]);
        n.node(op, &[&a, &b], &["y"], vec![]);
        let graph = koala_graph::build(&n.model("y"), &n.spec(LossSpec::MeanSquaredError))
            .unwrap_or_else(|e| panic!("build failed: {e:#}"));
        let mut run = Run::new(&n, &graph, &Labels::RandomTargets, 7);
        let w = run.weights.clone();
        let e = run.eval(&w);
        let dy: Vec<f64> = e
            .model_output
            .iter()
            .zip(&run.targets)
            .map(|(y, t)| 2.0 * (y - t) / 3.0)
            .collect();
        for (name, want) in [("a", want_a), ("b", want_b)] {
            let k = w.iter().position(|t| t.name == name).expect("weight");
            for i in 0..3 {
                let (g, expect) = (e.grads[k][i], want[i] * dy[i]);
                assert!(
                    (g - expect).abs() <= 1e-12 * dy[i].abs().max(1e-12),
                    "{op}: d{name}[{i}] = {g}, PyTorch's split gives {expect}"
                );
            }
        }
    }
}

/// Max and Min across the opsets the table claims (11 is the first with a
/// float Equal, 21 the last koala supports), with broadcasting.
#[test]
fn max_and_min_at_the_ends_of_the_opset_range() {
    for (seed, opset) in [(720, 11), (721, 21)] {
        for op in ["Max", "Min"] {
            let mut n = Net::new(opset, F64, seed);
            // As above: values that let every operand win somewhere.
            let a = n.rand_leaf("a", &[2, 3]);
            let b = n.weight("b", &[3], vec![1.5, -1.5, 1.5]);
            let c = n.weight("c", &[2, 1], vec![0.875, -0.875]);
            n.node(op, &[&a, &b, &c], &["y"], vec![]);
            mse(&n, "y");
        }
    }
}
