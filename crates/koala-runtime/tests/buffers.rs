//! f64 and i64 buffers (mixed_types.onnx) and a training-step-sized call with 160 inputs and
//! 160 outputs (many_io.onnx); both models are made by tests/fixtures/make_models.py.
//!
//! Expected values are exact: every operand is a small integer or half-integer, so f64 MatMul
//! and i64 Add results are exactly representable and compared with `==`.

mod common;

use std::time::Instant;

use common::{fixture, within_30s, FixedBuffers};
use koala_runtime::{ElementType, Runner, Session, SessionOptions, TensorView, TensorViewMut};

const A: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const B: [f64; 6] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0];
/// A[2x3] · B[3x2], by hand: [1·.5+2·1.5+3·2.5, 1·1+2·2+3·3; 4·.5+5·1.5+6·2.5, 4·1+5·2+6·3].
const PROD: [f64; 4] = [11.0, 14.0, 24.5, 32.0];
/// Includes 2^40 to show i64 is not squeezed through f32 or i32.
const K: [i64; 4] = [1, -2, 3, 1 << 40];
const TWICE: [i64; 4] = [2, -4, 6, 1 << 41];

fn mixed() -> Session {
    Session::from_file(&fixture("mixed_types.onnx"), &SessionOptions::default()).unwrap()
}

#[test]
fn f64_and_i64_through_run() {
    let out = mixed()
        .run(&[
            ("a", TensorView::f64(&A, &[2, 3])),
            ("b", TensorView::f64(&B, &[3, 2])),
            ("k", TensorView::i64(&K, &[4])),
        ])
        .unwrap();
    assert_eq!(out[0].name, "prod");
    assert_eq!(out[0].element_type(), ElementType::F64);
    assert_eq!(out[0].as_f64().unwrap(), &PROD);
    assert_eq!(out[1].as_i64().unwrap(), &TWICE);
}

#[test]
fn f64_and_i64_through_run_into_in_any_name_order() {
    let (prod, twice) = within_30s("run_into", || {
        let mut s = mixed();
        let mut prod = [0.0f64; 4];
        let mut twice = [0i64; 4];
        // Inputs and outputs given in another order than the graph's: names decide, not positions.
        s.run_into(
            &[
                ("k", TensorView::i64(&K, &[4])),
                ("b", TensorView::f64(&B, &[3, 2])),
                ("a", TensorView::f64(&A, &[2, 3])),
            ],
            &mut [
                ("twice", TensorViewMut::i64(&mut twice, &[4])),
                ("prod", TensorViewMut::f64(&mut prod, &[2, 2])),
            ],
        )
        .unwrap();
        (prod, twice)
    });
    assert_eq!(prod, PROD);
    assert_eq!(twice, TWICE);
}

#[test]
fn run_into_may_ask_for_a_subset_of_outputs() {
    let mut s = mixed();
    let mut twice = [0i64; 4];
    s.run_into(
        &[
            ("a", TensorView::f64(&A, &[2, 3])),
            ("b", TensorView::f64(&B, &[3, 2])),
            ("k", TensorView::i64(&K, &[4])),
        ],
        &mut [("twice", TensorViewMut::i64(&mut twice, &[4]))],
    )
    .unwrap();
    assert_eq!(twice, TWICE);
}

#[test]
fn f64_and_i64_through_a_runner() {
    let mut r = within_30s("runner", || {
        let mut r = Runner::new(mixed(), &[]).unwrap();
        let (a, b, k) = (
            r.input_index("a").unwrap(),
            r.input_index("b").unwrap(),
            r.input_index("k").unwrap(),
        );
        r.input_mut(a).f64s_mut().unwrap().copy_from_slice(&A);
        r.input_mut(b).f64s_mut().unwrap().copy_from_slice(&B);
        r.input_mut(k).i64s_mut().unwrap().copy_from_slice(&K);
        r.run().unwrap();
        r
    });
    let prod = r.output_index("prod").unwrap();
    assert_eq!(r.output(prod).f64s().unwrap(), &PROD);
    assert_eq!(
        r.output(r.output_index("twice").unwrap()).i64s().unwrap(),
        &TWICE
    );
    // Asking for the wrong element type names the tensor instead of panicking.
    let err = r.input_mut(0).f32s_mut().unwrap_err().to_string();
    assert!(
        err.contains("\"a\"") && err.contains("f64") && err.contains("f32"),
        "{err}"
    );
}

#[test]
fn runner_with_selected_outputs_binds_only_those() {
    let mut r = Runner::with_outputs(mixed(), &[], &["twice"]).unwrap();
    assert_eq!(r.outputs().len(), 1);
    r.input_mut(2).i64s_mut().unwrap().copy_from_slice(&K);
    r.run().unwrap();
    assert_eq!(r.output(0).i64s().unwrap(), &TWICE);
    let err = r.output_index("prod").unwrap_err().to_string();
    assert!(err.contains("\"prod\"") && err.contains("twice"), "{err}");
}

fn many_io() -> Session {
    Session::from_file(&fixture("many_io.onnx"), &SessionOptions::default()).unwrap()
}

/// Fills w_i with a pattern, runs, and checks w_i_grad = (i + 1) · w_i for all 160 pairs; then
/// updates the inputs from the outputs in place (as an optimizer would) and checks again.
#[test]
fn runner_keeps_160_inputs_paired_with_their_outputs() {
    within_30s("many_io runner", || {
        let mut r = Runner::new(many_io(), &[]).unwrap();
        assert_eq!((r.inputs().len(), r.outputs().len()), (160, 160));
        for (i, t) in r.io_mut().0.iter_mut().enumerate() {
            for (j, w) in t.f32s_mut().unwrap().iter_mut().enumerate() {
                *w = (i * 1000 + j) as f32 * 0.25;
            }
        }
        r.run().unwrap();
        check_many_io(&r);
        // A "step": w_i -= 0.5 · grad_i, through io_mut, then rerun.
        let (inputs, outputs) = r.io_mut();
        for (w, g) in inputs.iter_mut().zip(outputs) {
            for (w, g) in w.f32s_mut().unwrap().iter_mut().zip(g.f32s().unwrap()) {
                *w -= 0.5 * g;
            }
        }
        r.run().unwrap();
        check_many_io(&r);
    });
}

fn check_many_io(r: &Runner) {
    for (i, (w, g)) in r.inputs().iter().zip(r.outputs()).enumerate() {
        assert_eq!(g.name(), format!("{}_grad", w.name()));
        let factor = (i + 1) as f32;
        // Bitwise equal: ORT's Mul and Rust's `*` are the same correctly rounded IEEE f32
        // multiplication of the same operands.
        for (x, y) in w.f32s().unwrap().iter().zip(g.f32s().unwrap()) {
            assert_eq!(*y, factor * x, "{}", g.name());
        }
    }
}

/// Information only: one 160-in/160-out call via run_into (views made per call) and via a
/// runner (bound once).
#[test]
fn timing_many_io_run_into_versus_runner() {
    const N: usize = 200;
    let mut s = many_io();
    let mut buffers = FixedBuffers::for_session(&s, 1.0);
    let mut times = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let (ins, mut outs) = buffers.views();
        s.run_into(&ins, &mut outs).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    assert_eq!(buffers.outputs[159][0], 160.0);
    times.sort_by(f64::total_cmp);
    let run_into_us = times[N / 2];
    let mut r = Runner::new(s, &[]).unwrap();
    times.clear();
    for _ in 0..N {
        let t = Instant::now();
        r.run().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "many_io (160 in, 160 out), median of {N}: run_into {run_into_us:.1} µs, runner {:.1} µs",
        times[N / 2]
    );
}
