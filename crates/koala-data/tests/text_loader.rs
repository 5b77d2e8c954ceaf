//! Text batches: fixed shape with exact padding, deterministic seed-dependent shuffling, and exact resume
//! from a cursor (the same machinery as the image loader).

mod common;

use std::sync::Arc;

use common::text_fixtures;
use koala_data::{
    Cursor, TextBatch, TextDataset, TextExample, TextLoader, TextLoaderConfig, TextOptions,
    TextTokenizer, IGNORE_INDEX,
};

/// The fixture documents packed into blocks of 8 tokens (about 20 blocks).
fn blocks() -> Arc<TextDataset> {
    let tok = TextTokenizer::open(&text_fixtures().join("tokenizer.json")).unwrap();
    Arc::new(TextDataset::open(&text_fixtures().join("docs"), &tok, &TextOptions::new(8)).unwrap())
}

fn all(loader: &TextLoader, from: Cursor, until_epoch: u64) -> Vec<TextBatch> {
    loader.iter(from, until_epoch).collect()
}

fn order(batches: &[TextBatch]) -> Vec<usize> {
    batches.iter().flat_map(|b| b.examples.clone()).collect()
}

#[test]
fn every_batch_has_the_same_shape_and_rows_hold_their_examples() {
    let data = blocks();
    let loader = TextLoader::new(data.clone(), TextLoaderConfig::eval(3)).unwrap();
    let batches = all(&loader, Cursor::new(0, 0), 1);
    assert_eq!(batches.len(), data.len().div_ceil(3));
    for b in &batches {
        assert_eq!((b.batch, b.seq), (3, 8));
        for v in [&b.input_ids, &b.labels, &b.attention_mask] {
            assert_eq!(v.len(), 24);
        }
        for (row, &i) in b.examples.iter().enumerate() {
            let e = &data.examples()[i];
            let r = row * 8..(row + 1) * 8;
            let pad = 8 - e.len();
            assert_eq!(
                b.input_ids[r.clone()],
                [e.input_ids.clone(), vec![2; pad]].concat()
            );
            assert_eq!(
                b.labels[r.clone()],
                [e.labels.clone(), vec![IGNORE_INDEX; pad]].concat()
            );
            assert_eq!(
                b.attention_mask[r],
                [vec![1; e.len()], vec![0; pad]].concat()
            );
        }
    }
    assert_eq!(
        order(&batches),
        (0..data.len()).collect::<Vec<_>>(),
        "eval keeps file order"
    );
}

#[test]
fn the_last_eval_batch_is_filled_with_rows_that_train_on_nothing() {
    let data = Arc::new(
        TextDataset::from_examples(
            (0..5)
                .map(|i| TextExample::causal(vec![i + 3; 4]))
                .collect(),
            4,
            0,
        )
        .unwrap(),
    );
    let loader = TextLoader::new(data, TextLoaderConfig::eval(4)).unwrap();
    let last = all(&loader, Cursor::new(0, 0), 1).pop().unwrap();
    assert_eq!(last.examples, [4]);
    assert_eq!(last.input_ids[4..], [0; 12]);
    assert_eq!(last.labels[4..], [IGNORE_INDEX; 12]);
    assert_eq!(
        last.attention_mask[4..],
        [1; 12],
        "filler rows attend (no all-masked softmax)"
    );
}

#[test]
fn training_drops_the_incomplete_batch() {
    let data = blocks();
    let loader = TextLoader::new(data.clone(), TextLoaderConfig::train(3, 1)).unwrap();
    let batches = all(&loader, Cursor::new(0, 0), 1);
    assert_eq!(batches.len(), data.len() / 3);
    assert!(batches.iter().all(|b| b.examples.len() == 3));
}

#[test]
fn shuffling_is_deterministic_from_the_seed_and_differs_per_epoch_and_seed() {
    let run = |seed| {
        all(
            &TextLoader::new(blocks(), TextLoaderConfig::train(2, seed)).unwrap(),
            Cursor::new(0, 0),
            2,
        )
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a, b);
    assert_ne!(order(&a), order(&c));
    let per_epoch = a.len() / 2;
    assert_ne!(order(&a[..per_epoch]), order(&a[per_epoch..]));
    let mut first_epoch = order(&a[..per_epoch]);
    first_epoch.sort_unstable();
    first_epoch.dedup();
    assert_eq!(
        first_epoch.len(),
        per_epoch * 2,
        "no example twice in an epoch"
    );
}

#[test]
fn resuming_from_a_cursor_yields_exactly_the_remaining_batches() {
    let loader = TextLoader::new(blocks(), TextLoaderConfig::train(2, 3)).unwrap();
    let full = all(&loader, Cursor::new(0, 0), 3);
    let k = full.len() / 2 + 1; // mid-epoch of the second epoch
    let resumed = all(&loader, full[k - 1].next, 3);
    assert_eq!(resumed, full[k..]);
    // A cursor saved after the last batch of an epoch starts the next epoch.
    let per_epoch = loader.batches_per_epoch();
    assert_eq!(
        all(&loader, Cursor::new(0, per_epoch), 3),
        full[per_epoch..]
    );
}

#[test]
fn batches_do_not_depend_on_prefetch_depth_and_recycling() {
    let config = TextLoaderConfig::train(2, 9);
    let deep = all(
        &TextLoader::new(
            blocks(),
            TextLoaderConfig {
                prefetch: 6,
                ..config.clone()
            },
        )
        .unwrap(),
        Cursor::new(0, 0),
        2,
    );
    let loader = TextLoader::new(
        blocks(),
        TextLoaderConfig {
            prefetch: 0,
            ..config
        },
    )
    .unwrap();
    let mut iter = loader.iter(Cursor::new(0, 0), 2);
    let mut recycled = Vec::new();
    while let Some(batch) = iter.next() {
        recycled.push(batch.clone());
        iter.recycle(batch);
    }
    assert_eq!(deep, recycled);
}
