//! Optimizer configuration: plain serde data, so a training loop can read it from TOML or
//! JSON and switch optimizers without code changes. Every field has a default (missing
//! fields take it), and unknown fields are rejected so that a typo is an error rather than
//! a silently ignored setting.
//!
//! KOALA defaults are the official classes' constructor defaults (spec §7: "not
//! recommendations"); use [`crate::preset`] for the paper's settings.

use serde::{Deserialize, Serialize};

use crate::error::OptimError;

/// Which optimizer to run, with its hyper-parameters. Serialized with an `algorithm` tag:
/// `{"algorithm": "koala-pp", "sigma": 0.2, ...}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// KOALA++ (spec §5).
    #[serde(rename = "koala-pp")]
    KoalaPlusPlus(KoalaPPConfig),
    /// Vanilla KOALA (spec §3).
    KoalaV(KoalaVConfig),
    /// KOALA with momentum (spec §4).
    KoalaM(KoalaMConfig),
    /// AdamW with PyTorch semantics.
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// SGD with PyTorch semantics.
    Sgd(SgdConfig),
}

impl OptimizerConfig {
    /// The base learning rate a schedule should scale (the optimizer itself uses
    /// `StepContext::lr` at every step).
    pub fn base_lr(&self) -> f64 {
        match self {
            OptimizerConfig::KoalaPlusPlus(c) => c.lr,
            OptimizerConfig::KoalaV(c) => c.lr,
            OptimizerConfig::KoalaM(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::Sgd(c) => c.lr,
        }
    }

    /// Checks every hyper-parameter; the error names the offending field.
    pub fn validate(&self) -> Result<(), OptimError> {
        match self {
            OptimizerConfig::KoalaPlusPlus(c) => c.validate(),
            OptimizerConfig::KoalaV(c) => c.validate(),
            OptimizerConfig::KoalaM(c) => c.validate(),
            OptimizerConfig::AdamW(c) => c.validate(),
            OptimizerConfig::Sgd(c) => c.validate(),
        }
    }
}

/// KOALA++'s recursion variant (spec §5.1). The paper's figure shows the symmetric one.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KoalaPPVariant {
    #[default]
    Symmetric,
    Vanilla,
}

/// How KOALA++ is computed. Both are the same algorithm; they differ only in rounding.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KoalaPPPath {
    /// Two passes over memory with cached x, y (spec §5.5); the fast path.
    #[default]
    Fused,
    /// The reference code's step order (spec §5.3), kept to cross-check the fused path.
    Literal,
}

/// How KOALA++'s per-tensor filters share the measurement (koala extension, issue 10;
/// `koala_pp_joint.rs` has the derivation).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KoalaPPInnovation {
    /// The reference (spec §5.2): every tensor runs its own filter with its own innovation
    /// variance S_t, so each tensor's step asks to remove the fraction η of the whole loss.
    #[default]
    PerTensor,
    /// One Kalman filter on the concatenated parameter vector with a block-diagonal
    /// covariance (one block per tensor): a single innovation variance
    /// S = Σ_t h_t·P̂_t·h_t + R shared by all tensors (of all groups stepped together), so η
    /// keeps its paper meaning (the fraction of the loss removed per step) whatever the
    /// number of tensors. Fused path only.
    Joint,
}

/// KOALA++'s per-coordinate scale of the covariance (koala extension, issue 10;
/// `koala_pp_diagonal.rs` has the derivation).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KoalaPPDiagonal {
    /// P₀ = σ·I and process noise Q·I, as in the paper: every coordinate of a tensor alike.
    #[default]
    None,
    /// P₀ = σ·D and Q·D with D = diag(1/(√m̂ + ε)), m̂ the bias-corrected running mean of
    /// h² (Adam's second moment, β₂ = `beta2`): the filter runs in the coordinates
    /// φ = D^(−1/2)·θ. One more vector per tensor. Fused path only.
    SecondMoment,
}

/// Measurement-noise handling shared by the KOALA family (spec §2.3).
/// `r = None` means the online EMA `R ← alpha_r·R + (1−alpha_r)·V`, starting at `r_init`.
fn validate_noise(r: Option<f64>, alpha_r: f64, r_init: f64) -> Result<(), OptimError> {
    if let Some(r) = r {
        non_negative("r", r)?;
    }
    unit_interval("alpha_r", alpha_r)?;
    non_negative("r_init", r_init)
}

/// KOALA++ hyper-parameters (spec §5, §7). Defaults: the official constructor's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KoalaPPConfig {
    /// Initial covariance scale σ (v₀ = σ·H). Default 1.0.
    pub sigma: f64,
    /// Process noise Q. Default 1.0.
    pub q: f64,
    /// Fixed measurement noise R; `None` (default) = online EMA of the loop's `loss_var`.
    pub r: Option<f64>,
    /// EMA factor for online R. Default 0.9.
    pub alpha_r: f64,
    /// Initial online R. Default 1.0.
    pub r_init: f64,
    /// Coupled L2 weight decay (enters H and the measured loss). Default 0.
    pub weight_decay: f64,
    /// Base learning rate η for schedules. Default 1.0.
    pub lr: f64,
    /// Symmetric (default) or vanilla recursion.
    pub variant: KoalaPPVariant,
    /// Fused (default) or literal computation.
    pub path: KoalaPPPath,
    /// A tensor whose raw gradient has ‖g‖₂ below this is skipped. Default 1e-9.
    pub skip_eps: f64,
    /// Optional guard against a covariance that is not positive along h (the reference
    /// has none, spec §5.4): when S ≤ R, i.e. h·P̂·h ≤ 0 (S ≤ 0 included), the tensor's
    /// filter restarts from its lazy initial state (the phantom first step with P = σ·I)
    /// for this step, and the restart is counted in the step report. Clamping S instead
    /// makes the step go uphill and diverged in tests. Default off; must be off to
    /// reproduce the reference vectors.
    pub s_guard: bool,
    /// Per-tensor (default, the reference) or joint innovation.
    pub innovation: KoalaPPInnovation,
    /// Per-coordinate covariance scale: none (default, the reference) or second-moment.
    pub diagonal: KoalaPPDiagonal,
    /// `diagonal = second-moment`: EMA factor of the second moment. Default 0.999 (Adam's β₂).
    pub beta2: f64,
    /// `diagonal = second-moment`: ε added to √m̂. Default 1e-8 (Adam's).
    pub eps: f64,
    /// The target value f* of the Polyak step (koala extension, issue 10): the filter
    /// measures ℓ = L + ½·wd·‖θ‖² − f* instead of ℓ = L + ½·wd·‖θ‖² (spec §5.3 j, where
    /// the implicit target is 0). A negative f* keeps the step from shrinking with the
    /// loss without weight decay's pull of θ towards 0 (README "KOALA++ vs AdamW").
    /// Default 0 (the reference).
    pub loss_target: f64,
    /// Upper bound γ_max on the step size (koala extension, issue 10): the step factor
    /// γ = η·ℓ/S of θ ← θ − γ·P̂·h is clamped to |γ| ≤ γ_max/(σ+Q) (a constant: the
    /// schedule scales η, not the bound), the bound of the
    /// bounded Polyak step SPS_max (Loizou et al. 2021, "Stochastic Polyak step-size for
    /// SGD", eq. 7) in the units of the first step: a tensor's first covariance is
    /// (σ+Q)·I, so no coordinate of a first step moves by more than γ_max·|h_i|, and with
    /// the second-moment diagonal (where a first step is a sign step) by more than γ_max,
    /// Adam's learning-rate unit. Why: a Polyak step is sized by the loss, not by the
    /// curvature, and while the covariance has not yet shrunk along the gradient (the
    /// joint filter's first steps) it asks every step to remove the fraction η of ℓ
    /// however far that is (README "KOALA++ vs AdamW": MNIST's loss 2.30 → 4.70 at the
    /// second step without it). `None` (default, the reference): no bound.
    pub max_step: Option<f64>,
}

impl Default for KoalaPPConfig {
    fn default() -> Self {
        KoalaPPConfig {
            sigma: 1.0,
            q: 1.0,
            r: None,
            alpha_r: 0.9,
            r_init: 1.0,
            weight_decay: 0.0,
            lr: 1.0,
            variant: KoalaPPVariant::Symmetric,
            path: KoalaPPPath::Fused,
            skip_eps: 1e-9,
            s_guard: false,
            innovation: KoalaPPInnovation::PerTensor,
            diagonal: KoalaPPDiagonal::None,
            beta2: 0.999,
            eps: 1e-8,
            loss_target: 0.0,
            max_step: None,
        }
    }
}

impl KoalaPPConfig {
    /// The measured loss ℓ = L + ½·wd·‖θ‖² − f* from the loop's loss L and the L2 term
    /// `half_wd_tt` (spec §5.3 j, with [`KoalaPPConfig::loss_target`] f*).
    pub(crate) fn measured_loss(&self, loss: f64, half_wd_tt: f64) -> f64 {
        loss + half_wd_tt - self.loss_target
    }

    /// The step factor γ = η·ℓ/S for this step's η = `lr` (after the schedule), clamped
    /// to |γ| ≤ γ_max/(σ+Q) when [`KoalaPPConfig::max_step`] is set (otherwise exactly
    /// η·ℓ/S, the reference). The bound is constant, as SPS_max's: scaling it with the
    /// schedule (η/η₀) was measured and did no better (README "KOALA++ vs AdamW").
    pub(crate) fn step_size(&self, lr: f64, ell: f64, s: f64) -> f64 {
        let gamma = lr * ell / s;
        match self.max_step {
            Some(m) => {
                let bound = m / (self.sigma + self.q);
                gamma.clamp(-bound, bound)
            }
            None => gamma,
        }
    }

    fn validate(&self) -> Result<(), OptimError> {
        positive("sigma", self.sigma)?;
        non_negative("q", self.q)?;
        validate_noise(self.r, self.alpha_r, self.r_init)?;
        non_negative("weight_decay", self.weight_decay)?;
        finite("lr", self.lr)?;
        non_negative("skip_eps", self.skip_eps)?;
        half_open_unit("beta2", self.beta2)?;
        positive("eps", self.eps)?;
        finite("loss_target", self.loss_target)?;
        if let Some(m) = self.max_step {
            positive("max_step", m)?;
        }
        if self.diagonal == KoalaPPDiagonal::SecondMoment && self.path == KoalaPPPath::Literal {
            return Err(OptimError::config(
                "diagonal",
                "`second-moment` is computed by the fused path only; set path = \"fused\" (the literal path is the reference form of the per-tensor filter)",
            ));
        }
        if self.innovation == KoalaPPInnovation::Joint && self.path == KoalaPPPath::Literal {
            return Err(OptimError::config(
                "innovation",
                "`joint` is computed by the fused path only; set path = \"fused\" (the literal path is the reference form of the per-tensor filter)",
            ));
        }
        Ok(())
    }
}

/// KOALA-V hyper-parameters (spec §3). Defaults: the official constructor's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KoalaVConfig {
    /// Initial scalar covariance s. Default 1.0.
    pub sigma: f64,
    /// Process noise added to s by `predict`. Default 1.0.
    pub q: f64,
    /// Fixed R, or `None` (default) for the online EMA.
    pub r: Option<f64>,
    /// EMA factor for online R. Default 0.9.
    pub alpha_r: f64,
    /// Initial online R. Default 1.0.
    pub r_init: f64,
    /// Coupled L2 weight decay. Default 0.
    pub weight_decay: f64,
    /// Base learning rate. Default 1.0.
    pub lr: f64,
    /// Skip threshold on ‖g‖₂. Default 1e-9.
    pub skip_eps: f64,
}

impl Default for KoalaVConfig {
    fn default() -> Self {
        KoalaVConfig {
            sigma: 1.0,
            q: 1.0,
            r: None,
            alpha_r: 0.9,
            r_init: 1.0,
            weight_decay: 0.0,
            lr: 1.0,
            skip_eps: 1e-9,
        }
    }
}

impl KoalaVConfig {
    fn validate(&self) -> Result<(), OptimError> {
        positive("sigma", self.sigma)?;
        non_negative("q", self.q)?;
        validate_noise(self.r, self.alpha_r, self.r_init)?;
        non_negative("weight_decay", self.weight_decay)?;
        finite("lr", self.lr)?;
        non_negative("skip_eps", self.skip_eps)
    }
}

/// KOALA-M hyper-parameters (spec §4). Defaults: the recommended values of spec §7.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KoalaMConfig {
    /// Initial weight variance P₀₀. Default 0.1.
    pub sw: f64,
    /// Initial weight/velocity covariance P₀₁ = P₁₀. Default 0.
    pub sc: f64,
    /// Initial velocity variance P₁₁. Default 0.1.
    pub sv: f64,
    /// Velocity decay a in F = [[1, 1], [0, a]]. Default 0.9.
    pub a: f64,
    /// Initial weight process noise q_w (adapted online). Default 0.01.
    pub qw: f64,
    /// Velocity process noise q_v. Default 0.01.
    pub qv: f64,
    /// EMA factor of q_w. Default 0.9.
    pub qw_ema_alpha: f64,
    /// Fixed R, or `None` (default) for the online EMA.
    pub r: Option<f64>,
    /// EMA factor for online R. Default 0.9.
    pub alpha_r: f64,
    /// Initial online R. Default 1.0.
    pub r_init: f64,
    /// Coupled L2 weight decay. Default 0.
    pub weight_decay: f64,
    /// Base learning rate. Default 1.0.
    pub lr: f64,
    /// Skip threshold on ‖g‖₂. Default 1e-9.
    pub skip_eps: f64,
}

impl Default for KoalaMConfig {
    fn default() -> Self {
        KoalaMConfig {
            sw: 0.1,
            sc: 0.0,
            sv: 0.1,
            a: 0.9,
            qw: 0.01,
            qv: 0.01,
            qw_ema_alpha: 0.9,
            r: None,
            alpha_r: 0.9,
            r_init: 1.0,
            weight_decay: 0.0,
            lr: 1.0,
            skip_eps: 1e-9,
        }
    }
}

impl KoalaMConfig {
    fn validate(&self) -> Result<(), OptimError> {
        positive("sw", self.sw)?;
        finite("sc", self.sc)?;
        positive("sv", self.sv)?;
        finite("a", self.a)?;
        non_negative("qw", self.qw)?;
        non_negative("qv", self.qv)?;
        unit_interval("qw_ema_alpha", self.qw_ema_alpha)?;
        validate_noise(self.r, self.alpha_r, self.r_init)?;
        non_negative("weight_decay", self.weight_decay)?;
        finite("lr", self.lr)?;
        non_negative("skip_eps", self.skip_eps)
    }
}

/// AdamW hyper-parameters; defaults are PyTorch's `torch.optim.AdamW`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base learning rate. Default 1e-3.
    pub lr: f64,
    /// First-moment decay. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay. Default 0.999.
    pub beta2: f64,
    /// Denominator term. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay (θ ← θ·(1 − lr·wd)). Default 1e-2.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<(), OptimError> {
        finite("lr", self.lr)?;
        half_open_unit("beta1", self.beta1)?;
        half_open_unit("beta2", self.beta2)?;
        non_negative("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
}

/// SGD hyper-parameters; defaults are PyTorch's `torch.optim.SGD`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Base learning rate. Default 1e-3.
    pub lr: f64,
    /// Momentum factor; 0 (default) keeps no buffer.
    pub momentum: f64,
    /// Dampening of the gradient added to the buffer. Default 0.
    pub dampening: f64,
    /// Coupled L2 weight decay added to the gradient. Default 0.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening = 0, as in PyTorch). Default false.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    fn validate(&self) -> Result<(), OptimError> {
        finite("lr", self.lr)?;
        non_negative("momentum", self.momentum)?;
        finite("dampening", self.dampening)?;
        non_negative("weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(OptimError::config(
                "nesterov",
                "requires momentum > 0 and dampening = 0 (as in PyTorch)",
            ));
        }
        Ok(())
    }
}

fn finite(field: &'static str, x: f64) -> Result<(), OptimError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(OptimError::config(
            field,
            format!("must be finite, got {x}"),
        ))
    }
}

fn non_negative(field: &'static str, x: f64) -> Result<(), OptimError> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(OptimError::config(
            field,
            format!("must be finite and >= 0, got {x}"),
        ))
    }
}

fn positive(field: &'static str, x: f64) -> Result<(), OptimError> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(OptimError::config(
            field,
            format!("must be finite and > 0, got {x}"),
        ))
    }
}

fn unit_interval(field: &'static str, x: f64) -> Result<(), OptimError> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(OptimError::config(
            field,
            format!("must lie in [0, 1], got {x}"),
        ))
    }
}

fn half_open_unit(field: &'static str, x: f64) -> Result<(), OptimError> {
    if (0.0..1.0).contains(&x) {
        Ok(())
    } else {
        Err(OptimError::config(
            field,
            format!("must lie in [0, 1), got {x}"),
        ))
    }
}
