//! Tied weights that an exporter wrote twice.
//!
//! A language model usually ties its input embedding `E [V, D]` and its LM
//! head (`logits = h · Eᵀ`). When the exporter keeps one initializer, the
//! tie needs nothing special: the backward pass sums the gradients of the
//! Gather (embedding) and MatMul/Gemm (head) uses of the one tensor (fan-out).
//! Some exporters instead write the tensor twice — a second initializer with
//! the same values, sometimes pre-transposed (`[D, V]`, after constant
//! folding of `Transpose(E)`). Trained separately the two copies would drift
//! apart and the exported model would no longer be tied. koala therefore
//! detects such copies, rewires every use of the copy to the canonical
//! tensor (through a `Transpose` node for a transposed copy), trains one
//! tensor with the summed gradient, and writes it back to both initializers
//! on export.
//!
//! What counts as a copy: a float initializer of rank 2 with at least
//! [`MIN_ELEMENTS`] elements, not constant-valued, whose values equal another
//! one's bit for bit (as stored, or transposed). Small or constant tensors
//! are excluded on purpose: a fresh model's norm weights (all ones) or a new
//! LoRA adapter's `B` (all zeros) are equal by initialisation, not tied, and
//! tying them would be a silent error (the reference README's note 4 shows
//! the TorchScript exporter making exactly this mistake).

use crate::model::Model;
use crate::proto::{DataType, NodeProto, TensorProto};
use crate::tensor;
use std::collections::HashMap;

/// Smallest tensor considered a tied copy (see the module docs).
pub const MIN_ELEMENTS: usize = 4096;

/// One initializer that duplicates another.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TiedCopy {
    /// The initializer that is trained (the first in initializer order).
    pub canonical: String,
    /// The initializer holding the same values.
    pub copy: String,
    /// The copy holds the canonical tensor transposed (`[D, V]` for `[V, D]`).
    pub transposed: bool,
}

fn candidate(t: &TensorProto) -> Option<(Vec<usize>, Vec<u32>)> {
    let float = matches!(DataType::try_from(t.data_type), Ok(DataType::Float));
    if !float || t.dims.len() != 2 || tensor::numel(&t.dims) < MIN_ELEMENTS {
        return None;
    }
    let values = tensor::to_f32(t).ok()?;
    let first = values.first()?.to_bits();
    if values.iter().all(|v| v.to_bits() == first) {
        return None;
    }
    let dims = t.dims.iter().map(|&d| d as usize).collect();
    Some((dims, values.iter().map(|v| v.to_bits()).collect()))
}

/// A row-major `[rows, cols]` matrix transposed to `[cols, rows]`.
fn transpose<T: Copy + Default>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

/// Every initializer that duplicates an earlier one (same values as stored,
/// or transposed).
pub fn find(model: &Model) -> Vec<TiedCopy> {
    let mut seen: HashMap<(Vec<usize>, Vec<u32>), String> = HashMap::new();
    let mut out = Vec::new();
    for t in &model.graph().initializer {
        let Some((dims, bits)) = candidate(t) else {
            continue;
        };
        if let Some(c) = seen.get(&(dims.clone(), bits.clone())) {
            out.push(TiedCopy {
                canonical: c.clone(),
                copy: t.name.clone(),
                transposed: false,
            });
            continue;
        }
        let tdims = vec![dims[1], dims[0]];
        let tbits = transpose(&bits, dims[0], dims[1]);
        if let Some(c) = seen.get(&(tdims, tbits)) {
            out.push(TiedCopy {
                canonical: c.clone(),
                copy: t.name.clone(),
                transposed: true,
            });
            continue;
        }
        seen.insert((dims, bits), t.name.clone());
    }
    out
}

/// Rewires every use of each copy to its canonical tensor (a transposed copy
/// reads a new `Transpose` of it) and removes the copies' initializers, so
/// one tensor is trained and receives the sum of both uses' gradients.
pub fn tie(model: &mut Model, copies: &[TiedCopy]) {
    let g = model.graph_mut();
    let mut transposes = Vec::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    for c in copies {
        let target = if c.transposed {
            let out = format!("koala_tied/{}", c.copy);
            transposes.push(NodeProto {
                op_type: "Transpose".into(),
                name: format!("koala_tied/transpose/{}", c.copy),
                input: vec![c.canonical.clone()],
                output: vec![out.clone()],
                attribute: vec![crate::attrs::a_ints("perm", &[1, 0])],
                ..Default::default()
            });
            out
        } else {
            c.canonical.clone()
        };
        rename.insert(c.copy.clone(), target);
    }
    for n in &mut g.node {
        for i in &mut n.input {
            if let Some(r) = rename.get(i) {
                *i = r.clone();
            }
        }
    }
    for o in &mut g.output {
        if let Some(r) = rename.get(&o.name) {
            // A copy that is itself a graph output: keep the name alive.
            transposes.push(NodeProto {
                op_type: "Identity".into(),
                name: format!("koala_tied/output/{}", o.name),
                input: vec![r.clone()],
                output: vec![o.name.clone()],
                ..Default::default()
            });
        }
    }
    g.initializer.retain(|t| !rename.contains_key(&t.name));
    g.input.retain(|i| !rename.contains_key(&i.name));
    // The Transposes read initializers only, so they can run first.
    transposes.append(&mut g.node);
    g.node = transposes;
}

/// The values to write for each copy on export, given the trained values of
/// the canonical tensors (`weights`: name → values, shape as in `model`).
pub fn copies_to_write(
    model: &Model,
    copies: &[TiedCopy],
    weights: &HashMap<&str, &[f32]>,
) -> Vec<(String, Vec<f32>)> {
    let dims_of = |name: &str| -> Option<Vec<usize>> {
        model
            .graph()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.dims.iter().map(|&d| d as usize).collect())
    };
    copies
        .iter()
        .filter_map(|c| {
            let values = weights.get(c.canonical.as_str())?;
            if !c.transposed {
                return Some((c.copy.clone(), values.to_vec()));
            }
            let dims = dims_of(&c.canonical)?;
            Some((c.copy.clone(), transpose(values, dims[0], dims[1])))
        })
        .collect()
}
