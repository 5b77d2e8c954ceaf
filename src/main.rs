//! The `koala` command line: fine-tune, evaluate, export, check, gradcheck,
//! import, inspect.

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use koala::train::config::{DataFormat, LossVar, TaskKind, TrainConfig};
use koala::train::schedule::ScheduleKind;
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` that stays quiet when stdout is closed early (`koala … | head`):
/// a reader that stops reading is not an error, and must not panic koala.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Exit code when a check or gradcheck finds problems.
const EXIT_FINDINGS: u8 = 3;
/// Exit code for errors (bad input, failed run).
const EXIT_ERROR: u8 = 1;

#[derive(Parser)]
#[command(
    name = "koala",
    version,
    about = "Fine-tune ONNX models with the KOALA++ Kalman-filter optimizer on stock ONNX Runtime",
    after_help = "Exit codes: 0 success, 1 error, 2 bad command line, 3 check/gradcheck found problems, 130 finetune stopped by Ctrl-C (after writing a checkpoint)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model on a data set, then export the updated ONNX.
    #[command(
        after_help = "Examples:\n  koala finetune --model models/mobilenet_v2/model.onnx --data data/fashion_mnist_small --num-classes 10 --image-size 96 --epochs 2\n  koala finetune --config my_run.toml --lr 0.5\n  koala finetune --resume runs/latest"
    )]
    Finetune(Box<FinetuneArgs>),
    /// Evaluate an ONNX classifier (loss, top-1) or language model (perplexity) on a data set.
    #[command(
        after_help = "Examples:\n  koala eval --model runs/latest/model.onnx --data data/fashion_mnist_small\n    (a koala export records its image size, mean and std; flags override them)\n  koala eval --model resnet18.onnx --data my_val_folder --image-size 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
    )]
    Eval(EvalArgs),
    /// Continue a prompt with an ONNX causal language model.
    #[command(
        after_help = "Examples:\n  koala generate --model models/tiny_llama_shakespeare/model.onnx --prompt 'HAMLET. To be'\n  koala generate --model runs/lm/model.onnx --tokenizer models/tiny_llama_shakespeare/tokenizer.json --prompt 'LYSANDER.' --temperature 0.8 --top-p 0.9 --seed 1"
    )]
    Generate(GenerateArgs),
    /// Write an ONNX model with the weights of a run's checkpoint.
    #[command(after_help = "Example:\n  koala export --run-dir runs/latest --output tuned.onnx")]
    Export(ExportArgs),
    /// Report whether a model can be fine-tuned (ops, parameters, problems): the same pre-flight
    /// as `finetune` (head replacement, training-graph build, ONNX Runtime load), so it accepts
    /// the same options and fails exactly when finetune would refuse the model.
    #[command(
        mut_arg("resume", |a| a.help(CHECK_RESUME_HELP)),
        after_help = "Options that only shape a run's output (--run-dir, --export, --checkpoint-every, --checkpoint-minutes, --log-every, --eval-every, --seed, --prompt, --sample-tokens) are accepted, so a finetune command line can be pasted, and ignored.\n\nExamples:\n  koala check models/mobilenet_v2/model.onnx --freeze '^features\\.[0-9]\\.'\n  koala check --model models/mobilenet_v2/model.onnx --data data/fashion_mnist_small --num-classes 10 --image-size 96\n  koala check --resume runs/latest"
    )]
    Check(Box<CheckArgs>),
    /// Compare koala's gradients with a PyTorch reference case directory.
    #[command(
        after_help = "Example:\n  koala gradcheck --reference tests/fixtures/reference/tiny_cnn"
    )]
    Gradcheck(GradcheckArgs),
    /// Draw a run's loss and accuracy curves, or compare several runs, as a PNG.
    #[command(
        after_help = "Examples:\n  koala plot runs/fashion-koala --output curves.png\n  koala plot runs/fashion-koala runs/fashion-adamw --output koala-vs-adamw.png"
    )]
    Plot {
        /// Run directories (each with a metrics.jsonl).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// PNG file to write.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Convert a pretrained language model (llama.cpp GGUF file or Hugging Face folder) into an
    /// ONNX causal LM that koala fine-tunes, with its tokenizer.
    #[command(
        after_help = "Writes DIR/model.onnx (+ model.onnx.data when the weights reach 2 GiB), DIR/tokenizer.json, DIR/tokenizer_config.json and DIR/config.json. Architectures: llama (Llama, SmolLM2), mistral (read as llama), qwen2. GGUF types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K (dequantised to f32).\n\nExamples:\n  koala import \"$(models/fetch_smollm2.sh)\" --output models/smollm2\n  koala import path/to/hf-model-folder --output models/my-lm"
    )]
    Import(ImportArgs),
    /// Show a model's inputs, outputs, opset and metadata.
    Inspect {
        /// The ONNX file.
        model: PathBuf,
    },
}

#[derive(Args)]
struct FinetuneArgs {
    /// TOML file with any of the options below (command-line flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint, with
    /// its config.toml (no other option: they would be silently ignored).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Pretrained ONNX model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data: a folder with one subfolder per class, a CSV file (path,label), or a folder with IDX files.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Data format (default: detected).
    #[arg(long, value_enum)]
    format: Option<DataFormatArg>,
    /// Separate evaluation data.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Validation fraction held out when there is no evaluation data.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Model input size: N (square, ImageNet recipe) or HxW (e.g. 48x192: exact resize, no augmentation).
    #[arg(long)]
    image_size: Option<koala::train::config::ImageSize>,
    /// Per-channel normalisation mean, e.g. 0.5,0.5,0.5 (default: ImageNet's).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel normalisation std, e.g. 0.5,0.5,0.5 (default: ImageNet's).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    std: Option<Vec<f32>>,
    /// Disable random-resized-crop and flip augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Keep the stored pixels of photos whose EXIF Orientation tag says they are rotated (default: rotate them upright, as photo viewers do).
    #[arg(long)]
    ignore_exif: bool,
    /// Replace the classifier by a fresh one with this many classes.
    #[arg(long)]
    num_classes: Option<usize>,
    /// The model output to train, for a model with several (default: the one whose last
    /// dimension matches the classes and that comes from a classifier head).
    #[arg(long)]
    output: Option<String>,
    /// Train only weights whose name matches this regex.
    #[arg(long)]
    train: Option<String>,
    /// Freeze weights whose name matches this regex.
    #[arg(long)]
    freeze: Option<String>,
    /// Make float tensors held in Constant nodes trainable.
    #[arg(long)]
    train_constants: bool,
    /// koala++ (default), koala-v, koala-m, adamw, sgd, or a preset (vision-cnn, vision-cnn-small-lr, vision-transformer, language-model).
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate. Defaults: koala++ per-tensor min(1, 4 / number of trainable tensors)
    /// (each per-tensor filter removes η of the loss, see the README), joint 0.5,
    /// adamw 1e-4, sgd 1e-2, presets their own.
    // Negative values parse, so validation can name the option
    // instead of clap calling `-1` an unexpected argument.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Weight decay.
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Do not decay biases and normalisation parameters.
    #[arg(long)]
    no_decay_bias_norm: bool,
    /// KOALA σ.
    #[arg(long)]
    sigma: Option<f64>,
    /// KOALA process noise Q.
    #[arg(long)]
    q: Option<f64>,
    /// What KOALA receives as loss variance.
    #[arg(long, value_enum)]
    loss_var: Option<LossVarArg>,
    /// KOALA++: one Kalman filter per weight tensor (per-tensor, the paper's code; default
    /// η 4 / tensors) or one innovation variance shared by all tensors (joint, a koala
    /// extension: η is the fraction of the loss removed per step whatever the number of
    /// tensors; default η 0.5). Without this flag and --koala-diagonal, an image classifier
    /// gets joint + second-moment + --koala-max-step 1e-4 and a language model per-tensor
    /// (README "Which KOALA++").
    #[arg(long, value_enum)]
    koala_innovation: Option<InnovationArg>,
    /// KOALA++: per-coordinate covariance scale: none (the paper's σ·I, Q·I) or
    /// second-moment (σ·D, Q·D with D = 1/(√m̂ + ε) from Adam's running mean of h², a koala
    /// extension; use it with --koala-innovation joint: with per-tensor filters it did not
    /// learn in the README's study).
    #[arg(long, value_enum)]
    koala_diagonal: Option<DiagonalArg>,
    /// KOALA++: the target value f* of its Polyak step (a koala extension): the filter
    /// measures ℓ = L + ½·wd·‖θ‖² − f* instead of the paper's f* = 0. A negative f* keeps
    /// the step from shrinking with the loss, without weight decay's pull towards 0.
    #[arg(long, allow_negative_numbers = true)]
    koala_loss_target: Option<f64>,
    /// KOALA++: bound γ_max on its step (a koala extension, the bounded Polyak step
    /// SPS_max): the step factor η·ℓ/S is clamped to γ_max/(σ+Q), so a first step moves
    /// no weight by more than γ_max (with --koala-diagonal second-moment, whose first step
    /// is a sign step: Adam's learning-rate unit) or γ_max·|gradient| (without). An image
    /// classifier's default form already has 1e-4; a form you name has none unless given.
    // Negative values parse, so validation can name the option.
    #[arg(long, allow_negative_numbers = true)]
    koala_max_step: Option<f64>,
    /// Which runtime the training graph is written for: ort (the default: convolutions and
    /// their gradients on ONNX Runtime's blocked NCHWc kernels, contrib ops that every stock
    /// x86-64 build ships) or portable (standard ONNX operators only). The exported model is
    /// standard ONNX either way; results agree to float rounding, not bitwise.
    #[arg(long, value_enum)]
    execution_target: Option<TargetArg>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Warmup steps.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u64>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    accumulate: Option<usize>,
    /// Clip the global gradient norm.
    #[arg(long, allow_negative_numbers = true)]
    clip_grad_norm: Option<f64>,
    /// Label smoothing.
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Evaluate every N steps (default: each epoch).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Log every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// ONNX Runtime threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Run directory.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Exported model path (default: <run-dir>/model.onnx).
    #[arg(long)]
    export: Option<PathBuf>,
    /// Use only the first N training samples.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Write a checkpoint every N steps (default: at each evaluation, see --eval-every).
    #[arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// Also write a checkpoint when this many minutes passed since the last one, so a
    /// crash costs at most that much (default 10; 0: only the step-based checkpoints of
    /// --checkpoint-every).
    #[arg(long)]
    checkpoint_minutes: Option<f64>,
    /// The task (default: detected from the model's inputs: an int64 `input_ids` input is a
    /// causal LM, a float image input an image classifier).
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// Causal LM: the model's tokenizer.json (default: tokenizer.json next to the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Causal LM: tokens per training sequence (default 128).
    #[arg(long)]
    block_size: Option<usize>,
    /// Causal LM: data format: auto (by extension and first line), plain, jsonl-text,
    /// prompt-completion or chat.
    #[arg(long)]
    text_format: Option<String>,
    /// Causal LM: prompt of the sample completions before and after training.
    #[arg(long)]
    prompt: Option<String>,
    /// Causal LM: new tokens in each sample completion (0: none; default 48).
    #[arg(long)]
    sample_tokens: Option<usize>,
    /// LoRA: train rank-r adapters W + (α/r)·B·A around the chosen weights instead of the
    /// weights themselves; the export is the merged model plus a PEFT adapter (adapter/).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA α (default 2·r: the update's scale α/r stays 2 whatever the rank).
    #[arg(long, allow_negative_numbers = true)]
    lora_alpha: Option<f32>,
    /// LoRA: regex over weight names choosing the adapted weights (default: attention and MLP
    /// projections, q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).
    #[arg(long)]
    lora_targets: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TaskArg {
    ImageClassification,
    CausalLm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DataFormatArg {
    Auto,
    Idx,
    Folder,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LossVarArg {
    /// mean(lᵢ²) of the per-sample losses (original KOALA).
    SecondMoment,
    /// L², the square of the batch-mean loss (KOALA++ vision scripts).
    Square,
    /// mean(lᵢ²) − L², the per-sample variance.
    Variance,
    /// Exactly 0 (KOALA++ language-model scripts).
    Zero,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    /// Stock ONNX Runtime: convolutions on its blocked (NCHWc) kernels where the CPU has
    /// them; 2.3–2.8× faster MobileNetV2 steps (README "Training step").
    Ort,
    /// Standard ONNX operators only.
    Portable,
}

impl From<TargetArg> for koala::graph::ExecutionTarget {
    fn from(t: TargetArg) -> Self {
        match t {
            TargetArg::Ort => Self::Ort,
            TargetArg::Portable => Self::Portable,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InnovationArg {
    /// One filter per weight tensor (the reference KOALA++).
    PerTensor,
    /// One innovation variance for all trained tensors (koala extension).
    Joint,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DiagonalArg {
    /// σ·I and Q·I (the reference KOALA++).
    None,
    /// σ·D and Q·D, D from the running second moment of the gradient (koala extension).
    SecondMoment,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
    Linear,
    Step,
}

#[derive(Args)]
struct GenerateArgs {
    /// ONNX causal language model (with or without a KV cache).
    #[arg(long)]
    model: PathBuf,
    /// Its tokenizer.json (default: tokenizer.json next to the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most (stops earlier at the end-of-text token).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to p.
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add the tokenizer's special tokens (e.g. BOS) to the prompt.
    #[arg(long)]
    add_special_tokens: bool,
    /// Keep going past the end-of-text token.
    #[arg(long)]
    ignore_eos: bool,
    /// ONNX Runtime threads.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct EvalArgs {
    /// ONNX classifier, or causal language model (detected from an `input_ids` input).
    #[arg(long)]
    model: PathBuf,
    /// Data (folder, CSV, or IDX folder: its t10k split is used); for a language model a
    /// text file, folder of .txt files or JSONL file.
    #[arg(long)]
    data: PathBuf,
    /// Language model: its tokenizer.json (default: tokenizer.json next to the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Language model: tokens per evaluated sequence.
    #[arg(long, default_value_t = 128)]
    block_size: usize,
    /// Model input size: N (square, resize the shorter side to N·256/224 and center-crop) or
    /// HxW (exact resize). Default: what the model's metadata records (a koala export), else
    /// the model's fixed input size, else 224.
    #[arg(long)]
    image_size: Option<koala::train::config::ImageSize>,
    /// Per-channel normalisation mean, e.g. 0.5,0.5,0.5. Default: the model's metadata, else
    /// ImageNet's. Ignored for a uint8 input (the model normalises).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel normalisation std, e.g. 0.5,0.5,0.5. Default: the model's metadata, else
    /// ImageNet's.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    std: Option<Vec<f32>>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Keep the stored pixels of photos whose EXIF Orientation tag says they are rotated.
    /// Default: what the model's metadata records (a run with --ignore-exif), else rotate them upright.
    #[arg(long, conflicts_with = "apply_exif")]
    ignore_exif: bool,
    /// Rotate photos upright by their EXIF Orientation tag even if the model's metadata records
    /// that its run ignored it.
    #[arg(long)]
    apply_exif: bool,
    /// Classifier: the output to score, for a model with several (default: chosen as
    /// finetune chooses).
    #[arg(long)]
    output: Option<String>,
    /// ONNX Runtime threads.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    run_dir: PathBuf,
    /// Checkpoint step (default: the best, else the latest).
    #[arg(long)]
    step: Option<u64>,
    /// Output ONNX path.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    /// A .gguf file, or a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    input: PathBuf,
    /// Folder to write model.onnx, tokenizer.json, tokenizer_config.json and config.json into.
    #[arg(long, short)]
    output: PathBuf,
    /// Replace koala's files in a non-empty output folder (other files there are kept).
    #[arg(long)]
    force: bool,
}

/// `--resume` for `koala check`: it checks a run's recorded options, it continues nothing.
const CHECK_RESUME_HELP: &str = "Check the run in this directory: its config.toml, as `koala finetune --resume` would use it (no other option)";

#[derive(Args)]
struct CheckArgs {
    /// The ONNX file (or --model / --config / --resume RUN_DIR).
    #[arg(value_name = "MODEL")]
    model_file: Option<PathBuf>,
    /// Every `finetune` option: `koala check` runs finetune's pre-flight for that command line
    /// (with --data it also opens the data and checks it against the model).
    #[command(flatten)]
    run: FinetuneArgs,
}

#[derive(Args)]
struct GradcheckArgs {
    /// Reference case directory (case.json + model.onnx + raw binaries).
    #[arg(long)]
    reference: PathBuf,
    /// ONNX Runtime threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Conv weight-gradient formulation.
    #[arg(long, value_enum, default_value = "auto")]
    conv_weight_grad: ConvGradArg,
    /// Keep BatchNormalization nodes instead of folding them into the Conv weights.
    #[arg(long)]
    keep_batchnorm: bool,
    /// The training graph's execution target (see `koala finetune --help`): ort (default)
    /// or portable.
    #[arg(long, value_enum)]
    execution_target: Option<TargetArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConvGradArg {
    Auto,
    TransposedConv,
    UnfoldDepthwise,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    if let Some(e) = resume_with_other_options(&matches) {
        e.exit();
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => match e.downcast_ref::<koala::train::interrupt::Interrupted>() {
            Some(stopped) => {
                eprintln!("{stopped}");
                ExitCode::from(koala::train::interrupt::EXIT_INTERRUPTED)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_ERROR)
            }
        },
    }
}

/// `finetune --resume RUN_DIR` (and `check --resume`) take no other option: the run's
/// config.toml holds them all. The error names the options given beside it (clap's
/// `exclusive` only says "one or more of the other specified arguments").
fn resume_with_other_options(m: &clap::ArgMatches) -> Option<clap::Error> {
    let (name, sub) = m.subcommand()?;
    if !matches!(name, "finetune" | "check")
        || sub.value_source("resume") != Some(ValueSource::CommandLine)
    {
        return None;
    }
    let mut cmd = Cli::command();
    cmd.build();
    let sub_cmd = cmd.find_subcommand_mut(name)?;
    // The options given on the command line, as the user wrote them (ids of flattened
    // groups are not arguments and are left out).
    let given: Vec<String> = sub_cmd
        .get_arguments()
        .filter(|a| {
            a.get_id() != "resume"
                && sub.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
        })
        .map(|a| match a.get_long() {
            Some(long) => format!("--{long}"),
            None => a
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| a.get_id().to_string(), |v| v.to_string()),
        })
        .collect();
    if given.is_empty() {
        return None;
    }
    Some(sub_cmd.error(
        clap::error::ErrorKind::ArgumentConflict,
        format!(
            "--resume RUN_DIR takes no other option (the run's RUN_DIR/config.toml holds them), but {} {} given: drop {}, or edit the value in RUN_DIR/config.toml before resuming (e.g. max_steps or epochs to train longer; a changed value applies from the checkpoint on)",
            given.join(", "),
            if given.len() == 1 { "was" } else { "were" },
            if given.len() == 1 { "it" } else { "them" },
        ),
    ))
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Finetune(a) => finetune(*a),
        Command::Eval(a) => eval(a),
        Command::Export(a) => export(a),
        Command::Generate(a) => generate(a),
        Command::Check(a) => check(*a),
        Command::Gradcheck(a) => {
            let opts = koala::graph::gradcheck::GradcheckOptions {
                threads: a.threads,
                backward: koala::graph::BackwardOptions {
                    conv_weight_grad: match a.conv_weight_grad {
                        ConvGradArg::Auto => koala::graph::ConvWeightGrad::Auto,
                        ConvGradArg::TransposedConv => koala::graph::ConvWeightGrad::TransposedConv,
                        ConvGradArg::UnfoldDepthwise => {
                            koala::graph::ConvWeightGrad::UnfoldDepthwise
                        }
                    },
                    keep_batchnorm: a.keep_batchnorm,
                    target: a.execution_target.map(Into::into).unwrap_or_default(),
                    ..Default::default()
                },
            };
            let report = koala::graph::gradcheck::run(&a.reference, &opts)?;
            out!("{report}");
            Ok(if report.pass() { 0 } else { EXIT_FINDINGS })
        }
        Command::Plot { runs, output } => {
            plot(&runs, &output)?;
            out!("wrote {}", output.display());
            Ok(0)
        }
        Command::Import(a) => {
            let opts = koala_import::ImportOptions {
                force: a.force,
                ..Default::default()
            };
            let report = koala_import::import(&a.input, &a.output, &opts)?;
            out!("{}", report.summary(&a.input).trim_end());
            Ok(0)
        }
        Command::Inspect { model } => {
            let m = koala::graph::Model::load(&model)?;
            out!("{}", koala::inspect(&m));
            Ok(0)
        }
    }
}

fn finetune(a: FinetuneArgs) -> Result<u8> {
    // Ctrl-C stops at the next step boundary with a checkpoint (a second one at once).
    koala::train::interrupt::install()?;
    let summary = if let Some(dir) = &a.resume {
        koala::train::resume(dir)?
    } else {
        let mut cfg = match &a.config {
            Some(p) => TrainConfig::from_toml_file(p)?,
            None => TrainConfig::default(),
        };
        let image_size_given = a.image_size.is_some()
            || a.config
                .as_deref()
                .is_some_and(koala::train::preprocess_metadata::config_sets_image_size);
        let given = koala::train::preflight::SizesGiven {
            image_size: image_size_given,
            batch_size: a.batch_size.is_some() || a.config.is_some(),
            accumulate: a.accumulate.is_some() || a.config.is_some(),
        };
        apply(&mut cfg, a);
        koala::train::preprocess_metadata::adopt_for_finetune(&mut cfg, given)?;
        koala::train::finetune(cfg)?
    };
    out!("{}", koala::summary_text(&summary));
    Ok(0)
}

/// Command-line flags override the config file.
fn apply(c: &mut TrainConfig, a: FinetuneArgs) {
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { c.$f = v; } )* };
    }
    macro_rules! set_opt {
        ($($f:ident),*) => { $( if a.$f.is_some() { c.$f = a.$f; } )* };
    }
    set!(
        model,
        data,
        val_fraction,
        image_size,
        optimizer,
        warmup_steps,
        epochs,
        batch_size,
        accumulate,
        label_smoothing,
        log_every,
        seed,
        run_dir
    );
    set_opt!(
        mean,
        std,
        eval_data,
        num_classes,
        output,
        train,
        freeze,
        lr,
        weight_decay,
        sigma,
        q,
        max_steps,
        clip_grad_norm,
        eval_every,
        checkpoint_every,
        koala_loss_target,
        koala_max_step,
        threads,
        export,
        limit_train,
        lora_rank,
        lora_alpha,
        lora_targets
    );
    if let Some(m) = a.checkpoint_minutes {
        c.checkpoint_minutes = m;
    }
    if let Some(f) = a.format {
        c.format = match f {
            DataFormatArg::Auto => DataFormat::Auto,
            DataFormatArg::Idx => DataFormat::Idx,
            DataFormatArg::Folder => DataFormat::Folder,
            DataFormatArg::Csv => DataFormat::Csv,
        };
    }
    if let Some(v) = a.loss_var {
        c.loss_var = Some(match v {
            LossVarArg::SecondMoment => LossVar::SecondMoment,
            LossVarArg::Square => LossVar::Square,
            LossVarArg::Variance => LossVar::Variance,
            LossVarArg::Zero => LossVar::Zero,
        });
    }
    if let Some(i) = a.koala_innovation {
        c.koala_innovation = Some(match i {
            InnovationArg::PerTensor => koala_optim::KoalaPPInnovation::PerTensor,
            InnovationArg::Joint => koala_optim::KoalaPPInnovation::Joint,
        });
    }
    if let Some(t) = a.execution_target {
        c.execution_target = Some(t.into());
    }
    if let Some(d) = a.koala_diagonal {
        c.koala_diagonal = Some(match d {
            DiagonalArg::None => koala_optim::KoalaPPDiagonal::None,
            DiagonalArg::SecondMoment => koala_optim::KoalaPPDiagonal::SecondMoment,
        });
    }
    if let Some(s) = a.schedule {
        c.schedule = match s {
            ScheduleArg::Constant => ScheduleKind::Constant,
            ScheduleArg::Cosine => ScheduleKind::Cosine,
            ScheduleArg::Linear => ScheduleKind::Linear,
            ScheduleArg::Step => ScheduleKind::Step,
        };
    }
    if let Some(t) = a.task {
        c.task = Some(match t {
            TaskArg::ImageClassification => TaskKind::ImageClassification,
            TaskArg::CausalLm => TaskKind::CausalLm,
        });
    }
    if a.tokenizer.is_some() {
        c.tokenizer = a.tokenizer;
    }
    if let Some(v) = a.block_size {
        c.block_size = v;
    }
    if let Some(v) = a.text_format {
        c.text_format = v;
    }
    if a.prompt.is_some() {
        c.prompt = a.prompt;
    }
    if let Some(v) = a.sample_tokens {
        c.sample_tokens = v;
    }
    c.augment &= !a.no_augment;
    c.ignore_exif |= a.ignore_exif;
    c.no_decay_bias_norm |= a.no_decay_bias_norm;
    c.train_constants |= a.train_constants;
}

/// `koala check`: finetune's pre-flight for the same options. Without --image-size or
/// --batch-size (and no config file), a model's fixed input size and batch are used.
fn check(a: CheckArgs) -> Result<u8> {
    let mut cfg = if let Some(dir) = &a.run.resume {
        let mut cfg = koala::train::trainer::read_run_config(dir)?;
        // What `finetune --resume` would run: the keys a run directory written before
        // them lacks take the values that run was made with.
        koala::train::trainer::pin_for_resume(&mut cfg);
        cfg
    } else if let Some(p) = &a.run.config {
        TrainConfig::from_toml_file(p)?
    } else {
        TrainConfig::default()
    };
    let from_file = a.run.resume.is_some() || a.run.config.is_some();
    let with_data = from_file || a.run.data.is_some();
    let given = koala::train::preflight::SizesGiven {
        image_size: a.run.image_size.is_some(),
        batch_size: a.run.batch_size.is_some(),
        accumulate: a.run.accumulate.is_some(),
    };
    let model_file = a.model_file.clone();
    if a.run.resume.is_none() {
        apply(&mut cfg, a.run);
    }
    if let Some(m) = model_file {
        cfg.model = m;
    }
    if cfg.model.as_os_str().is_empty() {
        anyhow::bail!("koala check needs a model: koala check <MODEL> (or --model, --config, --resume RUN_DIR)");
    }
    if !from_file {
        let model = koala::graph::Model::load(&cfg.model)?;
        for note in koala::train::preflight::sizes_from_model(&model, &mut cfg, given) {
            out!("note: {note}");
        }
    }
    let report = koala::train::preflight::check(&cfg, with_data)?;
    out!("{report}");
    Ok(if report.ok() { 0 } else { EXIT_FINDINGS })
}

fn eval(a: EvalArgs) -> Result<u8> {
    // Every sample of the data (for an IDX folder: its t10k split), in order,
    // without augmentation.
    if !a.data.exists() {
        anyhow::bail!("data path '{}' does not exist", a.data.display());
    }
    let model = koala::graph::Model::load(&a.model)?;
    koala::train::preflight::refuse_training_mode(&model)?;
    if koala::graph::lm_signature::is_language_model(&model) {
        return eval_lm(&a, &model);
    }
    let flags = koala::train::preprocess_metadata::Flags {
        image_size: a.image_size,
        mean: a.mean.clone(),
        std: a.std.clone(),
        ignore_exif: match (a.ignore_exif, a.apply_exif) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    };
    let options = koala::train::eval::ClassifierEvalOptions {
        flags,
        output: a.output.clone(),
        batch_size: a.batch_size,
        threads: a.threads,
    };
    let (r, unreadable, evaluated) =
        koala::train::eval::evaluate_classifier_file(&a.model, &model, &a.data, &options)?;
    out!(
        "{} samples of '{}'{}: loss {:.4}, top-1 {:.2}%",
        r.samples,
        evaluated.display(),
        unreadable_note(unreadable),
        r.loss,
        100.0 * r.accuracy
    );
    Ok(0)
}

/// ` (2 unreadable files skipped, named above)` for the eval summary line; empty when none was.
fn unreadable_note(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => " (1 unreadable file skipped, named above)".into(),
        n => format!(" ({n} unreadable files skipped, named above)"),
    }
}

/// Perplexity of a causal LM on a text file (every sequence, in order).
fn eval_lm(a: &EvalArgs, model: &koala::graph::Model) -> Result<u8> {
    use koala::data::text::{TextDataset, TextLoader, TextLoaderConfig, TextOptions};
    let tokenizer =
        koala::train::causal_lm::open_tokenizer(&a.model, a.tokenizer.as_deref(), model)?;
    let data = TextDataset::open(&a.data, &tokenizer, &TextOptions::new(a.block_size))?;
    let loader = TextLoader::new(
        std::sync::Arc::new(data),
        TextLoaderConfig::eval(a.batch_size),
    )?;
    let start = std::time::Instant::now();
    let mut ev = koala::train::causal_lm::LmEvaluator::plain(model, a.threads)?;
    let r = ev.evaluate(&[], &loader)?;
    let secs = start.elapsed().as_secs_f64();
    out!(
        "{} tokens of '{}' in blocks of {}: loss {:.4}, perplexity {:.3}, token accuracy {:.2}% ({:.0} tokens/s)",
        r.samples,
        a.data.display(),
        a.block_size,
        r.loss,
        r.loss.exp(),
        100.0 * r.accuracy,
        r.samples as f64 / secs
    );
    Ok(0)
}

fn generate(a: GenerateArgs) -> Result<u8> {
    let model = koala::graph::Model::load(&a.model)?;
    koala::train::preflight::refuse_training_mode(&model)?;
    let tokenizer =
        koala::train::causal_lm::open_tokenizer(&a.model, a.tokenizer.as_deref(), &model)?;
    let prompt = tokenizer.encode(&a.prompt, a.add_special_tokens)?;
    let sampling = koala::train::generate::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut g = koala::train::generate::Generator::new(&model, a.threads)?
        .with_vocab_limit(tokenizer.vocab_size());
    let stop = if a.ignore_eos {
        vec![]
    } else {
        vec![tokenizer.eos_id()]
    };
    let ids = g.generate(&prompt, a.max_new_tokens, &stop, &sampling)?;
    out!("{}{}", a.prompt, tokenizer.decode(&ids)?);
    Ok(0)
}

fn export(a: ExportArgs) -> Result<u8> {
    let path = koala::train::trainer::export_checkpoint(&a.run_dir, a.step, &a.output)
        .context("export failed")?;
    out!("wrote {}", path.display());
    Ok(0)
}

/// One run: its curves; several: a comparison, each run named by its folder.
fn plot(runs: &[PathBuf], output: &std::path::Path) -> Result<()> {
    let mut loaded = Vec::with_capacity(runs.len());
    for r in runs {
        let records = koala::train::metrics::read(&r.join("metrics.jsonl")).with_context(|| {
            format!(
                "'{}' is not a koala run directory with metrics",
                r.display()
            )
        })?;
        let name = r
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.display().to_string());
        loaded.push((name, records));
    }
    if let [(name, records)] = loaded.as_slice() {
        koala::train::plot::write_plot(records, name, output)
    } else {
        koala::train::plot::write_comparison(&loaded, output)
    }
}
