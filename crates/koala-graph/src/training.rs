//! Assembles the training graph: forward + loss head + backward, as one ONNX
//! model that stock ONNX Runtime runs.
//!
//! Inputs: `[data…, labels, trainable weights…]`; frozen weights stay
//! initializers. Outputs: `[loss, per_sample_loss, <weight>_grad…, <model
//! output>]` — the model output (logits) comes last so a trainer can report
//! accuracy without a second forward pass.

use crate::backward::{self, BackwardOptions, ExecutionTarget, GradCtx};
use crate::facts::Facts;
use crate::loss::{self, LossSpec};
use crate::model::Model;
use crate::probe::{self, InputShapes};
use crate::proto::{
    dimension, type_proto, DataType, Dimension, ModelProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::tensor;
use crate::tied::{self, TiedCopy};
use crate::trainable::{self, TrainableSpec};
use anyhow::{bail, Context, Result};
use std::collections::HashSet;

/// Everything needed to build a training graph.
#[derive(Clone, Debug, Default)]
pub struct TrainingSpec {
    /// Concrete shapes of the data inputs (batch size fixed).
    pub input_shapes: InputShapes,
    /// Loss head.
    pub loss: LossSpec,
    /// The value the loss reads (default: the first graph output). For a
    /// classifier ending in Softmax this is the Softmax's input (see
    /// `classifier_output.rs`).
    pub output: Option<String>,
    /// The value returned as the training graph's `model_output` (accuracy,
    /// export check), default: `output`. A classifier reports the graph
    /// output the user ships (e.g. the probabilities) while the loss reads
    /// the logits before it.
    pub reported_output: Option<String>,
    /// Which weights train.
    pub trainable: TrainableSpec,
    /// Backward formulation choices.
    pub backward: BackwardOptions,
    /// Threads for the shape probe.
    pub probe_threads: usize,
    /// Leave the model output out of the training graph's outputs. A
    /// language model's logits are `B·T·V` floats (e.g. 8·256·49152 = 400 MB
    /// in f32) that the loop never needs: its metrics come from the loss
    /// head's scalar outputs instead.
    pub omit_model_output: bool,
}

/// A trainable tensor of the training graph.
#[derive(Clone, Debug)]
pub struct TrainableTensor {
    /// Initializer name in the original model (= training graph input name).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Initial values from the model.
    pub init: Vec<f32>,
    /// Element type of the weight: the training graph's input and gradient
    /// output have it too (f32 for almost every model; an f64 model's
    /// weights are fed and returned as f64).
    pub dtype: DataType,
    /// Name of its gradient output.
    pub grad_output: String,
}

/// The built training graph and how to feed it.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// The ONNX model to run.
    pub proto: ModelProto,
    /// Data inputs with their fixed shapes and types.
    pub data_inputs: Vec<(String, Vec<usize>, DataType)>,
    /// Name of the label input (stable: `labels`).
    pub labels: String,
    /// Label element type (int64 for cross-entropy, float for MSE).
    pub label_dtype: DataType,
    /// Label shape.
    pub label_shape: Vec<usize>,
    /// Trainable tensors, in graph input order.
    pub trainable: Vec<TrainableTensor>,
    /// Output name of the scalar loss (`loss`).
    pub loss: String,
    /// Output name of the per-sample losses (`per_sample_loss`).
    pub per_sample_loss: String,
    /// Output name of the model output (logits) in the training graph
    /// (empty when the spec omitted it).
    pub model_output: String,
    /// Shape of the model output (empty when omitted).
    pub model_output_shape: Vec<usize>,
    /// Extra scalar outputs of the loss head for metrics (e.g.
    /// `token_count`, `token_correct`), by output name.
    pub metric_outputs: Vec<String>,
    /// Selected weights that turned out to have no path to the loss; they
    /// stay frozen (initializers) and are listed for the user.
    pub unreachable: Vec<String>,
    /// Float Constant nodes promoted to trainable initializers.
    pub promoted_constants: Vec<String>,
    /// Initializers that duplicated a trained tensor (a tied embedding
    /// written twice): trained as their canonical tensor, written back to
    /// both on export (see `tied.rs`).
    pub tied: Vec<TiedCopy>,
    /// The target the graph was written for, after fallback (`Ort` asked on a runtime
    /// without blocked kernels gives `Portable`).
    pub target: ExecutionTarget,
    /// What the `ort` target's blocked-kernel pass changed (None for `portable`).
    pub nchwc: Option<crate::nchwc::NchwcStats>,
}

/// Names of the fixed outputs.
pub const LOSS: &str = "loss";
/// Per-sample loss output.
pub const PER_SAMPLE_LOSS: &str = "per_sample_loss";
/// Label input.
pub const LABELS: &str = "labels";

/// Gradient output name of a weight.
pub fn grad_name(weight: &str) -> String {
    format!("{weight}_grad")
}

/// Builds the training graph of `model`.
pub fn build(model: &Model, spec: &TrainingSpec) -> Result<TrainingGraph> {
    let mut model = model.clone();
    let promoted: Vec<String> = if spec.trainable.train_constants {
        trainable::promote_constants(&mut model)
            .into_iter()
            .map(|p| p.value)
            .collect()
    } else {
        Vec::new()
    };
    // Lower, then differentiate: ORT-domain fusions (RMSNorm, SkipLayerNorm,
    // FastGelu, RotaryEmbedding…) become standard ops that have rules. The
    // export keeps the user's original graph.
    // Ops it cannot lower stay; if one lies between a weight and the loss,
    // the backward pass names it (ORT still runs those off the path).
    // Opset 7–10 models: the training copy is upgraded to opset 17 (export
    // keeps the user's opset); initializers listed as inputs leave the inputs.
    crate::upgrade::upgrade(&mut model)?;
    let lowered = crate::lower::lower(&mut model)?;
    let mut selected = trainable::select(&model, &spec.trainable)?;
    // Rotary cos/sin tables are constants of the architecture, not weights.
    selected.retain(|w| !lowered.fixed_tables.contains(w));
    // A copy of a tied weight follows its canonical tensor: trained as one
    // when the canonical one trains (export writes both, see export.rs).
    let tied: Vec<TiedCopy> = tied::find(&model)
        .into_iter()
        .filter(|c| selected.contains(&c.canonical))
        .collect();
    tied::tie(&mut model, &tied);
    selected.retain(|w| !tied.iter().any(|c| &c.copy == w));
    if selected.is_empty() {
        let (why, fix) = trainable::nothing_selected(&model, &spec.trainable);
        bail!("{}: {why}; {fix}", model.display_name());
    }
    let output = match &spec.output {
        Some(o) => o.clone(),
        None => model.graph().output[0].name.clone(),
    };
    check_names(&model, &selected)?;
    // After selection (which knows BN statistics by their BN node).
    if !spec.backward.keep_batchnorm {
        crate::fold::fold_batchnorm_into_conv(&mut model);
    }
    // Linear layers written as MatMul(x, Transpose(W)) would keep a transposed copy of
    // each weight alive until its backward; as Gemm(transB) there is none.
    crate::transposed_matmul::matmul_by_transposed_to_gemm(&mut model);
    let refusals = crate::backward::lrn_ort_refusals(&model);
    if !refusals.is_empty() {
        bail!("{}: {}", model.display_name(), refusals.join("\n"));
    }
    let data_inputs = data_inputs(&model, &spec.input_shapes)?;
    let mut facts: Facts = match probe::probe(&model, &spec.input_shapes, spec.probe_threads.max(1))
    {
        Ok(f) => f,
        // ORT cannot even run a custom op it does not know: name the node
        // and the remedy rather than pass on ORT's registry message.
        Err(e) if !lowered.left.is_empty() => bail!(
            "{}: {} (ONNX Runtime: {e:#})",
            model.display_name(),
            crate::lower::unrunnable_message(&lowered.left)
        ),
        Err(e) => return Err(e),
    };
    if facts.get(&output).is_none() {
        bail!("the model has no value named '{output}' to put the loss on");
    }
    let reported = spec
        .reported_output
        .clone()
        .unwrap_or_else(|| output.clone());
    if facts.get(&reported).is_none() {
        bail!("the model has no value named '{reported}' to report as its output");
    }
    let g = model.graph();
    let mut ctx = GradCtx::new(&mut facts, model.opset());
    // A Softmax over `[N, C, 1, 1]` followed by Flatten: the logits have the
    // reported output's elements in another shape. The loss reads them in
    // the output's shape, and the seed goes back through the same Reshape.
    // A conv head's `[N, C, 1, 1]` (SqueezeNet, DenseNet) is read as `[N, C]`:
    // the cross-entropy takes the last axis as the classes.
    let (loss_input, seed_shape) = {
        let (at, mut to) = (ctx.shape(&output)?, ctx.shape(&reported)?);
        let pooled_map = to.len() > 2 && to[2..].iter().all(|&d| d == 1);
        if matches!(spec.loss, LossSpec::SoftmaxCrossEntropy { .. }) && pooled_map {
            to.truncate(2);
        }
        let numel = |s: &[usize]| s.iter().product::<usize>();
        if at != to && numel(&at) == numel(&to) {
            (ctx.reshape(&output, &to)?, Some(at))
        } else {
            (output.clone(), None)
        }
    };
    let mut head = loss::append(&mut ctx, &spec.loss, &loss_input, LABELS)?;
    if let Some(shape) = seed_shape {
        head.seed = ctx.reshape(&head.seed, &shape)?;
    }
    let loss_nodes = ctx.nodes.len();
    let n_forward = g.node.len();
    let grads = backward::differentiate(
        &mut ctx,
        &g.node,
        &selected,
        &output,
        &head.seed,
        &spec.backward,
    )?;

    let mut trainable = Vec::new();
    let mut unreachable = Vec::new();
    let mut outputs_tail = Vec::new();
    for (w, gname) in selected.iter().zip(grads) {
        match gname {
            Some(gv) => {
                let out = grad_name(w);
                ctx.emit_into("Identity", &[&gv], &[&out], vec![]);
                let t = g
                    .initializer
                    .iter()
                    .find(|t| &t.name == w)
                    .expect("selected from initializers");
                let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
                let init = tensor::to_f32(t)?;
                let dtype = tensor::data_type(t)?;
                outputs_tail.push(value_info(&out, dtype, &shape));
                trainable.push(TrainableTensor {
                    name: w.clone(),
                    shape,
                    init,
                    dtype,
                    grad_output: out,
                });
            }
            None => unreachable.push(w.clone()),
        }
    }
    if trainable.is_empty() {
        bail!("none of the selected weights influences the output '{output}'; nothing to train");
    }
    let out_fact = ctx.shape(&reported)?;
    let out_dt = ctx.dtype(&output)?;
    let reported_dt = ctx.dtype(&reported)?;
    let batch = ctx.shape(&output)?.first().copied().unwrap_or(1);
    let (new_nodes, new_inits) = (
        std::mem::take(&mut ctx.nodes),
        std::mem::take(&mut ctx.initializers),
    );
    drop(ctx);

    let train_set: HashSet<&str> = trainable.iter().map(|t| t.name.as_str()).collect();
    let mut proto = model.proto.clone();
    proto.ir_version = proto.ir_version.max(4);
    let pg = proto.graph.as_mut().unwrap();
    pg.initializer
        .retain(|t| !train_set.contains(t.name.as_str()));
    pg.initializer.extend(new_inits);
    let init_names: HashSet<String> = pg.initializer.iter().map(|t| t.name.clone()).collect();
    // Inputs: data (fixed shapes), labels, trainable weights.
    let mut inputs: Vec<ValueInfoProto> = data_inputs
        .iter()
        .map(|(n, s, d)| value_info(n, *d, s))
        .collect();
    inputs.push(value_info(LABELS, head.label_dtype, &head.label_shape));
    inputs.extend(
        trainable
            .iter()
            .map(|t| value_info(&t.name, t.dtype, &t.shape)),
    );
    pg.input = inputs;
    pg.input.retain(|i| !init_names.contains(&i.name));
    pg.node.extend(new_nodes.iter().take(loss_nodes).cloned());
    pg.node.push(identity(&head.loss, LOSS));
    pg.node.push(identity(&head.per_sample, PER_SAMPLE_LOSS));
    for (name, value) in &head.metrics {
        pg.node.push(identity(value, name));
    }
    pg.node.extend(new_nodes.into_iter().skip(loss_nodes));
    if spec.backward.recompute {
        let available: HashSet<String> = pg
            .input
            .iter()
            .map(|i| i.name.clone())
            .chain(pg.initializer.iter().map(|t| t.name.clone()))
            .collect();
        for (original, clone) in
            crate::recompute::recompute_in_backward(&mut pg.node, n_forward, &available)
        {
            if let Some(fact) = facts.get(&original).cloned() {
                facts.insert(&clone, fact);
            }
        }
    }
    let mut outs = vec![
        value_info(LOSS, out_dt, &[]),
        value_info(PER_SAMPLE_LOSS, out_dt, &[batch]),
    ];
    outs.extend(head.metrics.iter().map(|(n, _)| value_info(n, out_dt, &[])));
    outs.extend(outputs_tail);
    let (model_out, out_fact) = if spec.omit_model_output {
        (String::new(), Vec::new())
    } else {
        let model_out = "model_output".to_string();
        pg.node.push(identity(&reported, &model_out));
        outs.push(value_info(&model_out, reported_dt, &out_fact));
        (model_out, out_fact)
    };
    pg.output = outs;
    pg.value_info.clear();
    let block = match spec.backward.target {
        ExecutionTarget::Ort => crate::nchwc::block_size(),
        ExecutionTarget::Portable => None,
    };
    let nchwc = match block {
        Some(block) => {
            let mut ctx = GradCtx::new(&mut facts, model.opset());
            let outputs: Vec<String> = pg.output.iter().map(|o| o.name.clone()).collect();
            let nodes = std::mem::take(&mut pg.node);
            let (nodes, stats) = crate::nchwc::lower(&mut ctx, nodes, &outputs, block)?;
            pg.node = nodes;
            pg.initializer.append(&mut ctx.initializers);
            crate::nchwc::import_domain(&mut proto.opset_import);
            Some(stats)
        }
        None => None,
    };
    let target = if nchwc.is_some() {
        ExecutionTarget::Ort
    } else {
        ExecutionTarget::Portable
    };
    Ok(TrainingGraph {
        proto,
        data_inputs,
        labels: LABELS.into(),
        label_dtype: head.label_dtype,
        label_shape: head.label_shape,
        trainable,
        loss: LOSS.into(),
        per_sample_loss: PER_SAMPLE_LOSS.into(),
        model_output: model_out,
        model_output_shape: out_fact,
        metric_outputs: head.metrics.iter().map(|(n, _)| n.to_string()).collect(),
        unreachable,
        promoted_constants: promoted,
        tied,
        target,
        nchwc,
    })
}

fn identity(from: &str, to: &str) -> NodeProto {
    NodeProto {
        op_type: "Identity".into(),
        input: vec![from.into()],
        output: vec![to.into()],
        name: format!("koala_out/{to}"),
        ..Default::default()
    }
}

/// The reserved names must not clash with the model's own values.
fn check_names(model: &Model, selected: &[String]) -> Result<()> {
    let g = model.graph();
    let mut names: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(|s| s.as_str()))
        .collect();
    names.extend(g.input.iter().map(|i| i.name.as_str()));
    names.extend(g.initializer.iter().map(|i| i.name.as_str()));
    let mut reserved = vec![
        LOSS.to_string(),
        PER_SAMPLE_LOSS.to_string(),
        LABELS.to_string(),
        "model_output".into(),
        crate::loss::TOKEN_COUNT.into(),
        crate::loss::TOKEN_CORRECT.into(),
    ];
    reserved.extend(selected.iter().map(|w| grad_name(w)));
    for r in reserved {
        if names.contains(r.as_str()) {
            bail!("{} already has a value named '{r}', which koala's training graph reserves; rename it in the model", model.display_name());
        }
    }
    Ok(())
}

/// Graph inputs that are data (not initializers), with the shapes given.
fn data_inputs(model: &Model, shapes: &InputShapes) -> Result<Vec<(String, Vec<usize>, DataType)>> {
    let g = model.graph();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = Vec::new();
    for i in g.input.iter().filter(|i| !inits.contains(i.name.as_str())) {
        let shape = shapes
            .get(&i.name)
            .with_context(|| format!("no shape given for model input '{}'", i.name))?;
        let declared = declared_dims(i);
        if declared.len() != shape.len() && !declared.is_empty() {
            bail!(
                "model input '{}' has rank {} but the data has shape {:?}",
                i.name,
                declared.len(),
                shape
            );
        }
        for (k, (d, &s)) in declared.iter().zip(shape).enumerate() {
            if let Some(d) = d {
                if *d as usize != s && k == 0 {
                    // Models exported with a fixed batch (often 1) still
                    // train: batches of that size, accumulated.
                    bail!("model input '{}' has a fixed batch size of {d} but koala was asked for batches of {s}; pass --batch-size {d} (with --accumulate N for an effective batch of {d}·N), or re-export the model with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={{'{}': {{0: 'batch'}}}}))", i.name, i.name);
                }
                if *d as usize != s {
                    bail!("model input '{}' has size {d} on axis {k} but the data has {s} (shape {:?}); resize the data to the model's input", i.name, shape);
                }
            }
        }
        out.push((
            i.name.clone(),
            shape.clone(),
            probe::input_dtype(i).unwrap_or(DataType::Float),
        ));
    }
    Ok(out)
}

/// Declared dimensions of a graph input (None for symbolic ones).
pub fn declared_dims(v: &ValueInfoProto) -> Vec<Option<i64>> {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(v)) if *v > 0 => Some(*v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// A tensor ValueInfo with a static shape.
pub fn value_info(name: &str, dt: DataType, shape: &[usize]) -> ValueInfoProto {
    let dims = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
