//! bora's own integer dot products for quantized weights, several weight rows against one
//! quantized activation row, so that the activation block is loaded once for all of them.
//!
//! Q8_0 (34-byte blocks: an f16 scale and 32 signed bytes) against Q8_0 activations: per
//! block, the bytes are multiplied in pairs into 16-bit sums (`maddubs` needs one unsigned
//! operand: the weight's magnitude times the activation with the weight's sign), widened to
//! 32-bit sums, converted to f32 and accumulated with the product of the two scales. The scales
//! are converted with F16C in registers, not through a call per block.

use super::dot::Isa;

const Q8_0_BYTES: usize = 34;

/// Weight rows handled per pass over an activation row.
pub(crate) const QDOT_ROWS: usize = 4;

/// `out[i] = w_rows[i] · act` for Q8_0 rows of `blocks` blocks; `None` when this CPU has no
/// AVX2 (the caller then uses the portable dot product).
pub(crate) fn dot_q8_0(w_rows: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32]) -> Option<()> {
    debug_assert!(w_rows.len() <= QDOT_ROWS && out.len() >= w_rows.len());
    debug_assert!(act.len() >= blocks * Q8_0_BYTES);
    debug_assert!(w_rows.iter().all(|w| w.len() >= blocks * Q8_0_BYTES));
    #[cfg(target_arch = "x86_64")]
    if Isa::get() >= Isa::Avx2 {
        // SAFETY: AVX2, FMA and F16C are present (Isa::Avx2 and above require all three); every
        // row and the activation hold `blocks` whole blocks (checked by the caller's slicing).
        unsafe {
            match w_rows.len() {
                4 => x86::q8_0::<4>(w_rows, act, blocks, out),
                3 => x86::q8_0::<3>(w_rows, act, blocks, out),
                2 => x86::q8_0::<2>(w_rows, act, blocks, out),
                _ => {
                    for (w, o) in w_rows.iter().zip(out.iter_mut()) {
                        let mut one = [0f32; 1];
                        x86::q8_0::<1>(&[w], act, blocks, &mut one);
                        *o = one[0];
                    }
                }
            }
        }
        return Some(());
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Q8_0_BYTES;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The f16 scale at `p`, in all 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(p: *const u8) -> __m256 {
        let bits = std::ptr::read_unaligned(p as *const u16);
        _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
    }

    /// `R` Q8_0 weight rows against one Q8_0 activation row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(
        w_rows: &[&[u8]],
        act: &[u8],
        blocks: usize,
        out: &mut [f32],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut w = [std::ptr::null::<u8>(); R];
        for (p, row) in w.iter_mut().zip(w_rows) {
            *p = row.as_ptr();
        }
        let a = act.as_ptr();
        for b in 0..blocks {
            let ab = a.add(b * Q8_0_BYTES);
            let ad = scale(ab);
            let ay = _mm256_loadu_si256(ab.add(2) as *const __m256i);
            for r in 0..R {
                let wb = w[r].add(b * Q8_0_BYTES);
                let d = _mm256_mul_ps(scale(wb), ad);
                let wx = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                let mag = _mm256_sign_epi8(wx, wx);
                let signed = _mm256_sign_epi8(ay, wx);
                let pairs = _mm256_maddubs_epi16(mag, signed);
                let sums = _mm256_madd_epi16(pairs, ones);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }
}
