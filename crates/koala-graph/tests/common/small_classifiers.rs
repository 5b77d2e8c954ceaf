//! Small image classifiers built in Rust, in the shapes real exports take:
//! a final Softmax, several outputs, in-graph preprocessing (mean/std,
//! uint8 → /255), a Resize between two Convs, weights in Constant nodes.
//! Shared by koala-graph's tests and the CLI tests (`tests/cli_outputs.rs`).

#![allow(dead_code)] // each test binary uses a different subset

use koala_graph::attrs::{a_int, a_ints, a_tensor};
use koala_graph::proto::{
    dimension, type_proto, DataType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use koala_graph::{tensor, Model};

/// Deterministic small weights in [−0.5, 0.5).
pub fn weights(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((s >> 8) % 1000) as f32 / 1000.0 - 0.5
        })
        .collect()
}

/// A tensor value info with `dims` (None = symbolic `N`).
pub fn info(name: &str, dt: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => dimension::Value::DimValue(*v),
                                None => dimension::Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One node.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<koala_graph::proto::AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// How the model ends and starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outputs {
    /// `[logits]`.
    Logits,
    /// `[probs]` = Softmax(logits).
    Probs,
    /// `[probs, logits]`.
    ProbsAndLogits,
    /// `[features [N,4], logits [N,2]]`.
    FeaturesAndLogits,
    /// `[features [N,4], logits2 [N,2], logits [N,2]]`: two heads of two
    /// classes, which no rule can tell apart.
    TwoHeads,
}

/// In-graph preprocessing before the first Conv.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preprocessing {
    /// Float input, none.
    None,
    /// Float NCHW input, `Sub(mean[1,3,1,1])` then `Div(std[1,3,1,1])`.
    MeanStd,
    /// uint8 NCHW input, `Cast(to float)` then `Div(255)`.
    Uint8,
}

/// The mean and std the [`Preprocessing::MeanStd`] model carries.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`MEAN`].
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A tiny CNN on `[N, 3, 16, 16]` images: Conv(3→4, 3×3, pad 1) → Relu →
/// GlobalAveragePool → Flatten (`features`, `[N, 4]`) → Gemm (`fc`, 2
/// classes, zero-initialised) → `logits`, → Softmax → `probs`; outputs and
/// preprocessing as asked.
pub fn tiny_cnn(outputs: Outputs, pre: Preprocessing) -> Model {
    let mut nodes = vec![];
    let mut inits: Vec<TensorProto> = vec![];
    let input_dt = if pre == Preprocessing::Uint8 {
        DataType::Uint8
    } else {
        DataType::Float
    };
    let mut x = "input".to_string();
    match pre {
        Preprocessing::None => {}
        Preprocessing::MeanStd => {
            inits.push(tensor::from_f32("mean", &[1, 3, 1, 1], &MEAN));
            inits.push(tensor::from_f32("std", &[1, 3, 1, 1], &STD));
            nodes.push(node(
                "Sub",
                "sub_mean",
                &["input", "mean"],
                &["centred"],
                vec![],
            ));
            nodes.push(node(
                "Div",
                "div_std",
                &["centred", "std"],
                &["normalised"],
                vec![],
            ));
            x = "normalised".into();
        }
        Preprocessing::Uint8 => {
            inits.push(tensor::from_f32("scale_255", &[], &[255.0]));
            nodes.push(node(
                "Cast",
                "to_float",
                &["input"],
                &["as_float"],
                vec![a_int("to", DataType::Float as i64)],
            ));
            nodes.push(node(
                "Div",
                "div_255",
                &["as_float", "scale_255"],
                &["normalised"],
                vec![],
            ));
            x = "normalised".into();
        }
    }
    inits.push(tensor::from_f32(
        "conv.weight",
        &[4, 3, 3, 3],
        &weights(108, 1),
    ));
    inits.push(tensor::from_f32("conv.bias", &[4], &weights(4, 2)));
    // The head starts at zero: both class scores are equal, so accuracy starts
    // at chance and only a trained head raises it.
    inits.push(tensor::from_f32("fc.weight", &[2, 4], &[0.0; 8]));
    inits.push(tensor::from_f32("fc.bias", &[2], &[0.0, 0.0]));
    nodes.push(node(
        "Conv",
        "conv",
        &[&x, "conv.weight", "conv.bias"],
        &["conv_out"],
        vec![
            a_ints("pads", &[1, 1, 1, 1]),
            a_ints("kernel_shape", &[3, 3]),
        ],
    ));
    nodes.push(node("Relu", "relu", &["conv_out"], &["relu_out"], vec![]));
    nodes.push(node(
        "GlobalAveragePool",
        "pool",
        &["relu_out"],
        &["pooled"],
        vec![],
    ));
    nodes.push(node(
        "Flatten",
        "flatten",
        &["pooled"],
        &["features"],
        vec![],
    ));
    nodes.push(node(
        "Gemm",
        "fc",
        &["features", "fc.weight", "fc.bias"],
        &["logits"],
        vec![a_int("transB", 1)],
    ));
    let n2 = [None, Some(2)];
    let mut outs = vec![];
    if matches!(outputs, Outputs::Probs | Outputs::ProbsAndLogits) {
        nodes.push(node(
            "Softmax",
            "softmax",
            &["logits"],
            &["probs"],
            vec![a_int("axis", -1)],
        ));
        outs.push(info("probs", DataType::Float, &n2));
    }
    if matches!(outputs, Outputs::FeaturesAndLogits | Outputs::TwoHeads) {
        outs.push(info("features", DataType::Float, &[None, Some(4)]));
    }
    if outputs == Outputs::TwoHeads {
        inits.push(tensor::from_f32("fc2.weight", &[2, 4], &weights(8, 4)));
        nodes.push(node(
            "Gemm",
            "fc2",
            &["features", "fc2.weight"],
            &["logits2"],
            vec![a_int("transB", 1)],
        ));
        outs.push(info("logits2", DataType::Float, &n2));
    }
    if outputs != Outputs::Probs {
        outs.push(info("logits", DataType::Float, &n2));
    }
    let graph = GraphProto {
        name: "tiny_cnn".into(),
        node: nodes,
        initializer: inits,
        input: vec![info(
            "input",
            input_dt,
            &[None, Some(3), Some(16), Some(16)],
        )],
        output: outs,
        ..Default::default()
    };
    model(graph)
}

/// Wraps a graph as an opset-17 model.
pub fn model(graph: GraphProto) -> Model {
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "koala-tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    Model::from_proto(proto).expect("a valid model")
}

/// Conv → Resize (float `scales` initializer, ×2 nearest) → Conv → pool →
/// `logits [N, 2]`: both Convs train (the first through the Resize).
pub fn conv_resize_conv() -> Model {
    let inits = vec![
        tensor::from_f32("conv1.weight", &[2, 3, 3, 3], &weights(54, 5)),
        tensor::from_f32("conv1.bias", &[2], &weights(2, 6)),
        tensor::from_f32("resize.scales", &[4], &[1.0, 1.0, 2.0, 2.0]),
        tensor::from_f32("conv2.weight", &[2, 2, 3, 3], &weights(36, 7)),
        tensor::from_f32("conv2.bias", &[2], &weights(2, 8)),
    ];
    let nodes = vec![
        node(
            "Conv",
            "conv1",
            &["input", "conv1.weight", "conv1.bias"],
            &["c1"],
            vec![a_ints("pads", &[1, 1, 1, 1])],
        ),
        node(
            "Resize",
            "upsample",
            &["c1", "", "resize.scales"],
            &["up"],
            vec![],
        ),
        node(
            "Conv",
            "conv2",
            &["up", "conv2.weight", "conv2.bias"],
            &["c2"],
            vec![a_ints("pads", &[1, 1, 1, 1])],
        ),
        node("GlobalAveragePool", "pool", &["c2"], &["pooled"], vec![]),
        node("Flatten", "flatten", &["pooled"], &["logits"], vec![]),
    ];
    model(GraphProto {
        name: "conv_resize_conv".into(),
        node: nodes,
        initializer: inits,
        input: vec![info(
            "input",
            DataType::Float,
            &[None, Some(3), Some(8), Some(8)],
        )],
        output: vec![info("logits", DataType::Float, &[None, Some(2)])],
        ..Default::default()
    })
}

/// [`tiny_cnn`] with every initializer moved into a Constant node (as some
/// exporters write weights).
pub fn weights_in_constants() -> Model {
    let mut m = tiny_cnn(Outputs::Logits, Preprocessing::None);
    let g = m.graph_mut();
    let consts: Vec<NodeProto> = std::mem::take(&mut g.initializer)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            node(
                "Constant",
                &format!("const_{name}"),
                &[],
                &[&name],
                vec![a_tensor("value", t)],
            )
        })
        .collect();
    let rest = std::mem::take(&mut g.node);
    g.node = consts.into_iter().chain(rest).collect();
    m
}
