//! Issue 12, item 3: `--num-classes` on classifiers whose head is not a
//! Gemm at the very end: SqueezeNet's Conv 1×1 → Relu → GlobalAveragePool →
//! Softmax, DenseNet's GlobalAveragePool → Conv 1×1, a head followed by a
//! Reshape whose constant shape names the class count, Inception v1's Gemm
//! whose weight comes through a Reshape, and the zoo's IR 3 files that list
//! every initializer as a graph input. Every replaced model is run by ONNX
//! Runtime (the ground truth that the graph is still consistent) and must
//! return the new class count.

#[path = "common/zoo.rs"]
mod zoo;

use koala_graph::classifier_output::{choose, ClassifierOutput};
use koala_graph::head::{find_head, replace_head, RELU_HEAD_BIAS};
use koala_graph::proto::NodeProto;
use koala_graph::training::declared_dims;
use koala_graph::{tensor, Model};
use koala_runtime::{Session, TensorView};
use zoo::{Arch, Form, CLASSES, IMAGE};

/// Runs `m` on one constant image; returns its first output's values.
fn run(m: &Model) -> Vec<f32> {
    let mut s = Session::from_bytes(&m.to_bytes(), &Default::default()).unwrap();
    let x = vec![0.2f32; (3 * IMAGE * IMAGE) as usize];
    let shape = [1usize, 3, IMAGE as usize, IMAGE as usize];
    let out = s.run(&[("data_0", TensorView::f32(&x, &shape))]).unwrap();
    out[0].as_f32().unwrap().to_vec()
}

/// The output `m` trains and `check`'s line for its head.
fn head_line(m: &Model) -> (ClassifierOutput, String) {
    let c = choose(m, None, None).unwrap();
    let line = find_head(m, &c).unwrap().describe(None);
    (c, line)
}

fn input_dims(m: &Model, name: &str) -> Vec<Option<i64>> {
    let i = m.graph().input.iter().find(|i| i.name == name).unwrap();
    declared_dims(i)
}

fn init_dims(m: &Model, name: &str) -> Vec<i64> {
    m.graph()
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap()
        .dims
        .clone()
}

/// SqueezeNet (opset 9, IR 3): the head is `conv10`, found through Softmax,
/// GlobalAveragePool and Relu; its weight, bias, their graph-input
/// declarations and the `[1, C, 1, 1]` output all take the new count.
#[test]
fn squeezenet_conv_head_is_found_and_replaced() {
    let mut m = zoo::build(Arch::SqueezeNet, Form { opset: 9 }, 1);
    let c = choose(&m, None, None).unwrap();
    let h = find_head(&m, &c).unwrap();
    assert_eq!(
        h.describe(None),
        "head: Conv 'conv10' (1000 classes, weight conv10_w_0 [1000,16,1,1]) — --num-classes N replaces it"
    );
    assert!(h
        .describe(Some(5))
        .ends_with("--num-classes 5 replaces it with a fresh 5-class layer"));
    let r = replace_head(&mut m, &c, 5, 3).unwrap();
    assert_eq!((r.weight.as_str(), r.classes), ("conv10_w_0", (1000, 5)));
    assert_eq!(init_dims(&m, "conv10_w_0"), [5, 16, 1, 1]);
    assert_eq!(init_dims(&m, "conv10_b_0"), [5]);
    assert_eq!(
        input_dims(&m, "conv10_w_0"),
        [Some(5), Some(16), Some(1), Some(1)]
    );
    assert_eq!(input_dims(&m, "conv10_b_0"), [Some(5)]);
    assert_eq!(
        declared_dims(&m.graph().output[0]),
        [Some(1), Some(5), Some(1), Some(1)]
    );
    // Behind conv10's Relu the fresh head starts at zero weights and a
    // positive bias (RELU_HEAD_BIAS), so no class starts in the Relu's zero
    // region: every class's output is the bias, and every class learns.
    let values = |name: &str| {
        tensor::to_f32(
            m.graph()
                .initializer
                .iter()
                .find(|t| t.name == name)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(values("conv10_w_0").iter().all(|&v| v == 0.0));
    assert_eq!(values("conv10_b_0"), vec![RELU_HEAD_BIAS; 5]);
    let y = run(&m);
    assert_eq!(y.len(), 5);
    // The Softmax over the class axis still sums to one.
    assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{y:?}");
}

/// DenseNet (opset 13): GlobalAveragePool → Conv 1×1 `fc6` is the output.
#[test]
fn densenet_conv_head_is_found_and_replaced() {
    let mut m = zoo::build(Arch::DenseNet121, Form { opset: 13 }, 1);
    let (c, line) = head_line(&m);
    assert!(
        line.starts_with("head: Conv 'fc6' (1000 classes, weight fc6_w_0 [1000,16,1,1])"),
        "{line}"
    );
    replace_head(&mut m, &c, 4, 0).unwrap();
    assert_eq!(init_dims(&m, "fc6_w_0"), [4, 16, 1, 1]);
    assert_eq!(run(&m).len(), 4);
}

/// A head followed by a Reshape to `[-1, 1000]` (and its Softmax): the
/// shape is rewritten to `[-1, 3]`, or ONNX Runtime could not reshape 3
/// values to 1000. A Reshape shared with another node is copied, not changed.
#[test]
fn a_reshape_naming_the_class_count_follows_the_new_head() {
    for shared in [false, true] {
        let mut m = zoo::build(Arch::SqueezeNet, Form { opset: 13 }, 1);
        let g = m.graph_mut();
        g.initializer
            .push(tensor::from_i64("class_shape", &[2], &[-1, CLASSES]));
        g.node.push(NodeProto {
            op_type: "Reshape".into(),
            name: "flatten_classes".into(),
            input: vec!["softmaxout_1".into(), "class_shape".into()],
            output: vec!["prob".into()],
            ..Default::default()
        });
        g.output[0] = zoo_info("prob", &[1, CLASSES]);
        if shared {
            // A second, unrelated user of the same shape tensor.
            g.node.push(NodeProto {
                op_type: "Reshape".into(),
                name: "other".into(),
                input: vec!["prob".into(), "class_shape".into()],
                output: vec!["prob_again".into()],
                ..Default::default()
            });
        }
        let c = choose(&m, None, None).unwrap();
        let r = replace_head(&mut m, &c, 3, 0).unwrap();
        let name = if shared {
            "class_shape__koala_head"
        } else {
            "class_shape"
        };
        assert_eq!(r.reshapes, [name], "shared: {shared}");
        let t = m
            .graph()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap();
        assert_eq!(tensor::to_i64(t).unwrap(), [-1, 3]);
        if shared {
            let t = m
                .graph()
                .initializer
                .iter()
                .find(|t| t.name == "class_shape")
                .unwrap();
            assert_eq!(
                tensor::to_i64(t).unwrap(),
                [-1, CLASSES],
                "the other user's shape"
            );
            m.graph_mut().node.pop();
        }
        assert_eq!(declared_dims(&m.graph().output[0]), [Some(1), Some(3)]);
        assert_eq!(run(&m).len(), 3, "shared: {shared}");
    }
}

/// A one-class head reshaped to `[1, 1]`: either 1 could be the class count,
/// so a second `--num-classes` refuses, naming the node and the shape, rather
/// than guess.
#[test]
fn an_ambiguous_class_count_in_a_reshape_is_refused() {
    let mut m = zoo::build(Arch::SqueezeNet, Form { opset: 13 }, 1);
    let g = m.graph_mut();
    g.initializer
        .push(tensor::from_i64("class_shape", &[2], &[1, CLASSES]));
    g.node.push(NodeProto {
        op_type: "Reshape".into(),
        name: "flatten_classes".into(),
        input: vec!["softmaxout_1".into(), "class_shape".into()],
        output: vec!["prob".into()],
        ..Default::default()
    });
    g.output[0] = zoo_info("prob", &[1, CLASSES]);
    let c = choose(&m, None, None).unwrap();
    replace_head(&mut m, &c, 1, 0).unwrap();
    let t = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == "class_shape")
        .unwrap();
    assert_eq!(tensor::to_i64(t).unwrap(), [1, 1]);
    let c = choose(&m, None, None).unwrap();
    let e = format!("{:#}", replace_head(&mut m, &c, 3, 0).unwrap_err());
    assert!(
        e.contains("'flatten_classes'")
            && e.contains("[1, 1]")
            && e.contains("which 1 is the class count"),
        "{e}"
    );
}

/// Inception v1: Gemm reads `Reshape(loss3/classifier_w_0 [1, 1, 1000, C],
/// [1000, C])` (the zoo file's layout); the weight keeps its layout with the
/// class axis resized, the Reshape's shape takes the new count, and ONNX
/// Runtime runs the result.
#[test]
fn a_gemm_weight_through_a_reshape_is_replaced() {
    let mut m = zoo::build(Arch::InceptionV1, Form { opset: 13 }, 1);
    let (c, line) = head_line(&m);
    assert!(
        line.contains("weight loss3/classifier_w_0 [1,1,1000,20]"),
        "{line}"
    );
    let r = replace_head(&mut m, &c, 6, 0).unwrap();
    assert_eq!(r.reshapes, ["OC2_DUMMY_3"]);
    assert_eq!(init_dims(&m, "loss3/classifier_w_0"), [1, 1, 6, 20]);
    let t = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == "OC2_DUMMY_3")
        .unwrap();
    assert_eq!(tensor::to_i64(t).unwrap(), [6, 20]);
    // The feature Reshape [1, 20] is not the class count: unchanged.
    let t = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == "OC2_DUMMY_1")
        .unwrap();
    assert_eq!(tensor::to_i64(t).unwrap(), [1, 20]);
}

/// Each zoo architecture's head is found (what `koala check` prints).
#[test]
fn every_zoo_head_is_named() {
    let expect = [
        (
            Arch::ResNet50,
            "head: Gemm 'pred' (1000 classes, weight pred_w_0 [1000,32])",
        ),
        (Arch::SqueezeNet, "head: Conv 'conv10' (1000 classes"),
        (Arch::DenseNet121, "head: Conv 'fc6' (1000 classes"),
        (
            Arch::InceptionV1,
            "head: Gemm 'loss3/classifier' (1000 classes",
        ),
        (
            Arch::ShuffleNet,
            "head: Gemm 'pred' (1000 classes, weight pred_w_0 [1000,16])",
        ),
        (
            Arch::Vgg19,
            "head: Gemm 'fc8' (1000 classes, weight fc8_w_0 [1000,32])",
        ),
        (Arch::AlexNet, "head: Gemm 'fc8' (1000 classes"),
    ];
    for (arch, want) in expect {
        for opset in [9, 13] {
            let m = zoo::build(arch, Form { opset }, 1);
            let (_, d) = head_line(&m);
            assert!(d.starts_with(want), "{arch:?} opset {opset}: {d}");
        }
    }
}

/// A grouped Conv at the end is not a classifier koala can re-head: refused
/// naming the node and why.
#[test]
fn a_grouped_conv_head_is_refused_by_name() {
    let mut m = zoo::build(Arch::DenseNet121, Form { opset: 13 }, 1);
    let g = m.graph_mut();
    let fc6 = g.node.iter_mut().find(|n| n.name == "fc6").unwrap();
    fc6.attribute.push(koala_graph::attrs::a_int("group", 2));
    let c = choose(&m, None, None).unwrap();
    let e = replace_head(&mut m, &c, 3, 0).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("'fc6'") && e.contains("grouped Conv (group 2)"),
        "{e}"
    );
}

fn zoo_info(name: &str, dims: &[i64]) -> koala_graph::proto::ValueInfoProto {
    let d: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    koala_graph::training::value_info(name, koala_graph::proto::DataType::Float, &d)
}
