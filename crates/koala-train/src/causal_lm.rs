//! The causal-LM task: token ids in, next-token logits out, the causal-LM
//! cross-entropy (shift inside the training graph, labels −100 ignored,
//! padding masked), metrics loss / perplexity / token accuracy / tokens per
//! second, and the best checkpoint at the lowest evaluation loss.
//!
//! Data comes from koala-data's `text` module (packed plain text, JSONL,
//! prompt/completion or chat) tokenized with the model's `tokenizer.json`.
//! The training graph leaves out the `B·T·V` logits: its token count and
//! correct-token count are scalar outputs of the loss head. Evaluation runs
//! the model itself (weights bound as inputs, one session) and scores every
//! counted position in f64. Before and after training a sample completion is
//! printed and written to `samples.txt` in the run directory.

use crate::config::TrainConfig;
use crate::eval::{self, EvalResult};
use crate::generate::{lm_feeds, Generator, Sampling};
use crate::task::{
    BestMetric, DataStats, Direction, ExportCheck, Fed, Task, TaskKind, TrainCounts,
};
use anyhow::{bail, Context, Result};
use koala_data::text::{
    TextBatch, TextBatchIter, TextDataset, TextLoader, TextLoaderConfig, TextOptions, TextTokenizer,
};
use koala_data::Cursor;
use koala_graph::lm_signature::{self, LmSignature};
use koala_graph::loss::{IGNORE_INDEX, TOKEN_CORRECT, TOKEN_COUNT};
use koala_graph::step::{Batch as GBatch, TrainStep};
use koala_graph::tied::{self, TiedCopy};
use koala_graph::training::TrainingGraph;
use koala_graph::{LossSpec, Model, TrainableSpec, TrainingSpec};
use koala_runtime::{Session, SessionOptions, TensorView};
use std::path::Path;
use std::sync::Arc;

/// Fine-tuning a causal language model on text.
pub struct CausalLm {
    cfg: TrainConfig,
    tokenizer: TextTokenizer,
    sig: LmSignature,
    train: TextLoader,
    eval: TextLoader,
    eval_split: &'static str,
    stream: Option<TextBatchIter>,
    tied: Vec<TiedCopy>,
    evaluator: Option<LmEvaluator>,
    /// Position ids `0..T` per row (right padding keeps real tokens' positions).
    positions: Vec<i64>,
}

/// The model's language-model signature; a model that is not one (forced with `--task
/// causal-lm`) gets the flag that fits it.
fn signature(model: &Model) -> Result<LmSignature> {
    match lm_signature::detect(model) {
        Ok(sig) => Ok(sig),
        Err(e) if !lm_signature::is_language_model(model) => Err(e.context(
            "the causal-LM task needs a language model (for an image classifier pass --task image-classification)",
        )),
        Err(e) => Err(e),
    }
}

/// The training specification for `cfg` on `model`: token ids (and mask, positions, an empty
/// KV cache) at `--batch-size` × `--block-size`, the causal-LM loss inside the graph, the
/// trainable selection. Needs no data, so `koala check` runs it too ([`crate::preflight`]).
pub fn training_spec(cfg: &TrainConfig, model: &Model) -> Result<TrainingSpec> {
    let sig = signature(model)?;
    Ok(TrainingSpec {
        input_shapes: sig.input_shapes(cfg.batch_size, cfg.block_size),
        loss: LossSpec::CausalLm {
            ignore_index: IGNORE_INDEX,
            attention_mask: sig.attention_mask.clone(),
        },
        trainable: TrainableSpec {
            // A LoRA run trains its adapters only: base weights, embeddings and norms stay frozen.
            include: match cfg.lora_rank {
                Some(_) => Some(koala_graph::lora::ADAPTER_PATTERN.into()),
                None => cfg.train.clone(),
            },
            exclude: cfg.freeze.clone(),
            train_constants: cfg.train_constants,
        },
        probe_threads: cfg.threads.unwrap_or(2),
        backward: koala_graph::BackwardOptions {
            target: cfg.execution_target.unwrap_or_default(),
            ..Default::default()
        },
        omit_model_output: true,
        ..TrainingSpec::default()
    })
}

/// Opens the tokenizer of the model at `model_path` (`given`, else
/// `tokenizer.json` beside the model) and checks that every id it can
/// produce has a row in the model's embedding. Used by training, `eval` and
/// `generate`, so all three refuse a mismatched tokenizer the same way.
pub fn open_tokenizer(
    model_path: &Path,
    given: Option<&Path>,
    model: &Model,
) -> Result<TextTokenizer> {
    let path = match given {
        Some(t) => t.to_path_buf(),
        None => {
            let beside = model_path
                .parent()
                .unwrap_or(Path::new("."))
                .join("tokenizer.json");
            if !beside.exists() {
                bail!(
                    "no tokenizer for {}: pass --tokenizer <tokenizer.json> (the Hugging Face tokenizer file of the model; koala looked for {})",
                    model_path.display(),
                    beside.display()
                );
            }
            beside
        }
    };
    let tokenizer = TextTokenizer::open(&path)?;
    if let Some(rows) = embedding_rows(model) {
        tokenizer.check_vocab(rows)?;
    }
    Ok(tokenizer)
}

/// Copies `tokenizer.json` (and `tokenizer_config.json`) of `tokenizer` next to the
/// exported model `export`, so `koala generate`/`eval` find it without `--tokenizer`;
/// never overwrites a file that is there.
pub fn copy_tokenizer_beside(tokenizer: &TextTokenizer, export: &Path) -> Result<()> {
    let dir = export.parent().unwrap_or(Path::new("."));
    let files = [Some(tokenizer.path()), tokenizer.config_path()];
    for src in files.into_iter().flatten() {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = dir.join(name);
        if !dst.exists() {
            let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            koala_graph::model::write_atomic(&dst, &bytes)?;
        }
    }
    Ok(())
}

/// Rows of the model's token embedding (the vocabulary the model can read).
pub fn embedding_rows(model: &Model) -> Option<usize> {
    let g = model.graph();
    let gather = g.node.iter().find(|n| {
        n.op_type == "Gather" && n.input.get(1).map(|s| s.as_str()) == Some(lm_signature::INPUT_IDS)
    })?;
    let table = gather.input.first()?;
    g.initializer
        .iter()
        .find(|t| &t.name == table)
        .and_then(|t| t.dims.first().map(|&d| d as usize))
}

impl CausalLm {
    /// Opens the tokenizer and the text data of `cfg` for `model`.
    pub fn new(cfg: &TrainConfig, model: &Model) -> Result<CausalLm> {
        let sig = signature(model)?;
        let tokenizer = open_tokenizer(&cfg.model, cfg.tokenizer.as_deref(), model)?;
        let options = TextOptions {
            vocab_limit: embedding_rows(model),
            format: cfg.text_format.parse()?,
            ..TextOptions::new(cfg.block_size)
        };
        let all = TextDataset::open(&cfg.data, &tokenizer, &options)?;
        let (train, eval, eval_split) = match &cfg.eval_data {
            Some(e) => (all, TextDataset::open(e, &tokenizer, &options)?, "eval"),
            None if cfg.val_fraction <= 0.0 => bail!(
                "--val-fraction 0 leaves no text to evaluate on: pass --eval-data <file>, or a fraction above 0"
            ),
            None => {
                let (t, v) = all.split(cfg.val_fraction, cfg.seed)?;
                (t, v, "val")
            }
        };
        let train = match cfg.limit_train {
            Some(n) => limit(train, n)?,
            None => train,
        };
        if train.len() < cfg.batch_size {
            bail!(
                "{} gives {} training sequences of {} tokens, fewer than one batch of {}: use more text, a smaller --block-size or a smaller --batch-size",
                cfg.data.display(),
                train.len(),
                cfg.block_size,
                cfg.batch_size
            );
        }
        let c = train.counts();
        let cut = if c.truncated > 0 {
            format!(
                ", {} examples longer than --block-size cut at the right",
                c.truncated
            )
        } else {
            String::new()
        };
        eprintln!(
            "text: {} training sequences of {} tokens ({} tokens, {} predicted{cut}), {} {eval_split} sequences",
            c.examples,
            cfg.block_size,
            c.tokens,
            c.predicted_tokens,
            eval.len()
        );
        let train = TextLoader::new(
            Arc::new(train),
            TextLoaderConfig {
                shuffle: true,
                drop_last: true,
                ..TextLoaderConfig::train(cfg.batch_size, cfg.seed)
            },
        )?;
        if train.batches_per_epoch() == 0 {
            bail!(
                "{} gives {} training sequences of {} tokens, fewer than one batch of {}: use more text, a smaller --block-size or a smaller --batch-size",
                cfg.data.display(),
                train.dataset().len(),
                cfg.block_size,
                cfg.batch_size
            );
        }
        let eval = TextLoader::new(Arc::new(eval), TextLoaderConfig::eval(cfg.batch_size))?;
        Ok(CausalLm {
            positions: LmSignature::position_ids_for(cfg.batch_size, cfg.block_size),
            cfg: cfg.clone(),
            tokenizer,
            sig,
            train,
            eval,
            eval_split,
            stream: None,
            tied: Vec::new(),
            evaluator: None,
        })
    }

    /// A sample completion of the model at `path` (or `model`), for the log.
    fn sample(&self, model: &Model) -> Result<Option<(String, String)>> {
        if self.cfg.sample_tokens == 0 {
            return Ok(None);
        }
        let prompt_ids = match &self.cfg.prompt {
            Some(p) => self.tokenizer.encode(p, false)?,
            None => {
                let ex = &self.eval.dataset().examples()[0];
                ex.input_ids[..ex.input_ids.len().min(16)].to_vec()
            }
        };
        let prompt = self.tokenizer.decode(&prompt_ids)?;
        let mut g =
            Generator::new(model, self.cfg.threads)?.with_vocab_limit(self.tokenizer.vocab_size());
        let sampling = Sampling {
            temperature: 0.7,
            top_p: Some(0.9),
            seed: self.cfg.seed,
            ..Sampling::default()
        };
        let ids = g.generate(
            &prompt_ids,
            self.cfg.sample_tokens,
            &[self.tokenizer.eos_id()],
            &sampling,
        )?;
        Ok(Some((prompt, self.tokenizer.decode(&ids)?)))
    }

    fn record_sample(&self, when: &str, model: &Model) -> Result<()> {
        let Some((prompt, completion)) = self.sample(model)? else {
            return Ok(());
        };
        let text = format!(
            "--- sample {when} (temperature 0.7, top-p 0.9, seed {})\n{prompt}⟨{completion}⟩\n",
            self.cfg.seed
        );
        eprint!("{text}");
        let path = self.cfg.run_dir.join("samples.txt");
        let mut all = std::fs::read_to_string(&path).unwrap_or_default();
        if when == "before training" {
            all.clear();
        }
        all.push_str(&text);
        koala_graph::model::write_atomic(&path, all.as_bytes())
    }

    fn copy_tokenizer_beside(&self, export: &Path) -> Result<()> {
        copy_tokenizer_beside(&self.tokenizer, export)
    }

    /// Writes `b` into the training graph's data inputs and labels.
    fn set_batch(&self, step: &mut TrainStep, b: &TextBatch) -> Result<()> {
        let names: Vec<String> = step
            .graph()
            .data_inputs
            .iter()
            .map(|d| d.0.clone())
            .collect();
        let feeds = self.data_feeds(&names, b)?;
        step.set_batch(&feeds, GBatch::I64(&b.labels))
    }

    /// The feeds of the model's data inputs for one batch, in `names` order.
    fn data_feeds<'a>(&'a self, names: &[String], b: &'a TextBatch) -> Result<Vec<GBatch<'a>>> {
        names
            .iter()
            .map(|n| {
                Ok(if *n == self.sig.input_ids {
                    GBatch::I64(&b.input_ids)
                } else if Some(n) == self.sig.attention_mask.as_ref() {
                    GBatch::I64(&b.attention_mask)
                } else if Some(n) == self.sig.position_ids.as_ref() {
                    GBatch::I64(&self.positions)
                } else if self.sig.past.iter().any(|p| &p.name == n) {
                    GBatch::F32(&[])
                } else {
                    bail!("koala does not know what to feed the language model's input '{n}'")
                })
            })
            .collect()
    }
}

/// The first `n` training sequences (quick experiments).
fn limit(d: TextDataset, n: usize) -> Result<TextDataset> {
    let examples = d.examples().iter().take(n).cloned().collect();
    Ok(TextDataset::from_examples(
        examples,
        d.block_size(),
        d.pad_id(),
    )?)
}

/// Predicted positions of a batch: targets `t ≥ 1` that are not ignored and
/// not hidden by the attention mask (what the loss head counts).
fn predicted(b: &TextBatch) -> usize {
    (0..b.batch)
        .flat_map(|r| (1..b.seq).map(move |t| r * b.seq + t))
        .filter(|&i| b.labels[i] != IGNORE_INDEX && b.attention_mask[i] != 0)
        .count()
}

impl Task for CausalLm {
    fn kind(&self) -> TaskKind {
        TaskKind::CausalLm
    }

    fn check_graph(&mut self, graph: &TrainingGraph) -> Result<()> {
        self.tied = graph.tied.clone();
        for want in [TOKEN_COUNT, TOKEN_CORRECT] {
            if !graph.metric_outputs.iter().any(|m| m == want) {
                bail!("internal: the causal-LM training graph has no '{want}' output");
            }
        }
        for c in &graph.tied {
            eprintln!(
                "note: '{}' duplicates '{}'{}; trained as one tensor, written back to both",
                c.copy,
                c.canonical,
                if c.transposed { " (transposed)" } else { "" }
            );
        }
        Ok(())
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.batches_per_epoch()
    }

    fn start_training(&mut self, from: Cursor) {
        self.stream = Some(self.train.iter(from, u64::MAX));
    }

    fn feed(&mut self, step: &mut TrainStep) -> Result<Fed> {
        let batch = self
            .stream
            .as_mut()
            .context("the training stream was not started")?
            .next()
            .context("the text loader stopped unexpectedly")?;
        self.set_batch(step, &batch)?;
        let fed = Fed {
            samples: batch.batch,
            tokens: predicted(&batch),
            next: batch.next,
        };
        if let Some(s) = &self.stream {
            s.recycle(batch);
        }
        Ok(fed)
    }

    fn count(&self, step: &TrainStep, counts: &mut TrainCounts) {
        let metrics = &step.graph().metric_outputs;
        let get = |name: &str| {
            metrics
                .iter()
                .position(|m| m == name)
                .map_or(0, |k| step.metric(k).round() as usize)
        };
        counts.correct += get(TOKEN_CORRECT);
        counts.scored += get(TOKEN_COUNT);
    }

    fn data_stats(&self) -> DataStats {
        DataStats {
            skipped: Vec::new(),
            wait_time: self
                .stream
                .as_ref()
                .map_or(0.0, |s| s.wait_time().as_secs_f64()),
            short_batches: 0,
            unused_samples: 0,
        }
    }

    fn prepare_evaluation(
        &mut self,
        model: &Model,
        trainable: &[(String, Vec<usize>)],
    ) -> Result<()> {
        // The evaluation graph must see tied copies as their canonical tensor,
        // which is the one that trains. Tied on the evaluation graph, which holds no trained
        // values, rather than on a clone of the model (0.5 GB for SmolLM2-135M, at the
        // graph-build phase's peak).
        let sig = lm_signature::detect(model)?;
        let mut graph = eval::eval_graph(model, trainable)?;
        tied::tie(&mut graph, &self.tied);
        self.evaluator = Some(LmEvaluator::from_eval_graph(
            sig,
            &graph,
            trainable,
            self.cfg.threads,
        )?);
        self.record_sample("before training", model)?;
        Ok(())
    }

    fn evaluate(&mut self, weights: &[&[f32]]) -> Result<EvalResult> {
        let ev = self
            .evaluator
            .as_mut()
            .context("evaluation was not prepared")?;
        ev.evaluate(weights, &self.eval)
    }

    fn eval_split(&self) -> &'static str {
        self.eval_split
    }

    fn best_metric(&self) -> BestMetric {
        BestMetric {
            name: "loss".into(),
            direction: Direction::Lower,
        }
    }

    fn describe(&self, r: &EvalResult) -> String {
        format!(
            "{} loss {:.4}, perplexity {:.2}, token accuracy {:.2}% ({} tokens)",
            self.eval_split,
            r.loss,
            r.loss.exp(),
            100.0 * r.accuracy,
            r.samples
        )
    }

    fn check_export(&mut self, path: &Path, step: &mut TrainStep) -> Result<ExportCheck> {
        let exported = Model::load(path)?;
        self.copy_tokenizer_beside(path)?;
        let mut written = LmEvaluator::plain(&exported, self.cfg.threads)?;
        // The first evaluation batch through the written file and through the
        // training graph (final weights): the same loss, and the file's logits
        // equal the evaluation graph's (the model with the weights bound).
        let batch = self
            .eval
            .epoch(0)
            .next()
            .context("the evaluation split is empty: nothing to verify the export with")?;
        let (file_loss, file_logits) = written.batch_logits_loss(&batch, &[])?;
        self.set_batch(step, &batch)?;
        step.run()?;
        let graph_loss = step.loss() as f64;
        if (file_loss - graph_loss).abs() > 1e-4 * graph_loss.abs().max(1.0) {
            bail!(
                "the exported model '{}' gives loss {file_loss:.6} on the first {} batch, the training graph {graph_loss:.6}: the export does not reproduce the trained model",
                path.display(),
                self.eval_split
            );
        }
        let weights: Vec<&[f32]> = (0..step.graph().trainable.len())
            .map(|k| step.weight(k))
            .collect();
        let ev = self
            .evaluator
            .as_mut()
            .context("evaluation was not prepared")?;
        let (_, graph_logits) = ev.batch_logits_loss(&batch, &weights)?;
        let max_diff = crate::tract_check::max_abs_diff(&file_logits, &graph_logits);
        let eval = written.evaluate(&[], &self.eval)?;
        // The sample's generator loads its own session of the file: this one's copy of the
        // weights would only add to the export phase's peak (the whole run's, for LoRA).
        drop(written);
        self.record_sample("after training", &exported)?;
        Ok(ExportCheck {
            max_diff,
            tract: Err("not run for language models (tract's check feeds float images)".into()),
            eval,
        })
    }
}

/// Scores an ONNX causal LM on text batches: mean next-token cross-entropy
/// over counted positions (f64), token accuracy, tokens counted.
pub struct LmEvaluator {
    session: Session,
    sig: LmSignature,
    logits: String,
    weights: Vec<(String, Vec<usize>)>,
}

impl LmEvaluator {
    /// The model as it is (for `koala eval` and the written file).
    pub fn plain(model: &Model, threads: Option<usize>) -> Result<LmEvaluator> {
        LmEvaluator::with_weights(model, &[], threads)
    }

    /// The model with the tensors `trainable` bound as inputs at each call.
    pub fn with_weights(
        model: &Model,
        trainable: &[(String, Vec<usize>)],
        threads: Option<usize>,
    ) -> Result<LmEvaluator> {
        let sig = lm_signature::detect(model)?;
        // Serialised straight from `model` when nothing is bound (no 0.5 GB clone for
        // SmolLM2-135M).
        if trainable.is_empty() {
            return LmEvaluator::from_eval_graph(sig, model, trainable, threads);
        }
        let graph = eval::eval_graph(model, trainable)?;
        LmEvaluator::from_eval_graph(sig, &graph, trainable, threads)
    }

    /// An evaluator over `graph`, the model with the `trainable` tensors as inputs
    /// ([`eval::eval_graph`]), or the model itself when none are; `sig` is the model's
    /// input signature.
    pub fn from_eval_graph(
        sig: LmSignature,
        graph: &Model,
        trainable: &[(String, Vec<usize>)],
        threads: Option<usize>,
    ) -> Result<LmEvaluator> {
        let model = graph;
        let bytes = model.to_bytes();
        let opts = SessionOptions {
            intra_threads: threads,
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&bytes, &opts)
            .with_context(|| format!("ONNX Runtime could not load {}", model.display_name()))?;
        let logits = model
            .graph()
            .output
            .first()
            .map(|o| o.name.clone())
            .context("the model has no outputs")?;
        Ok(LmEvaluator {
            session,
            sig,
            logits,
            weights: trainable.to_vec(),
        })
    }

    /// Logits of one batch and its mean loss over counted positions.
    fn batch_logits_loss(&mut self, b: &TextBatch, weights: &[&[f32]]) -> Result<(f64, Vec<f32>)> {
        let (sum, n, _, logits) = self.run_batch(b, weights)?;
        Ok((sum / n.max(1) as f64, logits))
    }

    fn run_batch(
        &mut self,
        b: &TextBatch,
        weights: &[&[f32]],
    ) -> Result<(f64, usize, usize, Vec<f32>)> {
        let shape = [b.batch, b.seq];
        let positions = LmSignature::position_ids_for(b.batch, b.seq);
        let past_shapes: Vec<[usize; 4]> = self
            .sig
            .past
            .iter()
            .map(|p| [b.batch, p.heads, 0, p.head_dim])
            .collect();
        let empty_past: Vec<TensorView> = past_shapes
            .iter()
            .map(|s| TensorView::f32(&[], s))
            .collect();
        let mut feeds = lm_feeds(
            &self.sig,
            TensorView::i64(&b.input_ids, &shape),
            TensorView::i64(&b.attention_mask, &shape),
            TensorView::i64(&positions, &shape),
            &empty_past,
        );
        for ((name, s), w) in self.weights.iter().zip(weights) {
            feeds.push((name.as_str(), TensorView::f32(w, s)));
        }
        let out = self.session.run(&feeds)?;
        let logits = out
            .iter()
            .find(|o| o.name == self.logits)
            .and_then(|o| o.as_f32())
            .context("the model's first output (logits) is not float32")?
            .to_vec();
        let v = logits.len() / (b.batch * b.seq);
        let (mut sum, mut n, mut correct) = (0.0, 0, 0);
        for r in 0..b.batch {
            for t in 0..b.seq - 1 {
                let i = r * b.seq + t + 1;
                let y = b.labels[i];
                if y == IGNORE_INDEX || b.attention_mask[i] == 0 {
                    continue;
                }
                let row = &logits[(r * b.seq + t) * v..(r * b.seq + t + 1) * v];
                let (ce, ok) = eval::score_row(row, y);
                sum += ce;
                n += 1;
                correct += ok as usize;
            }
        }
        Ok((sum, n, correct, logits))
    }

    /// Loss (mean over counted tokens), token accuracy and tokens counted
    /// (in `samples`) over one pass of `loader`.
    pub fn evaluate(&mut self, weights: &[&[f32]], loader: &TextLoader) -> Result<EvalResult> {
        let (mut sum, mut n, mut correct) = (0.0, 0usize, 0usize);
        for b in loader.epoch(0) {
            let (s, k, c, _) = self.run_batch(&b, weights)?;
            sum += s;
            n += k;
            correct += c;
        }
        if n == 0 {
            bail!("the evaluation text has no predicted tokens (every label is ignored)");
        }
        Ok(EvalResult {
            loss: sum / n as f64,
            accuracy: correct as f64 / n as f64,
            samples: n,
        })
    }
}
