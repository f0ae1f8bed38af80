//! Grouped-query attention over the KV cache, one sequence at a time (the projections run over
//! the whole step's tokens at once).

use bora_core::ModelConfig;
use bora_weights::{LayerWeights, Matrix};
use candle_core::{Device, Tensor};

use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::{Batch, Result};

pub(crate) struct AttentionCtx<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a Rope,
    pub layer: usize,
    /// Batch-invariant: on the CPU in f32, every sequence's tokens (prefill chunks too) take the
    /// in-place kernel, one query at a time.
    pub invariant: bool,
    /// The step's decode sequences on a CUDA device, attended to all at once.
    #[cfg(feature = "cuda")]
    pub device_decode: Option<&'a crate::decode_cuda::DeviceDecode>,
}

/// `x` `[T, H]` (normed) → attention output `[T, H]`; writes the step's K/V into the cache.
pub(crate) fn attention(
    ctx: &AttentionCtx<'_>,
    w: &LayerWeights,
    x: &Tensor,
    batch: &Batch,
    cache: &KvCache,
) -> Result<Tensor> {
    let cfg = ctx.cfg;
    let (hq, hkv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let qkv = Matrix::forward_many(x, &[&w.q, &w.k, &w.v])?;
    let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]); // [T, Hq·D], [T, Hkv·D], [T, Hkv·D]

    // Every sequence of a CPU f32 model takes the in-place kernel, all together.
    let host =
        x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && ctx.rope.host().is_some();
    let mut starts = Vec::with_capacity(batch.seqs.len());
    let mut at = 0;
    for s in &batch.seqs {
        starts.push(at);
        at += s.tokens.len();
    }
    let fast: Vec<usize> = (0..batch.seqs.len())
        .filter(|&i| {
            let l = batch.seqs[i].tokens.len();
            host && l > 0
        })
        .collect();
    let fast_out = if fast.is_empty() {
        None
    } else {
        let rows: Vec<usize> = fast.iter().map(|&i| starts[i]).collect();
        let seqs: Vec<&crate::SeqInput> = fast.iter().map(|&i| &batch.seqs[i]).collect();
        Some(crate::decode::pool_attention(
            ctx, q, k, v, &rows, &seqs, cache,
        )?)
    };
    let fast: &[usize] = &fast;
    #[cfg(feature = "cuda")]
    let (fast, fast_out) = match ctx.device_decode {
        Some(dd) => (&dd.seqs[..], Some(dd.run(cfg, ctx.layer, q, k, v, cache)?)),
        None => (fast, fast_out),
    };
    let mut outs = Vec::with_capacity(batch.seqs.len());
    let mut row = 0;
    let mut next_fast = 0;
    // Where the next fast sequence's rows start in `fast_out`.
    let mut fast_row = 0;
    for (si, s) in batch.seqs.iter().enumerate() {
        let l = s.tokens.len();
        if l == 0 {
            continue;
        }
        if let (Some(f), Some(&fi)) = (&fast_out, fast.get(next_fast)) {
            if fi == si {
                outs.push(f.narrow(0, fast_row, l)?);
                next_fast += 1;
                fast_row += l;
                row += l;
                continue;
            }
        }
        let heads = |t: &Tensor, n: usize| -> Result<Tensor> {
            // [L, n·D] → [1, n, L, D]
            Ok(t.narrow(0, row, l)?
                .reshape((l, n, d))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?)
        };
        let qs = ctx.rope.apply(&heads(q, hq)?, s.start_pos)?.squeeze(0)?; // [Hq, L, D]
        let ks = ctx.rope.apply(&heads(k, hkv)?, s.start_pos)?.squeeze(0)?; // [Hkv, L, D]
        let vs = heads(v, hkv)?.squeeze(0)?; // [Hkv, L, D]
        let kv = cache.layer(ctx.layer);
        write_rows(cache, &s.blocks, s.start_pos, &ks, &kv.k)?;
        write_rows(cache, &s.blocks, s.start_pos, &vs, &kv.v)?;
        let end = s.start_pos + l;
        // The earliest key any of these queries may see.
        let lo = first_key(cfg.sliding_window, s.start_pos);
        // In the activations' dtype whatever the pool's.
        let keys = read_rows(cache, &s.blocks, lo, end, &kv.k)?.to_dtype(qs.dtype())?; // [Hkv, S, D]
        let vals = read_rows(cache, &s.blocks, lo, end, &kv.v)?.to_dtype(qs.dtype())?; // [Hkv, S, D]
        let g = hq / hkv;
        let qg = qs.reshape((hkv, g * l, d))?; // heads h = kv·G + g share kv
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (qg.matmul(&keys.t()?)? * scale)?; // [Hkv, G·L, S]
        let scores = match mask(cfg.sliding_window, s.start_pos, l, lo, end, x.device())? {
            Some(m) => scores
                .reshape((hkv, g, l, end - lo))?
                .broadcast_add(&m.to_dtype(scores.dtype())?)?
                .reshape((hkv, g * l, end - lo))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs.matmul(&vals)?; // [Hkv, G·L, D]
        let o = o
            .reshape((hq, l, d))?
            .transpose(0, 1)?
            .reshape((l, hq * d))?; // [L, Hq·D]
        outs.push(o);
        row += l;
    }
    let o = Tensor::cat(&outs, 0)?; // [T, Hq·D]
    Ok(w.o.forward(&o)?)
}

/// The first key position a query at `pos` sees: 0, or the start of its sliding window.
pub(crate) fn first_key(window: Option<usize>, pos: usize) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Writes `x` `[Hkv, L, D]` at positions `start..start + L` of the sequence's blocks into the
/// layer's pool `[rows, Hkv, D]`, one copy per run of consecutive rows.
fn write_rows(
    cache: &KvCache,
    blocks: &[u32],
    start: usize,
    x: &Tensor,
    pool: &Tensor,
) -> Result<()> {
    let x = x.transpose(0, 1)?.to_dtype(pool.dtype())?.contiguous()?; // [L, Hkv, D]
    let l = x.dim(0)?;
    let mut i = 0;
    while i < l {
        let row = cache.row(blocks, start + i);
        let mut n = 1;
        while i + n < l && cache.row(blocks, start + i + n) == row + n {
            n += 1;
        }
        pool.slice_set(&x.narrow(0, i, n)?.contiguous()?, 0, row)?;
        i += n;
    }
    Ok(())
}

/// Positions `lo..end` of the sequence from the layer's pool, as `[Hkv, S, D]`.
fn read_rows(
    cache: &KvCache,
    blocks: &[u32],
    lo: usize,
    end: usize,
    pool: &Tensor,
) -> Result<Tensor> {
    let first = cache.row(blocks, lo);
    let consecutive = (lo..end).all(|p| cache.row(blocks, p) == first + (p - lo));
    let rows = if consecutive {
        pool.narrow(0, first, end - lo)?
    } else {
        let idx: Vec<u32> = (lo..end).map(|p| cache.row(blocks, p) as u32).collect();
        pool.index_select(&Tensor::new(idx.as_slice(), pool.device())?, 0)?
    };
    Ok(rows.transpose(0, 1)?.contiguous()?)
}

/// The additive mask `[L, S]` for queries at `start..start + l` over keys `lo..end`: causal,
/// and within the sliding window (a key is seen while `query - key < window`). `None` when
/// every key is visible to every query.
fn mask(
    window: Option<usize>,
    start: usize,
    l: usize,
    lo: usize,
    end: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let visible = |q: usize, key: usize| key <= q && window.is_none_or(|w| q - key < w);
    let all = (0..l).all(|i| (lo..end).all(|j| visible(start + i, j)));
    if all {
        return Ok(None);
    }
    let mut m = Vec::with_capacity(l * (end - lo));
    for i in 0..l {
        for j in lo..end {
            m.push(if visible(start + i, j) {
                0f32
            } else {
                f32::NEG_INFINITY
            });
        }
    }
    Ok(Some(Tensor::from_vec(m, (l, end - lo), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let dev = Device::Cpu;
        // Decode without a window sees everything.
        assert!(mask(None, 5, 1, 0, 6, &dev).unwrap().is_none());
        // Prefill is causal.
        let m = mask(None, 0, 3, 0, 3, &dev)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][1], f32::NEG_INFINITY);
        assert_eq!(m[2], vec![0.0; 3]);
        // A window of 2: position 4 sees keys 3 and 4 only.
        let m = mask(Some(2), 4, 1, 3, 5, &dev).unwrap();
        assert!(m.is_none(), "lo already cuts the window for a single query");
        let m = mask(Some(2), 3, 2, 2, 5, &dev)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![f32::NEG_INFINITY, 0.0, 0.0]);
    }
}
