//! Attention of one-token (decode) steps on a CUDA device: all of a step's decode sequences
//! at once, in place over the paged KV cache (`bora_kernels::cuda::paged_decode`), instead of
//! a dozen small operations per sequence and layer. The tables it needs are made once per
//! forward pass.

use bora_core::ModelConfig;
use bora_kernels::cuda::{kv_write, paged_decode};
use candle_core::{DType, Device, Tensor};

use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::{Batch, Result};

/// The decode sequences of one step and where their keys and values live.
pub(crate) struct DeviceDecode {
    /// Indices in `batch.seqs` of the one-token sequences, in order.
    pub seqs: Vec<usize>,
    /// `[N]` u32: each one's row in the step's activations; `None` when they are all of them
    /// in order (a step of decode sequences only).
    rows: Option<Tensor>,
    /// `[N, D/2]`: the rotary tables at each one's position.
    cos: Tensor,
    sin: Tensor,
    /// `[N]` u32: the cache row its new key and value go to.
    kv_rows: Tensor,
    /// `[N, max blocks]` u32 block tables, and `[N]` u32 first and end positions attended to.
    tables: Tensor,
    lo: Tensor,
    end: Tensor,
}

impl DeviceDecode {
    /// The step's decode sequences on a CUDA device, or `None` where this path does not apply.
    pub fn new(
        batch: &Batch,
        cache: &KvCache,
        rope: &Rope,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Option<Self>> {
        // bora's kernels read the pool in the activations' dtype: another one takes candle's
        // ops, which convert the rows.
        let fits = device.is_cuda()
            && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
            && cache.dtype() == dtype
            && cfg.head_dim <= 256
            && cfg.num_key_value_heads > 0
            && cfg
                .num_attention_heads
                .is_multiple_of(cfg.num_key_value_heads);
        if !fits {
            return Ok(None);
        }
        let mut seqs = Vec::new();
        let (mut rows, mut pos, mut kv_rows, mut lo, mut end) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut at = 0u32;
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.tokens.len() == 1 {
                seqs.push(i);
                rows.push(at);
                pos.push(s.start_pos as u32);
                kv_rows.push(cache.row(&s.blocks, s.start_pos) as u32);
                lo.push(crate::attention::first_key(cfg.sliding_window, s.start_pos) as u32);
                end.push(s.start_pos as u32 + 1);
            }
            at += s.tokens.len() as u32;
        }
        if seqs.is_empty() {
            return Ok(None);
        }
        let stride = seqs
            .iter()
            .map(|&i| batch.seqs[i].blocks.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut tables = vec![0u32; seqs.len() * stride];
        for (row, &i) in tables.chunks_exact_mut(stride).zip(&seqs) {
            let b = &batch.seqs[i].blocks;
            row[..b.len()].copy_from_slice(b);
        }
        let n = seqs.len();
        let u32s = |v: &[u32]| Tensor::from_slice(v, v.len(), device);
        let (cos, sin) = rope.at(&u32s(&pos)?)?;
        let all = seqs.len() == batch.seqs.len();
        Ok(Some(Self {
            seqs,
            rows: if all { None } else { Some(u32s(&rows)?) },
            cos,
            sin,
            kv_rows: u32s(&kv_rows)?,
            tables: Tensor::from_vec(tables, (n, stride), device)?,
            lo: u32s(&lo)?,
            end: u32s(&end)?,
        }))
    }

    /// Layer `layer`'s attention for these sequences: their rows of `q`, `k`, `v`
    /// (`[T, H·D]`, before rotation) → `[N, Hq·D]`; their keys and values are written into
    /// the cache first.
    pub fn run(
        &self,
        cfg: &ModelConfig,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &KvCache,
    ) -> Result<Tensor> {
        let (hq, hkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let n = self.seqs.len();
        let pick = |x: &Tensor, h: usize| -> Result<Tensor> {
            let x = match &self.rows {
                Some(rows) => x.index_select(rows, 0)?,
                None => x.contiguous()?,
            };
            Ok(x.reshape((n, h, d))?)
        };
        let q = Rope::apply_at(&pick(q, hq)?, &self.cos, &self.sin)?;
        let k = Rope::apply_at(&pick(k, hkv)?, &self.cos, &self.sin)?;
        let v = pick(v, hkv)?;
        let kv = cache.layer(layer);
        kv_write(&kv.k, &k, &self.kv_rows)?;
        kv_write(&kv.v, &v, &self.kv_rows)?;
        let o = paged_decode(
            &q,
            &kv.k,
            &kv.v,
            &self.tables,
            &self.lo,
            &self.end,
            cache.block_size(),
            1.0 / (d as f32).sqrt(),
        )?;
        Ok(o.reshape((n, hq * d))?.to_dtype(q.dtype())?)
    }
}
