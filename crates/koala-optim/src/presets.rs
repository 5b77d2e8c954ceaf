//! Named hyper-parameter sets from the official scripts (spec §7), so a user can write
//! `optimizer = "vision-cnn"` instead of copying numbers from the paper.
//!
//! Every KOALA preset uses the online R (EMA, α_r = 0.9, R₀ = 1): the training loop decides
//! what to feed it (spec §2.4: the image-classification loops pass L², the language-model
//! loop effectively 0).

use crate::config::{KoalaMConfig, KoalaPPConfig, KoalaVConfig, OptimizerConfig};
use crate::error::OptimError;

/// A named preset and where its numbers come from.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    build: fn() -> OptimizerConfig,
}

impl Preset {
    /// The preset's configuration.
    pub fn config(&self) -> OptimizerConfig {
        (self.build)()
    }
}

fn koala_pp(sigma_q: f64, lr: f64, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
        sigma: sigma_q,
        q: sigma_q,
        lr,
        weight_decay,
        ..KoalaPPConfig::default()
    })
}

/// All presets, in a stable order.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "vision-cnn",
        description: "KOALA++ for CNNs (ResNet-50 CIFAR-10 script): sigma = Q = 0.2, lr = 2, wd = 5e-4",
        build: || koala_pp(0.2, 2.0, 5e-4),
    },
    Preset {
        name: "vision-cnn-small-lr",
        description: "KOALA++ for CNNs (CIFAR-100 / AdaFisher-protocol scripts): sigma = Q = 0.1, lr = 1, wd = 5e-4",
        build: || koala_pp(0.1, 1.0, 5e-4),
    },
    Preset {
        name: "vision-transformer",
        description: "KOALA++ for vision transformers (Swin-T config): sigma = Q = 0.2, lr = 2, wd = 1e-4",
        build: || koala_pp(0.2, 2.0, 1e-4),
    },
    Preset {
        name: "language-model",
        description: "KOALA++ for the GPT-style language model: sigma = Q = 0.1, lr = 2e-3, wd = 1e-4",
        build: || koala_pp(0.1, 2e-3, 1e-4),
    },
    Preset {
        name: "koala-v",
        description: "KOALA-V as compared in the paper: sigma = 0.1, Q = 1, lr = 1, wd = 5e-4",
        build: || {
            OptimizerConfig::KoalaV(KoalaVConfig {
                sigma: 0.1,
                q: 1.0,
                lr: 1.0,
                weight_decay: 5e-4,
                ..KoalaVConfig::default()
            })
        },
    },
    Preset {
        name: "koala-m",
        description: "KOALA-M as compared in the paper: sw = sv = 0.1, sc = 0, a = 0.9, qw = qv = 0.01, lr = 1, wd = 5e-4",
        build: || {
            OptimizerConfig::KoalaM(KoalaMConfig {
                weight_decay: 5e-4,
                ..KoalaMConfig::default()
            })
        },
    },
];

/// Looks a preset up by name; the error lists the known names.
pub fn preset(name: &str) -> Result<OptimizerConfig, OptimError> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(Preset::config)
        .ok_or_else(|| OptimError::UnknownPreset {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}
