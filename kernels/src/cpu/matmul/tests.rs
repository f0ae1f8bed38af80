use super::*;
use rand::{RngExt, SeedableRng};

fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// The activations a product over `w` computes with: rounded to bf16 for bf16 weights where the
/// CPU has AVX512_BF16 (`bf16dot.rs`) and the test does not ask for the widening path, as they
/// are otherwise.
fn seen_by(x: &[f32], w: WeightRef<'_>) -> Vec<f32> {
    let round = matches!(w, WeightRef::BF16(_)) && super::bf16dot::taken();
    x.iter()
        .map(|&v| if round { bf16::from_f32(v).to_f32() } else { v })
        .collect()
}

/// Every path against the f64 reference; bf16 weights both on this CPU's path and on the
/// widening one (which a CPU with AVX512_BF16 would otherwise never run here).
#[test]
fn all_paths_match_reference() {
    paths_match_reference();
    super::bf16dot::widened(paths_match_reference);
}

fn paths_match_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for &(m, k, n) in &[
        (1, 5, 3),
        (1, 64, 100),
        (3, 33, 17),
        (4, 128, 64),
        (5, 40, 9),
        (2, 48, 11),
        (6, 64, 7),
        (7, 1024, 5),
        (8, 130, 29),
        (12, 70, 13),
        (16, 1024, 19),
        (17, 96, 130),
        (64, 200, 37),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wf: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Round to bf16 so that all three weight types hold the same values.
        let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
        let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
        for w in [
            WeightRef::F32(&wf),
            WeightRef::BF16(&wb),
            WeightRef::F16(&wh),
        ] {
            let want = reference(&seen_by(&x, w), m, k, &wf, n);
            let mut out = vec![f32::NAN; m * n];
            matmul_xwt(&x, m, k, w, n, &mut out);
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{m}x{k}x{n} {w:?}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn quantized_weights_match_their_values() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for q in QType::ALL {
        for &(m, k, n) in &[
            (1usize, 256usize, 37usize),
            (3, 512, 20),
            (16, 256, 9),
            (21, 256, 18),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let wf2: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let quantized = |w: &[f32]| crate::quant::test_weights(q, w, w.len() as u64);
            let ((qa, da), (qb, db)) = (quantized(&wf), quantized(&wf2));
            let (mut oa, mut ob) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            matmul_many(&mut [Product {
                x: &x,
                m,
                k,
                w: WeightRef::Quant(q, qa.as_bytes()),
                n,
                out: &mut oa,
                twin: Some(Twin {
                    w: WeightRef::Quant(q, qb.as_bytes()),
                    out: &mut ob,
                }),
            }]);
            for (deq, got) in [(&da, &oa), (&db, &ob)] {
                let want = reference(&x, m, k, deq, n);
                for i in 0..m {
                    for j in 0..n {
                        // Activations are quantized to 8 bits per block: the error is a
                        // small fraction of the sum of the terms' magnitudes.
                        let mag: f32 = (0..k).map(|t| (x[i * k + t] * deq[j * k + t]).abs()).sum();
                        let (g, w) = (got[i * n + j], want[i * n + j]);
                        assert!(
                            (g - w).abs() <= 0.01 * mag + 1e-5,
                            "{q} {m}x{k}x{n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn twins_match_separate_products() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for &(m, k, n) in &[
        (1usize, 40usize, 33usize),
        (2, 17, 20),
        (3, 48, 7),
        (4, 64, 9),
        (6, 32, 10),
        (7, 100, 11),
        (8, 1024, 13),
        (12, 40, 9),
        (16, 64, 5),
        (20, 33, 12),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let a: Vec<bf16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let b: Vec<bf16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let (mut oa, mut ob) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
        matmul_many(&mut [Product {
            x: &x,
            m,
            k,
            w: WeightRef::BF16(&a),
            n,
            out: &mut oa,
            twin: Some(Twin {
                w: WeightRef::BF16(&b),
                out: &mut ob,
            }),
        }]);
        for (w, got) in [(&a, &oa), (&b, &ob)] {
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let x = seen_by(&x, WeightRef::BF16(w));
            for (g, want) in got.iter().zip(reference(&x, m, k, &wf, n)) {
                assert!(
                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{m}x{k}x{n}: {g} vs {want}"
                );
            }
        }
    }
}

/// Batch-invariant mode: a row's result is the same bits alone and among others, at any
/// position, for every weight type (issue 16: seeded sampling under load).
#[test]
fn batch_invariant_rows_do_not_depend_on_the_batch() {
    let _on = crate::cpu::batch_invariant_scope(true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (k, n) = (512usize, 32usize);
    let wf: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    let quants: Vec<(QType, QBuf)> = QType::ALL
        .iter()
        .map(|&q| (q, crate::quant::test_weights(q, &wf, 7).0))
        .collect();
    let mut ws = vec![
        WeightRef::F32(&wf),
        WeightRef::BF16(&wb),
        WeightRef::F16(&wh),
    ];
    ws.extend(
        quants
            .iter()
            .map(|(q, b)| WeightRef::Quant(*q, b.as_bytes())),
    );
    // The packed kernels, where this CPU has them.
    let packed: Vec<(QType, QBuf)> = quants
        .iter()
        .filter(|(q, _)| packed::packable(*q, n, k))
        .map(|(q, b)| {
            let mut p = QBuf::zeroed(packed::packed_bytes(*q, n, k));
            packed::pack(*q, b.as_bytes(), n, k, p.as_bytes_mut());
            (*q, p)
        })
        .collect();
    ws.extend(
        packed
            .iter()
            .map(|(q, b)| WeightRef::Packed(*q, b.as_bytes())),
    );
    let probe: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
    for w in ws {
        let name = match w {
            WeightRef::F32(_) => "f32".to_string(),
            WeightRef::BF16(_) => "bf16".to_string(),
            WeightRef::F16(_) => "f16".to_string(),
            WeightRef::Quant(q, _) => q.to_string(),
            WeightRef::Packed(q, _) => format!("{q} packed"),
        };
        let mut alone = vec![0f32; n];
        matmul_xwt(&probe, 1, k, w, n, &mut alone);
        for m in [2usize, 3, 5, 8, 9, 16, 17, 40, 64] {
            let at = m / 2;
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            x[at * k..(at + 1) * k].copy_from_slice(&probe);
            let mut out = vec![0f32; m * n];
            matmul_xwt(&x, m, k, w, n, &mut out);
            let row: Vec<u32> = out[at * n..(at + 1) * n]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let want: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
            assert_eq!(row, want, "{name} m={m}");
        }
    }
}

#[test]
fn many_products_in_one_region() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let shapes = [
        (1usize, 64usize, 300usize),
        (7, 32, 45),
        (2, 16, 8),
        (0, 8, 8),
    ];
    let data: Vec<(Vec<f32>, Vec<bf16>)> = shapes
        .iter()
        .map(|&(m, k, n)| {
            let x = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = (0..n * k)
                .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            (x, w)
        })
        .collect();
    let mut outs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(m, _, n)| vec![f32::NAN; m * n])
        .collect();
    let mut products: Vec<Product<'_>> = shapes
        .iter()
        .zip(&data)
        .zip(outs.iter_mut())
        .map(|((&(m, k, n), (x, w)), out)| Product {
            twin: None,
            x,
            m,
            k,
            w: WeightRef::BF16(w),
            n,
            out,
        })
        .collect();
    matmul_many(&mut products);
    for ((&(m, k, n), (x, w)), out) in shapes.iter().zip(&data).zip(&outs) {
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let want = reference(&seen_by(x, WeightRef::BF16(w)), m, k, &wf, n);
        for (a, b) in out.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{m}x{k}x{n}: {a} vs {b}"
            );
        }
    }
}
