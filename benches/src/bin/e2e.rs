//! End-to-end bench: prefill and greedy decode on the CPU-sized random Mixtral, bora against
//! candle-transformers. Each engine runs in its own process (so peak memory is its own); the
//! script benches/e2e.sh runs them all in one go and prints the ratios.
//!
//!   e2e gen DIR                      write DIR/bf16 and DIR/f32 (same values)
//!   e2e bora DIR/bf16 [--dtype D]    bora, weights kept in D (default: the file's)
//!   e2e candle DIR/f32               candle_transformers::models::mixtral, f32
//!
//! Each run prints one JSON line: prefill and decode tokens/s, peak resident memory, the
//! checkpoint's size, and the greedy tokens (which must agree across engines).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_benches::{memory, Shape};
use bora_model::{Batch, Logits, Model};
use bora_weights::WeightDType;
use candle_core::{DType, Device, Tensor};

const PROMPT: usize = 128;
const DECODE: usize = 128;

/// Decode steps: 128, or `E2E_DECODE` (for profiling prefill alone).
fn decode_steps() -> usize {
    std::env::var("E2E_DECODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DECODE)
}

fn prompt(vocab: usize) -> Vec<u32> {
    let mut rng = bora_benches::Rng::new(42);
    (0..PROMPT)
        .map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b as u32
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".safetensors") {
            n += e.metadata()?.len();
        }
    }
    Ok(n)
}

fn report(engine: &str, dir: &Path, prefill_s: f64, decode_s: f64, tokens: &[u32]) -> Result<()> {
    let (peak, rss) = memory();
    // Weight bytes one decode step reads: the active parameters, in the dtype computed on.
    let cfg = bora_core::ModelConfig::from_file(&dir.join("config.json"))?;
    let param_bytes = if engine.ends_with("bf16") { 2 } else { 4 };
    let step_bytes = cfg.active_param_count() * param_bytes;
    let v = serde_json::json!({
        "engine": engine,
        "prefill_tok_s": PROMPT as f64 / prefill_s,
        "decode_tok_s": decode_steps() as f64 / decode_s,
        "decode_gb_s": (decode_steps() as u64 * step_bytes) as f64 / decode_s / 1e9,
        "peak_rss_bytes": peak, "rss_bytes": rss,
        "checkpoint_bytes": dir_size(dir)?,
        "tokens": tokens,
    });
    println!("{v}");
    Ok(())
}

fn run_bora(dir: &Path, dtype: Option<&str>) -> Result<()> {
    let dtype = match dtype {
        Some(d @ ("f32" | "bf16")) => Some(d.parse::<bora_core::DTypeSpec>()?),
        Some(d) => bail!("unknown dtype {d}"),
        None => None,
    };
    // The weights alone: the bench checkpoints carry no tokenizer.
    let opts = bora_engine::ModelOptions {
        dtype,
        ..bora_engine::ModelOptions::default()
    };
    let source = bora_engine::ModelSource::Dir(dir.to_path_buf());
    let model = Model::new(bora_engine::load::load_weights(
        &source,
        &opts,
        true,
        &mut |_| {},
    )?)?;
    let ids = prompt(model.config().vocab_size);
    let mut cache = model.new_cache(1, PROMPT + DECODE + 1)?;
    let forward = |cache: &mut bora_model::KvCache, toks: Vec<u32>, pos| -> Result<u32> {
        let out = model.forward(
            &Batch::single(toks, pos, cache.slot(0), Logits::Last),
            cache,
        )?;
        Ok(argmax(&out.to_vec2::<f32>()?[0]))
    };
    let t = Instant::now();
    let mut tok = forward(&mut cache, ids.clone(), 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let mut tokens = vec![tok];
    let t = Instant::now();
    for i in 0..decode_steps() {
        tok = forward(&mut cache, vec![tok], PROMPT + i)?;
        tokens.push(tok);
    }
    let decode = t.elapsed().as_secs_f64();
    let name = format!(
        "bora-{}",
        if model.weights().options.dtype == WeightDType::F32 {
            "f32"
        } else {
            "bf16"
        }
    );
    report(&name, dir, prefill, decode, &tokens)
}

fn run_candle(dir: &Path) -> Result<()> {
    use candle_transformers::models::mixtral::{Config, Model};
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    files.sort();
    let dev = Device::Cpu;
    // SAFETY: the files are not modified while mapped.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &dev)? };
    let mut model = Model::new(&cfg, vb)?;
    let ids = prompt(32000);
    let last =
        |t: Tensor| -> Result<u32> { Ok(argmax(&t.squeeze(0)?.squeeze(0)?.to_vec1::<f32>()?)) };
    let t = Instant::now();
    let mut tok = last(model.forward(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, 0)?)?;
    let prefill = t.elapsed().as_secs_f64();
    let mut tokens = vec![tok];
    let t = Instant::now();
    for i in 0..decode_steps() {
        tok = last(model.forward(&Tensor::new(&[tok], &dev)?.unsqueeze(0)?, PROMPT + i)?)?;
        tokens.push(tok);
    }
    let decode = t.elapsed().as_secs_f64();
    report("candle-f32", dir, prefill, decode, &tokens)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.get(1)
            .context("usage: e2e gen|bora|candle DIR [--dtype D]")?,
    );
    match args[0].as_str() {
        "gen" => {
            Shape::CPU.write(&dir.join("bf16"), false)?;
            Shape::CPU.write(&dir.join("f32"), true)
        }
        "bora" => run_bora(
            &dir,
            args.iter()
                .position(|a| a == "--dtype")
                .and_then(|i| args.get(i + 1))
                .map(|s| s.as_str()),
        ),
        "candle" => run_candle(&dir),
        other => bail!("unknown command {other}"),
    }
}
