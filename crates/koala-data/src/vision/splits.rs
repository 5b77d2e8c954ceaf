//! [`find_split_folders`]: a data root one level above the class folders, `root/{train,val}/<class>/<images>`.
//!
//! Read as a class-folder tree, such a root trains a "train vs val" classifier without a word. Folders named
//! like data splits that hold class folders are therefore taken as the splits (or refused, naming the right
//! path, where the layout is ambiguous), never as classes.

use std::path::{Path, PathBuf};

use super::folder::{is_hidden, sorted_entries};
use super::source::has_image_extension;
use crate::error::{DataError, Result};

/// Folder names (compared case-insensitively) that hold training data.
pub const TRAIN_SPLIT_NAMES: &[&str] = &["train", "training"];
/// Folder names (compared case-insensitively) that hold validation data, used for evaluation.
pub const VAL_SPLIT_NAMES: &[&str] = &["val", "valid", "validation", "eval"];
/// Folder names (compared case-insensitively) that hold test data, used for evaluation when there is no
/// validation folder.
pub const TEST_SPLIT_NAMES: &[&str] = &["test"];

/// The split folders found under a data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFolders {
    /// The folder that holds the splits.
    pub root: PathBuf,
    /// The training split (`train`, `training`), if there is one.
    pub train: Option<PathBuf>,
    /// The evaluation split: the validation folder (`val`, `valid`, `validation`, `eval`), else `test`.
    pub eval: Option<PathBuf>,
    /// Whether [`SplitFolders::eval`] is the `test` folder (there is no validation folder).
    pub eval_is_test: bool,
    /// Split folders that are not used (`test` when a validation folder exists).
    pub unused: Vec<PathBuf>,
}

impl SplitFolders {
    /// One line saying which folder became what, for the start of a run.
    pub fn describe(&self) -> String {
        format!(
            "'{}' holds data splits, not class folders: {}",
            self.root.display(),
            self.roles()
        )
    }

    /// Which folder is what: `training data 'root/train', evaluation (val) data 'root/val'`.
    pub fn roles(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.train {
            parts.push(format!("training data '{}'", t.display()));
        }
        if let Some(e) = &self.eval {
            let role = if self.eval_is_test { "test" } else { "val" };
            parts.push(format!("evaluation ({role}) data '{}'", e.display()));
        }
        for u in &self.unused {
            parts.push(format!("'{}' not used", u.display()));
        }
        parts.join(", ")
    }
}

/// Whether `name` is one of the split names above (case-insensitive).
pub fn is_split_name(name: &str) -> bool {
    [TRAIN_SPLIT_NAMES, VAL_SPLIT_NAMES, TEST_SPLIT_NAMES]
        .iter()
        .any(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// Looks for split folders under `root`.
///
/// `Ok(None)`: `root` is not a folder, or its sub-folders are classes (none is named like a split, or the
/// split-named ones hold images directly next to other class folders). `Ok(Some)`: every sub-folder is
/// named like a split and at least one holds class sub-folders. `Err` (naming the path to pass instead) when
/// the layout is ambiguous: split folders holding classes next to other folders, two training or two
/// validation folders, or split-named folders that hold images but no class folders.
pub fn find_split_folders(root: &Path) -> Result<Option<SplitFolders>> {
    if !root.is_dir() {
        return Ok(None);
    }
    let dirs = sub_folders(root)?;
    let split_named: Vec<&(String, PathBuf)> =
        dirs.iter().filter(|(n, _)| is_split_name(n)).collect();
    if split_named.is_empty() {
        return Ok(None);
    }
    let mut with_classes = Vec::new();
    for entry in &split_named {
        if holds_class_folders(&entry.1)? {
            with_classes.push(*entry);
        }
    }
    if with_classes.is_empty() {
        if split_named.len() == dirs.len() && dirs.len() >= 2 {
            return Err(DataError::layout(
                root,
                format!(
                    "holds only folders named like data splits ({}) and no class folders inside them; \
                     koala reads one sub-folder of images per class: put the images in \
                     <split>/<class_name>/ and pass --data {}",
                    names(&split_named),
                    root.join(&split_named[0].0).display()
                ),
            ));
        }
        return Ok(None);
    }
    if with_classes.len() < dirs.len() {
        let others: Vec<&(String, PathBuf)> =
            dirs.iter().filter(|d| !with_classes.contains(d)).collect();
        return Err(DataError::layout(
            root,
            format!(
                "mixes split folders that hold class folders ({}) with other folders ({}); pass the folder \
                 whose sub-folders are the classes, e.g. --data {}",
                names(&with_classes),
                names(&others),
                with_classes[0].1.display()
            ),
        ));
    }
    let train = only_one(root, &with_classes, TRAIN_SPLIT_NAMES, "--data")?;
    let val = only_one(root, &with_classes, VAL_SPLIT_NAMES, "--eval-data")?;
    let test = only_one(root, &with_classes, TEST_SPLIT_NAMES, "--eval-data")?;
    let eval_is_test = val.is_none() && test.is_some();
    let (eval, unused) = match val {
        Some(v) => (Some(v), test.into_iter().collect()),
        None => (test, Vec::new()),
    };
    Ok(Some(SplitFolders {
        root: root.to_path_buf(),
        train,
        eval,
        eval_is_test,
        unused,
    }))
}

/// The one folder of `found` whose name is in `wanted`; an error naming both when there are two.
fn only_one(
    root: &Path,
    found: &[&(String, PathBuf)],
    wanted: &[&str],
    flag: &str,
) -> Result<Option<PathBuf>> {
    let matching: Vec<&(String, PathBuf)> = found
        .iter()
        .copied()
        .filter(|(n, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(n)))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.1.clone())),
        [first, ..] => Err(DataError::layout(
            root,
            format!(
                "holds several folders for the same split ({}); pick one with {flag} {}",
                names(&matching),
                first.1.display()
            ),
        )),
    }
}

/// `a/, b/` for messages.
fn names(dirs: &[&(String, PathBuf)]) -> String {
    dirs.iter()
        .map(|(n, _)| format!("{n}/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The non-hidden sub-folders of `dir` as `(name, path)`, sorted by name.
fn sub_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir() && !is_hidden(p))
        .filter_map(|p| Some((p.file_name()?.to_str()?.to_owned(), p)))
        .collect())
}

/// Whether `dir` has a sub-folder with an image somewhere under it.
fn holds_class_folders(dir: &Path) -> Result<bool> {
    for (_, sub) in sub_folders(dir)? {
        if holds_image(&sub)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether an image file lies anywhere under `dir` (stops at the first).
fn holds_image(dir: &Path) -> Result<bool> {
    for entry in sorted_entries(dir)? {
        if is_hidden(&entry) {
            continue;
        }
        if entry.is_dir() {
            if holds_image(&entry)? {
                return Ok(true);
            }
        } else if has_image_extension(&entry) {
            return Ok(true);
        }
    }
    Ok(false)
}
