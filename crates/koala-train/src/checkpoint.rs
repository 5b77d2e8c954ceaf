//! Checkpoints: weights (safetensors), optimizer state (koala-optim's
//! safetensors + JSON), trainer state (JSON), in one directory per step.
//!
//! A checkpoint is written into a hidden temporary directory and renamed
//! into place, so a process killed mid-write leaves the previous
//! checkpoints intact and never a half-written one under a real name.

use crate::task::BestMetric;
use anyhow::{bail, Context, Result};
use koala_optim::{OptimizerState, StatePaths};
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// When the training loop writes a checkpoint: every `every_steps` steps, at the last
/// step, and when `interval` has passed since the last checkpoint. The time-based part
/// bounds what a crash can cost whatever the step interval is (by default checkpoints
/// follow evaluations, which may be thousands of steps apart).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cadence {
    /// Step interval (at least 1).
    pub every_steps: u64,
    /// Time interval; `None`: off.
    pub interval: Option<Duration>,
}

impl Cadence {
    /// Every `every_steps` steps (0 counts as 1) and every `minutes` minutes (0: off; must be
    /// finite and non-negative, which [`crate::TrainConfig::validate`] checks).
    pub fn new(every_steps: u64, minutes: f64) -> Cadence {
        Cadence {
            every_steps: every_steps.max(1),
            interval: (minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0)),
        }
    }

    /// Whether a checkpoint is due after `step`, `since_last` after the previous
    /// checkpoint (or the start of this process's part of the run).
    pub fn due(&self, step: u64, last_step: bool, since_last: Duration) -> bool {
        last_step
            || step.is_multiple_of(self.every_steps)
            || self.interval.is_some_and(|i| since_last >= i)
    }
}

/// Trainer state needed to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Checkpoint format version.
    pub format_version: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Data position of the next batch (epoch, batch index).
    pub cursor_epoch: u64,
    /// Batch position within `cursor_epoch`.
    pub cursor_position: usize,
    /// Seconds trained so far.
    pub wall_time: f64,
    /// Best value of [`best_metric`](Self::best_metric) and its step.
    pub best: Option<(f64, u64)>,
    /// The metric `best` holds and its direction (absent in checkpoints written before it was
    /// recorded: those held top-1 accuracy, higher is better, which is the default).
    #[serde(default)]
    pub best_metric: BestMetric,
    /// Consecutive non-finite steps at save time.
    pub bad_steps: u32,
    /// Non-finite steps skipped so far.
    pub skipped_steps: u64,
    /// Unreadable training samples skipped so far, over all segments of a
    /// resumed run (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub skipped_samples: u64,
    /// Training-source indices of the unreadable samples counted in `skipped_samples`, so a segment that
    /// meets the same file again does not count it twice (absent when there were none, and in checkpoints
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_indices: Vec<usize>,
    /// The training graph's execution target so far (absent in checkpoints written before
    /// it was recorded): a resume on another target is told it is no longer bitwise the
    /// uninterrupted run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_target: Option<koala_graph::ExecutionTarget>,
}

impl TrainerState {
    /// Counts the unreadable training samples `indices` (source indices) not counted yet.
    pub fn add_skipped(&mut self, indices: &[usize]) {
        for &i in indices {
            if let Err(at) = self.skipped_indices.binary_search(&i) {
                self.skipped_indices.insert(at, i);
                self.skipped_samples += 1;
            }
        }
    }
}

/// Current format version.
pub const FORMAT_VERSION: u32 = 1;

/// The checkpoints directory of a run.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The directory of the checkpoint for `step` (whether or not it exists).
pub fn path_of(run_dir: &Path, step: u64) -> PathBuf {
    dir_of(run_dir).join(name(step))
}

/// Writes a checkpoint for `state.step` atomically; returns its directory.
pub fn save(
    run_dir: &Path,
    state: &TrainerState,
    weights: &[(String, Vec<usize>, &[f32])],
    optimizers: &[&OptimizerState],
) -> Result<PathBuf> {
    let root = dir_of(run_dir);
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create '{}'", root.display()))?;
    let fin = root.join(name(state.step));
    let tmp = root.join(format!(".{}.tmp", name(state.step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write_weights(&tmp.join("weights.safetensors"), weights)?;
    for (i, o) in optimizers.iter().enumerate() {
        let d = tmp.join(format!("optimizer-{i}"));
        std::fs::create_dir_all(&d)?;
        o.save(&StatePaths::in_dir(&d))?;
    }
    std::fs::write(tmp.join("trainer.json"), serde_json::to_vec_pretty(state)?)?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin)?;
    }
    std::fs::rename(&tmp, &fin)
        .with_context(|| format!("cannot move checkpoint into '{}'", fin.display()))?;
    Ok(fin)
}

fn write_weights(path: &Path, weights: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = weights
        .iter()
        .map(|(_, _, w)| w.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = weights
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, None)?;
    std::fs::write(path, data).with_context(|| format!("cannot write '{}'", path.display()))
}

/// Reads weights saved by [`save`], checking names and shapes.
pub fn read_weights(dir: &Path, expected: &[(String, Vec<usize>)]) -> Result<Vec<Vec<f32>>> {
    let path = dir.join("weights.safetensors");
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("'{}' is not a valid safetensors file", path.display()))?;
    let mut out = Vec::with_capacity(expected.len());
    for (n, shape) in expected {
        let t = st.tensor(n).with_context(|| format!("'{}' has no tensor '{n}'; the checkpoint belongs to another model or configuration", path.display()))?;
        if t.shape() != shape.as_slice() {
            bail!(
                "'{}': tensor '{n}' has shape {:?}, the model expects {:?}",
                path.display(),
                t.shape(),
                shape
            );
        }
        out.push(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        );
    }
    Ok(out)
}

/// Reads the trainer state of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer.json");
    let s: TrainerState = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("cannot read '{}'", p.display()))?,
    )
    .with_context(|| format!("'{}' is corrupt", p.display()))?;
    if s.format_version != FORMAT_VERSION {
        bail!(
            "'{}' has checkpoint format {}, this koala reads {}",
            p.display(),
            s.format_version,
            FORMAT_VERSION
        );
    }
    Ok(s)
}

/// Loads optimizer group `i` of a checkpoint into `state`.
pub fn read_optimizer(dir: &Path, i: usize, state: &mut OptimizerState) -> Result<()> {
    state.load(&StatePaths::in_dir(dir.join(format!("optimizer-{i}"))))?;
    Ok(())
}

/// Complete checkpoints of a run, by step (temporary directories ignored).
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = dir_of(run_dir);
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&root)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = n.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            out.push((s, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes all but the last `keep` checkpoints and the best one.
pub fn prune(run_dir: &Path, keep: usize, best_step: Option<u64>) -> Result<()> {
    let all = list(run_dir)?;
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep < n && Some(step) != best_step {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove old checkpoint '{}'", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time cadence without waiting: the elapsed time is passed in.
    #[test]
    fn a_checkpoint_is_due_by_steps_at_the_end_and_after_the_time_interval() {
        let c = Cadence::new(100, 10.0);
        let minute = Duration::from_secs(60);
        assert!(!c.due(7, false, 3 * minute), "neither steps nor time");
        assert!(c.due(200, false, Duration::ZERO), "step interval");
        assert!(c.due(7, true, Duration::ZERO), "last step");
        assert!(!c.due(7, false, 10 * minute - Duration::from_millis(1)));
        assert!(
            c.due(7, false, 10 * minute),
            "ten minutes since the last one"
        );
        let off = Cadence::new(100, 0.0);
        assert_eq!(off.interval, None);
        assert!(
            !off.due(7, false, 1000 * minute),
            "0 minutes: time cadence off"
        );
        let fractional = Cadence::new(0, 0.5);
        assert_eq!(fractional.every_steps, 1);
        assert_eq!(fractional.interval, Some(Duration::from_secs(30)));
    }
}
