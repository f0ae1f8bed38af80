//! Loading a Mixtral checkpoint into [`MixtralWeights`], checking every tensor's shape.

use std::path::Path;
use std::sync::Arc;

use bora_core::ModelConfig;
use bora_kernels::QType;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::names::{ExpertLayout, TensorName};
use crate::store::{MapMode, SafetensorsStore, StoredTensor};
use crate::{Experts, HostMatrix, Matrix, Result, WeightDType, WeightsError};

/// Which compute path the weights are laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// bora's CPU kernels over host matrices (mapped from the file when the dtype allows).
    Host,
    /// candle tensors on the given device (CUDA, Metal, or the CPU for cross-checks).
    Candle,
}

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype weights are kept in.
    pub dtype: WeightDType,
    pub device: Device,
    pub backend: Backend,
    /// Quantize the linear layers to this type while loading (bora's CPU kernels only; the
    /// routers stay as stored, as llama.cpp keeps them).
    pub quantize: Option<QType>,
    /// Repack quantized weights into the tiles of bora's packed CPU kernels
    /// (`bora_kernels::cpu::packed`) where the CPU and the type have them (bora's kernels
    /// only): faster products, the same results.
    pub pack: bool,
    /// The KV cache's dtype: `None` for the default ([`LoadOptions::kv_cache_dtype`]).
    pub kv_dtype: Option<DType>,
    /// Layers whose experts stay in host memory, computed by bora's CPU kernels on the blocks
    /// as the file has them (mapped, repacked where `pack` says), while the rest of the model
    /// is on the device: `host_experts[l]` for layer `l`, a missing entry meaning the device.
    /// The candle backend only (on bora's CPU kernels every weight is on the host anyway);
    /// `--cpu-moe`, `--n-cpu-moe` and the fit of `bora_engine::load` set it.
    pub host_experts: Vec<bool>,
}

impl LoadOptions {
    /// bora's kernels on the CPU when `device` is the CPU, candle elsewhere.
    pub fn new(dtype: WeightDType, device: Device) -> Self {
        let backend = if device.is_cpu() {
            Backend::Host
        } else {
            Backend::Candle
        };
        Self {
            dtype,
            device,
            backend,
            quantize: None,
            pack: true,
            kv_dtype: None,
            host_experts: Vec::new(),
        }
    }

    /// Whether layer `l`'s experts are kept in host memory beside a model on a device
    /// ([`LoadOptions::host_experts`]).
    pub fn experts_on_host(&self, l: usize) -> bool {
        self.backend == Backend::Candle && self.host_experts.get(l).copied().unwrap_or(false)
    }

    /// Layers whose experts are in host memory beside a model on a device.
    pub fn host_expert_layers(&self, layers: usize) -> usize {
        (0..layers).filter(|&l| self.experts_on_host(l)).count()
    }

    /// The dtype of the KV cache: as chosen, else the activations' dtype (f32 on bora's CPU
    /// kernels, which also keep f16: half the cache's memory and the bytes long-context decode
    /// reads, as llama.cpp's default cache, at the cost of logits that no longer match f32
    /// references to their tolerances).
    pub fn kv_cache_dtype(&self) -> DType {
        self.kv_dtype.unwrap_or(self.activation_dtype())
    }

    /// The dtype activations are computed in: f32 on bora's CPU kernels, the weights' dtype
    /// on candle's.
    pub fn activation_dtype(&self) -> DType {
        match self.backend {
            Backend::Host => DType::F32,
            Backend::Candle => self.dtype.candle(),
        }
    }
}

/// The weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `[H]`
    pub attn_norm: Tensor,
    /// `[heads·head_dim, H]`
    pub q: Matrix,
    /// `[kv_heads·head_dim, H]`
    pub k: Matrix,
    /// `[kv_heads·head_dim, H]`
    pub v: Matrix,
    /// `[H, heads·head_dim]`
    pub o: Matrix,
    /// `[H]`
    pub moe_norm: Tensor,
    /// `[E, H]`
    pub router: Matrix,
    pub experts: Experts,
}

impl LayerWeights {
    /// Whether the experts are kept in host memory beside a router on a device
    /// ([`LoadOptions::host_experts`]): the split step runs them.
    pub fn experts_on_host(&self) -> bool {
        matches!(self.experts, Experts::Host { .. }) && !matches!(self.router, Matrix::Host(_))
    }

    /// Bytes of the attention projections and the router: what every token of the layer
    /// reads besides its experts.
    pub fn attention_and_router_bytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o, &self.router]
            .iter()
            .map(|m| m.size_bytes())
            .sum()
    }
}

/// Every weight of a Mixtral model.
#[derive(Debug, Clone)]
pub struct MixtralWeights {
    pub config: ModelConfig,
    pub layout: ExpertLayout,
    pub options: LoadOptions,
    /// `[vocab, H]`
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    /// `[H]`
    pub final_norm: Tensor,
    /// `[vocab, H]`; the embedding itself when tied.
    pub lm_head: Matrix,
}

impl MixtralWeights {
    /// Loads `dir/config.json` and the checkpoint's safetensors files.
    pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = SafetensorsStore::open_dir(dir, MapMode::Populate)?;
        Self::load(&store, config, opts)
    }

    /// Builds the weights from an opened store.
    pub fn load(store: &SafetensorsStore, config: ModelConfig, opts: &LoadOptions) -> Result<Self> {
        if opts.quantize.is_some() {
            check_fits_owned(weight_bytes(&config, opts), opts)?;
        } else {
            check_fits(weight_bytes(&config, opts), opts)?;
        }
        let layout = if store.contains(&TensorName::FusedGateUp(0).hf(ExpertLayout::Fused)) {
            ExpertLayout::Fused
        } else {
            ExpertLayout::PerExpert
        };
        let l = Loader {
            store,
            layout,
            opts,
            cfg: &config,
        };
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed = l.matrix(TensorName::Embed, v, h)?;
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            l.matrix(TensorName::LmHead, v, h)?
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| l.layer(i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = l.vector(TensorName::FinalNorm, h)?;
        Ok(Self {
            layout,
            options: opts.clone(),
            embed,
            layers,
            final_norm,
            lm_head,
            config,
        })
    }
}

struct Loader<'a> {
    store: &'a SafetensorsStore,
    layout: ExpertLayout,
    opts: &'a LoadOptions,
    cfg: &'a ModelConfig,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<&StoredTensor> {
        let t = self.store.get(name)?;
        if t.shape != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                file: self.store.path(t).to_path_buf(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    fn host(&self, name: &str, shape: &[usize]) -> Result<HostMatrix> {
        let t = self.get(name, shape)?;
        let cols = *shape.last().unwrap_or(&1);
        let rows = shape.iter().product::<usize>() / cols.max(1);
        HostMatrix::load(self.store, name, t, rows, cols, self.opts.dtype)
    }

    /// `h` quantized to `--quantize`'s type, when one is asked for; repacked for bora's
    /// kernels when `host` (they compute on it) and the options allow.
    fn quantized(&self, h: HostMatrix, name: &str, host: bool) -> Result<HostMatrix> {
        let Some(q) = self.opts.quantize else {
            return Ok(h);
        };
        let t = self.store.get(name)?;
        let quantized = h.quantize_checked(q, name, self.store.path(t))?;
        self.store.release(t);
        Ok(if host && self.opts.pack {
            quantized.packed().unwrap_or(quantized)
        } else {
            quantized
        })
    }

    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        let stored = WeightDType::of_stored(t, name, self.store)?.candle();
        let x = Tensor::from_raw_buffer(self.store.bytes(t), stored, shape, &Device::Cpu)?;
        Ok(x.to_dtype(dtype)?.to_device(&self.opts.device)?)
    }

    fn matrix(&self, name: TensorName, rows: usize, cols: usize) -> Result<Matrix> {
        let n = name.hf(self.layout);
        Ok(match self.opts.backend {
            Backend::Host if matches!(name, TensorName::Router(_)) => {
                Matrix::Host(self.host(&n, &[rows, cols])?)
            }
            Backend::Host => {
                Matrix::Host(self.quantized(self.host(&n, &[rows, cols])?, &n, true)?)
            }
            Backend::Candle
                if self.opts.quantize.is_some() && !matches!(name, TensorName::Router(_)) =>
            {
                device_matrix(
                    &self.quantized(self.host(&n, &[rows, cols])?, &n, false)?,
                    self.opts,
                )?
            }
            Backend::Candle => {
                Matrix::Tensor(self.tensor(&n, &[rows, cols], self.opts.dtype.candle())?)
            }
        })
    }

    /// A norm weight, kept in the activation dtype on the device.
    fn vector(&self, name: TensorName, len: usize) -> Result<Tensor> {
        let n = name.hf(self.layout);
        self.tensor(&n, &[len], self.opts.activation_dtype())
    }

    fn layer(&self, i: usize) -> Result<LayerWeights> {
        let c = self.cfg;
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        Ok(LayerWeights {
            attn_norm: self.vector(TensorName::AttnNorm(i), h)?,
            q: self.matrix(TensorName::Q(i), q, h)?,
            k: self.matrix(TensorName::K(i), kv, h)?,
            v: self.matrix(TensorName::V(i), kv, h)?,
            o: self.matrix(TensorName::O(i), h, q)?,
            moe_norm: self.vector(TensorName::MoeNorm(i), h)?,
            router: self.matrix(TensorName::Router(i), c.num_local_experts, h)?,
            experts: self.experts(i)?,
        })
    }

    fn experts(&self, l: usize) -> Result<Experts> {
        let (e, im, h) = (
            self.cfg.num_local_experts,
            self.cfg.intermediate_size,
            self.cfg.hidden_size,
        );
        match (self.layout, self.opts.backend) {
            (_, Backend::Host) => {
                let (gate, up, down) = self.host_experts(l, true)?;
                Ok(Experts::Host { gate, up, down })
            }
            // Beside a model on a device, kept in host memory for bora's kernels.
            (_, Backend::Candle) if self.opts.experts_on_host(l) => {
                let (gate, up, down) = self.host_experts(l, true)?;
                Ok(Experts::Host { gate, up, down })
            }
            // Quantized at load: made on the host, then put on the device.
            (_, Backend::Candle) if self.opts.quantize.is_some() => {
                let (gate, up, down) = self.host_experts(l, false)?;
                device_experts(&gate, &up, &down, self.opts)
            }
            (ExpertLayout::PerExpert, Backend::Candle) => {
                let dt = self.opts.dtype.candle();
                let stack =
                    |f: fn(usize, usize) -> TensorName, shape: [usize; 2]| -> Result<Tensor> {
                        let parts = (0..e)
                            .map(|x| self.tensor(&f(l, x).hf(self.layout), &shape, dt))
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Tensor::stack(&parts, 0)?)
                    };
                Ok(Experts::Tensor {
                    gate: stack(TensorName::ExpertGate, [im, h])?,
                    up: stack(TensorName::ExpertUp, [im, h])?,
                    down: stack(TensorName::ExpertDown, [h, im])?,
                })
            }
            (ExpertLayout::Fused, Backend::Candle) => {
                let dt = self.opts.dtype.candle();
                let gu = self.tensor(
                    &TensorName::FusedGateUp(l).hf(self.layout),
                    &[e, 2 * im, h],
                    dt,
                )?;
                Ok(Experts::Tensor {
                    gate: gu.narrow(1, 0, im)?.contiguous()?,
                    up: gu.narrow(1, im, im)?.contiguous()?,
                    down: self.tensor(
                        &TensorName::FusedDown(l).hf(self.layout),
                        &[e, h, im],
                        dt,
                    )?,
                })
            }
        }
    }

    /// Layer `l`'s experts as host matrices (gate, up, down per expert), quantized to
    /// `--quantize`'s type when one is asked for; `host`: computed on by bora's kernels.
    #[allow(clippy::type_complexity)]
    fn host_experts(
        &self,
        l: usize,
        host: bool,
    ) -> Result<(Vec<HostMatrix>, Vec<HostMatrix>, Vec<HostMatrix>)> {
        let (e, im, h) = (
            self.cfg.num_local_experts,
            self.cfg.intermediate_size,
            self.cfg.hidden_size,
        );
        match self.layout {
            ExpertLayout::PerExpert => {
                let mut gate = Vec::with_capacity(e);
                let mut up = Vec::with_capacity(e);
                let mut down = Vec::with_capacity(e);
                for x in 0..e {
                    for (list, name, shape) in [
                        (&mut gate, TensorName::ExpertGate(l, x), [im, h]),
                        (&mut up, TensorName::ExpertUp(l, x), [im, h]),
                        (&mut down, TensorName::ExpertDown(l, x), [h, im]),
                    ] {
                        let n = name.hf(self.layout);
                        list.push(self.quantized(self.host(&n, &shape)?, &n, host)?);
                    }
                }
                Ok((gate, up, down))
            }
            ExpertLayout::Fused => {
                let (gu_name, dn_name) = (
                    TensorName::FusedGateUp(l).hf(self.layout),
                    TensorName::FusedDown(l).hf(self.layout),
                );
                let gu = self.quantized(self.host(&gu_name, &[e, 2 * im, h])?, &gu_name, host)?;
                let dn = self.quantized(self.host(&dn_name, &[e, h, im])?, &dn_name, host)?;
                Ok((
                    (0..e).map(|x| gu.slice_rows(x * 2 * im, im)).collect(),
                    (0..e).map(|x| gu.slice_rows(x * 2 * im + im, im)).collect(),
                    (0..e).map(|x| dn.slice_rows(x * h, h)).collect(),
                ))
            }
        }
    }
}

/// A host matrix on the candle path: its blocks as a quantized tensor on the device when it is
/// quantized, otherwise its values in the load dtype.
pub fn device_matrix(h: &HostMatrix, opts: &LoadOptions) -> Result<Matrix> {
    if let Some(q) = crate::upload_quant(&[h], &[h.rows(), h.cols()], &opts.device)? {
        return Ok(Matrix::Quant(Arc::new(q)));
    }
    Ok(Matrix::Tensor(dense(h, opts)?))
}

fn dense(h: &HostMatrix, opts: &LoadOptions) -> Result<Tensor> {
    let t = Tensor::from_vec(h.to_f32(), (h.rows(), h.cols()), &Device::Cpu)?;
    Ok(t.to_dtype(opts.dtype.candle())?.to_device(&opts.device)?)
}

/// Whether candle's MoE GEMM and GEMV over ggml blocks (CUDA only) take this type.
pub(crate) fn moe_gguf_type(q: QType) -> bool {
    matches!(
        q,
        QType::Q8_0 | QType::Q2K | QType::Q3K | QType::Q4K | QType::Q5K | QType::Q6K
    )
}

/// A layer's experts on the candle path: stacked blocks on a CUDA device when they are of one
/// type that candle's MoE kernels take, otherwise stacked values in the load dtype.
pub(crate) fn device_experts(
    gate: &[HostMatrix],
    up: &[HostMatrix],
    down: &[HostMatrix],
    opts: &LoadOptions,
) -> Result<Experts> {
    let quant = |ms: &[HostMatrix]| -> Result<Option<Arc<QTensor>>> {
        let Some(first) = ms.first() else {
            return Ok(None);
        };
        let refs: Vec<&HostMatrix> = ms.iter().collect();
        let shape = [ms.len(), first.rows(), first.cols()];
        Ok(crate::upload_quant(&refs, &shape, &opts.device)?.map(Arc::new))
    };
    let all_moe_types = [gate, up, down].iter().all(|ms| {
        ms.iter()
            .all(|m| matches!(m.format(), crate::WeightFormat::Quant(q) if moe_gguf_type(q)))
    });
    if opts.device.is_cuda() && all_moe_types {
        if let (Some(gate), Some(up), Some(down)) = (quant(gate)?, quant(up)?, quant(down)?) {
            return Ok(Experts::Quant { gate, up, down });
        }
    }
    let stack = |ms: &[HostMatrix]| -> Result<Tensor> {
        let parts = ms
            .iter()
            .map(|m| dense(m, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&parts, 0)?)
    };
    Ok(Experts::Tensor {
        gate: stack(gate)?,
        up: stack(up)?,
        down: stack(down)?,
    })
}

/// Bytes the weights of a model of `config` take on its device when loaded with `opts` (linear
/// layers in `opts.quantize`'s type when given, the rest in the load dtype; the experts of
/// layers kept in host memory beside a device not counted).
pub fn weight_bytes(config: &ModelConfig, opts: &LoadOptions) -> u64 {
    let c = config;
    let (h, v, e, im) = (
        c.hidden_size as u64,
        c.vocab_size as u64,
        c.num_local_experts as u64,
        c.intermediate_size as u64,
    );
    let (q, kv) = (
        (c.num_attention_heads * c.head_dim) as u64,
        (c.num_key_value_heads * c.head_dim) as u64,
    );
    let dense = opts.dtype.size() as u64;
    // Norms are kept in the activations' dtype (f32 on bora's CPU path).
    let norm = opts.activation_dtype().size_in_bytes() as u64;
    let linear = |rows: u64, cols: u64| match opts.quantize {
        Some(t) => t
            .row_bytes(cols as usize)
            .map_or(rows * cols * dense, |r| rows * r as u64),
        None => rows * cols * dense,
    };
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    let experts = e * (2 * linear(im, h) + linear(h, im));
    let layer = linear(q, h) + 2 * linear(kv, h) + linear(h, q) + e * h * dense + 2 * h * norm;
    let layers = c.num_hidden_layers as u64;
    let device_experts = layers - opts.host_expert_layers(c.num_hidden_layers) as u64;
    heads * linear(v, h) + layers * layer + device_experts * experts + h * norm
}

/// On a device that reports its free memory (CUDA), an error saying how much is needed and
/// free when `need` bytes of weights do not fit.
pub fn check_fits(need: u64, opts: &LoadOptions) -> Result<()> {
    match bora_core::device_memory(&opts.device) {
        Some((free, total)) if need > free as u64 => Err(WeightsError::DoesNotFit {
            device: bora_core::device_name(&opts.device),
            need,
            free: free as u64,
            total: total as u64,
        }),
        _ => Ok(()),
    }
}

/// On the CPU, where weights are made rather than mapped from a file (quantized at load,
/// random), the same check against the host's available memory (`MemAvailable`): the error
/// comes before the allocation, not the kernel's OOM killer after minutes of loading.
pub fn check_fits_owned(need: u64, opts: &LoadOptions) -> Result<()> {
    if !opts.device.is_cpu() {
        return check_fits(need, opts);
    }
    match bora_core::host_memory() {
        Some((free, total)) if need > free => Err(WeightsError::DoesNotFit {
            device: "cpu".into(),
            need,
            free,
            total,
        }),
        _ => Ok(()),
    }
}
