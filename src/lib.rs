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

/// The end-of-run summary printed by `koala finetune`.
pub fn summary_text(r: &train::RunSummary) -> String {
    let mut s = String::new();
    let pct = |x: f64| 100.0 * x;
    if let Some(b) = r.before {
        let _ = writeln!(
            s,
            "accuracy before: {:.2}% (loss {:.4}, {} samples)",
            pct(b.accuracy),
            b.loss,
            b.samples
        );
    }
    let _ = writeln!(
        s,
        "accuracy after:  {:.2}% (loss {:.4}, {} samples)",
        pct(r.after.accuracy),
        r.after.loss,
        r.after.samples
    );
    let _ = writeln!(
        s,
        "steps {} ({} skipped as non-finite), {:.1} samples/s, unreadable samples skipped: {}",
        r.steps, r.skipped_steps, r.samples_per_sec, r.skipped_samples
    );
    let _ = writeln!(
        s,
        "time in ONNX Runtime steps {:.1} s, in optimizer {:.2} s, waiting for data {:.2} s",
        r.time_graph, r.time_optimizer, r.time_data_wait
    );
    let _ = writeln!(
        s,
        "exported {}: reloaded by ONNX Runtime, max |Δ| vs training graph {:.2e}, top-1 {:.2}%",
        r.export.display(),
        r.export_max_diff,
        pct(r.export_eval.accuracy)
    );
    let _ = match &r.export_tract {
        Ok(d) => writeln!(
            s,
            "cross-checked with tract (a pure-Rust ONNX runtime): max |Δ| vs ONNX Runtime {d:.2e}"
        ),
        Err(e) => writeln!(
            s,
            "warning: tract (a pure-Rust ONNX runtime) could not run the exported file: {e}"
        ),
    };
    let _ = write!(
        s,
        "run directory {} (config.toml, metrics.jsonl, curves.png, checkpoints/)",
        r.run_dir.display()
    );
    s
}
