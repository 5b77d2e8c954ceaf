//! Import of small checkpoints written by the tests themselves: the repo's
//! tiny_llama fixture weights as an HF folder and as a GGUF file (Q/K rows
//! permuted as llama.cpp writes them), checked against the fixture's
//! PyTorch logits; every dequantiser koala needs on synthetic blocks; the
//! external-data form; the output-folder rules.

mod common;

use candle_core::quantized::GgmlDType;
use common::*;
use koala_graph::model::Model;
use koala_import::{import, ImportOptions, LlamaConfig, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// The fixture's logits are a float64 PyTorch forward; its own ONNX export
/// is within 1.1e-6 of them in ORT (case.json `ort_check`). The imported
/// graph computes inv_freq in f64 (PyTorch: f32) and fills blocked scores
/// with f32::MIN (PyTorch: -inf), both below 1e-6 in effect; 1e-5 leaves
/// room for ORT's kernel choices.
const TINY_LOGITS_TOL: f32 = 1e-5;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tiny_reference_logits() -> (Vec<i64>, Vec<f32>) {
    let ids = read_i64(&fixture("tiny_llama/inputs/input_ids.i64"));
    let logits = read_f32(&fixture("tiny_llama/outputs/logits.f32"));
    (ids, logits)
}

fn assert_matches_tiny_reference(model: &Path) {
    let (ids, want) = tiny_reference_logits();
    let got = run_logits(model, &ids, 2, 16);
    let d = max_abs_diff(&got, &want);
    println!("{}: max |Δ logits| = {d:.3e}", model.display());
    assert!(
        d <= TINY_LOGITS_TOL,
        "max |Δ logits| {d:.3e} > {TINY_LOGITS_TOL:e}"
    );
}

#[test]
fn hf_folder_of_tiny_llama_matches_the_pytorch_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    write_hf_folder(&src, &tiny_llama_config(), &tiny_llama_weights());
    let out = tmp.path().join("out");
    let report = import(&src, &out, &ImportOptions::default()).unwrap();
    println!("{}", report.summary(&src));
    assert_eq!(
        report.parameters, 56352,
        "tiny_llama's trainable parameters"
    );
    assert_matches_tiny_reference(&out.join("model.onnx"));
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    assert!(!out.join("model.onnx.data").exists());
}

#[test]
fn gguf_of_tiny_llama_unpermutes_qk_and_matches_the_pytorch_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tiny_llama_config();
    let file = tmp.path().join("tiny.gguf");
    let mut md = model_metadata(&c);
    md.extend(tokenizer_metadata(c.vocab_size));
    write_gguf(&file, &c, &tiny_llama_weights(), &md, |_| GgmlDType::F32);
    let out = tmp.path().join("out");
    let report = import(&file, &out, &ImportOptions::default()).unwrap();
    assert!(report.config.tie_word_embeddings, "no output.weight = tied");
    assert_eq!(report.storage_types.get("F32"), Some(&20));
    assert_matches_tiny_reference(&out.join("model.onnx"));
}

#[test]
fn weights_over_the_threshold_go_to_external_data_and_reload_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    write_hf_folder(&src, &tiny_llama_config(), &tiny_llama_weights());
    let inline = tmp.path().join("inline");
    import(&src, &inline, &ImportOptions::default()).unwrap();
    let external = tmp.path().join("external");
    let opts = ImportOptions {
        external_data_threshold: 1,
        ..Default::default()
    };
    import(&src, &external, &opts).unwrap();
    let data = external.join("model.onnx.data");
    assert!(data.is_file(), "model.onnx.data written");
    let onnx_len = std::fs::metadata(external.join("model.onnx"))
        .unwrap()
        .len();
    assert!(
        onnx_len < 100_000,
        "weights left model.onnx ({onnx_len} bytes)"
    );
    // koala's loader resolves it too, to the same weights.
    let a = Model::load(&inline.join("model.onnx")).unwrap();
    let b = Model::load(&external.join("model.onnx")).unwrap();
    assert_eq!(a.graph().initializer, b.graph().initializer);
    let (ids, _) = tiny_reference_logits();
    let la = run_logits(&inline.join("model.onnx"), &ids, 2, 16);
    let lb = run_logits(&external.join("model.onnx"), &ids, 2, 16);
    assert_eq!(la, lb, "ORT gives the same logits from external data");
}

#[test]
fn output_folder_is_never_overwritten_without_force_and_never_holds_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    write_hf_folder(&src, &tiny_llama_config(), &tiny_llama_weights());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let e = import(&src, &out, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not empty") && e.contains("--force"), "{e}");
    assert!(!out.join("model.onnx").exists());
    let force = ImportOptions {
        force: true,
        ..Default::default()
    };
    import(&src, &out, &force).unwrap();
    assert!(out.join("model.onnx").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    let e = import(&src, &src, &force).unwrap_err().to_string();
    assert!(e.contains("holds the input"), "{e}");
    assert!(!src.join("model.onnx").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("koala-import"))
        .collect();
    assert!(leftovers.is_empty(), "staging folders removed");
}

/// A one-layer model whose every matrix has rows of 256 (the K-quant block),
/// 4 query / 2 kv heads of 64, vocab 16, uniform weights in [-1, 1].
fn quant_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 16,
        hidden_size: 256,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        intermediate_size: 256,
        ..tiny_llama_config()
    }
}

fn quant_weights(c: &LlamaConfig) -> BTreeMap<String, Tensor> {
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    koala_import::onnx_llama::expected_tensors(c)
        .into_iter()
        .map(|(name, shape)| {
            let data = (0..shape.iter().product::<usize>())
                .map(|_| next())
                .collect();
            (name.clone(), Tensor { name, shape, data })
        })
        .collect()
}

/// Which type stores which tensor in the synthetic file, and the largest
/// |error| that type's block format allows for weights in [-1, 1]: half a
/// quantisation step (amax/15 for 4-bit, /31 5-bit, /63 6-bit, /127 8-bit)
/// plus the error of the 6-bit block scales of the K types; F16/BF16 by
/// their mantissas (11 and 8 bits). Q4_0 is the exception: its levels are
/// -8..7 times `d = -amax/8`, so the end opposite the largest value is
/// clamped by up to a whole step (amax/8 = 0.125).
const TYPES: &[(&str, GgmlDType, f32)] = &[
    ("model.embed_tokens.weight", GgmlDType::F16, 5e-4),
    ("self_attn.q_proj.weight", GgmlDType::Q4K, 0.15),
    ("self_attn.k_proj.weight", GgmlDType::Q5K, 0.08),
    ("self_attn.v_proj.weight", GgmlDType::Q4_0, 0.126),
    ("self_attn.o_proj.weight", GgmlDType::Q8_0, 0.0085),
    ("mlp.gate_proj.weight", GgmlDType::Q6K, 0.04),
    ("mlp.up_proj.weight", GgmlDType::BF16, 4e-3),
    ("mlp.down_proj.weight", GgmlDType::Q4_1, 0.0715),
];

fn type_of(name: &str) -> GgmlDType {
    TYPES
        .iter()
        .find(|(suffix, _, _)| name.ends_with(suffix))
        .map(|(_, t, _)| *t)
        .unwrap_or(GgmlDType::F32)
}

/// Hand decoders of the two simplest block formats (ggml `dequantize_row_q4_0`
/// / `_q8_0`): a 2-byte f16 scale `d`, then 16 nibble bytes (value j is
/// `(lo(qs[j]) - 8) * d`, value j+16 `(hi(qs[j]) - 8) * d`) or 32 i8 (`q * d`).
fn hand_decode(t: GgmlDType, raw: &[u8]) -> Vec<f32> {
    let d = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match t {
        GgmlDType::Q4_0 => raw
            .chunks_exact(18)
            .flat_map(|b| {
                let scale = d(b);
                let qs = &b[2..];
                let lo = qs
                    .iter()
                    .map(move |q| ((q & 0xF) as i32 - 8) as f32 * scale);
                let hi = qs.iter().map(move |q| ((q >> 4) as i32 - 8) as f32 * scale);
                lo.chain(hi).collect::<Vec<f32>>()
            })
            .collect(),
        GgmlDType::Q8_0 => raw
            .chunks_exact(34)
            .flat_map(|b| {
                let scale = d(b);
                b[2..].iter().map(move |&q| (q as i8) as f32 * scale)
            })
            .collect(),
        other => panic!("no hand decoder for {other:?}"),
    }
}

#[test]
fn every_supported_quantisation_dequantises_within_its_error_and_q_k_rows_come_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let c = quant_config();
    let weights = quant_weights(&c);
    let file = tmp.path().join("quant.gguf");
    let mut md = model_metadata(&c);
    md.extend(tokenizer_metadata(c.vocab_size));
    let raw = write_gguf(&file, &c, &weights, &md, type_of);
    let ck = koala_import::read_checkpoint(&file).unwrap();
    let mut failures = Vec::new();
    for (suffix, ty, tol) in TYPES {
        let (name, original) = weights.iter().find(|(n, _)| n.ends_with(suffix)).unwrap();
        let got = &ck.tensors[name].data;
        let err = max_abs_diff(got, &original.data);
        println!("{name:40} {ty:?}: max |dequantised - original| = {err:.2e} (allowed {tol:.1e})");
        if err > *tol {
            failures.push(format!("{name} ({ty:?}): {err:.3e} > {tol:.1e}"));
        }
        if matches!(ty, GgmlDType::Q4_0 | GgmlDType::Q8_0) {
            assert_eq!(
                got,
                &hand_decode(*ty, &raw[name]),
                "{name}: {ty:?} not bit-exact to the hand decode"
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let counts = &ck.storage_types;
    for t in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F32",
    ] {
        assert!(counts.contains_key(t), "{t} counted in {counts:?}");
    }
}

/// The KV cache `koala generate` uses: the prompt's `present.*` fed back as
/// `past_key_values.*` give the next token the same logits as running the
/// whole sequence at once; a left-padded row stays finite and its real
/// tokens are unaffected by the padding.
#[test]
fn kv_cache_and_padding_give_the_logits_of_the_full_sequence() {
    use koala_runtime::{Session, SessionOptions};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    let c = tiny_llama_config();
    write_hf_folder(&src, &c, &tiny_llama_weights());
    let out = tmp.path().join("out");
    import(&src, &out, &ImportOptions::default()).unwrap();
    koala_runtime::init().unwrap();
    let mut s = Session::from_file(&out.join("model.onnx"), &SessionOptions::default()).unwrap();
    let (ids, _) = tiny_reference_logits();
    let ids = &ids[..16];
    let v = c.vocab_size;
    let empty: Vec<(String, Vec<f32>, [usize; 4])> = (0..c.num_hidden_layers)
        .flat_map(|i| ["key", "value"].map(|k| format!("past_key_values.{i}.{k}")))
        .map(|n| (n, Vec::new(), [1, c.num_key_value_heads, 0, c.head_dim]))
        .collect();
    let full = run_with_past(&mut s, ids, &[1; 16], &empty);
    let full_logits = full[0].as_f32().unwrap();
    // Prompt of 12, then the last 4 one at a time through the cache.
    let mut past = empty.clone();
    let mut fed = 0;
    for step in [12, 1, 1, 1, 1] {
        let chunk = &ids[fed..fed + step];
        let outs = run_with_past(&mut s, chunk, &vec![1; fed + step], &past);
        let logits = outs[0].as_f32().unwrap();
        let want = &full_logits[fed * v..(fed + step) * v];
        let d = max_abs_diff(logits, want);
        assert!(
            d <= 1e-5,
            "positions {fed}..{}: max |Δ| {d:.2e} vs the full run",
            fed + step
        );
        past = past
            .iter()
            .zip(&outs[1..])
            .map(|((name, _, sh), o)| {
                assert_eq!(o.shape, [1, sh[1], fed + step, sh[3]], "{} shape", o.name);
                (
                    name.clone(),
                    o.as_f32().unwrap().to_vec(),
                    [1, sh[1], fed + step, sh[3]],
                )
            })
            .collect();
        fed += step;
    }
    // Left padding: 3 pad tokens masked out, then the first 13 tokens at
    // positions 0..13 must match the unpadded run.
    let mut padded = vec![0i64; 3];
    padded.extend_from_slice(&ids[..13]);
    let mask: Vec<i64> = (0..16).map(|i| (i >= 3) as i64).collect();
    let pos: Vec<i64> = (0..16).map(|i| (i as i64 - 3).max(0)).collect();
    let shape = [1usize, 16];
    let mut inputs = vec![
        ("input_ids", koala_runtime::TensorView::i64(&padded, &shape)),
        (
            "attention_mask",
            koala_runtime::TensorView::i64(&mask, &shape),
        ),
        ("position_ids", koala_runtime::TensorView::i64(&pos, &shape)),
    ];
    for (n, d, sh) in &empty {
        inputs.push((n.as_str(), koala_runtime::TensorView::f32(d, sh)));
    }
    let outs = s.run(&inputs).unwrap();
    let logits = outs[0].as_f32().unwrap();
    assert!(
        logits.iter().all(|x| x.is_finite()),
        "padded rows stay finite"
    );
    let d = max_abs_diff(&logits[3 * v..], &full_logits[..13 * v]);
    assert!(
        d <= 1e-5,
        "left padding changes real tokens' logits by {d:.2e}"
    );
}

/// A separate head (`lm_head.weight`) and Qwen2's Q/K/V biases are read
/// and used: with them zero the logits equal the tied, bias-free model's;
/// a nonzero q bias changes them.
#[test]
fn untied_head_and_qwen2_biases_are_wired_in() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_llama_weights();
    let mut c = tiny_llama_config();
    c.architecture = koala_import::Architecture::Qwen2;
    c.attention_bias = true;
    c.tie_word_embeddings = false;
    let mut w = base.clone();
    let embed = base["model.embed_tokens.weight"].clone();
    w.insert(
        "lm_head.weight".into(),
        Tensor {
            name: "lm_head.weight".into(),
            ..embed
        },
    );
    for i in 0..c.num_hidden_layers {
        for (p, n) in [("q", 48), ("k", 24), ("v", 24)] {
            let name = format!("model.layers.{i}.self_attn.{p}_proj.bias");
            let t = Tensor {
                name: name.clone(),
                shape: vec![n],
                data: vec![0.0; n],
            };
            w.insert(name, t);
        }
    }
    let src = tmp.path().join("qwen2");
    write_hf_folder(&src, &c, &w);
    let out = tmp.path().join("out");
    let report = import(&src, &out, &ImportOptions::default()).unwrap();
    assert_eq!(report.parameters, 56352 + 113 * 48 + 2 * (48 + 24 + 24));
    assert_matches_tiny_reference(&out.join("model.onnx"));
    w.get_mut("model.layers.0.self_attn.q_proj.bias")
        .unwrap()
        .data[0] = 3.0;
    let src2 = tmp.path().join("qwen2_bias");
    write_hf_folder(&src2, &c, &w);
    let out2 = tmp.path().join("out2");
    import(&src2, &out2, &ImportOptions::default()).unwrap();
    let (ids, want) = tiny_reference_logits();
    let got = run_logits(&out2.join("model.onnx"), &ids, 2, 16);
    assert!(max_abs_diff(&got, &want) > 1e-3, "the q bias has no effect");
}

/// Qwen2 GGUF files keep HF's Q/K row order (llama.cpp runs Qwen2 with NEOX
/// RoPE): imported without un-permuting, with their biases, the model gives
/// the reference logits (zero biases, so the same forward as tiny_llama).
#[test]
fn qwen2_gguf_is_not_unpermuted_and_carries_its_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_llama_config();
    c.architecture = koala_import::Architecture::Qwen2;
    c.attention_bias = true;
    let mut w = tiny_llama_weights();
    for i in 0..c.num_hidden_layers {
        for (p, n) in [("q", 48), ("k", 24), ("v", 24)] {
            let name = format!("model.layers.{i}.self_attn.{p}_proj.bias");
            let t = Tensor {
                name: name.clone(),
                shape: vec![n],
                data: vec![0.0; n],
            };
            w.insert(name, t);
        }
    }
    let file = tmp.path().join("qwen2.gguf");
    let mut md = model_metadata(&c);
    md.extend(tokenizer_metadata(c.vocab_size));
    write_gguf(&file, &c, &w, &md, |_| GgmlDType::F32);
    let out = tmp.path().join("out");
    let report = import(&file, &out, &ImportOptions::default()).unwrap();
    assert_eq!(
        report.config.architecture,
        koala_import::Architecture::Qwen2
    );
    assert!(report.config.attention_bias);
    assert_matches_tiny_reference(&out.join("model.onnx"));
}

/// Sharded folders: `model.safetensors.index.json` maps each tensor to its
/// shard; every shard is read.
#[test]
fn sharded_hf_folder_is_read_through_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    let c = tiny_llama_config();
    let all = tiny_llama_weights();
    write_hf_folder(&src, &c, &all);
    std::fs::remove_file(src.join("model.safetensors")).unwrap();
    let (layer1, rest): (BTreeMap<_, _>, BTreeMap<_, _>) = all
        .into_iter()
        .partition(|(n, _)| n.starts_with("model.layers.1."));
    let mut map = serde_json::Map::new();
    for (i, part) in [rest, layer1].iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let dir = tmp.path().join(format!("shard{i}"));
        write_hf_folder(&dir, &c, part);
        std::fs::rename(dir.join("model.safetensors"), src.join(&shard)).unwrap();
        for n in part.keys() {
            map.insert(n.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(src.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let out = tmp.path().join("out");
    import(&src, &out, &ImportOptions::default()).unwrap();
    assert_matches_tiny_reference(&out.join("model.onnx"));
}
