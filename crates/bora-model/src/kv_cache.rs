//! The KV cache: a pool of fixed-size blocks, allocated up front and owned by the caller. A
//! sequence's positions live in the blocks of its block table (position `p` in row
//! `table[p / block_size] · block_size + p % block_size`), so sequences grow block by block and
//! may share full blocks (prefix caching).

use bora_core::ModelConfig;
use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// The pool dtype of a q8_0 KV cache: each head's `D` values of a position are `D / 32` ggml
/// `block_q8_0`s (an f16 scale, then 32 signed bytes), kept as bytes. Only bora's CPU
/// attention reads it (`decode.rs`), quantizing rows as they are written.
pub const KV_Q8_0: DType = DType::U8;

/// Bytes of one head's `d` values of one position in a pool of `dtype`.
fn head_bytes(d: usize, dtype: DType) -> usize {
    if dtype == KV_Q8_0 {
        d / 32 * 34
    } else {
        d * dtype.size_in_bytes()
    }
}

/// Keys and values of one layer: `[num_blocks · block_size, Hkv, D]` each.
#[derive(Debug)]
pub(crate) struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    num_blocks: usize,
    block_size: usize,
    /// Blocks per slot when the cache was made by [`KvCache::with_slots`].
    slot_blocks: usize,
}

impl KvCache {
    /// A pool of `num_blocks` blocks of `block_size` positions, zeroed.
    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Batch(
                "a KV cache needs at least one block of at least one position".into(),
            ));
        }
        if dtype == KV_Q8_0 && !cfg.head_dim.is_multiple_of(32) {
            return Err(ModelError::Batch(format!(
                "a q8_0 KV cache needs a head size that is a multiple of 32, not {}",
                cfg.head_dim
            )));
        }
        // A q8_0 pool holds each head's blocks as bytes.
        let shape = (
            num_blocks * block_size,
            cfg.num_key_value_heads,
            if dtype == KV_Q8_0 {
                head_bytes(cfg.head_dim, dtype)
            } else {
                cfg.head_dim
            },
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            num_blocks,
            block_size,
            slot_blocks: 0,
        })
    }

    /// A pool split into `slots` fixed regions of `max_len` positions, for callers that run a
    /// few sequences without a block allocator: [`KvCache::slot`] gives each one's table.
    pub fn with_slots(
        cfg: &ModelConfig,
        slots: usize,
        max_len: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let per_slot = max_len.div_ceil(block_size).max(1);
        let mut cache = Self::new(cfg, slots.max(1) * per_slot, block_size, dtype, device)?;
        cache.slot_blocks = per_slot;
        Ok(cache)
    }

    /// The block table of region `slot` of a cache made by [`KvCache::with_slots`].
    pub fn slot(&self, slot: usize) -> Vec<u32> {
        let n = self.slot_blocks;
        (slot * n..(slot + 1) * n).map(|b| b as u32).collect()
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes held by the cache.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes one block holds over all layers (keys and values).
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers
            * block_size
            * cfg.num_key_value_heads
            * head_bytes(cfg.head_dim, dtype)
    }

    /// The pool's dtype ([`KV_Q8_0`] for q8_0 blocks).
    pub fn dtype(&self) -> DType {
        self.layers.first().map_or(DType::F32, |l| l.k.dtype())
    }

    /// Checks that positions `0..end` fit the table and that its blocks exist.
    pub(crate) fn check(&self, blocks: &[u32], end: usize) -> Result<()> {
        if let Some(&b) = blocks.iter().find(|&&b| b as usize >= self.num_blocks) {
            return Err(ModelError::NoSuchBlock {
                block: b,
                blocks: self.num_blocks,
            });
        }
        let room = blocks.len() * self.block_size;
        if end > room {
            return Err(ModelError::ContextFull { end, max_len: room });
        }
        Ok(())
    }

    /// Cache row of position `p` of a sequence with block table `blocks`.
    pub(crate) fn row(&self, blocks: &[u32], p: usize) -> usize {
        blocks[p / self.block_size] as usize * self.block_size + p % self.block_size
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }
}
