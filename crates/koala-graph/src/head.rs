//! Replacing the final classifier ("head") for a new number of classes.
//!
//! The head is the Gemm, or MatMul followed by Add, that produces the chosen
//! graph output's logits (see `classifier_output.rs`: through
//! Identity/Flatten/Reshape and a final Softmax/LogSoftmax). Its weight and bias
//! keep their names (so export stays recognisable) and get new shapes and a
//! fresh initialisation, reproducible from a seed: PyTorch's nn.Linear
//! default, U(−1/√fan_in, 1/√fan_in) for both.

use crate::classifier_output::ClassifierOutput;
use crate::model::{node_label, Model};
use crate::proto::{dimension, type_proto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What was replaced.
#[derive(Clone, Debug)]
pub struct HeadReplacement {
    /// The node label of the head.
    pub node: String,
    /// Weight initializer name.
    pub weight: String,
    /// Bias initializer name, if any.
    pub bias: Option<String>,
    /// Old and new number of outputs.
    pub classes: (usize, usize),
}

/// Replaces the head that produces `choice`'s logits by a fresh one with
/// `classes` outputs.
pub fn replace_head(
    model: &mut Model,
    choice: &ClassifierOutput,
    classes: usize,
    seed: u64,
) -> Result<HeadReplacement> {
    if classes < 1 {
        bail!("--num-classes must be at least 1");
    }
    let name = model.display_name();
    let resized = crate::classifier_output::outputs_of_logits(model, &choice.logits);
    let g = model.graph();
    let mut value = choice.logits.clone();
    // Walk back through shape-only nodes to the producing Gemm/Add.
    let producer = |v: &str| g.node.iter().position(|n| n.output.iter().any(|o| o == v));
    let mut idx =
        producer(&value).with_context(|| format!("{name}: no node produces output '{value}'"))?;
    while matches!(
        g.node[idx].op_type.as_str(),
        "Identity" | "Flatten" | "Reshape" | "Squeeze"
    ) {
        value = g.node[idx].input[0].clone();
        idx = producer(&value).with_context(|| format!("{name}: no node produces '{value}'"))?;
    }
    let node = g.node[idx].clone();
    let is_init = |v: &str| g.initializer.iter().any(|t| t.name == v);
    let (weight, bias, w_rows_are_outputs) = match node.op_type.as_str() {
        "Gemm" if is_init(&node.input[1]) => {
            let trans_b = crate::attrs::int(&node, "transB", 0) != 0;
            (node.input[1].clone(), node.input.get(2).filter(|b| is_init(b)).cloned(), trans_b)
        }
        "Add" => {
            let (mm, b) = if is_init(&node.input[1]) { (&node.input[0], &node.input[1]) } else { (&node.input[1], &node.input[0]) };
            let mi = producer(mm).filter(|&i| g.node[i].op_type == "MatMul" && is_init(&g.node[i].input[1]));
            match mi {
                Some(i) if is_init(b) => (g.node[i].input[1].clone(), Some(b.clone()), false),
                _ => bail!("{name}: the output comes from {}, which is not MatMul+Add with initializer weights; koala cannot find the classifier to replace", node_label(idx, &node)),
            }
        }
        "MatMul" if is_init(&node.input[1]) => (node.input[1].clone(), None, false),
        _ => bail!("{name}: the output comes from {}, not from a Gemm or MatMul(+Add) classifier; koala cannot replace the head", node_label(idx, &node)),
    };
    let gm = model.graph_mut();
    let wt = gm
        .initializer
        .iter_mut()
        .find(|t| t.name == weight)
        .unwrap();
    if wt.dims.len() != 2 {
        bail!(
            "{name}: classifier weight '{weight}' has shape {:?}, expected 2-D",
            wt.dims
        );
    }
    let (old, fan_in) = if w_rows_are_outputs {
        (wt.dims[0], wt.dims[1])
    } else {
        (wt.dims[1], wt.dims[0])
    };
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = classes * fan_in as usize;
    let w: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    let dims = if w_rows_are_outputs {
        vec![classes as i64, fan_in]
    } else {
        vec![fan_in, classes as i64]
    };
    let dt = wt.data_type;
    *wt = tensor::from_f32(&weight, &dims, &w);
    wt.data_type = dt;
    tensor::overwrite_f32(wt, &w)?;
    if let Some(b) = &bias {
        let bt = gm.initializer.iter_mut().find(|t| &t.name == b).unwrap();
        let bv: Vec<f32> = (0..classes)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let bdims: Vec<i64> = if bt.dims.len() == 2 {
            vec![1, classes as i64]
        } else {
            vec![classes as i64]
        };
        let dt = bt.data_type;
        *bt = tensor::from_f32(b, &bdims, &bv);
        bt.data_type = dt;
        tensor::overwrite_f32(bt, &bv)?;
    }
    // The declared shapes' last axis changes too (the chosen output and
    // every other output of the same logits, e.g. their Softmax).
    for o in gm.output.iter_mut().filter(|o| resized.contains(&o.name)) {
        if let Some(type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.last_mut()) {
                d.value = Some(dimension::Value::DimValue(classes as i64));
            }
        }
    }
    gm.value_info.clear();
    Ok(HeadReplacement {
        node: node_label(idx, &node),
        weight,
        bias,
        classes: (old as usize, classes),
    })
}
