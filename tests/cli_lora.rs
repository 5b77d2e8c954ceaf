//! `koala finetune --lora-rank` end to end on the shipped tiny Llama-style LM
//! (`models/tiny_llama_shakespeare`, 4 layers, HF weight names): the run trains only the
//! adapters, exports the merged `model.onnx` and a PEFT-format `adapter/`, and `koala export`
//! rewrites both from the run's checkpoint. The adapter file is read here with a reader of the
//! safetensors layout written for this test (8-byte header length, JSON header, raw data), so
//! it checks the file format, not koala's writer against itself.

mod support;

use koala::graph::{tensor, Model};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use support::cli::{koala, number_after, ok, root, text};

fn model() -> PathBuf {
    root().join("models/tiny_llama_shakespeare/model.onnx")
}

fn play() -> PathBuf {
    root().join("data/shakespeare/midsummer_nights_dream_gut.txt")
}

/// A safetensors file's f32 tensors: name → (shape, values).
fn read_safetensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let shape: Vec<usize> = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let o: Vec<usize> = v["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let values = data[o[0]..o[1]]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k, (shape, values))
        })
        .collect()
}

fn initializers(path: &Path) -> HashMap<String, (Vec<i64>, Vec<f32>)> {
    let m = Model::load(path).unwrap();
    m.graph()
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| (t.name.clone(), (t.dims.clone(), tensor::to_f32(t).unwrap())))
        .collect()
}

const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

#[test]
fn a_lora_run_exports_the_merged_model_and_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let m = model();
    let out = ok(&[
        "finetune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        play().to_str().unwrap(),
        "--block-size",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--lora-rank",
        "4",
        "--sample-tokens",
        "0",
        "--threads",
        "1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("LoRA: rank 4, alpha 8"), "{out}");
    // 7 projections × 4 layers × (A, B), r·(in + out) parameters each.
    assert!(out.contains("27136 trainable parameters"), "{out}");
    // The merged file reproduces the training graph (base + adapters): f32 round-off of two
    // algebraically equal products, logits up to ~15 → ≤ 1e-4 absolute (as a full run).
    let diff = number_after(&out, "max |Δ| vs training graph");
    assert!(diff <= 1e-4, "export max |Δ| {diff}:\n{out}");

    // The run's state holds only the adapters: the base weights are not in it, so they cannot
    // have changed.
    let ckpt = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let state = read_safetensors(&ckpt.join("weights.safetensors"));
    assert_eq!(state.len(), 56);
    assert!(state
        .keys()
        .all(|k| k.contains(".lora_A.") || k.contains(".lora_B.")));

    // PEFT's adapter: names, shapes, config.
    let adapter = read_safetensors(&run_dir.join("adapter/adapter_model.safetensors"));
    assert_eq!(adapter.len(), 56);
    let config: Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    let mut targets: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );

    // Merging the adapter by hand, W + (α/r)·B·A, gives the exported weights; every other
    // weight (embedding, norms) is bit-identical to the original.
    let original = initializers(&m);
    let merged = initializers(&run_dir.join("model.onnx"));
    assert_eq!(
        merged.keys().collect::<std::collections::BTreeSet<_>>(),
        original.keys().collect(),
        "the merged file has the original's weights, no adapters"
    );
    let scaling = 8.0f32 / 4.0;
    let mut changed = 0;
    for layer in 0..4 {
        for p in PROJECTIONS {
            let module = format!("model.layers.{layer}.{p}");
            let (a_shape, a) = &adapter[&format!("base_model.model.{module}.lora_A.weight")];
            let (b_shape, b) = &adapter[&format!("base_model.model.{module}.lora_B.weight")];
            let (w_dims, w) = &original[&format!("{module}.weight")];
            let (n_out, n_in) = (w_dims[0] as usize, w_dims[1] as usize);
            assert_eq!(a_shape, &[4, n_in], "{module} A");
            assert_eq!(b_shape, &[n_out, 4], "{module} B");
            let w2 = &merged[&format!("{module}.weight")].1;
            for o in 0..n_out {
                for i in 0..n_in {
                    let d: f32 = (0..4).map(|k| b[o * 4 + k] * a[k * n_in + i]).sum();
                    let want = w[o * n_in + i] + scaling * d;
                    let got = w2[o * n_in + i];
                    // f32 sum of 4 products here vs f64 in koala: a few ulp.
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1e-2),
                        "{module}[{o},{i}]: {got} vs {want}"
                    );
                }
            }
            changed += usize::from(w2 != w);
        }
    }
    assert_eq!(changed, 28, "training moved every adapter's B off zero");
    for (name, (_, w)) in &original {
        if !name.contains("_proj.") {
            assert_eq!(&merged[name].1, w, "{name} must stay bit-identical");
        }
    }

    // `koala export` of the run writes the same merged file and adapter.
    let again = dir.path().join("again/model.onnx");
    ok(&[
        "export",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(run_dir.join("model.onnx")).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("again/adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(run_dir.join("adapter/adapter_model.safetensors")).unwrap()
    );
    // The tokenizer goes beside it, as with the run's own export (a new-user tryout found
    // `koala generate` on an exported file asking for --tokenizer).
    assert!(dir.path().join("again/tokenizer.json").exists());
    // A second export never replaces the first's file or adapter.
    let err = koala(&[
        "export",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    assert_eq!(err.status.code(), Some(1));
    assert!(
        text(&err.stderr).contains("already exists; koala export never overwrites"),
        "{}",
        text(&err.stderr)
    );
    let beside = dir.path().join("again/other.onnx");
    let err = koala(&[
        "export",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--output",
        beside.to_str().unwrap(),
    ]);
    assert_eq!(err.status.code(), Some(1));
    assert!(
        text(&err.stderr).contains("the PEFT adapter goes beside the exported file"),
        "{}",
        text(&err.stderr)
    );
    assert!(!beside.exists());
}

fn assert_fails(args: &[&str], needles: &[&str]) {
    let out = koala(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "koala {args:?}: stderr:\n{err}");
    for n in needles {
        assert!(
            err.contains(n),
            "koala {args:?}: stderr should name '{n}':\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_lora_options_are_named_with_a_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("run");
    let (m, d) = (model(), play());
    let base = [
        "finetune",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--run-dir",
        r.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    // A regex that matches nothing lists what it could match.
    assert_fails(
        &with(&["--lora-rank", "4", "--lora-targets", "qkv_proj"]),
        &[
            "--lora-targets 'qkv_proj' matches none",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
        ],
    );
    assert_fails(
        &with(&["--lora-rank", "4", "--lora-targets", "q_proj("]),
        &["invalid --lora-targets regex 'q_proj('"],
    );
    // The tied embedding is also read by Gather: not a weight LoRA adapts.
    assert_fails(
        &with(&["--lora-rank", "4", "--lora-targets", "embed_tokens"]),
        &[
            "'model.embed_tokens.weight'",
            "Gather",
            "narrow --lora-targets",
        ],
    );
    assert_fails(
        &with(&["--lora-rank", "4", "--train", "q_proj"]),
        &["--train 'q_proj' and --lora-rank", "drop --train"],
    );
    assert_fails(
        &with(&["--lora-alpha", "16"]),
        &["--lora-alpha needs --lora-rank"],
    );
    assert_fails(
        &with(&["--lora-rank", "0"]),
        &["--lora-rank must be at least 1"],
    );
    // A refused start leaves no run directory behind.
    assert!(!r.exists());
    // `koala check` takes the same flags and lists the adapters as the trainable tensors.
    let out = koala(&[
        "check",
        m.to_str().unwrap(),
        "--lora-rank",
        "2",
        "--lora-targets",
        r"layers\.0\.self_attn\.q_proj",
    ]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    assert!(s.contains("trainable: 2 tensors, 384 parameters"), "{s}");
    assert!(
        s.contains("model.layers.0.self_attn.q_proj.lora_A.weight (192)"),
        "{s}"
    );
}

#[test]
fn a_resumed_lora_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = (model(), play());
    let run = |name: &str| {
        let r = dir.path().join(name);
        ok(&[
            "finetune",
            "--model",
            m.to_str().unwrap(),
            "--data",
            d.to_str().unwrap(),
            "--block-size",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "4",
            "--eval-every",
            "2",
            "--lora-rank",
            "2",
            "--lora-targets",
            "q_proj|v_proj",
            "--sample-tokens",
            "0",
            "--threads",
            "1",
            "--run-dir",
            r.to_str().unwrap(),
        ]);
        r
    };
    let (whole, cut) = (run("whole"), run("cut"));
    // The run's config records the LoRA settings in effect (α: the default 2·r).
    let config = std::fs::read_to_string(cut.join("config.toml")).unwrap();
    assert!(
        config.contains("lora_rank = 2") && config.contains("lora_alpha = 4.0"),
        "{config}"
    );
    assert!(
        config.contains("lora_targets = \"q_proj|v_proj\""),
        "{config}"
    );
    // Lose the last checkpoint and the export, then resume from step 2: the adapters (A's
    // seeded start, both tensors' KOALA++ state) continue exactly.
    std::fs::remove_dir_all(cut.join("checkpoints/step-00000004")).unwrap();
    std::fs::remove_dir_all(cut.join("adapter")).unwrap();
    std::fs::remove_file(cut.join("model.onnx")).unwrap();
    ok(&["finetune", "--resume", cut.to_str().unwrap()]);
    let adapter = |r: &Path| std::fs::read(r.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&whole), adapter(&cut));
    assert_eq!(
        std::fs::read(whole.join("model.onnx")).unwrap(),
        std::fs::read(cut.join("model.onnx")).unwrap()
    );
}
