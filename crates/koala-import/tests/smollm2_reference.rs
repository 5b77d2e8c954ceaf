//! SmolLM2-135M-Instruct imported from its Q4_1 GGUF against the PyTorch
//! reference in `tests/fixtures/reference/smollm2_135m` (transformers loaded
//! the same GGUF; a float64 forward gives the logits and losses).
//!
//! Needs the GGUF (98 MB, not in the repo): `models/fetch_smollm2.sh` puts it
//! in `${KOALA_CACHE_DIR:-~/.cache/koala}/smollm2/`; `KOALA_SMOLLM2_GGUF`
//! overrides the path. Without it the test prints why and passes.

mod common;

use common::{fixture, read_f32, read_i64, run_logits};
use koala_data::text::TextTokenizer;
use koala_import::{import, ImportOptions};
use serde_json::Value;
use std::path::PathBuf;

/// Logits reach |32|; PyTorch's own f32 forward differs from the f64
/// reference by 8.9e-5 (case.json), so an f32 ONNX forward on bit-exact
/// weights lands well inside 1e-3; a dequantisation that is off by one
/// rounding step lands near 1e-2 (the reference README), outside it.
const LOGITS_TOL: f64 = 1e-3;
/// Mean loss over 39 tokens: the f32 runs are within 1.6e-5 of the f64 one.
const LOSS_TOL: f64 = 1e-4;
/// Per-token losses and logsumexp are differences of logits.
const PER_TOKEN_TOL: f64 = 1e-3;

fn gguf_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KOALA_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("KOALA_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/koala")))?;
    let p = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.is_file().then_some(p)
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// The fetched GGUF, the reference case's folder and its `case.json`; `None` (with the
/// reason printed) when the GGUF is not here.
fn reference_case() -> Option<(PathBuf, PathBuf, Value)> {
    let Some(gguf) = gguf_path() else {
        println!("skipped: the SmolLM2 GGUF is not here; run models/fetch_smollm2.sh (or set KOALA_SMOLLM2_GGUF)");
        return None;
    };
    let case_dir = fixture("smollm2_135m");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json")).unwrap())
            .unwrap();
    Some((gguf, case_dir, case))
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

#[test]
fn smollm2_gguf_imports_to_the_reference_tokens_logits_and_loss() {
    let Some((gguf, case_dir, case)) = reference_case() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    let t = std::time::Instant::now();
    let report = import(&gguf, &out, &ImportOptions::default()).unwrap();
    println!(
        "{}import took {:.1} s",
        report.summary(&gguf),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(report.parameters, 134_515_008, "case.json trainable_params");
    assert_eq!(report.storage_types.get("Q4_1"), Some(&210));
    assert_eq!(report.storage_types.get("Q8_0"), Some(&1));

    // Tokenizer: the reference text encodes to the reference ids.
    let tok = TextTokenizer::open(&out.join("tokenizer.json")).unwrap();
    let text = case["tokenization"]["text"].as_str().unwrap();
    let want_ids: Vec<i64> = case["tokenization"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(tok.encode(text, false).unwrap(), want_ids, "token ids");
    assert_eq!(tok.decode(&want_ids).unwrap(), text, "decodes back");
    assert_eq!(tok.eos_token(), "<|im_end|>");
    assert!(tok.chat_template().is_some_and(|t| t.contains("im_start")));

    let ids = read_i64(&case_dir.join("inputs/input_ids.i64"));
    assert_eq!(ids, want_ids);
    let (t_len, vocab) = (ids.len(), 49152);
    let logits = run_logits(&out.join("model.onnx"), &ids, 1, t_len);
    assert_eq!(logits.len(), t_len * vocab);
    let row = |t: usize| &logits[t * vocab..(t + 1) * vocab];

    let mut problems = Vec::new();
    let mut worst = 0f64;
    let last = read_f32(&case_dir.join("outputs/logits_last.f32"));
    for (g, w) in row(t_len - 1).iter().zip(&last) {
        worst = worst.max((*g as f64 - *w as f64).abs());
    }
    let first8 = case["outputs"]["logits_first8"]["values"]
        .as_array()
        .unwrap();
    for (t, r) in first8.iter().enumerate() {
        for (j, w) in f64s(r).iter().enumerate() {
            worst = worst.max((row(t)[j] as f64 - w).abs());
        }
    }
    println!("max |Δ logits| = {worst:.3e} (last row, and the first 8 of every row)");
    if worst > LOGITS_TOL {
        problems.push(format!("max |Δ logits| {worst:.3e} > {LOGITS_TOL:e}"));
    }
    let want_argmax = f64s(&case["outputs"]["argmax"]);
    let want_lse = f64s(&case["outputs"]["logsumexp"]);
    let mut worst_lse = 0f64;
    for t in 0..t_len {
        if argmax(row(t)) != want_argmax[t] as usize {
            problems.push(format!(
                "position {t}: argmax {} but the reference has {}",
                argmax(row(t)),
                want_argmax[t]
            ));
        }
        worst_lse = worst_lse.max((logsumexp(row(t)) - want_lse[t]).abs());
    }
    println!("max |Δ logsumexp| = {worst_lse:.3e}");
    if worst_lse > PER_TOKEN_TOL {
        problems.push(format!(
            "max |Δ logsumexp| {worst_lse:.3e} > {PER_TOKEN_TOL:e}"
        ));
    }
    let want_per_token = f64s(&case["loss"]["per_token"]);
    let per_token: Vec<f64> = (0..t_len - 1)
        .map(|t| logsumexp(row(t)) - row(t)[ids[t + 1] as usize] as f64)
        .collect();
    let worst_tok = per_token
        .iter()
        .zip(&want_per_token)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let loss = per_token.iter().sum::<f64>() / per_token.len() as f64;
    let want_loss = case["loss"]["value"].as_f64().unwrap();
    println!(
        "loss {loss:.10} vs {want_loss:.10} (|Δ| {:.3e}); max |Δ per-token loss| {worst_tok:.3e}",
        (loss - want_loss).abs()
    );
    if (loss - want_loss).abs() > LOSS_TOL {
        problems.push(format!("loss {loss} vs {want_loss}: |Δ| > {LOSS_TOL:e}"));
    }
    if worst_tok > PER_TOKEN_TOL {
        problems.push(format!(
            "max |Δ per-token loss| {worst_tok:.3e} > {PER_TOKEN_TOL:e}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The training graph koala builds on the imported model gives the
/// reference gradients. The case has statistics, not full gradients, so
/// each tensor is compared by the rule of its `tolerance_note`: l2 within
/// `recommended_rel_l2_tol` relative, `sum` within tol × max(|sum|, l2),
/// `first8` within tol × max_abs; the tied embedding holds the total of
/// both uses, as koala's single initializer does.
#[test]
fn smollm2_training_graph_gives_the_reference_loss_and_gradients() {
    use koala_graph::loss::IGNORE_INDEX;
    use koala_graph::step::{Batch, TrainStep};
    use koala_graph::{lm_signature, training, LossSpec, Model, TrainingSpec};
    let Some((gguf, case_dir, case)) = reference_case() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    import(&gguf, &out, &ImportOptions::default()).unwrap();
    let model = Model::load(&out.join("model.onnx")).unwrap();
    let ids = read_i64(&case_dir.join("inputs/input_ids.i64"));
    let t_len = ids.len();
    let sig = lm_signature::detect(&model).unwrap();
    let spec = TrainingSpec {
        input_shapes: sig.input_shapes(1, t_len),
        loss: LossSpec::CausalLm {
            ignore_index: IGNORE_INDEX,
            attention_mask: sig.attention_mask.clone(),
        },
        probe_threads: 2,
        omit_model_output: true,
        ..TrainingSpec::default()
    };
    koala_runtime::init().unwrap();
    let graph = training::build(&model, &spec).unwrap();
    let ones = vec![1i64; t_len];
    let pos: Vec<i64> = (0..t_len as i64).collect();
    let data: Vec<Batch> = graph
        .data_inputs
        .iter()
        .map(|(name, _, _)| match name.as_str() {
            "input_ids" => Batch::I64(&ids),
            "attention_mask" => Batch::I64(&ones),
            "position_ids" => Batch::I64(&pos),
            _ => Batch::F32(&[]),
        })
        .collect();
    let mut step = TrainStep::new(graph, Some(2)).unwrap();
    // koala's causal-LM loss shifts in the graph: labels are the input ids.
    step.set_batch(&data, Batch::I64(&ids)).unwrap();
    step.run().unwrap();
    let want_loss = case["loss"]["value"].as_f64().unwrap();
    let loss = step.loss() as f64;
    println!("training-graph loss {loss:.8} vs {want_loss:.8}");
    let mut problems = Vec::new();
    if (loss - want_loss).abs() > LOSS_TOL {
        problems.push(format!("loss {loss} vs {want_loss}"));
    }
    let grads = case["grads"].as_object().unwrap();
    let trainable = &step.graph().trainable;
    assert_eq!(
        trainable.len(),
        grads.len(),
        "one trainable tensor per reference gradient"
    );
    let mut worst_l2 = 0f64;
    for (k, t) in trainable.iter().enumerate() {
        let r = grads
            .get(&t.name)
            .unwrap_or_else(|| panic!("no reference gradient for '{}'", t.name));
        let g = step.grad(k);
        let tol = r["recommended_rel_l2_tol"].as_f64().unwrap();
        let (l2_ref, sum_ref, max_ref) = (
            r["l2"].as_f64().unwrap(),
            r["sum"].as_f64().unwrap(),
            r["max_abs"].as_f64().unwrap(),
        );
        let l2 = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let sum: f64 = g.iter().map(|&x| x as f64).sum();
        let rel = (l2 - l2_ref).abs() / l2_ref;
        worst_l2 = worst_l2.max(rel);
        if rel > tol {
            problems.push(format!(
                "{}: l2 {l2:.6e} vs {l2_ref:.6e} (rel {rel:.2e} > {tol:e})",
                t.name
            ));
        }
        if (sum - sum_ref).abs() > tol * sum_ref.abs().max(l2_ref) {
            problems.push(format!("{}: sum {sum:.6e} vs {sum_ref:.6e}", t.name));
        }
        for (j, w) in f64s(&r["first8"]).iter().enumerate() {
            if (g[j] as f64 - w).abs() > tol * max_ref {
                problems.push(format!("{}[{j}]: {} vs {w:.6e}", t.name, g[j]));
            }
        }
    }
    println!(
        "{} gradients, worst relative l2 difference {worst_l2:.2e}",
        trainable.len()
    );
    assert!(
        problems.is_empty(),
        "{} problems: {problems:#?}",
        problems.len()
    );
}
