//! Deterministic building blocks for the bandwidth-bound inner loops.
//!
//! Reductions accumulate in f64 (products of two f32 are exact in f64, so only the sums
//! round) over `LANES` independent accumulators, which lets the compiler vectorize them.
//! Large tensors are cut into fixed `CHUNK`-sized pieces whose partial sums are computed in
//! parallel and then added in chunk order, so results never depend on the thread count.

use std::ops::Range;

use rayon::prelude::*;

/// Elements per parallel chunk. Fixed (not derived from the thread count) so that the
/// order of floating-point additions, and hence every result, is reproducible.
pub(crate) const CHUNK: usize = 1 << 15;

/// Independent accumulators per reduced quantity inside a chunk.
const LANES: usize = 4;

/// Up to five sums produced by one reduction pass (unused entries stay 0).
pub(crate) type Sums = [f64; 5];

/// Number of `CHUNK`-sized pieces of an n-element tensor.
pub(crate) fn num_chunks(n: usize) -> usize {
    n.div_ceil(CHUNK)
}

/// The index range of chunk `c` of an n-element tensor.
pub(crate) fn chunk_range(c: usize, n: usize) -> Range<usize> {
    let start = c * CHUNK;
    start..(start + CHUNK).min(n)
}

/// Sums `K` per-element terms over `0..n` in f64 with `LANES` accumulators each, then
/// adds the lanes in a fixed order.
#[inline(always)]
pub(crate) fn lane_sums<const K: usize>(n: usize, term: impl Fn(usize) -> [f64; K]) -> Sums {
    let mut acc = [[0.0f64; K]; LANES];
    let main = n - n % LANES;
    let mut i = 0;
    while i < main {
        for (lane, acc) in acc.iter_mut().enumerate() {
            for (a, t) in acc.iter_mut().zip(term(i + lane)) {
                *a += t;
            }
        }
        i += LANES;
    }
    for j in main..n {
        for (a, t) in acc[0].iter_mut().zip(term(j)) {
            *a += t;
        }
    }
    let mut out = Sums::default();
    for lane in &acc {
        for (o, a) in out.iter_mut().zip(lane) {
            *o += a;
        }
    }
    out
}

/// Adds chunk partials in chunk order.
pub(crate) fn fold_partials(partials: &[Sums]) -> Sums {
    partials.iter().fold(Sums::default(), |mut s, p| {
        for (a, b) in s.iter_mut().zip(p) {
            *a += b;
        }
        s
    })
}

/// Computes `chunk(range)` for every chunk of an n-element tensor in parallel, storing
/// the results in `partials` (one slot per chunk, allocated at init), and returns their
/// in-order sum.
pub(crate) fn par_chunk_sums(
    partials: &mut [Sums],
    n: usize,
    chunk: impl Fn(Range<usize>) -> Sums + Sync,
) -> Sums {
    debug_assert_eq!(partials.len(), num_chunks(n));
    partials
        .par_iter_mut()
        .enumerate()
        .for_each(|(c, p)| *p = chunk(chunk_range(c, n)));
    fold_partials(partials)
}

/// Sequential f64 dot product of two f32 vectors (used by the literal reference path).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len();
    let (a, b) = (&a[..n], &b[..n]);
    lane_sums(n, |i| [f64::from(a[i]) * f64::from(b[i])])[0]
}

/// Updates the measurement noise R at the start of a KOALA update (spec §2.3): fixed `r`,
/// or `R ← α_r·R + (1−α_r)·V`.
pub(crate) fn update_noise(r_state: &mut f64, fixed: Option<f64>, alpha_r: f64, loss_var: f64) {
    *r_state = match fixed {
        Some(r) => r,
        None => alpha_r * *r_state + (1.0 - alpha_r) * loss_var,
    };
}

/// The skip rule shared by the KOALA family (spec §5.4): no gradient, or ‖g‖₂ below
/// `eps` on the raw gradient.
pub(crate) fn below_skip_threshold(grad_sq_norm: f64, eps: f64) -> bool {
    grad_sq_norm.sqrt() < eps
}
