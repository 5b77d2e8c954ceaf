//! `metrics.jsonl`: one JSON object per line, appended as training runs, so
//! users can plot it with anything (pandas, jq, gnuplot) and koala can
//! redraw its PNG from it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of metrics.jsonl.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch (fractional: step / steps per epoch).
    pub epoch: f64,
    /// "train" or "val" (or "test").
    pub split: String,
    /// Mean loss (train: over the logging window; eval: over the split).
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: Option<f64>,
    /// Learning rate used at this step.
    pub lr: Option<f64>,
    /// Global gradient L2 norm (before clipping).
    pub grad_norm: Option<f64>,
    /// Training throughput.
    pub samples_per_sec: Option<f64>,
    /// Training throughput in loss tokens per second (language models; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// exp(mean loss) (language models; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Seconds since the run started (summed over resumed segments).
    pub wall_time: f64,
}

/// Appends records to a metrics file.
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Opens (creating or appending to) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open metrics file '{}'", path.display()))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record (one line, flushed).
    pub fn write(&mut self, r: &MetricRecord) -> Result<()> {
        let line = serde_json::to_string(r)?;
        writeln!(self.file, "{line}")
            .with_context(|| format!("cannot write to '{}'", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// Reads all records of a metrics file (lines that fail to parse are an
/// error naming the line).
pub fn read(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<Vec<MetricRecord>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a metrics record", path.display(), i + 1))
        })
        .collect()
}

/// Drops records past `step` (used on resume: a run interrupted after its
/// last checkpoint logged steps that will be redone). A last line without
/// its newline was cut short by the interruption (every record is written
/// with its newline) and is dropped too.
pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let kept: Vec<MetricRecord> = parse(complete, path)?
        .into_iter()
        .filter(|r| r.step <= step)
        .collect();
    let mut text = String::new();
    for r in kept {
        text.push_str(&serde_json::to_string(&r)?);
        text.push('\n');
    }
    koala_graph::model::write_atomic(path, text.as_bytes())
}
