//! `bora inspect`: what a checkpoint holds, read from its headers only: a safetensors
//! directory's config and headers, or a GGUF file's metadata and tensor descriptions.

use anyhow::{Context, Result};
use bora_engine::ModelSource;
use serde_json::json;

use crate::load::shown;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: a directory (config.json and safetensors weights), a GGUF file or a Hugging
    /// Face repo id in the local cache. Default: the demo model.
    model: Option<String>,
    /// List every tensor, not only the first layer's and the global ones.
    #[arg(long)]
    tensors: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also print where a load onto this device would put each tensor (cuda, cuda:N, metal),
    /// without loading: the fit from its free memory, or what the placement flags say. With
    /// `--device cpu` and `--device-memory-mib`, the plan for a GPU of that size.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dtype of dense weights on the device (default: f32 beside quantized weights).
    #[arg(long)]
    dtype: Option<String>,
    #[command(flatten)]
    placement: crate::load::PlacementArgs,
}

pub fn main(a: Args) -> Result<()> {
    let path = crate::load::ModelArgs::source_only(a.model.clone()).dir()?;
    let plan = plan(&a, &path)?;
    let info = bora_engine::load::inspect(&ModelSource::Named(path.display().to_string()))
        .with_context(|| format!("{} is not a model", shown(&path)))?;
    let (cfg, layout, dtypes, size, files) = (
        &info.config,
        info.layout,
        &info.dtypes,
        info.size,
        info.files,
    );
    // The global tensors and the first layer's, unless all are asked for.
    let rows: Vec<_> = info
        .tensors
        .iter()
        .filter(|t| {
            a.tensors
                || !(t.name.starts_with("model.layers.") || t.name.starts_with("blk."))
                || t.name.starts_with("model.layers.0.")
                || t.name.starts_with("blk.0.")
        })
        .map(|t| (&t.name, &t.dtype, &t.shape))
        .collect();
    if a.json {
        let v = json!({
            "architecture": cfg.architecture.hf_name(),
            "expert_layout": layout,
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim, "num_local_experts": cfg.num_local_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok, "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_position_embeddings, "sliding_window": cfg.sliding_window,
            "parameters": cfg.param_count(), "active_parameters": cfg.active_param_count(),
            "dtypes": dtypes, "size_bytes": size, "files": files, "format": info.format,
            "tensors": rows.iter().map(|(n, d, s)| json!({"name": n, "dtype": d, "shape": s})).collect::<Vec<_>>(),
            "plan": plan.as_ref().map(plan_json),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model        {} ({}, {layout} experts)",
        shown(&path),
        cfg.architecture.hf_name()
    );
    println!(
        "shape        {} layers, hidden {}, intermediate {}, {} heads ({} kv, head_dim {}), vocab {}",
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
        cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size
    );
    println!(
        "experts      {} per layer, {} per token",
        cfg.num_local_experts, cfg.num_experts_per_tok
    );
    println!(
        "context      {} positions, rope_theta {}, sliding window {}",
        cfg.max_position_embeddings,
        cfg.rope_theta,
        cfg.sliding_window
            .map_or("none".to_string(), |w| w.to_string())
    );
    println!(
        "parameters   {} total, {} active per token",
        count(cfg.param_count()),
        count(cfg.active_param_count())
    );
    let dts: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{d} ({n} tensors)"))
        .collect();
    println!("dtypes       {}", dts.join(", "));
    println!("size on disk {} in {files} file(s)", bytes(size));
    println!(
        "tensors{}:",
        if a.tensors {
            ""
        } else {
            " (global and layer 0; --tensors for all)"
        }
    );
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (n, d, s) in rows {
        println!("  {n:width$}  {d:5}  {s:?}");
    }
    if let Some(p) = plan {
        println!("{p}");
    }
    Ok(())
}

/// The plan of a load onto `--device` (or, on the CPU with `--device-memory-mib`, onto a GPU
/// of that size, candle's CPU device standing in for it).
fn plan(a: &Args, path: &std::path::Path) -> Result<Option<bora_engine::load::Plan>> {
    let device: bora_engine::load::DeviceSpec = a.device.parse()?;
    let stand_in = matches!(device, bora_engine::load::DeviceSpec::Cpu);
    if stand_in && a.placement.device_memory_mib.is_none() {
        return Ok(None);
    }
    let mut o = bora_engine::ModelOptions {
        device,
        dtype: a
            .dtype
            .as_deref()
            .map(str::parse::<bora_engine::load::DTypeSpec>)
            .transpose()?,
        candle_on_cpu: stand_in,
        ..bora_engine::ModelOptions::default()
    };
    a.placement.apply(&mut o)?;
    let source = ModelSource::Named(path.display().to_string());
    let mut plan = bora_engine::load::plan_for(&source, &o)?;
    if let (Some(p), true) = (&mut plan, stand_in) {
        p.input.device = format!(
            "a GPU of {} MiB",
            a.placement.device_memory_mib.unwrap_or(0)
        );
    }
    Ok(plan)
}

fn plan_json(p: &bora_engine::load::Plan) -> serde_json::Value {
    let (dev, host) = p.bytes();
    let (read_dev, read_host) = p.read_per_token();
    json!({
        "device": p.input.device, "usable_bytes": p.input.available,
        "host_expert_layers": p.host_experts.iter().enumerate().filter(|(_, &h)| h).map(|(l, _)| l).collect::<Vec<_>>(),
        "device_bytes": dev, "host_bytes": host, "kv_reserve_bytes": p.input.kv_reserve,
        "margin_bytes": p.margin, "left_bytes": p.left,
        "read_per_token_device_bytes": read_dev, "read_per_token_host_bytes": read_host,
        "expected_tokens_per_s": p.expected_tokens_per_s(),
    })
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n => format!("{:.1} K", n as f64 / 1e3),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
    }
}
