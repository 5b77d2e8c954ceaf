//! LoRA runs (`--lora-rank`): the adapters inserted before the training graph is built (see
//! [`koala_graph::lora`] for the math), and what such a run exports:
//!
//! * `model.onnx`: the user's original graph and signature with every adapted weight merged,
//!   `W' = W + (α/r)·B·A`, so any runtime runs the fine-tuned model without knowing about LoRA
//!   (verified like every export: reloaded by ONNX Runtime against the training graph, and
//!   evaluated on its own);
//! * `adapter/adapter_model.safetensors` + `adapter/adapter_config.json`: the adapter alone in
//!   PEFT's format, which `peft.PeftModel.from_pretrained(<HF model>, "adapter")` loads.
//!
//! PEFT's format (peft 0.21, `utils/save_and_load.py` `get_peft_model_state_dict`,
//! `tuners/lora/config.py` `LoraConfig`): keys `base_model.model.<module>.lora_A.weight` `[r,
//! in]` and `.lora_B.weight` `[out, r]`, `<module>` being the Hugging Face module name, which is
//! the weight's name without `.weight` in an HF-named ONNX file; f32 little-endian.

use crate::config::TrainConfig;
use anyhow::{Context, Result};
use koala_graph::lora::{self, Adapter, LoraConfig};
use koala_graph::model::write_atomic;
use koala_graph::{tensor, Model};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Name of the folder the PEFT adapter is written to, next to the exported model.
pub const ADAPTER_DIR: &str = "adapter";
/// PEFT's weights file name (`peft.utils.constants.SAFETENSORS_WEIGHTS_NAME`).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's config file name (`peft.utils.constants.CONFIG_NAME`).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The prefix PEFT's state dict puts before a module name (`LoraModel` → the HF model).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Inserts the adapters of `lora` into `model` and says what trains (unless `quiet`).
pub fn insert_adapters(model: &mut Model, lora: &LoraConfig, quiet: bool) -> Result<()> {
    let total: usize = model
        .graph()
        .initializer
        .iter()
        .filter(|t| t.data_type == koala_graph::proto::DataType::Float as i32)
        .map(|t| tensor::numel(&t.dims))
        .sum();
    let adapters = lora::apply(model, lora)?;
    if !quiet {
        let trained = lora::parameter_count(&adapters, lora.rank);
        eprintln!(
            "LoRA: rank {}, alpha {} (update scaled by {}), adapters on {} weights ({}); {} trainable parameters ({:.2}% of the model's {}); base weights, embeddings and norms frozen",
            lora.rank,
            lora.alpha,
            lora.scaling(),
            adapters.len(),
            target_modules(&adapters, &adapters).join(", "),
            trained,
            100.0 * trained as f64 / total.max(1) as f64,
            total
        );
    }
    Ok(())
}

/// The merged model of a LoRA run: the original model at `cfg.model` with `W + (α/r)·B·A`
/// written into every adapted weight, from the trained adapters in `trained` (name →
/// values). Also returns the adapters.
pub fn merged_model(
    cfg: &TrainConfig,
    lora: &LoraConfig,
    trained: &[(&str, &[f32])],
) -> Result<(Model, Vec<Adapter>)> {
    let base = Model::load(&cfg.model)?;
    let adapters = lora::plan(&base, lora)?;
    let by_name: HashMap<&str, &[f32]> = trained.iter().copied().collect();
    let merged = lora::merged_weights(&base, &adapters, lora.scaling(), &by_name)?;
    let model = koala_graph::export::with_weights(
        &base,
        merged.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )?;
    Ok((model, adapters))
}

/// The adapter folder that goes with an exported model at `export`.
pub fn adapter_dir(export: &Path) -> PathBuf {
    export.parent().unwrap_or(Path::new(".")).join(ADAPTER_DIR)
}

/// PEFT's `target_modules`: the last component of each adapted module's name (`q_proj`, …)
/// when those suffixes pick exactly the adapted modules among all that could be adapted
/// (`candidates`); otherwise the full module names, which PEFT matches exactly.
pub fn target_modules(adapters: &[Adapter], candidates: &[Adapter]) -> Vec<String> {
    let suffix = |m: &str| m.rsplit('.').next().unwrap_or(m).to_string();
    let suffixes: BTreeSet<String> = adapters.iter().map(|a| suffix(&a.module)).collect();
    let adapted: BTreeSet<&str> = adapters.iter().map(|a| a.module.as_str()).collect();
    let exact = candidates
        .iter()
        .filter(|c| suffixes.contains(&suffix(&c.module)))
        .all(|c| adapted.contains(c.module.as_str()));
    if exact {
        suffixes.into_iter().collect()
    } else {
        adapted.into_iter().map(String::from).collect()
    }
}

/// Writes the PEFT adapter (`adapter_model.safetensors`, `adapter_config.json`) of the
/// trained adapters into `dir`, each file atomically. `base` is the model the adapters belong
/// to (its path is recorded as `base_model_name_or_path`).
pub fn write_peft_adapter(
    dir: &Path,
    base: &Path,
    lora: &LoraConfig,
    adapters: &[Adapter],
    trained: &[(&str, &[f32])],
) -> Result<()> {
    let by_name: HashMap<&str, &[f32]> = trained.iter().copied().collect();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for ad in adapters {
        for (name, shape) in [
            (&ad.a, vec![lora.rank, ad.in_features]),
            (&ad.b, vec![ad.out_features, lora.rank]),
        ] {
            let values = by_name
                .get(name.as_str())
                .with_context(|| format!("no trained values for the LoRA adapter '{name}'"))?;
            let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push((format!("{PEFT_PREFIX}{name}"), shape, bytes));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let weights = safetensors::serialize(views, Some(metadata))?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the adapter folder '{}'", dir.display()))?;
    write_atomic(&dir.join(ADAPTER_WEIGHTS), &weights)?;
    // Every weight that could be adapted, to tell whether the suffixes name exactly the adapted ones.
    let all = Model::load(base)
        .map(|m| lora::all_candidates(&m))
        .unwrap_or_default();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.display().to_string(),
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": target_modules(adapters, &all),
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "inference_mode": true,
    });
    write_atomic(
        &dir.join(ADAPTER_CONFIG),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )
}

/// Writes a LoRA run's export: the merged model at `export` and the PEFT adapter beside it.
pub fn export(
    cfg: &TrainConfig,
    lora: &LoraConfig,
    trained: &[(&str, &[f32])],
    export: &Path,
) -> Result<()> {
    let (merged, adapters) = merged_model(cfg, lora, trained)?;
    koala_graph::export::save(&merged, export, Some(&cfg.model))?;
    let dir = adapter_dir(export);
    write_peft_adapter(&dir, &cfg.model, lora, &adapters, trained)?;
    eprintln!(
        "wrote the merged model {} (W + {}·B·A in {} weights) and the PEFT adapter {} ({ADAPTER_WEIGHTS}, {ADAPTER_CONFIG}: {} tensors, rank {}, alpha {})",
        export.display(),
        lora.scaling(),
        adapters.len(),
        dir.display(),
        2 * adapters.len(),
        lora.rank,
        lora.alpha
    );
    Ok(())
}
