//! Forward+backward step time of koala's training graphs against ONNX
//! Runtime running the forward graph alone, for MobileNetV2 (batch 16,
//! 3×96×96) and the tiny CNN, for both execution targets (ort: ORT's blocked
//! kernels; portable: standard ONNX only) and the portable Conv weight-gradient
//! formulations.
//! Prints a markdown table (run: `cargo bench --bench train_step`).

use koala::graph::step::{Batch, TrainStep};
use koala::graph::{BackwardOptions, ConvWeightGrad, ExecutionTarget, Model, TrainingSpec};
use koala::runtime::{Session, SessionOptions, TensorView, TensorViewMut};
use std::path::PathBuf;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Untimed runs before measuring.
const WARMUP: usize = 3;

fn median_of(t: &mut [f64]) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Median of `reps` timings (seconds) after `WARMUP` untimed runs.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    median_of(&mut t)
}

/// Runs one model: prints its markdown row and returns the same numbers as JSON
/// (for `KOALA_BENCH_JSON`, read by `benches/pytorch/compare_step.py`).
fn bench(
    name: &str,
    model: &str,
    shape: [usize; 4],
    classes: usize,
    threads: usize,
    reps: usize,
) -> serde_json::Value {
    let model_path = root().join(model);
    let m = Model::load(&model_path).unwrap();
    let input = m.graph().input[0].name.clone();
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let labels: Vec<i64> = (0..shape[0]).map(|i| (i % classes) as i64).collect();
    let opts = SessionOptions {
        intra_threads: Some(threads),
        ..SessionOptions::default()
    };
    let mut fwd = Session::from_file(&model_path, &opts).unwrap();
    let mut logits = vec![0f32; shape[0] * classes];
    let out_name = fwd.outputs()[0].name.clone();
    let oshape = [shape[0], classes];
    let t_fwd = median(reps, || {
        fwd.run_into(
            &[(&input, TensorView::f32(&x, &shape))],
            &mut [(&out_name, TensorViewMut::f32(&mut logits, &oshape))],
        )
        .unwrap();
    });
    let mut row = format!("| {name} | {} | {:.1} ms |", shape[0], 1e3 * t_fwd);
    let mut step_ms = Vec::new();
    // (target, dW formulation, keep BN): the default first, then the portable
    // (standard-ONNX) graph it replaces, then the portable alternatives.
    let variants = [
        (ExecutionTarget::Ort, ConvWeightGrad::Auto, false),
        (ExecutionTarget::Portable, ConvWeightGrad::Auto, false),
        (
            ExecutionTarget::Portable,
            ConvWeightGrad::TransposedConv,
            false,
        ),
        (ExecutionTarget::Portable, ConvWeightGrad::Auto, true),
    ];
    let mut steps: Vec<TrainStep> = variants
        .iter()
        .map(|&(target, conv_weight_grad, keep_batchnorm)| {
            let spec = TrainingSpec {
                input_shapes: [(input.clone(), shape.to_vec())].into_iter().collect(),
                backward: BackwardOptions {
                    target,
                    conv_weight_grad,
                    keep_batchnorm,
                    ..BackwardOptions::default()
                },
                probe_threads: threads,
                ..TrainingSpec::default()
            };
            let g = koala::graph::build(&m, &spec).unwrap();
            if target == ExecutionTarget::Ort && g.target != target {
                eprintln!(
                    "note: ORT has no blocked kernels here; the ort column is the portable graph"
                );
            }
            let mut step = TrainStep::new(g, Some(threads)).unwrap();
            step.set_batch(&[Batch::F32(&x)], Batch::I64(&labels))
                .unwrap();
            step
        })
        .collect();
    // Two rounds over the variants, each a warm-up and a block of runs of one
    // session (as in training, where one session runs repeatedly), so that
    // slow phases of a VM with noisy neighbours and the order of the variants
    // hit them alike.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
    for _round in 0..2 {
        for (step, t) in steps.iter_mut().zip(&mut times) {
            for i in 0..WARMUP + reps / 2 {
                let s = Instant::now();
                step.run().unwrap();
                if i >= WARMUP {
                    t.push(s.elapsed().as_secs_f64());
                }
            }
        }
    }
    for t in &mut times {
        let t = median_of(t);
        row += &format!(" {:.1} ms ({:.2}×) |", 1e3 * t, t / t_fwd);
        step_ms.push(1e3 * t);
    }
    println!("{row}");
    serde_json::json!({
        "model": name,
        "batch": shape[0],
        "input_shape": shape,
        "threads": threads,
        "forward_ms": 1e3 * t_fwd,
        "step_ms": {
            "default": step_ms[0],
            "portable": step_ms[1],
            "portable_transposed_conv_dw": step_ms[2],
            "portable_batchnorm_kept": step_ms[3],
        },
    })
}

fn main() {
    let threads = std::env::var("KOALA_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    println!("threads: {threads}; median of repeated runs; ratio = step / forward");
    println!("| model | batch | ORT forward (inference graph) | koala fwd+bwd, default (ort target: blocked kernels) | portable (standard ONNX only) | portable, transposed-conv dW everywhere | portable, BN kept as a node |");
    println!("|---|---|---|---|---|---|---|");
    let tiny = bench(
        "tiny CNN 3×16×16",
        "tests/fixtures/reference/tiny_cnn/model.onnx",
        [16, 3, 16, 16],
        10,
        threads,
        50,
    );
    let mobilenet = bench(
        "MobileNetV2 3×96×96",
        "models/mobilenet_v2/model.onnx",
        [16, 3, 96, 96],
        1000,
        threads,
        20,
    );
    if let Ok(path) = std::env::var("KOALA_BENCH_JSON") {
        let json = serde_json::json!({ "tiny_cnn": tiny, "mobilenet_v2": mobilenet });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
            .unwrap_or_else(|e| panic!("writing KOALA_BENCH_JSON={path}: {e}"));
    }
}
