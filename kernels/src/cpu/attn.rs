//! Decode attention: one query token against a run of cached key and value rows, in f32 over
//! f32 or f16 rows (widened as they are loaded), its softmax taken online over blocks of
//! [`BLOCK`] positions (flash attention's scheme), so that a long context is read once, with
//! no score matrix.
//!
//! At long contexts decode reads more cache than weights, so the kernel is built around the
//! order of its reads: every row (all key/value heads of a position) is read whole and rows in
//! order, the access pattern the hardware prefetcher follows at full speed (reading one head's
//! part of each row in turn streamed at less than half the bandwidth here). A block's key rows
//! are scored row after row, each row against every query head, a tile of [`Lanes::N`] heads'
//! partial sums in registers and summed across their lanes together by a tree of shuffles
//! ([`Lanes::sums`]); the softmax then runs with a head in each lane. Its value rows are added
//! four rows at a time into the outputs, which stay in L1. The block's value rows are asked
//! for while its keys are scored, and the next block's key rows while its values are added,
//! so that memory streams while the core computes.
//!
//! The scalar path is the reference and the fallback (head sizes that are not a multiple of
//! the vector width).

use super::dot::{Element, Isa};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, Lanes};

/// Head counts and size (bora-model's legend: Hq query heads, Hkv key/value heads, D values
/// per head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

impl Heads {
    /// Floats of one token's partial result over a run of keys: `Hq · D` unnormalized sums,
    /// then the `Hq` running maxima, then the `Hq` sums of weights.
    pub fn partial_len(&self) -> usize {
        self.hq * (self.d + 2)
    }
}

/// Positions scored together, one online-softmax step.
pub const BLOCK: usize = 64;

/// Sets `part` to one query token's partial attention (see [`Heads::partial_len`]) over the
/// positions whose key and value rows start at element offsets `rows` of `k` and `v` (each
/// row `Hkv · D` values: all key/value heads of a position), in position order. `q` is
/// `[Hq · D]`, already scaled by `1/√D`. With no rows the maxima are -∞ and the sums 0.
///
/// # Panics
/// If `q` or `part` have the wrong length, `Hkv` does not divide `Hq`, or a row runs past the
/// end of `k` or `v`.
pub fn attend_one<T: Element>(
    heads: Heads,
    q: &[f32],
    k: &[T],
    v: &[T],
    rows: &[usize],
    part: &mut [f32],
) {
    let Heads { hq, hkv, d } = heads;
    assert!(
        hkv > 0 && hq % hkv == 0,
        "attend_one: {hkv} kv heads, {hq} heads"
    );
    assert!(q.len() == hq * d && part.len() == heads.partial_len());
    let end = rows.iter().max().map_or(0, |&r| r + hkv * d);
    assert!(
        end <= k.len() && end <= v.len(),
        "attend_one: a row past the pool"
    );
    reset(heads, part);
    if rows.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: Isa::get() names an instruction set only where the CPU has it; lengths and
        // row bounds are checked above, and the head size is a multiple of the vector width.
        unsafe {
            match Isa::get() {
                Isa::Avx512 if d % 16 == 0 => return attend_avx512(heads, q, k, v, rows, part),
                Isa::Avx2 if d % 8 == 0 => return attend_avx2(heads, q, k, v, rows, part),
                _ => {}
            }
        }
    }
    attend_scalar(heads, q, k, v, rows, part)
}

/// A partial over no rows yet: sums 0, maxima -∞, sums of weights 0.
fn reset(heads: Heads, part: &mut [f32]) {
    let (hq, d) = (heads.hq, heads.d);
    part[..hq * d].fill(0.0);
    part[hq * d..hq * d + hq].fill(f32::NEG_INFINITY);
    part[hq * d + hq..].fill(0.0);
}

/// The reference: the same blocks and online softmax, one product at a time, into a partial
/// that [`reset`] has set.
fn attend_scalar<T: Element>(
    heads: Heads,
    q: &[f32],
    k: &[T],
    v: &[T],
    rows: &[usize],
    part: &mut [f32],
) {
    let Heads { hq, hkv, d } = heads;
    let g = hq / hkv;
    let (acc, rest) = part.split_at_mut(hq * d);
    let (m, l) = rest.split_at_mut(hq);
    let mut s = [0f32; BLOCK];
    for block in rows.chunks(BLOCK) {
        for h in 0..hq {
            let at = h / g * d;
            let qh = &q[h * d..(h + 1) * d];
            for (s, &r) in s.iter_mut().zip(block) {
                *s = qh
                    .iter()
                    .zip(&k[r + at..r + at + d])
                    .map(|(&x, &y)| x * y.to_f32())
                    .sum();
            }
            let keep = softmax_step(&mut s, block.len(), &mut m[h], &mut l[h]);
            let o = &mut acc[h * d..(h + 1) * d];
            for (i, o) in o.iter_mut().enumerate() {
                let mut x = *o * keep;
                for (&w, &r) in s.iter().zip(block) {
                    x += w * v[r + at + i].to_f32();
                }
                *o = x;
            }
        }
    }
}

/// One online-softmax step for one head: `s[..n]` are a block's scores (the rest unused), `m`
/// and `l` the head's running maximum and sum of weights. Leaves the block's weights in
/// `s[..n]` (zeros after), updates `m` and `l`, and returns the factor the head's output
/// sums must be scaled by before the block's weighted values are added.
#[inline(always)]
fn softmax_step(s: &mut [f32; BLOCK], n: usize, m: &mut f32, l: &mut f32) -> f32 {
    for x in &mut s[n..] {
        *x = f32::NEG_INFINITY;
    }
    let top = m.max(max(s));
    let keep = exp(*m - top);
    for (j, x) in s.iter_mut().enumerate() {
        *x = if j < n { exp(*x - top) } else { 0.0 };
    }
    *l = *l * keep + sum(s);
    *m = top;
    keep
}

/// The kernel: see the module docs. `N` is `L::N`.
///
/// # Safety
/// The CPU has `L`'s instruction set; `D` is a multiple of `L::N`; the lengths and rows are
/// as [`attend_one`] checks them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // constant indices keep the accumulators in registers
unsafe fn attend_lanes<L: Lanes, T: Element, const N: usize>(
    heads: Heads,
    q: &[f32],
    k: &[T],
    v: &[T],
    rows: &[usize],
    part: &mut [f32],
) {
    let Heads { hq, hkv, d } = heads;
    let (g, chunks) = (hq / hkv, d / N);
    // Heads in tiles of N, one lane each; `hp` the heads rounded up to whole tiles.
    let tiles = hq.div_ceil(N);
    let hp = tiles * N;
    let (acc, rest) = part.split_at_mut(hq * d);
    let (m, l) = rest.split_at_mut(hq);
    // A lane's query head and its key/value head's offset in a row; lanes past the last
    // head repeat it (their results are never read).
    let qo: Vec<usize> = (0..hp).map(|h| h.min(hq - 1) * d).collect();
    let ko: Vec<usize> = (0..hp).map(|h| h.min(hq - 1) / g * d).collect();
    // The block's scores and then weights, a tile of heads per vector: st[j · hp + h].
    let mut st = vec![0f32; BLOCK * hp];
    let (mut mv, mut lv, mut keep) = (vec![f32::NEG_INFINITY; hp], vec![0f32; hp], vec![0f32; hp]);
    let (qp, stp) = (q.as_ptr(), st.as_mut_ptr());
    let row_bytes = hkv * d * std::mem::size_of::<T>();
    for (bi, block) in rows.chunks(BLOCK).enumerate() {
        let n = block.len();
        let next = rows
            .get((bi + 1) * BLOCK..)
            .map_or(&[][..], |r| &r[..r.len().min(BLOCK)]);
        // Scores, row after row (each key row read whole, in order: a stream the hardware
        // prefetcher follows), a tile of heads' partial sums in N registers.
        for (j, &r) in block.iter().enumerate() {
            let kr = k.as_ptr().add(r);
            // The block's value rows, asked for while its keys are scored.
            let vr = v.as_ptr().add(r) as *const u8;
            for b in (0..row_bytes).step_by(64) {
                prefetch(vr.add(b));
            }
            for tile in 0..tiles {
                let (qt, kt) = (&qo[tile * N..], &ko[tile * N..]);
                let mut a = [L::zero(); N];
                for c in 0..chunks {
                    for t in 0..N {
                        let x = L::load_x(qp.add(qt[t] + c * N));
                        a[t] = L::fmadd(x, L::load_w(kr.add(kt[t] + c * N)), a[t]);
                    }
                }
                L::store(stp.add(j * hp + tile * N), L::sums(&a));
            }
        }
        // The online softmax, each head in its lane: the block's maximum, the rescaling of
        // what came before, the weights and their sum.
        for tile in 0..tiles {
            let at = tile * N;
            let before = L::load_x(mv.as_ptr().add(at));
            let mut top = before;
            for j in 0..n {
                top = L::max(L::load_x(stp.add(j * hp + at)), top);
            }
            let kv = exp_lanes::<L>(L::sub(before, top));
            let mut total = L::zero();
            for j in 0..n {
                let w = exp_lanes::<L>(L::sub(L::load_x(stp.add(j * hp + at)), top));
                L::store(stp.add(j * hp + at), w);
                total = L::add(total, w);
            }
            let sum = L::fmadd(L::load_x(lv.as_ptr().add(at)), kv, total);
            L::store(lv.as_mut_ptr().add(at), sum);
            L::store(mv.as_mut_ptr().add(at), top);
            L::store(keep.as_mut_ptr().add(at), kv);
        }
        // Values, row after row: each head's output (in L1) rescaled, then the weighted rows
        // added.
        let o = acc.as_mut_ptr();
        for h in 0..hq {
            let kv = L::splat(keep[h]);
            for c in 0..chunks {
                let p = o.add(h * d + c * N);
                L::store(p, L::mul(L::load_x(p), kv));
            }
        }
        // Four rows at a time, so that each output vector is loaded and stored once for four
        // FMAs.
        let mut quads = block.chunks_exact(4);
        for (qi, r) in (&mut quads).enumerate() {
            let j = qi * 4;
            // The next block's key rows, asked for while this block's values are added.
            for &nr in next.get(j..(j + 4).min(next.len())).unwrap_or(&[]) {
                let kr = k.as_ptr().add(nr) as *const u8;
                for b in (0..row_bytes).step_by(64) {
                    prefetch(kr.add(b));
                }
            }
            let vr: [*const T; 4] = std::array::from_fn(|i| v.as_ptr().add(r[i]));
            for h in 0..hq {
                let w: [L::V; 4] = std::array::from_fn(|i| L::splat(*stp.add((j + i) * hp + h)));
                let oh = o.add(h * d);
                for c in 0..chunks {
                    let p = oh.add(c * N);
                    let at = ko[h] + c * N;
                    let mut x = L::load_x(p);
                    for i in 0..4 {
                        x = L::fmadd(w[i], L::load_w(vr[i].add(at)), x);
                    }
                    L::store(p, x);
                }
            }
        }
        let done = n / 4 * 4;
        for (j, &r) in block.iter().enumerate().skip(done) {
            let vr = v.as_ptr().add(r);
            for h in 0..hq {
                let w = L::splat(*stp.add(j * hp + h));
                let (vh, oh) = (vr.add(ko[h]), o.add(h * d));
                for c in 0..chunks {
                    let p = oh.add(c * N);
                    L::store(p, L::fmadd(w, L::load_w(vh.add(c * N)), L::load_x(p)));
                }
            }
        }
    }
    m.copy_from_slice(&mv[..hq]);
    l.copy_from_slice(&lv[..hq]);
}

/// Asks for the cache line of `p` ahead of its use, into L2 (a hint: it never faults).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: a prefetch reads nothing architecturally and never faults.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8) }
}

/// # Safety
/// As [`attend_lanes`], with AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<T: Element>(
    heads: Heads,
    q: &[f32],
    k: &[T],
    v: &[T],
    rows: &[usize],
    part: &mut [f32],
) {
    attend_lanes::<Avx2, T, 8>(heads, q, k, v, rows, part)
}

/// # Safety
/// As [`attend_lanes`], with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn attend_avx512<T: Element>(
    heads: Heads,
    q: &[f32],
    k: &[T],
    v: &[T],
    rows: &[usize],
    part: &mut [f32],
) {
    attend_lanes::<Avx512, T, 16>(heads, q, k, v, rows, part)
}

/// Sixteen lanes combined by halves (8 + 8, 4 + 4, 2 + 2, 1 + 1): four vector steps, where
/// folding them in order is a chain of fifteen dependent scalar ones.
#[inline(always)]
fn halves(mut a: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            a[i] = f(a[i], a[i + w]);
        }
    }
    a[0]
}

/// The sum, in sixteen lanes the compiler vectorizes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    halves(acc, |a, b| a + b) + tail
}

/// The largest value (NaN is skipped), in sixteen lanes the compiler vectorizes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            top[i] = if c[i] > top[i] { c[i] } else { top[i] };
        }
    }
    halves(top, |a, b| if b > a { b } else { a }).max(tail)
}

/// `e^x` for `x ≤ 0` (exact enough up to 88, where it saturates), without branches so that
/// loops over it vectorize: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial for
/// `e^r` (Cephes' `expf` coefficients, relative error about 1e-7) and `2^n` built in the
/// exponent bits. Inputs below -87 (and NaN, and -∞) give `e^-87` ≈ 1.6e-38, which no softmax
/// sum notices. [`exp_lanes`] is the same in SIMD registers.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // max, then min (not clamp): NaN becomes -87.
    #[allow(clippy::manual_clamp)]
    let x = x.max(EXP_LO).min(EXP_HI);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI + n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // 2^n from n's bits, without a float-to-int cast (whose saturating semantics keep loops
    // from vectorizing): n is an integer in [-126, 127], so adding 1.5·2^23 leaves it in the
    // low mantissa bits: (n + 1.5·2^23).to_bits() = 0x4B40_0000 + n.
    let biased = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000 - 127);
    e * f32::from_bits(biased << 23)
}

const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.0;
/// ln 2 = LN2_HI - LN2_LO, the first exact in few bits so that `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = 2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// [`exp`] on every lane.
///
/// # Safety
/// The CPU has `L`'s instruction set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_lanes<L: Lanes>(x: L::V) -> L::V {
    // max with the bound second: NaN becomes -87.
    let x = L::min(L::max(x, L::splat(EXP_LO)), L::splat(EXP_HI));
    let n = L::floor(L::fmadd(
        x,
        L::splat(std::f32::consts::LOG2_E),
        L::splat(0.5),
    ));
    let r = L::fmadd(n, L::splat(LN2_LO), L::sub(x, L::mul(n, L::splat(LN2_HI))));
    let mut p = L::splat(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = L::fmadd(p, r, L::splat(c));
    }
    let e = L::add(L::fmadd(L::mul(p, r), r, r), L::splat(1.0));
    L::ldexp(e, n)
}

#[cfg(test)]
mod tests;
