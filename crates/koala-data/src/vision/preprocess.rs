//! [`Preprocess`]: the serialisable description of how one image becomes a normalised CHW tensor.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// ImageNet channel means (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How an image is resized before the evaluation center crop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Scale so the shorter side has this many pixels, keeping the aspect ratio (torchvision `Resize(int)`:
    /// the longer side is truncated to an integer).
    ShorterSide(u32),
    /// Scale to exactly this size, ignoring the aspect ratio.
    Exact {
        /// Height after resizing.
        height: u32,
        /// Width after resizing.
        width: u32,
    },
}

/// Training-time random crop of a random area and aspect ratio, resized to the output size
/// (torchvision `RandomResizedCrop`, including its 10 tries and center-crop fallback).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image area.
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: [f64; 2],
}

impl Default for RandomResizedCrop {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3).
    fn default() -> Self {
        RandomResizedCrop {
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
        }
    }
}

/// Image preprocessing: geometry, channel conversion and normalisation, producing `channels × height × width`
/// `f32` values `(pixel / 255 - mean[c]) / std[c]`.
///
/// * **Evaluation** (and training when `random_resized_crop` is `None`): [`Resize`], then a center crop to
///   `height × width`.
/// * **Training** with `random_resized_crop`: a random crop resized to `height × width`; then, in training only,
///   a horizontal flip with probability `hflip_prob`.
///
/// Resampling is bilinear (a triangle filter whose support widens when downscaling, as in Pillow / torchvision
/// with antialiasing), done in one pass straight from the decoded pixels to the output: the resize and the
/// crop never materialise an intermediate image. Greyscale sources are replicated to 3 channels; RGB sources
/// are converted to luma (0.299 R + 0.587 G + 0.114 B) when `channels` is 1. Alpha is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Output height in pixels.
    pub height: u32,
    /// Output width in pixels.
    pub width: u32,
    /// Output channels: 3 (RGB) or 1 (greyscale).
    pub channels: usize,
    /// Resize applied before the evaluation center crop.
    pub resize: Resize,
    /// Training-time random resized crop; `None` uses the evaluation geometry in training too.
    #[serde(default)]
    pub random_resized_crop: Option<RandomResizedCrop>,
    /// Probability of a horizontal flip in training (0 disables it).
    #[serde(default)]
    pub hflip_prob: f64,
    /// Per-channel mean subtracted after scaling to [0, 1]; one value per output channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by; one positive value per output channel.
    pub std: Vec<f32>,
}

impl Preprocess {
    /// The torchvision ImageNet recipe for a `size × size` RGB model: evaluation resizes the shorter side to
    /// `size * 256 / 224` and center-crops `size`; training uses a default random resized crop and a flip with
    /// p = 0.5; ImageNet mean and std.
    pub fn imagenet(size: u32) -> Self {
        Preprocess {
            height: size,
            width: size,
            channels: 3,
            resize: Resize::ShorterSide(size * 256 / 224),
            random_resized_crop: Some(RandomResizedCrop::default()),
            hflip_prob: 0.5,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// Resize to exactly `height × width` with `channels` channels and values in [0, 1] (mean 0, std 1), no
    /// augmentation: for small models trained from scratch on e.g. 28 × 28 greyscale data.
    pub fn plain(height: u32, width: u32, channels: usize) -> Self {
        Preprocess {
            height,
            width,
            channels,
            resize: Resize::Exact { height, width },
            random_resized_crop: None,
            hflip_prob: 0.0,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The same settings with training augmentation (random crop, flip) turned off.
    pub fn without_augmentation(mut self) -> Self {
        self.random_resized_crop = None;
        self.hflip_prob = 0.0;
        self
    }

    /// Number of `f32` values one image occupies: `channels * height * width`.
    pub fn sample_len(&self) -> usize {
        self.channels * self.height as usize * self.width as usize
    }

    /// The `[channels, height, width]` shape of one preprocessed image.
    pub fn chw(&self) -> [usize; 3] {
        [self.channels, self.height as usize, self.width as usize]
    }

    /// Checks every field; the loader calls this, so a bad config fails before any image is read.
    pub fn validate(&self) -> Result<()> {
        if self.height == 0 || self.width == 0 {
            return Err(DataError::config(
                "height/width",
                "the output size must be at least 1 × 1",
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::config(
                "channels",
                format!("{} is not supported; use 1 or 3", self.channels),
            ));
        }
        self.validate_normalization()?;
        self.validate_resize()?;
        if let Some(rrc) = &self.random_resized_crop {
            validate_random_resized_crop(rrc)?;
        }
        if !(0.0..=1.0).contains(&self.hflip_prob) {
            return Err(DataError::config(
                "hflip_prob",
                format!("{} is not a probability in [0, 1]", self.hflip_prob),
            ));
        }
        Ok(())
    }

    fn validate_normalization(&self) -> Result<()> {
        for (field, values) in [("mean", &self.mean), ("std", &self.std)] {
            if values.len() != self.channels {
                return Err(DataError::config(
                    field,
                    format!(
                        "has {} values but channels = {}; give one value per channel",
                        values.len(),
                        self.channels
                    ),
                ));
            }
        }
        if let Some(bad) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::config(
                "std",
                format!("{bad} is not a positive number"),
            ));
        }
        if let Some(bad) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(DataError::config(
                "mean",
                format!("{bad} is not a finite number"),
            ));
        }
        Ok(())
    }

    fn validate_resize(&self) -> Result<()> {
        let (h, w) = (self.height, self.width);
        match self.resize {
            Resize::ShorterSide(s) if s < h.max(w) => Err(DataError::config(
                "resize.shorter_side",
                format!("{s} is smaller than the {h} × {w} output, so the center crop would not fit; use ≥ {}", h.max(w)),
            )),
            Resize::Exact { height, width } if height < h || width < w => Err(DataError::config(
                "resize.exact",
                format!("{height} × {width} is smaller than the {h} × {w} output; the center crop would not fit"),
            )),
            _ => Ok(()),
        }
    }
}

fn validate_random_resized_crop(rrc: &RandomResizedCrop) -> Result<()> {
    let [s0, s1] = rrc.scale;
    if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
        return Err(DataError::config(
            "random_resized_crop.scale",
            format!("[{s0}, {s1}] must satisfy 0 < min ≤ max ≤ 1"),
        ));
    }
    let [r0, r1] = rrc.ratio;
    if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
        return Err(DataError::config(
            "random_resized_crop.ratio",
            format!("[{r0}, {r1}] must satisfy 0 < min ≤ max"),
        ));
    }
    Ok(())
}
