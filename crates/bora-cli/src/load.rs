//! Options shared by the commands that load a model, and the loading itself.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_core::{DTypeSpec, DeviceSpec, KvDTypeSpec};
use bora_engine::load::{CachePolicy, ExpertPlacement};
use bora_engine::{LoadPhase, LoadProgress, ModelOptions, ModelSource};
use bora_weights::{QType, WeightDType};

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The model: a directory (config.json, model.safetensors or model.safetensors.index.json
    /// and its shards, a tokenizer), a GGUF file (the first part of a split one), or a Hugging
    /// Face repo id (owner/name[@revision]) found
    /// in the local Hugging Face cache, or a built-in demo: `bora-demo` (the default; Mixtral
    /// 8x7B's tokenizer) or `bora-demo-v3` (8x22B's, with tool tokens); random weights. For
    /// benchmarks, `random:mixtral-8x7b`, `random:mixtral-8x22b`, `random:bench` or
    /// `random:demo`: that shape with random weights made on the device (no file); `:N` takes
    /// its first N layers (`random:mixtral-8x7b:4`).
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
    /// tensors stay as they are). With `--model random:NAME`, the type of the random weights,
    /// which may also be an i-quant: iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s,
    /// iq4_nl or iq4_xs.
    #[arg(long, value_name = "TYPE")]
    pub quantize: Option<String>,
    /// Keep quantized weights in the file's row layout instead of repacking them at load into
    /// the 16-row tiles of bora's packed CPU kernels (Q4_K, Q5_K, Q6_K, Q8_0; repacking keeps
    /// memory at the file's size and gives the same results, faster): for comparisons, as
    /// llama.cpp's `--no-repack`.
    #[arg(long)]
    pub no_repack: bool,
    /// The KV cache's dtype: f32 (the default), f16 or bf16 on the CPU (half the cache's memory
    /// and the bytes long-context decode reads, as llama.cpp's default `--cache-type-k/-v
    /// f16`), or q8_0 (ggml's 8-bit blocks: about a quarter of f32's, llama.cpp's `-ctk q8_0
    /// -ctv q8_0`); on a GPU f32, f16 or bf16 (default: the activations' dtype, which bora's
    /// paged decode kernel reads; another one is converted as rows are read, by candle's ops).
    #[arg(long, value_name = "DTYPE")]
    pub kv_cache_dtype: Option<String>,
    #[command(flatten)]
    pub placement: PlacementArgs,
}

/// Where the experts go beside a model on a GPU (ignored on the CPU, where every weight is in
/// host memory anyway).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct PlacementArgs {
    /// Keep every layer's experts in host memory, run by the CPU (llama.cpp's --cpu-moe):
    /// attention, norms, routers, embeddings and the LM head stay on the GPU.
    #[arg(long, conflicts_with = "n_cpu_moe")]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers in host memory (llama.cpp's --n-cpu-moe N; 0:
    /// every expert on the GPU). Default: a fit, as many layers' experts on the GPU as its free
    /// memory holds beside the rest, the KV reserve and a margin; the plan is printed.
    #[arg(long, value_name = "N")]
    pub n_cpu_moe: Option<usize>,
    /// Device memory the placement may use, in MiB (default: the free memory).
    #[arg(long, value_name = "MIB")]
    pub device_memory_mib: Option<u64>,
    /// Copy the hottest host-placed experts to the GPU as requests run, in the memory the
    /// placement leaves: auto (the most routed to lately), lru (least recently used out) or
    /// off (the default).
    #[arg(long, value_name = "POLICY")]
    pub expert_cache: Option<String>,
    /// The expert cache's memory in MiB (default: what the placement leaves).
    #[arg(long, value_name = "MIB")]
    pub expert_cache_mib: Option<f64>,
    /// Cap the context to this many positions (default: the model's).
    #[arg(long, value_name = "N")]
    pub max_model_len: Option<usize>,
    /// Run on candle's kernels on the CPU, standing in for a GPU, so that the placement flags
    /// above act there (dry runs of benches/cuda.sh, the expert cache's hit rates).
    #[arg(long, hide = true)]
    pub stand_in: bool,
}

impl PlacementArgs {
    /// Sets the placement's fields of `o`.
    pub fn apply(&self, o: &mut ModelOptions) -> Result<()> {
        o.expert_placement = ExpertPlacement::from_flags(self.cpu_moe, self.n_cpu_moe);
        o.device_memory_limit = self.device_memory_mib.map(|m| m.saturating_mul(1 << 20));
        o.expert_cache = match self.expert_cache.as_deref() {
            None => None,
            Some(p) => CachePolicy::parse(p).map_err(|e| anyhow::anyhow!("--expert-cache {e}"))?,
        };
        o.max_model_len = self.max_model_len;
        o.candle_on_cpu |= self.stand_in;
        o.expert_cache_bytes = match self.expert_cache_mib {
            Some(m) if !(m.is_finite() && m >= 0.0) => bail!("--expert-cache-mib {m}: not a size"),
            m => m.map(|m| (m * (1u64 << 20) as f64) as u64),
        };
        Ok(())
    }
}

pub use bora_engine::LoadedModel as Loaded;

impl ModelArgs {
    /// The model `--model` names (the demo when none is given).
    pub fn source(&self) -> ModelSource {
        match &self.model {
            None => ModelSource::Demo,
            Some(m) => match m.parse::<ModelSource>() {
                Ok(s) => s,
                Err(never) => match never {},
            },
        }
    }

    /// The options the flags give.
    pub fn options(&self) -> Result<ModelOptions> {
        let mut o = ModelOptions {
            device: self.device.parse::<DeviceSpec>()?,
            dtype: self
                .dtype
                .as_deref()
                .map(str::parse::<DTypeSpec>)
                .transpose()?,
            quantize: self
                .quantize
                .as_deref()
                .map(|s| parse_qtype("--quantize", s))
                .transpose()?,
            repack: !self.no_repack,
            kv_cache_dtype: self
                .kv_cache_dtype
                .as_deref()
                .map(|s| {
                    s.parse::<KvDTypeSpec>().map_err(|_| {
                        anyhow::anyhow!(
                            "--kv-cache-dtype {s}: expected f32, f16, bf16 or q8_0 (q8_0 on the CPU only)"
                        )
                    })
                })
                .transpose()?,
            tokenizer: self.tokenizer.clone(),
            threads: self.threads,
            allow_download: self.allow_download,
            ..ModelOptions::default()
        };
        self.placement.apply(&mut o)?;
        Ok(o)
    }

    /// Loads the model, with progress bars on a terminal and a line saying what was loaded.
    pub fn load(&self) -> Result<Loaded> {
        if self.model.is_none() {
            demo_notice();
        }
        self.load_source(&self.source())
    }

    /// [`ModelArgs::load`] of a source, e.g. one already resolved.
    pub fn load_source(&self, source: &ModelSource) -> Result<Loaded> {
        self.load_source_with(source, |_| {})
    }

    /// [`ModelArgs::load_source`] with the options changed by `edit` (a server's KV budget
    /// as the placement's KV reserve).
    pub fn load_source_with(
        &self,
        source: &ModelSource,
        edit: impl FnOnce(&mut ModelOptions),
    ) -> Result<Loaded> {
        let mut opts = self.options()?;
        edit(&mut opts);
        let mut bars = Bars::default();
        let loaded = bora_engine::load_model(source, &opts, &mut |e| bars.on(e));
        drop(bars);
        let loaded = loaded?;
        eprintln!("bora: {}", loaded.info);
        Ok(loaded)
    }

    /// The model's files: `--model` resolved offline (or downloaded with `--allow-download`),
    /// or the demo model's when no `--model` is given; random models have none.
    pub fn resolve(&self) -> Result<ModelSource> {
        if self.model.is_none() {
            demo_notice();
        }
        let source = self.source();
        if let ModelSource::Random(_) = &source {
            bail!("--model {source}: random weights are made by `bora bench`, `bench-moe`, `run`, `chat` and `perplexity`; this command needs a model directory, GGUF file or repo id");
        }
        let mut bars = Bars::default();
        Ok(source.resolve(self.allow_download, &mut |e| bars.on(e))?)
    }

    /// [`ModelArgs::resolve`] as a path (a directory or a GGUF file).
    pub fn dir(&self) -> Result<PathBuf> {
        let source = self.resolve()?;
        source
            .path()
            .map(Path::to_path_buf)
            .with_context(|| format!("--model {source}: not a directory or GGUF file"))
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
            placement: PlacementArgs::default(),
        }
    }

    /// Whether a demo model is used.
    pub fn is_demo(&self) -> bool {
        self.source().is_demo()
    }
}

fn demo_notice() {
    eprintln!(
        "bora: no --model given: using the demo model `{}` (random weights: its text is noise; pass --model for a real one)",
        bora_engine::DEMO_MODEL_NAME
    );
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

/// The load's phases as progress bars on a terminal, log lines otherwise.
#[derive(Default)]
struct Bars {
    bar: Option<indicatif::ProgressBar>,
    started: Option<Instant>,
}

impl Bars {
    fn on(&mut self, e: LoadProgress) {
        match e {
            LoadProgress::Start { phase, total_bytes } => {
                self.bar = std::io::stderr()
                    .is_terminal()
                    .then(|| bar(phase, total_bytes));
                if self.bar.is_none() {
                    tracing::info!("{} {}", phase.name(), bytes(total_bytes));
                }
                self.started = Some(Instant::now());
            }
            LoadProgress::Done { bytes } => {
                if let Some(b) = &self.bar {
                    b.set_position(bytes);
                }
            }
            LoadProgress::Finish { phase } => match self.bar.take() {
                Some(b) => b.finish_and_clear(),
                None => tracing::info!(
                    "{} done in {:.1} s",
                    phase.name(),
                    self.started.map_or(0.0, |t| t.elapsed().as_secs_f64())
                ),
            },
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A bar of `total_bytes` (0: a spinner, no length).
fn bar(phase: LoadPhase, total_bytes: u64) -> indicatif::ProgressBar {
    let bar = if total_bytes > 0 {
        indicatif::ProgressBar::new(total_bytes).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        )
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_message(phase.name());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// `1.5 MB`, or nothing for 0.
fn bytes(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{:.1} MB", n as f64 / 1e6)
    }
}

pub use bora_engine::load::peak_resident_bytes;

/// `path` for messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}
