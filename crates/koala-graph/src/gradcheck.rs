//! `koala gradcheck`: compares koala's training graph with a PyTorch
//! reference case (loss and every trainable tensor's gradient).
//!
//! Pass rule: loss absolute error ≤ 1e-4; each tensor's relative L2 error ≤
//! its `recommended_rel_l2_tol` (1e-3 when absent); tensors that are
//! numerically zero in the reference must have ‖g‖ ≤ 1e-6 × the global
//! gradient norm. A case whose `tolerance_note` states a looser per-tensor
//! bound with a global bound (kink-sensitive models such as MobileNetV2)
//! is judged by that rule instead; the recommended tolerance then only
//! produces a warning.

use crate::backward::BackwardOptions;
use crate::loss::LossSpec;
use crate::model::Model;
use crate::reference::Case;
use crate::step::{Batch, TrainStep};
use crate::training::{self, TrainingSpec};
use anyhow::{bail, Context, Result};
use regex::Regex;
use std::fmt;
use std::path::Path;

/// Loss tolerance (absolute), from the reference README.
pub const LOSS_TOL: f64 = 1e-4;
/// Zero-gradient rule: ‖g‖ ≤ this × global norm.
pub const ZERO_REL: f64 = 1e-6;

/// The acceptance rule read from a case's tolerance note.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoteRule {
    /// "every tensor rel L2 <= x": replaces per-tensor tolerances.
    pub every_tensor: Option<f64>,
    /// "global rel L2 … <= x".
    pub global: Option<f64>,
    /// Named tensors with their own bound.
    pub named: Vec<(String, f64)>,
}

/// Parses the looser rule of a tolerance note, if the note states one
/// (a per-tensor bound *and* a global bound); otherwise the default rule.
pub fn parse_note(note: &str) -> NoteRule {
    let num = r"([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)";
    let every = Regex::new(&format!(r"every tensor rel L2 <= {num}")).unwrap();
    let global = Regex::new(&format!(r"global rel L2[^<]*<= {num}")).unwrap();
    let named = Regex::new(&format!(
        r"\(\d\) ([A-Za-z0-9_.]+(?: and [A-Za-z0-9_.]+)*) rel L2 <= {num}"
    ))
    .unwrap();
    let every_tensor = every.captures(note).and_then(|c| c[1].parse().ok());
    let global = global.captures(note).and_then(|c| c[1].parse().ok());
    if every_tensor.is_none() || global.is_none() {
        return NoteRule::default();
    }
    let mut out = NoteRule {
        every_tensor,
        global,
        named: vec![],
    };
    for c in named.captures_iter(note) {
        let tol: f64 = c[2].parse().unwrap_or(1e-3);
        for n in c[1].split(" and ") {
            out.named.push((n.to_string(), tol));
        }
    }
    out
}

/// One tensor's comparison.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    /// Weight name.
    pub name: String,
    /// ‖g − g_ref‖ / ‖g_ref‖, or ‖g‖ / global for zero-reference tensors.
    pub error: f64,
    /// The bound it is held to.
    pub tol: f64,
    /// Judged by the zero-gradient rule.
    pub zero_rule: bool,
    /// Above the reference's recommended level (only a warning under a note rule).
    pub warning: bool,
    /// Within its bound.
    pub pass: bool,
}

/// The full comparison.
#[derive(Clone, Debug)]
pub struct Report {
    /// Case directory.
    pub case: String,
    /// Our loss.
    pub loss: f64,
    /// Reference loss.
    pub loss_ref: f64,
    /// Per tensor.
    pub tensors: Vec<TensorCheck>,
    /// Global relative L2 error over all tensors concatenated.
    pub global_error: f64,
    /// Global bound, if the case has one.
    pub global_tol: Option<f64>,
    /// Reference tensors that koala did not train (not found or unreachable).
    pub missing: Vec<String>,
    /// The training graph's execution target (after fallback).
    pub target: crate::ExecutionTarget,
}

impl Report {
    /// Loss within tolerance.
    pub fn loss_pass(&self) -> bool {
        (self.loss - self.loss_ref).abs() <= LOSS_TOL
    }
    /// Everything within tolerance.
    pub fn pass(&self) -> bool {
        self.loss_pass()
            && self.missing.is_empty()
            && self.tensors.iter().all(|t| t.pass)
            && self.global_tol.is_none_or(|g| self.global_error <= g)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.target {
            crate::ExecutionTarget::Ort => "ort (convolutions on ORT's blocked NCHWc kernels)",
            crate::ExecutionTarget::Portable => "portable (standard ONNX operators only)",
        };
        writeln!(f, "gradcheck {}, training graph target {target}", self.case)?;
        let mark = |ok: bool| if ok { "ok" } else { "FAIL" };
        writeln!(
            f,
            "  loss {:.9} vs reference {:.9}: |error| {:.2e} <= {:.0e} {}",
            self.loss,
            self.loss_ref,
            (self.loss - self.loss_ref).abs(),
            LOSS_TOL,
            mark(self.loss_pass())
        )?;
        let w = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(10);
        writeln!(
            f,
            "  {:<w$}  {:>10}  {:>8}  result",
            "tensor", "rel L2", "tol"
        )?;
        for t in &self.tensors {
            let kind = if t.zero_rule {
                " (zero rule: |g|/global)"
            } else if t.warning {
                " (above the reference's recommended level; warning)"
            } else {
                ""
            };
            writeln!(
                f,
                "  {:<w$}  {:>10.2e}  {:>8.0e}  {}{}",
                t.name,
                t.error,
                t.tol,
                mark(t.pass),
                kind
            )?;
        }
        for m in &self.missing {
            writeln!(
                f,
                "  {m}: not trained by koala (missing or unreachable) FAIL"
            )?;
        }
        if let Some(g) = self.global_tol {
            writeln!(
                f,
                "  global rel L2 {:.2e} <= {:.0e} {}",
                self.global_error,
                g,
                mark(self.global_error <= g)
            )?;
        }
        let failed = self.tensors.iter().filter(|t| !t.pass).count() + self.missing.len();
        let worst = self
            .tensors
            .iter()
            .map(|t| t.error / t.tol)
            .fold(0.0, f64::max);
        write!(
            f,
            "{}: {} tensors, {} failed, loss error {:.2e}, global rel L2 {:.2e}, worst error/tol {:.2}",
            if self.pass() { "PASS" } else { "FAIL" },
            self.tensors.len(),
            failed,
            (self.loss - self.loss_ref).abs(),
            self.global_error,
            worst
        )
    }
}

/// Options of a gradcheck run.
#[derive(Clone, Debug, Default)]
pub struct GradcheckOptions {
    /// ORT intra-op threads (None: physical cores).
    pub threads: Option<usize>,
    /// Backward formulation.
    pub backward: BackwardOptions,
}

/// Builds and runs the training graph of a case and compares it.
pub fn run(dir: &Path, opts: &GradcheckOptions) -> Result<Report> {
    let case = Case::load(dir)?;
    let causal = match case.loss_type.as_str() {
        "softmax_cross_entropy_mean" => false,
        "causal_lm_cross_entropy_mean" => true,
        other => bail!("{}: loss type '{other}' is not supported by gradcheck (softmax_cross_entropy_mean and causal_lm_cross_entropy_mean are)", dir.display()),
    };
    let loss = if causal {
        LossSpec::CausalLm {
            ignore_index: crate::loss::IGNORE_INDEX,
            attention_mask: None,
        }
    } else {
        LossSpec::default()
    };
    let model = Model::load(&dir.join("model.onnx"))?;
    let spec = TrainingSpec {
        input_shapes: case
            .inputs
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
        loss,
        backward: opts.backward.clone(),
        probe_threads: opts.threads.unwrap_or(1),
        ..TrainingSpec::default()
    };
    let graph = training::build(&model, &spec)?;
    let data: Vec<Batch> = graph
        .data_inputs
        .iter()
        .map(|(name, _, _)| {
            let t = case
                .inputs
                .iter()
                .find(|t| &t.name == name)
                .with_context(|| format!("case has no input '{name}'"))?;
            Ok(match (&t.f32, &t.i64) {
                (Some(x), _) => Batch::F32(x),
                (_, Some(x)) => Batch::I64(x),
                _ => unreachable!("a case tensor holds f32 or i64 data"),
            })
        })
        .collect::<Result<_>>()?;
    let targets = case
        .labels
        .i64
        .as_deref()
        .context("labels must be int64 for cross-entropy")?;
    // koala's causal-LM head shifts inside the graph, so it takes labels
    // aligned with input_ids; the case stores the shifted targets.
    let labels = if causal {
        causal_labels(&case, targets)?
    } else {
        targets.to_vec()
    };
    let labels = labels.as_slice();
    let mut step = TrainStep::new(graph, opts.threads)?;
    // The step starts from the model's weights.
    step.set_batch(&data, Batch::I64(labels))?;
    step.run()?;
    Ok(compare(&case, &step))
}

/// The unshifted labels of a causal-LM case: its `input_ids`, after checking
/// that the case's targets are `input_ids[:, 1:]` (the standard shift).
fn causal_labels(case: &Case, targets: &[i64]) -> Result<Vec<i64>> {
    let ids = case
        .inputs
        .iter()
        .find(|t| t.name == "input_ids")
        .and_then(|t| t.i64.as_ref().map(|v| (t, v)))
        .context("a causal-LM case needs an int64 input named 'input_ids'")?;
    let (t, values) = ids;
    let [b, len] = t.shape[..] else {
        bail!("input_ids must be [batch, sequence], got {:?}", t.shape);
    };
    let shifted: Vec<i64> = (0..b)
        .flat_map(|r| values[r * len + 1..(r + 1) * len].iter().copied())
        .collect();
    if shifted != targets {
        bail!("the case's targets are not input_ids[:, 1:]; koala's causal-LM loss applies the standard shift itself");
    }
    Ok(values.clone())
}

fn l2(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

fn compare(case: &Case, step: &TrainStep) -> Report {
    let rule = case
        .tolerance_note
        .as_deref()
        .map(parse_note)
        .unwrap_or_default();
    let g = step.graph();
    let mut tensors = Vec::new();
    let mut missing = Vec::new();
    let (mut diff2, mut ref2) = (0.0, 0.0);
    let ours_global = l2((0..g.trainable.len())
        .flat_map(|i| step.grad(i).iter())
        .map(|&x| x as f64));
    for r in &case.grads {
        let Some(i) = g.trainable.iter().position(|t| t.name == r.name) else {
            missing.push(r.name.clone());
            continue;
        };
        let ours = step.grad(i);
        let d = l2(ours
            .iter()
            .zip(&r.values)
            .map(|(&a, &b)| a as f64 - b as f64));
        let n = l2(r.values.iter().map(|&x| x as f64));
        diff2 += d * d;
        ref2 += n * n;
        let check = if r.numerically_zero || n <= ZERO_REL * case.global_l2 {
            let e = l2(ours.iter().map(|&x| x as f64)) / ours_global.max(f64::MIN_POSITIVE);
            TensorCheck {
                name: r.name.clone(),
                error: e,
                tol: ZERO_REL,
                zero_rule: true,
                warning: false,
                pass: e <= ZERO_REL,
            }
        } else {
            let e = d / n;
            let named = rule
                .named
                .iter()
                .find(|(k, _)| k == &r.name)
                .map(|(_, t)| *t);
            let tol = named.or(rule.every_tensor).unwrap_or(r.tol);
            TensorCheck {
                name: r.name.clone(),
                error: e,
                tol,
                zero_rule: false,
                warning: rule.every_tensor.is_some() && e > r.tol,
                pass: e <= tol,
            }
        };
        tensors.push(check);
    }
    Report {
        case: case.dir.display().to_string(),
        loss: step.loss() as f64,
        loss_ref: case.loss,
        tensors,
        global_error: (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt(),
        global_tol: rule.global,
        missing,
        target: step.graph().target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mobilenet_note() {
        let note = "Recommended acceptance: (1) every tensor rel L2 <= 5e-2 (max observed 2.3e-2); (2) global rel L2 over all tensors concatenated <= 1e-2 (max observed 6.6e-3); (3) classifier.1.weight and classifier.1.bias rel L2 <= 1e-3 (max observed 3.3e-5); (4) treat …";
        let r = parse_note(note);
        assert_eq!(r.every_tensor, Some(5e-2));
        assert_eq!(r.global, Some(1e-2));
        assert_eq!(
            r.named,
            vec![
                ("classifier.1.weight".to_string(), 1e-3),
                ("classifier.1.bias".to_string(), 1e-3)
            ]
        );
    }

    #[test]
    fn a_strict_note_keeps_the_default_rule() {
        let note = "Gradients from an f32 ONNX backward graph: relative L2 error per tensor ||g - g_ref||/||g_ref|| <= 1e-3";
        assert_eq!(parse_note(note), NoteRule::default());
    }
}
