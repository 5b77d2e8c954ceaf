//! Helpers shared by the integration tests: fixture paths, raw little-endian readers, and a
//! watchdog that turns a hang (the rc.15 `IoBinding` trap) into a test failure.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// `tests/fixtures/reference/tiny_cnn` at the workspace root.
pub fn tiny_cnn_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/tiny_cnn")
}

/// A file in this crate's `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads a raw little-endian f32 file (the reference format, see tests/fixtures/reference/README.md).
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(
        bytes.len() % 4,
        0,
        "{} is not a whole number of f32s",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `f` on its own thread and fails the test if it takes longer than 30 s (a hang).
pub fn within_30s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} did not finish within 30 s (hang)"),
    }
}

/// Named f32 buffers for every input and output of a model with fixed shapes (many_io.onnx),
/// so tests can build `run_into` argument lists.
pub struct FixedBuffers {
    pub in_names: Vec<String>,
    pub out_names: Vec<String>,
    pub in_shapes: Vec<Vec<usize>>,
    pub out_shapes: Vec<Vec<usize>>,
    pub inputs: Vec<Vec<f32>>,
    pub outputs: Vec<Vec<f32>>,
}

impl FixedBuffers {
    /// Inputs filled with `fill`, outputs with zeros.
    pub fn for_session(s: &koala_runtime::Session, fill: f32) -> FixedBuffers {
        let shapes = |infos: &[koala_runtime::ValueInfo]| -> Vec<Vec<usize>> {
            infos
                .iter()
                .map(|i| i.fixed_shape().expect("fixed shapes"))
                .collect()
        };
        let (in_shapes, out_shapes) = (shapes(s.inputs()), shapes(s.outputs()));
        let buffers = |shapes: &[Vec<usize>], v: f32| -> Vec<Vec<f32>> {
            shapes
                .iter()
                .map(|sh| vec![v; sh.iter().product()])
                .collect()
        };
        FixedBuffers {
            in_names: s.inputs().iter().map(|i| i.name.clone()).collect(),
            out_names: s.outputs().iter().map(|o| o.name.clone()).collect(),
            inputs: buffers(&in_shapes, fill),
            outputs: buffers(&out_shapes, 0.0),
            in_shapes,
            out_shapes,
        }
    }

    /// `(name, view)` for every input, and `(name, mutable view)` for every output.
    #[allow(clippy::type_complexity)]
    pub fn views(
        &mut self,
    ) -> (
        Vec<(&str, koala_runtime::TensorView<'_>)>,
        Vec<(&str, koala_runtime::TensorViewMut<'_>)>,
    ) {
        let ins = self
            .in_names
            .iter()
            .zip(&self.inputs)
            .zip(&self.in_shapes)
            .map(|((n, d), sh)| (n.as_str(), koala_runtime::TensorView::f32(d, sh)))
            .collect();
        let outs = self
            .out_names
            .iter()
            .zip(self.outputs.iter_mut())
            .zip(&self.out_shapes)
            .map(|((n, d), sh)| (n.as_str(), koala_runtime::TensorViewMut::f32(d, sh)))
            .collect();
        (ins, outs)
    }
}
