//! Running a training graph: one forward+backward step over buffers bound to
//! ONNX Runtime once (koala-runtime's `Runner`).
//!
//! The trainable weights live in the runner's input buffers and the
//! gradients in its output buffers, so a step copies nothing and allocates
//! nothing on koala's side: the data loader's batch is written into the data
//! input, `run` executes, and the optimizer updates the weights in place from
//! the gradients ([`TrainStep::params_and_grads`]).

use crate::proto::DataType;
use crate::training::TrainingGraph;
use anyhow::{bail, Context, Result};
use koala_runtime::{Arena, HostTensor, Runner, Session, SessionOptions};
use prost::Message;

/// A data or label batch handed to [`TrainStep::set_batch`].
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// int64 values.
    I64(&'a [i64]),
    /// uint8 values (raw 0–255 image bytes for a model whose input is uint8 and that
    /// casts and normalises inside).
    U8(&'a [u8]),
}

/// Positions of the graph's tensors in the runner.
#[derive(Clone, Debug)]
struct Slots {
    data: Vec<usize>,
    labels: usize,
    weights: Vec<usize>,
    loss: usize,
    per_sample: usize,
    grads: Vec<usize>,
    model_output: Option<usize>,
    metrics: Vec<usize>,
}

/// A loaded training graph ready to run steps.
pub struct TrainStep {
    runner: Runner,
    graph: TrainingGraph,
    slots: Slots,
}

impl TrainStep {
    /// Creates the ORT session for a training graph and binds its buffers;
    /// the weight inputs start at the model's values.
    pub fn new(graph: TrainingGraph, threads: Option<usize>) -> Result<TrainStep> {
        if let Some(t) = graph.trainable.iter().find(|t| t.dtype != DataType::Float) {
            bail!(
                "weight '{}' is {:?}: koala's training loop holds float32 weights; convert the model to float32 (gradcheck and finite-difference tests handle float64 graphs directly)",
                t.name,
                t.dtype
            );
        }
        if graph.per_sample_loss.is_empty() {
            bail!("the training graph has no per-sample loss output");
        }
        let pattern = memory_pattern_pays(&graph);
        let opts = SessionOptions {
            intra_threads: threads,
            memory_pattern: pattern,
            // Without the pattern planner a large model's step allocates tensor by tensor;
            // the shared exact-growth arena then reserves what the step needs (SmolLM2-135M:
            // 1.3 GiB for a 1.2 GiB peak) instead of ORT's doubling regions (2 GiB).
            arena: if pattern {
                Arena::PowerOfTwo
            } else {
                Arena::Exact
            },
            // The values `recompute.rs` computes again in the backward pass are, to ORT,
            // common subexpressions of the forward ones; merging them would keep the
            // forward values alive again.
            disabled_optimizers: vec!["CommonSubexpressionElimination"],
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&graph.proto.encode_to_vec(), &opts)
            .context("ONNX Runtime could not load the training graph")?;
        let runner = Runner::new(session, &[]).context("binding the training graph's buffers")?;
        let mut graph = graph;
        release_frozen_values(&mut graph.proto);
        let i = |n: &str| runner.input_index(n);
        let o = |n: &str| runner.output_index(n);
        let slots = Slots {
            data: graph
                .data_inputs
                .iter()
                .map(|(n, _, _)| i(n))
                .collect::<Result<_, _>>()?,
            labels: i(&graph.labels)?,
            weights: graph
                .trainable
                .iter()
                .map(|t| i(&t.name))
                .collect::<Result<_, _>>()?,
            loss: o(&graph.loss)?,
            per_sample: o(&graph.per_sample_loss)?,
            grads: graph
                .trainable
                .iter()
                .map(|t| o(&t.grad_output))
                .collect::<Result<_, _>>()?,
            model_output: match graph.model_output.as_str() {
                "" => None,
                name => Some(o(name)?),
            },
            metrics: graph
                .metric_outputs
                .iter()
                .map(|n| o(n))
                .collect::<Result<_, _>>()?,
        };
        let mut step = TrainStep {
            runner,
            graph,
            slots,
        };
        for k in 0..step.graph.trainable.len() {
            let init = std::mem::take(&mut step.graph.trainable[k].init);
            step.weight_mut(k).copy_from_slice(&init);
        }
        Ok(step)
    }

    /// ONNX Runtime's counters for the step's CPU arena: the peak bytes of the activations
    /// and temporaries a step holds at once, and the bytes reserved for them.
    pub fn arena_stats(&self) -> Option<koala_runtime::ArenaStats> {
        self.runner.session().arena_stats()
    }

    /// The training graph this step runs (its `trainable[k].init` is emptied:
    /// the values live in the runner, see [`weight`](Self::weight); so are the values of
    /// its large initializers, which ONNX Runtime holds).
    pub fn graph(&self) -> &TrainingGraph {
        &self.graph
    }

    fn f32_in(&self, idx: usize) -> &[f32] {
        self.runner.inputs()[idx]
            .f32s()
            .expect("weights are float32 inputs")
    }

    /// Current values of trainable tensor `k`.
    pub fn weight(&self, k: usize) -> &[f32] {
        self.f32_in(self.slots.weights[k])
    }

    /// Mutable values of trainable tensor `k` (e.g. to restore a checkpoint).
    pub fn weight_mut(&mut self, k: usize) -> &mut [f32] {
        self.runner
            .input_mut(self.slots.weights[k])
            .f32s_mut()
            .expect("weights are float32 inputs")
    }

    /// Copies a batch into the data input `i` and the labels into the label input.
    pub fn set_batch(&mut self, data: &[Batch], labels: Batch) -> Result<()> {
        if data.len() != self.slots.data.len() {
            bail!(
                "the training graph has {} data inputs, got {} buffers",
                self.slots.data.len(),
                data.len()
            );
        }
        for (k, b) in data.iter().enumerate() {
            let slot = self.slots.data[k];
            copy_into(self.runner.input_mut(slot), b)?;
        }
        copy_into(self.runner.input_mut(self.slots.labels), &labels)
    }

    /// Runs forward + backward on the current batch and weights.
    pub fn run(&mut self) -> Result<()> {
        self.runner
            .run()
            .context("the training step failed in ONNX Runtime")
    }

    /// Convenience for one-off runs (gradcheck, tests): writes the batch and
    /// the weights, then runs.
    pub fn run_with(&mut self, data: &[Batch], labels: Batch, weights: &[&[f32]]) -> Result<()> {
        if weights.len() != self.slots.weights.len() {
            bail!(
                "expected {} weight buffers, got {}",
                self.slots.weights.len(),
                weights.len()
            );
        }
        self.set_batch(data, labels)?;
        for (k, w) in weights.iter().enumerate() {
            let want = self.weight(k).len();
            if want != w.len() {
                bail!(
                    "weight '{}' has {} values, expected {want}",
                    self.graph.trainable[k].name,
                    w.len()
                );
            }
            self.weight_mut(k).copy_from_slice(w);
        }
        self.run()
    }

    /// Mean loss of the last run.
    pub fn loss(&self) -> f32 {
        self.runner
            .output(self.slots.loss)
            .f32s()
            .map(|v| v[0])
            .unwrap_or(f32::NAN)
    }

    /// Per-sample losses of the last run.
    pub fn per_sample(&self) -> &[f32] {
        self.runner
            .output(self.slots.per_sample)
            .f32s()
            .expect("float32 output")
    }

    /// The int64 labels of the current batch (class indices, next-token ids), or `None` when
    /// the graph's labels are not int64 (MSE targets).
    pub fn labels(&self) -> Option<&[i64]> {
        self.runner.inputs()[self.slots.labels].i64s().ok()
    }

    /// Gradient of trainable tensor `k` from the last run.
    pub fn grad(&self, k: usize) -> &[f32] {
        self.runner
            .output(self.slots.grads[k])
            .f32s()
            .expect("float32 output")
    }

    /// The model output (logits) of the last run, flattened (empty when
    /// the graph was built without it, see `TrainingSpec::omit_model_output`).
    pub fn model_output(&self) -> &[f32] {
        match self.slots.model_output {
            Some(slot) => self.runner.output(slot).f32s().expect("float32 output"),
            None => &[],
        }
    }

    /// The value of metric output `k` (`TrainingGraph::metric_outputs[k]`)
    /// from the last run.
    pub fn metric(&self, k: usize) -> f32 {
        self.runner
            .output(self.slots.metrics[k])
            .f32s()
            .expect("float32 output")[0]
    }

    /// All weights (mutable) and their gradients, in trainable order, for an
    /// optimizer step in place.
    pub fn params_and_grads(&mut self) -> (Vec<&mut [f32]>, Vec<&[f32]>) {
        let (inputs, outputs) = self.runner.io_mut();
        let mut by_slot: Vec<Option<&mut HostTensor>> = inputs.iter_mut().map(Some).collect();
        let params = self
            .slots
            .weights
            .iter()
            .map(|&s| {
                by_slot[s]
                    .take()
                    .expect("distinct slots")
                    .f32s_mut()
                    .expect("float32")
            })
            .collect();
        let grads = self
            .slots
            .grads
            .iter()
            .map(|&s| outputs[s].f32s().expect("float32"))
            .collect();
        (params, grads)
    }

    /// All weights (mutable), in trainable order (KOALA-M/V `predict`).
    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.params_and_grads().0
    }
}

/// Models with at least this many weights (frozen or trained) run without ORT's
/// memory-pattern planner; see [`memory_pattern_pays`].
pub const MEMORY_PATTERN_MAX_WEIGHTS: usize = 64 << 20;

/// Whether ORT's memory-pattern planner is on for this training graph: yes for models
/// below [`MEMORY_PATTERN_MAX_WEIGHTS`] weights, no above.
///
/// The planner puts every planned intermediate of the first run in one block and keeps
/// the arena beside it. Measured (README, "Training step", 2 threads): SmolLM2-135M at
/// 4 × 128 tokens, full fine-tune, peaked 1.5 GiB lower without it at the same step time
/// (122 vs 121 tokens/s); MobileNetV2 (3.5 M weights, batch 16 at 96 px) stepped 6 %
/// faster with it (107–110 vs 113–117 ms) for a small plan. The weight count stands in for
/// the size of the plan, which grows with the model.
fn memory_pattern_pays(graph: &TrainingGraph) -> bool {
    let frozen: usize = graph.proto.graph.as_ref().map_or(0, |g| {
        g.initializer
            .iter()
            .map(|t| crate::tensor::numel(&t.dims))
            .sum()
    });
    let trained: usize = graph.trainable.iter().map(|t| t.init.len()).sum();
    pattern_pays_for(frozen + trained)
}

/// The rule of [`memory_pattern_pays`] for a model of `weights` weights (frozen and trained).
fn pattern_pays_for(weights: usize) -> bool {
    weights < MEMORY_PATTERN_MAX_WEIGHTS
}

/// Frees the values of the graph's large initializers (the frozen weights: a LoRA run's whole
/// base model) once ONNX Runtime holds its own copy: nothing reads them from the proto
/// again, and [`TrainStep::graph`] keeps the nodes and names.
fn release_frozen_values(proto: &mut crate::proto::ModelProto) {
    let Some(g) = proto.graph.as_mut() else {
        return;
    };
    for t in &mut g.initializer {
        if crate::tensor::numel(&t.dims) > crate::facts::MAX_KEPT_INTS {
            crate::tensor::release_values(t);
        }
    }
}

fn copy_into(dst: &mut HostTensor, src: &Batch) -> Result<()> {
    let name = dst.name().to_string();
    match src {
        Batch::F32(x) => copy_checked(&name, dst.f32s_mut()?, x),
        Batch::I64(x) => copy_checked(&name, dst.i64s_mut()?, x),
        Batch::U8(x) => copy_checked(&name, dst.u8s_mut()?, x),
    }
}

fn copy_checked<T: Copy>(name: &str, dst: &mut [T], src: &[T]) -> Result<()> {
    if dst.len() != src.len() {
        bail!(
            "input '{name}' takes {} values, the batch has {}",
            dst.len(),
            src.len()
        );
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// The element type a [`Batch`] must have for a data input.
pub fn batch_dtype(b: &Batch) -> DataType {
    match b {
        Batch::F32(_) => DataType::Float,
        Batch::I64(_) => DataType::Int64,
        Batch::U8(_) => DataType::Uint8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    use crate::training::value_info;
    use crate::{LossSpec, Model, TrainingSpec};

    /// `logits = Cast(input_ids → float) · W`: a graph whose data input is int64 token ids
    /// [B, T], as a language model's is (the ids reach the weights through a Cast here, so no
    /// gradient rule beyond MatMul is needed).
    fn int64_input_model(b: usize, t: usize, c: usize, w: &[f32]) -> Model {
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            ..Default::default()
        };
        let mut cast = node("Cast", &["input_ids"], "x");
        cast.attribute
            .push(crate::attrs::a_int("to", DataType::Float as i64));
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "ids".into(),
                node: vec![cast, node("MatMul", &["x", "W"], "logits")],
                initializer: vec![crate::tensor::from_f32("W", &[t as i64, c as i64], w)],
                input: vec![value_info("input_ids", DataType::Int64, &[b, t])],
                output: vec![value_info("logits", DataType::Float, &[b, c])],
                ..Default::default()
            }),
            ..Default::default()
        };
        Model::from_proto(proto).unwrap()
    }

    /// MobileNetV2 (3.5 M weights) keeps ORT's memory-pattern planner and its own arena;
    /// SmolLM2-135M (134.5 M) runs without the planner, on the shared exact-growth arena.
    #[test]
    fn the_memory_pattern_is_for_models_below_64m_weights() {
        assert!(pattern_pays_for(3_504_872));
        assert!(pattern_pays_for(MEMORY_PATTERN_MAX_WEIGHTS - 1));
        assert!(!pattern_pays_for(MEMORY_PATTERN_MAX_WEIGHTS));
        assert!(!pattern_pays_for(134_515_008));
        let model = int64_input_model(2, 3, 4, &[0.0; 12]);
        let spec = TrainingSpec {
            input_shapes: [("input_ids".to_string(), vec![2, 3])]
                .into_iter()
                .collect(),
            probe_threads: 1,
            ..TrainingSpec::default()
        };
        assert!(memory_pattern_pays(&crate::build(&model, &spec).unwrap()));
    }

    #[test]
    fn int64_token_ids_and_labels_feed_a_training_step() {
        let (b, t, c) = (2, 3, 4);
        let w: Vec<f32> = (0..t * c).map(|i| 0.1 * i as f32 - 0.5).collect();
        let model = int64_input_model(b, t, c, &w);
        let spec = TrainingSpec {
            input_shapes: [("input_ids".to_string(), vec![b, t])]
                .into_iter()
                .collect(),
            loss: LossSpec::default(),
            probe_threads: 1,
            ..TrainingSpec::default()
        };
        let graph = crate::build(&model, &spec).unwrap();
        assert_eq!(graph.data_inputs[0].2, DataType::Int64);
        let mut step = TrainStep::new(graph, Some(1)).unwrap();
        let ids: [i64; 6] = [1, 0, 2, 3, 1, 1];
        let labels: [i64; 2] = [2, 0];
        step.set_batch(&[Batch::I64(&ids)], Batch::I64(&labels))
            .unwrap();
        step.run().unwrap();
        assert_eq!(step.labels(), Some(&labels[..]));
        // Reference in f64: dL/dW = xᵀ (softmax(xW) − onehot(y)) / B for the mean
        // cross-entropy.
        let mut want = vec![0.0f64; t * c];
        for r in 0..b {
            let x: Vec<f64> = ids[r * t..(r + 1) * t].iter().map(|&v| v as f64).collect();
            let z: Vec<f64> = (0..c)
                .map(|j| (0..t).map(|i| x[i] * w[i * c + j] as f64).sum())
                .collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for i in 0..t {
                for j in 0..c {
                    let d = e[j] / s - (j as i64 == labels[r]) as i64 as f64;
                    want[i * c + j] += x[i] * d / b as f64;
                }
            }
        }
        // f32 arithmetic on values of order 1: a few ulps, far below 1e-5.
        let bad: Vec<String> = step
            .grad(0)
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (g, w))| (**g as f64 - **w).abs() > 1e-5)
            .map(|(i, (g, w))| format!("W[{i}]: got {g}, want {w}"))
            .collect();
        assert!(
            bad.is_empty(),
            "tolerance 1e-5 (f32 rounding):\n{}",
            bad.join("\n")
        );
    }
}
