//! Expert-routing throughput: the MoE block alone on Mixtral 8x7B's layer shape (hidden 4096,
//! intermediate 14336, 8 experts, top-2), random bf16 weights kept in bf16, at 1, 8, 64 and 512
//! tokens per step. Criterion reports tokens/s; after each size this prints the achieved GB/s of
//! expert weights read (each expert that received a token is read once per step).

use std::cell::Cell;
use std::time::{Duration, Instant};

use bora_benches::{random_bf16, random_f32};
use bora_model::{moe_block, RoutingStats};
use bora_weights::{Experts, HostMatrix, Matrix};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const H: usize = 4096;
const I: usize = 14336;
const E: usize = 8;
const A: usize = 2;

fn layer() -> (Matrix, Experts) {
    let m =
        |rows, cols, seed| HostMatrix::from_bf16(random_bf16(rows * cols, 0.02, seed), rows, cols);
    let router = Matrix::Host(m(E, H, 1));
    let experts = Experts::Host {
        gate: (0..E).map(|e| m(I, H, 10 + e as u64)).collect(),
        up: (0..E).map(|e| m(I, H, 20 + e as u64)).collect(),
        down: (0..E).map(|e| m(H, I, 30 + e as u64)).collect(),
    };
    (router, experts)
}

fn bench(c: &mut Criterion) {
    let (router, experts) = layer();
    let mut group = c.benchmark_group("moe_block_8x7b_bf16");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for t in [1usize, 8, 64, 512] {
        let x: Vec<f32> = random_f32(t * H, 1.0, 99 + t as u64);
        let x = Tensor::from_vec(x, (t, H), &Device::Cpu).unwrap();
        let mut stats = RoutingStats::new(1, E);
        moe_block(&router, &experts, A, &x, 0, Some(&mut stats)).unwrap();
        let hit = stats.counts[0].iter().filter(|&&n| n > 0).count();
        let bytes = (hit * experts.expert_bytes() + E * H * 2) as f64;
        let (total, iters) = (Cell::new(Duration::ZERO), Cell::new(0u64));
        group.throughput(Throughput::Elements(t as u64));
        group.bench_with_input(BenchmarkId::new("tokens", t), &x, |b, x| {
            b.iter_custom(|n| {
                let start = Instant::now();
                for _ in 0..n {
                    std::hint::black_box(moe_block(&router, &experts, A, x, 0, None).unwrap());
                }
                let d = start.elapsed();
                total.set(total.get() + d);
                iters.set(iters.get() + n);
                d
            })
        });
        let per_step = total.get().as_secs_f64() / iters.get().max(1) as f64;
        println!(
            "moe_block {t:>3} tokens: {:.1} tokens/s, {hit} experts read, {:.2} GB/s of expert weights",
            t as f64 / per_step,
            bytes / per_step / 1e9
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
