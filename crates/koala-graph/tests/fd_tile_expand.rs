//! Finite-difference checks of Expand and Tile (`backward/tile_expand.rs`):
//! Expand adding leading axes and widening size-1 axes (the GQA key/value
//! head repeat: [B, KV, 1, T, D] → [B, KV, G, T, D]), Tile with repeats on
//! every axis and with repeats of 1.
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 nets
//! (ORT has f64 Expand/Tile): tolerance 1e-6.

mod common;

use common::{mse, Net, F64};

#[test]
fn expand_broadcasts_back_by_summing() {
    let mut n = Net::new(13, F64, 900);
    let x = n.rand_leaf("x", &[3, 1]);
    let s = n.ints("shape", &[2, 3, 4]);
    n.node("Expand", &[&x, &s], &["y"], vec![]);
    mse(&n, "y");

    // GQA repeat_kv: [1, 2, 1, 3, 2] → [1, 2, 3, 3, 2], then reshape to heads.
    let mut n = Net::new(17, F64, 901);
    let kv = n.rand_leaf("kv", &[1, 2, 1, 3, 2]);
    let s = n.ints("shape", &[1, 2, 3, 3, 2]);
    n.node("Expand", &[&kv, &s], &["e"], vec![]);
    let r = n.ints("heads", &[1, 6, 3, 2]);
    n.node("Reshape", &["e", &r], &["y"], vec![]);
    mse(&n, "y");
}

#[test]
fn tile_sums_the_copies() {
    for (seed, opset, reps) in [
        (902u64, 13i64, [2i64, 3]),
        (903, 17, [1, 2]),
        (904, 21, [3, 1]),
    ] {
        let mut n = Net::new(opset, F64, seed);
        let x = n.rand_leaf("x", &[2, 3]);
        let r = n.ints("reps", &reps);
        n.node("Tile", &[&x, &r], &["t"], vec![]);
        n.node("Tanh", &["t"], &["y"], vec![]);
        mse(&n, "y");
    }
}
