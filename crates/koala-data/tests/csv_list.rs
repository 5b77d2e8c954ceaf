//! CSV image lists: relative paths, integer or named labels, header detection, and errors at `file:line`.

mod common;

use std::path::Path;

use common::{assert_mentions, write_png};
use koala_data::{DataError, ImageFiles, ImageSource};

fn images(dir: &Path) {
    write_png(&dir.join("img/a.png"), 3, 3, [1, 2, 3]);
    write_png(&dir.join("img/b, with comma.png"), 3, 3, [4, 5, 6]);
    write_png(&dir.join("img/c.png"), 3, 3, [7, 8, 9]);
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("list.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn named_labels_with_header_and_comments() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let csv = write(tmp.path(), "path,label\n# a comment\nimg/a.png,zebra\n\n\"img/b, with comma.png\", ant\nimg/c.png,zebra\n");
    let list = ImageFiles::open_csv(&csv).unwrap();
    assert_eq!(list.class_names(), ["ant", "zebra"]);
    assert_eq!(
        (0..3).map(|i| list.label(i)).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
    assert_eq!(
        list.describe(1),
        tmp.path()
            .join("img/b, with comma.png")
            .display()
            .to_string()
    );
    assert_eq!(list.load(2).unwrap().to_rgb8().get_pixel(0, 0).0, [7, 8, 9]);
}

#[test]
fn integer_labels_without_header() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let abs = tmp.path().join("img/c.png");
    let csv = write(tmp.path(), &format!("img/a.png,2\n{},0\n", abs.display()));
    let list = ImageFiles::open_csv(&csv).unwrap();
    assert_eq!(list.class_names(), ["0", "1", "2"]);
    assert_eq!((list.label(0), list.label(1)), (2, 0));
}

fn csv_error(text: &str) -> (usize, String) {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let csv = write(tmp.path(), text);
    let err = ImageFiles::open_csv(&csv).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("list.csv:"),
        "error should name the file: {shown}"
    );
    match err {
        DataError::Csv { line, .. } => (line, shown),
        other => panic!("expected a CSV error, got {other}"),
    }
}

#[test]
fn bad_lines_are_reported_with_file_and_line() {
    let (line, msg) = csv_error("path,label\nimg/a.png,0\nimg/c.png\n");
    assert_eq!(line, 3);
    assert_mentions(&msg, &["list.csv:3: expected `path,label`"]);

    let (line, msg) = csv_error("img/a.png,0\n\nimg/missing.png,1\n");
    assert_eq!(line, 3);
    assert_mentions(&msg, &["missing.png", "not found"]);

    let (line, msg) = csv_error("img/a.png,cat\nimg/c.png,1\n");
    assert_eq!(line, 2);
    assert_mentions(&msg, &["label kind differs from line 1"]);

    let (line, msg) = csv_error("img/a.png,-1\n");
    assert_eq!(line, 1);
    assert_mentions(&msg, &["negative"]);

    let (line, _) = csv_error("img/a.png,0\n,1\n");
    assert_eq!(line, 2);
}

#[test]
fn empty_and_missing_lists_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = write(tmp.path(), "path,label\n");
    let err = ImageFiles::open_csv(&csv).unwrap_err().to_string();
    assert_mentions(&err, &["list.csv", "lists no images"]);
    let err = ImageFiles::open_csv(tmp.path().join("absent.csv"))
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["absent.csv"]);
}

#[test]
fn byte_order_mark_does_not_hide_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let csv = write(tmp.path(), "\u{feff}path,label\r\nimg/a.png,dog\r\n");
    let list = ImageFiles::open_csv(&csv).unwrap();
    assert_eq!(
        (list.len(), list.class_names()),
        (1, &["dog".to_string()][..])
    );
}
