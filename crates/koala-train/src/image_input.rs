//! The image classifier's data input: its layout (NCHW or NHWC), element type (float32 or
//! uint8), channels (3 or 1) and any fixed height × width, read from the declared shape.
//!
//! One [`ImageInput`] decides how every batch reaches the model, in training (the training
//! graph's data input), in the in-run evaluation, in the export check and in `koala eval`, so
//! all four feed the same values. The loader always produces NCHW float32; the conversion to
//! the model's layout and type happens on the host ([`koala_data::to_model_input`]), never in
//! the graph, so the exported file is the user's model.

use crate::image_size::ImageSize;
use anyhow::{bail, Context, Result};
use koala_data::{InputLayout, ModelPixels, PixelType};
use koala_graph::proto::DataType;
use koala_graph::Model;
use koala_runtime::TensorView;

/// What koala knows about a classifier's image input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInput {
    /// The graph input's name.
    pub name: String,
    /// Axis order.
    pub layout: InputLayout,
    /// float32 (normalised by koala) or uint8 (raw bytes, normalised by the model).
    pub pixels: PixelType,
    /// 3 (RGB) or 1 (greyscale).
    pub channels: usize,
    /// Height × width when the model fixes them.
    pub fixed_size: Option<(u32, u32)>,
    /// A remark for the log (an ambiguous shape read one way).
    pub note: Option<String>,
    /// Whether the graph normalises its float input itself, which sets the default mean/std.
    pub in_graph: InGraphNormalisation,
    /// The normalising constants as `Sub 'mean'`, in node order (for the log).
    pub in_graph_constants: Vec<String>,
}

/// How a float model normalises its input inside the graph (`Sub(mean)`, `Div(std)`,
/// `Div(255)`… before its first parametrised op, see
/// [`koala_graph::trainable::preprocessing_constants`]). Such a model must not also be fed
/// ImageNet-normalised pixels: that normalises twice, silently. The default mean/std are
/// chosen so the model sees the pixel range its constants were written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InGraphNormalisation {
    /// No normalising constants: koala normalises (ImageNet statistics by default).
    None,
    /// Constants written for pixels in [0, 1] (torchvision's `Sub(0.485…)`, `Div(0.229…)`):
    /// koala feeds `x/255` (mean 0, std 1).
    UnitRange,
    /// A first `Div(~255)`/`Mul(~1/255)`, or Caffe-style means > 1 (`Sub(123.68…)`): koala
    /// feeds raw 0–255 floats (mean 0, std 1/255).
    RawPixels,
}

/// A multiplier below this (a division by more than 10) only makes sense on 0–255 pixels:
/// `1/255`, `1/127.5`, Caffe's `1/58`. On [0, 1] pixels normalising multiplies by ≥ 1 (1/std).
const RAW_SCALE_BELOW: f32 = 0.1;

/// Reads how `model` normalises inside from its first readable preprocessing constant in node
/// order (the one applied to the pixels as fed), and lists the constants as `Op 'name'`.
pub fn in_graph_normalisation(model: &Model) -> (InGraphNormalisation, Vec<String>) {
    let g = model.graph();
    let first_use = |name: &str| {
        g.node
            .iter()
            .position(|n| n.input.iter().any(|x| x == name))
            .unwrap_or(usize::MAX)
    };
    let mut constants = koala_graph::trainable::preprocessing_constants(model);
    if constants.is_empty() {
        return (InGraphNormalisation::None, Vec::new());
    }
    constants.sort_by_key(|c| first_use(&c.name));
    let labels = constants
        .iter()
        .map(|c| format!("{} '{}'", c.op, c.name))
        .collect();
    let decided = constants.iter().find_map(|c| {
        let v = Some(&c.values).filter(|v| !v.is_empty())?;
        let raw = match c.op.as_str() {
            "Sub" | "Add" => v.iter().any(|m| m.abs() > 1.0),
            "Div" => v.iter().all(|d| d.abs() > 1.0 / RAW_SCALE_BELOW),
            "Mul" => v.iter().all(|m| m.abs() < RAW_SCALE_BELOW),
            _ => return None,
        };
        Some(if raw {
            InGraphNormalisation::RawPixels
        } else {
            InGraphNormalisation::UnitRange
        })
    });
    (decided.unwrap_or(InGraphNormalisation::UnitRange), labels)
}

/// The layouts koala accepts, for refusals.
const ACCEPTED: &str = "koala feeds [N, C, H, W] (NCHW) or [N, H, W, C] (NHWC) images with C = 3 (RGB) or 1 (greyscale), as float32 or uint8";

impl ImageInput {
    /// Reads the data input of `model` (its first graph input that is not an initializer).
    pub fn of_model(model: &Model) -> Result<ImageInput> {
        let name = crate::eval::data_input(model)?;
        let info = model
            .graph()
            .input
            .iter()
            .find(|i| i.name == name)
            .context("the data input has no declaration")?;
        let dims = koala_graph::training::declared_dims(info);
        let dtype = koala_graph::probe::input_dtype(info).unwrap_or(DataType::Float);
        let mut input = Self::from_declaration(&name, &dims, dtype)?;
        (input.in_graph, input.in_graph_constants) = in_graph_normalisation(model);
        Ok(input)
    }

    /// Decides the layout from declared `dims` (None = dynamic) and the element type.
    ///
    /// A channel axis of size 1 or 3 at position 1 means NCHW, at position 3 NHWC; when both
    /// fit (e.g. `[N, 3, H, 3]`) NCHW wins with a note; when neither axis is fixed (a fully
    /// dynamic input) koala assumes NCHW RGB, as torchvision exports are. Anything else is
    /// refused, naming the input and its shape: koala would otherwise read e.g. `[N, 16, 16, 3]`
    /// as 16 channels.
    pub fn from_declaration(name: &str, dims: &[Option<i64>], dtype: DataType) -> Result<Self> {
        let shape = shape_text(dims);
        let pixels = match dtype {
            DataType::Float => PixelType::F32,
            DataType::Uint8 => PixelType::U8,
            other => bail!(
                "model input '{name}' {shape} is {other:?}; {ACCEPTED}. Convert the model's input to float32 (or uint8 with the Cast inside)"
            ),
        };
        if dims.len() != 4 {
            bail!(
                "model input '{name}' has shape {shape} (rank {}), not an image batch; {ACCEPTED}",
                dims.len()
            );
        }
        let is_channels = |d: Option<i64>| matches!(d, Some(1) | Some(3));
        let (layout, note) = match (dims[1], dims[3]) {
            (c, last) if is_channels(c) => {
                let note = is_channels(last).then(|| {
                    format!("model input '{name}' {shape} could be NCHW or NHWC; koala reads it as NCHW (channels on axis 1)")
                });
                (InputLayout::Nchw, note)
            }
            (_, c) if is_channels(c) => (InputLayout::Nhwc, None),
            (None, _) => (
                InputLayout::Nchw,
                Some(format!("model input '{name}' {shape} does not fix its channel axis; koala feeds NCHW RGB")),
            ),
            _ => bail!(
                "model input '{name}' has shape {shape}: neither axis 1 nor axis 3 is a channel axis of size 3 or 1; {ACCEPTED}"
            ),
        };
        let (c_axis, h_axis, w_axis) = match layout {
            InputLayout::Nchw => (1, 2, 3),
            InputLayout::Nhwc => (3, 1, 2),
        };
        let channels = dims[c_axis].unwrap_or(3) as usize;
        let fixed_size = match (dims[h_axis], dims[w_axis]) {
            (Some(h), Some(w)) if h > 0 && w > 0 => Some((h as u32, w as u32)),
            _ => None,
        };
        Ok(ImageInput {
            name: name.to_string(),
            layout,
            pixels,
            channels,
            fixed_size,
            note,
            in_graph: InGraphNormalisation::None,
            in_graph_constants: Vec::new(),
        })
    }

    /// The mean koala subtracts when `--mean` is not given: ImageNet's, or 0 when the model
    /// normalises inside (see [`InGraphNormalisation`]).
    pub fn default_mean(&self) -> Vec<f32> {
        match self.in_graph {
            InGraphNormalisation::None => crate::preprocess_metadata::default_mean(self.channels),
            _ => vec![0.0; self.channels],
        }
    }

    /// The std koala divides by when `--std` is not given: ImageNet's; 1 (pixels in [0, 1])
    /// or 1/255 (raw 0–255 floats) when the model normalises inside.
    pub fn default_std(&self) -> Vec<f32> {
        match self.in_graph {
            InGraphNormalisation::None => crate::preprocess_metadata::default_std(self.channels),
            InGraphNormalisation::UnitRange => vec![1.0; self.channels],
            InGraphNormalisation::RawPixels => vec![1.0 / 255.0; self.channels],
        }
    }

    /// Refuses an image size other than the model's fixed one, naming the remedy (`setting`
    /// says where the size came from, e.g. `--image-size`). Checked before any batch so the
    /// user never sees ONNX Runtime's shape error.
    pub fn check_size(&self, size: ImageSize, setting: &str) -> Result<()> {
        let Some((h, w)) = self.fixed_size else {
            return Ok(());
        };
        if (h, w) == (size.height, size.width) {
            return Ok(());
        }
        let want = if h == w {
            h.to_string()
        } else {
            format!("{h}x{w}")
        };
        bail!(
            "model input '{}' takes {h}×{w} images but {setting} is {size}; pass --image-size {want}",
            self.name
        )
    }

    /// The input's shape for a batch of `n` images of `height × width`, in its axis order.
    pub fn shape(&self, n: usize, height: u32, width: u32) -> Vec<usize> {
        let (c, h, w) = (self.channels, height as usize, width as usize);
        match self.layout {
            InputLayout::Nchw => vec![n, c, h, w],
            InputLayout::Nhwc => vec![n, h, w, c],
        }
    }

    /// Whether koala normalises (float input) or the model does (uint8: raw bytes).
    pub fn normalised_by_koala(&self) -> bool {
        self.pixels == PixelType::F32
    }

    /// The loader's NCHW float32 `images` of `shape` in the model's layout and type.
    pub fn convert<'a>(
        &self,
        images: &'a [f32],
        shape: [usize; 4],
    ) -> (ModelPixels<'a>, [usize; 4]) {
        koala_data::to_model_input(images, shape, self.layout, self.pixels)
    }

    /// One line for the log: layout, type, channels.
    pub fn describe(&self) -> String {
        let layout = match self.layout {
            InputLayout::Nchw => "NCHW",
            InputLayout::Nhwc => "NHWC",
        };
        let what = match (self.pixels, self.in_graph) {
            (PixelType::F32, InGraphNormalisation::None) => {
                "float32, normalised by koala".to_string()
            }
            (PixelType::F32, in_graph) => {
                let fed = if in_graph == InGraphNormalisation::RawPixels {
                    "raw 0–255 floats (mean 0, std 1/255)"
                } else {
                    "pixels in [0, 1] (mean 0, std 1)"
                };
                format!(
                    "float32, the model normalises inside ({}): koala feeds {fed} unless --mean/--std say otherwise",
                    self.in_graph_constants.join(", ")
                )
            }
            (PixelType::U8, _) => {
                "uint8: raw 0–255 pixels, no mean/std (the model normalises inside)".to_string()
            }
        };
        format!(
            "input '{}': {layout}, {} channel(s), {what}",
            self.name, self.channels
        )
    }
}

/// A borrowed view of converted pixels, for ONNX Runtime.
pub fn view<'a>(pixels: &'a ModelPixels<'_>, shape: &'a [usize]) -> TensorView<'a> {
    match pixels {
        ModelPixels::F32(v) => TensorView::f32(v, shape),
        ModelPixels::U8(v) => TensorView::u8(v, shape),
    }
}

/// Declared dims as text, e.g. `[?, 16, 16, 3]`.
fn shape_text(dims: &[Option<i64>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dims: &[Option<i64>], dt: DataType) -> Result<ImageInput> {
        ImageInput::from_declaration("input", dims, dt)
    }

    #[test]
    fn layouts_follow_the_channel_axis() {
        let nchw = read(&[None, Some(3), Some(16), Some(16)], DataType::Float).unwrap();
        assert_eq!(
            (nchw.layout, nchw.channels, nchw.fixed_size),
            (InputLayout::Nchw, 3, Some((16, 16)))
        );
        assert!(nchw.note.is_none());
        let nhwc = read(&[None, Some(16), Some(24), Some(3)], DataType::Uint8).unwrap();
        assert_eq!(
            (nhwc.layout, nhwc.pixels, nhwc.channels, nhwc.fixed_size),
            (InputLayout::Nhwc, PixelType::U8, 3, Some((16, 24)))
        );
        assert_eq!(nhwc.shape(2, 16, 24), vec![2, 16, 24, 3]);
        let grey = read(&[None, Some(1), Some(28), Some(28)], DataType::Float).unwrap();
        assert_eq!(grey.channels, 1);
        let grey_last = read(&[None, None, None, Some(1)], DataType::Float).unwrap();
        assert_eq!(
            (grey_last.layout, grey_last.channels, grey_last.fixed_size),
            (InputLayout::Nhwc, 1, None)
        );
    }

    #[test]
    fn ambiguous_and_dynamic_shapes_read_as_nchw_with_a_note() {
        let amb = read(&[None, Some(3), Some(8), Some(3)], DataType::Float).unwrap();
        assert_eq!(amb.layout, InputLayout::Nchw);
        assert!(amb.note.unwrap().contains("[?, 3, 8, 3]"));
        for dims in [[None, None, None, None], [None, None, Some(16), Some(16)]] {
            let dynamic = read(&dims, DataType::Float).unwrap();
            assert_eq!((dynamic.layout, dynamic.channels), (InputLayout::Nchw, 3));
            assert!(dynamic.note.is_some());
        }
    }

    #[test]
    fn other_layouts_are_refused_naming_input_and_shape() {
        for (dims, dt) in [
            (vec![None, Some(16), Some(16), Some(16)], DataType::Float),
            (vec![None, Some(4), None, None], DataType::Float),
            (vec![None, Some(768)], DataType::Float),
            (vec![None, Some(3), Some(16), Some(16)], DataType::Double),
        ] {
            let e = read(&dims, dt).unwrap_err().to_string();
            assert!(
                e.contains("model input 'input'") && e.contains(&shape_text(&dims)),
                "{e}"
            );
            assert!(e.contains("NHWC") && !e.contains("--image-size"), "{e}");
        }
    }
}
