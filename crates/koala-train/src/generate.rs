//! Text generation with an ONNX causal LM: greedy decoding or sampling
//! (temperature, top-k, top-p), with the model's KV cache when it has one.
//!
//! Sampling follows Hugging Face's `generate` logits processors, in their
//! order: temperature scaling, then top-k, then top-p (nucleus: the smallest
//! set of most likely tokens whose probability reaches `top_p`; the token
//! that crosses the threshold is kept), then a draw from the renormalised
//! distribution. Temperature 0 means greedy (arg-max; ties go to the lowest
//! id). Draws come from a ChaCha8 generator seeded by the user, so a seed
//! reproduces a completion exactly.
//!
//! Without a cache every new token re-runs the whole sequence (`[1, t]`):
//! quadratic, fine for small models and short completions. A model with
//! Optimum's `past_key_values.*` inputs is fed the prompt once with an
//! empty past, then one token at a time with its own `present.*` outputs as
//! the next past.

use anyhow::{bail, Context, Result};
use koala_graph::lm_signature::{self, LmSignature};
use koala_graph::Model;
use koala_runtime::{OwnedTensor, Session, SessionOptions, TensorView};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (None: all).
    pub top_k: Option<usize>,
    /// Keep the smallest most-likely set with probability ≥ `p` (None: all).
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Checks the settings (errors name the flag).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be ≥ 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if self.top_k == Some(0) {
            bail!("--top-k must be ≥ 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1], got {p}");
            }
        }
        Ok(())
    }
}

/// Picks the next token from one row of logits.
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler with its own seeded generator.
    pub fn new(cfg: Sampling) -> Result<Sampler> {
        cfg.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(Sampler { cfg, rng })
    }

    /// The next token id for `logits` (one vocabulary row).
    pub fn pick(&mut self, logits: &[f32]) -> usize {
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = self.distribution(logits);
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for &(id, p) in &probs {
            acc += p;
            if u < acc {
                return id;
            }
        }
        probs.last().map(|&(id, _)| id).unwrap_or(0)
    }

    /// The filtered, renormalised distribution `(id, p)`, most likely first.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(usize, f64)> {
        let t = self.cfg.temperature.max(f32::MIN_POSITIVE) as f64;
        let mut scored: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &z)| (i, z as f64 / t))
            .collect();
        // Stable sort: equal logits keep id order, like an arg-max.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.cfg.top_k {
            scored.truncate(k);
        }
        let max = scored.first().map(|s| s.1).unwrap_or(0.0);
        let mut probs: Vec<(usize, f64)> =
            scored.iter().map(|&(i, z)| (i, (z - max).exp())).collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        if let Some(top_p) = self.cfg.top_p {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p.1;
                    acc >= top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= total);
        }
        probs
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// The session feeds of an LM's inputs: the token ids and, when the model
/// has those inputs, the attention mask, the position ids and one tensor per
/// `past_key_values.*` input (in the signature's order).
pub fn lm_feeds<'a>(
    sig: &'a LmSignature,
    ids: TensorView<'a>,
    mask: TensorView<'a>,
    positions: TensorView<'a>,
    past: &[TensorView<'a>],
) -> Vec<(&'a str, TensorView<'a>)> {
    let mut feeds = vec![(sig.input_ids.as_str(), ids)];
    if let Some(m) = &sig.attention_mask {
        feeds.push((m.as_str(), mask));
    }
    if let Some(p) = &sig.position_ids {
        feeds.push((p.as_str(), positions));
    }
    feeds.extend(
        sig.past
            .iter()
            .zip(past)
            .map(|(p, v)| (p.name.as_str(), *v)),
    );
    feeds
}

/// An ONNX causal LM loaded for generation.
pub struct Generator {
    session: Session,
    sig: LmSignature,
    logits: String,
    /// For each past input, the output that holds its next value.
    present: Vec<String>,
    /// Only ids below this are sampled (the tokenizer's vocabulary, which
    /// can be smaller than the embedding: HF models pad it).
    vocab_limit: Option<usize>,
}

impl Generator {
    /// Loads `model` into an ONNX Runtime session.
    pub fn new(model: &Model, threads: Option<usize>) -> Result<Generator> {
        let sig = lm_signature::detect(model)?;
        let logits = model
            .graph()
            .output
            .iter()
            .map(|o| o.name.clone())
            .find(|n| n == "logits")
            .or_else(|| model.graph().output.first().map(|o| o.name.clone()))
            .context("the model has no outputs")?;
        let outputs: Vec<&str> = model
            .graph()
            .output
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        let present = sig
            .past
            .iter()
            .map(|p| {
                let want = p.name.replacen("past_key_values", "present", 1);
                outputs
                    .iter()
                    .find(|o| **o == want)
                    .map(|o| o.to_string())
                    .with_context(|| {
                        format!(
                            "the model has input '{}' but no output '{want}' with the next cache",
                            p.name
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let opts = SessionOptions {
            intra_threads: threads,
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&model.to_bytes(), &opts)
            .with_context(|| format!("ONNX Runtime could not load {}", model.display_name()))?;
        Ok(Generator {
            session,
            sig,
            logits,
            present,
            vocab_limit: None,
        })
    }

    /// Samples only ids below `n` (the tokenizer's vocabulary size), so every
    /// generated id can be decoded.
    pub fn with_vocab_limit(mut self, n: usize) -> Generator {
        self.vocab_limit = Some(n);
        self
    }

    /// Does the model carry a KV cache?
    pub fn uses_cache(&self) -> bool {
        !self.sig.past.is_empty()
    }

    /// Runs `ids` (one sequence) after `past` (the cache, if any) and returns
    /// the last position's logits and the next cache.
    fn forward(
        &mut self,
        ids: &[i64],
        start: usize,
        past: &[OwnedTensor],
    ) -> Result<(Vec<f32>, Vec<OwnedTensor>)> {
        let t = ids.len();
        let total = start + t;
        let id_shape = [1, t];
        let mask = vec![1i64; total];
        let mask_shape = [1, total];
        let positions: Vec<i64> = (start as i64..total as i64).collect();
        let empty: Vec<f32> = Vec::new();
        let past_shapes: Vec<[usize; 4]> = self
            .sig
            .past
            .iter()
            .enumerate()
            .map(|(k, p)| match past.get(k) {
                Some(x) => [x.shape[0], x.shape[1], x.shape[2], x.shape[3]],
                None => [1, p.heads, 0, p.head_dim],
            })
            .collect();
        let past_views: Vec<TensorView> = past_shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let data = past.get(k).and_then(|x| x.as_f32()).unwrap_or(&empty);
                TensorView::f32(data, s)
            })
            .collect();
        let feeds = lm_feeds(
            &self.sig,
            TensorView::i64(ids, &id_shape),
            TensorView::i64(&mask, &mask_shape),
            TensorView::i64(&positions, &id_shape),
            &past_views,
        );
        let mut out = self.session.run(&feeds)?;
        let li = out
            .iter()
            .position(|o| o.name == self.logits)
            .context("no logits output")?;
        let logits = out[li].as_f32().context("logits must be float32")?;
        let v = *out[li]
            .shape
            .last()
            .context("logits have no vocabulary axis")?;
        let keep = self.vocab_limit.map_or(v, |n| n.min(v));
        let last = logits[logits.len() - v..][..keep].to_vec();
        let mut next = Vec::with_capacity(self.present.len());
        for name in &self.present {
            let k = out
                .iter()
                .position(|o| &o.name == name)
                .context("missing present output")?;
            next.push(out.swap_remove(k));
        }
        Ok((last, next))
    }

    /// Generates up to `max_new_tokens` after `prompt`, stopping early at
    /// any id in `stop`. Returns the new ids only.
    pub fn generate(
        &mut self,
        prompt: &[i64],
        max_new_tokens: usize,
        stop: &[i64],
        sampling: &Sampling,
    ) -> Result<Vec<i64>> {
        if prompt.is_empty() {
            bail!("the prompt is empty: give at least one token (a BOS token, or some text)");
        }
        let mut sampler = Sampler::new(sampling.clone())?;
        let mut all = prompt.to_vec();
        let mut new = Vec::new();
        let mut past: Vec<OwnedTensor> = Vec::new();
        let mut fed = 0;
        while new.len() < max_new_tokens {
            let (logits, next_past) = if self.uses_cache() {
                self.forward(&all[fed..], fed, &past)?
            } else {
                self.forward(&all, 0, &[])?
            };
            fed = all.len();
            past = next_past;
            let id = sampler.pick(&logits) as i64;
            all.push(id);
            new.push(id);
            if stop.contains(&id) {
                break;
            }
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampler {
        Sampler::new(Sampling {
            temperature,
            top_k,
            top_p,
            seed: 7,
        })
        .unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(0.0, None, None);
        assert_eq!(s.pick(&[0.1, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_keep_the_documented_sets() {
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.15f32).ln(), (0.05f32).ln()];
        let ids = |d: Vec<(usize, f64)>| d.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(
            ids(sampler(1.0, Some(2), None).distribution(&logits)),
            vec![0, 1]
        );
        // 0.5 < 0.7, 0.5 + 0.3 ≥ 0.7: the crossing token is kept.
        let d = sampler(1.0, None, Some(0.7)).distribution(&logits);
        assert_eq!(ids(d.clone()), vec![0, 1]);
        // 1e-6: the logits are f32 logarithms, exact to ~1e-7 relative.
        assert!(
            (d[0].1 - 0.625).abs() < 1e-6 && (d[1].1 - 0.375).abs() < 1e-6,
            "{d:?}"
        );
        // Temperature 2 flattens: p ∝ sqrt(p).
        let d = sampler(2.0, None, None).distribution(&logits);
        let z: f64 = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.sqrt()).sum();
        assert!((d[0].1 - 0.5f64.sqrt() / z).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        // 20 000 draws: each frequency within 4 standard deviations
        // (sqrt(p(1-p)/n) ≤ 0.0036) of its probability.
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln()];
        let mut s = sampler(1.0, None, None);
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[s.pick(&logits)] += 1;
        }
        for (c, p) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let f = *c as f64 / n as f64;
            assert!(
                (f - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
                "{counts:?}"
            );
        }
        let draw = |seed| {
            let mut s = Sampler::new(Sampling {
                temperature: 1.0,
                seed,
                ..Sampling::default()
            })
            .unwrap();
            (0..32).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let bad = |s: Sampling| format!("{:#}", s.validate().unwrap_err());
        assert!(bad(Sampling {
            temperature: -1.0,
            ..Sampling::default()
        })
        .contains("--temperature"));
        assert!(bad(Sampling {
            top_k: Some(0),
            ..Sampling::default()
        })
        .contains("--top-k"));
        assert!(bad(Sampling {
            top_p: Some(1.5),
            ..Sampling::default()
        })
        .contains("--top-p"));
    }
}
