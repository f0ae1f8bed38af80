//! The cost of constrained decoding: aggregate decode tokens/s with and without a JSON-schema
//! constraint, at batch 1 and 16, on the CPU-sized random Mixtral (benches/e2e.sh makes it).
//!
//!   constraint DIR    (DIR: a checkpoint directory, e.g. .cache/bench-model/bf16)
//!
//! Environment: REPEAT (rounds, default 3; each configuration's best round counts).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bora_engine::chat::ChatRequest;
use bora_engine::constrain::Constraint;
use bora_engine::{Completion, CompletionStream, Engine, EngineConfig, Event, KvBudget, Tokenizer};
use bora_model::Model;
use bora_weights::{LoadOptions, MapMode, MixtralWeights, SafetensorsStore};
use candle_core::Device;
use serde_json::json;

const GEN: usize = 96;

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: constraint DIR")?);
    let store = SafetensorsStore::open_dir(&dir, MapMode::Populate)?;
    let cfg = bora_core::ModelConfig::from_file(&dir.join("config.json"))?;
    let dtype = store.weight_dtype("model.embed_tokens.weight")?;
    let model = Model::new(MixtralWeights::load(
        &store,
        cfg,
        &LoadOptions::new(dtype, Device::Cpu),
    )?)?;
    drop(store);
    let tok = Tokenizer::from_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tokenizers/tokenizer.model.v1"),
    )?;
    let engine = Engine::new(
        model,
        tok,
        EngineConfig {
            kv_budget: KvBudget::Mib(1024),
            ..EngineConfig::default()
        },
    )?;
    // A schema whose strings are long enough that answers run to GEN tokens.
    let schema = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pages": {"type": "integer"},
        },
        "required": ["title", "tags", "pages"],
        "additionalProperties": false,
    });
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut best = [[0f64; 2]; 2]; // [batch 1, 16][free, constrained]
    for _ in 0..repeat {
        for (b, batch) in [1usize, 16].into_iter().enumerate() {
            for (c, constrained) in [false, true].into_iter().enumerate() {
                let rate = run(&engine, batch, constrained.then(|| schema.clone()))?;
                println!(
                    "batch {batch:>2}, {}: {rate:.1} tok/s",
                    if constrained { "JSON schema" } else { "free" }
                );
                best[b][c] = best[b][c].max(rate);
            }
        }
    }
    println!("best of {repeat}:");
    for (b, batch) in [1, 16].into_iter().enumerate() {
        println!(
            "batch {batch:>2}: free {:.1} tok/s, JSON schema {:.1} tok/s: the constraint costs {:.1}%",
            best[b][0],
            best[b][1],
            (1.0 - best[b][1] / best[b][0]) * 100.0
        );
    }
    Ok(())
}

/// Aggregate decode tokens/s of `batch` requests (counted after each one's first token).
fn run(engine: &Engine, batch: usize, schema: Option<serde_json::Value>) -> Result<f64> {
    let mut req = Completion::new(ChatRequest::default());
    req.max_tokens = Some(GEN);
    // Greedy: the sampler costs the same with and without the mask (at a temperature it sorts
    // the allowed tokens, which a mask makes fewer).
    req.sampling.temperature = 0.0;
    req.constraint = schema.map(Constraint::Json);
    let streams: Vec<CompletionStream> = (0..batch)
        .map(|i| {
            let mut r = req.clone();
            r.seed = Some(i as u64);
            engine.submit(vec![1, 1000 + i as u32, 2000, 3000], &r)
        })
        .collect::<Result<_, _>>()?;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let (mut first, mut n) = (None, 0);
                while let Some(e) = s.next_blocking() {
                    match e {
                        Event::Delta { .. } if first.is_none() => first = Some(Instant::now()),
                        Event::Done { usage } => n = usage.completion_tokens,
                        _ => {}
                    }
                }
                (n, first)
            })
        })
        .collect();
    let results: Vec<(usize, Option<Instant>)> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    let end = Instant::now();
    let from = results
        .iter()
        .filter_map(|r| r.1)
        .max()
        .context("no tokens")?;
    let tokens: usize = results.iter().map(|r| r.0.saturating_sub(1)).sum();
    Ok(tokens as f64 / end.duration_since(from).as_secs_f64())
}
