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
}

pub fn main(a: Args) -> Result<()> {
    let path = crate::load::ModelArgs::source_only(a.model.clone()).dir()?;
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
    Ok(())
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
