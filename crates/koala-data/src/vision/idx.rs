//! [`IdxSource`]: MNIST / Fashion-MNIST IDX files (plain or gzip-compressed), held in memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage};

use super::source::{numeric_class_names, ImageSource};
use crate::error::{DataError, Result};

/// IDX magic of a 3-D unsigned-byte array (images: count × rows × cols).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of a 1-D unsigned-byte array (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Class names of Fashion-MNIST, by label index, for [`IdxSource::with_class_names`].
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which pair of standard file names [`IdxSource::from_dir`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxSplit {
    /// `train-images-idx3-ubyte` + `train-labels-idx1-ubyte`.
    Train,
    /// `t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte`.
    Test,
}

impl IdxSplit {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            IdxSplit::Train => "train",
            IdxSplit::Test => "t10k",
        }
    }
}

/// Greyscale images and their labels from an IDX image file and an IDX label file.
///
/// The whole file is decompressed into memory at open time: the data sets stored this way are small (MNIST is
/// 47 MB uncompressed) and it makes [`ImageSource::load`] a copy of `rows × cols` bytes.
#[derive(Debug, Clone)]
pub struct IdxSource {
    images_path: PathBuf,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    class_names: Vec<String>,
}

impl IdxSource {
    /// Opens an image file (magic `0x00000803`) and a label file (magic `0x00000801`). Either may be
    /// gzip-compressed; compression is detected from the content, not the name.
    pub fn open(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let (images, labels) = (images.as_ref(), labels.as_ref());
        let (image_dims, pixels) = read_idx(images, IDX_IMAGES_MAGIC, "images")?;
        let (label_dims, label_bytes) = read_idx(labels, IDX_LABELS_MAGIC, "labels")?;
        if image_dims[0] != label_dims[0] {
            return Err(DataError::idx(
                images,
                format!(
                    "holds {} images but {} holds {} labels; pass the label file that belongs to these images",
                    image_dims[0],
                    labels.display(),
                    label_dims[0]
                ),
            ));
        }
        let num_classes = label_bytes
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        Ok(IdxSource {
            images_path: images.to_path_buf(),
            rows: image_dims[1],
            cols: image_dims[2],
            pixels,
            labels: label_bytes,
            class_names: numeric_class_names(num_classes),
        })
    }

    /// Opens the standard file names of `split` in `dir`: e.g. `train-images-idx3-ubyte[.gz]` and
    /// `train-labels-idx1-ubyte[.gz]` (the `train-images.idx3-ubyte` spelling is accepted too).
    pub fn from_dir(dir: impl AsRef<Path>, split: IdxSplit) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::layout(
                dir,
                "IDX data folder does not exist (or is not a folder)",
            ));
        }
        let images = find_standard_file(dir, split.prefix(), "images", 3)?;
        let labels = find_standard_file(dir, split.prefix(), "labels", 1)?;
        Self::open(images, labels)
    }

    /// Replaces the numeric class names (`"0"`, `"1"`, …), e.g. with [`FASHION_MNIST_CLASSES`]. Fails if there are
    /// fewer names than label values.
    pub fn with_class_names<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.len() < self.class_names.len() {
            return Err(DataError::config(
                "class_names",
                format!(
                    "{} names given but the labels of {} go up to {}",
                    names.len(),
                    self.images_path.display(),
                    self.class_names.len() - 1
                ),
            ));
        }
        self.class_names = names;
        Ok(self)
    }

    /// Image height and width in pixels.
    pub fn image_size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The raw pixels of sample `index`, row-major.
    pub fn pixels(&self, index: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[index * n..(index + 1) * n]
    }
}

impl ImageSource for IdxSource {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, index: usize) -> i64 {
        i64::from(self.labels[index])
    }

    fn load(&self, index: usize) -> Result<DynamicImage> {
        let image = GrayImage::from_raw(
            self.cols as u32,
            self.rows as u32,
            self.pixels(index).to_vec(),
        )
        .expect("IDX pixel slice length is rows * cols by construction");
        Ok(DynamicImage::ImageLuma8(image))
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn describe(&self, index: usize) -> String {
        format!("{}:{index}", self.images_path.display())
    }
}

/// Finds `<prefix>-<kind>-idx<ndims>-ubyte` (or `.idx<ndims>-ubyte`), with or without `.gz`, in `dir`.
fn find_standard_file(dir: &Path, prefix: &str, kind: &str, ndims: u32) -> Result<PathBuf> {
    let stems = [
        format!("{prefix}-{kind}-idx{ndims}-ubyte"),
        format!("{prefix}-{kind}.idx{ndims}-ubyte"),
    ];
    let candidates: Vec<String> = stems
        .iter()
        .flat_map(|s| [format!("{s}.gz"), s.clone()])
        .collect();
    candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DataError::layout(
                dir,
                format!(
                    "no IDX {kind} file found; looked for {}",
                    candidates.join(", ")
                ),
            )
        })
}

/// Reads an unsigned-byte IDX file with the given magic and returns its dimensions and data.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gzip(path)?;
    let found = be_u32(&bytes, 0).ok_or_else(|| {
        DataError::idx(
            path,
            format!(
                "only {} bytes, too short for an IDX header; is this an IDX file?",
                bytes.len()
            ),
        )
    })?;
    if found != magic {
        return Err(DataError::idx(
            path,
            format!(
                "bad magic 0x{found:08x}; expected 0x{magic:08x} for an unsigned-byte {what} file \
                 (0x00000803 = images, 0x00000801 = labels); check that images and labels were not swapped"
            ),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let dims: Vec<usize> = (0..ndims)
        .map(|d| be_u32(&bytes, 4 + 4 * d).map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| DataError::idx(path, "truncated header: the dimension sizes are missing"))?;
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let actual = bytes.len() - header_len;
    match expected {
        Some(expected) if expected == actual => {}
        Some(expected) if actual < expected => {
            return Err(DataError::idx(
                path,
                format!(
                    "truncated: dimensions {dims:?} need {expected} data bytes but only {actual} are present; \
                     download the file again"
                ),
            ))
        }
        _ => {
            return Err(DataError::idx(
                path,
                format!("dimensions {dims:?} do not match the {actual} data bytes present; the file is corrupt"),
            ))
        }
    }
    let mut data = bytes;
    data.drain(..header_len);
    Ok((dims, data))
}

/// Reads a file, transparently decompressing it if it starts with the gzip magic bytes.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| {
            DataError::idx(
                path,
                format!("gzip stream is truncated or corrupt ({e}); download the file again"),
            )
        })?;
    Ok(out)
}

/// The big-endian u32 at `offset`, if the slice is long enough.
fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}
