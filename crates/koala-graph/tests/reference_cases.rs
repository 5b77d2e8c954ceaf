//! Whole-model parity with PyTorch: the shipped reference cases (copied from
//! the team's PyTorch ground truth into tests/fixtures/reference) must pass
//! `gradcheck`'s rule (loss ≤ 1e-4 abs; per-tensor rel L2 within the case's
//! tolerance; MobileNetV2 under its kink-aware rule, see its case.json).

use koala_graph::gradcheck::{self, GradcheckOptions};
use std::path::PathBuf;

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name)
}

#[test]
fn tiny_cnn_matches_pytorch() {
    let report = gradcheck::run(&case("tiny_cnn"), &GradcheckOptions::default()).unwrap();
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
    let report = gradcheck::run(&case("mobilenet_v2"), &GradcheckOptions::default()).unwrap();
    println!("{report}");
    assert_eq!(
        report.tensors.len(),
        158,
        "MobileNetV2 has 158 trainable tensors"
    );
    assert!(report.pass(), "{report}");
}
