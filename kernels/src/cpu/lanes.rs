//! One SIMD register width (AVX2's 8 f32 lanes, AVX-512's 16): what the generic kernels of
//! `dot.rs` and `attn.rs` need of it. Every method is `inline(always)`, so that it compiles
//! inside the `target_feature` function that calls it.
//!
//! # Safety (every method)
//! The CPU has the instruction set of the implementation (AVX2, FMA and F16C; AVX-512F), and
//! every pointer points to `N` readable (or, for `store`, writable) elements.

use std::arch::x86_64::*;

use super::dot::Element;

pub(crate) trait Lanes {
    type V: Copy;
    /// f32 lanes per vector.
    const N: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load_x(p: *const f32) -> Self::V;
    unsafe fn load_w<W: Element>(p: *const W) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// The lane-wise maximum; where `a` is NaN, `b`.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn floor(a: Self::V) -> Self::V;
    /// `a · 2^n`, `n` integer-valued lanes with `2^n` a normal float.
    unsafe fn ldexp(a: Self::V, n: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    /// `N` vectors summed each across its lanes, the sums in order in one vector (lane `j`
    /// holds the sum of `v[j]`): a tree of shuffles and adds, `N - 1` adds in all rather
    /// than `N` horizontal sums. `v` holds exactly `N` vectors.
    unsafe fn sums(v: &[Self::V]) -> Self::V;
}

pub(crate) struct Avx2;

impl Lanes for Avx2 {
    type V = __m256;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> Self::V {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_w<W: Element>(p: *const W) -> Self::V {
        W::load8(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn floor(a: Self::V) -> Self::V {
        _mm256_floor_ps(a)
    }
    #[inline(always)]
    unsafe fn ldexp(a: Self::V, n: Self::V) -> Self::V {
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(a, _mm256_castsi256_ps(bits))
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn sums(v: &[Self::V]) -> Self::V {
        // Pairwise horizontal adds: each 128-bit half ends with the partial sums of its half
        // of v[0..4] (then of v[4..8]); the halves are added last.
        let h = [
            _mm256_hadd_ps(v[0], v[1]),
            _mm256_hadd_ps(v[2], v[3]),
            _mm256_hadd_ps(v[4], v[5]),
            _mm256_hadd_ps(v[6], v[7]),
        ];
        let (a, b) = (_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    }
}

pub(crate) struct Avx512;

impl Lanes for Avx512 {
    type V = __m512;
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> Self::V {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_w<W: Element>(p: *const W) -> Self::V {
        W::load16(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn floor(a: Self::V) -> Self::V {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn ldexp(a: Self::V, n: Self::V) -> Self::V {
        _mm512_scalef_ps(a, n)
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // constant indices keep the vectors in registers
    unsafe fn sums(v: &[Self::V]) -> Self::V {
        // Within each 128-bit lane: pairs of vectors interleaved and added (32-bit, then
        // 64-bit unpacks), leaving 4 vectors whose lanes hold [v4i, v4i+1, v4i+2, v4i+3]'s
        // partial sums; then the 128-bit lanes are added across, two vectors at a time.
        let mut b = [_mm512_setzero_ps(); 8];
        for i in 0..8 {
            let (x, y) = (v[2 * i], v[2 * i + 1]);
            b[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        let mut c = [_mm512_setzero_ps(); 4];
        for i in 0..4 {
            let (x, y) = (_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
            c[i] = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
            );
        }
        // [x.L0, x.L2, y.L0, y.L2] + [x.L1, x.L3, y.L1, y.L3], twice.
        let lanes = |x, y| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xDD>(x, y),
            )
        };
        let (e, f) = (lanes(c[0], c[1]), lanes(c[2], c[3]));
        lanes(e, f)
    }
}
