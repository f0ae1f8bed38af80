//! The Mixtral model: embedding, decoder layers (attention, MoE), final norm, LM head.

use bora_core::ModelConfig;
use bora_weights::{Backend, Matrix, MixtralWeights};
use candle_core::{DType, Device, Tensor};

use std::sync::Arc;

use crate::attention::{attention, AttentionCtx};
use crate::expert_cache::{CachePolicy, CacheStats, ExpertCache, LayerUsage};
use crate::kv_cache::KvCache;
use crate::moe::{moe_layer, MoeStep, RoutingStats};
use crate::rope::Rope;
use crate::{Batch, ModelError, Result};

/// Positions per KV block unless the caller chooses.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// An immutable, shareable Mixtral model.
#[derive(Debug, Clone)]
pub struct Model {
    weights: MixtralWeights,
    rope: Rope,
    device: Device,
    dtype: DType,
    kv_dtype: DType,
    batch_invariant: bool,
    /// Device copies of host-placed experts (`--expert-cache`).
    expert_cache: Option<Arc<ExpertCache>>,
}

impl Model {
    pub fn new(weights: MixtralWeights) -> Result<Self> {
        let device = weights.options.device.clone();
        let dtype = weights.options.activation_dtype();
        let rope = Rope::new(&weights.config, weights.config.context(), dtype, &device)?;
        let kv_dtype = weights.options.kv_cache_dtype();
        // bora's CPU attention reads f32 or f16 keys and values; candle's attention multiplies
        // the queries (in the activations' dtype) with them directly.
        let supported = match weights.options.backend {
            Backend::Host => matches!(
                kv_dtype,
                DType::F32 | DType::F16 | DType::BF16 | crate::KV_Q8_0
            ),
            // Converted as rows are written and read where it differs from the activations'.
            Backend::Candle => matches!(kv_dtype, DType::F32 | DType::F16 | DType::BF16),
        };
        if !supported {
            let name = if kv_dtype == crate::KV_Q8_0 {
                "q8_0".to_string()
            } else {
                format!("{kv_dtype:?}").to_lowercase()
            };
            return Err(ModelError::Batch(format!(
                "a {name} KV cache is not supported here: bora's CPU kernels keep f32, f16, bf16 \
                 or q8_0, a GPU f32, f16 or bf16 (activations in {})",
                format!("{dtype:?}").to_lowercase()
            )));
        }
        // The weights were made on the loading thread's stream (CUDA's per-thread default
        // stream); forward passes run on the engine's thread: nothing else orders the two.
        device.synchronize()?;
        Ok(Self {
            weights,
            rope,
            device,
            dtype,
            kv_dtype,
            batch_invariant: false,
            expert_cache: None,
        })
    }

    /// Keeps device copies of up to `budget_bytes` of the experts that the placement left in
    /// host memory, chosen by `policy` as steps run ([`ExpertCache`]); `false` (and no cache)
    /// where no layer's experts are in host memory beside a device, or not one fits.
    pub fn set_expert_cache(&mut self, policy: CachePolicy, budget_bytes: u64) -> bool {
        self.expert_cache = ExpertCache::new(&self.weights, policy, budget_bytes).map(Arc::new);
        self.expert_cache.is_some()
    }

    /// The expert cache, if any.
    pub fn expert_cache(&self) -> Option<&ExpertCache> {
        self.expert_cache.as_deref()
    }

    /// What the expert cache has done so far.
    pub fn expert_cache_stats(&self) -> Option<CacheStats> {
        self.expert_cache.as_ref().map(|c| c.stats())
    }

    /// Layers whose experts are in host memory beside a model on a device.
    pub fn host_expert_layers(&self) -> usize {
        (0..self.weights.layers.len())
            .filter(|&l| self.experts_on_host(l))
            .count()
    }

    /// Whether layer `l`'s experts are in host memory beside a model on a device.
    pub fn experts_on_host(&self, l: usize) -> bool {
        self.weights
            .layers
            .get(l)
            .is_some_and(|l| l.experts_on_host())
    }

    /// Batch-invariant numerics: a sequence's logits are the same bits whatever else is in the
    /// step (how many sequences, its place among them, how other prompts are chunked, whether
    /// its own prompt is chunked), so that seeded sampling reproduces under load. On the CPU
    /// only: every product takes the dot-product kernels with a fixed summation order, and
    /// attention runs one query at a time over the pool (prefill as decode). Costs prefill
    /// speed; `bora bench --deterministic` measures it.
    pub fn set_batch_invariant(&mut self, on: bool) {
        self.batch_invariant = on;
    }

    /// Whether [`Model::set_batch_invariant`] is on.
    pub fn batch_invariant(&self) -> bool {
        self.batch_invariant
    }

    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    pub fn weights(&self) -> &MixtralWeights {
        &self.weights
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of the KV cache ([`bora_weights::LoadOptions::kv_cache_dtype`]).
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// A KV cache of `num_blocks` blocks of `block_size` positions, in [`Model::kv_dtype`].
    pub fn new_block_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        let cache = KvCache::new(
            self.config(),
            num_blocks,
            block_size,
            self.kv_dtype,
            &self.device,
        )?;
        // Zeroed on this thread's stream: done before another thread's forward pass reads it.
        self.device.synchronize()?;
        Ok(cache)
    }

    /// A KV cache for `slots` sequences of up to `max_len` positions (at most the model's
    /// context); [`KvCache::slot`] gives each one's block table.
    pub fn new_cache(&self, slots: usize, max_len: usize) -> Result<KvCache> {
        let max_len = max_len.min(self.config().context());
        let cache = KvCache::with_slots(
            self.config(),
            slots,
            max_len,
            DEFAULT_BLOCK_SIZE,
            self.kv_dtype,
            &self.device,
        )?;
        self.device.synchronize()?;
        Ok(cache)
    }

    /// One step over `batch`: logits `[R, V]` (f32) for the rows of `batch.logit_rows()`.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(batch, cache, None)
    }

    /// [`Model::forward`], also counting the tokens routed to each expert of each layer.
    pub fn forward_observed(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        stats: &mut RoutingStats,
    ) -> Result<Tensor> {
        self.forward_inner(batch, cache, Some(stats))
    }

    fn forward_inner(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        mut stats: Option<&mut RoutingStats>,
    ) -> Result<Tensor> {
        self.check(batch, cache)?;
        // The kernels read the mode from the thread that starts each product: this one.
        let _numerics = bora_kernels::batch_invariant_scope(self.batch_invariant);
        let cfg = self.config();
        let eps = cfg.rms_norm_eps as f32;
        let mut x = self.embed(batch)?; // [T, H]
        let resident = self.expert_cache.as_ref().map(|c| c.snapshot());
        let mut usage: Vec<LayerUsage> = match &resident {
            Some(r) => vec![LayerUsage::default(); r.len()],
            None => Vec::new(),
        };
        #[cfg(feature = "cuda")]
        let device_decode = crate::decode_cuda::DeviceDecode::new(
            batch,
            cache,
            &self.rope,
            cfg,
            &self.device,
            self.dtype,
        )?;
        for (i, lw) in self.weights.layers.iter().enumerate() {
            let ctx = AttentionCtx {
                cfg,
                rope: &self.rope,
                layer: i,
                invariant: self.batch_invariant,
                #[cfg(feature = "cuda")]
                device_decode: device_decode.as_ref(),
            };
            let h = candle_nn::ops::rms_norm(&x, &lw.attn_norm, eps)?;
            x = (x + attention(&ctx, lw, &h, batch, cache)?)?;
            let h = candle_nn::ops::rms_norm(&x, &lw.moe_norm, eps)?;
            let cache = match (&resident, usage.get_mut(i)) {
                (Some(r), Some(u)) if r.get(i).is_some_and(|r| !r.is_empty()) => Some((&r[i], u)),
                _ => None,
            };
            let mut step = MoeStep {
                a: cfg.num_experts_per_tok,
                layer: i,
                stats: stats.as_deref_mut(),
                cache,
            };
            let m = moe_layer(&lw.router, &lw.experts, &h, &mut step)?;
            x = (x + m)?;
        }
        if let Some(s) = stats {
            s.flush()?;
        }
        // Between steps: the cache's moves for the next one.
        if let Some(c) = &self.expert_cache {
            c.end_step(&self.weights, &usage)?;
        }
        let rows = batch.logit_rows();
        let v = cfg.vocab_size;
        if rows.is_empty() {
            return Ok(Tensor::zeros((0, v), DType::F32, &self.device)?);
        }
        let rows = Tensor::new(
            rows.iter()
                .map(|&r| r as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &self.device,
        )?;
        let x = x.index_select(&rows, 0)?; // [R, H]
        let x = candle_nn::ops::rms_norm(&x, &self.weights.final_norm, eps)?;
        Ok(self.weights.lm_head.forward(&x)?.to_dtype(DType::F32)?) // [R, V]
    }

    fn check(&self, batch: &Batch, cache: &KvCache) -> Result<()> {
        let vocab = self.config().vocab_size;
        for s in &batch.seqs {
            cache.check(&s.blocks, s.start_pos + s.tokens.len())?;
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::TokenOutOfRange { id, vocab });
            }
        }
        if batch.num_tokens() == 0 {
            return Err(ModelError::Batch("no tokens".into()));
        }
        Ok(())
    }

    /// `[T, H]` embeddings of the step's tokens.
    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let ids: Vec<u32> = batch
            .seqs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let h = self.config().hidden_size;
        match &self.weights.embed {
            Matrix::Host(m) => {
                let mut out = vec![0f32; ids.len() * h];
                for (row, &id) in out.chunks_exact_mut(h).zip(&ids) {
                    m.row_f32(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), h), &self.device)?)
            }
            Matrix::Tensor(t) => {
                let ids = Tensor::new(ids.as_slice(), &self.device)?;
                Ok(t.index_select(&ids, 0)?.to_dtype(self.dtype)?)
            }
            Matrix::Quant(q) => {
                let ids = Tensor::new(ids.as_slice(), &self.device)?;
                Ok(q.embedding(&ids)?.to_dtype(self.dtype)?)
            }
        }
    }
}
