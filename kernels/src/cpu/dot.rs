//! Dot products of a block of up to four weight rows with up to eight f32 activation rows.
//!
//! `dot_block::<W>(isa, ws, xs, accs)` sets `accs[i][r] = Σ_k ws[i][k]·xs[r][k]`. The SIMD paths widen the weights to f32 as they load them (bf16: shift left 16; f16:
//! `vcvtph2ps`) and keep several accumulators per row: AVX-512 (16 lanes) where the CPU has it,
//! else AVX2 with FMA and F16C (8 lanes). The scalar path is the reference and the fallback.
//! All paths compute in f32; they differ only in the order of the additions.

use std::sync::OnceLock;

use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, Lanes};

/// The instruction set the CPU kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2, FMA and F16C: 8 f32 lanes.
    Avx2,
    /// AVX-512F: 16 f32 lanes.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports, capped by the `BORA_CPU_ISA` environment
    /// variable (`scalar`, `avx2` or `avx512`; read once) where it is set, so that a bench can
    /// compare the paths on one machine.
    pub fn get() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("BORA_CPU_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            Isa::supported()
                .into_iter()
                .filter(|&i| i <= cap)
                .max()
                .unwrap_or(Isa::Scalar)
        })
    }

    /// Every instruction set this CPU can run, the scalar path first.
    pub fn supported() -> Vec<Isa> {
        let mut out = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Isa::Avx2);
            }
            if has!("avx512f") {
                out.push(Isa::Avx512);
            }
        }
        out
    }
}

/// A weight element that can be widened to f32.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` must point to 8 readable elements, and the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Loads 16 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` must point to 16 readable elements, and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
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
    if Isa::get() >= Isa::Avx2 {
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

/// `dst[i] = src[i]` widened to f32 (f16 or bf16 rows of a KV cache, say), 16 or 8 values per
/// instruction where the CPU has AVX-512 or F16C.
///
/// # Panics
/// If the lengths differ.
pub fn widen<W: Element>(src: &[W], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths differ");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has the ISA (`Isa::get` detected it); every access is below
        // `src.len() == dst.len()`.
        unsafe {
            match Isa::get() {
                Isa::Avx512 => i = widen_avx512(src, dst),
                Isa::Avx2 => i = widen_avx2(src, dst),
                Isa::Scalar => {}
            }
        }
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

/// The whole vectors of [`widen`]; returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512<W: Element>(src: &[W], dst: &mut [f32]) -> usize {
    let full = src.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        std::arch::x86_64::_mm512_storeu_ps(
            dst.as_mut_ptr().add(i),
            W::load16(src.as_ptr().add(i)),
        );
    }
    full
}

/// The whole vectors of [`widen`]; returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2<W: Element>(src: &[W], dst: &mut [f32]) -> usize {
    let full = src.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr().add(i), W::load8(src.as_ptr().add(i)));
    }
    full
}

/// The scalar reference: `acc[r] = Σ_k w[k]·xs[r][k]`.
pub fn dot_rows_scalar<W: Element>(w: &[W], xs: &[&[f32]], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = w.iter().zip(x.iter()).map(|(&w, &x)| w.to_f32() * x).sum();
    }
}

/// Activation rows one call of [`dot_block`] takes at most.
pub const DOT_MAX_ROWS: usize = 8;

/// Weight rows one call of [`dot_block`] takes at most.
pub const DOT_MAX_BLOCK: usize = 4;

/// How many weight rows [`dot_block`] takes together for `m` activation rows: as many as the
/// registers hold accumulators for. Each activation vector loaded then serves that many weight
/// rows, which matters once the activation rows no longer fit in L1 and come from L2 for every
/// weight row.
pub fn block_rows(isa: Isa, m: usize) -> usize {
    let m = m.clamp(1, DOT_MAX_ROWS);
    match isa {
        Isa::Scalar => 1,
        // One row: two weight rows keep two DRAM streams going per core.
        _ if m == 1 => 1,
        _ => (accumulators(isa) / m).clamp(1, DOT_MAX_BLOCK),
    }
}

/// Accumulator registers a kernel may use: the rest hold weights and an activation vector
/// (AVX2 has 16 vector registers, AVX-512 32).
const fn accumulators(isa: Isa) -> usize {
    match isa {
        Isa::Scalar => 1,
        Isa::Avx2 => 12,
        Isa::Avx512 => 16,
    }
}

/// `accs[i][r] = Σ_k ws[i][k]·xs[r][k]`: `ws.len()` ≤ [`block_rows`]`(isa, xs.len())` weight
/// rows against `xs.len()` ≤ 8 activation rows, each at least as long as the weight rows.
///
/// With `invariant`, each accumulator sums its products in one fixed order whatever the number
/// of weight and activation rows (one vector of partial sums, no unrolling), so that a row's
/// result does not depend on the rows beside it.
///
/// # Panics
/// If the counts or lengths are off.
#[inline]
pub fn dot_block<W: Element>(
    isa: Isa,
    ws: &[&[W]],
    xs: &[&[f32]],
    accs: &mut [[f32; DOT_MAX_ROWS]],
    invariant: bool,
) {
    let (nw, m) = (ws.len(), xs.len());
    assert!((1..=DOT_MAX_ROWS).contains(&m) && accs.len() >= nw);
    assert!((1..=block_rows(isa, m)).contains(&nw));
    let k = ws[0].len();
    assert!(ws.iter().all(|w| w.len() == k) && xs.iter().all(|x| x.len() >= k));
    // U vectors of weights per step: at least four independent FMA chains (NW·R·U) in flight
    // to cover the FMA latency.
    macro_rules! rows {
        ($kernel:ident, $nw:literal) => {
            match m {
                1 if invariant => $kernel::<W, $nw, 1, 1>(ws, xs, accs),
                2 if invariant => $kernel::<W, $nw, 2, 1>(ws, xs, accs),
                1 => $kernel::<W, $nw, 1, { unroll($nw * 1) }>(ws, xs, accs),
                2 => $kernel::<W, $nw, 2, { unroll($nw * 2) }>(ws, xs, accs),
                3 => $kernel::<W, $nw, 3, 1>(ws, xs, accs),
                4 => $kernel::<W, $nw, 4, 1>(ws, xs, accs),
                5 => $kernel::<W, $nw, 5, 1>(ws, xs, accs),
                6 => $kernel::<W, $nw, 6, 1>(ws, xs, accs),
                7 => $kernel::<W, $nw, 7, 1>(ws, xs, accs),
                _ => $kernel::<W, $nw, 8, 1>(ws, xs, accs),
            }
        };
    }
    // SAFETY: the CPU has `isa` (callers take it from `Isa::get`, which detected it); counts
    // and lengths are checked above. `block_rows` keeps NW·R within the registers; the
    // instances beyond it are never called.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (isa, nw) {
            (Isa::Avx512, 1) => return rows!(dot_block_avx512, 1),
            (Isa::Avx512, 2) => return rows!(dot_block_avx512, 2),
            (Isa::Avx512, 3) => return rows!(dot_block_avx512, 3),
            (Isa::Avx512, _) => return rows!(dot_block_avx512, 4),
            (Isa::Avx2, 1) => return rows!(dot_block_avx2, 1),
            (Isa::Avx2, 2) => return rows!(dot_block_avx2, 2),
            (Isa::Avx2, 3) => return rows!(dot_block_avx2, 3),
            (Isa::Avx2, _) => return rows!(dot_block_avx2, 4),
            (Isa::Scalar, _) => {}
        }
    }
    for (w, acc) in ws.iter().zip(accs.iter_mut()) {
        dot_rows_scalar(w, xs, acc);
    }
}

/// `out[j] = Σ_i w[j·k + i]·x[i]` for every row `j` of `w` (`[out.len(), k]`, row-major): one
/// activation row against contiguous weight rows, read as one stream from the first row to the
/// last (decode's matrix-vector product). The loop over rows runs inside the SIMD kernel, so a
/// row's reduction overlaps the next row's loads.
///
/// # Panics
/// If `w` is not `[out.len(), k]` or `x` is shorter than `k`.
pub fn gemv_rows<W: Element>(isa: Isa, w: &[W], k: usize, x: &[f32], out: &mut [f32]) {
    assert!(
        w.len() == out.len() * k && x.len() >= k,
        "gemv_rows: w is not [n, k]"
    );
    // SAFETY: the CPU has `isa` (callers take it from `Isa::get`); lengths checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => return gemv_rows_avx512(w, k, x, out),
            Isa::Avx2 => return gemv_rows_avx2(w, k, x, out),
            Isa::Scalar => {}
        }
    }
    for (row, o) in w.chunks_exact(k.max(1)).zip(out.iter_mut()) {
        let mut acc = [0f32];
        dot_rows_scalar(row, &[x], &mut acc);
        *o = acc[0];
    }
}

/// The kernel of [`gemv_rows`]: `U` vectors of weights per step, each into its own accumulator.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // constant indices keep the accumulators in registers
unsafe fn gemv_rows_lanes<L: Lanes, W: Element, const U: usize>(
    w: &[W],
    k: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let xp = x.as_ptr();
    let full = k / (L::N * U) * (L::N * U);
    for (j, o) in out.iter_mut().enumerate() {
        let wp = w.as_ptr().add(j * k);
        let mut a = [L::zero(); U];
        let mut i = 0;
        while i < full {
            for u in 0..U {
                let at = i + L::N * u;
                a[u] = L::fmadd(L::load_w(wp.add(at)), L::load_x(xp.add(at)), a[u]);
            }
            i += L::N * U;
        }
        let mut v = a[0];
        for u in 1..U {
            v = L::add(v, a[u]);
        }
        let mut total = L::hsum(v);
        for t in full..k {
            total += (*wp.add(t)).to_f32() * *xp.add(t);
        }
        *o = total;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_rows_avx2<W: Element>(w: &[W], k: usize, x: &[f32], out: &mut [f32]) {
    gemv_rows_lanes::<Avx2, W, 4>(w, k, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_rows_avx512<W: Element>(w: &[W], k: usize, x: &[f32], out: &mut [f32]) {
    gemv_rows_lanes::<Avx512, W, 4>(w, k, x, out)
}

/// Vectors of weights per step for `chains` accumulators a step: at least 4 chains in all.
const fn unroll(chains: usize) -> usize {
    if chains >= 8 {
        1
    } else {
        8 / chains
    }
}

/// The kernel of [`dot_block`]: `NW` weight rows, `R` activation rows, `U` vectors of weights
/// per step.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // constant indices keep the accumulators in registers
unsafe fn dot_block_lanes<L: Lanes, W: Element, const NW: usize, const R: usize, const U: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
    accs: &mut [[f32; DOT_MAX_ROWS]],
) {
    let k = ws[0].len();
    let wp: [*const W; NW] = std::array::from_fn(|i| ws[i].as_ptr());
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    // Indexed by constants only (every loop here unrolls), so that the accumulators live in
    // registers: an iterator over them made LLVM store each one back after every FMA.
    let mut a = [[[L::zero(); R]; NW]; U];
    let mut i = 0;
    while i + L::N * U <= k {
        for u in 0..U {
            let at = i + L::N * u;
            let mut wv = [L::zero(); NW];
            for j in 0..NW {
                wv[j] = L::load_w(wp[j].add(at));
            }
            for r in 0..R {
                let x = L::load_x(xp[r].add(at));
                for j in 0..NW {
                    a[u][j][r] = L::fmadd(wv[j], x, a[u][j][r]);
                }
            }
        }
        i += L::N * U;
    }
    for j in 0..NW {
        for r in 0..R {
            let mut v = a[0][j][r];
            for u in 1..U {
                v = L::add(v, a[u][j][r]);
            }
            let mut total = L::hsum(v);
            for t in i..k {
                total += (*wp[j].add(t)).to_f32() * *xp[r].add(t);
            }
            accs[j][r] = total;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block_avx2<W: Element, const NW: usize, const R: usize, const U: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
    accs: &mut [[f32; DOT_MAX_ROWS]],
) {
    dot_block_lanes::<Avx2, W, NW, R, U>(ws, xs, accs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_block_avx512<W: Element, const NW: usize, const R: usize, const U: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
    accs: &mut [[f32; DOT_MAX_ROWS]],
) {
    dot_block_lanes::<Avx512, W, NW, R, U>(ws, xs, accs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn check<W: Element>(conv: fn(f32) -> W) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for k in [1, 7, 8, 15, 16, 17, 33, 63, 64, 65, 100, 1024] {
            let ws: Vec<Vec<W>> = (0..DOT_MAX_BLOCK)
                .map(|_| (0..k).map(|_| conv(rng.random_range(-1.0..1.0))).collect())
                .collect();
            let xs: Vec<Vec<f32>> = (0..DOT_MAX_ROWS)
                .map(|_| (0..k).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            for m in 1..=DOT_MAX_ROWS {
                let x: Vec<&[f32]> = xs[..m].iter().map(|v| v.as_slice()).collect();
                for isa in Isa::supported() {
                    if m == 1 {
                        // Every weight row against the one activation row, in one stream.
                        let flat: Vec<W> = ws.iter().flatten().copied().collect();
                        let mut got = [0f32; DOT_MAX_BLOCK];
                        gemv_rows(isa, &flat, k, x[0], &mut got);
                        for (j, row) in ws.iter().enumerate() {
                            let mut want = [0f32];
                            dot_rows_scalar(row, &x, &mut want);
                            assert!(
                                (want[0] - got[j]).abs() < 1e-4,
                                "gemv_rows {isa:?} k={k} row {j}: {} vs {}",
                                want[0],
                                got[j]
                            );
                        }
                    }
                    for (nw, invariant) in
                        (1..=block_rows(isa, m)).flat_map(|nw| [(nw, false), (nw, true)])
                    {
                        let w: Vec<&[W]> = ws[..nw].iter().map(|v| v.as_slice()).collect();
                        let mut got = [[0f32; DOT_MAX_ROWS]; DOT_MAX_BLOCK];
                        dot_block(isa, &w, &x, &mut got, invariant);
                        for (j, row) in w.iter().enumerate() {
                            let mut want = [0f32; DOT_MAX_ROWS];
                            dot_rows_scalar(row, &x, &mut want);
                            for r in 0..m {
                                assert!(
                                    (want[r] - got[j][r]).abs() < 1e-4,
                                    "{isa:?} k={k} m={m} nw={nw} ({j}, {r}): {} vs {}",
                                    want[r],
                                    got[j][r]
                                );
                                if invariant {
                                    // The same bits as the row alone.
                                    let mut alone = [[0f32; DOT_MAX_ROWS]; DOT_MAX_BLOCK];
                                    dot_block(isa, &[*row], &[x[r]], &mut alone, true);
                                    assert_eq!(
                                        alone[0][0].to_bits(),
                                        got[j][r].to_bits(),
                                        "{isa:?} k={k} m={m} nw={nw} ({j}, {r})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn widen_matches_scalar() {
        for n in [0, 1, 7, 8, 15, 16, 17, 40, 256] {
            let src: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(i as f32 * 0.37 - 9.0))
                .collect();
            let mut dst = vec![f32::NAN; n];
            widen(&src, &mut dst);
            for (d, s) in dst.iter().zip(&src) {
                assert_eq!(*d, s.to_f32(), "{n} values");
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
