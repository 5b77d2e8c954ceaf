//! Training-graph canonicalisation: `MatMul(A, Transpose(W))` with a 2-D `W`
//! becomes one `Gemm(A₂, W, transB = 1)` between two Reshapes.
//!
//! Exporters write a linear layer `y = x·Wᵀ` (PyTorch's and Hugging Face's
//! `[out, in]` weight layout) as a Transpose of the weight feeding a MatMul;
//! `koala import` does the same for Llama checkpoints. An inference runtime
//! constant-folds that Transpose. In a training graph the weight is an input,
//! so the Transpose runs every step and its output — a full transposed copy
//! of the weight — stays alive from the forward pass until the MatMul's
//! backward reads it (`dA = dY·Bᵀ`). For SmolLM2-135M that was 0.5 GiB of
//! weight copies held across the whole backward pass, plus a copy per step.
//!
//! Math (Gemm spec, <https://onnx.ai/onnx/operators/onnx__Gemm.html>): with
//! `A` of shape `[…, M, K]` and `W` of shape `[N, K]`,
//! `MatMul(A, Wᵀ) = Reshape(Gemm(Reshape(A, [−1, K]), W, transB = 1), […, M, N])`
//! — the batch axes of `A` fold into Gemm's rows (numpy MatMul with a 2-D
//! right operand broadcasts it over them). A 1-D `A` (`[K]`) becomes one row
//! and the result `[N]`, as MatMul's promotion rule says. The Gemm rule then
//! differentiates with transpose flags only: `dA₂ = dY₂·W`,
//! `dW = dY₂ᵀ·A₂` (`backward/gemm.rs`), so no transposed copy of `W` exists
//! in the forward or the backward pass.
//!
//! The shapes come from `Shape(A)` in the graph (the rewrite runs before the
//! shape probe, on graphs whose activation shapes may still be symbolic).
//! Only the training graph changes; export writes into the user's original
//! graph. Rewritten only where the Transpose output feeds this MatMul alone
//! and is not a graph output (otherwise the copy exists anyway), and `W`'s
//! rank is known to be 2 (an initializer, or a graph input with a declared
//! shape). Opsets ≥ 11 (Gemm with optional C; koala upgrades older models).
//!
//! Tests: `crates/koala-graph/tests/fd_gemm.rs` (finite differences through
//! the rewrite, every rank of `A`, and where it must not apply).

use crate::attrs::{self, a_int, a_tensor};
use crate::model::{is_default_domain, Model};
use crate::proto::NodeProto;
use crate::tensor;
use std::collections::{HashMap, HashSet};

/// Rewrites every eligible `MatMul(A, Transpose(W))`; returns how many.
pub fn matmul_by_transposed_to_gemm(model: &mut Model) -> usize {
    let plans = find(model);
    if plans.is_empty() {
        return 0;
    }
    let gm = model.graph_mut();
    let mut replace: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut remove: HashSet<usize> = HashSet::new();
    for &(mi, ti) in &plans {
        let w = gm.node[ti].input[0].clone();
        replace.insert(mi, gemm_nodes(&gm.node[mi], &w, mi));
        remove.insert(ti);
    }
    let old = std::mem::take(&mut gm.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(nodes) = replace.remove(&i) {
            gm.node.extend(nodes);
        } else if !remove.contains(&i) {
            gm.node.push(n);
        }
    }
    plans.len()
}

/// `(MatMul index, Transpose index)` of every eligible pair.
fn find(model: &Model) -> Vec<(usize, usize)> {
    let g = model.graph();
    let mut rank2: HashSet<&str> = g
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| t.name.as_str())
        .collect();
    rank2.extend(
        g.input
            .iter()
            .filter(|i| crate::training::declared_dims(i).len() == 2)
            .map(|i| i.name.as_str()),
    );
    let crate::model::GraphIndex {
        outputs,
        readers,
        producer,
    } = crate::model::GraphIndex::of(g);
    let mut plans = Vec::new();
    for (mi, m) in g.node.iter().enumerate() {
        if m.op_type != "MatMul" || !is_default_domain(m) || m.input.len() != 2 {
            continue;
        }
        let b = m.input[1].as_str();
        let Some(&ti) = producer.get(b) else { continue };
        let t = &g.node[ti];
        let swaps = match attrs::ints(t, "perm") {
            Some(p) => p == [1, 0],
            None => true, // the default reverses the axes: [1, 0] for a matrix
        };
        if t.op_type != "Transpose"
            || !is_default_domain(t)
            || !swaps
            || !rank2.contains(t.input[0].as_str())
            || readers.get(b) != Some(&1)
            || outputs.contains(b)
        {
            continue;
        }
        plans.push((mi, ti));
    }
    plans
}

/// The nodes that replace MatMul node `m` (index `mi`), reading `W` directly.
fn gemm_nodes(m: &NodeProto, w: &str, mi: usize) -> Vec<NodeProto> {
    let p = format!(
        "koala_gemm/{}",
        if m.name.is_empty() {
            format!("matmul_{mi}")
        } else {
            m.name.clone()
        }
    );
    let v = |s: &str| format!("{p}/{s}");
    let konst = |name: &str, values: &[i64]| NodeProto {
        name: v(name),
        op_type: "Constant".into(),
        output: vec![v(name)],
        attribute: vec![a_tensor(
            "value",
            tensor::from_i64(&v(name), &[values.len() as i64], values),
        )],
        ..Default::default()
    };
    let node = |op: &str, ins: &[&str], out: &str, attribute| NodeProto {
        name: format!("{p}/{op}_{}", out.rsplit('/').next().unwrap_or(out)),
        op_type: op.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.to_string()],
        attribute,
        ..Default::default()
    };
    let a = m.input[0].as_str();
    vec![
        konst("zero", &[0]),
        konst("one", &[1]),
        konst("minus_one", &[-1]),
        konst("end", &[i64::MAX]),
        node("Shape", &[a], &v("a_shape"), vec![]),
        // A's leading axes […, M] and its last (K).
        node(
            "Slice",
            &[&v("a_shape"), &v("zero"), &v("minus_one")],
            &v("lead"),
            vec![],
        ),
        node(
            "Slice",
            &[&v("a_shape"), &v("minus_one"), &v("end")],
            &v("k"),
            vec![],
        ),
        node(
            "Concat",
            &[&v("minus_one"), &v("k")],
            &v("rows_k"),
            vec![a_int("axis", 0)],
        ),
        node("Reshape", &[a, &v("rows_k")], &v("a2"), vec![]),
        node("Gemm", &[&v("a2"), w], &v("y2"), vec![a_int("transB", 1)]),
        node("Shape", &[w], &v("w_shape"), vec![]),
        node(
            "Slice",
            &[&v("w_shape"), &v("zero"), &v("one")],
            &v("n"),
            vec![],
        ),
        node(
            "Concat",
            &[&v("lead"), &v("n")],
            &v("y_shape"),
            vec![a_int("axis", 0)],
        ),
        node("Reshape", &[&v("y2"), &v("y_shape")], &m.output[0], vec![]),
    ]
}
