//! Configuration (serde, defaults, validation, presets) and input validation: bad input
//! is an error that names the field or tensor, never a panic.

use koala_optim::{
    build, preset, KoalaPPConfig, KoalaPPPath, OptimizerConfig, StepContext, TensorSpec, PRESETS,
};

#[test]
fn config_round_trips_and_missing_fields_take_defaults() {
    let c: OptimizerConfig =
        serde_json::from_str(r#"{"algorithm": "koala-pp", "sigma": 0.2}"#).unwrap();
    let OptimizerConfig::KoalaPlusPlus(k) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(k.sigma, 0.2);
    assert_eq!(k.q, KoalaPPConfig::default().q);
    assert_eq!(k.path, KoalaPPPath::Fused);
    let back: OptimizerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    for tag in ["koala-v", "koala-m", "adamw", "sgd"] {
        let json = format!(r#"{{"algorithm": "{tag}"}}"#);
        build(&serde_json::from_str(&json).unwrap()).unwrap();
    }
}

#[test]
fn unknown_field_and_invalid_value_are_named() {
    let err = serde_json::from_str::<OptimizerConfig>(r#"{"algorithm": "koala-pp", "sigmaa": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sigmaa"), "{err}");
    let c = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        alpha_r: 1.5,
        ..KoalaPPConfig::default()
    });
    let err = build(&c).unwrap_err().to_string();
    assert!(err.contains("`alpha_r`"), "{err}");
    for bound in [0.0, -1e-4, f64::NAN] {
        let c = OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            max_step: Some(bound),
            ..KoalaPPConfig::default()
        });
        let err = build(&c).unwrap_err().to_string();
        assert!(err.contains("`max_step`") && err.contains("> 0"), "{err}");
    }
}

#[test]
fn presets_have_the_paper_values() {
    let OptimizerConfig::KoalaPlusPlus(k) = preset("vision-cnn").unwrap() else {
        panic!()
    };
    assert_eq!((k.sigma, k.q, k.lr, k.weight_decay), (0.2, 0.2, 2.0, 5e-4));
    let OptimizerConfig::KoalaPlusPlus(k) = preset("vision-transformer").unwrap() else {
        panic!()
    };
    assert_eq!((k.sigma, k.q, k.lr, k.weight_decay), (0.2, 0.2, 2.0, 1e-4));
    let OptimizerConfig::KoalaPlusPlus(k) = preset("language-model").unwrap() else {
        panic!()
    };
    assert_eq!((k.sigma, k.q, k.lr, k.weight_decay), (0.1, 0.1, 2e-3, 1e-4));
    for p in PRESETS {
        build(&p.config()).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    let err = preset("vision").unwrap_err().to_string();
    assert!(
        err.contains("`vision`") && err.contains("vision-cnn"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_tensor() {
    let opt = build(&preset("vision-cnn").unwrap()).unwrap();
    let specs = [
        TensorSpec::new("conv.weight", [2, 3]),
        TensorSpec::new("conv.bias", [2]),
    ];
    let mut state = opt.init(&specs).unwrap();
    let (mut w, mut b) = (vec![0.0f32; 6], vec![0.0f32; 3]);
    let ctx = StepContext {
        loss: 1.0,
        loss_var: 1.0,
        lr: 1.0,
        step: 1,
    };
    let g = [1.0f32; 6];
    let err = opt
        .step(&mut state, &mut [&mut w, &mut b], &[Some(&g), None], &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`conv.bias`") && err.contains("expected 2"),
        "{err}"
    );
    let mut b = vec![0.0f32; 2];
    let err = opt
        .step(
            &mut state,
            &mut [&mut w, &mut b],
            &[Some(&g[..5]), None],
            &ctx,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`conv.weight`") && err.contains("gradient"),
        "{err}"
    );
    let err = opt
        .init(&[specs[0].clone(), specs[0].clone()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`conv.weight`") && err.contains("twice"),
        "{err}"
    );
    let adamw = build(&OptimizerConfig::AdamW(Default::default())).unwrap();
    let err = adamw
        .step(&mut state, &mut [&mut w, &mut b], &[None, None], &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("koala-pp/fused") && err.contains("adamw"),
        "{err}"
    );
}
