//! Mistral's chat API in process, without HTTP: the request bodies the server takes and the
//! bodies it answers with, for the Python package and the C API. Requests are parsed and
//! checked exactly as `/v1/chat/completions` parses them (the same errors), and answers are
//! built from the engine's events as the server builds them, so that the same request gives
//! the same tokens either way.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use bora_engine::load::{CachePolicy, DTypeSpec, DeviceSpec, ExpertPlacement, KvDTypeSpec, QType};
use bora_engine::{
    CompletionStream, Engine, EngineConfig, EngineError, KvBudget, ModelOptions, ModelSource,
    Priority, Timeout,
};
use serde::Deserialize;
use serde_json::Value;

use crate::answer::{AnswerMeta, Chunks, Whole};
use crate::convert::{parse_request, ParsedRequest};
use crate::error::ApiError;

/// What an embedding app asks to load, as JSON (the CLI's model flags, by their long names):
/// `{"model": "bora-demo", "device": "cpu", "quantize": "q4_k", "kv_cache_mib": 512}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// Anything `--model` takes (default: the demo model).
    pub model: Option<String>,
    /// `cpu` (default), `cuda`, `cuda:N` or `metal`.
    pub device: Option<String>,
    /// `f32`, `bf16` or `f16`.
    pub dtype: Option<String>,
    /// A ggml type to quantize to while loading (`q4_k`, `q8_0`, ...).
    pub quantize: Option<String>,
    /// A tokenizer file instead of the model's.
    pub tokenizer: Option<PathBuf>,
    /// Worker threads of the CPU kernels.
    pub threads: Option<usize>,
    /// Repack quantized weights for bora's kernels (default true).
    pub repack: Option<bool>,
    /// The KV cache's dtype: `f32`, `f16`, `bf16` or `q8_0`.
    pub kv_cache_dtype: Option<String>,
    /// MiB of KV cache (default: a share of the free memory).
    pub kv_cache_mib: Option<usize>,
    /// `v1` or `v3` (default: the tokenizer's).
    pub chat_format: Option<String>,
    /// Batch-invariant numerics.
    pub deterministic: Option<bool>,
    /// The name answers carry as `model` (default: as `bora serve` names it).
    pub name: Option<String>,
    /// Download a repo missing from the local cache (only where the `download` feature is
    /// built in).
    pub allow_download: Option<bool>,
    /// Every layer's experts in host memory beside a model on a GPU (`--cpu-moe`).
    pub cpu_moe: Option<bool>,
    /// The experts of the first N layers in host memory (`--n-cpu-moe`).
    pub n_cpu_moe: Option<usize>,
    /// Device memory the placement may use, in MiB.
    pub device_memory_mib: Option<u64>,
    /// `auto`, `lru` or `off` (`--expert-cache`).
    pub expert_cache: Option<String>,
    /// The longest sequence (`--max-model-len`).
    pub max_model_len: Option<usize>,
    /// Sequences running at once at most (`--max-seqs`).
    pub max_seqs: Option<usize>,
}

/// Sequences running at once at most, as `bora serve --max-seqs` allows.
const MAX_SEQS: usize = 65536;

/// A 400 naming the option at fault.
fn bad_option(name: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("invalid option `{name}`: {e}")).with_param(name)
}

/// An engine answering chat requests given as JSON bodies.
#[derive(Clone)]
pub struct LocalApi {
    engine: Engine,
    model: String,
    strict: bool,
}

impl LocalApi {
    /// The API over `engine`, whose model answers to `model` (a request may name it or leave
    /// `model` out; another name is refused as the server refuses it).
    pub fn new(engine: Engine, model: &str) -> Self {
        Self {
            engine,
            model: model.to_string(),
            strict: false,
        }
    }

    /// Loads the model `options` (JSON: [`EngineOptions`]) name and starts an engine on it.
    /// A bad option is a 400 naming it; a model that cannot load is a `load_error`.
    pub fn load(options: &str) -> Result<Self, ApiError> {
        let o: EngineOptions = serde_json::from_str(options)
            .map_err(|e| ApiError::bad_request(format!("invalid options: {e}")))?;
        let source: ModelSource = match o.model.as_deref() {
            None => ModelSource::Demo,
            Some(m) => match m.parse::<ModelSource>() {
                Ok(s) => s,
                Err(never) => match never {},
            },
        };
        let dtype = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(str::parse::<DTypeSpec>)
                .transpose()
                .map_err(|e| bad_option(name, e))
        };
        let opts = ModelOptions {
            device: o
                .device
                .as_deref()
                .unwrap_or("cpu")
                .parse::<DeviceSpec>()
                .map_err(|e| bad_option("device", e))?,
            dtype: dtype("dtype", &o.dtype)?,
            quantize: o
                .quantize
                .as_deref()
                .map(|q| QType::parse(q).ok_or_else(|| bad_option("quantize", "unknown type")))
                .transpose()?,
            repack: o.repack.unwrap_or(true),
            kv_cache_dtype: o
                .kv_cache_dtype
                .as_deref()
                .map(str::parse::<KvDTypeSpec>)
                .transpose()
                .map_err(|e| bad_option("kv_cache_dtype", e))?,
            tokenizer: o.tokenizer,
            threads: o.threads,
            allow_download: o.allow_download.unwrap_or(false),
            expert_placement: ExpertPlacement::from_flags(o.cpu_moe.unwrap_or(false), o.n_cpu_moe),
            device_memory_limit: o.device_memory_mib.map(|m| m.saturating_mul(1 << 20)),
            expert_cache: match o.expert_cache.as_deref() {
                None => None,
                Some(p) => CachePolicy::parse(p).map_err(|e| bad_option("expert_cache", e))?,
            },
            max_model_len: o.max_model_len,
            kv_reserve: o.kv_cache_mib.map(|m| (m as u64).saturating_mul(1 << 20)),
            ..ModelOptions::default()
        };
        if o.max_seqs.is_some_and(|n| !(1..=MAX_SEQS).contains(&n)) {
            return Err(bad_option(
                "max_seqs",
                format!("must be from 1 to {MAX_SEQS}"),
            ));
        }
        let config = EngineConfig {
            kv_budget: o
                .kv_cache_mib
                .map_or(EngineConfig::default().kv_budget, KvBudget::Mib),
            chat_format: o
                .chat_format
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad_option("chat_format", e))?,
            deterministic: o.deterministic.unwrap_or(false),
            max_running: o.max_seqs.unwrap_or(EngineConfig::default().max_running),
            ..EngineConfig::default()
        };
        let engine = Engine::load(&source, &opts, config).map_err(|e| match e {
            EngineError::Load(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "load_error", e.to_string())
                    .with_param("model")
            }
            other => ApiError::from(other),
        })?;
        let name = o.name.unwrap_or_else(|| match &source {
            ModelSource::Demo | ModelSource::DemoV3 => source.to_string(),
            other => {
                let shown = other.to_string();
                let fallback = std::path::Path::new(&shown)
                    .file_stem()
                    .map_or(shown.clone(), |s| s.to_string_lossy().into_owned());
                crate::default_model_name(engine.model_config(), &fallback)
            }
        });
        Ok(Self::new(engine, &name))
    }

    /// Refuses fields bora parses but does not honour (the server's `--strict-api`).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Parses `body` as the server does; `model` may be left out.
    fn parse(&self, body: &str) -> Result<ParsedRequest, ApiError> {
        let mut v: Value = serde_json::from_str(body)
            .map_err(|e| ApiError::bad_request(format!("the request is not JSON: {e}")))?;
        if let Some(obj) = v.as_object_mut() {
            obj.entry("model")
                .or_insert_with(|| Value::String(self.model.clone()));
        }
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        let parsed = parse_request(&bytes, self.strict)?;
        if parsed.model != self.model {
            return Err(ApiError::invalid_model(&parsed.model));
        }
        Ok(parsed)
    }

    /// Parses `body` and submits it: the request's events and what its bodies share.
    fn submit(&self, body: &str) -> Result<(CompletionStream, AnswerMeta, bool), ApiError> {
        self.submit_as(body, Priority::Interactive)
    }

    fn submit_as(
        &self,
        body: &str,
        priority: Priority,
    ) -> Result<(CompletionStream, AnswerMeta, bool), ApiError> {
        let mut parsed = self.parse(body)?;
        parsed.completion.priority = priority;
        let events = self.engine.chat(&parsed.completion)?;
        Ok((
            events,
            AnswerMeta::new(&parsed.model, &parsed.completion),
            parsed.stream,
        ))
    }

    /// The prompt a request renders to: its token ids, as the engine would run them.
    pub fn tokenize_chat(&self, body: &str) -> Result<Vec<u32>, ApiError> {
        let parsed = self.parse(body)?;
        let engine = &self.engine;
        Ok(bora_engine::chat::render(
            engine.chat_format(),
            engine.tokenizer(),
            &parsed.completion.chat,
        )
        .map_err(bora_engine::EngineError::from)?)
    }

    /// Submits a request for a whole answer as batch work (scheduled after interactive
    /// requests; `stream` is ignored).
    pub fn complete_batch(&self, body: &str) -> Result<Pending, ApiError> {
        let (events, meta, _) = self.submit_as(body, Priority::Batch)?;
        Ok(Pending {
            events,
            whole: Whole::new(meta),
        })
    }

    /// Submits a request for a whole answer (`stream` is ignored).
    pub fn complete(&self, body: &str) -> Result<Pending, ApiError> {
        let (events, meta, _) = self.submit(body)?;
        Ok(Pending {
            events,
            whole: Whole::new(meta),
        })
    }

    /// Submits a request whose answer comes as stream chunks (`stream` is ignored).
    pub fn stream(&self, body: &str) -> Result<ChunkStream, ApiError> {
        let (events, meta, _) = self.submit(body)?;
        let chunks = Chunks::new(meta);
        let queue = chunks.start().into();
        Ok(ChunkStream {
            events,
            chunks,
            queue,
        })
    }
}

/// A whole answer on its way. Dropping it cancels the generation.
pub struct Pending {
    events: CompletionStream,
    whole: Whole,
}

impl Pending {
    /// The completion body once the answer is complete; `Err(Timeout)` while it is not after
    /// waiting `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Value, Timeout> {
        loop {
            let e = self.events.next_timeout(timeout)?;
            if self.whole.on(e) {
                return Ok(self.whole.json());
            }
        }
    }
}

/// What [`ChunkStream::next`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The next chunk.
    Chunk(Value),
    /// No chunk came in time; ask again.
    Waiting,
    /// The answer is complete.
    End,
}

/// A streamed answer's chunks. Dropping it cancels the generation.
pub struct ChunkStream {
    events: CompletionStream,
    chunks: Chunks,
    queue: std::collections::VecDeque<Value>,
}

impl ChunkStream {
    /// The next chunk, waiting at most `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Next {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Next::Chunk(c);
            }
            if self.chunks.ended() {
                return Next::End;
            }
            match self.events.next_timeout(timeout) {
                Err(Timeout) => return Next::Waiting,
                Ok(e) => self.queue.extend(self.chunks.on(e.as_ref())),
            }
        }
    }
}
