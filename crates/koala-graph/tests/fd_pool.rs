//! Finite-difference checks of MaxPool, AveragePool, GlobalAveragePool (`backward/pool.rs`); f32 kernels only for the averaging pools (tolerance 1e-3).
//!
//! Harness, step and tolerance reasoning: `common/mod.rs` (`Fd`). f64 where
//! ONNX Runtime has the f64 kernel (tolerance 1e-6), else f32 (1e-3).

mod common;

use common::{mse, unary_case, Net, F32, F64};
use koala_graph::attrs::{a_int, a_ints, a_string};
use koala_graph::proto::DataType;

fn pool_case(
    seed: u64,
    opset: i64,
    dt: DataType,
    op: &str,
    x: &[usize],
    attrs: Vec<koala_graph::proto::AttributeProto>,
) {
    let mut n = Net::new(opset, dt, seed);
    // Distinct values 1/8 apart: no MaxPool ties, and no perturbation
    // (≤ h·|d| ≤ 2⁻⁵) can change which element of a window is largest.
    let v = n.distinct(x.iter().product(), 0.125);
    unary_case(&mut n, op, x, v, attrs);
    mse(&n, "y");
}

#[test]
fn max_pool_2x2_stride2() {
    let attrs = vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])];
    pool_case(140, 13, F64, "MaxPool", &[2, 2, 4, 6], attrs);
}

#[test]
fn max_pool_3x3_stride2_overlapping_pads() {
    let attrs = vec![
        a_ints("kernel_shape", &[3, 3]),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
    ];
    pool_case(141, 17, F64, "MaxPool", &[2, 2, 5, 6], attrs);
    let attrs = vec![
        a_ints("kernel_shape", &[3, 2]),
        a_ints("strides", &[1, 1]),
        a_int("ceil_mode", 1),
    ];
    pool_case(142, 16, F64, "MaxPool", &[1, 2, 5, 4], attrs);
}

/// Overlapping MaxPool windows in an opset-13 model: the gradient needs
/// ScatterElements(reduction=add) (opset 16), so koala upgrades the training
/// graph to opset 17 (`upgrade.rs`) and the gradient is the same as at 16.
#[test]
fn max_pool_overlapping_before_opset16_trains_through_the_upgrade() {
    let attrs = vec![a_ints("kernel_shape", &[3, 3]), a_ints("strides", &[2, 2])];
    pool_case(143, 13, F64, "MaxPool", &[1, 1, 5, 5], attrs);
}

#[test]
fn average_pool_count_include_pad_and_ceil_mode() {
    let mut seed = 150;
    for include in [0, 1] {
        for ceil in [0, 1] {
            seed += 1;
            let attrs = vec![
                a_ints("kernel_shape", &[3, 3]),
                a_ints("strides", &[2, 2]),
                a_ints("pads", &[1, 0, 1, 1]),
                a_int("count_include_pad", include),
                a_int("ceil_mode", ceil),
            ];
            pool_case(seed, 17, F32, "AveragePool", &[2, 2, 6, 5], attrs);
        }
    }
    let attrs = vec![
        a_ints("kernel_shape", &[2]),
        a_int("ceil_mode", 1),
        a_ints("strides", &[2]),
    ];
    pool_case(160, 11, F32, "AveragePool", &[2, 3, 7], attrs);
}

#[test]
fn global_average_pool() {
    pool_case(161, 17, F32, "GlobalAveragePool", &[2, 3, 3, 4], vec![]);
}

#[test]
fn pooling_auto_pad_and_f32_max_pool() {
    for (seed, mode) in [(400, "SAME_UPPER"), (401, "SAME_LOWER")] {
        let attrs = vec![
            a_string("auto_pad", mode),
            a_ints("kernel_shape", &[3, 2]),
            a_ints("strides", &[2, 2]),
        ];
        pool_case(seed, 17, F32, "AveragePool", &[2, 2, 5, 5], attrs.clone());
        pool_case(seed + 2, 17, F32, "MaxPool", &[2, 2, 5, 5], attrs);
    }
    pool_case(404, 17, F32, "GlobalAveragePool", &[2, 3, 5], vec![]);
}
