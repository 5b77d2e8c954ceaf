//! Resize (`backward/resize.rs`).
//!
//! (a) The interpolation matrices koala builds reproduce ONNX Runtime's own
//! Resize output, for every mode × coordinate transformation × nearest_mode,
//! up- and down-sampling with non-integer scales, scales and sizes inputs,
//! `axes` and `keep_aspect_ratio_policy`: this pins the matrices (hence the
//! gradient, their transpose) to the forward that ORT runs. Tolerance 1e-5
//! absolute on inputs in [−1, 1): ORT multiplies by the same f32 weights and
//! accumulates in f32 (error ≈ 1e-7); a wrong tap or weight is off by ≳ 1e-2.
//! (b) Finite-difference checks of the gradient. ORT has no f64 Resize
//! kernel, so these nets are f32 with `Fd::F32` (Resize is linear in X, so
//! under MSE the central difference is exact up to f32 roundoff; see
//! `common/mod.rs`). (c) Clear errors for what the rule does not cover.

mod common;

use common::{check, mse, mse_build_error, Check, Net, F32};
use koala_graph::attrs::{a_float, a_int, a_ints, a_string, a_tensor};
use koala_graph::backward::{interpolation_matrices, AxisMatrix};
use koala_graph::proto::{
    type_proto, AttributeProto, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TypeProto, ValueInfoProto,
};
use koala_graph::tensor;
use koala_runtime::{Session, SessionOptions, TensorView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One Resize configuration.
#[derive(Clone, Debug)]
struct Case {
    opset: i64,
    x: Vec<usize>,
    attrs: Vec<AttributeProto>,
    roi: Option<Vec<f32>>,
    scales: Option<Vec<f32>>,
    sizes: Option<Vec<i64>>,
}

impl Case {
    fn scales(opset: i64, x: &[usize], scales: &[f32], attrs: Vec<AttributeProto>) -> Case {
        Case {
            opset,
            x: x.to_vec(),
            attrs,
            roi: None,
            scales: Some(scales.to_vec()),
            sizes: None,
        }
    }

    fn sizes(opset: i64, x: &[usize], sizes: &[i64], attrs: Vec<AttributeProto>) -> Case {
        Case {
            sizes: Some(sizes.to_vec()),
            scales: None,
            ..Case::scales(opset, x, &[], attrs)
        }
    }

    fn with_roi(mut self, roi: &[f32]) -> Case {
        self.roi = Some(roi.to_vec());
        self
    }

    /// Input names of the Resize node and the initializers behind them.
    /// Before opset 13, roi and scales are required inputs (empty tensors
    /// when unused).
    fn inputs(&self, x: &str) -> (Vec<String>, Vec<TensorProto>) {
        let mut names = vec![x.to_string()];
        let mut inits = Vec::new();
        let old = self.opset < 13;
        let mut float_input = |name: &str, v: &Option<Vec<f32>>, names: &mut Vec<String>| match v {
            Some(v) => {
                inits.push(tensor::from_f32(name, &[v.len() as i64], v));
                names.push(name.into());
            }
            None if old => {
                inits.push(tensor::from_f32(name, &[0], &[]));
                names.push(name.into());
            }
            None => names.push(String::new()),
        };
        float_input("roi", &self.roi, &mut names);
        float_input("scales", &self.scales, &mut names);
        if let Some(s) = &self.sizes {
            inits.push(tensor::from_i64("sizes", &[s.len() as i64], s));
            names.push("sizes".into());
        }
        while names.last().is_some_and(|n| n.is_empty()) {
            names.pop();
        }
        (names, inits)
    }

    fn node(&self, x: &str, y: &str) -> (NodeProto, Vec<TensorProto>) {
        let (input, inits) = self.inputs(x);
        let node = NodeProto {
            name: "resize_under_test".into(),
            op_type: "Resize".into(),
            input,
            output: vec![y.into()],
            attribute: self.attrs.clone(),
            ..Default::default()
        };
        (node, inits)
    }
}

/// A float32 graph output of unknown shape.
fn f32_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ORT's Resize of random X: (X, Y's shape, Y).
fn ort_resize(c: &Case, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let (node, initializer) = c.node("x", "y");
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: c.opset,
        }],
        graph: Some(GraphProto {
            name: "resize".into(),
            node: vec![node],
            initializer,
            input: vec![koala_graph::training::value_info(
                "x",
                DataType::Float,
                &c.x,
            )],
            output: vec![f32_output("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&model);
    let mut s = Session::from_bytes(&bytes, &SessionOptions::default())
        .unwrap_or_else(|e| panic!("ORT cannot load {c:?}: {e}"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..c.x.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let out = s
        .run(&[("x", TensorView::f32(&x, &c.x))])
        .unwrap_or_else(|e| panic!("ORT cannot run {c:?}: {e}"));
    let y = out[0].as_f32().expect("f32 output").to_vec();
    (x, out[0].shape.clone(), y)
}

/// `values ×ₐ A` along `m.axis`.
fn apply(values: &[f64], shape: &[usize], m: &AxisMatrix) -> (Vec<f64>, Vec<usize>) {
    assert_eq!(shape[m.axis], m.input, "matrix input length");
    let before: usize = shape[..m.axis].iter().product();
    let after: usize = shape[m.axis + 1..].iter().product();
    let mut out = vec![0.0; before * m.output * after];
    for b in 0..before {
        for o in 0..m.output {
            for i in 0..m.input {
                let w = m.weights[o * m.input + i];
                for r in 0..after {
                    out[(b * m.output + o) * after + r] +=
                        w * values[(b * m.input + i) * after + r];
                }
            }
        }
    }
    let mut s = shape.to_vec();
    s[m.axis] = m.output;
    (out, s)
}

/// A short description of a case for failure messages.
fn describe(c: &Case) -> String {
    let attrs: Vec<String> = c
        .attrs
        .iter()
        .map(|a| {
            let v = if a.s.is_empty() {
                if a.ints.is_empty() {
                    format!("{}", if a.f != 0.0 { a.f as f64 } else { a.i as f64 })
                } else {
                    format!("{:?}", a.ints)
                }
            } else {
                String::from_utf8_lossy(&a.s).into_owned()
            };
            format!("{}={v}", a.name)
        })
        .collect();
    format!(
        "opset {} X {:?} [{}] scales {:?} sizes {:?} roi {:?}",
        c.opset,
        c.x,
        attrs.join(" "),
        c.scales,
        c.sizes,
        c.roi
    )
}

/// How far koala's matrices applied to X are from ORT's Y (Err: the case).
fn ort_mismatch(c: &Case, seed: u64) -> Result<(), String> {
    let (x, yshape, y) = ort_resize(c, seed);
    let (node, _) = c.node("x", "y");
    let to64 = |v: &Option<Vec<f32>>| {
        v.as_ref()
            .map(|v| v.iter().map(|&f| f as f64).collect::<Vec<_>>())
    };
    let mats = interpolation_matrices(
        &node,
        c.opset,
        &c.x,
        &yshape,
        to64(&c.scales).as_deref(),
        c.sizes.as_deref(),
        to64(&c.roi).as_deref(),
    )
    .map_err(|e| format!("{}: {e:#}", describe(c)))?;
    let (mut v, mut s): (Vec<f64>, Vec<usize>) =
        (x.iter().map(|&f| f as f64).collect(), c.x.clone());
    for m in &mats {
        (v, s) = apply(&v, &s, m);
    }
    if s != yshape {
        return Err(format!("{}: shape {s:?}, ORT {yshape:?}", describe(c)));
    }
    let worst = v
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    if worst > 1e-5 {
        return Err(format!(
            "{}: off by {worst:.3e}\n  X     {:?}\n  koala {:?}\n  ORT   {:?}",
            describe(c),
            &x[..x.len().min(40)],
            &v[..v.len().min(12)],
            &y[..y.len().min(12)]
        ));
    }
    Ok(())
}

/// Asserts that every case's matrices reproduce ORT's Resize.
fn all_match_ort(cases: &[Case], seed: u64) {
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(k, c)| ort_mismatch(c, seed + k as u64).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ORT:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const TRANSFORMS: &[(&str, i64)] = &[
    ("half_pixel", 13),
    ("pytorch_half_pixel", 13),
    ("align_corners", 13),
    ("asymmetric", 13),
    ("tf_crop_and_resize", 13),
    ("half_pixel_symmetric", 19),
    ("tf_half_pixel_for_nn", 11),
];

/// (mode attributes) of every mode variant: nearest × nearest_mode, linear,
/// cubic with the default and with PyTorch's coefficient and exclude_outside.
fn mode_variants() -> Vec<Vec<AttributeProto>> {
    let mut v: Vec<Vec<AttributeProto>> =
        ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
            .iter()
            .map(|m| vec![a_string("mode", "nearest"), a_string("nearest_mode", m)])
            .collect();
    v.push(vec![a_string("mode", "linear")]);
    v.push(vec![a_string("mode", "cubic")]);
    v.push(vec![
        a_string("mode", "cubic"),
        a_float("cubic_coeff_a", -0.5),
        a_int("exclude_outside", 1),
    ]);
    v
}

/// Every mode × coordinate transformation × nearest_mode, on up- and
/// down-sampling with non-integer scales, integer scales, and sizes.
#[test]
fn matrices_match_ort_for_every_mode_and_coordinate_transformation() {
    let x = [1, 2, 5, 7];
    let mut all = Vec::new();
    for &(ctm, opset) in TRANSFORMS {
        for mode in mode_variants() {
            let mut attrs = mode.clone();
            attrs.push(a_string("coordinate_transformation_mode", ctm));
            let mut cases = vec![
                Case::scales(opset, &x, &[1.0, 1.0, 1.7, 0.6], attrs.clone()),
                Case::scales(opset, &x, &[1.0, 1.0, 2.0, 3.0], attrs.clone()),
                Case::scales(opset, &x, &[1.0, 1.0, 0.5, 1.25], attrs.clone()),
                Case::sizes(opset, &x, &[1, 2, 3, 11], attrs.clone()),
                Case::sizes(opset, &x, &[1, 2, 1, 1], attrs.clone()),
            ];
            if ctm == "tf_crop_and_resize" {
                let roi = [0.0, 0.0, 0.1, 0.3, 1.0, 1.0, 0.8, 1.2];
                cases = cases.into_iter().map(|c| c.with_roi(&roi)).collect();
            }
            all.extend(cases);
        }
    }
    assert_eq!(all.len(), 7 * 7 * 5);
    all_match_ort(&all, 0);
}

/// Other layouts and ranks ORT's kernels take: NHWC linear, 5-D trilinear,
/// 2-D bilinear and bicubic, 3-D nearest; a shape-preserving scale (ORT copies).
#[test]
fn matrices_match_ort_for_other_ranks_and_layouts() {
    let lin = || vec![a_string("mode", "linear")];
    let cases = [
        Case::scales(13, &[1, 5, 7, 2], &[1.0, 1.7, 0.6, 1.0], lin()),
        Case::scales(13, &[1, 1, 3, 4, 5], &[1.0, 1.0, 1.5, 2.0, 0.6], lin()),
        Case::sizes(13, &[5, 7], &[8, 3], lin()),
        Case::sizes(13, &[5, 7], &[8, 3], vec![a_string("mode", "cubic")]),
        Case::scales(13, &[2, 3, 6], &[1.0, 1.0, 1.5], vec![]),
        Case::scales(
            13,
            &[2, 3, 6],
            &[1.0, 1.0, 0.4],
            vec![a_string("nearest_mode", "ceil")],
        ),
        Case::scales(13, &[1, 1, 5, 5], &[1.0, 1.0, 1.1, 1.1], lin()),
        Case::scales(
            12,
            &[1, 2, 5, 7],
            &[1.0, 1.0, 2.0, 2.0],
            vec![
                a_string("coordinate_transformation_mode", "asymmetric"),
                a_string("nearest_mode", "floor"),
            ],
        ),
    ];
    all_match_ort(&cases, 500);
}

/// Opset 18: scales and sizes on `axes` (negative too), and
/// keep_aspect_ratio_policy with sizes.
#[test]
fn matrices_match_ort_with_axes_and_keep_aspect_ratio_policy() {
    let x = [1, 2, 5, 7];
    let mut cases = vec![
        Case::scales(
            18,
            &x,
            &[1.5, 0.75],
            vec![a_ints("axes", &[2, 3]), a_string("mode", "linear")],
        ),
        Case::sizes(18, &x, &[10], vec![a_ints("axes", &[-1])]),
        Case::sizes(
            18,
            &x,
            &[9, 4],
            vec![a_ints("axes", &[2, 3]), a_string("mode", "cubic")],
        )
        .with_roi(&[0.1, 0.0, 0.9, 1.0]),
    ];
    for policy in ["not_larger", "not_smaller"] {
        for mode in ["nearest", "linear"] {
            let attrs = vec![
                a_ints("axes", &[2, 3]),
                a_string("keep_aspect_ratio_policy", policy),
                a_string("mode", mode),
            ];
            cases.push(Case::sizes(18, &x, &[8, 9], attrs.clone()));
            cases.push(Case::sizes(18, &x, &[3, 9], attrs));
        }
    }
    // tf_crop_and_resize with roi on the axes only.
    cases.push(
        Case::scales(
            18,
            &x,
            &[1.6, 0.9],
            vec![
                a_ints("axes", &[2, 3]),
                a_string("mode", "linear"),
                a_string("coordinate_transformation_mode", "tf_crop_and_resize"),
            ],
        )
        .with_roi(&[0.2, -0.1, 0.7, 0.9]),
    );
    all_match_ort(&cases, 600);
}

// ---------------------------------------------------------------- gradients

/// A float32 Constant (Resize's scales and roi are float32 whatever X is).
fn f32_constant(n: &mut Net, name: &str, values: &[f32]) -> String {
    let t = tensor::from_f32("value", &[values.len() as i64], values);
    n.node("Constant", &[], &[name], vec![a_tensor("value", t)]);
    name.into()
}

/// `Resize(leaf x)` → y with the case's inputs as Constants, FD-checked.
fn fd_case(seed: u64, c: &Case) {
    let mut n = Net::new(c.opset, F32, seed);
    let x = n.rand_leaf("x", &c.x);
    let mut inputs = vec![x];
    let old = c.opset < 13;
    for (name, v) in [("roi", &c.roi), ("scales", &c.scales)] {
        match v {
            Some(v) => inputs.push(f32_constant(&mut n, name, v)),
            None if old => inputs.push(f32_constant(&mut n, name, &[])),
            None => inputs.push(String::new()),
        }
    }
    if let Some(s) = &c.sizes {
        inputs.push(n.ints("sizes", s));
    }
    while inputs.last().is_some_and(|i| i.is_empty()) {
        inputs.pop();
    }
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    n.node("Resize", &refs, &["y"], c.attrs.clone());
    mse(&n, "y");
}

/// Nearest ×2 (asymmetric, floor: PyTorch's `F.interpolate(scale_factor=2)`
/// and old Upsample), written as Reshape + ReduceSum; and ×3 in H.
#[test]
fn nearest_integer_upsampling() {
    let attrs = vec![
        a_string("coordinate_transformation_mode", "asymmetric"),
        a_string("nearest_mode", "floor"),
    ];
    fd_case(
        1,
        &Case::scales(13, &[2, 3, 4, 5], &[1.0, 1.0, 2.0, 2.0], attrs.clone()),
    );
    fd_case(
        2,
        &Case::scales(13, &[2, 3, 4, 5], &[1.0, 1.0, 3.0, 1.0], vec![]),
    );
}

/// Nearest with non-integer scales (inputs picked several times or skipped):
/// the MatMul form, each nearest_mode, up and down.
#[test]
fn nearest_non_integer_scales() {
    for (k, m) in ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
        .iter()
        .enumerate()
    {
        let attrs = vec![a_string("nearest_mode", m)];
        fd_case(
            10 + k as u64,
            &Case::scales(13, &[2, 2, 5, 6], &[1.0, 1.0, 1.7, 0.6], attrs),
        );
    }
}

/// Linear: half_pixel with non-integer scales; align_corners with sizes at
/// opset 11 (empty roi and scales tensors); pytorch_half_pixel down to 1.
#[test]
fn linear_scales_and_sizes() {
    let lin = |ctm: &str| {
        vec![
            a_string("mode", "linear"),
            a_string("coordinate_transformation_mode", ctm),
        ]
    };
    fd_case(
        20,
        &Case::scales(13, &[2, 3, 5, 4], &[1.0, 1.0, 1.7, 0.6], lin("half_pixel")),
    );
    fd_case(
        21,
        &Case::sizes(11, &[2, 3, 5, 4], &[2, 3, 7, 3], lin("align_corners")),
    );
    fd_case(
        22,
        &Case::sizes(13, &[2, 2, 5, 4], &[2, 2, 1, 6], lin("pytorch_half_pixel")),
    );
    fd_case(
        23,
        &Case::scales(
            19,
            &[1, 2, 5, 4],
            &[1.0, 1.0, 1.5, 0.7],
            lin("half_pixel_symmetric"),
        ),
    );
}

/// Cubic (default and PyTorch's a = −0.75… and −0.5 with exclude_outside),
/// and tf_crop_and_resize whose extrapolated outputs carry no gradient.
#[test]
fn cubic_and_tf_crop_and_resize() {
    fd_case(
        30,
        &Case::scales(
            13,
            &[1, 2, 5, 6],
            &[1.0, 1.0, 1.5, 0.7],
            vec![a_string("mode", "cubic")],
        ),
    );
    let attrs = vec![
        a_string("mode", "cubic"),
        a_float("cubic_coeff_a", -0.5),
        a_int("exclude_outside", 1),
        a_string("coordinate_transformation_mode", "align_corners"),
    ];
    fd_case(31, &Case::sizes(13, &[1, 2, 4, 5], &[1, 2, 7, 3], attrs));
    let crop = vec![
        a_string("mode", "linear"),
        a_string("coordinate_transformation_mode", "tf_crop_and_resize"),
        a_float("extrapolation_value", 0.5),
    ];
    // Scales exact in binary and rois of extent 1: ONNX shape inference
    // (roi-scaled, f32 products) and ORT's kernel (floor(in·scale)) then agree
    // on [7, 4], so the training graph loads (1.4 gives 6 vs 7). The rois
    // still extrapolate at both ends.
    let roi = [0.0, 0.0, -0.2, 0.1, 1.0, 1.0, 0.8, 1.1];
    fd_case(
        32,
        &Case::scales(13, &[2, 2, 5, 6], &[1.0, 1.0, 1.5, 0.75], crop).with_roi(&roi),
    );
}

/// Opset 18: axes with scales, axes with sizes and keep_aspect_ratio_policy.
#[test]
fn axes_and_keep_aspect_ratio_policy() {
    let attrs = vec![a_ints("axes", &[2, 3]), a_string("mode", "linear")];
    fd_case(40, &Case::scales(18, &[2, 3, 5, 4], &[1.5, 0.5], attrs));
    let attrs = vec![
        // Positive axes: ORT 1.31 ignores keep_aspect_ratio_policy on negative
        // axes (its output keeps X's shape), which ONNX shape inference does not.
        a_ints("axes", &[2, 3]),
        a_string("keep_aspect_ratio_policy", "not_smaller"),
    ];
    fd_case(41, &Case::sizes(18, &[2, 3, 5, 4], &[7, 3], attrs));
    fd_case(
        42,
        &Case::sizes(18, &[2, 3, 5, 4], &[7], vec![a_ints("axes", &[2])]),
    );
}

/// Scales computed in the graph (the probe reads their values) and sizes
/// computed from Shape (a feature pyramid's `interpolate(size=y.shape[2:])`).
#[test]
fn computed_scales_and_sizes() {
    let mut n = Net::new(13, F32, 50);
    let x = n.rand_leaf("x", &[2, 2, 3, 4]);
    let one = f32_constant(&mut n, "ones", &[1.0, 1.0, 1.0, 1.0]);
    let s = f32_constant(&mut n, "s", &[1.0, 1.0, 2.0, 1.5]);
    n.node("Mul", &[&one, &s], &["scales"], vec![]);
    n.node(
        "Resize",
        &[&x, "", "scales"],
        &["y"],
        vec![a_string("mode", "linear")],
    );
    mse(&n, "y");

    let mut n = Net::new(13, F32, 51);
    let x = n.rand_leaf("x", &[2, 2, 3, 4]);
    let guide = n.input("guide", &[2, 2, 7, 5]);
    n.node("Shape", &[&guide], &["guide_shape"], vec![]);
    n.node("Resize", &[&x, "", "", "guide_shape"], &["y"], vec![]);
    mse(&n, "y");
}

/// Conv → Resize (nearest ×2) → Resize (linear ×1.5) → Conv: the first
/// Conv's weight and bias get their gradient through both Resizes.
#[test]
fn resize_inside_a_small_cnn() {
    let mut n = Net::new(13, F32, 60);
    let x = n.input("x", &[2, 3, 4, 4]);
    let w1 = n.rand_weight("w1", &[4, 3, 3, 3]);
    let b1 = n.rand_weight("b1", &[4]);
    n.node(
        "Conv",
        &[&x, &w1, &b1],
        &["c1"],
        vec![a_ints("pads", &[1, 1, 1, 1])],
    );
    let up2 = f32_constant(&mut n, "up2", &[1.0, 1.0, 2.0, 2.0]);
    n.node(
        "Resize",
        &["c1", "", &up2],
        &["r1"],
        vec![
            a_string("coordinate_transformation_mode", "asymmetric"),
            a_string("nearest_mode", "floor"),
        ],
    );
    let up15 = f32_constant(&mut n, "up15", &[1.0, 1.0, 1.5, 1.5]);
    n.node(
        "Resize",
        &["r1", "", &up15],
        &["r2"],
        vec![a_string("mode", "linear")],
    );
    let w2 = n.rand_weight("w2", &[2, 4, 3, 3]);
    n.node(
        "Conv",
        &["r2", &w2],
        &["y"],
        vec![a_ints("strides", &[2, 2])],
    );
    let report = check(&n, "y", &Check::mse(F32));
    let names: Vec<&str> = report.errors.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(names, ["w1", "b1", "w2"], "every weight is checked");
}

// ------------------------------------------------------------------- errors

#[test]
fn antialias_is_a_clear_error_naming_node_and_attribute() {
    let mut n = Net::new(18, F32, 70);
    let x = n.rand_leaf("x", &[1, 2, 6, 6]);
    let s = f32_constant(&mut n, "scales", &[1.0, 1.0, 0.5, 0.5]);
    n.node(
        "Resize",
        &[&x, "", &s],
        &["y"],
        vec![a_string("mode", "linear"), a_int("antialias", 1)],
    );
    let e = mse_build_error(&n);
    assert!(
        e.contains("resize_") && e.contains("antialias = 1") && e.contains("antialias=False"),
        "{e}"
    );
}

#[test]
fn unsupported_attribute_values_name_node_attribute_and_value() {
    // ORT itself refuses these at load time, so they are checked on the rule's
    // matrix builder directly.
    for (attr, value) in [
        ("mode", "area"),
        ("coordinate_transformation_mode", "center"),
        ("nearest_mode", "round_half_even"),
        ("keep_aspect_ratio_policy", "fit"),
    ] {
        let node = NodeProto {
            name: "upsample_7".into(),
            op_type: "Resize".into(),
            attribute: vec![a_string(attr, value)],
            ..Default::default()
        };
        let e = interpolation_matrices(
            &node,
            13,
            &[1, 1, 2, 2],
            &[1, 1, 4, 4],
            Some(&[1.0, 1.0, 2.0, 2.0]),
            None,
            None,
        )
        .expect_err("must refuse");
        let e = format!("{e:#}");
        assert!(
            e.contains("upsample_7") && e.contains(attr) && e.contains(value),
            "{e}"
        );
    }
}

#[test]
fn trainable_scales_are_refused() {
    let mut n = Net::new(13, F32, 71);
    let x = n.rand_leaf("x", &[1, 2, 3, 3]);
    let base = f32_constant(&mut n, "base", &[1.0, 1.0, 2.0, 2.0]);
    let w = n.weight("scale_offset", &[4], vec![0.0; 4]);
    n.node("Add", &[&base, &w], &["scales"], vec![]);
    n.node("Resize", &[&x, "", "scales"], &["y"], vec![]);
    let e = mse_build_error(&n);
    assert!(
        e.contains("resize_") && e.contains("scales") && e.contains("never trained"),
        "{e}"
    );
}
