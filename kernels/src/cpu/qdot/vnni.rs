//! The K-quant dot products with AVX-512 (BW and VNNI): 64 bytes per vector, and the
//! sub-block scales applied by `vpdpwssd` (i16 pairs times i16 scales, summed into i32 lanes)
//! in the same instruction that accumulates, where AVX2 takes a multiply and an add.
//!
//! Each type has an `unpack` that turns one weight block into vectors of unsigned levels laid
//! out like the Q8_K activation bytes (64 at a time) and the scales spread to match, and a
//! `dot` of an unpacked block with one Q8_K activation block. These kernels take one weight
//! row against several activation rows (prefill), unpacking each block once for all of them.
//! Decode (one activation row) runs the AVX2 kernels: unpacking a block for a single dot
//! costs more at 512 bits than it saves (measured 25% slower on a Q4_K expert).

use std::arch::x86_64::*;

use super::{unpack_scales, Kind, Q8K_BYTES};

/// A weight block ready for [`Kind::dot`]: four vectors of 64 unsigned levels matching
/// activation bytes `64i..64i + 64`, the i16 scales of their 32 i16 pair sums, and per-type
/// extras.
#[derive(Clone, Copy)]
pub(super) struct Unpacked {
    levels: [__m512i; 4],
    scales: [__m512i; 4],
    /// The block scale `d` in every lane.
    d: __m512,
    /// Q4_K: `dmin` times each of the eight minimums (zero for Q6_K).
    mins: __m256,
    /// Q6_K: the sixteen scales as i16 (zero for Q4_K).
    sc16: __m256i,
}

/// The i16 lanes of `v` at `idx` (a vpermw with a constant index).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn spread(v: __m512i, idx: [i16; 32]) -> __m512i {
    _mm512_permutexvar_epi16(_mm512_loadu_si512(idx.as_ptr() as *const _), v)
}

/// Index vectors for [`spread`]: i16 lane `l` of vector `i` takes source lane
/// `first + i * per_vector + l / run`.
const fn spread_idx(i: usize, per_vector: usize, run: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut l = 0;
    while l < 32 {
        idx[l] = (i * per_vector + l / run) as i16;
        l += 1;
    }
    idx
}

/// Q4_K: vector `i` covers sub-blocks `2i` and `2i + 1` (32 values, 16 i16 pair sums each).
const Q4K_SPREAD: [[i16; 32]; 4] = [
    spread_idx(0, 2, 16),
    spread_idx(1, 2, 16),
    spread_idx(2, 2, 16),
    spread_idx(3, 2, 16),
];
/// Q6_K: vector `i` covers scales `4i..4i + 4` (16 values, 8 i16 pair sums each).
const Q6K_SPREAD: [[i16; 32]; 4] = [
    spread_idx(0, 4, 8),
    spread_idx(1, 4, 8),
    spread_idx(2, 4, 8),
    spread_idx(3, 4, 8),
];

impl Kind {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(self, wb: *const u8) -> Unpacked {
        match self {
            Kind::Q4K => unpack_q4k5::<false>(wb),
            Kind::Q5K => unpack_q4k5::<true>(wb),
            Kind::Q6K => unpack_q6k(wb),
        }
    }

    /// Adds `u ·` the activation block at `ab` to `acc` (the scaled level sums) and `mins`
    /// (what is subtracted at the end: Q4_K's minimums against the block's eight scaled sums
    /// at `sums`, from the row's tail).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn dot(
        self,
        u: &Unpacked,
        ab: *const u8,
        sums: *const f32,
        acc: &mut __m512,
        mins: &mut __m256,
    ) {
        let y = ab.add(4);
        let mut sum = match self {
            Kind::Q4K | Kind::Q5K => _mm512_setzero_si512(),
            Kind::Q6K => {
                // The levels stand for u − 32: −32 Σ_j sc_j·bsum_j.
                let bsums = _mm256_loadu_si256(ab.add(4 + 256) as *const __m256i);
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(u.sc16, bsums));
                _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offset))
            }
        };
        for i in 0..4 {
            let yi = _mm512_loadu_si512(y.add(64 * i) as *const _);
            sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(u.levels[i], yi), u.scales[i]);
        }
        let d = _mm512_mul_ps(
            u.d,
            _mm512_set1_ps(std::ptr::read_unaligned(ab as *const f32)),
        );
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, *acc);
        if let Kind::Q4K | Kind::Q5K = self {
            *mins = _mm256_fmadd_ps(u.mins, _mm256_loadu_ps(sums), *mins);
        }
    }
}

/// Q4_K (see `dot_q4k` in the parent): the 128 bytes of nibbles, low nibbles of 32 bytes for
/// one sub-block and high nibbles for the next, rearranged so that each vector holds two
/// consecutive sub-blocks. With `FIVE`, Q5_K: the same, after 32 bytes of fifth bits (bit `j`
/// of byte `l` for value `l` of sub-block `j`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_q4k5<const FIVE: bool>(wb: *const u8) -> Unpacked {
    let low = _mm512_set1_epi8(0x0f);
    let q = wb.add(if FIVE { 48 } else { 16 });
    let mut levels = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        let bits = _mm512_loadu_si512(q.add(64 * h) as *const _);
        // Sub-blocks 4h and 4h + 2, and 4h + 1 and 4h + 3.
        let lo = _mm512_and_si512(bits, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(bits), low);
        levels[2 * h] = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi);
        levels[2 * h + 1] = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi);
    }
    if FIVE {
        // Vector i holds sub-blocks 2i and 2i + 1: bits 2i and 2i + 1 of the 32 bytes, one
        // per 256-bit half, add 16 where set.
        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(wb.add(16) as *const __m256i));
        let sixteen = _mm512_set1_epi8(16);
        for (i, l) in levels.iter_mut().enumerate() {
            let bits = _mm512_inserti64x4::<1>(
                _mm512_set1_epi8(1 << (2 * i)),
                _mm256_set1_epi8((2u8 << (2 * i)) as i8),
            );
            let set = _mm512_test_epi8_mask(qh, bits);
            *l = _mm512_mask_add_epi8(*l, set, *l, sixteen);
        }
    }
    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
        wb as *const i32,
    )));
    let (scales, mins) = unpack_scales(std::slice::from_raw_parts(wb.add(4), 12));
    let s16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
    let scales = std::array::from_fn(|i| spread(s16, Q4K_SPREAD[i]));
    let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64));
    let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
    Unpacked {
        levels,
        scales,
        d: _mm512_broadcastss_ps(dd),
        mins: _mm256_mul_ps(_mm256_cvtepi32_ps(m32), dmin),
        sc16: _mm256_setzero_si256(),
    }
}

/// Q6_K (see `dot_q6k` in the parent): per half of 128 values, 64 bytes of low nibbles
/// (values 0–31 and 32–63 in the low nibbles, 64–95 and 96–127 in the high ones) and 32 bytes
/// of high bit pairs (values `l`, `32 + l`, `64 + l`, `96 + l` in bits 0–1, 2–3, 4–5, 6–7).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_q6k(wb: *const u8) -> Unpacked {
    let low4 = _mm512_set1_epi8(0x0f);
    let bits45 = _mm512_set1_epi8(0x30);
    // Per 256-bit half: the shifts that bring a bit pair to bits 4–5.
    let up = _mm512_setr_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
    );
    let down = _mm512_setr_epi64(
        0,
        0,
        0,
        0,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
    );
    let ql = wb;
    let qh = _mm512_loadu_si512(wb.add(128) as *const _);
    let mut levels = [_mm512_setzero_si512(); 4];
    for half in 0..2 {
        let l = _mm512_loadu_si512(ql.add(64 * half) as *const _);
        // This half's 32 bytes of high bits in both 256-bit halves.
        let h = if half == 0 {
            _mm512_shuffle_i64x2::<0b01_00_01_00>(qh, qh)
        } else {
            _mm512_shuffle_i64x2::<0b11_10_11_10>(qh, qh)
        };
        // Values 0–63 of the half: bit pairs 0–1 and 2–3; values 64–127: 4–5 and 6–7.
        let h_lo = _mm512_and_si512(_mm512_sllv_epi16(h, up), bits45);
        let h_hi = _mm512_and_si512(_mm512_srlv_epi16(h, down), bits45);
        levels[2 * half] = _mm512_or_si512(_mm512_and_si512(l, low4), h_lo);
        levels[2 * half + 1] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), low4), h_hi);
    }
    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
    let s = _mm512_castsi256_si512(sc16);
    let scales = std::array::from_fn(|i| spread(s, Q6K_SPREAD[i]));
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
        std::ptr::read_unaligned(wb.add(208) as *const u16) as i32,
    ));
    Unpacked {
        levels,
        scales,
        d: _mm512_broadcastss_ps(d),
        mins: _mm256_setzero_ps(),
        sc16,
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn finish(acc: __m512, mins: __m256) -> f32 {
    let m = _mm_add_ps(
        _mm256_castps256_ps128(mins),
        _mm256_extractf128_ps::<1>(mins),
    );
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(m)
}

/// One weight row of `kind` against `A` Q8_K activation rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn acts<const A: usize, const K: u8>(
    w_row: &[u8],
    acts: &[&[u8]],
    blocks: usize,
    out: &mut [f32],
) {
    let kind = Kind::of(K);
    let mut acc = [_mm512_setzero_ps(); A];
    let mut mins = [_mm256_setzero_ps(); A];
    let w = w_row.as_ptr();
    for b in 0..blocks {
        let u = kind.unpack(w.add(b * kind.bytes()));
        for r in 0..A {
            let a = acts[r].as_ptr();
            let sums = a.add(blocks * Q8K_BYTES) as *const f32;
            kind.dot(
                &u,
                a.add(b * Q8K_BYTES),
                sums.add(8 * b),
                &mut acc[r],
                &mut mins[r],
            );
        }
    }
    for r in 0..A {
        out[r] = finish(acc[r], mins[r]);
    }
}

/// One weight row against any number of activation rows, up to 8 per pass over its blocks.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `w_row` holds `blocks` blocks, and every row of
/// `act_rows` `blocks` blocks and its tail (`ActQuant::row_bytes`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn acts_of(
    kind: Kind,
    w_row: &[u8],
    act_rows: &[&[u8]],
    blocks: usize,
    out: &mut [f32],
) {
    acts_of_body!(acts, kind, w_row, act_rows, blocks, out)
}
