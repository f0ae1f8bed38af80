use super::*;

/// A small deterministic generator (xorshift), values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Every path this CPU can run, by name.
fn paths() -> Vec<&'static str> {
    let mut p = vec!["any"];
    #[cfg(target_arch = "x86_64")]
    for isa in bora_kernels::Isa::supported() {
        match isa {
            bora_kernels::Isa::Avx2 => p.push("avx2"),
            bora_kernels::Isa::Avx512 => p.push("avx512"),
            bora_kernels::Isa::Scalar => {}
        }
    }
    p
}

fn run(path: &str, c: &Chunk<'_>, k: &[f32], v: &[f32], part: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX-512 only where the CPU has it.
        "avx512" => unsafe { c.attend_avx512(k, v, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX2 only where the CPU has AVX2 and FMA.
        "avx2" => unsafe { c.attend_avx2(k, v, part) },
        _ => c.attend_any(k, v, part),
    }
}

/// Chunked online-softmax attention, its chunks merged, equals softmax(q·k)·v computed in f64
/// over the whole span at once, for spans across the SUB and CHUNK boundaries, with a
/// scattered row map (as a block table makes) and grouped query heads.
#[test]
fn chunked_attention_matches_the_plain_softmax() {
    let shape = Shape {
        hq: 8,
        hkv: 2,
        d: 40,
    };
    let Shape { hq, hkv, d } = shape;
    let g = hq / hkv;
    for &len in &[1usize, 2, 31, 33, 256, 257, 700] {
        let pool = if (len + 5) % 7 == 0 { len + 6 } else { len + 5 };
        // Scores spread wide enough that the softmax is far from uniform.
        let k: Vec<f32> = noise(1, pool * hkv * d).iter().map(|x| 3.0 * x).collect();
        let v = noise(2, pool * hkv * d);
        let q = noise(3, hq * d);
        let row = |j: usize| (j * 7 + 3) % pool; // a permutation: pool and 7 are coprime here
        assert!(
            (0..len)
                .map(row)
                .collect::<std::collections::HashSet<_>>()
                .len()
                == len
        );
        let mut want = vec![0f64; hq * d];
        for h in 0..hq {
            let kh = h / g * d;
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    let r = row(j) * hkv * d + kh;
                    (0..d).map(|i| q[h * d + i] as f64 * k[r + i] as f64).sum()
                })
                .collect();
            let top = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = s.iter().map(|x| (x - top).exp()).sum();
            for (j, x) in s.iter().enumerate() {
                let r = row(j) * hkv * d + kh;
                for i in 0..d {
                    want[h * d + i] += (x - top).exp() / total * v[r + i] as f64;
                }
            }
        }
        for path in paths() {
            let spans: Vec<(usize, usize)> = (0..len)
                .step_by(CHUNK)
                .map(|a| (a, (a + CHUNK).min(len)))
                .collect();
            let mut parts = vec![0f32; spans.len() * shape.partial_len()];
            for (span, part) in spans
                .iter()
                .zip(parts.chunks_exact_mut(shape.partial_len()))
            {
                let c = Chunk {
                    shape,
                    q: &q,
                    rows: &row,
                    span: *span,
                };
                run(path, &c, &k, &v, part);
            }
            let mut got = vec![0f32; hq * d];
            shape.merge(&parts, &mut got);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 2e-5, "{path}, {len} positions: off by {worst}");
        }
    }
}

#[test]
fn exp_is_close_to_the_library_exp() {
    let mut worst = 0f32;
    for i in 0..=87_000 {
        let x = -(i as f32) / 1000.0;
        let (a, b) = (exp(x), x.exp());
        worst = worst.max((a - b).abs() / b);
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert!(exp(f32::NEG_INFINITY) < 1e-37);
    assert!(exp(f32::NAN) < 1e-37);
    assert_eq!(exp(0.0), 1.0);
}
