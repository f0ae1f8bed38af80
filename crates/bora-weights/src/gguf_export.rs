//! Writing a loaded Mixtral model as a GGUF file in llama.cpp's conventions (`llama`
//! architecture, merged expert tensors, q/k rows in its rotary order), quantized tensor by
//! tensor as it is written.

use std::path::Path;

use bora_kernels::{QBuf, QType};
use candle_core::Tensor;

use crate::gguf::{GgmlType, MetaValue};
use crate::gguf_write::{GgufWriter, TensorSpec};
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

/// One tensor to write: where its values come from.
enum Source<'a> {
    /// Matrices written one after another (a stacked expert tensor, or one matrix), their
    /// rows taken in `order` when given.
    Rows(Vec<&'a HostMatrix>, Option<Vec<usize>>),
    /// A norm or router weight, written as f32.
    F32(Vec<f32>),
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

/// A quantized tensor made of `ms` one after another (`outer` of them stacked).
fn matrix_spec<'a>(
    q: QType,
    name: String,
    ms: Vec<&'a HostMatrix>,
    order: Option<Vec<usize>>,
    outer: usize,
) -> (TensorSpec, Source<'a>) {
    let (rows, cols) = (ms[0].rows(), ms[0].cols());
    let mut dims = vec![cols, rows];
    if outer > 0 {
        dims.push(outer);
    }
    let spec = TensorSpec {
        name,
        dims,
        dtype: GgmlType::Quant(q),
    };
    (spec, Source::Rows(ms, order))
}

/// Writes `weights` (host matrices) to `path` as GGUF with the linear layers in `q` (the
/// routers and norms in F32, as llama.cpp keeps them). `extra` is added to the metadata (the
/// tokenizer's `tokenizer.ggml.*` keys, a name). `progress(done, total)` counts tensors.
pub fn write_gguf(
    weights: &MixtralWeights,
    q: QType,
    extra: Vec<(String, MetaValue)>,
    path: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<u64> {
    let c = &weights.config;
    let err = |reason: String| WeightsError::Write {
        path: path.to_path_buf(),
        reason,
    };
    if !q.quantizable() {
        return Err(err(format!(
            "bora reads {q} but does not write it: make it from this file with llama-quantize \
             (the i-quants need an importance matrix)"
        )));
    }
    let host = |m| host_of(m, path);
    let vector = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    };
    let mut tensors: Vec<(TensorSpec, Source<'_>)> = Vec::new();
    let matrix = |name, ms, order, outer| matrix_spec(q, name, ms, order, outer);
    // llama.cpp's row order of a q/k projection: file row f holds checkpoint row inverse[f].
    let rotary = |rows: usize, heads: usize| {
        let order = unpermute_order(rows, heads);
        let mut inverse = vec![0; rows];
        for (orig, &f) in order.iter().enumerate() {
            inverse[f] = orig;
        }
        inverse
    };
    let f32_spec = |name: String, dims: Vec<usize>| TensorSpec {
        name,
        dims,
        dtype: GgmlType::F32,
    };
    let (h, v) = (c.hidden_size, c.vocab_size);
    tensors.push(matrix(
        "token_embd.weight".into(),
        vec![host(&weights.embed)?],
        None,
        0,
    ));
    for (i, l) in weights.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        tensors.push((
            f32_spec(n("attn_norm"), vec![h]),
            Source::F32(vector(&l.attn_norm)?),
        ));
        let (qr, kr) = (host(&l.q)?.rows(), host(&l.k)?.rows());
        tensors.push(matrix(
            n("attn_q"),
            vec![host(&l.q)?],
            Some(rotary(qr, c.num_attention_heads)),
            0,
        ));
        tensors.push(matrix(
            n("attn_k"),
            vec![host(&l.k)?],
            Some(rotary(kr, c.num_key_value_heads)),
            0,
        ));
        tensors.push(matrix(n("attn_v"), vec![host(&l.v)?], None, 0));
        tensors.push(matrix(n("attn_output"), vec![host(&l.o)?], None, 0));
        tensors.push((
            f32_spec(n("ffn_norm"), vec![h]),
            Source::F32(vector(&l.moe_norm)?),
        ));
        let router = host(&l.router)?;
        tensors.push((
            f32_spec(n("ffn_gate_inp"), vec![h, router.rows()]),
            Source::F32(router.to_f32()),
        ));
        let Experts::Host { gate, up, down } = &l.experts else {
            return Err(err(
                "the model must be loaded on the CPU to be written".into()
            ));
        };
        let e = gate.len();
        tensors.push(matrix(n("ffn_gate_exps"), gate.iter().collect(), None, e));
        tensors.push(matrix(n("ffn_up_exps"), up.iter().collect(), None, e));
        tensors.push(matrix(n("ffn_down_exps"), down.iter().collect(), None, e));
    }
    tensors.push((
        f32_spec("output_norm.weight".into(), vec![h]),
        Source::F32(vector(&weights.final_norm)?),
    ));
    if !c.tie_word_embeddings {
        tensors.push(matrix(
            "output.weight".into(),
            vec![host(&weights.lm_head)?],
            None,
            0,
        ));
    }
    for (spec, src) in &tensors {
        if let (GgmlType::Quant(q), Source::Rows(..)) = (spec.dtype, src) {
            if q.row_bytes(spec.dims[0]).is_none() {
                return Err(err(format!(
                    "`{}` has rows of {} values, not a multiple of {q}'s block of {}",
                    spec.name,
                    spec.dims[0],
                    q.block_elems()
                )));
            }
        }
    }

    let u32v = |x: usize| MetaValue::U32(x as u32);
    let mut meta: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String("llama".into()),
        ),
        ("general.file_type".into(), MetaValue::U32(file_type(q))),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        ("llama.vocab_size".into(), u32v(v)),
        (
            "llama.context_length".into(),
            u32v(c.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(h)),
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
    ];
    meta.extend(extra);
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::create(path, &meta, &specs)?;
    let total = tensors.len();
    for (done, (spec, src)) in tensors.into_iter().enumerate() {
        match src {
            Source::F32(values) => {
                let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.tensor(&spec.name, &bytes)?;
            }
            Source::Rows(ms, order) => {
                let row_bytes = q.row_bytes(spec.dims[0]).unwrap_or(0);
                let rows: usize = ms.iter().map(|m| m.rows()).sum();
                let mut out = QBuf::zeroed(rows * row_bytes);
                let mut at = 0;
                for m in ms {
                    let len = m.rows() * row_bytes;
                    m.quantize_rows_into(
                        q,
                        order.as_deref(),
                        &mut out.as_bytes_mut()[at..at + len],
                    );
                    at += len;
                }
                w.tensor(&spec.name, out.as_bytes())?;
            }
        }
        progress(done + 1, total);
    }
    w.finish()
}
