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
    let mut attend = |kpool: &[f32], vpool: &[f32]| {
        out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
            let (t, h) = (idx / hq, idx % hq);
            let (i, p) = toks[t];
            let s = seqs[i];
            let lo = crate::attention::first_key(cfg.sliding_window, p);
            let qh = &qr[(t * hq + h) * d..(t * hq + h + 1) * d];
            let kvh = h / g;
            // Where position j's key or value of this kv head sits in a pool.
            let at = |j: usize| {
                let b = (cache.row(&s.blocks, j) * hkv + kvh) * d;
                b..b + d
            };
            let mut scores: Vec<f32> = (lo..=p).map(|j| dot(qh, &kpool[at(j)]) * scale).collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                total += *sc;
            }
            for (j, &w) in (lo..=p).zip(&scores) {
                let w = w / total;
                for (o, &x) in o.iter_mut().zip(&vpool[at(j)]) {
                    *o += w * x;
                }
            }
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

/// A dot product the compiler vectorizes (eight independent partial sums).
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
