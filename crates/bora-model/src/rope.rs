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
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the CUDA decode path's
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    /// Rotates `x` `[N, heads, D]` (contiguous), token `i` at position `positions[i]`, with
    /// the tables [`Rope::at`] gave for them: decode steps of several sequences at once.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn apply_at(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        // [1, N, heads, D]: candle's rope over (batch, time, head, dim), one row of the tables
        // per token.
        Ok(candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)?)
    }

    /// Rotates `x` `[1, heads, L, D]` (contiguous) for positions `start..start + L`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let l = x.dim(2)?;
        let cos = self.cos.narrow(0, start, l)?;
        let sin = self.sin.narrow(0, start, l)?;
        Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens at their own positions, all at once, equal each rotated alone.
    #[test]
    fn apply_at_rotates_each_token_at_its_position() {
        let cfg = bora_weights::preset_config("demo").unwrap();
        let rope = Rope::new(&cfg, 64, DType::F32, &Device::Cpu).unwrap();
        let (h, d) = (3, cfg.head_dim);
        let pos = [5u32, 0, 63, 17];
        let x = Tensor::randn(0f32, 1.0, (pos.len(), h, d), &Device::Cpu).unwrap();
        let (cos, sin) = rope
            .at(&Tensor::new(&pos[..], &Device::Cpu).unwrap())
            .unwrap();
        let all = Rope::apply_at(&x, &cos, &sin).unwrap();
        for (i, &p) in pos.iter().enumerate() {
            let one = x
                .narrow(0, i, 1)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap();
            let one = rope.apply(&one.unsqueeze(0).unwrap(), p as usize).unwrap(); // [1, h, 1, D]
            let one = one.squeeze(0).unwrap().transpose(0, 1).unwrap(); // [1, h, D]
            let diff = (all.narrow(0, i, 1).unwrap() - one)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "token {i} at {p}: {diff}");
        }
    }
}
