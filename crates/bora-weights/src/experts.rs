//! A layer's experts. Legend: E experts, I intermediate size, H hidden size.

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
}

impl Experts {
    pub fn count(&self) -> usize {
        match self {
            Experts::Host { gate, .. } => gate.len(),
            Experts::Tensor { gate, .. } => gate.dims().first().copied().unwrap_or(0),
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
        }
    }
}
