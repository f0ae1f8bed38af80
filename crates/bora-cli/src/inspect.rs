//! `bora inspect`: what a checkpoint holds, read from its headers only: a safetensors
//! directory's config and headers, or a GGUF file's metadata and tensor descriptions.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use bora_core::ModelConfig;
use bora_weights::{gguf_config, GgufStore, MapMode, SafetensorsStore};
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

/// What `inspect` shows of either kind of checkpoint.
struct Info {
    cfg: ModelConfig,
    layout: &'static str,
    dtypes: BTreeMap<String, usize>,
    /// (name, dtype, shape) of the tensors shown.
    rows: Vec<(String, String, Vec<usize>)>,
    size: u64,
    files: usize,
}

fn safetensors_info(path: &Path, all: bool) -> Result<Info> {
    let cfg = ModelConfig::from_file(&path.join("config.json"))
        .with_context(|| format!("{} is not a model directory", shown(path)))?;
    let store = SafetensorsStore::open_dir(path, MapMode::Lazy)?;
    let layout = if store
        .names()
        .any(|n| n.contains("mlp.experts.gate_up_proj"))
    {
        "fused"
    } else {
        "per-expert"
    };
    let mut names: Vec<&str> = store.names().collect();
    names.sort_by_key(|n| sort_key(n));
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for n in &names {
        let t = store.get(n)?;
        let dt = format!("{:?}", t.dtype).to_lowercase();
        *dtypes.entry(dt.clone()).or_default() += 1;
        if all || !n.starts_with("model.layers.") || n.starts_with("model.layers.0.") {
            rows.push((n.to_string(), dt, t.shape.clone()));
        }
    }
    Ok(Info {
        cfg,
        layout,
        dtypes,
        rows,
        size: store.size_on_disk(),
        files: store.file_paths().count(),
    })
}

fn gguf_info(path: &Path, all: bool) -> Result<Info> {
    let store = GgufStore::open(path)?;
    let cfg = gguf_config(&store)?;
    let layout = if store.contains("blk.0.ffn_gate_exps.weight") {
        "merged"
    } else {
        "per-expert"
    };
    let mut tensors: Vec<_> = store.tensors().map(|(_, t)| t).collect();
    tensors.sort_by_key(|t| sort_key(&t.name));
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for t in tensors {
        let dt = t.dtype.name().to_string();
        *dtypes.entry(dt.clone()).or_default() += 1;
        if all || !t.name.starts_with("blk.") || t.name.starts_with("blk.0.") {
            rows.push((t.name.clone(), dt, t.shape()));
        }
    }
    let size = store
        .files()
        .iter()
        .map(|f| f.map.len() as u64)
        .sum::<u64>();
    Ok(Info {
        cfg,
        layout,
        dtypes,
        rows,
        size,
        files: store.files().len(),
    })
}

pub fn main(a: Args) -> Result<()> {
    let path = crate::load::ModelArgs::source_only(a.model.clone()).dir()?;
    let Info {
        cfg,
        layout,
        dtypes,
        rows,
        size,
        files,
    } = if path.is_file() {
        gguf_info(&path, a.tensors)?
    } else {
        safetensors_info(&path, a.tensors)?
    };
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
            "dtypes": dtypes, "size_bytes": size, "files": files, "format": if path.is_file() { "gguf" } else { "safetensors" },
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

/// Orders `model.layers.10` after `model.layers.9`.
fn sort_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|p| (p.parse().unwrap_or(u64::MAX), p.to_string()))
        .collect()
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
