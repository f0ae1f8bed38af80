//! Attention for decode steps (one new token per sequence) on the CPU in f32, computed in place
//! over the KV pool: no gather of a sequence's keys and values, and a handful of operations per
//! step instead of some thirty candle operations per sequence and layer.

use bora_weights::with_cpu_f32;
use candle_core::Tensor;
use rayon::prelude::*;

use crate::attention::AttentionCtx;
use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::{ModelError, Result, SeqInput};

/// `q` `[T, Hq·D]`, `k` and `v` `[T, Hkv·D]` (f32, CPU, contiguous) of a step; `rows[i]` is the
/// row of decode sequence `seqs[i]`. Writes their keys and values into the cache and returns
/// their attention outputs `[n, Hq·D]`.
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
    let (qa, ka, va) = (rows_of(q, rows)?, rows_of(k, rows)?, rows_of(v, rows)?);
    let n = rows.len();
    let mut qr = qa;
    let mut kr = ka;
    for (i, s) in seqs.iter().enumerate() {
        let pos = s.start_pos;
        for h in qr[i * hq * d..(i + 1) * hq * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
        for h in kr[i * hkv * d..(i + 1) * hkv * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
    }
    let kv = cache.layer(ctx.layer);
    let dev = q.device();
    for (i, s) in seqs.iter().enumerate() {
        let row = cache.row(&s.blocks, s.start_pos);
        let kt = Tensor::from_slice(&kr[i * hkv * d..(i + 1) * hkv * d], (1, hkv, d), dev)?;
        let vt = Tensor::from_slice(&va[i * hkv * d..(i + 1) * hkv * d], (1, hkv, d), dev)?;
        kv.k.slice_set(&kt, 0, row)?;
        kv.v.slice_set(&vt, 0, row)?;
    }
    let g = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n * hq * d];
    let mut attend = |kpool: &[f32], vpool: &[f32]| {
        out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
            let (i, h) = (idx / hq, idx % hq);
            let s = seqs[i];
            let p = s.start_pos;
            let lo = crate::attention::first_key(cfg.sliding_window, p);
            let qh = &qr[(i * hq + h) * d..(i * hq + h + 1) * d];
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
