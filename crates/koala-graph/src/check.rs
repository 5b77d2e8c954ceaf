//! `koala check`: a report on whether (and how) a model can be fine-tuned,
//! listing every problem at once, each naming the node/op/value with a
//! suggestion. Static: it needs no ONNX Runtime and no data. `koala check` runs it as part of
//! the fine-tuning pre-flight (koala-train's `preflight`), which then builds and loads the
//! training graph, so check and finetune refuse the same models.

use crate::backward::{self, is_non_differentiable, rule_for};
use crate::model::{node_label, Model};
use crate::tensor;
use crate::trainable::{self, TrainableSpec};
use crate::training::declared_dims;
use anyhow::Result;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Supported default-domain opset range (7–10 are upgraded to 17 in the
/// training graph, see `upgrade.rs`).
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=21;

/// Opsets whose forms the gradient rules read directly (the README's op table).
pub const NATIVE_OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Training cannot proceed as is.
    Error,
    /// Worth knowing; training works.
    Note,
}

/// One finding.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Error or note.
    pub severity: Severity,
    /// What and where.
    pub message: String,
    /// What to do.
    pub suggestion: String,
}

/// The check report.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Model name for display.
    pub model: String,
    /// Default-domain opset.
    pub opset: i64,
    /// Op → count.
    pub ops: BTreeMap<String, usize>,
    /// Total float parameters in initializers.
    pub parameters: usize,
    /// Trainable tensors with element counts.
    pub trainable: Vec<(String, usize)>,
    /// Graph inputs with their declared dims.
    pub inputs: Vec<String>,
    /// Image classifiers: which output trains and which value the loss
    /// reads, and why (None for language models or when koala cannot tell,
    /// which is then a note among the problems).
    pub output: Option<String>,
    /// Preprocessing constants (frozen unless `--train` names them), one
    /// line each.
    pub preprocessing: Vec<String>,
    /// Findings.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when no finding is an error.
    pub fn ok(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Error)
    }
}

/// Checks a model against a trainable selection.
pub fn check(model: &Model, spec: &TrainableSpec) -> Result<CheckReport> {
    check_output(model, spec, None, None)
}

/// [`check`] with the classifier output to train (`--output`), if named, and the data's
/// class count when known: the output is chosen exactly as a run chooses it
/// ([`crate::classifier_output::choose`]).
pub fn check_output(
    model: &Model,
    spec: &TrainableSpec,
    output: Option<&str>,
    classes: Option<usize>,
) -> Result<CheckReport> {
    let g = model.graph();
    let mut ops = BTreeMap::new();
    for n in &g.node {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    let parameters = g
        .initializer
        .iter()
        .filter(|t| tensor::to_f32(t).is_ok())
        .map(|t| tensor::numel(&t.dims))
        .sum();
    let mut work = model.clone();
    if spec.train_constants {
        trainable::promote_constants(&mut work);
    }
    // What training will differentiate: the graph upgraded to opset 17 (for
    // opset 7–10 models) and after lowering ORT-domain fusions to standard ops.
    let upgraded = crate::upgrade::upgrade(&mut work);
    let lowered = crate::lower::lower(&mut work)?;
    let mut selected = trainable::select(&work, spec)?;
    selected.retain(|w| !lowered.fixed_tables.contains(w));
    let sizes: Vec<(String, usize)> = selected
        .iter()
        .map(|n| {
            let t = work
                .graph()
                .initializer
                .iter()
                .find(|t| &t.name == n)
                .expect("selected from initializers");
            (n.clone(), tensor::numel(&t.dims))
        })
        .collect();
    let mut problems = Vec::new();
    let opset = model.opset();
    if !OPSETS.contains(&opset) {
        problems.push(Problem {
            severity: Severity::Error,
            message: format!(
                "default-domain opset {opset} is outside the supported range {}–{}",
                OPSETS.start(),
                OPSETS.end()
            ),
            suggestion: if opset < *OPSETS.start() {
                crate::upgrade::TOO_OLD_REMEDY.into()
            } else {
                "re-export the model with opset 21 or lower (e.g. torch.onnx.export(..., opset_version=17))".into()
            },
        });
    } else {
        match &upgraded {
            Ok(up) if up.changed_opset() => problems.push(Problem {
                severity: Severity::Note,
                message: up.note(),
                suggestion: "nothing to do".into(),
            }),
            Ok(_) => {}
            Err(e) => problems.push(Problem {
                severity: Severity::Error,
                message: format!("{e:#}"),
                // Opset 11–15 models are upgraded only when a gradient needs opset 16.
                suggestion: format!(
                    "change what the message names, or re-export the model with opset {} or later (e.g. torch.onnx.export(..., opset_version=17)), which needs no upgrade",
                    if opset > crate::upgrade::MAX_OLD_OPSET { crate::upgrade::SCATTER_REDUCTION_OPSET } else { 11 }
                ),
            }),
        }
    }
    if selected.is_empty() {
        let (message, suggestion) = trainable::nothing_selected(&work, spec);
        problems.push(Problem {
            severity: Severity::Error,
            message,
            suggestion,
        });
    }
    inputs_problems(model, &mut problems);
    problems.extend(training_mode_problems(model));
    if !lowered.rewritten.is_empty() {
        let ops: Vec<String> = lowered
            .rewritten
            .iter()
            .map(|(op, n)| format!("{op} ×{n}"))
            .collect();
        problems.push(Problem {
            severity: Severity::Note,
            message: format!(
                "ONNX Runtime fusions lowered to standard ops for training: {}",
                ops.join(", ")
            ),
            suggestion: "nothing to do: the exported model keeps the original fused ops".into(),
        });
    }
    let merged_decoder = model
        .graph()
        .input
        .iter()
        .any(|i| i.name == "use_cache_branch");
    if crate::lm_signature::is_language_model(model) || merged_decoder {
        if let Err(e) = crate::lm_signature::detect(model) {
            problems.push(Problem {
                severity: Severity::Error,
                message: format!("{e:#}"),
                suggestion: "see the message for the export to use".into(),
            });
        }
    }
    for c in crate::tied::find(&work) {
        problems.push(Problem {
            severity: Severity::Note,
            message: format!(
                "initializers '{}' and '{}' hold the same values{} (a tied weight the exporter wrote twice)",
                c.canonical,
                c.copy,
                if c.transposed { " (transposed)" } else { "" }
            ),
            suggestion: "nothing to do: koala trains them as one tensor and writes it back to both on export".into(),
        });
    }
    // A refused upgrade leaves an old-opset graph whose ops the rules (written
    // for opset 11+) would all report as missing: only the upgrade error is true.
    if upgraded.is_ok() {
        path_problems(&work, &selected, &mut problems);
    }
    for message in crate::backward::lrn_ort_refusals(model) {
        problems.push(Problem {
            severity: Severity::Error,
            message,
            suggestion: "see the message".into(),
        });
    }
    let preprocessing = preprocessing_lines(&work, &selected);
    let output = match classifier_output_report(model, output, classes) {
        Some(Ok(line)) => Some(line),
        Some(Err(p)) => {
            problems.push(p);
            None
        }
        None => None,
    };
    let inputs = g
        .input
        .iter()
        .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
        .map(|i| {
            let dims: Vec<String> = declared_dims(i)
                .iter()
                .map(|d| d.map(|v| v.to_string()).unwrap_or("?".into()))
                .collect();
            format!("{} [{}]", i.name, dims.join(", "))
        })
        .collect();
    Ok(CheckReport {
        model: model.display_name(),
        opset,
        ops,
        parameters,
        trainable: sizes,
        inputs,
        output,
        preprocessing,
        problems,
    })
}

/// Nodes exported in *training* mode: BatchNormalization with `training_mode=1` normalises
/// with each batch's own statistics (so every result depends on the batch size), and Dropout
/// with a true (or unknown) `training_mode` input drops random values. koala fine-tunes and
/// evaluates in inference mode (PyTorch's `model.eval()`), so `check`, `finetune` and `eval`
/// refuse them with the same words instead of a shape-inference message from ONNX Runtime or a
/// silently random evaluation.
pub fn training_mode_problems(model: &Model) -> Vec<Problem> {
    let g = model.graph();
    let remedy = "re-export the model in inference mode (PyTorch: call model.eval() before torch.onnx.export, or pass training=torch.onnx.TrainingMode.EVAL)";
    let mut out = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let why = match n.op_type.as_str() {
            "BatchNormalization" if crate::attrs::int(n, "training_mode", 0) != 0 => {
                "has training_mode=1: it normalises with each batch's statistics, so every result would depend on the batch size"
            }
            "Dropout" => match n.input.get(2).filter(|t| !t.is_empty()) {
                None => continue,
                Some(t) => match constant_bool(model, t) {
                    Some(false) => continue,
                    Some(true) => "has a training_mode input that is true: it drops random values at every run",
                    None => "has a training_mode input that is not a constant, so it may drop random values",
                },
            },
            _ => continue,
        };
        out.push(Problem {
            severity: Severity::Error,
            message: format!("{} {why}", node_label(i, n)),
            suggestion: remedy.into(),
        });
    }
    out
}

/// The value of a scalar boolean initializer or Constant node.
fn constant_bool(model: &Model, name: &str) -> Option<bool> {
    let g = model.graph();
    let t = g.initializer.iter().find(|t| t.name == name).or_else(|| {
        g.node
            .iter()
            .find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))
            .and_then(|n| n.attribute.iter().find_map(|a| a.t.as_ref()))
    })?;
    tensor::to_i64(t).ok()?.first().map(|&v| v != 0)
}

/// The in-graph preprocessing constants (mean/std/255 applied to the raw
/// input) and one-element constants of the architecture, one line each; they
/// stay frozen unless `--train` names them.
pub fn preprocessing_lines(model: &Model, selected: &[String]) -> Vec<String> {
    let state = |name: &str| {
        if selected.iter().any(|s| s == name) {
            "trained: --train names it"
        } else {
            "frozen"
        }
    };
    let pre = trainable::preprocessing_constants(model)
        .into_iter()
        .map(|p| format!("{} ({} in {}, {})", p.name, p.op, p.node, state(&p.name)));
    let scalars = trainable::architecture_scalars(model).into_iter().map(|n| {
        format!(
            "{n} (a one-element constant of the architecture, {})",
            state(&n)
        )
    });
    pre.chain(scalars)
        .chain(operator_setting_lines(model))
        .collect()
}

/// Float initializers used only as operator settings (Resize `scales`, Pad values …): frozen
/// like every setting, and listed so the user sees why they are not trained.
fn operator_setting_lines(model: &Model) -> Vec<String> {
    let g = model.graph();
    let settings = trainable::operator_settings(model);
    let mut lines: Vec<String> = g
        .initializer
        .iter()
        .filter(|t| settings.contains(&t.name))
        .filter(|t| {
            matches!(
                crate::proto::DataType::try_from(t.data_type),
                Ok(crate::proto::DataType::Float | crate::proto::DataType::Double)
            )
        })
        .filter_map(|t| {
            let (i, n) = g
                .node
                .iter()
                .enumerate()
                .find(|(_, n)| n.input.contains(&t.name))?;
            Some(format!(
                "{} (an operator setting of {}, frozen)",
                t.name,
                crate::model::node_label(i, n)
            ))
        })
        .collect();
    lines.sort();
    lines
}

/// Which output an image classifier trains and which value the loss reads,
/// or (as a note) why koala cannot tell without the data's class count.
/// None for language models: their loss reads the causal-LM logits.
pub fn classifier_output_report(
    model: &Model,
    output: Option<&str>,
    classes: Option<usize>,
) -> Option<std::result::Result<String, Problem>> {
    if crate::lm_signature::is_language_model(model) {
        return None;
    }
    Some(match crate::classifier_output::choose(model, output, classes) {
        Ok(c) => Ok(c.describe()),
        Err(e) => Err(Problem {
            severity: Severity::Note,
            message: format!("{e:#}"),
            suggestion: "finetune and eval pick the output whose last dimension matches the data's class count when only one does; otherwise pass --output NAME".into(),
        }),
    })
}

fn inputs_problems(model: &Model, problems: &mut Vec<Problem>) {
    let g = model.graph();
    if let Ok(sig) = crate::lm_signature::detect(model) {
        // A language model's dynamic axes are the expected batch/sequence
        // (and past-length) axes: one note, not one per input.
        problems.push(Problem {
            severity: Severity::Note,
            message: format!(
                "causal language model: token ids in '{}'{}{}",
                sig.input_ids,
                if sig.attention_mask.is_some() { ", with attention_mask and position_ids" } else { "" },
                if sig.past.is_empty() {
                    String::new()
                } else {
                    format!(", KV cache of {} past_key_values inputs (fed empty for training)", sig.past.len())
                }
            ),
            suggestion: "train it with `koala finetune --task causal-lm` (detected from input_ids); the batch and sequence axes are fixed by --batch-size and --block-size".into(),
        });
        return;
    }
    for i in g
        .input
        .iter()
        .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
    {
        let dims = declared_dims(i);
        if let Some(Some(b)) = dims.first() {
            problems.push(Problem {
                severity: Severity::Note,
                message: format!("input '{}' has a fixed batch size of {b}", i.name),
                suggestion: format!("train with --batch-size {b} and --accumulate N for an effective batch of {b}·N, or re-export the model with a dynamic batch axis"),
            });
        }
        for (axis, d) in dims.iter().enumerate().skip(1) {
            if d.is_none() {
                problems.push(Problem {
                    severity: Severity::Note,
                    message: format!("input '{}' has a dynamic dimension on axis {axis}", i.name),
                    suggestion: "nothing to do now: it is fixed from the data when the training graph is built (for images: --image-size)".into(),
                });
            }
        }
    }
}

/// Values that are statically known to be integers or booleans (no gradient
/// flows through them): outputs of shape/comparison ops, Casts to non-float
/// types, and ops whose data input is such a value (Slice of a shape, …).
fn integer_values(model: &Model) -> HashSet<String> {
    use crate::proto::DataType;
    let g = model.graph();
    let mut ints: HashSet<String> = g
        .initializer
        .iter()
        .filter(|t| {
            !matches!(
                DataType::try_from(t.data_type),
                Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
            )
        })
        .map(|t| t.name.clone())
        .collect();
    for n in &g.node {
        let int_out = if is_non_differentiable(n) {
            true
        } else if n.op_type == "Cast" {
            let to = crate::attrs::int(n, "to", 1) as i32;
            !matches!(
                DataType::try_from(to),
                Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
            )
        } else if n.op_type == "Constant" {
            n.attribute
                .iter()
                .find_map(|a| a.t.as_ref())
                .is_some_and(|t| {
                    t.data_type != DataType::Float as i32 && t.data_type != DataType::Double as i32
                })
        } else {
            // Where's data inputs are 1 and 2 (input 0 is the condition).
            let data = if n.op_type == "Where" {
                n.input.get(1)
            } else {
                n.input.first()
            };
            data.is_some_and(|i| ints.contains(i))
        };
        if int_out {
            ints.extend(n.output.iter().cloned());
        }
    }
    ints
}

/// Nodes between a trainable weight and an output that koala cannot
/// differentiate, and control flow / custom ops anywhere.
fn path_problems(model: &Model, selected: &[String], problems: &mut Vec<Problem>) {
    let g = model.graph();
    let ints = integer_values(model);
    let opset = model.opset();
    let live = backward::grad_reachable(&g.node, selected, |v| !ints.contains(v));
    let mut on_path: HashSet<usize> = HashSet::new();
    for o in &g.output {
        on_path.extend(backward::nodes_on_path(&g.node, &live, &o.name));
    }
    for (i, n) in g.node.iter().enumerate() {
        let custom = !(n.domain.is_empty() || n.domain == "ai.onnx");
        let control = matches!(n.op_type.as_str(), "If" | "Loop" | "Scan");
        let needs_rule = on_path.contains(&i) && !is_non_differentiable(n);
        if needs_rule && rule_for(n, opset).is_none() {
            let remedy = backward::needs_gradient_remedy(&g.node, i, &live, selected);
            let (why, fix) = remedy.split_once(". Freeze them").unwrap_or((&remedy, ""));
            problems.push(Problem {
                severity: Severity::Error,
                message: format!(
                    "{}{why}, and it lies between a trainable weight and the output",
                    backward::missing_rule_message(i, n, opset)
                ),
                suggestion: if ort_has_domain(&n.domain) {
                    format!("freeze them{fix}")
                } else {
                    crate::lower::REEXPORT.into()
                },
            });
        } else if control || custom {
            problems.push(Problem {
                severity: Severity::Note,
                message: format!(
                    "{} is {} but no gradient passes through it",
                    node_label(i, n),
                    if control {
                        "control flow"
                    } else {
                        "a custom-domain op"
                    }
                ),
                suggestion: "nothing to do: it only runs in the forward pass".into(),
            });
        }
    }
}

/// Whether stock ONNX Runtime ships kernels for a domain (a node of any other domain cannot
/// run at all, so freezing the weights before it does not help).
fn ort_has_domain(domain: &str) -> bool {
    matches!(
        domain,
        "" | "ai.onnx" | "ai.onnx.ml" | "com.microsoft" | "com.microsoft.nchwc"
    )
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}  (opset {})", self.model, self.opset)?;
        writeln!(f, "inputs: {}", self.inputs.join(", "))?;
        let total: usize = self.ops.values().sum();
        writeln!(f, "ops ({total} nodes):")?;
        for (op, n) in &self.ops {
            writeln!(f, "  {op:<24} {n:>5}")?;
        }
        let trainable: usize = self.trainable.iter().map(|t| t.1).sum();
        writeln!(
            f,
            "parameters: {} in float initializers; trainable: {} tensors, {} parameters",
            self.parameters,
            self.trainable.len(),
            trainable
        )?;
        for (n, k) in self.trainable.iter().take(8) {
            writeln!(f, "  {n} ({k})")?;
        }
        if self.trainable.len() > 8 {
            writeln!(f, "  … and {} more", self.trainable.len() - 8)?;
        }
        if !self.preprocessing.is_empty() {
            writeln!(
                f,
                "preprocessing and architecture constants (frozen unless --train names them; not counted as trainable): {}",
                self.preprocessing.len()
            )?;
            for p in &self.preprocessing {
                writeln!(f, "  {p}")?;
            }
        }
        if let Some(o) = &self.output {
            writeln!(f, "output: {o}")?;
        }
        if self.problems.is_empty() {
            write!(f, "no problems: this model can be fine-tuned")
        } else {
            for p in &self.problems {
                let tag = if p.severity == Severity::Error {
                    "error"
                } else {
                    "note"
                };
                writeln!(f, "{tag}: {}", p.message)?;
                if !p.suggestion.is_empty() {
                    writeln!(f, "  → {}", p.suggestion)?;
                }
            }
            let errors = self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            let notes = self.problems.len() - errors;
            if errors == 0 {
                write!(
                    f,
                    "no problems: this model can be fine-tuned ({notes} note(s))"
                )
            } else {
                write!(f, "{errors} error(s), {notes} note(s)")
            }
        }
    }
}
