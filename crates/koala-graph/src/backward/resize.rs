//! Gradient of Resize with respect to its data input X (`roi`, `scales` and
//! `sizes` are resize parameters: never trainable, never differentiated).
//!
//! Math: without antialiasing, Resize is separable and linear in X. Along
//! every resized axis a it is a product with an interpolation matrix Aₐ of
//! shape [out, in], `Y = X ×ₐ Aₐ` (Y[…, o, …] = Σᵢ Aₐ[o, i]·X[…, i, …]), and
//! Aₐ depends only on the shapes, the scales, the roi and the attributes,
//! never on X. So `dX = dY ×ₐ Aₐᵀ`, axis after axis (the products along
//! different axes commute). [`interpolation_matrices`] builds the Aₐ at
//! graph-build time from the probed shapes with ONNX Runtime's own formulas
//! (coordinates in f32 as ORT computes them, its clamping of linear/cubic
//! taps to the border), so the gradient is exactly that of the forward ORT
//! runs; `tests/fd_resize.rs` pins every matrix to ORT's Resize output.
//! Nearest picks are read from ORT itself, by running the node once on a
//! probe tensor of indices: near rounding ties ORT's nearest kernel does not
//! follow its own f32 coordinate formula (see [`nearest_picks`]).
//!
//! Where ORT's kernel differs from the ONNX reference implementation and koala
//! follows ORT: an axis whose scale is exactly 1 is the identity whatever the
//! mode; an output shape equal to the input shape is a copy; with
//! `pytorch_half_pixel` an output length of 1 samples coordinate 0 (the
//! reference says −0.5, which only changes cubic).
//!
//! Written as: nearest with an integer upsampling factor k (every input
//! repeated k times, the feature-pyramid case) → Reshape + ReduceSum over the
//! k copies; any other axis → MatMul by the constant Aₐᵀ (the last axis:
//! `dY·Aₐ`; other axes: `Aₐᵀ·dY` on dY viewed as [before, out, after]). The
//! constants are out×in per axis (a 160→320 axis is 51 200 values); they are
//! emitted after weight selection, so they are never trained.
//!
//! Opsets: 11 (inputs X, roi, scales, sizes; coordinate_transformation_mode,
//! nearest_mode, cubic_coeff_a, exclude_outside, extrapolation_value;
//! `tf_half_pixel_for_nn`, removed from the spec in 13 and still run by ORT),
//! 13 (roi and scales optional), 18 (`axes`, `keep_aspect_ratio_policy`,
//! `antialias`), 19 (`half_pixel_symmetric`).
//! Supported: modes nearest (round_prefer_floor, round_prefer_ceil, floor,
//! ceil), linear and cubic (cubic_coeff_a, exclude_outside); every coordinate
//! transformation (tf_crop_and_resize: extrapolated outputs are constants with
//! zero gradient); scales or sizes, constant or computed in the graph (the
//! probe reads their values); axes; keep_aspect_ratio_policy. Not supported:
//! antialias = 1 (a clear error naming node, attribute and value); a weight
//! feeding roi/scales (an error naming the input).
//!
//! Outside this rule (measured with ORT 1.31): with tf_crop_and_resize, ONNX
//! shape inference scales the output length by the roi's extent (in f32)
//! while ORT's kernel uses floor(in·scale), so unless both agree (roi extent
//! 1, scales exact in binary) ORT refuses to load the training graph; and
//! ORT's kernel ignores keep_aspect_ratio_policy when `axes` are negative.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Resize.html
//! Tests: `crates/koala-graph/tests/fd_resize.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs;
use crate::proto::NodeProto;
use anyhow::{anyhow, bail, Result};

/// The interpolation matrix of one resized axis:
/// `Y[…, o, …] = Σᵢ weights[o·input + i] · X[…, i, …]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisMatrix {
    /// The axis of X it acts on.
    pub axis: usize,
    /// Length of the axis in X.
    pub input: usize,
    /// Length of the axis in Y.
    pub output: usize,
    /// Row-major [output, input] weights.
    pub weights: Vec<f64>,
}

impl AxisMatrix {
    /// `k` when every input is repeated k times in order (nearest upsampling
    /// by an integer factor): row o is one-hot at o / k.
    fn repeat_factor(&self) -> Option<usize> {
        if self.input == 0 || !self.output.is_multiple_of(self.input) {
            return None;
        }
        let k = self.output / self.input;
        let one_hot_at = |o: usize| {
            let row = &self.weights[o * self.input..(o + 1) * self.input];
            row.iter()
                .enumerate()
                .all(|(i, &w)| w == if i == o / k { 1.0 } else { 0.0 })
        };
        (k > 1 && (0..self.output).all(one_hot_at)).then_some(k)
    }

    /// Aᵀ, row-major [input, output].
    fn transposed(&self) -> Vec<f64> {
        let mut t = vec![0.0; self.weights.len()];
        for o in 0..self.output {
            for i in 0..self.input {
                t[i * self.output + o] = self.weights[o * self.input + i];
            }
        }
        t
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transform {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    HalfPixelSymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// A Resize node's attributes, validated.
struct Attrs {
    mode: Mode,
    transform: Transform,
    cubic_a: f32,
    exclude_outside: bool,
    /// The resized axes (the `axes` attribute, normalised; all axes without it).
    axes: Vec<usize>,
    policy: Policy,
}

fn unsupported(node: &NodeProto, attr: &str, value: &str, supported: &str) -> anyhow::Error {
    anyhow!(
        "Resize node '{}': attribute {attr} = '{value}' is not supported (supported: {supported})",
        node.name
    )
}

fn parse_attrs(node: &NodeProto, rank: usize) -> Result<Attrs> {
    let mode = match attrs::string(node, "mode", "nearest").as_str() {
        "nearest" => Mode::Nearest,
        "linear" => Mode::Linear,
        "cubic" => Mode::Cubic,
        other => return Err(unsupported(node, "mode", other, "nearest, linear, cubic")),
    };
    let ctm = attrs::string(node, "coordinate_transformation_mode", "half_pixel");
    let transform = match ctm.as_str() {
        "half_pixel" => Transform::HalfPixel,
        "pytorch_half_pixel" => Transform::PytorchHalfPixel,
        "align_corners" => Transform::AlignCorners,
        "asymmetric" => Transform::Asymmetric,
        "half_pixel_symmetric" => Transform::HalfPixelSymmetric,
        "tf_half_pixel_for_nn" => Transform::TfHalfPixelForNn,
        "tf_crop_and_resize" => Transform::TfCropAndResize,
        other => {
            return Err(unsupported(
                node,
                "coordinate_transformation_mode",
                other,
                "half_pixel, pytorch_half_pixel, align_corners, asymmetric, half_pixel_symmetric, tf_half_pixel_for_nn, tf_crop_and_resize",
            ))
        }
    };
    let nearest_mode = attrs::string(node, "nearest_mode", "round_prefer_floor");
    if !["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
        .contains(&nearest_mode.as_str())
    {
        return Err(unsupported(
            node,
            "nearest_mode",
            &nearest_mode,
            "round_prefer_floor, round_prefer_ceil, floor, ceil",
        ));
    }
    let antialias = attrs::int(node, "antialias", 0);
    if antialias != 0 {
        bail!(
            "Resize node '{}': attribute antialias = {antialias} is not supported: koala's Resize gradient covers antialias = 0 only (with antialias the filter widens with the downscaling factor). Re-export the model without antialiasing (PyTorch: F.interpolate(..., antialias=False)), or freeze the weights before this Resize so that no gradient has to pass through it",
            node.name
        );
    }
    let policy = match attrs::string(node, "keep_aspect_ratio_policy", "stretch").as_str() {
        "stretch" => Policy::Stretch,
        "not_larger" => Policy::NotLarger,
        "not_smaller" => Policy::NotSmaller,
        other => {
            return Err(unsupported(
                node,
                "keep_aspect_ratio_policy",
                other,
                "stretch, not_larger, not_smaller",
            ))
        }
    };
    let axes = match attrs::ints(node, "axes") {
        None => (0..rank).collect(),
        Some(v) => {
            let mut out = Vec::with_capacity(v.len());
            for a in v {
                let n = if a < 0 { a + rank as i64 } else { a };
                if !(0..rank as i64).contains(&n) || out.contains(&(n as usize)) {
                    return Err(unsupported(
                        node,
                        "axes",
                        &a.to_string(),
                        &format!("distinct axes within the input's rank {rank}"),
                    ));
                }
                out.push(n as usize);
            }
            out
        }
    };
    Ok(Attrs {
        mode,
        transform,
        cubic_a: attrs::float(node, "cubic_coeff_a", -0.75),
        exclude_outside: attrs::int(node, "exclude_outside", 0) != 0,
        axes,
        policy,
    })
}

/// The scale of every axis of X, in f32 as ORT keeps them: `scales` placed
/// on `axes`, or `sizes / input` adjusted by keep_aspect_ratio_policy.
fn axis_scales(
    node: &NodeProto,
    a: &Attrs,
    x: &[usize],
    scales: Option<&[f64]>,
    sizes: Option<&[i64]>,
) -> Result<Vec<f32>> {
    let mut s = vec![1.0f32; x.len()];
    let n = a.axes.len();
    if let Some(sc) = scales.filter(|v| !v.is_empty()) {
        if sc.len() != n {
            bail!(
                "Resize node '{}': scales has {} values for {n} resized axes",
                node.name,
                sc.len()
            );
        }
        for (&ax, &v) in a.axes.iter().zip(sc) {
            s[ax] = v as f32;
        }
        return Ok(s);
    }
    let Some(sz) = sizes.filter(|v| !v.is_empty()) else {
        bail!(
            "Resize node '{}': koala could not read the values of its scales or sizes input; they must be constants or computed from shapes",
            node.name
        );
    };
    if sz.len() != n {
        bail!(
            "Resize node '{}': sizes has {} values for {n} resized axes",
            node.name,
            sz.len()
        );
    }
    for (&ax, &v) in a.axes.iter().zip(sz) {
        s[ax] = if x[ax] == 0 {
            1.0
        } else {
            v as f32 / x[ax] as f32
        };
    }
    let pick = |f: fn(f32, f32) -> f32| a.axes.iter().map(|&ax| s[ax]).reduce(f);
    let kept = match a.policy {
        Policy::Stretch => None,
        Policy::NotLarger => pick(f32::min),
        Policy::NotSmaller => pick(f32::max),
    };
    if let Some(k) = kept {
        for &ax in &a.axes {
            s[ax] = k;
        }
    }
    Ok(s)
}

/// (start, end) of every axis's region of interest (tf_crop_and_resize).
fn axis_roi(
    node: &NodeProto,
    a: &Attrs,
    rank: usize,
    roi: Option<&[f64]>,
) -> Result<Vec<(f32, f32)>> {
    let mut out = vec![(0.0f32, 1.0f32); rank];
    if a.transform != Transform::TfCropAndResize {
        return Ok(out);
    }
    let n = a.axes.len();
    let Some(r) = roi.filter(|r| r.len() == 2 * n) else {
        bail!(
            "Resize node '{}': coordinate_transformation_mode tf_crop_and_resize needs roi values (2 per resized axis, {} in all) that koala can read; they must be constants or computed from shapes",
            node.name,
            2 * n
        );
    };
    for (i, &ax) in a.axes.iter().enumerate() {
        out[ax] = (r[i] as f32, r[n + i] as f32);
    }
    Ok(out)
}

/// The interpolation matrices of a Resize node (default-domain `opset`)
/// whose input X has shape `x` and output Y shape `y` (as ORT computes them):
/// `Y = X ×ₐ Aₐ` over the returned axes, the identity along all others.
/// `scales`, `sizes` and `roi` are the values of those inputs (None or empty
/// when absent). Linear and cubic weights follow ORT's formulas; nearest
/// picks are read from ORT itself (see [`nearest_picks`]).
pub fn interpolation_matrices(
    node: &NodeProto,
    opset: i64,
    x: &[usize],
    y: &[usize],
    scales: Option<&[f64]>,
    sizes: Option<&[i64]>,
    roi: Option<&[f64]>,
) -> Result<Vec<AxisMatrix>> {
    let a = parse_attrs(node, x.len())?;
    if x.len() != y.len() {
        bail!(
            "Resize node '{}': input shape {x:?} and output shape {y:?} differ in rank",
            node.name
        );
    }
    if x == y {
        // ORT copies X when no axis changes length, whatever the scales.
        return Ok(Vec::new());
    }
    let s = axis_scales(node, &a, x, scales, sizes)?;
    let r = axis_roi(node, &a, x.len(), roi)?;
    let resized: Vec<usize> = (0..x.len())
        .filter(|&ax| !(s[ax] == 1.0 && x[ax] == y[ax]))
        .collect();
    let picks = if a.mode == Mode::Nearest {
        Some(nearest_picks(
            node, opset, &a, x, y, &resized, scales, sizes, roi,
        )?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (k, &ax) in resized.iter().enumerate() {
        let weights = match &picks {
            Some(p) => one_hot_rows(&p[k], x[ax]),
            None => axis_weights(&a, x[ax], y[ax], s[ax], r[ax]),
        };
        out.push(AxisMatrix {
            axis: ax,
            input: x[ax],
            output: y[ax],
            weights,
        });
    }
    Ok(out)
}

/// Rows one-hot at each pick (None: an extrapolated output, a zero row).
fn one_hot_rows(picks: &[Option<usize>], inp: usize) -> Vec<f64> {
    let mut w = vec![0.0; picks.len() * inp];
    for (o, p) in picks.iter().enumerate() {
        if let Some(i) = p {
            w[o * inp + i] = 1.0;
        }
    }
    w
}

/// For every resized axis, the input index ORT's nearest kernel picks for
/// each output index (None where tf_crop_and_resize extrapolates).
///
/// Read from ORT rather than recomputed: near a rounding tie (a coordinate
/// within f32 rounding of a half-integer, or of an integer for floor/ceil)
/// ORT 1.31's nearest kernel was measured to disagree with its own f32
/// coordinate formula (e.g. half_pixel_symmetric at scale 0.6 gives 0.5000002
/// for output 0, yet round_prefer_floor picks pixel 0, and sizes 1 of 7 with
/// tf_half_pixel_for_nn). So koala runs the node once on a probe tensor whose
/// values are their own flat index: the probe keeps X's resized axes and
/// shrinks the others to 1 (their scale is exactly 1, the identity in ORT),
/// so it holds ∏ of the resized input lengths values.
#[allow(clippy::too_many_arguments)]
fn nearest_picks(
    node: &NodeProto,
    opset: i64,
    a: &Attrs,
    x: &[usize],
    y: &[usize],
    resized: &[usize],
    scales: Option<&[f64]>,
    sizes: Option<&[i64]>,
    roi: Option<&[f64]>,
) -> Result<Vec<Vec<Option<usize>>>> {
    let rank = x.len();
    let p: Vec<usize> = (0..rank)
        .map(|ax| if resized.contains(&ax) { x[ax] } else { 1 })
        .collect();
    let q: Vec<usize> = (0..rank)
        .map(|ax| if resized.contains(&ax) { y[ax] } else { 1 })
        .collect();
    let n: usize = p.iter().product();
    if n > 1 << 24 {
        bail!(
            "Resize node '{}': the resized axes of its input hold {n} values per channel, more than koala's nearest-mode probe handles (2^24)",
            node.name
        );
    }
    let sizes: Option<Vec<i64>> = sizes.filter(|v| !v.is_empty()).map(|v| {
        a.axes
            .iter()
            .zip(v)
            .map(|(&ax, &s)| if resized.contains(&ax) { s } else { 1 })
            .collect()
    });
    let scales: Option<Vec<f32>> = scales
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|&f| f as f32).collect());
    let roi: Option<Vec<f32>> = roi
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|&f| f as f32).collect());
    let model = probe_model(node, opset, &p, roi, scales, sizes);
    let bytes = prost::Message::encode_to_vec(&model);
    let opts = koala_runtime::SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let ort_failed = |e: koala_runtime::Error| {
        anyhow!(
            "Resize node '{}': ONNX Runtime could not run the node on koala's nearest-mode probe: {e}",
            node.name
        )
    };
    let mut session = koala_runtime::Session::from_bytes(&bytes, &opts).map_err(ort_failed)?;
    let iota: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let out = session
        .run(&[("x", koala_runtime::TensorView::f32(&iota, &p))])
        .map_err(ort_failed)?;
    let got = out[0].as_f32().unwrap_or_default();
    if out[0].shape != q {
        bail!(
            "Resize node '{}': koala's nearest-mode probe gave shape {:?}, expected {q:?} (internal)",
            node.name,
            out[0].shape
        );
    }
    let strides = |shape: &[usize]| -> Vec<usize> {
        let mut st = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            st[i] = st[i + 1] * shape[i + 1];
        }
        st
    };
    let (sp, sq) = (strides(&p), strides(&q));
    Ok(resized
        .iter()
        .map(|&ax| {
            (0..q[ax])
                .map(|o| {
                    let v = got[o * sq[ax]];
                    (v >= 0.0).then(|| (v as usize / sp[ax]) % p[ax])
                })
                .collect()
        })
        .collect())
}

/// A one-node model: the Resize node on input `x` of shape `p`, its
/// extrapolation value −1 (marks extrapolated outputs; indices are ≥ 0).
fn probe_model(
    node: &NodeProto,
    opset: i64,
    p: &[usize],
    roi: Option<Vec<f32>>,
    scales: Option<Vec<f32>>,
    sizes: Option<Vec<i64>>,
) -> crate::proto::ModelProto {
    use crate::proto::{GraphProto, ModelProto, OperatorSetIdProto};
    let mut inits = Vec::new();
    let mut input = vec!["x".to_string()];
    let required = opset < 13;
    for (name, v) in [("roi", roi), ("scales", scales)] {
        match v {
            Some(v) => inits.push(crate::tensor::from_f32(name, &[v.len() as i64], &v)),
            None if required => inits.push(crate::tensor::from_f32(name, &[0], &[])),
            None => {
                input.push(String::new());
                continue;
            }
        }
        input.push(name.into());
    }
    if let Some(s) = sizes {
        inits.push(crate::tensor::from_i64("sizes", &[s.len() as i64], &s));
        input.push("sizes".into());
    }
    while input.last().is_some_and(|i| i.is_empty()) {
        input.pop();
    }
    let mut attribute: Vec<_> = node
        .attribute
        .iter()
        .filter(|a| a.name != "extrapolation_value")
        .cloned()
        .collect();
    attribute.push(attrs::a_float("extrapolation_value", -1.0));
    let resize = NodeProto {
        name: "koala_nearest_probe".into(),
        op_type: "Resize".into(),
        input,
        output: vec!["y".into()],
        attribute,
        ..Default::default()
    };
    let float_out = crate::proto::ValueInfoProto {
        name: "y".into(),
        r#type: Some(crate::proto::TypeProto {
            value: Some(crate::proto::type_proto::Value::TensorType(
                crate::proto::type_proto::Tensor {
                    elem_type: crate::proto::DataType::Float as i32,
                    shape: None,
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            name: "koala_nearest_probe".into(),
            node: vec![resize],
            initializer: inits,
            input: vec![crate::training::value_info(
                "x",
                crate::proto::DataType::Float,
                p,
            )],
            output: vec![float_out],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ORT's coordinate of output index `o` in the input (f32 arithmetic as in
/// ORT's `GetOriginalCoordinateFromResizedCoordinate`).
fn original_coordinate(
    t: Transform,
    o: f32,
    scale: f32,
    out: f32,
    inp: f32,
    roi: (f32, f32),
) -> f32 {
    match t {
        Transform::HalfPixel => (o + 0.5) / scale - 0.5,
        Transform::Asymmetric => o / scale,
        Transform::TfHalfPixelForNn => (o + 0.5) / scale,
        Transform::PytorchHalfPixel => {
            if out > 1.0 {
                (o + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        Transform::AlignCorners => {
            if out == 1.0 {
                0.0
            } else {
                o * (inp - 1.0) / (out - 1.0)
            }
        }
        Transform::TfCropAndResize => {
            let (r0, r1) = roi;
            if out > 1.0 {
                r0 * (inp - 1.0) + (o * (r1 - r0) * (inp - 1.0)) / (out - 1.0)
            } else {
                (0.5 * f64::from(r0 + r1) * f64::from(inp - 1.0)) as f32
            }
        }
        Transform::HalfPixelSymmetric => {
            let adjustment = out / (scale * inp);
            let offset = inp / 2.0 * (1.0 - adjustment);
            (f64::from(offset) + (f64::from(o) + 0.5) / f64::from(scale) - 0.5) as f32
        }
    }
}

/// Keys' cubic convolution weights of the taps at −1, 0, 1, 2 from ⌊x⌋ for
/// fraction `s` (ORT's `GetCubicCoeffs`, f32).
fn cubic_coeffs(s: f32, a: f32) -> [f32; 4] {
    let s = s.abs();
    let far = |d: f32| ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    let near = |d: f32| ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    [far(s + 1.0), near(s), near(1.0 - s), far(2.0 - s)]
}

/// Row-major [out, inp] weights of one axis in linear or cubic mode.
fn axis_weights(a: &Attrs, inp: usize, out: usize, scale: f32, roi: (f32, f32)) -> Vec<f64> {
    let mut w = vec![0.0f64; out * inp];
    let last = inp as i64 - 1;
    for o in 0..out {
        let x = original_coordinate(a.transform, o as f32, scale, out as f32, inp as f32, roi);
        // tf_crop_and_resize: outside the input, Y is extrapolation_value, a
        // constant: its row stays zero.
        if a.transform == Transform::TfCropAndResize && (x < 0.0 || x > last as f32) {
            continue;
        }
        let row = &mut w[o * inp..(o + 1) * inp];
        match a.mode {
            // Nearest never gets here: its picks come from `nearest_picks`.
            Mode::Linear | Mode::Nearest => {
                let v = x.min(last as f32).max(0.0);
                let i1 = (v as i64).min(last);
                let i2 = (i1 + 1).min(last);
                let (d1, d2) = if i1 == i2 {
                    (0.5f32, 0.5f32)
                } else {
                    ((v - i1 as f32).abs(), (v - i2 as f32).abs())
                };
                row[i1 as usize] += f64::from(d2);
                row[i2 as usize] += f64::from(d1);
            }
            Mode::Cubic => {
                let base = x.floor();
                let mut c = cubic_coeffs(x - base, a.cubic_a);
                let base = base as i64 - 1;
                let mut sum = 1.0f32;
                if a.exclude_outside {
                    sum = 0.0;
                    for (k, ck) in c.iter_mut().enumerate() {
                        if !(0..=last).contains(&(base + k as i64)) {
                            *ck = 0.0;
                        }
                        sum += *ck;
                    }
                }
                for (k, ck) in c.iter().enumerate() {
                    let i = (base + k as i64).clamp(0, last) as usize;
                    row[i] += f64::from(ck / sum);
                }
            }
        }
    }
    w
}

/// The values of a float parameter input (None when the input is absent).
fn float_input(ctx: &GradCtx, r: &RuleInput, i: usize, what: &str) -> Result<Option<Vec<f64>>> {
    let name = r.input(i);
    if name.is_empty() {
        return Ok(None);
    }
    let shape = ctx.shape(name)?;
    if shape.iter().product::<usize>() == 0 {
        return Ok(None);
    }
    ctx.floats(name).map(Some).ok_or_else(|| {
        anyhow!(
            "Resize node '{}': koala could not read the values of its {what} input '{name}' (more than 64 values, or not computable before training)",
            r.node.name
        )
    })
}

/// Resize(X, roi, scales, sizes) → Y: dX = dY ×ₐ Aₐᵀ over the resized axes.
pub fn resize(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    for (i, what) in [(1, "roi"), (2, "scales"), (3, "sizes")] {
        if r.need(i) {
            bail!(
                "Resize node '{}': its {what} input '{}' depends on a trainable weight, but koala differentiates Resize only with respect to X ({what} is a resize parameter, never trained). Freeze the weights it is computed from with --freeze",
                r.node.name,
                r.input(i)
            );
        }
    }
    let mut out = r.none();
    if !r.need(0) {
        return Ok(out);
    }
    let (x, dy) = (r.input(0).to_string(), r.dy0()?.to_string());
    let xs = ctx.shape(&x)?;
    let ys = ctx.shape(r.output(0))?;
    let crop = attrs::string(r.node, "coordinate_transformation_mode", "") == "tf_crop_and_resize";
    let roi = if crop {
        float_input(ctx, r, 1, "roi")?
    } else {
        None
    };
    let scales = float_input(ctx, r, 2, "scales")?;
    let sizes = match r.input(3) {
        "" => None,
        name => ctx.ints(name),
    };
    let mats = interpolation_matrices(
        r.node,
        ctx.opset(),
        &xs,
        &ys,
        scales.as_deref(),
        sizes.as_deref(),
        roi.as_deref(),
    )?;
    let mut g = dy;
    for m in &mats {
        g = apply_transposed(ctx, &g, m)?;
    }
    out[0] = Some(ctx.reshape(&g, &xs)?);
    Ok(out)
}

/// `g ×ₐ Aᵀ`: maps the gradient along `m.axis` from Y's length to X's.
fn apply_transposed(ctx: &mut GradCtx, g: &str, m: &AxisMatrix) -> Result<String> {
    let shape = ctx.shape(g)?;
    let dt = ctx.dtype(g)?;
    let ax = m.axis;
    let mut target = shape.clone();
    target[ax] = m.input;
    if let Some(k) = m.repeat_factor() {
        let mut split = shape[..ax].to_vec();
        split.extend([m.input, k]);
        split.extend(&shape[ax + 1..]);
        let blocks = ctx.reshape(g, &split)?;
        return ctx.reduce_sum(&blocks, &[ax as i64 + 1], false);
    }
    if ax + 1 == shape.len() {
        let a = ctx.const_like(&m.weights, &[m.output, m.input], g)?;
        return Ok(ctx.emit_shaped("MatMul", &[g, &a], vec![], dt, target));
    }
    let before: usize = shape[..ax].iter().product();
    let after: usize = shape[ax + 1..].iter().product();
    let g3 = ctx.reshape(g, &[before, m.output, after])?;
    let at = ctx.const_like(&m.transposed(), &[m.input, m.output], g)?;
    let p = ctx.emit_shaped(
        "MatMul",
        &[&at, &g3],
        vec![],
        dt,
        vec![before, m.input, after],
    );
    ctx.reshape(&p, &target)
}
