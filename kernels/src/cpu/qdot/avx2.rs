//! The K-quant activation-row kernels with AVX2 (prefill on CPUs without AVX-512 VNNI): each
//! weight block is made into eight vectors of 32 unsigned levels laid out like the Q8_K
//! activation bytes, with the i16 scales of their pair sums, one vector at a time, and each
//! vector is multiplied with up to 8 activation rows before the next is made (AVX2 has 16
//! vector registers: a whole unpacked block, as `vnni` keeps, would spill).

use std::arch::x86_64::*;

use super::{unpack_scales, Kind, Q8K_BYTES};

/// Byte indices that put i16 lane `2k` of each 128-bit half over the low half's lanes and
/// lane `2k + 1` over the high half's (Q6_K's scales, [`vector`]).
const Q6K_PICK: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut l = 0;
        while l < 32 {
            let lane = 2 * k + l / 16;
            t[k][l] = (2 * lane + l % 2) as u8;
            l += 1;
        }
        k += 1;
    }
    t
};

/// What a weight block's vectors are made from, loaded once per block.
#[derive(Clone, Copy)]
struct Header {
    /// The block scale `d` in every lane.
    d: __m256,
    /// Q4_K and Q5_K: `dmin` times each of the eight minimums (zero for Q6_K).
    mins: __m256,
    /// Q4_K and Q5_K: the eight scales as i16, in both 128-bit halves; Q6_K: the sixteen
    /// scales as i16.
    sc16: __m256i,
    /// Q5_K: the 32 bytes of fifth bits; Q6_K: the 64 bytes of high bit pairs (two vectors).
    high: [__m256i; 2],
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn header(kind: Kind, wb: *const u8) -> Header {
    match kind {
        Kind::Q4K | Kind::Q5K => {
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                wb as *const i32,
            )));
            let (scales, mins) = unpack_scales(std::slice::from_raw_parts(wb.add(4), 12));
            let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64));
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            let high = match kind {
                Kind::Q5K => _mm256_loadu_si256(wb.add(16) as *const __m256i),
                _ => _mm256_setzero_si256(),
            };
            Header {
                d: _mm256_broadcastss_ps(dd),
                mins: _mm256_mul_ps(_mm256_cvtepi32_ps(m32), dmin),
                sc16: _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
                    scales as i64,
                ))),
                high: [high, high],
            }
        }
        Kind::Q6K => {
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                wb.add(208) as *const u16
            ) as i32));
            Header {
                d: _mm256_broadcastss_ps(d),
                mins: _mm256_setzero_ps(),
                sc16: _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i)),
                high: [
                    _mm256_loadu_si256(wb.add(128) as *const __m256i),
                    _mm256_loadu_si256(wb.add(160) as *const __m256i),
                ],
            }
        }
    }
}

/// `v` with bits `from`..`from + width` of each byte moved to bit 4 onwards (`mask` keeps
/// them): shifts of 16-bit lanes by at most 4, which move no bit across a byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_4(v: __m256i, from: i32, mask: __m256i) -> __m256i {
    let moved = if from <= 4 {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128(4 - from))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(from - 4))
    };
    _mm256_and_si256(moved, mask)
}

/// Vector `i` of a block: the unsigned levels of values `32i..32i + 32` and the i16 scale of
/// each of their 16 pair sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vector(kind: Kind, wb: *const u8, h: &Header, i: usize) -> (__m256i, __m256i) {
    let low4 = _mm256_set1_epi8(0x0f);
    match kind {
        Kind::Q4K | Kind::Q5K => {
            // Chunk i / 2: low nibbles for sub-block i when i is even, high ones when odd;
            // Q5_K's fifth bit of sub-block i is bit i.
            let q = wb.add(if let Kind::Q5K = kind { 48 } else { 16 });
            let bits = _mm256_loadu_si256(q.add(32 * (i / 2)) as *const __m256i);
            let mut level = if i.is_multiple_of(2) {
                _mm256_and_si256(bits, low4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4)
            };
            if let Kind::Q5K = kind {
                let fifth = bits_to_4(h.high[0], i as i32, _mm256_set1_epi8(0x10));
                level = _mm256_or_si256(level, fifth);
            }
            let spread = _mm256_set1_epi16((((2 * i + 1) as i16) << 8) | (2 * i) as i16);
            (level, _mm256_shuffle_epi8(h.sc16, spread))
        }
        Kind::Q6K => {
            // Half i / 4 of the block; k = i % 4 picks the 32 bytes of low nibbles (k even:
            // bytes 0–31, else 32–63), which nibble (k < 2: low), and bit pair k of the
            // half's high bits.
            let (half, k) = (i / 4, i % 4);
            let l = _mm256_loadu_si256(wb.add(64 * half + 32 * (k % 2)) as *const __m256i);
            let nibble = if k < 2 {
                _mm256_and_si256(l, low4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(l), low4)
            };
            let pair = bits_to_4(h.high[half], 2 * k as i32, _mm256_set1_epi8(0x30));
            // Scales 2i (low 128-bit half) and 2i + 1 (high half), each over 8 i16 lanes:
            // the half's eight scales in both 128-bit halves, then i16 lanes 2k and 2k + 1.
            let s8 = if half == 0 {
                _mm256_permute4x64_epi64::<0b01_00_01_00>(h.sc16)
            } else {
                _mm256_permute4x64_epi64::<0b11_10_11_10>(h.sc16)
            };
            let idx = _mm256_loadu_si256(Q6K_PICK[k].as_ptr() as *const __m256i);
            (_mm256_or_si256(nibble, pair), _mm256_shuffle_epi8(s8, idx))
        }
    }
}

/// The sum of the lanes of `acc` less those of `mins`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish(acc: __m256, mins: __m256) -> f32 {
    let v = _mm256_sub_ps(acc, mins);
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One weight row of `kind` against `A` Q8_K activation rows: each vector of a weight block
/// is made once and multiplied with the `A` rows' bytes before the next is made, so that
/// few registers stay live.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn acts<const A: usize, const K: u8>(
    w_row: &[u8],
    acts: &[&[u8]],
    blocks: usize,
    out: &mut [f32],
) {
    let kind = Kind::of(K);
    let mut acc = [_mm256_setzero_ps(); A];
    let mut mins = [_mm256_setzero_ps(); A];
    let w = w_row.as_ptr();
    let a: [*const u8; A] = std::array::from_fn(|r| acts[r].as_ptr());
    for b in 0..blocks {
        let wb = w.add(b * kind.bytes());
        let h = header(kind, wb);
        let mut sum: [__m256i; A] = std::array::from_fn(|r| match kind {
            Kind::Q4K | Kind::Q5K => _mm256_setzero_si256(),
            Kind::Q6K => {
                // The levels stand for u − 32: −32 Σ_j sc_j·bsum_j.
                let bsums = _mm256_loadu_si256(a[r].add(b * Q8K_BYTES + 260) as *const __m256i);
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(h.sc16, bsums));
                _mm256_sub_epi32(_mm256_setzero_si256(), offset)
            }
        });
        for i in 0..8 {
            let (level, scale) = vector(kind, wb, &h, i);
            for r in 0..A {
                let y = _mm256_loadu_si256(a[r].add(b * Q8K_BYTES + 4 + 32 * i) as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(level, y), scale);
                sum[r] = _mm256_add_epi32(sum[r], p);
            }
        }
        for r in 0..A {
            let ab = a[r].add(b * Q8K_BYTES);
            let d = _mm256_mul_ps(
                h.d,
                _mm256_set1_ps(std::ptr::read_unaligned(ab as *const f32)),
            );
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r]), d, acc[r]);
            if let Kind::Q4K | Kind::Q5K = kind {
                let sums = a[r].add(blocks * Q8K_BYTES) as *const f32;
                mins[r] = _mm256_fmadd_ps(h.mins, _mm256_loadu_ps(sums.add(8 * b)), mins[r]);
            }
        }
    }
    for r in 0..A {
        out[r] = finish(acc[r], mins[r]);
    }
}

/// One weight row against any number of activation rows, up to 8 per pass over its blocks.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w_row` holds `blocks` blocks, and every row of
/// `act_rows` `blocks` blocks and its tail (`ActQuant::row_bytes`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn acts_of(
    kind: Kind,
    w_row: &[u8],
    act_rows: &[&[u8]],
    blocks: usize,
    out: &mut [f32],
) {
    acts_of_body!(acts, kind, w_row, act_rows, blocks, out)
}
