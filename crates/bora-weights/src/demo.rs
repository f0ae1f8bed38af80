//! A small random-weight Mixtral written from a fixed seed: the demo model that `bora serve`
//! runs when no model is given, and that tests can use. Same architecture and tensor names as
//! Mixtral 8x7B (per-expert layout, bf16), with the 8x7B vocabulary (32000) and tied
//! embeddings, at 7.4M parameters (15 MB): any CPU runs it at interactive speed.

use std::path::Path;

use half::bf16;
use rand::{RngExt, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::{ExpertLayout, TensorName, WeightsError};

/// The demo's `config.json`.
pub const DEMO_CONFIG: &str = r#"{
  "architectures": ["MixtralForCausalLM"],
  "model_type": "mixtral",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 128,
  "intermediate_size": 256,
  "max_position_embeddings": 4096,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "num_hidden_layers": 4,
  "num_local_experts": 8,
  "num_experts_per_tok": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "vocab_size": 32000,
  "torch_dtype": "bfloat16"
}"#;

/// Writes `config.json` and `model.safetensors` of the demo model into `dir` (which must
/// exist): the same bytes for the same seed and vocabulary size (32000 for Mixtral 8x7B's
/// tokenizer, 32768 for 8x22B's).
pub fn write_demo_checkpoint(dir: &Path, seed: u64, vocab: usize) -> Result<(), WeightsError> {
    let (h, i, v, layers, experts, kv) = (128usize, 256usize, vocab, 4usize, 8usize, 64usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Uniform with the standard deviation of a 0.02 normal; norms at 1.
    let bound = 0.02f32 * 3f32.sqrt();
    let mut random = |n: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            // A uniform draw in [-bound, bound) from 24 random bits.
            let u = (rng.random::<u32>() >> 8) as f32 / (1u32 << 24) as f32;
            out.extend_from_slice(&bf16::from_f32((2.0 * u - 1.0) * bound).to_le_bytes());
        }
        out
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| bf16::ONE.to_le_bytes()).collect() };
    let name = |t: TensorName| t.hf(ExpertLayout::PerExpert);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (name(TensorName::Embed), vec![v, h], random(v * h)),
        (name(TensorName::FinalNorm), vec![h], ones(h)),
    ];
    for l in 0..layers {
        tensors.push((name(TensorName::AttnNorm(l)), vec![h], ones(h)));
        tensors.push((name(TensorName::MoeNorm(l)), vec![h], ones(h)));
        tensors.push((name(TensorName::Q(l)), vec![h, h], random(h * h)));
        tensors.push((name(TensorName::K(l)), vec![kv, h], random(kv * h)));
        tensors.push((name(TensorName::V(l)), vec![kv, h], random(kv * h)));
        tensors.push((name(TensorName::O(l)), vec![h, h], random(h * h)));
        tensors.push((
            name(TensorName::Router(l)),
            vec![experts, h],
            random(experts * h),
        ));
        for e in 0..experts {
            tensors.push((
                name(TensorName::ExpertGate(l, e)),
                vec![i, h],
                random(i * h),
            ));
            tensors.push((
                name(TensorName::ExpertDown(l, e)),
                vec![h, i],
                random(h * i),
            ));
            tensors.push((name(TensorName::ExpertUp(l, e)), vec![i, h], random(i * h)));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, shape, data)| {
            TensorView::new(Dtype::BF16, shape.clone(), data).map(|view| (n.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::Write {
            path: dir.to_path_buf(),
            reason: format!("demo tensors: {e}"),
        })?;
    let io = |e: &dyn std::fmt::Display| WeightsError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let config = DEMO_CONFIG.replace("\"vocab_size\": 32000", &format!("\"vocab_size\": {vocab}"));
    std::fs::write(dir.join("config.json"), config).map_err(|e| io(&e))?;
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .map_err(|e| io(&e))?;
    Ok(())
}
