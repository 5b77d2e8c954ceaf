//! [`ImageFiles::open_folder`]: the `root/<class_name>/<image>` layout of torchvision's `ImageFolder`.

use std::fs;
use std::path::{Path, PathBuf};

use super::files::ImageFiles;
use super::source::{has_image_extension, IMAGE_EXTENSIONS};
use super::splits::find_split_folders;
use crate::error::{DataError, Result};

impl ImageFiles {
    /// Scans a class-folder tree: `root/<class_name>/<images>`.
    ///
    /// Classes are the sub-folders of the root sorted by name (hidden entries, starting with `.`, are ignored);
    /// label `i` is the `i`-th class. Images are collected recursively inside each class folder, sorted by path,
    /// and recognised by extension ([`IMAGE_EXTENSIONS`]); other files are ignored. The order is therefore fixed
    /// by the file names alone, which is what makes seeds reproducible across machines.
    ///
    /// Fails if `root` does not exist, holds no class folders, a class folder holds no images, or the class
    /// folders are named like data splits (`train/`, `val/` holding class folders: see
    /// [`super::splits::find_split_folders`]), naming the folder to pass instead.
    pub fn open_folder(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        refuse_split_folders(root)?;
        let class_dirs = class_dirs(root)?;
        let class_names: Vec<String> = class_dirs.iter().map(|(n, _)| n.clone()).collect();
        let mut samples = Vec::new();
        for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
            let images = class_images(&name, &dir)?;
            samples.extend(images.into_iter().map(|p| (p, label as i64)));
        }
        Ok(ImageFiles::new(root, class_names, samples))
    }
}

/// Refuses a root whose sub-folders are data splits rather than classes, naming the folder to pass.
fn refuse_split_folders(root: &Path) -> Result<()> {
    let Some(splits) = find_split_folders(root)? else {
        return Ok(());
    };
    let train = splits.train.as_ref().or(splits.eval.as_ref());
    let hint = match train {
        Some(t) => format!(
            "; pass the folder whose sub-folders are the classes, e.g. {}",
            t.display()
        ),
        None => String::new(),
    };
    Err(DataError::layout(
        root,
        format!(
            "holds data splits, not class folders ({}){hint}",
            splits.roles()
        ),
    ))
}

/// The images of one class folder; an error if it holds none.
fn class_images(name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let images = images_under(dir)?;
    if images.is_empty() {
        return Err(DataError::layout(
            dir,
            format!(
                "class folder `{name}` holds no images (looked for extensions {}); \
                 add images or remove the folder",
                IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    Ok(images)
}

/// The class sub-folders of `root` as `(name, path)`, sorted by name.
fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !root.exists() {
        return Err(DataError::layout(
            root,
            "data folder does not exist; pass a folder that holds one sub-folder of images per class",
        ));
    }
    if !root.is_dir() {
        return Err(DataError::layout(
            root,
            "is a file, not a folder; pass a folder that holds one sub-folder of images per class \
             (or use a CSV list / IDX source for files)",
        ));
    }
    let mut dirs = Vec::new();
    for entry in sorted_entries(root)? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned);
        match name {
            Some(name) if entry.is_dir() && !is_hidden(&entry) => dirs.push((name, entry)),
            _ => {}
        }
    }
    if dirs.is_empty() {
        return Err(DataError::layout(
            root,
            "no class folders found; expected <root>/<class_name>/<image files>, one sub-folder per class",
        ));
    }
    Ok(dirs)
}

/// All image files under `dir` (recursively), sorted by path.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in sorted_entries(&current)? {
            if is_hidden(&entry) {
                continue;
            }
            if entry.is_dir() {
                pending.push(entry);
            } else if has_image_extension(&entry) {
                found.push(entry);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether the file name starts with `.`: hidden folders and macOS `._name.jpg` metadata files, which carry
/// image extensions but are not images.
pub(super) fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The entries of `dir` sorted by file name, so the scan order does not depend on the file system.
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        entries.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    entries.sort();
    Ok(entries)
}
