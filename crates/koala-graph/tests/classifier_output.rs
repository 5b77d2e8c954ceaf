//! Faults 1 and 9 of issue 8: which output a classifier trains (a final
//! Softmax, several outputs), operator settings that must never train
//! (Resize scales), and advice that works.

#[path = "common/small_classifiers.rs"]
mod small_classifiers;

use koala_graph::classifier_output::choose;
use koala_graph::{LossSpec, Model, TrainableSpec, TrainingSpec};
use small_classifiers::{conv_resize_conv, tiny_cnn, weights_in_constants, Outputs, Preprocessing};

fn cnn(o: Outputs) -> Model {
    tiny_cnn(o, Preprocessing::None)
}

#[test]
fn a_final_softmax_is_walked_through_to_its_logits() {
    let c = choose(&cnn(Outputs::Probs), None, Some(2)).unwrap();
    assert_eq!((c.output.as_str(), c.logits.as_str()), ("probs", "logits"));
    assert!(c.through.as_deref().unwrap().contains("Softmax"), "{c:?}");
    assert!(
        c.describe().contains("not probabilities"),
        "{}",
        c.describe()
    );
    // Without a Softmax the output is its own logits.
    let c = choose(&cnn(Outputs::Logits), None, Some(2)).unwrap();
    assert_eq!(
        (c.output.as_str(), c.logits.as_str(), c.through),
        ("logits", "logits", None)
    );
}

#[test]
fn logits_are_preferred_over_the_probabilities_of_the_same_head() {
    for classes in [Some(2), None] {
        let c = choose(&cnn(Outputs::ProbsAndLogits), None, classes).unwrap();
        assert_eq!(
            (c.output.as_str(), c.logits.as_str()),
            ("logits", "logits"),
            "{classes:?}"
        );
    }
}

#[test]
fn the_output_whose_last_dimension_matches_the_classes_is_trained() {
    let c = choose(&cnn(Outputs::FeaturesAndLogits), None, Some(2)).unwrap();
    assert_eq!(c.output, "logits");
    assert!(c.reason.contains("matches the 2 classes"), "{}", c.reason);
    // Without a class count, the fully connected head wins over pooled features.
    let c = choose(&cnn(Outputs::FeaturesAndLogits), None, None).unwrap();
    assert_eq!(c.output, "logits");
    assert!(c.reason.contains("fully connected"), "{}", c.reason);
    // --output wins over every rule.
    let c = choose(&cnn(Outputs::FeaturesAndLogits), Some("features"), Some(2)).unwrap();
    assert_eq!(c.output, "features");
}

/// 4-class data and `[features [N,4], logits [N,2]]`: only the pooled features match the
/// class count, but the model has a fully connected head. Training the features as class
/// scores would leave that head frozen (a new-user tryout found finetune doing so while
/// `check` named the other output), so both refuse naming `--output` and `--num-classes`,
/// and each remedy works.
#[test]
fn pooled_features_matching_the_classes_do_not_win_over_a_dense_head() {
    let m = cnn(Outputs::FeaturesAndLogits);
    let e = choose(&m, None, Some(4)).unwrap_err();
    let msg = format!("{e:#}");
    for needle in [
        "'features' [?, 4]",
        "'logits' [?, 2]",
        "--output logits --num-classes 4",
        "--output features",
    ] {
        assert!(msg.contains(needle), "'{needle}' missing from: {msg}");
    }
    assert_eq!(
        choose(&m, Some("features"), Some(4)).unwrap().output,
        "features"
    );
    // --num-classes: the head is chosen without the class count (choose_output in
    // koala-train passes none), so the dense head is re-headed.
    assert_eq!(choose(&m, Some("logits"), None).unwrap().output, "logits");
    // The static check chooses with the same class count as the run.
    let report =
        koala_graph::check::check_output(&m, &TrainableSpec::default(), None, Some(4)).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("--output logits --num-classes 4")),
        "{:?}",
        report.problems
    );
}

#[test]
fn ambiguous_outputs_are_refused_naming_the_flag() {
    let e = choose(&cnn(Outputs::TwoHeads), None, Some(2)).unwrap_err();
    let msg = format!("{e:#}");
    for needle in [
        "--output",
        "'logits' [?, 2]",
        "'logits2' [?, 2]",
        "'features' [?, 4]",
    ] {
        assert!(msg.contains(needle), "'{needle}' missing from: {msg}");
    }
    // A name that is not an output is refused with the list.
    let e = choose(&cnn(Outputs::TwoHeads), Some("nope"), None).unwrap_err();
    assert!(format!("{e:#}").contains("no output named 'nope'"), "{e:#}");
    // And naming one resolves it.
    assert_eq!(
        choose(&cnn(Outputs::TwoHeads), Some("logits2"), Some(2))
            .unwrap()
            .logits,
        "logits2"
    );
}

/// `--num-classes` replaces the head of the chosen output (here the second
/// output), and every output of that head gets the new class dimension.
#[test]
fn num_classes_replaces_the_head_of_the_chosen_output() {
    let mut m = cnn(Outputs::ProbsAndLogits);
    let c = choose(&m, None, None).unwrap();
    let h = koala_graph::head::replace_head(&mut m, &c, 5, 0).unwrap();
    assert_eq!((h.weight.as_str(), h.classes), ("fc.weight", (2, 5)));
    for o in &m.graph().output {
        let dims = koala_graph::training::declared_dims(o);
        assert_eq!(dims.last().copied().flatten(), Some(5), "output {}", o.name);
    }
}

fn spec(model: &Model, trainable: TrainableSpec, output: Option<&str>) -> TrainingSpec {
    let input = model.graph().input[0].name.clone();
    TrainingSpec {
        input_shapes: [(input, vec![2, 3, 8, 8])].into_iter().collect(),
        loss: LossSpec::default(),
        output: output.map(String::from),
        trainable,
        probe_threads: 1,
        ..TrainingSpec::default()
    }
}

/// The training graph of a Softmax classifier puts the loss on the logits and
/// reports the probabilities (what the exported file returns).
#[test]
fn the_training_graph_reads_logits_and_reports_the_output() {
    let m = cnn(Outputs::Probs);
    let mut s = spec(&m, TrainableSpec::default(), Some("logits"));
    s.input_shapes = [("input".to_string(), vec![2, 3, 16, 16])]
        .into_iter()
        .collect();
    s.reported_output = Some("probs".into());
    let g = koala_graph::build(&m, &s).unwrap();
    let out = g.proto.graph.as_ref().unwrap();
    let model_output = out
        .node
        .iter()
        .find(|n| n.output == ["model_output"])
        .unwrap();
    assert_eq!(model_output.input, ["probs"]);
    assert_eq!(g.model_output_shape, [2, 2]);
}

/// Resize's `scales` is an operator setting: never trainable; the weights
/// before the Resize train through it (`backward/resize.rs`).
#[test]
fn resize_scales_never_train_and_conv1_trains_through_resize() {
    let m = conv_resize_conv();
    let selected = koala_graph::trainable::select(&m, &TrainableSpec::default()).unwrap();
    assert!(
        !selected.contains(&"resize.scales".to_string()),
        "{selected:?}"
    );
    let g = koala_graph::build(&m, &spec(&m, TrainableSpec::default(), None)).unwrap();
    let names: Vec<&str> = g.trainable.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    );
}

/// An op without a gradient rule (here Atan where the Resize was): the error
/// names the node, the tensor that needs the gradient and a --freeze flag,
/// and following that advice builds.
#[test]
fn missing_rule_advice_works() {
    let mut m = conv_resize_conv();
    let g = m.proto.graph.as_mut().unwrap();
    let up = g.node.iter_mut().find(|n| n.name == "upsample").unwrap();
    up.op_type = "Atan".into();
    up.input.truncate(1);
    g.initializer.retain(|t| t.name != "resize.scales");
    let m = koala_graph::Model::from_proto(m.proto.clone()).unwrap();
    let e = koala_graph::build(&m, &spec(&m, TrainableSpec::default(), None)).unwrap_err();
    let msg = format!("{e:#}");
    for needle in ["Atan", "upsample", "'c1'", "conv1.weight", "--freeze '^("] {
        assert!(msg.contains(needle), "'{needle}' missing from: {msg}");
    }
    let flag = msg
        .split("--freeze '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let frozen = TrainableSpec {
        exclude: Some(flag.to_string()),
        ..TrainableSpec::default()
    };
    let g = koala_graph::build(&m, &spec(&m, frozen, None)).expect("the advised --freeze builds");
    let names: Vec<&str> = g.trainable.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["conv2.weight", "conv2.bias"]);
    // `check` says the same.
    let r = koala_graph::check::check(&m, &TrainableSpec::default()).unwrap();
    let text = r.to_string();
    assert!(
        text.contains("needs a gradient") && text.contains("--freeze '^("),
        "{text}"
    );
}

/// Every (op, input) of the settings table is excluded, here for a few ops
/// whose settings exports store as float initializers.
#[test]
fn operator_settings_come_from_one_table() {
    for (op, slots) in [
        ("Resize", vec![1, 2, 3]),
        ("Clip", vec![1, 2]),
        ("Pad", vec![1, 2, 3]),
        ("Upsample", vec![1]),
    ] {
        assert_eq!(
            koala_graph::trainable::setting_slots(op),
            slots.as_slice(),
            "{op}"
        );
    }
    assert!(koala_graph::trainable::setting_slots("Conv").is_empty());
}

/// Weights held only in Constant nodes: the refusal names --train-constants
/// and does not blame patterns the user never gave; with the flag it builds.
#[test]
fn weights_in_constant_nodes_name_train_constants() {
    let m = weights_in_constants();
    let mut s = spec(&m, TrainableSpec::default(), None);
    s.input_shapes = [("input".to_string(), vec![2, 3, 16, 16])]
        .into_iter()
        .collect();
    let msg = format!("{:#}", koala_graph::build(&m, &s).unwrap_err());
    assert!(msg.contains("--train-constants"), "{msg}");
    assert!(
        !msg.contains("pattern") && !msg.contains("--train '"),
        "{msg}"
    );
    s.trainable.train_constants = true;
    let g = koala_graph::build(&m, &s).unwrap();
    assert_eq!(g.trainable.len(), 4);
    // With a pattern given, the pattern is named.
    s.trainable = TrainableSpec {
        include: Some("^nothing$".into()),
        ..TrainableSpec::default()
    };
    let msg = format!("{:#}", koala_graph::build(&m, &s).unwrap_err());
    assert!(
        msg.contains("--train '^nothing$'") && msg.contains("--train-constants"),
        "{msg}"
    );
}

/// Softmax over the channel axis of a pooled `[N, 2, 1, 1]` map, then
/// Flatten to `probs [N, 2]`: the loss reads the pooled logits reshaped to
/// `[N, 2]` and the gradient reaches the Conv.
#[test]
fn a_softmax_before_flatten_trains_its_logits() {
    use koala_graph::attrs::a_int;
    let mut m = cnn(Outputs::Logits);
    let g = m.graph_mut();
    // conv → relu → pool (4 channels) becomes conv (2 channels) → pool →
    // Softmax(axis 1) → Flatten.
    g.node
        .retain(|n| matches!(n.op_type.as_str(), "Conv" | "Relu" | "GlobalAveragePool"));
    for t in g.initializer.iter_mut() {
        if t.name == "conv.weight" {
            *t = koala_graph::tensor::from_f32(
                "conv.weight",
                &[2, 3, 3, 3],
                &small_classifiers::weights(54, 1),
            );
        } else if t.name == "conv.bias" {
            *t = koala_graph::tensor::from_f32("conv.bias", &[2], &[0.0, 0.0]);
        }
    }
    g.initializer.retain(|t| t.name.starts_with("conv"));
    g.node.push(small_classifiers::node(
        "Softmax",
        "softmax",
        &["pooled"],
        &["p4"],
        vec![a_int("axis", 1)],
    ));
    g.node.push(small_classifiers::node(
        "Flatten",
        "flatten",
        &["p4"],
        &["probs"],
        vec![],
    ));
    g.output = vec![small_classifiers::info(
        "probs",
        koala_graph::proto::DataType::Float,
        &[None, Some(2)],
    )];
    let c = choose(&m, None, Some(2)).unwrap();
    assert_eq!((c.output.as_str(), c.logits.as_str()), ("probs", "pooled"));
    let mut s = spec(&m, TrainableSpec::default(), Some(&c.logits));
    s.input_shapes = [("input".to_string(), vec![2, 3, 16, 16])]
        .into_iter()
        .collect();
    s.reported_output = Some(c.output.clone());
    let g = koala_graph::build(&m, &s).unwrap();
    assert_eq!(g.trainable.len(), 2);
    assert_eq!(
        (g.label_shape.as_slice(), g.model_output_shape.as_slice()),
        ([2].as_slice(), [2, 2].as_slice())
    );
    // The loss is cross-entropy of the logits: −ln of the reported
    // probability of each label, and the Conv gets a gradient.
    let mut step = koala_graph::step::TrainStep::new(g, Some(1)).unwrap();
    let images: Vec<f32> = (0..2 * 3 * 16 * 16)
        .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5)
        .collect();
    let labels = [0i64, 1];
    use koala_graph::step::Batch;
    step.set_batch(&[Batch::F32(&images)], Batch::I64(&labels))
        .unwrap();
    step.run().unwrap();
    let probs = step.model_output().to_vec();
    let want: f64 = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| -(probs[i * 2 + y as usize] as f64).ln())
        .sum::<f64>()
        / 2.0;
    assert!(
        (step.loss() as f64 - want).abs() < 1e-5,
        "loss {} vs −ln p {want}",
        step.loss()
    );
    assert!(step.grad(0).iter().any(|&d| d != 0.0));
}
