//! Which language-model exports koala accepts, and what it says otherwise.

use koala_graph::lm_signature::{self, LmSignature};
use koala_graph::proto::{
    dimension, type_proto, DataType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use koala_graph::Model;

/// A graph input with symbolic (`None`) or fixed dims.
fn input(name: &str, dt: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("dynamic".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(inputs: Vec<ValueInfoProto>, mut nodes: Vec<NodeProto>) -> Model {
    if nodes.is_empty() {
        nodes.push(NodeProto {
            op_type: "Identity".into(),
            input: vec![inputs[0].name.clone()],
            output: vec!["logits".into()],
            ..Default::default()
        });
    }
    Model::from_proto(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "lm".into(),
            node: nodes,
            input: inputs,
            output: vec![input("logits", DataType::Float, &[None, None, None])],
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

fn ids() -> ValueInfoProto {
    input("input_ids", DataType::Int64, &[None, None])
}

#[test]
fn optimum_signature_feeds_an_empty_past() {
    let m = model(
        vec![
            ids(),
            input("attention_mask", DataType::Int64, &[None, None]),
            input("position_ids", DataType::Int64, &[None, None]),
            input(
                "past_key_values.0.key",
                DataType::Float,
                &[None, Some(3), None, Some(64)],
            ),
            input(
                "past_key_values.0.value",
                DataType::Float,
                &[None, Some(3), None, Some(64)],
            ),
        ],
        vec![],
    );
    let sig = lm_signature::detect(&m).unwrap();
    assert_eq!(sig.attention_mask.as_deref(), Some("attention_mask"));
    assert_eq!(sig.position_ids.as_deref(), Some("position_ids"));
    assert_eq!(sig.past.len(), 2);
    let shapes = sig.input_shapes(2, 16);
    assert_eq!(shapes["input_ids"], vec![2, 16]);
    assert_eq!(shapes["attention_mask"], vec![2, 16]);
    assert_eq!(shapes["past_key_values.0.value"], vec![2, 3, 0, 64]);
    assert_eq!(LmSignature::position_ids_for(2, 3), vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn a_merged_decoder_is_refused_with_the_file_to_use_instead() {
    let if_node = NodeProto {
        op_type: "If".into(),
        name: "optimum::if".into(),
        input: vec!["use_cache_branch".into()],
        output: vec!["logits".into()],
        ..Default::default()
    };
    let m = model(
        vec![ids(), input("use_cache_branch", DataType::Bool, &[Some(1)])],
        vec![if_node],
    );
    let e = format!("{:#}", lm_signature::detect(&m).unwrap_err());
    assert!(e.contains("merged decoder"), "{e}");
    assert!(e.contains("decoder_model.onnx"), "{e}");
}

#[test]
fn unknown_inputs_and_unfixed_past_dims_are_named() {
    let m = model(
        vec![
            ids(),
            input("token_type_ids", DataType::Int64, &[None, None]),
        ],
        vec![],
    );
    let e = format!("{:#}", lm_signature::detect(&m).unwrap_err());
    assert!(e.contains("'token_type_ids'"), "{e}");
    let m = model(
        vec![
            ids(),
            input(
                "past_key_values.0.key",
                DataType::Float,
                &[None, None, None, None],
            ),
        ],
        vec![],
    );
    let e = format!("{:#}", lm_signature::detect(&m).unwrap_err());
    assert!(
        e.contains("past_key_values.0.key") && e.contains("kv_heads"),
        "{e}"
    );
    let m = model(
        vec![input(
            "pixel_values",
            DataType::Float,
            &[None, Some(3), None, None],
        )],
        vec![],
    );
    assert!(!lm_signature::is_language_model(&m));
    let e = format!("{:#}", lm_signature::detect(&m).unwrap_err());
    assert!(e.contains("no 'input_ids' input"), "{e}");
}

/// Training through Optimum's signature (attention mask, position ids and a
/// length-0 past) gives the same loss and gradients as the plain
/// `input_ids → logits` export of the same weights (both made by
/// `gen/gen_llama.py`; the plain one matches PyTorch, see reference_cases).
/// Same computation up to the exporter's op order: 1e-5 relative.
#[test]
fn the_optimum_export_trains_like_the_plain_export_with_an_empty_past() {
    use koala_graph::loss::{LossSpec, IGNORE_INDEX};
    use koala_graph::step::{Batch, TrainStep};
    use koala_graph::TrainingSpec;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let (b, t) = (2, 8);
    let ids: Vec<i64> = (0..(b * t) as i64).map(|i| (i * 37 + 11) % 113).collect();
    let run = |file: &str| {
        let m = Model::load(&root.join(file)).unwrap();
        let sig = lm_signature::detect(&m).unwrap();
        let spec = TrainingSpec {
            input_shapes: sig.input_shapes(b, t),
            loss: LossSpec::CausalLm {
                ignore_index: IGNORE_INDEX,
                attention_mask: sig.attention_mask.clone(),
            },
            omit_model_output: true,
            ..TrainingSpec::default()
        };
        let graph = koala_graph::build(&m, &spec).unwrap();
        let names: Vec<String> = graph.data_inputs.iter().map(|d| d.0.clone()).collect();
        let mut step = TrainStep::new(graph, Some(1)).unwrap();
        let mask = vec![1i64; b * t];
        let pos = LmSignature::position_ids_for(b, t);
        let feeds: Vec<Batch> = names
            .iter()
            .map(|n| match n.as_str() {
                "input_ids" => Batch::I64(&ids),
                "attention_mask" => Batch::I64(&mask),
                "position_ids" => Batch::I64(&pos),
                _ => Batch::F32(&[]),
            })
            .collect();
        step.set_batch(&feeds, Batch::I64(&ids)).unwrap();
        step.run().unwrap();
        let mut grads: Vec<(String, Vec<f32>)> = (0..step.graph().trainable.len())
            .map(|k| {
                (
                    step.graph().trainable[k].name.clone(),
                    step.grad(k).to_vec(),
                )
            })
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (step.loss(), grads)
    };
    let (l_plain, g_plain) = run("reference/tiny_llama/model.onnx");
    let (l_opt, g_opt) = run("lm/tiny_llama_optimum.onnx");
    assert!(
        (l_plain - l_opt).abs() <= 1e-5 * l_plain.abs(),
        "loss {l_plain} vs {l_opt}"
    );
    assert_eq!(g_plain.len(), g_opt.len());
    for ((n, a), (m, c)) in g_plain.iter().zip(&g_opt) {
        assert_eq!(n, m);
        let norm = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = a
            .iter()
            .zip(c)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm,
            "{n}: rel L2 {:.2e} > 1e-5",
            diff / norm
        );
    }
}
