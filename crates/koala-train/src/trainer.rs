//! The fine-tuning loop, shared by every [`Task`].
//!
//! [`Run::step_once`] is one optimizer step: `predict` (KOALA-M/V move θ
//! before the forward pass), for each micro-batch the task feeds a batch and
//! ONNX Runtime runs forward+backward, then the gradient pipeline
//! ([`crate::grad_pipeline`]: accumulate, average, global norm, skip
//! non-finite, clip), the scheduled learning rate and the optimizer step on
//! the weight buffers in place. After each step the loop calls its hooks:
//! the logger (progress line, metrics.jsonl), the evaluator and the
//! checkpointer, each at its interval (the checkpointer also by time:
//! [`checkpoint::Cadence`]). Export and its checks at the end.
//!
//! A run holds its directory's [`RunLock`] for its whole life, and stops at a
//! step boundary with a checkpoint when Ctrl-C asks it to ([`crate::interrupt`]).

use crate::checkpoint::{self, Cadence, TrainerState};
use crate::config::{LossVar, TrainConfig};
use crate::eval::EvalResult;
use crate::grad_pipeline::{self, GradBuffer, NonFiniteGuard, Verdict};
use crate::interrupt::{self, Interrupted};
use crate::metrics::{MetricRecord, MetricsWriter};
use crate::optim_setup;
use crate::progress::Progress;
use crate::run_lock::RunLock;
use crate::schedule::Schedule;
use crate::task::{self, Task, TaskKind, TrainCounts};
use anyhow::{bail, Context, Result};
use koala_data::Cursor;
use koala_graph::step::TrainStep;
use koala_graph::ExecutionTarget;
use koala_graph::Model;
use koala_optim::{GroupStep, Optimizer, OptimizerState, StepContext, TensorSpec};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Summary of a finished run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Evaluation before training (None when resumed).
    pub before: Option<EvalResult>,
    /// Evaluation after training.
    pub after: EvalResult,
    /// Steps done.
    pub steps: u64,
    /// Steps skipped for non-finite loss/gradients.
    pub skipped_steps: u64,
    /// Samples skipped because they could not be decoded.
    pub skipped_samples: usize,
    /// Training throughput (samples/s) over this process's training steps (data, forward,
    /// backward, optimizer; evaluations, checkpoints and the export excluded). `None` when
    /// this process trained no step (a resumed run that had already reached its last step).
    pub samples_per_sec: Option<f64>,
    /// Predicted tokens per second over this process's steps (language models).
    pub tokens_per_sec: Option<f64>,
    /// The task that was trained.
    pub task: crate::task::TaskKind,
    /// Seconds spent inside ONNX Runtime steps.
    pub time_graph: f64,
    /// Seconds spent inside optimizer steps.
    pub time_optimizer: f64,
    /// Seconds the loop waited for data.
    pub time_data_wait: f64,
    /// Exported model.
    pub export: PathBuf,
    /// Largest |difference| between the exported model's outputs (reloaded
    /// by ORT) and the training graph's forward on one batch.
    pub export_max_diff: f64,
    /// Evaluation of the exported file, loaded by ORT on its own.
    pub export_eval: EvalResult,
    /// The same batch through tract (a pure-Rust runtime independent of ORT):
    /// the largest |difference| from ORT's outputs on the exported file, or why
    /// tract could not run it (a warning, not a failure: tract does not
    /// implement every ONNX operator).
    pub export_tract: std::result::Result<f64, String>,
    /// The process's peak RSS (high-water mark, bytes) at the end of each phase of this
    /// process, in order: the phase where it grows is the one that holds the peak. Empty
    /// where the system does not report it (see `koala_runtime::memory`).
    pub memory: Vec<(&'static str, u64)>,
    /// ONNX Runtime's counters for the training step's arena (its intermediate tensors):
    /// the peak of live bytes and what the arena reserved. `None` where ORT reports none.
    pub step_arena: Option<koala_runtime::ArenaStats>,
}

/// One optimizer group: which tensors, the optimizer and its state.
struct Group {
    members: Vec<usize>,
    opt: Box<dyn Optimizer>,
    state: OptimizerState,
}

/// Everything the loop holds.
struct Run {
    cfg: TrainConfig,
    model: Model,
    task: Box<dyn Task>,
    step: TrainStep,
    groups: Vec<Group>,
    schedule: Schedule,
    total_steps: u64,
    steps_per_epoch: u64,
    state: TrainerState,
    memory: Vec<(&'static str, u64)>,
}

/// What one applied optimizer step reports to the hooks.
#[derive(Clone, Copy, Debug)]
struct StepReport {
    /// Mean loss over the step's micro-batches.
    loss: f64,
    /// Global gradient norm before clipping.
    grad_norm: f64,
    /// Learning rate used.
    lr: f64,
}

/// The state of one training segment (this process's part of a run) that the loop and its
/// hooks share.
struct Segment {
    grads: GradBuffer,
    guard: NonFiniteGuard,
    metrics: MetricsWriter,
    progress: Progress,
    /// The logging window: summed loss, steps and task counts since the last log line.
    win_loss: f64,
    win_steps: u64,
    win_counts: TrainCounts,
    eval_every: u64,
    cadence: Cadence,
    /// When this segment started or last wrote a checkpoint (the time cadence's origin).
    last_checkpoint_at: Instant,
    /// The step of the checkpoint this segment wrote last (none yet: `None`).
    last_checkpoint_step: Option<u64>,
    start: Instant,
    wall0: f64,
    samples_done: usize,
    tokens_done: usize,
    t_graph: f64,
    t_opt: f64,
    /// Seconds inside training steps (data, forward+backward, optimizer): the denominator
    /// of the throughput, which evaluations and checkpoints would otherwise dilute.
    t_steps: f64,
    last_eval: Option<EvalResult>,
}

impl Segment {
    /// Training-step seconds so far (never zero, so rates stay finite).
    fn step_seconds(&self) -> f64 {
        self.t_steps.max(1e-9)
    }
}

/// Fine-tunes from scratch: writes `config.toml`, runs, exports.
pub fn finetune(mut cfg: TrainConfig) -> Result<RunSummary> {
    cfg.validate()?;
    // The LoRA α and the KOALA++ form in effect are recorded, so `--resume` keeps them if
    // a default ever changes (the KOALA++ form depends on the task: `Run::new` pins it).
    cfg.lora_alpha = cfg.lora().map(|l| l.alpha);
    cfg.execution_target
        .get_or_insert(ExecutionTarget::default());
    // config.toml must work from any directory: `--resume` may run elsewhere.
    for p in [&mut cfg.model, &mut cfg.data, &mut cfg.run_dir]
        .into_iter()
        .chain(cfg.eval_data.as_mut())
        .chain(cfg.export.as_mut())
    {
        *p = std::path::absolute(&*p)
            .with_context(|| format!("cannot resolve the path '{}'", p.display()))?;
    }
    let created = first_missing_dir(&cfg.run_dir);
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create run directory '{}'", cfg.run_dir.display()))?;
    let run_dir = cfg.run_dir.clone();
    let started = start(cfg);
    if started.is_err() {
        // A refused start leaves nothing behind: a directory it created would later make
        // `--resume` say "no checkpoint to resume from" instead of showing the refusal.
        if let Some(top) = created {
            remove_empty_dirs(&run_dir, &top);
        }
    }
    let (mut run, _lock) = started?;
    let before = run.evaluate()?;
    eprintln!("before training: {}", run.task.describe(&before));
    run.record_eval(&before)?;
    run.mark_memory("evaluation before training");
    run.train(Some(before))
}

/// Starts a fresh run in its (existing) directory: takes the lock, runs the pre-flight
/// (`Run::new`), and only then writes `config.toml`, so a refused start writes nothing. The
/// lock is held until the caller drops it: through training, export and its checks.
fn start(cfg: TrainConfig) -> Result<(Run, RunLock)> {
    let lock = RunLock::acquire(&cfg.run_dir, "finetune")?;
    if !checkpoint::list(&cfg.run_dir)?.is_empty() {
        bail!("run directory '{}' already holds checkpoints: use --resume {} to continue it, or choose another --run-dir", cfg.run_dir.display(), cfg.run_dir.display());
    }
    let run = Run::new(cfg)?;
    // After Run::new: the config it resolved (e.g. the task's default --loss-var) is what a
    // resumed run must use.
    let text = toml::to_string_pretty(&run.cfg)?;
    let dir = &run.cfg.run_dir;
    koala_graph::model::write_atomic(&dir.join("config.toml"), text.as_bytes())?;
    let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
    Ok((run, lock))
}

/// The outermost directory of `dir` (itself or an ancestor) that does not exist yet: what
/// `create_dir_all(dir)` will create. None when `dir` exists.
fn first_missing_dir(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .last()
        .map(Path::to_path_buf)
}

/// Removes `dir` and its ancestors up to and including `top`, each only if empty (so
/// nothing anyone put there meanwhile is lost).
fn remove_empty_dirs(dir: &Path, top: &Path) {
    for d in dir.ancestors() {
        if std::fs::remove_dir(d).is_err() || d == top {
            break;
        }
    }
}

/// The line a run logs about its training graph's execution target (`asked`: the
/// configured one; a runtime without blocked kernels gives the portable graph).
pub fn target_line(g: &koala_graph::TrainingGraph, asked: Option<ExecutionTarget>) -> String {
    match &g.nchwc {
        Some(s) if s.convs_total == 0 => {
            "training graph: ort target; the model has no convolution, so the graph is the portable one".into()
        }
        Some(s) => format!(
            "training graph: ort target: {} of {} convolutions (forward and gradients) on ORT's blocked NCHWc kernels (channel block {}), {} other nodes on blocked data, {} ReorderInput + {} ReorderOutput",
            s.convs, s.convs_total, s.block, s.blocked_nodes, s.reorder_in, s.reorder_out
        ),
        None if asked.unwrap_or_default() == ExecutionTarget::Ort => "training graph: portable target (standard ONNX operators only): ort was asked for, but this ONNX Runtime has no blocked NCHWc kernels (they need an x86-64 CPU with AVX2 or AVX-512)".into(),
        None => "training graph: portable target (standard ONNX operators only)".into(),
    }
}

/// A run directory's `config.toml`: "not a koala run directory" when there is none, else
/// the file's own error (an edited value names its key and the accepted values).
pub fn read_run_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join("config.toml");
    if !path.is_file() {
        bail!(
            "'{}' is not a koala run directory (it has no config.toml); pass the --run-dir of a finetune run",
            run_dir.display()
        );
    }
    TrainConfig::from_toml_file(&path)
        .with_context(|| format!("reading the run's options from '{}'", path.display()))
}

fn target_name(t: ExecutionTarget) -> &'static str {
    match t {
        ExecutionTarget::Ort => "ort",
        ExecutionTarget::Portable => "portable",
    }
}

/// Settings a run directory records that a resumed run must not take from today's
/// defaults: a directory written before a key existed continues as it was made (the
/// per-tensor KOALA++ form, the portable graph). `finetune --resume` and
/// `check --resume` both apply it, so they agree.
pub fn pin_for_resume(cfg: &mut TrainConfig) {
    optim_setup::pin_koala_pp_form(cfg, true);
    cfg.execution_target
        .get_or_insert(ExecutionTarget::Portable);
}

/// Continues a run from its latest checkpoint.
pub fn resume(run_dir: &Path) -> Result<RunSummary> {
    let cfg = read_run_config(run_dir)?;
    // Before reading the checkpoints: a run still writing them is refused, not raced.
    let _lock = RunLock::acquire(run_dir, "finetune --resume")?;
    let (step, dir) = checkpoint::list(run_dir)?
        .pop()
        .with_context(|| format!("'{}' has no checkpoint to resume from", run_dir.display()))?;
    let mut cfg = cfg;
    cfg.run_dir = run_dir.to_path_buf();
    pin_for_resume(&mut cfg);
    cfg.validate()
        .with_context(|| format!("'{}' (edited?)", run_dir.join("config.toml").display()))?;
    let mut run = Run::new(cfg)?;
    run.restore(&dir)?;
    crate::metrics::truncate_after(&run_dir.join("metrics.jsonl"), step)?;
    eprintln!("resumed from {} (step {step})", dir.display());
    run.train(None)
}

impl Run {
    fn new(cfg: TrainConfig) -> Result<Run> {
        let model = Model::load(&cfg.model)?;
        let kind = cfg.task.unwrap_or_else(|| task::detect(&model));
        let mut cfg = cfg;
        cfg.loss_var.get_or_insert(LossVar::default_for(kind));
        // A new run without a KOALA++ form gets its task's (a resumed run's is pinned).
        if let Some(note) = optim_setup::partial_koala_pp_form_note(&cfg, kind) {
            eprintln!("{note}");
        }
        optim_setup::pin_koala_pp_task_form(&mut cfg, kind);
        optim_setup::pin_koala_pp_form(&mut cfg, false);
        // The same pre-flight as `koala check`: it refuses here exactly when check reports an
        // error, before any data is read.
        // The data first: its class count helps choose a classifier's output. A problem with
        // the model is reported before one with the data, in check's words.
        let task = task::create(&cfg, &model);
        let classes = task.as_ref().ok().and_then(|t| t.class_count());
        let pf = crate::preflight::run(&cfg, model, kind, classes, false)?;
        let Some(step) = pf.step else {
            bail!("{}", pf.errors());
        };
        let mut task = task?;
        let model = pf.model;
        task.check_graph(step.graph())?;
        for u in &step.graph().unreachable {
            eprintln!("note: weight '{u}' does not influence the loss; it stays frozen");
        }
        eprintln!("{}", target_line(step.graph(), cfg.execution_target));
        let oc = optim_setup::resolve(&cfg, step.graph().trainable.len())?;
        eprintln!(
            "optimizer: {} on {} tensors",
            optim_setup::describe(&oc, cfg.loss_var),
            step.graph().trainable.len()
        );
        if let koala_optim::OptimizerConfig::KoalaPlusPlus(c) = &oc {
            if c.diagonal == koala_optim::KoalaPPDiagonal::SecondMoment
                && c.innovation == koala_optim::KoalaPPInnovation::PerTensor
            {
                eprintln!("warning: the second-moment diagonal with per-tensor filters makes every tensor take a sign step of the full Polyak size; it did not learn in the README's study: add --koala-innovation joint");
            }
        }
        let groups = make_groups(&cfg, &oc, &step.graph().trainable)?;
        task.prepare_evaluation(&model, &names_shapes(&step))?;
        let mut model = model;
        release_trained_values(&mut model, &step, cfg.lora().is_some());
        let steps_per_epoch = (task.batches_per_epoch() / cfg.accumulate).max(1) as u64;
        let total_steps = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
        let schedule = Schedule {
            kind: cfg.schedule,
            base_lr: oc.base_lr(),
            warmup_steps: cfg.warmup_steps,
            total_steps,
            min_lr: cfg.min_lr,
            step_size: cfg.step_size,
            gamma: cfg.gamma,
        };
        let state = TrainerState {
            format_version: checkpoint::FORMAT_VERSION,
            best_metric: task.best_metric(),
            execution_target: Some(step.graph().target),
            ..TrainerState::default()
        };
        let mut run = Run {
            cfg,
            model,
            task,
            step,
            groups,
            schedule,
            total_steps,
            steps_per_epoch,
            state,
            memory: Vec::new(),
        };
        run.mark_memory("graph build");
        Ok(run)
    }

    /// Records the process's peak RSS so far as the end of `phase`, then returns the heap
    /// pages the phase freed to the system, so the next phase's peak is not stacked on
    /// memory that only sits in the allocator's free lists (the build's model copies).
    fn mark_memory(&mut self, phase: &'static str) {
        if let Some(peak) = koala_runtime::memory::peak_rss() {
            self.memory.push((phase, peak));
        }
        koala_runtime::memory::release_free_heap();
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let state = checkpoint::read_state(dir)?;
        let wanted = self.task.best_metric();
        if state.best_metric != wanted {
            eprintln!(
                "note: the checkpoint's best model was chosen by {} ({:?}); this run chooses by {} ({:?}) from now on",
                state.best_metric.name, state.best_metric.direction, wanted.name, wanted.direction
            );
        }
        let target = self.step.graph().target;
        if let Some(was) = state.execution_target.filter(|&t| t != target) {
            eprintln!(
                "note: the run so far trained on the {} target and continues on the {} target (config.toml's execution_target): same gradients to float rounding, but no longer bitwise the uninterrupted run",
                target_name(was),
                target_name(target)
            );
        }
        self.state = TrainerState {
            execution_target: Some(target),
            best: if state.best_metric == wanted {
                state.best
            } else {
                None
            },
            best_metric: wanted,
            ..state
        };
        let weights = checkpoint::read_weights(dir, &names_shapes(&self.step))?;
        for (k, w) in weights.iter().enumerate() {
            self.step.weight_mut(k).copy_from_slice(w);
        }
        for (i, g) in self.groups.iter_mut().enumerate() {
            checkpoint::read_optimizer(dir, i, &mut g.state)
                .with_context(|| format!("loading optimizer state from '{}'", dir.display()))?;
        }
        Ok(())
    }

    /// (name, current values) of every trainable tensor.
    fn weight_pairs(&self) -> Vec<(&str, &[f32])> {
        let names = self.step.graph().trainable.iter().map(|t| t.name.as_str());
        names.zip(weights(&self.step)).collect()
    }

    fn evaluate(&mut self) -> Result<EvalResult> {
        let split = self.task.eval_split();
        self.task.evaluate(&weights(&self.step)).with_context(|| {
            format!(
                "evaluating '{}' on the {split} data",
                self.cfg.model.display()
            )
        })
    }

    fn record_eval(&self, r: &EvalResult) -> Result<()> {
        let mut w = MetricsWriter::open(&self.cfg.run_dir.join("metrics.jsonl"))?;
        w.write(&MetricRecord {
            step: self.state.step,
            epoch: self.state.step as f64 / self.steps_per_epoch as f64,
            split: self.task.eval_split().into(),
            loss: r.loss,
            accuracy: Some(r.accuracy),
            wall_time: self.state.wall_time,
            ..MetricRecord::default()
        })
    }

    fn train(mut self, before: Option<EvalResult>) -> Result<RunSummary> {
        let cfg = self.cfg.clone();
        self.task.start_training(Cursor::new(
            self.state.cursor_epoch,
            self.state.cursor_position,
        ));
        let eval_every = cfg.eval_every.unwrap_or(self.steps_per_epoch).max(1);
        // Gradients are read in place from the runner; a separate buffer is
        // only needed to sum micro-batches or to hold clipped gradients.
        let n_t = self.step.graph().trainable.len();
        let lens: Vec<usize> = (0..n_t).map(|k| self.step.grad(k).len()).collect();
        let mut seg = Segment {
            grads: GradBuffer::new(lens, cfg.accumulate > 1 || cfg.clip_grad_norm.is_some()),
            guard: NonFiniteGuard {
                max_in_a_row: cfg.max_bad_steps,
            },
            metrics: MetricsWriter::open(&cfg.run_dir.join("metrics.jsonl"))?,
            progress: Progress::new(self.total_steps, self.state.step),
            win_loss: 0.0,
            win_steps: 0,
            win_counts: TrainCounts::default(),
            eval_every,
            cadence: Cadence::new(
                cfg.checkpoint_every.unwrap_or(eval_every),
                cfg.checkpoint_minutes,
            ),
            last_checkpoint_at: Instant::now(),
            last_checkpoint_step: None,
            start: Instant::now(),
            wall0: self.state.wall_time,
            samples_done: 0,
            tokens_done: 0,
            t_graph: 0.0,
            t_opt: 0.0,
            t_steps: 0.0,
            last_eval: None,
        };
        while self.state.step < self.total_steps {
            if interrupt::stop_requested() {
                return Err(self.stop_with_checkpoint(&mut seg)?.into());
            }
            let t0 = Instant::now();
            let report = self.step_once(&mut seg)?;
            seg.t_steps += t0.elapsed().as_secs_f64();
            let Some(report) = report else {
                continue;
            };
            self.log_hook(&mut seg, &report)?;
            self.eval_hook(&mut seg)?;
            self.checkpoint_hook(&mut seg)?;
        }
        seg.progress.finish();
        self.mark_memory("training");
        if interrupt::stop_requested() {
            // Training is done and checkpointed; `--resume` goes straight to the export.
            return Err(self.stop_with_checkpoint(&mut seg)?.into());
        }
        self.finish(seg, before)
    }

    /// After a stop request (Ctrl-C): the checkpoint of the current step (unless this
    /// segment just wrote it), and the error that tells the user how to continue.
    fn stop_with_checkpoint(&mut self, seg: &mut Segment) -> Result<Interrupted> {
        seg.progress.finish();
        if seg.last_checkpoint_step != Some(self.state.step) {
            self.write_checkpoint(seg)?;
        }
        Ok(Interrupted {
            run_dir: self.cfg.run_dir.clone(),
            step: self.state.step,
            total_steps: self.total_steps,
            checkpoint: checkpoint::path_of(&self.cfg.run_dir, self.state.step),
        })
    }

    /// One optimizer step: feeds → forward/backward (per micro-batch) → gradient pipeline →
    /// optimizer. `None` when the step was skipped for a non-finite loss or gradient.
    fn step_once(&mut self, seg: &mut Segment) -> Result<Option<StepReport>> {
        self.predict()?;
        let accumulate = self.cfg.accumulate;
        let (mut loss_sum, mut per_sample_sq) = (0.0f64, 0.0f64);
        let (mut samples, mut tokens) = (0usize, 0usize);
        for micro in 0..accumulate {
            let fed = self.task.feed(&mut self.step)?;
            let t0 = Instant::now();
            self.step.run().with_context(|| {
                format!(
                    "step {}: ONNX Runtime failed running the training graph of '{}' (if it ran out of memory: a smaller --batch-size{})",
                    self.state.step + 1,
                    self.cfg.model.display(),
                    if self.task.kind() == TaskKind::CausalLm { " or --block-size" } else { "" }
                )
            })?;
            seg.t_graph += t0.elapsed().as_secs_f64();
            loss_sum += self.step.loss() as f64;
            let ps = self.step.per_sample();
            per_sample_sq +=
                ps.iter().map(|&l| (l as f64) * (l as f64)).sum::<f64>() / ps.len().max(1) as f64;
            self.task.count(&self.step, &mut seg.win_counts);
            if seg.grads.is_used() {
                let n_t = self.step.graph().trainable.len();
                let step = &self.step;
                grad_pipeline::accumulate(
                    &mut seg.grads.grads,
                    (0..n_t).map(|k| step.grad(k)),
                    micro == 0,
                );
            }
            self.state.cursor_epoch = fed.next.epoch;
            self.state.cursor_position = fed.next.position;
            samples += fed.samples;
            tokens += fed.tokens;
        }
        let k = accumulate as f64;
        let loss = loss_sum / k;
        grad_pipeline::average(&mut seg.grads.grads, accumulate);
        let grad_norm = if seg.grads.is_used() {
            grad_pipeline::global_norm(seg.grads.grads.iter().map(Vec::as_slice))
        } else {
            let step = &self.step;
            grad_pipeline::global_norm((0..step.graph().trainable.len()).map(|k| step.grad(k)))
        };
        if seg
            .guard
            .check(&mut self.state.bad_steps, loss, grad_norm)?
            == Verdict::Skip
        {
            self.state.skipped_steps += 1;
            seg.progress.note(&format!("step {}: non-finite loss or gradient (loss {loss}, grad norm {grad_norm}); step skipped", self.state.step));
            return Ok(None);
        }
        if let Some(c) = self.cfg.clip_grad_norm {
            grad_pipeline::clip_by_global_norm(&mut seg.grads.grads, grad_norm, c);
        }
        let lr = self.schedule.lr(self.state.step);
        let loss_var = loss_variance(
            self.cfg.loss_var.unwrap_or_default(),
            loss,
            per_sample_sq / k,
        );
        let ctx = StepContext {
            loss,
            loss_var,
            lr,
            step: self.state.step + 1,
        };
        let t0 = Instant::now();
        self.optimizer_step(&seg.grads, &ctx)?;
        seg.t_opt += t0.elapsed().as_secs_f64();
        self.state.step += 1;
        seg.samples_done += samples;
        seg.tokens_done += tokens;
        self.state.wall_time = seg.wall0 + seg.start.elapsed().as_secs_f64();
        Ok(Some(StepReport {
            loss,
            grad_norm,
            lr,
        }))
    }

    /// KOALA-M/V predict before the forward pass (the others do nothing).
    fn predict(&mut self) -> Result<()> {
        let mut rest: Vec<Option<&mut [f32]>> =
            self.step.params_mut().into_iter().map(Some).collect();
        for g in &mut self.groups {
            let mut params = take_members(&mut rest, &g.members);
            g.opt.predict(&mut g.state, &mut params)?;
        }
        Ok(())
    }

    /// Each group's optimizer updates its weights in place, from the buffered gradients or,
    /// when there is no buffer, from the runner's gradient outputs. The groups step
    /// together (`koala_optim::step_groups`): KOALA++ with joint innovation shares one
    /// innovation variance across them.
    fn optimizer_step(&mut self, buffer: &GradBuffer, ctx: &StepContext) -> Result<()> {
        let (params, in_place) = self.step.params_and_grads();
        let mut rest: Vec<Option<&mut [f32]>> = params.into_iter().map(Some).collect();
        let mut group_params: Vec<Vec<&mut [f32]>> = Vec::with_capacity(self.groups.len());
        let mut group_grads: Vec<Vec<Option<&[f32]>>> = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            group_params.push(take_members(&mut rest, &g.members));
            group_grads.push(
                g.members
                    .iter()
                    .map(|&m| {
                        Some(if buffer.is_used() {
                            buffer.grads[m].as_slice()
                        } else {
                            in_place[m]
                        })
                    })
                    .collect(),
            );
        }
        let mut steps: Vec<GroupStep> = self
            .groups
            .iter_mut()
            .zip(group_params.iter_mut())
            .zip(group_grads.iter())
            .map(|((g, params), grads)| GroupStep {
                opt: g.opt.as_ref(),
                state: &mut g.state,
                params,
                grads,
            })
            .collect();
        koala_optim::step_groups(&mut steps, ctx)?;
        Ok(())
    }

    /// Logger hook: the progress bar every step, a log line and a metrics.jsonl record every
    /// `log_every` steps and at the last one.
    fn log_hook(&self, seg: &mut Segment, r: &StepReport) -> Result<()> {
        seg.win_loss += r.loss;
        seg.win_steps += 1;
        let secs = seg.step_seconds();
        let sps = seg.samples_done as f64 / secs;
        let tps = (seg.tokens_done > 0).then(|| seg.tokens_done as f64 / secs);
        seg.progress.update(self.state.step, r.loss, r.lr, sps);
        if !(self.state.step.is_multiple_of(self.cfg.log_every.max(1))
            || self.state.step == self.total_steps)
        {
            return Ok(());
        }
        let loss = seg.win_loss / seg.win_steps as f64;
        let acc = seg.win_counts.accuracy().unwrap_or(0.0);
        seg.metrics.write(&MetricRecord {
            step: self.state.step,
            epoch: self.state.step as f64 / self.steps_per_epoch as f64,
            split: "train".into(),
            loss,
            accuracy: Some(acc),
            lr: Some(r.lr),
            grad_norm: Some(r.grad_norm),
            samples_per_sec: Some(sps),
            tokens_per_sec: tps,
            perplexity: None,
            wall_time: self.state.wall_time,
        })?;
        let speed = match tps {
            Some(t) => format!("{t:.0} tokens/s"),
            None => format!("{sps:.1} samples/s"),
        };
        seg.progress.log(&format!(
            "step {}/{} loss {:.4} acc {:.1}% lr {:.3e} |g| {:.3e} {speed}",
            self.state.step,
            self.total_steps,
            loss,
            100.0 * acc,
            r.lr,
            r.grad_norm,
        ));
        seg.win_loss = 0.0;
        seg.win_steps = 0;
        seg.win_counts = TrainCounts::default();
        Ok(())
    }

    /// Evaluator hook: every `eval_every` steps and at the last one; keeps the best step by
    /// the task's metric and direction.
    fn eval_hook(&mut self, seg: &mut Segment) -> Result<()> {
        let last = self.state.step == self.total_steps;
        if !(self.state.step.is_multiple_of(seg.eval_every) || last) {
            return Ok(());
        }
        let r = self.evaluate()?;
        seg.progress.log(&format!(
            "step {}: {}",
            self.state.step,
            self.task.describe(&r)
        ));
        self.record_eval(&r)?;
        let value = self.state.best_metric.value(&r)?;
        if self
            .state
            .best
            .is_none_or(|(b, _)| self.state.best_metric.improves(value, b))
        {
            self.state.best = Some((value, self.state.step));
        }
        seg.last_eval = Some(r);
        Ok(())
    }

    /// Checkpointer hook: every `checkpoint_every` steps (default: at each evaluation), every
    /// `checkpoint_minutes`, and at the last step.
    fn checkpoint_hook(&mut self, seg: &mut Segment) -> Result<()> {
        let last = self.state.step == self.total_steps;
        if seg
            .cadence
            .due(self.state.step, last, seg.last_checkpoint_at.elapsed())
        {
            self.write_checkpoint(seg)?;
        }
        Ok(())
    }

    /// Saves the current step's checkpoint (and prunes old ones); restarts the time cadence.
    fn write_checkpoint(&mut self, seg: &mut Segment) -> Result<()> {
        self.state.add_skipped(&self.task.data_stats().skipped);
        self.save_checkpoint()?;
        seg.last_checkpoint_at = Instant::now();
        seg.last_checkpoint_step = Some(self.state.step);
        Ok(())
    }

    /// After the last step: the final evaluation, curves, export and its checks, the summary.
    fn finish(mut self, mut seg: Segment, before: Option<EvalResult>) -> Result<RunSummary> {
        // Training is over and checkpointed: the optimizer state (two weight-sized vectors
        // per tensor for KOALA++ and AdamW) and the gradient buffer are dead weight while
        // the export and its check load the written file.
        self.groups.clear();
        seg.grads.grads = Vec::new();
        let stats = self.task.data_stats();
        self.state.add_skipped(&stats.skipped);
        let skipped_samples = self.state.skipped_samples as usize;
        if stats.short_batches > 0 {
            eprintln!(
                "note: unreadable samples made {} batch(es) read from the data short; consecutive ones were joined into full training batches ({} readable sample(s) past the last full one were not trained on)",
                stats.short_batches, stats.unused_samples
            );
        }
        let after = match seg.last_eval {
            Some(r) => r,
            None => self.evaluate()?,
        };
        self.plot();
        let export = self.cfg.export_path();
        if let Some(lora) = self.cfg.lora() {
            // The original graph with the adapters merged, and the PEFT adapter beside it.
            crate::lora::export(&self.cfg, &lora, &self.weight_pairs(), &export)?;
        } else {
            let mut updated = koala_graph::export::with_weights(&self.model, self.weight_pairs())?;
            crate::preprocess_metadata::write(&mut updated, &self.task.export_metadata());
            koala_graph::export::save(&updated, &export, Some(&self.cfg.model))?;
        }
        let check = self
            .task
            .check_export(&export, &mut self.step)
            .with_context(|| {
                format!(
                    "verifying the exported file '{}' (written; the run's checkpoints are in {})",
                    export.display(),
                    crate::checkpoint::dir_of(&self.cfg.run_dir).display()
                )
            })?;
        self.mark_memory("export and its check");
        let step_arena = self.step.arena_stats();
        Ok(RunSummary {
            run_dir: self.cfg.run_dir.clone(),
            before,
            after,
            steps: self.state.step,
            skipped_steps: self.state.skipped_steps,
            skipped_samples,
            samples_per_sec: (seg.samples_done > 0)
                .then(|| seg.samples_done as f64 / seg.step_seconds()),
            tokens_per_sec: (seg.tokens_done > 0)
                .then(|| seg.tokens_done as f64 / seg.step_seconds()),
            task: self.task.kind(),
            time_graph: seg.t_graph,
            time_optimizer: seg.t_opt,
            time_data_wait: stats.wait_time,
            export,
            export_max_diff: check.max_diff,
            export_tract: check.tract,
            export_eval: check.eval,
            memory: self.memory,
            step_arena,
        })
    }

    fn save_checkpoint(&self) -> Result<()> {
        let ws: Vec<(String, Vec<usize>, &[f32])> = self
            .step
            .graph()
            .trainable
            .iter()
            .enumerate()
            .map(|(k, t)| (t.name.clone(), t.shape.clone(), self.step.weight(k)))
            .collect();
        let states: Vec<&OptimizerState> = self.groups.iter().map(|g| &g.state).collect();
        checkpoint::save(&self.cfg.run_dir, &self.state, &ws, &states)?;
        checkpoint::prune(
            &self.cfg.run_dir,
            self.cfg.keep_checkpoints,
            self.state.best.map(|b| b.1),
        )
    }

    fn plot(&self) {
        let path = self.cfg.run_dir.join("metrics.jsonl");
        let result = crate::metrics::read(&path).and_then(|r| {
            crate::plot::write_plot(
                &r,
                &format!("koala fine-tuning ({})", self.cfg.optimizer),
                &self.cfg.run_dir.join("curves.png"),
            )
        });
        if let Err(e) = result {
            eprintln!("warning: could not draw curves.png: {e:#}");
        }
    }
}

/// The current values of every trainable tensor, in training-graph order.
/// Frees the values of the trained initializers in the run's copy of the model (0.5 GB for
/// a full fine-tune of SmolLM2-135M): the runner holds the current values, and the export
/// writes them back into the graph (`export::with_weights`), which needs only their names
/// and shapes. Tied tensors keep theirs: the export finds the ties by comparing values.
///
/// A LoRA run frees every value: its export merges the adapters into the base model it
/// reads from the file again (`lora::export`).
fn release_trained_values(model: &mut Model, step: &TrainStep, lora: bool) {
    let tied: std::collections::HashSet<String> = if lora {
        Default::default()
    } else {
        koala_graph::tied::find(model)
    }
    .into_iter()
    .flat_map(|c| [c.canonical, c.copy])
    .collect();
    let trained: std::collections::HashSet<&str> = step
        .graph()
        .trainable
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for t in &mut model.graph_mut().initializer {
        if lora || (trained.contains(t.name.as_str()) && !tied.contains(&t.name)) {
            koala_graph::tensor::release_values(t);
        }
    }
}

fn weights(step: &TrainStep) -> Vec<&[f32]> {
    (0..step.graph().trainable.len())
        .map(|k| step.weight(k))
        .collect()
}

/// (name, shape) of every trainable tensor, in training-graph order.
fn names_shapes(step: &TrainStep) -> Vec<(String, Vec<usize>)> {
    step.graph()
        .trainable
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

/// The parameter buffers of one optimizer group, taken out of `rest` (all
/// trainable tensors, in training-graph order; groups are disjoint).
fn take_members<'a>(rest: &mut [Option<&'a mut [f32]>], members: &[usize]) -> Vec<&'a mut [f32]> {
    members
        .iter()
        .map(|&m| rest[m].take().expect("groups are disjoint"))
        .collect()
}

fn make_groups(
    cfg: &TrainConfig,
    oc: &koala_optim::OptimizerConfig,
    trainable: &[koala_graph::training::TrainableTensor],
) -> Result<Vec<Group>> {
    let (decay, no_decay): (Vec<usize>, Vec<usize>) = (0..trainable.len())
        .partition(|&i| !(cfg.no_decay_bias_norm && trainable[i].shape.len() <= 1));
    let mut groups = Vec::new();
    for (members, conf) in [
        (decay, oc.clone()),
        (no_decay, optim_setup::without_decay(oc)),
    ] {
        if members.is_empty() {
            continue;
        }
        let opt = koala_optim::build(&conf)?;
        let specs: Vec<TensorSpec> = members
            .iter()
            .map(|&i| TensorSpec::new(trainable[i].name.clone(), trainable[i].shape.clone()))
            .collect();
        let state = opt.init(&specs)?;
        groups.push(Group {
            members,
            opt,
            state,
        });
    }
    Ok(groups)
}

/// Exports the weights of a run's checkpoint (`step`, else the best, else
/// the latest) into the run's model; returns the written path.
pub fn export_checkpoint(run_dir: &Path, step: Option<u64>, output: &Path) -> Result<PathBuf> {
    let cfg = TrainConfig::from_toml_file(&run_dir.join("config.toml"))
        .with_context(|| format!("'{}' is not a koala run directory", run_dir.display()))?;
    let all = checkpoint::list(run_dir)?;
    let (_, latest) = all
        .last()
        .with_context(|| format!("'{}' has no checkpoints", run_dir.display()))?;
    let wanted = match step {
        Some(s) => Some(s),
        None => checkpoint::read_state(latest)?.best.map(|b| b.1),
    };
    let dir = match wanted {
        Some(s) => all
            .iter()
            .find(|(k, _)| *k == s)
            .map(|(_, p)| p.clone())
            .with_context(|| {
                format!(
                    "no checkpoint for step {s} in '{}' (have: {:?})",
                    run_dir.display(),
                    all.iter().map(|a| a.0).collect::<Vec<_>>()
                )
            })?,
        None => latest.clone(),
    };
    refuse_existing_outputs(&cfg, output)?;
    let path = dir.join("weights.safetensors");
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("'{}' is not a valid safetensors file", path.display()))?;
    let tensors: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect();
    let mut model = Model::load(&cfg.model)?;
    let kind = cfg.task.unwrap_or_else(|| task::detect(&model));
    // As the run's own export: a language model's tokenizer goes beside the file, so
    // `koala generate` and `eval` on it need no --tokenizer.
    let tokenizer = (kind == crate::TaskKind::CausalLm)
        .then(|| crate::causal_lm::open_tokenizer(&cfg.model, cfg.tokenizer.as_deref(), &model))
        .transpose()?;
    let copy_tokenizer = || match &tokenizer {
        Some(t) => crate::causal_lm::copy_tokenizer_beside(t, output),
        None => Ok(()),
    };
    if let Some(lora) = cfg.lora() {
        let pairs: Vec<(&str, &[f32])> = tensors
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_slice()))
            .collect();
        crate::lora::export(&cfg, &lora, &pairs, output)?;
        copy_tokenizer()?;
        return Ok(output.to_path_buf());
    }
    crate::preflight::prepare_model(&mut model, &cfg, kind, true)?;
    let mut updated = koala_graph::export::with_weights(
        &model,
        tensors.iter().map(|(n, w)| (n.as_str(), w.as_slice())),
    )?;
    if crate::task::create_kind(&cfg, &model) == crate::TaskKind::ImageClassification {
        let entries = image_metadata(&cfg, &model)?;
        crate::preprocess_metadata::write(&mut updated, &entries);
    }
    koala_graph::export::save(&updated, output, Some(&cfg.model))?;
    copy_tokenizer()?;
    Ok(output.to_path_buf())
}

/// `koala export` never overwrites: an existing output file, or (for a LoRA run) an existing
/// PEFT adapter folder beside it, is refused before anything is written (a new-user tryout
/// found a second export silently replacing the first one's adapter).
fn refuse_existing_outputs(cfg: &TrainConfig, output: &Path) -> Result<()> {
    if output.exists() {
        bail!(
            "'{}' already exists; koala export never overwrites a file: pass another --output, or delete it first",
            output.display()
        );
    }
    if cfg.lora().is_some() {
        let dir = crate::lora::adapter_dir(output);
        if dir.exists() {
            bail!(
                "'{}' already exists (the PEFT adapter goes beside the exported file, and this one would be replaced): pass an --output in another folder",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The preprocessing metadata of an image-classification run, rebuilt from its config (as
/// the run's own export writes it). Class names come from the training data; if it is no
/// longer where the config says, the export goes ahead without them and says so.
fn image_metadata(cfg: &TrainConfig, model: &Model) -> Result<Vec<(String, String)>> {
    let input = crate::image_input::ImageInput::of_model(model)?;
    let classes = crate::data::class_names(cfg).unwrap_or_else(|e| {
        eprintln!("warning: the exported file records no class names: cannot read the training data ({e:#})");
        Vec::new()
    });
    let mut entries = crate::preprocess_metadata::entries(
        &crate::data::preprocess(cfg, &input, false),
        &input,
        &classes,
    );
    let hint = (!classes.is_empty()).then_some(classes.len());
    if let Ok(choice) = crate::image_classification::choose_output(model, cfg, hint) {
        entries.extend(crate::preprocess_metadata::output_entry(
            model.graph().output.len(),
            &choice,
        ));
    }
    entries.push(crate::preprocess_metadata::exif_orientation_entry(
        crate::data::read_options(cfg),
    ));
    Ok(entries)
}

/// The V handed to the optimizer (koala-spec §2.4) for the batch-mean loss `loss` and the
/// mean of the squared per-sample losses `second_moment`.
fn loss_variance(mode: LossVar, loss: f64, second_moment: f64) -> f64 {
    match mode {
        LossVar::SecondMoment => second_moment,
        LossVar::Square => loss * loss,
        // Rounding can make E[l²] − L² slightly negative when all losses are equal.
        LossVar::Variance => (second_moment - loss * loss).max(0.0),
        LossVar::Zero => 0.0,
    }
}

#[cfg(test)]
mod loss_variance_tests {
    use super::*;

    /// Per-sample losses 1 and 3: L = 2, E[l²] = 5, variance 1.
    #[test]
    fn each_mode_passes_its_formula() {
        let (loss, m2) = (2.0, 5.0);
        assert_eq!(loss_variance(LossVar::SecondMoment, loss, m2), 5.0);
        assert_eq!(loss_variance(LossVar::Square, loss, m2), 4.0);
        assert_eq!(loss_variance(LossVar::Variance, loss, m2), 1.0);
        assert_eq!(loss_variance(LossVar::Zero, loss, m2), 0.0);
        // Equal losses: E[l²] − L² may round below 0; V never does.
        let l = 0.1f64;
        assert_eq!(loss_variance(LossVar::Variance, l, l * l - 1e-18), 0.0);
    }

    #[test]
    fn modes_have_the_command_line_names_in_config_files() {
        for (mode, name) in [
            (LossVar::SecondMoment, "second-moment"),
            (LossVar::Square, "square"),
            (LossVar::Variance, "variance"),
            (LossVar::Zero, "zero"),
        ] {
            let v = toml::Value::try_from(mode).unwrap();
            assert_eq!(v.as_str(), Some(name));
        }
    }
}
