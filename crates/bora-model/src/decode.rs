//! Attention for decode steps (one new token per sequence) on the CPU in f32, computed in place
//! over the KV pool: no gather of a sequence's keys and values, and a handful of operations per
//! step instead of some thirty candle operations per sequence and layer. In batch-invariant
//! mode prefill chunks take it too, one query at a time.

use bora_weights::with_cpu_f32;
use candle_core::Tensor;
use rayon::prelude::*;

use crate::attention::AttentionCtx;
use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::{ModelError, Result, SeqInput};

/// `q` `[T, Hq·D]`, `k` and `v` `[T, Hkv·D]` (f32, CPU, contiguous) of a step; sequence
/// `seqs[i]`'s tokens are rows `rows[i]..rows[i] + seqs[i].tokens.len()` (one for a decode
/// step; a whole chunk in batch-invariant mode, where prefill takes this path too, so that a
/// position's attention is computed the same way whether it is decoded or prefilled, and
/// whatever the chunking). Writes their keys and values into the cache and returns their
/// attention outputs `[n, Hq·D]`, `n` the tokens of all of them, in order.
pub(crate) fn decode_attention(
    ctx: &AttentionCtx<'_>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: &[usize],
    seqs: &[&SeqInput],
    cache: &KvCache,
) -> Result<Tensor> {
    let cfg = ctx.cfg;
    let (hq, hkv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (cos, sin) = ctx
        .rope
        .host()
        .ok_or_else(|| ModelError::Batch("no host rotary tables".into()))?;
    // (sequence, position) of each token, and its row in the step.
    let toks: Vec<(usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.tokens.len()).map(move |t| (i, s.start_pos + t)))
        .collect();
    let step_rows: Vec<usize> = seqs
        .iter()
        .zip(rows)
        .flat_map(|(s, &r)| r..r + s.tokens.len())
        .collect();
    let (qa, ka, va) = (
        rows_of(q, &step_rows)?,
        rows_of(k, &step_rows)?,
        rows_of(v, &step_rows)?,
    );
    let n = toks.len();
    let mut qr = qa;
    let mut kr = ka;
    for (t, &(_, pos)) in toks.iter().enumerate() {
        for h in qr[t * hq * d..(t + 1) * hq * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
        for h in kr[t * hkv * d..(t + 1) * hkv * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
    }
    let kv = cache.layer(ctx.layer);
    let dev = q.device();
    for (t, &(i, pos)) in toks.iter().enumerate() {
        let row = cache.row(&seqs[i].blocks, pos);
        let kt = Tensor::from_slice(&kr[t * hkv * d..(t + 1) * hkv * d], (1, hkv, d), dev)?;
        let vt = Tensor::from_slice(&va[t * hkv * d..(t + 1) * hkv * d], (1, hkv, d), dev)?;
        kv.k.slice_set(&kt, 0, row)?;
        kv.v.slice_set(&vt, 0, row)?;
    }
    let scale = 1.0 / (d as f32).sqrt();
    for x in qr.iter_mut() {
        *x *= scale;
    }
    let shape = Shape { hq, hkv, d };
    // Each token's keys split into chunks of CHUNK positions, one task each; the chunks'
    // partial softmaxes merge afterwards. A chunk's boundaries depend on its position alone,
    // so a position's attention is the same whatever the batch or the thread count.
    let spans: Vec<(usize, usize)> = toks
        .iter()
        .map(|&(_, p)| (crate::attention::first_key(cfg.sliding_window, p), p + 1))
        .collect();
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (token, first, end)
    let mut first_task = Vec::with_capacity(n + 1);
    for (t, &(lo, hi)) in spans.iter().enumerate() {
        first_task.push(tasks.len());
        tasks.extend((lo..hi).step_by(CHUNK).map(|a| (t, a, (a + CHUNK).min(hi))));
    }
    first_task.push(tasks.len());
    let stride = shape.partial_len();
    let mut parts = vec![0f32; tasks.len() * stride];
    let mut out = vec![0f32; n * hq * d];
    with_cpu_f32(&kv.k, |kpool| {
        with_cpu_f32(&kv.v, |vpool| {
            parts
                .par_chunks_mut(stride)
                .zip(&tasks)
                .for_each(|(part, &(t, a, b))| {
                    let s = seqs[toks[t].0];
                    let chunk = Chunk {
                        shape,
                        q: &qr[t * hq * d..(t + 1) * hq * d],
                        rows: &|j| cache.row(&s.blocks, j),
                        span: (a, b),
                    };
                    chunk.attend(kpool, vpool, part);
                });
            out.par_chunks_mut(hq * d).enumerate().for_each(|(t, o)| {
                let ps = &parts[first_task[t] * stride..first_task[t + 1] * stride];
                shape.merge(ps, o);
            });
        })
    })??;
    Ok(Tensor::from_vec(out, (n, hq * d), dev)?)
}

/// The given rows of a contiguous `[T, C]` f32 CPU tensor, concatenated.
fn rows_of(t: &Tensor, rows: &[usize]) -> Result<Vec<f32>> {
    let (_, c) = t.dims2()?;
    Ok(with_cpu_f32(t, |all| {
        rows.iter()
            .flat_map(|&r| all[r * c..(r + 1) * c].iter().copied())
            .collect()
    })?)
}

/// Positions one task attends: a token's keys are split into chunks of this many.
const CHUNK: usize = 256;
/// Positions scored together before their softmax weights are applied to the values.
const SUB: usize = 32;

/// Head counts and size (the legend of `lib.rs`: Hq, Hkv, D).
#[derive(Clone, Copy)]
struct Shape {
    hq: usize,
    hkv: usize,
    d: usize,
}

impl Shape {
    /// Floats of one chunk's partial result: `Hq · D` unnormalized sums, then the `Hq` running
    /// maxima, then the `Hq` sums of weights.
    fn partial_len(&self) -> usize {
        self.hq * (self.d + 2)
    }

    /// Merges a token's chunk partials (in position order) into its attention output
    /// `[Hq · D]`.
    fn merge(&self, parts: &[f32], out: &mut [f32]) {
        let (hq, d) = (self.hq, self.d);
        let parts: Vec<&[f32]> = parts.chunks_exact(self.partial_len()).collect();
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let m = |p: &[f32]| p[hq * d + h];
            let top = parts.iter().map(|p| m(p)).fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            o.fill(0.0);
            for p in &parts {
                let w = (m(p) - top).exp();
                total += w * p[hq * d + hq + h];
                for (o, &x) in o.iter_mut().zip(&p[h * d..(h + 1) * d]) {
                    *o += w * x;
                }
            }
            let inv = 1.0 / total;
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// One token's queries against a chunk of its keys and values.
struct Chunk<'a> {
    shape: Shape,
    /// `Hq` query heads of `D` values, already scaled by `1/√D`.
    q: &'a [f32],
    /// The pool row of a position.
    rows: &'a (dyn Fn(usize) -> usize + Sync),
    /// The positions `a..b` attended.
    span: (usize, usize),
}

impl Chunk<'_> {
    /// Writes the chunk's partial result (see [`Shape::partial_len`]) into `part`, with the
    /// widest vectors this CPU has (the loops below vectorize under each `target_feature`).
    fn attend(&self, kpool: &[f32], vpool: &[f32], part: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use bora_kernels::Isa;
            match Isa::get() {
                // SAFETY: Isa::get() reports AVX-512F only where the CPU has it.
                Isa::Avx512 => return unsafe { self.attend_avx512(kpool, vpool, part) },
                // SAFETY: Isa::Avx2 means AVX2 and FMA are present.
                Isa::Avx2 => return unsafe { self.attend_avx2(kpool, vpool, part) },
                Isa::Scalar => {}
            }
        }
        self.attend_any(kpool, vpool, part)
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn attend_avx512(&self, kpool: &[f32], vpool: &[f32], part: &mut [f32]) {
        self.attend_any(kpool, vpool, part)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, kpool: &[f32], vpool: &[f32], part: &mut [f32]) {
        self.attend_any(kpool, vpool, part)
    }

    /// Online softmax over blocks of [`SUB`] positions: each block's scores for every head,
    /// then its weights, the running maximum and sum rescaled, and the weighted value rows
    /// added. Each pool row (all kv heads of a position) is read once, in position order.
    #[inline(always)]
    fn attend_any(&self, kpool: &[f32], vpool: &[f32], part: &mut [f32]) {
        let Shape { hq, hkv, d } = self.shape;
        let (g, width) = (hq / hkv, hkv * d);
        let (acc, rest) = part.split_at_mut(hq * d);
        let (m, l) = rest.split_at_mut(hq);
        acc.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        // scores[h · SUB + j]: head h against the block's position j.
        let mut scores = vec![0f32; hq * SUB];
        let mut rows = [0usize; SUB];
        let (a, b) = self.span;
        for first in (a..b).step_by(SUB) {
            let n = (b - first).min(SUB);
            for (j, r) in rows[..n].iter_mut().enumerate() {
                *r = (self.rows)(first + j) * width;
            }
            for (j, &r) in rows[..n].iter().enumerate() {
                let k = &kpool[r..r + width];
                for (h, q) in self.q.chunks_exact(d).enumerate() {
                    let kh = h / g * d;
                    scores[h * SUB + j] = dot(q, &k[kh..kh + d]);
                }
            }
            for h in 0..hq {
                let s = &mut scores[h * SUB..h * SUB + n];
                let top = m[h].max(s.iter().copied().fold(f32::NEG_INFINITY, f32::max));
                let keep = exp(m[h] - top);
                m[h] = top;
                for x in s.iter_mut() {
                    *x = exp(*x - top);
                }
                l[h] = l[h] * keep + s.iter().sum::<f32>();
                if keep != 1.0 {
                    for x in &mut acc[h * d..(h + 1) * d] {
                        *x *= keep;
                    }
                }
            }
            for (j, &r) in rows[..n].iter().enumerate() {
                let v = &vpool[r..r + width];
                for (h, o) in acc.chunks_exact_mut(d).enumerate() {
                    let w = scores[h * SUB + j];
                    let vh = &v[h / g * d..h / g * d + d];
                    for (o, &x) in o.iter_mut().zip(vh) {
                        *o += w * x;
                    }
                }
            }
        }
    }
}

/// A dot product the compiler vectorizes (sixteen independent partial sums).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for `x ≤ 0` (it is exact enough up to 88, where it saturates), without branches so that loops over it
/// vectorize: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial for `e^r` (Cephes'
/// `expf` coefficients, relative error about 1e-7) and `2^n` built in the exponent bits.
/// Inputs below -87 (and NaN, and -∞) give `e^-87` ≈ 1.6e-38, which no softmax sum notices.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // max, then min (not clamp): NaN becomes -87.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((((n as i32) + 127) as u32) << 23)
}

#[cfg(test)]
mod tests;
