//! `bora bench`: prefill and decode throughput by batch size, time to first token, peak memory
//! and expert routing balance, on any model source.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bora_engine::chat::ChatRequest;
use bora_engine::{
    Completion, CompletionStream, Engine, EngineConfig, Event, ForbidTokens, ProcessorFactory,
};
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

use crate::bench_predict::PredictionBench;
use crate::load::ModelArgs;
use crate::routes::TraceFile;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens generated per request (end-of-sequence is masked, so every request makes them all).
    #[arg(long, default_value_t = 128)]
    gen_len: usize,
    /// Concurrent requests, one run per entry.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch: Vec<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Batch-invariant numerics, as `serve --deterministic` runs them (to measure their cost).
    #[arg(long)]
    deterministic: bool,
    /// Also predicted outputs at batch 1: plain decoding against the answer itself as the
    /// prediction and against a wrong one, interleaved, greedy.
    #[arg(long)]
    prediction: bool,
    /// Also a routing report of the bench's tokens in this directory (as `bora routes
    /// --report` writes one): summary.json, figures as PNG and SVG, report.html; and
    /// trace.parquet, the serving engine's routing of every token it ran, prompt and generated
    /// (the columns of `bora routes`, without probs; `sequence` is the request's id).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

struct Run {
    batch: usize,
    prefill_tps: f64,
    decode_tps: f64,
    ttft: Vec<Duration>,
}

pub fn main(a: Args) -> Result<()> {
    if a.prompt_len == 0 || a.gen_len < 2 || a.batch.contains(&0) {
        bail!(
            "--prompt-len must be at least 1, --gen-len at least 2, and every --batch at least 1"
        );
    }
    let loaded = a.model.load()?;
    // Before any buffer of the bench's own: the memory the loaded model holds at its peak.
    let loaded_peak = crate::load::peak_resident_bytes();
    let cfg = loaded.model.config().clone();
    if a.prompt_len + a.gen_len > cfg.context() {
        bail!(
            "--prompt-len {} + --gen-len {} exceed the model's context of {} tokens",
            a.prompt_len,
            a.gen_len,
            cfg.context()
        );
    }
    let eos = cfg.eos_token_ids.clone();
    let max_batch = a.batch.iter().copied().max().unwrap_or(1);
    let device = loaded.model.device().clone();
    let mut bound = MemoryBound::measure(&loaded.model)?;
    let host_layers: Vec<bool> = (0..cfg.num_hidden_layers)
        .map(|l| loaded.model.experts_on_host(l))
        .collect();
    let expert_bytes = loaded
        .model
        .weights()
        .layers
        .first()
        .map_or(0, |l| l.experts.expert_bytes());
    // With --report, every step's routing goes to a summary and to DIR/trace.parquet on a
    // thread of its own.
    let (route_trace, summary) = match &a.report {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", crate::load::shown(dir)))?;
            let mut file =
                TraceFile::create(&dir.join("trace.parquet"), false, cfg.num_local_experts)?;
            let (tx, rx) = std::sync::mpsc::channel::<bora_engine::StepRoutes>();
            let (layers, experts) = (cfg.num_hidden_layers, cfg.num_local_experts);
            let window = (a.batch.iter().sum::<usize>() * (a.prompt_len + a.gen_len) / 100).max(16);
            let t = std::thread::spawn(move || -> Result<bora_engine::RouteSummary> {
                let mut s = bora_engine::RouteSummary::new(layers, experts, window as u64);
                for step in rx {
                    s.add(&step);
                    file.write(step)?;
                }
                file.close()?;
                Ok(s)
            });
            (Some(tx), Some(t))
        }
        None => (None, None),
    };
    let engine = Engine::new(
        loaded.model,
        loaded.tokenizer,
        EngineConfig {
            max_running: max_batch.max(EngineConfig::default().max_running),
            deterministic: a.deterministic,
            route_trace,
            ..EngineConfig::default()
        },
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut prompt = |len: usize| -> Vec<u32> {
        let mut p: Vec<u32> = cfg.bos_token_id.into_iter().collect();
        while p.len() < len {
            // Ids above the control and byte tokens.
            p.push(rng.random_range(300..cfg.vocab_size as u32));
        }
        p
    };
    let mut request = Completion::new(ChatRequest::default());
    request.max_tokens = Some(a.gen_len);
    let no_eos = eos.clone();
    request.processors = vec![ProcessorFactory::new(move || {
        Box::new(ForbidTokens(no_eos.clone()))
    })];

    // Warm-up: page faults, allocations, thread pools.
    drain(engine.submit(prompt(8.min(a.prompt_len)), &request)?)?;
    let routed_before = engine.stats().expert_tokens;

    let mut runs = Vec::new();
    for &batch in &a.batch {
        let started = Instant::now();
        let streams: Vec<CompletionStream> = (0..batch)
            .map(|_| engine.submit(prompt(a.prompt_len), &request))
            .collect::<Result<_, _>>()
            .context("cannot submit the bench requests")?;
        let readers: Vec<_> = streams
            .into_iter()
            .map(|s| std::thread::spawn(move || drain(s)))
            .collect();
        let mut firsts = Vec::new();
        let mut generated = 0;
        for r in readers {
            let (n, first) = r.join().map_err(|_| anyhow::anyhow!("a reader failed"))??;
            generated += n.saturating_sub(1);
            firsts.push(first.context("a request produced no token")?);
        }
        let end = Instant::now();
        let all_first = firsts.iter().max().copied().unwrap_or(end);
        runs.push(Run {
            batch,
            prefill_tps: (batch * a.prompt_len) as f64
                / all_first.duration_since(started).as_secs_f64(),
            decode_tps: generated as f64 / end.duration_since(all_first).as_secs_f64().max(1e-9),
            ttft: firsts.iter().map(|f| f.duration_since(started)).collect(),
        });
    }

    let prediction = if a.prediction {
        let (p, other) = (prompt(a.prompt_len), prompt(a.prompt_len));
        Some(PredictionBench::run(&engine, &p, &other, &request)?)
    } else {
        None
    };

    let stats_after = engine.stats();
    // The engine's end closes the trace: the summary has every step.
    drop(engine);
    if let (Some(dir), Some(summary)) = (&a.report, summary) {
        let summary = summary
            .join()
            .map_err(|_| anyhow::anyhow!("the routing summary failed"))??;
        let name = a
            .model
            .model
            .clone()
            .unwrap_or_else(|| bora_engine::DEMO_MODEL_NAME.into());
        crate::report::write_report(
            dir,
            &format!("Expert routing of bora bench on {name}"),
            &summary.numbers(),
        )
        .with_context(|| format!("writing the report into {}", dir.display()))?;
        eprintln!("report: {}", dir.join("report.html").display());
    }
    let routed_after = stats_after.expert_tokens.clone();
    let mut placement = Placement::of(&host_layers, &routed_after, stats_after.expert_cache);
    placement.expert_bytes = expert_bytes;
    let experts: Vec<(Vec<f64>, f64)> = routed_after
        .iter()
        .zip(routed_before.iter().chain(std::iter::repeat(&Vec::new())))
        .map(|(after, before)| {
            let counts: Vec<f64> = after
                .iter()
                .enumerate()
                .map(|(e, &c)| (c - before.get(e).copied().unwrap_or(0)) as f64)
                .collect();
            let total: f64 = counts.iter().sum();
            let share: Vec<f64> = counts.iter().map(|c| c / total.max(1.0)).collect();
            let mean = total / counts.len().max(1) as f64;
            let max = counts.iter().copied().fold(0.0, f64::max);
            (share, if mean > 0.0 { max / mean } else { 0.0 })
        })
        .collect();
    let peak = crate::load::peak_resident_bytes();
    // Measured again after the runs, the better of the two counting: a neighbour's load
    // during one short measurement would otherwise lower the bound below what decode reached.
    bound.bandwidth = bound.bandwidth.max(memory_bandwidth(&device)?.0);

    if a.json {
        let report = json!({
            "model": a.model.model.clone().unwrap_or_else(|| bora_engine::DEMO_MODEL_NAME.into()),
            "prompt_len": a.prompt_len,
            "gen_len": a.gen_len,
            "runs": runs.iter().map(|r| json!({
                "batch": r.batch,
                "prefill_tokens_per_s": r.prefill_tps,
                "decode_tokens_per_s": r.decode_tps,
                "ttft_ms": {"median": ms(median(&r.ttft)), "max": ms(r.ttft.iter().max().copied().unwrap_or_default())},
            })).collect::<Vec<Value>>(),
            "peak_memory_bytes": peak,
            "loaded_peak_memory_bytes": loaded_peak,
            "device": bound.device,
            "active_weight_bytes_per_token": bound.active_bytes,
            "memory_bandwidth_bytes_per_s": bound.bandwidth,
            "memory_bandwidth_method": bound.method,
            "decode_bound_tokens_per_s": bound.tokens_per_s(),
            "batch1_decode_fraction_of_bound": runs.iter().find(|r| r.batch == 1)
                .map(|r| r.decode_tps / bound.tokens_per_s()),
            "experts": experts.iter().enumerate().map(|(l, (share, imb))| json!({
                "layer": l, "share": share, "imbalance": imb,
            })).collect::<Vec<Value>>(),
            "placement": placement.json(),
            "prediction": prediction.as_ref().map(PredictionBench::json),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "prompt {} tokens, {} generated per request",
        a.prompt_len, a.gen_len
    );
    println!(
        "{:>5}  {:>14}  {:>13}  {:>16}  {:>13}",
        "batch", "prefill tok/s", "decode tok/s", "TTFT median ms", "TTFT max ms"
    );
    for r in &runs {
        println!(
            "{:>5}  {:>14.1}  {:>13.1}  {:>16.1}  {:>13.1}",
            r.batch,
            r.prefill_tps,
            r.decode_tps,
            ms(median(&r.ttft)),
            ms(r.ttft.iter().max().copied().unwrap_or_default())
        );
    }
    println!(
        "peak memory: {:.1} MiB ({:.1} MiB once loaded)",
        peak as f64 / (1u64 << 20) as f64,
        loaded_peak as f64 / (1u64 << 20) as f64
    );
    println!(
        "memory bound on {}: {:.1} MB of weights read per decoded token (attention, router, {} experts per layer, LM head), {:.1} GB/s measured {}: {:.1} tokens/s at batch 1{}",
        bound.device,
        bound.active_bytes as f64 / 1e6,
        cfg.num_experts_per_tok,
        bound.bandwidth / 1e9,
        bound.method,
        bound.tokens_per_s(),
        match runs.iter().find(|r| r.batch == 1) {
            Some(r) => format!(", reached {:.0}%", 100.0 * r.decode_tps / bound.tokens_per_s()),
            None => String::new(),
        }
    );
    println!("expert routing: share of each layer's tokens per expert; imbalance = max / mean");
    for (l, (share, imb)) in experts.iter().enumerate() {
        let cells: Vec<String> = share
            .iter()
            .map(|s| format!("{:5.1}%", s * 100.0))
            .collect();
        println!("  layer {l:>2}: {}  imbalance {imb:.2}", cells.join(" "));
    }
    if let Some(line) = placement.line() {
        println!("{line}");
    }
    if let Some(p) = &prediction {
        p.print();
    }
    Ok(())
}

/// Where the routed tokens were computed, on a model whose experts are split between a
/// device and the host.
struct Placement {
    host_layers: Vec<usize>,
    /// Routed tokens over the whole run, and of them those computed on the device (the
    /// device-placed layers' and the expert cache's hits).
    routed: u64,
    on_device: u64,
    cache: Option<bora_engine::CacheStats>,
    /// Bytes of one expert.
    expert_bytes: usize,
}

impl Placement {
    fn of(host: &[bool], routed: &[Vec<u64>], cache: Option<bora_engine::CacheStats>) -> Self {
        let per_layer: Vec<u64> = routed.iter().map(|l| l.iter().sum()).collect();
        let device_layers: u64 = per_layer
            .iter()
            .zip(host)
            .filter(|(_, &h)| !h)
            .map(|(n, _)| n)
            .sum();
        Self {
            host_layers: host
                .iter()
                .enumerate()
                .filter(|(_, &h)| h)
                .map(|(l, _)| l)
                .collect(),
            routed: per_layer.iter().sum(),
            on_device: device_layers + cache.map_or(0, |c| c.hits),
            cache,
            expert_bytes: 0,
        }
    }

    fn share(&self) -> f64 {
        self.on_device as f64 / self.routed.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "host_expert_layers": self.host_layers,
            "expert_bytes": self.expert_bytes,
            "routed_on_device_share": self.share(),
            "expert_cache": self.cache.map(|c| json!({
                "hit_rate": c.hit_rate(), "hits": c.hits, "lookups": c.lookups,
                "moves": c.moves, "resident": c.resident, "capacity": c.capacity,
            })),
        })
    }

    /// A line for the table, where some experts are on the host.
    fn line(&self) -> Option<String> {
        if self.host_layers.is_empty() {
            return None;
        }
        let mut line = format!(
            "experts of {} layers in host memory: {:.1}% of routed tokens computed on the device",
            self.host_layers.len(),
            100.0 * self.share()
        );
        if let Some(c) = self.cache {
            line.push_str(&format!(
                "; expert cache hit rate {:.1}% ({} of {} host-layer tokens), {} copies made, {} of {} resident",
                100.0 * c.hit_rate(),
                c.hits,
                c.lookups,
                c.moves,
                c.resident,
                c.capacity
            ));
        }
        Some(line)
    }
}

/// Reads a stream to its end: tokens generated and when the first one came.
fn drain(mut s: CompletionStream) -> Result<(usize, Option<Instant>)> {
    let mut first = None;
    let mut n = 0;
    while let Some(e) = s.next_blocking() {
        match e {
            Event::Delta { .. } | Event::ToolCalls { .. } if first.is_none() => {
                first = Some(Instant::now())
            }
            Event::Done { usage } => n = usage.completion_tokens,
            Event::Error { message } => bail!("generation failed: {message}"),
            _ => {}
        }
    }
    Ok((n, first))
}

fn median(d: &[Duration]) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The decode speed the memory allows at batch 1: each token reads every active weight once.
struct MemoryBound {
    device: String,
    /// Bytes of weights one token reads: per layer the attention projections, the router and
    /// `A` experts; the LM head.
    active_bytes: u64,
    /// Bytes per second the model's device reads (see [`memory_bandwidth`]).
    bandwidth: f64,
    /// How `bandwidth` was measured, in words.
    method: &'static str,
}

impl MemoryBound {
    fn measure(model: &bora_model::Model) -> Result<Self> {
        let w = model.weights();
        let a = model.config().num_experts_per_tok;
        let layers: usize = w
            .layers
            .iter()
            .map(|l| l.attention_and_router_bytes() + a * l.experts.expert_bytes())
            .sum();
        let device = model.device();
        let (bandwidth, method) = memory_bandwidth(device)?;
        Ok(Self {
            device: bora_core::device_name(device),
            active_bytes: (layers + w.lm_head.size_bytes()) as u64,
            bandwidth,
            method,
        })
    }

    fn tokens_per_s(&self) -> f64 {
        self.bandwidth / self.active_bytes.max(1) as f64
    }
}

/// The memory bandwidth decode can use on `device`, and how it was measured: on the CPU the
/// read bandwidth of all worker threads ([`read_bandwidth`]), elsewhere [`copy_bandwidth`].
pub fn memory_bandwidth(device: &candle_core::Device) -> Result<(f64, &'static str)> {
    Ok(if device.is_cpu() {
        (
            read_bandwidth(512 << 20),
            "read bandwidth (every worker thread streaming its part of 512 MiB; the best of 5 passes before the runs and 5 after)",
        )
    } else {
        (
            copy_bandwidth(device)?,
            "copy bandwidth (bytes read + written)",
        )
    })
}

use bora_engine::load::{copy_bandwidth as copy_bandwidth_of, read_bandwidth};

/// A large buffer copied on `device` several times (256 MiB on the CPU, 2 GiB elsewhere).
fn copy_bandwidth(device: &candle_core::Device) -> Result<f64> {
    let n = if device.is_cpu() { 64 << 20 } else { 512 << 20 };
    Ok(copy_bandwidth_of(device, n)?)
}
