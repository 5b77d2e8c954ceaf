//! Session options and the default thread count.

use crate::Arena;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// How much ONNX Runtime may rewrite the graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizationLevel {
    /// No rewrites (useful to check that an optimisation changes nothing).
    Disable,
    /// Constant folding and redundant-node elimination.
    Basic,
    /// Plus node fusions.
    Extended,
    /// Every optimisation, including layout changes (ONNX Runtime's default).
    #[default]
    All,
}

/// Options for [`crate::Session`].
///
/// Inter-op parallelism is fixed at one thread: koala runs graphs sequentially (ORT's default
/// execution mode), where ORT does not use an inter-op pool at all, so more threads would only
/// idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads inside one operator; `None` means the number of physical cores, which is what
    /// ONNX Runtime itself recommends (hyper-threads slow down its compute-bound kernels).
    pub intra_threads: Option<usize>,
    /// Graph optimisation level; default [`OptimizationLevel::All`].
    pub optimization: OptimizationLevel,
    /// ONNX Runtime's memory pattern planner (preallocates one arena per input shape); on by
    /// default. Turn it off when input shapes change from call to call.
    pub memory_pattern: bool,
    /// Whether ORT's intra-op workers busy-wait for more work after a run (ORT's own
    /// default). Off by default here: koala alternates ORT runs with Rust work on the same
    /// cores (the optimizer step, image decoding), and spinning workers steal those cores.
    /// Measured on the main job (2 cores, 40 steps): the optimizer's time inside the loop
    /// fell from 0.33–0.36 s to 0.09–0.11 s and throughput rose 4–5 %, ORT's own time
    /// unchanged.
    pub spinning: bool,
    /// Which CPU arena holds the session's intermediate tensors; default
    /// [`Arena::PowerOfTwo`], the session's own.
    pub arena: Arena,
    /// ONNX Runtime graph optimizers to skip, by name (e.g.
    /// `CommonSubexpressionElimination`, which would merge the values a training graph
    /// recomputes back into the ones it means not to keep).
    pub disabled_optimizers: Vec<&'static str>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_threads: None,
            optimization: OptimizationLevel::All,
            memory_pattern: true,
            spinning: false,
            arena: Arena::PowerOfTwo,
            disabled_optimizers: Vec::new(),
        }
    }
}

impl SessionOptions {
    /// The intra-op thread count these options resolve to.
    pub fn resolved_intra_threads(&self) -> usize {
        self.intra_threads.unwrap_or_else(physical_cores).max(1)
    }

    /// Applies the options to an `ort` session builder; `context` names the model for errors.
    pub(crate) fn apply(
        &self,
        builder: SessionBuilder,
        context: &str,
    ) -> crate::Result<SessionBuilder> {
        let level = match self.optimization {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        };
        let err = |what: &str| {
            let context = format!("{context}: setting {what}");
            move |e: ort::Error<SessionBuilder>| crate::Error::ort(context, e)
        };
        let builder = match self.arena {
            Arena::PowerOfTwo => builder,
            Arena::Exact => {
                crate::arena::ensure_exact_arena()?;
                builder
                    .with_env_allocators()
                    .map_err(err("the shared CPU arena"))?
            }
        };
        let builder = if self.disabled_optimizers.is_empty() {
            builder
        } else {
            builder
                .with_disabled_optimizers(self.disabled_optimizers.join(";"))
                .map_err(err("the disabled optimizers"))?
        };
        builder
            .with_intra_threads(self.resolved_intra_threads())
            .map_err(err("the intra-op thread count"))?
            .with_inter_threads(1)
            .map_err(err("the inter-op thread count"))?
            .with_optimization_level(level)
            .map_err(err("the optimization level"))?
            .with_memory_pattern(self.memory_pattern)
            .map_err(err("the memory pattern option"))?
            .with_intra_op_spinning(self.spinning)
            .map_err(err("the intra-op spinning option"))?
            // Subnormal floats flushed to zero (`session.set_denormal_as_zero`): fine-tuning
            // drives some weights and gradients into subnormals, where x86 kernels slow down
            // by ~100×; the README's main job with KOALA++ took 44–49 s in ONNX Runtime
            // without this and 38 s with it (AdamW 38–40 s), accuracy and loss unchanged.
            .with_flush_to_zero()
            .map_err(err("flush-to-zero"))
    }
}

/// Number of physical cores: distinct (physical id, core id) pairs in `/proc/cpuinfo`, falling
/// back to the number of logical CPUs where that file is missing or says nothing.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| count_physical_cores(&text))
        .map_or(logical, |n| n.min(logical))
}

/// Counts distinct (physical id, core id) pairs; `None` if the text has no core ids.
fn count_physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = "";
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "physical id" => physical = value.trim(),
            "core id" => {
                cores.insert((physical.to_string(), value.trim().to_string()));
            }
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperthreads_count_once() {
        let text = "processor: 0\nphysical id: 0\ncore id: 0\n\nprocessor: 1\nphysical id: 0\ncore id: 0\n\n\
                    processor: 2\nphysical id: 0\ncore id: 1\n\nprocessor: 3\nphysical id: 1\ncore id: 0\n";
        assert_eq!(count_physical_cores(text), Some(3));
        assert_eq!(count_physical_cores("processor: 0\n"), None);
    }

    #[test]
    fn default_threads_are_physical_cores_and_at_least_one() {
        let opts = SessionOptions::default();
        assert_eq!(opts.resolved_intra_threads(), physical_cores().max(1));
        let zero = SessionOptions {
            intra_threads: Some(0),
            ..SessionOptions::default()
        };
        assert_eq!(zero.resolved_intra_threads(), 1);
    }
}
