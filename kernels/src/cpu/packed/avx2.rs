//! The packed kernels with AVX2 (Zen 3, Intel clients): a tile's 16 rows as two halves of 8,
//! each half's lanes the rows' 32-bit sums. Without VNNI, four bytes times four bytes become
//! `vpmaddubsw` (pairs into i16) and `vpmaddwd`; the i16 sums of several vectors are added
//! while they cannot overflow, and `vpmaddwd` with the sub-block scale in both halves of each
//! lane applies the scale as it widens. AVX2's 16 registers hold one half of a sub-block and
//! 4 activation rows at a time.

use std::arch::x86_64::*;

use super::ActRow;
use crate::quant::QType;

/// Activation rows per kernel call at most (AVX2 has 16 vector registers).
const ROWS: usize = 4;

/// Runs the kernel of `q` for `a` activation rows (1, 2, 4 or 8: 8 as two calls of 4).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; as `vnni::tile` otherwise.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile(
    q: QType,
    a: usize,
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; super::ACT_ROWS],
    out: *mut f32,
    stride: usize,
) {
    let mut r0 = 0;
    while r0 < a {
        let n = (a - r0).min(ROWS);
        let rs: [ActRow; ROWS] = std::array::from_fn(|i| rows[(r0 + i).min(a - 1)]);
        let o = out.add(r0 * stride);
        // One or two rows (decode) read the tile once, both halves of each record at a time,
        // front to back as the hardware prefetcher expects; more rows take the halves one
        // after the other (16 registers hold one half's levels and four rows' sums).
        macro_rules! by_rows {
            ($f:ident $(, $c:expr)?) => {
                match n {
                    1 => $f::<1, 0, 2 $(, $c)?>(tile, nb, &rs, o, stride),
                    2 => $f::<2, 0, 2 $(, $c)?>(tile, nb, &rs, o, stride),
                    3 => {
                        $f::<3, 0, 1 $(, $c)?>(tile, nb, &rs, o, stride);
                        $f::<3, 1, 2 $(, $c)?>(tile, nb, &rs, o, stride)
                    }
                    _ => {
                        $f::<4, 0, 1 $(, $c)?>(tile, nb, &rs, o, stride);
                        $f::<4, 1, 2 $(, $c)?>(tile, nb, &rs, o, stride)
                    }
                }
            };
        }
        match q {
            QType::Q4K => by_rows!(k45, false),
            QType::Q5K => by_rows!(k45, true),
            QType::Q6K => by_rows!(q6k),
            QType::Q8_0 => by_rows!(q8_0),
            _ => unreachable!("no packed kernel for {q}"),
        }
        r0 += n;
    }
}

/// Four bytes at `p` in every 32-bit lane.
#[inline(always)]
unsafe fn bcast(p: *const i8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// The half's 8 f16 at `p` as f32.
#[inline(always)]
unsafe fn halfs(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Eight bytes at `p` (one per row of the half), each in both i16 halves of its lane: what
/// `vpmaddwd` scales a lane's pair of i16 sums by.
#[inline(always)]
unsafe fn scales16<const SIGNED: bool>(p: *const u8) -> __m256i {
    let b = _mm_loadl_epi64(p as *const __m128i);
    let s = if SIGNED {
        _mm256_cvtepi8_epi32(b)
    } else {
        _mm256_cvtepu8_epi32(b)
    };
    _mm256_blend_epi16::<0b1010_1010>(s, _mm256_slli_epi32::<16>(s))
}

/// The half's 8 vectors of low nibbles of a 32-value group at `lv`.
#[inline(always)]
unsafe fn nibbles(lv: *const u8, h: usize) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut w = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        let x = _mm256_loadu_si256(lv.add(64 * c + 32 * h) as *const __m256i);
        w[c] = _mm256_and_si256(x, m4);
        w[c + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4);
    }
    w
}

/// `Σ_g maddubs(w[g], bytes 4g..4g + 4 at p)` in i16 (the caller keeps it from overflowing).
#[inline(always)]
unsafe fn sum16(w: &[__m256i], p: *const i8) -> __m256i {
    let mut s = _mm256_maddubs_epi16(w[0], bcast(p));
    for (g, v) in w.iter().enumerate().skip(1) {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*v, bcast(p.add(4 * g))));
    }
    s
}

/// Stores each row's sums of halves `H0..H1`.
#[inline(always)]
unsafe fn store<const A: usize, const H0: usize, const H1: usize>(
    acc: &[[__m256; 2]; A],
    out: *mut f32,
    stride: usize,
) {
    for (r, v) in acc.iter().enumerate() {
        for (h, half) in v.iter().enumerate().take(H1).skip(H0) {
            _mm256_storeu_ps(out.add(r * stride + 8 * h), *half);
        }
    }
}

/// Q4_K (`FIVE`: Q5_K), halves `H0..H1`: see `vnni::k45`. The i16 sums hold 8 vectors of
/// 4-bit levels (8 · 2 · 15 · 128 < 2¹⁵) or 4 of 5-bit ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k45<const A: usize, const H0: usize, const H1: usize, const FIVE: bool>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; ROWS],
    out: *mut f32,
    stride: usize,
) {
    let (rec, group) = if FIVE { (2880, 320) } else { (2368, 256) };
    let mut acc = [[_mm256_setzero_ps(); 2]; A];
    for b in 0..nb {
        let r = tile.add(b * rec);
        let mut iacc = [[_mm256_setzero_si256(); 2]; A];
        for j in 0..8 {
            for h in H0..H1 {
                let mut w = nibbles(r.add(320 + group * j), h);
                if FIVE {
                    let bits = _mm256_loadu_si256(r.add(576 + 320 * j + 32 * h) as *const _);
                    let sixteen = _mm256_set1_epi8(16);
                    for (g, v) in w.iter_mut().enumerate() {
                        let bit = _mm256_set1_epi8(1 << g);
                        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bits, bit), bit);
                        *v = _mm256_add_epi8(*v, _mm256_and_si256(set, sixteen));
                    }
                }
                let sc = scales16::<false>(r.add(64 + 16 * j + 8 * h));
                for (x, ia) in iacc.iter_mut().enumerate() {
                    let p = rows[x].qs.add(256 * b + 32 * j);
                    let s = if FIVE {
                        _mm256_add_epi32(
                            _mm256_madd_epi16(sum16(&w[..4], p), sc),
                            _mm256_madd_epi16(sum16(&w[4..], p.add(16)), sc),
                        )
                    } else {
                        _mm256_madd_epi16(sum16(&w, p), sc)
                    };
                    ia[h] = _mm256_add_epi32(ia[h], s);
                }
            }
        }
        for h in H0..H1 {
            let dw = halfs(r.add(16 * h));
            let dm = halfs(r.add(32 + 16 * h));
            for x in 0..A {
                let row = rows[x];
                let da = _mm256_set1_ps(*row.d.add(b));
                let i = _mm256_cvtepi32_ps(iacc[x][h]);
                let mut v = _mm256_fmadd_ps(_mm256_mul_ps(i, dw), da, acc[x][h]);
                let f = row.fsum.add(8 * b);
                for j in 0..8 {
                    let m = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        r.add(192 + 16 * j + 8 * h) as *const __m128i
                    ));
                    let m = _mm256_mul_ps(_mm256_cvtepi32_ps(m), dm);
                    v = _mm256_fnmadd_ps(m, _mm256_set1_ps(*f.add(j)), v);
                }
                acc[x][h] = v;
            }
        }
    }
    store::<A, H0, H1>(&acc, out, stride);
}

/// Q6_K, halves `H0..H1`: see `vnni::q6k`. The i16 sums hold 2 vectors of 6-bit levels
/// (2 · 2 · 63 · 128 < 2¹⁵).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k<const A: usize, const H0: usize, const H1: usize>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; ROWS],
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; A];
    let bits45 = _mm256_set1_epi8(0x30);
    for b in 0..nb {
        let r = tile.add(b * 3360);
        let mut iacc = [[_mm256_setzero_si256(); 2]; A];
        for jj in 0..8 {
            for h in H0..H1 {
                let mut w = nibbles(r.add(288 + 384 * jj), h);
                for hh in 0..2 {
                    let at = r.add(544 + 384 * jj + 64 * hh + 32 * h);
                    let y = _mm256_loadu_si256(at as *const _);
                    let hi = [
                        _mm256_slli_epi16::<4>(y),
                        _mm256_slli_epi16::<2>(y),
                        y,
                        _mm256_srli_epi16::<2>(y),
                    ];
                    for (q, v) in hi.iter().enumerate() {
                        let g = 4 * hh + q;
                        w[g] = _mm256_or_si256(w[g], _mm256_and_si256(*v, bits45));
                    }
                }
                for half in 0..2 {
                    let s = 2 * jj + half;
                    let at = r.add(32 + 16 * s + 8 * h);
                    let sc = scales16::<true>(at);
                    let sc32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(at as *const __m128i));
                    let ws = &w[4 * half..4 * half + 4];
                    for (x, ia) in iacc.iter_mut().enumerate() {
                        let row = rows[x];
                        let p = row.qs.add(256 * b + 32 * jj + 16 * half);
                        let dot = _mm256_add_epi32(
                            _mm256_madd_epi16(sum16(&ws[..2], p), sc),
                            _mm256_madd_epi16(sum16(&ws[2..], p.add(8)), sc),
                        );
                        let isum = _mm256_set1_epi32(*row.isum.add(16 * b + s));
                        let off = _mm256_mullo_epi32(sc32, isum);
                        ia[h] = _mm256_add_epi32(ia[h], _mm256_sub_epi32(dot, off));
                    }
                }
            }
        }
        for h in H0..H1 {
            let dw = halfs(r.add(16 * h));
            for x in 0..A {
                let da = _mm256_set1_ps(*rows[x].d.add(b));
                let i = _mm256_cvtepi32_ps(iacc[x][h]);
                acc[x][h] = _mm256_fmadd_ps(_mm256_mul_ps(i, dw), da, acc[x][h]);
            }
        }
    }
    store::<A, H0, H1>(&acc, out, stride);
}

/// Q8_0, halves `H0..H1` (indexed: the half is also a byte offset): the stored `w + 128` back to signed, then `|w| · (a with w's sign)`
/// (the unsigned operand must be the weight's magnitude), widened at once (2 · 127 · 128
/// fills i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn q8_0<const A: usize, const H0: usize, const H1: usize>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; ROWS],
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; A];
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let r = tile.add(b * 544);
        for h in H0..H1 {
            let w: [__m256i; 8] = std::array::from_fn(|g| {
                _mm256_xor_si256(
                    _mm256_loadu_si256(r.add(32 + 64 * g + 32 * h) as *const __m256i),
                    flip,
                )
            });
            let abs: [__m256i; 8] = std::array::from_fn(|g| _mm256_abs_epi8(w[g]));
            let dw = halfs(r.add(16 * h));
            for x in 0..A {
                let row = rows[x];
                let p = row.qs.add(32 * b);
                let mut s = _mm256_setzero_si256();
                for g in 0..8 {
                    let a = _mm256_sign_epi8(bcast(p.add(4 * g)), w[g]);
                    let d = _mm256_madd_epi16(_mm256_maddubs_epi16(abs[g], a), ones);
                    s = _mm256_add_epi32(s, d);
                }
                let da = _mm256_set1_ps(*row.d.add(b));
                let i = _mm256_cvtepi32_ps(s);
                acc[x][h] = _mm256_fmadd_ps(_mm256_mul_ps(i, dw), da, acc[x][h]);
            }
        }
    }
    store::<A, H0, H1>(&acc, out, stride);
}
