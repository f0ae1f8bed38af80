//! Dot products of one weight row with up to four f32 activation rows.
//!
//! `dot_rows::<W>(w, xs, acc)` sets `acc[r] = Σ_k w[k]·xs[r][k]` for each activation row `r`.
//! The AVX2 path widens 8 weights at a time to f32 (bf16: shift left 16; f16: F16C) and keeps
//! several accumulators per row; the scalar path is the reference and the fallback.

use half::{bf16, f16};

/// A weight element that can be widened to f32.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Whether this CPU can run the AVX2 path for this element type.
    fn simd_available() -> bool;
    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` must point to 8 readable elements, and the CPU must support what `simd_available`
    /// checked.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn simd_available() -> bool {
        has_avx2_fma()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn simd_available() -> bool {
        has_avx2_fma()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn simd_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst` = `src` (`[rows, k]`, row-major) widened to f32 and transposed: `dst[kk·rows + i] =
/// src[i·k + kk]`, the column-major layout that lets `gemm` read a weight block unpacked.
pub fn widen_transposed<W: Element>(src: &[W], rows: usize, k: usize, dst: &mut Vec<f32>) {
    assert_eq!(
        src.len(),
        rows * k,
        "widen_transposed: src is not [rows, k]"
    );
    dst.clear();
    dst.resize(rows * k, 0.0);
    let (full_rows, full_k) = (rows / 8 * 8, k / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if W::simd_available() {
        // SAFETY: tiles cover rows < full_rows ≤ rows and kk < full_k ≤ k, inside both
        // buffers (src is rows·k, dst was resized to rows·k); CPU features were checked.
        unsafe { transpose_tiles_avx2(src, rows, k, full_rows, full_k, dst.as_mut_ptr()) };
    } else {
        transpose_scalar(src, rows, k, 0..full_rows, 0..full_k, dst);
    }
    // What the 8x8 tiles did not cover: the last k % 8 columns, then the last rows % 8 rows.
    transpose_scalar(src, rows, k, 0..full_rows, full_k..k, dst);
    transpose_scalar(src, rows, k, full_rows..rows, 0..k, dst);
}

fn transpose_scalar<W: Element>(
    src: &[W],
    rows: usize,
    k: usize,
    is: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    for i in is {
        for kk in ks.clone() {
            dst[kk * rows + i] = src[i * k + kk].to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_tiles_avx2<W: Element>(
    src: &[W],
    rows: usize,
    k: usize,
    full_rows: usize,
    full_k: usize,
    dst: *mut f32,
) {
    use std::arch::x86_64::*;
    let p = src.as_ptr();
    for i0 in (0..full_rows).step_by(8) {
        for k0 in (0..full_k).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|r| W::load8(p.add((i0 + r) * k + k0)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let c = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, col) in c.iter().enumerate() {
                _mm256_storeu_ps(dst.add((k0 + j) * rows + i0), *col);
            }
        }
    }
}

/// The scalar reference: `acc[r] = Σ_k w[k]·xs[r][k]`.
pub fn dot_rows_scalar<W: Element>(w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = w.iter().zip(x.iter()).map(|(&w, &x)| w.to_f32() * x).sum();
    }
}

/// Activation rows one call of [`dot_rows`] takes at most.
pub const DOT_MAX_ROWS: usize = 8;

/// `acc[r] = Σ_k w[k]·xs[r][k]` for `xs.len()` ≤ 8 rows, each at least `w.len()` long.
#[inline]
pub fn dot_rows<W: Element>(simd: bool, w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    debug_assert!(xs.len() <= DOT_MAX_ROWS && acc.len() >= xs.len());
    debug_assert!(xs.iter().all(|x| x.len() >= w.len()));
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is `W::simd_available()`, checked by the caller; lengths are checked
        // above (every x row is at least as long as w).
        unsafe {
            match xs.len() {
                1 => dot_rows_avx2::<W, 1, 4>(w, xs, acc),
                2 => dot_rows_avx2::<W, 2, 4>(w, xs, acc),
                3 => dot_rows_avx2::<W, 3, 2>(w, xs, acc),
                4 => dot_rows_avx2::<W, 4, 2>(w, xs, acc),
                5 => dot_rows_avx2::<W, 5, 1>(w, xs, acc),
                6 => dot_rows_avx2::<W, 6, 1>(w, xs, acc),
                7 => dot_rows_avx2::<W, 7, 1>(w, xs, acc),
                _ => dot_rows_avx2::<W, 8, 1>(w, xs, acc),
            }
        }
        return;
    }
    let _ = simd;
    dot_rows_scalar(w, xs, acc)
}

/// How far ahead (in weight elements, 16 KB of bf16) the dot-product kernels prefetch: several
/// rows ahead, so that DRAM keeps streaming while a row is computed on (measured on the MoE
/// bench: 256 to 16384 tried, 8192 best; decode rose from about 70 to 97 tok/s on the e2e model).
const PREFETCH_ELEMS: usize = 8192;

/// Rows of `x` up to which [`dot_rows2`] pays: two weight rows share each activation load.
pub const DOT2_MAX_ROWS: usize = 4;

/// [`dot_rows`] for two weight rows at once (`acc0` for `w0`, `acc1` for `w1`): each activation
/// vector loaded serves both, halving the activation traffic, which bounds decode steps of a
/// few sequences (their activation rows do not all fit in L1).
#[inline]
pub fn dot_rows2<W: Element>(
    simd: bool,
    w0: &[W],
    w1: &[W],
    xs: &[&[f32]],
    acc0: &mut [f32],
    acc1: &mut [f32],
) {
    debug_assert!(xs.len() <= DOT2_MAX_ROWS && w0.len() == w1.len());
    debug_assert!(xs.iter().all(|x| x.len() >= w0.len()));
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `dot_rows`: features checked by the caller, lengths checked above.
        unsafe {
            match xs.len() {
                1 => dot_rows2_avx2::<W, 1, 4>(w0, w1, xs, acc0, acc1),
                2 => dot_rows2_avx2::<W, 2, 2>(w0, w1, xs, acc0, acc1),
                3 => dot_rows2_avx2::<W, 3, 1>(w0, w1, xs, acc0, acc1),
                _ => dot_rows2_avx2::<W, 4, 1>(w0, w1, xs, acc0, acc1),
            }
        }
        return;
    }
    let _ = simd;
    dot_rows_scalar(w0, xs, acc0);
    dot_rows_scalar(w1, xs, acc1);
}

/// `U` blocks of 8 per step: `2·R·U` independent FMA chains (at least 6) cover the latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows2_avx2<W: Element, const R: usize, const U: usize>(
    w0: &[W],
    w1: &[W],
    xs: &[&[f32]],
    acc0: &mut [f32],
    acc1: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = w0.len();
    let (p0, p1) = (w0.as_ptr(), w1.as_ptr());
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    let mut a0 = [[_mm256_setzero_ps(); R]; U];
    let mut a1 = [[_mm256_setzero_ps(); R]; U];
    let mut i = 0;
    while i + 8 * U <= k {
        // Ask for the weights well ahead: the hardware prefetcher alone does not keep DRAM busy.
        _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(i + PREFETCH_ELEMS) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(i + PREFETCH_ELEMS) as *const i8);
        for u in 0..U {
            let at = i + 8 * u;
            let v0 = W::load8(p0.add(at));
            let v1 = W::load8(p1.add(at));
            for r in 0..R {
                let x = _mm256_loadu_ps(xp[r].add(at));
                a0[u][r] = _mm256_fmadd_ps(v0, x, a0[u][r]);
                a1[u][r] = _mm256_fmadd_ps(v1, x, a1[u][r]);
            }
        }
        i += 8 * U;
    }
    while i + 8 <= k {
        let v0 = W::load8(p0.add(i));
        let v1 = W::load8(p1.add(i));
        for r in 0..R {
            let x = _mm256_loadu_ps(xp[r].add(i));
            a0[0][r] = _mm256_fmadd_ps(v0, x, a0[0][r]);
            a1[0][r] = _mm256_fmadd_ps(v1, x, a1[0][r]);
        }
        i += 8;
    }
    for r in 0..R {
        let (mut s0, mut s1) = (a0[0][r], a1[0][r]);
        for u in 1..U {
            s0 = _mm256_add_ps(s0, a0[u][r]);
            s1 = _mm256_add_ps(s1, a1[u][r]);
        }
        let (mut t0, mut t1) = (hsum(s0), hsum(s1));
        for j in i..k {
            let x = *xs[r].get_unchecked(j);
            t0 += (*p0.add(j)).to_f32() * x;
            t1 += (*p1.add(j)).to_f32() * x;
        }
        acc0[r] = t0;
        acc1[r] = t1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// `U` blocks of 8 weights per step, `U` accumulators per activation row: at least four
/// independent FMA chains in flight to cover the FMA latency (`U = 4` for one row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<W: Element, const R: usize, const U: usize>(
    w: &[W],
    xs: &[&[f32]],
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = w.len();
    let wp = w.as_ptr();
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    let mut a = [[_mm256_setzero_ps(); R]; U];
    let mut i = 0;
    while i + 8 * U <= k {
        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(i + PREFETCH_ELEMS) as *const i8);
        for (u, au) in a.iter_mut().enumerate() {
            let wv = W::load8(wp.add(i + 8 * u));
            for r in 0..R {
                au[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp[r].add(i + 8 * u)), au[r]);
            }
        }
        i += 8 * U;
    }
    while i + 8 <= k {
        let wv = W::load8(wp.add(i));
        for r in 0..R {
            a[0][r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp[r].add(i)), a[0][r]);
        }
        i += 8;
    }
    for r in 0..R {
        let mut v = a[0][r];
        for au in &a[1..] {
            v = _mm256_add_ps(v, au[r]);
        }
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        let mut total = _mm_cvtss_f32(s);
        for j in i..k {
            total += (*wp.add(j)).to_f32() * *xs[r].get_unchecked(j);
        }
        acc[r] = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn check<W: Element>(conv: fn(f32) -> W) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for k in [1, 7, 8, 15, 16, 17, 33, 100, 1024] {
            let w: Vec<W> = (0..k).map(|_| conv(rng.random_range(-1.0..1.0))).collect();
            let xs: Vec<Vec<f32>> = (0..8)
                .map(|_| (0..k).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            for rows in 1..=8 {
                let x: Vec<&[f32]> = xs[..rows].iter().map(|v| v.as_slice()).collect();
                let mut want = [0f32; 8];
                let mut got = [0f32; 8];
                dot_rows_scalar(&w, &x, &mut want);
                dot_rows(W::simd_available(), &w, &x, &mut got);
                for r in 0..rows {
                    assert!(
                        (want[r] - got[r]).abs() < 1e-4,
                        "k={k} r={r}: {} vs {}",
                        want[r],
                        got[r]
                    );
                }
            }
        }
    }

    #[test]
    fn widen_transposed_matches_scalar() {
        for (rows, k) in [(1, 1), (8, 8), (16, 24), (13, 21), (9, 40), (40, 7)] {
            let src: Vec<bf16> = (0..rows * k)
                .map(|i| bf16::from_f32(i as f32 * 0.5 - 7.0))
                .collect();
            let mut dst = Vec::new();
            widen_transposed(&src, rows, k, &mut dst);
            for i in 0..rows {
                for kk in 0..k {
                    assert_eq!(
                        dst[kk * rows + i],
                        src[i * k + kk].to_f32(),
                        "{rows}x{k} at ({i}, {kk})"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_matches_scalar() {
        check::<f32>(|v| v);
        check::<bf16>(bf16::from_f32);
        check::<f16>(f16::from_f32);
    }
}
