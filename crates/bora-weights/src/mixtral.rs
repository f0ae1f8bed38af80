//! Loading a Mixtral checkpoint into [`MixtralWeights`], checking every tensor's shape.

use std::path::Path;

use bora_core::ModelConfig;
use bora_kernels::QType;
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
        }
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

    /// `h` quantized to `--quantize`'s type, when one is asked for.
    fn quantized(&self, h: HostMatrix, name: &str) -> Result<HostMatrix> {
        let Some(q) = self.opts.quantize else {
            return Ok(h);
        };
        let t = self.store.get(name)?;
        let quantized = h.quantize_checked(q, name, self.store.path(t))?;
        self.store.release(t);
        Ok(quantized)
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
            Backend::Host => Matrix::Host(self.quantized(self.host(&n, &[rows, cols])?, &n)?),
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
            (ExpertLayout::PerExpert, Backend::Host) => {
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
                        list.push(self.quantized(self.host(&n, &shape)?, &n)?);
                    }
                }
                Ok(Experts::Host { gate, up, down })
            }
            (ExpertLayout::Fused, Backend::Host) => {
                let (gu_name, dn_name) = (
                    TensorName::FusedGateUp(l).hf(self.layout),
                    TensorName::FusedDown(l).hf(self.layout),
                );
                let gu = self.quantized(self.host(&gu_name, &[e, 2 * im, h])?, &gu_name)?;
                let dn = self.quantized(self.host(&dn_name, &[e, h, im])?, &dn_name)?;
                Ok(Experts::Host {
                    gate: (0..e).map(|x| gu.slice_rows(x * 2 * im, im)).collect(),
                    up: (0..e).map(|x| gu.slice_rows(x * 2 * im + im, im)).collect(),
                    down: (0..e).map(|x| dn.slice_rows(x * h, h)).collect(),
                })
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
}
