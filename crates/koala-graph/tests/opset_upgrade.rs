//! The opset upgrade (`koala_graph::upgrade`) against ONNX Runtime running
//! the original: each case builds a tiny opset-7…10 model around one op
//! whose form changed before opset 17 (IR 3, every initializer also listed
//! as a graph input, as the model zoo's files are), runs it in ORT as it is
//! (ORT still runs the old opsets), upgrades a copy, runs that, and requires
//! every output to agree.
//!
//! Tolerance: 1e-6 on f32 values of magnitude ≲ 10. The rewrites compute the
//! same thing with the same kernels (a Pad, Clip, Slice… whose attributes
//! became inputs; Resize with the coordinate mapping Upsample used), so
//! most outputs agree exactly; Softmax over a flattened view may sum in a
//! different order (a few ulps of 1 ≈ 1.2e-7). A wrong axis, coordinate
//! mode, rounding or pad value is off by ≳ 1e-2.

use koala_graph::attrs::{a_float, a_floats, a_int, a_ints, a_string};
use koala_graph::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use koala_graph::upgrade::{upgrade, Upgraded, TARGET_OPSET};
use koala_graph::{tensor, Model};
use koala_runtime::{OptimizationLevel, OwnedTensor, Session, SessionOptions, TensorView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// See the module docs.
const TOL: f64 = 1e-6;

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A tiny old-opset model: data inputs (random), initializers, nodes, outputs.
struct Case {
    opset: i64,
    inputs: Vec<(String, Vec<usize>, Data)>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    outputs: Vec<String>,
    rng: ChaCha8Rng,
}

impl Case {
    fn new(opset: i64, seed: u64) -> Case {
        Case {
            opset,
            inputs: Vec::new(),
            inits: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    fn input(&mut self, name: &str, shape: &[usize]) -> String {
        let v = self.uniform(shape.iter().product(), -2.0, 2.0);
        self.inputs
            .push((name.into(), shape.to_vec(), Data::F32(v)));
        name.into()
    }

    fn int_input(&mut self, name: &str, shape: &[usize], v: Vec<i64>) -> String {
        self.inputs
            .push((name.into(), shape.to_vec(), Data::I64(v)));
        name.into()
    }

    fn weight(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let v = self.uniform(shape.iter().product(), lo, hi);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.inits.push(tensor::from_f32(name, &dims, &v));
        name.into()
    }

    fn float_init(&mut self, name: &str, v: &[f32]) -> String {
        self.inits
            .push(tensor::from_f32(name, &[v.len() as i64], v));
        name.into()
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<koala_graph::proto::AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: format!("{}_{}", op.to_lowercase(), self.nodes.len()),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    fn outputs(&mut self, names: &[&str]) {
        self.outputs = names.iter().map(|s| s.to_string()).collect();
    }

    /// IR 3: every initializer is also a graph input.
    fn model(&self) -> Model {
        let dt = |d: &Data| match d {
            Data::F32(_) => koala_graph::proto::DataType::Float,
            Data::I64(_) => koala_graph::proto::DataType::Int64,
        };
        let mut inputs: Vec<ValueInfoProto> = self
            .inputs
            .iter()
            .map(|(name, shape, d)| koala_graph::training::value_info(name, dt(d), shape))
            .collect();
        inputs.extend(self.inits.iter().map(|t| {
            let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let dt = tensor::data_type(t).unwrap();
            koala_graph::training::value_info(&t.name, dt, &shape)
        }));
        let outputs = self
            .outputs
            .iter()
            .map(|name| ValueInfoProto {
                name: name.clone(),
                ..Default::default()
            })
            .collect();
        let proto = ModelProto {
            ir_version: 3,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: "koala-graph opset_upgrade tests".into(),
            graph: Some(GraphProto {
                name: "old".into(),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: inputs,
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        };
        Model::from_proto(proto).expect("test model is valid")
    }

    fn run(&self, model: &Model) -> HashMap<String, OwnedTensor> {
        let feeds: Vec<(&str, TensorView)> = self
            .inputs
            .iter()
            .map(|(name, shape, d)| {
                let view = match d {
                    Data::F32(v) => TensorView::f32(v, shape),
                    Data::I64(v) => TensorView::i64(v, shape),
                };
                (name.as_str(), view)
            })
            .collect();
        let opts = SessionOptions {
            intra_threads: Some(1),
            optimization: OptimizationLevel::Disable,
            ..SessionOptions::default()
        };
        let mut session = Session::from_bytes(&model.to_bytes(), &opts)
            .unwrap_or_else(|e| panic!("ORT cannot load the model: {e}"));
        session
            .run(&feeds)
            .unwrap_or_else(|e| panic!("ORT failed to run the model: {e}"))
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect()
    }
}

fn values(t: &OwnedTensor) -> Vec<f64> {
    match (t.as_f32(), t.as_i64()) {
        (Some(v), _) => v.iter().map(|&x| f64::from(x)).collect(),
        (_, Some(v)) => v.iter().map(|&x| x as f64).collect(),
        _ => panic!("output '{}' is neither f32 nor i64", t.name),
    }
}

/// Upgrades the case's model, checks it is opset 17 with no initializer
/// among its inputs and none of `gone` left, runs both, compares outputs.
fn check(case: &Case, gone: &[&str]) -> Upgraded {
    let original = case.model();
    let want = case.run(&original);
    let mut up = case.model();
    let report = upgrade(&mut up).unwrap_or_else(|e| panic!("upgrade failed: {e:#}"));
    assert_eq!((report.from, report.to), (case.opset, TARGET_OPSET));
    assert_eq!(up.opset(), TARGET_OPSET);
    assert!(
        report.nodes_added > 0 && !report.rewritten.is_empty(),
        "{report:?}"
    );
    let g = up.graph();
    assert!(
        g.input
            .iter()
            .all(|i| !g.initializer.iter().any(|t| t.name == i.name)),
        "initializers must leave the training copy's inputs"
    );
    assert_eq!(report.initializer_inputs.len(), case.inits.len());
    for n in &g.node {
        assert!(
            !gone.contains(&n.op_type.as_str()),
            "{} left: {n:?}",
            n.op_type
        );
    }
    let got = case.run(&up);
    for name in &case.outputs {
        let (w, g) = (values(&want[name]), values(&got[name]));
        assert_eq!(want[name].shape, got[name].shape, "output '{name}' shape");
        let d = w
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f64, |m, d| if d.is_nan() { f64::NAN } else { m.max(d) });
        assert!(
            d <= TOL,
            "output '{name}': max |Δ| {d:e} (want {w:?}, got {g:?})"
        );
    }
    report
}

fn one_node_attr(report: &Upgraded, op: &str) {
    assert_eq!(report.rewritten.get(op), Some(&1), "{report:?}");
}

#[test]
fn pad_attributes_become_inputs() {
    for (mode, value) in [
        ("constant", 0.5f32),
        ("constant", 0.0),
        ("reflect", 0.0),
        ("edge", 0.0),
    ] {
        let mut c = Case::new(9, 1);
        let x = c.input("x", &[1, 2, 4, 4]);
        let mut attrs = vec![
            a_ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1]),
            a_string("mode", mode),
        ];
        if value != 0.0 {
            attrs.push(a_float("value", value));
        }
        c.node("Pad", &[&x], &["y"], attrs);
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &[]), "Pad");
    }
}

#[test]
fn clip_bounds_become_inputs() {
    for attrs in [
        vec![a_float("min", -0.3), a_float("max", 0.4)],
        vec![a_float("max", 0.4)],
        vec![a_float("min", -0.3)],
    ] {
        let mut c = Case::new(7, 2);
        let x = c.input("x", &[2, 5]);
        c.node("Clip", &[&x], &["y"], attrs);
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &[]), "Clip");
    }
}

#[test]
fn slice_attributes_become_inputs() {
    for attrs in [
        vec![
            a_ints("starts", &[1, 0]),
            a_ints("ends", &[3, i64::MAX]),
            a_ints("axes", &[1, 2]),
        ],
        vec![a_ints("starts", &[0, -3]), a_ints("ends", &[1, -1])],
    ] {
        let mut c = Case::new(9, 3);
        let x = c.input("x", &[2, 4, 5]);
        c.node("Slice", &[&x], &["y"], attrs);
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &[]), "Slice");
    }
}

#[test]
fn squeeze_unsqueeze_reduce_sum_axes_become_inputs() {
    let mut c = Case::new(9, 4);
    let x = c.input("x", &[1, 3, 1, 4]);
    c.node("Squeeze", &[&x], &["s"], vec![a_ints("axes", &[0, 2])]);
    c.node("Unsqueeze", &["s"], &["u"], vec![a_ints("axes", &[1, 3])]);
    c.node(
        "ReduceSum",
        &["u"],
        &["r"],
        vec![a_ints("axes", &[2]), a_int("keepdims", 0)],
    );
    c.node("ReduceSum", &["u"], &["all"], vec![]);
    c.node("Squeeze", &[&x], &["s_all"], vec![]);
    c.outputs(&["u", "r", "all", "s_all"]);
    let r = check(&c, &[]);
    assert_eq!(r.rewritten.get("Squeeze"), Some(&2));
    assert_eq!(r.rewritten.get("ReduceSum"), Some(&2));
}

#[test]
fn split_sizes_become_an_input() {
    let mut c = Case::new(8, 5);
    let x = c.input("x", &[2, 5]);
    c.node(
        "Split",
        &[&x],
        &["a", "b"],
        vec![a_int("axis", 1), a_ints("split", &[2, 3])],
    );
    c.node("Split", &[&x], &["c", "d"], vec![a_int("axis", 0)]);
    c.outputs(&["a", "b", "c", "d"]);
    assert_eq!(check(&c, &[]).rewritten.get("Split"), Some(&2));
}

#[test]
fn top_k_attribute_becomes_an_input() {
    let mut c = Case::new(9, 6);
    let x = c.input("x", &[3, 6]);
    c.node(
        "TopK",
        &[&x],
        &["v", "i"],
        vec![a_int("k", 2), a_int("axis", 1)],
    );
    c.outputs(&["v", "i"]);
    one_node_attr(&check(&c, &[]), "TopK");
}

#[test]
fn softmax_family_keeps_the_coerce_to_2d_semantics() {
    for op in ["Softmax", "LogSoftmax", "Hardmax"] {
        // axis 1 of a 4-D input (flatten form), the last axis of a 2-D one
        // (kept), a negative non-last axis, and no axis attribute (1).
        let mut c = Case::new(9, 7);
        let x4 = c.input("x4", &[2, 3, 2, 2]);
        let x2 = c.input("x2", &[2, 5]);
        let x3 = c.input("x3", &[2, 3, 4]);
        c.node(op, &[&x4], &["a"], vec![a_int("axis", 1)]);
        c.node(op, &[&x2], &["b"], vec![]);
        c.node(op, &[&x3], &["d"], vec![a_int("axis", -2)]);
        c.node(op, &[&x3], &["e"], vec![a_int("axis", 2)]);
        c.outputs(&["a", "b", "d", "e"]);
        let r = check(&c, &[]);
        assert_eq!(r.rewritten.get(op), Some(&4));
    }
}

#[test]
fn batch_normalization_drops_spatial() {
    for (opset, spatial) in [(7, Some(1)), (7, None), (9, None)] {
        let mut c = Case::new(opset, 8);
        let x = c.input("x", &[2, 3, 2, 2]);
        let s = c.weight("scale", &[3], 0.5, 1.5);
        let b = c.weight("bias", &[3], -1.0, 1.0);
        let m = c.weight("mean", &[3], -1.0, 1.0);
        let v = c.weight("var", &[3], 0.5, 2.0);
        let mut attrs = vec![a_float("epsilon", 1e-3)];
        if let Some(sp) = spatial {
            attrs.push(a_int("spatial", sp));
        }
        c.node("BatchNormalization", &[&x, &s, &b, &m, &v], &["y"], attrs);
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &[]), "BatchNormalization");
    }
}

#[test]
fn dropout_becomes_identity_and_its_mask_stays_usable() {
    // Opset 7–9: the mask has the data's type; 10: bool (cast to float here
    // so the test can read it).
    for opset in [7, 9, 10] {
        let mut c = Case::new(opset, 9);
        let x = c.input("x", &[2, 3]);
        c.node(
            "Dropout",
            &[&x],
            &["y", "mask"],
            vec![a_float("ratio", 0.3)],
        );
        c.node("Cast", &["mask"], &["mask_f"], vec![a_int("to", 1)]);
        c.node("Dropout", &["y"], &["z"], vec![a_float("ratio", 0.5)]);
        c.outputs(&["z", "mask_f"]);
        assert_eq!(check(&c, &["Dropout"]).rewritten.get("Dropout"), Some(&2));
    }
}

#[test]
fn upsample_and_resize_10_become_resize_13_with_the_same_values() {
    // Upsample-7 (scales attribute), nearest and linear, integer and
    // fractional scales.
    for (mode, scales) in [
        ("nearest", [1.0, 1.0, 2.0, 2.0]),
        ("nearest", [1.0, 1.0, 1.5, 2.5]),
        ("linear", [1.0, 1.0, 2.0, 3.0]),
        ("linear", [1.0, 1.0, 1.5, 1.7]),
    ] {
        eprintln!("Upsample-7 {mode} {scales:?}");
        let mut c = Case::new(7, 10);
        let x = c.input("x", &[1, 2, 3, 4]);
        c.node(
            "Upsample",
            &[&x],
            &["y"],
            vec![a_string("mode", mode), a_floats("scales", &scales)],
        );
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &["Upsample"]), "Upsample");
    }
    // Upsample-9 and Resize-10 (scales input); Resize-10 also downsamples.
    for (opset, op, mode, scales) in [
        (9, "Upsample", "nearest", [1.0f32, 1.0, 2.0, 1.5]),
        (9, "Upsample", "linear", [1.0, 1.0, 2.5, 2.0]),
        (10, "Resize", "nearest", [1.0, 1.0, 0.5, 1.5]),
        (10, "Resize", "linear", [1.0, 1.0, 0.6, 2.0]),
        (10, "Resize", "nearest", [1.0, 1.0, 0.7, 0.4]),
        // Both directions in one node: two Resizes.
        (10, "Resize", "nearest", [1.0, 1.0, 0.7, 1.5]),
    ] {
        eprintln!("{op}-{opset} {mode} {scales:?}");
        let mut c = Case::new(opset, 11);
        let x = c.input("x", &[1, 2, 5, 4]);
        let s = c.float_init("scales", &scales);
        c.node(op, &[&x, &s], &["y"], vec![a_string("mode", mode)]);
        c.outputs(&["y"]);
        one_node_attr(&check(&c, &["Upsample"]), op);
    }
}

#[test]
fn scatter_becomes_scatter_elements() {
    let mut c = Case::new(9, 12);
    let x = c.input("x", &[3, 3]);
    let i = c.int_input("i", &[2, 3], vec![1, 0, 2, 0, 2, 1]);
    let u = c.input("u", &[2, 3]);
    c.node("Scatter", &[&x, &i, &u], &["y"], vec![a_int("axis", 0)]);
    c.outputs(&["y"]);
    one_node_attr(&check(&c, &["Scatter"]), "Scatter");
}

#[test]
fn roi_align_10_keeps_its_output_half_pixel_coordinates() {
    let mut c = Case::new(10, 13);
    let x = c.input("x", &[1, 2, 6, 6]);
    c.inputs.push((
        "rois".into(),
        vec![2, 4],
        Data::F32(vec![0.5, 0.7, 4.2, 3.9, 1.0, 0.0, 5.0, 5.5]),
    ));
    let b = c.int_input("batch", &[2], vec![0, 0]);
    c.node(
        "RoiAlign",
        &[&x, "rois", &b],
        &["y"],
        vec![
            a_int("output_height", 2),
            a_int("output_width", 3),
            a_int("sampling_ratio", 2),
        ],
    );
    c.outputs(&["y"]);
    one_node_attr(&check(&c, &[]), "RoiAlign");
}

/// Ops that did not change stay as they are (same node, same attributes).
#[test]
fn unchanged_ops_are_kept() {
    let mut c = Case::new(9, 14);
    let x = c.input("x", &[1, 2, 4, 4]);
    let w = c.weight("w", &[3, 2, 3, 3], -0.5, 0.5);
    c.node(
        "Conv",
        &[&x, &w],
        &["c"],
        vec![a_ints("pads", &[1, 1, 1, 1])],
    );
    c.node(
        "MaxPool",
        &["c"],
        &["p"],
        vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])],
    );
    c.node("Relu", &["p"], &["r"], vec![]);
    c.node("Clip", &["r"], &["y"], vec![a_float("max", 0.5)]);
    c.outputs(&["y"]);
    let before = c.model();
    let r = check(&c, &[]);
    assert_eq!(r.rewritten.len(), 1, "{r:?}");
    let mut up = before.clone();
    upgrade(&mut up).unwrap();
    for k in 0..3 {
        assert_eq!(up.graph().node[k], before.graph().node[k]);
    }
}

fn error_of(c: &Case) -> String {
    let mut m = c.model();
    format!("{:#}", upgrade(&mut m).expect_err("must be refused"))
}

#[test]
fn batch_normalization_spatial_0_is_refused_naming_node_op_and_opset() {
    let mut c = Case::new(7, 15);
    let x = c.input("x", &[2, 3, 2, 2]);
    let ws: Vec<String> = ["s", "b", "m", "v"]
        .iter()
        .map(|n| c.weight(n, &[3, 2, 2], 0.5, 1.0))
        .collect();
    c.node(
        "BatchNormalization",
        &[&x, &ws[0], &ws[1], &ws[2], &ws[3]],
        &["y"],
        vec![a_int("spatial", 0)],
    );
    c.outputs(&["y"]);
    let e = error_of(&c);
    for want in [
        "batchnormalization_0",
        "BatchNormalization",
        "opset 7",
        "spatial=0",
    ] {
        assert!(e.contains(want), "'{want}' missing from: {e}");
    }
}

#[test]
fn batch_normalization_training_outputs_are_refused() {
    let mut c = Case::new(9, 16);
    let x = c.input("x", &[2, 3, 2, 2]);
    let ws: Vec<String> = ["s", "b", "m", "v"]
        .iter()
        .map(|n| c.weight(n, &[3], 0.5, 1.0))
        .collect();
    c.node(
        "BatchNormalization",
        &[&x, &ws[0], &ws[1], &ws[2], &ws[3]],
        &["y", "run_mean", "run_var", "saved_mean", "saved_var"],
        vec![],
    );
    c.outputs(&["y"]);
    let e = error_of(&c);
    assert!(
        e.contains("training-mode outputs") && e.contains("opset 9"),
        "{e}"
    );
}

#[test]
fn opset_6_is_refused_with_a_remedy() {
    let mut c = Case::new(6, 17);
    let x = c.input("x", &[2]);
    c.node("Relu", &[&x], &["y"], vec![]);
    c.outputs(&["y"]);
    let e = error_of(&c);
    assert!(
        e.contains("opset 6") && e.contains("opset_version=17"),
        "{e}"
    );
}

#[test]
fn a_changed_op_inside_a_control_flow_body_is_refused() {
    let mut c = Case::new(9, 18);
    let x = c.input("x", &[2, 1]);
    c.inputs.push(("cond".into(), vec![], Data::I64(vec![1])));
    let body = GraphProto {
        name: "then".into(),
        node: vec![NodeProto {
            name: "inner_squeeze".into(),
            op_type: "Squeeze".into(),
            input: vec![x.clone()],
            output: vec!["t".into()],
            attribute: vec![a_ints("axes", &[1])],
            ..Default::default()
        }],
        output: vec![ValueInfoProto {
            name: "t".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut branch = koala_graph::proto::AttributeProto {
        name: "then_branch".into(),
        r#type: koala_graph::proto::AttributeType::Graph as i32,
        ..Default::default()
    };
    branch.g = Some(Box::new(body));
    c.node("If", &["cond"], &["y"], vec![branch]);
    c.outputs(&["y"]);
    let e = error_of(&c);
    assert!(
        e.contains("if_0") && e.contains("Squeeze") && e.contains("opset 9"),
        "{e}"
    );
}

/// Opset 11+ models keep every node; only initializer inputs leave.
#[test]
fn new_opsets_keep_their_nodes() {
    let mut c = Case::new(13, 19);
    let x = c.input("x", &[2, 3]);
    let w = c.weight("w", &[3], -1.0, 1.0);
    c.node("Add", &[&x, &w], &["y"], vec![]);
    c.node("Softmax", &["y"], &["z"], vec![]);
    c.outputs(&["z"]);
    let before = c.model();
    let mut up = before.clone();
    let r = upgrade(&mut up).unwrap();
    assert!(!r.changed_opset() && r.rewritten.is_empty());
    assert_eq!(r.initializer_inputs, vec!["w".to_string()]);
    assert_eq!(up.graph().node, before.graph().node);
    assert_eq!(up.graph().input.len(), 1);
}

/// A model of opset 11–15 whose MaxPool windows overlap (3×3, stride 2: every
/// ResNet stem) needs opset 16's ScatterElements(reduction=add) for its
/// gradient. Rather than refuse with "convert the file with Python", koala
/// upgrades it like an old model: opset 12's Unsqueeze `axes` attribute and
/// coerce-to-2-D Softmax are rewritten, and the outputs are ONNX Runtime's
/// for the opset-12 original. The note names the node.
#[test]
fn an_overlapping_max_pool_lifts_opset_12_to_17() {
    let mut c = Case::new(12, 21);
    let x = c.input("x", &[1, 2, 7, 7]);
    let pool = vec![a_ints("kernel_shape", &[3, 3]), a_ints("strides", &[2, 2])];
    c.node("MaxPool", &[&x], &["p"], pool);
    c.node("Unsqueeze", &["p"], &["u"], vec![a_ints("axes", &[0])]);
    c.node("Softmax", &["u"], &["y"], vec![a_int("axis", 2)]);
    c.outputs(&["y"]);
    let r = check(&c, &[]);
    let note = r.note();
    assert!(
        note.starts_with("opset 12 upgraded to 17 for training (node #0")
            && note.contains("MaxPool with overlapping windows, whose gradient needs ScatterElements(reduction=add) of opset 16"),
        "{note}"
    );
    assert_eq!(r.rewritten.get("Unsqueeze"), Some(&1), "{r:?}");
    assert_eq!(r.rewritten.get("Softmax"), Some(&1), "{r:?}");
}

/// Windows that do not overlap (2×2, stride 2) need no scatter-add: an
/// opset-12 model keeps its opset and nodes.
#[test]
fn a_max_pool_without_overlap_keeps_opset_12() {
    let mut c = Case::new(12, 22);
    let x = c.input("x", &[1, 2, 6, 6]);
    let pool = vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])];
    c.node("MaxPool", &[&x], &["y"], pool);
    c.outputs(&["y"]);
    let before = c.model();
    let mut up = before.clone();
    let r = upgrade(&mut up).unwrap();
    assert!(!r.changed_opset() && r.reason.is_none(), "{r:?}");
    assert_eq!(up.graph().node, before.graph().node);
}
