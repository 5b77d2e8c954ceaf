//! Generation against the PyTorch reference of `tests/fixtures/lm`
//! (`tiny_llama_optimum.json`, made by `tests/fixtures/reference/gen/gen_llama.py`):
//! greedy decoding with the KV cache must produce the reference ids, and the
//! same model without a cache (the plain `input_ids → logits` export of the
//! same weights) must produce the same ids. The reference's smallest top-1 /
//! top-2 margin is 0.26, far above f32 error (1e-6), so the ids are exact.

use koala_graph::Model;
use koala_train::generate::{Generator, Sampling};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> (Vec<i64>, Vec<i64>) {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/lm/tiny_llama_optimum.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let g = &j["cases"]["greedy"];
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    (ids(&g["prompt"]), ids(&g["generated"]))
}

#[test]
fn greedy_decoding_with_the_kv_cache_reproduces_pytorch() {
    let (prompt, want) = reference();
    let model = Model::load(&root().join("tests/fixtures/lm/tiny_llama_optimum.onnx")).unwrap();
    let mut g = Generator::new(&model, Some(1)).unwrap();
    assert!(g.uses_cache());
    let got = g
        .generate(&prompt, want.len(), &[], &Sampling::default())
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn decoding_without_a_cache_gives_the_same_ids() {
    let (prompt, want) = reference();
    let model =
        Model::load(&root().join("tests/fixtures/reference/tiny_llama/model.onnx")).unwrap();
    let mut g = Generator::new(&model, Some(1)).unwrap();
    assert!(!g.uses_cache());
    let got = g
        .generate(&prompt, want.len(), &[], &Sampling::default())
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn generation_stops_at_a_stop_id_and_sampling_is_seeded() {
    let (prompt, want) = reference();
    let model =
        Model::load(&root().join("tests/fixtures/reference/tiny_llama/model.onnx")).unwrap();
    let mut g = Generator::new(&model, Some(1)).unwrap();
    let got = g
        .generate(&prompt, 10, &[want[0]], &Sampling::default())
        .unwrap();
    assert_eq!(got, vec![want[0]], "stops right after the stop id");
    let s = |seed| Sampling {
        temperature: 1.5,
        seed,
        ..Sampling::default()
    };
    let a = g.generate(&prompt, 8, &[], &s(3)).unwrap();
    let b = g.generate(&prompt, 8, &[], &s(3)).unwrap();
    assert_eq!(a, b, "the same seed gives the same completion");
    let e = g.generate(&[], 4, &[], &Sampling::default()).unwrap_err();
    assert!(format!("{e:#}").contains("prompt is empty"), "{e:#}");
}

#[test]
fn ids_beyond_the_tokenizer_vocabulary_are_never_sampled() {
    // HF models often pad the embedding beyond the tokenizer; a sampled id
    // the tokenizer cannot decode would end generation with an error.
    let (prompt, _) = reference();
    let model =
        Model::load(&root().join("tests/fixtures/reference/tiny_llama/model.onnx")).unwrap();
    let mut g = Generator::new(&model, Some(1))
        .unwrap()
        .with_vocab_limit(50);
    let s = Sampling {
        temperature: 2.0,
        seed: 5,
        ..Sampling::default()
    };
    let ids = g.generate(&prompt, 40, &[], &s).unwrap();
    assert!(ids.iter().all(|&i| i < 50), "{ids:?}");
}
