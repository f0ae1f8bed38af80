//! Where a model comes from ([`ModelSource`]) and how a source is resolved to files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bora_core::ModelConfig;

use super::{LoadError, LoadProgress};
use crate::hub::{hf_offline, resolve_model, ModelLocation, RepoId};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model argument as the CLI's `--model` takes it, resolved when loading: an existing
    /// checkpoint directory or `.gguf` file, else a Hugging Face repo id (`owner/name`,
    /// optionally `@revision`) in the local Hugging Face cache.
    Named(String),
    /// A checkpoint directory: `config.json`, `model.safetensors` (or an index and its shards),
    /// a tokenizer.
    Dir(PathBuf),
    /// A GGUF file, or the first part of a split set.
    Gguf(PathBuf),
    /// A Hugging Face repo in the local cache (downloaded only with
    /// [`ModelOptions::allow_download`](super::ModelOptions::allow_download)).
    Repo(RepoId),
    /// The built-in demo model ([`crate::DEMO_MODEL_NAME`]: Mixtral 8x7B's tokenizer, random
    /// weights).
    Demo,
    /// The built-in demo with Mixtral 8x22B's v3 tokenizer (tool tokens;
    /// [`crate::DEMO_V3_MODEL_NAME`]).
    DemoV3,
    /// A known shape with random weights made on the device, no file: `mixtral-8x7b`,
    /// `mixtral-8x22b` or `demo` (for benchmarks).
    Random(String),
}

impl FromStr for ModelSource {
    type Err = std::convert::Infallible;

    /// The demos by name, `random:NAME`, else [`ModelSource::Named`].
    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        Ok(if arg == crate::DEMO_MODEL_NAME {
            ModelSource::Demo
        } else if arg == crate::DEMO_V3_MODEL_NAME {
            ModelSource::DemoV3
        } else if let Some(name) = arg.strip_prefix("random:") {
            ModelSource::Random(name.to_string())
        } else {
            ModelSource::Named(arg.to_string())
        })
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Named(s) => f.write_str(s),
            ModelSource::Dir(p) | ModelSource::Gguf(p) => write!(f, "{}", p.display()),
            ModelSource::Repo(id) if id.revision == "main" => f.write_str(&id.repo),
            ModelSource::Repo(id) => write!(f, "{}@{}", id.repo, id.revision),
            ModelSource::Demo => f.write_str(crate::DEMO_MODEL_NAME),
            ModelSource::DemoV3 => f.write_str(crate::DEMO_V3_MODEL_NAME),
            ModelSource::Random(name) => write!(f, "random:{name}"),
        }
    }
}

impl ModelSource {
    /// Whether this is one of the built-in demos.
    pub fn is_demo(&self) -> bool {
        matches!(self, ModelSource::Demo | ModelSource::DemoV3)
    }

    /// The files this source names: a [`ModelSource::Dir`] or [`ModelSource::Gguf`] (the demos
    /// written on first use, repo ids looked up in the local cache or, where `allow_download`,
    /// downloaded), or the [`ModelSource::Random`] it is. Nothing is read but the cache's
    /// folders.
    pub fn resolve(
        &self,
        allow_download: bool,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<ModelSource, LoadError> {
        let located = |l: ModelLocation| match l {
            ModelLocation::Dir(d) => ModelSource::Dir(d),
            ModelLocation::Gguf(p) => ModelSource::Gguf(p),
        };
        Ok(match self {
            ModelSource::Dir(_) | ModelSource::Gguf(_) | ModelSource::Random(_) => self.clone(),
            ModelSource::Demo => ModelSource::Dir(crate::demo_model_dir()?),
            ModelSource::DemoV3 => ModelSource::Dir(crate::demo_v3_model_dir()?),
            ModelSource::Named(arg) => match resolve_model(arg) {
                Ok(l) => located(l),
                Err(missing) => match RepoId::parse(arg) {
                    Some(id) => ModelSource::Dir(fetch(&id, missing, allow_download, progress)?),
                    None => return Err(LoadError::NotFound(missing)),
                },
            },
            ModelSource::Repo(id) => {
                let arg = ModelSource::Repo(id.clone()).to_string();
                match resolve_model(&arg) {
                    Ok(l) => located(l),
                    Err(missing) => ModelSource::Dir(fetch(id, missing, allow_download, progress)?),
                }
            }
        })
    }

    /// The model's configuration: a directory's `config.json`, a GGUF file's metadata, or a
    /// random shape's. Resolves the source first (without downloading).
    pub fn config(&self) -> Result<ModelConfig, LoadError> {
        match self.resolve(false, &mut |_| {})? {
            ModelSource::Gguf(path) => {
                let store = bora_weights::GgufStore::open(&path)?;
                Ok(bora_weights::gguf_config(&store)?)
            }
            ModelSource::Dir(dir) => Ok(ModelConfig::from_file(&dir.join("config.json"))?),
            ModelSource::Random(name) => random_config(&name),
            other => unreachable!("resolve gives files or a random shape, not {other:?}"),
        }
    }

    /// The resolved path (a directory or GGUF file), or `None` for a random model.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelSource::Dir(p) | ModelSource::Gguf(p) => Some(p),
            _ => None,
        }
    }
}

/// The configuration of `random:NAME`.
pub(super) fn random_config(name: &str) -> Result<ModelConfig, LoadError> {
    bora_weights::preset_config(name).ok_or_else(|| LoadError::UnknownShape {
        name: name.to_string(),
    })
}

/// A repo that is not in the local cache: downloaded when allowed, else the error that says
/// where it was looked for.
fn fetch(
    id: &RepoId,
    missing: crate::hub::NotFound,
    allow_download: bool,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<PathBuf, LoadError> {
    if !allow_download {
        return Err(LoadError::NotDownloaded { missing });
    }
    if hf_offline() {
        return Err(LoadError::Offline { missing });
    }
    super::download::download(id, progress)
}
