//! MobileNetV2 (tests/fixtures/reference/mobilenet_v2, 14 MB, 3.5 M parameters) forward through
//! `run_into` and a `Runner`, against the PyTorch float64 reference logits.
//!
//! Tolerance: max abs ≤ 1e-4, the README's bound for this case (ORT CPU was measured 2.3e-5 from
//! the f64 reference with logits up to 40; f32 summation order differs between kernels).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{max_abs_diff, read_f32, within_30s};
use koala_runtime::{Runner, Session, SessionOptions, TensorView, TensorViewMut};

const TOL: f32 = 1e-4;
const SHAPE: [usize; 4] = [4, 3, 96, 96];

fn case_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/mobilenet_v2")
}

#[test]
fn forward_matches_reference_via_run_into_and_runner() {
    let (d_into, d_runner) = within_30s("mobilenet_v2", || {
        let x = read_f32(&case_dir().join("inputs/input.f32"));
        let reference = read_f32(&case_dir().join("outputs/logits.f32"));
        let mut s =
            Session::from_file(&case_dir().join("model.onnx"), &SessionOptions::default()).unwrap();
        let mut logits = vec![0.0f32; 4000];
        let t = Instant::now();
        s.run_into(
            &[("input", TensorView::f32(&x, &SHAPE))],
            &mut [("logits", TensorViewMut::f32(&mut logits, &[4, 1000]))],
        )
        .unwrap();
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        let d_into = max_abs_diff(&logits, &reference);

        let mut r = Runner::new(s, &[("batch", 4)]).unwrap();
        r.input_mut(0).f32s_mut().unwrap().copy_from_slice(&x);
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            r.run().unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("mobilenet_v2 4x3x96x96 forward: first run_into {first_ms:.1} ms, runner median of 5 {:.1} ms", times[2]);
        (
            d_into,
            max_abs_diff(r.output(0).f32s().unwrap(), &reference),
        )
    });
    assert!(d_into <= TOL, "run_into: max abs diff {d_into}");
    assert!(d_runner <= TOL, "runner: max abs diff {d_runner}");
}
