//! The one model loader: a [`ModelSource`] and [`ModelOptions`] give a [`LoadedModel`] (the
//! model and its tokenizer), or an [`Engine`](crate::Engine) through
//! [`Engine::load`](crate::Engine::load). The CLI, the server, `check-device` and the benches
//! all load through here; progress is reported through a callback (the CLI draws its bars
//! from it) and errors are [`LoadError`]s naming the path, tensor or key.

mod download;
mod inspect;
mod plan;
mod source;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bora_model::Model;
use bora_weights::{
    gguf_config, gguf_type_counts, Backend, ExpertLayout, GgufStore, MapMode, MixtralWeights,
    SafetensorsStore, TensorName, WeightDType,
};

pub use bora_core::{DTypeSpec, DeviceSpec, KvDTypeSpec};
pub use bora_model::CachePolicy;
pub use bora_weights::QType;
pub use inspect::{inspect, ModelInfo, TensorInfo};
use plan::{capped, formula_sizes, gguf_sizes, place};
pub use plan::{copy_bandwidth, plan_for, read_bandwidth, ExpertPlacement, Plan, PlanInput};
pub use source::ModelSource;

use crate::tokenizer::Tokenizer;

/// How a model is loaded: where it runs and how its weights are kept.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// The device: the CPU, a CUDA GPU or Metal.
    pub device: DeviceSpec,
    /// The dtype dense weights are kept in (default: the checkpoint's; f32 activations beside
    /// quantized weights on a GPU, as llama.cpp keeps them).
    pub dtype: Option<DTypeSpec>,
    /// Quantize the linear layers to this type while loading (a GGUF file's quantized
    /// tensors stay as they are; for a random model, the type of its weights).
    pub quantize: Option<QType>,
    /// Repack quantized weights into the tiles of bora's packed CPU kernels where the CPU has
    /// them (the same results, faster; off: llama.cpp's `--no-repack`).
    pub repack: bool,
    /// The KV cache's dtype (default f32 on the CPU, the activations' on a GPU; bf16, f16 and
    /// q8_0 on the CPU too).
    pub kv_cache_dtype: Option<KvDTypeSpec>,
    /// A tokenizer instead of the model's: `tokenizer.json`, a sentencepiece model or a GGUF
    /// file's vocabulary.
    pub tokenizer: Option<PathBuf>,
    /// Worker threads of the CPU kernels (default: all cores). The process has one pool,
    /// started by the first load: later loads cannot change it.
    pub threads: Option<usize>,
    /// Download a repo id that is not in the local cache (the `download` feature; refused when
    /// `HF_HUB_OFFLINE` is set). Off by default: a load opens no socket.
    pub allow_download: bool,
    /// Run the model on candle's kernels even on the CPU (`check-device` compares the two
    /// paths, and the CPU stands in for a GPU in the placement's tests); by default bora's own
    /// CPU kernels.
    pub candle_on_cpu: bool,
    /// Where the experts go beside a model on a device ([`ExpertPlacement`]; by default the
    /// fit). Nothing changes where every weight is on the host anyway (the CPU).
    pub expert_placement: ExpertPlacement,
    /// Device memory the placement may use at most, in bytes (default: the free memory).
    pub device_memory_limit: Option<u64>,
    /// Device memory the placement keeps for the KV cache, in bytes (default: `max_model_len`
    /// positions, or 4096, of the KV dtype).
    pub kv_reserve: Option<u64>,
    /// The longest sequence: the context is capped to it (default: the model's).
    pub max_model_len: Option<usize>,
    /// Copies of host-placed experts on the device, chosen by this policy as steps run.
    pub expert_cache: Option<CachePolicy>,
    /// The expert cache's memory in bytes (default: what the placement leaves).
    pub expert_cache_bytes: Option<u64>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            dtype: None,
            quantize: None,
            repack: true,
            kv_cache_dtype: None,
            tokenizer: None,
            threads: None,
            allow_download: false,
            candle_on_cpu: false,
            expert_placement: ExpertPlacement::Fit,
            device_memory_limit: None,
            kv_reserve: None,
            max_model_len: None,
            expert_cache: None,
            expert_cache_bytes: None,
        }
    }
}

/// An error of loading a model; each names the path, tensor or key at fault.
// Fields are named for their place in the message.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    NotFound(crate::hub::NotFound),
    #[error(
        "{missing}\nTo fetch it from the Hugging Face Hub, allow downloads (--allow-download)"
    )]
    NotDownloaded { missing: crate::hub::NotFound },
    #[error("{missing}\nHF_HUB_OFFLINE is set, so it cannot be downloaded")]
    Offline { missing: crate::hub::NotFound },
    #[error("cannot download {repo}{}: {reason}", if file.is_empty() { String::new() } else { format!("/{file}") })]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
    #[error(
        "random:{name}: unknown shape; use random:mixtral-8x7b, random:mixtral-8x22b, \
         random:bench or random:demo, optionally with a layer count (random:mixtral-8x7b:4)"
    )]
    UnknownShape { name: String },
    #[error("cannot write the demo model ({path}): {reason}")]
    Demo { path: PathBuf, reason: String },
    #[error("invalid load option `{name}`: {reason}")]
    Option { name: &'static str, reason: String },
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error(
        "the tokenizer {path} has {tokens} tokens, more than the model's vocabulary of {vocab}"
    )]
    TokenizerTooLarge {
        path: PathBuf,
        tokens: usize,
        vocab: usize,
    },
    #[error("the model does not fit on {device} even with every expert in host memory:\n{plan}")]
    DoesNotFit { device: String, plan: String },
    #[error("{0}")]
    Weights(#[from] bora_weights::WeightsError),
    #[error("{0}")]
    Core(#[from] bora_core::CoreError),
    #[error("{0}")]
    Model(#[from] bora_model::ModelError),
}

impl From<crate::EngineError> for LoadError {
    /// The tokenizer's errors (the only engine errors a load meets).
    fn from(e: crate::EngineError) -> Self {
        match e {
            crate::EngineError::TokenizerLoad { path, reason } => {
                LoadError::Tokenizer { path, reason }
            }
            crate::EngineError::Load(e) => e,
            other => LoadError::Tokenizer {
                path: PathBuf::new(),
                reason: other.to_string(),
            },
        }
    }
}

/// A phase of loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPhase {
    /// Fetching a file of a repo (only with [`ModelOptions::allow_download`]).
    Downloading,
    /// Reading the weights' pages from disk.
    Reading,
    /// Building the model's matrices from the file's tensors (repacking for the kernels).
    Building,
    /// Converting weights to another dtype.
    Converting,
    /// Quantizing the linear layers.
    Quantizing,
    /// Making random weights.
    Random,
}

impl LoadPhase {
    /// A word for it, as the CLI's bars show it.
    pub fn name(self) -> &'static str {
        match self {
            LoadPhase::Downloading => "downloading",
            LoadPhase::Reading => "reading",
            LoadPhase::Building => "building",
            LoadPhase::Converting => "converting",
            LoadPhase::Quantizing => "quantizing",
            LoadPhase::Random => "making random weights",
        }
    }
}

/// What a load reports as it goes, in order: for each phase a `Start`, any number of `Done`,
/// and a `Finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProgress {
    /// A phase begins; `total_bytes` is 0 where its length is not known.
    Start {
        /// The phase.
        phase: LoadPhase,
        /// Its length in bytes, or 0.
        total_bytes: u64,
    },
    /// Bytes of the current phase done so far.
    Done {
        /// Done so far.
        bytes: u64,
    },
    /// The phase has ended.
    Finish {
        /// The phase.
        phase: LoadPhase,
    },
}

/// What a load did, for the line the CLI prints.
#[derive(Debug, Clone)]
pub struct LoadInfo {
    /// The resolved source (a path, or `random:NAME`).
    pub source: String,
    /// Whether the weights were made (random) rather than read.
    pub random: bool,
    /// Parameters of the model, and those one token uses.
    pub params: u64,
    /// Parameters one token uses (two experts of each layer).
    pub active_params: u64,
    /// How the weights are kept: a dtype, a type and "quantized at load", or a GGUF file's
    /// tensor types with their counts.
    pub weights: String,
    /// The device.
    pub device: DeviceSpec,
    /// Where the tensors went, on a device.
    pub plan: Option<Plan>,
    /// What the load could not do as asked, in words (printed after the load line).
    pub notes: Vec<String>,
    /// The process's resident memory once loaded (0 where it cannot be read).
    pub resident_bytes: u64,
    /// Time the load took.
    pub elapsed: Duration,
}

impl std::fmt::Display for LoadInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} parameters ({} active per token), {}, ",
            if self.random { "made" } else { "loaded" },
            self.source,
            count(self.params),
            count(self.active_params),
            self.weights
        )?;
        if self.random {
            write!(f, "on {}", self.device)?;
        } else {
            write!(f, "{} resident", bytes(self.resident_bytes))?;
        }
        write!(f, ", in {:.1} s", self.elapsed.as_secs_f64())?;
        if let Some(p) = &self.plan {
            write!(f, "\n{p}")?;
        }
        for n in &self.notes {
            write!(f, "\n{n}")?;
        }
        Ok(())
    }
}

/// A loaded model and its tokenizer.
pub struct LoadedModel {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// What the load did.
    pub info: LoadInfo,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Loads `source` with `opts`, reporting progress to `progress`.
pub fn load_model(
    source: &ModelSource,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<LoadedModel, LoadError> {
    let started = Instant::now();
    set_threads(opts.threads)?;
    let source = source.resolve(opts.allow_download, progress)?;
    let (built, tokenizer) = match &source {
        ModelSource::Random(name) => random(name, opts, progress)?,
        ModelSource::Gguf(path) => gguf(path, opts, progress)?,
        ModelSource::Dir(dir) => checkpoint(dir, opts, progress)?,
        other => unreachable!("resolve gives files or a random shape, not {other:?}"),
    };
    let Built {
        weights,
        desc: weights_desc,
        plan,
    } = built;
    let config = weights.config.clone();
    let mut model = Model::new(weights)?;
    let mut notes = Vec::new();
    if let Some(policy) = opts.expert_cache {
        let budget = opts
            .expert_cache_bytes
            .or_else(|| plan.as_ref().map(|p| p.left))
            .unwrap_or(0);
        if !model.set_expert_cache(policy, budget) {
            notes.push(if model.host_expert_layers() == 0 {
                "no expert cache: every expert is on the device already (or the model runs on \
                 the CPU)"
                    .to_string()
            } else {
                format!("no expert cache: {budget} bytes hold no expert")
            });
        }
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        info: LoadInfo {
            source: source.to_string(),
            random: matches!(source, ModelSource::Random(_)),
            params: config.param_count(),
            active_params: config.active_param_count(),
            weights: weights_desc,
            device: opts.device,
            plan,
            notes,
            resident_bytes: resident_bytes(),
            elapsed: started.elapsed(),
        },
    })
}

/// The weights of `source` alone (no tokenizer, no model), as `opts` say: for checkpoints
/// without a tokenizer, and for tools that rewrite the weights (`bora quantize`), which read
/// files as they go (`read_ahead` false: a tensor's pages are read when it is used and can be
/// let go after).
pub fn load_weights(
    source: &ModelSource,
    opts: &ModelOptions,
    read_ahead: bool,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<MixtralWeights, LoadError> {
    set_threads(opts.threads)?;
    let source = source.resolve(opts.allow_download, progress)?;
    Ok(match &source {
        ModelSource::Random(name) => random_only(name, opts, progress)?.weights,
        ModelSource::Gguf(path) => {
            let store = GgufStore::open(path)?;
            gguf_weights(&store, opts, read_ahead, progress)?.weights
        }
        ModelSource::Dir(dir) => checkpoint_weights(dir, opts, read_ahead, progress)?.weights,
        other => unreachable!("resolve gives files or a random shape, not {other:?}"),
    })
}

/// Writes `random:NAME` (its `:LAYERS` slice included) as a GGUF file of type `q` at `path`,
/// one layer at a time (a model larger than memory can be written): the same weights as
/// `random:NAME` loaded with `--quantize q` on the CPU, with the demo models' sentencepiece
/// vocabulary of its size, so that llama.cpp's tools run the very weights bora does.
/// `progress(done, total)` counts tensors. Returns the bytes of tensor data written.
pub fn write_random_gguf(
    name: &str,
    q: QType,
    path: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<u64, LoadError> {
    let config = source::random_config(name)?;
    let dir = if config.vocab_size == 32768 {
        crate::demo_v3_model_dir()?
    } else {
        crate::demo_model_dir()?
    };
    let spm = [
        "tokenizer.model.v3",
        "tokenizer.model.v1",
        "tokenizer.model",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
    .ok_or_else(|| LoadError::Demo {
        path: dir.clone(),
        reason: "it holds no sentencepiece tokenizer".into(),
    })?;
    let vocab = crate::SpmVocab::from_model_file(&spm)?;
    let mut meta = vocab.gguf_metadata();
    meta.push((
        "general.name".into(),
        bora_weights::MetaValue::String(format!("random-{name}")),
    ));
    let mut lo = bora_weights::LoadOptions::new(WeightDType::F32, candle_core::Device::Cpu);
    lo.quantize = Some(q);
    lo.pack = false;
    Ok(bora_weights::write_random_gguf(
        config,
        &lo,
        RANDOM_SEED,
        q,
        meta,
        path,
        progress,
    )?)
}

/// The seed of `random:` models' weights.
const RANDOM_SEED: u64 = 0x5eed;

/// Weights, how they are kept in words, and where they went.
struct Built {
    weights: MixtralWeights,
    desc: String,
    plan: Option<Plan>,
}

type Parts = (Built, Tokenizer);

/// `random:NAME`, with the demo models' tokenizer of its vocabulary.
fn random(
    name: &str,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Parts, LoadError> {
    let built = random_only(name, opts, progress)?;
    let vocab = built.weights.config.vocab_size;
    let path = match &opts.tokenizer {
        Some(p) => p.clone(),
        None if vocab == 32768 => Tokenizer::find_in_dir(&crate::demo_v3_model_dir()?)?,
        None => Tokenizer::find_in_dir(&crate::demo_model_dir()?)?,
    };
    let tokenizer = Tokenizer::from_file(&path)?;
    if tokenizer.vocab_size() > vocab {
        return Err(LoadError::TokenizerTooLarge {
            path,
            tokens: tokenizer.vocab_size(),
            vocab,
        });
    }
    Ok((built, tokenizer))
}

fn random_only(
    name: &str,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Built, LoadError> {
    let config = source::random_config(name)?;
    let device = opts.device.open()?;
    // Activations in f32 next to quantized weights, as llama.cpp keeps them (no conversion
    // around each quantized product); bf16 for a dense model on a GPU.
    let dtype = dtype_of(opts.dtype).unwrap_or(if device.is_cpu() || opts.quantize.is_some() {
        WeightDType::F32
    } else {
        WeightDType::BF16
    });
    let config = capped(config, opts)?;
    let mut lo = weight_options(opts, dtype, device)?;
    let sizes = formula_sizes(&config, &lo);
    let plan = place(opts, &mut lo, &config, sizes)?;
    let phase = Phase::start(progress, LoadPhase::Random, 0);
    let weights = bora_weights::random_weights(config, &lo, RANDOM_SEED)?;
    phase.finish(progress);
    let desc = match opts.quantize {
        Some(q) => q.to_string(),
        None => dtype_name(dtype).to_string(),
    };
    Ok(Built {
        weights,
        desc,
        plan,
    })
}

/// A GGUF file (or split set) and its vocabulary.
fn gguf(
    path: &Path,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Parts, LoadError> {
    let store = GgufStore::open(path)?;
    let built = gguf_weights(&store, opts, true, progress)?;
    let tokenizer = match &opts.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::from_gguf(&store).map_err(|e| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason: format!("the GGUF file's tokenizer cannot be read ({e}): give a tokenizer"),
        })?,
    };
    Ok((built, tokenizer))
}

/// A GGUF file's weights; `read_ahead`: every page read first, with progress.
fn gguf_weights(
    store: &GgufStore,
    opts: &ModelOptions,
    read_ahead: bool,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Built, LoadError> {
    let device = opts.device.open()?;
    let config = capped(gguf_config(store)?, opts)?;
    if read_ahead {
        let phase = Phase::start(progress, LoadPhase::Reading, store.data_bytes());
        store.prefault(|done, _| progress(LoadProgress::Done { bytes: done }));
        phase.finish(progress);
    }
    // Float tensors of a GGUF file stay as stored on the CPU. On a GPU, activations are f32
    // next to quantized weights (as llama.cpp keeps them: no conversion around each quantized
    // product), f16 in a float file.
    let type_counts = gguf_type_counts(store);
    let quantized_file = type_counts
        .iter()
        .any(|(t, _)| matches!(t, bora_weights::GgmlType::Quant(_)));
    let dtype = dtype_of(opts.dtype).unwrap_or(
        if device.is_cuda() && (quantized_file || opts.quantize.is_some()) {
            WeightDType::F32
        } else {
            WeightDType::F16
        },
    );
    let mut lo = weight_options(opts, dtype, device)?;
    let sizes = if opts.quantize.is_some() {
        formula_sizes(&config, &lo)
    } else {
        gguf_sizes(store, &config)
    };
    let plan = place(opts, &mut lo, &config, sizes)?;
    let phase = Phase::start(
        progress,
        if opts.quantize.is_some() {
            LoadPhase::Quantizing
        } else {
            LoadPhase::Building
        },
        0,
    );
    let weights = MixtralWeights::load_gguf(store, config, &lo)?;
    phase.finish(progress);
    let types: Vec<String> = type_counts
        .into_iter()
        .map(|(t, n)| format!("{t}×{n}"))
        .collect();
    let mut desc = types.join(" ");
    if let Some(q) = opts.quantize {
        desc.push_str(&format!(" (float tensors quantized to {q} at load)"));
    }
    Ok(Built {
        weights,
        desc,
        plan,
    })
}

/// A checkpoint directory and its tokenizer.
fn checkpoint(
    dir: &Path,
    opts: &ModelOptions,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Parts, LoadError> {
    let built = checkpoint_weights(dir, opts, true, progress)?;
    let path = match &opts.tokenizer {
        Some(p) => p.clone(),
        None => Tokenizer::find_in_dir(dir).map_err(|_| LoadError::Tokenizer {
            path: dir.to_path_buf(),
            reason: "the model has no tokenizer (tokenizer.json, tokenizer.model.v3, \
                     tokenizer.model.v1 or tokenizer.model): give one"
                .into(),
        })?,
    };
    let tokenizer = Tokenizer::from_file(&path)?;
    Ok((built, tokenizer))
}

/// A checkpoint's weights; `read_ahead`: every page read first, with progress, unless the
/// weights are quantized.
fn checkpoint_weights(
    dir: &Path,
    opts: &ModelOptions,
    read_ahead: bool,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Built, LoadError> {
    let device = opts.device.open()?;
    let config = capped(
        bora_core::ModelConfig::from_file(&dir.join("config.json"))?,
        opts,
    )?;
    let store = SafetensorsStore::open_dir(dir, MapMode::Lazy)?;
    // Quantizing reads each tensor as it goes and lets its pages go (peak memory near the
    // quantized size); otherwise the pages are read first, with progress.
    if read_ahead && opts.quantize.is_none() {
        let phase = Phase::start(progress, LoadPhase::Reading, store.size_on_disk());
        store.prefault(|done| progress(LoadProgress::Done { bytes: done }));
        phase.finish(progress);
    }
    let kept = store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?;
    let dtype = dtype_of(opts.dtype).unwrap_or(kept);
    let mut lo = weight_options(opts, dtype, device)?;
    let sizes = formula_sizes(&config, &lo);
    let plan = place(opts, &mut lo, &config, sizes)?;
    let phase = Phase::start(
        progress,
        if opts.quantize.is_some() {
            LoadPhase::Quantizing
        } else if kept == dtype {
            LoadPhase::Building
        } else {
            LoadPhase::Converting
        },
        0,
    );
    let weights = MixtralWeights::load(&store, config, &lo)?;
    phase.finish(progress);
    let desc = match opts.quantize {
        Some(q) => format!("{q} (quantized at load)"),
        None => dtype_name(dtype).to_string(),
    };
    Ok(Built {
        weights,
        desc,
        plan,
    })
}

/// The weights layer's options for `opts`.
fn weight_options(
    opts: &ModelOptions,
    dtype: WeightDType,
    device: candle_core::Device,
) -> Result<bora_weights::LoadOptions, LoadError> {
    // A KV dtype the backend cannot run is refused by `Model::new`.
    let mut lo = bora_weights::LoadOptions::new(dtype, device);
    lo.quantize = opts.quantize;
    lo.pack = opts.repack;
    lo.kv_dtype = opts.kv_cache_dtype.map(KvDTypeSpec::dtype);
    if opts.candle_on_cpu {
        lo.backend = Backend::Candle;
    }
    Ok(lo)
}

fn dtype_of(d: Option<DTypeSpec>) -> Option<WeightDType> {
    d.map(|d| match d {
        DTypeSpec::F32 => WeightDType::F32,
        DTypeSpec::BF16 => WeightDType::BF16,
        DTypeSpec::F16 => WeightDType::F16,
    })
}

fn dtype_name(d: WeightDType) -> &'static str {
    match d {
        WeightDType::F32 => "f32",
        WeightDType::BF16 => "bf16",
        WeightDType::F16 => "f16",
    }
}

/// Worker threads a load may ask for at most: an embedding app's option (Python, C) must not
/// make the pool start millions of threads.
const MAX_THREADS: usize = 4096;

/// The pool of the CPU kernels: rayon's global pool (bora's kernels) and candle read
/// `RAYON_NUM_THREADS` when they first start.
fn set_threads(n: Option<usize>) -> Result<(), LoadError> {
    let Some(n) = n else { return Ok(()) };
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(LoadError::Option {
            name: "threads",
            reason: format!("must be from 1 to {MAX_THREADS}, not {n}"),
        });
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

/// A phase between its `Start` and `Finish` events.
struct Phase(LoadPhase);

impl Phase {
    fn start(progress: &mut dyn FnMut(LoadProgress), phase: LoadPhase, total_bytes: u64) -> Self {
        progress(LoadProgress::Start { phase, total_bytes });
        Phase(phase)
    }

    fn finish(self, progress: &mut dyn FnMut(LoadProgress)) {
        progress(LoadProgress::Finish { phase: self.0 });
    }
}

/// The process's resident memory (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

/// The process's peak resident memory (Linux; 0 elsewhere).
pub fn peak_resident_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// A kB figure of /proc/self/status, in bytes.
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `1.5 GB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.0} MB", n as f64 / (1u64 << 20) as f64),
        n => format!("{:.0} KB", n as f64 / 1024.0),
    }
}

/// `46.7B`, `12.9M`.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => format!("{:.1}K", n as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests;
