//! Writing a loaded Mixtral model as a GGUF file in llama.cpp's conventions (`llama`
//! architecture, merged expert tensors, q/k rows in its rotary order), quantized tensor by
//! tensor as it is written.

use std::path::Path;

use bora_kernels::{QBuf, QType};
use candle_core::Tensor;

use bora_core::ModelConfig;

use crate::gguf::{GgmlType, MetaValue};
use crate::gguf_write::{GgufWriter, TensorSpec};
use crate::mixtral::LayerWeights;
use crate::{unpermute_order, Experts, HostMatrix, Matrix, MixtralWeights, Result, WeightsError};

/// llama.cpp's `llama_ftype` for a file whose weights are all of type `q`.
fn file_type(q: QType) -> u32 {
    match q {
        QType::Q4_0 => 2,
        QType::Q4_1 => 3,
        QType::Q8_0 => 7,
        QType::Q5_0 => 8,
        QType::Q5_1 => 9,
        QType::Q2K => 10,
        QType::Q3K => 11,
        QType::Q4K => 14,
        QType::Q5K => 16,
        QType::Q6K => 18,
        QType::IQ2XXS => 19,
        QType::IQ2XS => 20,
        QType::IQ3XXS => 23,
        QType::IQ1S => 24,
        QType::IQ4NL => 25,
        QType::IQ3S => 26,
        QType::IQ2S => 28,
        QType::IQ4XS => 30,
        QType::IQ1M => 31,
    }
}

fn host_of<'a>(m: &'a Matrix, path: &Path) -> Result<&'a HostMatrix> {
    match m {
        Matrix::Host(h) => Ok(h),
        Matrix::Tensor(_) | Matrix::Quant(_) => Err(WeightsError::Write {
            path: path.to_path_buf(),
            reason: "the model must be loaded on the CPU to be written".into(),
        }),
    }
}

/// The parts of a model that are not its layers, for [`write_parts`].
pub struct ModelParts<'a> {
    pub config: &'a ModelConfig,
    /// `[V, H]`
    pub embed: &'a Matrix,
    /// `[H]`
    pub final_norm: &'a Tensor,
    /// `[V, H]` (unused where the embeddings are tied)
    pub lm_head: &'a Matrix,
}

/// Calls its argument with each layer in order (made one at a time, or borrowed).
pub type EachLayer<'a> = dyn FnMut(&mut dyn FnMut(&LayerWeights) -> Result<()>) -> Result<()> + 'a;

/// Writes `weights` (host matrices) to `path` as GGUF with the linear layers in `q` (the
/// routers and norms in F32, as llama.cpp keeps them). `extra` is added to the metadata (the
/// tokenizer's `tokenizer.ggml.*` keys, a name). `progress(done, total)` counts tensors.
pub fn write_gguf(
    weights: &MixtralWeights,
    q: QType,
    extra: Vec<(String, MetaValue)>,
    path: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<u64> {
    let parts = ModelParts {
        config: &weights.config,
        embed: &weights.embed,
        final_norm: &weights.final_norm,
        lm_head: &weights.lm_head,
    };
    let mut layers = |f: &mut dyn FnMut(&LayerWeights) -> Result<()>| -> Result<()> {
        weights.layers.iter().try_for_each(f)
    };
    write_parts(&parts, &mut layers, q, extra, path, progress)
}

/// The tensors of a Mixtral GGUF file in llama.cpp's order and conventions, from `config`:
/// each with its spec and whether it is one of the quantized matrices.
fn specs(c: &ModelConfig, q: QType) -> Vec<TensorSpec> {
    let (h, v, e, im) = (
        c.hidden_size,
        c.vocab_size,
        c.num_local_experts,
        c.intermediate_size,
    );
    let (qd, kvd) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let spec = |name: String, dims: Vec<usize>, dtype| TensorSpec { name, dims, dtype };
    let (f32t, qt) = (GgmlType::F32, GgmlType::Quant(q));
    let mut out = vec![spec("token_embd.weight".into(), vec![h, v], qt)];
    for i in 0..c.num_hidden_layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        out.extend([
            spec(n("attn_norm"), vec![h], f32t),
            spec(n("attn_q"), vec![h, qd], qt),
            spec(n("attn_k"), vec![h, kvd], qt),
            spec(n("attn_v"), vec![h, kvd], qt),
            spec(n("attn_output"), vec![qd, h], qt),
            spec(n("ffn_norm"), vec![h], f32t),
            spec(n("ffn_gate_inp"), vec![h, e], f32t),
            spec(n("ffn_gate_exps"), vec![h, im, e], qt),
            spec(n("ffn_up_exps"), vec![h, im, e], qt),
            spec(n("ffn_down_exps"), vec![im, h, e], qt),
        ]);
    }
    out.push(spec("output_norm.weight".into(), vec![h], f32t));
    if !c.tie_word_embeddings {
        out.push(spec("output.weight".into(), vec![h, v], qt));
    }
    out
}

/// The rows of `ms` one after another, in `q`: copied where a matrix already holds blocks of
/// `q` (a random model made in that type), quantized otherwise; the rows of each taken in
/// `order` when given.
fn matrix_bytes(
    ms: &[&HostMatrix],
    order: Option<&[usize]>,
    q: QType,
) -> std::result::Result<QBuf, String> {
    let cols = ms[0].cols();
    let row_bytes = q.row_bytes(cols).unwrap_or(0);
    let rows: usize = ms.iter().map(|m| m.rows()).sum();
    let mut out = QBuf::zeroed(rows * row_bytes);
    let mut at = 0;
    for m in ms {
        let len = m.rows() * row_bytes;
        let dst = &mut out.as_bytes_mut()[at..at + len];
        match m.weights() {
            bora_kernels::WeightRef::Quant(t, src) if t == q => {
                for (r, d) in dst.chunks_exact_mut(row_bytes).enumerate() {
                    let s = order.map_or(r, |o| o[r]);
                    d.copy_from_slice(&src[s * row_bytes..(s + 1) * row_bytes]);
                }
            }
            _ if !q.quantizable() => {
                return Err(format!(
                    "bora reads {q} but does not write it: make it from this file with \
                     llama-quantize (the i-quants need an importance matrix)"
                ))
            }
            _ => m.quantize_rows_into(q, order, dst),
        }
        at += len;
    }
    Ok(out)
}

/// Writes a model given as its parts and its layers (`layers` calls its argument with each
/// in order: a random model makes them one at a time) to `path`, as [`write_gguf`] does.
pub fn write_parts(
    parts: &ModelParts<'_>,
    layers: &mut EachLayer<'_>,
    q: QType,
    extra: Vec<(String, MetaValue)>,
    path: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<u64> {
    let c = parts.config;
    let err = |reason: String| WeightsError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let specs = specs(c, q);
    for spec in &specs {
        if spec.dtype == GgmlType::Quant(q) && q.row_bytes(spec.dims[0]).is_none() {
            return Err(err(format!(
                "`{}` has rows of {} values, not a multiple of {q}'s block of {}",
                spec.name,
                spec.dims[0],
                q.block_elems()
            )));
        }
    }
    let mut meta = metadata(c, q);
    meta.extend(extra);
    let mut w = GgufWriter::create(path, &meta, &specs)?;
    let total = specs.len();
    let mut done = 0;
    let mut next = |w: &mut GgufWriter, bytes: &[u8]| -> Result<()> {
        w.tensor(&specs[done].name, bytes)?;
        done += 1;
        progress(done, total);
        Ok(())
    };
    let vector = |t: &Tensor| -> Result<Vec<u8>> {
        let v: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    let matrix = |ms: &[&HostMatrix], order: Option<&[usize]>| -> Result<QBuf> {
        matrix_bytes(ms, order, q).map_err(err)
    };
    next(
        &mut w,
        matrix(&[host_of(parts.embed, path)?], None)?.as_bytes(),
    )?;
    // llama.cpp's row order of a q/k projection: file row f holds checkpoint row inverse[f].
    let rotary = |rows: usize, heads: usize| {
        let order = unpermute_order(rows, heads);
        let mut inverse = vec![0; rows];
        for (orig, &f) in order.iter().enumerate() {
            inverse[f] = orig;
        }
        inverse
    };
    let qo = rotary(c.num_attention_heads * c.head_dim, c.num_attention_heads);
    let ko = rotary(c.num_key_value_heads * c.head_dim, c.num_key_value_heads);
    layers(&mut |l: &LayerWeights| -> Result<()> {
        next(&mut w, &vector(&l.attn_norm)?)?;
        next(
            &mut w,
            matrix(&[host_of(&l.q, path)?], Some(&qo))?.as_bytes(),
        )?;
        next(
            &mut w,
            matrix(&[host_of(&l.k, path)?], Some(&ko))?.as_bytes(),
        )?;
        next(&mut w, matrix(&[host_of(&l.v, path)?], None)?.as_bytes())?;
        next(&mut w, matrix(&[host_of(&l.o, path)?], None)?.as_bytes())?;
        next(&mut w, &vector(&l.moe_norm)?)?;
        let router: Vec<u8> = host_of(&l.router, path)?
            .to_f32()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        next(&mut w, &router)?;
        let Experts::Host { gate, up, down } = &l.experts else {
            return Err(err(
                "the model must be loaded on the CPU to be written".into()
            ));
        };
        for ms in [gate, up, down] {
            let refs: Vec<&HostMatrix> = ms.iter().collect();
            next(&mut w, matrix(&refs, None)?.as_bytes())?;
        }
        Ok(())
    })?;
    next(&mut w, &vector(parts.final_norm)?)?;
    if !c.tie_word_embeddings {
        next(
            &mut w,
            matrix(&[host_of(parts.lm_head, path)?], None)?.as_bytes(),
        )?;
    }
    if done != total {
        return Err(err(format!(
            "{done} of {total} tensors were written: the model has {} layers",
            c.num_hidden_layers
        )));
    }
    w.finish()
}

/// The file's metadata: llama.cpp's `llama` architecture keys for `c`.
fn metadata(c: &ModelConfig, q: QType) -> Vec<(String, MetaValue)> {
    let u32v = |x: usize| MetaValue::U32(x as u32);
    vec![
        (
            "general.architecture".into(),
            MetaValue::String("llama".into()),
        ),
        ("general.file_type".into(), MetaValue::U32(file_type(q))),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        ("llama.vocab_size".into(), u32v(c.vocab_size)),
        (
            "llama.context_length".into(),
            u32v(c.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(c.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32v(c.intermediate_size),
        ),
        ("llama.block_count".into(), u32v(c.num_hidden_layers)),
        (
            "llama.attention.head_count".into(),
            u32v(c.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u32v(c.num_key_value_heads),
        ),
        ("llama.attention.key_length".into(), u32v(c.head_dim)),
        ("llama.attention.value_length".into(), u32v(c.head_dim)),
        ("llama.rope.dimension_count".into(), u32v(c.head_dim)),
        (
            "llama.rope.freq_base".into(),
            MetaValue::F32(c.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            MetaValue::F32(c.rms_norm_eps as f32),
        ),
        ("llama.expert_count".into(), u32v(c.num_local_experts)),
        (
            "llama.expert_used_count".into(),
            u32v(c.num_experts_per_tok),
        ),
    ]
}
