//! Whole-model parity with PyTorch: the shipped reference cases (copied from
//! the team's PyTorch ground truth into tests/fixtures/reference) must pass
//! `gradcheck`'s rule (loss ≤ 1e-4 abs; per-tensor rel L2 within the case's
//! tolerance; MobileNetV2 under its kink-aware rule, see its case.json).

//!
//! The default (`ort`) target runs the CNNs' convolutions on ORT's blocked kernels; the
//! CNN cases are checked on the `portable` (standard ONNX) target too.

use koala_graph::gradcheck::{self, GradcheckOptions};
use koala_graph::{BackwardOptions, ExecutionTarget};
use std::path::PathBuf;

fn portable() -> GradcheckOptions {
    GradcheckOptions {
        backward: BackwardOptions {
            target: ExecutionTarget::Portable,
            ..BackwardOptions::default()
        },
        ..GradcheckOptions::default()
    }
}

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name)
}

/// Runs gradcheck on a case, which must pass with `tensors` trainable tensors.
fn passing_case(name: &str, tensors: usize) -> gradcheck::Report {
    let report = gradcheck::run(&case(name), &GradcheckOptions::default()).unwrap();
    println!("{report}");
    assert_eq!(report.tensors.len(), tensors, "{name}: trainable tensors");
    assert!(report.pass(), "{report}");
    report
}

#[test]
fn tiny_cnn_matches_pytorch() {
    tiny_cnn_on(&GradcheckOptions::default());
}

#[test]
fn tiny_cnn_matches_pytorch_portable() {
    tiny_cnn_on(&portable());
}

fn tiny_cnn_on(opts: &GradcheckOptions) {
    let report = gradcheck::run(&case("tiny_cnn"), opts).unwrap();
    println!("{report}");
    assert_eq!(report.tensors.len(), 9, "tiny_cnn has 9 trainable tensors");
    assert!(report.pass(), "{report}");
    // tiny_cnn is kink-robust: every tensor must meet the strict 1e-3 rule.
    assert!(
        report
            .tensors
            .iter()
            .all(|t| t.error <= 1e-3 && !t.zero_rule),
        "{report}"
    );
}

#[test]
fn mobilenet_v2_matches_pytorch() {
    mobilenet_v2_on(&GradcheckOptions::default());
}

#[test]
fn mobilenet_v2_matches_pytorch_portable() {
    mobilenet_v2_on(&portable());
}

fn mobilenet_v2_on(opts: &GradcheckOptions) {
    let report = gradcheck::run(&case("mobilenet_v2"), opts).unwrap();
    println!("{report}");
    assert_eq!(
        report.tensors.len(),
        158,
        "MobileNetV2 has 158 trainable tensors"
    );
    assert!(report.pass(), "{report}");
}

/// GPT-2-style decoder exported by torch.onnx (LayerNormalization-17, exact
/// GELU through Erf, causal mask through Trilu/Not/Where, learned positions)
/// with the causal-LM loss: all 37 tensors within 1e-3, the two k biases
/// (exactly zero gradient, softmax is invariant to them) by the zero rule.
#[test]
fn tiny_gpt_matches_pytorch() {
    let report = passing_case("tiny_gpt", 37);
    let zero: Vec<&str> = report
        .tensors
        .iter()
        .filter(|t| t.zero_rule)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(zero, ["blocks.0.attn.k.bias", "blocks.1.attn.k.bias"]);
}

/// Llama-style decoder made by the project's generator
/// (`gen/gen_llama.py`): RoPE with rotate-half, RMSNorm decomposed as
/// PyTorch exports it (Pow, ReduceMean, Add, Sqrt, Div), GQA by
/// Expand/Reshape, SiLU-gated MLP, a tied embedding (its reference gradient
/// is the sum of the Gather and MatMul uses): every tensor within 1e-3.
#[test]
fn tiny_llama_matches_pytorch() {
    let report = passing_case("tiny_llama", 20);
    assert!(
        report
            .tensors
            .iter()
            .all(|t| t.error <= 1e-3 && !t.zero_rule),
        "{report}"
    );
}
