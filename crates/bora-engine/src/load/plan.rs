//! Where a model's tensors go when it is loaded onto a device (a GPU, or candle's CPU device
//! standing in for one): attention, norms, routers, embeddings and the LM head on the device;
//! each layer's experts on the device or in host memory, where bora's CPU kernels run them
//! (`--cpu-moe`, `--n-cpu-moe N`, and by default a fit: as many layers' experts on the device
//! as its free memory holds beside the rest and the KV reserve, the last layers first, as
//! llama.cpp's `--n-cpu-moe` leaves them). What the fit leaves over can hold an expert cache
//! (`--expert-cache`).

use std::time::Instant;

use bora_core::ModelConfig;
use bora_weights::{
    gguf_config, gguf_expert_bytes, weight_bytes, Backend, ExpertLayout, GgufStore, LoadOptions,
    MapMode, SafetensorsStore, TensorName, WeightDType,
};

use super::{LoadError, ModelOptions, ModelSource};

/// Where the experts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertPlacement {
    /// As many layers' experts on the device as fit, the last layers first; the rest on the
    /// host. Where the device does not say how much memory is free and no limit is given,
    /// everything on the device.
    #[default]
    Fit,
    /// Every layer's experts in host memory (llama.cpp's `--cpu-moe`).
    Cpu,
    /// The experts of the first N layers in host memory (llama.cpp's `--n-cpu-moe N`); 0 puts
    /// every expert on the device.
    FirstOnCpu(usize),
}

impl ExpertPlacement {
    /// From llama.cpp's flags: `--cpu-moe`, `--n-cpu-moe N`, neither (the fit).
    pub fn from_flags(cpu_moe: bool, n_cpu_moe: Option<usize>) -> Self {
        match (cpu_moe, n_cpu_moe) {
            (true, _) => ExpertPlacement::Cpu,
            (false, Some(n)) => ExpertPlacement::FirstOnCpu(n),
            (false, None) => ExpertPlacement::Fit,
        }
    }
}

/// The sizes a plan is made from.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The device, as `cuda:0`.
    pub device: String,
    /// Bytes of everything but the experts (attention, norms, routers, embeddings, LM head).
    pub dense_bytes: u64,
    /// Of them, the bytes one token reads (all but the embedding table).
    pub dense_read_bytes: u64,
    /// `[layer]`: bytes of all the layer's experts.
    pub expert_bytes: Vec<u64>,
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token.
    pub experts_per_tok: usize,
    /// Device memory kept for the KV cache.
    pub kv_reserve: u64,
    /// Device memory the plan may use: the free memory, capped by a limit; `None` where
    /// neither is known.
    pub available: Option<u64>,
    /// Whether `available` comes from a limit that was given.
    pub limited: bool,
}

/// Where each layer's experts go, and what that leaves.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the plan was made from.
    pub input: PlanInput,
    /// `[layer]`: the experts stay in host memory.
    pub host_experts: Vec<bool>,
    /// Device memory kept for activations, workspaces and the runtime.
    pub margin: u64,
    /// Whether the device part fits in `available` (always where it is unknown).
    pub fits: bool,
    /// Device memory left once the plan's weights, the KV reserve and the margin are placed:
    /// what an expert cache may use.
    pub left: u64,
    /// Measured read bandwidths, bytes/s: the device's and the host's (see
    /// [`Plan::measure_bandwidth`]).
    pub bandwidth: Option<(f64, f64)>,
}

/// Most of a device kept aside for activations and the runtime: 1 GiB, or a sixteenth of a
/// smaller device.
fn margin(available: u64) -> u64 {
    (1u64 << 30).min(available / 16)
}

impl Plan {
    /// The plan of `placement` for `input`.
    pub fn new(input: PlanInput, placement: ExpertPlacement) -> Plan {
        let layers = input.expert_bytes.len();
        let margin = input.available.map_or(0, margin);
        let fixed = input.dense_bytes + input.kv_reserve + margin;
        let host_experts: Vec<bool> = match placement {
            ExpertPlacement::Cpu => vec![true; layers],
            ExpertPlacement::FirstOnCpu(n) => (0..layers).map(|l| l < n).collect(),
            ExpertPlacement::Fit => match input.available {
                None => vec![false; layers],
                Some(avail) => {
                    // The last layers' experts first, while they fit.
                    let mut budget = avail.saturating_sub(fixed);
                    let mut on_device = 0;
                    for &b in input.expert_bytes.iter().rev() {
                        if b > budget {
                            break;
                        }
                        budget -= b;
                        on_device += 1;
                    }
                    (0..layers).map(|l| l < layers - on_device).collect()
                }
            },
        };
        let placed: u64 = input
            .expert_bytes
            .iter()
            .zip(&host_experts)
            .filter(|(_, &h)| !h)
            .map(|(b, _)| b)
            .sum();
        let (fits, left) = match input.available {
            None => (true, 0),
            Some(avail) => (
                fixed + placed <= avail,
                avail.saturating_sub(fixed + placed),
            ),
        };
        Plan {
            input,
            host_experts,
            margin,
            fits,
            left,
            bandwidth: None,
        }
    }

    /// Layers whose experts are in host memory.
    pub fn host_layers(&self) -> usize {
        self.host_experts.iter().filter(|&&h| h).count()
    }

    /// Bytes of weights on the device, and in host memory (experts).
    pub fn bytes(&self) -> (u64, u64) {
        let (mut dev, mut host) = (self.input.dense_bytes, 0);
        for (b, &h) in self.input.expert_bytes.iter().zip(&self.host_experts) {
            if h {
                host += b;
            } else {
                dev += b;
            }
        }
        (dev, host)
    }

    /// Bytes one decoded token reads on the device, and on the host.
    pub fn read_per_token(&self) -> (u64, u64) {
        let share =
            |b: u64| b * self.input.experts_per_tok as u64 / self.input.experts.max(1) as u64;
        let (mut dev, mut host) = (self.input.dense_read_bytes, 0);
        for (&b, &h) in self.input.expert_bytes.iter().zip(&self.host_experts) {
            if h {
                host += share(b);
            } else {
                dev += share(b);
            }
        }
        (dev, host)
    }

    /// Decode tokens/s at batch 1 that the two bandwidths allow (the device's reads, then the
    /// host's, one after the other: a layer's CPU experts wait for its attention), where
    /// measured.
    pub fn expected_tokens_per_s(&self) -> Option<f64> {
        let (dev_bw, host_bw) = self.bandwidth?;
        let (dev, host) = self.read_per_token();
        let secs = dev as f64 / dev_bw.max(1.0) + host as f64 / host_bw.max(1.0);
        Some(1.0 / secs.max(1e-12))
    }

    /// Measures the device's copy bandwidth (256 MiB copied) and the host's read bandwidth
    /// (every worker thread streaming its part of 256 MiB), for
    /// [`Plan::expected_tokens_per_s`]; about half a second.
    pub fn measure_bandwidth(&mut self, device: &candle_core::Device) -> candle_core::Result<()> {
        let dev = copy_bandwidth(device, 64 << 20)?;
        self.bandwidth = Some((dev, read_bandwidth(256 << 20)));
        Ok(())
    }
}

/// `0-8`, `3`, `none`: a run of layers.
fn layer_ranges(layers: &[bool], want: bool) -> String {
    let mut parts = Vec::new();
    let mut l = 0;
    while l < layers.len() {
        if layers[l] != want {
            l += 1;
            continue;
        }
        let start = l;
        while l < layers.len() && layers[l] == want {
            l += 1;
        }
        parts.push(if l - start == 1 {
            format!("{start}")
        } else {
            format!("{start}-{}", l - 1)
        });
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

fn gb(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.1} KB", n as f64 / 1e3),
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.input;
        let layers = self.host_experts.len();
        let host_layers = self.host_layers();
        let (dev, host) = self.bytes();
        match i.available {
            Some(a) => writeln!(
                f,
                "plan for {}: {} usable{}",
                i.device,
                gb(a),
                if i.limited { " (limited)" } else { " (free)" }
            )?,
            None => writeln!(f, "plan for {}: free memory unknown", i.device)?,
        }
        writeln!(
            f,
            "  {}: attention, norms, routers, embeddings, LM head {}; experts of layers {} ({} of {layers}) {}; KV reserve {}; margin {}",
            i.device,
            gb(i.dense_bytes),
            layer_ranges(&self.host_experts, false),
            layers - host_layers,
            gb(dev - i.dense_bytes),
            gb(i.kv_reserve),
            gb(self.margin),
        )?;
        writeln!(
            f,
            "  host memory: experts of layers {} ({host_layers} of {layers}) {}, run by the CPU",
            layer_ranges(&self.host_experts, true),
            gb(host),
        )?;
        let (rd, rh) = self.read_per_token();
        write!(
            f,
            "  per token: {} read on {}, {} on the host",
            gb(rd),
            i.device,
            gb(rh)
        )?;
        if let (Some(tps), Some((bd, bh))) = (self.expected_tokens_per_s(), self.bandwidth) {
            write!(
                f,
                ": about {tps:.1} tokens/s at batch 1 ({:.0} GB/s on the device, {:.0} GB/s on the host)",
                bd / 1e9,
                bh / 1e9
            )?;
        }
        if !self.fits {
            write!(
                f,
                "\n  does not fit: {} needed on {} with every expert on the host",
                gb(i.dense_bytes + i.kv_reserve + self.margin),
                i.device
            )?;
        } else if i.available.is_some() {
            write!(f, "\n  left for an expert cache: {}", gb(self.left))?;
        }
        Ok(())
    }
}

/// The sizes of a model's parts: everything but the experts, of it what a token reads, and
/// each layer's experts.
pub(super) struct Sizes {
    dense: u64,
    dense_read: u64,
    experts: Vec<u64>,
}

/// Sizes by the formula of [`bora_weights::weight_bytes`] (checkpoints, random weights,
/// anything quantized at load).
pub(super) fn formula_sizes(config: &ModelConfig, lo: &LoadOptions) -> Sizes {
    let mut all = lo.clone();
    all.host_experts.clear();
    let total = weight_bytes(config, &all);
    all.host_experts = vec![true; config.num_hidden_layers];
    all.backend = Backend::Candle;
    let dense = weight_bytes(config, &all);
    let layers = config.num_hidden_layers.max(1) as u64;
    let (v, h) = (config.vocab_size, config.hidden_size);
    let embed = match lo.quantize.and_then(|q| q.row_bytes(h)) {
        Some(r) => (v * r) as u64,
        None => (v * h * lo.dtype.size()) as u64,
    };
    Sizes {
        dense,
        dense_read: dense.saturating_sub(embed),
        experts: vec![total.saturating_sub(dense) / layers; config.num_hidden_layers],
    }
}

/// Sizes of a GGUF file's tensors as stored.
pub(super) fn gguf_sizes(store: &GgufStore, config: &ModelConfig) -> Sizes {
    let experts: Vec<u64> = (0..config.num_hidden_layers)
        .map(|l| gguf_expert_bytes(store, l))
        .collect();
    let dense = store.data_bytes().saturating_sub(experts.iter().sum());
    let embed = store
        .get("token_embd.weight")
        .map_or(0, |(_, t)| (t.end - t.start) as u64);
    Sizes {
        dense,
        dense_read: dense.saturating_sub(embed),
        experts,
    }
}

/// `config` with its context capped to `max_model_len`.
pub(super) fn capped(
    mut config: ModelConfig,
    opts: &ModelOptions,
) -> Result<ModelConfig, LoadError> {
    if let Some(n) = opts.max_model_len {
        if n == 0 {
            return Err(LoadError::Option {
                name: "max_model_len",
                reason: "must be at least 1".into(),
            });
        }
        config.max_position_embeddings = config.max_position_embeddings.min(n);
    }
    Ok(config)
}

/// The plan for a model on a device (the candle backend), applied to `lo`; `None` where every
/// weight is on the host anyway.
pub(super) fn place(
    opts: &ModelOptions,
    lo: &mut LoadOptions,
    config: &ModelConfig,
    sizes: Sizes,
) -> Result<Option<Plan>, LoadError> {
    if lo.backend != Backend::Candle {
        return Ok(None);
    }
    let free = bora_core::device_memory(&lo.device).map(|(free, _)| free as u64);
    let available = match (free, opts.device_memory_limit) {
        (Some(f), Some(l)) => Some(f.min(l)),
        (f, l) => f.or(l),
    };
    let kv_reserve = opts.kv_reserve.unwrap_or_else(|| {
        let positions = opts.max_model_len.unwrap_or(4096).min(config.context());
        positions as u64 * bora_model::KvCache::block_bytes(config, 1, lo.kv_cache_dtype()) as u64
    });
    let input = PlanInput {
        device: if lo.device.is_cpu() {
            "the CPU standing in for a GPU".into()
        } else {
            bora_core::device_name(&lo.device)
        },
        dense_bytes: sizes.dense,
        dense_read_bytes: sizes.dense_read,
        expert_bytes: sizes.experts,
        experts: config.num_local_experts,
        experts_per_tok: config.num_experts_per_tok,
        kv_reserve,
        available,
        limited: opts
            .device_memory_limit
            .is_some_and(|l| free.is_none_or(|f| l < f)),
    };
    let mut plan = Plan::new(input, opts.expert_placement);
    if !plan.fits {
        return Err(LoadError::DoesNotFit {
            device: plan.input.device.clone(),
            plan: plan.to_string(),
        });
    }
    if !lo.device.is_cpu() {
        plan.measure_bandwidth(&lo.device)
            .map_err(bora_model::ModelError::from)?;
    }
    lo.host_experts = plan.host_experts.clone();
    Ok(Some(plan))
}

/// The plan a load of `source` with `opts` would make, without loading it (`bora inspect
/// --device`): the file's headers and the device's free memory.
pub fn plan_for(source: &ModelSource, opts: &ModelOptions) -> Result<Option<Plan>, LoadError> {
    let source = source.resolve(opts.allow_download, &mut |_| {})?;
    let device = opts.device.open()?;
    let dtype = super::dtype_of(opts.dtype).unwrap_or(WeightDType::F32);
    let mut lo = super::weight_options(opts, dtype, device)?;
    if !lo.device.is_cpu() || opts.candle_on_cpu {
        lo.backend = Backend::Candle;
    }
    let (config, sizes) = match &source {
        ModelSource::Gguf(path) => {
            let store = GgufStore::open(path)?;
            let config = capped(gguf_config(&store)?, opts)?;
            let sizes = match opts.quantize {
                Some(_) => formula_sizes(&config, &lo),
                None => gguf_sizes(&store, &config),
            };
            (config, sizes)
        }
        ModelSource::Dir(dir) => {
            let config = capped(ModelConfig::from_file(&dir.join("config.json"))?, opts)?;
            let store = SafetensorsStore::open_dir(dir, MapMode::Lazy)?;
            if opts.dtype.is_none() {
                lo.dtype = store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?;
            }
            let sizes = formula_sizes(&config, &lo);
            (config, sizes)
        }
        ModelSource::Random(name) => {
            let config = capped(super::source::random_config(name)?, opts)?;
            let sizes = formula_sizes(&config, &lo);
            (config, sizes)
        }
        other => unreachable!("resolve gives files or a random shape, not {other:?}"),
    };
    let mut plan = place(opts, &mut lo, &config, sizes)?;
    if let Some(p) = &mut plan {
        if p.bandwidth.is_none() {
            p.measure_bandwidth(&lo.device)
                .map_err(bora_model::ModelError::from)?;
        }
    }
    Ok(plan)
}

/// Bytes per second that the worker threads read from memory together, as decode reads
/// weights: each thread sums its own contiguous part of a `bytes`-long buffer (its pages
/// written first: untouched pages would all be the one shared zero page, read from cache);
/// the best of 5 passes after a warm-up.
pub fn read_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads().max(1);
    let part = words.div_ceil(threads);
    let mut best = 0f64;
    for pass in 0..6 {
        let start = Instant::now();
        let sum: u64 = buf
            .par_chunks(part)
            .map(|c| {
                // Eight independent sums, so that the loop is bound by the loads alone.
                let mut s = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for (a, &v) in s.iter_mut().zip(w) {
                        *a = a.wrapping_add(v);
                    }
                }
                s.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        let secs = start.elapsed().as_secs_f64();
        if pass > 0 {
            best = best.max((words * 8) as f64 / secs);
        }
    }
    best
}

/// A buffer of `n` f32 values copied on `device` several times: (bytes read + bytes written)
/// per second, the best of the runs.
pub fn copy_bandwidth(device: &candle_core::Device, n: usize) -> candle_core::Result<f64> {
    let x = candle_core::Tensor::zeros(n, candle_core::DType::F32, device)?;
    let mut best = 0f64;
    for i in 0..6 {
        device.synchronize()?;
        let start = Instant::now();
        let y = x.copy()?;
        device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        drop(y);
        if i > 0 {
            best = best.max(2.0 * 4.0 * n as f64 / secs);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(available: Option<u64>) -> PlanInput {
        PlanInput {
            device: "cuda:0".into(),
            dense_bytes: 1_000,
            dense_read_bytes: 800,
            expert_bytes: vec![100; 4],
            experts: 8,
            experts_per_tok: 2,
            kv_reserve: 200,
            available,
            limited: false,
        }
    }

    #[test]
    fn the_fit_puts_the_last_layers_experts_on_the_device() {
        // 1000 + 200 + 1 (margin: 1/16 of 1500... ) then two layers of 100.
        let avail = 1_500;
        let p = Plan::new(input(Some(avail)), ExpertPlacement::Fit);
        let m = margin(avail);
        let room = avail - 1_000 - 200 - m;
        let on_device = (room / 100).min(4) as usize;
        assert_eq!(p.host_layers(), 4 - on_device);
        assert!(p.host_experts[..4 - on_device].iter().all(|&h| h));
        assert!(p.host_experts[4 - on_device..].iter().all(|&h| !h));
        assert!(p.fits);
        assert_eq!(p.left, room - on_device as u64 * 100);
        // Everything fits: nothing on the host.
        assert_eq!(
            Plan::new(input(Some(1 << 40)), ExpertPlacement::Fit).host_layers(),
            0
        );
        // Unknown memory: the device.
        assert_eq!(
            Plan::new(input(None), ExpertPlacement::Fit).host_layers(),
            0
        );
        // Too small for even the dense part.
        let p = Plan::new(input(Some(900)), ExpertPlacement::Fit);
        assert!(!p.fits);
        assert_eq!(p.host_layers(), 4);
    }

    #[test]
    fn flags_place_as_llama_cpp_does() {
        let p = Plan::new(input(None), ExpertPlacement::FirstOnCpu(3));
        assert_eq!(p.host_experts, vec![true, true, true, false]);
        let p = Plan::new(input(None), ExpertPlacement::Cpu);
        assert_eq!(p.host_layers(), 4);
        assert_eq!(p.bytes(), (1_000, 400));
        // 800 dense, then 2 of 8 experts' share of each layer.
        assert_eq!(p.read_per_token(), (800, 100));
        assert_eq!(layer_ranges(&p.host_experts, true), "0-3");
        assert_eq!(layer_ranges(&[true, false, true, true], true), "0,2-3");
        assert_eq!(layer_ranges(&[false; 3], true), "none");
    }
}
