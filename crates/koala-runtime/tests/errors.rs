//! Bad input gives an error that names the tensor (or file) and says expected versus got;
//! nothing panics.

mod common;

use common::{fixture, tiny_cnn_dir};
use koala_runtime::{Error, Runner, Session, SessionOptions, TensorView, TensorViewMut};

fn tiny_cnn() -> Session {
    Session::from_file(
        &tiny_cnn_dir().join("model.onnx"),
        &SessionOptions::default(),
    )
    .unwrap()
}

fn assert_mentions(err: &Error, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

const X: [f32; 3 * 3 * 16 * 16] = [0.5; 3 * 3 * 16 * 16];

#[test]
fn unknown_input_name_lists_the_real_ones() {
    let err = tiny_cnn()
        .run(&[("inptu", TensorView::f32(&X, &[3, 3, 16, 16]))])
        .unwrap_err();
    assert!(matches!(err, Error::UnknownTensor { .. }), "{err:?}");
    assert_mentions(&err, &["input", "\"inptu\"", "its inputs are: input"]);
}

#[test]
fn wrong_input_shape_names_input_expected_and_got() {
    let x = &X[..3 * 3 * 8 * 8];
    for via_run_into in [false, true] {
        let mut s = tiny_cnn();
        let inputs = [("input", TensorView::f32(x, &[3, 3, 8, 8]))];
        let err = if via_run_into {
            let mut logits = [0.0f32; 30];
            s.run_into(
                &inputs,
                &mut [("logits", TensorViewMut::f32(&mut logits, &[3, 10]))],
            )
            .unwrap_err()
        } else {
            s.run(&inputs).unwrap_err()
        };
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
        assert_mentions(
            &err,
            &["input \"input\"", "[batch, 3, 16, 16]", "[3, 3, 8, 8]"],
        );
    }
}

#[test]
fn buffer_shorter_than_its_shape_is_caught_before_ort_reads_it() {
    let err = tiny_cnn()
        .run(&[("input", TensorView::f32(&X[..100], &[3, 3, 16, 16]))])
        .unwrap_err();
    assert_mentions(&err, &["\"input\"", "100 elements", "2304"]);
}

#[test]
fn wrong_element_type_names_both_types() {
    let ids = [0i64; 3 * 3 * 16 * 16];
    let err = tiny_cnn()
        .run(&[("input", TensorView::i64(&ids, &[3, 3, 16, 16]))])
        .unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err:?}");
    assert_mentions(&err, &["\"input\"", "f32", "i64"]);
}

#[test]
fn missing_and_duplicate_inputs_are_named() {
    let mut s =
        Session::from_file(&fixture("mixed_types.onnx"), &SessionOptions::default()).unwrap();
    let a = [0.0f64; 6];
    let err = s.run(&[("a", TensorView::f64(&a, &[2, 3]))]).unwrap_err();
    assert_mentions(&err, &["missing", "b, k"]);
    let err = s
        .run(&[
            ("a", TensorView::f64(&a, &[2, 3])),
            ("a", TensorView::f64(&a, &[2, 3])),
        ])
        .unwrap_err();
    assert_mentions(&err, &["\"a\"", "twice"]);
}

#[test]
fn wrong_output_buffer_shape_names_the_output() {
    let mut s =
        Session::from_file(&fixture("mixed_types.onnx"), &SessionOptions::default()).unwrap();
    let (a, b, k) = ([0.0f64; 6], [0.0f64; 6], [0i64; 4]);
    let mut prod = [0.0f64; 4];
    let err = s
        .run_into(
            &[
                ("a", TensorView::f64(&a, &[2, 3])),
                ("b", TensorView::f64(&b, &[3, 2])),
                ("k", TensorView::i64(&k, &[4])),
            ],
            &mut [("prod", TensorViewMut::f64(&mut prod, &[4]))],
        )
        .unwrap_err();
    assert_mentions(&err, &["output \"prod\"", "[2, 2]", "[4]"]);
}

#[test]
fn output_buffer_with_the_wrong_dynamic_size_is_reported_by_ort_with_the_model() {
    // The declared shape [batch, 10] admits [4, 10]; only the run can tell that batch is 3.
    let mut logits = [0.0f32; 40];
    let err = tiny_cnn()
        .run_into(
            &[("input", TensorView::f32(&X, &[3, 3, 16, 16]))],
            &mut [("logits", TensorViewMut::f32(&mut logits, &[4, 10]))],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Ort { .. }), "{err:?}");
    assert_mentions(&err, &["running model", "model.onnx", "'logits'"]);
}

#[test]
fn missing_model_file_and_garbage_bytes_are_named() {
    let err = Session::from_file(
        "/nonexistent/model.onnx".as_ref(),
        &SessionOptions::default(),
    )
    .unwrap_err();
    assert_mentions(&err, &["/nonexistent/model.onnx"]);
    let err = Session::from_bytes(b"not a model", &SessionOptions::default()).unwrap_err();
    assert_mentions(&err, &["in-memory model (11 bytes)"]);
}

#[test]
fn runner_needs_sizes_for_dynamic_dimensions() {
    let err = Runner::new(tiny_cnn(), &[]).unwrap_err();
    assert_mentions(&err, &["input \"input\"", "\"batch\"", "dims"]);
}
