//! A gradient reference case computed without PyTorch: central finite
//! differences of the model's forward pass (run by ONNX Runtime in f32),
//! with the cross-entropy taken in f64, written in the reference-case format
//! (`case.json` + raw little-endian binaries) that `koala gradcheck` reads.
//!
//! The forward pass comes from koala's training graph (its `model_output`:
//! the user's graph with weights as inputs), so these gradients do not
//! depend on any of koala's backward rules, which is what gradcheck tests.

use koala::graph::step::{Batch, TrainStep};
use koala::graph::{LossSpec, Model, TrainingSpec};
use koala::train::eval::score_row;
use serde_json::{json, Map, Value};
use std::path::Path;

/// One weight's finite-difference gradient.
pub struct FdGrad {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// Loss and finite-difference gradients of the mean softmax cross-entropy.
pub struct FdResult {
    pub loss: f64,
    pub grads: Vec<FdGrad>,
}

/// Mean softmax cross-entropy of `logits` [B, C] in f64 (koala's
/// evaluation scorer; its loss matches PyTorch's to 1e-6 on tiny_cnn, see
/// `fd_tolerances_cover_the_pytorch_reference`).
pub fn cross_entropy(logits: &[f32], labels: &[i64]) -> f64 {
    let c = logits.len() / labels.len();
    let rows = logits.chunks_exact(c).zip(labels);
    rows.map(|(row, &y)| score_row(row, y).0).sum::<f64>() / labels.len() as f64
}

/// Gradients of every trainable weight of `model` by central differences
/// with step `h` relative to the weight's magnitude (`h * max(1, |w|)`).
pub fn finite_differences(
    model: &Model,
    input: &[f32],
    shape: &[usize],
    labels: &[i64],
    h: f64,
) -> FdResult {
    let spec = TrainingSpec {
        input_shapes: [("input".to_string(), shape.to_vec())]
            .into_iter()
            .collect(),
        loss: LossSpec::default(),
        probe_threads: 1,
        ..TrainingSpec::default()
    };
    let graph = koala::graph::build(model, &spec).unwrap();
    let names: Vec<(String, Vec<usize>)> = graph
        .trainable
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    // The step starts at the model's weights; the batch stays bound.
    let mut step = TrainStep::new(graph, Some(1)).unwrap();
    step.set_batch(&[Batch::F32(input)], Batch::I64(labels))
        .unwrap();
    let loss_at = |step: &mut TrainStep| {
        step.run().unwrap();
        cross_entropy(step.model_output(), labels)
    };
    let loss = loss_at(&mut step);
    let mut grads = Vec::new();
    for (t, (name, shape)) in names.into_iter().enumerate() {
        let mut values = Vec::with_capacity(step.weight(t).len());
        for j in 0..step.weight(t).len() {
            let w = step.weight(t)[j];
            let dw = h * (w.abs() as f64).max(1.0);
            // The perturbed weights are f32: difference the values actually fed.
            let (plus, minus) = ((w as f64 + dw) as f32, (w as f64 - dw) as f32);
            step.weight_mut(t)[j] = plus;
            let lp = loss_at(&mut step);
            step.weight_mut(t)[j] = minus;
            let lm = loss_at(&mut step);
            step.weight_mut(t)[j] = w;
            values.push((lp - lm) / (plus as f64 - minus as f64));
        }
        grads.push(FdGrad {
            name,
            shape,
            values,
        });
    }
    FdResult { loss, grads }
}

/// Finite-difference steps (relative): the estimate and the cross-check.
pub const STEPS: [f64; 2] = [1e-3, 3e-4];

/// Gradients at step `STEPS[0]` with a per-tensor tolerance from their own
/// disagreement with the `STEPS[1]` estimate: max(1e-3, 3 × rel L2).
///
/// Why self-calibrated: in f32 the estimate has rounding noise (~1e-8 in
/// the loss / h) and, worse, kink errors where a perturbation crosses a
/// ReLU/Clip/MaxPool switch. Both change with h, so two steps disagree by
/// about as much as either is wrong; on tiny_cnn against PyTorch's f64
/// gradients the error is ≤ 4e-4 for most tensors and ~2e-2 for
/// conv1.weight (MaxPool switches), and the disagreement bound covers it
/// (checked by `fd_tolerances_cover_the_pytorch_reference` in tests/cli.rs).
pub fn finite_differences_with_tolerance(
    model: &Model,
    input: &[f32],
    shape: &[usize],
    labels: &[i64],
) -> (FdResult, Vec<f64>) {
    let a = finite_differences(model, input, shape, labels, STEPS[0]);
    let b = finite_differences(model, input, shape, labels, STEPS[1]);
    let tols = a
        .grads
        .iter()
        .zip(&b.grads)
        .map(|(x, y)| (3.0 * rel_l2(&x.values, &y.values)).max(1e-3))
        .collect();
    (a, tols)
}

fn write_f32(path: &Path, values: impl Iterator<Item = f32>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        values.flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

/// Writes a case directory `dir` for `model_file` in the reference format:
/// gradient `i` gets `recommended_rel_l2_tol = tols[i]`.
pub fn write_case(
    dir: &Path,
    model_file: &Path,
    input: &[f32],
    shape: &[usize],
    labels: &[i64],
    fd: &FdResult,
    tols: &[f64],
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(model_file, dir.join("model.onnx")).unwrap();
    write_f32(&dir.join("inputs/input.f32"), input.iter().copied());
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    std::fs::write(
        dir.join("labels/labels.i64"),
        labels
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut grads = Map::new();
    for (g, tol) in fd.grads.iter().zip(tols) {
        let file = format!("grads/{}.f32", g.name);
        write_f32(&dir.join(&file), g.values.iter().map(|&v| v as f32));
        grads.insert(
            g.name.clone(),
            json!({ "shape": g.shape, "file": file, "recommended_rel_l2_tol": tol }),
        );
    }
    let case = json!({
        "description": "finite-difference case generated by tests/cli.rs",
        "inputs": { "input": { "shape": shape, "dtype": "float32", "file": "inputs/input.f32" } },
        "labels": { "labels": { "shape": [labels.len()], "dtype": "int64", "file": "labels/labels.i64" } },
        "loss": { "type": "softmax_cross_entropy_mean", "value": fd.loss },
        "grads": Value::Object(grads),
    });
    std::fs::write(
        dir.join("case.json"),
        serde_json::to_vec_pretty(&case).unwrap(),
    )
    .unwrap();
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}
