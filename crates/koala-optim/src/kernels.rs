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
pub(crate) const LANES: usize = 8;

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

/// Sums `K` per-element terms of four equally long inputs in f64 with `LANES`
/// accumulators per term: element i goes to lane i mod `LANES`, and the lanes are added in
/// lane order at the end. The order of additions depends on the input length only, so
/// results are reproducible on any machine and thread count; the explicit AVX2 kernels in
/// `simd` follow exactly this order and are tested to match it bit for bit.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the explicit lane index is the accumulation order
pub(crate) fn lane_sums4<const K: usize>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    term: impl Fn(f32, f32, f32, f32) -> [f64; K],
) -> Sums {
    let n = a.len();
    let (b, c, d) = (&b[..n], &c[..n], &d[..n]);
    let (a_blocks, a_rest) = a.as_chunks::<LANES>();
    let (b_blocks, b_rest) = b.as_chunks::<LANES>();
    let (c_blocks, c_rest) = c.as_chunks::<LANES>();
    let (d_blocks, d_rest) = d.as_chunks::<LANES>();
    let mut acc = [[0.0f64; LANES]; K];
    let blocks = a_blocks.iter().zip(b_blocks).zip(c_blocks).zip(d_blocks);
    for (((a, b), c), d) in blocks {
        for lane in 0..LANES {
            let t = term(a[lane], b[lane], c[lane], d[lane]);
            for k in 0..K {
                acc[k][lane] += t[k];
            }
        }
    }
    for lane in 0..a_rest.len() {
        let t = term(a_rest[lane], b_rest[lane], c_rest[lane], d_rest[lane]);
        for k in 0..K {
            acc[k][lane] += t[k];
        }
    }
    let mut out = Sums::default();
    for k in 0..K {
        out[k] = acc[k].iter().fold(0.0, |s, x| s + x);
    }
    out
}

/// [`lane_sums4`] for two inputs.
#[inline(always)]
pub(crate) fn lane_sums2<const K: usize>(
    a: &[f32],
    b: &[f32],
    term: impl Fn(f32, f32) -> [f64; K],
) -> Sums {
    lane_sums4(a, b, a, a, |a, b, _, _| term(a, b))
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
    lane_sums2(a, b, |a, b| [f64::from(a) * f64::from(b)])[0]
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

/// The first pass of KOALA-V and KOALA-M: ‖g‖², ‖h‖² (h = g + wd·θ) and ‖θ‖² of
/// one tensor, or None when the skip rule (spec §5.4) leaves it untouched.
pub(crate) fn norms_unless_skipped(
    partials: &mut [Sums],
    p: &[f32],
    g: &[f32],
    wd: f64,
    skip_eps: f64,
) -> Option<(f64, f64)> {
    let wd32 = wd as f32;
    let [gg, hh, tt, ..] = par_chunk_sums(partials, p.len(), |rg| {
        crate::simd::norm_sums(&g[rg.clone()], &p[rg], wd32)
    });
    (!below_skip_threshold(gg, skip_eps)).then_some((hh, tt))
}

/// Defines `fn $name(args) -> ret { body }` so that, on x86-64 CPUs with AVX2, the body
/// runs compiled for AVX2 (8-wide f32 / 4-wide f64 vectors instead of SSE2's 4/2).
///
/// Only the instruction set changes, not the operations: no fused multiply-add is
/// enabled, each lane does the same IEEE additions and multiplications in the same order,
/// so both versions give bitwise identical results and checkpoints stay portable.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked on the line above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;
