//! A second, independent runtime for the exported model: tract, a pure-Rust
//! ONNX executor that shares no code with ONNX Runtime. koala trains with ORT,
//! so an export that only ORT's leniency accepts would pass ORT's own reload
//! check; agreement with tract is evidence that the file is plain ONNX that
//! other runtimes load too.

use anyhow::{Context, Result};
use std::path::Path;
use tract_onnx::prelude::*;

/// Output 0 of the ONNX model at `model` for one input of `shape` (float32, or uint8
/// for a model that takes raw pixels), as computed by tract.
pub fn first_output(
    model: &Path,
    shape: &[usize],
    input: &koala_data::ModelPixels<'_>,
) -> Result<Vec<f32>> {
    output(model, 0, shape, input)
}

/// Output `index` of the ONNX model at `model` for one input of `shape`, as computed by
/// tract (a classifier's trained output need not be first).
///
/// tract gets the concrete input shape and nothing else: the file's `value_info`
/// and output shapes are ignored. They are only hints, and torch exports write
/// them with named dimensions (`batch`) that tract treats as a symbol of its own,
/// so checking them against the concrete batch failed ("Impossible to unify
/// Sym(batch) with Val(2)") on files every runtime runs. Shapes are inferred from
/// the input instead, so an error here means tract truly cannot run the model.
pub fn output(
    model: &Path,
    index: usize,
    shape: &[usize],
    input: &koala_data::ModelPixels<'_>,
) -> Result<Vec<f32>> {
    let (fact, tensor) = match input {
        koala_data::ModelPixels::F32(v) => (f32::fact(shape), Tensor::from_shape(shape, v)),
        koala_data::ModelPixels::U8(v) => (u8::fact(shape), Tensor::from_shape(shape, v)),
    };
    let tensor = tensor.context("building tract's input tensor")?;
    let plan = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .model_for_path(model)
        .and_then(|m| m.with_input_fact(0, fact.into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .with_context(|| format!("tract could not load '{}'", model.display()))?;
    let outputs = plan
        .run(tvec!(tensor.into()))
        .with_context(|| format!("tract could not run '{}'", model.display()))?;
    let out = outputs
        .get(index)
        .with_context(|| format!("tract returned no output {index}"))?
        .to_plain_array_view::<f32>()
        .with_context(|| format!("tract's output {index} is not float32"))?;
    Ok(out.iter().copied().collect())
}

/// Largest |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tiny_cnn(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/reference/tiny_cnn")
            .join(file)
    }

    fn f32s(path: &Path) -> Vec<f32> {
        std::fs::read(path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// tract reproduces PyTorch's logits of the tiny CNN (f64 forward cast to
    /// f32). Tolerance 1e-5: logits are O(1) and f32 rounding in a different
    /// kernel order stays within ~100 ulps; a wrong op would be off by ≥ 1e-2.
    #[test]
    fn tract_matches_pytorch_on_the_tiny_cnn() {
        let x = f32s(&tiny_cnn("inputs/input.f32"));
        let want = f32s(&tiny_cnn("outputs/logits.f32"));
        let got = first_output(
            &tiny_cnn("model.onnx"),
            &[3, 3, 16, 16],
            &koala_data::ModelPixels::F32(x.into()),
        )
        .unwrap();
        assert_eq!(got.len(), want.len());
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "tract vs PyTorch logits: max |Δ| {d:e}");
    }

    /// What shape inference in a torch export writes into `value_info`: every intermediate
    /// tensor with `batch` as its first dimension (here the other dimensions are left
    /// unknown: the batch is what clashed with the concrete input shape).
    fn with_batch_value_info(
        model: &koala_graph::Model,
        batch: koala_graph::proto::dimension::Value,
    ) -> koala_graph::Model {
        use koala_graph::proto::{type_proto, Dimension, TensorShapeProto};
        use koala_graph::proto::{TypeProto, ValueInfoProto};
        let rank = |op: &str| match op {
            "Flatten" | "Gemm" => Some(2),
            "Constant" | "Cast" => None,
            _ => Some(4),
        };
        let mut m = model.clone();
        let g = m.graph_mut();
        let infos: Vec<ValueInfoProto> = g
            .node
            .iter()
            .filter_map(|n| Some((n.output.first()?.clone(), rank(&n.op_type)?)))
            .map(|(name, rank)| {
                let mut dim = vec![Dimension::default(); rank];
                dim[0].value = Some(batch.clone());
                ValueInfoProto {
                    name,
                    r#type: Some(TypeProto {
                        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                            elem_type: koala_graph::proto::DataType::Float as i32,
                            shape: Some(TensorShapeProto { dim }),
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        g.value_info = infos;
        m
    }

    /// Issue 8 fault 10: a named batch dimension in `value_info` (torch exports) made tract
    /// refuse a batch of 3 ("Impossible to unify Sym(batch) with Val(3)"); so did a stale
    /// concrete one (shapes inferred at batch 1 on a file whose input batch is free). Both
    /// must run and agree with PyTorch as closely as the plain file does.
    #[test]
    fn batch_dimensions_in_value_info_do_not_stop_tract() {
        use koala_graph::proto::dimension::Value;
        let plain = koala_graph::Model::load(&tiny_cnn("model.onnx")).unwrap();
        let x = f32s(&tiny_cnn("inputs/input.f32"));
        let want = f32s(&tiny_cnn("outputs/logits.f32"));
        for batch in [Value::DimParam("batch".into()), Value::DimValue(1)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny_cnn_with_value_info.onnx");
            let model = with_batch_value_info(&plain, batch.clone());
            assert!(model.graph().value_info.len() >= 10);
            koala_graph::model::write_atomic(&path, &model.to_bytes()).unwrap();
            let got = first_output(
                &path,
                &[3, 3, 16, 16],
                &koala_data::ModelPixels::F32(x.as_slice().into()),
            )
            .unwrap_or_else(|e| panic!("value_info batch {batch:?}: {e:#}"));
            let d = max_abs_diff(&got, &want);
            assert!(
                got.len() == want.len() && d <= 1e-5,
                "value_info batch {batch:?}: tract vs PyTorch logits: max |Δ| {d:e}"
            );
        }
    }

    /// The whole path: fine-tuning such a file (the export keeps its `value_info`) reports
    /// tract's cross-check as a number, not as the warning.
    #[test]
    fn a_run_on_a_file_with_batch_value_info_is_cross_checked_by_tract() {
        use koala_graph::proto::dimension::Value;
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("torch_style.onnx");
        let plain = koala_graph::Model::load(&tiny_cnn("model.onnx")).unwrap();
        let with_info = with_batch_value_info(&plain, Value::DimParam("batch".into()));
        koala_graph::model::write_atomic(&model, &with_info.to_bytes()).unwrap();
        let cfg = crate::TrainConfig {
            model,
            data: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion_mnist_small"),
            image_size: crate::config::ImageSize::square(16),
            batch_size: 4,
            limit_train: Some(16),
            max_steps: Some(1),
            threads: Some(1),
            run_dir: dir.path().join("run"),
            ..crate::TrainConfig::default()
        };
        let summary = crate::finetune(cfg).unwrap();
        let exported = koala_graph::Model::load(&summary.export).unwrap();
        assert!(
            !exported.graph().value_info.is_empty(),
            "the export keeps value_info, so this test exercises it"
        );
        match summary.export_tract {
            Ok(d) => assert!(d <= 1e-5, "tract vs ORT on the export: max |Δ| {d:e}"),
            Err(e) => panic!("tract cross-check warned: {e}"),
        }
    }

    /// The warning stays for a model tract really cannot run: an operator it does not know.
    #[test]
    fn an_operator_tract_does_not_know_is_still_an_error() {
        use koala_graph::proto::{NodeProto, OperatorSetIdProto};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unknown_op.onnx");
        let mut model = koala_graph::Model::load(&tiny_cnn("model.onnx")).unwrap();
        let g = model.graph_mut();
        let out = g.output[0].name.clone();
        let last = g.node.last_mut().unwrap();
        last.output[0] = "logits_before".into();
        g.node.push(NodeProto {
            op_type: "Frobnicate".into(),
            domain: "example.koala".into(),
            input: vec!["logits_before".into()],
            output: vec![out],
            name: "frobnicate_0".into(),
            ..Default::default()
        });
        model.proto.opset_import.push(OperatorSetIdProto {
            domain: "example.koala".into(),
            version: 1,
        });
        koala_graph::model::write_atomic(&path, &model.to_bytes()).unwrap();
        let x = f32s(&tiny_cnn("inputs/input.f32"));
        let e = first_output(
            &path,
            &[3, 3, 16, 16],
            &koala_data::ModelPixels::F32(x.as_slice().into()),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("unknown_op.onnx") && msg.contains("Frobnicate"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_onnx_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.onnx");
        std::fs::write(&path, b"this is not a protobuf model").unwrap();
        let e = first_output(
            &path,
            &[1, 3, 8, 8],
            &koala_data::ModelPixels::F32(vec![0.0; 192].into()),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("tract could not load") && msg.contains("garbage.onnx"),
            "{msg}"
        );
    }
}
