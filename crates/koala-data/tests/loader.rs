//! The loader on the shipped Fashion-MNIST test split: determinism from the seed, independence from threads,
//! prefetch depth and batch size, exact resumption, epoch coverage, and the train/validation split.

mod common;

use std::sync::Arc;

use common::{assert_mentions, fashion_dir};
use image::DynamicImage;
use koala_data::{
    train_val_split, Batch, Cursor, DataError, IdxSource, IdxSplit, ImageSource, Loader,
    LoaderConfig, Preprocess,
};

fn fashion_test() -> Arc<dyn ImageSource> {
    Arc::new(IdxSource::from_dir(fashion_dir(), IdxSplit::Test).unwrap())
}

/// ImageNet recipe at 32 × 32: random resized crop + flip in training, so augmentation is exercised.
fn loader(config: LoaderConfig) -> Loader {
    Loader::new(fashion_test(), Preprocess::imagenet(32), config).unwrap()
}

fn all(loader: &Loader, from: Cursor, until_epoch: u64) -> Vec<Batch> {
    loader.iter(from, until_epoch).collect()
}

fn indices(batches: &[Batch]) -> Vec<usize> {
    batches
        .iter()
        .flat_map(|b| b.indices.iter().copied())
        .collect()
}

#[test]
fn same_seed_same_batches_different_seed_different_order() {
    let a = all(&loader(LoaderConfig::train(64, 7)), Cursor::new(0, 0), 2);
    let b = all(&loader(LoaderConfig::train(64, 7)), Cursor::new(0, 0), 2);
    assert_eq!(a, b);
    let c = all(&loader(LoaderConfig::train(64, 8)), Cursor::new(0, 0), 2);
    assert_ne!(indices(&a), indices(&c));
    // Each epoch has its own order.
    assert_ne!(indices(&a[..8]), indices(&a[8..]));
}

#[test]
fn batches_do_not_depend_on_threads_or_prefetch() {
    let base = LoaderConfig::train(50, 3);
    let serial = all(
        &loader(LoaderConfig {
            threads: 1,
            prefetch: 0,
            ..base.clone()
        }),
        Cursor::new(0, 0),
        2,
    );
    let parallel = all(
        &loader(LoaderConfig {
            threads: 3,
            prefetch: 5,
            ..base
        }),
        Cursor::new(0, 0),
        2,
    );
    assert_eq!(serial, parallel);
}

#[test]
fn augmentation_depends_on_sample_not_on_batch_size() {
    let by_index = |batch_size| {
        let mut tensors = std::collections::BTreeMap::new();
        for b in loader(LoaderConfig::train(batch_size, 11)).epoch(0) {
            let len = b.images.len() / b.len();
            for (k, &i) in b.indices.iter().enumerate() {
                tensors.insert(i, b.images[k * len..(k + 1) * len].to_vec());
            }
        }
        tensors
    };
    let (small, large) = (by_index(7), by_index(64));
    assert_eq!(small.len(), 500);
    assert_eq!(small, large);
    // …but differs between epochs: epoch 1 draws new crops for sample 0.
    let e1 = loader(LoaderConfig::train(500, 11))
        .epoch(1)
        .next()
        .unwrap();
    let k = e1.indices.iter().position(|&i| i == 0).unwrap();
    assert_ne!(e1.images[k * 3072..(k + 1) * 3072], small[&0][..]);
}

#[test]
fn resuming_from_a_cursor_reproduces_the_uninterrupted_run() {
    let make = || loader(LoaderConfig::train(64, 21)); // 500 / 64 → 8 batches per epoch, the last one of 52
    let full = all(&make(), Cursor::new(0, 0), 3);
    assert_eq!(full.len(), 24);
    for (k, batch) in full.iter().enumerate() {
        assert_eq!(batch.cursor, Cursor::new(k as u64 / 8, k % 8));
    }
    // Interrupt after consuming batch 12 (epoch 1, position 4) and resume from the cursor it carries.
    let resume_at = full[12].next;
    assert_eq!(resume_at, Cursor::new(1, 5));
    assert_eq!(all(&make(), resume_at, 3), full[13..]);
    // The last batch of an epoch points at the next epoch.
    assert_eq!(full[7].next, Cursor::new(1, 0));
    assert_eq!(all(&make(), full[7].next, 3), full[8..]);
    // A position past the end of its epoch starts the next epoch.
    assert_eq!(all(&make(), Cursor::new(0, 8), 3), full[8..]);
}

#[test]
fn every_epoch_covers_each_sample_once_and_labels_match() {
    let source = fashion_test();
    let l = Loader::new(
        source.clone(),
        Preprocess::plain(28, 28, 1),
        LoaderConfig::train(64, 5),
    )
    .unwrap();
    let batches: Vec<Batch> = l.epoch(4).collect();
    assert_eq!(batches.len(), l.batches_per_epoch());
    let mut seen = indices(&batches);
    seen.sort_unstable();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
    for b in &batches {
        assert_eq!(b.shape, [b.labels.len(), 1, 28, 28]);
        assert_eq!(b.images.len(), b.len() * 784);
        assert!(b
            .indices
            .iter()
            .zip(&b.labels)
            .all(|(&i, &l)| source.label(i) == l));
    }
    assert_eq!(batches.last().unwrap().len(), 500 - 7 * 64);
}

#[test]
fn drop_last_yields_only_full_batches() {
    let l = loader(LoaderConfig {
        drop_last: true,
        ..LoaderConfig::train(64, 1)
    });
    assert_eq!(l.batches_per_epoch(), 7);
    let batches: Vec<Batch> = l.epoch(0).collect();
    assert_eq!(batches.len(), 7);
    assert!(batches.iter().all(|b| b.len() == 64));
}

#[test]
fn eval_loader_is_source_order_without_augmentation() {
    let source = fashion_test();
    let pre = Preprocess::imagenet(32);
    let l = Loader::new(source.clone(), pre.clone(), LoaderConfig::eval(128)).unwrap();
    let batches: Vec<Batch> = l.epoch(3).collect();
    assert_eq!(indices(&batches), (0..500).collect::<Vec<_>>());
    let mut expected = vec![0.0; pre.sample_len()];
    pre.apply_eval(&source.load(130).unwrap(), &mut expected)
        .unwrap();
    assert_eq!(&batches[1].images[2 * 3072..3 * 3072], &expected[..]);
    assert_eq!(batches[0].shape, [128, 3, 32, 32]);
}

#[test]
fn recycled_buffers_give_identical_batches() {
    let l = loader(LoaderConfig::train(100, 9));
    let reference = all(&l, Cursor::new(0, 0), 2);
    let mut iter = l.iter(Cursor::new(0, 0), 2);
    let mut recycled = Vec::new();
    while let Some(batch) = iter.next() {
        recycled.push(batch.clone());
        iter.recycle(batch);
    }
    assert_eq!(recycled, reference);
    assert_eq!(iter.stats().batches, 10);
    assert_eq!(iter.stats().skipped, 0);
}

#[test]
fn split_is_disjoint_stratified_and_seeded() {
    let source = fashion_test();
    let (train, val) = train_val_split(source.clone(), 0.2, 4).unwrap();
    assert_eq!((train.len(), val.len()), (400, 100));
    let mut union: Vec<usize> = train
        .indices()
        .iter()
        .chain(val.indices())
        .copied()
        .collect();
    union.sort_unstable();
    assert_eq!(union, (0..500).collect::<Vec<_>>(), "disjoint and complete");
    for class in 0..10 {
        assert_eq!(
            (0..val.len()).filter(|&i| val.label(i) == class).count(),
            10,
            "class {class}"
        );
    }
    let (_, again) = train_val_split(source.clone(), 0.2, 4).unwrap();
    assert_eq!(again.indices(), val.indices());
    let (_, other) = train_val_split(source.clone(), 0.2, 5).unwrap();
    assert_ne!(other.indices(), val.indices());
    // A subset feeds a loader like any source; `indices` in batches are subset positions.
    let l = Loader::new(
        Arc::new(val),
        Preprocess::plain(28, 28, 1),
        LoaderConfig::eval(64),
    )
    .unwrap();
    assert_eq!(l.epoch(0).map(|b| b.len()).sum::<usize>(), 100);
    assert!(matches!(
        train_val_split(source, 1.0, 0),
        Err(DataError::Config {
            field: "val_fraction",
            ..
        })
    ));
}

#[test]
fn bad_loader_settings_are_reported() {
    let err = |config| {
        Loader::new(fashion_test(), Preprocess::imagenet(32), config)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(LoaderConfig::eval(0)).contains("batch_size"));
    let e = err(LoaderConfig {
        drop_last: true,
        ..LoaderConfig::eval(501)
    });
    assert_mentions(&e, &["drop_last", "500 samples"]);
}

/// A source whose sample 3 panics, standing in for a buggy user implementation.
struct Panicky;

impl ImageSource for Panicky {
    fn len(&self) -> usize {
        8
    }
    fn label(&self, _: usize) -> i64 {
        0
    }
    fn load(&self, index: usize) -> koala_data::Result<DynamicImage> {
        assert_ne!(index, 3, "sample 3 is broken");
        Ok(DynamicImage::new_luma8(4, 4))
    }
    fn class_names(&self) -> &[String] {
        &[]
    }
    fn describe(&self, index: usize) -> String {
        format!("panicky:{index}")
    }
}

#[test]
fn a_panic_in_the_source_reaches_the_consumer_instead_of_ending_the_epoch() {
    let l = Loader::new(
        Arc::new(Panicky),
        Preprocess::plain(4, 4, 1),
        LoaderConfig::eval(2),
    )
    .unwrap();
    let mut iter = l.epoch(0);
    assert_eq!(iter.next().unwrap().indices, vec![0, 1]);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| iter.next()));
    let payload = outcome.expect_err("the panic must propagate");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert_mentions(&message, &["sample 3 is broken"]);
}
