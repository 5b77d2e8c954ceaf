//! Running a training graph: one forward+backward step with the trainable
//! weights read from Rust buffers and the loss, per-sample losses, gradients
//! and model output written into buffers owned here (allocated once).

use crate::proto::DataType;
use crate::training::TrainingGraph;
use anyhow::{bail, Context, Result};
use koala_runtime::{Session, SessionOptions, TensorView, TensorViewMut};
use prost::Message;

/// A data or label batch handed to [`TrainStep::run`].
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// int64 values.
    I64(&'a [i64]),
}

/// Output buffers of one step.
#[derive(Clone, Debug, Default)]
pub struct StepOutputs {
    /// Mean loss.
    pub loss: f32,
    /// Per-sample losses [B].
    pub per_sample: Vec<f32>,
    /// Gradients, one per trainable tensor, in `TrainingGraph::trainable` order.
    pub grads: Vec<Vec<f32>>,
    /// The model output (logits), flattened.
    pub model_output: Vec<f32>,
}

/// A loaded training graph ready to run steps.
pub struct TrainStep {
    session: Session,
    graph: TrainingGraph,
    /// Results of the last [`run`](Self::run).
    pub out: StepOutputs,
    loss_buf: [f32; 1],
}

impl TrainStep {
    /// Creates the ORT session for a training graph.
    pub fn new(graph: TrainingGraph, threads: Option<usize>) -> Result<TrainStep> {
        let opts = SessionOptions {
            intra_threads: threads,
            ..SessionOptions::default()
        };
        let session = Session::from_bytes(&graph.proto.encode_to_vec(), &opts)
            .context("ONNX Runtime could not load the training graph")?;
        let out = StepOutputs {
            loss: 0.0,
            per_sample: vec![0.0; graph.label_shape.first().copied().unwrap_or(1)],
            grads: graph
                .trainable
                .iter()
                .map(|t| vec![0.0; t.shape.iter().product()])
                .collect(),
            model_output: vec![0.0; graph.model_output_shape.iter().product()],
        };
        Ok(TrainStep {
            session,
            graph,
            out,
            loss_buf: [0.0],
        })
    }

    /// The training graph this step runs.
    pub fn graph(&self) -> &TrainingGraph {
        &self.graph
    }

    /// Runs forward + backward. `data` holds one buffer per data input (in
    /// `TrainingGraph::data_inputs` order), `weights` one per trainable tensor.
    pub fn run(&mut self, data: &[Batch], labels: Batch, weights: &[&[f32]]) -> Result<()> {
        let g = &self.graph;
        if data.len() != g.data_inputs.len() || weights.len() != g.trainable.len() {
            bail!(
                "expected {} data buffers and {} weight buffers, got {} and {}",
                g.data_inputs.len(),
                g.trainable.len(),
                data.len(),
                weights.len()
            );
        }
        let mut inputs: Vec<(&str, TensorView)> =
            Vec::with_capacity(data.len() + 1 + weights.len());
        for ((name, shape, _), b) in g.data_inputs.iter().zip(data) {
            inputs.push((name, view(b, shape)));
        }
        inputs.push((&g.labels, view(&labels, &g.label_shape)));
        for (t, w) in g.trainable.iter().zip(weights) {
            inputs.push((&t.name, TensorView::f32(w, &t.shape)));
        }
        let batch_shape = [self.out.per_sample.len()];
        let mut outputs: Vec<(&str, TensorViewMut)> = Vec::with_capacity(3 + g.trainable.len());
        outputs.push((&g.loss, TensorViewMut::f32(&mut self.loss_buf, &[])));
        outputs.push((
            &g.per_sample_loss,
            TensorViewMut::f32(&mut self.out.per_sample, &batch_shape),
        ));
        for (t, buf) in g.trainable.iter().zip(self.out.grads.iter_mut()) {
            outputs.push((&t.grad_output, TensorViewMut::f32(buf, &t.shape)));
        }
        outputs.push((
            &g.model_output,
            TensorViewMut::f32(&mut self.out.model_output, &g.model_output_shape),
        ));
        self.session
            .run_into(&inputs, &mut outputs)
            .context("the training step failed in ONNX Runtime")?;
        self.out.loss = self.loss_buf[0];
        Ok(())
    }
}

fn view<'a>(b: &Batch<'a>, shape: &'a [usize]) -> TensorView<'a> {
    match *b {
        Batch::F32(x) => TensorView::f32(x, shape),
        Batch::I64(x) => TensorView::i64(x, shape),
    }
}

/// The element type a [`Batch`] must have for a data input.
pub fn batch_dtype(b: &Batch) -> DataType {
    match b {
        Batch::F32(_) => DataType::Float,
        Batch::I64(_) => DataType::Int64,
    }
}
