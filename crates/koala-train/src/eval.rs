//! Evaluation: the inference model with the current weights written in,
//! run by ONNX Runtime on the evaluation split (loss and top-1 accuracy).
//!
//! Evaluating the exported form of the model (rather than the training
//! graph) checks, at every evaluation, exactly what the user will ship.

use anyhow::{bail, Context, Result};
use koala_data::{Cursor, Loader};
use koala_graph::Model;
use koala_runtime::{Session, SessionOptions, TensorView};

/// Loss and accuracy over a split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: usize,
}

/// The model's data input name (its first graph input that is not an initializer).
pub fn data_input(model: &Model) -> Result<String> {
    let g = model.graph();
    g.input
        .iter()
        .find(|i| !g.initializer.iter().any(|t| t.name == i.name))
        .map(|i| i.name.clone())
        .context("the model has no data input")
}

/// Cross-entropy and correctness of one row of logits.
pub fn score_row(row: &[f32], label: i64) -> (f64, bool) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&z| (z as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let arg = row
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &z)| if z > b.1 { (i, z) } else { b },
        )
        .0;
    (lse - row[label as usize] as f64, arg as i64 == label)
}

/// Evaluates an ORT session of the inference model on every batch of `loader`.
pub fn evaluate_session(session: &mut Session, input: &str, loader: &Loader) -> Result<EvalResult> {
    let fixed_batch = fixed_batch_size(session, input);
    let (mut loss, mut correct, mut n) = (0.0, 0usize, 0usize);
    let mut it = loader.iter(Cursor::new(0, 0), 1);
    while let Some(batch) = it.next() {
        let rows = batch.shape[0];
        let per = batch.images.len() / rows.max(1);
        // A model exported with a fixed batch size gets the batch in pieces of
        // that size (the last one filled up by repeating its final row, which
        // is not scored).
        let piece = fixed_batch.unwrap_or(rows).max(1);
        for start in (0..rows).step_by(piece) {
            let real = piece.min(rows - start);
            let images: std::borrow::Cow<[f32]> = if piece == rows {
                (&batch.images[..]).into()
            } else {
                (0..piece)
                    .flat_map(|i| {
                        let r = start + i.min(real - 1);
                        &batch.images[r * per..(r + 1) * per]
                    })
                    .copied()
                    .collect::<Vec<f32>>()
                    .into()
            };
            let mut shape = batch.shape;
            shape[0] = piece;
            let out = session.run(&[(input, TensorView::f32(&images, &shape))])?;
            let logits = out[0].as_f32().context("the model output is not float32")?;
            let classes = logits.len() / piece;
            for (i, &y) in batch.labels[start..start + real].iter().enumerate() {
                if y < 0 || y as usize >= classes {
                    bail!("label {y} is out of range for a model with {classes} outputs; pass --num-classes to replace the head");
                }
                let (l, ok) = score_row(&logits[i * classes..(i + 1) * classes], y);
                loss += l;
                correct += ok as usize;
            }
        }
        n += rows;
        it.recycle(batch);
    }
    if n == 0 {
        bail!("the evaluation split is empty");
    }
    Ok(EvalResult {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        samples: n,
    })
}

/// The batch size the model's data input is fixed to, if it is.
fn fixed_batch_size(session: &Session, input: &str) -> Option<usize> {
    let info = session.inputs().iter().find(|i| i.name == input)?;
    match info.dims.first() {
        Some(koala_runtime::Dim::Fixed(d)) => Some(*d),
        _ => None,
    }
}

/// Evaluates `model` with `weights` written into it.
pub fn evaluate(
    model: &Model,
    weights: &[(&str, &[f32])],
    loader: &Loader,
    threads: Option<usize>,
) -> Result<EvalResult> {
    let m = koala_graph::export::with_weights(model, weights.iter().copied())?;
    let opts = SessionOptions {
        intra_threads: threads,
        ..SessionOptions::default()
    };
    let mut s = Session::from_bytes(&m.to_bytes(), &opts)
        .context("ONNX Runtime could not load the model for evaluation")?;
    evaluate_session(&mut s, &data_input(model)?, loader)
}
