//! Finite-difference checks of Gather and GatherElements (`backward/gather.rs`):
//! embeddings (a weight gathered by int64 token ids, with repeated ids) in
//! every scatter-add form, Gather on activations along every axis with
//! scalar, tensor and negative indices, and GatherElements.
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). All nets
//! are f64 (ORT has f64 Gather, ScatterElements and Gemm
//! kernels): tolerance 1e-6.

mod common;

use common::{check, mse, Check, Net, F64};
use koala_graph::attrs::{a_int, a_tensor};
use koala_graph::backward::EmbeddingGrad;
use koala_graph::tensor;

/// `y = Gather(table, ids) · x`: a [7, 3] table read by [2, 5] ids drawn
/// from 0..7, so some ids repeat and their gradients must add up.
fn embedding_net(seed: u64, opset: i64) -> Net {
    let mut n = Net::new(opset, F64, seed);
    let table = n.rand_weight("table", &[7, 3]);
    let ids = n.int_input_values("ids", &[2, 5], vec![0, 3, 3, 6, 1, 3, 0, 2, 6, 6]);
    n.node("Gather", &[&table, &ids], &["e"], vec![]);
    let x = n.input("x", &[2, 5, 3]);
    n.node("Mul", &["e", &x], &["y"], vec![]);
    n
}

#[test]
fn embedding_gradient_adds_repeated_ids_in_every_form() {
    for (seed, opset, form) in [
        (600, 14, EmbeddingGrad::Auto),
        (601, 16, EmbeddingGrad::Auto),
        (603, 18, EmbeddingGrad::ScatterElements),
        (604, 21, EmbeddingGrad::OneHotMatMul),
        (605, 15, EmbeddingGrad::OneHotMatMul),
    ] {
        let n = embedding_net(seed, opset);
        let mut c = Check::mse(F64);
        c.backward.embedding_grad = form;
        check(&n, "y", &c);
    }
}

#[test]
fn embedding_gradient_with_random_ids_and_unused_rows() {
    // 40 ids over a 9-row table at random: unused rows must get exactly zero.
    let mut n = Net::new(17, F64, 606);
    let table = n.rand_weight("table", &[9, 2]);
    let ids = n.int_input("ids", &[4, 10], 0, 9);
    n.node("Gather", &[&table, &ids], &["e"], vec![]);
    n.node("Tanh", &["e"], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn scatter_forms_before_opset16_are_a_clear_error() {
    let n = embedding_net(607, 14);
    let mut spec = n.spec(koala_graph::LossSpec::MeanSquaredError);
    spec.backward.embedding_grad = EmbeddingGrad::ScatterElements;
    let e = koala_graph::build(&n.model("y"), &spec).expect_err("needs opset 16");
    let e = format!("{e:#}");
    assert!(e.contains("needs opset 16"), "{e}");
}

/// A scalar int64 Constant node.
fn scalar_index(n: &mut Net, name: &str, v: i64) -> String {
    let t = tensor::from_i64("value", &[], &[v]);
    n.node("Constant", &[], &[name], vec![a_tensor("value", t)]);
    name.into()
}

#[test]
fn gather_on_activations_every_axis_and_index_kind() {
    // [2, 5, 4] activations: sequence axis with a vector of (negative)
    // indices, head axis with a 2-D index tensor, last axis with a scalar.
    let mut n = Net::new(17, F64, 610);
    let x = n.rand_leaf("x", &[2, 5, 4]);
    let seq = n.ints("seq", &[4, -1, 0, 4]);
    n.node("Gather", &[&x, &seq], &["a"], vec![a_int("axis", 1)]);
    mse(&n, "a");

    let mut n = Net::new(13, F64, 611);
    let x = n.rand_leaf("x", &[2, 5, 4]);
    let idx = n.int_input_values("idx", &[2, 2], vec![-1, 0, 2, 2]);
    n.node("Gather", &[&x, &idx], &["b"], vec![a_int("axis", -1)]);
    mse(&n, "b");

    let mut n = Net::new(21, F64, 612);
    let x = n.rand_leaf("x", &[2, 5, 4]);
    let i = scalar_index(&mut n, "last", -1);
    n.node("Gather", &[&x, &i], &["c"], vec![a_int("axis", 1)]);
    mse(&n, "c");

    let mut n = Net::new(14, F64, 613);
    let x = n.rand_leaf("x", &[3, 4]);
    let i = scalar_index(&mut n, "first", 0);
    n.node("Gather", &[&x, &i], &["d"], vec![]);
    mse(&n, "d");
}

#[test]
fn gather_indices_from_data_with_negative_values() {
    let mut n = Net::new(18, F64, 614);
    let x = n.rand_leaf("x", &[6, 3]);
    let idx = n.int_input("idx", &[3, 4], -6, 6);
    n.node("Gather", &[&x, &idx], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn gather_elements_scatter_adds_from_opset16() {
    let mut n = Net::new(16, F64, 615);
    let x = n.rand_leaf("x", &[3, 4]);
    let idx = n.int_input("idx", &[3, 5], -4, 4);
    n.node(
        "GatherElements",
        &[&x, &idx],
        &["y"],
        vec![a_int("axis", 1)],
    );
    mse(&n, "y");

    // Opset 13: the scatter-add needs opset 16, so the training graph is
    // upgraded to 17 (`upgrade::needs_opset_16`) and the same rule applies.
    let mut n = Net::new(13, F64, 616);
    let x = n.rand_leaf("x", &[3, 4]);
    let idx = n.int_input("idx", &[2, 4], 0, 3);
    n.node("GatherElements", &[&x, &idx], &["y"], vec![]);
    mse(&n, "y");
}

/// Times the embedding gradient (the subgraph `backward::differentiate`
/// writes for `Gather(table, ids)`, seeded with a given dY) in every form,
/// f32, 2 intra-op threads, median of 5 runs after 2 warm-ups. Prints one
/// table; the numbers are in `backward/gather.rs`. Ignored: it allocates
/// ~0.5 GB and takes a while (`cargo test --release -p koala-graph --test
/// fd_gather -- --ignored --nocapture`).
#[test]
#[ignore]
fn embedding_gradient_forms_timings() {
    use koala_graph::proto::DataType;
    use koala_runtime::TensorView;
    use std::time::Instant;

    let cases = [
        (49152usize, 576usize, 1usize, 256usize),
        (49152, 576, 8, 128),
        (97, 32, 2, 12),
        (97, 32, 8, 128),
    ];
    let forms = [EmbeddingGrad::ScatterElements, EmbeddingGrad::OneHotMatMul];
    println!(
        "| table | ids | baseline: zeros [V, D] ms | ScatterElements add ms | one-hot MatMul ms |"
    );
    println!("|---|---|---|---|---|");
    for (v, d, b, t) in cases {
        let n = b * t;
        let mut row = format!("| {v}×{d} | {b}×{t} |");
        for form in std::iter::once(None).chain(forms.map(Some)) {
            let mut s = embedding_grad_session(v, d, n, |ctx| match form {
                Some(form) => gradient_of_gather(ctx, form),
                // Baseline: a dense [V, D] output that reads dY (zeros plus
                // ΣdY, and the copy back to Rust): the floor every form pays.
                None => {
                    let z = ctx.const_of(&[0.0], &[], DataType::Float).expect("zero");
                    let e = ctx.expand(&z, &[v, d]).expect("expand");
                    let dy_sum = ctx.reduce_sum("dy", &[0, 1], true).expect("sum");
                    ctx.binary("Add", &e, &dy_sum).expect("add")
                }
            });
            let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % v as i64).collect();
            let dy: Vec<f32> = (0..n * d).map(|i| (i % 13) as f32 * 0.1).collect();
            let mut times = Vec::new();
            for k in 0..7 {
                let t0 = Instant::now();
                let out = s
                    .run(&[
                        ("ids", TensorView::i64(&ids, &[n])),
                        ("dy", TensorView::f32(&dy, &[n, d])),
                    ])
                    .expect("run");
                if k >= 2 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                drop(out);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            row.push_str(&format!(" {:.2} |", times[times.len() / 2]));
        }
        println!("{row}");
    }
}

/// The embedding gradient of a SmolLM2-sized table, 2 intra-op threads, ids that repeat
/// (each of 64 ids 8 times in 512): every run must give exactly the row sums of dY added in
/// id order, as a sequential scatter-add computes them in f32. ONNX Runtime's CPU
/// `ScatterND(reduction="add")` split the ids across threads and lost updates when two
/// threads added into the same row (microsoft/onnxruntime#18048): SmolLM2's embedding
/// gradient changed from run to run (up to 0.0067 off). The default form must be exact and
/// deterministic.
#[test]
fn embedding_gradient_is_exact_and_deterministic_with_two_threads() {
    let (v, d, n) = (49152usize, 576usize, 512usize);
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 37) % 64).collect();
    let dy: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7919) % 1009) as f32 / 1009.0 - 0.5)
        .collect();
    let mut want = vec![0f32; v * d];
    for (k, &id) in ids.iter().enumerate() {
        let row = &mut want[id as usize * d..(id as usize + 1) * d];
        for (w, &g) in row.iter_mut().zip(&dy[k * d..(k + 1) * d]) {
            *w += g;
        }
    }
    let mut s = embedding_grad_session(v, d, n, |ctx| gradient_of_gather(ctx, EmbeddingGrad::Auto));
    for run in 0..12 {
        let out = s
            .run(&[
                ("ids", koala_runtime::TensorView::i64(&ids, &[n])),
                ("dy", koala_runtime::TensorView::f32(&dy, &[n, d])),
            ])
            .expect("run");
        let got = out[0].as_f32().expect("f32 gradient");
        let bad = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            bad,
            0,
            "run {run}: {bad} of {} values differ from the sequential sum",
            v * d
        );
    }
}

/// An ORT session (opset 18, f32, 2 intra-op threads) fed `ids` [n] and `dy` [n, d] whose
/// output is the [v, d] value `write` adds to the graph: the gradient `differentiate`
/// writes for `Gather(table [v, d], ids)` (see [`gradient_of_gather`]) or a baseline.
fn embedding_grad_session(
    v: usize,
    d: usize,
    n: usize,
    write: impl FnOnce(&mut koala_graph::backward::GradCtx) -> String,
) -> koala_runtime::Session {
    use koala_graph::backward::GradCtx;
    use koala_graph::facts::{Facts, ValueFact};
    use koala_graph::proto::{DataType, GraphProto, ModelProto, OperatorSetIdProto};
    let mut facts = Facts::default();
    let f = |dt, shape: Vec<usize>| ValueFact {
        dtype: dt,
        shape,
        ints: None,
    };
    facts.insert("table", f(DataType::Float, vec![v, d]));
    facts.insert("ids", f(DataType::Int64, vec![n]));
    facts.insert("e", f(DataType::Float, vec![n, d]));
    facts.insert("dy", f(DataType::Float, vec![n, d]));
    let mut ctx = GradCtx::new(&mut facts, 18);
    let g = write(&mut ctx);
    let vi = koala_graph::training::value_info;
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 18,
        }],
        graph: Some(GraphProto {
            name: "embedding_grad".into(),
            node: ctx.nodes.clone(),
            initializer: ctx.initializers.clone(),
            input: vec![
                vi("ids", DataType::Int64, &[n]),
                vi("dy", DataType::Float, &[n, d]),
            ],
            output: vec![vi(&g, DataType::Float, &[v, d])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = koala_runtime::SessionOptions {
        intra_threads: Some(2),
        ..Default::default()
    };
    koala_runtime::Session::from_bytes(&prost::Message::encode_to_vec(&model), &opts)
        .expect("session")
}

/// Writes the table gradient of `e = Gather(table, ids)` seeded with `dy`, in `form`.
fn gradient_of_gather(ctx: &mut koala_graph::backward::GradCtx, form: EmbeddingGrad) -> String {
    use koala_graph::backward::{differentiate, BackwardOptions};
    let gather = koala_graph::proto::NodeProto {
        op_type: "Gather".into(),
        input: vec!["table".into(), "ids".into()],
        output: vec!["e".into()],
        ..Default::default()
    };
    let options = BackwardOptions {
        embedding_grad: form,
        ..Default::default()
    };
    differentiate(ctx, &[gather], &["table".into()], "e", "dy", &options).expect("gradient")[0]
        .clone()
        .expect("table gradient")
}
