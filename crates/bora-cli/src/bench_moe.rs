//! `bora bench-moe`: the MoE block alone on one layer of a Mixtral shape with random weights,
//! at several tokens per step, on any device: the same measurement as the criterion bench
//! `moe` (benches/benches/moe.rs: 8x7B's layer, 1 to 512 tokens, the expert weights read per
//! step), so that CPU and GPU figures compare.

use std::time::Instant;

use anyhow::{Context, Result};
use bora_core::DeviceSpec;
use bora_model::{moe_block, RoutingStats};
use bora_weights::{preset_config, random_weights, LoadOptions, WeightDType};

use crate::load::{parse_dtype, parse_qtype};
use candle_core::{DType, Tensor};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The layer's shape: mixtral-8x7b, mixtral-8x22b or demo.
    #[arg(long, default_value = "mixtral-8x7b")]
    shape: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dtype of dense weights and activations (default: bf16; f32 with --quantize).
    #[arg(long)]
    dtype: Option<String>,
    /// Weights in this ggml type instead (q8_0, q4_k, q6_k, ...), made on the device.
    #[arg(long, value_name = "TYPE")]
    quantize: Option<String>,
    /// Tokens per step, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,512")]
    tokens: Vec<usize>,
    /// Timed steps per size (after two untimed ones).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Time the block under these routing distributions instead of its router's: uniform,
    /// hot (one expert in every token's choice), trace:PATH (the expert sets of the most
    /// imbalanced layer of a `bora routes` trace, with their frequencies).
    #[arg(long, value_delimiter = ',')]
    skew: Vec<String>,
}

pub fn main(a: Args) -> Result<()> {
    let mut config = preset_config(&a.shape).with_context(|| {
        format!(
            "--shape {}: use mixtral-8x7b, mixtral-8x22b or demo",
            a.shape
        )
    })?;
    config.num_hidden_layers = 1;
    config.vocab_size = 256; // the embedding and LM head are not measured
    let device = a.device.parse::<DeviceSpec>()?.open()?;
    let quantize = a
        .quantize
        .as_deref()
        .map(|s| parse_qtype("--quantize", s))
        .transpose()?;
    let dtype = match a.dtype.as_deref() {
        Some(d) => parse_dtype(d)?,
        None if quantize.is_some() => WeightDType::F32,
        None => WeightDType::BF16,
    };
    let opts = LoadOptions {
        quantize,
        ..LoadOptions::new(dtype, device.clone())
    };
    let (h, e, k) = (
        config.hidden_size,
        config.num_local_experts,
        config.num_experts_per_tok,
    );
    let w = random_weights(config, &opts, 0x0e)?;
    let layer = &w.layers[0];
    let act = opts.activation_dtype();
    let weights = match quantize {
        Some(q) => q.name().to_string(),
        None => format!("{dtype:?}").to_lowercase(),
    };
    if !a.skew.is_empty() {
        let skews = a
            .skew
            .iter()
            .map(|s| crate::bench_skew::Skew::parse(s, k))
            .collect::<Result<Vec<_>>>()?;
        let runs = crate::bench_skew::run(&w, &skews, &a.tokens, a.iters, act, &device)?;
        return print_skew(&a, &weights, e, k, &runs);
    }
    let mut rows = Vec::new();
    for &t in &a.tokens {
        let x = Tensor::randn(0f32, 1.0, (t, h), &candle_core::Device::Cpu)?
            .to_dtype(act)?
            .to_device(&device)?;
        let mut stats = RoutingStats::new(1, e);
        moe_block(&layer.router, &layer.experts, k, &x, 0, Some(&mut stats))?;
        moe_block(&layer.router, &layer.experts, k, &x, 0, None)?;
        let hit = stats.counts[0].iter().filter(|&&n| n > 0).count();
        let bytes = (hit * layer.experts.expert_bytes() + layer.router.size_bytes()) as f64;
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..a.iters.max(1) {
            let y = moe_block(&layer.router, &layer.experts, k, &x, 0, None)?;
            std::hint::black_box(y.to_dtype(DType::F32)?);
        }
        device.synchronize()?;
        let step = start.elapsed().as_secs_f64() / a.iters.max(1) as f64;
        rows.push((t, step, hit, bytes / step));
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|&(t, step, hit, bw)| {
                json!({"tokens": t, "step_us": step * 1e6, "tokens_per_s": t as f64 / step,
                       "experts_hit": hit, "expert_bytes_per_s": bw})
            })
            .collect();
        let report = json!({"shape": a.shape, "device": a.device, "weights": weights, "runs": v});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "MoE block of {} ({} experts, top {k}), {weights} weights, on {}",
        a.shape, e, a.device
    );
    println!(
        "{:>6}  {:>10}  {:>12}  {:>6}  {:>16}",
        "tokens", "step µs", "tokens/s", "hit", "expert GB/s read"
    );
    for (t, step, hit, bw) in rows {
        println!(
            "{t:>6}  {:>10.1}  {:>12.1}  {hit:>6}  {:>16.1}",
            step * 1e6,
            t as f64 / step,
            bw / 1e9
        );
    }
    Ok(())
}

/// The skew runs: each size's step time under each distribution, against uniform's.
fn print_skew(
    a: &Args,
    weights: &str,
    e: usize,
    k: usize,
    runs: &[crate::bench_skew::SkewRun],
) -> Result<()> {
    let uniform = |t: usize| {
        runs.iter()
            .find(|r| r.tokens == t && r.skew == "uniform")
            .map(|r| r.step)
    };
    if a.json {
        let v: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({"skew": r.skew, "tokens": r.tokens, "step_us": r.step * 1e6,
                       "tokens_per_s": r.tokens as f64 / r.step, "experts_hit": r.hit,
                       "hottest_expert_tokens": r.hottest,
                       "vs_uniform": uniform(r.tokens).map(|u| u / r.step)})
            })
            .collect();
        let report = json!({"shape": a.shape, "device": a.device, "weights": weights, "runs": v});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "MoE block of {} ({e} experts, top {k}), {weights} weights, on {}, routing imposed",
        a.shape, a.device
    );
    println!(
        "{:<28}  {:>6}  {:>10}  {:>12}  {:>4}  {:>8}  {:>10}",
        "routing", "tokens", "step µs", "tokens/s", "hit", "hottest", "vs uniform"
    );
    for r in runs {
        println!(
            "{:<28}  {:>6}  {:>10.1}  {:>12.1}  {:>4}  {:>8}  {:>10}",
            r.skew,
            r.tokens,
            r.step * 1e6,
            r.tokens as f64 / r.step,
            r.hit,
            r.hottest,
            uniform(r.tokens)
                .map(|u| format!("{:.2}x", u / r.step))
                .unwrap_or_default()
        );
    }
    Ok(())
}
