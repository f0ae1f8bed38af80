//! Products over bf16 weights with the CPU's BF16 dot product (`vdpbf16ps`, AVX512_BF16), for
//! every number of activation rows: activations rounded to bf16 once per product (as llama.cpp
//! and transformers' bf16 models do), then each pair of bf16 multiplied and summed into f32
//! lanes, 32 products per instruction, twice the rate of f32 FMAs and without widening the
//! weights. A tile of up to 4 activation rows and 6 weight rows keeps 24 accumulators; the
//! weight rows stay in L1 while every group of 4 activation rows passes them; one activation row
//! (decode) takes the weight rows one after the other instead, as one stream. Each output is
//! summed the same way whatever the tile (one accumulator over `k` in steps of 32, then one
//! reduction), so a row's result does not depend on the batch: decode and prefill agree bit for
//! bit.

use half::bf16;

/// Activation rows per tile.
const R: usize = 4;
/// Weight rows per tile.
const C: usize = 6;

/// Whether this CPU has the kernel (AVX-512 F, BW and BF16, and `BORA_CPU_ISA` allows
/// AVX-512): then bf16 weights take it, their activations rounded to bf16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            super::Isa::get() == super::Isa::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
thread_local! {
    /// Set by [`widened`]: products on this thread widen bf16 weights to f32 as a CPU without
    /// the kernel does.
    static WIDEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a product started on this thread takes the kernel: [`available`] (and, in tests,
/// not inside [`widened`]).
pub(crate) fn taken() -> bool {
    #[cfg(test)]
    if WIDEN.with(|w| w.get()) {
        return false;
    }
    available()
}

/// Runs `f` with the products it starts on this thread on the widening path, whatever the CPU
/// has: so that path is tested on every machine.
#[cfg(test)]
pub(crate) fn widened<T>(f: impl FnOnce() -> T) -> T {
    WIDEN.with(|w| w.set(true));
    let out = f();
    WIDEN.with(|w| w.set(false));
    out
}

/// Activation rows rounded to bf16: `[m, k]`.
pub(crate) struct Acts {
    xb: Vec<bf16>,
    m: usize,
    k: usize,
}

impl Acts {
    /// `x` (`[m, k]` at row stride `x_stride`) rounded to bf16 (to nearest even).
    pub(crate) fn new(x: &[f32], x_stride: usize, m: usize, k: usize) -> Self {
        let mut xb = Vec::with_capacity(m * k);
        for r in 0..m {
            xb.extend(
                x[r * x_stride..r * x_stride + k]
                    .iter()
                    .map(|&v| bf16::from_f32(v)),
            );
        }
        Self { xb, m, k }
    }
}

/// `out[r · n + j0 + j] = Σ_i x[r, i] · w[j, i]` for every activation row `r < m` and weight
/// row `j < rows` of `w` (`[rows, k]`, the task's rows starting at column `j0`).
///
/// # Panics
/// If this CPU has no kernel ([`available`]) or the lengths do not match.
///
/// # Safety
/// `out` must be valid for writes at `r · n + j0 + j` for those `r` and `j`, and no other
/// thread may access those elements meanwhile.
pub(crate) unsafe fn rows(
    acts: &Acts,
    w: &[bf16],
    rows: usize,
    out: *mut f32,
    n: usize,
    j0: usize,
) {
    let (xb, m, k) = (&acts.xb, acts.m, acts.k);
    assert!(available(), "bf16gemm: no AVX512_BF16 here");
    assert!(xb.len() >= m * k && w.len() >= rows * k);
    #[cfg(target_arch = "x86_64")]
    if m == 1 {
        // Decode: the weight rows one after the other, one stream from the first to the last.
        // Six rows side by side were six short streams of `k` values each, which the hardware
        // prefetcher followed badly (BF16 decode 52 against 86 tok/s on the bench model).
        for j in (0..rows).step_by(16) {
            let n16 = 16.min(rows - j);
            let mut acc = [std::arch::x86_64::_mm512_setzero_ps(); 16];
            for (i, a) in acc[..n16].iter_mut().enumerate() {
                // SAFETY: as below, for the one activation row and weight row j + i.
                *a = x86::dot::<1, 1>(xb.as_ptr(), w[(j + i) * k..].as_ptr(), k)[0][0];
            }
            // SAFETY: outputs j0 + j .. j0 + j + n16 of row 0 are the caller's.
            x86::reduce(&acc[..n16], |i, v| *out.add(j0 + j + i) = v);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    for c0 in (0..rows).step_by(C) {
        let cn = C.min(rows - c0);
        for r0 in (0..m).step_by(R) {
            let rn = R.min(m - r0);
            let x = xb[r0 * k..].as_ptr();
            let wp = w[c0 * k..].as_ptr();
            let o = out.add(r0 * n + j0 + c0);
            // SAFETY: AVX-512 F/BW/BF16 are present (asserted); rows r0..r0 + rn of x and
            // c0..c0 + cn of w hold k values each; `o` is valid for those outputs (the
            // caller's contract).
            match (rn, cn) {
                (4, C) => x86::tile::<4, C>(x, wp, k, o, n),
                (3, C) => x86::tile::<3, C>(x, wp, k, o, n),
                (2, C) => x86::tile::<2, C>(x, wp, k, o, n),
                (1, C) => x86::tile::<1, C>(x, wp, k, o, n),
                _ => x86::edge(x, rn, wp, cn, k, o, n),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    /// 32 bf16 at `p` (`len` of them, the rest zero) as a vector of pairs.
    #[inline(always)]
    unsafe fn load(p: *const bf16, len: usize) -> __m512bh {
        let v = if len >= 32 {
            _mm512_loadu_si512(p as *const _)
        } else {
            _mm512_maskz_loadu_epi16((1u32 << len).wrapping_sub(1), p as *const i16)
        };
        std::mem::transmute::<__m512i, __m512bh>(v)
    }

    /// The accumulators of `A` activation rows against `B` weight rows: each output's 16
    /// lanes of partial sums, over `k` in steps of 32.
    ///
    /// # Safety
    /// AVX-512 F, BW and BF16; `A` rows of `k` values at `x`, `B` at `w`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn dot<const A: usize, const B: usize>(
        x: *const bf16,
        w: *const bf16,
        k: usize,
    ) -> [[__m512; B]; A] {
        let mut acc = [[_mm512_setzero_ps(); B]; A];
        let mut i = 0;
        while i < k {
            let len = k - i;
            let xs: [__m512bh; A] = std::array::from_fn(|a| load(x.add(a * k + i), len));
            for b in 0..B {
                let wv = load(w.add(b * k + i), len);
                for (row, xa) in acc.iter_mut().zip(&xs) {
                    row[b] = _mm512_dpbf16_ps(row[b], *xa, wv);
                }
            }
            i += 32;
        }
        acc
    }

    /// Each accumulator summed across its lanes, 16 at a time by `Lanes::sums`' tree (15 adds
    /// for 16 sums, where one horizontal sum each costs 4 shuffles and 4 adds): `put(i, sum
    /// of acc[i])`. A lane's sum does not depend on the other vectors of its group, so every
    /// output is summed the same way whatever the tile.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn reduce(acc: &[__m512], mut put: impl FnMut(usize, f32)) {
        use crate::cpu::lanes::{Avx512, Lanes};
        for (g, group) in acc.chunks(16).enumerate() {
            let mut v = [_mm512_setzero_ps(); 16];
            v[..group.len()].copy_from_slice(group);
            let mut sums = [0f32; 16];
            Avx512::store(sums.as_mut_ptr(), Avx512::sums(&v));
            for (i, &s) in sums[..group.len()].iter().enumerate() {
                put(g * 16 + i, s);
            }
        }
    }

    /// The full tile: `A` activation rows against `B` weight rows.
    ///
    /// # Safety
    /// AVX-512 F, BW and BF16; `A` rows of `k` values at `x`, `B` at `w`; `out + a·n + b`
    /// writable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile<const A: usize, const B: usize>(
        x: *const bf16,
        w: *const bf16,
        k: usize,
        out: *mut f32,
        n: usize,
    ) {
        let acc = dot::<A, B>(x, w, k);
        let mut flat = [_mm512_setzero_ps(); super::R * super::C];
        for (f, a) in flat.iter_mut().zip(acc.iter().flatten()) {
            *f = *a;
        }
        reduce(&flat[..A * B], |i, v| *out.add(i / B * n + i % B) = v);
    }

    /// A tile at the edge: `rn` activation rows against `cn` weight rows, one pair at a time.
    ///
    /// # Safety
    /// As [`tile`], for `rn` and `cn` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn edge(
        x: *const bf16,
        rn: usize,
        w: *const bf16,
        cn: usize,
        k: usize,
        out: *mut f32,
        n: usize,
    ) {
        for a in 0..rn {
            for b in 0..cn {
                tile::<1, 1>(x.add(a * k), w.add(b * k), k, out.add(a * n + b), n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Every tile shape and tail (k not a multiple of 32, rows not of 4 or 6) against the f32
    /// sum of the same bf16 products.
    #[test]
    fn bf16_tiles_match_the_reference() {
        if !available() {
            eprintln!("skipped: no AVX512_BF16 on this CPU");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (m, k, n) in [(17, 64, 12), (21, 100, 13), (4, 32, 6), (33, 1024, 40)] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<bf16> = (0..n * k)
                .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            let acts = Acts::new(&x, k, m, k);
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: out is [m, n]; this task owns all of it.
            unsafe { rows(&acts, &w, n, out.as_mut_ptr(), n, 0) };
            for r in 0..m {
                for j in 0..n {
                    let terms = (0..k)
                        .map(|i| acts.xb[r * k + i].to_f32() as f64 * w[j * k + i].to_f32() as f64);
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let got = out[r * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{m}x{k}x{n} [{r},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
