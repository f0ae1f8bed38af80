//! Options shared by the commands that load a model, and the loading itself.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_core::{DTypeSpec, DeviceSpec};
use bora_engine::hub::{hf_offline, resolve_model, ModelLocation, RepoId};
use bora_engine::Tokenizer;
use bora_model::Model;
use bora_weights::QType;
use bora_weights::{
    gguf_config, gguf_type_counts, ExpertLayout, GgufStore, LoadOptions, MapMode, MixtralWeights,
    SafetensorsStore, TensorName, WeightDType,
};

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The model: a directory (config.json, model.safetensors or model.safetensors.index.json
    /// and its shards, a tokenizer), a GGUF file (the first part of a split one), or a Hugging
    /// Face repo id (owner/name[@revision]) found
    /// in the local Hugging Face cache, or a built-in demo: `bora-demo` (the default; Mixtral
    /// 8x7B's tokenizer) or `bora-demo-v3` (8x22B's, with tool tokens); random weights. For
    /// benchmarks, `random:mixtral-8x7b`, `random:mixtral-8x22b` or `random:demo`: that shape
    /// with random weights made on the device (no file).
    #[arg(long)]
    pub model: Option<String>,
    /// Download a repo id that is not in the local cache (through hf-hub; refused when
    /// HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub allow_download: bool,
    /// Tokenizer to use instead of the model's: tokenizer.json, a sentencepiece model
    /// (tokenizer.model, tokenizer.model.v1, tokenizer.model.v3) or a GGUF file's vocabulary.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype to keep weights in: f32, bf16 or f16 (default: the checkpoint's).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Quantize the linear layers while loading: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k,
    /// q4_k, q5_k or q6_k (on the CPU, then moved to the device; a GGUF file's quantized
    /// tensors stay as they are). With `--model random:NAME`, the type of the random weights.
    #[arg(long, value_name = "TYPE")]
    pub quantize: Option<String>,
    /// Keep quantized weights in the file's row layout instead of repacking them at load into
    /// the 16-row tiles of bora's packed CPU kernels (Q4_K, Q5_K, Q6_K, Q8_0; repacking keeps
    /// memory at the file's size and gives the same results, faster): for comparisons, as
    /// llama.cpp's `--no-repack`.
    #[arg(long)]
    pub no_repack: bool,
    /// The KV cache's dtype: f32 (the default) or f16 on the CPU (half the cache's memory and
    /// the bytes long-context decode reads, as llama.cpp's default `--cache-type-k/-v f16`); on
    /// a GPU the activations' dtype, the only one allowed there.
    #[arg(long, value_name = "DTYPE")]
    pub kv_cache_dtype: Option<String>,
}

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Loaded> {
        if let Some(name) = self
            .model
            .as_deref()
            .and_then(|m| m.strip_prefix("random:"))
        {
            return self.load_random(name);
        }
        self.load_from(&self.dir()?)
    }

    /// `--model random:NAME`: a model of a known shape with random weights, made on the device
    /// (for benchmarks; no file), with the demo models' tokenizer of its vocabulary.
    fn load_random(&self, name: &str) -> Result<Loaded> {
        if let Some(n) = self.threads {
            rayon_threads(n)?;
        }
        let started = Instant::now();
        let config = bora_weights::preset_config(name).with_context(|| {
            format!("--model random:{name}: unknown shape; use random:mixtral-8x7b, random:mixtral-8x22b or random:demo")
        })?;
        let quantize = self.quantize_type()?;
        let device = self.device.parse::<DeviceSpec>()?.open()?;
        // Activations in f32 next to quantized weights, as llama.cpp keeps them (no conversion
        // around each quantized product); bf16 for a dense model on a GPU.
        let dtype = self
            .dtype_arg()?
            .unwrap_or(if device.is_cpu() || quantize.is_some() {
                WeightDType::F32
            } else {
                WeightDType::BF16
            });
        let opts = LoadOptions {
            quantize,
            pack: !self.no_repack,
            kv_dtype: self.kv_dtype_arg()?,
            ..LoadOptions::new(dtype, device)
        };
        let (total, active) = (config.param_count(), config.active_param_count());
        let tok_dir = if config.vocab_size == 32768 {
            bora_engine::demo_v3_model_dir()?
        } else {
            bora_engine::demo_model_dir()?
        };
        let phase = Phase::new("making random weights", 0);
        let weights = bora_weights::random_weights(config, &opts, 0x5eed)?;
        let model = Model::new(weights)?;
        phase.done();
        let tokenizer = match &self.tokenizer {
            Some(p) => Tokenizer::from_file(p)?,
            None => Tokenizer::from_file(&Tokenizer::find_in_dir(&tok_dir)?)?,
        };
        if tokenizer.vocab_size() > model.config().vocab_size {
            bail!(
                "the tokenizer has {} tokens, more than random:{name}'s {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            );
        }
        eprintln!(
            "bora: made random:{name}: {} parameters ({} active per token), {}, on {}, in {:.1} s",
            count(total),
            count(active),
            match quantize {
                Some(q) => q.to_string(),
                None => dtype_name(dtype).to_string(),
            },
            self.device,
            started.elapsed().as_secs_f64()
        );
        Ok(Loaded { model, tokenizer })
    }

    /// The `--dtype` asked for.
    fn dtype_arg(&self) -> Result<Option<WeightDType>> {
        self.dtype.as_deref().map(parse_dtype).transpose()
    }

    /// The `--kv-cache-dtype` asked for.
    fn kv_dtype_arg(&self) -> Result<Option<candle_core::DType>> {
        self.kv_cache_dtype
            .as_deref()
            .map(|s| match s.to_ascii_lowercase().as_str() {
                "f16" => Ok(candle_core::DType::F16),
                "f32" => Ok(candle_core::DType::F32),
                "bf16" => Ok(candle_core::DType::BF16),
                _ => anyhow::bail!("--kv-cache-dtype {s}: expected f16 or f32 (bf16 on a GPU)"),
            })
            .transpose()
    }

    /// The `--quantize` type asked for.
    fn quantize_type(&self) -> Result<Option<QType>> {
        self.quantize
            .as_deref()
            .map(|s| parse_qtype("--quantize", s))
            .transpose()
    }

    /// [`ModelArgs::load`] from an already resolved source (a directory or a `.gguf` file).
    pub fn load_from(&self, dir: &Path) -> Result<Loaded> {
        if let Some(n) = self.threads {
            rayon_threads(n)?;
        }
        let quantize = self.quantize_type()?;
        let started = Instant::now();
        if dir.is_file() {
            return self.load_gguf(dir, quantize, started);
        }
        let device = self.device.parse::<DeviceSpec>()?.open()?;
        let config = bora_core::ModelConfig::from_file(&dir.join("config.json"))?;
        let store = SafetensorsStore::open_dir(dir, MapMode::Lazy)?;
        if quantize.is_none() {
            let phase = Phase::new("reading", store.size_on_disk());
            store.prefault(|done| phase.at(done));
            phase.done();
        }
        // Quantizing reads each tensor as it goes and lets its pages go (peak memory near the
        // quantized size).
        let dtype = match self.dtype_arg()? {
            Some(d) => d,
            None => store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?,
        };
        let kept = store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?;
        let phase = Phase::new(
            if quantize.is_some() {
                "quantizing"
            } else if kept == dtype {
                "building"
            } else {
                "converting"
            },
            0,
        );
        let (total, active) = (config.param_count(), config.active_param_count());
        let opts = LoadOptions {
            quantize,
            pack: !self.no_repack,
            kv_dtype: self.kv_dtype_arg()?,
            ..LoadOptions::new(dtype, device)
        };
        let weights = MixtralWeights::load(&store, config, &opts)?;
        let model = Model::new(weights)?;
        phase.done();
        let tok_path = match &self.tokenizer {
            Some(p) => p.clone(),
            None => Tokenizer::find_in_dir(dir)
                .context("the model needs a tokenizer: pass --tokenizer FILE")?,
        };
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        eprintln!(
            "bora: loaded {}: {} parameters ({} active per token), {}, {} resident, in {:.1} s",
            dir.display(),
            count(total),
            count(active),
            match quantize {
                Some(q) => format!("{q} (quantized at load)"),
                None => dtype_name(dtype).to_string(),
            },
            bytes(resident_bytes()),
            started.elapsed().as_secs_f64()
        );
        Ok(Loaded { model, tokenizer })
    }

    fn load_gguf(&self, path: &Path, quantize: Option<QType>, started: Instant) -> Result<Loaded> {
        let device = self.device.parse::<DeviceSpec>()?.open()?;
        let store = GgufStore::open(path)?;
        let config = gguf_config(&store)?;
        let phase = Phase::new("reading", store.data_bytes());
        store.prefault(|done, _| phase.at(done));
        phase.done();
        // Float tensors of a GGUF file stay as stored on the CPU. On a GPU, activations are f32
        // next to quantized weights (as llama.cpp keeps them: no conversion around each
        // quantized product), f16 in a float file.
        let type_counts = gguf_type_counts(&store);
        let quantized_file = type_counts
            .iter()
            .any(|(t, _)| matches!(t, bora_weights::GgmlType::Quant(_)));
        let dtype = self.dtype_arg()?.unwrap_or(
            if device.is_cuda() && (quantized_file || quantize.is_some()) {
                WeightDType::F32
            } else {
                WeightDType::F16
            },
        );
        let phase = Phase::new(
            if quantize.is_some() {
                "quantizing"
            } else {
                "building"
            },
            0,
        );
        let (total, active) = (config.param_count(), config.active_param_count());
        let opts = LoadOptions {
            quantize,
            pack: !self.no_repack,
            kv_dtype: self.kv_dtype_arg()?,
            ..LoadOptions::new(dtype, device)
        };
        let weights = MixtralWeights::load_gguf(&store, config, &opts)?;
        let model = Model::new(weights)?;
        phase.done();
        let tokenizer = match &self.tokenizer {
            Some(p) => Tokenizer::from_file(p)?,
            None => Tokenizer::from_gguf(&store)
                .context("the GGUF file's tokenizer cannot be read: pass --tokenizer FILE")?,
        };
        let types: Vec<String> = type_counts
            .into_iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect();
        eprintln!(
            "bora: loaded {}: {} parameters ({} active per token), {}{}, {} resident, in {:.1} s",
            path.display(),
            count(total),
            count(active),
            types.join(" "),
            match quantize {
                Some(q) => format!(" (float tensors quantized to {q} at load)"),
                None => String::new(),
            },
            bytes(resident_bytes()),
            started.elapsed().as_secs_f64()
        );
        Ok(Loaded { model, tokenizer })
    }
}

impl ModelArgs {
    /// The model's directory: `--model` resolved offline (or downloaded with
    /// `--allow-download`), or the demo model's when no `--model` is given.
    pub fn dir(&self) -> Result<PathBuf> {
        let Some(arg) = &self.model else {
            eprintln!(
                "bora: no --model given: using the demo model `{}` (random weights: its text is noise; pass --model for a real one)",
                bora_engine::DEMO_MODEL_NAME
            );
            return Ok(bora_engine::demo_model_dir()?);
        };
        if arg.starts_with("random:") {
            bail!("--model {arg}: random weights are made by `bora bench`, `bench-moe`, `run`, `chat` and `perplexity`; this command needs a model directory, GGUF file or repo id");
        }
        // The built-in demos, by name.
        if arg == bora_engine::DEMO_MODEL_NAME {
            return Ok(bora_engine::demo_model_dir()?);
        }
        if arg == bora_engine::DEMO_V3_MODEL_NAME {
            return Ok(bora_engine::demo_v3_model_dir()?);
        }
        match resolve_model(arg) {
            Ok(ModelLocation::Dir(d)) => Ok(d),
            Ok(ModelLocation::Gguf(p)) => Ok(p),
            Err(missing) => {
                match RepoId::parse(arg) {
                    Some(id) if self.allow_download => {
                        if hf_offline() {
                            bail!("{missing}\nHF_HUB_OFFLINE is set, so --allow-download cannot fetch it");
                        }
                        crate::download::download(&id)
                    }
                    Some(_) => bail!(
                        "{missing}\nTo fetch it from the Hugging Face Hub, add --allow-download"
                    ),
                    None => bail!("{missing}"),
                }
            }
        }
    }

    /// Model arguments that only name the model (commands that read no weights).
    pub fn source_only(model: Option<String>) -> Self {
        Self {
            model,
            allow_download: false,
            tokenizer: None,
            device: "cpu".into(),
            dtype: None,
            threads: None,
            quantize: None,
            no_repack: false,
            kv_cache_dtype: None,
        }
    }

    /// Whether a demo model is used.
    pub fn is_demo(&self) -> bool {
        match self.model.as_deref() {
            None => true,
            Some(m) => m == bora_engine::DEMO_MODEL_NAME || m == bora_engine::DEMO_V3_MODEL_NAME,
        }
    }
}

/// A `--dtype` value: f32, bf16 or f16.
pub fn parse_dtype(s: &str) -> Result<WeightDType> {
    Ok(match s.parse::<DTypeSpec>()? {
        DTypeSpec::F32 => WeightDType::F32,
        DTypeSpec::BF16 => WeightDType::BF16,
        DTypeSpec::F16 => WeightDType::F16,
    })
}

/// A ggml type given to `flag` (`--quantize`, `--type`): q8_0, q4_k, ...
pub fn parse_qtype(flag: &str, s: &str) -> Result<QType> {
    QType::parse(s).with_context(|| {
        format!(
            "{flag} {s}: unknown type; use one of {}",
            QType::ALL.map(|q| q.name().to_lowercase()).join(", ")
        )
    })
}

/// The configuration of a resolved model source: a directory's `config.json`, or a GGUF file's
/// metadata.
pub fn source_config(path: &Path) -> Result<bora_core::ModelConfig> {
    if path.is_file() {
        let store = GgufStore::open(path)?;
        return Ok(gguf_config(&store)?);
    }
    Ok(bora_core::ModelConfig::from_file(
        &path.join("config.json"),
    )?)
}

fn rayon_threads(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    // Read by rayon's global pool (bora's kernels) and by candle when they first start.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

/// One phase of loading: a progress bar on a terminal, log lines otherwise.
struct Phase {
    name: &'static str,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Phase {
    /// A phase of `len` bytes (0: a spinner, no length).
    fn new(name: &'static str, len: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = if len > 0 {
                indicatif::ProgressBar::new(len).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                )
            } else {
                indicatif::ProgressBar::new_spinner()
            };
            bar.set_message(name);
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        if bar.is_none() {
            tracing::info!(
                "{name} {}",
                if len > 0 { bytes(len) } else { String::new() }
            );
        }
        Self {
            name,
            bar,
            started: Instant::now(),
        }
    }

    fn at(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    fn done(self) {
        match self.bar {
            Some(b) => b.finish_and_clear(),
            None => tracing::info!(
                "{} done in {:.1} s",
                self.name,
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
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

fn dtype_name(d: WeightDType) -> &'static str {
    match d {
        WeightDType::F32 => "f32",
        WeightDType::BF16 => "bf16",
        WeightDType::F16 => "f16",
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

/// `path` for messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}
