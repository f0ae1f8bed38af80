//! Rotary position embeddings, in transformers' "rotate half" layout.

use bora_core::ModelConfig;
use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Cosine and sine tables for every position: `[max_pos, D/2]` each.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables as host f32 values, for the CPU decode kernel (f32 on the CPU only).
    host: Option<(Vec<f32>, Vec<f32>)>,
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
        let host = (device.is_cpu() && dtype == DType::F32).then(|| (cos.clone(), sin.clone()));
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, d / 2), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_pos, d / 2), device)?.to_dtype(dtype)?,
            host,
        })
    }

    /// The host tables `[max_pos · D/2]` (cos, sin), where the model runs in f32 on the CPU.
    pub fn host(&self) -> Option<(&[f32], &[f32])> {
        self.host
            .as_ref()
            .map(|(c, s)| (c.as_slice(), s.as_slice()))
    }

    /// Rotates one head `x` (`D` values) at position `pos` in place, with host tables.
    pub fn rotate(cos: &[f32], sin: &[f32], pos: usize, x: &mut [f32]) {
        let half = x.len() / 2;
        let (c, s) = (
            &cos[pos * half..(pos + 1) * half],
            &sin[pos * half..(pos + 1) * half],
        );
        for i in 0..half {
            let (x1, x2) = (x[i], x[i + half]);
            x[i] = x1 * c[i] - x2 * s[i];
            x[i + half] = x2 * c[i] + x1 * s[i];
        }
    }

    /// The tables at `positions` (`[N]` u32 on the device): `([N, D/2], [N, D/2])`.
    #[cfg(feature = "cuda")]
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    /// Rotates `x` `[1, heads, L, D]` (contiguous) for positions `start..start + L`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let l = x.dim(2)?;
        let cos = self.cos.narrow(0, start, l)?;
        let sin = self.sin.narrow(0, start, l)?;
        Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
    }
}
