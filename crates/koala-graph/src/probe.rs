//! Shape facts by probing: run the forward graph once in ONNX Runtime with
//! every intermediate value exposed, on zero inputs of the fixed input shapes.
//!
//! Two sessions: the first only reads the element types ORT infers for every
//! value (no run); the second outputs `Shape(v)` for every value (always
//! int64, so any element type works) plus the values of int64 tensors (shape
//! arithmetic, Slice/Reshape parameters computed in the graph).

use crate::facts::{Facts, ValueFact, MAX_KEPT_INTS};
use crate::model::Model;
use crate::proto::{DataType, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use koala_runtime::{ElementType, OptimizationLevel, Session, SessionOptions, TensorView};
use std::collections::HashMap;

/// Concrete shapes for the graph inputs: name → shape.
pub type InputShapes = HashMap<String, Vec<usize>>;

/// Facts that need no run: initializers, Constant nodes, graph inputs.
pub fn static_facts(model: &Model, inputs: &InputShapes) -> Result<Facts> {
    let mut facts = Facts::default();
    let g = model.graph();
    for t in &g.initializer {
        facts.insert(&t.name, fact_of_tensor(t)?);
        keep_small_floats(&mut facts, &t.name, t);
    }
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let Some(t) = n
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
        {
            facts.insert(&n.output[0], fact_of_tensor(t)?);
            keep_small_floats(&mut facts, &n.output[0], t);
        }
    }
    for i in &g.input {
        if let Some(shape) = inputs.get(&i.name) {
            let dt = input_dtype(i).unwrap_or(DataType::Float);
            facts.insert(
                &i.name,
                ValueFact {
                    dtype: dt,
                    shape: shape.clone(),
                    ints: None,
                },
            );
        }
    }
    Ok(facts)
}

/// Small float constants keep their values (Resize's `scales` and `roi`
/// decide its interpolation weights, which its gradient rule rebuilds).
fn keep_small_floats(facts: &mut Facts, name: &str, t: &TensorProto) {
    if tensor::numel(&t.dims) <= MAX_KEPT_INTS {
        if let Ok(v) = tensor::to_f32(t) {
            facts.insert_floats(name, v.into_iter().map(f64::from).collect());
        }
    }
}

/// Values read as Resize's `roi` or `scales` (inputs 1 and 2): the probe
/// fetches them when the graph computes them.
fn resize_parameters(g: &crate::proto::GraphProto) -> std::collections::HashSet<&str> {
    g.node
        .iter()
        .filter(|n| n.op_type == "Resize")
        .flat_map(|n| n.input.iter().skip(1).take(2))
        .map(|s| s.as_str())
        .collect()
}

fn fact_of_tensor(t: &TensorProto) -> Result<ValueFact> {
    let dt = tensor::data_type(t)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n = tensor::numel(&t.dims);
    // Bools too: flags such as Dropout's training_mode arrive as constants.
    let ints =
        if matches!(dt, DataType::Int64 | DataType::Int32 | DataType::Bool) && n <= MAX_KEPT_INTS {
            tensor::to_i64(t).ok()
        } else {
            None
        };
    Ok(ValueFact {
        dtype: dt,
        shape,
        ints,
    })
}

/// The declared element type of a graph input.
pub fn input_dtype(v: &ValueInfoProto) -> Option<DataType> {
    match v.r#type.as_ref()?.value.as_ref()? {
        crate::proto::type_proto::Value::TensorType(t) => DataType::try_from(t.elem_type).ok(),
        _ => None,
    }
}

/// koala-graph's `DataType` for an element type ONNX Runtime reports; both follow the ONNX
/// `TensorProto.DataType` numbering, so the mapping is by number. Types without a number
/// (float8, 4-bit, non-tensor values) become `Undefined`, which no gradient rule accepts.
fn dtype_of(e: &ElementType) -> DataType {
    e.onnx_data_type()
        .and_then(|code| DataType::try_from(code).ok())
        .unwrap_or(DataType::Undefined)
}

/// Runs the probe and returns facts for every value of the graph.
pub fn probe(model: &Model, inputs: &InputShapes, threads: usize) -> Result<Facts> {
    let mut facts = static_facts(model, inputs)?;
    let g = model.graph();
    for i in &g.input {
        if !inputs.contains_key(&i.name) && !g.initializer.iter().any(|t| t.name == i.name) {
            bail!("no shape given for graph input '{}'", i.name);
        }
    }
    let values: Vec<String> = g
        .node
        .iter()
        .filter(|n| n.op_type != "Constant")
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && facts.get(o).is_none())
        .cloned()
        .collect();
    if values.is_empty() {
        return Ok(facts);
    }
    // No graph optimisations: the probe runs once, so they buy nothing, and
    // ORT 1.31's constant folding of the probe's Shape nodes breaks graphs
    // whose subgraphs (If/Loop bodies) read outer values ("Node input 'h' is
    // not a graph input…"), which must reach `build`'s clear error instead.
    let opts = SessionOptions {
        intra_threads: Some(threads.max(1)),
        optimization: OptimizationLevel::Disable,
        ..SessionOptions::default()
    };

    // Both sessions run a copy whose large float weights are inputs fed with zeros.
    let (base, weights) = probe_model(model);
    // Session 1: element types only.
    let mut typed = base.clone();
    let gg = typed.graph.as_mut().unwrap();
    gg.output = values
        .iter()
        .map(|v| ValueInfoProto {
            name: v.clone(),
            ..Default::default()
        })
        .collect();
    let s1 =
        Session::from_bytes(&prost::Message::encode_to_vec(&typed), &opts).with_context(|| {
            format!(
                "ONNX Runtime could not load {} to infer its shapes",
                model.display_name()
            )
        })?;
    let dtypes: HashMap<String, DataType> = s1
        .outputs()
        .iter()
        .map(|o| (o.name.clone(), dtype_of(&o.element_type)))
        .collect();
    drop(s1);
    drop(typed);

    // Session 2: Shape(v) for every value, plus small int64 values.
    let mut probe = base;
    let pg = probe.graph.as_mut().unwrap();
    pg.output.clear();
    let mut wanted: Vec<(String, String, bool)> = Vec::new(); // (value, shape output, keep ints)
    let float_params = resize_parameters(model.graph());
    // Each Shape node goes right after the node that produces its value, so ORT frees
    // the value as early as the model itself would: appended at the end, they kept every
    // activation of the forward alive at once (the graph build's memory peak).
    let mut shape_nodes: HashMap<&str, Vec<NodeProto>> = HashMap::new();
    for (k, v) in values.iter().enumerate() {
        let sname = format!("koala_probe_shape_{k}");
        shape_nodes.entry(v.as_str()).or_default().push(NodeProto {
            op_type: "Shape".into(),
            input: vec![v.clone()],
            output: vec![sname.clone()],
            name: format!("koala_probe_{k}"),
            ..Default::default()
        });
        pg.output.push(ValueInfoProto {
            name: sname.clone(),
            ..Default::default()
        });
        let is_int = dtypes.get(v) == Some(&DataType::Int64);
        if is_int || float_params.contains(v.as_str()) {
            pg.output.push(ValueInfoProto {
                name: v.clone(),
                ..Default::default()
            });
        }
        wanted.push((v.clone(), sname, is_int));
    }
    let nodes = std::mem::take(&mut pg.node);
    for n in nodes {
        let after: Vec<NodeProto> = n
            .output
            .iter()
            .filter_map(|o| shape_nodes.remove(o.as_str()))
            .flatten()
            .collect();
        pg.node.push(n);
        pg.node.extend(after);
    }
    let mut s2 =
        Session::from_bytes(&prost::Message::encode_to_vec(&probe), &opts).with_context(|| {
            format!(
                "ONNX Runtime could not load the shape probe of {}",
                model.display_name()
            )
        })?;
    let feeds = zero_feeds(model, inputs)?;
    // One zero buffer serves every weight (ORT reads inputs in place, without a copy).
    let largest = |dt| {
        weights
            .iter()
            .filter(|w| w.2 == dt)
            .map(|w| w.1.iter().product::<usize>())
            .max()
            .unwrap_or(0)
    };
    let (zeros32, zeros64) = (
        vec![0f32; largest(DataType::Float)],
        vec![0f64; largest(DataType::Double)],
    );
    let mut views: Vec<(&str, TensorView)> = feeds
        .iter()
        .map(|(n, s, d)| {
            let v = match d {
                Feed::F32(x) => TensorView::f32(x, s),
                Feed::F64(x) => TensorView::f64(x, s),
                Feed::I64(x) => TensorView::i64(x, s),
                Feed::U8(x) => TensorView::u8(x, s),
            };
            (n.as_str(), v)
        })
        .collect();
    for (name, shape, dt) in &weights {
        let n: usize = shape.iter().product();
        let v = match dt {
            DataType::Double => TensorView::f64(&zeros64[..n], shape),
            _ => TensorView::f32(&zeros32[..n], shape),
        };
        views.push((name.as_str(), v));
    }
    let outs = s2.run(&views).with_context(|| {
        format!(
            "ONNX Runtime failed to run {} on zero inputs of the given shapes",
            model.display_name()
        )
    })?;
    let by_name: HashMap<&str, &koala_runtime::OwnedTensor> =
        outs.iter().map(|o| (o.name.as_str(), o)).collect();
    for (v, sname, is_int) in wanted {
        let shape: Vec<usize> = by_name
            .get(sname.as_str())
            .and_then(|t| t.as_i64())
            .context("probe lost a shape output")?
            .iter()
            .map(|&d| d as usize)
            .collect();
        let ints = if is_int {
            by_name
                .get(v.as_str())
                .and_then(|t| t.as_i64())
                .filter(|x| x.len() <= MAX_KEPT_INTS)
                .map(|x| x.to_vec())
        } else {
            None
        };
        if let Some(t) = by_name.get(v.as_str()).filter(|_| !is_int) {
            let floats = t
                .as_f32()
                .map(|x| x.iter().map(|&f| f as f64).collect::<Vec<f64>>())
                .or_else(|| t.as_f64().map(|x| x.to_vec()));
            if let Some(f) = floats.filter(|f| f.len() <= MAX_KEPT_INTS) {
                facts.insert_floats(&v, f);
            }
        }
        let dtype = dtypes.get(&v).copied().unwrap_or(DataType::Undefined);
        facts.insert(&v, ValueFact { dtype, shape, ints });
    }
    Ok(facts)
}

/// The probe's copy of `model`: float32/float64 initializers with more than
/// [`MAX_KEPT_INTS`] elements become graph inputs (returned as name, shape, type, to be fed
/// zeros), so neither this copy, its serialised bytes nor ORT's sessions hold the weights:
/// three copies of 0.5 GB for SmolLM2-135M, the graph build's memory peak before. Shapes
/// do not depend on weight values, and the small float constants whose values the probe
/// records (Resize's `scales`) stay initializers.
fn probe_model(model: &Model) -> (ModelProto, Vec<(String, Vec<usize>, DataType)>) {
    let is_weight = |t: &TensorProto| {
        tensor::numel(&t.dims) > MAX_KEPT_INTS
            && matches!(
                DataType::try_from(t.data_type),
                Ok(DataType::Float | DataType::Double)
            )
    };
    let mut copy = model.clone_without_initializers(is_weight);
    let g = copy.graph_mut();
    let mut weights = Vec::new();
    for t in model.graph().initializer.iter().filter(|t| is_weight(t)) {
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let dt = DataType::try_from(t.data_type).unwrap_or(DataType::Float);
        // Models before IR 4 list initializers among the inputs already.
        if !g.input.iter().any(|i| i.name == t.name) {
            g.input
                .push(crate::training::value_info(&t.name, dt, &shape));
        }
        weights.push((t.name.clone(), shape, dt));
    }
    g.output.clear();
    (copy.proto, weights)
}

enum Feed {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

fn zero_feeds(model: &Model, inputs: &InputShapes) -> Result<Vec<(String, Vec<usize>, Feed)>> {
    let g = model.graph();
    let mut out = Vec::new();
    for i in &g.input {
        let Some(shape) = inputs.get(&i.name) else {
            continue;
        };
        let n: usize = shape.iter().product();
        let feed = match input_dtype(i).unwrap_or(DataType::Float) {
            DataType::Float => Feed::F32(vec![0.0; n]),
            DataType::Double => Feed::F64(vec![0.0; n]),
            DataType::Int64 => Feed::I64(vec![0; n]),
            DataType::Uint8 => Feed::U8(vec![0; n]),
            other => bail!(
                "graph input '{}' has type {other:?}; koala feeds float32, float64, int64 or uint8 inputs",
                i.name
            ),
        };
        out.push((i.name.clone(), shape.clone(), feed));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element type ONNX Runtime names maps to the ONNX data type of the same name
    /// (ONNX spec `TensorProto.DataType`); the old string matching mapped "uint8" by substring.
    #[test]
    fn element_types_map_to_the_onnx_data_type_of_the_same_name() {
        let cases = [
            (ElementType::F32, DataType::Float),
            (ElementType::U8, DataType::Uint8),
            (ElementType::I8, DataType::Int8),
            (ElementType::U16, DataType::Uint16),
            (ElementType::I16, DataType::Int16),
            (ElementType::I32, DataType::Int32),
            (ElementType::I64, DataType::Int64),
            (ElementType::String, DataType::String),
            (ElementType::Bool, DataType::Bool),
            (ElementType::F16, DataType::Float16),
            (ElementType::F64, DataType::Double),
            (ElementType::U32, DataType::Uint32),
            (ElementType::U64, DataType::Uint64),
            (ElementType::Complex64, DataType::Complex64),
            (ElementType::Complex128, DataType::Complex128),
            (ElementType::BF16, DataType::Bfloat16),
            (
                ElementType::Other("Float8E4M3FN".into()),
                DataType::Undefined,
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(e, d)| dtype_of(e) != *d)
            .map(|(e, d)| format!("{e} → {:?}, want {d:?}", dtype_of(e)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
