//! Turning the user's optimizer choice into optimizer groups.
//!
//! With `no_decay_bias_norm`, 1-D tensors (biases, normalisation scales)
//! go to a second group with weight decay 0 — two optimizer instances with
//! the same hyper-parameters otherwise. For KOALA++ this is exact (tensors
//! are independent; both groups feed the same V to their R). KOALA-V/M share
//! one covariance per optimizer, so there each group keeps its own.

use crate::config::TrainConfig;
use anyhow::{bail, Result};
use koala_optim::{AdamWConfig, OptimizerConfig, SgdConfig};

/// The optimizer configuration a TrainConfig asks for.
pub fn resolve(cfg: &TrainConfig) -> Result<OptimizerConfig> {
    let name = cfg.optimizer.to_lowercase();
    let mut oc = match name.as_str() {
        "koala++" | "koalapp" | "koala-pp" | "kpp" => koala_optim::preset("vision-cnn-small-lr")?,
        "koala-v" | "koalav" => koala_optim::preset("koala-v")?,
        "koala-m" | "koalam" => koala_optim::preset("koala-m")?,
        "adamw" | "adam" => OptimizerConfig::AdamW(AdamWConfig { lr: 1e-3, weight_decay: 1e-2, ..AdamWConfig::default() }),
        "sgd" => OptimizerConfig::Sgd(SgdConfig { lr: 1e-2, momentum: cfg.momentum, ..SgdConfig::default() }),
        other => match koala_optim::preset(other) {
            Ok(c) => c,
            Err(_) => bail!(
                "unknown optimizer '{other}': use koala++, koala-v, koala-m, adamw, sgd or a preset ({})",
                koala_optim::PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    match &mut oc {
        OptimizerConfig::KoalaPlusPlus(c) => {
            set(&mut c.lr, cfg.lr);
            set(&mut c.weight_decay, cfg.weight_decay);
            set(&mut c.sigma, cfg.sigma);
            set(&mut c.q, cfg.q);
        }
        OptimizerConfig::KoalaV(c) => {
            set(&mut c.lr, cfg.lr);
            set(&mut c.weight_decay, cfg.weight_decay);
            set(&mut c.sigma, cfg.sigma);
            set(&mut c.q, cfg.q);
        }
        OptimizerConfig::KoalaM(c) => {
            set(&mut c.lr, cfg.lr);
            set(&mut c.weight_decay, cfg.weight_decay);
        }
        OptimizerConfig::AdamW(c) => {
            set(&mut c.lr, cfg.lr);
            set(&mut c.weight_decay, cfg.weight_decay);
        }
        OptimizerConfig::Sgd(c) => {
            set(&mut c.lr, cfg.lr);
            set(&mut c.weight_decay, cfg.weight_decay);
        }
    }
    oc.validate()?;
    Ok(oc)
}

fn set(slot: &mut f64, v: Option<f64>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// The same configuration with weight decay 0 (the no-decay group).
pub fn without_decay(oc: &OptimizerConfig) -> OptimizerConfig {
    let mut oc = oc.clone();
    match &mut oc {
        OptimizerConfig::KoalaPlusPlus(c) => c.weight_decay = 0.0,
        OptimizerConfig::KoalaV(c) => c.weight_decay = 0.0,
        OptimizerConfig::KoalaM(c) => c.weight_decay = 0.0,
        OptimizerConfig::AdamW(c) => c.weight_decay = 0.0,
        OptimizerConfig::Sgd(c) => c.weight_decay = 0.0,
    }
    oc
}

/// True for the KOALA family (they consume loss and loss_var).
pub fn is_koala(oc: &OptimizerConfig) -> bool {
    matches!(
        oc,
        OptimizerConfig::KoalaPlusPlus(_) | OptimizerConfig::KoalaV(_) | OptimizerConfig::KoalaM(_)
    )
}
