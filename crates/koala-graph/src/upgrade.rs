//! Upgrading old-opset models (default-domain opset 7–10) to opset 17 in the
//! *training graph only*, so that classic exports (the ONNX model zoo's
//! opset-7/8/9 classifiers) fine-tune without a Python version converter.
//! Models of opset 11–15 are upgraded the same way when a gradient needs
//! opset 16 ([`needs_opset_16`]: a MaxPool with overlapping windows, as in
//! every ResNet stem, or a GatherElements); otherwise they keep their nodes.
//! The exported file keeps the user's graph and opset; only its weights
//! change (`export.rs` writes into the original model).
//!
//! Like `lower.rs`: every rewrite keeps the value names (each output of the
//! old node is produced, under the same name, by its replacement), new values
//! and nodes are named `<node name or upgrade_<index>>/<what>` and made
//! unique, constants are `Constant` nodes (never initializers, so never
//! selected as weights). A single-node rewrite keeps the node's name.
//!
//! # Why opset 17
//!
//! The gradient rules emit `ScatterElements(reduction = "add")` (opset 16)
//! and the standard `LayerNormalization` (17); 17 is the oldest opset that
//! has both, and ONNX Runtime runs it everywhere koala runs.
//!
//! # Which ops changed between opset 7 and 17
//!
//! Derived from ONNX's schemas, not guessed: every default-domain op with a
//! version in 8..=17 whose signature changed (`onnx.defs.get_schema(op, v)`
//! for consecutive versions, comparing attributes and their defaults,
//! inputs, outputs) or whose documented semantics changed (doc strings of
//! the versions with an unchanged signature, and ONNX's `docs/Changelog.md`).
//! The changes that only add element types (e.g. Add-13/14, Relu-14,
//! Cast-9/13, Gemm-9, PRelu-9/16), allow negative axes or indices
//! (Concat-11, Flatten-11, Gather-11, ArgMax-11, Reduce*-11, Squeeze-11,
//! Split-11, Compress-11, OneHot-11), add attributes whose default is the
//! old behaviour (MaxPool-8/10 `storage_order`/`ceil_mode`/`dilations`,
//! AveragePool-10 `ceil_mode`, ArgMax-12 `select_last_index`,
//! DepthToSpace-11 `mode` = DCR, Reshape-14 `allowzero`, Shape-15
//! `start`/`end`, TopK-11 `largest`/`sorted`, LSTM/GRU/RNN-14 `layout`,
//! ScatterElements-16 `reduction`, Quantize/DequantizeLinear-13 `axis`),
//! make an input optional (Gemm-11 `C`, Resize-13 `roi`), or only reword the
//! spec (AveragePool-11, MaxPool-11/12 output-shape text) keep their node
//! as it is. The ops rewritten (model opset → opset 17 form):
//!
//! | op (model opsets) | change | rewrite |
//! |---|---|---|
//! | Pad (7–10) | `pads`, `value` attributes → inputs (11) | `pads` int64 Constant; `constant_value` Constant when `value` ≠ 0 |
//! | Clip (7–10) | `min`, `max` attributes → inputs (11) | scalar Constants of the data's type |
//! | Slice (7–9) | `starts`, `ends`, `axes` attributes → inputs (10) | int64 Constants |
//! | Squeeze, Unsqueeze (7–10) | `axes` attribute → input (13) | int64 Constant |
//! | ReduceSum (7–10) | `axes` attribute → input (13); the other Reduce* keep the attribute until 18 and stay | int64 Constant |
//! | Split (7–10) | `split` attribute → input (13) | int64 Constant |
//! | TopK (7–9) | `k` attribute → input `K` (10) | int64 Constant `[k]` |
//! | Softmax, LogSoftmax, Hardmax (7–10) | the input is coerced to 2-D at `axis` (default 1) before 13; from 13 the op works along `axis` (default −1) | kept with `axis = −1` when `axis` is the last axis; otherwise Flatten(axis) → op(axis = −1) → Reshape to Shape(input) |
//! | BatchNormalization (7–8) | `spatial` attribute removed (9) | dropped when 1 (its default); `spatial = 0` is an error |
//! | BatchNormalization (7–10) | the outputs mean, var, saved_mean, saved_var (training mode; ONNX Runtime runs a node that declares them in training mode) became running_mean/var with `training_mode` (14) | Y only; a node declaring them is an error (training mode) |
//! | Dropout (7–10) | `ratio` attribute → input (12); mask is of the data's type before 10 | Identity (koala trains and evaluates in inference mode, where Dropout is the identity); a used mask becomes ConstantOfShape(false), as ONNX Runtime's kernel writes it (CastLike the data before 10) |
//! | Upsample (7: `scales` attribute; 9) | deprecated at 10 | Resize-13, `coordinate_transformation_mode = asymmetric` (`x_in = x_out / scale`); nearest rounds down where scale ≥ 1 and up where it is < 1 (two Resizes when a node does both) |
//! | Resize (10) | roi, `coordinate_transformation_mode`, `nearest_mode` added (11) | Resize-13 as for Upsample (Resize-10 has Upsample-9's semantics) |
//! | Scatter (9–10) | deprecated at 11 (ScatterElements, the same op) | ScatterElements |
//! | RoiAlign (10) | `coordinate_transformation_mode` added, default `half_pixel` (16); opset 10 computed `output_half_pixel` | the attribute set to `output_half_pixel` |
//!
//! Not upgraded (an error naming node, op and opset): Scan-8 (its
//! `sequence_lens` input and `directions` attribute were replaced at 9),
//! BatchNormalization with `spatial = 0` or training outputs, a node whose
//! attribute koala reads is malformed, any of the ops above inside a
//! control-flow body (only the main graph is rewritten), and models of
//! opset < 7 (koala upgrades 7–10 only).
//!
//! # Initializers listed as graph inputs
//!
//! IR < 4 files list every initializer among the graph inputs. They are
//! weights, not data: the training copy drops them from `graph.input` (koala
//! feeds trainable weights as inputs of its own and keeps frozen ones as
//! initializers). The export keeps the user's input list.
//!
//! Tests: `tests/opset_upgrade.rs` runs each rewrite in ONNX Runtime against
//! the original old-opset node; `tests/cli_old_opset.rs` checks and
//! fine-tunes an opset-9, IR-3 CNN end to end.

use crate::attrs::{self, a_int, a_string, a_tensor};
use crate::lower::{Emitter, Namer, ValueTable};
use crate::model::{node_label, Model};
use crate::proto::{AttributeProto, DataType, GraphProto, NodeProto, TensorProto};
use crate::tensor;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The opset the training graph of an old model uses.
pub const TARGET_OPSET: i64 = 17;
/// The oldest default-domain opset koala upgrades.
pub const MIN_OPSET: i64 = 7;
/// The newest opset that always needs upgrading (11 and later are read as
/// they are, unless a gradient needs opset 16: see [`needs_opset_16`]).
pub const MAX_OLD_OPSET: i64 = 10;

/// The opset of `ScatterElements(reduction = "add")`, which the gradients of
/// MaxPool with overlapping windows and of GatherElements emit.
pub const SCATTER_REDUCTION_OPSET: i64 = 16;

/// The remedy for a model older than opset 7.
pub const TOO_OLD_REMEDY: &str = "re-export the model from its source framework with opset 11 or later \
(e.g. torch.onnx.export(..., opset_version=17)), or convert the file once with ONNX's version converter \
(Python: onnx.version_converter.convert_version(model, 17)); koala upgrades opsets 7–10 itself, not older ones";

/// What [`upgrade`] changed in the training copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Upgraded {
    /// The model's default-domain opset.
    pub from: i64,
    /// The training copy's opset (`from` when nothing was upgraded).
    pub to: i64,
    /// Rewritten nodes per op (`Softmax` ×1, …).
    pub rewritten: BTreeMap<String, usize>,
    /// Nodes emitted in their place (Constant nodes included).
    pub nodes_added: usize,
    /// Graph inputs dropped because an initializer of the same name holds a
    /// weight (IR < 4 files list every initializer as an input).
    pub initializer_inputs: Vec<String>,
    /// Why a model of opset 11–15 was upgraded (the node whose gradient needs
    /// opset 16); `None` for opset 7–10, which is always upgraded.
    pub reason: Option<String>,
}

impl Upgraded {
    /// True when the opset changed.
    pub fn changed_opset(&self) -> bool {
        self.from != self.to
    }

    /// The note `koala check` prints for an upgraded model.
    pub fn note(&self) -> String {
        let why = self
            .reason
            .as_ref()
            .map_or(String::new(), |r| format!(" ({r})"));
        format!(
            "opset {} upgraded to {} for training{why}; the exported file keeps opset {} and the original graph",
            self.from, self.to, self.from
        )
    }
}

impl fmt::Display for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.changed_opset() {
            return write!(f, "opset {}: nothing to upgrade", self.from);
        }
        let ops: Vec<String> = self
            .rewritten
            .iter()
            .map(|(op, n)| format!("{op} ×{n}"))
            .collect();
        write!(f, "{}", self.note())?;
        if !ops.is_empty() {
            write!(f, " (rewritten: {})", ops.join(", "))?;
        }
        Ok(())
    }
}

/// Upgrades, in place, a model of default-domain opset 7–10 to opset 17 (see
/// the module docs for every op and why), and drops initializers from the
/// graph inputs for any opset. Models of opset 11 or later keep their nodes.
/// Errors (all nodes at once) for a model older than opset 7 and for old
/// forms koala cannot upgrade, naming node, op and opset.
pub fn upgrade(model: &mut Model) -> Result<Upgraded> {
    let from = model.opset();
    let mut up = Upgraded {
        from,
        to: from,
        initializer_inputs: drop_initializer_inputs(model),
        ..Default::default()
    };
    if from > MAX_OLD_OPSET {
        match needs_opset_16(model) {
            Some(why) if from < SCATTER_REDUCTION_OPSET => up.reason = Some(why),
            _ => return Ok(up),
        }
    }
    if from < MIN_OPSET {
        bail!(
            "{}: default-domain opset {from} is older than {MIN_OPSET}, the oldest koala upgrades; {TOO_OLD_REMEDY}",
            model.display_name()
        );
    }
    let replacements = plan(model, from)?;
    let g = model.graph_mut();
    let old = std::mem::take(&mut g.node);
    let mut replacements: HashMap<usize, Vec<NodeProto>> = replacements.into_iter().collect();
    for (i, n) in old.into_iter().enumerate() {
        match replacements.remove(&i) {
            Some(new) => {
                *up.rewritten.entry(n.op_type.clone()).or_insert(0) += 1;
                up.nodes_added += new.len();
                g.node.extend(new);
            }
            None => g.node.push(n),
        }
    }
    for o in model
        .proto
        .opset_import
        .iter_mut()
        .filter(|o| is_default(&o.domain))
    {
        o.version = TARGET_OPSET;
    }
    // IR 8 is the IR version of ONNX 1.12, which introduced opset 17.
    model.proto.ir_version = model.proto.ir_version.max(8);
    up.to = TARGET_OPSET;
    Ok(up)
}

/// Why the training graph of this model needs opset 16, if it does: a
/// MaxPool whose windows overlap (kernel, dilated, longer than the stride) or
/// a GatherElements, whose gradients scatter-add (`ScatterElements` with
/// `reduction = "add"`, opset 16). A model of opset 11–15 with such a node is
/// upgraded like an old one (the rewrites for 11–15 forms are the same
/// table's rows: Squeeze/Unsqueeze/ReduceSum/Split and Softmax before 13,
/// BatchNormalization and Dropout before 14), rather than asking the user to
/// convert the file with Python.
pub fn needs_opset_16(model: &Model) -> Option<String> {
    model
        .graph()
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_default(&n.domain))
        .find_map(|(i, n)| {
            let what = match n.op_type.as_str() {
                "MaxPool" if overlapping_windows(n) => "MaxPool with overlapping windows",
                "GatherElements" => "GatherElements",
                _ => return None,
            };
            Some(format!(
                "{} is a {what}, whose gradient needs ScatterElements(reduction=add) of opset {SCATTER_REDUCTION_OPSET}",
                node_label(i, n)
            ))
        })
}

/// Whether a pooling node's windows overlap along some axis: (kernel − 1) ·
/// dilation + 1 > stride (strides and dilations default to 1).
fn overlapping_windows(n: &NodeProto) -> bool {
    let kernel = attrs::ints(n, "kernel_shape").unwrap_or_default();
    let strides = attrs::ints(n, "strides").unwrap_or_default();
    let dilations = attrs::ints(n, "dilations").unwrap_or_default();
    kernel.iter().enumerate().any(|(i, &k)| {
        let d = dilations.get(i).copied().unwrap_or(1);
        let s = strides.get(i).copied().unwrap_or(1);
        (k - 1) * d + 1 > s
    })
}

/// Removes from `graph.input` every input that names an initializer; returns
/// their names.
pub fn drop_initializer_inputs(model: &mut Model) -> Vec<String> {
    let g = model.graph_mut();
    let inits: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    let dropped: Vec<String> = g
        .input
        .iter()
        .filter(|i| inits.contains(&i.name))
        .map(|i| i.name.clone())
        .collect();
    g.input.retain(|i| !inits.contains(&i.name));
    dropped
}

fn is_default(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// What to do with one node of an old model.
enum Action {
    /// Unchanged between its opset and 17.
    Keep,
    /// Rewritten.
    Rewrite,
    /// Cannot be upgraded, with the reason.
    Refuse(String),
}

/// Whether a node of a model of `opset` changed before 17 (see the table in
/// the module docs).
fn action(n: &NodeProto, opset: i64) -> Action {
    if !is_default(&n.domain) {
        return Action::Keep;
    }
    let rewrite_below = |v: i64| {
        if opset < v {
            Action::Rewrite
        } else {
            Action::Keep
        }
    };
    match n.op_type.as_str() {
        "Pad" | "Clip" | "Scatter" => rewrite_below(11),
        "Slice" | "TopK" => rewrite_below(10),
        "Squeeze" | "Unsqueeze" | "ReduceSum" | "Split" | "Softmax" | "LogSoftmax"
        | "Hardmax" => rewrite_below(13),
        "BatchNormalization" | "Dropout" => rewrite_below(14),
        "Upsample" => Action::Rewrite,
        "Resize" | "RoiAlign" => rewrite_below(11),
        "Scan" if opset == 8 => Action::Refuse(
            "Scan-8's sequence_lens input and directions attribute were replaced in opset 9, and koala does not rewrite control flow".into(),
        ),
        _ => Action::Keep,
    }
}

/// The replacement nodes per node index; every refusal at once as the error.
fn plan(model: &Model, opset: i64) -> Result<Vec<(usize, Vec<NodeProto>)>> {
    let g = model.graph();
    let types = ValueTable::new(g);
    let mut names = Namer::new(g);
    let consumed = consumed_values(g);
    let floats = float_constants(g);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let refuse = |why: String| {
            format!(
                "{} of opset {opset} cannot be upgraded to opset {TARGET_OPSET}: {why}",
                node_label(i, n)
            )
        };
        if let Some(why) = subgraph_needs_upgrade(n, opset) {
            errors.push(refuse(why));
            continue;
        }
        match action(n, opset) {
            Action::Keep => {}
            Action::Refuse(why) => errors.push(refuse(why)),
            Action::Rewrite => {
                let base = if n.name.is_empty() {
                    format!("upgrade_{i}")
                } else {
                    n.name.clone()
                };
                let mut e = Emitter {
                    names: &mut names,
                    base,
                    opset: TARGET_OPSET,
                    nodes: Vec::new(),
                };
                let cx = Cx {
                    types: &types,
                    consumed: &consumed,
                    opset,
                    floats: &floats,
                };
                match rewrite(&mut e, n, &cx) {
                    Ok(()) => out.push((i, e.nodes)),
                    Err(why) => errors.push(refuse(why)),
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}: {}", model.display_name(), errors.join("\n"));
    }
    Ok(out)
}

/// Values read by a node or returned by the graph.
fn consumed_values(g: &GraphProto) -> HashSet<String> {
    let mut used: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for n in &g.node {
        used.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
    }
    used
}

/// Small float initializers and Constant nodes by value name.
fn float_constants(g: &GraphProto) -> HashMap<String, Vec<f32>> {
    let small = |t: &TensorProto| {
        t.dims.len() <= 1
            && tensor::numel(&t.dims) <= 16
            && tensor::data_type(t).is_ok_and(|d| d == DataType::Float)
    };
    let mut out = HashMap::new();
    for t in g.initializer.iter().filter(|t| small(t)) {
        if let Ok(v) = tensor::to_f32(t) {
            out.insert(t.name.clone(), v);
        }
    }
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        let t = attrs::get(n, "value").and_then(|a| a.t.as_ref());
        if let (Some(o), Some(t)) = (n.output.first(), t.filter(|t| small(t))) {
            if let Ok(v) = tensor::to_f32(t) {
                out.insert(o.clone(), v);
            }
        }
    }
    out
}

/// A control-flow body holding an op that changed: the reason, if any.
fn subgraph_needs_upgrade(n: &NodeProto, opset: i64) -> Option<String> {
    fn walk(nodes: &[NodeProto], opset: i64) -> Option<String> {
        for m in nodes {
            if !matches!(action(m, opset), Action::Keep) {
                return Some(format!(
                    "its body holds {} '{}', whose form changed before opset {TARGET_OPSET}, and koala upgrades only the main graph",
                    m.op_type, m.name
                ));
            }
            if let Some(why) = subgraph_needs_upgrade(m, opset) {
                return Some(why);
            }
        }
        None
    }
    n.attribute
        .iter()
        .flat_map(|a| a.g.iter().map(|g| &**g).chain(a.graphs.iter()))
        .find_map(|g| walk(&g.node, opset))
}

/// What a rewrite reads besides the node.
struct Cx<'a> {
    types: &'a ValueTable,
    consumed: &'a HashSet<String>,
    /// The model's (old) opset.
    opset: i64,
    /// Values of float initializers and Constant nodes (Upsample scales).
    floats: &'a HashMap<String, Vec<f32>>,
}

type Rewrite = std::result::Result<(), String>;

fn rewrite(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    if n.input.first().is_none_or(|s| s.is_empty()) && n.op_type != "Constant" {
        return Err("it has no first input (a malformed file: re-export the model)".into());
    }
    match n.op_type.as_str() {
        "Pad" => pad(e, n, cx),
        "Clip" => clip(e, n, cx),
        "Slice" => slice(e, n),
        "Squeeze" | "Unsqueeze" | "ReduceSum" => axes_to_input(e, n, "axes"),
        "Split" => axes_to_input(e, n, "split"),
        "TopK" => top_k(e, n),
        "Softmax" | "LogSoftmax" | "Hardmax" => softmax(e, n, cx),
        "BatchNormalization" => batch_norm(e, n, cx),
        "Dropout" => dropout(e, n, cx),
        "Upsample" | "Resize" => resize(e, n, cx),
        "Scatter" => {
            let mut m = n.clone();
            m.op_type = "ScatterElements".into();
            e.nodes.push(m);
            Ok(())
        }
        "RoiAlign" => {
            let mut m = n.clone();
            set_attr(
                &mut m,
                a_string("coordinate_transformation_mode", "output_half_pixel"),
            );
            e.nodes.push(m);
            Ok(())
        }
        other => Err(format!("koala has no upgrade for {other}")),
    }
}

/// Replaces (or adds) an attribute.
fn set_attr(n: &mut NodeProto, a: AttributeProto) {
    n.attribute.retain(|x| x.name != a.name);
    n.attribute.push(a);
}

fn without_attrs(n: &NodeProto, names: &[&str]) -> NodeProto {
    let mut m = n.clone();
    m.attribute.retain(|a| !names.contains(&a.name.as_str()));
    m
}

/// Sets input `k` of `m` (padding with empty optional inputs).
fn set_input(m: &mut NodeProto, k: usize, v: &str) {
    while m.input.len() <= k {
        m.input.push(String::new());
    }
    m.input[k] = v.to_string();
}

/// A scalar of the element type of `like`: a Constant when the file says
/// the type (f32/f64), else a float Constant cast like `like`.
fn scalar_like(e: &mut Emitter, cx: &Cx, like: &str, v: f64, hint: &str) -> String {
    match cx.types.dtype(like) {
        Some(dt @ (DataType::Float | DataType::Double)) => e.scalar(dt, v, hint),
        _ => {
            let c = e.scalar(DataType::Float, v, hint);
            e.op("CastLike", &[&c, like], vec![], hint)
        }
    }
}

fn pad(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    let pads = attrs::ints(n, "pads").ok_or("Pad before opset 11 needs its pads attribute")?;
    let value = attrs::float(n, "value", 0.0);
    let mode = attrs::string(n, "mode", "constant");
    let mut m = without_attrs(n, &["pads", "value"]);
    let p = e.ints(&pads, "pads");
    set_input(&mut m, 1, &p);
    if mode == "constant" && value != 0.0 {
        let v = scalar_like(e, cx, &n.input[0], value as f64, "constant_value");
        set_input(&mut m, 2, &v);
    }
    e.nodes.push(m);
    Ok(())
}

fn clip(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    let mut m = without_attrs(n, &["min", "max"]);
    for (k, name) in [(1, "min"), (2, "max")] {
        if let Some(a) = attrs::get(n, name) {
            let v = scalar_like(e, cx, &n.input[0], a.f as f64, name);
            set_input(&mut m, k, &v);
        }
    }
    e.nodes.push(m);
    Ok(())
}

fn slice(e: &mut Emitter, n: &NodeProto) -> Rewrite {
    let starts = attrs::ints(n, "starts").ok_or("Slice before opset 10 needs starts")?;
    let ends = attrs::ints(n, "ends").ok_or("Slice before opset 10 needs ends")?;
    let mut m = without_attrs(n, &["starts", "ends", "axes"]);
    let s = e.ints(&starts, "starts");
    let en = e.ints(&ends, "ends");
    set_input(&mut m, 1, &s);
    set_input(&mut m, 2, &en);
    if let Some(axes) = attrs::ints(n, "axes") {
        let a = e.ints(&axes, "axes");
        set_input(&mut m, 3, &a);
    }
    e.nodes.push(m);
    Ok(())
}

/// Squeeze/Unsqueeze/ReduceSum `axes`, Split `split`: the attribute becomes
/// input 1 (absent attribute: absent input, the same default).
fn axes_to_input(e: &mut Emitter, n: &NodeProto, attr: &str) -> Rewrite {
    let mut m = without_attrs(n, &[attr]);
    match attrs::ints(n, attr) {
        Some(v) => {
            let c = e.ints(&v, attr);
            set_input(&mut m, 1, &c);
        }
        None if n.op_type == "Unsqueeze" => return Err("Unsqueeze needs its axes attribute".into()),
        None => {}
    }
    e.nodes.push(m);
    Ok(())
}

fn top_k(e: &mut Emitter, n: &NodeProto) -> Rewrite {
    let k = attrs::get(n, "k")
        .map(|a| a.i)
        .ok_or("TopK before opset 10 needs its k attribute")?;
    let mut m = without_attrs(n, &["k"]);
    let c = e.ints(&[k], "K");
    set_input(&mut m, 1, &c);
    e.nodes.push(m);
    Ok(())
}

/// Before 13 the op coerces its input to 2-D `[∏ dims[..axis], ∏ dims[axis..]]`
/// and normalizes each row; that is the new op along the last axis exactly
/// when `axis` is the last axis. Otherwise: Flatten(axis), the op along −1,
/// and a Reshape back to the input's shape.
fn softmax(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    let x = &n.input[0];
    let y = n.output.first().ok_or("it has no output")?;
    let axis = attrs::int(n, "axis", 1);
    let rank = cx
        .types
        .rank(x)
        .or_else(|| cx.types.rank(y))
        .map(|r| r as i64);
    let last = rank.is_some_and(|r| (if axis < 0 { axis + r } else { axis }) == r - 1);
    if last {
        let mut m = n.clone();
        set_attr(&mut m, a_int("axis", -1));
        e.nodes.push(m);
        return Ok(());
    }
    let f = e.op("Flatten", &[x], vec![a_int("axis", axis)], "flat");
    let s = e.op(&n.op_type, &[&f], vec![a_int("axis", -1)], "rows");
    let shape = e.op("Shape", &[x], vec![], "shape");
    e.op_into("Reshape", &[&s, &shape], vec![], y);
    Ok(())
}

fn batch_norm(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    if attrs::int(n, "spatial", 1) != 1 {
        return Err("spatial=0 (per-activation statistics) has no equivalent in opset 9 or later; re-export the model with per-channel BatchNormalization (PyTorch's BatchNorm always is)".into());
    }
    let extra: Vec<&str> = n
        .output
        .iter()
        .skip(1)
        .filter(|s| !s.is_empty())
        .map(|s| s.as_str())
        .collect();
    if !extra.is_empty() {
        let used = extra.iter().any(|s| cx.consumed.contains(*s));
        return Err(format!(
            "it declares the training-mode outputs {}{}: ONNX Runtime runs such a node with each batch's statistics, so every result would depend on the batch size; re-export the model in inference mode (PyTorch: model.eval() before torch.onnx.export)",
            extra.join(", "),
            if used { " (used by the graph)" } else { "" }
        ));
    }
    let mut m = without_attrs(n, &["spatial", "is_test", "consumed_inputs"]);
    m.output.truncate(1);
    e.nodes.push(m);
    Ok(())
}

/// Dropout of opset 7–10 runs in inference mode (ONNX Runtime has no
/// training mode for it): Y = X; ONNX Runtime writes the mask as all
/// false (zeros), and so does the rewrite.
fn dropout(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    let x = &n.input[0];
    if let Some(y) = n.output.first().filter(|s| !s.is_empty()) {
        let mut id = NodeProto {
            name: n.name.clone(),
            op_type: "Identity".into(),
            input: vec![x.clone()],
            output: vec![y.clone()],
            ..Default::default()
        };
        if id.name.is_empty() {
            id.name = e.names.fresh(format!("{}/Identity", e.base));
        }
        e.nodes.push(id);
    }
    if let Some(mask) = n.output.get(1).filter(|s| !s.is_empty()) {
        let shape = e.op("Shape", &[x], vec![], "shape");
        let falses = TensorProto {
            name: "value".into(),
            dims: vec![1],
            data_type: DataType::Bool as i32,
            int32_data: vec![0],
            ..Default::default()
        };
        if cx.opset >= 10 {
            e.op_into(
                "ConstantOfShape",
                &[&shape],
                vec![a_tensor("value", falses)],
                mask,
            );
        } else {
            // Dropout-7's mask has the data's element type.
            let t = e.op(
                "ConstantOfShape",
                &[&shape],
                vec![a_tensor("value", falses)],
                "mask_bool",
            );
            e.op_into("CastLike", &[&t, x], vec![], mask);
        }
    }
    Ok(())
}

/// Upsample-7 (`scales` attribute), Upsample-9 and Resize-10 (`scales`
/// input): `x_in = x_out / scale` per axis. Linear interpolates between the
/// neighbours (clamped at the border): Resize-13 `linear` with `asymmetric`
/// coordinates. Nearest rounds `x_in` down on axes with scale ≥ 1 and up on
/// axes with scale < 1 (ONNX Runtime's opset-10 rule, checked against it in
/// the tests): `nearest_mode = floor` or `ceil`; a node that both upsamples
/// and downsamples becomes two Resizes (the downsampled axes first, then the
/// upsampled ones; nearest picks each axis independently, so this is exact).
fn resize(e: &mut Emitter, n: &NodeProto, cx: &Cx) -> Rewrite {
    let mode = attrs::string(n, "mode", "nearest");
    if !matches!(mode.as_str(), "nearest" | "linear") {
        return Err(format!(
            "mode '{mode}' is not one of Upsample's modes (nearest, linear)"
        ));
    }
    let y = n.output.first().ok_or("it has no output")?;
    let x = n.input[0].clone();
    let (scales, known) = match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(s) => (s.clone(), cx.floats.get(s).cloned()),
        None => {
            let s = attrs::get(n, "scales")
                .map(|a| a.floats.clone())
                .filter(|s| !s.is_empty())
                .ok_or("it has neither a scales input nor a scales attribute")?;
            let c = e.constant(tensor::from_f32("value", &[s.len() as i64], &s), "scales");
            (c, Some(s))
        }
    };
    let node = |e: &mut Emitter, x: &str, s: &str, rounding: &str, out: Option<&str>| {
        let attrs = vec![
            a_string("mode", &mode),
            a_string("coordinate_transformation_mode", "asymmetric"),
            a_string("nearest_mode", rounding),
        ];
        let out_is_y = out.is_some();
        let out = match out {
            Some(o) => o.to_string(),
            None => e.value("downsampled"),
        };
        // The node writing the original output keeps the original name.
        let name = match (out_is_y, n.name.is_empty()) {
            (true, false) => n.name.clone(),
            _ => e.names.fresh(format!("{}/Resize", e.base)),
        };
        e.nodes.push(NodeProto {
            name,
            op_type: "Resize".into(),
            input: vec![x.to_string(), String::new(), s.to_string()],
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    };
    if mode == "linear" {
        node(e, &x, &scales, "floor", Some(y));
        return Ok(());
    }
    let s = known.ok_or_else(|| {
        format!("its scales '{scales}' are computed in the graph, and nearest rounding before opset 11 depends on whether each scale is below 1; koala needs them as an initializer or Constant")
    })?;
    let down = s.iter().any(|&v| v < 1.0);
    let up = s.iter().any(|&v| v > 1.0);
    if !(down && up) {
        node(e, &x, &scales, if down { "ceil" } else { "floor" }, Some(y));
        return Ok(());
    }
    let part = |keep: &dyn Fn(f32) -> bool| -> Vec<f32> {
        s.iter().map(|&v| if keep(v) { v } else { 1.0 }).collect()
    };
    let (sd, su) = (part(&|v| v < 1.0), part(&|v| v > 1.0));
    let sd = e.constant(
        tensor::from_f32("value", &[sd.len() as i64], &sd),
        "scales_down",
    );
    let su = e.constant(
        tensor::from_f32("value", &[su.len() as i64], &su),
        "scales_up",
    );
    let mid = node(e, &x, &sd, "ceil", None);
    node(e, &mid, &su, "floor", Some(y));
    Ok(())
}
