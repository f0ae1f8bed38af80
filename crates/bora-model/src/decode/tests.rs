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
    let mut p = vec!["best", "any"];
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

fn run(path: &str, c: &Chunk<'_>, k: Pool<'_>, v: Pool<'_>, part: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX-512 only where the CPU has it.
        "avx512" => unsafe { c.attend_avx512(k, v, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX2 only where the CPU has AVX2 and FMA.
        "avx2" => unsafe { c.attend_avx2(k, v, part) },
        "best" => c.attend(k, v, part),
        _ => c.attend_any(k, v, part),
    }
}

/// softmax(q·k)·v of token `t` (at `pos`) over keys `lo..=pos`, in f64.
#[allow(clippy::too_many_arguments)]
fn reference(
    shape: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    row: &dyn Fn(usize) -> usize,
    lo: usize,
    pos: usize,
    out: &mut [f64],
) {
    let Heads { hq, hkv, d } = shape;
    let g = hq / hkv;
    for h in 0..hq {
        let kh = h / g * d;
        let s: Vec<f64> = (lo..=pos)
            .map(|j| {
                let r = row(j) * hkv * d + kh;
                (0..d).map(|i| q[h * d + i] as f64 * k[r + i] as f64).sum()
            })
            .collect();
        let top = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = s.iter().map(|x| (x - top).exp()).sum();
        for (j, x) in (lo..=pos).zip(&s) {
            let r = row(j) * hkv * d + kh;
            for i in 0..d {
                out[h * d + i] += (x - top).exp() / total * v[r + i] as f64;
            }
        }
    }
}

/// Blocks of tokens attending chunks of keys with the online softmax, the chunks merged,
/// equal softmax(q·k)·v computed in f64 over each token's whole window at once: for one token
/// and for blocks (below and above TRANSPOSE_FROM tokens), spans across the SUB and CHUNK
/// boundaries, causal and sliding windows, a scattered row map (as a block table makes) and
/// grouped query heads, on every path this CPU can run (the one-token kernel of
/// `bora_kernels::cpu::attn` as `attend` dispatches to it), over f32, f16, bf16 and q8_0 pools
/// (each reference takes the values as the pool stores them).
#[test]
fn chunked_attention_matches_the_plain_softmax() {
    // D = 40 takes the scalar one-token kernel, D = 64 the SIMD ones.
    for (hq, hkv, d) in [(8, 2, 40), (16, 4, 64)] {
        let shape = Heads { hq, hkv, d };
        // (first position, tokens, sliding window, keys per task)
        let cases = [
            (0, 1, None, CHUNK),
            (1, 1, None, CHUNK),
            (30, 1, None, CHUNK),
            (32, 1, None, CHUNK),
            (255, 1, None, CHUNK),
            (256, 1, None, CHUNK),
            (699, 1, None, CHUNK),
            (699, 1, Some(100), CHUNK),
            (0, 3, None, 100),
            (40, 3, Some(37), 30),
            (0, TOKENS, None, 1000),
            (60, TOKENS, None, 50),
            (300, TOKENS, Some(20), 16),
            (500, 5, Some(64), 64),
        ];
        for (pos0, nt, window, per) in cases {
            let end = pos0 + nt;
            let mut pool = end + 5;
            if pool % 7 == 0 {
                pool += 1;
            }
            // Scores spread wide enough that the softmax is far from uniform.
            let k32: Vec<f32> = noise(1, pool * hkv * d).iter().map(|x| 3.0 * x).collect();
            let v32 = noise(2, pool * hkv * d);
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k32.iter().map(|&x| f16::from_f32(x)).collect(),
                v32.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let (kb, vb): (Vec<bf16>, Vec<bf16>) = (
                k32.iter().map(|&x| bf16::from_f32(x)).collect(),
                v32.iter().map(|&x| bf16::from_f32(x)).collect(),
            );
            let q8 = |x: &[f32]| {
                let mut b = vec![0u8; x.len() / 32 * 34];
                bora_kernels::quant::quantize(QType::Q8_0, x, &mut b);
                b
            };
            let (kq, vq) = if (hkv * d) % 32 == 0 {
                (q8(&k32), q8(&v32))
            } else {
                (Vec::new(), Vec::new())
            };
            // f32, f16, bf16 and (where rows are whole blocks) q8_0 pools; each reference takes
            // the pool's values as stored.
            for kind in 0..4 {
                if kind == 3 && kq.is_empty() {
                    continue;
                }
                let stored = |p: Pool<'_>, n: usize| {
                    let mut out = vec![0f32; n];
                    p.widen(0, &mut out);
                    out
                };
                let (kp, vp) = match kind {
                    0 => (Pool::F32(&k32), Pool::F32(&v32)),
                    1 => (Pool::F16(&k16), Pool::F16(&v16)),
                    2 => (Pool::BF16(&kb), Pool::BF16(&vb)),
                    _ => (Pool::Q8(&kq), Pool::Q8(&vq)),
                };
                let (k, v) = (stored(kp, k32.len()), stored(vp, v32.len()));
                let q = noise(3, nt * hq * d);
                let row = |j: usize| (j * 7 + 3) % pool; // a permutation: 7 does not divide pool
                assert_eq!(
                    (0..end)
                        .map(row)
                        .collect::<std::collections::HashSet<_>>()
                        .len(),
                    end
                );
                let lo = crate::attention::first_key(window, pos0);
                let mut want = vec![0f64; nt * hq * d];
                for (t, w) in want.chunks_exact_mut(hq * d).enumerate() {
                    let p = pos0 + t;
                    let qt = &q[t * hq * d..(t + 1) * hq * d];
                    reference(
                        shape,
                        qt,
                        &k,
                        &v,
                        &row,
                        crate::attention::first_key(window, p),
                        p,
                        w,
                    );
                }
                for path in paths() {
                    let spans: Vec<(usize, usize)> = (lo..end)
                        .step_by(per)
                        .map(|a| (a, (a + per).min(end)))
                        .collect();
                    let stride = nt * shape.partial_len();
                    let mut parts = vec![0f32; spans.len() * stride];
                    for (span, part) in spans.iter().zip(parts.chunks_exact_mut(stride)) {
                        let c = Chunk {
                            shape,
                            q: &q,
                            pos: pos0,
                            window,
                            rows: &row,
                            span: *span,
                        };
                        run(path, &c, kp, vp, part);
                    }
                    let mut got = vec![0f32; nt * hq * d];
                    for (t, o) in got.chunks_exact_mut(hq * d).enumerate() {
                        let len = shape.partial_len();
                        let mine = parts
                            .chunks_exact(stride)
                            .map(|p| &p[t * len..(t + 1) * len]);
                        merge(shape, mine, o);
                    }
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(&a, &b)| (a as f64 - b).abs())
                        .fold(0.0, f64::max);
                    assert!(
                worst < 2e-5,
                "{path}, pool kind {kind} (f32, f16, bf16, q8_0), {nt} tokens from {pos0}, window {window:?}: off by {worst}"
            );
                }
            }
        }
    }
}

/// Groups are consecutive, cover every block once, and hold at most the limit of tasks unless
/// one block alone has more.
#[test]
fn task_groups_cover_every_block_within_the_limit() {
    for first_task in [
        vec![0],
        vec![0, 1],
        vec![0, 1, 2, 3, 4, 5],
        vec![0, 3, 4, 10, 11, 12, 20],
        vec![0, 300, 301, 302],
    ] {
        for most in [1, 2, 3, 5, 256] {
            let groups = task_groups(&first_task, most);
            let blocks = first_task.len() - 1;
            let mut next = 0;
            for &(g0, g1) in &groups {
                assert_eq!(g0, next, "{first_task:?}, {most}: {groups:?}");
                assert!(g1 > g0);
                let tasks = first_task[g1] - first_task[g0];
                assert!(
                    tasks <= most || g1 == g0 + 1,
                    "{first_task:?}, {most}: {groups:?}"
                );
                next = g1;
            }
            assert_eq!(next, blocks, "{first_task:?}, {most}: {groups:?}");
        }
    }
}
