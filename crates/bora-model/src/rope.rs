//! Rotary position embeddings, in transformers' "rotate half" layout.

use bora_core::ModelConfig;
use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Cosine and sine tables for every position: `[max_pos, D/2]` each.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &ModelConfig, max_pos: usize, dtype: DType, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        // transformers computes inv_freq and the angles in float32.
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_pos * d / 2);
        let mut sin = Vec::with_capacity(max_pos * d / 2);
        for p in 0..max_pos {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, d / 2), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_pos, d / 2), device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates `x` `[1, heads, L, D]` (contiguous) for positions `start..start + L`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let l = x.dim(2)?;
        let cos = self.cos.narrow(0, start, l)?;
        let sin = self.sin.narrow(0, start, l)?;
        Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
    }
}
