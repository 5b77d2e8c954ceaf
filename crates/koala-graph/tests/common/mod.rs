//! Test harness for the backward-graph compiler: tiny random ONNX models
//! built in Rust ([`Net`]), their training graphs run in ONNX Runtime, and
//! every weight gradient compared with central finite differences of the
//! training graph's `loss` output ([`check`]).
//!
//! Why the training graph's own `loss` output is a valid FD oracle: each check
//! first recomputes the loss in Rust (f64) from the graph's `model_output`
//! and the labels, so the forward part and the loss head are verified against
//! ground truth before their loss value is differentiated numerically.
//!
//! Every random number is a multiple of 2⁻²⁰ in [−8, 8], and every step `h`
//! and direction entry is a power-of-two multiple of the same grid, so
//! `w ± h·d` is exactly representable even in f32: the finite difference
//! divides by exactly the step that was applied.

#![allow(dead_code)] // each test binary uses a different subset

use koala_graph::attrs::a_tensor;
use koala_graph::proto::{
    type_proto, AttributeProto, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TypeProto, ValueInfoProto,
};
use koala_graph::{
    tensor, BackwardOptions, ExecutionTarget, LossSpec, Model, TrainingGraph, TrainingSpec,
};
use koala_runtime::{OwnedTensor, Session, SessionOptions, TensorView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The element types test nets compute in.
pub const F64: DataType = DataType::Double;
/// f32 (for ops whose ORT kernels have no f64 version).
pub const F32: DataType = DataType::Float;

/// Checks `net` with MSE against random targets and the default step.
pub fn mse(net: &Net, output: &str) {
    check(net, output, &Check::mse(net.dt));
}

/// `op(X)` → `y` with X a leaf holding `values`.
pub fn unary_case(
    net: &mut Net,
    op: &str,
    shape: &[usize],
    values: Vec<f64>,
    attrs: Vec<AttributeProto>,
) {
    let x = net.leaf("x", shape, values);
    net.node(op, &[&x], &["y"], attrs);
}

/// The error text of building `n`'s training graph (output `y`, MSE), which
/// must fail.
pub fn mse_build_error(n: &Net) -> String {
    let e = koala_graph::build(
        &n.model("y"),
        &n.spec(koala_graph::LossSpec::MeanSquaredError),
    )
    .expect_err("build must refuse the model");
    format!("{e:#}")
}

/// Grid every random value lies on (see the module docs).
const GRID: f64 = 1.0 / (1u64 << 20) as f64;

/// A named tensor with f64 values (stored in the net's element type).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// A named int64 tensor (indices fed as a data input).
#[derive(Clone, Debug)]
pub struct IntTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<i64>,
}

/// A tiny ONNX model under construction.
pub struct Net {
    pub opset: i64,
    pub dt: DataType,
    inputs: Vec<Tensor>,
    int_inputs: Vec<IntTensor>,
    weights: Vec<Tensor>,
    other_inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    extra_opsets: Vec<OperatorSetIdProto>,
    rng: ChaCha8Rng,
}

impl Net {
    /// An empty net of default-domain `opset` computing in `dt` (f32/f64).
    pub fn new(opset: i64, dt: DataType, seed: u64) -> Net {
        Net {
            opset,
            dt,
            inputs: Vec::new(),
            int_inputs: Vec::new(),
            weights: Vec::new(),
            other_inits: Vec::new(),
            nodes: Vec::new(),
            extra_opsets: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `n` values uniform in [lo, hi), on the grid.
    pub fn uniform(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| snap(self.rng.random_range(lo..hi)))
            .collect()
    }

    /// `n` values with |v| ∈ [margin, 1], random sign: keeps inputs of
    /// kinked functions (ReLU at 0) a margin away from the kink.
    pub fn away_from_zero(&mut self, n: usize, margin: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let m = self.rng.random_range(margin..1.0);
                snap(if self.rng.random_bool(0.5) { m } else { -m })
            })
            .collect()
    }

    /// `n` distinct values `spacing·k + offset` in random order: no ties, and
    /// any two differ by at least `spacing` (MaxPool argmax stays put).
    pub fn distinct(&mut self, n: usize, spacing: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n)
            .map(|k| snap(spacing * (k as f64 - n as f64 / 2.0)))
            .collect();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            v.swap(i, j);
        }
        v
    }

    /// `n` values uniform in [lo, hi) that stay `margin` away from every
    /// point of `kinks` (where a piecewise function changes its formula).
    pub fn avoiding(&mut self, n: usize, lo: f64, hi: f64, kinks: &[f64], margin: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = snap(self.rng.random_range(lo..hi));
            if kinks.iter().all(|k| (v - k).abs() >= margin) {
                out.push(v);
            }
        }
        out
    }

    /// A data input of the net's element type with random values in [−1, 1).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        let values = self.uniform(shape.iter().product(), -1.0, 1.0);
        self.inputs.push(Tensor {
            name: name.into(),
            shape: shape.to_vec(),
            values,
        });
        name.into()
    }

    /// An int64 data input with random values in [lo, hi) (token ids,
    /// Gather indices; negative `lo` gives negative indices).
    pub fn int_input(&mut self, name: &str, shape: &[usize], lo: i64, hi: i64) -> String {
        let values = (0..shape.iter().product::<usize>())
            .map(|_| self.rng.random_range(lo..hi))
            .collect();
        self.int_input_values(name, shape, values)
    }

    /// An int64 data input with the given values.
    pub fn int_input_values(&mut self, name: &str, shape: &[usize], values: Vec<i64>) -> String {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        self.int_inputs.push(IntTensor {
            name: name.into(),
            shape: shape.to_vec(),
            values,
        });
        name.into()
    }

    /// A trainable float initializer.
    pub fn weight(&mut self, name: &str, shape: &[usize], values: Vec<f64>) -> String {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        self.weights.push(Tensor {
            name: name.into(),
            shape: shape.to_vec(),
            values: values.into_iter().map(snap).collect(),
        });
        name.into()
    }

    /// A trainable initializer with values uniform in [−1, 1).
    pub fn rand_weight(&mut self, name: &str, shape: &[usize]) -> String {
        let v = self.uniform(shape.iter().product(), -1.0, 1.0);
        self.weight(name, shape, v)
    }

    /// A differentiable leaf with the given values: data input `{name}_data`
    /// plus trainable offset `{name}_w` (= values − data), added into `name`.
    /// Ops without weights read it, so the gradient of the op's input is
    /// checked (as the gradient of `{name}_w`) through a realistic data path.
    pub fn leaf(&mut self, name: &str, shape: &[usize], values: Vec<f64>) -> String {
        let data = self.input(&format!("{name}_data"), shape);
        let d = self.inputs.last().unwrap().values.clone();
        let off: Vec<f64> = values.iter().zip(&d).map(|(v, d)| v - d).collect();
        let w = self.weight(&format!("{name}_w"), shape, off);
        self.node("Add", &[&data, &w], &[name], vec![]);
        name.into()
    }

    /// A leaf with random values in [−1, 1).
    pub fn rand_leaf(&mut self, name: &str, shape: &[usize]) -> String {
        let v = self.uniform(shape.iter().product(), -1.0, 1.0);
        self.leaf(name, shape, v)
    }

    /// A frozen float initializer (not in the trainable set only when the
    /// check excludes it, or when it is BatchNorm statistics).
    pub fn float_init(&mut self, name: &str, shape: &[usize], values: &[f64]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.other_inits
            .push(float_tensor(self.dt, name, &dims, values));
        name.into()
    }

    /// An int64 initializer (shape, axes, pads, …).
    pub fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.other_inits
            .push(tensor::from_i64(name, &[values.len() as i64], values));
        name.into()
    }

    /// A float `Constant` node (never trainable by default).
    pub fn constant(&mut self, name: &str, shape: &[usize], values: &[f64]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = float_tensor(self.dt, "value", &dims, values);
        self.node("Constant", &[], &[name], vec![a_tensor("value", t)]);
        name.into()
    }

    /// Appends a node of the default domain.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: format!("{}_{}", op.to_lowercase(), self.nodes.len()),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Appends a node of another domain (declaring that domain's opset 1).
    pub fn custom_node(&mut self, domain: &str, op: &str, inputs: &[&str], outputs: &[&str]) {
        self.node(op, inputs, outputs, vec![]);
        self.nodes.last_mut().unwrap().domain = domain.into();
        if !self.extra_opsets.iter().any(|o| o.domain == domain) {
            self.extra_opsets.push(OperatorSetIdProto {
                domain: domain.into(),
                version: 1,
            });
        }
    }

    /// Mutable access to the last node (to attach subgraphs and the like).
    pub fn last_node(&mut self) -> &mut NodeProto {
        self.nodes.last_mut().unwrap()
    }

    /// The trainable weights declared so far.
    pub fn weights(&self) -> &[Tensor] {
        &self.weights
    }

    /// The ONNX model whose single graph output is `output`.
    pub fn model(&self, output: &str) -> Model {
        let mut initializer: Vec<TensorProto> = self
            .weights
            .iter()
            .map(|w| {
                let dims: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
                float_tensor(self.dt, &w.name, &dims, &w.values)
            })
            .collect();
        initializer.extend(self.other_inits.iter().cloned());
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: self.opset,
        }];
        opset_import.extend(self.extra_opsets.iter().cloned());
        let proto = ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "koala-graph tests".into(),
            graph: Some(GraphProto {
                name: "net".into(),
                node: self.nodes.clone(),
                initializer,
                input: self
                    .inputs
                    .iter()
                    .map(|i| koala_graph::training::value_info(&i.name, self.dt, &i.shape))
                    .chain(self.int_inputs.iter().map(|i| {
                        koala_graph::training::value_info(&i.name, DataType::Int64, &i.shape)
                    }))
                    .collect(),
                output: vec![ValueInfoProto {
                    name: output.into(),
                    r#type: Some(TypeProto {
                        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                            elem_type: self.dt as i32,
                            shape: None,
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        Model::from_proto(proto).expect("test model is valid")
    }

    /// The training spec for this net's data inputs.
    pub fn spec(&self, loss: LossSpec) -> TrainingSpec {
        TrainingSpec {
            input_shapes: self
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.shape.clone()))
                .chain(
                    self.int_inputs
                        .iter()
                        .map(|i| (i.name.clone(), i.shape.clone())),
                )
                .collect(),
            loss,
            // Every weight of a test net is checked, including leaves the
            // default selection would take for input preprocessing (a
            // per-channel constant added to a data input).
            trainable: koala_graph::TrainableSpec {
                include: Some(".*".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Rounds to the value grid (and keeps it inside ±8, where the grid is exact in f32).
fn snap(v: f64) -> f64 {
    ((v / GRID).round() * GRID).clamp(-8.0, 8.0)
}

fn float_tensor(dt: DataType, name: &str, dims: &[i64], values: &[f64]) -> TensorProto {
    match dt {
        DataType::Double => tensor::from_f64(name, dims, values),
        DataType::Float => tensor::from_f32(
            name,
            dims,
            &values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        ),
        other => panic!("test nets are f32 or f64, not {other:?}"),
    }
}

/// Labels of a check.
#[derive(Clone, Debug)]
pub enum Labels {
    /// Random float targets in [−1, 1) shaped like the output (MSE).
    RandomTargets,
    /// Class indices (cross-entropy).
    Classes(Vec<i64>),
}

/// Step and tolerance of a finite-difference check.
#[derive(Clone, Copy, Debug)]
pub struct Fd {
    /// Step (a power of two, so `w ± h·d` stays on the grid).
    pub h: f64,
    /// Largest accepted ‖fd − g‖ / ‖g‖ per weight tensor.
    pub tol: f64,
}

impl Fd {
    /// f64 nets: h = 2⁻²⁰ ≈ 1e-6. Truncation error of a central difference is
    /// h²·|L'''|/6 ≈ 1e-13 for O(1) derivatives; roundoff is ≈ 1e-16·|L|/h ≈
    /// 1e-10·|L|. Both are far below 1e-6 of gradients of size ≳ 1e-3·|L|,
    /// while a wrong rule is off by O(1).
    pub const F64: Fd = Fd {
        h: 1.0 / (1u64 << 20) as f64,
        tol: 1e-6,
    };
    /// f32 nets: h = 2⁻⁵ ≈ 0.03. Most f32-only ops here (Conv, ConvTranspose,
    /// pooling, BatchNorm) are linear in each weight, so under MSE the loss is
    /// exactly quadratic along any single-tensor direction and the central
    /// difference has no truncation error at all. Roundoff of the f32 loss is
    /// ≈ 1e-7·|L|·(a few) / h ≈ 1e-5·|L|; gradients are ≳ 1e-2·|L| here, so a
    /// correct rule lands near 1e-5..1e-4 relative (measured) and a wrong
    /// one is off by O(1). Smooth nonlinear f32 ops use [`Fd::F32_SMOOTH`].
    pub const F32: Fd = Fd {
        h: 1.0 / 32.0,
        tol: 1e-3,
    };

    /// f32 nets through a smooth nonlinearity (HardSwish's quadratic part):
    /// h = 2⁻⁷ ≈ 8e-3 makes truncation h²·|L'''|/6 ≈ 1e-5·|L'''| while
    /// roundoff grows to ≈ 1e-7·|L|/h ≈ 1e-5·|L|; tolerance 1e-2 covers both
    /// for gradients ≳ 1e-2·|L|.
    pub const F32_SMOOTH: Fd = Fd {
        h: 1.0 / 128.0,
        tol: 1e-2,
    };

    /// The default for a net's element type.
    pub fn for_dtype(dt: DataType) -> Fd {
        if dt == DataType::Double {
            Fd::F64
        } else {
            Fd::F32
        }
    }
}

/// What to check.
pub struct Check {
    pub loss: LossSpec,
    pub labels: Labels,
    pub fd: Fd,
    pub backward: BackwardOptions,
    /// Weights allowed to get an all-zero gradient (otherwise a zero gradient
    /// fails the check: a test whose gradients are all zero proves nothing).
    pub may_be_zero: Vec<String>,
    /// Number of random single-tensor directions checked per weight.
    pub directions: usize,
    /// Per weight, at most this many elements are checked one by one.
    pub max_elements: usize,
}

impl Check {
    /// MSE against random targets with the default step for `dt`.
    pub fn mse(dt: DataType) -> Check {
        Check {
            loss: LossSpec::MeanSquaredError,
            labels: Labels::RandomTargets,
            fd: Fd::for_dtype(dt),
            backward: BackwardOptions::default(),
            may_be_zero: Vec::new(),
            directions: 2,
            max_elements: 48,
        }
    }

    /// Softmax cross-entropy with the given labels.
    pub fn cross_entropy(
        dt: DataType,
        labels: Vec<i64>,
        smoothing: f32,
        ignore: Option<i64>,
    ) -> Check {
        Check {
            loss: LossSpec::SoftmaxCrossEntropy {
                label_smoothing: smoothing,
                ignore_index: ignore,
            },
            labels: Labels::Classes(labels),
            ..Check::mse(dt)
        }
    }

    /// With another step/tolerance.
    pub fn with_fd(mut self, fd: Fd) -> Check {
        self.fd = fd;
        self
    }
}

/// Result of a check: the worst relative error per trainable weight.
#[derive(Debug)]
pub struct Report {
    pub loss: f64,
    pub errors: Vec<(String, f64)>,
    pub graph: TrainingGraph,
}

/// Builds the training graph of `net` (output `output`), checks the loss
/// value against a Rust recomputation, then every gradient element (up to
/// `max_elements` per weight) and `directions` random directions per weight
/// against central differences. Panics with the details on failure.
///
/// Both execution targets are checked: `portable` (standard ONNX), then `ort` whenever its
/// graph differs (2-D convs on ORT's blocked kernels, `nchwc.rs`); the report is the `ort`
/// one then. A test that sets `c.backward.target` to `portable` checks only that.
pub fn check(net: &Net, output: &str, c: &Check) -> Report {
    let model = net.model(output);
    let build = |target: ExecutionTarget| {
        let mut backward = c.backward.clone();
        backward.target = target;
        let spec = TrainingSpec {
            backward,
            ..net.spec(c.loss.clone())
        };
        koala_graph::build(&model, &spec)
            .unwrap_or_else(|e| panic!("build failed ({target:?} target): {e:#}"))
    };
    let portable = check_graph(net, c, build(ExecutionTarget::Portable));
    if c.backward.target == ExecutionTarget::Portable {
        return portable;
    }
    let ort = build(ExecutionTarget::Ort);
    match &ort.nchwc {
        Some(s) if s.convs + s.blocked_nodes > 0 => {
            eprintln!("  ort target: {s:?}");
            check_graph(net, c, ort)
        }
        _ => portable,
    }
}

/// [`check`] on one built training graph.
fn check_graph(net: &Net, c: &Check, graph: TrainingGraph) -> Report {
    let mut run = Run::new(net, &graph, &c.labels, 7);
    let base = run.eval(&run.weights.clone());
    check_loss_value(net.dt, &run, &base, &c.loss);
    let mut errors = Vec::new();
    for (k, w) in run.weights.clone().iter().enumerate() {
        let g = base.grads[k].clone();
        let gnorm = norm(&g);
        if gnorm == 0.0 && !c.may_be_zero.contains(&w.name) {
            panic!(
                "gradient of '{}' is all zero; the check would prove nothing",
                w.name
            );
        }
        let e1 = elementwise_error(&mut run, k, &g, c);
        let e2 = directional_error(&mut run, k, &g, c);
        let err = e1.max(e2);
        eprintln!(
            "  {:?} {:<14} n={:<4} |g|={:<10.3e} elementwise {:.2e} directional {:.2e}",
            net.dt,
            w.name,
            g.len(),
            gnorm,
            e1,
            e2
        );
        assert!(
            err <= c.fd.tol,
            "gradient of '{}' disagrees with finite differences: relative error {err:.3e} > {:.1e}\n  analytic {:?}",
            w.name,
            c.fd.tol,
            &g[..g.len().min(12)]
        );
        errors.push((w.name.clone(), err));
    }
    Report {
        loss: base.loss,
        errors,
        graph,
    }
}

/// ‖fd − g‖/‖g‖ over (a random subset of) single elements.
fn elementwise_error(run: &mut Run, k: usize, g: &[f64], c: &Check) -> f64 {
    let n = g.len();
    let mut idx: Vec<usize> = (0..n).collect();
    if n > c.max_elements {
        for i in 0..c.max_elements {
            let j = run.rng.random_range(i..n);
            idx.swap(i, j);
        }
        idx.truncate(c.max_elements);
    }
    let (mut fd, mut an) = (Vec::new(), Vec::new());
    for &i in &idx {
        let mut dir = vec![0.0; n];
        dir[i] = 1.0;
        fd.push(run.directional(k, &dir, c.fd.h));
        an.push(g[i]);
    }
    rel_error(&fd, &an)
}

/// Relative error of the directional derivative g·d along random directions.
fn directional_error(run: &mut Run, k: usize, g: &[f64], c: &Check) -> f64 {
    let mut worst: f64 = 0.0;
    for _ in 0..c.directions {
        // Entries on a 2⁻¹⁰ grid in [−1, 1]: h·d stays on the value grid.
        let dir: Vec<f64> = (0..g.len())
            .map(|_| (run.rng.random_range(-1.0f64..1.0) * 1024.0).round() / 1024.0)
            .collect();
        let fd = run.directional(k, &dir, c.fd.h);
        let an: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
        // Scale by ‖g‖·‖d‖ so a direction nearly orthogonal to g is not
        // judged by a tiny denominator.
        let scale = norm(g) * norm(&dir);
        worst = worst.max(if scale > 0.0 {
            (fd - an).abs() / scale
        } else {
            fd.abs()
        });
    }
    worst
}

/// ‖a − b‖ / max(‖b‖, tiny).
pub fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let nb = norm(b).max(norm(a));
    if nb == 0.0 {
        0.0
    } else {
        norm(&diff) / nb
    }
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The loss the graph reports must equal the loss computed here in f64
/// from the graph's own `model_output` and the labels: MSE as the mean of
/// (output − target)², cross-entropy by [`cross_entropy_reference`] (loss and
/// per-sample losses).
fn check_loss_value(dt: DataType, run: &Run, base: &Eval, loss: &LossSpec) {
    // f64: summation order only; f32: a few ulps of accumulated roundoff.
    let tol = if dt == DataType::Double { 1e-12 } else { 1e-5 };
    let close = |what: &str, got: f64, want: f64| {
        let rel = (got - want).abs() / want.abs().max(1e-12);
        assert!(
            rel <= tol,
            "{what}: graph says {got}, reference {want} (rel {rel:.2e})"
        );
    };
    match (&run.labels, loss) {
        (Labels::RandomTargets, _) => {
            let t = &run.targets;
            let mse = base
                .model_output
                .iter()
                .zip(t)
                .map(|(y, t)| (y - t) * (y - t))
                .sum::<f64>()
                / t.len() as f64;
            close("MSE loss", base.loss, mse);
        }
        (
            Labels::Classes(labels),
            LossSpec::SoftmaxCrossEntropy {
                label_smoothing,
                ignore_index,
            },
        ) => {
            let (want, per_sample) = cross_entropy_reference(
                &base.model_output,
                &run.output_shape,
                labels,
                *label_smoothing as f64,
                *ignore_index,
            );
            close("cross-entropy loss", base.loss, want);
            let got = &base.outputs["per_sample_loss"];
            assert_eq!(got.len(), per_sample.len(), "per-sample loss length");
            for (b, (g, w)) in got.iter().zip(&per_sample).enumerate() {
                close(&format!("per-sample loss of sample {b}"), *g, *w);
            }
        }
        (l, s) => panic!("labels {l:?} do not fit loss {s:?}"),
    }
}

/// Softmax cross-entropy computed by hand over the last axis of `logits`
/// (shape `shape`): per row −Σ_c t_c·log p_c with t = (1−ε)·onehot + ε/C,
/// rows whose label is `ignore` skipped. Returns the mean over kept rows and
/// each sample's mean over its kept rows (0 when it has none).
pub fn cross_entropy_reference(
    logits: &[f64],
    shape: &[usize],
    labels: &[i64],
    eps: f64,
    ignore: Option<i64>,
) -> (f64, Vec<f64>) {
    let classes = *shape.last().unwrap();
    let batch = shape[0];
    let rows = logits.len() / classes;
    let per = rows / batch;
    let mut row_loss = vec![0.0; rows];
    let mut kept = vec![false; rows];
    for r in 0..rows {
        if Some(labels[r]) == ignore {
            continue;
        }
        let z = &logits[r * classes..(r + 1) * classes];
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let nll = lse - z[labels[r] as usize];
        let mean_nll = z.iter().map(|v| lse - v).sum::<f64>() / classes as f64;
        row_loss[r] = (1.0 - eps) * nll + eps * mean_nll;
        kept[r] = true;
    }
    let n_kept = kept.iter().filter(|&&k| k).count().max(1);
    let loss = row_loss.iter().sum::<f64>() / n_kept as f64;
    let per_sample = (0..batch)
        .map(|b| {
            let range = b * per..(b + 1) * per;
            let k = kept[range.clone()].iter().filter(|&&k| k).count().max(1);
            row_loss[range].iter().sum::<f64>() / k as f64
        })
        .collect();
    (loss, per_sample)
}

/// One evaluation of the training graph.
pub struct Eval {
    pub loss: f64,
    pub grads: Vec<Vec<f64>>,
    pub model_output: Vec<f64>,
    pub outputs: HashMap<String, Vec<f64>>,
}

/// A training-graph session with its fixed feeds (data and labels).
pub struct Run {
    session: Session,
    dt: DataType,
    data: Vec<Tensor>,
    int_data: Vec<IntTensor>,
    labels: Labels,
    pub targets: Vec<f64>,
    label_shape: Vec<usize>,
    output_shape: Vec<usize>,
    pub weights: Vec<Tensor>,
    grad_names: Vec<String>,
    rng: ChaCha8Rng,
}

impl Run {
    /// Opens the training graph and draws labels.
    pub fn new(net: &Net, graph: &TrainingGraph, labels: &Labels, seed: u64) -> Run {
        let bytes = prost::Message::encode_to_vec(&graph.proto);
        let opts = SessionOptions {
            intra_threads: Some(1),
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&bytes, &opts)
            .unwrap_or_else(|e| panic!("ORT cannot load the training graph: {e}"));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = graph.label_shape.iter().product();
        let targets = (0..n).map(|_| snap(rng.random_range(-1.0..1.0))).collect();
        let by_name: HashMap<&str, &Tensor> =
            net.weights.iter().map(|w| (w.name.as_str(), w)).collect();
        let weights: Vec<Tensor> = graph
            .trainable
            .iter()
            .map(|t| by_name[t.name.as_str()].clone())
            .collect();
        Run {
            session,
            dt: net.dt,
            data: net.inputs.clone(),
            int_data: net.int_inputs.clone(),
            labels: labels.clone(),
            targets,
            label_shape: graph.label_shape.clone(),
            output_shape: graph.model_output_shape.clone(),
            grad_names: graph
                .trainable
                .iter()
                .map(|t| t.grad_output.clone())
                .collect(),
            weights,
            rng,
        }
    }

    /// Runs the graph with the given weight values.
    pub fn eval(&mut self, weights: &[Tensor]) -> Eval {
        let f32_of = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let double = self.dt == DataType::Double;
        let mut bufs32: Vec<Vec<f32>> = Vec::new();
        let mut feeds: Vec<(&str, &[f64], &[usize])> = Vec::new();
        for t in self.data.iter().chain(weights) {
            feeds.push((&t.name, &t.values, &t.shape));
        }
        let label_i64: Vec<i64>;
        let mut views: Vec<(&str, TensorView)> = Vec::new();
        if !double {
            for (_, v, _) in &feeds {
                bufs32.push(f32_of(v));
            }
        }
        let targets32 = f32_of(&self.targets);
        for (i, (name, v, shape)) in feeds.iter().enumerate() {
            views.push((
                name,
                if double {
                    TensorView::f64(v, shape)
                } else {
                    TensorView::f32(&bufs32[i], shape)
                },
            ));
        }
        for t in &self.int_data {
            views.push((&t.name, TensorView::i64(&t.values, &t.shape)));
        }
        match &self.labels {
            Labels::RandomTargets => views.push((
                koala_graph::training::LABELS,
                if double {
                    TensorView::f64(&self.targets, &self.label_shape)
                } else {
                    TensorView::f32(&targets32, &self.label_shape)
                },
            )),
            Labels::Classes(c) => {
                label_i64 = c.clone();
                views.push((
                    koala_graph::training::LABELS,
                    TensorView::i64(&label_i64, &self.label_shape),
                ));
            }
        }
        let outs = self
            .session
            .run(&views)
            .unwrap_or_else(|e| panic!("ORT failed to run the training graph: {e}"));
        let outputs: HashMap<String, Vec<f64>> =
            outs.iter().map(|o| (o.name.clone(), to_f64(o))).collect();
        Eval {
            loss: outputs["loss"][0],
            grads: self.grad_names.iter().map(|g| outputs[g].clone()).collect(),
            model_output: outputs["model_output"].clone(),
            outputs,
        }
    }

    /// Central difference of the loss along `dir` in weight `k`.
    pub fn directional(&mut self, k: usize, dir: &[f64], h: f64) -> f64 {
        let mut w = self.weights.clone();
        let base = w[k].values.clone();
        let mut at = |sign: f64, w: &mut Vec<Tensor>| {
            for ((x, b), d) in w[k].values.iter_mut().zip(&base).zip(dir) {
                *x = b + sign * h * d;
            }
            self.eval(w).loss
        };
        let plus = at(1.0, &mut w);
        let minus = at(-1.0, &mut w);
        (plus - minus) / (2.0 * h)
    }
}

fn to_f64(t: &OwnedTensor) -> Vec<f64> {
    if let Some(v) = t.as_f64() {
        v.to_vec()
    } else if let Some(v) = t.as_f32() {
        v.iter().map(|&x| x as f64).collect()
    } else if let Some(v) = t.as_i64() {
        v.iter().map(|&x| x as f64).collect()
    } else {
        Vec::new()
    }
}
