//! The [`ImageSource`] trait shared by all on-disk layouts, and the image-file decoding they use.

use std::path::Path;

use image::DynamicImage;

use crate::error::Result;

/// File extensions (lower case) that are treated as images. They match the decoders compiled into the `image`
/// crate for this workspace, so every listed file can at least be attempted.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "gif"];

/// A labelled, indexable collection of images.
///
/// Implementations keep only metadata in memory (paths, labels) or, for small formats like IDX, the raw
/// pixels; decoding happens in [`ImageSource::load`], which the loader calls from several threads at once.
/// Indices passed to `label`, `load` and `describe` are always `< len()`.
pub trait ImageSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether the source holds no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class index of sample `index` (an index into [`ImageSource::class_names`]).
    fn label(&self, index: usize) -> i64;

    /// Decodes sample `index`. A corrupt or unreadable image is an `Err`, which the loader skips and counts.
    fn load(&self, index: usize) -> Result<DynamicImage>;

    /// Class names, ordered by label index.
    fn class_names(&self) -> &[String];

    /// Where sample `index` comes from, for messages: a file path, or `file:record` for IDX.
    fn describe(&self, index: usize) -> String;
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| e.eq_ignore_ascii_case(known))
    })
}

/// Class names `"0"`, `"1"`, … for sources whose labels are bare integers.
pub(crate) fn numeric_class_names(num_classes: usize) -> Vec<String> {
    (0..num_classes).map(|c| c.to_string()).collect()
}
