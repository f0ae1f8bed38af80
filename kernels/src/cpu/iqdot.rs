//! The i-quants' and Q2_K's and Q3_K's dot products with AVX2: one weight row against up to
//! [`IQ_ACT_ROWS`] activation rows (Q8_K; IQ4_NL: Q8_0), each group of 32 weights decoded once
//! for all of them.
//!
//! A group's 32 values are `scale · level` (`quant_iq`'s integer form); a group is decoded to
//! two vectors, the levels' magnitudes (unsigned bytes, what `vpmaddubsw` takes first) and
//! their signs (any byte of the level's sign: `vpsignb` moves it onto the activation bytes).
//! The grids' rows are loaded as whole 8-byte (IQ2, IQ1) or 4-byte (IQ3) words, the sign
//! patterns as 8-byte words of ±1 from tables built here from the format's own. The pair
//! products (`vpmaddubsw`, at most 2 · 127 · 127: no saturation) take the scales of 16 values
//! in `vpmaddwd`, and each block's integer sum is scaled once by the two blocks' scales.
//! Q3_K is the same with levels −4..=3 and signed 6-bit scales of 16; Q2_K has levels 0..=3
//! (no signs) and a minimum per 16 values, taken off with the activation block's sums of 16.
//! Without AVX2 (or off x86), the scalar dot products run instead (`quant_iq`'s; candle's for
//! Q2_K and Q3_K).

use crate::quant::QType;
use crate::quant_iq::{self, IqType, QK_K};

/// Activation rows one call takes at most.
pub(crate) const IQ_ACT_ROWS: usize = 16;

/// Whether [`dot`] takes `q`.
pub(crate) fn takes(q: QType) -> bool {
    q.iq().is_some() || matches!(q, QType::Q2K | QType::Q3K)
}

/// `out[r] = w_row · acts[r]` for one row of blocks of `q` (an i-quant, Q2_K or Q3_K) against
/// activation blocks (Q8_K, or Q8_0 for IQ4_NL), with AVX2 where the CPU has it.
///
/// # Panics
/// If `q` is not one of those ([`takes`]), a slice is shorter than the weight row's blocks, or
/// there are more than [`IQ_ACT_ROWS`] rows.
pub(crate) fn dot(q: QType, w_row: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    assert!(takes(q), "no group kernel for {q}");
    assert!(acts.len() <= IQ_ACT_ROWS && out.len() >= acts.len());
    let blocks = w_row.len() / q.block_bytes();
    #[cfg(target_arch = "x86_64")]
    if super::qdot::available() {
        let act_bytes = if q == QType::IQ4NL { 34 } else { Q8K_BYTES };
        assert!(acts.iter().all(|a| a.len() >= blocks * act_bytes));
        // SAFETY: AVX2, FMA and F16C are present (`available`); each activation row holds
        // `blocks` blocks, as the weight row does by construction.
        unsafe { x86::dot(q, w_row, blocks, acts, out) };
        return;
    }
    for (o, a) in out.iter_mut().zip(acts) {
        *o = match q.iq() {
            Some(IqType::Iq4Nl) => quant_iq::dot_iq4nl_q8_0(w_row, a),
            Some(t) => quant_iq::dot_q8k(t, w_row, a),
            None => {
                let mut one = [0f32];
                crate::quant::candle_dot_rows(q, blocks * q.block_elems(), w_row, &[a], &mut one);
                one[0]
            }
        };
    }
}

/// Bytes of a Q8_K block: f32 scale, 256 levels, 16 sums.
const Q8K_BYTES: usize = 4 + QK_K + 32;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Q8K_BYTES;
    use crate::iq_tables::{
        IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
        KVALUES_IQ4NL,
    };
    use crate::quant::QType;

    /// 8 sign bits as 8 bytes of +1 or −1 (bit `j` set: byte `j` is −1).
    const fn sign_bytes(bits: u8) -> u64 {
        let mut v = 0u64;
        let mut j = 0;
        while j < 8 {
            let b: u64 = if bits >> j & 1 == 1 { 0xff } else { 0x01 };
            v |= b << (8 * j);
            j += 1;
        }
        v
    }

    const fn signs_table() -> [u64; 256] {
        let mut t = [0u64; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = sign_bytes(i as u8);
            i += 1;
        }
        t
    }

    const fn ksigns_table() -> [u64; 128] {
        let mut t = [0u64; 128];
        let mut i = 0;
        while i < 128 {
            t[i] = sign_bytes(KSIGNS_IQ2XS[i]);
            i += 1;
        }
        t
    }

    /// An explicit sign byte's 8 signs (IQ2_S, IQ3_S).
    static SIGNS: [u64; 256] = signs_table();
    /// A 7-bit sign index's 8 signs (IQ2_XXS, IQ2_XS, IQ3_XXS).
    static KSIGNS: [u64; 128] = ksigns_table();

    #[inline(always)]
    unsafe fn u16_at(p: *const u8, at: usize) -> usize {
        u16::from_le_bytes([*p.add(at), *p.add(at + 1)]) as usize
    }

    #[inline(always)]
    unsafe fn u32_at(p: *const u8, at: usize) -> u32 {
        u32::from_le_bytes([*p.add(at), *p.add(at + 1), *p.add(at + 2), *p.add(at + 3)])
    }

    #[inline(always)]
    unsafe fn f16_at(p: *const u8, at: usize) -> f32 {
        half::f16::from_le_bytes([*p.add(at), *p.add(at + 1)]).to_f32()
    }

    /// The signs of 32 values from four 7-bit sign indices packed in the low 28 bits of `aux`
    /// (IQ2_XXS, IQ3_XXS).
    #[inline(always)]
    unsafe fn packed_signs(aux: usize) -> __m256i {
        let k = |i: usize| KSIGNS[aux >> (7 * i) & 127];
        words(k(0), k(1), k(2), k(3))
    }

    /// Four 8-byte words as one vector, the first lowest.
    #[inline(always)]
    unsafe fn words(a: u64, b: u64, c: u64, d: u64) -> __m256i {
        _mm256_set_epi64x(d as i64, c as i64, b as i64, a as i64)
    }

    /// One type's blocks: the scale of the block, of each 16 values, and each group of 32
    /// values as (magnitudes, signs).
    trait Groups {
        /// Whether the levels have signs (all but Q2_K's).
        const SIGNED: bool = true;
        /// The block's `d` (its f16 scale times the format's power of two) and the integer
        /// scale of each 16 values.
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]);
        /// Group `g`'s magnitudes and signs.
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i);
        /// The scale of the minimums and the minimum of each 16 values, for a type with them:
        /// value `i` is then `d · scale · level − dmin · min`.
        #[inline(always)]
        unsafe fn mins(_b: *const u8) -> Option<(f32, [i16; 16])> {
            None
        }
    }

    /// Q3_K: levels `q − 4` (`q`: two low bits and a high one), signed 6-bit scales of 16.
    struct Q3K;
    impl Groups for Q3K {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let s = |i: usize| u32_at(b, 96 + 4 * i);
            let (a0, a1, t) = (s(0), s(1), s(2));
            let (m1, m2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let aux = [
                (a0 & m2) | ((t & m1) << 4),
                (a1 & m2) | (((t >> 2) & m1) << 4),
                ((a0 >> 4) & m2) | (((t >> 4) & m1) << 4),
                ((a1 >> 4) & m2) | (((t >> 6) & m1) << 4),
            ];
            let scales = std::array::from_fn(|i| (aux[i / 4] >> (8 * (i % 4))) as u8 as i16 - 32);
            (f16_at(b, 108), scales)
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let (n, j) = (g / 4, g % 4);
            let q = _mm256_loadu_si256(b.add(32 + 32 * n) as *const __m256i);
            let low = _mm256_and_si256(
                _mm256_srlv_epi32(q, _mm256_set1_epi32(2 * j as i32)),
                _mm256_set1_epi8(3),
            );
            let hm = _mm256_loadu_si256(b as *const __m256i);
            let bit = _mm256_set1_epi8((1u8 << (4 * n + j)) as i8);
            let unset = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
            let l = _mm256_sub_epi8(low, _mm256_and_si256(unset, _mm256_set1_epi8(4)));
            (_mm256_abs_epi8(l), l)
        }
    }

    /// Q2_K: levels 0..=3, 4-bit scales and minimums of 16.
    struct Q2K;
    impl Groups for Q2K {
        const SIGNED: bool = false;
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            (
                f16_at(b, 80),
                std::array::from_fn(|i| (*b.add(i) & 0xf) as i16),
            )
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let (n, j) = (g / 4, g % 4);
            let q = _mm256_loadu_si256(b.add(16 + 32 * n) as *const __m256i);
            let l = _mm256_and_si256(
                _mm256_srlv_epi32(q, _mm256_set1_epi32(2 * j as i32)),
                _mm256_set1_epi8(3),
            );
            (l, l)
        }
        #[inline(always)]
        unsafe fn mins(b: *const u8) -> Option<(f32, [i16; 16])> {
            Some((
                f16_at(b, 82),
                std::array::from_fn(|i| (*b.add(i) >> 4) as i16),
            ))
        }
    }

    /// Scales of 32 values as scales of 16 (each twice).
    #[inline(always)]
    fn twice(s: [i16; 8]) -> [i16; 16] {
        let mut out = [0; 16];
        for (i, v) in s.into_iter().enumerate() {
            out[2 * i] = v;
            out[2 * i + 1] = v;
        }
        out
    }

    /// Nibble scales `2s + 1`, low nibble first: scales of 16 values (`n` bytes).
    #[inline(always)]
    unsafe fn odd_nibbles(p: *const u8, n: usize) -> [i16; 16] {
        let mut out = [0i16; 16];
        for i in 0..n {
            let v = *p.add(i);
            out[2 * i] = 2 * (v & 0xf) as i16 + 1;
            out[2 * i + 1] = 2 * (v >> 4) as i16 + 1;
        }
        out
    }

    struct Iq2Xxs;
    impl Groups for Iq2Xxs {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let s = std::array::from_fn(|g| 2 * (u32_at(b, 6 + 8 * g) >> 28) as i16 + 1);
            (f16_at(b, 0) * 0.125, twice(s))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let q = b.add(2 + 8 * g);
            let aux = u32_at(q, 4) as usize;
            let m = words(
                IQ2XXS_GRID[*q as usize],
                IQ2XXS_GRID[*q.add(1) as usize],
                IQ2XXS_GRID[*q.add(2) as usize],
                IQ2XXS_GRID[*q.add(3) as usize],
            );
            (m, packed_signs(aux))
        }
    }

    struct Iq2Xs;
    impl Groups for Iq2Xs {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            (f16_at(b, 0) * 0.125, odd_nibbles(b.add(66), 8))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let q = |l: usize| u16_at(b, 2 + 8 * g + 2 * l);
            let m = words(
                IQ2XS_GRID[q(0) & 511],
                IQ2XS_GRID[q(1) & 511],
                IQ2XS_GRID[q(2) & 511],
                IQ2XS_GRID[q(3) & 511],
            );
            let s = words(
                KSIGNS[q(0) >> 9],
                KSIGNS[q(1) >> 9],
                KSIGNS[q(2) >> 9],
                KSIGNS[q(3) >> 9],
            );
            (m, s)
        }
    }

    struct Iq2S;
    impl Groups for Iq2S {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            (f16_at(b, 0) * 0.125, odd_nibbles(b.add(74), 8))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let qh = *b.add(66 + g) as usize;
            let idx = |l: usize| *b.add(2 + 4 * g + l) as usize | (qh >> (2 * l) & 3) << 8;
            let sg = |l: usize| SIGNS[*b.add(34 + 4 * g + l) as usize];
            let m = words(
                IQ2S_GRID[idx(0)],
                IQ2S_GRID[idx(1)],
                IQ2S_GRID[idx(2)],
                IQ2S_GRID[idx(3)],
            );
            (m, words(sg(0), sg(1), sg(2), sg(3)))
        }
    }

    struct Iq3Xxs;
    impl Groups for Iq3Xxs {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let s = std::array::from_fn(|g| 2 * (u32_at(b, 66 + 4 * g) >> 28) as i16 + 1);
            (f16_at(b, 0) * 0.25, twice(s))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let q = b.add(2 + 8 * g);
            let r = |l: usize| IQ3XXS_GRID[*q.add(l) as usize] as i32;
            let m = _mm256_set_epi32(r(7), r(6), r(5), r(4), r(3), r(2), r(1), r(0));
            let aux = u32_at(b, 66 + 4 * g) as usize;
            (m, packed_signs(aux))
        }
    }

    struct Iq3S;
    impl Groups for Iq3S {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let mut s = [0i16; 8];
            for (g, v) in s.iter_mut().enumerate() {
                *v = 2 * (*b.add(106 + g / 2) >> (4 * (g % 2)) & 0xf) as i16 + 1;
            }
            (f16_at(b, 0), twice(s))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let qh = *b.add(66 + g) as usize;
            let r =
                |l: usize| IQ3S_GRID[*b.add(2 + 8 * g + l) as usize | (qh >> l & 1) << 8] as i32;
            let m = _mm256_set_epi32(r(7), r(6), r(5), r(4), r(3), r(2), r(1), r(0));
            let sg = |l: usize| SIGNS[*b.add(74 + 4 * g + l) as usize];
            (m, words(sg(0), sg(1), sg(2), sg(3)))
        }
    }

    /// IQ1's levels `8g ± 1` from four grid rows and their shifts (±1 each): as magnitudes and
    /// the levels themselves (never 0) for their signs.
    #[inline(always)]
    unsafe fn iq1_levels(rows: [u64; 4], delta: [i8; 4]) -> (__m256i, __m256i) {
        let g = words(rows[0], rows[1], rows[2], rows[3]);
        let d = |i: usize| (delta[i] as u8 as u64).wrapping_mul(0x0101_0101_0101_0101);
        let l = _mm256_add_epi8(
            _mm256_sign_epi8(_mm256_set1_epi8(8), g),
            words(d(0), d(1), d(2), d(3)),
        );
        (_mm256_abs_epi8(l), l)
    }

    struct Iq1S;
    impl Groups for Iq1S {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let s = std::array::from_fn(|g| 2 * (u16_at(b, 34 + 2 * g) >> 12 & 7) as i16 + 1);
            (f16_at(b, 0) * 0.125, twice(s))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let qh = u16_at(b, 34 + 2 * g);
            let row =
                |l: usize| IQ1S_GRID[*b.add(2 + 4 * g + l) as usize | (qh >> (3 * l) & 7) << 8];
            let d = if qh & 0x8000 == 0 { 1 } else { -1 };
            iq1_levels([row(0), row(1), row(2), row(3)], [d; 4])
        }
    }

    struct Iq1M;
    impl Groups for Iq1M {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let sc = |i: usize| u16_at(b, 48 + 2 * i);
            let bits = (sc(0) & 0xf000) >> 12
                | (sc(1) & 0xf000) >> 8
                | (sc(2) & 0xf000) >> 4
                | sc(3) & 0xf000;
            let d = half::f16::from_bits(bits as u16).to_f32() * 0.125;
            (
                d,
                std::array::from_fn(|i| 2 * (sc(i / 4) >> (3 * (i % 4)) & 7) as i16 + 1),
            )
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            let mut rows = [0u64; 4];
            let mut delta = [0i8; 4];
            for l in 0..4 {
                let e = 4 * g + l;
                let nib = (*b.add(32 + e / 2) >> (4 * (e % 2)) & 0xf) as usize;
                rows[l] = IQ1S_GRID[*b.add(e) as usize | (nib & 7) << 8];
                delta[l] = if nib & 8 == 0 { 1 } else { -1 };
            }
            iq1_levels(rows, delta)
        }
    }

    /// IQ4's 16 levels in both halves, for `vpshufb`.
    #[inline(always)]
    unsafe fn iq4_table() -> __m256i {
        let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        _mm256_set_m128i(t, t)
    }

    /// IQ4's 32 levels of 16 bytes of nibbles (low nibbles first) as magnitudes and levels.
    #[inline(always)]
    unsafe fn iq4_levels(p: *const u8) -> (__m256i, __m256i) {
        let q = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(0xf);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        let l = _mm256_shuffle_epi8(iq4_table(), _mm256_set_m128i(hi, lo));
        (_mm256_abs_epi8(l), l)
    }

    struct Iq4Xs;
    impl Groups for Iq4Xs {
        #[inline(always)]
        unsafe fn header(b: *const u8) -> (f32, [i16; 16]) {
            let h = u16_at(b, 2);
            let s = std::array::from_fn(|g| {
                let lo = *b.add(4 + g / 2) >> (4 * (g % 2)) & 0xf;
                let hi = (h >> (2 * g) & 3) as u8;
                (lo | hi << 4) as i16 - 32
            });
            (f16_at(b, 0), twice(s))
        }
        #[inline(always)]
        unsafe fn group(b: *const u8, g: usize) -> (__m256i, __m256i) {
            iq4_levels(b.add(8 + 16 * g))
        }
    }

    /// Horizontal sum of eight f32.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `R` activation rows against one weight row of 256-value blocks of `G`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<G: Groups, const R: usize>(
        w: &[u8],
        bytes: usize,
        blocks: usize,
        acts: &[&[u8]],
        out: &mut [f32],
    ) {
        let mut sums = [_mm256_setzero_ps(); R];
        for bi in 0..blocks {
            let b = w.as_ptr().add(bi * bytes);
            let (d, scales) = G::header(b);
            let mut acc = [_mm256_setzero_si256(); R];
            for g in 0..8 {
                let (m, s) = G::group(b, g);
                let sc = _mm256_set_m128i(
                    _mm_set1_epi16(scales[2 * g + 1]),
                    _mm_set1_epi16(scales[2 * g]),
                );
                for r in 0..R {
                    let a = acts[r].as_ptr().add(bi * Q8K_BYTES + 4 + 32 * g);
                    let q = _mm256_loadu_si256(a as *const __m256i);
                    let q = if G::SIGNED { _mm256_sign_epi8(q, s) } else { q };
                    let p = _mm256_maddubs_epi16(m, q);
                    acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, sc));
                }
            }
            let mins = G::mins(b);
            for r in 0..R {
                let a = acts[r].as_ptr().add(bi * Q8K_BYTES);
                let da = f32::from_le_bytes([*a, *a.add(1), *a.add(2), *a.add(3)]);
                let f = _mm256_set1_ps(d * da);
                sums[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), f, sums[r]);
                if let Some((dmin, m)) = mins {
                    // The activation block's sums of 16, times the minimums.
                    let bsums = _mm256_loadu_si256(a.add(4 + 256) as *const __m256i);
                    let mv = _mm256_loadu_si256(m.as_ptr() as *const __m256i);
                    let mm = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mv));
                    sums[r] = _mm256_fnmadd_ps(mm, _mm256_set1_ps(dmin * da), sums[r]);
                }
            }
        }
        for r in 0..R {
            out[r] = hsum(sums[r]);
        }
    }

    /// `R` Q8_0 activation rows against one row of IQ4_NL blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4nl_rows<const R: usize>(w: &[u8], blocks: usize, acts: &[&[u8]], out: &mut [f32]) {
        let mut sums = [_mm256_setzero_ps(); R];
        let ones = _mm256_set1_epi16(1);
        for bi in 0..blocks {
            let b = w.as_ptr().add(bi * 18);
            let d = f16_at(b, 0);
            let (m, s) = iq4_levels(b.add(2));
            for r in 0..R {
                let a = acts[r].as_ptr().add(bi * 34);
                let q = _mm256_loadu_si256(a.add(2) as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(m, _mm256_sign_epi8(q, s)), ones);
                let f = _mm256_set1_ps(d * f16_at(a, 0));
                sums[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, sums[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(sums[r]);
        }
    }

    /// The rows in chunks of `R`, each chunk decoding the weight row once.
    macro_rules! chunks {
        ($acts:expr, $out:expr, |$a:ident, $o:ident, $r:ident| $call:expr) => {{
            let (mut a, mut o) = ($acts, $out);
            while !a.is_empty() {
                let n = a.len();
                let ($a, $o) = (a, &mut *o);
                if n >= 4 {
                    {
                        const $r: usize = 4;
                        $call
                    }
                    a = &a[4..];
                    o = &mut o[4..];
                } else if n >= 2 {
                    {
                        const $r: usize = 2;
                        $call
                    }
                    a = &a[2..];
                    o = &mut o[2..];
                } else {
                    {
                        const $r: usize = 1;
                        $call
                    }
                    a = &a[1..];
                    o = &mut o[1..];
                }
            }
        }};
    }

    /// See [`super::dot`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` and each activation row hold `blocks` blocks.
    pub(super) unsafe fn dot(q: QType, w: &[u8], blocks: usize, acts: &[&[u8]], out: &mut [f32]) {
        let bytes = q.block_bytes();
        macro_rules! of {
            ($g:ty) => {
                chunks!(acts, out, |a, o, R| rows::<$g, R>(w, bytes, blocks, a, o))
            };
        }
        match q {
            QType::IQ1S => of!(Iq1S),
            QType::IQ1M => of!(Iq1M),
            QType::IQ2XXS => of!(Iq2Xxs),
            QType::IQ2XS => of!(Iq2Xs),
            QType::IQ2S => of!(Iq2S),
            QType::IQ3XXS => of!(Iq3Xxs),
            QType::IQ3S => of!(Iq3S),
            QType::IQ4XS => of!(Iq4Xs),
            QType::Q2K => of!(Q2K),
            QType::Q3K => of!(Q3K),
            QType::IQ4NL => chunks!(acts, out, |a, o, R| iq4nl_rows::<R>(w, blocks, a, o)),
            _ => unreachable!("no group kernel for {q}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{random_blocks, QBuf, QType};

    /// Every i-quant's AVX2 kernel gives the scalar dot products (`quant_iq`, checked against
    /// the dequantized rows there), and Q2_K's and Q3_K's give candle's, for 1 to 16
    /// activation rows at once.
    #[test]
    fn avx2_kernels_match_the_scalar_ones() {
        let expect = std::env::var("BORA_EXPECT_CPU").unwrap_or_default();
        if !super::super::qdot::available() {
            assert!(
                !expect.contains("avx2"),
                "AVX2 is expected but does not run"
            );
            return;
        }
        let k = 1024;
        let mut state = 17u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for q in QType::ALL.into_iter().filter(|&q| takes(q)) {
            let kind = q.act_quant();
            let w = random_blocks(q, k / q.block_elems(), 23);
            let rows: Vec<QBuf> = (0..IQ_ACT_ROWS)
                .map(|_| {
                    let x: Vec<f32> = (0..k).map(|_| next()).collect();
                    let mut a = QBuf::zeroed(kind.row_bytes(k));
                    kind.quantize_row(&x, a.as_bytes_mut());
                    a
                })
                .collect();
            let acts: Vec<&[u8]> = rows.iter().map(|a| a.as_bytes()).collect();
            let want: Vec<f32> = acts
                .iter()
                .map(|a| match q.iq() {
                    Some(IqType::Iq4Nl) => quant_iq::dot_iq4nl_q8_0(w.as_bytes(), a),
                    Some(t) => quant_iq::dot_q8k(t, w.as_bytes(), a),
                    None => {
                        let mut one = [0f32];
                        let blocks = &a[..k / 256 * Q8K_BYTES];
                        crate::quant::candle_dot_rows(q, k, w.as_bytes(), &[blocks], &mut one);
                        one[0]
                    }
                })
                .collect();
            for n in [1, 2, 3, 5, 8, 16] {
                let mut got = vec![f32::NAN; n];
                dot(q, w.as_bytes(), &acts[..n], &mut got);
                for (r, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 * e.abs().max(1e-3),
                        "{q}, {n} rows: row {r} gives {g}, the scalar dot product {e}"
                    );
                }
            }
        }
    }
}
