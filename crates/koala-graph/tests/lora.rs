//! LoRA adapters in the training graph (`koala_graph::lora`), on the tiny Llama reference case
//! (`tests/fixtures/reference/tiny_llama`: HF-named weights read as `MatMul(x, Transpose(W))`,
//! PyTorch gradients of every weight) and on small Gemm / `[in, out]` MatMul models built here.
//!
//! What is checked, and against what:
//! * with B = 0 the adapted model computes the base model's logits bit for bit (the update is
//!   an exact zero added to the same MatMul);
//! * the merged weights `W + (α/r)·B·A` reproduce the adapted model's logits;
//! * the gradients of A and B: against central finite differences of the training graph's
//!   loss, and (with B = 0) against PyTorch's gradient of W through the chain rule:
//!   `∂L/∂B = s·G_W·Aᵀ`, `∂L/∂A = s·Bᵀ·G_W = 0`;
//! * only A and B train; bad targets are errors naming the candidates.

use koala_graph::lora::{self, Layout, LoraConfig};
use koala_graph::loss::{LossSpec, IGNORE_INDEX};
use koala_graph::proto::{
    DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TypeProto, ValueInfoProto,
};
use koala_graph::reference::Case;
use koala_graph::step::{Batch, TrainStep};
use koala_graph::{attrs, tensor, training, Model, TrainableSpec, TrainingSpec};
use koala_runtime::{Session, SessionOptions, TensorView};
use std::collections::HashMap;
use std::path::PathBuf;

fn case_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/tiny_llama")
}

fn tiny_llama() -> (Model, Case) {
    let dir = case_dir();
    (
        Model::load(&dir.join("model.onnx")).unwrap(),
        Case::load(&dir).unwrap(),
    )
}

fn config(rank: usize, targets: &str) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        targets: targets.into(),
        seed: 7,
    }
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

fn input_ids(case: &Case) -> (Vec<i64>, Vec<usize>) {
    let t = case.inputs.iter().find(|t| t.name == "input_ids").unwrap();
    (t.i64.clone().unwrap(), t.shape.clone())
}

/// The model's first output run by ONNX Runtime on the case's input ids.
fn logits(model: &Model, case: &Case) -> Vec<f32> {
    let (ids, shape) = input_ids(case);
    let mut s = Session::from_bytes(&model.to_bytes(), &SessionOptions::default()).unwrap();
    let out = s
        .run(&[("input_ids", TensorView::i64(&ids, &shape))])
        .unwrap();
    out[0].as_f32().unwrap().to_vec()
}

fn init<'a>(model: &'a Model, name: &str) -> &'a koala_graph::proto::TensorProto {
    model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer '{name}'"))
}

fn set_init(model: &mut Model, name: &str, v: &[f32]) {
    let t = model
        .graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap();
    tensor::overwrite_f32(t, v).unwrap();
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Gives every adapter a random, non-zero B (and a fresh A), as after some training.
fn randomize_adapters(model: &mut Model, adapters: &[lora::Adapter], rank: usize) {
    for (k, ad) in adapters.iter().enumerate() {
        let a = values(rank * ad.in_features, 100 + k as u64, 0.3);
        let b = values(ad.out_features * rank, 200 + k as u64, 0.3);
        set_init(model, &ad.a, &a);
        set_init(model, &ad.b, &b);
    }
}

fn trained_values(model: &Model, adapters: &[lora::Adapter]) -> HashMap<String, Vec<f32>> {
    adapters
        .iter()
        .flat_map(|ad| [ad.a.clone(), ad.b.clone()])
        .map(|n| {
            let v = tensor::to_f32(init(model, &n)).unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn adapters_get_peft_names_shapes_and_initialisation() {
    let (mut model, _) = tiny_llama();
    let cfg = config(4, lora::DEFAULT_TARGETS);
    let adapters = lora::apply(&mut model, &cfg).unwrap();
    // 7 projections × 2 layers.
    assert_eq!(adapters.len(), 14);
    let q = &adapters[0];
    assert_eq!(q.weight, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q.a, "model.layers.0.self_attn.q_proj.lora_A.weight");
    assert_eq!(q.b, "model.layers.0.self_attn.q_proj.lora_B.weight");
    assert_eq!(q.layout, Layout::OutIn);
    let k = adapters
        .iter()
        .find(|a| a.module == "model.layers.1.self_attn.k_proj")
        .unwrap();
    // k_proj.weight is [24, 48] = [out, in].
    assert_eq!((k.in_features, k.out_features), (48, 24));
    assert_eq!(init(&model, &k.a).dims, vec![4, 48]);
    assert_eq!(init(&model, &k.b).dims, vec![24, 4]);
    let down = adapters
        .iter()
        .find(|a| a.module.ends_with("layers.0.mlp.down_proj"))
        .unwrap();
    assert_eq!((down.in_features, down.out_features), (128, 48));
    // A ~ U(−1/√in, 1/√in) (PEFT's kaiming_uniform(a=√5)), not all equal; B = 0.
    let a = tensor::to_f32(init(&model, &k.a)).unwrap();
    let bound = 1.0 / 48f32.sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound), "A outside ±{bound}");
    assert!(a.iter().any(|v| v.abs() > bound / 2.0) && a.iter().any(|v| *v != a[0]));
    assert!(tensor::to_f32(init(&model, &k.b))
        .unwrap()
        .iter()
        .all(|v| *v == 0.0));
    // The same seed gives the same A.
    let (mut again, _) = tiny_llama();
    lora::apply(&mut again, &cfg).unwrap();
    assert_eq!(tensor::to_f32(init(&again, &k.a)).unwrap(), a);
    // Only the adapter tensors match the LoRA run's trainable pattern.
    let selected = koala_graph::trainable::select(
        &model,
        &TrainableSpec {
            include: Some(lora::ADAPTER_PATTERN.into()),
            ..TrainableSpec::default()
        },
    )
    .unwrap();
    assert_eq!(selected.len(), 28);
    assert!(
        selected.iter().all(|n| n.contains(".lora_")),
        "{selected:?}"
    );
}

#[test]
fn with_b_zero_the_adapted_model_computes_the_base_logits_exactly() {
    let (base, case) = tiny_llama();
    let mut adapted = base.clone();
    lora::apply(&mut adapted, &config(4, lora::DEFAULT_TARGETS)).unwrap();
    let (l0, l1) = (logits(&base, &case), logits(&adapted, &case));
    // Bit for bit: each projection adds (x·Aᵀ·0)·s = 0 to the unchanged MatMul's output.
    assert_eq!(l0, l1);
}

#[test]
fn merged_weights_reproduce_the_adapted_model() {
    let (base, case) = tiny_llama();
    let cfg = config(4, lora::DEFAULT_TARGETS);
    let mut adapted = base.clone();
    let adapters = lora::apply(&mut adapted, &cfg).unwrap();
    randomize_adapters(&mut adapted, &adapters, cfg.rank);
    let trained = trained_values(&adapted, &adapters);
    let by_name: HashMap<&str, &[f32]> = trained
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let merged = lora::merged_weights(&base, &adapters, cfg.scaling(), &by_name).unwrap();
    // By hand: W' = W + s·B·A for one weight, element [o, i] = [3, 5].
    let ad = &adapters[2];
    let (a, b) = (&trained[&ad.a], &trained[&ad.b]);
    let w = tensor::to_f32(init(&base, &ad.weight)).unwrap();
    let (o, i, n_in) = (3, 5, ad.in_features);
    let want = w[o * n_in + i]
        + cfg.scaling() * (0..4).map(|k| b[o * 4 + k] * a[k * n_in + i]).sum::<f32>();
    let got = merged.iter().find(|m| m.0 == ad.weight).unwrap().1[o * n_in + i];
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    let merged_model = koala_graph::export::with_weights(
        &base,
        merged.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )
    .unwrap();
    let (la, lm) = (logits(&adapted, &case), logits(&merged_model, &case));
    let scale = la.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // Two f32 evaluations of the same product, (W + sBA)x vs Wx + s(xAᵀ)Bᵀ: round-off of
    // sums of ~128 terms, a few 1e-7 of the logits' size (≤ ~5 here).
    let d = max_abs_diff(&la, &lm);
    assert!(
        d <= 1e-5 * scale.max(1.0),
        "merged vs adapted max |Δ| {d} (logits up to {scale})"
    );
    // The update is not a no-op: the merged model differs from the base.
    assert!(max_abs_diff(&lm, &logits(&base, &case)) > 1e-2);
}

/// The training graph of the adapted tiny Llama with only the adapters trainable.
fn adapter_step(model: &Model, case: &Case) -> TrainStep {
    let spec = TrainingSpec {
        input_shapes: case
            .inputs
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
        loss: LossSpec::CausalLm {
            ignore_index: IGNORE_INDEX,
            attention_mask: None,
        },
        trainable: TrainableSpec {
            include: Some(lora::ADAPTER_PATTERN.into()),
            ..TrainableSpec::default()
        },
        probe_threads: 1,
        ..TrainingSpec::default()
    };
    let graph = training::build(model, &spec).unwrap();
    let mut step = TrainStep::new(graph, Some(1)).unwrap();
    let (ids, _) = input_ids(case);
    step.set_batch(&[Batch::I64(&ids)], Batch::I64(&ids))
        .unwrap();
    step
}

#[test]
fn only_the_adapters_train_and_their_gradients_match_finite_differences() {
    let (base, case) = tiny_llama();
    let cfg = config(4, lora::DEFAULT_TARGETS);
    let mut model = base.clone();
    let adapters = lora::apply(&mut model, &cfg).unwrap();
    // B ≠ 0, else ∂L/∂A is exactly 0 and would test nothing.
    randomize_adapters(&mut model, &adapters, cfg.rank);
    let mut step = adapter_step(&model, &case);
    let names: Vec<String> = step
        .graph()
        .trainable
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names.len(), 28, "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")));
    step.run().unwrap();
    let loss0 = step.loss() as f64;
    let grads: Vec<Vec<f32>> = (0..names.len()).map(|k| step.grad(k).to_vec()).collect();
    // Central differences of the graph's f32 loss along a random unit direction per tensor.
    // Step h = 1e-2 on a unit vector moves each entry by ~1e-3: truncation O(h²·L''') is
    // ~1e-6, round-off of the f32 loss (~3, ε 6e-8 → ~2e-7 per evaluation, summed over 30
    // tokens) divided by 2h is ~1e-5. Each directional derivative must match g·d to 2e-4
    // absolute + 1e-2 relative: far below the size of a wrong gradient (|g| ~ 1e-2 – 1).
    let h = 1e-2f64;
    let (mut checked, mut worst) = (0, 0.0f64);
    for (k, g) in grads.iter().enumerate() {
        let mut d: Vec<f64> = values(g.len(), 900 + k as u64, 1.0)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        d.iter_mut().for_each(|v| *v /= norm);
        let w0 = step.weight(k).to_vec();
        let mut at = |sign: f64| {
            let w = step.weight_mut(k);
            for ((w, w0), d) in w.iter_mut().zip(&w0).zip(&d) {
                *w = (*w0 as f64 + sign * h * d) as f32;
            }
            step.run().unwrap();
            step.loss() as f64
        };
        let (lp, lm) = (at(1.0), at(-1.0));
        step.weight_mut(k).copy_from_slice(&w0);
        let fd = (lp - lm) / (2.0 * h);
        let analytic: f64 = g.iter().zip(&d).map(|(&g, d)| g as f64 * d).sum();
        let gnorm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!(
            gnorm > 1e-4,
            "{}: gradient norm {gnorm} too small to test",
            names[k]
        );
        worst = worst.max((fd - analytic).abs() / (2e-4 + 1e-2 * analytic.abs()));
        assert!(
            (fd - analytic).abs() <= 2e-4 + 1e-2 * analytic.abs(),
            "{}: finite difference {fd:.6e} vs gradient·d {analytic:.6e}",
            names[k]
        );
        checked += 1;
    }
    assert_eq!(checked, 28);
    println!("finite differences: worst |fd − g·d| / tolerance {worst:.3}");
    // The base weights are initializers of the training graph, not inputs: they cannot change.
    step.run().unwrap();
    assert_eq!(step.loss() as f64, loss0);
}

#[test]
fn with_b_zero_the_gradient_of_b_is_pytorchs_gradient_of_w_times_a() {
    let (base, case) = tiny_llama();
    let cfg = config(4, lora::DEFAULT_TARGETS);
    let mut model = base.clone();
    let adapters = lora::apply(&mut model, &cfg).unwrap();
    let mut step = adapter_step(&model, &case);
    step.run().unwrap();
    // The loss is the base model's: PyTorch's reference loss (tolerance as gradcheck's).
    assert!((step.loss() as f64 - case.loss).abs() <= 1e-4);
    let s = cfg.scaling() as f64;
    for ad in &adapters {
        let g_w = &case
            .grads
            .iter()
            .find(|g| g.name == ad.weight)
            .unwrap()
            .values;
        let a = tensor::to_f32(init(&model, &ad.a)).unwrap();
        let (n_in, n_out, r) = (ad.in_features, ad.out_features, cfg.rank);
        // ∂L/∂B[o, k] = s·Σ_i G_W[o, i]·A[k, i]   (W is [out, in]).
        let want: Vec<f64> = (0..n_out * r)
            .map(|j| {
                let (o, k) = (j / r, j % r);
                s * (0..n_in)
                    .map(|i| g_w[o * n_in + i] as f64 * a[k * n_in + i] as f64)
                    .sum::<f64>()
            })
            .collect();
        let kb = step
            .graph()
            .trainable
            .iter()
            .position(|t| t.name == ad.b)
            .unwrap();
        let got = step.grad(kb);
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, w)| (g as f64 - w).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        // The reference case's own rule for gradients of this f32 graph: rel L2 ≤ 1e-3.
        assert!(err <= 1e-3 * norm, "{}: rel L2 {:.2e}", ad.b, err / norm);
        // ∂L/∂A = s·Bᵀ·G_W = 0 exactly when B = 0.
        let ka = step
            .graph()
            .trainable
            .iter()
            .position(|t| t.name == ad.a)
            .unwrap();
        assert!(step.grad(ka).iter().all(|&g| g == 0.0), "{}", ad.a);
    }
}

#[test]
fn targets_that_select_nothing_or_the_wrong_weights_are_named() {
    let (model, _) = tiny_llama();
    let err = |targets: &str, rank: usize| {
        let mut m = model.clone();
        format!(
            "{:#}",
            lora::apply(&mut m, &config(rank, targets)).unwrap_err()
        )
    };
    let e = err("attn\\.qkv", 4);
    assert!(
        e.contains("--lora-targets 'attn\\.qkv' matches none"),
        "{e}"
    );
    // The candidates are listed, so the user can write a regex that matches.
    assert!(
        e.contains("model.layers.1.mlp.down_proj.weight") && e.contains("q_proj"),
        "{e}"
    );
    let e = err("q_proj(", 4);
    assert!(e.contains("invalid --lora-targets regex 'q_proj('"), "{e}");
    // The tied embedding is read by Gather as well as by the head's MatMul.
    let e = err("embed_tokens", 4);
    assert!(
        e.contains("'model.embed_tokens.weight'") && e.contains("Gather"),
        "{e}"
    );
    assert!(e.contains("narrow --lora-targets"), "{e}");
    let e = err("q_proj", 0);
    assert!(e.contains("--lora-rank must be at least 1"), "{e}");
    // A model that has adapters already (whatever the targets).
    let mut twice = model.clone();
    lora::apply(&mut twice, &config(2, "q_proj")).unwrap();
    for targets in ["q_proj", "k_proj"] {
        let e = format!(
            "{:#}",
            lora::apply(&mut twice, &config(2, targets)).unwrap_err()
        );
        assert!(
            e.contains("already holds LoRA adapter weights (e.g. 'model.layers.0.self_attn.q_proj.lora_A.weight')"),
            "{e}"
        );
    }
    // A value (not a weight) already named like an adapter.
    let mut clash = model.clone();
    clash.graph_mut().node[0].output[0] = "model.layers.0.self_attn.q_proj.lora_B.weight".into();
    let e = format!(
        "{:#}",
        lora::apply(&mut clash, &config(2, "q_proj")).unwrap_err()
    );
    assert!(
        e.contains("already has a value named 'model.layers.0.self_attn.q_proj.lora_B.weight'"),
        "{e}"
    );
}

fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto::default()),
        ..Default::default()
    }
}

/// `y = MatMul(Gemm(x, W1ᵀ·0.5 + b), W2)` with `W1 [4, 3]` (`transB=1`, `alpha=0.5`) and
/// `W2 [4, 5]` stored `[in, out]`, plus `z = Gemm(x, W3 [3, 2])` (`transB=0`) as a second
/// output.
fn gemm_and_matmul_model() -> Model {
    let w1 = tensor::from_f32("W1", &[4, 3], &values(12, 1, 1.0));
    let b1 = tensor::from_f32("b1", &[4], &values(4, 2, 1.0));
    let w2 = tensor::from_f32("W2", &[4, 5], &values(20, 3, 1.0));
    let w3 = tensor::from_f32("W3", &[3, 2], &values(6, 4, 1.0));
    let mut gemm = NodeProto {
        op_type: "Gemm".into(),
        name: "gemm".into(),
        input: vec!["x".into(), "W1".into(), "b1".into()],
        output: vec!["h".into()],
        ..Default::default()
    };
    gemm.attribute.push(attrs::a_int("transB", 1));
    gemm.attribute.push(attrs::a_float("alpha", 0.5));
    let matmul = NodeProto {
        op_type: "MatMul".into(),
        name: "matmul".into(),
        input: vec!["h".into(), "W2".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let gemm2 = NodeProto {
        op_type: "Gemm".into(),
        name: "gemm2".into(),
        input: vec!["x".into(), "W3".into()],
        output: vec!["z".into()],
        ..Default::default()
    };
    Model::from_proto(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "gemm_matmul".into(),
            node: vec![gemm, matmul, gemm2],
            initializer: vec![w1, b1, w2, w3],
            input: vec![training::value_info("x", DataType::Float, &[2, 3])],
            output: vec![value("y"), value("z")],
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

fn run_xyz(model: &Model) -> (Vec<f32>, Vec<f32>) {
    let x = values(6, 9, 1.0);
    let mut s = Session::from_bytes(&model.to_bytes(), &SessionOptions::default()).unwrap();
    let out = s.run(&[("x", TensorView::f32(&x, &[2, 3]))]).unwrap();
    (
        out[0].as_f32().unwrap().to_vec(),
        out[1].as_f32().unwrap().to_vec(),
    )
}

#[test]
fn gemm_and_in_out_matmul_weights_take_adapters_and_merge() {
    let base = gemm_and_matmul_model();
    // The 1-D bias is no candidate (and "W|b" matching it is not an error: PEFT adapts
    // modules, whose bias stays as it is).
    assert_eq!(lora::candidates(&base), vec!["W1", "W2", "W3"]);
    let cfg = config(2, "W|b");
    let mut adapted = base.clone();
    let adapters = lora::apply(&mut adapted, &cfg).unwrap();
    let shape = |a: &lora::Adapter| (a.layout, a.in_features, a.out_features);
    assert_eq!(shape(&adapters[0]), (Layout::OutIn, 3, 4));
    assert_eq!(shape(&adapters[1]), (Layout::InOut, 4, 5));
    assert_eq!(shape(&adapters[2]), (Layout::InOut, 3, 2));
    assert_eq!(adapters[1].a, "W2.lora_A.weight");
    assert_eq!(run_xyz(&adapted), run_xyz(&base), "B = 0 changes nothing");
    randomize_adapters(&mut adapted, &adapters, cfg.rank);
    let trained = trained_values(&adapted, &adapters);
    let by_name: HashMap<&str, &[f32]> = trained
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let merged = lora::merged_weights(&base, &adapters, cfg.scaling(), &by_name).unwrap();
    let merged = koala_graph::export::with_weights(
        &base,
        merged.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )
    .unwrap();
    let ((ya, za), (ym, zm)) = (run_xyz(&adapted), run_xyz(&merged));
    // Values of order 1–10 from sums of ≤ 5 products: f32 round-off ~1e-6.
    assert!(max_abs_diff(&ya, &ym) <= 1e-5, "{ya:?} vs {ym:?}");
    assert!(max_abs_diff(&za, &zm) <= 1e-5, "{za:?} vs {zm:?}");
    assert!(max_abs_diff(&ya, &run_xyz(&base).0) > 1e-2);
}
