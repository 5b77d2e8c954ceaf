//! Tiny-width variants of the ONNX Model Zoo's classic classifiers, built in
//! Rust in the form the zoo's files take (the `onnx` package's
//! `backend/test/data/light/` copies were the pattern): ResNet-50
//! (bottlenecks, `Sum` residuals), SqueezeNet (fire modules, Concat, a
//! Conv 1×1 head → Relu → GlobalAveragePool → Softmax), DenseNet-121 (dense
//! blocks with Concat, BatchNormalization followed by the
//! `Unsqueeze`+`Mul`+`Add` scale pattern, GlobalAveragePool → Conv 1×1 head),
//! Inception v1 (LRN, inception modules, AveragePool, Dropout, a Gemm whose
//! weight is a Reshape of the initializer stored `[1, 1, 1000, C]`), ShuffleNet (grouped and
//! depthwise Conv, channel shuffle Reshape → Transpose → Reshape, `Sum`,
//! AveragePool with stride), VGG / AlexNet (LRN for AlexNet, Gemm + Dropout,
//! Softmax).
//!
//! [`Form`] chooses the opset's attribute forms: at opset ≤ 9 (the zoo's
//! files) IR 3, every initializer also listed as a graph input, Dropout with
//! a `ratio` attribute and two outputs, Unsqueeze with an `axes` attribute,
//! BatchNormalization with `spatial` (opset < 9 only: BN-9 dropped it, and
//! the light files at opset 9 have none); at opset 13 IR 7, initializers
//! not inputs, Unsqueeze `axes` as an input. Both: batch fixed to 1, a 32×32
//! input, Softmax axis 1, Reshape with a shape initializer, 1000 classes, and
//! seeded random initializers (He-uniform convolutions and Gemms,
//! BatchNormalization statistics near identity).
//! Shared by `tests/zoo_sweep.rs` and koala-graph's head tests.

#![allow(dead_code)] // each test binary uses a different subset

use koala_graph::attrs::{a_float, a_int, a_ints};
use koala_graph::proto::{
    dimension, type_proto, AttributeProto, DataType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use koala_graph::{tensor, Model};

/// The architectures the generator builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet50,
    SqueezeNet,
    DenseNet121,
    InceptionV1,
    ShuffleNet,
    Vgg19,
    AlexNet,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 7] = [
        Arch::ResNet50,
        Arch::SqueezeNet,
        Arch::DenseNet121,
        Arch::InceptionV1,
        Arch::ShuffleNet,
        Arch::Vgg19,
        Arch::AlexNet,
    ];

    /// A file-name-friendly name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet50 => "resnet50",
            Arch::SqueezeNet => "squeezenet",
            Arch::DenseNet121 => "densenet121",
            Arch::InceptionV1 => "inception_v1",
            Arch::ShuffleNet => "shufflenet",
            Arch::Vgg19 => "vgg19",
            Arch::AlexNet => "alexnet",
        }
    }

    /// Whether the architecture has an LRN node (Inception v1, AlexNet).
    pub fn has_lrn(self) -> bool {
        matches!(self, Arch::InceptionV1 | Arch::AlexNet)
    }
}

/// The side of the square input image.
pub const IMAGE: i64 = 32;
/// The number of classes of every generated head.
pub const CLASSES: i64 = 1000;

/// The opset whose attribute forms the graph uses (7–9: the zoo's old form,
/// ≥ 13: the current one).
#[derive(Clone, Copy, Debug)]
pub struct Form {
    pub opset: i64,
}

impl Form {
    fn old(self) -> bool {
        self.opset < 13
    }
}

/// Builds `arch` in `form`; seeded random weights.
pub fn build(arch: Arch, form: Form, seed: u64) -> Model {
    let mut b = Builder::new(form, seed);
    let x = "data_0".to_string();
    let (out, dims) = match arch {
        Arch::ResNet50 => resnet(&mut b, &x),
        Arch::SqueezeNet => squeezenet(&mut b, &x),
        Arch::DenseNet121 => densenet(&mut b, &x),
        Arch::InceptionV1 => inception(&mut b, &x),
        Arch::ShuffleNet => shufflenet(&mut b, &x),
        Arch::Vgg19 => vgg(&mut b, &x, false),
        Arch::AlexNet => vgg(&mut b, &x, true),
    };
    b.finish(arch.name(), &x, &out, &dims)
}

/// Graph construction with seeded weights and the form's attribute shapes.
pub struct Builder {
    form: Form,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    state: u64,
    count: usize,
}

impl Builder {
    fn new(form: Form, seed: u64) -> Builder {
        Builder {
            form,
            nodes: vec![],
            inits: vec![],
            state: seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
            count: 0,
        }
    }

    /// Uniform in [lo, hi) from a 64-bit LCG (no dependency; reproducible).
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = (self.state >> 40) as f32 / (1u64 << 24) as f32;
                lo + (hi - lo) * u
            })
            .collect()
    }

    fn fresh(&mut self) -> String {
        self.count += 1;
        format!("r{}", self.count)
    }

    fn init(&mut self, name: &str, dims: &[i64], values: Vec<f32>) -> String {
        assert!(
            self.inits.iter().all(|t| t.name != name),
            "zoo generator: initializer '{name}' twice"
        );
        self.inits.push(tensor::from_f32(name, dims, &values));
        name.to_string()
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        assert!(
            self.inits.iter().all(|t| t.name != name),
            "zoo generator: initializer '{name}' twice"
        );
        self.inits
            .push(tensor::from_i64(name, &[values.len() as i64], values));
        name.to_string()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh();
        self.node_to(op, inputs, &[&out], attrs);
        out
    }

    fn node_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) {
        let name = format!("n{}", self.nodes.len());
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    /// He-uniform weight `dims` (fan_in = product of dims after the first).
    fn he(&mut self, name: &str, dims: &[i64]) -> String {
        let fan_in: i64 = dims[1..].iter().product();
        let bound = (6.0 / fan_in as f32).sqrt();
        let n = dims.iter().product::<i64>() as usize;
        let v = self.uniform(n, -bound, bound);
        self.init(name, dims, v)
    }

    /// He-uniform weight `dims` whose fan-in is `fan_in` (a weight stored in another layout).
    fn init_he_rows(&mut self, name: &str, dims: &[i64], fan_in: i64) -> String {
        let bound = (6.0 / fan_in as f32).sqrt();
        let n = dims.iter().product::<i64>() as usize;
        let v = self.uniform(n, -bound, bound);
        self.init(name, dims, v)
    }

    fn bias(&mut self, name: &str, n: i64) -> String {
        let v = self.uniform(n as usize, -0.05, 0.05);
        self.init(name, &[n], v)
    }

    /// Conv `name` (`{name}_w_0`, `{name}_b_0` when `bias`).
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: &str,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        pad: i64,
        group: i64,
        bias: bool,
    ) -> String {
        let w = self.he(&format!("{name}_w_0"), &[cout, cin / group, k, k]);
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.bias(&format!("{name}_b_0"), cout));
        }
        let mut attrs = vec![
            a_ints("kernel_shape", &[k, k]),
            a_ints("strides", &[stride, stride]),
            a_ints("pads", &[pad, pad, pad, pad]),
        ];
        if group != 1 {
            attrs.push(a_int("group", group));
        }
        let r: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = self.node("Conv", &r, attrs);
        self.nodes.last_mut().unwrap().name = name.into();
        out
    }

    fn bn(&mut self, name: &str, x: &str, c: i64) -> String {
        let s = self.uniform(c as usize, 0.8, 1.2);
        let s = self.init(&format!("{name}_s_0"), &[c], s);
        let b = self.uniform(c as usize, -0.1, 0.1);
        let b = self.init(&format!("{name}_b_0"), &[c], b);
        let m = self.uniform(c as usize, -0.1, 0.1);
        let m = self.init(&format!("{name}_rm_0"), &[c], m);
        let v = self.uniform(c as usize, 0.8, 1.2);
        let v = self.init(&format!("{name}_riv_0"), &[c], v);
        let mut attrs = vec![a_float("epsilon", 1e-5)];
        if self.form.opset < 9 {
            attrs.push(a_int("spatial", 1));
        }
        self.node("BatchNormalization", &[x, &s, &b, &m, &v], attrs)
    }

    /// DenseNet's scale pattern: `x · Unsqueeze(scale, [1, 2]) + Unsqueeze(b, [1, 2])`.
    fn scale(&mut self, name: &str, x: &str, c: i64) -> String {
        let s = self.uniform(c as usize, 0.8, 1.2);
        let s = self.init(&format!("{name}/bn_scale_0"), &[c], s);
        let b = self.uniform(c as usize, -0.1, 0.1);
        let b = self.init(&format!("{name}/bn_b_0"), &[c], b);
        let su = self.unsqueeze12(&s);
        let bu = self.unsqueeze12(&b);
        let m = self.node("Mul", &[x, &su], vec![]);
        self.node("Add", &[&m, &bu], vec![])
    }

    fn unsqueeze12(&mut self, x: &str) -> String {
        if self.form.old() {
            self.node("Unsqueeze", &[x], vec![a_ints("axes", &[1, 2])])
        } else {
            let name = format!("{x}__axes");
            let axes = self.ints(&name, &[1, 2]);
            self.node("Unsqueeze", &[x, &axes], vec![])
        }
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    fn pool(&mut self, op: &str, x: &str, k: i64, stride: i64, pad: i64) -> String {
        self.node(
            op,
            &[x],
            vec![
                a_ints("kernel_shape", &[k, k]),
                a_ints("strides", &[stride, stride]),
                a_ints("pads", &[pad, pad, pad, pad]),
            ],
        )
    }

    fn lrn(&mut self, x: &str) -> String {
        self.node(
            "LRN",
            &[x],
            vec![
                a_int("size", 5),
                a_float("alpha", 1e-4),
                a_float("beta", 0.75),
                a_float("bias", 1.0),
            ],
        )
    }

    fn dropout(&mut self, x: &str, ratio: f32) -> String {
        let out = self.fresh();
        if self.form.old() {
            let mask = self.fresh();
            self.node_to(
                "Dropout",
                &[x],
                &[&out, &mask],
                vec![a_float("ratio", ratio)],
            );
        } else {
            self.node_to("Dropout", &[x], &[&out], vec![]);
        }
        out
    }

    fn reshape(&mut self, x: &str, shape_name: &str, shape: &[i64]) -> String {
        let s = self.ints(shape_name, shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    fn gemm(&mut self, name: &str, x: &str, fin: i64, fout: i64) -> String {
        let w = self.he(&format!("{name}_w_0"), &[fout, fin]);
        let b = self.bias(&format!("{name}_b_0"), fout);
        let out = self.node("Gemm", &[x, &w, &b], vec![a_int("transB", 1)]);
        self.nodes.last_mut().unwrap().name = name.into();
        out
    }

    fn softmax(&mut self, x: &str, out: &str) {
        self.node_to("Softmax", &[x], &[out], vec![a_int("axis", 1)]);
    }

    fn finish(self, name: &str, input: &str, output: &str, out_dims: &[i64]) -> Model {
        let info = |n: &str, dt: DataType, dims: &[i64]| ValueInfoProto {
            name: n.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: dt as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(dimension::Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut inputs = vec![info(input, DataType::Float, &[1, 3, IMAGE, IMAGE])];
        if self.form.old() {
            for t in &self.inits {
                let dt = DataType::try_from(t.data_type).unwrap();
                inputs.push(info(&t.name, dt, &t.dims));
            }
        }
        let proto = ModelProto {
            ir_version: if self.form.old() { 3 } else { 7 },
            producer_name: "koala zoo generator".into(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.form.opset,
            }],
            graph: Some(GraphProto {
                name: name.into(),
                node: self.nodes,
                initializer: self.inits,
                input: inputs,
                output: vec![info(output, DataType::Float, out_dims)],
                ..Default::default()
            }),
            ..Default::default()
        };
        Model::from_proto(proto).unwrap()
    }
}

/// Stem shared by several nets: Conv 3×3 stride 2 (32 → 16) and MaxPool 3×3
/// stride 2 pad 1 (16 → 8).
fn stem(b: &mut Builder, x: &str, c: i64, bn: bool) -> String {
    let y = b.conv("conv1", x, 3, c, 3, 2, 1, 1, !bn);
    let y = if bn { b.bn("bn_conv1", &y, c) } else { y };
    let y = b.relu(&y);
    b.pool("MaxPool", &y, 3, 2, 1)
}

/// Global pooling → Reshape `[1, C]` → Gemm (1000) → Softmax, as the zoo's ResNet/ShuffleNet.
fn gemm_head(
    b: &mut Builder,
    x: &str,
    c: i64,
    spatial: i64,
    w_reshape: bool,
) -> (String, Vec<i64>) {
    let p = b.pool("AveragePool", x, spatial, 1, 0);
    let f = b.reshape(&p, "OC2_DUMMY_1", &[1, c]);
    let logits = if w_reshape {
        // Inception v1: the classifier weight reaches Gemm through a Reshape.
        // As the zoo's file: the weight is stored `[1, 1, 1000, C]`.
        let w = b.init_he_rows("loss3/classifier_w_0", &[1, 1, CLASSES, c], c);
        let wr = b.reshape(&w, "OC2_DUMMY_3", &[CLASSES, c]);
        let bias = b.bias("loss3/classifier_b_0", CLASSES);
        let out = b.node("Gemm", &[&f, &wr, &bias], vec![a_int("transB", 1)]);
        b.nodes.last_mut().unwrap().name = "loss3/classifier".into();
        out
    } else {
        b.gemm("pred", &f, c, CLASSES)
    };
    b.softmax(&logits, "prob_1");
    ("prob_1".into(), vec![1, CLASSES])
}

fn bottleneck(
    b: &mut Builder,
    name: &str,
    x: &str,
    cin: i64,
    mid: i64,
    cout: i64,
    stride: i64,
) -> String {
    let y = b.conv(
        &format!("{name}_branch2a"),
        x,
        cin,
        mid,
        1,
        stride,
        0,
        1,
        false,
    );
    let y = b.bn(&format!("{name}_branch2a_bn"), &y, mid);
    let y = b.relu(&y);
    let y = b.conv(&format!("{name}_branch2b"), &y, mid, mid, 3, 1, 1, 1, false);
    let y = b.bn(&format!("{name}_branch2b_bn"), &y, mid);
    let y = b.relu(&y);
    let y = b.conv(
        &format!("{name}_branch2c"),
        &y,
        mid,
        cout,
        1,
        1,
        0,
        1,
        false,
    );
    let y = b.bn(&format!("{name}_branch2c_bn"), &y, cout);
    let short = if cin != cout || stride != 1 {
        let s = b.conv(
            &format!("{name}_branch1"),
            x,
            cin,
            cout,
            1,
            stride,
            0,
            1,
            false,
        );
        b.bn(&format!("{name}_branch1_bn"), &s, cout)
    } else {
        x.to_string()
    };
    let s = b.node("Sum", &[&y, &short], vec![]);
    b.relu(&s)
}

/// ResNet-50 in miniature: stem, bottlenecks 8 → 16 (8×8, two blocks, the
/// second an identity residual) and 16 → 32 (stride 2, 4×4), AveragePool 4.
fn resnet(b: &mut Builder, x: &str) -> (String, Vec<i64>) {
    let y = stem(b, x, 8, true);
    let y = bottleneck(b, "res2a", &y, 8, 4, 16, 1);
    let y = bottleneck(b, "res2b", &y, 16, 4, 16, 1);
    let y = bottleneck(b, "res3a", &y, 16, 8, 32, 2);
    gemm_head(b, &y, 32, 4, false)
}

fn fire(b: &mut Builder, name: &str, x: &str, cin: i64, s: i64, e: i64) -> String {
    let q = b.conv(&format!("{name}/squeeze1x1"), x, cin, s, 1, 1, 0, 1, true);
    let q = b.relu(&q);
    let e1 = b.conv(&format!("{name}/expand1x1"), &q, s, e, 1, 1, 0, 1, true);
    let e1 = b.relu(&e1);
    let e3 = b.conv(&format!("{name}/expand3x3"), &q, s, e, 3, 1, 1, 1, true);
    let e3 = b.relu(&e3);
    b.node("Concat", &[&e1, &e3], vec![a_int("axis", 1)])
}

/// SqueezeNet 1.1 in miniature: stem, fire modules, Dropout, Conv 1×1
/// `conv10` (1000) → Relu → GlobalAveragePool → Softmax, output `[1, 1000, 1, 1]`.
fn squeezenet(b: &mut Builder, x: &str) -> (String, Vec<i64>) {
    let y = stem(b, x, 8, false);
    let y = fire(b, "fire2", &y, 8, 4, 8);
    let y = fire(b, "fire3", &y, 16, 4, 8);
    let y = b.pool("MaxPool", &y, 3, 2, 1);
    let y = fire(b, "fire4", &y, 16, 4, 8);
    let y = b.dropout(&y, 0.5);
    let y = b.conv("conv10", &y, 16, CLASSES, 1, 1, 0, 1, true);
    let y = b.relu(&y);
    let y = b.node("GlobalAveragePool", &[&y], vec![]);
    b.softmax(&y, "softmaxout_1");
    ("softmaxout_1".into(), vec![1, CLASSES, 1, 1])
}

/// DenseNet's BN → scale → Relu.
fn bn_scale_relu(b: &mut Builder, name: &str, x: &str, c: i64) -> String {
    let y = b.bn(&format!("{name}/bn_stats"), x, c);
    let y = b.scale(name, &y, c);
    b.relu(&y)
}

fn dense_block(
    b: &mut Builder,
    name: &str,
    x: &str,
    mut c: i64,
    layers: usize,
    growth: i64,
) -> (String, i64) {
    let mut y = x.to_string();
    for l in 1..=layers {
        let n = format!("{name}_{l}");
        let z = bn_scale_relu(b, &format!("{n}/x1"), &y, c);
        let z = b.conv(&format!("{n}/x1"), &z, c, 2 * growth, 1, 1, 0, 1, false);
        let z = bn_scale_relu(b, &format!("{n}/x2"), &z, 2 * growth);
        let z = b.conv(
            &format!("{n}/x2"),
            &z,
            2 * growth,
            growth,
            3,
            1,
            1,
            1,
            false,
        );
        y = b.node("Concat", &[&y, &z], vec![a_int("axis", 1)]);
        c += growth;
    }
    (y, c)
}

/// DenseNet-121 in miniature: stem with the scale pattern, two dense blocks
/// of two layers with a transition (Conv 1×1 + AveragePool 2 stride 2)
/// between, BN/scale/Relu, GlobalAveragePool → Conv 1×1 `fc6` (1000), output
/// `[1, 1000, 1, 1]` (no Softmax, as the zoo's file).
fn densenet(b: &mut Builder, x: &str) -> (String, Vec<i64>) {
    let y = b.conv("conv1", x, 3, 8, 3, 2, 1, 1, false);
    let y = bn_scale_relu(b, "conv1", &y, 8);
    let y = b.pool("MaxPool", &y, 3, 2, 1);
    let (y, c) = dense_block(b, "conv2", &y, 8, 2, 4);
    let y = bn_scale_relu(b, "conv2_blk", &y, c);
    let y = b.conv("conv2_blk", &y, c, c / 2, 1, 1, 0, 1, false);
    let y = b.pool("AveragePool", &y, 2, 2, 0);
    let (y, c) = dense_block(b, "conv3", &y, c / 2, 2, 4);
    let y = bn_scale_relu(b, "conv5_blk", &y, c);
    let y = b.node("GlobalAveragePool", &[&y], vec![]);
    let w = b.he("fc6_w_0", &[CLASSES, c, 1, 1]);
    let bias = b.bias("fc6_b_0", CLASSES);
    b.node_to(
        "Conv",
        &[&y, &w, &bias],
        &["fc6_1"],
        vec![
            a_ints("kernel_shape", &[1, 1]),
            a_ints("strides", &[1, 1]),
            a_ints("pads", &[0, 0, 0, 0]),
        ],
    );
    b.nodes.last_mut().unwrap().name = "fc6".into();
    ("fc6_1".into(), vec![1, CLASSES, 1, 1])
}

#[allow(clippy::too_many_arguments)]
fn inception_module(
    b: &mut Builder,
    name: &str,
    x: &str,
    cin: i64,
    c1: i64,
    r3: i64,
    c3: i64,
    r5: i64,
    c5: i64,
    pp: i64,
) -> (String, i64) {
    let a = b.conv(&format!("{name}/1x1"), x, cin, c1, 1, 1, 0, 1, true);
    let a = b.relu(&a);
    let r = b.conv(&format!("{name}/3x3_reduce"), x, cin, r3, 1, 1, 0, 1, true);
    let r = b.relu(&r);
    let c = b.conv(&format!("{name}/3x3"), &r, r3, c3, 3, 1, 1, 1, true);
    let c = b.relu(&c);
    let r = b.conv(&format!("{name}/5x5_reduce"), x, cin, r5, 1, 1, 0, 1, true);
    let r = b.relu(&r);
    let d = b.conv(&format!("{name}/5x5"), &r, r5, c5, 5, 1, 2, 1, true);
    let d = b.relu(&d);
    let p = b.pool("MaxPool", x, 3, 1, 1);
    let p = b.conv(&format!("{name}/pool_proj"), &p, cin, pp, 1, 1, 0, 1, true);
    let p = b.relu(&p);
    let out = b.node("Concat", &[&a, &c, &d, &p], vec![a_int("axis", 1)]);
    (out, c1 + c3 + c5 + pp)
}

/// Inception v1 (GoogLeNet) in miniature: Conv → Relu → MaxPool → LRN,
/// Conv 1×1 / 3×3 → LRN → MaxPool, two inception modules, AveragePool 4,
/// Dropout 0.4, Reshape `[1, C]`, Gemm with its weight through a Reshape,
/// Softmax.
fn inception(b: &mut Builder, x: &str) -> (String, Vec<i64>) {
    let y = b.conv("conv1/7x7_s2", x, 3, 8, 7, 2, 3, 1, true);
    let y = b.relu(&y);
    let y = b.pool("MaxPool", &y, 3, 2, 1);
    let y = b.lrn(&y);
    let y = b.conv("conv2/3x3_reduce", &y, 8, 8, 1, 1, 0, 1, true);
    let y = b.relu(&y);
    let y = b.conv("conv2/3x3", &y, 8, 16, 3, 1, 1, 1, true);
    let y = b.relu(&y);
    let y = b.lrn(&y);
    let y = b.pool("MaxPool", &y, 3, 2, 1);
    let (y, c) = inception_module(b, "inception_3a", &y, 16, 4, 4, 8, 2, 2, 2);
    let (y, c) = inception_module(b, "inception_3b", &y, c, 4, 4, 8, 2, 4, 4);
    let p = b.pool("AveragePool", &y, 4, 1, 0);
    let p = b.dropout(&p, 0.4);
    // The head with the weight through a Reshape (gemm_head's AveragePool of 1 keeps `p`).
    gemm_head(b, &p, c, 1, true)
}

/// ShuffleNet's channel shuffle: `[1, C, H, W]` → `[1, g, C/g, H, W]` →
/// Transpose (0, 2, 1, 3, 4) → `[1, C, H, W]`.
fn shuffle(b: &mut Builder, name: &str, x: &str, c: i64, g: i64, hw: i64) -> String {
    let y = b.reshape(x, &format!("{name}_shape5"), &[1, g, c / g, hw, hw]);
    let y = b.node("Transpose", &[&y], vec![a_ints("perm", &[0, 2, 1, 3, 4])]);
    b.reshape(&y, &format!("{name}_shape4"), &[1, c, hw, hw])
}

/// A ShuffleNet unit: grouped 1×1 → BN → Relu → shuffle → depthwise 3×3 →
/// BN → grouped 1×1 → BN; stride 2 concatenates an AveragePool shortcut, stride 1
/// adds the input (`Sum`).
#[allow(clippy::too_many_arguments)]
fn shuffle_unit(
    b: &mut Builder,
    name: &str,
    x: &str,
    cin: i64,
    cout: i64,
    g: i64,
    stride: i64,
    hw: i64,
) -> String {
    let mid = 8;
    let branch = if stride == 2 { cout - cin } else { cout };
    let y = b.conv(&format!("{name}_gconv1"), x, cin, mid, 1, 1, 0, g, false);
    let y = b.bn(&format!("{name}_gconv1_bn"), &y, mid);
    let y = b.relu(&y);
    let y = shuffle(b, name, &y, mid, g, hw);
    let y = b.conv(
        &format!("{name}_dwconv"),
        &y,
        mid,
        mid,
        3,
        stride,
        1,
        mid,
        false,
    );
    let y = b.bn(&format!("{name}_dwconv_bn"), &y, mid);
    let y = b.conv(
        &format!("{name}_gconv2"),
        &y,
        mid,
        branch,
        1,
        1,
        0,
        g,
        false,
    );
    let y = b.bn(&format!("{name}_gconv2_bn"), &y, branch);
    let y = if stride == 2 {
        let s = b.pool("AveragePool", x, 3, 2, 1);
        b.node("Concat", &[&s, &y], vec![a_int("axis", 1)])
    } else {
        b.node("Sum", &[&y, x], vec![])
    };
    b.relu(&y)
}

/// ShuffleNet (g = 2) in miniature: stem with BN, a stride-2 unit (8 → 16,
/// 8×8 → 4×4) and a stride-1 unit, AveragePool 4, Gemm head.
fn shufflenet(b: &mut Builder, x: &str) -> (String, Vec<i64>) {
    let y = stem(b, x, 8, true);
    let y = shuffle_unit(b, "stage2_1", &y, 8, 16, 2, 2, 8);
    let y = shuffle_unit(b, "stage2_2", &y, 16, 16, 2, 1, 4);
    gemm_head(b, &y, 16, 4, false)
}

/// VGG-19 / AlexNet in miniature: Conv 3×3 → Relu (→ LRN for AlexNet) →
/// MaxPool, twice; Reshape `[1, C·H·W]`; fc6, fc7 (Gemm → Relu → Dropout);
/// fc8 (1000) → Softmax.
fn vgg(b: &mut Builder, x: &str, lrn: bool) -> (String, Vec<i64>) {
    let mut y = x.to_string();
    let mut c = 3;
    for (i, out) in [8, 16].into_iter().enumerate() {
        y = b.conv(&format!("conv{}", i + 1), &y, c, out, 3, 1, 1, 1, true);
        y = b.relu(&y);
        if lrn {
            y = b.lrn(&y);
        }
        y = b.pool("MaxPool", &y, 2, 2, 0);
        c = out;
    }
    // 32 → 16 → 8.
    let f = c * 8 * 8;
    let y = b.reshape(&y, "OC2_DUMMY_0", &[1, f]);
    let y = b.gemm("fc6", &y, f, 32);
    let y = b.relu(&y);
    let y = b.dropout(&y, 0.5);
    let y = b.gemm("fc7", &y, 32, 32);
    let y = b.relu(&y);
    let y = b.dropout(&y, 0.5);
    let y = b.gemm("fc8", &y, 32, CLASSES);
    b.softmax(&y, "prob_1");
    ("prob_1".into(), vec![1, CLASSES])
}
