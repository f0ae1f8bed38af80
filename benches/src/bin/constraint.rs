//! The cost of constrained decoding: aggregate decode tokens/s with and without a JSON-schema
//! constraint, at batch 1 and 16, on the CPU-sized random Mixtral (benches/e2e.sh makes it).
//!
//!   constraint DIR    (DIR: a checkpoint directory, e.g. .cache/bench-model/bf16)
//!
//! Environment: REPEAT (rounds, default 3; each configuration's best round counts).

use std::path::PathBuf;

use anyhow::{Context, Result};
use bora_engine::chat::ChatRequest;
use bora_engine::{Completion, CompletionStream, Engine};
use serde_json::json;

const GEN: usize = 96;

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: constraint DIR")?);
    let engine = bora_benches::bench_engine(&dir)?;
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
    req.response_format = schema;
    let streams: Vec<CompletionStream> = (0..batch)
        .map(|i| {
            let mut r = req.clone();
            r.seed = Some(i as u64);
            engine.submit(vec![1, 1000 + i as u32, 2000, 3000], &r)
        })
        .collect::<Result<_, _>>()?;
    let (tokens, secs) = bora_benches::aggregate_decode(streams)?;
    Ok(tokens as f64 / secs)
}
