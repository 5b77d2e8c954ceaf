//! Gradient of Einsum with one or two operands.
//!
//! Math: for `Y = einsum("a,b->y", A, B)` (each letter an index, products
//! summed over the letters not in y), `∂L/∂A[a] = Σ dY[y]·B[b]` over every
//! letter not in a, which is again an einsum: `dA = einsum("y,b->a'", dY, B)`
//! where a' keeps A's letters that occur in y or b. A letter only in A was
//! summed in the forward pass, so each of its positions gets the same
//! gradient: dA is a' unsqueezed at those positions and Expanded to A's
//! shape. One operand: `dA = einsum("y->a'", dY)`, expanded the same way.
//! `...` is replaced by fresh capital letters (the broadcast dims must then
//! match exactly). Forms this cannot express get a clear error: a letter
//! repeated within one operand (a diagonal, "ii->i"), three or more
//! operands, and broadcasting a size-1 dim against a larger one.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__Einsum.html (opset 12, the
//! only version). Exporters emit e.g. "bhqd,bhkd->bhqk" (scores),
//! "bhqk,bhkd->bhqd" (context), "bid,jd->bij", "i,j->ij" (RoPE frequency
//! outer product).
//!
//! Tests: `crates/koala-graph/tests/fd_einsum.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs::{self, a_string};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// Parsed equation: subscripts of each operand and of the output.
struct Equation {
    inputs: Vec<Vec<char>>,
    output: Vec<char>,
}

/// Parses `eq` for operands of the given ranks, expanding `...`.
fn parse(eq: &str, ranks: &[usize]) -> Result<Equation> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        bail!(
            "Einsum equation '{eq}' names {} operands but the node has {}",
            terms.len(),
            ranks.len()
        );
    }
    let used: Vec<char> = eq.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    let pool: Vec<char> = ('A'..='Z').filter(|c| !used.contains(c)).collect();
    let mut n_ells = Vec::with_capacity(terms.len());
    for (t, &rank) in terms.iter().zip(ranks) {
        let letters = t.replace("...", "").chars().count();
        n_ells.push(if t.contains("...") {
            rank.checked_sub(letters).with_context(|| {
                format!("Einsum term '{t}' has more letters than its operand's rank {rank}")
            })?
        } else {
            0
        });
    }
    let ell_len = n_ells.iter().copied().max().unwrap_or(0);
    if ell_len > pool.len() {
        bail!("Einsum '{eq}': too many broadcast dims");
    }
    let ell = &pool[..ell_len];
    let inputs: Vec<Vec<char>> = terms
        .iter()
        .zip(&n_ells)
        .map(|(t, &n)| expand_ellipsis(t, &ell[ell_len - n..]))
        .collect();
    let output = match rhs {
        Some(r) => expand_ellipsis(&r, ell),
        None => {
            // Implicit output: ellipsis dims, then letters used once, sorted.
            let mut counts: HashMap<char, usize> = HashMap::new();
            for c in inputs.iter().flatten() {
                *counts.entry(*c).or_default() += 1;
            }
            let mut out: Vec<char> = ell.to_vec();
            let mut once: Vec<char> = counts
                .iter()
                .filter(|&(c, &k)| k == 1 && !ell.contains(c))
                .map(|(&c, _)| c)
                .collect();
            once.sort_unstable();
            out.extend(once);
            out
        }
    };
    Ok(Equation { inputs, output })
}

/// `t` with `...` replaced by `letters` (right-aligned like numpy: an
/// operand with fewer broadcast dims gets the trailing ellipsis letters;
/// `letter_sizes` then checks that the shared dims agree).
fn expand_ellipsis(t: &str, letters: &[char]) -> Vec<char> {
    match t.split_once("...") {
        None => t.chars().collect(),
        Some((a, b)) => a
            .chars()
            .chain(letters.iter().copied())
            .chain(b.chars())
            .collect(),
    }
}

fn subscripts(v: &[char]) -> String {
    v.iter().collect()
}

/// Einsum(X₁[, X₂]) → Y.
pub fn einsum(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    let eq_text = attrs::string(r.node, "equation", "");
    let dy = r.dy0()?.to_string();
    let shapes: Vec<Vec<usize>> = r
        .node
        .input
        .iter()
        .map(|i| ctx.shape(i))
        .collect::<Result<_>>()?;
    if shapes.len() > 2 {
        bail!("Einsum '{eq_text}' with {} operands has no gradient rule (one or two only); re-export it as MatMul/Mul", shapes.len());
    }
    let ranks: Vec<usize> = shapes.iter().map(|s| s.len()).collect();
    let eq = parse(&eq_text, &ranks)?;
    let sizes = letter_sizes(&eq_text, &eq, &shapes)?;
    let dt = ctx.dtype(&dy)?;
    let mut out = r.none();
    for i in 0..shapes.len() {
        if !r.need(i) {
            continue;
        }
        let own = &eq.inputs[i];
        let mut dups = own.clone();
        dups.sort_unstable();
        if dups.windows(2).any(|w| w[0] == w[1]) {
            bail!("Einsum '{eq_text}' repeats an index within operand {i} (a diagonal); koala has no gradient rule for that form");
        }
        let other: Option<&Vec<char>> = eq.inputs.get(1 - i).filter(|_| shapes.len() == 2);
        let kept: Vec<char> = own
            .iter()
            .copied()
            .filter(|c| eq.output.contains(c) || other.is_some_and(|o| o.contains(c)))
            .collect();
        let mut ins = vec![dy.clone()];
        let mut terms = vec![subscripts(&eq.output)];
        if let Some(o) = other {
            ins.push(r.input(1 - i).to_string());
            terms.push(subscripts(o));
        }
        let g_eq = format!("{}->{}", terms.join(","), subscripts(&kept));
        let kept_shape: Vec<usize> = kept.iter().map(|c| sizes[c]).collect();
        let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let mut g = ctx.emit_shaped(
            "Einsum",
            &refs,
            vec![a_string("equation", &g_eq)],
            dt,
            kept_shape,
        );
        let missing: Vec<i64> = own
            .iter()
            .enumerate()
            .filter(|(_, c)| !kept.contains(c))
            .map(|(k, _)| k as i64)
            .collect();
        if !missing.is_empty() {
            g = ctx.unsqueeze(&g, &missing)?;
            g = ctx.expand(&g, &shapes[i])?;
        }
        out[i] = Some(g);
    }
    Ok(out)
}

/// The size of every letter; an error when two operands disagree.
fn letter_sizes(text: &str, eq: &Equation, shapes: &[Vec<usize>]) -> Result<HashMap<char, usize>> {
    let mut sizes: HashMap<char, usize> = HashMap::new();
    for (term, shape) in eq.inputs.iter().zip(shapes) {
        if term.len() != shape.len() {
            bail!(
                "Einsum '{text}': term '{}' does not match an operand of shape {shape:?}",
                subscripts(term)
            );
        }
        for (c, &d) in term.iter().zip(shape) {
            if let Some(&prev) = sizes.get(c) {
                if prev != d {
                    bail!("Einsum '{text}' broadcasts index '{c}' ({prev} vs {d}); koala has no gradient rule for broadcasting einsums");
                }
            }
            sizes.insert(*c, d);
        }
    }
    Ok(sizes)
}
