//! Decode attention on the CPU: one token against a long context, every layer of the bench
//! model (Hq 16, Hkv 4, D 64, 8 layers) and one layer of Mixtral 8x7B (Hq 32, Hkv 8, D 128),
//! over f32 and f16 caches, the positions split into the decode path's chunks of 256 across
//! rayon's threads. Throughput is the key and value bytes read: at long contexts decode reads
//! more of them than of weights, so the figure to compare is the machine's read bandwidth.

use std::time::Duration;

use bora_benches::random_f32;
use bora_kernels::cpu::attn::{attend_one, Heads};
use bora_kernels::cpu::Element;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use rayon::prelude::*;

/// Positions per task, as the decode path splits them.
const CHUNK: usize = 256;

/// One token's attention over each of `pools` (a layer's keys and values, `positions` rows).
fn step<T: Element>(
    h: Heads,
    q: &[f32],
    pools: &[(Vec<T>, Vec<T>)],
    positions: usize,
    parts: &mut [f32],
) {
    let width = h.hkv * h.d;
    let rows: Vec<usize> = (0..positions).map(|j| j * width).collect();
    for (k, v) in pools {
        parts
            .par_chunks_mut(h.partial_len())
            .zip(rows.par_chunks(CHUNK))
            .for_each(|(part, rows)| attend_one(h, q, k, v, rows, part));
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let bench = Heads {
        hq: 16,
        hkv: 4,
        d: 64,
    };
    let mixtral = Heads {
        hq: 32,
        hkv: 8,
        d: 128,
    };
    for (name, h, layers) in [("bench", bench, 8u64), ("8x7b", mixtral, 1)] {
        for positions in [4096usize, 16384] {
            let n = positions * h.hkv * h.d;
            let q = random_f32(h.hq * h.d, 0.1, 1);
            let f32s: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
                .map(|l| (random_f32(n, 1.0, 2 + l), random_f32(n, 1.0, 100 + l)))
                .collect();
            let f16s: Vec<(Vec<f16>, Vec<f16>)> = f32s
                .iter()
                .map(|(k, v)| {
                    let half = |x: &Vec<f32>| x.iter().map(|&x| f16::from_f32(x)).collect();
                    (half(k), half(v))
                })
                .collect();
            let mut parts = vec![0f32; positions.div_ceil(CHUNK) * h.partial_len()];
            let id = format!("{name}/{positions}");
            let bytes = 2 * n as u64 * layers;
            group.throughput(Throughput::Bytes(bytes * 4));
            group.bench_function(BenchmarkId::new("f32", &id), |b| {
                b.iter(|| step(h, &q, &f32s, positions, &mut parts))
            });
            group.throughput(Throughput::Bytes(bytes * 2));
            group.bench_function(BenchmarkId::new("f16", &id), |b| {
                b.iter(|| step(h, &q, &f16s, positions, &mut parts))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
