//! Image inputs other than NCHW float32, and preprocessing carried from training to
//! evaluation (issue 8, faults 2 and 4).
//!
//! The models are built here: a linear classifier (Flatten → Gemm, 4 classes) on 16×16 RGB
//! images, in three input forms that compute the same function of the pixels:
//! * NCHW float32 `[batch, 3, 16, 16]` (the reference);
//! * NHWC float32 `[batch, 16, 16, 3]` with a Transpose to NCHW inside;
//! * NHWC uint8 `[batch, 16, 16, 3]` that normalises inside: Cast → ·(1/127.5) → −1, which is
//!   what `(pixel/255 − 0.5)/0.5` does to a float input.
//!
//! The data are the generated colour classes of `common` (separable by colour).

mod common;

use koala_data::{Cursor, Loader, LoaderConfig};
use koala_graph::attrs::{a_int, a_ints, a_tensor};
use koala_graph::proto::{
    dimension, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto,
};
use koala_graph::Model;
use koala_train::image_input::ImageInput;
use koala_train::preflight::SizesGiven;
use koala_train::preprocess_metadata::{self as meta, keys, Flags};
use koala_train::TrainConfig;
use std::path::{Path, PathBuf};

const CLASSES: usize = 4;
const SIDE: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Form {
    NchwF32,
    NhwcF32,
    NhwcU8,
    /// `[batch, 1, 16, 16]` greyscale.
    NchwGrey,
}

impl Form {
    fn channels(self) -> usize {
        match self {
            Form::NchwGrey => 1,
            _ => 3,
        }
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    }
}

fn constant(output: &str, value: f32) -> NodeProto {
    let mut n = node("Constant", &[], output);
    n.attribute.push(a_tensor(
        "value",
        koala_graph::tensor::from_f32(output, &[], &[value]),
    ));
    n
}

/// `[batch, dims...]` with a symbolic batch axis.
fn batched(name: &str, dt: DataType, dims: &[usize]) -> koala_graph::proto::ValueInfoProto {
    let mut shape = vec![1];
    shape.extend_from_slice(dims);
    let mut v = koala_graph::training::value_info(name, dt, &shape);
    if let Some(koala_graph::proto::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[0].value = Some(dimension::Value::DimParam("batch".into()));
    }
    v
}

/// Deterministic small weights, the same for every form with `channels`.
fn weights(channels: usize) -> (Vec<f32>, Vec<f32>) {
    let n = channels * SIDE * SIDE;
    let w = (0..n * CLASSES)
        .map(|i| 0.01 * ((i * 37 % 101) as f32 / 101.0 - 0.5))
        .collect();
    (w, vec![0.0; CLASSES])
}

/// The linear classifier in the given input form. Carries one user metadata entry, which
/// exports must keep.
fn model(form: Form) -> Model {
    let (w, b) = weights(form.channels());
    let feat = (form.channels() * SIDE * SIDE) as i64;
    let mut nodes = Vec::new();
    let (input, start) = match form {
        Form::NchwF32 => (batched("image", DataType::Float, &[3, SIDE, SIDE]), "image"),
        Form::NhwcF32 => (batched("image", DataType::Float, &[SIDE, SIDE, 3]), "image"),
        Form::NhwcU8 => (batched("image", DataType::Uint8, &[SIDE, SIDE, 3]), "image"),
        Form::NchwGrey => (batched("image", DataType::Float, &[1, SIDE, SIDE]), "image"),
    };
    let mut x = start.to_string();
    if let Form::NhwcU8 = form {
        let mut cast = node("Cast", &["image"], "as_float");
        cast.attribute.push(a_int("to", DataType::Float as i64));
        nodes.push(cast);
        nodes.push(constant("inv_half_range", 1.0 / 127.5));
        nodes.push(node("Mul", &["as_float", "inv_half_range"], "scaled"));
        nodes.push(constant("one", 1.0));
        nodes.push(node("Sub", &["scaled", "one"], "normalised"));
        x = "normalised".into();
    }
    if matches!(form, Form::NhwcF32 | Form::NhwcU8) {
        let mut t = node("Transpose", &[&x], "nchw");
        t.attribute.push(a_ints("perm", &[0, 3, 1, 2]));
        nodes.push(t);
        x = "nchw".into();
    }
    let mut flat = node("Flatten", &[&x], "flat");
    flat.attribute.push(a_int("axis", 1));
    nodes.push(flat);
    nodes.push(node("Gemm", &["flat", "W", "B"], "logits"));
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        metadata_props: vec![StringStringEntryProto {
            key: "author".into(),
            value: "image_inputs test".into(),
        }],
        graph: Some(GraphProto {
            name: format!("{form:?}"),
            node: nodes,
            initializer: vec![
                koala_graph::tensor::from_f32("W", &[feat, CLASSES as i64], &w),
                koala_graph::tensor::from_f32("B", &[CLASSES as i64], &b),
            ],
            input: vec![input],
            output: vec![batched("logits", DataType::Float, &[CLASSES])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto).unwrap()
}

fn save(model: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, model.to_bytes()).unwrap();
    p
}

/// A run of `model_path` on `data` (also the evaluation data, so the run's final evaluation
/// and `koala eval` see the same images), normalised with mean = std = 0.5.
fn config(model_path: &Path, data: &Path, run_dir: &Path) -> TrainConfig {
    config_channels(model_path, data, run_dir, 3)
}

fn config_channels(model_path: &Path, data: &Path, run_dir: &Path, channels: usize) -> TrainConfig {
    TrainConfig {
        model: model_path.to_path_buf(),
        eval_data: Some(data.to_path_buf()),
        mean: Some(vec![0.5; channels]),
        std: Some(vec![0.5; channels]),
        augment: false,
        epochs: 4,
        // the paper's per-tensor KOALA++ (η = 4/tensors): the image default's step bound (1e-4, a fine-tuning step size) barely moves a freshly initialised toy model in a few dozen steps.
        koala_innovation: Some(koala_optim::KoalaPPInnovation::PerTensor),
        ..common::fast_config(data, run_dir)
    }
}

/// `koala eval`'s options with these preprocessing flags, batches of 8, one thread.
fn options(flags: Flags) -> koala_train::eval::ClassifierEvalOptions {
    koala_train::eval::ClassifierEvalOptions {
        flags,
        batch_size: 8,
        threads: Some(1),
        ..Default::default()
    }
}

/// What `koala eval --model <path> --data <data>` computes, with no flags.
fn eval_without_flags(path: &Path, data: &Path) -> koala_train::eval::EvalResult {
    let model = Model::load(path).unwrap();
    koala_train::eval::evaluate_classifier_file(path, &model, data, &options(Flags::default()))
        .unwrap()
        .0
}

/// Equal up to f32 rounding in ONNX Runtime's kernels (relative 1e-6 on an O(1) loss).
fn assert_close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
}

fn metadata(path: &Path) -> std::collections::BTreeMap<String, String> {
    Model::load(path)
        .unwrap()
        .proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// Fine-tunes `form` and checks: well above chance (25 %), the export evaluates (in the run
/// and through `koala eval` without flags) to the run's final accuracy, and it records its
/// input form.
fn trains_and_evaluates_alike(form: Form, layout: &str, dtype: &str) {
    let (tmp, data) = common::scratch_with_data(12);
    let path = save(&model(form), tmp.path(), "model.onnx");
    let cfg = config_channels(&path, &data, &tmp.path().join("run"), form.channels());
    let s = koala_train::finetune(cfg).unwrap();
    // Colour: the classes differ in hue, 100 % within a few epochs. Greyscale: their lumas
    // (88, 134, 58, 182 ± the pattern) lie on one axis, which a linear head separates more slowly.
    let min = if form.channels() == 3 { 0.9 } else { 0.7 };
    assert!(
        s.after.accuracy >= min,
        "{form:?}: top-1 {} after training (chance 0.25)",
        s.after.accuracy
    );
    assert_eq!(s.export_eval.accuracy, s.after.accuracy, "{form:?}");
    assert!(s.export_max_diff <= 1e-5, "{form:?}: {}", s.export_max_diff);
    // tract gets the same converted batch (uint8 bytes for a uint8 input).
    assert!(
        matches!(s.export_tract, Ok(d) if d <= 1e-5),
        "{form:?}: tract {:?}",
        s.export_tract
    );
    let cli = eval_without_flags(&s.export, &data);
    assert_eq!(cli.samples, 4 * 12);
    assert_eq!(cli.accuracy, s.after.accuracy, "{form:?}: koala eval");
    // The run evaluates the same weights as graph inputs, the file as initializers: ORT may
    // fuse differently, so f32 rounding (relative 1e-6), not a different preprocessing
    // (which moves the loss by > 1e-3, see `eval_of_an_export_uses_the_recorded_normalisation`).
    assert_close(cli.loss, s.after.loss);
    let m = metadata(&s.export);
    assert_eq!(m[keys::INPUT_LAYOUT], layout);
    assert_eq!(m[keys::INPUT_DTYPE], dtype);
    assert_eq!(
        m["author"], "image_inputs test",
        "the user's metadata is kept"
    );
}

#[test]
fn nhwc_float_model_trains_and_its_export_evaluates_alike() {
    trains_and_evaluates_alike(Form::NhwcF32, "NHWC", "float32");
}

/// Greyscale (C = 1): the loader converts RGB to luma; the four colours stay separable.
#[test]
fn greyscale_model_trains_and_its_export_evaluates_alike() {
    trains_and_evaluates_alike(Form::NchwGrey, "NCHW", "float32");
    let (tmp, data) = common::scratch_with_data(2);
    let path = save(&model(Form::NchwGrey), tmp.path(), "m.onnx");
    let Err(e) = koala_train::finetune(config(&path, &data, &tmp.path().join("run"))) else {
        panic!("3 mean values for a greyscale input were accepted");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("--mean has 3 values") && e.contains("1 channel"),
        "{e}"
    );
}

#[test]
fn nhwc_uint8_model_trains_on_raw_bytes_and_its_export_evaluates_alike() {
    trains_and_evaluates_alike(Form::NhwcU8, "NHWC", "uint8");
    let (tmp, data) = common::scratch_with_data(2);
    let path = save(&model(Form::NhwcU8), tmp.path(), "m.onnx");
    let s = koala_train::finetune(TrainConfig {
        epochs: 1,
        ..config(&path, &data, &tmp.path().join("run"))
    })
    .unwrap();
    let m = metadata(&s.export);
    assert_eq!(
        m[keys::MEAN],
        "none",
        "uint8 input: koala does not normalise"
    );
    assert_eq!(m[keys::PIXEL_SCALE], "1");
}

/// 16×16 images (no resampling: the loader's values are exactly byte/255), two per class.
fn exact_size_images(root: &Path) {
    for c in 0..CLASSES {
        let dir = root.join(format!("class_{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2u32 {
            let img = image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
                image::Rgb([
                    ((x * 16 + i * 7) % 256) as u8,
                    ((y * 16 + c as u32 * 50) % 256) as u8,
                    ((x * y + i) % 256) as u8,
                ])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// One loader batch fed through each form gives the NCHW reference's logits.
///
/// * NHWC float32: bit-exact (the Transpose only moves the same values back).
/// * NHWC uint8: koala feeds the resampled pixels rounded to bytes (what a uint8 pipeline such
///   as Pillow produces), so against the reference on the unrounded values each input differs
///   by at most 0.5/255 before normalisation, 1/255 after (÷0.5): |Δlogit_c| ≤ Σᵢ|W_ic|/255.
///   Fed the same bytes (b/255 normalised in f32), the reference must agree to 1e-5 (f32
///   rounding of b/127.5 − 1 vs (b/255 − 0.5)/0.5; logits are O(1)); a transposed or doubly
///   normalised input would be off by ≥ 1e-2.
#[test]
fn a_batch_fed_as_nhwc_gives_the_nchw_reference_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    exact_size_images(&data);
    let run = |m: &Model, pixels: &koala_data::ModelPixels, shape: &[usize]| -> Vec<f32> {
        let mut s = koala_runtime::Session::from_bytes(&m.to_bytes(), &Default::default()).unwrap();
        let out = s
            .run(&[("image", koala_train::image_input::view(pixels, shape))])
            .unwrap();
        out[0].as_f32().unwrap().to_vec()
    };
    let fed = |form: Form| -> (Vec<f32>, koala_data::Batch) {
        let m = model(form);
        let input = ImageInput::of_model(&m).unwrap();
        let cfg = TrainConfig {
            image_size: koala_train::config::ImageSize::square(SIDE as u32),
            mean: Some(vec![0.5; 3]),
            std: Some(vec![0.5; 3]),
            ..TrainConfig::default()
        };
        let loader = Loader::new(
            koala_data::open_source(&data, koala_data::IdxSplit::Test).unwrap(),
            koala_train::data::preprocess(&cfg, &input, false),
            LoaderConfig::eval(8),
        )
        .unwrap();
        let batch = loader.iter(Cursor::new(0, 0), 1).next().unwrap();
        assert_eq!(batch.shape, [8, 3, SIDE, SIDE]);
        let (pixels, shape) = input.convert(&batch.images, batch.shape);
        (run(&m, &pixels, &shape), batch)
    };
    let max_diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let (reference, ref_batch) = fed(Form::NchwF32);
    assert_eq!(fed(Form::NhwcF32).0, reference, "NHWC float32");
    let (u8_logits, u8_batch) = fed(Form::NhwcU8);
    let (w, _) = weights(3);
    let bound = (0..CLASSES)
        .map(|c| {
            w.iter()
                .skip(c)
                .step_by(CLASSES)
                .map(|x| x.abs())
                .sum::<f32>()
                / 255.0
        })
        .fold(0.0f32, f32::max);
    let d = max_diff(&u8_logits, &reference);
    assert!(
        d <= bound + 1e-5,
        "uint8 vs NCHW reference: max |Δ| {d:e} > {bound:e}"
    );
    // The same bytes as the uint8 model got, normalised in f32 for the NCHW reference.
    let bytes: Vec<f32> = u8_batch
        .images
        .iter()
        .map(|&v| ((v * 255.0).round() / 255.0 - 0.5) / 0.5)
        .collect();
    let same_bytes = run(
        &model(Form::NchwF32),
        &koala_data::ModelPixels::F32(bytes.into()),
        &ref_batch.shape,
    );
    let d = max_diff(&u8_logits, &same_bytes);
    assert!(
        d <= 1e-5,
        "uint8 vs NCHW reference on the same bytes: max |Δ| {d:e}"
    );
}

/// Fault 2: a run with mean = std = 0.5 exports a file that `koala eval` (no flags) scores
/// exactly as the run's final evaluation did, because the file records its preprocessing;
/// `koala export` from a checkpoint writes the same record.
#[test]
fn eval_of_an_export_uses_the_recorded_normalisation() {
    let (tmp, data) = common::scratch_with_data(8);
    let run_dir = tmp.path().join("run");
    let cfg = TrainConfig {
        num_classes: Some(CLASSES),
        epochs: 3,
        ..config(&common::tiny_model(), &data, &run_dir)
    };
    let s = koala_train::finetune(cfg).unwrap();
    let cli = eval_without_flags(&s.export, &data);
    assert_eq!(cli.accuracy, s.after.accuracy);
    assert_close(cli.loss, s.after.loss);
    let m = metadata(&s.export);
    let want = [
        (keys::VERSION, env!("CARGO_PKG_VERSION")),
        (keys::IMAGE_SIZE, "16x16"),
        (keys::RESIZE, "shorter_side=18"),
        (keys::CROP, "center=16x16"),
        (keys::INTERPOLATION, "bilinear_antialias"),
        (keys::PIXEL_SCALE, "1/255"),
        (keys::MEAN, "0.5,0.5,0.5"),
        (keys::STD, "0.5,0.5,0.5"),
        (keys::CHANNEL_ORDER, "RGB"),
        (keys::INPUT_NAME, "input"),
        (keys::INPUT_LAYOUT, "NCHW"),
        (keys::INPUT_DTYPE, "float32"),
        (
            keys::CLASSES,
            r#"["class_0","class_1","class_2","class_3"]"#,
        ),
    ];
    for (k, v) in want {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    // The ImageNet statistics eval used to apply silently give other losses: the record matters.
    let imagenet = {
        let model = Model::load(&s.export).unwrap();
        let flags = Flags {
            mean: Some(koala_data::IMAGENET_MEAN.to_vec()),
            std: Some(koala_data::IMAGENET_STD.to_vec()),
            ..Flags::default()
        };
        koala_train::eval::evaluate_classifier_file(&s.export, &model, &data, &options(flags))
            .unwrap()
            .0
    };
    assert!((imagenet.loss - s.after.loss).abs() > 1e-3, "{imagenet:?}");
    // A second fine-tuning round from the export preprocesses as the first did, unless flags
    // say otherwise.
    let mut again = TrainConfig {
        model: s.export.clone(),
        image_size: koala_train::config::ImageSize::square(224),
        ..TrainConfig::default()
    };
    meta::adopt_for_finetune(&mut again, SizesGiven::default()).unwrap();
    assert_eq!(
        (again.image_size, again.mean.clone(), again.std.clone()),
        (
            koala_train::config::ImageSize::square(16),
            Some(vec![0.5; 3]),
            Some(vec![0.5; 3])
        )
    );
    let mut flagged = TrainConfig {
        model: s.export.clone(),
        image_size: koala_train::config::ImageSize::square(32),
        std: Some(vec![0.25; 3]),
        ..TrainConfig::default()
    };
    meta::adopt_for_finetune(
        &mut flagged,
        SizesGiven {
            image_size: true,
            ..SizesGiven::default()
        },
    )
    .unwrap();
    assert_eq!(
        (flagged.image_size, flagged.mean, flagged.std),
        (
            koala_train::config::ImageSize::square(32),
            Some(vec![0.5; 3]),
            Some(vec![0.25; 3])
        )
    );
    let exported = tmp.path().join("from_checkpoint.onnx");
    koala_train::trainer::export_checkpoint(&run_dir, None, &exported).unwrap();
    let mc = metadata(&exported);
    for (k, v) in want {
        assert_eq!(
            mc.get(k).map(String::as_str),
            Some(v),
            "export from checkpoint: {k}"
        );
    }
}

/// Class folders that differ from the recorded classes are an error naming both lists.
#[test]
fn eval_refuses_data_whose_classes_differ_from_the_recorded_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model(Form::NchwF32);
    let pre = koala_data::Preprocess::plain(16, 16, 3);
    let input = ImageInput::of_model(&m).unwrap();
    meta::write(
        &mut m,
        &meta::entries(&pre, &input, &["cat".into(), "dog".into()]),
    );
    let path = save(&m, tmp.path(), "m.onnx");
    let data = tmp.path().join("data");
    for c in ["dog", "cat", "bird"] {
        std::fs::create_dir_all(data.join(c)).unwrap();
        image::RgbImage::new(16, 16)
            .save(data.join(c).join("a.png"))
            .unwrap();
    }
    let model = Model::load(&path).unwrap();
    let e = koala_train::eval::evaluate_classifier_file(
        &path,
        &model,
        &data,
        &options(Flags::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(r#"["cat", "dog"]"#) && e.contains(r#"["bird", "cat", "dog"]"#),
        "{e}"
    );
}

/// An input whose channel axis is neither axis 1 nor axis 3 is refused before training,
/// naming the input and its shape, with no `--image-size` advice that could not work.
#[test]
fn an_unsupported_layout_is_refused_naming_input_and_shape() {
    let (tmp, data) = common::scratch_with_data(2);
    let mut m = model(Form::NchwF32);
    m.graph_mut().input[0] = batched("image", DataType::Float, &[16, 16, 16]);
    let path = save(&m, tmp.path(), "m.onnx");
    let Err(e) = koala_train::finetune(config(&path, &data, &tmp.path().join("run"))) else {
        panic!("a [?, 16, 16, 16] input was accepted");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("model input 'image'") && e.contains("[?, 16, 16, 16]") && e.contains("NHWC"),
        "{e}"
    );
    assert!(!e.contains("--image-size"), "{e}");
}

/// The issue's case: a fixed `[?, 16, 16, 3]` input with the default `--image-size` (224).
/// The advice reads height and width from the NHWC axes (`--image-size 16`, not `16x3`), and
/// following it trains (`nhwc_float_model_trains_and_its_export_evaluates_alike`).
#[test]
fn the_image_size_advice_for_an_nhwc_input_names_its_height_and_width() {
    let (tmp, data) = common::scratch_with_data(2);
    for form in [Form::NhwcF32, Form::NhwcU8] {
        let path = save(&model(form), tmp.path(), "m.onnx");
        let cfg = TrainConfig {
            image_size: koala_train::config::ImageSize::square(224),
            ..config(&path, &data, &tmp.path().join("run"))
        };
        let Err(e) = koala_train::finetune(cfg) else {
            panic!("{form:?}: 224 accepted for a 16×16 input");
        };
        let e = format!("{e:#}");
        assert!(
            e.contains("takes 16×16 images")
                && e.contains("pass --image-size 16")
                && !e.contains("16x3"),
            "{form:?}: {e}"
        );
    }
}
