//! What the loader hands out: [`Batch`], the [`Cursor`] to resume from, skipped-sample reports and
//! [`LoaderStats`].

use std::time::Duration;

pub use crate::cursor::Cursor;

/// One batch of preprocessed images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `shape[0] × shape[1] × shape[2] × shape[3]` values, NCHW, row-major.
    pub images: Vec<f32>,
    /// Label of each image.
    pub labels: Vec<i64>,
    /// Index of each image in the loader's source.
    pub indices: Vec<usize>,
    /// `[N, C, H, W]`. `N` can be below the batch size for the last batch of an epoch (without `drop_last`) and
    /// when samples were skipped because they failed to decode.
    pub shape: [usize; 4],
    /// Where this batch sits in the stream.
    pub cursor: Cursor,
    /// The cursor of the batch after this one: save it with a checkpoint taken after training on this batch.
    pub next: Cursor,
}

impl Batch {
    /// Number of images (`shape[0]`).
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no images (never the case for batches the loader yields).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

/// A sample that was left out of its batch because it could not be loaded or preprocessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSample {
    /// Where it happened.
    pub cursor: Cursor,
    /// Index in the loader's source.
    pub index: usize,
    /// The sample's path (or `file:record`), from [`crate::ImageSource::describe`].
    pub what: String,
    /// The error message.
    pub error: String,
}

impl SkippedSample {
    /// The warning without the epoch and batch: for evaluation data, read in one pass in order,
    /// where "(epoch 0, batch 0)" says nothing.
    pub fn without_position(&self) -> String {
        self.message(None)
    }

    /// `unreadable sample [WHAT] skipped[ (POSITION)]: ERROR`.
    fn message(&self, position: Option<String>) -> String {
        // Decoding errors already name the file; saying it twice makes the line hard to read.
        let what = if self.error.contains(&self.what) {
            String::new()
        } else {
            format!(" {}", self.what)
        };
        let position = position.map(|p| format!(" ({p})")).unwrap_or_default();
        format!("unreadable sample{what} skipped{position}: {}", self.error)
    }
}

impl std::fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(Some(format!(
            "epoch {}, batch {}",
            self.cursor.epoch, self.cursor.position
        ))))
    }
}

/// Counters of one [`crate::BatchIter`], for judging whether data loading slows training down.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderStats {
    /// Total time the consumer spent blocked in `next()` waiting for a batch. In steady state with enough
    /// prefetch this stays near zero; a growing value means the training step outpaces decoding.
    pub wait_time: Duration,
    /// Batches yielded.
    pub batches: usize,
    /// Images yielded.
    pub samples: usize,
    /// Distinct samples skipped: a corrupt file counts once, however many epochs it fails in.
    pub skipped: usize,
    /// The first failure of each skipped sample, in stream order.
    pub skipped_samples: Vec<SkippedSample>,
}

/// How a model's image input orders a batch's axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// `[N, C, H, W]`: PyTorch's order, and what the loader produces.
    Nchw,
    /// `[N, H, W, C]`: channels last (TensorFlow/Keras exports, models with a Transpose inside).
    Nhwc,
}

/// The element type a model's image input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelType {
    /// Normalised float32 values `(pixel / 255 - mean) / std`.
    F32,
    /// Raw 0–255 bytes; the model casts and normalises inside. The loader's values must then
    /// be un-normalised (mean 0, std 1), i.e. `pixel / 255`.
    U8,
}

/// A batch as the model's input takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelPixels<'a> {
    /// float32 values (borrowed when no conversion was needed).
    F32(std::borrow::Cow<'a, [f32]>),
    /// uint8 bytes.
    U8(Vec<u8>),
}

/// Converts NCHW loader values of `shape` (`[N, C, H, W]`) to `layout` and `pixels`, returning
/// the data and its shape in the model's axis order.
///
/// This runs on the host, not in the training graph, so the graph (and the exported file)
/// stays the user's model. NCHW float32 borrows `images` unchanged. For [`PixelType::U8`] the
/// values are expected in `[0, 1]` (mean 0, std 1) and become `round(v * 255)`: for pixels the
/// resampler did not touch this gives back the decoded bytes exactly.
pub fn to_model_input(
    images: &[f32],
    shape: [usize; 4],
    layout: InputLayout,
    pixels: PixelType,
) -> (ModelPixels<'_>, [usize; 4]) {
    let [n, c, h, w] = shape;
    let (values, out_shape): (std::borrow::Cow<'_, [f32]>, [usize; 4]) = match layout {
        InputLayout::Nchw => (images.into(), shape),
        InputLayout::Nhwc => (nchw_to_nhwc(images, shape).into(), [n, h, w, c]),
    };
    let data = match pixels {
        PixelType::F32 => ModelPixels::F32(values),
        PixelType::U8 => ModelPixels::U8(values.iter().map(|&v| unit_to_byte(v)).collect()),
    };
    (data, out_shape)
}

/// `[N, C, H, W]` → `[N, H, W, C]`.
pub fn nchw_to_nhwc(images: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0.0; images.len()];
    for b in 0..n {
        let src = &images[b * c * plane..(b + 1) * c * plane];
        let dst = &mut out[b * c * plane..(b + 1) * c * plane];
        for ch in 0..c {
            for p in 0..plane {
                dst[p * c + ch] = src[ch * plane + p];
            }
        }
    }
    out
}

/// A value in `[0, 1]` as the nearest byte (what Pillow's uint8 resize rounds to).
fn unit_to_byte(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn nhwc_puts_each_pixels_channels_together() {
        // Two images, 3 channels, 1×2 pixels: value = 100·image + 10·channel + pixel.
        let shape = [2, 3, 1, 2];
        let nchw: Vec<f32> = (0..2)
            .flat_map(|b| {
                (0..3).flat_map(move |c| (0..2).map(move |p| (100 * b + 10 * c + p) as f32))
            })
            .collect();
        let (out, s) = to_model_input(&nchw, shape, InputLayout::Nhwc, PixelType::F32);
        assert_eq!(s, [2, 1, 2, 3]);
        let want: Vec<f32> = [0, 10, 20, 1, 11, 21, 100, 110, 120, 101, 111, 121]
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_eq!(out, ModelPixels::F32(want.into()));
    }

    #[test]
    fn uint8_gives_back_the_bytes() {
        let bytes: Vec<u8> = vec![0, 1, 127, 128, 254, 255];
        let unit: Vec<f32> = bytes.iter().map(|&b| b as f32 / 255.0).collect();
        let (out, s) = to_model_input(&unit, [1, 1, 2, 3], InputLayout::Nchw, PixelType::U8);
        assert_eq!(s, [1, 1, 2, 3]);
        assert_eq!(out, ModelPixels::U8(bytes));
    }
}
