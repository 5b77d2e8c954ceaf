//! `koala check` and `koala finetune` agree (issue 8, fault 8): for every model fixture the
//! repository ships and for every way koala refuses a model, `check` with a finetune command
//! line passes exactly when that `finetune` runs, and when both refuse, finetune's message holds
//! check's error. Both run the same pre-flight (`koala_train::preflight`), so a divergence here
//! means a refusal was added to one path only.
//!
//! The refusal models are the tiny reference CNN edited here (BatchNormalization in training
//! mode, a constant-true Dropout `training_mode`, a custom-domain op and an op without a
//! gradient rule between the weights and the loss, weights held in Constant nodes, an opset
//! outside the supported range, a head `--num-classes` cannot replace, …), so every input is
//! rebuilt from source. Each case also states its expected verdict, so a check that always
//! passes (or always fails) cannot make the test pass.

use koala::graph::attrs::{a_int, a_tensor};
use koala::graph::proto::{NodeProto, OperatorSetIdProto};
use koala::graph::{tensor, Model};
use std::path::{Path, PathBuf};
use support::cli::{koala, root, text};

mod support;

fn tiny_cnn() -> Model {
    Model::load(&root().join("tests/fixtures/reference/tiny_cnn/model.onnx")).unwrap()
}

/// 2 classes × 6 RGB 16×16 PNGs (a dark and a bright class), for the image cases.
fn image_folder(dir: &Path) -> PathBuf {
    let data = dir.join("images");
    for (class, level) in [("dark", 40u8), ("bright", 210u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..6u8 {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([level, level.wrapping_add(i), ((x + y) as u8) ^ i])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    data
}

fn save(model: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, model.to_bytes()).unwrap();
    p
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("inserted_{op}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Puts `n` (reading `value`, writing `value + "_after"`) right after `value`'s producer and
/// rewires every other consumer of `value` to the new output.
fn insert_after(model: &mut Model, value: &str, mut n: NodeProto) {
    let out = format!("{value}_after");
    n.output = vec![out.clone()];
    let g = model.graph_mut();
    for m in g.node.iter_mut() {
        for i in m.input.iter_mut().filter(|i| *i == value) {
            *i = out.clone();
        }
    }
    let at = g
        .node
        .iter()
        .position(|m| m.output.iter().any(|o| o == value))
        .unwrap();
    g.node.insert(at + 1, n);
}

const RELU: &str = "/Relu_output_0";

fn bn_training_mode(outputs: usize) -> Model {
    let mut m = tiny_cnn();
    let bn = m
        .graph_mut()
        .node
        .iter_mut()
        .find(|n| n.op_type == "BatchNormalization")
        .unwrap();
    bn.attribute.retain(|a| a.name != "training_mode");
    bn.attribute.push(a_int("training_mode", 1));
    if outputs == 3 {
        bn.output.push("bn1_running_mean_out".into());
        bn.output.push("bn1_running_var_out".into());
    }
    m
}

fn dropout_training() -> Model {
    let mut m = tiny_cnn();
    let mut c = |name: &str, t| {
        m.graph_mut().node.insert(0, {
            let mut n = node("Constant", &[], &[name]);
            n.name = name.into();
            n.attribute.push(a_tensor("value", t));
            n
        })
    };
    c("ratio", tensor::from_f32("ratio", &[], &[0.5]));
    let mut t = tensor::from_i64("training_mode", &[], &[1]);
    t.data_type = koala::graph::proto::DataType::Bool as i32;
    t.int64_data.clear();
    t.raw_data = vec![1u8];
    c("training_mode", t);
    insert_after(
        &mut m,
        RELU,
        node("Dropout", &[RELU, "ratio", "training_mode"], &[]),
    );
    m
}

fn custom_op_on_path() -> Model {
    let mut m = tiny_cnn();
    let mut n = node("FancyAct", &[RELU], &[]);
    n.domain = "com.example".into();
    insert_after(&mut m, RELU, n);
    m.proto.opset_import.push(OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    m
}

fn op_without_rule_on_path() -> Model {
    let mut m = tiny_cnn();
    insert_after(&mut m, RELU, node("Shrink", &[RELU], &[]));
    m
}

fn weights_in_constants() -> Model {
    let mut m = tiny_cnn();
    let g = m.graph_mut();
    let inits = std::mem::take(&mut g.initializer);
    for t in inits.into_iter().rev() {
        let mut n = node("Constant", &[], &[&t.name]);
        n.name = format!("const_{}", t.name);
        n.attribute.push(a_tensor("value", t));
        g.node.insert(0, n);
    }
    m
}

fn opset(v: i64) -> Model {
    let mut m = tiny_cnn();
    for o in m
        .proto
        .opset_import
        .iter_mut()
        .filter(|o| o.domain.is_empty())
    {
        o.version = v;
    }
    m
}

/// A Gemm → Tanh output: Tanh is not among the class-preserving ops `--num-classes` walks
/// back through (a Relu is, since SqueezeNet's Conv head → Relu → pooling: issue 12).
fn output_after_tanh() -> Model {
    let mut m = tiny_cnn();
    let g = m.graph_mut();
    g.node
        .iter_mut()
        .find(|n| n.op_type == "Gemm")
        .unwrap()
        .output = vec!["fc_out".into()];
    g.node.push(node("Tanh", &["fc_out"], &["logits"]));
    m
}

struct Case {
    name: &'static str,
    model: PathBuf,
    flags: Vec<String>,
    /// The expected verdict, and a phrase the refusal must contain.
    expect: Result<(), &'static str>,
}

fn flags(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cases(dir: &Path) -> Vec<Case> {
    let images = image_folder(dir);
    let img_sized = |size: &str, extra: &[&str]| {
        let mut f = flags(&[
            "--data",
            images.to_str().unwrap(),
            "--image-size",
            size,
            "--batch-size",
            "2",
            "--val-fraction",
            "0.5",
        ]);
        f.extend(flags(extra));
        f
    };
    let img = |extra: &[&str]| img_sized("16", extra);
    let text = root().join("data/shakespeare");
    let lm = |extra: &[&str]| {
        let mut f = flags(&[
            "--data",
            text.to_str().unwrap(),
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--limit-train",
            "8",
            "--sample-tokens",
            "0",
        ]);
        f.extend(flags(extra));
        f
    };
    let fixture = |p: &str| root().join(p);
    let m = |model: Model, name: &str| save(&model, dir, name);
    vec![
        // Shipped fixtures.
        Case {
            name: "tiny_cnn",
            model: fixture("tests/fixtures/reference/tiny_cnn/model.onnx"),
            flags: img(&[]),
            expect: Ok(()),
        },
        Case {
            name: "mobilenet_v2 with a new head",
            model: fixture("models/mobilenet_v2/model.onnx"),
            flags: img_sized("96", &["--num-classes", "2"]),
            expect: Ok(()),
        },
        Case {
            name: "tiny_llama_shakespeare",
            model: fixture("models/tiny_llama_shakespeare/model.onnx"),
            flags: lm(&[]),
            expect: Ok(()),
        },
        Case {
            name: "tiny_llama_shakespeare with past inputs",
            model: fixture("models/tiny_llama_shakespeare/model_with_past.onnx"),
            flags: lm(&[
                "--tokenizer",
                fixture("models/tiny_llama_shakespeare/tokenizer.json")
                    .to_str()
                    .unwrap(),
            ]),
            expect: Ok(()),
        },
        Case {
            name: "tiny_gpt (no tokenizer beside it)",
            model: fixture("tests/fixtures/reference/tiny_gpt/model.onnx"),
            flags: lm(&[]),
            expect: Err("tokenizer"),
        },
        Case {
            name: "runtime fixture with many inputs and outputs",
            model: fixture("crates/koala-runtime/tests/fixtures/many_io.onnx"),
            flags: img(&[]),
            expect: Err(""),
        },
        // Refusal paths.
        Case {
            name: "BatchNormalization training_mode=1",
            model: m(bn_training_mode(1), "bn_training_mode"),
            flags: img(&[]),
            expect: Err("training_mode"),
        },
        Case {
            name: "BatchNormalization training_mode=1 with 3 outputs",
            model: m(bn_training_mode(3), "bn_training_mode_3"),
            flags: img(&[]),
            expect: Err("training_mode"),
        },
        Case {
            name: "Dropout with a constant-true training_mode",
            model: m(dropout_training(), "dropout_training"),
            flags: img(&[]),
            expect: Err("Dropout"),
        },
        Case {
            name: "custom-domain op between weights and loss",
            model: m(custom_op_on_path(), "custom_op"),
            flags: img(&[]),
            expect: Err("FancyAct"),
        },
        Case {
            name: "op without a gradient rule between weights and loss",
            model: m(op_without_rule_on_path(), "shrink"),
            flags: img(&[]),
            expect: Err("Shrink"),
        },
        Case {
            name: "... unless the weights before it are frozen",
            model: m(op_without_rule_on_path(), "shrink_frozen"),
            flags: img(&["--train", "^(conv3|fc)\\."]),
            expect: Ok(()),
        },
        Case {
            name: "weights held in Constant nodes",
            model: m(weights_in_constants(), "constants"),
            flags: img(&[]),
            expect: Err("--train-constants"),
        },
        Case {
            name: "weights held in Constant nodes, --train-constants",
            model: m(weights_in_constants(), "constants_trained"),
            flags: img(&["--train-constants"]),
            expect: Ok(()),
        },
        Case {
            name: "--train matching nothing",
            model: fixture("tests/fixtures/reference/tiny_cnn/model.onnx"),
            flags: img(&["--train", "^no_such_weight$"]),
            expect: Err("no_such_weight"),
        },
        Case {
            name: "opset outside the supported range",
            model: m(opset(6), "opset6"),
            flags: img(&[]),
            expect: Err("opset 6"),
        },
        Case {
            name: "--image-size against a fixed input size",
            model: fixture("tests/fixtures/reference/tiny_cnn/model.onnx"),
            flags: img_sized("24", &[]),
            expect: Err("--image-size 16"),
        },
        Case {
            name: "--num-classes on a head koala cannot find",
            model: m(output_after_tanh(), "tanh_head"),
            flags: img(&["--num-classes", "2"]),
            expect: Err("classifier"),
        },
    ]
}

#[test]
fn check_passes_exactly_when_finetune_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (k, c) in cases(dir.path()).into_iter().enumerate() {
        let mut common = flags(&["--model", c.model.to_str().unwrap(), "--threads", "1"]);
        common.extend(c.flags.iter().cloned());
        let mut check = vec!["check".to_string()];
        check.extend(common.iter().cloned());
        let checked = koala(&check);
        let check_out = text(&checked.stdout) + &text(&checked.stderr);
        let run_dir = dir.path().join(format!("run{k}"));
        let mut finetune = flags(&["finetune", "--max-steps", "1", "--run-dir"]);
        finetune.push(run_dir.to_str().unwrap().into());
        finetune.extend(common);
        let tuned = koala(&finetune);
        let tune_err = text(&tuned.stderr);
        for (what, out) in [("check", &check_out), ("finetune", &tune_err)] {
            if out.contains("panicked") {
                failures.push(format!("{}: {what} panicked:\n{out}", c.name));
            }
        }
        let check_ok = checked.status.success();
        let tune_ok = tuned.status.success();
        if check_ok != tune_ok {
            failures.push(format!(
                "{}: check {} but finetune {}\ncheck:\n{check_out}\nfinetune:\n{tune_err}",
                c.name,
                verdict(check_ok),
                verdict(tune_ok)
            ));
            continue;
        }
        match c.expect {
            Ok(()) if !check_ok => failures.push(format!(
                "{}: both refuse a model that should train:\n{check_out}",
                c.name
            )),
            Err(_) if check_ok => failures.push(format!(
                "{}: both accept a model that must be refused:\n{check_out}",
                c.name
            )),
            Err(phrase) => {
                // The same words reach the user from both commands.
                let first = first_error(&check_out);
                if !check_out.contains(phrase) || !tune_err.contains(phrase) {
                    failures.push(format!(
                        "{}: the refusal should name '{phrase}'\ncheck:\n{check_out}\nfinetune:\n{tune_err}",
                        c.name
                    ));
                } else if !tune_err.contains(first.trim()) {
                    failures.push(format!(
                        "{}: finetune's message lacks check's error '{first}':\n{tune_err}",
                        c.name
                    ));
                }
            }
            Ok(()) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "passes"
    } else {
        "refuses"
    }
}

/// The first error line of check's output (without the "error: " tag), or the whole output
/// when check stopped before printing a report.
fn first_error(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `koala eval` refuses models exported in training mode with check's words, instead of a
/// random (Dropout) or batch-size-dependent (BatchNormalization) evaluation or ONNX Runtime's
/// shape-inference message.
#[test]
fn eval_refuses_training_mode_models_like_check() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    for (name, model) in [
        ("bn", bn_training_mode(1)),
        ("bn3", bn_training_mode(3)),
        ("dropout", dropout_training()),
    ] {
        let path = save(&model, dir.path(), name);
        let out = koala(&flags(&[
            "eval",
            "--model",
            path.to_str().unwrap(),
            "--data",
            images.to_str().unwrap(),
            "--image-size",
            "16",
        ]));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: eval ran:\n{err}");
        let check = koala(&flags(&["check", path.to_str().unwrap()]));
        let first = first_error(&text(&check.stdout));
        assert!(
            err.contains("training mode") && err.contains("model.eval()") && err.contains(&first),
            "{name}: eval should refuse with check's words ('{first}'):\n{err}"
        );
    }
}
