//! Finite-difference checks of Whole-graph behaviour of the backward pass: loss heads, fan-out sums, reachability (weights with no float path), opset forms of the nodes rules emit, shape arithmetic left alone, a small CNN.
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{check, mse, Check, Fd, Net, F32, F64};
use koala_graph::attrs::{a_float, a_int, a_ints};
use koala_graph::proto::DataType;
use koala_graph::ConvWeightGrad;

/// Logits = Gemm(X, W, b) for [B, C], or MatMul + Add for [B, T, C].
fn classifier(seed: u64, opset: i64, dt: DataType, lead: &[usize], classes: usize) -> Net {
    let mut n = Net::new(opset, dt, seed);
    let k = 3;
    let x_shape: Vec<usize> = lead.iter().copied().chain([k]).collect();
    let x = n.rand_leaf("x", &x_shape);
    let w = n.uniform(k * classes, -2.0, 2.0);
    let w = n.weight("w", &[k, classes], w);
    let b = n.rand_weight("b", &[classes]);
    if lead.len() == 1 {
        n.node("Gemm", &[&x, &w, &b], &["logits"], vec![]);
    } else {
        n.node("MatMul", &[&x, &w], &["z"], vec![]);
        n.node("Add", &["z", &b], &["logits"], vec![]);
    }
    n
}

#[test]
fn cross_entropy_plain_f64_and_f32() {
    for (seed, dt, opset) in [(300, F64, 13), (301, F32, 17), (302, F64, 11)] {
        let n = classifier(seed, opset, dt, &[4], 5);
        check(
            &n,
            "logits",
            &Check::cross_entropy(dt, vec![0, 4, 2, 2], 0.0, None),
        );
    }
}

#[test]
fn cross_entropy_label_smoothing_and_ignore_index() {
    let n = classifier(303, 17, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![1, 3, 0, 4], 0.1, None),
    );
    let n = classifier(304, 17, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![1, -100, 0, -100], 0.0, Some(-100)),
    );
    let n = classifier(305, 13, F64, &[4], 5);
    check(
        &n,
        "logits",
        &Check::cross_entropy(F64, vec![-1, 3, -1, 2], 0.2, Some(-1)),
    );
}

#[test]
fn cross_entropy_sequence_logits_with_an_all_ignored_sample() {
    // [B=3, T=2, C=4]; sample 1 is entirely ignored (its per-sample loss is 0).
    let n = classifier(306, 18, F64, &[3, 2], 4);
    let labels = vec![0, 3, -100, -100, 2, -100];
    let r = check(
        &n,
        "logits",
        &Check::cross_entropy(F64, labels, 0.1, Some(-100)),
    );
    assert_eq!(r.graph.label_shape, vec![3, 2]);
}

#[test]
fn cross_entropy_reference_matches_a_value_worked_by_hand() {
    // logits [ln 1, ln 2, ln 1] → p = [1/4, 1/2, 1/4]; label 1: nll = ln 2.
    // With ε = 0.3: 0.7·ln 2 + 0.3·(ln 4 + ln 2 + ln 4)/3 = 0.7·ln2 + 0.5·ln2.
    let z = [0.0, 2f64.ln(), 0.0];
    let (l, per) = common::cross_entropy_reference(&z, &[1, 3], &[1], 0.3, None);
    let want = 1.2 * 2f64.ln();
    assert!(
        (l - want).abs() < 1e-15 && (per[0] - want).abs() < 1e-15,
        "{l} vs {want}"
    );
}

#[test]
fn fan_out_sums_every_use() {
    // h = X·W feeds Tanh, Mul and Add; W is used by two MatMuls.
    let mut n = Net::new(17, F64, 310);
    let x = n.rand_leaf("x", &[3, 4]);
    let w = n.rand_weight("w", &[4, 4]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Tanh", &["h"], &["t"], vec![]);
    n.node("MatMul", &["t", &w], &["u"], vec![]);
    n.node("Mul", &["h", "t"], &["ht"], vec![]);
    n.node("Add", &["u", "ht"], &["v"], vec![]);
    n.node("Add", &["v", "h"], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn weights_without_a_float_path_to_the_loss_are_reported_unreachable() {
    let mut n = Net::new(17, F64, 311);
    let x = n.rand_leaf("x", &[2, 3]);
    let w = n.rand_weight("w", &[3, 2]);
    let dead = n.rand_weight("dead", &[2, 3]);
    let shape_only = n.rand_weight("shape_only", &[4, 1]);
    n.node("Mul", &[&x, &dead], &["unused"], vec![]);
    n.node("Shape", &[&shape_only], &["s"], vec![]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Reshape", &["h", "s"], &["y"], vec![]);
    let r = check(&n, "y", &Check::mse(F64));
    assert_eq!(r.graph.unreachable, ["dead", "shape_only"]);
    let inputs: Vec<&str> = r
        .graph
        .proto
        .graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert!(
        !inputs.contains(&"dead") && !inputs.contains(&"shape_only"),
        "{inputs:?}"
    );
}

#[test]
fn reductions_emitted_by_rules_use_each_opsets_form() {
    // Broadcast gradients (ReduceSum), conv bias (ReduceSum) and the
    // depthwise unfold (Pad, Unsqueeze, Slice) at opsets with attribute and
    // input forms.
    for (i, opset) in [11i64, 13, 18].into_iter().enumerate() {
        let seed = 320 + 10 * i as u64;
        let dt = if opset < 12 { F32 } else { F64 };
        let mut n = Net::new(opset, dt, seed);
        let a = n.rand_leaf("a", &[2, 1, 4]);
        let b = n.rand_weight("b", &[3, 1]);
        n.node("Mul", &[&a, &b], &["m"], vec![]);
        n.node("Sub", &["m", &b], &["y"], vec![]);
        mse(&n, "y");

        let mut n = Net::new(opset, F32, seed + 1);
        let x = n.rand_leaf("x", &[2, 2, 5, 5]);
        let w = n.rand_weight("w", &[2, 1, 3, 3]);
        let bias = n.rand_weight("bias", &[2]);
        let attrs = vec![
            a_int("group", 2),
            a_ints("strides", &[2, 2]),
            a_ints("pads", &[1, 1, 0, 0]),
        ];
        n.node("Conv", &[&x, &w, &bias], &["y"], attrs);
        let mut c = Check::mse(F32);
        c.backward.conv_weight_grad = ConvWeightGrad::UnfoldDepthwise;
        check(&n, "y", &c);

        let mut n = Net::new(opset, F64, seed + 2);
        let a = n.rand_leaf("a", &[3, 4]);
        let c = n.rand_weight("c", &[3]);
        n.node(
            "Gemm",
            &[&a, &a, &c],
            &["y"],
            vec![a_int("transB", 1), a_float("beta", 0.5)],
        );
        mse(&n, "y");
    }
}

#[test]
fn shape_arithmetic_is_not_differentiated() {
    // Exporters flatten with Shape → Gather → Unsqueeze → Concat → Reshape;
    // the integer branch must be skipped, the float one differentiated.
    let mut n = Net::new(13, F64, 414);
    let x = n.rand_leaf("x", &[2, 3, 2]);
    let w = n.rand_weight("w", &[2, 2]);
    let zero = n.ints("zero", &[0]);
    let minus_one = n.ints("minus_one", &[-1]);
    n.node("MatMul", &[&x, &w], &["h"], vec![]);
    n.node("Shape", &["h"], &["s"], vec![]);
    n.node("Gather", &["s", &zero], &["batch"], vec![a_int("axis", 0)]);
    n.node(
        "Concat",
        &["batch", &minus_one],
        &["target"],
        vec![a_int("axis", 0)],
    );
    n.node("Reshape", &["h", "target"], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn mse_per_sample_loss_is_each_samples_mean() {
    let mut n = Net::new(17, F64, 416);
    let x = n.rand_leaf("x", &[3, 2, 2]);
    n.node("Tanh", &[&x], &["y"], vec![]);
    let model = n.model("y");
    let graph = koala_graph::build(&model, &n.spec(koala_graph::LossSpec::MeanSquaredError))
        .expect("build");
    let mut run = common::Run::new(&n, &graph, &common::Labels::RandomTargets, 3);
    let e = run.eval(&run.weights.clone());
    let per = &e.outputs["per_sample_loss"];
    assert_eq!(per.len(), 3);
    for (b, got) in per.iter().enumerate() {
        let want: f64 = (0..4)
            .map(|k| (e.model_output[4 * b + k] - run.targets[4 * b + k]).powi(2))
            .sum::<f64>()
            / 4.0;
        assert!(
            (got - want).abs() <= 1e-12 * want.max(1.0),
            "sample {b}: {got} vs {want}"
        );
    }
}

#[test]
fn small_smooth_cnn_at_opset21() {
    // Conv → BN → Sigmoid → AveragePool → ReduceMean (axes input) → Gemm →
    // cross-entropy with label smoothing: every rule at the newest opset ORT
    // 1.31 runs, composed. Smooth activations only, so perturbing any weight
    // cannot cross a kink; F32_SMOOTH covers the curvature.
    let mut n = Net::new(21, F32, 500);
    let x = n.input("image", &[3, 2, 6, 6]);
    let w = n.rand_weight("conv_w", &[4, 2, 3, 3]);
    let scale = n.rand_weight("bn_scale", &[4]);
    let bias = n.rand_weight("bn_bias", &[4]);
    let mean = n.uniform(4, -0.5, 0.5);
    let mean = n.float_init("bn_mean", &[4], &mean);
    let var = n.uniform(4, 0.5, 1.5);
    let var = n.float_init("bn_var", &[4], &var);
    let axes = n.ints("axes", &[2, 3]);
    let fc = n.rand_weight("fc_w", &[5, 4]);
    let fc_b = n.rand_weight("fc_b", &[5]);
    let conv_attrs = vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])];
    n.node("Conv", &[&x, &w], &["c"], conv_attrs);
    n.node(
        "BatchNormalization",
        &["c", &scale, &bias, &mean, &var],
        &["bn"],
        vec![],
    );
    n.node("Sigmoid", &["bn"], &["s"], vec![]);
    let pool = vec![
        a_ints("kernel_shape", &[2, 2]),
        a_ints("pads", &[0, 0, 1, 1]),
    ];
    n.node("AveragePool", &["s"], &["p"], pool);
    n.node(
        "ReduceMean",
        &["p", &axes],
        &["m"],
        vec![a_int("keepdims", 0)],
    );
    n.node(
        "Gemm",
        &["m", &fc, &fc_b],
        &["logits"],
        vec![a_int("transB", 1)],
    );
    let c = Check::cross_entropy(F32, vec![4, 0, 2], 0.1, None).with_fd(Fd::F32_SMOOTH);
    let r = check(&n, "logits", &c);
    assert_eq!(r.graph.trainable.len(), 5);
}

#[test]
fn check_reports_no_problem_for_mask_and_position_subgraphs() {
    // A causal mask (ConstantOfShape, Trilu, Not, Where with −inf), a RoPE
    // cos table from Range/Cast/Mul/Cos, integer shape arithmetic and a
    // Floor of a float: `koala check` must find nothing to complain about,
    // and the training graph must build.
    let mut n = Net::new(17, F64, 430);
    let x = n.rand_leaf("x", &[2, 3, 3]);
    n.node("Shape", &[&x], &["shape"], vec![]);
    let last = n.ints("last", &[-1]);
    let two = n.ints("two", &[2]);
    n.node("Gather", &["shape", &last], &["t1"], vec![a_int("axis", 0)]);
    n.node("Concat", &["t1", "t1"], &["tt"], vec![a_int("axis", 0)]);
    n.node("Mul", &["t1", &two], &["t2"], vec![]);
    let ones = koala_graph::proto::TensorProto {
        dims: vec![1],
        data_type: DataType::Bool as i32,
        raw_data: vec![1],
        ..Default::default()
    };
    n.node(
        "ConstantOfShape",
        &["tt"],
        &["all"],
        vec![koala_graph::attrs::a_tensor("value", ones)],
    );
    n.node("Trilu", &["all"], &["lower"], vec![a_int("upper", 0)]);
    n.node("Not", &["lower"], &["masked"], vec![]);
    let inf = n.constant("inf", &[], &[f64::NEG_INFINITY]);
    n.node("Where", &["masked", &inf, &x], &["s"], vec![]);
    n.node("Softmax", &["s"], &["p"], vec![a_int("axis", -1)]);
    n.node("Squeeze", &["t1"], &["t0"], vec![]);
    let zero = n.ints("zero", &[0]);
    let one = n.ints("one", &[1]);
    n.node("Squeeze", &[&zero], &["z0"], vec![]);
    n.node("Squeeze", &[&one], &["o0"], vec![]);
    n.node("Range", &["z0", "t0", "o0"], &["pos"], vec![]);
    n.node(
        "Cast",
        &["pos"],
        &["posf"],
        vec![a_int("to", DataType::Double as i64)],
    );
    n.node("Cos", &["posf"], &["cos"], vec![]);
    n.node("Floor", &[&x], &["fl"], vec![]);
    n.node("Add", &["cos", "fl"], &["table"], vec![]);
    n.node("Mul", &["p", "table"], &["y"], vec![]);
    let report = koala_graph::check::check(&n.model("y"), &koala_graph::TrainableSpec::default())
        .expect("check runs");
    // The only finding is the note about the fixed batch size of the data.
    let errors: Vec<_> = report
        .problems
        .iter()
        .filter(|p| {
            p.severity == koala_graph::check::Severity::Error
                || !p.message.contains("fixed batch size")
        })
        .collect();
    assert!(errors.is_empty(), "false problems:\n{report}");
    mse(&n, "y");
}
