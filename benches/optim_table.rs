//! Prints the optimizer step-time table for the README (markdown):
//! `cargo bench --bench optim_table`.
//!
//! For each workload: median step time of fused KOALA++, literal KOALA++, AdamW and SGD
//! (momentum), the fused/AdamW ratio, fused KOALA++'s effective bandwidth at 44 bytes per
//! parameter (spec §8), and that bandwidth as a share of a parallel memory copy of the
//! same number of f32 (read + write bytes) measured in the same run — the roofline.

mod optim_support;

use std::time::Duration;

use optim_support::{
    median_time, mobilenet_v2, optimizers, single_tensor, Bench, Copy, KOALA_PP_BYTES_PER_PARAM,
    SIZES,
};

/// Measuring time per cell; long enough for stable medians at 1e7 parameters.
const BUDGET: Duration = Duration::from_millis(1500);

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let threads = rayon::current_num_threads();
    println!("Optimizer step time, median; {threads} rayon threads.\n");
    println!(
        "| params | tensors | KOALA++ fused ms | KOALA++ literal ms | AdamW ms | SGD ms | fused/AdamW | fused GB/s (44 B/param) | copy GB/s (parallel / serial) | fused % of copy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut workloads: Vec<(String, Vec<koala::optim::TensorSpec>)> = SIZES
        .iter()
        .map(|n| (format!("{n:.0e}"), single_tensor(*n)))
        .collect();
    workloads.push(("MobileNetV2".to_string(), mobilenet_v2()));
    let rows: Vec<serde_json::Value> = workloads
        .iter()
        .map(|(label, specs)| row(label, specs))
        .collect();
    // Machine-readable copy for `benches/pytorch/compare_optim.py`.
    if let Ok(path) = std::env::var("KOALA_BENCH_JSON") {
        let json = serde_json::json!({ "threads": threads, "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
            .unwrap_or_else(|e| panic!("writing KOALA_BENCH_JSON={path}: {e}"));
    }
}

/// Prints one workload's markdown row and returns its numbers as JSON.
fn row(label: &str, specs: &[koala::optim::TensorSpec]) -> serde_json::Value {
    let ms: Vec<f64> = optimizers()
        .iter()
        .map(|(_, config)| {
            let mut bench = Bench::new(config, specs);
            median_time(BUDGET, || bench.step()).as_secs_f64() * 1e3
        })
        .collect();
    let n: usize = specs.iter().map(|s| s.numel()).sum();
    let mut copy = Copy::new(n);
    let copy_par = copy.bytes() / median_time(BUDGET, || copy.parallel()).as_secs_f64() / 1e9;
    let copy_ser = copy.bytes() / median_time(BUDGET, || copy.serial()).as_secs_f64() / 1e9;
    let fused_gbs = KOALA_PP_BYTES_PER_PARAM * n as f64 / (ms[0] * 1e-3) / 1e9;
    let roofline = copy_par.max(copy_ser);
    println!(
        "| {label} ({n}) | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {fused_gbs:.1} | {copy_par:.1} / {copy_ser:.1} | {:.0}% |",
        specs.len(),
        ms[0],
        ms[1],
        ms[2],
        ms[3],
        ms[0] / ms[2],
        100.0 * fused_gbs / roofline
    );
    let names: Vec<&str> = optimizers().iter().map(|(name, _)| *name).collect();
    serde_json::json!({
        "workload": label,
        "params": n,
        "tensors": specs.len(),
        "step_ms": names.iter().zip(&ms).map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "copy_gbs": roofline,
    })
}
