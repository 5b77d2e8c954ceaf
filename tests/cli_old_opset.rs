//! An opset-9, IR-3 classifier in the model zoo's form — every initializer also listed as a
//! graph input, the batch fixed to 1, Pad and Clip with their pre-opset-11 attributes,
//! BatchNormalization with `spatial`, Dropout with `ratio`, a Softmax head — is checked and
//! fine-tuned end to end (issue 12): `koala check` passes with the upgrade note, `koala
//! finetune` runs and exports, and the export keeps opset 9, IR 3 and the user's input list,
//! and reloads in ONNX Runtime with the trained weights.

use koala::graph::attrs::{a_float, a_int, a_ints, a_string};
use koala::graph::proto::{
    DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};
use koala::graph::training::value_info;
use koala::graph::{tensor, Model};
use std::path::{Path, PathBuf};
use support::cli::{koala, number_after, ok, text};

mod support;

fn node(
    op: &str,
    inputs: &[&str],
    out: &str,
    attribute: Vec<koala::graph::proto::AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: format!("{}_{out}", op.to_lowercase()),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute,
        ..Default::default()
    }
}

/// Deterministic small weights (no RNG needed for a smoke run).
fn weight(name: &str, dims: &[i64], scale: f32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| scale * (((i * 7919) % 13) as f32 / 6.0 - 1.0))
        .collect();
    tensor::from_f32(name, dims, &v)
}

/// data[1,3,16,16] → Pad-2 → Conv → BatchNormalization → Clip-6(0, 6) → MaxPool →
/// Dropout-7(ratio) → Flatten → Gemm → Softmax-1 (axis 1), in `opset`. BatchNormalization has
/// `spatial = 1` below opset 9 (BatchNormalization-9 removed the attribute, and ONNX Runtime
/// refuses it there).
fn old_cnn(opset: i64) -> Model {
    let bn_attrs = if opset < 9 {
        vec![a_float("epsilon", 1e-5), a_int("spatial", 1)]
    } else {
        vec![a_float("epsilon", 1e-5)]
    };
    let inits = vec![
        weight("conv_w", &[4, 3, 3, 3], 0.3),
        weight("conv_b", &[4], 0.1),
        tensor::from_f32("bn_scale", &[4], &[1.0, 0.9, 1.1, 1.2]),
        tensor::from_f32("bn_bias", &[4], &[0.0, 0.1, -0.1, 0.05]),
        tensor::from_f32("bn_mean", &[4], &[0.1, -0.1, 0.0, 0.2]),
        tensor::from_f32("bn_var", &[4], &[1.0, 0.5, 2.0, 1.5]),
        weight("fc_w", &[2, 256], 0.05),
        weight("fc_b", &[2], 0.01),
    ];
    let nodes = vec![
        node(
            "Pad",
            &["data"],
            "padded",
            vec![
                a_ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
                a_string("mode", "constant"),
            ],
        ),
        node(
            "Conv",
            &["padded", "conv_w", "conv_b"],
            "conv",
            vec![a_ints("kernel_shape", &[3, 3])],
        ),
        node(
            "BatchNormalization",
            &["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            "bn",
            bn_attrs,
        ),
        node(
            "Clip",
            &["bn"],
            "relu6",
            vec![a_float("min", 0.0), a_float("max", 6.0)],
        ),
        node(
            "MaxPool",
            &["relu6"],
            "pool",
            vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])],
        ),
        node("Dropout", &["pool"], "drop", vec![a_float("ratio", 0.5)]),
        node("Flatten", &["drop"], "flat", vec![a_int("axis", 1)]),
        node(
            "Gemm",
            &["flat", "fc_w", "fc_b"],
            "logits",
            vec![a_int("transB", 1)],
        ),
        node("Softmax", &["logits"], "prob", vec![]),
    ];
    let mut inputs = vec![value_info("data", DataType::Float, &[1, 3, 16, 16])];
    inputs.extend(inits.iter().map(|t| {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        value_info(&t.name, DataType::Float, &dims)
    }));
    let proto = ModelProto {
        ir_version: 3,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "koala cli_old_opset test".into(),
        graph: Some(GraphProto {
            name: "old_cnn".into(),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: vec![value_info("prob", DataType::Float, &[1, 2])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto).unwrap()
}

/// 2 classes × 4 RGB 16×16 PNGs.
fn image_folder(dir: &Path) -> PathBuf {
    let data = dir.join("images");
    for (class, level) in [("dark", 40u8), ("bright", 210u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..4u8 {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([level, level.wrapping_add(i), ((x + y) as u8) ^ i])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    data
}

#[test]
fn an_opset_9_ir_3_cnn_checks_fine_tunes_and_exports_in_its_own_opset() {
    check_finetune_export(9);
}

/// Opset 8: BatchNormalization still carries `spatial`.
#[test]
fn an_opset_8_cnn_with_batch_normalization_spatial_fine_tunes() {
    check_finetune_export(8);
}

fn check_finetune_export(opset: i64) {
    let dir = tempfile::tempdir().unwrap();
    let model = old_cnn(opset);
    let path = dir.path().join("old_cnn.onnx");
    std::fs::write(&path, model.to_bytes()).unwrap();
    let images = image_folder(dir.path());

    let check = koala(&["check", path.to_str().unwrap()]);
    let out = text(&check.stdout);
    assert!(
        check.status.success(),
        "check failed:\n{out}{}",
        text(&check.stderr)
    );
    assert!(
        out.contains(&format!("opset {opset} upgraded to 17 for training; the exported file keeps opset {opset} and the original graph")),
        "{out}"
    );
    assert!(!out.contains("error:"), "{out}");
    // The weights listed as inputs are not reported as data inputs.
    assert!(out.contains("inputs: data [1, 3, 16, 16]\n"), "{out}");

    let run_dir = dir.path().join("run");
    let log = ok(&[
        "finetune",
        "--model",
        path.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
        "--batch-size",
        "1",
        "--accumulate",
        "2",
        "--max-steps",
        "2",
        "--val-fraction",
        "0.25",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    // The export check: ORT reloads the opset-9 file and its output matches the opset-17
    // training graph's (the same f32 math, with BatchNormalization folded into the Conv in
    // the training graph: a few ulps; a wrong upgrade is off by ≳ 1e-2).
    let diff = number_after(&log, "max |Δ| vs training graph");
    assert!(diff <= 1e-5, "export vs training graph: {diff:e}\n{log}");
    let exported_path = run_dir.join("model.onnx");
    assert!(
        exported_path.exists(),
        "no export in {}:\n{log}",
        run_dir.display()
    );
    let exported = Model::load(&exported_path).unwrap();
    assert_eq!(exported.opset(), opset, "{log}");
    assert_eq!(exported.proto.ir_version, 3);
    let names =
        |m: &Model| -> Vec<String> { m.graph().input.iter().map(|i| i.name.clone()).collect() };
    assert_eq!(names(&exported), names(&model));
    let ops =
        |m: &Model| -> Vec<String> { m.graph().node.iter().map(|n| n.op_type.clone()).collect() };
    assert_eq!(
        ops(&exported),
        ops(&model),
        "the export keeps the user's graph"
    );
    // Trained: some weight changed.
    let w = |m: &Model, n: &str| {
        tensor::to_f32(m.graph().initializer.iter().find(|t| t.name == n).unwrap()).unwrap()
    };
    assert_ne!(
        w(&exported, "fc_w"),
        w(&model, "fc_w"),
        "fc_w did not change"
    );

    // The export reloads and runs in ONNX Runtime as an opset-9 file.
    let mut session = koala::runtime::Session::from_bytes(
        &exported.to_bytes(),
        &koala::runtime::SessionOptions::default(),
    )
    .unwrap();
    let x = vec![0.5f32; 3 * 16 * 16];
    let outs = session
        .run(&[("data", koala::runtime::TensorView::f32(&x, &[1, 3, 16, 16]))])
        .unwrap();
    let p = outs[0].as_f32().unwrap();
    assert_eq!(p.len(), 2);
    assert!((p[0] + p[1] - 1.0).abs() < 1e-5, "softmax output {p:?}");
}

/// A refused upgrade (BatchNormalization `spatial = 0`, opset 8) is the one error `koala
/// check` reports: the rest of the old graph is not judged by rules written for opset 11+
/// (which would name Gemm, Clip… as "no gradient rule" with a --freeze advice that freezes
/// everything), and the remedy is the message's own.
#[test]
fn a_refused_upgrade_is_the_only_error_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = old_cnn(8);
    let bn = model
        .graph_mut()
        .node
        .iter_mut()
        .find(|n| n.op_type == "BatchNormalization")
        .unwrap();
    bn.attribute.retain(|a| a.name != "spatial");
    bn.attribute.push(a_int("spatial", 0));
    let path = dir.path().join("spatial0.onnx");
    std::fs::write(&path, model.to_bytes()).unwrap();
    let check = koala(&["check", path.to_str().unwrap()]);
    let out = format!("{}{}", text(&check.stdout), text(&check.stderr));
    assert!(!check.status.success(), "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains("node #2 'batchnormalization_bn' (BatchNormalization) of opset 8 cannot be upgraded to opset 17: spatial=0"),
        "{out}"
    );
    assert!(!out.contains("no gradient rule"), "{out}");
}
