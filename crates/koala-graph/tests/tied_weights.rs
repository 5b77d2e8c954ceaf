//! Tied weights written twice by an exporter are trained as one tensor.
//!
//! Ground truth: the same network written with *one* initializer and an
//! explicit `Transpose` (what a tie means), whose gradient the per-op
//! finite-difference suite already verifies for MatMul and Transpose. The
//! duplicated form must give that gradient exactly (same ops, same order up
//! to one Sum), so the tolerance is f32 rounding of the sum: 1e-6 relative.

use koala_graph::loss::LossSpec;
use koala_graph::proto::{
    DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use koala_graph::step::{Batch, TrainStep};
use koala_graph::tied::{self, TiedCopy};
use koala_graph::{attrs, tensor, training, Model, TrainingSpec};
use std::collections::HashMap;

const B: usize = 2;
const V: usize = 128;
const D: usize = 32;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 - 0.5) as f32
        })
        .collect()
}

fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = x[i * c + j];
        }
    }
    out
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Model {
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "tied".into(),
            node: nodes,
            initializer: inits,
            input: vec![training::value_info("x", DataType::Float, &[B, V])],
            output: vec![ValueInfoProto {
                name: "y".into(),
                r#type: Some(TypeProto::default()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto).unwrap()
}

/// `y = (x · E) · Eᵀ`, with Eᵀ stored as its own initializer `head` (a
/// transposed copy) when `duplicated`, else computed by a Transpose node.
fn net(duplicated: bool) -> Model {
    let e = values(V * D, 1);
    let emb = tensor::from_f32("emb", &[V as i64, D as i64], &e);
    if duplicated {
        let head = tensor::from_f32("head", &[D as i64, V as i64], &transpose(&e, V, D));
        model(
            vec![
                node("MatMul", &["x", "emb"], "h"),
                node("MatMul", &["h", "head"], "y"),
            ],
            vec![emb, head],
        )
    } else {
        let mut t = node("Transpose", &["emb"], "embT");
        t.attribute.push(attrs::a_ints("perm", &[1, 0]));
        model(
            vec![
                node("MatMul", &["x", "emb"], "h"),
                t,
                node("MatMul", &["h", "embT"], "y"),
            ],
            vec![emb],
        )
    }
}

fn grads(m: &Model) -> (Vec<String>, Vec<Vec<f32>>, Vec<TiedCopy>) {
    let spec = TrainingSpec {
        input_shapes: [("x".to_string(), vec![B, V])].into_iter().collect(),
        loss: LossSpec::MeanSquaredError,
        ..Default::default()
    };
    let graph = koala_graph::build(m, &spec).unwrap();
    let tied = graph.tied.clone();
    let names = graph.trainable.iter().map(|t| t.name.clone()).collect();
    let mut step = TrainStep::new(graph, Some(1)).unwrap();
    let x = values(B * V, 2);
    let y = values(B * V, 3);
    step.set_batch(&[Batch::F32(&x)], Batch::F32(&y)).unwrap();
    step.run().unwrap();
    let g = (0..step.graph().trainable.len())
        .map(|k| step.grad(k).to_vec())
        .collect();
    (names, g, tied)
}

#[test]
fn a_transposed_copy_of_a_weight_trains_as_one_tensor_with_the_summed_gradient() {
    let (names, g, tied) = grads(&net(true));
    assert_eq!(
        names,
        vec!["emb".to_string()],
        "the copy must not train on its own"
    );
    assert_eq!(
        tied,
        vec![TiedCopy {
            canonical: "emb".into(),
            copy: "head".into(),
            transposed: true
        }]
    );
    let (_, want, none) = grads(&net(false));
    assert!(none.is_empty());
    let norm = want[0]
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let diff = g[0]
        .iter()
        .zip(&want[0])
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(diff <= 1e-6 * norm, "rel L2 {:.2e} > 1e-6", diff / norm);
}

#[test]
fn export_writes_the_trained_tensor_back_to_both_copies() {
    let m = net(true);
    let copies = tied::find(&m);
    let trained = values(V * D, 9);
    let weights: HashMap<&str, &[f32]> = [("emb", trained.as_slice())].into_iter().collect();
    let out = tied::copies_to_write(&m, &copies, &weights);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "head");
    assert_eq!(out[0].1, transpose(&trained, V, D));
    // The export writes both initializers from the trained one.
    let written = koala_graph::export::with_weights(&m, [("emb", trained.as_slice())]).unwrap();
    let head = written
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == "head")
        .unwrap();
    assert_eq!(tensor::to_f32(head).unwrap(), transpose(&trained, V, D));
}

#[test]
fn equal_by_initialisation_is_not_tied() {
    // Two all-ones tensors (fresh norm weights) and two all-zero ones (fresh
    // LoRA B) are equal by construction, not tied; small equal tensors too.
    let ones = vec![1.0f32; V * D];
    let zeros = vec![0.0f32; V * D];
    let small = values(16, 4);
    let inits = vec![
        tensor::from_f32("a", &[V as i64, D as i64], &ones),
        tensor::from_f32("b", &[V as i64, D as i64], &ones),
        tensor::from_f32("c", &[V as i64, D as i64], &zeros),
        tensor::from_f32("d", &[V as i64, D as i64], &zeros),
        tensor::from_f32("e", &[4, 4], &small),
        tensor::from_f32("f", &[4, 4], &small),
    ];
    let m = model(vec![node("Identity", &["x"], "y")], inits);
    assert!(tied::find(&m).is_empty(), "{:?}", tied::find(&m));
}
