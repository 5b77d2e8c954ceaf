//! Progress display: a bar with ETA, loss, lr and samples/s on a terminal;
//! plain log lines otherwise (CI logs, pipes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress of the training loop.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress display for `total` steps, starting at `done`.
    pub fn new(total: u64, done: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(done);
        Progress { bar: Some(bar) }
    }

    /// Updates the bar after a step.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64, samples_per_sec: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {samples_per_sec:.1} samples/s"
            ));
        }
    }

    /// A log line (above the bar on a terminal).
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A warning line.
    pub fn note(&self, line: &str) {
        self.log(&format!("warning: {line}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
