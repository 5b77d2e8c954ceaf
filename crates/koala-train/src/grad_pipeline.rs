//! The gradient pipeline between the backward pass and the optimizer, as small functions
//! composed in a fixed order (optax's `chain(MultiSteps, skip_not_finite,
//! clip_by_global_norm)`, here without the indirection):
//!
//! 1. [`accumulate`] the micro-batch gradients into a buffer (copy the first, add the rest),
//! 2. [`average`] them over the micro-batches,
//! 3. [`global_norm`] of all gradients together (f64, logged and used by 4 and 5),
//! 4. [`NonFiniteGuard::check`]: skip a step whose loss or norm is not finite, abort after
//!    `max_in_a_row` such steps in a row,
//! 5. [`clip_by_global_norm`] (PyTorch's `clip_grad_norm_`: scale by `max / norm` when the
//!    norm exceeds `max`).
//!
//! The trainer reads gradients in place from ONNX Runtime's output buffers when nothing has to
//! be summed or scaled (one micro-batch, no clipping); [`GradBuffer`] holds the copy otherwise.
//! The arithmetic (f32 sums, one f32 scale factor, f64 squares) is the one the loop used before
//! the pipeline was cut out of it, so runs and their checkpoints are bitwise unchanged.

use anyhow::{bail, Result};

/// Adds one micro-batch's gradients to `acc` (tensor by tensor): copies them for the first
/// micro-batch of a step, adds them for the others.
pub fn accumulate<'a>(
    acc: &mut [Vec<f32>],
    grads: impl IntoIterator<Item = &'a [f32]>,
    first: bool,
) {
    for (a, g) in acc.iter_mut().zip(grads) {
        if first {
            a.copy_from_slice(g);
        } else {
            a.iter_mut().zip(g).for_each(|(x, &y)| *x += y);
        }
    }
}

/// Divides accumulated gradients by the number of micro-batches (multiplies by the f32
/// reciprocal, as the loop always did); one micro-batch leaves them untouched.
pub fn average(acc: &mut [Vec<f32>], micro_batches: usize) {
    if micro_batches > 1 {
        let inv = 1.0 / micro_batches as f32;
        acc.iter_mut().flatten().for_each(|x| *x *= inv);
    }
}

/// The L2 norm of all gradients taken together, summed in f64 (a model's ~10⁷ squares would
/// lose digits in f32).
pub fn global_norm<'a>(grads: impl IntoIterator<Item = &'a [f32]>) -> f64 {
    grads
        .into_iter()
        .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` by `max / norm` when `norm > max` (PyTorch `clip_grad_norm_`, optax
/// `clip_by_global_norm`); returns whether it clipped.
pub fn clip_by_global_norm(grads: &mut [Vec<f32>], norm: f64, max: f64) -> bool {
    if norm > max {
        let s = (max / norm) as f32;
        grads.iter_mut().flatten().for_each(|x| *x *= s);
        true
    } else {
        false
    }
}

/// What to do with a step after [`NonFiniteGuard::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Loss and gradient norm are finite: update the weights.
    Apply,
    /// Not finite: skip the update (the data of the step is consumed).
    Skip,
}

/// Skips steps whose loss or gradient norm is not finite and stops the run after
/// `max_in_a_row` of them in a row (one bad batch is noise, a streak means the run diverged).
#[derive(Clone, Copy, Debug)]
pub struct NonFiniteGuard {
    /// Consecutive non-finite steps that stop the run.
    pub max_in_a_row: u32,
}

impl NonFiniteGuard {
    /// Judges one step; `bad_in_a_row` is the trainer's counter (saved in checkpoints), reset
    /// by a good step. Errors when the streak reaches `max_in_a_row`, naming the remedies.
    pub fn check(&self, bad_in_a_row: &mut u32, loss: f64, grad_norm: f64) -> Result<Verdict> {
        if loss.is_finite() && grad_norm.is_finite() {
            *bad_in_a_row = 0;
            return Ok(Verdict::Apply);
        }
        *bad_in_a_row += 1;
        if *bad_in_a_row >= self.max_in_a_row {
            bail!("{} consecutive steps had a non-finite loss or gradient; stopping. Lower the learning rate or enable --clip-grad-norm", bad_in_a_row);
        }
        Ok(Verdict::Skip)
    }
}

/// The gradient copy the pipeline works on when the in-place gradients will not do: several
/// micro-batches to sum, or clipping to apply.
#[derive(Debug, Default)]
pub struct GradBuffer {
    /// One buffer per trainable tensor; empty when gradients are read in place.
    pub grads: Vec<Vec<f32>>,
}

impl GradBuffer {
    /// A buffer for tensors of `lens` values when `needed`, else an empty one (gradients are
    /// then read in place from the runner's outputs).
    pub fn new(lens: impl IntoIterator<Item = usize>, needed: bool) -> GradBuffer {
        GradBuffer {
            grads: if needed {
                lens.into_iter().map(|n| vec![0.0; n]).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Whether gradients go through this buffer.
    pub fn is_used(&self) -> bool {
        !self.grads.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulate_copies_the_first_micro_batch_and_adds_the_rest() {
        let mut acc = vec![vec![9.0, 9.0], vec![9.0]];
        accumulate(&mut acc, [&[1.0, 2.0][..], &[3.0][..]], true);
        assert_eq!(
            acc,
            vec![vec![1.0, 2.0], vec![3.0]],
            "stale values are overwritten"
        );
        accumulate(&mut acc, [&[0.5, -2.0][..], &[1.0][..]], false);
        assert_eq!(acc, vec![vec![1.5, 0.0], vec![4.0]]);
    }

    #[test]
    fn average_divides_by_the_micro_batch_count_and_leaves_one_alone() {
        let mut acc = vec![vec![4.0, -8.0]];
        average(&mut acc, 1);
        assert_eq!(acc, vec![vec![4.0, -8.0]]);
        average(&mut acc, 4);
        // Exact: 0.25 is a power of two.
        assert_eq!(acc, vec![vec![1.0, -2.0]]);
    }

    #[test]
    fn global_norm_is_the_l2_norm_over_all_tensors() {
        // 3-4-12-84-85: sqrt(9 + 16 + 144 + 7056) = 85 exactly.
        let n = global_norm([&[3.0, 4.0][..], &[12.0][..], &[84.0][..]]);
        assert_eq!(n, 85.0);
        assert_eq!(global_norm(std::iter::empty::<&[f32]>()), 0.0);
        assert!(global_norm([&[f32::NAN][..]]).is_nan());
    }

    #[test]
    fn clipping_scales_to_the_maximum_only_above_it() {
        let mut g = vec![vec![3.0, 4.0]];
        assert!(
            !clip_by_global_norm(&mut g, 5.0, 5.0),
            "at the maximum: untouched"
        );
        assert_eq!(g, vec![vec![3.0, 4.0]]);
        assert!(clip_by_global_norm(&mut g, 5.0, 1.0));
        let n = global_norm(g.iter().map(Vec::as_slice));
        // One f32 rounding of 0.2 and of each product: within 1e-6 of the maximum.
        assert!((n - 1.0).abs() < 1e-6, "clipped norm {n}, want 1");
    }

    #[test]
    fn the_guard_skips_non_finite_steps_and_stops_after_a_streak() {
        let guard = NonFiniteGuard { max_in_a_row: 3 };
        let mut bad = 0;
        assert_eq!(guard.check(&mut bad, 1.0, 1.0).unwrap(), Verdict::Apply);
        assert_eq!(guard.check(&mut bad, f64::NAN, 1.0).unwrap(), Verdict::Skip);
        assert_eq!(
            guard.check(&mut bad, 1.0, f64::INFINITY).unwrap(),
            Verdict::Skip
        );
        assert_eq!(bad, 2);
        assert_eq!(guard.check(&mut bad, 1.0, 1.0).unwrap(), Verdict::Apply);
        assert_eq!(bad, 0, "a good step resets the streak");
        for _ in 0..2 {
            guard.check(&mut bad, f64::NAN, 0.0).unwrap();
        }
        let err = guard.check(&mut bad, f64::NAN, 0.0).unwrap_err();
        assert!(format!("{err}").contains("3 consecutive"), "{err}");
    }

    #[test]
    fn the_buffer_exists_only_when_needed() {
        assert!(!GradBuffer::new([2, 3], false).is_used());
        let b = GradBuffer::new([2, 3], true);
        assert_eq!(b.grads.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 3]);
    }
}
