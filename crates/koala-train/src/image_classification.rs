//! The image-classification task: an image input (NCHW or NHWC, float32 or uint8, see
//! [`ImageInput`]), class logits, softmax cross-entropy, top-1 accuracy; the best checkpoint
//! has the highest accuracy.

use crate::config::TrainConfig;
use crate::data::{open_datasets, Datasets};
use crate::eval::{self, EvalResult, WeightsAsInputs};
use crate::image_input::ImageInput;
use crate::task::{BestMetric, DataStats, ExportCheck, Fed, Task, TaskKind, TrainCounts};
use anyhow::{bail, Context, Result};
use koala_data::{BatchIter, Cursor};
use koala_graph::classifier_output::ClassifierOutput;
use koala_graph::step::{Batch as GBatch, TrainStep};
use koala_graph::training::TrainingGraph;
use koala_graph::{LossSpec, Model, TrainableSpec, TrainingSpec};
use std::path::Path;

/// Image classification on class folders, a CSV list or IDX files.
pub struct ImageClassification {
    cfg: TrainConfig,
    data: Datasets,
    train: Option<BatchIter>,
    /// Training batches that unreadable samples made short, and the readable samples left over
    /// from the batches that filled them up.
    fill: FillCounts,
    eval: Option<WeightsAsInputs>,
    /// The model's data input (known once evaluation is prepared).
    input: Option<String>,
    /// Layout, type and channels of the model's image input: how every batch is fed.
    image: ImageInput,
    /// The output trained and the logits value the loss reads (known once
    /// the model is prepared).
    choice: Option<ClassifierOutput>,
    /// How many outputs the model has (the choice is recorded in the export when several).
    model_outputs: usize,
}

impl ImageClassification {
    /// Reads the image input of `model` and opens the training and evaluation data of `cfg`
    /// preprocessed for it.
    pub fn new(cfg: &TrainConfig, model: &Model) -> Result<ImageClassification> {
        let image = ImageInput::of_model(model)?;
        eprintln!("{}", image.describe());
        if let Some(note) = &image.note {
            eprintln!("note: {note}");
        }
        // Before the data: flags that cannot fit the input are the user's to fix first.
        check_normalisation(&image, cfg, false)?;
        Ok(ImageClassification {
            cfg: cfg.clone(),
            data: open_datasets(cfg, &image)?,
            train: None,
            fill: FillCounts::default(),
            eval: None,
            input: None,
            image,
            choice: None,
            model_outputs: model.graph().output.len(),
        })
    }
}

/// The output to train and the value its loss reads (see
/// `koala_graph::classifier_output`). The data's class count helps choose
/// among several outputs only when the head is kept: a head replaced by
/// `--num-classes` has no class count to match yet, so a run and a later
/// `koala export` of it (which has no data) choose alike.
pub fn choose_output(
    model: &Model,
    cfg: &TrainConfig,
    data_classes: Option<usize>,
) -> Result<ClassifierOutput> {
    koala_graph::classifier_output::choose(
        model,
        cfg.output.as_deref(),
        class_hint(cfg, data_classes),
    )
}

/// The class count that helps choose the output: the data's, unless `--num-classes`
/// replaces the head (see [`choose_output`]).
pub fn class_hint(cfg: &TrainConfig, data_classes: Option<usize>) -> Option<usize> {
    if cfg.num_classes.is_some() {
        None
    } else {
        data_classes
    }
}

/// The line a run prints about its output choice, when there was one to make (several
/// outputs, or a Softmax walked through to its logits).
pub fn output_choice_line(
    model: &Model,
    cfg: &TrainConfig,
    data_classes: Option<usize>,
) -> Option<String> {
    let choice = choose_output(model, cfg, data_classes).ok()?;
    (model.graph().output.len() > 1 || choice.through.is_some()).then(|| choice.describe())
}

/// Replaces the classifier head of the chosen output when `--num-classes`
/// asks for it (also used by `koala export`, which must rebuild the model the
/// run trained).
pub fn prepare_model(model: &mut Model, cfg: &TrainConfig, quiet: bool) -> Result<()> {
    if let Some(n) = cfg.num_classes {
        let choice = choose_output(model, cfg, None)?;
        let h = koala_graph::head::replace_head(model, &choice, n, cfg.seed)?;
        if !quiet {
            let shapes = if h.reshapes.is_empty() {
                String::new()
            } else {
                format!("; Reshape shape(s) {} follow", h.reshapes.join(", "))
            };
            eprintln!(
                "replaced head {} ({} → {} classes{shapes})",
                h.node, h.classes.0, h.classes.1
            );
        }
    }
    Ok(())
}

/// The training specification for `cfg` on the prepared `model`: the image input (its layout
/// and type, see [`ImageInput`]) at `--batch-size` and `--image-size`, softmax cross-entropy on
/// the logits of the chosen output ([`choose_output`]; `data_classes` helps choose among several
/// outputs), the trainable selection. Needs no data, so `koala check` runs it too
/// ([`crate::preflight`]).
pub fn training_spec(
    cfg: &TrainConfig,
    model: &Model,
    data_classes: Option<usize>,
) -> Result<TrainingSpec> {
    let image = ImageInput::of_model(model)?;
    check_normalisation(&image, cfg, true)?;
    let input = eval::data_input(model)?;
    check_image_size(&image, cfg)?;
    let shape = image.shape(cfg.batch_size, cfg.image_size.height, cfg.image_size.width);
    let choice = choose_output(model, cfg, data_classes)?;
    Ok(TrainingSpec {
        input_shapes: [(input, shape)].into_iter().collect(),
        output: Some(choice.logits.clone()),
        reported_output: Some(choice.output.clone()),
        loss: LossSpec::SoftmaxCrossEntropy {
            label_smoothing: cfg.label_smoothing,
            ignore_index: None,
        },
        trainable: TrainableSpec {
            include: cfg.train.clone(),
            exclude: cfg.freeze.clone(),
            train_constants: cfg.train_constants,
        },
        probe_threads: cfg.threads.unwrap_or(2),
        backward: koala_graph::BackwardOptions {
            target: cfg.execution_target.unwrap_or_default(),
            ..Default::default()
        },
        ..TrainingSpec::default()
    })
}

impl Task for ImageClassification {
    fn kind(&self) -> TaskKind {
        TaskKind::ImageClassification
    }

    fn class_count(&self) -> Option<usize> {
        Some(self.data.class_names.len())
    }

    fn check_graph(&mut self, graph: &TrainingGraph) -> Result<()> {
        check_classes(
            &self.data,
            class_axis(&graph.model_output_shape),
            self.cfg.num_classes.is_some(),
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.train.batches_per_epoch()
    }

    fn start_training(&mut self, from: Cursor) {
        self.train = Some(self.data.train.iter(from, u64::MAX));
    }

    fn feed(&mut self, step: &mut TrainStep) -> Result<Fed> {
        let it = self
            .train
            .as_mut()
            .context("the training stream was not started")?;
        let b = self.cfg.batch_size;
        let mut fill = FillUp::new(b);
        loop {
            let batch = it.next().context("the data loader stopped unexpectedly")?;
            if batch.shape[0] == b && fill.is_empty() {
                set_images(step, &self.image, &batch.images, batch.shape, &batch.labels)?;
                let next = batch.next;
                it.recycle(batch);
                return Ok(Fed {
                    samples: b,
                    tokens: 0,
                    next,
                });
            }
            let full = fill.add(&batch, &mut self.fill);
            let next = batch.next;
            it.recycle(batch);
            if let Some((images, shape, labels)) = full {
                set_images(step, &self.image, &images, shape, &labels)?;
                return Ok(Fed {
                    samples: b,
                    tokens: 0,
                    next,
                });
            }
        }
    }

    fn count(&self, step: &TrainStep, counts: &mut TrainCounts) {
        let logits = step.model_output();
        let Some(labels) = step.labels() else {
            return;
        };
        let classes = logits.len() / labels.len().max(1);
        for (i, &y) in labels.iter().enumerate() {
            let (_, ok) = eval::score_row(&logits[i * classes..(i + 1) * classes], y);
            counts.correct += ok as usize;
        }
        counts.scored += labels.len();
    }

    fn data_stats(&self) -> DataStats {
        let (skipped, wait_time) = self.train.as_ref().map_or((Vec::new(), 0.0), |it| {
            (
                it.stats().skipped_samples.iter().map(|s| s.index).collect(),
                it.stats().wait_time.as_secs_f64(),
            )
        });
        DataStats {
            skipped,
            wait_time,
            short_batches: self.fill.short_batches,
            unused_samples: self.fill.unused_samples,
        }
    }

    fn prepare_evaluation(
        &mut self,
        model: &Model,
        trainable: &[(String, Vec<usize>)],
    ) -> Result<()> {
        let choice = choose_output(model, &self.cfg, Some(self.data.class_names.len()))?;
        let logits = koala_graph::classifier_output::logits_model(model, &choice);
        self.choice = Some(choice);
        self.eval = Some(WeightsAsInputs::new(
            &logits,
            &self.image,
            trainable,
            self.cfg.threads,
        )?);
        self.input = Some(eval::data_input(model)?);
        Ok(())
    }

    fn evaluate(&mut self, weights: &[&[f32]]) -> Result<EvalResult> {
        self.eval
            .as_mut()
            .context("evaluation was not prepared")?
            .evaluate(weights, &self.data.eval)
    }

    fn eval_split(&self) -> &'static str {
        self.data.eval_split
    }

    fn best_metric(&self) -> BestMetric {
        BestMetric::default()
    }

    fn describe(&self, r: &EvalResult) -> String {
        format!(
            "{} loss {:.4}, top-1 {:.2}%",
            self.data.eval_split,
            r.loss,
            100.0 * r.accuracy
        )
    }

    fn check_export(&mut self, path: &Path, step: &mut TrainStep) -> Result<ExportCheck> {
        self.input.as_ref().context("evaluation was not prepared")?;
        // One ORT session of the written file serves the check and the evaluation.
        let opts = koala_runtime::SessionOptions {
            intra_threads: self.cfg.threads,
            ..Default::default()
        };
        let choice = self.choice()?.clone();
        let mut s = koala_runtime::Session::from_file(path, &opts)?;
        let (max_diff, tract) =
            verify_export(path, &mut s, &self.image, &choice.output, step, &self.data)?;
        // Scored like every evaluation of the run: on the logits value of the
        // written file (its Softmax, if any, left out).
        let written = Model::load(path)?;
        let mut ls = eval::logits_session(path, &written, &choice, &opts)?;
        let eval = eval::evaluate_session(&mut ls, &self.image, &self.data.eval)?;
        Ok(ExportCheck {
            max_diff,
            tract,
            eval,
        })
    }

    fn export_metadata(&self) -> Vec<(String, String)> {
        let mut entries = crate::preprocess_metadata::entries(
            &crate::data::preprocess(&self.cfg, &self.image, false),
            &self.image,
            &self.data.class_names,
        );
        if let Some(choice) = &self.choice {
            entries.extend(crate::preprocess_metadata::output_entry(
                self.model_outputs,
                choice,
            ));
        }
        entries.push(crate::preprocess_metadata::exif_orientation_entry(
            crate::data::read_options(&self.cfg),
        ));
        entries
    }
}

/// Largest |difference| between the exported file's output (ORT) and the
/// training graph's model output on the first evaluation batch, and between
/// tract's and ORT's outputs on the exported file (or why tract failed).
///
/// The training graph has a fixed batch size; an evaluation batch that is
/// shorter (a small split, unreadable samples) is filled up by repeating its
/// rows, and only its own rows are compared, so the export is always
/// verified (rows are independent in an inference-mode classifier).
fn verify_export(
    path: &Path,
    exported_session: &mut koala_runtime::Session,
    input: &ImageInput,
    output: &str,
    step: &mut TrainStep,
    data: &Datasets,
) -> Result<(f64, std::result::Result<f64, String>)> {
    let b = step.graph().label_shape[0];
    let mut it = data.eval.iter(Cursor::new(0, 0), 1);
    let batch = it
        .next()
        .context("the evaluation split has no readable sample to verify the export with")?;
    let n = batch.shape[0];
    let per = batch.images.len() / n;
    let images: Vec<f32> = (0..b)
        .flat_map(|i| &batch.images[(i % n) * per..(i % n + 1) * per])
        .copied()
        .collect();
    let labels: Vec<i64> = (0..b).map(|i| batch.labels[i % n]).collect();
    let mut train_shape = batch.shape;
    train_shape[0] = b;
    set_images(step, input, &images, train_shape, &labels)?;
    step.run()?;
    let (pixels, shape) = input.convert(&batch.images, batch.shape);
    let out = exported_session.run(&[(
        input.name.as_str(),
        crate::image_input::view(&pixels, &shape),
    )])?;
    let index = exported_session
        .outputs()
        .iter()
        .position(|o| o.name == output)
        .with_context(|| {
            format!(
                "the exported model '{}' has no output '{output}'",
                path.display()
            )
        })?;
    let exported = out[index]
        .as_f32()
        .context("exported model output is not float32")?;
    let per_row = step.model_output().len() / b;
    if exported.len() != n * per_row {
        bail!("the exported model '{}' returned {} values for {n} images; the training graph gives {per_row} per image", path.display(), exported.len());
    }
    let ours = &step.model_output()[..n * per_row];
    let tract = crate::tract_check::output(path, index, &shape, &pixels)
        .map(|t| crate::tract_check::max_abs_diff(&t, exported))
        .map_err(|e| tract_limit_or_error(&format!("{e:#}")));
    Ok((crate::tract_check::max_abs_diff(exported, ours), tract))
}

/// tract's error for the exported file, or, when tract does not implement one
/// of the file's ops (`Unimplemented(Upsample)`: old opsets), "not run: …",
/// which the summary prints as a note: the op is the user's own, so the
/// original file has the same limit, and ONNX Runtime's reload is the check.
fn tract_limit_or_error(e: &str) -> String {
    let op = e
        .split("Unimplemented(")
        .nth(1)
        .and_then(|rest| rest.split(')').next());
    match op {
        Some(op) => format!("not run: tract does not implement {op}, an op of the original model too (a limit of tract, not of the export; the ONNX Runtime reload above is the check)"),
        None => e.to_string(),
    }
}

impl ImageClassification {
    /// The output choice made in `prepare_model`.
    fn choice(&self) -> Result<&ClassifierOutput> {
        self.choice
            .as_ref()
            .context("the model's output was not chosen yet")
    }
}

/// A model with a fixed input resolution needs `--image-size` to match it;
/// say so up front instead of failing inside the graph builder. (The height and
/// width come from the axes of the detected layout, so the advice always fits.)
fn check_image_size(image: &ImageInput, cfg: &TrainConfig) -> Result<()> {
    image.check_size(cfg.image_size, "--image-size")
}

/// `--mean`/`--std` need one value per channel of the input (a greyscale model takes one);
/// for a uint8 input they do not apply, which the log says.
fn check_normalisation(image: &ImageInput, cfg: &TrainConfig, quiet: bool) -> Result<()> {
    for (flag, v) in [("--mean", &cfg.mean), ("--std", &cfg.std)] {
        let Some(v) = v else { continue };
        if !image.normalised_by_koala() {
            if !quiet {
                eprintln!("note: {flag} is ignored: input '{}' is uint8, so koala feeds raw 0–255 pixels and the model normalises them", image.name);
            }
        } else if v.len() != image.channels {
            bail!(
                "{flag} has {} values but model input '{}' has {} channel(s); pass {flag} with {} value(s)",
                v.len(),
                image.name,
                image.channels,
                image.channels
            );
        }
    }
    Ok(())
}

/// Writes NCHW float32 loader `images` of `shape` into the training graph's data input in
/// the model's layout and type, and the labels.
/// Counts of [`FillUp`] over a run segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillCounts {
    /// Batches that arrived with fewer rows than the batch size, each counted once.
    pub short_batches: usize,
    /// Readable rows of the last batch used to fill up a short one, beyond the batch size.
    pub unused_samples: usize,
}

/// Builds one full training batch out of short ones. The training graph has a fixed batch size;
/// a batch that unreadable samples made short used to be thrown away, so with many unreadable
/// files almost every batch was (143 dropped for 20 steps with 4 of 10 files unreadable and
/// batches of 4). Now the rows of consecutive batches are joined until there are enough; the
/// rest of the last one is left over, so the step ends on a batch boundary and a resumed run
/// (which starts at the next batch's cursor) sees exactly the same batches.
pub struct FillUp {
    batch_size: usize,
    images: Vec<f32>,
    labels: Vec<i64>,
}

impl FillUp {
    pub fn new(batch_size: usize) -> FillUp {
        FillUp {
            batch_size,
            images: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Whether no row is collected yet.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Adds the rows of `batch` (counting it in `counts` if it is short); returns the full batch
    /// (images, shape, labels) once there are `batch_size` rows.
    pub fn add(
        &mut self,
        batch: &koala_data::Batch,
        counts: &mut FillCounts,
    ) -> Option<(Vec<f32>, [usize; 4], Vec<i64>)> {
        let rows = batch.shape[0];
        if rows < self.batch_size {
            counts.short_batches += 1;
        }
        let per = batch.images.len() / rows.max(1);
        let take = (self.batch_size - self.labels.len()).min(rows);
        self.images.extend_from_slice(&batch.images[..take * per]);
        self.labels.extend_from_slice(&batch.labels[..take]);
        if self.labels.len() < self.batch_size {
            return None;
        }
        counts.unused_samples += rows - take;
        let mut shape = batch.shape;
        shape[0] = self.batch_size;
        Some((
            std::mem::take(&mut self.images),
            shape,
            std::mem::take(&mut self.labels),
        ))
    }
}

fn set_images(
    step: &mut TrainStep,
    image: &ImageInput,
    images: &[f32],
    shape: [usize; 4],
    labels: &[i64],
) -> Result<()> {
    let (pixels, _) = image.convert(images, shape);
    let data = match &pixels {
        koala_data::ModelPixels::F32(v) => GBatch::F32(v),
        koala_data::ModelPixels::U8(v) => GBatch::U8(v),
    };
    step.set_batch(&[data], GBatch::I64(labels))
}

/// The number of class scores in an output of `shape`: its last axis, or axis 1 of a conv
/// head's pooled `[N, C, 1, 1]` map (SqueezeNet, DenseNet).
fn class_axis(shape: &[usize]) -> usize {
    match shape {
        [_, c, rest @ ..] if !rest.is_empty() && rest.iter().all(|&d| d == 1) => *c,
        _ => shape.last().copied().unwrap_or(0),
    }
}

/// The data's classes must fit the model's outputs; say which flag fixes it
/// before any training (a label past the last output would only fail, less
/// clearly, inside ONNX Runtime).
fn check_classes(data: &Datasets, outputs: usize, replaced: bool) -> Result<()> {
    let classes = data.class_names.len();
    if classes > outputs {
        bail!(
            "the data has {classes} classes but the model {} {outputs} outputs; pass --num-classes {classes}",
            if replaced { "was given" } else { "has" }
        );
    }
    if classes < outputs && !replaced {
        eprintln!(
            "note: the data has {classes} classes and the model {outputs} outputs; labels are used as output indices. Pass --num-classes {classes} to train a fresh {classes}-way head instead"
        );
    }
    Ok(())
}

#[cfg(test)]
mod fill_up_tests {
    use super::*;
    use koala_data::Batch;

    /// A batch of `rows` one-value images whose pixels and labels are `first..first + rows`.
    fn batch(first: usize, rows: usize) -> Batch {
        let v: Vec<usize> = (first..first + rows).collect();
        Batch {
            images: v.iter().map(|&i| i as f32).collect(),
            labels: v.iter().map(|&i| i as i64).collect(),
            indices: v,
            shape: [rows, 1, 1, 1],
            cursor: Cursor::new(0, 0),
            next: Cursor::new(0, 1),
        }
    }

    #[test]
    fn short_batches_are_joined_counted_once_and_the_rest_is_left_over() {
        let mut counts = FillCounts::default();
        let mut fill = FillUp::new(4);
        // 2 + 1 rows: still short; + 3 rows: full with 1 row left over.
        assert!(fill.add(&batch(0, 2), &mut counts).is_none());
        assert!(fill.add(&batch(10, 1), &mut counts).is_none());
        let (images, shape, labels) = fill.add(&batch(20, 3), &mut counts).unwrap();
        assert_eq!(labels, vec![0, 1, 10, 20]);
        assert_eq!(images, vec![0.0, 1.0, 10.0, 20.0]);
        assert_eq!(shape, [4, 1, 1, 1]);
        assert_eq!(
            counts,
            FillCounts {
                short_batches: 3,
                unused_samples: 2
            }
        );
        // A full batch completing a short one is not short itself.
        assert!(fill.is_empty());
        assert!(fill.add(&batch(30, 3), &mut counts).is_none());
        let (_, _, labels) = fill.add(&batch(40, 4), &mut counts).unwrap();
        assert_eq!(labels, vec![30, 31, 32, 40]);
        assert_eq!(
            counts,
            FillCounts {
                short_batches: 4,
                unused_samples: 5
            }
        );
    }
}

#[cfg(test)]
mod tract_limit_tests {
    use super::tract_limit_or_error;

    /// An opset-9 export keeps the user's Upsample, which tract does not implement: a note
    /// naming the op (the summary prints "not run: …" as such), not a warning that reads as a
    /// broken export. Any other tract failure stays as it was.
    #[test]
    fn an_op_tract_lacks_is_a_note_naming_it() {
        let e = "tract could not run 'm.onnx': Translating node #3 \"up\" Unimplemented(Upsample) ToTypedTranslator";
        let note = tract_limit_or_error(e);
        assert!(
            note.starts_with(
                "not run: tract does not implement Upsample, an op of the original model too"
            ),
            "{note}"
        );
        let other = "tract could not run 'm.onnx': shape mismatch";
        assert_eq!(tract_limit_or_error(other), other);
    }
}
