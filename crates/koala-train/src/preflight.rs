//! The pre-flight of a fine-tuning run: everything `koala finetune` decides about the *model*
//! before it touches data, in one code path that `koala check` runs too.
//!
//! Why one path: a `check` that looks at the model differently from `finetune` says "no
//! problems" for models that `finetune` then refuses (BatchNormalization with
//! `training_mode=1`, Dropout with a constant-true `training_mode`: issue 8, fault 8). Here both
//! commands prepare the model the same way (a new head for `--num-classes`), derive the same
//! [`TrainingSpec`], run the static report of [`koala_graph::check`], then *build* the training
//! graph and load it into ONNX Runtime. Any refusal on the way becomes an error in the report, so
//! `check` fails exactly when `finetune` would, and `finetune` stops with the same words.

use crate::config::TrainConfig;
use crate::task::TaskKind;
use anyhow::{Context, Result};
use koala_graph::check::{self, CheckReport, Problem, Severity};
use koala_graph::step::TrainStep;
use koala_graph::{Model, TrainingSpec};

/// What the pre-flight found, and what it built when nothing stood in the way.
pub struct Preflight {
    /// The task the run trains.
    pub task: TaskKind,
    /// The model as the run trains it (head replaced when `--num-classes` asks for it).
    pub model: Model,
    /// The static report plus the outcome of building and loading the training graph.
    pub report: CheckReport,
    /// The loaded training graph, when the report has no error.
    pub step: Option<TrainStep>,
}

impl Preflight {
    /// The report's errors as one message (what `finetune` stops with).
    pub fn errors(&self) -> String {
        let errors: Vec<String> = self
            .report
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| {
                if p.suggestion.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}\n  → {}", p.message, p.suggestion)
                }
            })
            .collect();
        format!(
            "{} cannot be fine-tuned as configured (`koala check` prints the full report):\n{}",
            self.report.model,
            errors.join("\n")
        )
    }
}

/// Runs the pre-flight of `cfg` on `model` for `task`: prepare, specify, check, build, load.
///
/// Errors only for what is not a finding about the model (an unreadable config); every
/// refusal about the model is a [`Severity::Error`] problem in the report.
pub fn run(
    cfg: &TrainConfig,
    mut model: Model,
    task: TaskKind,
    data_classes: Option<usize>,
    quiet: bool,
) -> Result<Preflight> {
    let mut extra = Vec::new();
    if task == TaskKind::ImageClassification {
        extra.extend(head_note(&model, cfg));
    }
    let prepared = prepare_model(&mut model, cfg, task, quiet);
    let spec = prepared.and_then(|()| training_spec(cfg, &model, task, data_classes));
    let trainable = match &spec {
        Ok(s) => s.trainable.clone(),
        Err(_) => koala_graph::TrainableSpec {
            include: cfg.train.clone(),
            exclude: cfg.freeze.clone(),
            train_constants: cfg.train_constants,
        },
    };
    let hint = crate::image_classification::class_hint(cfg, data_classes);
    let mut report = check::check_output(&model, &trainable, cfg.output.as_deref(), hint)
        .with_context(|| format!("checking {}", model.display_name()))?;
    if task == TaskKind::ImageClassification {
        if let Ok(image) = crate::image_input::ImageInput::of_model(&model) {
            extra.push(Problem {
                severity: Severity::Note,
                message: image.describe()
                    + &image.note.map(|n| format!(" ({n})")).unwrap_or_default(),
                suggestion: String::new(),
            });
        }
    }
    if let (false, TaskKind::ImageClassification, Ok(_)) = (quiet, task, &spec) {
        if let Some(line) =
            crate::image_classification::output_choice_line(&model, cfg, data_classes)
        {
            eprintln!("{line}");
        }
    }
    let mut step = None;
    match spec {
        Err(e) => extra.push(error(format!("{e:#}"))),
        Ok(spec) if report.ok() => match build(&model, &spec, cfg.threads) {
            Ok(s) => {
                extra.push(built_note(&s));
                step = Some(s);
            }
            Err(e) => extra.push(error(format!("{e:#}"))),
        },
        // The static report already names what stands in the way; building would only
        // repeat it less clearly.
        Ok(_) => {}
    }
    drop_notes_repeated_as_errors(&mut report.problems, &extra);
    for p in extra {
        // The static check and the training specification can find the same fault
        // (e.g. a --mean of the wrong length): say it once.
        if !report.problems.iter().any(|q| q.message == p.message) {
            report.problems.push(p);
        }
    }
    Ok(Preflight {
        task,
        model,
        report,
        step,
    })
}

/// The classifier head `--num-classes` replaces (found before it is replaced), as a note;
/// none when koala cannot tell the output or find a head (`--num-classes` then says why).
fn head_note(model: &Model, cfg: &TrainConfig) -> Option<Problem> {
    let choice = crate::image_classification::choose_output(model, cfg, None).ok()?;
    let head = koala_graph::head::find_head(model, &choice).ok()?;
    Some(Problem {
        severity: Severity::Note,
        message: head.describe(cfg.num_classes),
        suggestion: String::new(),
    })
}

/// Model preparation per task (a fresh classifier head for `--num-classes`; LoRA adapters
/// for `--lora-rank`).
pub fn prepare_model(
    model: &mut Model,
    cfg: &TrainConfig,
    task: TaskKind,
    quiet: bool,
) -> Result<()> {
    match (task, cfg.lora()) {
        (TaskKind::ImageClassification, Some(_)) => anyhow::bail!(
            "--lora-rank is for language models (the causal-lm task) for now: fine-tune this image classifier without it (or with --train/--freeze)"
        ),
        (TaskKind::ImageClassification, None) => {
            crate::image_classification::prepare_model(model, cfg, quiet)
        }
        (TaskKind::CausalLm, Some(lora)) => crate::lora::insert_adapters(model, &lora, quiet),
        (TaskKind::CausalLm, None) => Ok(()),
    }
}

/// The training specification of `task` for `cfg` on the prepared `model` (no data needed;
/// the data's class count, when known, helps an image classifier choose among its outputs).
pub fn training_spec(
    cfg: &TrainConfig,
    model: &Model,
    task: TaskKind,
    data_classes: Option<usize>,
) -> Result<TrainingSpec> {
    match task {
        TaskKind::ImageClassification => {
            crate::image_classification::training_spec(cfg, model, data_classes)
        }
        TaskKind::CausalLm => crate::causal_lm::training_spec(cfg, model),
    }
}

/// Builds the training graph and loads it into ONNX Runtime (what every step then runs).
fn build(model: &Model, spec: &TrainingSpec, threads: Option<usize>) -> Result<TrainStep> {
    let graph = koala_graph::build(model, spec)
        .with_context(|| format!("building the training graph of {}", model.display_name()))?;
    TrainStep::new(graph, threads).with_context(|| {
        format!(
            "loading the training graph koala built from {} into ONNX Runtime (a koala bug if the model itself runs in ONNX Runtime: please report it with the model)",
            model.display_name()
        )
    })
}

fn built_note(step: &TrainStep) -> Problem {
    let g = step.graph();
    let mut message = format!(
        "training graph built and loaded by ONNX Runtime: {} nodes, {} trainable tensors, {}",
        g.proto.graph.as_ref().map_or(0, |g| g.node.len()),
        g.trainable.len(),
        match &g.nchwc {
            Some(s) if s.convs_total == 0 => {
                "ort target (no convolution: the same graph as portable)".into()
            }
            Some(s) => format!(
                "ort target ({} of {} convolutions on ORT's blocked NCHWc kernels)",
                s.convs, s.convs_total
            ),
            None => "portable target (standard ONNX operators only)".into(),
        }
    );
    if !g.unreachable.is_empty() {
        message += &format!(
            "; {} selected weight(s) do not influence the loss and stay frozen: {}",
            g.unreachable.len(),
            g.unreachable.join(", ")
        );
    }
    Problem {
        severity: Severity::Note,
        message,
        suggestion: String::new(),
    }
}

/// The static report's note (e.g. "cannot tell which output holds the class scores") is left
/// out when the pre-flight's error says the same: the user reads it once, as the error.
fn drop_notes_repeated_as_errors(problems: &mut Vec<Problem>, errors: &[Problem]) {
    problems.retain(|p| {
        p.severity != Severity::Note
            || !errors
                .iter()
                .any(|e| e.severity == Severity::Error && e.message.contains(&p.message))
    });
}

fn error(message: String) -> Problem {
    Problem {
        severity: Severity::Error,
        message,
        suggestion: String::new(),
    }
}

/// `koala check`: the pre-flight of the run `cfg` describes, and — when `with_data` — the data
/// checks `finetune` makes next (classes against outputs, tokenizer against embedding).
pub fn check(cfg: &TrainConfig, with_data: bool) -> Result<CheckReport> {
    let model = Model::load(&cfg.model)?;
    // The option checks finetune runs first: check fails whenever finetune would.
    let settings = cfg.validate_settings().err();
    let task = cfg.task.unwrap_or_else(|| crate::task::detect(&model));
    // As in finetune: the data first (its class count helps choose the output), then the model.
    let data = with_data.then(|| crate::task::create(cfg, &model));
    let classes = match &data {
        Some(Ok(t)) => t.class_count(),
        _ => None,
    };
    let pf = run(cfg, model, task, classes, true)?;
    let mut report = pf.report;
    if let Some(e) = settings {
        report.problems.insert(0, error(format!("{e:#}")));
    }
    match (data, &pf.step) {
        (Some(Err(e)), _) => report.problems.push(error(format!("{e:#}"))),
        (Some(Ok(mut t)), Some(step)) => match t.check_graph(step.graph()) {
            Ok(()) => report.problems.push(Problem {
                severity: Severity::Note,
                message: format!("data '{}' opened and matches the model", cfg.data.display()),
                suggestion: String::new(),
            }),
            Err(e) => report.problems.push(error(format!("{e:#}"))),
        },
        _ => {}
    }
    Ok(report)
}

/// The default `--batch-size` of a language model: the image default of 32 sequences of 128
/// tokens needs about 18 GB for SmolLM2-135M's training graph (killed by the kernel on a
/// 23 GB machine in a new-user tryout); 4 × 128 needs about 6–10 GB.
pub const LM_DEFAULT_BATCH: usize = 4;

/// Which sizes the command line (or a config file) set: the ones a model's fixed input
/// shape must not override.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizesGiven {
    pub image_size: bool,
    pub batch_size: bool,
    pub accumulate: bool,
}

/// For `finetune` and `check` alike: an image model's fixed input size and batch instead of
/// the defaults, where not given. A fixed batch smaller than the default one is made up by
/// gradient accumulation (fixed batch 1: `--batch-size 1 --accumulate 32`), so the
/// effective batch stays the default. Returns one line per adopted value, for the log.
pub fn sizes_from_model(model: &Model, cfg: &mut TrainConfig, given: SizesGiven) -> Vec<String> {
    let mut notes = Vec::new();
    if crate::task::create_kind(cfg, model) == TaskKind::CausalLm {
        if !given.batch_size {
            cfg.batch_size = LM_DEFAULT_BATCH;
        }
        notes.push(format!(
            "batches of {} sequences × {} tokens (--batch-size{}, --block-size)",
            cfg.batch_size,
            cfg.block_size,
            if given.batch_size {
                ""
            } else {
                ": the default for language models"
            }
        ));
        return notes;
    }
    let Ok(image) = crate::image_input::ImageInput::of_model(model) else {
        return notes;
    };
    let Some(info) = model.graph().input.iter().find(|i| i.name == image.name) else {
        return notes;
    };
    let dims = koala_graph::training::declared_dims(info);
    if dims.is_empty() {
        return notes;
    }
    if let (false, Some(b)) = (given.batch_size, dims[0]) {
        if b > 0 && b as usize != cfg.batch_size {
            let b = b as usize;
            if !given.accumulate {
                cfg.accumulate = (cfg.batch_size / b).max(1);
            }
            cfg.batch_size = b;
            notes.push(format!(
                "the model's fixed batch size is {b}: --batch-size {b} --accumulate {} (effective batch {}; pass --batch-size {b} --accumulate N to choose)",
                cfg.accumulate,
                b * cfg.accumulate
            ));
        }
    }
    if let (false, Some((height, width))) = (given.image_size, image.fixed_size) {
        let size = crate::image_size::ImageSize { height, width };
        if size != cfg.image_size {
            notes.push(format!(
                "image size {size}: the model's fixed input size (--image-size cannot change it)"
            ));
            cfg.image_size = size;
        }
    }
    notes
}

/// Refuses a model exported in training mode (BatchNormalization `training_mode=1`, Dropout
/// with a true `training_mode`): its evaluation would depend on the batch size or be random.
/// `koala eval` and `koala generate` call it; `check`/`finetune` report the same findings.
pub fn refuse_training_mode(model: &Model) -> Result<()> {
    let found = check::training_mode_problems(model);
    if let Some(first) = found.first() {
        let lines: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
        anyhow::bail!(
            "{} was exported in training mode:\n  {}\n  → {}",
            model.display_name(),
            lines.join("\n  "),
            first.suggestion
        );
    }
    Ok(())
}
