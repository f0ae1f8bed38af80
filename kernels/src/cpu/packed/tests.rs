use rand::{RngExt, SeedableRng};

use super::*;
use crate::quant::{dequantize, quantize};

const TYPES: [QType; 4] = [QType::Q8_0, QType::Q4K, QType::Q5K, QType::Q6K];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `n` rows of `k` random values quantized to `q`, some rows scaled up, so that blocks differ
/// in their scales.
fn weights(q: QType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut x = random(n * k, seed);
    for (r, row) in x.chunks_exact_mut(k).enumerate() {
        row.iter_mut().for_each(|v| *v *= 1.0 + (r % 5) as f32);
    }
    let rb = q.row_bytes(k).unwrap();
    let mut w = vec![0u8; n * rb];
    for (row, out) in x.chunks_exact(k).zip(w.chunks_exact_mut(rb)) {
        quantize(q, row, out);
    }
    w
}

#[test]
fn unpacking_gives_the_files_blocks_back() {
    for q in TYPES {
        let (n, k) = (32, 512);
        let w = weights(q, n, k, 1);
        let mut p = vec![0u8; packed_bytes(q, n, k)];
        pack(q, &w, n, k, &mut p);
        let rb = q.row_bytes(k).unwrap();
        for r in 0..n {
            let mut row = vec![0u8; rb];
            unpack_row(q, &p, k, r, &mut row);
            assert_eq!(row, w[r * rb..(r + 1) * rb], "{q} row {r}");
        }
        // Random bytes too: every bit of a block survives, not only what quantize writes.
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let junk: Vec<u8> = (0..w.len()).map(|_| rng.random()).collect();
        pack(q, &junk, n, k, &mut p);
        for r in 0..n {
            let mut row = vec![0u8; rb];
            unpack_row(q, &p, k, r, &mut row);
            assert_eq!(row, junk[r * rb..(r + 1) * rb], "{q} random row {r}");
        }
    }
}

#[test]
fn packed_sizes() {
    for q in TYPES {
        let extra = packed_bytes(q, 16, 256 * 4) as f64 / (16 * q.row_bytes(1024).unwrap()) as f64;
        assert!((1.0..1.03).contains(&extra), "{q}: {extra}");
    }
    assert!(!packable(QType::Q4K, 24, 256));
    assert!(!packable(QType::Q4_0, 16, 256));
}

/// The levels this CPU runs.
fn levels() -> Vec<Level> {
    match cpu_level() {
        Some(Level::Vnni) => vec![Level::Vnni, Level::Avx2],
        Some(Level::Avx2) => vec![Level::Avx2],
        None => vec![],
    }
}

/// Every packed kernel on every path this CPU has, for 1 to 9 and 16 activation rows, against
/// the dequantized weights times the dequantized activations (what the integer sums equal,
/// up to the float rounding of the scales).
#[test]
fn packed_kernels_match_the_scalar_reference() {
    if levels().is_empty() {
        eprintln!("skipped: no packed kernels on this CPU");
    }
    for q in TYPES {
        let (n, k) = (48, 768);
        let w = weights(q, n, k, 3);
        let mut p = vec![0u8; packed_bytes(q, n, k)];
        pack(q, &w, n, k, &mut p);
        let rb = q.row_bytes(k).unwrap();
        let wf: Vec<Vec<f32>> = (0..n)
            .map(|r| {
                let mut v = vec![0f32; k];
                dequantize(q, &w[r * rb..(r + 1) * rb], &mut v);
                v
            })
            .collect();
        for m in (1..=9).chain([16]) {
            let x = random(m * k, 10 + m as u64);
            let acts = PackedActs::new(q, &x, m, k);
            // The activations as the kernels see them: bytes times their block's scale.
            let be = q.act_quant().block_elems();
            let xq: Vec<f32> = (0..m * k)
                .map(|i| acts.qs[i] as f32 * acts.d[i / be])
                .collect();
            for &level in &levels() {
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: out holds m rows of n outputs; the level runs here (levels()).
                unsafe { tiles_at(level, q, &p, &acts, 0..n / PACK_ROWS, out.as_mut_ptr(), n) };
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 =
                            (0..k).map(|i| wf[j][i] as f64 * xq[r * k + i] as f64).sum();
                        let scale: f64 = (0..k)
                            .map(|i| (wf[j][i] as f64 * xq[r * k + i] as f64).abs())
                            .sum();
                        let got = out[r * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale + 1e-6,
                            "{q} {level:?} m {m} row {r} col {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// A row's result does not depend on how many other rows share the call (batch invariance):
/// every row is computed the same way in a group of 1, 2, 4 or 8.
#[test]
fn packed_rows_are_batch_invariant() {
    for q in TYPES {
        let (n, k) = (16, 512);
        let w = weights(q, n, k, 5);
        let mut p = vec![0u8; packed_bytes(q, n, k)];
        pack(q, &w, n, k, &mut p);
        let x = random(11 * k, 6);
        let all = PackedActs::new(q, &x, 11, k);
        for &level in &levels() {
            let mut out = vec![0f32; 11 * n];
            // SAFETY: as above.
            unsafe { tiles_at(level, q, &p, &all, 0..1, out.as_mut_ptr(), n) };
            for r in 0..11 {
                let one = PackedActs::new(q, &x[r * k..(r + 1) * k], 1, k);
                let mut o = vec![0f32; n];
                // SAFETY: as above.
                unsafe { tiles_at(level, q, &p, &one, 0..1, o.as_mut_ptr(), n) };
                assert_eq!(o, out[r * n..(r + 1) * n], "{q} {level:?} row {r}");
            }
        }
    }
}
