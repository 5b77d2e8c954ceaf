//! tiny_cnn (tests/fixtures/reference/tiny_cnn) through every run path, against the PyTorch
//! float64 reference logits.
//!
//! Tolerance: max abs ≤ 1e-5, the README's bound for an f32 forward of this case (ORT CPU was
//! measured 3.0e-8 from PyTorch; the slack covers other kernels/thread counts, not real bugs:
//! logits are O(1), so a wrong op would be off by far more).

mod common;

use std::time::Instant;

use common::{max_abs_diff, read_f32, tiny_cnn_dir, within_30s};
use koala_runtime::{
    Arena, Dim, ElementType, OptimizationLevel, Runner, Session, SessionOptions, TensorView,
    TensorViewMut,
};

const TOL: f32 = 1e-5;
const SHAPE: [usize; 4] = [3, 3, 16, 16];

fn input() -> Vec<f32> {
    let x = read_f32(&tiny_cnn_dir().join("inputs/input.f32"));
    assert_eq!(x.len(), SHAPE.iter().product::<usize>());
    x
}

fn reference_logits() -> Vec<f32> {
    read_f32(&tiny_cnn_dir().join("outputs/logits.f32"))
}

fn session(opts: &SessionOptions) -> Session {
    Session::from_file(&tiny_cnn_dir().join("model.onnx"), opts).expect("load tiny_cnn")
}

#[test]
fn describes_inputs_and_outputs() {
    let s = session(&SessionOptions::default());
    assert_eq!(s.inputs().len(), 1);
    let input = &s.inputs()[0];
    assert_eq!(input.name, "input");
    assert_eq!(input.element_type, ElementType::F32);
    assert_eq!(
        input.dims,
        vec![
            Dim::Symbolic("batch".into()),
            Dim::Fixed(3),
            Dim::Fixed(16),
            Dim::Fixed(16)
        ]
    );
    let output = &s.outputs()[0];
    assert_eq!(output.name, "logits");
    assert_eq!(output.dims_display(), "[batch, 10]");
}

#[test]
fn run_matches_reference() {
    let x = input();
    let out = session(&SessionOptions::default())
        .run(&[("input", TensorView::f32(&x, &SHAPE))])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].name, "logits");
    assert_eq!(out[0].shape, vec![3, 10]);
    let d = max_abs_diff(out[0].as_f32().unwrap(), &reference_logits());
    assert!(d <= TOL, "run: max abs diff {d}");
}

#[test]
fn run_into_writes_reference_logits_into_the_callers_buffer() {
    let d = within_30s("run_into", || {
        let x = input();
        let mut s = session(&SessionOptions::default());
        let mut logits = vec![f32::NAN; 30];
        let ptr = logits.as_ptr();
        // Twice: the second call reuses the scratch storage and overwrites the same buffer.
        for _ in 0..2 {
            s.run_into(
                &[("input", TensorView::f32(&x, &SHAPE))],
                &mut [("logits", TensorViewMut::f32(&mut logits, &[3, 10]))],
            )
            .unwrap();
        }
        assert_eq!(logits.as_ptr(), ptr, "the buffer must be written in place");
        max_abs_diff(&logits, &reference_logits())
    });
    assert!(d <= TOL, "run_into: max abs diff {d}");
}

#[test]
fn runner_matches_reference_and_reruns_in_place() {
    let d = within_30s("runner", || {
        let mut r = Runner::new(session(&SessionOptions::default()), &[("batch", 3)]).unwrap();
        assert_eq!(r.inputs()[0].shape(), &SHAPE);
        assert_eq!(r.outputs()[0].shape(), &[3, 10]);
        r.input_mut(0).f32s_mut().unwrap().copy_from_slice(&input());
        r.run().unwrap();
        let first = r.output(0).f32s().unwrap().to_vec();
        // Change the input in place and rerun: the output must follow (no stale binding).
        r.input_mut(0).f32s_mut().unwrap().fill(0.0);
        r.run().unwrap();
        assert_ne!(r.output(0).f32s().unwrap(), &first[..]);
        r.input_mut(0).f32s_mut().unwrap().copy_from_slice(&input());
        r.run().unwrap();
        assert_eq!(
            r.output(0).f32s().unwrap(),
            &first[..],
            "same input, same output"
        );
        max_abs_diff(&first, &reference_logits())
    });
    assert!(d <= TOL, "runner: max abs diff {d}");
}

#[test]
fn model_from_bytes_gives_the_same_logits() {
    let bytes = std::fs::read(tiny_cnn_dir().join("model.onnx")).unwrap();
    let x = input();
    let mut s = Session::from_bytes(&bytes, &SessionOptions::default()).unwrap();
    let out = s.run(&[("input", TensorView::f32(&x, &SHAPE))]).unwrap();
    let d = max_abs_diff(out[0].as_f32().unwrap(), &reference_logits());
    assert!(d <= TOL, "from_bytes: max abs diff {d}");
}

#[test]
fn thread_counts_and_optimization_levels_agree_with_reference() {
    let x = input();
    for threads in [1, 2] {
        for optimization in [OptimizationLevel::Disable, OptimizationLevel::All] {
            let opts = SessionOptions {
                intra_threads: Some(threads),
                optimization,
                memory_pattern: threads == 1,
                // Both settings of ORT's spinning must give the same numbers.
                spinning: threads == 2,
                ..SessionOptions::default()
            };
            assert_eq!(opts.resolved_intra_threads(), threads);
            let out = session(&opts)
                .run(&[("input", TensorView::f32(&x, &SHAPE))])
                .unwrap();
            let d = max_abs_diff(out[0].as_f32().unwrap(), &reference_logits());
            assert!(
                d <= TOL,
                "{threads} threads, {optimization:?}: max abs diff {d}"
            );
        }
    }
}

#[test]
fn another_batch_size_runs_through_the_dynamic_axis() {
    // The first sample alone must give the first row of the reference logits.
    let x = input();
    let one = &x[..3 * 16 * 16];
    let out = session(&SessionOptions::default())
        .run(&[("input", TensorView::f32(one, &[1, 3, 16, 16]))])
        .unwrap();
    assert_eq!(out[0].shape, vec![1, 10]);
    let d = max_abs_diff(out[0].as_f32().unwrap(), &reference_logits()[..10]);
    assert!(d <= TOL, "batch 1: max abs diff {d}");
}

/// Information only (no timed assertion): median time of one forward per path.
#[test]
fn timing_run_versus_run_into_versus_runner() {
    const N: usize = 200;
    let x = input();
    let opts = SessionOptions::default();
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let mut s = session(&opts);
    let mut times = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let out = s.run(&[("input", TensorView::f32(&x, &SHAPE))]).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(out[0].shape, vec![3, 10]);
    }
    let run_us = median(times.clone());
    let mut logits = vec![0.0f32; 30];
    times.clear();
    for _ in 0..N {
        let t = Instant::now();
        s.run_into(
            &[("input", TensorView::f32(&x, &SHAPE))],
            &mut [("logits", TensorViewMut::f32(&mut logits, &[3, 10]))],
        )
        .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let run_into_us = median(times.clone());
    let mut r = Runner::new(s, &[("batch", 3)]).unwrap();
    r.input_mut(0).f32s_mut().unwrap().copy_from_slice(&x);
    times.clear();
    for _ in 0..N {
        let t = Instant::now();
        r.run().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let runner_us = median(times);
    assert!(max_abs_diff(r.output(0).f32s().unwrap(), &logits) == 0.0);
    println!(
        "tiny_cnn forward, median of {N} ({} intra-op threads): run {run_us:.1} µs, run_into {run_into_us:.1} µs, runner {runner_us:.1} µs",
        opts.resolved_intra_threads()
    );
}

/// Both CPU arenas give the reference logits, and ORT's counters describe each: a run puts
/// live tensors in the arena (peak in use > 0), which reserves at least that much. The
/// shared exact-growth arena (`Arena::Exact`) serves every session that asks for it.
#[test]
fn both_arenas_agree_with_reference_and_report_their_use() {
    let x = input();
    for arena in [Arena::PowerOfTwo, Arena::Exact, Arena::Exact] {
        let opts = SessionOptions {
            arena,
            memory_pattern: false,
            ..SessionOptions::default()
        };
        let mut s = session(&opts);
        let out = s.run(&[("input", TensorView::f32(&x, &SHAPE))]).unwrap();
        let d = max_abs_diff(out[0].as_f32().unwrap(), &reference_logits());
        assert!(d <= TOL, "{arena:?}: max abs diff {d}");
        let stats = s
            .arena_stats()
            .unwrap_or_else(|| panic!("{arena:?}: ORT reports no arena counters"));
        assert!(stats.max_in_use > 0, "{arena:?}: {stats:?}");
        assert!(
            stats.total_allocated >= stats.max_in_use,
            "{arena:?}: {stats:?}"
        );
        assert!(stats.max_alloc <= stats.max_in_use, "{arena:?}: {stats:?}");
    }
}
