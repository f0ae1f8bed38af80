//! Random-weight Mixtral models for benchmarks: generated deterministically, written as
//! Hugging Face checkpoints (per-expert layout, one shard per layer), in bf16 and in f32 with the
//! same (bf16-exact) values, so that every engine computes on identical weights.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A small, fast deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-a, a).
    pub fn uniform(&mut self, a: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// `n` bf16 values, uniform with standard deviation `std`.
pub fn random_bf16(n: usize, std: f32, seed: u64) -> Vec<bf16> {
    let mut rng = Rng::new(seed);
    let a = std * 3f32.sqrt();
    (0..n).map(|_| bf16::from_f32(rng.uniform(a))).collect()
}

/// [`random_bf16`]'s values widened to f32 (activations, or weights to quantize).
pub fn random_f32(n: usize, std: f32, seed: u64) -> Vec<f32> {
    random_bf16(n, std, seed)
        .iter()
        .map(|v| v.to_f32())
        .collect()
}

/// The shape of a benchmark model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub experts: usize,
    pub top_k: usize,
    pub context: usize,
}

impl Shape {
    /// The CPU-sized model of the end-to-end bench.
    pub const CPU: Shape = Shape {
        vocab: 32000,
        hidden: 1024,
        intermediate: 3584,
        layers: 8,
        heads: 16,
        kv_heads: 4,
        experts: 8,
        top_k: 2,
        context: 4096,
    };

    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "vocab_size": self.vocab, "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "num_local_experts": self.experts, "num_experts_per_tok": self.top_k,
            "max_position_embeddings": self.context, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
            "sliding_window": self.context, "hidden_act": "silu", "tie_word_embeddings": false,
            "use_flash_attn": false, "bos_token_id": 1, "eos_token_id": 2
        })
    }

    /// The tensors of shard `s` (0 = embeddings, norm and head; 1..=layers = layer s-1).
    fn shard(&self, s: usize) -> Vec<(String, Vec<usize>)> {
        let (h, i, d) = (self.hidden, self.intermediate, self.hidden / self.heads);
        if s == 0 {
            return vec![
                ("model.embed_tokens.weight".into(), vec![self.vocab, h]),
                ("lm_head.weight".into(), vec![self.vocab, h]),
                ("model.norm.weight".into(), vec![h]),
            ];
        }
        let p = format!("model.layers.{}", s - 1);
        let mut t = vec![
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * d, h],
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * d, h],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * d, h],
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.heads * d],
            ),
            (
                format!("{p}.block_sparse_moe.gate.weight"),
                vec![self.experts, h],
            ),
        ];
        for e in 0..self.experts {
            let q = format!("{p}.block_sparse_moe.experts.{e}");
            t.push((format!("{q}.w1.weight"), vec![i, h]));
            t.push((format!("{q}.w2.weight"), vec![h, i]));
            t.push((format!("{q}.w3.weight"), vec![i, h]));
        }
        t
    }

    /// Writes `dir/config.json` and the checkpoint in `dtype` (bf16 or f32).
    pub fn write(&self, dir: &Path, f32_weights: bool) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.config_json())?,
        )?;
        let mut weight_map = serde_json::Map::new();
        let shards = self.layers + 1;
        for s in 0..shards {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
            let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
            for (k, (name, shape)) in self.shard(s).into_iter().enumerate() {
                let n: usize = shape.iter().product();
                let vals = if shape.len() == 1 {
                    vec![bf16::ONE; n] // norm weights
                } else {
                    random_bf16(n, 0.02, (s as u64) << 32 | k as u64)
                };
                let bytes: Vec<u8> = if f32_weights {
                    vals.iter().flat_map(|v| v.to_f32().to_le_bytes()).collect()
                } else {
                    vals.iter()
                        .flat_map(|v| v.to_bits().to_le_bytes())
                        .collect()
                };
                weight_map.insert(name.clone(), file.clone().into());
                bufs.push((name, shape, bytes));
            }
            let dtype = if f32_weights { Dtype::F32 } else { Dtype::BF16 };
            let views: HashMap<String, TensorView<'_>> = bufs
                .iter()
                .map(|(n, s, b)| Ok((n.clone(), TensorView::new(dtype, s.clone(), b)?)))
                .collect::<Result<_>>()?;
            safetensors::serialize_to_file(&views, None, &dir.join(&file))?;
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())?;
        Ok(())
    }
}

/// Peak and current resident memory of this process, in bytes (Linux `/proc/self/status`).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A serving engine on a bench checkpoint directory (kept in its own dtype, on the CPU, with a
/// 1 GiB KV cache), with Mixtral 8x7B's tokenizer: the bench checkpoints carry none, and any
/// 32000-token tokenizer decodes their ids.
pub fn bench_engine(dir: &Path) -> Result<bora_engine::Engine> {
    let opts = bora_engine::ModelOptions {
        tokenizer: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tokenizers/tokenizer.model.v1"),
        ),
        ..bora_engine::ModelOptions::default()
    };
    Ok(bora_engine::Engine::load(
        &bora_engine::ModelSource::Dir(dir.to_path_buf()),
        &opts,
        bora_engine::EngineConfig {
            kv_budget: bora_engine::KvBudget::Mib(1024),
            max_prefill_chunk: std::env::var("CHUNK")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(bora_engine::EngineConfig::default().max_prefill_chunk),
            ..bora_engine::EngineConfig::default()
        },
    )?)
}

/// Waits for a stream's end; returns the generated tokens and the time of its first delta.
pub fn drain(mut s: bora_engine::CompletionStream) -> (usize, Option<std::time::Instant>) {
    let mut first = None;
    let mut n = 0;
    while let Some(e) = s.next_blocking() {
        match e {
            bora_engine::Event::Delta { .. } if first.is_none() => {
                first = Some(std::time::Instant::now())
            }
            bora_engine::Event::Done { usage } => n = usage.completion_tokens,
            bora_engine::Event::Error { message } => panic!("{message}"),
            _ => {}
        }
    }
    (n, first)
}

/// Decode only, over concurrent streams: from the moment every stream has its first token (the
/// prompts are prefilled by then) to the end, counting the tokens after each first one.
/// Returns (tokens, seconds). Each stream is read on its own thread, so that its first token is
/// timed when it comes.
pub fn aggregate_decode(streams: Vec<bora_engine::CompletionStream>) -> Result<(usize, f64)> {
    let readers: Vec<_> = streams
        .into_iter()
        .map(|h| std::thread::spawn(move || drain(h)))
        .collect();
    let results: Vec<(usize, Option<std::time::Instant>)> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    let end = std::time::Instant::now();
    let from = results
        .iter()
        .filter_map(|r| r.1)
        .max()
        .ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    let tokens: usize = results.iter().map(|r| r.0.saturating_sub(1)).sum();
    Ok((tokens, end.duration_since(from).as_secs_f64()))
}
