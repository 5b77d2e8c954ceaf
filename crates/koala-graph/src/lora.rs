//! LoRA: low-rank adapters around the weight matrices of a model's matrix products.
//!
//! Math (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; PEFT
//! `peft/tuners/lora/layer.py`, `LoraLayer.update_layer` and `Linear.get_delta_weight`): a
//! linear layer `y = x·Wᵀ` with `W [out, in]` (PyTorch's `nn.Linear` layout) becomes
//!
//! ```text
//! y = x·Wᵀ + s·((x·Aᵀ)·Bᵀ),   A [r, in],  B [out, r],  s = α / r
//! ```
//!
//! so the effective weight is `W + s·B·A`. Only `A` and `B` train; `W` stays frozen. `A` starts
//! as PEFT's `kaiming_uniform_(a=√5)` on `[r, in]`, which is U(−1/√in, 1/√in); `B` starts at
//! zero, so the adapted model computes exactly what the base model does until the first step.
//!
//! In an ONNX file such a layer is `MatMul(x, Transpose(W, perm=[1,0]))` (what
//! `torch.onnx.export` writes for `nn.Linear` without constant folding, and what `koala
//! import` writes), `MatMul(x, W)` with `W` stored `[in, out]`, or `Gemm(x, W)` with or
//! without `transB`. [`apply`] rewrites each use into standard ops:
//!
//! ```text
//! y_base = <the original MatMul/Gemm>              (renamed output)
//! d      = Mul(MatMul(MatMul(x, Transpose(A)), Transpose(B)), s)
//! y      = Add(y_base, d)                          (the original output name)
//! ```
//!
//! `A` and `B` keep the names PEFT gives them (`<module>.lora_A.weight`, `<module>.lora_B.weight`
//! with `<module>` = the weight's name without `.weight`), so writing a PEFT adapter is a
//! rename: `base_model.model.<module>.lora_A.weight`. The shapes are PEFT's whatever the stored
//! layout of `W`: an `[in, out]` weight gets the same `A [r, in]`, `B [out, r]`, and its merged
//! update is `(s·B·A)ᵀ` ([`merged_weights`]).

use crate::attrs;
use crate::model::{node_label, Model};
use crate::proto::{DataType, NodeProto, TensorProto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The default `--lora-targets`: the attention and MLP projections of a Llama-family model
/// (Hugging Face names), the set most LoRA recipes adapt (QLoRA adapts every linear layer).
pub const DEFAULT_TARGETS: &str = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj";

/// Matches the names of adapter tensors and nothing else a Hugging Face export names: the
/// trainable selection of a LoRA run.
pub const ADAPTER_PATTERN: &str = r"\.lora_[AB]\.weight$";

/// The LoRA settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r of the adapters.
    pub rank: usize,
    /// α: the update is scaled by α / r.
    pub alpha: f32,
    /// Regex over weight names: which weights get adapters.
    pub targets: String,
    /// Seed of A's random initialisation.
    pub seed: u64,
}

impl LoraConfig {
    /// s = α / r, the factor of the low-rank update (PEFT's `scaling` without rsLoRA).
    pub fn scaling(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// How a base weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// `[out, in]` (`nn.Linear`): read through `Transpose`, or by `Gemm` with `transB=1`.
    OutIn,
    /// `[in, out]`: the `B` operand of `MatMul`, or of `Gemm` with `transB=0`.
    InOut,
}

/// One adapted weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// The base weight's initializer name.
    pub weight: String,
    /// The module name (the weight's name without `.weight`), PEFT's key stem.
    pub module: String,
    /// Name of A `[r, in]`.
    pub a: String,
    /// Name of B `[out, r]`.
    pub b: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// How the base weight is stored.
    pub layout: Layout,
}

/// A node that reads a weight matrix as `x·W`: its index and how it reads it.
#[derive(Clone, Debug)]
struct Use {
    /// Index of the MatMul/Gemm node.
    node: usize,
    /// Gemm's `alpha` (1 for MatMul): the update is scaled by it too.
    alpha: f32,
    /// Gemm with `transA=1`: the data operand is read transposed.
    trans_a: bool,
}

/// A weight that can take an adapter, or why it cannot.
#[derive(Clone, Debug)]
struct Candidate {
    weight: String,
    dims: [usize; 2],
    layout: Layout,
    uses: Vec<Use>,
}

/// The module name of a weight: its name without a trailing `.weight`.
pub fn module_name(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

/// The names of the adapter tensors of `weight`: (A, B), PEFT's names.
pub fn adapter_names(weight: &str) -> (String, String) {
    let m = module_name(weight);
    (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"))
}

fn is_float32(t: &TensorProto) -> bool {
    matches!(DataType::try_from(t.data_type), Ok(DataType::Float))
}

/// Whether a Transpose node swaps the two axes of a matrix (`perm=[1,0]`, or no `perm`).
fn swaps_axes(n: &NodeProto) -> bool {
    attrs::ints(n, "perm").is_none_or(|p| p == [1, 0])
}

/// Every float32 matrix initializer and, for each, its uses as the weight of a matrix
/// product, or the first use that is not one (`Err`: the node label).
fn analyse(model: &Model) -> Vec<std::result::Result<Candidate, (String, String)>> {
    let g = model.graph();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut out = Vec::new();
    for t in g
        .initializer
        .iter()
        .filter(|t| is_float32(t) && t.dims.len() == 2)
    {
        let dims = [t.dims[0] as usize, t.dims[1] as usize];
        let Some(users) = consumers.get(t.name.as_str()) else {
            continue;
        };
        out.push(candidate(model, &consumers, &outputs, &t.name, dims, users));
    }
    out
}

/// How `weight` (`dims`) is read by the nodes `users`.
fn candidate(
    model: &Model,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &HashSet<&str>,
    weight: &str,
    dims: [usize; 2],
    users: &[usize],
) -> std::result::Result<Candidate, (String, String)> {
    let g = model.graph();
    let refuse = |i: usize, why: &str| {
        Err((
            weight.to_string(),
            format!("{} {why}", node_label(i, &g.node[i])),
        ))
    };
    let mut layouts = HashSet::new();
    let mut uses = Vec::new();
    for &i in users {
        let n = &g.node[i];
        let slot = n.input.iter().position(|x| x == weight);
        match (n.op_type.as_str(), slot) {
            ("MatMul", Some(1)) => {
                layouts.insert(Layout::InOut);
                uses.push(Use {
                    node: i,
                    alpha: 1.0,
                    trans_a: false,
                });
            }
            ("Gemm", Some(1)) => {
                let trans_b = attrs::int(n, "transB", 0) != 0;
                layouts.insert(if trans_b {
                    Layout::OutIn
                } else {
                    Layout::InOut
                });
                uses.push(Use {
                    node: i,
                    alpha: attrs::float(n, "alpha", 1.0),
                    trans_a: attrs::int(n, "transA", 0) != 0,
                });
            }
            ("Transpose", Some(0)) if swaps_axes(n) => {
                let t_out = n.output[0].as_str();
                if outputs.contains(t_out) {
                    return refuse(i, "makes a graph output of it");
                }
                for &j in consumers.get(t_out).map(Vec::as_slice).unwrap_or(&[]) {
                    let m = &g.node[j];
                    if m.op_type != "MatMul"
                        || m.input.get(1).map(String::as_str) != Some(t_out)
                        || m.input[0] == t_out
                    {
                        return refuse(
                            j,
                            "reads its transpose, and is not the weight operand of a MatMul",
                        );
                    }
                    uses.push(Use {
                        node: j,
                        alpha: 1.0,
                        trans_a: false,
                    });
                }
                layouts.insert(Layout::OutIn);
            }
            _ => return refuse(i, "reads it, and is not a MatMul/Gemm weight operand"),
        }
    }
    if layouts.len() != 1 || uses.is_empty() {
        return Err((
            weight.to_string(),
            "is read both as [out, in] and as [in, out]".into(),
        ));
    }
    Ok(Candidate {
        weight: weight.to_string(),
        dims,
        layout: *layouts.iter().next().unwrap(),
        uses,
    })
}

/// The `--lora-targets` regex, or an error naming the flag and the regex's fault.
pub fn parse_targets(targets: &str) -> Result<Regex> {
    Regex::new(targets)
        .map_err(|e| anyhow::anyhow!("invalid --lora-targets regex '{targets}': {e}"))
}

/// The names of the weights that can take an adapter: float32 matrices read only as the
/// weight operand of MatMul/Gemm (directly or through a Transpose), in initializer order.
pub fn candidates(model: &Model) -> Vec<String> {
    all_candidates(model)
        .into_iter()
        .map(|a| a.weight)
        .collect()
}

/// The adapter every weight that can take one would get (see [`candidates`]).
pub fn all_candidates(model: &Model) -> Vec<Adapter> {
    analyse(model)
        .into_iter()
        .filter_map(|c| c.ok().map(|c| adapter(&c)))
        .collect()
}

/// The adapters `cfg` puts into `model`, without changing it (what [`apply`] inserts, and
/// what an export merges).
pub fn plan(model: &Model, cfg: &LoraConfig) -> Result<Vec<Adapter>> {
    Ok(select(model, cfg)?
        .into_iter()
        .map(|c| adapter(&c))
        .collect())
}

fn adapter(c: &Candidate) -> Adapter {
    let (in_features, out_features) = match c.layout {
        Layout::OutIn => (c.dims[1], c.dims[0]),
        Layout::InOut => (c.dims[0], c.dims[1]),
    };
    let (a, b) = adapter_names(&c.weight);
    Adapter {
        weight: c.weight.clone(),
        module: module_name(&c.weight).to_string(),
        a,
        b,
        in_features,
        out_features,
        layout: c.layout,
    }
}

/// The candidates `cfg.targets` selects; an error names every candidate when it selects none,
/// and every selected weight that cannot take an adapter.
fn select(model: &Model, cfg: &LoraConfig) -> Result<Vec<Candidate>> {
    if cfg.rank == 0 {
        bail!("--lora-rank must be at least 1");
    }
    if !(cfg.alpha.is_finite() && cfg.alpha > 0.0) {
        bail!("--lora-alpha must be a positive number, got {}", cfg.alpha);
    }
    let re = parse_targets(&cfg.targets)?;
    // Adapters on adapters would train, and export, something no LoRA tool reads.
    let adapter_name = Regex::new(ADAPTER_PATTERN).expect("a valid pattern");
    if let Some(t) = model
        .graph()
        .initializer
        .iter()
        .find(|t| adapter_name.is_match(&t.name))
    {
        bail!(
            "{}: the model already holds LoRA adapter weights (e.g. '{}')\n  → merge them into the base weights first (PEFT's merge_and_unload, or the merged model.onnx of a koala LoRA run), or fine-tune without --lora-rank",
            model.display_name(),
            t.name
        );
    }
    let all = analyse(model);
    let refused: Vec<String> = all
        .iter()
        .filter_map(|c| c.as_ref().err())
        .filter(|(w, _)| re.is_match(w))
        .map(|(w, why)| format!("'{w}': {why}"))
        .collect();
    if !refused.is_empty() {
        bail!(
            "{}: --lora-targets '{}' selects weight(s) that LoRA cannot adapt (it adapts the weight operand of MatMul/Gemm only):\n  {}\n  → narrow --lora-targets so it leaves them out",
            model.display_name(),
            cfg.targets,
            refused.join("\n  ")
        );
    }
    let candidates: Vec<Candidate> = all.into_iter().filter_map(|c| c.ok()).collect();
    let chosen: Vec<Candidate> = candidates
        .iter()
        .filter(|c| re.is_match(&c.weight))
        .cloned()
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = candidates.iter().map(|c| c.weight.as_str()).collect();
        bail!(
            "{}: --lora-targets '{}' matches none of the model's {} weight(s) that LoRA can adapt{}\n  → pass --lora-targets with a regex that matches some of them",
            model.display_name(),
            cfg.targets,
            names.len(),
            if names.is_empty() {
                " (it has no float32 weight matrix read by MatMul/Gemm)".to_string()
            } else {
                format!(": {}", names.join(", "))
            }
        );
    }
    let taken: HashSet<String> = model
        .graph()
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .chain(
            model
                .graph()
                .node
                .iter()
                .flat_map(|n| n.output.iter().cloned()),
        )
        .chain(model.graph().input.iter().map(|i| i.name.clone()))
        .collect();
    for c in &chosen {
        let (a, b) = adapter_names(&c.weight);
        if let Some(clash) = [a, b].into_iter().find(|x| taken.contains(x)) {
            bail!(
                "{}: the model already has a value named '{clash}', the name of a LoRA adapter of '{}' (is it a merged or LoRA model already?)\n  → fine-tune it without --lora-rank, or leave '{}' out of --lora-targets",
                model.display_name(),
                c.weight,
                c.weight
            );
        }
    }
    Ok(chosen)
}

/// PEFT's initialisation of A `[r, in]`: `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in).
fn init_a(rng: &mut ChaCha8Rng, rank: usize, in_features: usize) -> Vec<f32> {
    let bound = 1.0 / (in_features as f32).sqrt();
    (0..rank * in_features)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

/// Inserts the adapters `cfg` selects into `model` (see the module docs): `A` seeded random,
/// `B` zero, every use of an adapted weight rewritten to add the low-rank update. Returns the
/// adapters, in initializer order.
pub fn apply(model: &mut Model, cfg: &LoraConfig) -> Result<Vec<Adapter>> {
    let chosen = select(model, cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut front = Vec::new();
    // Node index → (adapter, Gemm alpha, transA): the nodes whose output gets the update.
    let mut rewrite: HashMap<usize, (usize, f32, bool)> = HashMap::new();
    let mut adapters = Vec::new();
    let r = cfg.rank;
    for (k, c) in chosen.iter().enumerate() {
        let ad = adapter(c);
        let a = init_a(&mut rng, r, ad.in_features);
        let b = vec![0.0f32; ad.out_features * r];
        let g = model.graph_mut();
        g.initializer.push(tensor::from_f32(
            &ad.a,
            &[r as i64, ad.in_features as i64],
            &a,
        ));
        g.initializer.push(tensor::from_f32(
            &ad.b,
            &[ad.out_features as i64, r as i64],
            &b,
        ));
        for (w, wt) in [
            (&ad.a, at_name(&ad.module, 'A')),
            (&ad.b, at_name(&ad.module, 'B')),
        ] {
            let mut t = node("Transpose", format!("{wt}/node"), vec![w.clone()], wt);
            t.attribute.push(attrs::a_ints("perm", &[1, 0]));
            front.push(t);
        }
        for u in &c.uses {
            rewrite.insert(u.node, (k, u.alpha, u.trans_a));
        }
        adapters.push(ad);
    }
    let g = model.graph_mut();
    let mut nodes = front;
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        let Some(&(k, alpha, trans_a)) = rewrite.get(&i) else {
            nodes.push(n);
            continue;
        };
        let ad = &adapters[k];
        let y = n.output[0].clone();
        let p = format!("koala_lora/{}/{i}", ad.module);
        let base = format!("{p}/base");
        n.output[0] = base.clone();
        let x = n.input[0].clone();
        nodes.push(n);
        let x = if trans_a {
            let mut t = node("Transpose", format!("{p}/x_t"), vec![x], format!("{p}/x_t"));
            t.attribute.push(attrs::a_ints("perm", &[1, 0]));
            nodes.push(t);
            format!("{p}/x_t")
        } else {
            x
        };
        let scale = cfg.scaling() * alpha;
        let mut c = node(
            "Constant",
            format!("{p}/scale"),
            vec![],
            format!("{p}/scale"),
        );
        c.attribute.push(attrs::a_tensor(
            "value",
            tensor::from_f32("", &[], &[scale]),
        ));
        nodes.push(c);
        nodes.push(node(
            "MatMul",
            format!("{p}/xa"),
            vec![x, at_name(&ad.module, 'A')],
            format!("{p}/xa"),
        ));
        nodes.push(node(
            "MatMul",
            format!("{p}/xab"),
            vec![format!("{p}/xa"), at_name(&ad.module, 'B')],
            format!("{p}/xab"),
        ));
        nodes.push(node(
            "Mul",
            format!("{p}/delta"),
            vec![format!("{p}/xab"), format!("{p}/scale")],
            format!("{p}/delta"),
        ));
        nodes.push(node(
            "Add",
            format!("{p}/add"),
            vec![base, format!("{p}/delta")],
            y,
        ));
    }
    g.node = nodes;
    Ok(adapters)
}

/// The name of the transposed A or B (`which`) of `module`.
fn at_name(module: &str, which: char) -> String {
    format!("koala_lora/{module}/lora_{which}_t")
}

/// `s·B·A` `[out, in]` (or its transpose `[in, out]` for an `[in, out]` weight), accumulated
/// in f64: the update an adapter adds to its base weight.
pub fn delta(ad: &Adapter, scaling: f32, a: &[f32], b: &[f32]) -> Vec<f32> {
    let (n_in, n_out) = (ad.in_features, ad.out_features);
    let r = a.len() / n_in.max(1);
    let mut d = vec![0.0f32; n_in * n_out];
    for o in 0..n_out {
        for i in 0..n_in {
            let s: f64 = (0..r)
                .map(|k| b[o * r + k] as f64 * a[k * n_in + i] as f64)
                .sum();
            let at = match ad.layout {
                Layout::OutIn => o * n_in + i,
                Layout::InOut => i * n_out + o,
            };
            d[at] = (scaling as f64 * s) as f32;
        }
    }
    d
}

/// The merged weights `W + s·B·A` of every adapter, from the base weights in `base` (the model
/// without adapters) and the trained A and B in `trained` (name → values).
pub fn merged_weights(
    base: &Model,
    adapters: &[Adapter],
    scaling: f32,
    trained: &HashMap<&str, &[f32]>,
) -> Result<Vec<(String, Vec<f32>)>> {
    adapters
        .iter()
        .map(|ad| {
            let get = |n: &str| {
                trained
                    .get(n)
                    .copied()
                    .with_context(|| format!("no trained values for the LoRA adapter '{n}'"))
            };
            let (a, b) = (get(&ad.a)?, get(&ad.b)?);
            let r = a.len() / ad.in_features.max(1);
            if a.len() != r * ad.in_features || b.len() != ad.out_features * r || r == 0 {
                bail!(
                    "the LoRA adapter of '{}' has {} values in A and {} in B, which do not fit a [{}, {}] weight",
                    ad.weight,
                    a.len(),
                    b.len(),
                    ad.out_features,
                    ad.in_features
                );
            }
            let t = base
                .graph()
                .initializer
                .iter()
                .find(|t| t.name == ad.weight)
                .with_context(|| format!("the base model has no weight '{}'", ad.weight))?;
            let w = tensor::to_f32(t)?;
            let d = delta(ad, scaling, a, b);
            Ok((
                ad.weight.clone(),
                w.iter().zip(&d).map(|(w, d)| w + d).collect(),
            ))
        })
        .collect()
}

/// The number of parameters the adapters train: r·(in + out) each.
pub fn parameter_count(adapters: &[Adapter], rank: usize) -> usize {
    adapters
        .iter()
        .map(|a| rank * (a.in_features + a.out_features))
        .sum()
}
