//! `open_source` picks the layout from the path: CSV file, IDX folder, or class-folder tree.

mod common;

use common::{assert_mentions, fashion_dir, write_png};
use koala_data::{open_source, IdxSplit};

#[test]
fn each_layout_is_recognised() {
    assert_eq!(
        open_source(fashion_dir(), IdxSplit::Train).unwrap().len(),
        2000
    );
    assert_eq!(
        open_source(fashion_dir(), IdxSplit::Test).unwrap().len(),
        500
    );

    let tmp = tempfile::tempdir().unwrap();
    write_png(&tmp.path().join("pets/cat/a.png"), 2, 2, [0, 0, 0]);
    write_png(&tmp.path().join("pets/dog/b.png"), 2, 2, [9, 9, 9]);
    let folder = open_source(tmp.path().join("pets"), IdxSplit::Train).unwrap();
    assert_eq!(folder.class_names(), ["cat", "dog"]);

    std::fs::write(tmp.path().join("list.CSV"), "pets/dog/b.png,1\n").unwrap();
    let csv = open_source(tmp.path().join("list.CSV"), IdxSplit::Train).unwrap();
    assert_eq!((csv.len(), csv.label(0)), (1, 1));

    let err = open_source(tmp.path().join("pets/cat/a.png"), IdxSplit::Train)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["a.png", "not a .csv list"]);
    let err = open_source(tmp.path().join("absent"), IdxSplit::Train)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["absent", "does not exist"]);
}
