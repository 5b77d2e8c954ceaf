//! Workloads shared by the optimizer benchmarks (`optim_step`: criterion; `optim_table`:
//! the markdown table for the README): tensor layouts, the optimizers compared, one
//! optimizer step, and the memory-copy bandwidth that serves as the roofline.

#![allow(dead_code)] // each bench target uses a different subset

use std::path::Path;
use std::time::{Duration, Instant};

use koala::optim::{
    build, AdamWConfig, KoalaPPConfig, KoalaPPPath, Optimizer, OptimizerConfig, OptimizerState,
    SgdConfig, StepContext, TensorSpec,
};
use rayon::prelude::*;

/// Parameter counts of the single-tensor sweep.
pub const SIZES: [usize; 4] = [10_000, 100_000, 1_000_000, 10_000_000];

/// Bytes fused KOALA++ moves per parameter (spec §8): pass 1 reads g, θ, H, v (16 B),
/// pass 2 reads them again and writes v, H, θ (28 B).
pub const KOALA_PP_BYTES_PER_PARAM: f64 = 44.0;

/// The optimizers compared, with the settings a vision run would use.
pub fn optimizers() -> Vec<(&'static str, OptimizerConfig)> {
    let koala = |path| {
        OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            path,
            ..match koala::optim::preset("vision-cnn").expect("preset exists") {
                OptimizerConfig::KoalaPlusPlus(c) => c,
                _ => unreachable!("vision-cnn is a KOALA++ preset"),
            }
        })
    };
    vec![
        ("koala++ fused", koala(KoalaPPPath::Fused)),
        ("koala++ literal", koala(KoalaPPPath::Literal)),
        ("adamw", OptimizerConfig::AdamW(AdamWConfig::default())),
        (
            "sgd momentum",
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                ..SgdConfig::default()
            }),
        ),
    ]
}

/// One tensor of n parameters.
pub fn single_tensor(n: usize) -> Vec<TensorSpec> {
    vec![TensorSpec::new("w", [n])]
}

/// MobileNetV2's 158 trainable tensors (3.5 M parameters), read from the gradient
/// reference shipped in the repository so the mix of sizes is the real one.
pub fn mobilenet_v2() -> Vec<TensorSpec> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference/mobilenet_v2/case.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let case: serde_json::Value =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let grads = case["grads"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: `grads` must be an object", path.display()));
    grads
        .iter()
        .map(|(name, g)| {
            let shape = g["shape"]
                .as_array()
                .and_then(|s| {
                    s.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect::<Option<Vec<usize>>>()
                })
                .unwrap_or_else(|| panic!("{}: grads.{name}.shape", path.display()));
            TensorSpec::new(name.clone(), shape)
        })
        .collect::<Vec<TensorSpec>>()
}

/// An optimizer with its state, parameters and (fixed) gradients, ready to step.
pub struct Bench {
    opt: Box<dyn Optimizer>,
    state: OptimizerState,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    step: u64,
}

impl Bench {
    pub fn new(config: &OptimizerConfig, specs: &[TensorSpec]) -> Self {
        let opt = build(config).expect("valid benchmark config");
        let state = opt.init(specs).expect("init");
        let fill = |seed: f32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 * 0.618 + seed).fract() - 0.5) * 0.1)
                .collect()
        };
        Bench {
            opt,
            state,
            params: specs.iter().map(|s| fill(0.1, s.numel())).collect(),
            grads: specs.iter().map(|s| fill(0.7, s.numel())).collect(),
            step: 0,
        }
    }

    pub fn numel(&self) -> usize {
        self.params.iter().map(Vec::len).sum()
    }

    /// One optimizer step. A tiny learning rate keeps the parameters (and so the
    /// arithmetic) in a steady regime however many iterations the harness runs.
    pub fn step(&mut self) {
        self.step += 1;
        let mut params: Vec<&mut [f32]> =
            self.params.iter_mut().map(|p| p.as_mut_slice()).collect();
        let grads: Vec<Option<&[f32]>> = self.grads.iter().map(|g| Some(g.as_slice())).collect();
        let ctx = StepContext {
            loss: 1.0,
            loss_var: 1.0,
            lr: 1e-6,
            step: self.step,
        };
        self.opt
            .step(&mut self.state, &mut params, &grads, &ctx)
            .expect("step");
    }
}

/// Source and destination of the copy-bandwidth measurement.
pub struct Copy {
    src: Vec<f32>,
    dst: Vec<f32>,
}

impl Copy {
    pub fn new(n: usize) -> Self {
        Copy {
            src: vec![1.0; n],
            dst: vec![0.0; n],
        }
    }

    /// Bytes counted per copy: n·4 read + n·4 written (write-allocate traffic not counted).
    pub fn bytes(&self) -> f64 {
        8.0 * self.src.len() as f64
    }

    /// Single-threaded `copy_from_slice`.
    pub fn serial(&mut self) {
        self.dst.copy_from_slice(&self.src);
    }

    /// The same copy split over rayon's threads, as the optimizers are.
    pub fn parallel(&mut self) {
        self.dst
            .par_chunks_mut(1 << 15)
            .zip(self.src.par_chunks(1 << 15))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// Median wall time of `f` over enough repetitions to fill about `budget`.
pub fn median_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm caches and page in buffers
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_micros(1));
    let reps = (budget.as_secs_f64() / once.as_secs_f64()).clamp(5.0, 2000.0) as usize;
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}
