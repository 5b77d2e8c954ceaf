//! Issue 8, faults 1, 3 and 9 end to end through the `koala` binary: which
//! output a classifier trains (a final Softmax, several outputs), in-graph
//! preprocessing constants that must stay as they are, and advice that works.
//!
//! Models are built in Rust (`small_classifiers.rs`); the data is a
//! separable two-class toy set written as IDX files here: class 0 dark
//! images, class 1 bright ones.

#[path = "../crates/koala-graph/tests/common/small_classifiers.rs"]
mod small_classifiers;

use koala::graph::{tensor, Model};
use small_classifiers::{tiny_cnn, weights_in_constants, Outputs, Preprocessing};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn koala(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> (String, String) {
    let o = koala(args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "koala {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

fn fails(args: &[&str]) -> String {
    let o = koala(args);
    let (_, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "koala {args:?} should fail:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// One IDX split of 28×28 grayscale images: label `i % classes`, brightness
/// rising with the label (class 0 dark, the last class bright), with noise.
fn write_idx(dir: &Path, prefix: &str, n: usize, classes: usize) {
    let (rows, cols) = (28u32, 28u32);
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, rows, cols] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    let mut s = 7u32;
    for i in 0..n {
        let label = i % classes;
        labels.push(label as u8);
        let base = 30 + 190 * label / (classes - 1).max(1);
        for _ in 0..rows * cols {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            images.push((base + (s >> 16) as usize % 30) as u8);
        }
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// The toy data set: 64 training and 32 test images of `classes` classes.
fn toy_data(dir: &Path, classes: usize) -> PathBuf {
    let d = dir.join(format!("toy{classes}"));
    std::fs::create_dir_all(&d).unwrap();
    write_idx(&d, "train", 64, classes);
    write_idx(&d, "t10k", 32, classes);
    d
}

fn save(m: &Model, path: &Path) -> String {
    koala::graph::model::write_atomic(path, &m.to_bytes()).unwrap();
    path.display().to_string()
}

/// `koala finetune` of `model` on `data` for 6 epochs of batches of 8.
fn finetune(model: &str, data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "finetune",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "6",
        "--no-augment",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The last evaluation loss of a run.
fn final_eval_loss(run_dir: &Path) -> f64 {
    let records = koala::train::metrics::read(&run_dir.join("metrics.jsonl")).unwrap();
    records
        .iter()
        .rev()
        .find(|r| r.split != "train")
        .expect("an evaluation record")
        .loss
}

/// Output `name` of `model` on one batch of the data's first `n` images,
/// run by ONNX Runtime.
fn run_output(model: &Path, name: &str, n: usize) -> Vec<f32> {
    let mut s = koala::runtime::Session::from_file(model, &Default::default()).unwrap();
    let images: Vec<f32> = (0..n * 3 * 16 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    let out = s
        .run(&[(
            "input",
            koala::runtime::TensorView::f32(&images, &[n, 3, 16, 16]),
        )])
        .unwrap();
    let k = s.outputs().iter().position(|o| o.name == name).unwrap();
    out[k].as_f32().unwrap().to_vec()
}

/// A CNN ending in Softmax trains on its logits: the evaluation loss falls
/// well below ln(1+e⁻¹) ≈ 0.3133, where cross-entropy on probabilities sticks;
/// the export still ends in Softmax and returns probabilities.
#[test]
fn a_classifier_ending_in_softmax_trains_on_its_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let model = save(
        &tiny_cnn(Outputs::Probs, Preprocessing::None),
        &tmp.path().join("probs.onnx"),
    );
    let (out, _) = ok(&["check", &model]);
    assert!(
        out.contains("output: trains output 'probs'") && out.contains("the loss reads 'logits'"),
        "{out}"
    );
    let run = tmp.path().join("run");
    // the paper's per-tensor KOALA++ (η = 4/tensors): the image default's step bound (1e-4, a fine-tuning step size) barely moves a freshly initialised toy model in a few dozen steps.
    let paper_form = ["--koala-innovation", "per-tensor"];
    let (out, err) = ok(&refs(&finetune(&model, &data, &run, &paper_form)));
    assert!(err.contains("the loss reads 'logits'"), "{err}");
    let loss = final_eval_loss(&run);
    assert!(
        loss < 0.15,
        "evaluation loss {loss} (ln(1+e^-1) = 0.3133 means probabilities were trained)\n{out}"
    );
    assert!(out.contains("accuracy after:  100.00%"), "{out}");
    let export = run.join("model.onnx");
    let m = Model::load(&export).unwrap();
    let last = m.graph().node.last().unwrap();
    assert_eq!(
        (last.op_type.as_str(), last.output[0].as_str()),
        ("Softmax", "probs")
    );
    let probs = run_output(&export, "probs", 4);
    for row in probs.chunks(2) {
        assert!(
            (row[0] + row[1] - 1.0).abs() < 1e-5 && row.iter().all(|p| (0.0..=1.0).contains(p)),
            "{row:?}"
        );
    }
    // `koala eval` on the export scores the logits: the same loss as the run's export check.
    let (out, _) = ok(&[
        "eval",
        "--model",
        export.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--image-size",
        "16",
    ]);
    assert!(out.contains("top-1 100.00%"), "{out}");
}

/// Outputs `[features [N,4], logits [N,2]]`: the logits head trains (the
/// feature output is not taken for class scores) and the exported `logits`
/// output is accurate. `[probs, logits]` trains `logits`.
#[test]
fn with_several_outputs_the_class_scores_train() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let model = save(
        &tiny_cnn(Outputs::FeaturesAndLogits, Preprocessing::None),
        &tmp.path().join("fl.onnx"),
    );
    let run = tmp.path().join("run");
    let (out, err) = ok(&refs(&finetune(&model, &data, &run, &[])));
    assert!(
        err.contains("trains output 'logits'") && err.contains("matches the 2 classes"),
        "{err}"
    );
    assert!(
        out.contains("accuracy before: 50.00%") && out.contains("accuracy after:  100.00%"),
        "{out}"
    );
    let export = run.join("model.onnx");
    let (out, _) = ok(&[
        "eval",
        "--model",
        export.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--image-size",
        "16",
        "--output",
        "logits",
    ]);
    assert!(out.contains("top-1 100.00%"), "{out}");
    // The head was trained: fc.weight changed.
    let before = tiny_cnn(Outputs::FeaturesAndLogits, Preprocessing::None);
    let w = |m: &Model| {
        tensor::to_f32(
            m.graph()
                .initializer
                .iter()
                .find(|t| t.name == "fc.weight")
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(w(&before), w(&Model::load(&export).unwrap()));

    let model = save(
        &tiny_cnn(Outputs::ProbsAndLogits, Preprocessing::None),
        &tmp.path().join("pl.onnx"),
    );
    let (out, _) = ok(&["check", &model]);
    assert!(out.contains("output: trains output 'logits'"), "{out}");
}

/// Two heads of the same class count: refused, naming `--output`; naming
/// one trains it.
#[test]
fn ambiguous_outputs_need_the_output_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let model = save(
        &tiny_cnn(Outputs::TwoHeads, Preprocessing::None),
        &tmp.path().join("two.onnx"),
    );
    let run = tmp.path().join("run");
    let err = fails(&refs(&finetune(&model, &data, &run, &["--max-steps", "1"])));
    assert!(
        err.contains("--output NAME") && err.contains("'logits2'"),
        "{err}"
    );
    let run2 = tmp.path().join("run2");
    let (_, err) = ok(&refs(&finetune(
        &model,
        &data,
        &run2,
        &["--max-steps", "2", "--output", "logits2"],
    )));
    assert!(
        err.contains("trains output 'logits2' (named by --output)"),
        "{err}"
    );
}

/// In-graph mean/std are preprocessing: the export's are bit-identical to
/// the input's, `check` lists them, and `--train` still trains them.
#[test]
fn in_graph_mean_and_std_stay_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let m = tiny_cnn(Outputs::Logits, Preprocessing::MeanStd);
    let model = save(&m, &tmp.path().join("meanstd.onnx"));
    let (out, _) = ok(&["check", &model]);
    assert!(
        out.contains("trainable: 4 tensors")
            && out.contains("preprocessing and architecture constants")
            && out.contains("  mean (Sub"),
        "{out}"
    );
    let raw = |m: &Model, n: &str| {
        m.graph()
            .initializer
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .clone()
    };
    let run = tmp.path().join("run");
    let (_, err) = ok(&refs(&finetune(&model, &data, &run, &["--max-steps", "6"])));
    let export = Model::load(&run.join("model.onnx")).unwrap();
    for n in ["mean", "std"] {
        assert_eq!(
            tensor::to_f32(&raw(&m, n)).unwrap(),
            tensor::to_f32(&raw(&export, n)).unwrap(),
            "{n}"
        );
    }
    assert_ne!(
        tensor::to_f32(&raw(&m, "conv.weight")).unwrap(),
        tensor::to_f32(&raw(&export, "conv.weight")).unwrap(),
        "{err}"
    );
    // Named by --train, they train.
    let run = tmp.path().join("run_pre");
    ok(&refs(&finetune(
        &model,
        &data,
        &run,
        &["--max-steps", "6", "--train", "^(std|conv\\..*|fc\\..*)$"],
    )));
    let export = Model::load(&run.join("model.onnx")).unwrap();
    assert_ne!(
        tensor::to_f32(&raw(&m, "std")).unwrap(),
        tensor::to_f32(&raw(&export, "std")).unwrap()
    );
    assert_eq!(
        tensor::to_f32(&raw(&m, "mean")).unwrap(),
        tensor::to_f32(&raw(&export, "mean")).unwrap()
    );
}

/// `koala eval` with more data classes than model outputs advises a
/// fine-tuning run (eval has no --num-classes); finetune on weights held in
/// Constant nodes names --train-constants and no pattern the user never gave.
#[test]
fn advice_names_flags_that_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let data3 = toy_data(tmp.path(), 3);
    let model = save(
        &tiny_cnn(Outputs::Logits, Preprocessing::None),
        &tmp.path().join("m.onnx"),
    );
    let err = fails(&[
        "eval",
        "--model",
        &model,
        "--data",
        data3.to_str().unwrap(),
        "--image-size",
        "16",
    ]);
    assert!(err.contains("koala finetune --num-classes 3"), "{err}");
    assert!(!err.contains("pass --num-classes"), "{err}");
    // The advice works: the run's export evaluates on the 3-class data.
    let run = tmp.path().join("run");
    ok(&refs(&finetune(
        &model,
        &data3,
        &run,
        &["--num-classes", "3", "--max-steps", "2"],
    )));
    ok(&[
        "eval",
        "--model",
        run.join("model.onnx").to_str().unwrap(),
        "--data",
        data3.to_str().unwrap(),
        "--image-size",
        "16",
    ]);

    let data = toy_data(tmp.path(), 2);
    let consts = save(&weights_in_constants(), &tmp.path().join("consts.onnx"));
    let err = fails(&refs(&finetune(
        &consts,
        &data,
        &tmp.path().join("rc"),
        &["--max-steps", "1"],
    )));
    assert!(
        err.contains("--train-constants") && !err.contains("pattern"),
        "{err}"
    );
}

/// The output named with `--output` is recorded in the export (`koala.output`), so `koala
/// eval` scores it without `--output` again; `check` on the ambiguous model says why once.
#[test]
fn the_trained_output_is_recorded_for_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let model = save(
        &tiny_cnn(Outputs::TwoHeads, Preprocessing::None),
        &tmp.path().join("two.onnx"),
    );
    let o = koala(&["check", &model]);
    let (out, err) = text(&o);
    let all = out + &err;
    assert_eq!(
        all.matches("cannot tell which one holds the class scores")
            .count(),
        1,
        "{all}"
    );
    let run = tmp.path().join("run");
    ok(&refs(&finetune(
        &model,
        &data,
        &run,
        &["--max-steps", "2", "--output", "logits2"],
    )));
    let export = run.join("model.onnx");
    let recorded: Vec<(String, String)> = Model::load(&export)
        .unwrap()
        .proto
        .metadata_props
        .iter()
        .filter(|p| p.key == "koala.output")
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    assert_eq!(
        recorded,
        vec![("koala.output".to_string(), "logits2".to_string())]
    );
    let (out, err) = ok(&[
        "eval",
        "--model",
        export.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.contains("top-1"), "{out}");
    assert!(
        err.contains("output: 'logits2' (model metadata koala.output)"),
        "{err}"
    );
    // Eval scores (it does not train) the output the file records, and says so.
    assert!(
        err.contains("evaluates output 'logits2' (recorded in the file's koala.output)")
            && !err.contains("trains output"),
        "{err}"
    );
}

/// A second graph input is refused by check and eval, naming it and the remedy.
#[test]
fn a_second_model_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(tmp.path(), 2);
    let mut m = tiny_cnn(Outputs::Logits, Preprocessing::None);
    let mut scale = m.graph().input[0].clone();
    scale.name = "scale".into();
    m.graph_mut().input.push(scale);
    let model = save(&m, &tmp.path().join("twoin.onnx"));
    let err = check_refuses(&model);
    assert!(
        err.contains("one image input ('input')")
            && err.contains("no values for 'scale'")
            && err.contains("fold the extra input(s) into constants"),
        "{err}"
    );
    let err = fails(&["eval", "--model", &model, "--data", data.to_str().unwrap()]);
    assert!(err.contains("no values for 'scale'"), "{err}");
}

/// float16 weights: check says so and names the conversion, not `--train`.
#[test]
fn float16_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = tiny_cnn(Outputs::Logits, Preprocessing::None);
    for t in &mut m.graph_mut().initializer {
        let n: i64 = t.dims.iter().product();
        t.data_type = 10; // FLOAT16
        t.float_data.clear();
        t.raw_data = vec![0; 2 * n as usize];
    }
    let model = save(&m, &tmp.path().join("fp16.onnx"));
    let err = check_refuses(&model);
    assert!(
        err.contains("initializer(s) are float16") && err.contains("convert the model to float32"),
        "{err}"
    );
    assert!(!err.contains("--train '<regex>'"), "{err}");
}

/// A Resize `scales` initializer is listed among the frozen constants as an operator setting.
#[test]
fn resize_scales_are_listed_as_an_operator_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = tiny_cnn(Outputs::Logits, Preprocessing::None);
    let g = m.graph_mut();
    for n in &mut g.node {
        for i in &mut n.input {
            if i == "input" {
                *i = "resized".into();
            }
        }
    }
    g.node.insert(
        0,
        koala::graph::proto::NodeProto {
            op_type: "Resize".into(),
            name: "resize".into(),
            input: vec!["input".into(), String::new(), "resize.scales".into()],
            output: vec!["resized".into()],
            ..Default::default()
        },
    );
    g.initializer.push(tensor::from_f32(
        "resize.scales",
        &[4],
        &[1.0, 1.0, 1.0, 1.0],
    ));
    let model = save(&m, &tmp.path().join("resize.onnx"));
    let (out, _) = ok(&["check", &model]);
    assert!(
        out.contains("resize.scales (an operator setting of node #")
            && out.contains("'resize' (Resize), frozen)"),
        "{out}"
    );
}

/// `koala check MODEL` that reports problems (exit 3): its stdout and stderr together.
fn check_refuses(model: &str) -> String {
    let o = koala(&["check", model]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    out + &err
}
