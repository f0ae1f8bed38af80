//! Tensor names of a Mixtral checkpoint: an enum, mapped to Hugging Face's strings.
//!
//! Mistral's checkpoints (and transformers' `save_pretrained`) store each expert on its own:
//! `model.layers.N.block_sparse_moe.experts.E.w1/w2/w3.weight` with the router at
//! `block_sparse_moe.gate.weight`. transformers 5 holds them fused in memory and some tools save
//! that form: `model.layers.N.mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first),
//! `mlp.experts.down_proj` [E, H, I] and `mlp.gate.weight`.

/// How a checkpoint stores its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertLayout {
    /// `block_sparse_moe.experts.E.w1/w2/w3.weight`, one tensor per expert and projection.
    PerExpert,
    /// `mlp.experts.gate_up_proj` and `mlp.experts.down_proj`, stacked over experts.
    Fused,
}

/// One tensor of a Mixtral checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorName {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    MoeNorm(usize),
    Router(usize),
    /// Expert `e`'s gate projection (`w1`), per-expert layout.
    ExpertGate(usize, usize),
    /// Expert `e`'s down projection (`w2`), per-expert layout.
    ExpertDown(usize, usize),
    /// Expert `e`'s up projection (`w3`), per-expert layout.
    ExpertUp(usize, usize),
    /// All experts' gate and up projections, fused layout.
    FusedGateUp(usize),
    /// All experts' down projections, fused layout.
    FusedDown(usize),
}

impl TensorName {
    /// The Hugging Face name in a checkpoint of the given layout.
    pub fn hf(self, layout: ExpertLayout) -> String {
        use TensorName::*;
        let moe = match layout {
            ExpertLayout::PerExpert => "block_sparse_moe",
            ExpertLayout::Fused => "mlp",
        };
        match self {
            Embed => "model.embed_tokens.weight".into(),
            FinalNorm => "model.norm.weight".into(),
            LmHead => "lm_head.weight".into(),
            AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Q(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            K(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            V(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            O(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            MoeNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Router(l) => format!("model.layers.{l}.{moe}.gate.weight"),
            ExpertGate(l, e) => format!("model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight"),
            ExpertDown(l, e) => format!("model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight"),
            ExpertUp(l, e) => format!("model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight"),
            FusedGateUp(l) => format!("model.layers.{l}.mlp.experts.gate_up_proj"),
            FusedDown(l) => format!("model.layers.{l}.mlp.experts.down_proj"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_both_layouts() {
        assert_eq!(
            TensorName::ExpertUp(3, 7).hf(ExpertLayout::PerExpert),
            "model.layers.3.block_sparse_moe.experts.7.w3.weight"
        );
        assert_eq!(
            TensorName::Router(0).hf(ExpertLayout::Fused),
            "model.layers.0.mlp.gate.weight"
        );
        assert_eq!(
            TensorName::Router(0).hf(ExpertLayout::PerExpert),
            "model.layers.0.block_sparse_moe.gate.weight"
        );
    }
}
