//! Causal-LM training-step throughput: koala's training graph (forward +
//! shifted cross-entropy + backward, run by ONNX Runtime) on a causal LM — the
//! shipped tiny Llama (`models/tiny_llama_shakespeare`) by default, or any
//! model `koala import` wrote (`--model models/smollm2/model.onnx`), full
//! fine-tuning or LoRA (`--lora-rank 8`) — with ORT running the inference
//! model alone as the in-run baseline, plus the process's peak RSS.
//!
//! Run: `cargo bench --bench lm_step [-- --threads 2 --train REGEX --shapes 8x128,1x256,4x64
//! --model PATH --lora-rank R]`.
//! `KOALA_BENCH_JSON=path` also writes the numbers as JSON; that is what
//! `benches/pytorch/compare_lm_step.py` reads to put PyTorch eager beside them.
//! `KOALA_BENCH_SAVE_GRAPH=path.onnx` writes the training graph it builds (weights as
//! inputs, so the file is small), for inspecting what a step keeps alive.
//! Each shape also prints ONNX Runtime's arena counters for the step: the peak of live
//! intermediate tensors and what the arena reserved for them.
//! With LoRA, `KOALA_BENCH_ADAPTER_DIR=dir` writes the adapters as initialised
//! (PEFT format, the same files a run exports) so that PyTorch's side starts
//! from the same `A` and its gradients can be compared.
//!
//! Inputs are fed as training feeds them (Optimum's signature: `input_ids`,
//! an all-ones `attention_mask`, `position_ids` 0…T−1, an empty KV cache).
//! Token ids are the bytes of `data/shakespeare/midsummer_nights_dream_gut.txt`
//! modulo the vocabulary (for the tiny model every byte < 512, so the ids are
//! the bytes): the step's cost does not depend on which ids it sees, and
//! tokenizer speed is not what this measures. Batch `k` is the `k`-th run of `B·T` consecutive ids
//! (rows of `T`), cycled; the labels are the ids themselves (the loss head
//! shifts them, as Hugging Face's `*ForCausalLM` does).

use anyhow::{bail, Context, Result};
use clap::Parser;
use koala::graph::lm_signature::{self, LmSignature};
use koala::graph::lora::{self, Adapter, LoraConfig};
use koala::graph::step::{Batch, TrainStep};
use koala::graph::{LossSpec, Model, TrainableSpec, TrainingSpec};
use koala::runtime::memory::{self, reset_peak_rss};
use koala::runtime::{Session, SessionOptions, TensorView, TensorViewMut};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The default model and the text this benchmark runs on (relative to the repository root).
const DEFAULT_MODEL: &str = "models/tiny_llama_shakespeare/model.onnx";
const TEXT: &str = "data/shakespeare/midsummer_nights_dream_gut.txt";

/// Untimed runs before each timed block (ORT's arenas and the memory-pattern
/// planner settle during the first runs of a shape).
const WARMUP: usize = 3;

/// Command line. Every option also reads an environment variable (the flag
/// wins), because `compare_lm_step.py` and CI set those more easily than
/// `cargo bench -- …`.
#[derive(Parser, Debug)]
#[command(about = "tiny-LM training step (koala) against ORT inference forward")]
struct Args {
    /// ONNX Runtime intra-op threads, inter-op is 1 [env KOALA_BENCH_THREADS; default 2].
    #[arg(long)]
    threads: Option<usize>,
    /// Train only the weights whose name matches (default: all 38 tensors).
    /// E.g. `^model\.norm` trains one tensor whose gradient path avoids the
    /// transformer ops, for trying the harness before every rule exists
    /// [env KOALA_BENCH_TRAIN].
    #[arg(long)]
    train: Option<String>,
    /// Batch×sequence shapes, comma-separated [env KOALA_BENCH_SHAPES; default 8x128,1x256,4x64].
    #[arg(long)]
    shapes: Option<String>,
    /// Timed runs per shape, split over two rounds [env KOALA_BENCH_REPS; default 30].
    #[arg(long)]
    reps: Option<usize>,
    /// Write the numbers as JSON here [env KOALA_BENCH_JSON].
    #[arg(long)]
    json: Option<PathBuf>,
    /// The causal LM (relative to the repository root or absolute), e.g.
    /// `models/smollm2/model.onnx` after `koala import` [env KOALA_BENCH_MODEL;
    /// default models/tiny_llama_shakespeare/model.onnx].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Train LoRA adapters of this rank (α = 2r, the default targets, as
    /// `koala finetune --lora-rank`) instead of every weight [env KOALA_BENCH_LORA_RANK].
    #[arg(long)]
    lora_rank: Option<usize>,
    /// With LoRA: write the adapters as initialised here (PEFT format) [env KOALA_BENCH_ADAPTER_DIR].
    #[arg(long)]
    adapter_dir: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The resolved options.
struct Options {
    threads: usize,
    train: Option<String>,
    shapes: Vec<(usize, usize)>,
    reps: usize,
    json: Option<PathBuf>,
    model: PathBuf,
    lora: Option<LoraConfig>,
    adapter_dir: Option<PathBuf>,
}

impl Options {
    /// Flag, else environment variable, else default.
    fn resolve(a: Args) -> Result<Options> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, flag: Option<usize>, default: usize| -> Result<usize> {
            match (flag, env(name)) {
                (Some(n), _) => Ok(n),
                (None, Some(v)) => v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{name}={v} is not a positive integer")),
                (None, None) => Ok(default),
            }
        };
        let shapes = a
            .shapes
            .or_else(|| env("KOALA_BENCH_SHAPES"))
            .unwrap_or_else(|| "8x128,1x256,4x64".to_string());
        Ok(Options {
            threads: number("KOALA_BENCH_THREADS", a.threads, 2)?.max(1),
            train: a.train.or_else(|| env("KOALA_BENCH_TRAIN")),
            shapes: parse_shapes(&shapes)?,
            reps: number("KOALA_BENCH_REPS", a.reps, 30)?.div_ceil(2).max(1) * 2,
            json: a
                .json
                .or_else(|| env("KOALA_BENCH_JSON").map(PathBuf::from)),
            model: root().join(
                a.model
                    .or_else(|| env("KOALA_BENCH_MODEL").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL)),
            ),
            lora: match (a.lora_rank, env("KOALA_BENCH_LORA_RANK")) {
                (None, None) => None,
                (flag, _) => {
                    let rank = number("KOALA_BENCH_LORA_RANK", flag, 8)?;
                    Some(LoraConfig {
                        rank,
                        alpha: 2.0 * rank as f32,
                        targets: lora::DEFAULT_TARGETS.into(),
                        seed: 0,
                    })
                }
            },
            adapter_dir: a
                .adapter_dir
                .or_else(|| env("KOALA_BENCH_ADAPTER_DIR").map(PathBuf::from)),
        })
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Parses `8x128,1x256` into `[(8, 128), (1, 256)]`.
fn parse_shapes(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (b, t) = part.split_once('x').with_context(|| {
                format!("shape '{part}' in --shapes: write BATCHxSEQ, e.g. 8x128")
            })?;
            let num = |v: &str| {
                v.parse::<usize>().ok().filter(|&n| n > 0).with_context(|| {
                    format!("shape '{part}' in --shapes: '{v}' is not a positive integer")
                })
            };
            Ok((num(b)?, num(t)?))
        })
        .collect()
}

/// The text's bytes as token ids below `vocab`.
fn token_ids(path: &Path, vocab: usize) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.iter().map(|&b| (b as usize % vocab) as i64).collect())
}

/// Batch `k` of `n` ids: the `k`-th (cycled) run of `n` consecutive ids.
fn batch_of(ids: &[i64], n: usize, k: usize) -> &[i64] {
    let count = ids.len() / n;
    let s = (k % count) * n;
    &ids[s..s + n]
}

/// The vocabulary size: the last dimension of the model's first output (`logits`).
fn vocab_size(model: &Model) -> Result<usize> {
    let name = model.display_name();
    let out = model
        .graph()
        .output
        .first()
        .with_context(|| format!("{name} has no outputs"))?;
    koala::graph::training::declared_dims(out)
        .last()
        .copied()
        .flatten()
        .map(|v| v as usize)
        .with_context(|| {
            format!(
                "{name}: output '{}' has no fixed last (vocabulary) dimension",
                out.name
            )
        })
}

fn median_of(t: &mut [f64]) -> f64 {
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

/// Appends the times (seconds) of `reps` calls of `f` to `times`, after
/// `WARMUP` untimed calls.
fn time_block(reps: usize, times: &mut Vec<f64>, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    for i in 0..WARMUP + reps {
        let s = Instant::now();
        f()?;
        if i >= WARMUP {
            times.push(s.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// The process's peak resident set size in MiB (`koala::runtime::memory`): the
/// high-water mark of the whole process — ONNX Runtime's arenas, every session built so
/// far and the graphs included.
fn peak_rss_mib() -> Option<f64> {
    memory::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64)
}

/// Numbers of one `B×T` shape.
struct ShapeResult {
    batch: usize,
    seq: usize,
    build_s: f64,
    /// Peak RSS while the training graph was built (the shape probe runs the
    /// model once keeping every intermediate value), MiB.
    build_peak_mib: Option<f64>,
    /// Peak RSS of training steps alone, MiB: after the timing, the forward
    /// baseline's session is closed, the peak reset, and three more steps run.
    /// What a `koala finetune` process holds while it trains, less the
    /// optimizer's state (KOALA++: a few vectors per tensor, AdamW: two
    /// copies of the trained weights).
    steps_peak_mib: Option<f64>,
    forward_ms: f64,
    step_ms: f64,
    loss_batch0: f32,
    /// L2 norm of each trained tensor's gradient at batch 0, by name
    /// (compare_lm_step.py checks PyTorch's against them).
    grad_norms_batch0: Vec<(String, serde_json::Value)>,
    trainable_tensors: usize,
    trainable_params: usize,
}

impl ShapeResult {
    fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    fn tokens_per_s(&self, ms: f64) -> f64 {
        self.tokens() as f64 / (ms * 1e-3)
    }

    fn row(&self) -> String {
        let mib = |v: Option<f64>| v.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
        format!(
            "| {}×{} | {} | {:.2} ms ({:.0} tok/s) | {:.2} ms | {:.0} | {:.2}× | {:.4} | {:.1} s | {} | {} |",
            self.batch,
            self.seq,
            self.tokens(),
            self.forward_ms,
            self.tokens_per_s(self.forward_ms),
            self.step_ms,
            self.tokens_per_s(self.step_ms),
            self.step_ms / self.forward_ms,
            self.loss_batch0,
            self.build_s,
            mib(self.build_peak_mib),
            mib(self.steps_peak_mib),
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "batch": self.batch,
            "seq": self.seq,
            "tokens": self.tokens(),
            "graph_build_s": self.build_s,
            "graph_build_peak_rss_mib": self.build_peak_mib,
            "steps_peak_rss_mib": self.steps_peak_mib,
            "forward_ms": self.forward_ms,
            "forward_tokens_per_s": self.tokens_per_s(self.forward_ms),
            "step_ms": self.step_ms,
            "step_tokens_per_s": self.tokens_per_s(self.step_ms),
            "loss_batch0": self.loss_batch0,
            "grad_l2_batch0": self.grad_norms_batch0.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "trainable_tensors": self.trainable_tensors,
            "trainable_params": self.trainable_params,
        })
    }
}

/// Builds koala's causal-LM training graph for `[batch, seq]` batches, fed
/// as `koala finetune` feeds them (see `koala_train::causal_lm::training_spec`).
/// `model` already carries the LoRA adapters when the run trains them.
/// The model as trained: the file, with LoRA adapters added when asked (the file itself is
/// what ORT's forward baseline runs).
fn trained_model(args: &Options) -> Result<(Model, Vec<Adapter>)> {
    let mut model = Model::load(&args.model)?;
    let adapters = match &args.lora {
        Some(cfg) => lora::apply(&mut model, cfg)?,
        None => Vec::new(),
    };
    Ok((model, adapters))
}

fn build_step(model: &Model, args: &Options, batch: usize, seq: usize) -> Result<TrainStep> {
    let sig = lm_signature::detect(model)?;
    let spec = TrainingSpec {
        input_shapes: sig.input_shapes(batch, seq),
        loss: LossSpec::CausalLm {
            ignore_index: koala::graph::loss::IGNORE_INDEX,
            attention_mask: sig.attention_mask.clone(),
        },
        trainable: TrainableSpec {
            include: match &args.lora {
                Some(_) => Some(lora::ADAPTER_PATTERN.into()),
                None => args.train.clone(),
            },
            ..TrainableSpec::default()
        },
        probe_threads: args.threads,
        omit_model_output: true,
        ..TrainingSpec::default()
    };
    let graph = koala::graph::build(model, &spec).with_context(|| {
        format!(
            "building the training graph of {} at {batch}×{seq} (`koala check` names what is missing)",
            model.display_name()
        )
    })?;
    if let Ok(path) = std::env::var("KOALA_BENCH_SAVE_GRAPH") {
        use prost::Message;
        std::fs::write(&path, graph.proto.encode_to_vec())
            .with_context(|| format!("writing the training graph to {path}"))?;
    }
    TrainStep::new(graph, Some(args.threads))
}

/// The buffers of one `[batch, seq]` batch of token ids, for every input of a
/// causal LM: the ids, an all-ones mask, positions `0…T−1` per row, and an
/// empty KV cache.
struct Feeds<'a> {
    sig: &'a LmSignature,
    mask: Vec<i64>,
    positions: Vec<i64>,
    shape: [usize; 2],
    /// `[batch, kv_heads, 0, head_dim]` of each past input, in `sig.past` order.
    past_dims: Vec<[usize; 4]>,
}

impl<'a> Feeds<'a> {
    fn new(sig: &'a LmSignature, batch: usize, seq: usize) -> Feeds<'a> {
        Feeds {
            sig,
            mask: vec![1; batch * seq],
            positions: LmSignature::position_ids_for(batch, seq),
            shape: [batch, seq],
            past_dims: sig
                .past
                .iter()
                .map(|p| [batch, p.heads, 0, p.head_dim])
                .collect(),
        }
    }

    /// The training step's buffer of input `name`.
    fn step_input<'b>(&'b self, name: &str, ids: &'b [i64]) -> Result<Batch<'b>> {
        Ok(if name == self.sig.input_ids {
            Batch::I64(ids)
        } else if Some(name) == self.sig.attention_mask.as_deref() {
            Batch::I64(&self.mask)
        } else if Some(name) == self.sig.position_ids.as_deref() {
            Batch::I64(&self.positions)
        } else if self.sig.past.iter().any(|p| p.name == name) {
            Batch::F32(&[])
        } else {
            bail!("the benchmark does not know what to feed input '{name}'")
        })
    }

    /// ORT's view of input `name` for the inference forward.
    fn forward_input<'b>(&'b self, name: &str, ids: &'b [i64]) -> Result<TensorView<'b>> {
        Ok(if name == self.sig.input_ids {
            TensorView::i64(ids, &self.shape)
        } else if Some(name) == self.sig.attention_mask.as_deref() {
            TensorView::i64(&self.mask, &self.shape)
        } else if Some(name) == self.sig.position_ids.as_deref() {
            TensorView::i64(&self.positions, &self.shape)
        } else if let Some(k) = self.sig.past.iter().position(|p| p.name == name) {
            TensorView::f32(&[], &self.past_dims[k])
        } else {
            bail!("the benchmark does not know what to feed input '{name}'")
        })
    }
}

/// Writes the adapters of `step` as initialised, in PEFT's format, to `dir`.
fn write_initial_adapters(
    dir: &Path,
    args: &Options,
    lora_cfg: &LoraConfig,
    adapters: &[Adapter],
    step: &TrainStep,
) -> Result<()> {
    let trained: Vec<(&str, &[f32])> = step
        .graph()
        .trainable
        .iter()
        .enumerate()
        .map(|(k, t)| (t.name.as_str(), step.weight(k)))
        .collect();
    koala::train::lora::write_peft_adapter(dir, &args.model, lora_cfg, adapters, &trained)
}

/// Times the ORT inference forward and koala's training step at one shape.
fn bench_shape(
    model: &Model,
    adapters: &[Adapter],
    args: &Options,
    ids: &[i64],
    vocab: usize,
    (batch, seq): (usize, usize),
) -> Result<ShapeResult> {
    let n = batch * seq;
    if ids.len() < n {
        bail!(
            "{TEXT} has {} tokens, fewer than one {batch}×{seq} batch",
            ids.len()
        );
    }
    let sig = lm_signature::detect(model)?;
    let feeds = Feeds::new(&sig, batch, seq);
    let opts = SessionOptions {
        intra_threads: Some(args.threads),
        ..SessionOptions::default()
    };
    let mut fwd = Session::from_file(&args.model, &opts)?;
    let in_names: Vec<String> = fwd.inputs().iter().map(|i| i.name.clone()).collect();
    let out_name = fwd.outputs()[0].name.clone();
    let out_shape = [batch, seq, vocab];
    let mut logits = vec![0f32; n * vocab];

    let t0 = Instant::now();
    // The model with its weights is loaded for the build and dropped after it, as `koala
    // finetune` holds no copy of the trained values beside the step's buffers: the steps'
    // peak RSS is then what a training process needs, not this benchmark's spare copies.
    let mut step = build_step(&trained_model(args)?.0, args, batch, seq)?;
    let build_s = t0.elapsed().as_secs_f64();
    let build_peak_mib = peak_rss_mib();
    let step_names: Vec<String> = step
        .graph()
        .data_inputs
        .iter()
        .map(|d| d.0.clone())
        .collect();
    if let (Some(dir), Some(cfg)) = (&args.adapter_dir, &args.lora) {
        write_initial_adapters(dir, args, cfg, adapters, &step)?;
    }

    // Two rounds of [forward block, step block], so that slow phases of a
    // shared machine hit both alike; batches cycle as in training.
    let (mut t_fwd, mut t_step) = (Vec::new(), Vec::new());
    let (mut kf, mut ks) = (0, 0);
    let half = args.reps / 2;
    for _round in 0..2 {
        time_block(half, &mut t_fwd, || {
            let x = batch_of(ids, n, kf);
            kf += 1;
            let inputs = in_names
                .iter()
                .map(|name| Ok((name.as_str(), feeds.forward_input(name, x)?)))
                .collect::<Result<Vec<_>>>()?;
            fwd.run_into(
                &inputs,
                &mut [(&out_name, TensorViewMut::f32(&mut logits, &out_shape))],
            )?;
            Ok(())
        })?;
        time_block(half, &mut t_step, || {
            let x = batch_of(ids, n, ks);
            ks += 1;
            let data = step_names
                .iter()
                .map(|name| feeds.step_input(name, x))
                .collect::<Result<Vec<_>>>()?;
            step.set_batch(&data, Batch::I64(x))?;
            step.run()
        })?;
    }
    // The forward baseline is not part of a training process: close it and hand the heap
    // pages it freed back (as `koala finetune` does after each phase) before the steps' peak.
    drop(fwd);
    memory::release_free_heap();
    let steps_peak_mib = match reset_peak_rss() {
        true => {
            for k in 0..3 {
                let x = batch_of(ids, n, k);
                let data = step_names
                    .iter()
                    .map(|name| feeds.step_input(name, x))
                    .collect::<Result<Vec<_>>>()?;
                step.set_batch(&data, Batch::I64(x))?;
                step.run()?;
            }
            peak_rss_mib()
        }
        false => None,
    };
    if let Some(a) = step.arena_stats() {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        println!(
            "{batch}×{seq}: ONNX Runtime arena: peak in use {:.0} MiB, reserved {:.0} MiB in {} extensions, largest allocation {:.0} MiB, in use between steps {:.0} MiB",
            mib(a.max_in_use), mib(a.total_allocated), a.extensions, mib(a.max_alloc), mib(a.in_use)
        );
    }
    // The weights never change (no optimizer), so this is the loss of the
    // model as shipped: compare_lm_step.py checks PyTorch gets the same.
    let x0 = batch_of(ids, n, 0);
    let data = step_names
        .iter()
        .map(|name| feeds.step_input(name, x0))
        .collect::<Result<Vec<_>>>()?;
    step.set_batch(&data, Batch::I64(x0))?;
    step.run()?;
    let trainable = &step.graph().trainable;
    let grad_norms_batch0 = trainable
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let sq: f64 = step.grad(k).iter().map(|&g| (g as f64) * (g as f64)).sum();
            (t.name.clone(), serde_json::Value::from(sq.sqrt()))
        })
        .collect();
    Ok(ShapeResult {
        batch,
        seq,
        build_s,
        build_peak_mib,
        steps_peak_mib,
        forward_ms: 1e3 * median_of(&mut t_fwd),
        step_ms: 1e3 * median_of(&mut t_step),
        loss_batch0: step.loss(),
        grad_norms_batch0,
        trainable_tensors: trainable.len(),
        trainable_params: trainable
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum(),
    })
}

fn main() -> Result<()> {
    let args = Options::resolve(Args::parse())?;
    // Graph structure only (signature, vocabulary): the weights are read where a step is
    // built, and ORT's forward baseline loads the file itself.
    let (full, adapters) = trained_model(&args)?;
    let model = full.clone_without_initializers(|t| t.dims.len() > 1);
    drop(full);
    let vocab = vocab_size(&model)?;
    let ids = token_ids(&root().join(TEXT), vocab)?;
    let trained = match (&args.lora, &args.train) {
        (Some(cfg), _) => format!(
            "LoRA rank {} (alpha {}) on {} weights",
            cfg.rank,
            cfg.alpha,
            adapters.len()
        ),
        (None, Some(re)) => format!("weights matching {re}"),
        (None, None) => "all weights".into(),
    };
    println!(
        "{}; ORT intra-op threads: {}; trained: {trained}; median of {} runs per shape after {WARMUP} warm-up runs per block",
        args.model.display(),
        args.threads,
        args.reps,
    );
    println!("| B×T | tokens | ORT inference forward | koala fwd+loss+bwd step | koala tokens/s | step / forward | loss (batch 0) | graph build | peak RSS up to build | peak RSS of training steps |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for &shape in &args.shapes {
        let r = bench_shape(&model, &adapters, &args, &ids, vocab, shape)?;
        println!("{}", r.row());
        results.push(r);
    }
    let peak = peak_rss_mib();
    match peak {
        Some(mib) => println!(
            "peak RSS (VmHWM, the process's high-water mark over all shapes, ORT's arenas included): {mib:.1} MiB"
        ),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
    if let Some(r) = results.first() {
        println!(
            "trained: {} tensors, {} parameters",
            r.trainable_tensors, r.trainable_params
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": args.model.display().to_string(),
            "text": TEXT,
            "threads": args.threads,
            "train": args.train,
            "lora_rank": args.lora.as_ref().map(|l| l.rank),
            "lora_alpha": args.lora.as_ref().map(|l| l.alpha),
            "lora_targets": args.lora.as_ref().map(|l| l.targets.clone()),
            "warmup": WARMUP,
            "reps": args.reps,
            "peak_rss_mib": peak,
            "shapes": results.iter().map(ShapeResult::json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing KOALA_BENCH_JSON={}", path.display()))?;
    }
    Ok(())
}
