//! koala: fine-tune ONNX models with KOALA++ on stock ONNX Runtime.
//!
//! This crate is a thin facade over the workspace crates, plus the text
//! the CLI prints.
pub use koala_data as data;
pub use koala_graph as graph;
pub use koala_optim as optim;
pub use koala_runtime as runtime;
pub use koala_train as train;

use std::fmt::Write;

/// A short description of a model: inputs, outputs, opset, producer, metadata.
pub fn inspect(m: &graph::Model) -> String {
    let g = m.graph();
    let mut s = String::new();
    let _ = writeln!(s, "model {}", m.display_name());
    let _ = writeln!(
        s,
        "  ir_version {}, opset {}, producer {} {}",
        m.proto.ir_version,
        m.opset(),
        m.proto.producer_name,
        m.proto.producer_version
    );
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    for i in g.input.iter().filter(|i| !inits.contains(i.name.as_str())) {
        let _ = writeln!(s, "  input  {} {:?}", i.name, dims(i));
    }
    for o in &g.output {
        let _ = writeln!(s, "  output {} {:?}", o.name, dims(o));
    }
    let _ = writeln!(
        s,
        "  {} nodes, {} initializers",
        g.node.len(),
        g.initializer.len()
    );
    for p in &m.proto.metadata_props {
        let _ = writeln!(s, "  metadata {} = {}", p.key, p.value);
    }
    s
}

fn dims(v: &graph::proto::ValueInfoProto) -> Vec<String> {
    graph::training::declared_dims(v)
        .iter()
        .map(|d| d.map(|x| x.to_string()).unwrap_or_else(|| "?".into()))
        .collect()
}

/// One evaluation in the task's terms.
fn eval_text(task: train::task::TaskKind, r: &train::eval::EvalResult) -> String {
    match task {
        train::task::TaskKind::CausalLm => format!(
            "loss {:.4}, perplexity {:.2}, token accuracy {:.2}% ({} tokens)",
            r.loss,
            r.loss.exp(),
            100.0 * r.accuracy,
            r.samples
        ),
        train::task::TaskKind::ImageClassification => format!(
            "{:.2}% (loss {:.4}, {} samples)",
            100.0 * r.accuracy,
            r.loss,
            r.samples
        ),
    }
}

/// What a run directory holds, for the closing line: its entries sorted by name, folders
/// with a trailing `/`, hidden files (the run lock) left out.
fn run_dir_contents(dir: &std::path::Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let slash = if e.path().is_dir() { "/" } else { "" };
            (!name.starts_with('.')).then(|| format!("{name}{slash}"))
        })
        .collect();
    names.sort();
    names.join(", ")
}

/// The end-of-run summary printed by `koala finetune`.
pub fn summary_text(r: &train::RunSummary) -> String {
    let mut s = String::new();
    let what = match r.task {
        train::task::TaskKind::CausalLm => "eval",
        train::task::TaskKind::ImageClassification => "accuracy",
    };
    if let Some(b) = r.before {
        let _ = writeln!(s, "{what} before: {}", eval_text(r.task, &b));
    }
    let _ = writeln!(s, "{what} after:  {}", eval_text(r.task, &r.after));
    let speed = match (r.samples_per_sec, r.tokens_per_sec) {
        (None, _) => "no training step in this process (the run had already reached its last step)"
            .to_string(),
        (Some(sps), Some(t)) => format!("{t:.0} tokens/s ({sps:.1} sequences/s)"),
        (Some(sps), None) => format!("{sps:.1} samples/s"),
    };
    let _ = writeln!(
        s,
        "steps {} ({} skipped as non-finite), {speed}, unreadable samples skipped: {}",
        r.steps, r.skipped_steps, r.skipped_samples
    );
    let _ = writeln!(
        s,
        "time in ONNX Runtime steps {:.1} s, in optimizer {:.2} s, waiting for data {:.2} s",
        r.time_graph, r.time_optimizer, r.time_data_wait
    );
    let _ = writeln!(
        s,
        "exported {}: reloaded by ONNX Runtime, max |Δ| vs training graph {:.2e}, {}",
        r.export.display(),
        r.export_max_diff,
        eval_text(r.task, &r.export_eval)
    );
    let _ = match &r.export_tract {
        Ok(d) => writeln!(
            s,
            "cross-checked with tract (a pure-Rust ONNX runtime): max |Δ| vs ONNX Runtime {d:.2e}"
        ),
        Err(e) if e.starts_with("not run") => {
            writeln!(s, "tract (a pure-Rust ONNX runtime) cross-check {e}")
        }
        Err(e) => writeln!(
            s,
            "warning: tract (a pure-Rust ONNX runtime) could not run the exported file: {e}"
        ),
    };
    if !r.memory.is_empty() {
        let phases: Vec<String> = r
            .memory
            .iter()
            .map(|(phase, bytes)| format!("{phase} {}", koala_runtime::memory::gib(*bytes)))
            .collect();
        let _ = writeln!(
            s,
            "memory (the process's peak RSS so far, at the end of each phase): {}",
            phases.join(", ")
        );
    }
    if let Some(a) = r.step_arena {
        use koala_runtime::memory::gib_or_mib;
        // Between steps the arena holds only what ORT keeps for good: prepacked frozen
        // weights (a LoRA run's base model), not activations.
        let held = match a.in_use {
            0 => String::new(),
            b => format!(
                " ({} of it held between steps: prepacked frozen weights)",
                gib_or_mib(b)
            ),
        };
        let _ = writeln!(
            s,
            "training step's ONNX Runtime arena: {} in use at its peak{held}, {} reserved",
            gib_or_mib(a.max_in_use),
            gib_or_mib(a.total_allocated)
        );
    }
    let _ = write!(
        s,
        "run directory {} ({})",
        r.run_dir.display(),
        run_dir_contents(&r.run_dir)
    );
    s
}
