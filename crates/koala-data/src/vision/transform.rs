//! Applying a [`Preprocess`] to one decoded image: choose the geometry (evaluation or random crop + flip), then
//! resample and normalise in one pass into the caller's buffer.

use std::cell::RefCell;

use image::{DynamicImage, ImageBuffer, Pixel};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::geometry::{crop_plans, eval_plans, random_resized_crop_box};
use super::preprocess::Preprocess;
use super::resample::{render, Normalizer, Pixels, Scratch};
use crate::error::{DataError, Result};
use crate::seeding::uniform_f64;

thread_local! {
    /// Filter taps and row buffers, one set per worker thread, so that steady-state preprocessing allocates
    /// nothing beyond what decoding itself allocates.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A validated [`Preprocess`] with its normalisation constants precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Transform {
    pre: Preprocess,
    norm: Normalizer,
}

impl Transform {
    pub(crate) fn new(pre: Preprocess) -> Result<Self> {
        pre.validate()?;
        let norm = Normalizer::new(&pre.mean, &pre.std);
        Ok(Transform { pre, norm })
    }

    pub(crate) fn preprocess(&self) -> &Preprocess {
        &self.pre
    }

    /// Writes the preprocessed `image` to `out` (`sample_len()` values). With `augment`, the training geometry
    /// (random crop if configured, flip with `hflip_prob`) is drawn from it; without, the evaluation geometry.
    pub(crate) fn apply(
        &self,
        image: &DynamicImage,
        augment: Option<&mut dyn RngCore>,
        out: &mut [f32],
    ) -> Result<()> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(DataError::Input {
                what: "image".into(),
                message: "zero width or height".into(),
            });
        }
        if out.len() != self.pre.sample_len() {
            return Err(DataError::Input {
                what: "output buffer".into(),
                message: format!(
                    "has {} values, expected channels × height × width = {}",
                    out.len(),
                    self.pre.sample_len()
                ),
            });
        }
        let (out_w, out_h) = (self.pre.width as usize, self.pre.height as usize);
        let (px, py, mirror) = match augment {
            None => {
                let (px, py) = eval_plans(w, h, self.pre.resize, out_w, out_h);
                (px, py, false)
            }
            Some(rng) => {
                let (px, py) = match &self.pre.random_resized_crop {
                    Some(params) => {
                        crop_plans(random_resized_crop_box(w, h, params, rng), out_w, out_h)
                    }
                    None => eval_plans(w, h, self.pre.resize, out_w, out_h),
                };
                (
                    px,
                    py,
                    self.pre.hflip_prob > 0.0 && uniform_f64(rng) < self.pre.hflip_prob,
                )
            }
        };
        SCRATCH.with(|cell| {
            let scratch = &mut *cell.borrow_mut();
            scratch.x.compute(&px, mirror);
            scratch.y.compute(&py, false);
            with_pixels(image, |pixels| render(pixels, &self.norm, scratch, out));
        });
        Ok(())
    }
}

impl Preprocess {
    /// Preprocesses one image with the evaluation geometry into `out` (`sample_len()` values, CHW): what the
    /// eval loader does, for single-image inference.
    pub fn apply_eval(&self, image: &DynamicImage, out: &mut [f32]) -> Result<()> {
        Transform::new(self.clone())?.apply(image, None, out)
    }

    /// Preprocesses one image with the training geometry (random crop, flip) drawn from `seed`. The loader
    /// derives its per-sample randomness from `(seed, epoch, index)` instead; this is for inspecting
    /// augmentations.
    pub fn apply_train(&self, image: &DynamicImage, seed: u64, out: &mut [f32]) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Transform::new(self.clone())?.apply(image, Some(&mut rng), out)
    }
}

/// Calls `f` with the image's pixels as 8-bit grey or RGB, borrowing them when the image already is one of
/// those (the common case: JPEG, PNG and IDX all decode to `Luma8` or `Rgb8`) and converting otherwise.
/// Alpha is dropped, as Pillow's `convert("RGB")` does.
fn with_pixels<R>(image: &DynamicImage, f: impl FnOnce(Pixels<'_>) -> R) -> R {
    match image {
        DynamicImage::ImageLuma8(g) => f(pixels(g)),
        DynamicImage::ImageRgb8(c) => f(pixels(c)),
        other if !other.color().has_color() => f(pixels(&other.to_luma8())),
        other => f(pixels(&other.to_rgb8())),
    }
}

fn pixels<P: Pixel<Subpixel = u8>>(image: &ImageBuffer<P, Vec<u8>>) -> Pixels<'_> {
    Pixels {
        data: image.as_raw(),
        width: image.width() as usize,
        height: image.height() as usize,
        channels: usize::from(P::CHANNEL_COUNT),
    }
}
