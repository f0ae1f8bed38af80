//! Dot products of one weight row with up to four f32 activation rows.
//!
//! `dot_rows::<W>(w, xs, acc)` sets `acc[r] = Σ_k w[k]·xs[r][k]` for each activation row `r`.
//! The AVX2 path widens 8 weights at a time to f32 (bf16: shift left 16; f16: F16C) and keeps
//! two accumulators per row; the scalar path is the reference and the fallback.

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

/// `dst = src` widened to f32 (replacing what `dst` held).
pub fn widen<W: Element>(src: &[W], dst: &mut Vec<f32>) {
    dst.clear();
    dst.reserve(src.len());
    #[cfg(target_arch = "x86_64")]
    if W::simd_available() {
        // SAFETY: capacity for src.len() values was reserved; the AVX2 loop writes exactly
        // src.len() of them before the length is set; the CPU features were checked.
        unsafe {
            widen_avx2(src, dst.as_mut_ptr());
            dst.set_len(src.len());
        }
        return;
    }
    dst.extend(src.iter().map(|v| v.to_f32()));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2<W: Element>(src: &[W], dst: *mut f32) {
    use std::arch::x86_64::*;
    let n = src.len();
    let p = src.as_ptr();
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), W::load8(p.add(i)));
        i += 8;
    }
    for j in i..n {
        *dst.add(j) = (*p.add(j)).to_f32();
    }
}

/// The scalar reference: `acc[r] = Σ_k w[k]·xs[r][k]`.
pub fn dot_rows_scalar<W: Element>(w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = w.iter().zip(x.iter()).map(|(&w, &x)| w.to_f32() * x).sum();
    }
}

/// `acc[r] = Σ_k w[k]·xs[r][k]` for `xs.len()` ≤ 4 rows, each at least `w.len()` long.
#[inline]
pub fn dot_rows<W: Element>(simd: bool, w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    debug_assert!(xs.len() <= 4 && acc.len() >= xs.len());
    debug_assert!(xs.iter().all(|x| x.len() >= w.len()));
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is `W::simd_available()`, checked by the caller; lengths are checked
        // above (every x row is at least as long as w).
        unsafe {
            match xs.len() {
                1 => dot_rows_avx2::<W, 1>(w, xs, acc),
                2 => dot_rows_avx2::<W, 2>(w, xs, acc),
                3 => dot_rows_avx2::<W, 3>(w, xs, acc),
                _ => dot_rows_avx2::<W, 4>(w, xs, acc),
            }
        }
        return;
    }
    let _ = simd;
    dot_rows_scalar(w, xs, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<W: Element, const R: usize>(w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.len();
    let wp = w.as_ptr();
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    let mut i = 0;
    while i + 16 <= k {
        let w0 = W::load8(wp.add(i));
        let w1 = W::load8(wp.add(i + 8));
        for r in 0..R {
            let xp = xs[r].as_ptr().add(i);
            a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), a0[r]);
            a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), a1[r]);
        }
        i += 16;
    }
    if i + 8 <= k {
        let w0 = W::load8(wp.add(i));
        for r in 0..R {
            a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[r].as_ptr().add(i)), a0[r]);
        }
        i += 8;
    }
    for r in 0..R {
        let v = _mm256_add_ps(a0[r], a1[r]);
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
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..k).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            for rows in 1..=4 {
                let x: Vec<&[f32]> = xs[..rows].iter().map(|v| v.as_slice()).collect();
                let mut want = [0f32; 4];
                let mut got = [0f32; 4];
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
    fn widen_matches_scalar() {
        for n in [0, 1, 7, 8, 9, 100] {
            let src: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(i as f32 * 0.37 - 3.0))
                .collect();
            let mut dst = vec![1.0; 3];
            widen(&src, &mut dst);
            assert_eq!(dst, src.iter().map(|v| v.to_f32()).collect::<Vec<_>>());
            let src: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32 * -1.37)).collect();
            widen(&src, &mut dst);
            assert_eq!(dst, src.iter().map(|v| v.to_f32()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn simd_matches_scalar() {
        check::<f32>(|v| v);
        check::<bf16>(bf16::from_f32);
        check::<f16>(f16::from_f32);
    }
}
