//! Models with random weights and no file, for benchmarks at real sizes: Mixtral 8x7B's or
//! 8x22B's shape in a dense dtype or a ggml block type, made where they will run (on a CUDA
//! device, by a kernel writing the blocks in place; no 90 GB file and no host copy of it).

use std::sync::Arc;

use bora_core::ModelConfig;
use bora_kernels::{QBuf, QType};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::mixtral::{Backend, LayerWeights, LoadOptions, MixtralWeights};
use crate::names::ExpertLayout;
use crate::{Experts, HostMatrix, Matrix, Result};

/// The shapes `random:NAME` names (bora's model argument): Mixtral 8x7B (hidden 4096, intermediate 14336, 32 layers,
/// 32/8 heads, vocabulary 32000) and 8x22B (6144, 16384, 56 layers, 48/8 heads, 32768).
/// `demo` is the demo model's shape (hidden 128, 4 layers), `bench` the CPU-sized model of
/// benches/ (hidden 1024, intermediate 3584, 8 layers, 16/4 heads, 32000).
/// `NAME:LAYERS` takes the first `LAYERS` layers of the shape (`mixtral-8x7b:4`, a slice that
/// fits a small machine at every type).
pub fn preset_config(name: &str) -> Option<ModelConfig> {
    if let Some((shape, layers)) = name.split_once(':') {
        let layers: usize = layers.parse().ok().filter(|&n| n > 0)?;
        let mut c = preset_config(shape)?;
        if layers > c.num_hidden_layers {
            return None;
        }
        c.num_hidden_layers = layers;
        return Some(c);
    }
    let (h, i, layers, (heads, kv), vocab, ctx) = match name {
        "demo" => {
            let json = serde_json::from_str(crate::DEMO_CONFIG).ok()?;
            return ModelConfig::from_json(&json).ok();
        }
        "bench" => (1024, 3584, 8, (16, 4), 32000, 4096),
        "mixtral-8x7b" | "8x7b" => (4096, 14336, 32, (32, 8), 32000, 32768),
        "mixtral-8x22b" | "8x22b" => (6144, 16384, 56, (48, 8), 32768, 65536),
        _ => return None,
    };
    let json = serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": h,
        "intermediate_size": i,
        "max_position_embeddings": ctx,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": layers,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "vocab_size": vocab,
    });
    ModelConfig::from_json(&json).ok()
}

/// Block scales `(d, dmin)` that give random blocks of `q` values of about 0.01 to 0.03.
fn block_scales(q: QType) -> (f32, f32) {
    match q {
        QType::Q8_0 => (3e-4, 0.0),
        QType::Q4_0 | QType::Q4_1 => (3e-3, 1e-3),
        QType::Q5_0 | QType::Q5_1 => (1.5e-3, 1e-3),
        QType::Q2K => (4e-4, 2e-4),
        QType::Q3K => (2e-4, 0.0),
        QType::Q4K | QType::Q5K => (1e-4, 7e-4),
        QType::Q6K => (1.5e-5, 0.0),
        QType::IQ2XXS | QType::IQ2XS | QType::IQ2S => (4e-4, 0.0),
        QType::IQ3XXS | QType::IQ3S => (1.5e-4, 0.0),
        QType::IQ1S | QType::IQ1M => (3e-3, 0.0),
        QType::IQ4NL => (3e-4, 0.0),
        QType::IQ4XS => (2e-5, 0.0),
    }
}

/// A small fast generator (splitmix64), seeded per tensor.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// About normal with deviation `std` (a sum of four uniforms).
    fn normal(&mut self, std: f32) -> f32 {
        let r = self.next();
        let u = (0..4)
            .map(|k| ((r >> (16 * k)) & 0xffff) as f32 / 65535.0)
            .sum::<f32>();
        (u - 2.0) * std * 1.732
    }
}

/// Random ggml blocks on the host, with the scales of [`block_scales`]; repacked for the
/// packed kernels when `pack` (and they have a form for `q`).
fn host_blocks(
    q: QType,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
    pack: bool,
) -> Result<HostMatrix> {
    let Some(row_bytes) = q.row_bytes(cols) else {
        return Err(crate::WeightsError::Unsupported {
            path: "random weights".into(),
            reason: format!(
                "{} rows are made of blocks of {} values; {cols} is not a multiple",
                q.name(),
                q.block_elems()
            ),
        });
    };
    let mut buf = QBuf::zeroed(rows * row_bytes);
    for chunk in buf.as_bytes_mut().chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    let (d, dmin) = block_scales(q);
    for block in buf.as_bytes_mut().chunks_exact_mut(q.block_bytes()) {
        q.set_block_scales(block, d, dmin);
    }
    let h = HostMatrix::from_quant(buf, q, rows, cols);
    Ok(match pack.then(|| h.packed()).flatten() {
        Some(p) => p,
        None => h,
    })
}

/// Builds the weights of `config` with random values: linear layers in `opts.quantize`'s type
/// when given (routers and norms stay dense, as llama.cpp keeps them), otherwise in
/// `opts.dtype`; made on `opts.device`, by bora's block kernel on a CUDA device.
pub fn random_weights(
    config: ModelConfig,
    opts: &LoadOptions,
    seed: u64,
) -> Result<MixtralWeights> {
    crate::mixtral::check_fits_owned(crate::weight_bytes(&config, opts), opts)?;
    let (mut model, embed, lm_head) = RandomModel::start(config, opts, seed)?;
    let layers = (0..model.config.num_hidden_layers)
        .map(|_| model.next_layer())
        .collect::<Result<Vec<_>>>()?;
    let final_norm = model.final_norm()?;
    Ok(MixtralWeights {
        config: model.config,
        layout: ExpertLayout::PerExpert,
        options: opts.clone(),
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// A random model made part by part, in [`random_weights`]' order, so that the same seed gives
/// the same weights whether the model is held whole or written one layer at a time
/// ([`write_random_gguf`]).
pub struct RandomModel<'o> {
    pub config: ModelConfig,
    opts: &'o LoadOptions,
    rng: Rng,
    layer: usize,
}

impl<'o> RandomModel<'o> {
    /// The model and its embedding and head (made first).
    pub fn start(
        config: ModelConfig,
        opts: &'o LoadOptions,
        seed: u64,
    ) -> Result<(Self, Matrix, Matrix)> {
        let mut model = Self {
            config,
            opts,
            rng: Rng(seed),
            layer: 0,
        };
        let (h, v) = (model.config.hidden_size, model.config.vocab_size);
        let tied = model.config.tie_word_embeddings;
        let mut maker = model.maker();
        let embed = maker.matrix(v, h)?;
        // Made even when tied, so that the layers' weights are the same either way.
        let head = maker.matrix(v, h)?;
        let lm_head = if tied { embed.clone() } else { head };
        Ok((model, embed, lm_head))
    }

    fn maker(&mut self) -> Maker<'_> {
        Maker {
            opts: self.opts,
            rng: &mut self.rng,
        }
    }

    /// The next layer.
    pub fn next_layer(&mut self) -> Result<LayerWeights> {
        let c = &self.config;
        let (h, e, im) = (c.hidden_size, c.num_local_experts, c.intermediate_size);
        let (qd, kvd) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let l = self.layer;
        self.layer += 1;
        let mut maker = self.maker();
        Ok(LayerWeights {
            attn_norm: maker.ones(h)?,
            q: maker.matrix(qd, h)?,
            k: maker.matrix(kvd, h)?,
            v: maker.matrix(kvd, h)?,
            o: maker.matrix(h, qd)?,
            moe_norm: maker.ones(h)?,
            router: maker.dense_matrix(e, h)?,
            experts: maker.experts(l, e, im, h)?,
        })
    }

    /// The final norm.
    pub fn final_norm(&mut self) -> Result<Tensor> {
        let h = self.config.hidden_size;
        self.maker().ones(h)
    }
}

/// Writes the random model of `config` (made with `opts`, whose quantized type should be `q`:
/// its blocks are then written as made) to `path` as GGUF, one layer at a time, so that a
/// model larger than memory can be written; the same weights as [`random_weights`] with the
/// same seed. See [`crate::write_gguf`] for the rest.
pub fn write_random_gguf(
    config: ModelConfig,
    opts: &LoadOptions,
    seed: u64,
    q: QType,
    extra: Vec<(String, crate::gguf::MetaValue)>,
    path: &std::path::Path,
    progress: impl FnMut(usize, usize),
) -> Result<u64> {
    let (mut model, embed, lm_head) = RandomModel::start(config, opts, seed)?;
    let final_norm = model.final_norm()?;
    let config = model.config.clone();
    let parts = crate::gguf_export::ModelParts {
        config: &config,
        embed: &embed,
        final_norm: &final_norm,
        lm_head: &lm_head,
    };
    let mut layers = |f: &mut dyn FnMut(&LayerWeights) -> Result<()>| -> Result<()> {
        for _ in 0..config.num_hidden_layers {
            f(&model.next_layer()?)?;
        }
        Ok(())
    };
    crate::gguf_export::write_parts(&parts, &mut layers, q, extra, path, progress)
}

struct Maker<'a> {
    opts: &'a LoadOptions,
    rng: &'a mut Rng,
}

impl Maker<'_> {
    fn ones(&mut self, n: usize) -> Result<Tensor> {
        Ok(Tensor::ones(
            n,
            self.opts.activation_dtype(),
            &self.opts.device,
        )?)
    }

    /// Dense values, deviation 0.02.
    fn dense(&mut self, shape: &[usize]) -> Result<Tensor> {
        let dt = self.opts.dtype.candle();
        if self.opts.device.is_cpu() {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n).map(|_| self.rng.normal(0.02)).collect();
            return Ok(Tensor::from_vec(vals, shape, &Device::Cpu)?.to_dtype(dt)?);
        }
        Ok(Tensor::randn(0f32, 0.02, shape, &self.opts.device)?.to_dtype(dt)?)
    }

    fn dense_host(&mut self, rows: usize, cols: usize) -> HostMatrix {
        let vals: Vec<f32> = (0..rows * cols).map(|_| self.rng.normal(0.02)).collect();
        HostMatrix::from_f32(vals, rows, cols, self.opts.dtype)
    }

    fn dense_matrix(&mut self, rows: usize, cols: usize) -> Result<Matrix> {
        Ok(match self.opts.backend {
            Backend::Host => Matrix::Host(self.dense_host(rows, cols)),
            Backend::Candle => Matrix::Tensor(self.dense(&[rows, cols])?),
        })
    }

    /// `outer` stacked `[rows, cols]` matrices of random blocks as one quantized tensor on the
    /// device.
    fn device_blocks(&mut self, q: QType, shape: &[usize]) -> Result<Arc<QTensor>> {
        #[cfg(feature = "cuda")]
        if let (Device::Cuda(dev), Some(dtype)) = (&self.opts.device, q.candle()) {
            let n: usize = shape.iter().product();
            let storage = candle_core::quantized::QStorage::Cuda(
                candle_core::quantized::cuda::QCudaStorage::zeros(dev, n, dtype)?,
            );
            let t = QTensor::new(storage, shape)?;
            let (d, dmin) = block_scales(q);
            bora_kernels::cuda::fill_random_blocks(&t, d, dmin, self.rng.next())?;
            return Ok(Arc::new(t));
        }
        let cols = *shape.last().unwrap_or(&1);
        let rows = shape.iter().product::<usize>() / cols.max(1);
        let m = host_blocks(q, rows, cols, self.rng, false)?;
        let t = crate::upload_quant(&[&m], shape, &self.opts.device)?
            .expect("host_blocks makes quantized matrices of a type candle takes");
        Ok(Arc::new(t))
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Result<Matrix> {
        let Some(q) = self.opts.quantize else {
            return self.dense_matrix(rows, cols);
        };
        Ok(match self.opts.backend {
            Backend::Host => Matrix::Host(host_blocks(q, rows, cols, self.rng, self.opts.pack)?),
            Backend::Candle if q.candle().is_some() => {
                Matrix::Quant(self.device_blocks(q, &[rows, cols])?)
            }
            // A type candle lacks: its values, widened to the load dtype.
            Backend::Candle => {
                let h = host_blocks(q, rows, cols, self.rng, false)?;
                crate::mixtral::device_matrix(&h, self.opts)?
            }
        })
    }

    fn experts(&mut self, l: usize, e: usize, im: usize, h: usize) -> Result<Experts> {
        let host = self.opts.backend == Backend::Host || self.opts.experts_on_host(l);
        match (self.opts.quantize, self.opts.backend) {
            (None, Backend::Candle) if !host => Ok(Experts::Tensor {
                gate: self.dense(&[e, im, h])?,
                up: self.dense(&[e, im, h])?,
                down: self.dense(&[e, h, im])?,
            }),
            // Stacked blocks where candle's MoE kernels take the type (Q4_0 to Q5_1 they refuse:
            // those are made on the host and stacked as values).
            (Some(q), Backend::Candle)
                if self.opts.device.is_cuda() && !host && crate::mixtral::moe_gguf_type(q) =>
            {
                Ok(Experts::Quant {
                    gate: self.device_blocks(q, &[e, im, h])?,
                    up: self.device_blocks(q, &[e, im, h])?,
                    down: self.device_blocks(q, &[e, h, im])?,
                })
            }
            (q, _) => {
                let pack = self.opts.pack && host;
                let mut one = |rows, cols| -> Result<HostMatrix> {
                    match q {
                        Some(q) => host_blocks(q, rows, cols, self.rng, pack),
                        None => Ok(self.dense_host(rows, cols)),
                    }
                };
                let mut gate = Vec::with_capacity(e);
                let mut up = Vec::with_capacity(e);
                let mut down = Vec::with_capacity(e);
                for _ in 0..e {
                    gate.push(one(im, h)?);
                    up.push(one(im, h)?);
                    down.push(one(h, im)?);
                }
                if host {
                    Ok(Experts::Host { gate, up, down })
                } else {
                    crate::mixtral::device_experts(&gate, &up, &down, self.opts)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_mixtrals_shapes() {
        let c = preset_config("mixtral-8x7b").unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.vocab_size
            ),
            (4096, 14336, 32, 32000)
        );
        assert_eq!(c.param_count(), 46_702_792_704);
        assert!(preset_config("mixtral-8x22b").is_some());
        assert!(preset_config("llama").is_none());
        let slice = preset_config("mixtral-8x22b:3").unwrap();
        assert_eq!((slice.hidden_size, slice.num_hidden_layers), (6144, 3));
        for bad in [
            "mixtral-8x7b:0",
            "mixtral-8x7b:33",
            "mixtral-8x7b:x",
            "llama:2",
        ] {
            assert!(preset_config(bad).is_none(), "{bad}");
        }
        let bench = preset_config("bench").unwrap();
        assert_eq!(
            (
                bench.hidden_size,
                bench.intermediate_size,
                bench.num_key_value_heads
            ),
            (1024, 3584, 4)
        );
    }

    #[test]
    fn random_blocks_hold_small_finite_values() {
        let mut rng = Rng(7);
        for q in QType::ALL {
            let m = host_blocks(q, 4, 512, &mut rng, false).unwrap();
            let v = m.to_f32();
            let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
            let mean_abs = v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32;
            assert!(v.iter().all(|x| x.is_finite()), "{q:?}");
            assert!(
                max < 0.5 && mean_abs > 1e-3,
                "{q:?}: max {max}, mean |x| {mean_abs}"
            );
        }
    }
}
