//! The fine-tuning configuration: every CLI option, also settable in a TOML
//! file. The resolved configuration is written to the run directory
//! (`config.toml`) so a run can be reproduced and resumed.

pub use crate::image_size::ImageSize;
use crate::schedule::ScheduleKind;
pub use crate::task::TaskKind;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the training data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Detect: IDX files in a folder, a .csv file, or class subfolders.
    #[default]
    Auto,
    /// IDX (MNIST/Fashion-MNIST) `train-*`/`t10k-*` files in a folder.
    Idx,
    /// One subfolder per class.
    Folder,
    /// `path,label` lines.
    Csv,
}

/// What V (the "loss variance") KOALA++ gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossVar {
    /// mean(lᵢ²) of the per-sample losses (original KOALA loop); the default.
    #[default]
    SecondMoment,
    /// L², the square of the batch-mean loss (the KOALA++ vision scripts).
    Square,
    /// The per-sample variance mean(lᵢ²) − L² (clamped at 0): what the name "loss variance"
    /// says, used by none of the published loops (koala-spec §2.4).
    Variance,
    /// Exactly 0: what the KOALA++ language-model scripts pass (`mean(L²) − L²` of a scalar
    /// loss, koala-spec §2.4), so R decays as 0.9ᵏ from 1 and the step is the plain
    /// Kalman/Polyak step with no noise term after a few hundred steps.
    Zero,
}

impl LossVar {
    /// The default V for a task, from measurements (README, "What KOALA++ gets as loss
    /// variance"). Image classifiers: the second moment (the original KOALA loop; the main
    /// job's settings were tuned with it). Language models: the per-sample variance. A
    /// token-level cross-entropy of ≈ 3.5 makes mean(lᵢ²) ≈ 12, and R that large dominates
    /// the innovation variance S = v·h + Q‖h‖² + R, shrinking every step: on the tiny Llama
    /// (README job, 90 steps) the second moment ended at perplexity 29.1, exactly 0 (the
    /// KOALA++ LM scripts' value) at 20.2, the variance at 18.7 (better than 0 in 4 of 4
    /// runs, by 0.04–1.5).
    pub fn default_for(task: crate::TaskKind) -> LossVar {
        match task {
            crate::TaskKind::ImageClassification => LossVar::SecondMoment,
            crate::TaskKind::CausalLm => LossVar::Variance,
        }
    }
}

/// All options of `koala finetune`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The pretrained ONNX model.
    pub model: PathBuf,
    /// Training data (folder, CSV file, or IDX folder).
    pub data: PathBuf,
    /// Data format.
    pub format: DataFormat,
    /// Separate evaluation data (for IDX folders the t10k files are used when absent).
    pub eval_data: Option<PathBuf>,
    /// Hold out this fraction of the training data for validation when there is no eval data.
    pub val_fraction: f64,
    /// Input size fed to the model: square (`96`) or `HxW` (`"48x192"`).
    pub image_size: ImageSize,
    /// Random resized crop + horizontal flip during training.
    pub augment: bool,
    /// Per-channel normalisation mean (default: ImageNet's 0.485, 0.456, 0.406).
    pub mean: Option<Vec<f32>>,
    /// Per-channel normalisation std (default: ImageNet's 0.229, 0.224, 0.225).
    pub std: Option<Vec<f32>>,
    /// Keep the stored pixel order of images whose EXIF Orientation tag says they are rotated (default:
    /// apply it, as photo viewers do).
    pub ignore_exif: bool,
    /// Replace the classifier head by a fresh one with this many classes.
    pub num_classes: Option<usize>,
    /// Image classification: the model output to train (default: chosen from
    /// the outputs, see `koala_graph::classifier_output`).
    pub output: Option<String>,
    /// Train only weights whose name matches.
    pub train: Option<String>,
    /// Freeze weights whose name matches.
    pub freeze: Option<String>,
    /// Make float tensors in Constant nodes trainable.
    pub train_constants: bool,
    /// koala++ (default), koala-v, koala-m, adamw, sgd, or a preset name.
    pub optimizer: String,
    /// Learning rate (default: the optimizer's/preset's).
    pub lr: Option<f64>,
    /// Weight decay (default: the optimizer's/preset's).
    pub weight_decay: Option<f64>,
    /// Do not decay biases and normalisation parameters (1-D tensors).
    pub no_decay_bias_norm: bool,
    /// SGD momentum.
    pub momentum: f64,
    /// KOALA++ σ and Q (default: preset's).
    pub sigma: Option<f64>,
    /// KOALA++ process noise Q.
    pub q: Option<f64>,
    /// KOALA++: one filter per tensor (`per-tensor`, the reference) or one joint
    /// innovation for all tensors (`joint`, koala_optim's `koala_pp_joint`).
    /// `None`: the optimizer's default (per-tensor).
    pub koala_innovation: Option<koala_optim::KoalaPPInnovation>,
    /// KOALA++: per-coordinate covariance scale, `none` (the reference) or
    /// `second-moment` (Adam's running h², koala_optim's `koala_pp_diagonal`).
    /// `None`: the optimizer's default (none).
    pub koala_diagonal: Option<koala_optim::KoalaPPDiagonal>,
    /// KOALA++: the target value f* of the Polyak step (koala_optim's
    /// `KoalaPPConfig::loss_target`); `None`: 0, the paper's.
    pub koala_loss_target: Option<f64>,
    /// KOALA++: the bound γ_max on its step factor (koala_optim's
    /// `KoalaPPConfig::max_step`); `None`: no bound, the paper's.
    pub koala_max_step: Option<f64>,
    /// The runtime the training graph is written for: `ort` (ORT's blocked conv kernels,
    /// the default) or `portable` (standard ONNX only). The exported model is standard
    /// ONNX either way. `None` in a run directory written before the key: `portable`, the
    /// graph that run was made with (see `trainer::resume`).
    pub execution_target: Option<koala_graph::ExecutionTarget>,
    /// What KOALA++ receives as loss variance (`None`: the task's default,
    /// [`LossVar::default_for`]; a run records the value it used).
    pub loss_var: Option<LossVar>,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Warmup steps.
    pub warmup_steps: u64,
    /// Floor of cosine/linear schedules.
    pub min_lr: f64,
    /// Step schedule period (steps).
    pub step_size: u64,
    /// Step schedule factor.
    pub gamma: f64,
    /// Epochs.
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides epochs when smaller).
    pub max_steps: Option<u64>,
    /// Batch size.
    pub batch_size: usize,
    /// Gradient accumulation: micro-batches per optimizer step.
    pub accumulate: usize,
    /// Clip the global gradient L2 norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Label smoothing for cross-entropy.
    pub label_smoothing: f32,
    /// Evaluate every N steps (default: once per epoch).
    pub eval_every: Option<u64>,
    /// Log a training line every N steps.
    pub log_every: u64,
    /// Abort after this many consecutive non-finite steps.
    pub max_bad_steps: u32,
    /// Seed for everything (data order, augmentation, head init).
    pub seed: u64,
    /// ONNX Runtime intra-op threads (default: physical cores).
    pub threads: Option<usize>,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Checkpoints to keep (plus the best).
    pub keep_checkpoints: usize,
    /// Checkpoint every N steps (default: at each evaluation).
    pub checkpoint_every: Option<u64>,
    /// Also checkpoint when this many minutes passed since the last checkpoint, so a crash
    /// costs at most that much (0: off).
    pub checkpoint_minutes: f64,
    /// Exported model path (default: <run_dir>/model.onnx).
    pub export: Option<PathBuf>,
    /// Limit the number of training samples (quick experiments).
    pub limit_train: Option<usize>,
    /// The task (default: detected from the model's inputs; absent in configs written before
    /// it existed, which were all image classification and detect as such).
    pub task: Option<TaskKind>,
    /// Causal LM: the model's `tokenizer.json` (default: `tokenizer.json` next to the model).
    pub tokenizer: Option<PathBuf>,
    /// Causal LM: tokens per training sequence (the graph's sequence length).
    pub block_size: usize,
    /// Causal LM: data format: auto, plain, jsonl-text, prompt-completion or chat.
    pub text_format: String,
    /// Causal LM: the prompt of the sample completions printed before and after training
    /// (default: the start of the first evaluation example).
    pub prompt: Option<String>,
    /// Causal LM: new tokens in each sample completion (0: no samples).
    pub sample_tokens: usize,
    /// LoRA rank r: train low-rank adapters instead of the weights (none: full fine-tuning).
    pub lora_rank: Option<usize>,
    /// LoRA α (the update is scaled by α/r; default 2·r, see [`TrainConfig::lora`]).
    pub lora_alpha: Option<f32>,
    /// LoRA: regex over weight names choosing the adapted weights (default
    /// [`koala_graph::lora::DEFAULT_TARGETS`]).
    pub lora_targets: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            format: DataFormat::Auto,
            eval_data: None,
            val_fraction: 0.1,
            image_size: ImageSize::square(224),
            augment: true,
            mean: None,
            std: None,
            ignore_exif: false,
            num_classes: None,
            output: None,
            train: None,
            freeze: None,
            train_constants: false,
            optimizer: "koala++".into(),
            lr: None,
            weight_decay: None,
            no_decay_bias_norm: false,
            momentum: 0.9,
            sigma: None,
            q: None,
            loss_var: None,
            koala_innovation: None,
            koala_diagonal: None,
            koala_loss_target: None,
            koala_max_step: None,
            execution_target: None,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
            step_size: 1000,
            gamma: 0.1,
            epochs: 1,
            max_steps: None,
            batch_size: 32,
            accumulate: 1,
            clip_grad_norm: None,
            label_smoothing: 0.0,
            eval_every: None,
            log_every: 10,
            max_bad_steps: 5,
            seed: 0,
            threads: None,
            run_dir: PathBuf::from("runs/latest"),
            keep_checkpoints: 2,
            checkpoint_every: None,
            checkpoint_minutes: 10.0,
            export: None,
            limit_train: None,
            task: None,
            tokenizer: None,
            block_size: 128,
            text_format: "auto".into(),
            prompt: None,
            sample_tokens: 48,
            lora_rank: None,
            lora_alpha: None,
            lora_targets: None,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML config file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config '{}': {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config '{}': {e}", path.display()))
    }

    /// Checks values that would otherwise fail late.
    pub fn validate(&self) -> Result<()> {
        if self.model.as_os_str().is_empty() {
            bail!("no model given: pass --model <file.onnx>");
        }
        if self.data.as_os_str().is_empty() {
            bail!("no training data given: pass --data <folder|file.csv>");
        }
        self.validate_settings()?;
        let export = self.export_path();
        if same_file(&self.model, &export) {
            bail!(
                "the export path '{}' is the input model '{}'; koala never overwrites the model it fine-tunes: pass --export <other file> or another --run-dir",
                export.display(),
                self.model.display()
            );
        }
        Ok(())
    }

    /// The checks of [`TrainConfig::validate`] on the settings alone (no model, data or
    /// export path needed): `koala check` runs them too, so it fails whenever `finetune`
    /// would refuse the same options.
    pub fn validate_settings(&self) -> Result<()> {
        if self.block_size < 2 {
            bail!("--block-size must be at least 2 (one token to read, one to predict)");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.accumulate == 0 {
            bail!("--accumulate must be at least 1");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!(
                "--val-fraction must be in [0, 1), got {}",
                self.val_fraction
            );
        }
        for (name, v) in [("--mean", &self.mean), ("--std", &self.std)] {
            if let Some(v) = v {
                if !(v.len() == 3 || v.len() == 1) || v.iter().any(|x| !x.is_finite()) {
                    bail!("{name} takes 3 finite numbers (one per RGB channel), or 1 for a greyscale model, got {v:?}");
                }
            }
        }
        if self
            .std
            .as_ref()
            .is_some_and(|s| s.iter().any(|&x| x <= 0.0))
        {
            bail!("--std values must be positive");
        }
        // Any size a model can take trains (a text-line model may take 48×3); only 0 is
        // meaningless.
        if self.image_size.height == 0 || self.image_size.width == 0 {
            bail!(
                "--image-size must be at least 1 pixel each way, got {}",
                self.image_size
            );
        }
        if self.lr.is_some_and(|l| !(l.is_finite() && l > 0.0)) {
            bail!("--lr must be a positive number");
        }
        if let Some(m) = self.koala_max_step.filter(|m| !(m.is_finite() && *m > 0.0)) {
            bail!("--koala-max-step (config key koala_max_step) must be a finite number > 0, got {m}: it bounds each KOALA++ step, e.g. 1e-4 (drop it for the paper's unbounded step)");
        }
        if self
            .clip_grad_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            bail!("--clip-grad-norm must be a positive number");
        }
        if !(self.checkpoint_minutes.is_finite() && self.checkpoint_minutes >= 0.0) {
            bail!(
                "--checkpoint-minutes must be a number of minutes >= 0 (0 turns the time-based checkpoints off), got {}",
                self.checkpoint_minutes
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1)");
        }
        self.validate_lora()?;
        // The optimizer name and its settings (e.g. --koala-innovation with AdamW), so that
        // `koala check` refuses exactly what finetune would.
        crate::optim_setup::resolve(self, 1)?;
        Ok(())
    }

    /// The LoRA settings of a LoRA run (`--lora-rank` given), else None.
    ///
    /// Default α = 2·r, so the update's scale α/r is 2 whatever the rank: changing `--lora-rank`
    /// then changes the adapter's capacity, not its effective learning rate (the choice of many
    /// LoRA recipes, e.g. r 8 / α 16; PEFT's own default α = 8 would scale rank 4 by 2 and rank
    /// 64 by 1/8).
    pub fn lora(&self) -> Option<koala_graph::lora::LoraConfig> {
        let rank = self.lora_rank?;
        Some(koala_graph::lora::LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f32),
            targets: self
                .lora_targets
                .clone()
                .unwrap_or_else(|| koala_graph::lora::DEFAULT_TARGETS.into()),
            seed: self.seed,
        })
    }

    /// The LoRA flags: a rank of at least 1, α and targets only with a rank, and no `--train`
    /// (a LoRA run trains the adapters only).
    fn validate_lora(&self) -> Result<()> {
        if self.lora_rank.is_none() {
            for (flag, given) in [
                ("--lora-alpha", self.lora_alpha.is_some()),
                ("--lora-targets", self.lora_targets.is_some()),
            ] {
                if given {
                    bail!("{flag} needs --lora-rank <r> (LoRA is off without a rank)");
                }
            }
            return Ok(());
        }
        if self.lora_rank == Some(0) {
            bail!("--lora-rank must be at least 1");
        }
        if self.lora_alpha.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
            bail!("--lora-alpha must be a positive number");
        }
        if let Some(t) = &self.train {
            bail!("--train '{t}' and --lora-rank both choose what trains: a LoRA run trains only its adapters; drop --train, and choose the adapted weights with --lora-targets");
        }
        if self.num_classes.is_some() {
            bail!("--num-classes with --lora-rank would leave the new classifier frozen at its random initialisation: fine-tune without --lora-rank");
        }
        if let Some(t) = &self.lora_targets {
            koala_graph::lora::parse_targets(t)?;
        }
        Ok(())
    }

    /// Where the fine-tuned model is written: `export`, else `<run_dir>/model.onnx`.
    pub fn export_path(&self) -> PathBuf {
        self.export
            .clone()
            .unwrap_or_else(|| self.run_dir.join("model.onnx"))
    }
}

/// Whether `a` (an existing file) and `b` (which may not exist yet) name the
/// same file. Checked before training so a run is not wasted on an export
/// that koala-graph would refuse at the end.
fn same_file(a: &Path, b: &Path) -> bool {
    let Ok(a) = a.canonicalize() else {
        return false;
    };
    let in_parent = || {
        let parent = b
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(b.file_name()?))
    };
    b.canonicalize()
        .ok()
        .or_else(in_parent)
        .is_some_and(|b| a == b)
}
