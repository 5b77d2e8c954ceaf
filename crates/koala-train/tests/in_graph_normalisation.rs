//! A float classifier that normalises inside its graph (`Sub(mean)`/`Div(std)` constants
//! before its first parametrised op) must not also be fed ImageNet-normalised pixels
//! (follow-up of issue 8: that normalised twice, silently). Without `--mean`/`--std` koala
//! feeds what the constants were written for: pixels in [0, 1] (mean 0, std 1) for means
//! within [−1, 1]; raw 0–255 floats (mean 0, std 1/255) after a first `Div(255)`/`Mul(1/255)`
//! or for Caffe-style means > 1. A model with no such constants still gets ImageNet's.
//!
//! The models are built here: NCHW float32 `[batch, 3, 16, 16]` → in-graph normalisation →
//! GlobalAveragePool → Flatten → Gemm, whose weights score each colour class of the generated
//! data (`common`) by the signs of its normalised channel means. Every normalising variant
//! computes the same function of the pixels when fed what it expects, so all score alike.

mod common;

use koala_graph::attrs::a_int;
use koala_graph::proto::{
    dimension, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
};
use koala_graph::tensor::from_f32;
use koala_graph::Model;
use koala_train::image_input::{ImageInput, InGraphNormalisation};
use koala_train::preprocess_metadata::{keys, Flags};
use koala_train::TrainConfig;
use std::path::{Path, PathBuf};

/// How the model normalises its input.
#[derive(Clone, Copy, Debug)]
enum Norm {
    /// No constants (koala normalises).
    Plain,
    /// `(x − 0.5) / 0.25` on [0, 1] pixels.
    MeanStd,
    /// `Div(255)` first, then the same mean/std.
    Div255,
    /// `Mul(1/255)` first, then the same mean/std.
    Mul255,
    /// Caffe-style `(x − 127.5) / 63.75` on 0–255 pixels (the same function).
    Caffe,
    /// [`Norm::MeanStd`] with the mean and std in `Constant` nodes (as torch exports often
    /// hold them) instead of initializers.
    ConstantNodes,
}

const IN_GRAPH: [Norm; 5] = [
    Norm::MeanStd,
    Norm::Div255,
    Norm::Mul255,
    Norm::Caffe,
    Norm::ConstantNodes,
];

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    }
}

/// `[batch, dims...]` with a symbolic batch axis.
fn batched(name: &str, dims: &[usize]) -> koala_graph::proto::ValueInfoProto {
    let mut shape = vec![1];
    shape.extend_from_slice(dims);
    let mut v = koala_graph::training::value_info(name, DataType::Float, &shape);
    if let Some(koala_graph::proto::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[0].value = Some(dimension::Value::DimParam("batch".into()));
    }
    v
}

/// A `Constant` node whose output is `t`'s name and whose value is `t`.
fn constant_node(mut t: koala_graph::proto::TensorProto) -> NodeProto {
    let name = std::mem::take(&mut t.name);
    NodeProto {
        op_type: "Constant".into(),
        name: format!("const_{name}"),
        output: vec![name],
        attribute: vec![koala_graph::proto::AttributeProto {
            name: "value".into(),
            r#type: koala_graph::proto::AttributeType::Tensor as i32,
            t: Some(t),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn model(norm: Norm) -> Model {
    let per_channel = |name: &str, v: f32| from_f32(name, &[1, 3, 1, 1], &[v; 3]);
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    let mut apply = |op: &str, c: koala_graph::proto::TensorProto, nodes: &mut Vec<NodeProto>| {
        let out = format!("{}_{}", op.to_lowercase(), c.name);
        nodes.push(node(op, &[&x, &c.name], &out));
        inits.push(c);
        x = out;
    };
    match norm {
        Norm::Plain => {}
        Norm::Caffe => {
            apply("Sub", per_channel("mean", 127.5), &mut nodes);
            apply("Div", per_channel("std", 63.75), &mut nodes);
        }
        _ => {
            match norm {
                Norm::Div255 => apply("Div", from_f32("scale", &[], &[255.0]), &mut nodes),
                Norm::Mul255 => apply("Mul", from_f32("scale", &[], &[1.0 / 255.0]), &mut nodes),
                _ => {}
            }
            apply("Sub", per_channel("mean", 0.5), &mut nodes);
            apply("Div", per_channel("std", 0.25), &mut nodes);
        }
    }
    nodes.push(node("GlobalAveragePool", &[&x], "pooled"));
    let mut flat = node("Flatten", &["pooled"], "flat");
    flat.attribute.push(a_int("axis", 1));
    nodes.push(flat);
    nodes.push(node("Gemm", &["flat", "W", "B"], "logits"));
    // Columns: red (+,−,−), green (−,+,−), blue (−,−,+), yellow (+,+,−).
    #[rustfmt::skip]
    let w = [
        1.0, -1.0, -1.0, 1.0,
        -1.0, 1.0, -1.0, 1.0,
        -1.0, -1.0, 1.0, -1.0,
    ];
    let mut initializer = vec![from_f32("W", &[3, 4], &w), from_f32("B", &[4], &[0.0; 4])];
    if matches!(norm, Norm::ConstantNodes) {
        let mut constants: Vec<NodeProto> = inits.drain(..).map(constant_node).collect();
        constants.append(&mut nodes);
        nodes = constants;
    }
    initializer.extend(inits);
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: format!("{norm:?}"),
            node: nodes,
            initializer,
            input: vec![batched("input", &[3, 16, 16])],
            output: vec![batched("logits", &[4])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto).unwrap()
}

fn save(model: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, model.to_bytes()).unwrap();
    p
}

fn options(flags: Flags) -> koala_train::eval::ClassifierEvalOptions {
    koala_train::eval::ClassifierEvalOptions {
        flags,
        batch_size: 8,
        threads: Some(1),
        ..Default::default()
    }
}

fn eval(path: &Path, data: &Path, flags: Flags) -> anyhow::Result<koala_train::eval::EvalResult> {
    let model = Model::load(path).unwrap();
    koala_train::eval::evaluate_classifier_file(path, &model, data, &options(flags)).map(|r| r.0)
}

#[test]
fn the_default_mean_and_std_follow_the_models_own_normalisation() {
    let plain = ImageInput::of_model(&model(Norm::Plain)).unwrap();
    assert_eq!(plain.in_graph, InGraphNormalisation::None);
    assert_eq!(plain.default_mean(), koala_data::IMAGENET_MEAN.to_vec());
    assert_eq!(plain.default_std(), koala_data::IMAGENET_STD.to_vec());
    for (norm, kind, std) in [
        (Norm::MeanStd, InGraphNormalisation::UnitRange, 1.0),
        (Norm::Div255, InGraphNormalisation::RawPixels, 1.0 / 255.0),
        (Norm::Mul255, InGraphNormalisation::RawPixels, 1.0 / 255.0),
        (Norm::Caffe, InGraphNormalisation::RawPixels, 1.0 / 255.0),
        (Norm::ConstantNodes, InGraphNormalisation::UnitRange, 1.0),
    ] {
        let input = ImageInput::of_model(&model(norm)).unwrap();
        assert_eq!(input.in_graph, kind, "{norm:?}");
        assert_eq!(input.default_mean(), vec![0.0; 3], "{norm:?}");
        assert_eq!(input.default_std(), vec![std; 3], "{norm:?}");
        let line = input.describe();
        assert!(
            line.contains("the model normalises inside") && line.contains("Sub 'mean'"),
            "{line}"
        );
    }
    let line = ImageInput::of_model(&model(Norm::Div255))
        .unwrap()
        .describe();
    assert!(
        line.contains("(Div 'scale', Sub 'mean', Div 'std')") && line.contains("std 1/255"),
        "{line}"
    );
}

/// On the toy colour set every in-graph variant, fed its default, scores every image right
/// and gives the same loss as the [0, 1] model fed `--mean 0 --std 1` explicitly; ImageNet
/// statistics on top of the model's own (the old default) give another loss.
#[test]
fn eval_feeds_what_the_model_normalises_and_scores_the_toy_set() {
    let (tmp, data) = common::scratch_with_data(4);
    let unit = save(&model(Norm::MeanStd), tmp.path(), "unit.onnx");
    let explicit = Flags {
        mean: Some(vec![0.0; 3]),
        std: Some(vec![1.0; 3]),
        ..Flags::default()
    };
    let reference = eval(&unit, &data, explicit).unwrap();
    assert_eq!(reference.accuracy, 1.0, "{reference:?}");
    for norm in IN_GRAPH {
        let path = save(&model(norm), tmp.path(), &format!("{norm:?}.onnx"));
        let r = eval(&path, &data, Flags::default()).unwrap();
        assert_eq!(r.accuracy, 1.0, "{norm:?}: {r:?}");
        assert!(
            (r.loss - reference.loss).abs() <= 1e-5 * reference.loss.max(1e-3),
            "{norm:?}: {r:?} vs {reference:?}"
        );
    }
    let twice = Flags {
        mean: Some(koala_data::IMAGENET_MEAN.to_vec()),
        std: Some(koala_data::IMAGENET_STD.to_vec()),
        ..Flags::default()
    };
    let twice = eval(&unit, &data, twice).unwrap();
    assert!((twice.loss - reference.loss).abs() > 1e-2, "{twice:?}");
}

/// Training and the export use the same default and record it in the file's metadata, so
/// `koala eval` of the export (no flags) scores as the run's final evaluation did.
#[test]
fn a_run_records_the_in_graph_default_in_its_export() {
    let (tmp, data) = common::scratch_with_data(4);
    for (norm, std) in [
        (Norm::MeanStd, "1,1,1"),
        (Norm::Div255, "0.003921569,0.003921569,0.003921569"),
        (Norm::ConstantNodes, "1,1,1"),
    ] {
        let path = save(&model(norm), tmp.path(), &format!("{norm:?}.onnx"));
        let cfg = TrainConfig {
            model: path,
            eval_data: Some(data.clone()),
            augment: false,
            epochs: 1,
            ..common::fast_config(&data, &tmp.path().join(format!("run_{norm:?}")))
        };
        let s = koala_train::finetune(cfg).unwrap();
        let m = Model::load(&s.export).unwrap();
        let get = |k: &str| {
            m.proto
                .metadata_props
                .iter()
                .find(|p| p.key == k)
                .map(|p| p.value.clone())
        };
        assert_eq!(get(keys::MEAN).as_deref(), Some("0,0,0"), "{norm:?}");
        assert_eq!(get(keys::STD).as_deref(), Some(std), "{norm:?}");
        let again = eval(&s.export, &data, Flags::default()).unwrap();
        assert_eq!(again.accuracy, s.after.accuracy, "{norm:?}");
        assert!((again.loss - s.after.loss).abs() <= 1e-5, "{norm:?}");
    }
}

/// `koala eval --image-size 24` on a model fixed at 16×16 gets finetune's check and remedy,
/// not ONNX Runtime's shape error.
#[test]
fn eval_with_the_wrong_image_size_names_the_models_size() {
    let (tmp, data) = common::scratch_with_data(1);
    let path = save(&model(Norm::MeanStd), tmp.path(), "m.onnx");
    let flags = Flags {
        image_size: Some(koala_train::config::ImageSize::square(24)),
        ..Flags::default()
    };
    let e = format!("{:#}", eval(&path, &data, flags).unwrap_err());
    assert!(
        e.contains("model input 'input' takes 16×16 images")
            && e.contains("--image-size is 24")
            && e.contains("pass --image-size 16")
            && !e.contains("buffer"),
        "{e}"
    );
}
