//! What differs between fine-tuning tasks, behind one trait, so the loop, the gradient
//! pipeline, the optimizer groups, checkpoints and metrics files are shared (DESIGN.md
//! "Language models": one loop, several tasks; the split follows HF `Trainer`'s
//! `compute_metrics` / `metric_for_best_model` + `greater_is_better`).
//!
//! Model preparation (a new head, later LoRA) and the [`koala_graph::TrainingSpec`] (inputs,
//! loss, trainable set) need no data: they live in [`crate::preflight`], which `koala check`
//! runs too. A [`Task`] owns the data and how a batch is fed to the training graph, the metrics
//! read from a step's outputs, evaluation, the best-checkpoint metric and its direction, and
//! the check of the exported file.
//!
//! Tasks: [`crate::image_classification::ImageClassification`]; `CausalLm` plugs in through
//! [`create`] (its slot returns a "not wired yet" error until the causal-LM loss and the text
//! data land).

use crate::config::TrainConfig;
use crate::eval::EvalResult;
use anyhow::{bail, Result};
use koala_data::Cursor;
use koala_graph::step::TrainStep;
use koala_graph::training::TrainingGraph;
use koala_graph::Model;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The fine-tuning tasks koala knows (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Images → class logits, softmax cross-entropy, top-1 accuracy.
    ImageClassification,
    /// Token ids → next-token logits, causal-LM cross-entropy, perplexity.
    CausalLm,
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskKind::ImageClassification => "image-classification",
            TaskKind::CausalLm => "causal-lm",
        })
    }
}

/// The task a model's inputs ask for: an int64 `input_ids` input (the HF name of token ids)
/// means a causal LM, anything else an image classifier. `--task` overrides it.
pub fn detect(model: &Model) -> TaskKind {
    if koala_graph::lm_signature::is_language_model(model) {
        TaskKind::CausalLm
    } else {
        TaskKind::ImageClassification
    }
}

/// Whether a larger or a smaller value of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Larger is better (accuracy).
    #[default]
    Higher,
    /// Smaller is better (loss, perplexity).
    Lower,
}

/// The evaluation metric that picks the best checkpoint, and its direction (HF
/// `metric_for_best_model` + `greater_is_better`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BestMetric {
    /// A name [`EvalResult::metric`] knows: `accuracy`, `loss` or `perplexity`.
    pub name: String,
    /// Which way is better.
    pub direction: Direction,
}

impl Default for BestMetric {
    /// Top-1 accuracy, higher is better: what `best` meant in checkpoints written before the
    /// metric was recorded with it.
    fn default() -> Self {
        BestMetric {
            name: "accuracy".into(),
            direction: Direction::Higher,
        }
    }
}

impl BestMetric {
    /// Whether `new` beats `old` (a tie keeps the earlier checkpoint).
    pub fn improves(&self, new: f64, old: f64) -> bool {
        match self.direction {
            Direction::Higher => new > old,
            Direction::Lower => new < old,
        }
    }

    /// This metric's value in an evaluation.
    pub fn value(&self, r: &EvalResult) -> Result<f64> {
        match r.metric(&self.name) {
            Some(v) => Ok(v),
            None => bail!(
                "unknown best-checkpoint metric '{}': use accuracy, loss or perplexity",
                self.name
            ),
        }
    }
}

/// What one fed batch held.
#[derive(Clone, Copy, Debug)]
pub struct Fed {
    /// Samples (images, sequences).
    pub samples: usize,
    /// Tokens that count for the loss (0 for tasks without tokens).
    pub tokens: usize,
    /// Data position after this batch (saved in checkpoints).
    pub next: Cursor,
}

/// Task metrics summed over the training steps of one logging window.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainCounts {
    /// Correct predictions (images, or tokens for an LM).
    pub correct: usize,
    /// Predictions scored (the denominator of accuracy).
    pub scored: usize,
}

impl TrainCounts {
    /// Accuracy over the window, `None` when nothing was scored.
    pub fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }
}

/// The export check's findings (see [`Task::check_export`]).
#[derive(Clone, Debug)]
pub struct ExportCheck {
    /// Largest |difference| between the written file's outputs (reloaded by ORT) and the
    /// training graph's model output on one batch.
    pub max_diff: f64,
    /// The same batch through tract: its largest |difference| from ORT, or why it could not run.
    pub tract: std::result::Result<f64, String>,
    /// Evaluation of the written file in its own ORT session.
    pub eval: EvalResult,
}

/// Data statistics of a training segment.
#[derive(Clone, Debug, Default)]
pub struct DataStats {
    /// Training-source indices of the unreadable samples skipped in this segment, each once however many
    /// epochs met it (the trainer merges them with earlier segments' so a resumed run counts a file once).
    pub skipped: Vec<usize>,
    /// Seconds the loop waited for data.
    pub wait_time: f64,
    /// Training batches that unreadable samples made short (each counted once; each was filled
    /// up with the samples of the batches after it).
    pub short_batches: usize,
    /// Readable samples of the batches that filled up short ones and were left over (not trained
    /// on in that epoch; the next step starts at the next batch so a resumed run sees the same).
    pub unused_samples: usize,
}

/// A fine-tuning task: everything the shared loop does not know.
///
/// The loop calls, after [`crate::preflight::run`] built the training graph:
/// [`check_graph`](Task::check_graph), [`prepare_evaluation`](Task::prepare_evaluation), then per step
/// [`feed`](Task::feed) for each micro-batch followed by [`count`](Task::count), and at its
/// intervals [`evaluate`](Task::evaluate); [`check_export`](Task::check_export) at the end.
pub trait Task {
    /// Which task this is.
    fn kind(&self) -> TaskKind;

    /// The number of classes in the data, for a classification task (it helps choose the
    /// model output to train when there are several).
    fn class_count(&self) -> Option<usize> {
        None
    }

    /// Checks the built graph against the data (e.g. classes vs outputs) before training.
    fn check_graph(&mut self, graph: &TrainingGraph) -> Result<()>;

    /// Full batches in one epoch of the training data.
    fn batches_per_epoch(&self) -> usize;

    /// Starts (or restarts, on resume) the training stream at `from`.
    fn start_training(&mut self, from: Cursor);

    /// Writes the next training batch (data inputs and labels) into the step's buffers.
    fn feed(&mut self, step: &mut TrainStep) -> Result<Fed>;

    /// Adds the task's metrics of the step just run (its outputs are in `step`) to `counts`.
    fn count(&self, step: &TrainStep, counts: &mut TrainCounts);

    /// Statistics of the training stream so far in this segment.
    fn data_stats(&self) -> DataStats;

    /// Builds what evaluation needs once (the evaluation graph and its session), for the
    /// prepared model and the trainable tensors `(name, shape)`.
    fn prepare_evaluation(
        &mut self,
        model: &Model,
        trainable: &[(String, Vec<usize>)],
    ) -> Result<()>;

    /// Evaluates the current `weights` (trainable order, as given to `prepare_evaluation`).
    fn evaluate(&mut self, weights: &[&[f32]]) -> Result<EvalResult>;

    /// Name of the evaluation split in logs and metrics.jsonl ("test", "val").
    fn eval_split(&self) -> &'static str;

    /// The metric that picks the best checkpoint.
    fn best_metric(&self) -> BestMetric;

    /// One line describing an evaluation in the log.
    fn describe(&self, r: &EvalResult) -> String;

    /// Verifies the exported file at `path` in a fresh session of the written file against
    /// the training graph (`step`, with the final weights), and evaluates it.
    fn check_export(&mut self, path: &Path, step: &mut TrainStep) -> Result<ExportCheck>;

    /// `(key, value)` entries the export writes into the file's `metadata_props` (the
    /// preprocessing an image classifier needs, see `preprocess_metadata`); none by default.
    fn export_metadata(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The task kind for `cfg`: `cfg.task`, else detected from the model's inputs.
pub fn create_kind(cfg: &TrainConfig, model: &Model) -> TaskKind {
    cfg.task.unwrap_or_else(|| detect(model))
}

/// The task for `cfg` (`cfg.task`, else detected from the model's inputs).
pub fn create(cfg: &TrainConfig, model: &Model) -> Result<Box<dyn Task>> {
    match create_kind(cfg, model) {
        TaskKind::ImageClassification => Ok(Box::new(
            crate::image_classification::ImageClassification::new(cfg, model)?,
        )),
        TaskKind::CausalLm => Ok(Box::new(crate::causal_lm::CausalLm::new(cfg, model)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_metric_direction_decides_what_improves() {
        let acc = BestMetric::default();
        assert!(acc.improves(0.9, 0.8) && !acc.improves(0.8, 0.9) && !acc.improves(0.8, 0.8));
        let loss = BestMetric {
            name: "loss".into(),
            direction: Direction::Lower,
        };
        assert!(loss.improves(1.0, 2.0) && !loss.improves(2.0, 1.0) && !loss.improves(1.0, 1.0));
        let r = EvalResult {
            loss: 2.0,
            accuracy: 0.5,
            samples: 4,
        };
        assert_eq!(loss.value(&r).unwrap(), 2.0);
        assert_eq!(acc.value(&r).unwrap(), 0.5);
        let bad = BestMetric {
            name: "f1".into(),
            direction: Direction::Higher,
        };
        assert!(format!("{}", bad.value(&r).unwrap_err()).contains("'f1'"));
    }

    #[test]
    fn task_kinds_read_as_the_cli_spells_them() {
        #[derive(Deserialize)]
        struct T {
            task: TaskKind,
        }
        let t: T = toml::from_str("task = \"causal-lm\"").unwrap();
        assert_eq!(t.task, TaskKind::CausalLm);
        assert_eq!(
            TaskKind::ImageClassification.to_string(),
            "image-classification"
        );
    }
}
