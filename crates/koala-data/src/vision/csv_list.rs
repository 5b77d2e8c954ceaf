//! [`ImageFiles::open_csv`]: a CSV file of `path,label` lines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::files::ImageFiles;
use super::source::numeric_class_names;
use crate::error::{DataError, Result};

impl ImageFiles {
    /// Reads a CSV list of `path,label` lines.
    ///
    /// * `path` is relative to the CSV file's folder (absolute paths are kept). The line is split at its
    ///   **last** comma, so paths may contain commas; surrounding double quotes and spaces are stripped.
    /// * `label` is either a non-negative integer on every line (class names become `"0"`, `"1"`, …) or a class
    ///   name on every line (classes are the distinct names sorted, label = position). Mixing both is an error.
    /// * An optional header line such as `path,label` or `file,class` is recognised and skipped; empty lines and
    ///   lines starting with `#` are ignored.
    ///
    /// Every listed file must exist when the list is opened, so a typo fails fast with `file:line` rather than
    /// silently skipping samples during training. Files that exist but fail to decode are skipped by the loader.
    pub fn open_csv(csv_path: impl AsRef<Path>) -> Result<Self> {
        let csv_path = csv_path.as_ref();
        let text = std::fs::read_to_string(csv_path).map_err(|e| DataError::io(csv_path, e))?;
        // Spreadsheet exports often start with a UTF-8 byte-order mark, which would hide the header.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let base = csv_path.parent().unwrap_or_else(|| Path::new("."));
        let entries = parse_entries(csv_path, base, text)?;
        if entries.is_empty() {
            return Err(DataError::layout(
                csv_path,
                "lists no images; expected lines of the form `path,label`",
            ));
        }
        let (class_names, labels) = resolve_labels(csv_path, &entries)?;
        let samples = entries.into_iter().map(|e| e.path).zip(labels).collect();
        Ok(ImageFiles::new(csv_path, class_names, samples))
    }
}

/// One data line before labels are resolved.
struct Entry {
    line: usize,
    path: PathBuf,
    label: RawLabel,
}

enum RawLabel {
    Index(i64),
    Name(String),
}

/// Parses the data lines of the CSV text, skipping blanks, comments and a header.
fn parse_entries(csv_path: &Path, base: &Path, text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let bad = |message: String| DataError::Csv {
            path: csv_path.to_path_buf(),
            line,
            message,
        };
        let (path, label) = content
            .rsplit_once(',')
            .map(|(p, l)| (unquote(p), unquote(l)))
            .ok_or_else(|| bad(format!("expected `path,label`, found `{content}`")))?;
        if std::mem::take(&mut first) && is_header(path, label) {
            continue;
        }
        if path.is_empty() || label.is_empty() {
            return Err(bad(format!(
                "empty path or label in `{content}`; expected `path,label`"
            )));
        }
        let label = match label.parse::<i64>() {
            Ok(v) if v < 0 => {
                return Err(bad(format!("label {v} is negative; labels are 0, 1, 2, …")))
            }
            Ok(v) => RawLabel::Index(v),
            Err(_) => RawLabel::Name(label.to_owned()),
        };
        let resolved = base.join(path);
        if !resolved.is_file() {
            return Err(bad(format!(
                "image file `{path}` not found (resolved to {})",
                resolved.display()
            )));
        }
        entries.push(Entry {
            line,
            path: resolved,
            label,
        });
    }
    Ok(entries)
}

/// Turns raw labels into label indices and class names; all lines must use the same kind of label.
fn resolve_labels(csv_path: &Path, entries: &[Entry]) -> Result<(Vec<String>, Vec<i64>)> {
    let by_name = matches!(entries[0].label, RawLabel::Name(_));
    if let Some(odd) = entries
        .iter()
        .find(|e| matches!(e.label, RawLabel::Name(_)) != by_name)
    {
        let first_kind = if by_name {
            "a class name"
        } else {
            "an integer"
        };
        return Err(DataError::Csv {
            path: csv_path.to_path_buf(),
            line: odd.line,
            message: format!(
                "label kind differs from line {} ({first_kind}); use integers on every line or class names on \
                 every line",
                entries[0].line
            ),
        });
    }
    if by_name {
        let names: BTreeSet<&str> = entries.iter().filter_map(|e| name_of(&e.label)).collect();
        let names: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let labels = entries
            .iter()
            .filter_map(|e| name_of(&e.label))
            .map(|n| {
                names
                    .binary_search_by(|c| c.as_str().cmp(n))
                    .expect("name collected above") as i64
            })
            .collect();
        Ok((names, labels))
    } else {
        let labels: Vec<i64> = entries
            .iter()
            .map(|e| {
                if let RawLabel::Index(v) = e.label {
                    v
                } else {
                    0
                }
            })
            .collect();
        let num_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        Ok((numeric_class_names(num_classes), labels))
    }
}

fn name_of(label: &RawLabel) -> Option<&str> {
    match label {
        RawLabel::Name(n) => Some(n),
        RawLabel::Index(_) => None,
    }
}

/// Whether the first line is a header such as `path,label`.
fn is_header(path: &str, label: &str) -> bool {
    const PATH_WORDS: &[&str] = &[
        "path",
        "file",
        "filename",
        "file_name",
        "image",
        "image_path",
    ];
    const LABEL_WORDS: &[&str] = &["label", "class", "class_name", "target", "category"];
    let is = |words: &[&str], s: &str| words.iter().any(|w| w.eq_ignore_ascii_case(s));
    is(PATH_WORDS, path) && is(LABEL_WORDS, label)
}

/// Trims spaces and one pair of surrounding double quotes.
fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
}
