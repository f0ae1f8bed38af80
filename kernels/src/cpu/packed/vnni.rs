//! The packed kernels with AVX-512 VNNI: a tile's 16 rows in the 16 lanes of one vector, a
//! record's levels unpacked once into vectors and dotted with `A` activation rows by
//! `vpdpbusd` (four bytes of a row broadcast to every lane), two chains per sub-block so that
//! one activation row alone (decode) does not wait on one chain's latency.

use std::arch::x86_64::*;

use super::ActRow;
use crate::quant::QType;

/// Runs the kernel of `q` for `a` (1, 2, 4 or 8) activation rows.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; `tile` holds `nb` records of `q`; each of the first
/// `a` rows holds `nb` blocks and its sums; `out + r · stride` is valid for 16 writes for every
/// `r < a`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn tile(
    q: QType,
    a: usize,
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; super::ACT_ROWS],
    out: *mut f32,
    stride: usize,
) {
    macro_rules! by_rows {
        ($f:ident $(, $c:expr)?) => {
            match a {
                8 => $f::<8 $(, $c)?>(tile, nb, rows, out, stride),
                4 => $f::<4 $(, $c)?>(tile, nb, rows, out, stride),
                2 => $f::<2 $(, $c)?>(tile, nb, rows, out, stride),
                _ => $f::<1 $(, $c)?>(tile, nb, rows, out, stride),
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
}

/// Four bytes at `p` in every 32-bit lane.
#[inline(always)]
unsafe fn bcast(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// The dot of vectors `w[g]` (g in `gs`) with four bytes each of the activation at `p`
/// (vector `g` against bytes `4g..4g + 4`), in two chains.
#[inline(always)]
unsafe fn dot8(w: &[__m512i], p: *const i8) -> __m512i {
    let mut s0 = _mm512_setzero_si512();
    let mut s1 = _mm512_setzero_si512();
    let mut g = 0;
    while g + 1 < w.len() {
        s0 = _mm512_dpbusd_epi32(s0, w[g], bcast(p.add(4 * g)));
        s1 = _mm512_dpbusd_epi32(s1, w[g + 1], bcast(p.add(4 * g + 4)));
        g += 2;
    }
    _mm512_add_epi32(s0, s1)
}

/// Stores each row's 16 sums.
#[inline(always)]
unsafe fn store<const A: usize>(acc: &[__m512; A], out: *mut f32, stride: usize) {
    for (r, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(r * stride), *v);
    }
}

/// The 16 f16 at `p` as f32.
#[inline(always)]
unsafe fn halfs(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// The 8 vectors of sub-block `j`'s low nibbles at `lv` (Q4_K's and Q6_K's order).
#[inline(always)]
unsafe fn nibbles(lv: *const u8) -> [__m512i; 8] {
    let m4 = _mm512_set1_epi8(0x0f);
    let mut w = [_mm512_setzero_si512(); 8];
    for c in 0..4 {
        let x = _mm512_loadu_si512(lv.add(64 * c) as *const _);
        w[c] = _mm512_and_si512(x, m4);
        w[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m4);
    }
    w
}

/// Q4_K (`FIVE`: Q5_K): per sub-block, `Σ levels · bytes` times its scale, summed over the
/// block in i32 (at most 8 · 32 · 31 · 127 · 63 < 2³¹); then times `d · d8`, less the
/// minimums `dmin · m_j` times the activation's scaled 32-value sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k45<const A: usize, const FIVE: bool>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; super::ACT_ROWS],
    out: *mut f32,
    stride: usize,
) {
    let (rec, group) = if FIVE { (2880, 320) } else { (2368, 256) };
    let mut acc = [_mm512_setzero_ps(); A];
    for b in 0..nb {
        let r = tile.add(b * rec);
        let mut iacc = [_mm512_setzero_si512(); A];
        for j in 0..8 {
            let mut w = nibbles(r.add(320 + group * j));
            if FIVE {
                let h = _mm512_loadu_si512(r.add(576 + 320 * j) as *const _);
                let sixteen = _mm512_set1_epi8(16);
                for (g, v) in w.iter_mut().enumerate() {
                    let set = _mm512_test_epi8_mask(h, _mm512_set1_epi8(1 << g));
                    *v = _mm512_mask_add_epi8(*v, set, *v, sixteen);
                }
            }
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(r.add(64 + 16 * j) as *const __m128i));
            for (x, ia) in iacc.iter_mut().enumerate() {
                let s = dot8(&w, rows[x].qs.add(256 * b + 32 * j));
                *ia = _mm512_add_epi32(*ia, _mm512_mullo_epi32(s, sc));
            }
        }
        let dw = halfs(r);
        let dm = halfs(r.add(32));
        let mins: [__m512; 8] = std::array::from_fn(|j| {
            let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(r.add(192 + 16 * j) as *const __m128i));
            _mm512_mul_ps(_mm512_cvtepi32_ps(m), dm)
        });
        for x in 0..A {
            let row = rows[x];
            let da = _mm512_set1_ps(*row.d.add(b));
            let mut v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(iacc[x]), dw), da, acc[x]);
            let f = row.fsum.add(8 * b);
            for (j, m) in mins.iter().enumerate() {
                v = _mm512_fnmadd_ps(*m, _mm512_set1_ps(*f.add(j)), v);
            }
            acc[x] = v;
        }
    }
    store(&acc, out, stride);
}

/// Q6_K: per pair of 16-value sub-blocks, `Σ levels · bytes − 32 Σ bytes` times each scale,
/// summed in i32 (at most 16 · 16 · 32 · 128 · 128 < 2³¹), then times `d · d8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6k<const A: usize>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; super::ACT_ROWS],
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [_mm512_setzero_ps(); A];
    let bits45 = _mm512_set1_epi8(0x30);
    for b in 0..nb {
        let r = tile.add(b * 3360);
        let mut iacc = [_mm512_setzero_si512(); A];
        for jj in 0..8 {
            let mut w = nibbles(r.add(288 + 384 * jj));
            for h in 0..2 {
                let y = _mm512_loadu_si512(r.add(544 + 384 * jj + 64 * h) as *const _);
                // Bit pair q to bits 4–5 (a 16-bit shift's spill stays outside them).
                let hi = [
                    _mm512_slli_epi16::<4>(y),
                    _mm512_slli_epi16::<2>(y),
                    y,
                    _mm512_srli_epi16::<2>(y),
                ];
                for (q, v) in hi.iter().enumerate() {
                    let g = 4 * h + q;
                    // w | (v & 0x30) in one instruction (A | (B & C): 0xF0 | (0xCC & 0xAA)).
                    w[g] = _mm512_ternarylogic_epi32::<0xF8>(w[g], *v, bits45);
                }
            }
            let sc = |s: usize| {
                _mm512_cvtepi8_epi32(_mm_loadu_si128(r.add(32 + 16 * s) as *const __m128i))
            };
            let (sc0, sc1) = (sc(2 * jj), sc(2 * jj + 1));
            for (x, ia) in iacc.iter_mut().enumerate() {
                let row = rows[x];
                let p = row.qs.add(256 * b + 32 * jj);
                let off = row.isum.add(16 * b + 2 * jj);
                let s0 = _mm512_sub_epi32(dot8(&w[..4], p), _mm512_set1_epi32(*off));
                let s1 = _mm512_sub_epi32(dot8(&w[4..], p.add(16)), _mm512_set1_epi32(*off.add(1)));
                *ia = _mm512_add_epi32(
                    *ia,
                    _mm512_add_epi32(_mm512_mullo_epi32(s0, sc0), _mm512_mullo_epi32(s1, sc1)),
                );
            }
        }
        let dw = halfs(r);
        for x in 0..A {
            let da = _mm512_set1_ps(*rows[x].d.add(b));
            acc[x] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(iacc[x]), dw), da, acc[x]);
        }
    }
    store(&acc, out, stride);
}

/// Q8_0: per block of 32, `Σ (w + 128) · bytes − 128 Σ bytes`, times `d · d8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0<const A: usize>(
    tile: *const u8,
    nb: usize,
    rows: &[ActRow; super::ACT_ROWS],
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [_mm512_setzero_ps(); A];
    for b in 0..nb {
        let r = tile.add(b * 544);
        let w: [__m512i; 8] =
            std::array::from_fn(|g| _mm512_loadu_si512(r.add(32 + 64 * g) as *const _));
        let dw = halfs(r);
        for x in 0..A {
            let row = rows[x];
            let s = dot8(&w, row.qs.add(32 * b));
            let s = _mm512_sub_epi32(s, _mm512_set1_epi32(*row.isum.add(b)));
            let da = _mm512_set1_ps(*row.d.add(b));
            acc[x] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), dw), da, acc[x]);
        }
    }
    store(&acc, out, stride);
}
