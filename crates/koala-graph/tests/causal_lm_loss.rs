//! The causal-LM loss head (`LossSpec::CausalLm`) against its definition,
//! computed independently here in f64.
//!
//! The model is `logits = x · W` with a float input `x [B, T, D]` and a
//! trainable `W [D, V]`, so the exact gradient is known in closed form:
//! `dW = Σ_{b,t} x[b,t]ᵀ · (softmax(z[b,t]) − onehot(y[b,t+1])) · w[b,t] / N`,
//! where `w` is 1 for counted targets and `N` their number. Hugging Face's
//! `LlamaForCausalLM` loss is the definition: shift by one, ignore −100,
//! mean over the remaining targets. The graph runs in f32, so the tolerance
//! is 1e-5 relative (a handful of f32 roundings of values of order 1).

use koala_graph::loss::{LossSpec, IGNORE_INDEX, TOKEN_CORRECT, TOKEN_COUNT};
use koala_graph::proto::{
    DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TypeProto, ValueInfoProto,
};
use koala_graph::step::{Batch, TrainStep};
use koala_graph::{tensor, training, Model, TrainingSpec};

const B: usize = 2;
const T: usize = 5;
const D: usize = 3;
const V: usize = 7;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn tensor_input(name: &str, dt: DataType, shape: &[usize]) -> ValueInfoProto {
    training::value_info(name, dt, shape)
}

/// `logits = MatMul(x, W)`, optionally with an `attention_mask` input that
/// the model itself ignores (only the loss reads it).
fn model(with_mask: bool, t: usize) -> Model {
    let w = tensor::from_f32("W", &[D as i64, V as i64], &values(D * V, 7));
    let mut input = vec![tensor_input("x", DataType::Float, &[B, t, D])];
    if with_mask {
        input.push(tensor_input("attention_mask", DataType::Int64, &[B, t]));
    }
    let out = ValueInfoProto {
        name: "logits".into(),
        r#type: Some(TypeProto::default()),
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "lm".into(),
            node: vec![NodeProto {
                op_type: "MatMul".into(),
                input: vec!["x".into(), "W".into()],
                output: vec!["logits".into()],
                name: "head".into(),
                ..Default::default()
            }],
            initializer: vec![w],
            input,
            output: vec![out],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto).unwrap()
}

struct Expected {
    loss: f64,
    per_sample: Vec<f64>,
    grad: Vec<f64>,
    count: f64,
    correct: f64,
}

/// The definition, in f64.
fn expected(x: &[f32], w: &[f32], labels: &[i64], mask: Option<&[i64]>) -> Expected {
    let mut grad = vec![0.0; D * V];
    let mut total = 0.0;
    let mut count = 0.0;
    let mut correct = 0.0;
    let mut per_sample = vec![];
    let mut rows: Vec<(usize, usize, Vec<f64>, usize)> = vec![];
    for b in 0..B {
        let (mut s, mut c) = (0.0, 0.0);
        for t in 0..T - 1 {
            let y = labels[b * T + t + 1];
            let masked = mask.is_some_and(|m| m[b * T + t + 1] == 0);
            if y == IGNORE_INDEX || masked {
                continue;
            }
            let z: Vec<f64> = (0..V)
                .map(|v| {
                    (0..D)
                        .map(|d| x[(b * T + t) * D + d] as f64 * w[d * V + v] as f64)
                        .sum()
                })
                .collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            s += lse - z[y as usize];
            c += 1.0;
            let argmax = (0..V).fold(0, |a, v| if z[v] > z[a] { v } else { a });
            correct += (argmax == y as usize) as u8 as f64;
            rows.push((
                b,
                t,
                z.iter().map(|v| (v - lse).exp()).collect(),
                y as usize,
            ));
        }
        total += s;
        count += c;
        per_sample.push(s / f64::max(c, 1.0));
    }
    for (b, t, p, y) in rows {
        for d in 0..D {
            for v in 0..V {
                let dz = p[v] - (v == y) as u8 as f64;
                grad[d * V + v] += x[(b * T + t) * D + d] as f64 * dz / count;
            }
        }
    }
    Expected {
        loss: total / count,
        per_sample,
        grad,
        count,
        correct,
    }
}

fn close(what: &str, ours: f64, want: f64) {
    let err = (ours - want).abs() / want.abs().max(1.0);
    assert!(
        err <= 1e-5,
        "{what}: koala {ours} vs definition {want} (rel {err:.2e} > 1e-5, f32 rounding)"
    );
}

fn run(with_mask: bool, labels: &[i64], mask: Option<&[i64]>) {
    let m = model(with_mask, T);
    let mut shapes = vec![("x".to_string(), vec![B, T, D])];
    if with_mask {
        shapes.push(("attention_mask".to_string(), vec![B, T]));
    }
    let spec = TrainingSpec {
        input_shapes: shapes.into_iter().collect(),
        loss: LossSpec::CausalLm {
            ignore_index: IGNORE_INDEX,
            attention_mask: with_mask.then(|| "attention_mask".to_string()),
        },
        omit_model_output: true,
        ..Default::default()
    };
    let graph = koala_graph::build(&m, &spec).unwrap();
    assert!(
        graph.model_output.is_empty(),
        "the logits must not be an output unless asked"
    );
    let names: Vec<&str> = graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert!(!names.contains(&"model_output"), "outputs: {names:?}");
    let x = values(B * T * D, 3);
    let w = values(D * V, 7);
    let mut step = TrainStep::new(graph, Some(1)).unwrap();
    let mut data = vec![Batch::F32(&x)];
    if let Some(mk) = mask {
        data.push(Batch::I64(mk));
    }
    step.set_batch(&data, Batch::I64(labels)).unwrap();
    step.run().unwrap();
    let e = expected(&x, &w, labels, mask);
    close("loss", step.loss() as f64, e.loss);
    for (b, want) in e.per_sample.iter().enumerate() {
        close(
            &format!("per-sample loss {b}"),
            step.per_sample()[b] as f64,
            *want,
        );
    }
    let metrics = &step.graph().metric_outputs;
    let value = |name: &str| step.metric(metrics.iter().position(|n| n == name).unwrap()) as f64;
    assert_eq!(value(TOKEN_COUNT), e.count, "counted tokens");
    assert_eq!(value(TOKEN_CORRECT), e.correct, "correct tokens");
    let g = step.grad(0);
    let scale = e.grad.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = g
        .iter()
        .zip(&e.grad)
        .map(|(&a, b)| (a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        diff <= 1e-5 * scale,
        "dW rel L2 error {:.2e} > 1e-5",
        diff / scale
    );
}

#[test]
fn causal_lm_loss_shifts_inside_the_graph_and_matches_its_definition() {
    let labels: Vec<i64> = (0..B * T).map(|i| (i * 3 % V) as i64).collect();
    run(false, &labels, None);
}

#[test]
fn ignored_labels_count_neither_in_the_loss_nor_in_the_gradient() {
    let mut labels: Vec<i64> = (0..B * T).map(|i| (i * 5 % V) as i64).collect();
    // A masked prompt (first target of row 0) and the tail of row 1.
    labels[1] = IGNORE_INDEX;
    labels[T + 3] = IGNORE_INDEX;
    labels[T + 4] = IGNORE_INDEX;
    run(false, &labels, None);
}

#[test]
fn padding_hidden_by_the_attention_mask_does_not_count() {
    let labels: Vec<i64> = (0..B * T).map(|i| (i * 2 % V) as i64).collect();
    // Row 1 is right-padded after 3 tokens; its padded labels are ordinary
    // ids, so only the mask can exclude them.
    let mask: Vec<i64> = vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    run(true, &labels, Some(&mask));
}

#[test]
fn a_sequence_of_one_token_is_refused_with_the_reason() {
    let m = model(false, 1);
    let spec = TrainingSpec {
        input_shapes: [("x".to_string(), vec![B, 1, D])].into_iter().collect(),
        loss: LossSpec::CausalLm {
            ignore_index: IGNORE_INDEX,
            attention_mask: None,
        },
        ..Default::default()
    };
    let e = koala_graph::build(&m, &spec).unwrap_err();
    assert!(format!("{e:#}").contains("at least 2 tokens"), "{e:#}");
}
