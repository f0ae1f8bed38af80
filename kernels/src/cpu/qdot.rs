//! bora's own integer dot products for quantized weights, several weight rows against one
//! quantized activation row, so that the activation block is loaded once for all of them.
//!
//! Q8_0 (34-byte blocks: an f16 scale and 32 signed bytes) against Q8_0 activations: per
//! block, the bytes are multiplied in pairs into 16-bit sums (`maddubs` needs one unsigned
//! operand: the weight's magnitude times the activation with the weight's sign), widened to
//! 32-bit sums, converted to f32 and accumulated with the product of the two scales. The scales
//! are converted with F16C in registers, not through a call per block.

use super::dot::Isa;
use crate::quant::QType;

/// The body of an `acts_of` (`avx2`, `vnni`): runs `$acts::<A, K>(w_row, rows, blocks, out)`
/// over every activation row, 8, 4, 2 or 1 at a time, `K` the number of `$kind`
/// ([`Kind::of`]).
#[cfg(target_arch = "x86_64")]
macro_rules! acts_of_body {
    ($acts:ident, $kind:expr, $w_row:expr, $act_rows:expr, $blocks:expr, $out:expr) => {{
        let (kind, w_row, act_rows, blocks, out) = ($kind, $w_row, $act_rows, $blocks, $out);
        let mut r = 0;
        while r < act_rows.len() {
            let (a, o) = (&act_rows[r..], &mut out[r..]);
            let n = match act_rows.len() - r {
                8.. => 8,
                4..=7 => 4,
                2 | 3 => 2,
                _ => 1,
            };
            match (kind, n) {
                (Kind::Q4K, 8) => $acts::<8, 0>(w_row, a, blocks, o),
                (Kind::Q4K, 4) => $acts::<4, 0>(w_row, a, blocks, o),
                (Kind::Q4K, 2) => $acts::<2, 0>(w_row, a, blocks, o),
                (Kind::Q4K, _) => $acts::<1, 0>(w_row, a, blocks, o),
                (Kind::Q5K, 8) => $acts::<8, 1>(w_row, a, blocks, o),
                (Kind::Q5K, 4) => $acts::<4, 1>(w_row, a, blocks, o),
                (Kind::Q5K, 2) => $acts::<2, 1>(w_row, a, blocks, o),
                (Kind::Q5K, _) => $acts::<1, 1>(w_row, a, blocks, o),
                (Kind::Q6K, 8) => $acts::<8, 2>(w_row, a, blocks, o),
                (Kind::Q6K, 4) => $acts::<4, 2>(w_row, a, blocks, o),
                (Kind::Q6K, 2) => $acts::<2, 2>(w_row, a, blocks, o),
                (Kind::Q6K, _) => $acts::<1, 2>(w_row, a, blocks, o),
            }
            r += n;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod vnni;

/// The K-quant types of the activation-row kernels (`avx2`, `vnni`).
#[derive(Clone, Copy)]
enum Kind {
    Q4K,
    Q5K,
    Q6K,
}

impl Kind {
    const fn bytes(self) -> usize {
        match self {
            Kind::Q4K => Q4K_BYTES,
            Kind::Q5K => Q5K_BYTES,
            Kind::Q6K => Q6K_BYTES,
        }
    }

    /// The type numbered `k` (0 Q4_K, 1 Q5_K, 2 Q6_K): the kernels take it as a const
    /// parameter, so that each instance's branches on the type fold away.
    #[cfg(target_arch = "x86_64")]
    const fn of(k: u8) -> Kind {
        match k {
            0 => Kind::Q4K,
            1 => Kind::Q5K,
            _ => Kind::Q6K,
        }
    }
}

const Q8_0_BYTES: usize = 34;
const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
const Q8K_BYTES: usize = 292;
/// A Q8_K block and its share of the row's tail (eight f32: `ActQuant::row_bytes`).
const Q8K_ROW_BYTES: usize = Q8K_BYTES + 32;
const Q6K_BYTES: usize = 210;

/// Weight rows that share a pass over an activation row when the weights are in cache.
pub(crate) const QDOT_ROWS: usize = 4;

/// Whether the AVX-512 VNNI kernels run: the CPU has AVX-512F, BW and VNNI, and
/// `BORA_CPU_ISA` does not cap the kernels below AVX-512.
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        Isa::get() == Isa::Avx512
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// The row kernels' signature: weight rows, one activation row, blocks, outputs, group.
type RowsKernel = unsafe fn(&[&[u8]], &[u8], usize, &mut [f32], usize);

/// Whether this CPU runs bora's own quantized kernels (AVX2, FMA and F16C); where it does
/// not, the portable dot products (candle's) run instead.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && Isa::get() >= Isa::Avx2
}

/// Runs a row kernel after checking the slices hold `blocks` blocks of `w_bytes` (weights)
/// and `a_bytes` (activation).
///
/// # Panics
/// If the slices are short, or this CPU cannot run the kernels ([`available`]).
fn run_rows(
    kernel: RowsKernel,
    (w_bytes, a_bytes): (usize, usize),
    w_rows: &[&[u8]],
    act: &[u8],
    blocks: usize,
    out: &mut [f32],
    group: usize,
) {
    assert!(
        available(),
        "bora's quantized kernels need AVX2, FMA and F16C"
    );
    assert!(out.len() >= w_rows.len() && act.len() >= blocks * a_bytes);
    assert!(w_rows.iter().all(|w| w.len() >= blocks * w_bytes));
    // SAFETY: AVX2, FMA and F16C are present (Isa::Avx2 and above require all three); every
    // row and the activation hold `blocks` whole blocks (asserted above).
    unsafe { kernel(w_rows, act, blocks, out, group) };
}

/// `out[i] = w_rows[i] · act` for Q8_0 rows of `blocks` blocks, `group` rows (1 or
/// [`QDOT_ROWS`]) sharing each pass over the activation.
pub(crate) fn dot_q8_0(w_rows: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32], group: usize) {
    #[cfg(target_arch = "x86_64")]
    let kernel: RowsKernel = if has_vnni() {
        x86::q8_0_rows_vnni
    } else {
        x86::q8_0_rows
    };
    #[cfg(not(target_arch = "x86_64"))]
    let kernel: RowsKernel = |_, _, _, _, _| {};
    run_rows(
        kernel,
        (Q8_0_BYTES, Q8_0_BYTES),
        w_rows,
        act,
        blocks,
        out,
        group,
    )
}

/// `out[i] = w_rows[i] · act` for Q4_K rows against a Q8_K activation row, `blocks` blocks of
/// 256, `group` rows per pass.
///
/// Q4_K: per 256 values an f16 scale `d` and minimum scale `dmin`, eight 6-bit sub-block
/// scales and minimums packed in 12 bytes, and 4-bit levels `q` (two per byte: a 64-value
/// chunk's first 32 in the low nibbles, the next 32 in the high ones). A value is
/// `d·sc_j·q − dmin·m_j`, so the dot with Q8_K (`d8`, bytes `y`, and `bsums`, sums of each 16
/// of them) is `d·d8·Σ_j sc_j Σ q·y − dmin·d8·Σ_j m_j Σ y`: integer sums, two float products.
pub(crate) fn dot_q4k(w_rows: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32], group: usize) {
    #[cfg(target_arch = "x86_64")]
    let kernel: RowsKernel = x86::q4k_rows;
    #[cfg(not(target_arch = "x86_64"))]
    let kernel: RowsKernel = |_, _, _, _, _| {};
    run_rows(
        kernel,
        (Q4K_BYTES, Q8K_ROW_BYTES),
        w_rows,
        act,
        blocks,
        out,
        group,
    )
}

/// `out[i] = w_rows[i] · act` for Q6_K rows against a Q8_K activation row.
///
/// Q6_K: per 256 values an f16 scale `d`, sixteen i8 scales (one per 16 values) and 6-bit
/// levels `u` (low 4 bits in `ql`, high 2 in `qh`) standing for `u − 32`. With Q8_K, whose
/// `bsums` are exactly the sums of each 16 activation bytes, the dot is
/// `d·d8·(Σ_j sc_j Σ u·y − 32 Σ_j sc_j·bsum_j)`.
pub(crate) fn dot_q6k(w_rows: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32], group: usize) {
    #[cfg(target_arch = "x86_64")]
    let kernel: RowsKernel = x86::q6k_rows;
    #[cfg(not(target_arch = "x86_64"))]
    let kernel: RowsKernel = |_, _, _, _, _| {};
    run_rows(
        kernel,
        (Q6K_BYTES, Q8K_ROW_BYTES),
        w_rows,
        act,
        blocks,
        out,
        group,
    )
}

/// `out[i] = w_rows[i] · act` for Q5_K rows against a Q8_K activation row.
///
/// Q5_K is Q4_K with a fifth bit per value: 32 bytes `qh` after the scales, bit `j` of byte
/// `l` belonging to value `l` of sub-block `j` (worth 16).
pub(crate) fn dot_q5k(w_rows: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32], group: usize) {
    #[cfg(target_arch = "x86_64")]
    let kernel: RowsKernel = x86::q5k_rows;
    #[cfg(not(target_arch = "x86_64"))]
    let kernel: RowsKernel = |_, _, _, _, _| {};
    run_rows(
        kernel,
        (Q5K_BYTES, Q8K_ROW_BYTES),
        w_rows,
        act,
        blocks,
        out,
        group,
    )
}

/// How many activation rows one [`dot_acts`] call takes best for weights of type `q`: 0 where
/// there is no such kernel (then several weight rows share each activation row instead).
pub(crate) fn acts_rows(q: QType) -> usize {
    #[cfg(target_arch = "x86_64")]
    match q {
        _ if !available() => 0,
        // Measured on a Q4_K expert at 32 rows: 8 beat 4 by 20% with AVX2 (16 was slower),
        // and matched 16 with AVX-512.
        QType::Q4K | QType::Q5K | QType::Q6K => 8,
        _ => 0,
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// `out[r] = w_row · acts[r]` for one weight row of type `q` against Q8_K activation rows
/// (with their tails), the weight's blocks unpacked once for up to [`acts_rows`]`(q)` of them.
///
/// # Panics
/// As [`run_rows`], and if `q` has no such kernel here.
pub(crate) fn dot_acts(q: QType, w_row: &[u8], acts: &[&[u8]], blocks: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    return dot_acts_isa(has_vnni(), q, w_row, acts, blocks, out);
    #[cfg(not(target_arch = "x86_64"))]
    panic!("no {q} activation-row kernel on this CPU");
}

/// [`dot_acts`] with the AVX-512 kernels or the AVX2 ones.
#[cfg(target_arch = "x86_64")]
fn dot_acts_isa(
    vnni: bool,
    q: QType,
    w_row: &[u8],
    acts: &[&[u8]],
    blocks: usize,
    out: &mut [f32],
) {
    let kind = match q {
        QType::Q4K => Kind::Q4K,
        QType::Q5K => Kind::Q5K,
        QType::Q6K => Kind::Q6K,
        _ => panic!("no {q} activation-row kernel"),
    };
    assert!(
        available() && (!vnni || has_vnni()),
        "this CPU cannot run the {q} activation-row kernels"
    );
    assert!(out.len() >= acts.len());
    assert!(w_row.len() >= blocks * q.block_bytes());
    assert!(acts.iter().all(|a| a.len() >= blocks * Q8K_ROW_BYTES));
    // SAFETY: the CPU has the features and the slices are long enough (asserted above).
    unsafe {
        if vnni {
            vnni::acts_of(kind, w_row, acts, blocks, out)
        } else {
            avx2::acts_of(kind, w_row, acts, blocks, out)
        }
    }
}

/// Quantizes `x` (whole blocks of 32) to Q8_0 blocks in `out` as llama.cpp does on x86
/// (scale `max|x|/127` stored in f16, levels `x·127/max|x|` rounded half to even): with AVX2
/// where the CPU has it, else with candle's port (which rounds half away from zero).
pub(crate) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(32) && out.len() == x.len() / 32 * Q8_0_BYTES);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 and F16C are present; the lengths are checked above.
        return unsafe { x86::quantize_q8_0(x, out) };
    }
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
    BlockQ8_0::from_float(x, crate::quant::blocks_mut(out))
}

/// Quantizes `x` (whole blocks of 256) to Q8_K blocks in `out`, exactly as ggml's
/// `quantize_row_q8_K_ref` does (scale `−127/max` from the value of largest magnitude, levels
/// rounded half to even, sums of each 16): with AVX2 where the CPU has it, else with candle's
/// port (which rounds half away from zero).
pub(crate) fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(256) && out.len() == x.len() / 256 * Q8K_BYTES);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 is present; the lengths are checked above.
        return unsafe { x86::quantize_q8k(x, out) };
    }
    use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
    BlockQ8K::from_float(x, crate::quant::blocks_mut(out))
}

/// The eight 6-bit scales and minimums of a K-quant block's 12 packed bytes, as
/// `(scales, mins)`, each 8 bytes in a `u64`.
#[inline(always)]
fn unpack_scales(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let sc_lo = a & 0x3f3f_3f3f;
    let m_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let m_hi = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{unpack_scales, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES, Q8K_BYTES, Q8_0_BYTES};

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

    /// 32 values at `p` times `scale`, rounded half to even (the default rounding mode) and
    /// capped at 127, as 32 bytes in order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn levels32(p: *const f32, scale: __m256) -> __m256i {
        let top = _mm256_set1_epi32(127);
        let v: [__m256i; 4] = std::array::from_fn(|k| {
            let x = _mm256_loadu_ps(p.add(8 * k));
            _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x, scale)), top)
        });
        let lo = _mm256_packs_epi32(v[0], v[1]);
        let hi = _mm256_packs_epi32(v[2], v[3]);
        // The packs work within 128-bit lanes: put the 4-byte groups back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order)
    }

    /// The largest magnitude among `n` (a multiple of 8) values at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn max_abs(p: *const f32, n: usize) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut amax = _mm256_setzero_ps();
        for i in 0..n / 8 {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i))));
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(amax),
            _mm256_extractf128_ps::<1>(amax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// See `super::quantize_q8_0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
        for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
            let m = max_abs(xb.as_ptr(), 32);
            let d = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(m / 127.0));
            let id = if m != 0.0 { 127.0 / m } else { 0.0 };
            ob[..2].copy_from_slice(&(_mm_extract_epi16::<0>(d) as u16).to_le_bytes());
            let q = levels32(xb.as_ptr(), _mm256_set1_ps(id));
            _mm256_storeu_si256(ob.as_mut_ptr().add(2) as *mut __m256i, q);
        }
    }

    /// See `super::quantize_q8k`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_q8k(x: &[f32], out: &mut [u8]) {
        for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8K_BYTES)) {
            let p = xb.as_ptr();
            let m = max_abs(p, 256);
            // The first value of the largest magnitude (a NaN block has none: zeros).
            let Some(&max) = xb.iter().find(|v| v.abs() == m).filter(|_| m > 0.0) else {
                ob.fill(0);
                continue;
            };
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            let q = ob.as_mut_ptr().add(4);
            for i in 0..8 {
                // Half to even, as ggml's nearest_int.
                let bytes = levels32(p.add(32 * i), is);
                _mm256_storeu_si256(q.add(32 * i) as *mut __m256i, bytes);
            }
            let (head, bsums) = ob.split_at_mut(4 + 256);
            for (j, b) in bsums.chunks_exact_mut(2).enumerate() {
                let sum: i16 = head[4 + 16 * j..4 + 16 * j + 16]
                    .iter()
                    .map(|&v| v as i8 as i16)
                    .sum();
                b.copy_from_slice(&sum.to_le_bytes());
            }
            head[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }

    /// `R` Q8_0 weight rows against one Q8_0 activation row.
    #[inline]
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

    /// `R` Q4_K weight rows (Q5_K with `FIVE`) against one Q8_K activation row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k5<const R: usize, const FIVE: bool>(
        w_rows: &[&[u8]],
        act: &[u8],
        blocks: usize,
        out: &mut [f32],
    ) {
        let low = _mm256_set1_epi8(0x0f);
        // Byte masks that spread i16 lane j of a 128-bit vector over all 16 lanes.
        let spread: [__m256i; 8] = std::array::from_fn(|j| {
            _mm256_set1_epi16((((2 * j + 1) as i16) << 8) | (2 * j) as i16)
        });
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins_acc = [_mm_setzero_ps(); R];
        let mut w = [std::ptr::null::<u8>(); R];
        for (p, row) in w.iter_mut().zip(w_rows) {
            *p = row.as_ptr();
        }
        let a = act.as_ptr();
        for b in 0..blocks {
            let ab = a.add(b * Q8K_BYTES);
            let d8 = std::ptr::read_unaligned(ab as *const f32);
            let y = ab.add(4);
            // The 8 sums of 32 activation bytes, as i16 (at most 32·128).
            let bs = _mm256_loadu_si256(ab.add(4 + 256) as *const __m256i);
            let ysum = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            let ys: [__m256i; 8] =
                std::array::from_fn(|i| _mm256_loadu_si256(y.add(32 * i) as *const __m256i));
            for r in 0..R {
                let wb = w[r].add(b * if FIVE { Q5K_BYTES } else { Q4K_BYTES });
                let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    wb as *const i32,
                )));
                let dd = _mm_mul_ps(dd, _mm_set1_ps(d8));
                let (scales, mins) = unpack_scales(std::slice::from_raw_parts(wb.add(4), 12));
                let m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64));
                let msum = _mm_cvtepi32_ps(_mm_madd_epi16(m16, ysum));
                // dmin·d8 (lane 1 of dd) times the four partial sums.
                mins_acc[r] =
                    _mm_fmadd_ps(_mm_shuffle_ps::<0b01_01_01_01>(dd, dd), msum, mins_acc[r]);
                let s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
                    scales as i64,
                )));
                let q = wb.add(if FIVE { 48 } else { 16 });
                // Q5_K's fifth bits, bit pair c of each byte for chunk c shifted to bits 0-1.
                let mut qh = if FIVE {
                    _mm256_loadu_si256(wb.add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                let mut sum = _mm256_setzero_si256();
                for c in 0..4 {
                    let bits = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                    let mut lo = _mm256_and_si256(bits, low);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
                    if FIVE {
                        let b4 = _mm256_set1_epi8(0x10);
                        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), b4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), b4));
                        qh = _mm256_srli_epi16(qh, 2);
                    }
                    let sl = _mm256_shuffle_epi8(s16, spread[2 * c]);
                    let sh = _mm256_shuffle_epi8(s16, spread[2 * c + 1]);
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ys[2 * c]), sl);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ys[2 * c + 1]), sh);
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(pl, ph));
                }
                let d = _mm256_broadcastss_ps(dd);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
        for r in 0..R {
            let m = mins_acc[r];
            let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[r] = hsum(acc[r]) - _mm_cvtss_f32(m);
        }
    }

    /// A function running kernel `$k::<R>` over every row of `w_rows`, `group` (1 or 4) rows
    /// per pass over the activation.
    macro_rules! rows_of {
        ($name:ident, $k:ident) => {
            rows_of!($name, $k, "avx2,fma,f16c");
        };
        ($name:ident, $k:ident, $features:literal) => {
            /// Every row of `w_rows` against `act`, `group` (1 or 4) at a time.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                w_rows: &[&[u8]],
                act: &[u8],
                blocks: usize,
                out: &mut [f32],
                group: usize,
            ) {
                let mut i = 0;
                while i < w_rows.len() {
                    let left = w_rows.len() - i;
                    let n = match (group >= 4, left) {
                        (true, 4..) => 4,
                        (true, 2..) => 2,
                        _ => 1,
                    };
                    let (w, o) = (&w_rows[i..i + n], &mut out[i..i + n]);
                    match n {
                        4 => $k::<4>(w, act, blocks, o),
                        2 => $k::<2>(w, act, blocks, o),
                        _ => $k::<1>(w, act, blocks, o),
                    }
                    i += n;
                }
            }
        };
    }
    /// `R` Q6_K weight rows against one Q8_K activation row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const R: usize>(
        w_rows: &[&[u8]],
        act: &[u8],
        blocks: usize,
        out: &mut [f32],
    ) {
        let low4 = _mm256_set1_epi8(0x0f);
        let low2 = _mm256_set1_epi8(0x03);
        // Spread i16 lanes (2p, 2p + 1) of a half's eight scales over the low and high 128-bit
        // lanes: the scales of the two 16-value sub-blocks one 32-byte vector covers.
        let pair: [__m256i; 4] = std::array::from_fn(|p| {
            let (a, b) = ((4 * p) as i8, (4 * p + 2) as i8);
            _mm256_setr_epi8(
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                a,
                a + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
                b,
                b + 1,
            )
        });
        let mut acc = [_mm256_setzero_ps(); R];
        let mut w = [std::ptr::null::<u8>(); R];
        for (p, row) in w.iter_mut().zip(w_rows) {
            *p = row.as_ptr();
        }
        let a = act.as_ptr();
        for b in 0..blocks {
            let ab = a.add(b * Q8K_BYTES);
            let d8 = std::ptr::read_unaligned(ab as *const f32);
            let y = ab.add(4);
            let bsums = _mm256_loadu_si256(ab.add(4 + 256) as *const __m256i);
            for r in 0..R {
                let wb = w[r].add(b * Q6K_BYTES);
                let (ql, qh, sc) = (wb, wb.add(128), wb.add(192));
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    wb.add(208) as *const u16,
                ) as i32)));
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                // −32 Σ_j sc_j·bsum_j.
                let offset = _mm256_madd_epi16(sc16, bsums);
                let mut sum =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
                for half in 0..2 {
                    let l0 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                    let l1 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                    let h = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                    let hbits = |shift: i32| -> __m256i {
                        let x = match shift {
                            0 => h,
                            2 => _mm256_srli_epi16(h, 2),
                            4 => _mm256_srli_epi16(h, 4),
                            _ => _mm256_srli_epi16(h, 6),
                        };
                        _mm256_slli_epi16(_mm256_and_si256(x, low2), 4)
                    };
                    let u = [
                        _mm256_or_si256(_mm256_and_si256(l0, low4), hbits(0)),
                        _mm256_or_si256(_mm256_and_si256(l1, low4), hbits(2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), hbits(4)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), hbits(6)),
                    ];
                    let s8 = _mm256_permute4x64_epi64::<0b01_00_01_00>(if half == 0 {
                        sc16
                    } else {
                        _mm256_permute4x64_epi64::<0b11_10_11_10>(sc16)
                    });
                    for (k, uk) in u.iter().enumerate() {
                        let yk = _mm256_loadu_si256(y.add(128 * half + 32 * k) as *const __m256i);
                        let scale = _mm256_shuffle_epi8(s8, pair[k]);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*uk, yk), scale);
                        sum = _mm256_add_epi32(sum, p);
                    }
                }
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * d8), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }

    /// Two blocks' 32 bytes (at a 34-byte stride, after each 2-byte scale) in one vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn two_blocks(p: *const u8) -> __m512i {
        let lo = _mm256_loadu_si256(p.add(2) as *const __m256i);
        let hi = _mm256_loadu_si256(p.add(2 + Q8_0_BYTES) as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// Two blocks' f16 scales, each over 8 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn two_scales(p: *const u8) -> __m512 {
        let lo = _mm512_castps_pd(_mm512_castps256_ps512(scale(p)));
        let hi = _mm256_castps_pd(scale(p.add(Q8_0_BYTES)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
    }

    /// `R` Q8_0 weight rows against one Q8_0 activation row, two blocks per step with
    /// AVX-512 VNNI (`vpdpbusd`: unsigned·signed bytes summed in fours, in one instruction); an
    /// odd last block through the AVX2 kernel.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q8_0_vnni<const R: usize>(
        w_rows: &[&[u8]],
        act: &[u8],
        blocks: usize,
        out: &mut [f32],
    ) {
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); R];
        let mut w = [std::ptr::null::<u8>(); R];
        for (p, row) in w.iter_mut().zip(w_rows) {
            *p = row.as_ptr();
        }
        let a = act.as_ptr();
        for pi in 0..blocks / 2 {
            let off = 2 * pi * Q8_0_BYTES;
            let ay = two_blocks(a.add(off));
            let ad = two_scales(a.add(off));
            for r in 0..R {
                let wx = two_blocks(w[r].add(off));
                let negative = _mm512_movepi8_mask(wx);
                let magnitude = _mm512_abs_epi8(wx);
                // The activation with the weight's sign (|y| ≤ 127: Q8_0 never holds −128).
                let signed = _mm512_mask_sub_epi8(ay, negative, zero, ay);
                let sums = _mm512_dpbusd_epi32(zero, magnitude, signed);
                let d = _mm512_mul_ps(two_scales(w[r].add(off)), ad);
                acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sums), acc[r]);
            }
        }
        let mut tail = [0f32; R];
        if blocks % 2 == 1 {
            let off = (blocks - 1) * Q8_0_BYTES;
            let rows: [&[u8]; R] = std::array::from_fn(|r| &w_rows[r][off..]);
            q8_0::<R>(&rows, &act[off..], 1, &mut tail);
        }
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]) + tail[r];
        }
    }

    rows_of!(q8_0_rows, q8_0);
    rows_of!(
        q8_0_rows_vnni,
        q8_0_vnni,
        "avx512f,avx512bw,avx512vnni,avx2,fma,f16c"
    );

    rows_of!(q6k_rows, q6k);
    /// `R` Q4_K weight rows against one Q8_K activation row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k<const R: usize>(w: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32]) {
        q4k5::<R, false>(w, act, blocks, out)
    }

    /// `R` Q5_K weight rows against one Q8_K activation row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5k<const R: usize>(w: &[&[u8]], act: &[u8], blocks: usize, out: &mut [f32]) {
        q4k5::<R, true>(w, act, blocks, out)
    }

    rows_of!(q4k_rows, q4k);
    rows_of!(q5k_rows, q5k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize, QBuf, QType};

    type Rows = fn(&[&[u8]], &[u8], usize, &mut [f32], usize);

    /// The AVX2 Q8_0 kernel, whichever kernel `dot_q8_0` picks on this CPU.
    fn avx2_q8_0(w: &[&[u8]], a: &[u8], b: usize, o: &mut [f32], g: usize) {
        #[cfg(target_arch = "x86_64")]
        return run_rows(x86::q8_0_rows, (Q8_0_BYTES, Q8_0_BYTES), w, a, b, o, g);
        #[cfg(not(target_arch = "x86_64"))]
        return dot_q8_0(w, a, b, o, g);
    }

    /// Pseudo-random values with heavy tails: a few far out, as real weights and activations
    /// have.
    fn vals(seed: u32, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if s.is_multiple_of(97) {
                    u * 40.0
                } else {
                    u * 3.0
                }
            })
            .collect()
    }

    /// The CPU paths `BORA_EXPECT_CPU` names (tests/run sets it from /proc/cpuinfo: `avx2`,
    /// `avx512`, `vnni`, `bf16`) are detected, so that the kernel tests below run them rather than
    /// skip: a detection that fails on a CPU that has the feature fails here.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn expected_cpu_paths_are_detected() {
        let expect = std::env::var("BORA_EXPECT_CPU").unwrap_or_default();
        for feature in expect.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let detected = match feature {
                "avx2" => available(),
                "avx512" => Isa::supported().contains(&Isa::Avx512),
                "vnni" => {
                    Isa::supported().contains(&Isa::Avx512)
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                }
                "bf16" => crate::cpu::bf16dot::available(),
                other => panic!("BORA_EXPECT_CPU names an unknown feature `{other}`"),
            };
            assert!(
                detected,
                "this CPU has {feature}, but bora does not detect it"
            );
        }
    }

    /// bora's kernels against candle's dot products on the same blocks: the same integer sums,
    /// so agreement to float rounding. Every kernel this CPU can run is checked: the AVX-512
    /// ones where it has them, and the AVX2 ones in any case.
    #[test]
    fn own_kernels_match_candles() {
        if !available() {
            return; // no AVX2 here: the portable dot products run instead
        }
        // Q8_0 at an odd block count (the VNNI kernel's two-block steps plus a last one).
        let k_of = |q: QType| if q == QType::Q8_0 { 1056 } else { 1024 };
        let kernels: [(QType, Rows); 5] = [
            (QType::Q8_0, dot_q8_0),
            (QType::Q8_0, avx2_q8_0),
            (QType::Q4K, dot_q4k),
            (QType::Q5K, dot_q5k),
            (QType::Q6K, dot_q6k),
        ];
        for (q, own) in kernels {
            let k = k_of(q);
            let rows: Vec<QBuf> = (0..4)
                .map(|r| {
                    let mut b = QBuf::zeroed(q.row_bytes(k).unwrap());
                    quantize(q, &vals(r + 1, k), b.as_bytes_mut());
                    b
                })
                .collect();
            let kind = q.act_quant();
            let acts: Vec<QBuf> = (0..9)
                .map(|a| {
                    let mut b = QBuf::zeroed(kind.row_bytes(k));
                    kind.quantize_row(&vals(99 + a, k), b.as_bytes_mut());
                    b
                })
                .collect();
            let want = |w: &QBuf, a: &QBuf| {
                let mut o = [0f32];
                let blocks = &a.as_bytes()[..k / kind.block_elems() * kind.block_bytes()];
                crate::quant::dot_rows(q, k, w.as_bytes(), &[blocks], &mut o);
                o[0]
            };
            let close = |got: f32, want: f32| (got - want).abs() <= 1e-4 * want.abs().max(1.0);
            for (n, group) in (1..=4).flat_map(|n| [(n, 1), (n, 2), (n, 4)]) {
                let ws: Vec<&[u8]> = rows[..n].iter().map(|b| b.as_bytes()).collect();
                let mut got = [0f32; 4];
                own(
                    &ws,
                    acts[0].as_bytes(),
                    k / q.block_elems(),
                    &mut got,
                    group,
                );
                for i in 0..n {
                    let w = want(&rows[i], &acts[0]);
                    assert!(close(got[i], w), "{q} rows {n}/{group}: {} vs {w}", got[i]);
                }
            }
            // One weight row against 1 to 9 activation rows: the same products, with the
            // AVX-512 kernels where this CPU has them and the AVX2 ones.
            #[cfg(target_arch = "x86_64")]
            for vnni in [true, false] {
                let has = !vnni || has_vnni();
                if !has || q == QType::Q8_0 {
                    continue;
                }
                for n in 1..=9 {
                    let xs: Vec<&[u8]> = acts[..n].iter().map(|b| b.as_bytes()).collect();
                    let mut got = [0f32; 9];
                    dot_acts_isa(vnni, q, rows[1].as_bytes(), &xs, k / 256, &mut got);
                    for a in 0..n {
                        let w = want(&rows[1], &acts[a]);
                        assert!(close(got[a], w), "{q} acts {n} ({vnni}): {} vs {w}", got[a]);
                    }
                }
            }
        }
    }

    /// bora's Q8_K quantizer gives candle's blocks (both are ggml's reference; ggml and bora
    /// round half to even where candle rounds half away from zero, and no value here falls
    /// on a half), zeros for a zero block, and the tail's scaled sums.
    #[test]
    fn q8k_quantizer_matches_candles() {
        use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
        let mut x = vals(5, 256 * 6);
        x[256..512].fill(0.0);
        x[600] = -50.0; // the largest magnitude negative: the scale's sign flips
        let kind = QType::Q4K.act_quant();
        let mut ours = QBuf::zeroed(kind.row_bytes(x.len()));
        kind.quantize_row(&x, ours.as_bytes_mut());
        let mut theirs = vec![BlockQ8K::zeros(); 6];
        BlockQ8K::from_float(&x, &mut theirs);
        // SAFETY: candle's blocks are repr(C) plain data, 292 bytes each.
        let theirs =
            unsafe { std::slice::from_raw_parts(theirs.as_ptr() as *const u8, 6 * Q8K_BYTES) };
        assert_eq!(&ours.as_bytes()[..6 * Q8K_BYTES], theirs);
        for (b, t) in theirs.chunks_exact(Q8K_BYTES).enumerate() {
            let d = f32::from_le_bytes(t[..4].try_into().unwrap());
            let bsum = |i: usize| i16::from_le_bytes([t[260 + 2 * i], t[261 + 2 * i]]) as f32;
            let tail = &ours.as_bytes()[6 * Q8K_BYTES + 32 * b..];
            for j in 0..8 {
                let s = f32::from_le_bytes(tail[4 * j..4 * j + 4].try_into().unwrap());
                assert_eq!(s, d * (bsum(2 * j) + bsum(2 * j + 1)), "block {b} sum {j}");
            }
        }
        assert!(theirs[Q8K_BYTES..2 * Q8K_BYTES].iter().all(|&v| v == 0));
        // A value on a half rounds to even, as ggml's nearest_int does: with max 127, the
        // scale is −1, so 2.5 and −3.5 are −2.5 and 3.5: −2 and 4.
        let mut x = vec![0f32; 256];
        (x[0], x[1], x[2]) = (127.0, 2.5, -3.5);
        let mut q = vec![0u8; Q8K_BYTES];
        quantize_q8k(&x, &mut q);
        if available() {
            assert_eq!((q[4] as i8, q[5] as i8, q[6] as i8), (-127, -2, 4));
        }
    }

    /// bora's Q8_0 activation quantizer against the arithmetic it stands for (llama.cpp's on
    /// x86): scale `max/127` in f16, levels `x·(127/max)` rounded half to even.
    #[test]
    fn q8_0_quantizer_is_llama_cpps() {
        let mut x = vals(7, 32 * 40);
        x[32..64].fill(0.0);
        (x[64], x[65], x[66]) = (127.0, 2.5, -3.5); // halves: 2 and -4
        let mut q = vec![0u8; 40 * Q8_0_BYTES];
        quantize_q8_0(&x, &mut q);
        for (b, (xb, qb)) in x.chunks(32).zip(q.chunks(Q8_0_BYTES)).enumerate() {
            let m = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = half::f16::from_f32(m / 127.0).to_bits().to_le_bytes();
            assert_eq!(qb[..2], d, "block {b} scale");
            let id = if m != 0.0 { 127.0 / m } else { 0.0 };
            for (i, &v) in xb.iter().enumerate() {
                let want = (v * id).round_ties_even().min(127.0) as i8;
                if available() || (v * id).fract().abs() != 0.5 {
                    assert_eq!(qb[2 + i] as i8, want, "block {b} value {i}");
                }
            }
        }
    }
}
