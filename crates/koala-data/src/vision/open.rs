//! [`open_source`]: pick the right source for a path given on the command line.

use std::path::Path;
use std::sync::Arc;

use super::decode::ReadOptions;
use super::files::ImageFiles;
use super::idx::{IdxSource, IdxSplit};
use super::source::ImageSource;
use crate::error::{DataError, Result};

/// Opens `path` as whichever layout it is, so a command line can take one `--data PATH`:
///
/// * a file ending in `.csv` → [`ImageFiles::open_csv`];
/// * a folder holding IDX files (`<split>-images-idx3-ubyte[.gz]`, e.g. MNIST / Fashion-MNIST) →
///   [`IdxSource::from_dir`] with `idx_split` (`Train` for training data, `Test` for evaluation);
/// * any other folder → [`ImageFiles::open_folder`] (one sub-folder per class).
pub fn open_source(path: impl AsRef<Path>, idx_split: IdxSplit) -> Result<Arc<dyn ImageSource>> {
    open_source_with(path, idx_split, ReadOptions::default())
}

/// [`open_source`] reading image files with `read` (IDX records have no EXIF and ignore it).
pub fn open_source_with(
    path: impl AsRef<Path>,
    idx_split: IdxSplit,
    read: ReadOptions,
) -> Result<Arc<dyn ImageSource>> {
    let path = path.as_ref();
    if path.is_file() {
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if !is_csv {
            return Err(DataError::layout(
                path,
                "is a file but not a .csv list; pass a folder of class sub-folders, a folder of IDX files, \
                 or a CSV file of `path,label` lines",
            ));
        }
        return Ok(Arc::new(
            ImageFiles::open_csv(path)?.with_read_options(read),
        ));
    }
    if holds_idx_images(path) {
        return Ok(Arc::new(IdxSource::from_dir(path, idx_split)?));
    }
    Ok(Arc::new(
        ImageFiles::open_folder(path)?.with_read_options(read),
    ))
}

/// Whether `dir` holds an IDX image file of either split, in any accepted spelling.
fn holds_idx_images(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        [IdxSplit::Train, IdxSplit::Test]
            .iter()
            .any(|s| name.starts_with(&format!("{}-images", s.prefix())))
            && name.contains("idx3-ubyte")
    })
}
