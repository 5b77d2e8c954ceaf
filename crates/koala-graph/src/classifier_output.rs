//! Which model output an image classifier trains, and which value inside the
//! graph the cross-entropy loss reads.
//!
//! Exported classifiers often end in `Softmax` (or `LogSoftmax`), and some
//! have several outputs (`[probs, logits]`, `[features, logits]`). Applying
//! cross-entropy to probabilities trains almost nothing (the loss of a
//! confident probability vector saturates at ln(1+e⁻¹)), and training a
//! feature output as class scores leaves the real head untouched. So:
//!
//! * for the chosen output, walk back through shape-only nodes (Identity,
//!   Flatten, Reshape, Squeeze) and a Softmax/LogSoftmax on the class axis:
//!   the loss reads the Softmax's *input* (the logits; a Softmax over a
//!   pooled `[N, C, 1, 1]` map before Flatten: the map, reshaped to the
//!   output's shape by the training graph). The exported file keeps the
//!   user's graph, Softmax included; only weights change.
//! * with several outputs: an explicit `--output NAME` wins; otherwise the
//!   output whose last dimension equals the number of classes (when known)
//!   and whose producer is a classifier head (Gemm, MatMul(+Add), Conv,
//!   Conv → GlobalAveragePool…); a fully connected head over pooled
//!   features; of one head's outputs the logits over the probabilities; still
//!   ambiguous → refuse, listing the outputs and naming `--output`. When only
//!   pooled features match the class count but a fully connected head exists,
//!   refuse too, naming `--output` and `--num-classes`: that is a classifier
//!   to re-head far more often than features meant as class scores.

use crate::model::{node_label, Model};
use crate::proto::{type_proto, GraphProto, NodeProto, ValueInfoProto};
use crate::training::declared_dims;
use anyhow::{bail, Result};

/// Nodes that only reshape their first input.
const SHAPE_ONLY: &[&str] = &["Identity", "Flatten", "Reshape", "Squeeze"];

/// The output an image-classification run trains and the value its loss reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierOutput {
    /// The graph output (what the exported file returns; what accuracy and
    /// the export check read).
    pub output: String,
    /// The value the cross-entropy loss reads: `output` itself, or the input
    /// of the Softmax/LogSoftmax that produces it.
    pub logits: String,
    /// The Softmax/LogSoftmax node walked through (its label), if any.
    pub through: Option<String>,
    /// Why this output was chosen (for `check` and the run's log).
    pub reason: String,
}

impl ClassifierOutput {
    /// One line for `check` and the run's log.
    pub fn describe(&self) -> String {
        let reads = match &self.through {
            Some(node) => format!(
                "the loss reads '{}', the input of {node}, so cross-entropy sees logits, not probabilities; the exported file keeps that node",
                self.logits
            ),
            None => format!("the loss reads '{}' as logits", self.logits),
        };
        format!("trains output '{}' ({}); {reads}", self.output, self.reason)
    }

    /// One line for `koala eval`, which scores rather than trains.
    pub fn describe_scoring(&self) -> String {
        let reads = match &self.through {
            Some(node) => format!(
                "scored on '{}', the input of {node}: cross-entropy and accuracy from logits",
                self.logits
            ),
            None => format!("scored on '{}' as logits", self.logits),
        };
        format!(
            "evaluates output '{}' ({}); {reads}",
            self.output, self.reason
        )
    }
}

/// What walking back from one output finds.
#[derive(Clone, Debug)]
struct Trace {
    output: String,
    logits: String,
    through: Option<String>,
    /// The classifier-head node (label) the logits come from, if recognised.
    head: Option<String>,
    /// The head is fully connected (Gemm, MatMul, or a bias Add after one).
    dense: bool,
    last_dim: Option<i64>,
    shape: String,
}

fn producer(g: &GraphProto, v: &str) -> Option<usize> {
    g.node.iter().position(|n| n.output.iter().any(|o| o == v))
}

/// A Softmax/LogSoftmax over the class axis: axis −1, or 1 (the class axis of
/// `[N, C]`; before opset 13 axis 1 also covers `[N, C, 1, 1]`), or the last
/// axis of the output's declared rank.
fn softmax_on_classes(n: &NodeProto, opset: i64, rank: usize) -> bool {
    if !matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax") {
        return false;
    }
    let default = if opset >= 13 { -1 } else { 1 };
    let axis = crate::attrs::int(n, "axis", default);
    axis == -1 || axis == 1 || (rank > 0 && axis == rank as i64 - 1)
}

/// Walks back from `output`: shape-only nodes and at most one class-axis
/// Softmax/LogSoftmax; returns the logits value and the head it comes from.
fn trace(model: &Model, out: &ValueInfoProto) -> Trace {
    let g = model.graph();
    let dims = declared_dims(out);
    let mut v = out.name.clone();
    let mut logits = out.name.clone();
    let mut through = None;
    let mut head = None;
    let mut dense = false;
    while let Some(i) = producer(g, &v) {
        let n = &g.node[i];
        if SHAPE_ONLY.contains(&n.op_type.as_str()) && !n.input.is_empty() {
            v = n.input[0].clone();
        } else if through.is_none() && softmax_on_classes(n, model.opset(), dims.len()) {
            through = Some(node_label(i, n));
            v = n.input[0].clone();
            logits = v.clone();
        } else {
            head = is_head(g, i).then(|| node_label(i, n));
            dense = is_dense(g, i);
            break;
        }
    }
    Trace {
        output: out.name.clone(),
        logits,
        through,
        head,
        dense,
        last_dim: dims.last().copied().flatten(),
        shape: format!(
            "[{}]",
            dims.iter()
                .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether node `i` is a classifier head: Gemm, MatMul, Add of a bias to a
/// MatMul/Gemm/Conv, a Conv, or a global pooling of a Conv's (activated) map.
fn is_head(g: &GraphProto, i: usize) -> bool {
    let n = &g.node[i];
    let op_of = |v: &str| producer(g, v).map(|k| g.node[k].op_type.as_str());
    match n.op_type.as_str() {
        "Gemm" | "MatMul" | "Conv" => true,
        "Add" => n
            .input
            .iter()
            .any(|x| matches!(op_of(x), Some("MatMul" | "Gemm" | "Conv"))),
        "GlobalAveragePool" | "ReduceMean" | "AveragePool" | "GlobalMaxPool" => {
            let mut v = n.input.first().cloned().unwrap_or_default();
            for _ in 0..3 {
                match producer(g, &v) {
                    Some(k) if g.node[k].op_type == "Conv" => return true,
                    Some(k) if !g.node[k].input.is_empty() => v = g.node[k].input[0].clone(),
                    _ => return false,
                }
            }
            false
        }
        _ => false,
    }
}

/// Whether node `i` is a fully connected classifier: Gemm, MatMul, or Add of
/// a bias to one.
fn is_dense(g: &GraphProto, i: usize) -> bool {
    let n = &g.node[i];
    match n.op_type.as_str() {
        "Gemm" | "MatMul" => true,
        "Add" => n.input.iter().any(|x| {
            producer(g, x).is_some_and(|k| matches!(g.node[k].op_type.as_str(), "MatMul" | "Gemm"))
        }),
        _ => false,
    }
}

/// Whether a graph output holds floats (or declares no type).
fn is_float_output(o: &ValueInfoProto) -> bool {
    use crate::proto::DataType;
    match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => matches!(
            DataType::try_from(t.elem_type),
            Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
                | Err(_)
        ),
        _ => true,
    }
}

/// The outputs with their declared shapes, for messages.
fn listing(traces: &[Trace]) -> String {
    traces
        .iter()
        .map(|t| {
            let from = match (&t.through, &t.head) {
                (Some(s), _) => format!(", probabilities from {s}"),
                (None, Some(h)) => format!(", from classifier head {h}"),
                (None, None) => String::new(),
            };
            format!("'{}' {}{from}", t.output, t.shape)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Chooses the output to train (see the module docs). `explicit` is
/// `--output`; `classes` the number of classes when known (the data's, when
/// the head is not being replaced).
pub fn choose(
    model: &Model,
    explicit: Option<&str>,
    classes: Option<usize>,
) -> Result<ClassifierOutput> {
    let g = model.graph();
    let traces: Vec<Trace> = g.output.iter().map(|o| trace(model, o)).collect();
    let name = model.display_name();
    if let Some(want) = explicit {
        let Some(t) = traces.iter().find(|t| t.output == want) else {
            bail!(
                "{name} has no output named '{want}'; its outputs: {}. Pass --output with one of these names",
                listing(&traces)
            );
        };
        return Ok(chosen(t, "named by --output".into()));
    }
    match traces.len() {
        0 => bail!("{name} has no outputs"),
        1 => return Ok(chosen(&traces[0], "the model's only output".into())),
        _ => {}
    }
    let float: Vec<&Trace> = traces
        .iter()
        .zip(&g.output)
        .filter(|(_, o)| is_float_output(o))
        .map(|(t, _)| t)
        .collect();
    let heads: Vec<&Trace> = float.iter().copied().filter(|t| t.head.is_some()).collect();
    let mut pool = if heads.is_empty() {
        float.clone()
    } else {
        heads
    };
    let mut why = vec![];
    if let Some(c) = classes {
        let fit: Vec<&Trace> = pool
            .iter()
            .copied()
            .filter(|t| t.last_dim == Some(c as i64))
            .collect();
        refuse_pooled_over_dense(&name, &traces, &pool, &fit, c)?;
        if !fit.is_empty() {
            pool = fit;
            why.push(format!("its last dimension matches the {c} classes"));
        }
    }
    // Several heads left: a fully connected one (Gemm, MatMul) is the
    // classifier; a pooled Conv map is usually a feature output.
    let distinct = |p: &[&Trace]| {
        let mut l: Vec<&str> = p.iter().map(|t| t.logits.as_str()).collect();
        l.sort();
        l.dedup();
        l.len()
    };
    if distinct(&pool) > 1 {
        let dense: Vec<&Trace> = pool.iter().copied().filter(|t| t.dense).collect();
        if distinct(&dense) == 1 {
            pool = dense;
            why.push("a fully connected head is preferred over pooled features".into());
        }
    }
    if pool.is_empty() || distinct(&pool) > 1 {
        bail!(
            "{name} has {} outputs and koala cannot tell which one holds the class scores: {}. Pass --output NAME (finetune, check and eval take it; `output = \"NAME\"` in a config file)",
            traces.len(),
            listing(&traces)
        );
    }
    // One head: prefer its logits output over its probabilities.
    let t = pool
        .iter()
        .find(|t| t.through.is_none())
        .copied()
        .unwrap_or(pool[0]);
    if let Some(h) = &t.head {
        why.push(format!("it comes from classifier head {h}"));
    }
    if pool.len() > 1 {
        why.push("logits preferred over the probabilities of the same head".into());
    }
    if why.is_empty() {
        why.push("the only candidate".into());
    }
    Ok(chosen(t, why.join("; ")))
}

/// Refuses when only pooled features (no fully connected head) match the data's `classes`
/// while the model has a fully connected head: `[features [N,4], logits [N,2]]` on 4-class
/// data is most likely a 2-class classifier to re-head, and training the features as class
/// scores would leave the real head frozen (found by a new-user tryout).
fn refuse_pooled_over_dense(
    name: &str,
    traces: &[Trace],
    pool: &[&Trace],
    fit: &[&Trace],
    classes: usize,
) -> Result<()> {
    let dense: Vec<&&Trace> = pool.iter().filter(|t| t.dense).collect();
    if fit.is_empty() || fit.iter().any(|t| t.dense) || dense.is_empty() {
        return Ok(());
    }
    bail!(
        "{name} has {} outputs: {}. Only '{}' has {classes} values, one per class of the data, but it is not a fully connected classifier; the fully connected head '{}' has {}. Pass --output {} --num-classes {classes} to give that head {classes} classes, or --output {} to train '{}' as class scores",
        traces.len(),
        listing(traces),
        fit[0].output,
        dense[0].output,
        dense[0].shape,
        dense[0].output,
        fit[0].output,
        fit[0].output,
    )
}

fn chosen(t: &Trace, reason: String) -> ClassifierOutput {
    ClassifierOutput {
        output: t.output.clone(),
        logits: t.logits.clone(),
        through: t.through.clone(),
        reason,
    }
}

/// The graph outputs whose logits are `logits` (the chosen output and, e.g.,
/// the probabilities of the same head): their declared class dimension
/// changes with the head.
pub fn outputs_of_logits(model: &Model, logits: &str) -> Vec<String> {
    model
        .graph()
        .output
        .iter()
        .map(|o| trace(model, o))
        .filter(|t| t.logits == logits || t.output == logits)
        .map(|t| t.output)
        .collect()
}

/// `model` with one graph output, the logits value: what evaluation scores
/// (cross-entropy from logits, accuracy from their arg-max), so evaluation
/// and training read the same value even when the file ends in Softmax.
pub fn logits_model(model: &Model, choice: &ClassifierOutput) -> Model {
    let mut m = model.clone();
    let g = m.graph_mut();
    let info = g
        .output
        .iter()
        .chain(&g.value_info)
        .find(|o| o.name == choice.logits)
        .cloned()
        .unwrap_or_else(|| {
            // Rank and sizes are left to ONNX Runtime's inference; the
            // element type is the model's (f32 for all but f64 models).
            let mut v =
                crate::training::value_info(&choice.logits, crate::proto::DataType::Float, &[]);
            if let Some(type_proto::Value::TensorType(t)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
            v
        });
    g.output = vec![info];
    m
}
