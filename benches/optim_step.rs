//! Optimizer step time versus parameter count (criterion): fused and literal KOALA++,
//! AdamW and SGD on one tensor of 1e4…1e7 parameters and on MobileNetV2's 158 tensors,
//! plus memory-copy bandwidth at the same sizes in the same run (the roofline; throughput
//! is reported in parameters/s for the optimizers and bytes/s read+written for the copy).
//!
//! `cargo bench --bench optim_step`; `cargo bench --bench optim_table` prints the same
//! comparison as a markdown table.

mod optim_support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use optim_support::{mobilenet_v2, optimizers, single_tensor, Bench, Copy, SIZES};

fn configure(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("optim_step");
    // 1e7-parameter steps take tens of milliseconds: fewer, longer samples.
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

fn step_vs_size(c: &mut Criterion) {
    let mut group = configure(c);
    let mut workloads: Vec<(String, Vec<koala::optim::TensorSpec>)> = SIZES
        .iter()
        .map(|n| (format!("{n}"), single_tensor(*n)))
        .collect();
    workloads.push(("mobilenet_v2".to_string(), mobilenet_v2()));
    for (label, specs) in &workloads {
        let n: usize = specs.iter().map(|s| s.numel()).sum();
        group.throughput(Throughput::Elements(n as u64));
        for (name, config) in optimizers() {
            let mut bench = Bench::new(&config, specs);
            group.bench_function(BenchmarkId::new(name, label), |b| b.iter(|| bench.step()));
        }
        let mut copy = Copy::new(n);
        group.throughput(Throughput::Bytes(copy.bytes() as u64));
        group.bench_function(BenchmarkId::new("copy parallel", label), |b| {
            b.iter(|| copy.parallel())
        });
        group.bench_function(BenchmarkId::new("copy serial", label), |b| {
            b.iter(|| copy.serial())
        });
    }
    group.finish();
}

criterion_group!(benches, step_vs_size);
criterion_main!(benches);
