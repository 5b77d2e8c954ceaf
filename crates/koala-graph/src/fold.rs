//! Training-graph canonicalisation: fold inference-mode BatchNormalization
//! into the Conv that feeds it.
//!
//! An inference runtime folds BN into the Conv weights once, at load time. A
//! training graph cannot (the weights are inputs), so ORT would run BN as a
//! separate, slow element-wise pass and keep the Conv output alive for BN's
//! backward. koala instead rewrites Conv → BN as one Conv with weights
//! W·k and bias b·k + (β − μ·k), k = γ/√(σ² + ε), computed from the weight
//! inputs every step (per-channel work only). The backward pass then
//! differentiates those small weight-side ops with the ordinary Mul/Add
//! rules, so γ and β keep exact gradients, and no activation-sized BN pass
//! remains. Only the training graph changes; export writes into the user's
//! original graph, BN and all.

use crate::attrs;
use crate::model::Model;
use crate::proto::{DataType, NodeProto, TensorProto};
use crate::tensor;
use std::collections::{HashMap, HashSet};

/// Folds every Conv → BatchNormalization pair whose Conv output feeds only
/// that BN and whose parameters are initializers. Returns the number of folds.
pub fn fold_batchnorm_into_conv(model: &mut Model) -> usize {
    let g = model.graph();
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let crate::model::GraphIndex {
        outputs,
        readers,
        producer,
    } = crate::model::GraphIndex::of(g);
    let mut plans: Vec<(usize, usize, DataType, usize)> = Vec::new(); // (conv, bn, dtype, weight rank)
    for (bi, bn) in g.node.iter().enumerate() {
        if bn.op_type != "BatchNormalization" || !crate::model::is_default_domain(bn) {
            continue;
        }
        if attrs::int(bn, "training_mode", 0) != 0
            || bn.output.iter().skip(1).any(|o| !o.is_empty())
            || bn.input.len() < 5
        {
            continue;
        }
        if !bn.input[1..5]
            .iter()
            .all(|p| inits.contains_key(p.as_str()))
        {
            continue;
        }
        let x = bn.input[0].as_str();
        let Some(&ci) = producer.get(x) else { continue };
        let conv = &g.node[ci];
        if conv.op_type != "Conv" || readers.get(x) != Some(&1) || outputs.contains(x) {
            continue;
        }
        let Some(w) = inits.get(conv.input[1].as_str()) else {
            continue;
        };
        if conv.input.len() > 2
            && !conv.input[2].is_empty()
            && !inits.contains_key(conv.input[2].as_str())
        {
            continue;
        }
        let Ok(dt @ (DataType::Float | DataType::Double)) = DataType::try_from(w.data_type) else {
            continue;
        };
        plans.push((ci, bi, dt, w.dims.len()));
    }
    if plans.is_empty() {
        return 0;
    }
    let gm = model.graph_mut();
    let mut new_inits = Vec::new();
    let mut insert_before: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut remove: HashSet<usize> = HashSet::new();
    for &(ci, bi, dt, rank) in &plans {
        let bn = gm.node[bi].clone();
        let conv = &mut gm.node[ci];
        let p = format!(
            "koala_fold/{}",
            if bn.name.is_empty() {
                bn.output[0].as_str()
            } else {
                bn.name.as_str()
            }
        );
        let v = |s: &str| format!("{p}/{s}");
        let eps = attrs::float(&bn, "epsilon", 1e-5) as f64;
        new_inits.push(match dt {
            DataType::Double => tensor::from_f64(&v("eps"), &[], &[eps]),
            _ => tensor::from_f32(&v("eps"), &[], &[eps as f32]),
        });
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, rank - 1));
        new_inits.push(tensor::from_i64(&v("kshape"), &[rank as i64], &shape));
        let node = |op: &str, ins: &[&str], out: &str| NodeProto {
            name: format!("{p}/{op}_{out}"),
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![v(out)],
            ..Default::default()
        };
        let (scale, beta, mean, var) = (&bn.input[1], &bn.input[2], &bn.input[3], &bn.input[4]);
        let mut nodes = vec![
            node("Add", &[var, &v("eps")], "var_eps"),
            node("Sqrt", &[&v("var_eps")], "std"),
            node("Div", &[scale, &v("std")], "k"),
            node("Reshape", &[&v("k"), &v("kshape")], "k_w"),
            node("Mul", &[&conv.input[1], &v("k_w")], "weight"),
            node("Mul", &[mean, &v("k")], "mean_k"),
            node("Sub", &[beta, &v("mean_k")], "shift"),
        ];
        let bias = if conv.input.len() > 2 && !conv.input[2].is_empty() {
            nodes.push(node("Mul", &[&conv.input[2], &v("k")], "bias_k"));
            nodes.push(node("Add", &[&v("bias_k"), &v("shift")], "bias"));
            v("bias")
        } else {
            v("shift")
        };
        conv.input.truncate(1);
        conv.input.push(v("weight"));
        conv.input.push(bias);
        conv.output = vec![bn.output[0].clone()];
        insert_before.insert(ci, nodes);
        remove.insert(bi);
    }
    let old = std::mem::take(&mut gm.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(pre) = insert_before.remove(&i) {
            gm.node.extend(pre);
        }
        if !remove.contains(&i) {
            gm.node.push(n);
        }
    }
    gm.initializer.extend(new_inits);
    plans.len()
}
