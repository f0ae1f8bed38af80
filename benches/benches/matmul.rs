//! The CPU matrix product `x[M, K] · W[N, K]ᵀ` over bf16, f16 and f32 weights, on a Mixtral
//! 8x7B expert projection (N 14336, K 4096), at decode and prefill sizes of M. Throughput is
//! the weight bytes read per product.

use std::time::Duration;

use bora_benches::{random_bf16, random_f32};
use bora_kernels::cpu::packed;
use bora_kernels::quant::quantize;
use bora_kernels::{matmul_xwt, QBuf, QType, WeightRef};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};

const N: usize = 14336;
const K: usize = 4096;

fn bench(c: &mut Criterion) {
    let wb: Vec<bf16> = random_bf16(N * K, 0.02, 7);
    let wh: Vec<f16> = wb.iter().map(|v| f16::from_f32(v.to_f32())).collect();
    let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    let mut group = c.benchmark_group("matmul_14336x4096");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for m in [1usize, 2, 3, 4, 8, 16, 32, 128] {
        let x: Vec<f32> = random_f32(m * K, 1.0, m as u64);
        let mut out = vec![0f32; m * N];
        for (name, w, size) in [
            ("bf16", WeightRef::BF16(&wb), 2),
            ("f16", WeightRef::F16(&wh), 2),
            ("f32", WeightRef::F32(&wf), 4),
        ] {
            group.throughput(Throughput::Bytes((N * K * size) as u64));
            group.bench_function(BenchmarkId::new(name, m), |b| {
                b.iter(|| matmul_xwt(&x, m, K, w, N, &mut out))
            });
        }
    }
    group.finish();

    // The CPU bench model's shapes: an expert projection (3584 x 1024) and the LM head (32000 x
    // 1024), at the row counts of decode steps with 1 to 16 sequences.
    let mut group = c.benchmark_group("matmul_bench_model_bf16");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (name, n) in [("expert", 3584usize), ("lm_head", 32000)] {
        let k = 1024;
        let w: Vec<bf16> = random_bf16(n * k, 0.02, 9);
        for m in [1usize, 2, 4, 8, 16] {
            let x: Vec<f32> = random_f32(m * k, 1.0, m as u64);
            let mut out = vec![0f32; m * n];
            group.throughput(Throughput::Bytes((n * k * 2) as u64));
            group.bench_function(BenchmarkId::new(name, m), |b| {
                b.iter(|| matmul_xwt(&x, m, k, WeightRef::BF16(&w), n, &mut out))
            });
        }
    }
    group.finish();

    // The same expert shape streamed from DRAM, as decode reads it: 48 distinct matrices
    // (336 MB, ten times the L3), one after the other; bf16, and f16 for one row.
    let (n, k, count) = (3584usize, 1024usize, 48usize);
    let experts: Vec<Vec<bf16>> = (0..count)
        .map(|e| random_bf16(n * k, 0.02, 100 + e as u64))
        .collect();
    let mut group = c.benchmark_group("matmul_expert_stream_bf16");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for m in [1usize, 2, 4, 8, 16] {
        let x: Vec<f32> = random_f32(m * k, 1.0, m as u64);
        let mut out = vec![0f32; m * n];
        let mut next = 0;
        group.throughput(Throughput::Bytes((n * k * 2) as u64));
        group.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter(|| {
                next = (next + 1) % count;
                matmul_xwt(&x, m, k, WeightRef::BF16(&experts[next]), n, &mut out)
            })
        });
    }
    // The same experts in f16, one row (F16 decode's product).
    let experts16: Vec<Vec<f16>> = experts
        .iter()
        .map(|e| e.iter().map(|v| f16::from_f32(v.to_f32())).collect())
        .collect();
    let x: Vec<f32> = random_f32(k, 1.0, 1);
    let mut out = vec![0f32; n];
    let mut next = 0;
    group.bench_function(BenchmarkId::new("f16", 1), |b| {
        b.iter(|| {
            next = (next + 1) % count;
            matmul_xwt(&x, 1, k, WeightRef::F16(&experts16[next]), n, &mut out)
        })
    });
    group.finish();

    // Quantized experts of the bench model's shape: decode (1 row) streams 48 distinct
    // matrices from DRAM, as a decode step does; prefill (32 rows, an expert's share of a
    // 128-token prompt) reuses one. BORA_CPU_ISA=avx2 runs the AVX2 kernels instead of the
    // AVX-512 ones. Each type runs as the file stores it and repacked into tiles (`packed`, what
    // the loader does where the CPU has the kernels), one after the other.
    let mut group = c.benchmark_group("matmul_expert_quant");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for q in [QType::Q4K, QType::Q5K, QType::Q6K, QType::Q8_0] {
        let row_bytes = q.row_bytes(k).expect("whole blocks");
        let experts: Vec<QBuf> = (0..count)
            .map(|e| {
                let w: Vec<f32> = random_f32(n * k, 0.02, 200 + e as u64);
                let mut b = QBuf::zeroed(n * row_bytes);
                quantize(q, &w, b.as_bytes_mut());
                b
            })
            .collect();
        let repacked: Vec<QBuf> = if packed::packable(q, n, k) {
            experts
                .iter()
                .map(|e| {
                    let mut b = QBuf::zeroed(packed::packed_bytes(q, n, k));
                    packed::pack(q, e.as_bytes(), n, k, b.as_bytes_mut());
                    b
                })
                .collect()
        } else {
            Vec::new()
        };
        for m in [1usize, 4, 16, 32, 128] {
            let x: Vec<f32> = random_f32(m * k, 1.0, m as u64);
            let mut out = vec![0f32; m * n];
            let mut next = 0;
            group.throughput(Throughput::Bytes((n * row_bytes) as u64));
            for pack in [false, true] {
                if pack && repacked.is_empty() {
                    continue;
                }
                let name = if pack {
                    format!("{q}-packed")
                } else {
                    q.to_string()
                };
                group.bench_function(BenchmarkId::new(name, m), |b| {
                    b.iter(|| {
                        if m == 1 {
                            next = (next + 1) % count;
                        }
                        let w = if pack {
                            WeightRef::Packed(q, repacked[next].as_bytes())
                        } else {
                            WeightRef::Quant(q, experts[next].as_bytes())
                        };
                        matmul_xwt(&x, m, k, w, n, &mut out)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
