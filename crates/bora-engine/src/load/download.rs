//! Downloads of a Hugging Face repo's checkpoint into the Hugging Face cache (through hf-hub,
//! in the layout offline resolution reads): the only place bora opens a network connection,
//! only with the `download` feature and only when a load allows it.

use std::path::PathBuf;

#[cfg(feature = "download")]
use super::LoadPhase;
use super::{LoadError, LoadProgress};
use crate::hub::RepoId;

/// Downloads config, tokenizer and safetensors weights of `id`; returns the snapshot directory.
#[cfg(feature = "download")]
pub(super) fn download(
    id: &RepoId,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<PathBuf, LoadError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let failed = |file: &str, reason: String| LoadError::Download {
        repo: id.repo.clone(),
        file: file.to_string(),
        reason,
    };
    let cache_dir = crate::hub::hf_cache_dirs()
        .into_iter()
        .next()
        .map(|(d, _)| d)
        .ok_or_else(|| {
            failed(
                "",
                "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE".into(),
            )
        })?;
    let cache = Cache::new(cache_dir.clone());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| failed("", format!("cannot start the Hugging Face client: {e}")))?;
    let which = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let repo = api.repo(which.clone());
    let cached = cache.repo(which);
    let mut get = |name: &str| -> Result<PathBuf, LoadError> {
        if let Some(p) = cached.get(name) {
            return Ok(p);
        }
        let reporter = Reporter {
            progress: &mut *progress,
            done: 0,
        };
        repo.download_with_progress(name, reporter)
            .map_err(|e| failed(name, e.to_string()))
    };
    let config = get("config.json")?;
    let mut found_tokenizer = false;
    for name in [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer.model.v3",
        "tokenizer.model.v1",
    ] {
        found_tokenizer |= get(name).is_ok();
    }
    if !found_tokenizer {
        return Err(failed(
            "tokenizer.json",
            "the repo has no tokenizer.json or tokenizer.model".into(),
        ));
    }
    match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| failed("model.safetensors.index.json", e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                failed(
                    "model.safetensors.index.json",
                    format!("invalid shard index: {e}"),
                )
            })?;
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
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors").map_err(|_| {
                failed(
                    "model.safetensors",
                    "the repo has neither model.safetensors nor a shard index".into(),
                )
            })?;
        }
    }
    config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| failed("config.json", "the downloaded file has no directory".into()))
}

/// hf-hub's progress of one file, as [`LoadProgress`] events.
#[cfg(feature = "download")]
struct Reporter<'a> {
    progress: &'a mut dyn FnMut(LoadProgress),
    done: u64,
}

#[cfg(feature = "download")]
impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        (self.progress)(LoadProgress::Start {
            phase: LoadPhase::Downloading,
            total_bytes: size as u64,
        });
    }

    fn update(&mut self, size: usize) {
        self.done += size as u64;
        (self.progress)(LoadProgress::Done { bytes: self.done });
    }

    fn finish(&mut self) {
        (self.progress)(LoadProgress::Finish {
            phase: LoadPhase::Downloading,
        });
    }
}

/// Without the `download` feature a repo that is not in the local cache cannot be loaded.
#[cfg(not(feature = "download"))]
pub(super) fn download(
    id: &RepoId,
    _progress: &mut dyn FnMut(LoadProgress),
) -> Result<PathBuf, LoadError> {
    Err(LoadError::Download {
        repo: id.repo.clone(),
        file: String::new(),
        reason: "this build of bora has no downloads (the `download` feature)".into(),
    })
}
