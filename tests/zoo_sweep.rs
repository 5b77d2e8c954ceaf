//! Issue 12's zoo sweep: tiny-width ResNet-50, SqueezeNet, DenseNet-121,
//! Inception v1, ShuffleNet, VGG-19 and AlexNet graphs in the ONNX Model
//! Zoo's form (`crates/koala-graph/tests/common/zoo.rs`), each through the
//! `koala` binary as a new user would run it: `koala check` reports no
//! problem (the fixed batch of 1 is a note) and names the head,
//! `koala finetune --num-classes 3 --batch-size 1 --accumulate 2
//! --max-steps 2` runs on a tiny image folder and exports, and the export
//! loads in ONNX Runtime with the original opset and 3 classes.
//!
//! `*_opset9` cases are the zoo's old form (opset 9, IR 3, initializers
//! listed as graph inputs); `*_opset17` the same graphs in today's attribute
//! forms (those of opset 13; 17 because the gradient of an overlapping
//! MaxPool, which every one of these nets has, needs ScatterElements with
//! `reduction=add`, opset 16).

#[path = "../crates/koala-graph/tests/common/zoo.rs"]
mod zoo;

use koala::graph::Model;
use std::path::Path;
use std::process::{Command, Output};
use zoo::{Arch, Form, IMAGE};

fn koala(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .expect("cannot start the koala binary")
}

fn ok(what: &str, args: &[&str]) -> String {
    let o = koala(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: koala {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    format!("{out}{err}")
}

/// A class-folder data set of 3 classes × 4 PNGs (32×32), or `per_class`: class k is a
/// horizontal gradient tinted by k, with noise.
fn image_folder(dir: &Path) {
    image_folder_of(dir, 4)
}

fn image_folder_of(dir: &Path, per_class: u32) {
    let mut s = 11u32;
    for class in 0..3u32 {
        let d = dir.join(format!("class{class}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(IMAGE as u32, IMAGE as u32, |x, _| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let n = (s >> 16) % 24;
                let v = (x * 6 + n) as u8;
                let mut p = [v / 2, v / 2, v / 2];
                p[class as usize] = p[class as usize].saturating_add(120);
                image::Rgb(p)
            });
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn sweep(arch: Arch, opset: i64) {
    let tmp = tempfile::tempdir().unwrap();
    let model = zoo::build(arch, Form { opset }, 7);
    let path = tmp.path().join(format!("{}.onnx", arch.name()));
    koala::graph::model::write_atomic(&path, &model.to_bytes()).unwrap();
    let data = tmp.path().join("images");
    image_folder(&data);
    let m = path.to_str().unwrap();
    let what = format!("{} at opset {opset}", arch.name());

    let report = ok(&what, &["check", m, "--threads", "1"]);
    assert!(
        report.contains("head: ") && report.contains("1000 classes"),
        "{what}: check names no head:\n{report}"
    );
    assert!(
        report.contains("batch"),
        "{what}: check says nothing about the fixed batch:\n{report}"
    );

    let run = tmp.path().join("run");
    let log = ok(
        &what,
        &[
            "finetune",
            "--model",
            m,
            "--data",
            data.to_str().unwrap(),
            "--num-classes",
            "3",
            "--batch-size",
            "1",
            "--accumulate",
            "2",
            "--max-steps",
            "2",
            "--val-fraction",
            "0.25",
            "--no-augment",
            "--threads",
            "1",
            "--run-dir",
            run.to_str().unwrap(),
        ],
    );
    assert!(log.contains("1000 → 3 classes"), "{what}:\n{log}");

    // The export: the original opset, 3 classes, and ONNX Runtime runs it.
    let exported = run.join("model.onnx");
    let e = Model::load(&exported).unwrap();
    assert_eq!(e.opset(), opset, "{what}: the export's opset");
    let out = &e.graph().output[0];
    let dims = koala::graph::training::declared_dims(out);
    assert!(dims.contains(&Some(3)), "{what}: export output {dims:?}");
    let mut session = koala::runtime::Session::from_file(&exported, &Default::default()).unwrap();
    let input = vec![0.1f32; (3 * IMAGE * IMAGE) as usize];
    let shape = [1usize, 3, IMAGE as usize, IMAGE as usize];
    let result = session
        .run(&[("data_0", koala::runtime::TensorView::f32(&input, &shape))])
        .unwrap();
    let y = result[0].as_f32().unwrap();
    assert_eq!(
        y.len(),
        3,
        "{what}: the export's output has {} values",
        y.len()
    );
    assert!(y.iter().all(|v| v.is_finite()), "{what}: {y:?}");
}

macro_rules! cases {
    ($($name:ident: $arch:expr, $opset:expr;)*) => {
        $(#[test] fn $name() { sweep($arch, $opset) })*
    };
}

cases! {
    resnet50_opset17: Arch::ResNet50, 17;
    squeezenet_opset17: Arch::SqueezeNet, 17;
    densenet121_opset17: Arch::DenseNet121, 17;
    inception_v1_opset17: Arch::InceptionV1, 17;
    shufflenet_opset17: Arch::ShuffleNet, 17;
    vgg19_opset17: Arch::Vgg19, 17;
    alexnet_opset17: Arch::AlexNet, 17;
    resnet50_opset9: Arch::ResNet50, 9;
    squeezenet_opset9: Arch::SqueezeNet, 9;
    densenet121_opset9: Arch::DenseNet121, 9;
    inception_v1_opset9: Arch::InceptionV1, 9;
    shufflenet_opset9: Arch::ShuffleNet, 9;
    vgg19_opset9: Arch::Vgg19, 9;
    alexnet_opset9: Arch::AlexNet, 9;
}

/// The conv heads learn: tiny SqueezeNet (Conv 1×1 → Relu → GlobalAveragePool
/// → Softmax, `[1, C, 1, 1]`) and DenseNet (GlobalAveragePool → Conv 1×1)
/// re-headed for 3 classes, trained 6 epochs on 3 × 6 tinted images (batch 1,
/// accumulated to 3, the paper's per-tensor KOALA++ with koala's default η, seed 1), scored on those images. A
/// fresh 3-class head starts near ln 3 = 1.0986 (uniform guessing: 1.105 and
/// 1.197 here). DenseNet reaches loss 0.44 and 100 %: asserted < 0.5 and all
/// right. SqueezeNet's head sits behind a Relu, so it starts at zero weights and
/// bias `RELU_HEAD_BIAS` (every class active; with PyTorch's default init a
/// class whose fresh row was negative on every image never learned: loss 0.73,
/// accuracy 1/3); it reaches 0.69 and 2/3 here: asserted < 0.8 and ≥ 2/3.
#[test]
fn conv_heads_learn_with_num_classes() {
    for (arch, max_loss, min_accuracy) in [
        (Arch::SqueezeNet, 0.8, 2.0 / 3.0),
        (Arch::DenseNet121, 0.5, 1.0),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let model = zoo::build(arch, Form { opset: 17 }, 7);
        let path = tmp.path().join("m.onnx");
        koala::graph::model::write_atomic(&path, &model.to_bytes()).unwrap();
        let data = tmp.path().join("images");
        image_folder_of(&data, 6);
        let run = tmp.path().join("run");
        let d = data.to_str().unwrap();
        let log = ok(
            arch.name(),
            &[
                "finetune",
                "--model",
                path.to_str().unwrap(),
                "--data",
                d,
                "--eval-data",
                d,
                "--num-classes",
                "3",
                "--batch-size",
                "1",
                "--accumulate",
                "3",
                "--epochs",
                "6",
                "--no-augment",
                "--threads",
                "1",
                "--seed",
                "1",
                // the paper's per-tensor KOALA++ (η = 4/tensors): the image default's step bound (1e-4, a fine-tuning step size) barely moves a freshly initialised toy model in a few dozen steps.
                "--koala-innovation",
                "per-tensor",
                "--run-dir",
                run.to_str().unwrap(),
            ],
        );
        let records = koala::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
        let last = records.iter().rev().find(|r| r.split != "train").unwrap();
        eprintln!(
            "{}: eval loss {:.4}, accuracy {:?}",
            arch.name(),
            last.loss,
            last.accuracy
        );
        assert!(
            last.loss < max_loss,
            "{}: eval loss {}\n{log}",
            arch.name(),
            last.loss
        );
        assert!(
            last.accuracy.unwrap() >= min_accuracy - 1e-9,
            "{}: {:?}\n{log}",
            arch.name(),
            last.accuracy
        );
    }
}

/// Writes every generated model (opset 9 and 17) to `$KOALA_ZOO_DIR`, for
/// trying them by hand: `KOALA_ZOO_DIR=/tmp/zoo cargo test --release --test
/// zoo_sweep -- --ignored write_zoo_models`.
#[test]
#[ignore]
fn write_zoo_models() {
    let dir = std::path::PathBuf::from(std::env::var("KOALA_ZOO_DIR").expect("set KOALA_ZOO_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    for arch in Arch::ALL {
        for opset in [9, 17] {
            let m = zoo::build(arch, Form { opset }, 7);
            let p = dir.join(format!("{}_opset{opset}.onnx", arch.name()));
            koala::graph::model::write_atomic(&p, &m.to_bytes()).unwrap();
        }
    }
    image_folder_of(&dir.join("images"), 6);
}
