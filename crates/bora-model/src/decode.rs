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
    let g = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n * hq * d];
    // One task per (token, kv head): the kv head's g query heads read each key and value row
    // once between them (GQA), instead of once per query head.
    let mut attend = |kpool: &[f32], vpool: &[f32]| {
        out.par_chunks_mut(g * d).enumerate().for_each(|(idx, o)| {
            let (t, kvh) = (idx / hkv, idx % hkv);
            let (i, p) = toks[t];
            let s = seqs[i];
            let lo = crate::attention::first_key(cfg.sliding_window, p);
            // Where each position's key or value row of this kv head starts in a pool.
            let at: Vec<usize> = (lo..=p)
                .map(|j| (cache.row(&s.blocks, j) * hkv + kvh) * d)
                .collect();
            let group = Group {
                q: &qr[(t * hq + kvh * g) * d..(t * hq + kvh * g + g) * d],
                d,
                scale,
                at: &at,
            };
            group.attend(kpool, vpool, o);
        })
    };
    with_cpu_f32(&kv.k, |kpool| {
        with_cpu_f32(&kv.v, |vpool| attend(kpool, vpool))
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

/// The query heads that share one kv head, at one position, and the key/value rows they attend.
struct Group<'a> {
    /// `g` query heads of `d` values.
    q: &'a [f32],
    d: usize,
    scale: f32,
    /// The start of each attended position's row in the pools, in position order.
    at: &'a [usize],
}

impl Group<'_> {
    /// Softmax-weighted sums of the value rows into `out` (`g · d`, zeroed), with the widest
    /// vectors this CPU has (the loops below vectorize under each `target_feature`).
    fn attend(&self, kpool: &[f32], vpool: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use bora_kernels::Isa;
            match Isa::get() {
                // SAFETY: Isa::get() reports AVX-512F only where the CPU has it.
                Isa::Avx512 => return unsafe { self.attend_avx512(kpool, vpool, out) },
                // SAFETY: Isa::Avx2 means AVX2 and FMA are present.
                Isa::Avx2 => return unsafe { self.attend_avx2(kpool, vpool, out) },
                Isa::Scalar => {}
            }
        }
        self.attend_any(kpool, vpool, out)
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn attend_avx512(&self, kpool: &[f32], vpool: &[f32], out: &mut [f32]) {
        self.attend_any(kpool, vpool, out)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, kpool: &[f32], vpool: &[f32], out: &mut [f32]) {
        self.attend_any(kpool, vpool, out)
    }

    #[inline(always)]
    fn attend_any(&self, kpool: &[f32], vpool: &[f32], out: &mut [f32]) {
        let (d, n) = (self.d, self.at.len());
        let g = self.q.len() / d.max(1);
        // scores[h · n + j]: head h against position j.
        let mut scores = vec![0f32; g * n];
        for (j, &a) in self.at.iter().enumerate() {
            let k = &kpool[a..a + d];
            for (h, q) in self.q.chunks_exact(d).enumerate() {
                scores[h * n + j] = dot(q, k) * self.scale;
            }
        }
        let mut inv = vec![0f32; g];
        for (row, inv) in scores.chunks_exact_mut(n.max(1)).zip(inv.iter_mut()) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for sc in row.iter_mut() {
                *sc = (*sc - max).exp();
                total += *sc;
            }
            *inv = 1.0 / total;
        }
        for (j, &a) in self.at.iter().enumerate() {
            let v = &vpool[a..a + d];
            for (h, o) in out.chunks_exact_mut(d).enumerate() {
                let w = scores[h * n + j] * inv[h];
                for (o, &x) in o.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        }
    }
}

/// A dot product the compiler vectorizes (eight independent partial sums).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
