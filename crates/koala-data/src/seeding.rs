//! Deterministic random streams derived from one user seed, shared by the image and text pipelines.
//!
//! Every random decision (epoch order, per-sample augmentation, split) gets its own ChaCha8 generator keyed by
//! `(seed, stream, a, b)`. Because the key, not the order of calls, fixes the numbers, a sample's augmentation
//! does not depend on thread count, prefetch depth, or whether the run was resumed. The draws below use only
//! `next_u64`, whose output ChaCha8 guarantees, instead of `rand`'s distribution helpers whose algorithms may
//! change between versions, so a seed keeps meaning the same batches across upgrades.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a generator is used for; part of its key so the streams are independent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// Epoch permutation, keyed by epoch.
    Shuffle = 1,
    /// Per-sample augmentation, keyed by (epoch, sample index).
    Augment = 2,
    /// Train/validation split, keyed by class label.
    Split = 3,
    /// Held-out split of a text data set (one stream: text examples have no class).
    TextSplit = 4,
}

/// The generator for `(seed, stream, a, b)`.
pub(crate) fn rng_for(seed: u64, stream: Stream, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, stream as u64, a, b]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
pub(crate) fn uniform_f64(rng: &mut (impl RngCore + ?Sized)) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform `f64` in `[lo, hi)`.
pub(crate) fn uniform_range(rng: &mut (impl RngCore + ?Sized), lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform_f64(rng)
}

/// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-and-reject).
pub(crate) fn uniform_below(rng: &mut (impl RngCore + ?Sized), n: u64) -> u64 {
    debug_assert!(n > 0);
    let threshold = n.wrapping_neg() % n;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(n);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
pub(crate) fn permutation(n: usize, rng: &mut (impl RngCore + ?Sized)) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_key() {
        let a = permutation(100, &mut rng_for(7, Stream::Shuffle, 0, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, permutation(100, &mut rng_for(7, Stream::Shuffle, 0, 0)));
        assert_ne!(a, permutation(100, &mut rng_for(7, Stream::Shuffle, 1, 0)));
        assert_ne!(a, permutation(100, &mut rng_for(8, Stream::Shuffle, 0, 0)));
    }

    #[test]
    fn uniform_below_covers_range_evenly() {
        // 60_000 draws over 6 values: each count is Binomial(60000, 1/6), sd ≈ 91, so ±600 is > 6 sd.
        let mut rng = rng_for(1, Stream::Augment, 0, 0);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[uniform_below(&mut rng, 6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_400..=10_600).contains(&c)),
            "{counts:?}"
        );
    }
}
