//! A second, independent runtime for the exported model: tract, a pure-Rust
//! ONNX executor that shares no code with ONNX Runtime. koala trains with ORT,
//! so an export that only ORT's leniency accepts would pass ORT's own reload
//! check; agreement with tract is evidence that the file is plain ONNX that
//! other runtimes load too.

use anyhow::{Context, Result};
use std::path::Path;
use tract_onnx::prelude::*;

/// Output 0 of the ONNX model at `model` for one f32 input of `shape`, as
/// computed by tract.
pub fn first_output(model: &Path, shape: &[usize], input: &[f32]) -> Result<Vec<f32>> {
    output(model, 0, shape, input)
}

/// Output `index` of the ONNX model at `model` for one f32 input of `shape`,
/// as computed by tract (a classifier's trained output need not be first).
pub fn output(model: &Path, index: usize, shape: &[usize], input: &[f32]) -> Result<Vec<f32>> {
    let plan = tract_onnx::onnx()
        .model_for_path(model)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .with_context(|| format!("tract could not load '{}'", model.display()))?;
    let tensor = Tensor::from_shape(shape, input).context("building tract's input tensor")?;
    let outputs = plan
        .run(tvec!(tensor.into()))
        .with_context(|| format!("tract could not run '{}'", model.display()))?;
    let out = outputs
        .get(index)
        .with_context(|| format!("tract returned no output {index}"))?
        .to_plain_array_view::<f32>()
        .with_context(|| format!("tract's output {index} is not float32"))?;
    Ok(out.iter().copied().collect())
}

/// Largest |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tiny_cnn(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/reference/tiny_cnn")
            .join(file)
    }

    fn f32s(path: &Path) -> Vec<f32> {
        std::fs::read(path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// tract reproduces PyTorch's logits of the tiny CNN (f64 forward cast to
    /// f32). Tolerance 1e-5: logits are O(1) and f32 rounding in a different
    /// kernel order stays within ~100 ulps; a wrong op would be off by ≥ 1e-2.
    #[test]
    fn tract_matches_pytorch_on_the_tiny_cnn() {
        let x = f32s(&tiny_cnn("inputs/input.f32"));
        let want = f32s(&tiny_cnn("outputs/logits.f32"));
        let got = first_output(&tiny_cnn("model.onnx"), &[3, 3, 16, 16], &x).unwrap();
        assert_eq!(got.len(), want.len());
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "tract vs PyTorch logits: max |Δ| {d:e}");
    }

    #[test]
    fn a_file_that_is_not_onnx_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.onnx");
        std::fs::write(&path, b"this is not a protobuf model").unwrap();
        let e = first_output(&path, &[1, 3, 8, 8], &[0.0; 192]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("tract could not load") && msg.contains("garbage.onnx"),
            "{msg}"
        );
    }
}
