//! Evaluation: the inference model run by ONNX Runtime on the evaluation
//! split (loss and top-1 accuracy).
//!
//! During training, [`WeightsAsInputs`] holds one session of the *evaluation
//! graph*: the inference model with its trainable initializers turned into
//! graph inputs, so each evaluation binds the current weights as inputs
//! instead of re-serialising the model and opening a new session (which cost
//! seconds and a second copy of the model per evaluation). The graph is the
//! exported form of the model (not the training graph), so evaluations
//! measure what the user will ship; the export itself is still checked in a
//! fresh session of the written file.

use crate::image_input::ImageInput;
use anyhow::{bail, Context, Result};
use koala_data::{Cursor, Loader};
use koala_graph::proto::DataType;
use koala_graph::Model;
use koala_runtime::{Session, SessionOptions, TensorView};

/// Loss and accuracy over a split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: usize,
}

impl EvalResult {
    /// A metric by name: `loss`, `accuracy`, or `perplexity` (exp of the mean loss, the LM
    /// convention). The best-checkpoint metric is looked up here.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "accuracy" => Some(self.accuracy),
            "perplexity" => Some(self.loss.exp()),
            _ => None,
        }
    }
}

/// The model's data input name (its only graph input that is not an initializer).
///
/// koala feeds one image batch; a second graph input (e.g. `scale[batch,1]`) would have no
/// value, and ONNX Runtime would only say it is missing. It is refused here, naming the
/// extra input(s) and what to do.
pub fn data_input(model: &Model) -> Result<String> {
    let g = model.graph();
    let data: Vec<&str> = g
        .input
        .iter()
        .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
        .map(|i| i.name.as_str())
        .collect();
    match data.as_slice() {
        [] => anyhow::bail!("{} has no data input", model.display_name()),
        [one] => Ok(one.to_string()),
        [first, extra @ ..] => anyhow::bail!(
            "{} has {} graph inputs but koala feeds an image classifier one image input ('{first}'); it has no values for {}. Export the model with the image as its only input, or fold the extra input(s) into constants (an initializer of the same name holding the value)",
            model.display_name(),
            data.len(),
            extra
                .iter()
                .map(|e| format!("'{e}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Cross-entropy and correctness of one row of logits.
pub fn score_row(row: &[f32], label: i64) -> (f64, bool) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&z| (z as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let arg = crate::generate::argmax(row);
    (lse - row[label as usize] as f64, arg as i64 == label)
}

/// An ORT session of the classifier at `path` (loaded as `model`) whose only
/// output is the logits value `choice` names: what the training loss reads,
/// so evaluation scores cross-entropy from logits even when the file ends in
/// Softmax or has several outputs. A model whose only output already is its
/// logits is opened from its file as is.
pub fn logits_session(
    path: &std::path::Path,
    model: &Model,
    choice: &koala_graph::classifier_output::ClassifierOutput,
    opts: &SessionOptions,
) -> Result<Session> {
    let g = model.graph();
    if g.output.len() == 1 && g.output[0].name == choice.logits {
        return Ok(Session::from_file(path, opts)?);
    }
    let logits = koala_graph::classifier_output::logits_model(model, choice);
    Session::from_bytes(&logits.to_bytes(), opts).with_context(|| {
        format!(
            "ONNX Runtime could not load '{}' with its logits '{}' as the output",
            path.display(),
            choice.logits
        )
    })
}

/// Evaluates an ORT session of the inference model on every batch of `loader`, fed to the
/// image `input` in its layout and type (the same conversion training uses).
pub fn evaluate_session(
    session: &mut Session,
    input: &ImageInput,
    loader: &Loader,
) -> Result<EvalResult> {
    evaluate_with_inputs(session, input, &[], loader)
}

/// [`evaluate_session`] with `extra` inputs (the weights of the evaluation graph) fed with
/// every batch.
fn evaluate_with_inputs(
    session: &mut Session,
    input: &ImageInput,
    extra: &[(&str, TensorView)],
    loader: &Loader,
) -> Result<EvalResult> {
    let fixed_batch = fixed_batch_size(session, &input.name);
    let (mut loss, mut correct, mut n) = (0.0, 0usize, 0usize);
    let mut it = loader.iter(Cursor::new(0, 0), 1);
    while let Some(batch) = it.next() {
        let rows = batch.shape[0];
        let per = batch.images.len() / rows.max(1);
        // A model exported with a fixed batch size gets the batch in pieces of
        // that size (the last one filled up by repeating its final row, which
        // is not scored).
        let piece = fixed_batch.unwrap_or(rows).max(1);
        for start in (0..rows).step_by(piece) {
            let real = piece.min(rows - start);
            let images: std::borrow::Cow<[f32]> = if piece == rows {
                (&batch.images[..]).into()
            } else {
                (0..piece)
                    .flat_map(|i| {
                        let r = start + i.min(real - 1);
                        &batch.images[r * per..(r + 1) * per]
                    })
                    .copied()
                    .collect::<Vec<f32>>()
                    .into()
            };
            let mut shape = batch.shape;
            shape[0] = piece;
            let (pixels, shape) = input.convert(&images, shape);
            let mut feeds = Vec::with_capacity(1 + extra.len());
            feeds.push((
                input.name.as_str(),
                crate::image_input::view(&pixels, &shape),
            ));
            feeds.extend_from_slice(extra);
            let out = session.run(&feeds)?;
            let logits = out[0].as_f32().context("the model output is not float32")?;
            let classes = logits.len() / piece;
            for (i, &y) in batch.labels[start..start + real].iter().enumerate() {
                if y < 0 || y as usize >= classes {
                    bail!("{}", label_out_of_range(y, classes, loader));
                }
                let (l, ok) = score_row(&logits[i * classes..(i + 1) * classes], y);
                loss += l;
                correct += ok as usize;
            }
        }
        n += rows;
        it.recycle(batch);
    }
    if n == 0 {
        bail!("the evaluation split is empty");
    }
    Ok(EvalResult {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        samples: n,
    })
}

/// Why a label does not fit the model, and what works: evaluation scores a
/// model as it is (it has no `--num-classes`; a fresh head would be
/// untrained), so the remedy is a fine-tuning run whose export has the
/// data's classes.
fn label_out_of_range(label: i64, outputs: usize, loader: &Loader) -> String {
    let classes = loader.source().class_names().len();
    format!(
        "the data has {classes} classes (label {label} here) but the model has {outputs} outputs, so it cannot be scored on them. Fine-tune it on this data first with `koala finetune --num-classes {classes} ...` and evaluate the model that run exports (<run-dir>/model.onnx), or evaluate on data with at most {outputs} classes"
    )
}

/// The batch size the model's data input is fixed to, if it is.
fn fixed_batch_size(session: &Session, input: &str) -> Option<usize> {
    let info = session.inputs().iter().find(|i| i.name == input)?;
    match info.dims.first() {
        Some(koala_runtime::Dim::Fixed(d)) => Some(*d),
        _ => None,
    }
}

/// One ORT session of the evaluation graph (the model with its trainable initializers as
/// inputs; image classifiers pass the model with its logits as the only output, see
/// `koala_graph::classifier_output::logits_model`), made once per run; [`WeightsAsInputs::evaluate`] binds the current weights.
pub struct WeightsAsInputs {
    session: Session,
    input: ImageInput,
    weights: Vec<(String, Vec<usize>)>,
}

impl WeightsAsInputs {
    /// Builds the evaluation graph of `model` for the trainable tensors `(name, shape)` and
    /// opens its session.
    pub fn new(
        model: &Model,
        input: &ImageInput,
        trainable: &[(String, Vec<usize>)],
        threads: Option<usize>,
    ) -> Result<WeightsAsInputs> {
        let graph = eval_graph(model, trainable)?;
        let opts = SessionOptions {
            intra_threads: threads,
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&graph.to_bytes(), &opts)
            .context("ONNX Runtime could not load the evaluation graph (the model with its trainable weights as inputs)")?;
        Ok(WeightsAsInputs {
            session,
            input: input.clone(),
            weights: trainable.to_vec(),
        })
    }

    /// Evaluates the model with `weights` (one buffer per trainable tensor, in the order given
    /// to [`new`](Self::new)) on every batch of `loader`.
    pub fn evaluate(&mut self, weights: &[&[f32]], loader: &Loader) -> Result<EvalResult> {
        if weights.len() != self.weights.len() {
            bail!(
                "the evaluation graph takes {} weight tensors, got {}",
                self.weights.len(),
                weights.len()
            );
        }
        let extra: Vec<(&str, TensorView)> = self
            .weights
            .iter()
            .zip(weights)
            .map(|((name, shape), w)| (name.as_str(), TensorView::f32(w, shape)))
            .collect();
        evaluate_with_inputs(&mut self.session, &self.input, &extra, loader)
    }
}

/// The model with the named tensors (initializers, or outputs of Constant nodes with
/// `--train-constants`) removed from the graph and declared as float32 graph inputs of their
/// shape. Everything else, including the data input's first position, is unchanged.
pub fn eval_graph(model: &Model, trainable: &[(String, Vec<usize>)]) -> Result<Model> {
    let names: std::collections::HashSet<&str> =
        trainable.iter().map(|(n, _)| n.as_str()).collect();
    // The trainable tensors' data is not copied: a full fine-tune's evaluation graph then
    // holds no weights at all.
    let mut out = model.clone_without_initializers(|t| names.contains(t.name.as_str()));
    let present: std::collections::HashSet<&str> = model
        .graph()
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let g = out.graph_mut();
    for (name, shape) in trainable {
        let nodes = g.node.len();
        g.node
            .retain(|n| !(n.op_type == "Constant" && n.output.first() == Some(name)));
        if !present.contains(name.as_str()) && g.node.len() == nodes {
            bail!("the model has no initializer or Constant node named '{name}' to turn into an evaluation input");
        }
        // Models from before IR 4 also list initializers among the inputs.
        g.input.retain(|i| &i.name != name);
        g.input.push(koala_graph::training::value_info(
            name,
            DataType::Float,
            shape,
        ));
    }
    Ok(out)
}

/// Evaluates `model` with `weights` written into it (a fresh session; for one-off evaluations).
pub fn evaluate(
    model: &Model,
    weights: &[(&str, &[f32])],
    loader: &Loader,
    threads: Option<usize>,
) -> Result<EvalResult> {
    let m = koala_graph::export::with_weights(model, weights.iter().copied())?;
    let opts = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    let mut s = Session::from_bytes(&m.to_bytes(), &opts)
        .context("ONNX Runtime could not load the model for evaluation")?;
    evaluate_session(&mut s, &ImageInput::of_model(model)?, loader)
}

/// The output a koala export records as trained (`koala.output`), when the file still has it;
/// `--output` overrides it.
fn recorded_output<'a>(
    recorded: &'a crate::preprocess_metadata::Recorded,
    model: &Model,
) -> Option<&'a str> {
    let o = recorded.output.as_deref()?;
    if model.graph().output.iter().any(|g| g.name == o) {
        eprintln!("output: '{o}' (model metadata koala.output)");
        Some(o)
    } else {
        eprintln!("warning: ignoring the model's metadata koala.output = '{o}': the model has no such output");
        None
    }
}

/// The options of `koala eval` for an image classifier.
#[derive(Clone, Debug, Default)]
pub struct ClassifierEvalOptions {
    /// Preprocessing flags (each overrides the file's metadata).
    pub flags: crate::preprocess_metadata::Flags,
    /// The output to score, for a model with several (`--output`).
    pub output: Option<String>,
    /// Images per batch.
    pub batch_size: usize,
    /// ONNX Runtime threads.
    pub threads: Option<usize>,
}

/// `koala eval` for an image classifier: evaluates the file at `path` (loaded as `model`) on
/// every sample of `data` (an IDX folder's t10k split), in order, without augmentation.
///
/// The preprocessing (and the EXIF orientation choice) is resolved flag > the file's `koala.*`
/// metadata > default and reported
/// on stderr in one line with each setting's source, and the batches go through the same
/// layout/type conversion as training. Class names recorded in the file must match the
/// data's class folders. Returns the result, the number of unreadable files skipped and the
/// folder evaluated (`data/val` when `data` holds split folders).
pub fn evaluate_classifier_file(
    path: &std::path::Path,
    model: &Model,
    data: &std::path::Path,
    o: &ClassifierEvalOptions,
) -> Result<(EvalResult, usize, std::path::PathBuf)> {
    use crate::preprocess_metadata as meta;
    let (flags, output) = (&o.flags, o.output.as_deref());
    let (batch_size, threads) = (o.batch_size, o.threads);
    let input = ImageInput::of_model(model)?;
    let recorded = meta::Recorded::of_model(model);
    let resolved = meta::resolve(flags, &recorded, &input)?;
    let setting = match resolved.image_size.1 {
        meta::Source::Metadata => {
            "the image size recorded in its metadata (koala.preprocess.image_size)"
        }
        _ => "--image-size",
    };
    input.check_size(resolved.image_size.0, setting)?;
    eprintln!("{}", input.describe());
    if let Some(note) = &input.note {
        eprintln!("note: {note}");
    }
    eprintln!("{}", resolved.describe());
    let cfg = crate::TrainConfig {
        image_size: resolved.image_size.0,
        mean: Some(resolved.mean.0).filter(|m| !m.is_empty()),
        std: Some(resolved.std.0).filter(|s| !s.is_empty()),
        ..crate::TrainConfig::default()
    };
    let (loader, unreadable, evaluated) = crate::data::open_eval_data(
        data,
        resolved.read.0,
        crate::data::preprocess(&cfg, &input, false),
        batch_size,
        recorded.class_names.as_deref(),
    )?;
    let opts = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    // Scored on the logits the loss of a run reads (a final Softmax left out): cross-entropy
    // from logits, accuracy from their arg-max.
    let classes = loader.source().class_names().len();
    let given = output.is_some();
    let output = output.or_else(|| recorded_output(&recorded, model));
    let mut choice = koala_graph::classifier_output::choose(model, output, Some(classes))?;
    if !given && output.is_some() {
        choice.reason = "recorded in the file's koala.output".into();
    }
    if model.graph().output.len() > 1 || choice.through.is_some() {
        eprintln!("{}", choice.describe_scoring());
    }
    let mut s = logits_session(path, model, &choice, &opts).with_context(|| {
        format!(
            "ONNX Runtime cannot load '{}' for evaluation (`koala check {}` reports what koala finds in it)",
            path.display(),
            path.display()
        )
    })?;
    let r = evaluate_session(&mut s, &input, &loader)?;
    Ok((
        r,
        unreadable.load(std::sync::atomic::Ordering::Relaxed),
        evaluated,
    ))
}
