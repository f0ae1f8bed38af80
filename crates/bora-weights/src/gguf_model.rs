//! A Mixtral model from a GGUF file: the configuration from its `llama.*` metadata, the
//! weights by llama.cpp's tensor names, in either expert layout, into the same
//! [`MixtralWeights`] a safetensors checkpoint gives.

use bora_core::{Architecture, ModelConfig};
use candle_core::{Device, Tensor};

use crate::gguf::{GgmlType, GgufStore, GgufTensorInfo, MetaValue};
use crate::matrix::WeightFormat;
use crate::mixtral::{
    device_experts, device_matrix, Backend, LayerWeights, LoadOptions, MixtralWeights,
};
use crate::names::ExpertLayout;
use crate::{Experts, HostMatrix, Matrix, Result, WeightDType, WeightsError};

/// The model configuration a GGUF file's metadata describes.
pub fn gguf_config(store: &GgufStore) -> Result<ModelConfig> {
    let path = store.main().path.clone();
    let bad = |reason: String| WeightsError::Unsupported {
        path: path.clone(),
        reason,
    };
    let arch = store
        .meta("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| bad("no general.architecture in the metadata".into()))?
        .to_string();
    if arch != "llama" {
        return Err(bad(format!(
            "architecture `{arch}` is not supported: bora runs Mixtral models (GGUF architecture `llama` with experts)"
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<Option<usize>> {
        match store.meta(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    bad(format!(
                        "metadata {} is {}, not a count",
                        key(k),
                        v.summary()
                    ))
                }),
        }
    };
    let need = |k: &str| -> Result<usize> {
        int(k)?.ok_or_else(|| bad(format!("metadata {} is missing", key(k))))
    };
    let float = |k: &str| -> Result<Option<f64>> {
        match store.meta(&key(k)) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                bad(format!(
                    "metadata {} is {}, not a number",
                    key(k),
                    v.summary()
                ))
            }),
        }
    };
    let experts = int("expert_count")?.unwrap_or(0);
    if experts == 0 {
        return Err(bad(
            "a dense llama model (no llama.expert_count): bora runs Mixtral mixture-of-experts models".into(),
        ));
    }
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let head_dim = match int("attention.key_length")? {
        Some(d) => d,
        None if heads > 0 => hidden / heads,
        None => 0,
    };
    let embed = store.get("token_embd.weight")?.1;
    let vocab = match int("vocab_size")? {
        Some(v) => v,
        None => embed.dims.get(1).copied().unwrap_or(0),
    };
    let token_id = |k: &str| -> Option<u32> {
        store
            .meta(k)
            .and_then(MetaValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let cfg = ModelConfig {
        architecture: Architecture::Mixtral,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: int("attention.head_count_kv")?.unwrap_or(heads),
        head_dim,
        num_local_experts: experts,
        num_experts_per_tok: need("expert_used_count")?,
        rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        max_position_embeddings: need("context_length")?,
        sliding_window: None,
        tie_word_embeddings: !store.contains("output.weight"),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: token_id("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
    };
    if let Some(rope) = int("rope.dimension_count")? {
        if rope != cfg.head_dim {
            return Err(bad(format!(
                "rotary embeddings over {rope} of {} head dimensions are not supported",
                cfg.head_dim
            )));
        }
    }
    cfg.validate()
        .map_err(|e| bad(format!("inconsistent metadata: {e}")))?;
    Ok(cfg)
}

/// Which tensor types a file holds, with counts, for messages and `inspect`.
pub fn gguf_type_counts(store: &GgufStore) -> Vec<(GgmlType, usize)> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for (_, t) in store.tensors() {
        match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, c)) => *c += 1,
            None => counts.push((t.dtype, 1)),
        }
    }
    counts
}

impl MixtralWeights {
    /// Builds the weights of a GGUF model (`gguf_config` gives its configuration).
    pub fn load_gguf(store: &GgufStore, config: ModelConfig, opts: &LoadOptions) -> Result<Self> {
        let host_bytes: u64 = (0..config.num_hidden_layers)
            .filter(|&l| opts.experts_on_host(l))
            .map(|l| gguf_expert_bytes(store, l))
            .sum();
        crate::mixtral::check_fits(store.data_bytes().saturating_sub(host_bytes), opts)?;
        let unsupported: Vec<String> = store
            .tensors()
            .filter(|(_, t)| matches!(t.dtype, GgmlType::Unsupported(..)))
            .map(|(_, t)| format!("{} ({})", t.name, t.dtype))
            .collect();
        if !unsupported.is_empty() {
            let mut types: Vec<&str> = store
                .tensors()
                .filter_map(|(_, t)| match t.dtype {
                    GgmlType::Unsupported(_, n) => Some(n),
                    _ => None,
                })
                .collect();
            types.dedup();
            return Err(WeightsError::Unsupported {
                path: store.main().path.clone(),
                reason: format!(
                    "tensor type {} is not supported (bora reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K); {} tensors use it, e.g. {}",
                    types.join(", "),
                    unsupported.len(),
                    unsupported[0]
                ),
            });
        }
        let layout = if store.contains("blk.0.ffn_gate_exps.weight") {
            ExpertLayout::Fused
        } else {
            ExpertLayout::PerExpert
        };
        let l = GgufLoader {
            store,
            opts,
            cfg: &config,
        };
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed = l.matrix("token_embd.weight", v, h, None)?;
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            l.matrix("output.weight", v, h, None)?
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| l.layer(i, layout))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = l.vector("output_norm.weight", h)?;
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

struct GgufLoader<'a> {
    store: &'a GgufStore,
    opts: &'a LoadOptions,
    cfg: &'a ModelConfig,
}

impl GgufLoader<'_> {
    /// The tensor `name`, checked to have `shape` (row-major, outermost first).
    fn get(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(&crate::gguf::GgufFile, &GgufTensorInfo)> {
        let (f, t) = self.store.get(name)?;
        if t.shape() != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                file: f.path.clone(),
                expected: shape.to_vec(),
                got: t.shape(),
            });
        }
        Ok((f, t))
    }

    /// A host matrix over the file's bytes of `name` (`[rows·outer, cols]`).
    fn host(&self, name: &str, shape: &[usize]) -> Result<HostMatrix> {
        let (f, t) = self.get(name, shape)?;
        let cols = *shape.last().unwrap_or(&1);
        let rows = shape.iter().product::<usize>() / cols.max(1);
        let format = match t.dtype {
            GgmlType::F32 => WeightFormat::Float(WeightDType::F32),
            GgmlType::F16 => WeightFormat::Float(WeightDType::F16),
            GgmlType::BF16 => WeightFormat::Float(WeightDType::BF16),
            GgmlType::Quant(q) => WeightFormat::Quant(q),
            GgmlType::Unsupported(..) => unreachable!("checked in load_gguf"),
        };
        Ok(HostMatrix::mapped(
            f.map.clone(),
            t.start,
            format,
            rows,
            cols,
        ))
    }

    /// A linear layer's weight; `permute` gives llama.cpp's rotary row order to undo.
    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        permute: Option<usize>,
    ) -> Result<Matrix> {
        let mut h = self.host(name, &[rows, cols])?;
        if let Some(heads) = permute {
            let mapped = h.is_mapped();
            h = h.permute_rows(&unpermute_order(rows, heads));
            // The rows in checkpoint order are a copy: the file's need not stay resident.
            if mapped {
                let (f, t) = self.store.get(name)?;
                crate::store::release_pages(&f.map, t.start, t.end);
            }
        }
        if !name.contains("ffn_gate_inp") {
            let host = self.opts.backend == Backend::Host;
            h = self.packed(self.quantized(h, name)?, name, host)?;
        }
        self.finish(h)
    }

    /// `h` repacked for bora's packed kernels where it can be (`LoadOptions::pack`), the file
    /// pages of tensor `name` released once their copy is made: memory stays near the file's
    /// size, tensor by tensor. `host`: bora's kernels compute on it (else it is never packed).
    fn packed(&self, h: HostMatrix, name: &str, host: bool) -> Result<HostMatrix> {
        if !host || !self.opts.pack {
            return Ok(h);
        }
        let (f, t) = self.store.get(name)?;
        let mapped = h.is_mapped();
        let packed = h.packed_with(|done| {
            if mapped {
                crate::store::release_pages(&f.map, t.start + done.start, t.start + done.end);
            }
        });
        Ok(packed.unwrap_or(h))
    }

    /// Float weights quantized to `--quantize`'s type when one is asked for (quantized
    /// tensors stay as the file has them).
    fn quantized(&self, h: HostMatrix, name: &str) -> Result<HostMatrix> {
        match (self.opts.quantize, h.format()) {
            (Some(q), WeightFormat::Float(_)) => {
                h.quantize_checked(q, name, &self.store.get(name)?.0.path)
            }
            _ => Ok(h),
        }
    }

    fn finish(&self, h: HostMatrix) -> Result<Matrix> {
        match self.opts.backend {
            Backend::Host => Ok(Matrix::Host(h)),
            Backend::Candle => device_matrix(&h, self.opts),
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let h = self.host(name, &[len])?;
        let t = Tensor::from_vec(h.to_f32(), len, &Device::Cpu)?;
        Ok(t.to_dtype(self.opts.activation_dtype())?
            .to_device(&self.opts.device)?)
    }

    fn layer(&self, i: usize, layout: ExpertLayout) -> Result<LayerWeights> {
        let c = self.cfg;
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        Ok(LayerWeights {
            attn_norm: self.vector(&n("attn_norm"), h)?,
            q: self.matrix(&n("attn_q"), q, h, Some(c.num_attention_heads))?,
            k: self.matrix(&n("attn_k"), kv, h, Some(c.num_key_value_heads))?,
            v: self.matrix(&n("attn_v"), kv, h, None)?,
            o: self.matrix(&n("attn_output"), h, q, None)?,
            moe_norm: self.vector(&n("ffn_norm"), h)?,
            router: self.matrix(&n("ffn_gate_inp"), c.num_local_experts, h, None)?,
            experts: self.experts(i, layout)?,
        })
    }

    fn experts(&self, l: usize, layout: ExpertLayout) -> Result<Experts> {
        let (e, im, h) = (
            self.cfg.num_local_experts,
            self.cfg.intermediate_size,
            self.cfg.hidden_size,
        );
        let host = self.opts.backend == Backend::Host || self.opts.experts_on_host(l);
        let (gate, up, down): (Vec<HostMatrix>, Vec<HostMatrix>, Vec<HostMatrix>) = match layout {
            ExpertLayout::Fused => {
                let stacked = |p: &str, shape: [usize; 3]| {
                    let name = format!("blk.{l}.ffn_{p}_exps.weight");
                    self.packed(
                        self.quantized(self.host(&name, &shape)?, &name)?,
                        &name,
                        host,
                    )
                };
                let g = stacked("gate", [e, im, h])?;
                let u = stacked("up", [e, im, h])?;
                let d = stacked("down", [e, h, im])?;
                (
                    (0..e).map(|x| g.slice_rows(x * im, im)).collect(),
                    (0..e).map(|x| u.slice_rows(x * im, im)).collect(),
                    (0..e).map(|x| d.slice_rows(x * h, h)).collect(),
                )
            }
            ExpertLayout::PerExpert => {
                let one = |p: &str, x: usize, shape: [usize; 2]| {
                    let name = format!("blk.{l}.ffn_{p}.{x}.weight");
                    self.packed(
                        self.quantized(self.host(&name, &shape)?, &name)?,
                        &name,
                        host,
                    )
                };
                (
                    (0..e)
                        .map(|x| one("gate", x, [im, h]))
                        .collect::<Result<_>>()?,
                    (0..e)
                        .map(|x| one("up", x, [im, h]))
                        .collect::<Result<_>>()?,
                    (0..e)
                        .map(|x| one("down", x, [h, im]))
                        .collect::<Result<_>>()?,
                )
            }
        };
        if host {
            Ok(Experts::Host { gate, up, down })
        } else {
            device_experts(&gate, &up, &down, self.opts)
        }
    }
}

/// Bytes of layer `l`'s expert tensors in a GGUF file (either expert layout).
pub fn gguf_expert_bytes(store: &GgufStore, l: usize) -> u64 {
    let fused = format!("blk.{l}.ffn_");
    store
        .tensors()
        .filter(|(_, t)| {
            t.name.strip_prefix(&fused).is_some_and(|rest| {
                ["gate", "up", "down"].iter().any(|p| {
                    rest.starts_with(&format!("{p}_exps.")) || rest.starts_with(&format!("{p}."))
                })
            })
        })
        .map(|(_, t)| (t.end - t.start) as u64)
        .sum()
}

/// The row order that undoes llama.cpp's converter's permutation of a q or k projection
/// (`rows = heads · head_dim`): within each head it stores the two rotary halves interleaved,
/// row `2i + j` of the file being row `j · head_dim/2 + i` of the checkpoint.
pub fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads.max(1);
    let half = d / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                order[h * d + j * half + i] = h * d + 2 * i + j;
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        // The converter: reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, d) = (3, 8);
        let rows = heads * d;
        let permuted: Vec<usize> = (0..rows)
            .map(|r| {
                let (h, rest) = (r / d, r % d);
                let (i, j) = (rest / 2, rest % 2);
                h * d + j * (d / 2) + i
            })
            .collect();
        // permuted[file row] = checkpoint row; the order maps checkpoint rows to file rows.
        let order = unpermute_order(rows, heads);
        for (orig, &file_row) in order.iter().enumerate() {
            assert_eq!(permuted[file_row], orig);
        }
    }
}
