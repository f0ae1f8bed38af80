//! A layer's experts. Legend: E experts, I intermediate size, H hidden size.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::Tensor;

use crate::HostMatrix;

/// The SwiGLU experts of one MoE layer: `down(silu(gate·x) * up·x)`.
#[derive(Debug, Clone)]
pub enum Experts {
    /// One matrix per expert and projection, each a view of the file's stacked or per-expert
    /// tensors: gate and up `[I, H]`, down `[H, I]`.
    Host {
        gate: Vec<HostMatrix>,
        up: Vec<HostMatrix>,
        down: Vec<HostMatrix>,
    },
    /// Stacked candle tensors: gate and up `[E, I, H]`, down `[E, H, I]`.
    Tensor {
        gate: Tensor,
        up: Tensor,
        down: Tensor,
    },
    /// Stacked ggml blocks in candle quantized tensors on a CUDA device: gate and up
    /// `[E, I, H]`, down `[E, H, I]` (candle's MoE GEMM and GEMV take them whole).
    Quant {
        gate: Arc<QTensor>,
        up: Arc<QTensor>,
        down: Arc<QTensor>,
    },
}

impl Experts {
    pub fn count(&self) -> usize {
        match self {
            Experts::Host { gate, .. } => gate.len(),
            Experts::Tensor { gate, .. } => gate.dims().first().copied().unwrap_or(0),
            Experts::Quant { gate, .. } => gate.shape().dims().first().copied().unwrap_or(0),
        }
    }

    /// Bytes of one expert's three matrices.
    pub fn expert_bytes(&self) -> usize {
        match self {
            Experts::Host { gate, up, down } => match gate.first() {
                Some(g) => g.size_bytes() + up[0].size_bytes() + down[0].size_bytes(),
                None => 0,
            },
            Experts::Tensor { gate, .. } => {
                let e = self.count().max(1);
                3 * gate.elem_count() / e * gate.dtype().size_in_bytes()
            }
            Experts::Quant { gate, up, down } => {
                let e = self.count().max(1);
                (gate.storage_size_in_bytes()
                    + up.storage_size_in_bytes()
                    + down.storage_size_in_bytes())
                    / e
            }
        }
    }
}
