//! The KV cache: preallocated per slot and layer, written by position, owned by the caller.

use bora_core::ModelConfig;
use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Keys and values of one layer of one slot: `[Hkv, max_len, D]` each.
#[derive(Debug)]
pub(crate) struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
}

/// Keys and values for `slots` sequences of up to `max_len` positions.
#[derive(Debug)]
pub struct KvCache {
    slots: Vec<Vec<LayerKv>>,
    max_len: usize,
}

impl KvCache {
    /// Allocates the whole cache up front, zeroed.
    pub fn new(
        cfg: &ModelConfig,
        slots: usize,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (cfg.num_key_value_heads, max_len, cfg.head_dim);
        let slots = (0..slots)
            .map(|_| {
                (0..cfg.num_hidden_layers)
                    .map(|_| {
                        Ok(LayerKv {
                            k: Tensor::zeros(shape, dtype, device)?,
                            v: Tensor::zeros(shape, dtype, device)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { slots, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held by the cache.
    pub fn size_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum()
    }

    pub(crate) fn check(&self, slot: usize, end: usize) -> Result<()> {
        if slot >= self.slots.len() {
            return Err(ModelError::NoSuchSlot {
                slot,
                slots: self.slots.len(),
            });
        }
        if end > self.max_len {
            return Err(ModelError::ContextFull {
                slot,
                end,
                max_len: self.max_len,
            });
        }
        Ok(())
    }

    pub(crate) fn layer(&self, slot: usize, layer: usize) -> &LayerKv {
        &self.slots[slot][layer]
    }
}
