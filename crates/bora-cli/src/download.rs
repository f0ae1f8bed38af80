//! `--allow-download`: fetches a repo's checkpoint into the Hugging Face cache through hf-hub,
//! in the cache layout that offline resolution reads. The only place bora opens a network
//! connection, and only when asked to.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bora_engine::hub::{hf_cache_dirs, RepoId};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Downloads config, tokenizer and safetensors weights of `id`; returns the snapshot directory.
pub fn download(id: &RepoId) -> Result<PathBuf> {
    let cache = hf_cache_dirs()
        .into_iter()
        .next()
        .map(|(d, _)| d)
        .context("no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE")?;
    let api = ApiBuilder::from_cache(Cache::new(cache.clone()))
        .with_progress(true)
        .build()
        .context("cannot start the Hugging Face client")?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    eprintln!("bora: downloading {} into {}", id.repo, cache.display());
    let config = repo
        .get("config.json")
        .with_context(|| format!("cannot download {}/config.json", id.repo))?;
    let mut found_tokenizer = false;
    for name in [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer.model.v3",
        "tokenizer.model.v1",
    ] {
        if repo.get(name).is_ok() {
            found_tokenizer = true;
        }
    }
    if !found_tokenizer {
        bail!("{} has no tokenizer.json or tokenizer.model", id.repo);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid shard index", index.display()))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                repo.get(&shard)
                    .with_context(|| format!("cannot download {}/{shard}", id.repo))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").with_context(|| {
                format!(
                    "{} has neither model.safetensors nor a shard index",
                    id.repo
                )
            })?;
        }
    }
    config
        .parent()
        .map(PathBuf::from)
        .context("downloaded config.json has no parent directory")
}
