//! Serving bench on the CPU-sized random Mixtral (benches/e2e.sh generates it): aggregate decode
//! tokens/s with 1, 4 and 16 concurrent streams, and the time to first token of a short request
//! that arrives while a 2,000-token prompt is being prefilled.
//!
//!   serving DIR    (DIR: a checkpoint directory, e.g. .cache/bench-model/bf16)
//!
//! Environment: STREAMS (a list such as 1,16: only those, no TTFT run), REPEAT (rounds, default
//! 3), CHUNK (max_prefill_chunk), BORA_CPU_ISA (avx2 or scalar: cap the kernels' instruction set).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bora_benches::{drain, Rng};
use bora_engine::chat::ChatRequest;
use bora_engine::{Completion, CompletionStream, Event};

const GEN: usize = 64;

fn prompt(rng: &mut Rng, len: usize) -> Vec<u32> {
    let mut p = vec![1];
    p.extend((1..len).map(|_| 3 + (rng.next_u64() % 31_000) as u32));
    p
}

fn request(max_tokens: usize) -> Completion {
    Completion {
        max_tokens: Some(max_tokens),
        ..Completion::new(ChatRequest::default())
    }
}

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: serving DIR")?);
    let engine = bora_benches::bench_engine(&dir)?;
    let mut rng = Rng::new(5);

    // Warm-up (page faults, allocations).
    drain(engine.submit(prompt(&mut rng, 16), &request(4))?);

    // The machine is shared and noisy: each stream count runs REPEAT times (default 3),
    // interleaved with the others, and its best run counts.
    let list: Vec<usize> = std::env::var("STREAMS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1, 4, 16]);
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut per_stream: Vec<(usize, f64, f64)> =
        list.iter().map(|&s| (s, 0.0, f64::INFINITY)).collect();
    for _ in 0..repeat {
        for entry in per_stream.iter_mut() {
            let streams = entry.0;
            let handles: Vec<CompletionStream> = (0..streams)
                .map(|_| engine.submit(prompt(&mut rng, 16), &request(GEN)))
                .collect::<Result<_, _>>()?;
            let (tokens, secs) = bora_benches::aggregate_decode(handles)?;
            let rate = tokens as f64 / secs;
            println!("{streams:>2} streams: {tokens} decode tokens in {secs:.2} s = {rate:.1} tok/s aggregate");
            if rate > entry.1 {
                *entry = (streams, rate, secs * 1e3 / (GEN - 1) as f64);
            }
        }
    }
    let one = per_stream[0].1;
    let step_ms = per_stream[0].2;
    println!("best of {repeat} runs:");
    for (s, rate, _) in &per_stream {
        println!(
            "{s:>2} streams: {rate:.1} tok/s, {:.2}x the aggregate tokens/s of one stream",
            rate / one
        );
    }

    if std::env::var("STREAMS").is_ok() {
        return Ok(());
    }
    // A short request arriving while a 2,000-token prompt is being prefilled.
    let long = engine.submit(prompt(&mut rng, 2000), &request(1))?;
    let started = Instant::now();
    let long_thread = std::thread::spawn(move || drain(long));
    // Let the long prefill get going.
    std::thread::sleep(Duration::from_millis(1500));
    let steps_before = engine.stats().steps;
    let arrival = Instant::now();
    let mut short = engine.submit(prompt(&mut rng, 16), &request(4))?;
    let (ttft, steps) = loop {
        match short.next_blocking() {
            Some(Event::Delta { .. }) => {
                break (arrival.elapsed(), engine.stats().steps - steps_before)
            }
            Some(Event::Error { message }) => anyhow::bail!(message),
            Some(_) => {}
            None => anyhow::bail!("the short request produced no text"),
        }
    };
    drain(short);
    let (_, long_first) = long_thread.join().expect("long request");
    let long_total = long_first
        .map(|t| t.duration_since(started))
        .unwrap_or_default();
    println!(
        "short request during a 2,000-token prefill: first token after {:.0} ms ({} engine steps; \
         {:.1} single-stream decode steps of {step_ms:.1} ms); the long prompt's first token came after {:.1} s",
        ttft.as_secs_f64() * 1e3,
        steps,
        ttft.as_secs_f64() * 1e3 / step_ms,
        long_total.as_secs_f64()
    );
    Ok(())
}
