//! The fine-tuning loop.
//!
//! Per optimizer step: `predict` (KOALA-M moves θ before the forward pass),
//! forward+backward in ONNX Runtime for each micro-batch (gradients averaged
//! when accumulating), a non-finite check (skip the step; abort after K in a
//! row), global gradient-norm (and clipping), the scheduled learning rate,
//! the optimizer step on the weight buffers in place. Evaluation,
//! checkpoints and metrics at their intervals; export at the end.

use crate::checkpoint::{self, TrainerState};
use crate::config::{LossVar, TrainConfig};
use crate::data::{open_datasets, Datasets};
use crate::eval::{self, EvalResult};
use crate::metrics::{MetricRecord, MetricsWriter};
use crate::optim_setup;
use crate::progress::Progress;
use crate::schedule::Schedule;
use anyhow::{bail, Context, Result};
use koala_data::Cursor;
use koala_graph::step::{Batch as GBatch, TrainStep};
use koala_graph::{LossSpec, Model, TrainableSpec, TrainingSpec};
use koala_optim::{Optimizer, OptimizerState, StepContext, TensorSpec};
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
    /// Training throughput (samples/s) over this process's steps.
    pub samples_per_sec: f64,
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
    data: Datasets,
    step: TrainStep,
    groups: Vec<Group>,
    schedule: Schedule,
    total_steps: u64,
    steps_per_epoch: u64,
    state: TrainerState,
}

/// Fine-tunes from scratch: writes `config.toml`, runs, exports.
pub fn finetune(mut cfg: TrainConfig) -> Result<RunSummary> {
    cfg.validate()?;
    // config.toml must work from any directory: `--resume` may run elsewhere.
    for p in [&mut cfg.model, &mut cfg.data, &mut cfg.run_dir]
        .into_iter()
        .chain(cfg.eval_data.as_mut())
        .chain(cfg.export.as_mut())
    {
        *p = std::path::absolute(&*p)
            .with_context(|| format!("cannot resolve the path '{}'", p.display()))?;
    }
    if cfg.run_dir.join("checkpoints").exists() && !checkpoint::list(&cfg.run_dir)?.is_empty() {
        bail!("run directory '{}' already holds checkpoints: use --resume {} to continue it, or choose another --run-dir", cfg.run_dir.display(), cfg.run_dir.display());
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create run directory '{}'", cfg.run_dir.display()))?;
    let text = toml::to_string_pretty(&cfg)?;
    koala_graph::model::write_atomic(&cfg.run_dir.join("config.toml"), text.as_bytes())?;
    let _ = std::fs::remove_file(cfg.run_dir.join("metrics.jsonl"));
    let run = Run::new(cfg)?;
    let before = run.evaluate()?;
    run.log_line(&format!(
        "before training: {} loss {:.4}, top-1 {:.2}%",
        run.data.eval_split,
        before.loss,
        100.0 * before.accuracy
    ));
    run.record_eval(&before)?;
    run.train(Some(before))
}

/// Continues a run from its latest checkpoint.
pub fn resume(run_dir: &Path) -> Result<RunSummary> {
    let cfg = TrainConfig::from_toml_file(&run_dir.join("config.toml"))
        .with_context(|| format!("'{}' is not a koala run directory", run_dir.display()))?;
    let (step, dir) = checkpoint::list(run_dir)?
        .pop()
        .with_context(|| format!("'{}' has no checkpoint to resume from", run_dir.display()))?;
    let mut cfg = cfg;
    cfg.run_dir = run_dir.to_path_buf();
    cfg.validate()
        .with_context(|| format!("'{}' (edited?)", run_dir.join("config.toml").display()))?;
    let mut run = Run::new(cfg)?;
    run.restore(&dir)?;
    crate::metrics::truncate_after(&run_dir.join("metrics.jsonl"), step)?;
    run.log_line(&format!("resumed from {} (step {step})", dir.display()));
    run.train(None)
}

impl Run {
    fn new(cfg: TrainConfig) -> Result<Run> {
        let mut model = Model::load(&cfg.model)?;
        if let Some(n) = cfg.num_classes {
            let h = koala_graph::head::replace_head(&mut model, n, cfg.seed)?;
            eprintln!(
                "replaced head {} ({} → {} classes)",
                h.node, h.classes.0, h.classes.1
            );
        }
        let data = open_datasets(&cfg)?;
        let input = eval::data_input(&model)?;
        check_image_size(&model, &input, &cfg)?;
        let spec = TrainingSpec {
            input_shapes: [(
                input,
                vec![
                    cfg.batch_size,
                    3,
                    cfg.image_size.height as usize,
                    cfg.image_size.width as usize,
                ],
            )]
            .into_iter()
            .collect(),
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
            ..TrainingSpec::default()
        };
        let graph = koala_graph::build(&model, &spec)?;
        check_classes(
            &data,
            graph.model_output_shape.last().copied().unwrap_or(0),
            cfg.num_classes.is_some(),
        )?;
        for u in &graph.unreachable {
            eprintln!("note: weight '{u}' does not influence the loss; it stays frozen");
        }
        let oc = optim_setup::resolve(&cfg, graph.trainable.len())?;
        let groups = make_groups(&cfg, &oc, &graph.trainable)?;
        let step = TrainStep::new(graph, cfg.threads)?;
        let steps_per_epoch = (data.train.batches_per_epoch() / cfg.accumulate).max(1) as u64;
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
            ..TrainerState::default()
        };
        Ok(Run {
            cfg,
            model,
            data,
            step,
            groups,
            schedule,
            total_steps,
            steps_per_epoch,
            state,
        })
    }

    fn names_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.step
            .graph()
            .trainable
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        self.state = checkpoint::read_state(dir)?;
        let weights = checkpoint::read_weights(dir, &self.names_shapes())?;
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
        names
            .enumerate()
            .map(|(k, n)| (n, self.step.weight(k)))
            .collect()
    }

    fn evaluate(&self) -> Result<EvalResult> {
        let pairs = self.weight_pairs();
        eval::evaluate(&self.model, &pairs, &self.data.eval, self.cfg.threads)
    }

    fn log_line(&self, s: &str) {
        eprintln!("{s}");
    }

    fn record_eval(&self, r: &EvalResult) -> Result<()> {
        let mut w = MetricsWriter::open(&self.cfg.run_dir.join("metrics.jsonl"))?;
        w.write(&MetricRecord {
            step: self.state.step,
            epoch: self.state.step as f64 / self.steps_per_epoch as f64,
            split: self.data.eval_split.into(),
            loss: r.loss,
            accuracy: Some(r.accuracy),
            wall_time: self.state.wall_time,
            ..MetricRecord::default()
        })
    }

    fn train(mut self, before: Option<EvalResult>) -> Result<RunSummary> {
        let cfg = self.cfg.clone();
        let mut metrics = MetricsWriter::open(&cfg.run_dir.join("metrics.jsonl"))?;
        let eval_every = cfg.eval_every.unwrap_or(self.steps_per_epoch).max(1);
        let ckpt_every = cfg.checkpoint_every.unwrap_or(eval_every).max(1);
        let mut it = self.data.train.iter(
            Cursor::new(self.state.cursor_epoch, self.state.cursor_position),
            u64::MAX,
        );
        // The loader counts this segment's skips; the state carries earlier ones.
        let skipped_before = self.state.skipped_samples;
        let mut progress = Progress::new(self.total_steps, self.state.step);
        let b = cfg.batch_size;
        // Gradients are read in place from the runner; a separate buffer is
        // only needed to sum micro-batches or to hold clipped gradients.
        let buffered = cfg.accumulate > 1 || cfg.clip_grad_norm.is_some();
        let n_t = self.step.graph().trainable.len();
        let mut acc_grads: Vec<Vec<f32>> = if buffered {
            (0..n_t)
                .map(|k| vec![0.0; self.step.grad(k).len()])
                .collect()
        } else {
            Vec::new()
        };
        let (mut t_graph, mut t_opt) = (0.0f64, 0.0f64);
        let (mut win_loss, mut win_correct, mut win_n, mut win_steps) =
            (0.0f64, 0usize, 0usize, 0u64);
        let seg_start = Instant::now();
        let wall0 = self.state.wall_time;
        let mut samples_done = 0usize;
        let mut last_eval = None;
        let mut short_batches = 0usize;
        while self.state.step < self.total_steps {
            // KOALA-M/V predict before the forward pass.
            {
                let mut rest: Vec<Option<&mut [f32]>> =
                    self.step.params_mut().into_iter().map(Some).collect();
                for g in &mut self.groups {
                    let mut params = take_members(&mut rest, &g.members);
                    g.opt.predict(&mut g.state, &mut params)?;
                }
            }
            let mut loss_sum = 0.0f64;
            let mut per_sample_sq = 0.0f64;
            let mut micro = 0usize;
            while micro < cfg.accumulate {
                let batch = it.next().context("the data loader stopped unexpectedly")?;
                if batch.shape[0] != b {
                    // Skipped (corrupt) samples made this batch short; the
                    // training graph has a fixed batch size.
                    short_batches += 1;
                    it.recycle(batch);
                    continue;
                }
                let t0 = Instant::now();
                self.step
                    .set_batch(&[GBatch::F32(&batch.images)], GBatch::I64(&batch.labels))?;
                self.step.run()?;
                t_graph += t0.elapsed().as_secs_f64();
                let out = &self.step;
                loss_sum += out.loss() as f64;
                per_sample_sq += out
                    .per_sample()
                    .iter()
                    .map(|&l| (l as f64) * (l as f64))
                    .sum::<f64>()
                    / b as f64;
                let logits = out.model_output();
                let classes = logits.len() / b;
                for (i, &y) in batch.labels.iter().enumerate() {
                    let (_, ok) = eval::score_row(&logits[i * classes..(i + 1) * classes], y);
                    win_correct += ok as usize;
                }
                win_n += b;
                if buffered {
                    for (k, a) in acc_grads.iter_mut().enumerate() {
                        let g = out.grad(k);
                        if micro == 0 {
                            a.copy_from_slice(g);
                        } else {
                            a.iter_mut().zip(g).for_each(|(x, &y)| *x += y);
                        }
                    }
                }
                self.state.cursor_epoch = batch.next.epoch;
                self.state.cursor_position = batch.next.position;
                it.recycle(batch);
                micro += 1;
            }
            let k = cfg.accumulate as f64;
            let loss = loss_sum / k;
            if cfg.accumulate > 1 {
                let inv = 1.0 / cfg.accumulate as f32;
                acc_grads.iter_mut().flatten().for_each(|x| *x *= inv);
            }
            let sq = |g: &[f32]| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
            let gnorm = if buffered {
                acc_grads.iter().map(|g| sq(g)).sum::<f64>().sqrt()
            } else {
                (0..n_t).map(|k| sq(self.step.grad(k))).sum::<f64>().sqrt()
            };
            if !loss.is_finite() || !gnorm.is_finite() {
                self.state.bad_steps += 1;
                self.state.skipped_steps += 1;
                progress.note(&format!("step {}: non-finite loss or gradient (loss {loss}, grad norm {gnorm}); step skipped", self.state.step));
                if self.state.bad_steps >= cfg.max_bad_steps {
                    bail!("{} consecutive steps had a non-finite loss or gradient; stopping. Lower the learning rate or enable --clip-grad-norm", self.state.bad_steps);
                }
                continue;
            }
            self.state.bad_steps = 0;
            if let Some(c) = cfg.clip_grad_norm {
                if gnorm > c {
                    let s = (c / gnorm) as f32;
                    acc_grads.iter_mut().flatten().for_each(|x| *x *= s);
                }
            }
            let lr = self.schedule.lr(self.state.step);
            let loss_var = match cfg.loss_var {
                LossVar::SecondMoment => per_sample_sq / k,
                LossVar::Square => loss * loss,
            };
            let ctx = StepContext {
                loss,
                loss_var,
                lr,
                step: self.state.step + 1,
            };
            let t0 = Instant::now();
            {
                let (params, in_place) = self.step.params_and_grads();
                let mut rest: Vec<Option<&mut [f32]>> = params.into_iter().map(Some).collect();
                for g in &mut self.groups {
                    let mut params = take_members(&mut rest, &g.members);
                    let grads: Vec<Option<&[f32]>> = g
                        .members
                        .iter()
                        .map(|&m| {
                            Some(if buffered {
                                acc_grads[m].as_slice()
                            } else {
                                in_place[m]
                            })
                        })
                        .collect();
                    g.opt.step(&mut g.state, &mut params, &grads, &ctx)?;
                }
            }
            t_opt += t0.elapsed().as_secs_f64();
            self.state.step += 1;
            samples_done += b * cfg.accumulate;
            win_loss += loss;
            win_steps += 1;
            self.state.wall_time = wall0 + seg_start.elapsed().as_secs_f64();
            let sps = samples_done as f64 / seg_start.elapsed().as_secs_f64().max(1e-9);
            progress.update(self.state.step, loss, lr, sps);
            if self.state.step.is_multiple_of(cfg.log_every.max(1))
                || self.state.step == self.total_steps
            {
                metrics.write(&MetricRecord {
                    step: self.state.step,
                    epoch: self.state.step as f64 / self.steps_per_epoch as f64,
                    split: "train".into(),
                    loss: win_loss / win_steps as f64,
                    accuracy: Some(win_correct as f64 / win_n.max(1) as f64),
                    lr: Some(lr),
                    grad_norm: Some(gnorm),
                    samples_per_sec: Some(sps),
                    wall_time: self.state.wall_time,
                })?;
                progress.log(&format!(
                    "step {}/{} loss {:.4} acc {:.1}% lr {:.3e} |g| {:.3e} {:.1} samples/s",
                    self.state.step,
                    self.total_steps,
                    win_loss / win_steps as f64,
                    100.0 * win_correct as f64 / win_n.max(1) as f64,
                    lr,
                    gnorm,
                    sps
                ));
                (win_loss, win_correct, win_n, win_steps) = (0.0, 0, 0, 0);
            }
            let last = self.state.step == self.total_steps;
            if self.state.step.is_multiple_of(eval_every) || last {
                let r = self.evaluate()?;
                progress.log(&format!(
                    "step {}: {} loss {:.4}, top-1 {:.2}%",
                    self.state.step,
                    self.data.eval_split,
                    r.loss,
                    100.0 * r.accuracy
                ));
                self.record_eval(&r)?;
                if self.state.best.is_none_or(|(a, _)| r.accuracy > a) {
                    self.state.best = Some((r.accuracy, self.state.step));
                }
                last_eval = Some(r);
            }
            if self.state.step.is_multiple_of(ckpt_every) || last {
                self.state.skipped_samples = skipped_before + it.stats().skipped as u64;
                self.save_checkpoint()?;
            }
        }
        progress.finish();
        let skipped_samples = (skipped_before + it.stats().skipped as u64) as usize;
        let time_data_wait = it.stats().wait_time.as_secs_f64();
        drop(it);
        if short_batches > 0 {
            eprintln!("note: {short_batches} training batch(es) were short because of unreadable samples and were not used");
        }
        let after = match last_eval {
            Some(r) => r,
            None => self.evaluate()?,
        };
        self.plot();
        let (export, export_max_diff, export_tract, export_eval) = self.export()?;
        Ok(RunSummary {
            run_dir: cfg.run_dir.clone(),
            before,
            after,
            steps: self.state.step,
            skipped_steps: self.state.skipped_steps,
            skipped_samples,
            samples_per_sec: samples_done as f64 / seg_start.elapsed().as_secs_f64().max(1e-9),
            time_graph: t_graph,
            time_optimizer: t_opt,
            time_data_wait,
            export,
            export_max_diff,
            export_tract,
            export_eval,
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

    /// Writes the updated ONNX, reloads it in ORT, compares it with the
    /// training graph's forward on one batch and evaluates it.
    fn export(&mut self) -> Result<(PathBuf, f64, std::result::Result<f64, String>, EvalResult)> {
        let path = self.cfg.export_path();
        let pairs = self.weight_pairs();
        let updated = koala_graph::export::with_weights(&self.model, pairs)?;
        koala_graph::export::save(&updated, &path, Some(&self.cfg.model))?;
        let input = eval::data_input(&self.model)?;
        // One ORT session of the written file serves the check and the evaluation.
        let opts = koala_runtime::SessionOptions {
            intra_threads: self.cfg.threads,
            ..Default::default()
        };
        let mut s = koala_runtime::Session::from_file(&path, &opts)?;
        let (diff, tract) = verify_export(&path, &mut s, &input, &mut self.step, &self.data)?;
        let r = eval::evaluate_session(&mut s, &input, &self.data.eval)?;
        Ok((path, diff, tract, r))
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
    input: &str,
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
    step.set_batch(&[GBatch::F32(&images)], GBatch::I64(&labels))?;
    step.run()?;
    let out = exported_session.run(&[(
        input,
        koala_runtime::TensorView::f32(&batch.images, &batch.shape),
    )])?;
    let exported = out[0]
        .as_f32()
        .context("exported model output is not float32")?;
    let per_row = step.model_output().len() / b;
    if exported.len() != n * per_row {
        bail!("the exported model '{}' returned {} values for {n} images; the training graph gives {per_row} per image", path.display(), exported.len());
    }
    let ours = &step.model_output()[..n * per_row];
    let tract = crate::tract_check::first_output(path, &batch.shape, &batch.images)
        .map(|t| crate::tract_check::max_abs_diff(&t, exported))
        .map_err(|e| format!("{e:#}"));
    Ok((crate::tract_check::max_abs_diff(exported, ours), tract))
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
    let mut model = Model::load(&cfg.model)?;
    if let Some(n) = cfg.num_classes {
        koala_graph::head::replace_head(&mut model, n, cfg.seed)?;
    }
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
    let updated = koala_graph::export::with_weights(
        &model,
        tensors.iter().map(|(n, w)| (n.as_str(), w.as_slice())),
    )?;
    koala_graph::export::save(&updated, output, Some(&cfg.model))?;
    Ok(output.to_path_buf())
}

/// A model with a fixed input resolution needs `--image-size` to match it;
/// say so up front instead of failing inside the graph builder.
fn check_image_size(model: &Model, input: &str, cfg: &TrainConfig) -> Result<()> {
    let Some(info) = model.graph().input.iter().find(|i| i.name == input) else {
        return Ok(());
    };
    let dims = koala_graph::training::declared_dims(info);
    if dims.len() == 4 {
        if let (Some(h), Some(w)) = (dims[2], dims[3]) {
            let size = &cfg.image_size;
            if (h, w) != (i64::from(size.height), i64::from(size.width)) {
                let want = if h == w {
                    h.to_string()
                } else {
                    format!("{h}x{w}")
                };
                bail!("model input '{input}' takes {h}×{w} images but --image-size is {size}; pass --image-size {want}");
            }
        }
    }
    Ok(())
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
