//! Writing the updated model: the original graph (with a replaced head, if
//! any) with the trained weights written into its initializers, or back into
//! the Constant nodes they came from. Nothing else changes: opset, metadata,
//! names and dynamic axes are preserved. Files over 2 GB put large tensors
//! in an external data file (protobuf's message limit).

use crate::model::{write_atomic, Model};
use crate::proto::{DataLocation, StringStringEntryProto, TensorProto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use prost::Message;
use std::path::Path;

/// Protobuf messages cannot exceed 2 GiB.
const PROTOBUF_LIMIT: usize = 2_000_000_000;
/// Tensors at least this large go to the external data file when needed.
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Returns a copy of `model` with `weights` (name → values) written in.
/// Initializers that duplicate a written tensor (a tied weight the exporter
/// wrote twice, see `tied.rs`) get its values too, so the file stays tied.
pub fn with_weights<'a>(
    model: &Model,
    weights: impl IntoIterator<Item = (&'a str, &'a [f32])>,
) -> Result<Model> {
    let weights: Vec<(&str, &[f32])> = weights.into_iter().collect();
    let copies = crate::tied::find(model);
    let by_name: std::collections::HashMap<&str, &[f32]> = weights.iter().copied().collect();
    let tied_values: Vec<(String, Vec<f32>)> =
        crate::tied::copies_to_write(model, &copies, &by_name)
            .into_iter()
            .filter(|(copy, _)| !by_name.contains_key(copy.as_str()))
            .collect();
    let mut out = model.clone();
    let g = out.graph_mut();
    let all = weights
        .into_iter()
        .chain(tied_values.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    for (name, values) in all {
        if let Some(t) = g.initializer.iter_mut().find(|t| t.name == name) {
            tensor::overwrite_f32(t, values)?;
            continue;
        }
        let node = g
            .node
            .iter_mut()
            .find(|n| n.op_type == "Constant" && n.output.first().map(|s| s.as_str()) == Some(name))
            .with_context(|| {
                format!("the model has no initializer or Constant node named '{name}' to write")
            })?;
        let t = node
            .attribute
            .iter_mut()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_mut())
            .context("Constant node without a tensor value")?;
        tensor::overwrite_f32(t, values)?;
    }
    sync_initializer_inputs(g);
    Ok(out)
}

/// IR < 4 files also declare every initializer as a graph input. When a replaced head
/// changed an initializer's shape (e.g. `fc8_b` from 1000 to 2 classes), the declaration must
/// follow, or ONNX Runtime refuses the file ("Can't merge shape info"). The input list itself
/// stays the user's.
fn sync_initializer_inputs(g: &mut crate::proto::GraphProto) {
    use crate::proto::{dimension, type_proto, Dimension, TensorShapeProto};
    for i in g.input.iter_mut() {
        let Some(t) = g.initializer.iter().find(|t| t.name == i.name) else {
            continue;
        };
        let Some(type_proto::Value::TensorType(tt)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let declared: Option<Vec<Option<i64>>> = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        });
        let actual: Vec<Option<i64>> = t.dims.iter().map(|&d| Some(d)).collect();
        if declared.is_some_and(|d| d != actual) {
            tt.shape = Some(TensorShapeProto {
                dim: t
                    .dims
                    .iter()
                    .map(|&d| Dimension {
                        value: Some(dimension::Value::DimValue(d)),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
    }
}

/// Writes `model` to `path` atomically. Refuses to overwrite `input` (the
/// user's original model). Models over 2 GB get an external data file
/// `<file name>.data` next to them.
pub fn save(model: &Model, path: &Path, input: Option<&Path>) -> Result<()> {
    if let Some(inp) = input {
        let same = match (std::fs::canonicalize(inp), std::fs::canonicalize(path)) {
            (Ok(a), Ok(b)) => a == b,
            _ => inp == path,
        };
        if same {
            bail!(
                "refusing to overwrite the input model '{}'; choose another output path",
                path.display()
            );
        }
    }
    let mut proto = model.proto.clone();
    if proto.encoded_len() > PROTOBUF_LIMIT {
        let fname = format!(
            "{}.data",
            path.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("model.onnx")
        );
        let data = externalize(
            proto.graph.as_mut().unwrap().initializer.as_mut_slice(),
            &fname,
        );
        write_atomic(&path.with_file_name(&fname), &data)?;
    }
    write_atomic(path, &proto.encode_to_vec())
        .with_context(|| format!("cannot write the model to '{}'", path.display()))
}

/// Moves the bytes of tensors of at least 1 KiB into one buffer (each at a 64-byte offset,
/// so ONNX Runtime can memory-map them) and points them at `location`, ONNX's external-data
/// form; smaller tensors (norms) stay inline. Returns the buffer to write to `location`.
pub fn externalize(tensors: &mut [TensorProto], location: &str) -> Vec<u8> {
    let mut data = Vec::new();
    for t in tensors
        .iter_mut()
        .filter(|t| t.raw_data.len() >= EXTERNAL_MIN_BYTES)
    {
        while data.len() % 64 != 0 {
            data.push(0);
        }
        let offset = data.len();
        data.extend_from_slice(&t.raw_data);
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = DataLocation::External as i32;
        t.raw_data = Vec::new();
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced head shrank `b` from 5 to 3 values: its IR-3 input declaration follows
    /// (ONNX Runtime refuses a file whose declared and actual shapes differ), the input list
    /// stays.
    #[test]
    fn initializer_input_declarations_follow_a_changed_shape() {
        use crate::proto::{DataType, GraphProto, ModelProto, OperatorSetIdProto};
        use crate::training::{declared_dims, value_info};
        let proto = ModelProto {
            ir_version: 3,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 9,
            }],
            graph: Some(GraphProto {
                initializer: vec![tensor::from_f32("b", &[3], &[0.0; 3])],
                node: vec![crate::proto::NodeProto {
                    op_type: "Add".into(),
                    input: vec!["x".into(), "b".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![
                    value_info("x", DataType::Float, &[1, 3]),
                    value_info("b", DataType::Float, &[5]),
                ],
                output: vec![value_info("y", DataType::Float, &[1, 3])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = Model::from_proto(proto).unwrap();
        let out = with_weights(&m, [("b", &[1.0f32, 2.0, 3.0][..])]).unwrap();
        let g = out.graph();
        assert_eq!(g.input.len(), 2);
        assert_eq!(declared_dims(&g.input[1]), vec![Some(3)]);
        assert_eq!(declared_dims(&g.input[0]), vec![Some(1), Some(3)]);
    }

    #[test]
    fn externalized_tensors_point_into_the_data_file() {
        let mut ts = vec![
            tensor::from_f32("big", &[512], &[1.5; 512]),
            tensor::from_f32("small", &[2], &[1.0, 2.0]),
        ];
        let data = externalize(&mut ts, "m.onnx.data");
        assert_eq!(data.len(), 2048);
        assert!(ts[0].raw_data.is_empty() && tensor::is_external(&ts[0]));
        assert_eq!(ts[0].external_data[2].value, "2048");
        assert!(!tensor::is_external(&ts[1]));
    }
}
