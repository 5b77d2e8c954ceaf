//! Learning-rate schedules, each with linear warmup. The rate is a pure
//! function of the step, so resuming needs no schedule state.

use serde::{Deserialize, Serialize};

/// Shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant.
    #[default]
    Constant,
    /// Cosine from the base rate to `min_lr` at the last step.
    Cosine,
    /// Linear from the base rate to `min_lr` at the last step.
    Linear,
    /// Multiply by `gamma` every `step_size` steps.
    Step,
}

/// A schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Kind.
    pub kind: ScheduleKind,
    /// Base learning rate.
    pub base_lr: f64,
    /// Linear warmup from 0 over this many steps.
    pub warmup_steps: u64,
    /// Total steps (for cosine/linear).
    pub total_steps: u64,
    /// Floor of cosine/linear.
    pub min_lr: f64,
    /// Step decay period.
    pub step_size: u64,
    /// Step decay factor.
    pub gamma: f64,
}

impl Schedule {
    /// The learning rate at `step` (0-based: the first update uses step 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = step - self.warmup_steps;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = (t as f64 / span).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                self.min_lr
                    + 0.5
                        * (self.base_lr - self.min_lr)
                        * (1.0 + (std::f64::consts::PI * frac).cos())
            }
            ScheduleKind::Linear => self.base_lr + (self.min_lr - self.base_lr) * frac,
            ScheduleKind::Step => {
                self.base_lr * self.gamma.powi((t / self.step_size.max(1)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            base_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr: 0.0,
            step_size: 30,
            gamma: 0.1,
        }
    }

    #[test]
    fn warmup_then_shapes() {
        let c = s(ScheduleKind::Cosine);
        assert!((c.lr(0) - 0.1).abs() < 1e-12);
        assert!((c.lr(9) - 1.0).abs() < 1e-12);
        assert!((c.lr(10) - 1.0).abs() < 1e-12);
        assert!(
            (c.lr(60) - 0.5).abs() < 1e-12,
            "half way through cosine is half the rate"
        );
        assert!(c.lr(110).abs() < 1e-12);
        let l = s(ScheduleKind::Linear);
        assert!((l.lr(35) - 0.75).abs() < 1e-12);
        let st = s(ScheduleKind::Step);
        assert!((st.lr(39) - 1.0).abs() < 1e-12);
        assert!((st.lr(40) - 0.1).abs() < 1e-12);
        assert!((s(ScheduleKind::Constant).lr(1000) - 1.0).abs() < 1e-12);
    }
}
