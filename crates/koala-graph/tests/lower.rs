//! The lowering pass (`koala_graph::lower`) against ONNX Runtime's own
//! kernels: each case builds a tiny model around one ORT-specific node, runs
//! it in ORT (the ground truth: stock ORT ships CPU kernels for every op
//! lowered here), lowers a copy, runs that, and requires every output — the
//! optional ones too — to agree.
//!
//! Tolerance: max |diff| ≤ 1e-5 on f32 values of magnitude ≲ 10. Both sides
//! compute the same formula in f32 but in a different order (ORT's fused
//! kernels accumulate mean and mean-square in one pass, MLAS evaluates
//! tanh/erf with its own polynomials), which costs a few ulps (ulp(4) ≈
//! 4.8e-7); a wrong formula, constant, axis or index is off by ≳ 1e-2.
//!
//! Both sessions run with ORT's graph optimizations off, so ORT cannot fuse
//! the lowered standard ops back into the contrib kernels it is compared with.

use koala_graph::attrs::{a_float, a_int};
use koala_graph::lower::{lower, unsupported_custom_ops, Lowered, MS_DOMAIN};
use koala_graph::proto::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use koala_graph::{tensor, Model};
use koala_runtime::{OptimizationLevel, OwnedTensor, Session, SessionOptions, TensorView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// See the module docs for the reason.
const TOL: f64 = 1e-5;

/// f64 cases: the same reassociation costs a few ulps of 1 (2.2e-16 each)
/// per accumulated term; 1e-12 leaves three orders of margin and still
/// catches any formula error.
const TOL_F64: f64 = 1e-12;

/// Standard ops a lowered graph may contain: the ones koala has (or will
/// have) gradient rules for, plus Constant and the integer-only Shape.
const STANDARD: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "ReduceMean",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Gather",
    "Slice",
    "Concat",
    "Neg",
    "Reshape",
    "Transpose",
    "Unsqueeze",
    "LayerNormalization",
    "Constant",
    "Shape",
];

enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// A tiny model under construction: typed graph inputs with static shapes
/// (fed with random data), initializers, nodes, named outputs.
struct Case {
    opset: i64,
    /// Float data and weights in f64 instead of f32.
    double: bool,
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
            double: false,
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

    /// The same case in f64.
    fn f64(mut self) -> Case {
        self.double = true;
        self
    }

    /// A float graph input with values in [lo, hi).
    fn input(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let v = self.uniform(shape.iter().product(), lo, hi);
        let data = if self.double {
            Data::F64(v.into_iter().map(f64::from).collect())
        } else {
            Data::F32(v)
        };
        self.inputs.push((name.into(), shape.to_vec(), data));
        name.into()
    }

    /// An int64 graph input.
    fn int_input(&mut self, name: &str, shape: &[usize], values: Vec<i64>) -> String {
        self.inputs
            .push((name.into(), shape.to_vec(), Data::I64(values)));
        name.into()
    }

    /// A float initializer with values in [lo, hi).
    fn weight(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let v = self.uniform(shape.iter().product(), lo, hi);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.inits.push(if self.double {
            let v: Vec<f64> = v.into_iter().map(f64::from).collect();
            tensor::from_f64(name, &dims, &v)
        } else {
            tensor::from_f32(name, &dims, &v)
        });
        name.into()
    }

    /// Appends a node (`domain` "" for the default domain).
    fn node(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<koala_graph::proto::AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: format!("{}_{}", op.to_lowercase(), self.nodes.len()),
            op_type: op.into(),
            domain: domain.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    fn outputs(&mut self, names: &[&str]) {
        self.outputs = names.iter().map(|s| s.to_string()).collect();
    }

    fn model(&self) -> Model {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: self.opset,
        }];
        if self.nodes.iter().any(|n| n.domain == MS_DOMAIN) {
            opset_import.push(OperatorSetIdProto {
                domain: MS_DOMAIN.into(),
                version: 1,
            });
        }
        for n in &self.nodes {
            if !n.domain.is_empty() && !opset_import.iter().any(|o| o.domain == n.domain) {
                opset_import.push(OperatorSetIdProto {
                    domain: n.domain.clone(),
                    version: 1,
                });
            }
        }
        let inputs = self
            .inputs
            .iter()
            .map(|(name, shape, d)| {
                let dt = match d {
                    Data::F32(_) => koala_graph::proto::DataType::Float,
                    Data::F64(_) => koala_graph::proto::DataType::Double,
                    Data::I64(_) => koala_graph::proto::DataType::Int64,
                };
                koala_graph::training::value_info(name, dt, shape)
            })
            .collect();
        let outputs = self
            .outputs
            .iter()
            .map(|name| ValueInfoProto {
                name: name.clone(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: if self.double {
                            koala_graph::proto::DataType::Double as i32
                        } else {
                            koala_graph::proto::DataType::Float as i32
                        },
                        shape: None,
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let proto = ModelProto {
            // Opset 23 needs IR version 11.
            ir_version: if self.opset >= 23 { 11 } else { 8 },
            opset_import,
            producer_name: "koala-graph lower tests".into(),
            graph: Some(GraphProto {
                name: "lower".into(),
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

    /// Runs `model` on this case's inputs; outputs by name.
    fn run(&self, model: &Model) -> HashMap<String, OwnedTensor> {
        let feeds: Vec<(&str, TensorView)> = self
            .inputs
            .iter()
            .map(|(name, shape, d)| {
                let view = match d {
                    Data::F32(v) => TensorView::f32(v, shape),
                    Data::F64(v) => TensorView::f64(v, shape),
                    Data::I64(v) => TensorView::i64(v, shape),
                };
                (name.as_str(), view)
            })
            .collect();
        run_model(model, &feeds)
    }
}

/// Runs `model` in ORT with graph optimizations off; outputs by name.
fn run_model(model: &Model, feeds: &[(&str, TensorView)]) -> HashMap<String, OwnedTensor> {
    let opts = SessionOptions {
        intra_threads: Some(1),
        optimization: OptimizationLevel::Disable,
        ..SessionOptions::default()
    };
    let mut session = Session::from_bytes(&model.to_bytes(), &opts)
        .unwrap_or_else(|e| panic!("ORT cannot load the model: {e}"));
    session
        .run(feeds)
        .unwrap_or_else(|e| panic!("ORT failed to run the model: {e}"))
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// max |a − b|, NaN if either holds a NaN (a NaN must fail every check).
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if m.is_nan() || d.is_nan() {
                f64::NAN
            } else {
                m.max(d)
            }
        })
}

/// A float output as f64.
fn values(t: &OwnedTensor) -> Vec<f64> {
    match (t.as_f32(), t.as_f64()) {
        (Some(v), _) => v.iter().map(|&x| f64::from(x)).collect(),
        (_, Some(v)) => v.to_vec(),
        _ => panic!("output '{}' is not a float tensor", t.name),
    }
}

/// Lowers `case`'s model, checks that only standard ops remain (and no
/// custom domain in the imports), runs both, and compares every output.
fn check(case: &Case) -> Lowered {
    check_against(case, &case.model())
}

/// As [`check`], with the ground truth computed by `reference` (a model of
/// the same inputs and outputs) instead of the case's own model.
fn check_against(case: &Case, reference: &Model) -> Lowered {
    let want = case.run(reference);
    let mut lowered = case.model();
    let report = lower(&mut lowered).unwrap_or_else(|e| panic!("lower failed: {e:#}"));
    assert!(
        report.left.is_empty(),
        "nodes left unlowered: {:?}",
        report.left
    );
    let ms_nodes = case.nodes.iter().filter(|n| n.domain == MS_DOMAIN).count();
    assert!(
        report.total() >= ms_nodes && report.total() > 0,
        "{report:?}"
    );
    let original: Vec<&str> = case.nodes.iter().map(|n| n.name.as_str()).collect();
    let added = lowered
        .graph()
        .node
        .iter()
        .filter(|n| !original.contains(&n.name.as_str()));
    for n in added {
        assert!(
            n.domain.is_empty() && STANDARD.contains(&n.op_type.as_str()),
            "lowered graph still has {}::{} (node '{}')",
            n.domain,
            n.op_type,
            n.name
        );
    }
    assert!(
        lowered
            .proto
            .opset_import
            .iter()
            .all(|o| o.domain.is_empty()),
        "com.microsoft should be dropped from opset_import: {:?}",
        lowered.proto.opset_import
    );
    let got = case.run(&lowered);
    let tol = if case.double { TOL_F64 } else { TOL };
    let mut problems = Vec::new();
    for name in &case.outputs {
        let (w, g) = (&want[name], &got[name]);
        if w.shape != g.shape {
            problems.push(format!(
                "{name}: shape {:?} (lowered) vs {:?} (ORT)",
                g.shape, w.shape
            ));
            continue;
        }
        let (w, g) = (values(w), values(g));
        let worst = max_abs_diff(&w, &g);
        eprintln!("  {name:<24} n={:<5} max|diff| {worst:.2e}", w.len());
        if worst.is_nan() || worst > tol {
            problems.push(format!(
                "{name}: max |diff| {worst:.3e} > {tol:.0e} (ORT {:?}…, lowered {:?}…)",
                &w[..w.len().min(6)],
                &g[..g.len().min(6)]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "lowered graph disagrees with ORT's kernels (tolerance {tol:.0e}: reassociation, see module docs):\n  {}",
        problems.join("\n  ")
    );
    report
}

// ---------------------------------------------------------------------------
// RMSNorm family.

#[test]
fn simplified_layer_norm_matches_ort_with_inv_std_var() {
    for opset in [17, 18] {
        let mut c = Case::new(opset, 1);
        let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
        let s = c.weight("scale", &[16], 0.5, 1.5);
        c.node(
            "",
            "SimplifiedLayerNormalization",
            &[&x, &s],
            &["y", "inv_std_var"],
            vec![a_float("epsilon", 1e-6)],
        );
        c.outputs(&["y", "inv_std_var"]);
        let r = check(&c);
        assert_eq!(r.rewritten["SimplifiedLayerNormalization"], 1);
    }
}

#[test]
fn simplified_layer_norm_with_positive_axis_normalizes_the_trailing_axes() {
    let mut c = Case::new(17, 2);
    let x = c.input("x", &[2, 3, 8], -2.0, 2.0);
    let s = c.weight("scale", &[3, 8], 0.5, 1.5);
    c.node(
        "",
        "SimplifiedLayerNormalization",
        &[&x, &s],
        &["y", "inv_std_var"],
        vec![a_int("axis", 1)],
    );
    c.outputs(&["y", "inv_std_var"]);
    check(&c);
}

/// ORT registers SimplifiedLayerNormalization only in the default domain, so
/// the com.microsoft spelling some exporters write is compared with it.
#[test]
fn simplified_layer_norm_in_the_microsoft_domain_is_lowered_the_same() {
    let build = |domain: &str| {
        let mut c = Case::new(17, 3);
        let x = c.input("x", &[2, 5, 16], -2.0, 2.0);
        let s = c.weight("scale", &[16], 0.5, 1.5);
        c.node(
            domain,
            "SimplifiedLayerNormalization",
            &[&x, &s],
            &["y"],
            vec![],
        );
        c.outputs(&["y"]);
        c
    };
    let reference = build("").model();
    let r = check_against(&build(MS_DOMAIN), &reference);
    assert_eq!(
        r.rewritten["com.microsoft::SimplifiedLayerNormalization"],
        1
    );
}

#[test]
fn rms_normalization_opset_23_matches_ort() {
    let mut c = Case::new(23, 4);
    let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
    let s = c.weight("scale", &[16], 0.5, 1.5);
    c.node("", "RMSNormalization", &[&x, &s], &["y"], vec![]);
    c.outputs(&["y"]);
    check(&c);
}

#[test]
fn skip_simplified_layer_norm_matches_ort_on_every_output() {
    // skip [B,S,H], [1,S,H] and [S,H]; with and without bias.
    for (k, (skip_shape, bias)) in [
        (vec![2, 3, 16], true),
        (vec![2, 3, 16], false),
        (vec![1, 3, 16], true),
        (vec![3, 16], false),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("skip {skip_shape:?} bias {bias}");
        let mut c = Case::new(17, 10 + k as u64);
        let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
        let skip = c.input("skip", &skip_shape, -2.0, 2.0);
        let g = c.weight("gamma", &[16], 0.5, 1.5);
        let mut ins = vec![x, skip, g];
        if bias {
            ins.push(c.weight("bias", &[16], -0.5, 0.5));
        }
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        c.node(
            MS_DOMAIN,
            "SkipSimplifiedLayerNormalization",
            &ins,
            &["y", "mean", "inv_std_var", "input_skip_bias_sum"],
            vec![a_float("epsilon", 1e-6)],
        );
        c.outputs(&["y", "mean", "inv_std_var", "input_skip_bias_sum"]);
        check(&c);
    }
}

// ---------------------------------------------------------------------------
// LayerNorm family.

#[test]
fn skip_layer_norm_matches_ort_on_every_output_with_and_without_beta_and_bias() {
    // Opset 17: standard LayerNormalization; opset 14: its decomposition.
    for opset in [14, 17, 18] {
        for (beta, bias) in [(true, true), (true, false), (false, true), (false, false)] {
            eprintln!("opset {opset} beta {beta} bias {bias}");
            let mut c = Case::new(opset, 20);
            let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
            let skip = c.input("skip", &[2, 3, 16], -2.0, 2.0);
            let g = c.weight("gamma", &[16], 0.5, 1.5);
            let b = c.weight("beta", &[16], -0.5, 0.5);
            let bi = c.weight("bias", &[16], -0.5, 0.5);
            let ins: Vec<&str> = match (beta, bias) {
                (true, true) => vec![&x, &skip, &g, &b, &bi],
                (true, false) => vec![&x, &skip, &g, &b],
                (false, true) => vec![&x, &skip, &g, "", &bi],
                (false, false) => vec![&x, &skip, &g],
            };
            c.node(
                MS_DOMAIN,
                "SkipLayerNormalization",
                &ins,
                &["y", "mean", "inv_std_var", "input_skip_bias_sum"],
                vec![a_float("epsilon", 1e-5)],
            );
            c.outputs(&["y", "mean", "inv_std_var", "input_skip_bias_sum"]);
            let r = check(&c);
            assert_eq!(r.rewritten["com.microsoft::SkipLayerNormalization"], 1);
        }
    }
}

/// f64 data: the rewrites compute in f64 too. (ORT's Skip* schemas reject
/// f64, so its f64 ground truth is the two default-domain norms.)
fn f64_norm_case(op: &str, opset: i64, outputs: &[&str]) -> Case {
    let mut c = Case::new(opset, 23).f64();
    let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
    let g = c.weight("gamma", &[16], 0.5, 1.5);
    let b = c.weight("beta", &[16], -0.5, 0.5);
    let ins: &[&str] = if op == "LayerNormalization" {
        &[&x, &g, &b]
    } else {
        &[&x, &g]
    };
    c.node("", op, ins, outputs, vec![a_float("epsilon", 1e-5)]);
    c.outputs(outputs);
    c
}

#[test]
fn norms_in_f64_match_ort() {
    for (op, opset) in [
        ("SimplifiedLayerNormalization", 17),
        ("LayerNormalization", 14),
    ] {
        eprintln!("{op} opset {opset} f64");
        check(&f64_norm_case(op, opset, &["y"]));
    }
}

/// With f64 data ORT still declares the statistics f32 (stash_type 1);
/// the rewrite has no Cast to match that, so such a node is reported.
#[test]
fn f64_norm_with_f32_statistics_is_reported_not_lowered() {
    let c = f64_norm_case("SimplifiedLayerNormalization", 17, &["y", "inv_std_var"]);
    let found = unsupported_custom_ops(&c.model());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].reason.contains("stash_type"), "{}", found[0]);
}

#[test]
fn skip_layer_norm_with_only_the_first_output_matches_ort() {
    let mut c = Case::new(17, 21);
    let x = c.input("x", &[2, 4, 8], -2.0, 2.0);
    let skip = c.input("skip", &[4, 8], -2.0, 2.0);
    let g = c.weight("gamma", &[8], 0.5, 1.5);
    c.node(
        MS_DOMAIN,
        "SkipLayerNormalization",
        &[&x, &skip, &g],
        &["y"],
        vec![],
    );
    c.outputs(&["y"]);
    check(&c);
}

/// Below opset 17 ORT accepts LayerNormalization in the default domain (its
/// own registration); the pass decomposes it.
#[test]
fn layer_normalization_below_opset_17_is_decomposed() {
    let mut c = Case::new(14, 22);
    let x = c.input("x", &[2, 3, 16], -2.0, 2.0);
    let g = c.weight("gamma", &[16], 0.5, 1.5);
    let b = c.weight("beta", &[16], -0.5, 0.5);
    c.node(
        "",
        "LayerNormalization",
        &[&x, &g, &b],
        &["y", "mean", "inv_std_dev"],
        vec![a_float("epsilon", 1e-5)],
    );
    c.outputs(&["y", "mean", "inv_std_dev"]);
    check(&c);
}

// ---------------------------------------------------------------------------
// Gelu family.

#[test]
fn fast_gelu_matches_ort_with_and_without_bias() {
    for bias in [false, true] {
        let mut c = Case::new(17, 30);
        let x = c.input("x", &[2, 3, 32], -5.0, 5.0);
        let mut ins = vec![x];
        if bias {
            ins.push(c.weight("bias", &[32], -1.0, 1.0));
        }
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        c.node(MS_DOMAIN, "FastGelu", &ins, &["y"], vec![]);
        c.outputs(&["y"]);
        check(&c);
    }
}

#[test]
fn gelu_and_bias_gelu_match_ort() {
    let mut c = Case::new(17, 31);
    let x = c.input("x", &[2, 3, 32], -5.0, 5.0);
    let b = c.weight("b", &[32], -1.0, 1.0);
    c.node(MS_DOMAIN, "Gelu", &[&x], &["y"], vec![]);
    c.node(MS_DOMAIN, "BiasGelu", &[&x, &b], &["z"], vec![]);
    c.outputs(&["y", "z"]);
    let r = check(&c);
    assert_eq!(r.rewritten["com.microsoft::Gelu"], 1);
    assert_eq!(r.rewritten["com.microsoft::BiasGelu"], 1);
}

#[test]
fn quick_gelu_matches_ort_with_default_and_given_alpha() {
    let mut c = Case::new(17, 33);
    let x = c.input("x", &[2, 3, 32], -5.0, 5.0);
    c.node(MS_DOMAIN, "QuickGelu", &[&x], &["y"], vec![]);
    c.node(
        MS_DOMAIN,
        "QuickGelu",
        &[&x],
        &["z"],
        vec![a_float("alpha", 1.5)],
    );
    c.outputs(&["y", "z"]);
    assert_eq!(check(&c).rewritten["com.microsoft::QuickGelu"], 2);
}

/// The lowered node's output keeps its name, so the consumer after it runs
/// unchanged; the element type comes through a MatMul nothing annotates.
#[test]
fn consumers_of_a_lowered_value_are_unchanged() {
    let mut c = Case::new(18, 32);
    let x = c.input("x", &[4, 8], -1.0, 1.0);
    let w = c.weight("w", &[8, 8], -1.0, 1.0);
    let b = c.weight("b", &[8], -0.5, 0.5);
    c.node("", "MatMul", &[&x, &w], &["h"], vec![]);
    c.node(MS_DOMAIN, "FastGelu", &["h", &b], &["act"], vec![]);
    c.node("", "Mul", &["act", "act"], &["y"], vec![]);
    c.outputs(&["y", "act"]);
    check(&c);
}

// ---------------------------------------------------------------------------
// RotaryEmbedding.

const B: usize = 2;
const S: usize = 3;
const N: usize = 2;
const H: usize = 8;
const MAX_POS: usize = 12;

#[derive(Clone, Copy, Debug)]
enum Pos {
    /// position_ids [B,S].
    PerToken,
    /// position_ids [1]: an offset.
    Offset,
}

/// One contrib RotaryEmbedding case: input rank 3 ([B,S,N·H]) or 4
/// ([B,N,S,H]), rotary dimension `r` (H: full), interleaved or not.
fn rotary_case(rank: usize, r: usize, interleaved: bool, pos: Pos, heads_attr: bool) -> Case {
    let mut c = Case::new(17, (rank * 100 + r * 10 + interleaved as usize) as u64);
    let shape: Vec<usize> = if rank == 3 {
        vec![B, S, N * H]
    } else {
        vec![B, N, S, H]
    };
    let x = c.input("x", &shape, -2.0, 2.0);
    let p = match pos {
        Pos::PerToken => {
            let ids: Vec<i64> = (0..B * S)
                .map(|_| c.rng.random_range(0..MAX_POS as i64))
                .collect();
            c.int_input("position_ids", &[B, S], ids)
        }
        Pos::Offset => c.int_input("position_ids", &[1], vec![4]),
    };
    let cos = c.weight("cos_cache", &[MAX_POS, r / 2], -1.0, 1.0);
    let sin = c.weight("sin_cache", &[MAX_POS, r / 2], -1.0, 1.0);
    let mut attrs = vec![a_int("interleaved", interleaved as i64)];
    if r < H || heads_attr {
        attrs.push(a_int("num_heads", N as i64));
    }
    if r < H {
        attrs.push(a_int("rotary_embedding_dim", r as i64));
    }
    c.node(
        MS_DOMAIN,
        "RotaryEmbedding",
        &[&x, &p, &cos, &sin],
        &["y"],
        attrs,
    );
    c.outputs(&["y"]);
    c
}

#[test]
fn rotary_embedding_matches_ort_in_every_variant() {
    for rank in [3, 4] {
        for r in [H, H / 2] {
            for interleaved in [false, true] {
                for pos in [Pos::PerToken, Pos::Offset] {
                    eprintln!("rank {rank} rotary_dim {r} interleaved {interleaved} {pos:?}");
                    check(&rotary_case(rank, r, interleaved, pos, false));
                }
            }
        }
    }
}

#[test]
fn rotary_caches_are_reported_as_fixed_tables() {
    let r = check(&rotary_case(3, H, false, Pos::PerToken, false));
    assert_eq!(r.fixed_tables, vec!["cos_cache", "sin_cache"]);
    // Caches fed as graph inputs are no initializers to freeze.
    let r = check(&rotary23_case(3, H, false, false));
    assert!(r.fixed_tables.is_empty(), "{:?}", r.fixed_tables);
}

#[test]
fn rotary_embedding_with_num_heads_on_full_rotation_matches_ort() {
    for rank in [3, 4] {
        check(&rotary_case(rank, H, false, Pos::PerToken, true));
    }
}

/// Real files feed RotaryEmbedding from a projection nothing annotates: the
/// pass carries the rank (3) through the MatMul, and the element type.
#[test]
fn rotary_embedding_on_an_unannotated_projection_matches_ort() {
    let mut c = Case::new(17, 77);
    let x = c.input("x", &[B, S, N * H], -1.0, 1.0);
    let w = c.weight("w_q", &[N * H, N * H], -0.5, 0.5);
    c.node("", "MatMul", &[&x, &w], &["q"], vec![]);
    let p = c.int_input("position_ids", &[1], vec![2]);
    let cos = c.weight("cos_cache", &[MAX_POS, H / 4], -1.0, 1.0);
    let sin = c.weight("sin_cache", &[MAX_POS, H / 4], -1.0, 1.0);
    c.node(
        MS_DOMAIN,
        "RotaryEmbedding",
        &["q", &p, &cos, &sin],
        &["y"],
        vec![
            a_int("num_heads", N as i64),
            a_int("rotary_embedding_dim", H as i64 / 2),
        ],
    );
    c.outputs(&["y"]);
    check(&c);
}

/// One ONNX RotaryEmbedding-23 case: X, cos, sin, position_ids? (absent:
/// caches [B,S,R/2] already indexed).
fn rotary23_case(rank: usize, r: usize, interleaved: bool, with_ids: bool) -> Case {
    let mut c = Case::new(
        23,
        500 + (rank * 100 + r * 10 + interleaved as usize) as u64,
    );
    let shape: Vec<usize> = if rank == 3 {
        vec![B, S, N * H]
    } else {
        vec![B, N, S, H]
    };
    let x = c.input("x", &shape, -2.0, 2.0);
    let mut ins = vec![x];
    if with_ids {
        let ids: Vec<i64> = (0..B * S)
            .map(|_| c.rng.random_range(0..MAX_POS as i64))
            .collect();
        ins.push(c.weight("cos_cache", &[MAX_POS, r / 2], -1.0, 1.0));
        ins.push(c.weight("sin_cache", &[MAX_POS, r / 2], -1.0, 1.0));
        ins.push(c.int_input("position_ids", &[B, S], ids));
    } else {
        ins.push(c.input("cos_cache", &[B, S, r / 2], -1.0, 1.0));
        ins.push(c.input("sin_cache", &[B, S, r / 2], -1.0, 1.0));
    }
    let mut attrs = vec![a_int("interleaved", interleaved as i64)];
    if rank == 3 {
        attrs.push(a_int("num_heads", N as i64));
    }
    if r < H {
        attrs.push(a_int("rotary_embedding_dim", r as i64));
    }
    let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
    c.node("", "RotaryEmbedding", &ins, &["y"], attrs);
    c.outputs(&["y"]);
    c
}

#[test]
fn rotary_embedding_opset_23_matches_ort() {
    for rank in [3, 4] {
        for r in [H, H / 2] {
            for interleaved in [false, true] {
                for with_ids in [true, false] {
                    eprintln!(
                        "rank {rank} rotary_dim {r} interleaved {interleaved} ids {with_ids}"
                    );
                    let rep = check(&rotary23_case(rank, r, interleaved, with_ids));
                    assert_eq!(rep.rewritten["RotaryEmbedding"], 1);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What cannot be lowered.

#[test]
fn unknown_microsoft_op_is_reported_with_node_op_domain_and_remedy() {
    let mut c = Case::new(17, 40);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    c.node(MS_DOMAIN, "MatMulNBits", &[&x, "x"], &["h"], vec![]);
    c.node(MS_DOMAIN, "FastGelu", &["h"], &["y"], vec![]);
    c.node("custom.ops", "MyOp", &["y"], &["z"], vec![]);
    c.outputs(&["z"]);
    let model = c.model();
    let found = unsupported_custom_ops(&model);
    assert_eq!(found.len(), 2, "{found:?}");
    let msg = found[0].to_string();
    for part in [
        "node #0",
        "matmulnbits_0",
        "MatMulNBits",
        "com.microsoft",
        "re-export",
    ] {
        assert!(msg.contains(part), "message lacks '{part}': {msg}");
    }
    let msg = found[1].to_string();
    for part in ["node #2", "myop_2", "MyOp", "custom.ops"] {
        assert!(msg.contains(part), "message lacks '{part}': {msg}");
    }
    // lower rewrites what it can and keeps the domain still in use.
    let mut lowered = model.clone();
    let r = lower(&mut lowered).unwrap();
    assert_eq!(r.total(), 1);
    assert_eq!(r.left, found);
    assert!(lowered
        .proto
        .opset_import
        .iter()
        .any(|o| o.domain == MS_DOMAIN));
    assert!(lowered
        .graph()
        .node
        .iter()
        .any(|n| n.op_type == "MatMulNBits"));
    // Indices now count the lowered graph's nodes; the nodes are the same.
    let key = |o: &koala_graph::lower::UnsupportedOp| {
        (o.name.clone(), o.op_type.clone(), o.domain.clone())
    };
    let after: Vec<_> = unsupported_custom_ops(&lowered).iter().map(key).collect();
    assert_eq!(after, found.iter().map(key).collect::<Vec<_>>());
}

#[test]
fn packed_batching_rotary_embedding_is_reported_not_lowered() {
    let mut c = rotary_case(3, H, false, Pos::PerToken, false);
    c.nodes[0].attribute.push(a_int("is_packed_batching", 1));
    let found = unsupported_custom_ops(&c.model());
    assert_eq!(found.len(), 1);
    assert!(
        found[0].reason.contains("is_packed_batching"),
        "{}",
        found[0]
    );
}

#[test]
fn missing_required_input_is_an_error_naming_node_and_input() {
    let mut c = Case::new(17, 41);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    c.node(
        MS_DOMAIN,
        "SkipLayerNormalization",
        &[&x, &x],
        &["y"],
        vec![],
    );
    c.outputs(&["y"]);
    let err = lower(&mut c.model()).unwrap_err().to_string();
    for part in ["skiplayernormalization_0", "gamma", "re-export"] {
        assert!(err.contains(part), "error lacks '{part}': {err}");
    }
}

/// A data input whose element type nothing records cannot get constants of
/// the right type: the node is reported, not guessed at.
#[test]
fn unknown_element_type_is_reported_not_guessed() {
    let mut c = Case::new(17, 43);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    c.node("custom.ops", "Opaque", &[&x], &["h"], vec![]);
    c.node(MS_DOMAIN, "Gelu", &["h"], &["y"], vec![]);
    c.outputs(&["y"]);
    let mut m = c.model();
    // The custom op's output type is carried from its input; drop the
    // graph input's type so nothing is known.
    m.graph_mut().input[0].r#type = None;
    let found = unsupported_custom_ops(&m);
    let gelu = found
        .iter()
        .find(|o| o.op_type == "Gelu")
        .expect("Gelu reported");
    assert!(gelu.reason.contains("element type"), "{gelu}");
    assert!(gelu.to_string().contains("gelu_1"), "{gelu}");
}

#[test]
fn ort_private_default_domain_op_is_reported() {
    let mut c = Case::new(11, 44);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    c.node("", "ScaledTanh", &[&x], &["y"], vec![]);
    c.outputs(&["y"]);
    let found = unsupported_custom_ops(&c.model());
    assert_eq!(found.len(), 1, "{found:?}");
    let msg = found[0].to_string();
    assert!(
        msg.contains("ScaledTanh") && msg.contains("ONNX Runtime"),
        "{msg}"
    );
}

/// From opset 17 LayerNormalization is standard: it stays as it is.
#[test]
fn standard_layer_normalization_is_not_touched() {
    let mut c = Case::new(17, 45);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    let g = c.weight("gamma", &[8], 0.5, 1.5);
    c.node("", "LayerNormalization", &[&x, &g], &["y"], vec![]);
    c.outputs(&["y"]);
    let mut m = c.model();
    assert!(lower(&mut m).unwrap().is_empty());
    assert_eq!(m.graph().node[0].op_type, "LayerNormalization");
}

#[test]
fn a_model_without_ort_ops_is_left_alone() {
    let mut c = Case::new(17, 42);
    let x = c.input("x", &[2, 8], -1.0, 1.0);
    c.node("", "Relu", &[&x], &["y"], vec![]);
    c.outputs(&["y"]);
    let mut m = c.model();
    let before = m.to_bytes();
    let r = lower(&mut m).unwrap();
    assert!(r.is_empty() && r.left.is_empty());
    assert_eq!(m.to_bytes(), before);
    assert!(unsupported_custom_ops(&m).is_empty());
}

// ---------------------------------------------------------------------------
// A real file.

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_gpt_ort_fused")
        .join(name)
}

fn read_le<T, const N: usize>(name: &str, from: fn([u8; N]) -> T) -> Vec<T> {
    std::fs::read(fixture(name))
        .unwrap_or_else(|e| panic!("cannot read fixture {name}: {e}"))
        .chunks_exact(N)
        .map(|b| from(b.try_into().unwrap()))
        .collect()
}

/// tiny_gpt after ONNX Runtime's transformer optimizer (fixture README):
/// its 4 SkipLayerNormalization and 2 BiasGelu lower to standard ops and the
/// logits stay those of ORT's fused kernels (tolerance as in the module
/// docs) and of the PyTorch float64 reference (ORT's unfused f32 run is
/// 4.8e-7 from it per the case's own record; 1e-5 leaves room for the
/// reassociation above on logits up to ~10).
#[test]
fn ort_fused_tiny_gpt_lowers_to_standard_ops_with_the_same_logits() {
    let model = Model::load(&fixture("model.onnx")).expect("fixture loads");
    let ids: Vec<i64> = read_le("input_ids.i64", i64::from_le_bytes);
    let torch: Vec<f32> = read_le("logits_torch_f64.f32", f32::from_le_bytes);
    let shape = [2usize, 12];
    let feeds = [("input_ids", TensorView::i64(&ids, &shape))];
    let fused = run_model(&model, &feeds)["logits"].clone();

    let mut lowered = model.clone();
    let report = lower(&mut lowered).expect("lowering succeeds");
    eprintln!("{report}");
    assert_eq!(report.rewritten["com.microsoft::SkipLayerNormalization"], 4);
    assert_eq!(report.rewritten["com.microsoft::BiasGelu"], 2);
    assert!(report.left.is_empty(), "{:?}", report.left);
    assert!(unsupported_custom_ops(&lowered).is_empty());
    assert!(lowered.graph().node.iter().all(|n| n.domain.is_empty()));
    assert!(lowered
        .proto
        .opset_import
        .iter()
        .all(|o| o.domain.is_empty()));
    // The lowered model is a valid file on its own.
    Model::from_bytes(&lowered.to_bytes()).expect("lowered model re-validates");

    let got = run_model(&lowered, &feeds)["logits"].clone();
    assert_eq!(got.shape, vec![2, 12, 97]);
    let (got, fused) = (values(&got), values(&fused));
    let torch: Vec<f64> = torch.into_iter().map(f64::from).collect();
    let vs_ort = max_abs_diff(&got, &fused);
    let vs_torch = max_abs_diff(&got, &torch);
    let scale = torch.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!(
        "logits up to {scale:.2}: lowered vs ORT fused {vs_ort:.2e}, vs PyTorch f64 {vs_torch:.2e}"
    );
    assert!(
        vs_ort <= TOL,
        "lowered vs ORT fused kernels: {vs_ort:.3e} > {TOL:.0e}"
    );
    assert!(
        vs_torch <= TOL,
        "lowered vs PyTorch f64: {vs_torch:.3e} > {TOL:.0e}"
    );
}
