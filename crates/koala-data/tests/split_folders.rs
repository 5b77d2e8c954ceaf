//! A data root one level too high: `root/{train,val}/{cat,dog}/*.png`. The split folders are recognised (never
//! taken as classes), ambiguous layouts are refused naming the folder to pass, and evaluation folders are
//! labelled with the training classes.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{assert_mentions, write_png};
use koala_data::{find_split_folders, with_training_classes, ClassCounts, ImageFiles, ImageSource};

/// `root/<split>/<class>/<n images>` for each `(split, class, n)`.
fn tree(root: &Path, layout: &[(&str, &str, usize)]) {
    for &(split, class, n) in layout {
        for i in 0..n {
            write_png(
                &root.join(split).join(class).join(format!("{i}.png")),
                6,
                6,
                [9, 9, 9],
            );
        }
    }
}

#[test]
fn train_and_val_folders_are_splits_not_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tree(
        root,
        &[
            ("train", "cat", 3),
            ("train", "dog", 2),
            ("val", "cat", 1),
            ("val", "dog", 1),
        ],
    );
    let s = find_split_folders(root).unwrap().expect("split folders");
    assert_eq!(s.train.as_deref(), Some(root.join("train").as_path()));
    assert_eq!(s.eval.as_deref(), Some(root.join("val").as_path()));
    assert!(!s.eval_is_test && s.unused.is_empty());
    assert_eq!(
        s.describe(),
        format!(
            "'{r}' holds data splits, not class folders: training data '{r}/train', evaluation (val) data '{r}/val'",
            r = root.display()
        )
    );
    // Opened as a class-folder tree it is refused, naming the folder that holds the classes.
    let err = ImageFiles::open_folder(root).unwrap_err().to_string();
    assert_mentions(
        &err,
        &["data splits", &root.join("train").display().to_string()],
    );
    // The training folder has the right classes and counts.
    let train = ImageFiles::open_folder(root.join("train")).unwrap();
    assert_eq!(
        ClassCounts::of(&train).summary(),
        "5 images in 2 classes: cat 3, dog 2"
    );
}

#[test]
fn split_names_are_case_insensitive_and_test_is_used_without_val() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tree(root, &[("Training", "a", 1), ("TEST", "a", 1)]);
    let s = find_split_folders(root).unwrap().unwrap();
    assert_eq!(s.train.as_deref(), Some(root.join("Training").as_path()));
    assert_eq!(s.eval.as_deref(), Some(root.join("TEST").as_path()));
    assert!(s.eval_is_test);
}

#[test]
fn with_val_and_test_val_evaluates_and_test_is_named_unused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tree(
        root,
        &[("train", "a", 1), ("validation", "a", 1), ("test", "a", 1)],
    );
    let s = find_split_folders(root).unwrap().unwrap();
    assert_eq!(s.eval.as_deref(), Some(root.join("validation").as_path()));
    assert_eq!(s.unused, vec![root.join("test")]);
    assert!(s.describe().contains("test' not used"), "{}", s.describe());
}

#[test]
fn ambiguous_layouts_are_refused_naming_the_path_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    // Split folders next to a class folder.
    let mixed = tmp.path().join("mixed");
    tree(&mixed, &[("train", "cat", 1), ("dog", "x", 1)]);
    let err = find_split_folders(&mixed).unwrap_err().to_string();
    assert_mentions(
        &err,
        &["train/", "dog/", &mixed.join("train").display().to_string()],
    );
    // Two validation folders.
    let two = tmp.path().join("two");
    tree(
        &two,
        &[("train", "a", 1), ("val", "a", 1), ("valid", "a", 1)],
    );
    let err = find_split_folders(&two).unwrap_err().to_string();
    assert_mentions(&err, &["val/", "valid/", "--eval-data"]);
    // Split folders with images but no class folders.
    let flat = tmp.path().join("flat");
    write_png(&flat.join("train/0.png"), 6, 6, [0, 0, 0]);
    write_png(&flat.join("val/0.png"), 6, 6, [0, 0, 0]);
    let err = ImageFiles::open_folder(&flat).unwrap_err().to_string();
    assert_mentions(&err, &["no class folders", "<split>/<class_name>/"]);
}

#[test]
fn a_class_named_like_a_split_among_other_classes_is_a_class() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_png(&root.join("test/0.png"), 6, 6, [0, 0, 0]);
    write_png(&root.join("exam/0.png"), 6, 6, [0, 0, 0]);
    assert_eq!(find_split_folders(root).unwrap(), None);
    let files = ImageFiles::open_folder(root).unwrap();
    assert_eq!(files.class_names(), ["exam", "test"]);
}

#[test]
fn evaluation_folders_keep_the_training_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tree(
        root,
        &[
            ("train", "ant", 1),
            ("train", "bee", 1),
            ("train", "cow", 1),
            ("val", "bee", 2),
            ("val", "cow", 1),
        ],
    );
    let classes = ImageFiles::open_folder(root.join("train"))
        .unwrap()
        .class_names()
        .to_vec();
    let own = Arc::new(ImageFiles::open_folder(root.join("val")).unwrap());
    // Numbered on its own, `bee` is 0 and `cow` 1.
    assert_eq!(labels(&*own), [0, 0, 1]);
    let val = with_training_classes(own, &classes, &root.join("val")).unwrap();
    assert_eq!(labels(&*val), [1, 1, 2]);
    let counts = ClassCounts::of(&*val);
    assert_eq!(
        counts.summary(),
        "3 images in 3 classes: ant 0, bee 2, cow 1"
    );
    assert_eq!(counts.warnings(), ["1 class(es) have no images: ant"]);

    write_png(&root.join("val/deer/0.png"), 6, 6, [0, 0, 0]);
    let own = Arc::new(ImageFiles::open_folder(root.join("val")).unwrap());
    let err = with_training_classes(own, &classes, &root.join("val"))
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&err, &["deer", "ant, bee, cow"]);
}

#[test]
fn csv_class_names_follow_the_training_classes_and_integer_labels_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_png(&root.join("img.png"), 6, 6, [0, 0, 0]);
    let classes = ["ant".to_string(), "bee".into(), "cow".into()];
    std::fs::write(root.join("named.csv"), "img.png,cow\nimg.png,bee\n").unwrap();
    let named = Arc::new(ImageFiles::open_csv(root.join("named.csv")).unwrap());
    let named = with_training_classes(named, &classes, &root.join("named.csv")).unwrap();
    assert_eq!(labels(&*named), [2, 1]);
    // Integer labels are already output indices.
    std::fs::write(root.join("numbered.csv"), "img.png,2\nimg.png,1\n").unwrap();
    let numbered = Arc::new(ImageFiles::open_csv(root.join("numbered.csv")).unwrap());
    let numbered = with_training_classes(numbered, &classes, &root.join("numbered.csv")).unwrap();
    assert_eq!(labels(&*numbered), [2, 1]);
}

fn labels(source: &dyn ImageSource) -> Vec<i64> {
    (0..source.len()).map(|i| source.label(i)).collect()
}

#[test]
fn strong_imbalance_is_warned() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[("x", "big", 10), ("x", "small", 1)]);
    let files = ImageFiles::open_folder(tmp.path().join("x")).unwrap();
    let w = ClassCounts::of(&files).warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_mentions(&w[0], &["imbalanced", "big has 10", "small only 1"]);
}
