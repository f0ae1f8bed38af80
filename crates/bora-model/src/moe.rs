//! The sparse MoE block: route each token to `A` of `E` experts, group the step's tokens by
//! expert so that each expert runs one product over all its tokens, and sum the expert outputs
//! with the routing weights.

use bora_kernels::{matmul_many, matmul_xwt, silu_mul, Product, Twin};
use bora_weights::{with_cpu_f32, Experts, HostMatrix, Matrix};

use crate::expert_cache::{LayerUsage, Resident};
use candle_core::{DType, Device, IndexOp, Tensor};

use crate::router::{route, route_tensor};
use crate::{ModelError, Result};

/// Tokens routed to each expert of each layer, accumulated over forward steps; and, when
/// tracing ([`RoutingStats::with_trace`]), each token's routing in each layer.
#[derive(Debug, Clone, Default)]
pub struct RoutingStats {
    /// `[layer][expert]` token counts.
    pub counts: Vec<Vec<u64>>,
    /// Counts still on a device: `(layer, [E] f32 counts)`, read by [`RoutingStats::flush`]
    /// once per step rather than with a device sync in every layer.
    pending: Vec<(usize, Tensor)>,
    /// The routing of the steps since the last [`RoutingStats::take_trace`], when tracing.
    trace: Option<Trace>,
}

#[derive(Debug, Clone, Default)]
struct Trace {
    probs: bool,
    layers: Vec<LayerRoutes>,
}

/// One layer's routing of one step's `T` tokens (rows in the step's order).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRoutes {
    /// The layer.
    pub layer: usize,
    /// `[T, A]`: each token's experts, most probable first.
    pub experts: Vec<u32>,
    /// `[T, A]`: their weights, renormalized (a token's sum to 1).
    pub weights: Vec<f32>,
    /// `[T, E]`: the router's full softmax, when asked for; empty otherwise.
    pub probs: Vec<f32>,
}

impl PartialEq for RoutingStats {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl RoutingStats {
    pub fn new(layers: usize, experts: usize) -> Self {
        Self {
            counts: vec![vec![0; experts]; layers],
            pending: Vec::new(),
            trace: None,
        }
    }

    /// Also keeps each token's routing (and the router's softmax when `probs`), for
    /// [`RoutingStats::take_trace`]. On a device this reads the routing back in every layer.
    pub fn with_trace(mut self, probs: bool) -> Self {
        self.trace = Some(Trace {
            probs,
            layers: Vec::new(),
        });
        self
    }

    /// Whether routing is kept token by token.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// The routing kept since the last call, layer by layer in the order the steps ran them.
    pub fn take_trace(&mut self) -> Vec<LayerRoutes> {
        self.trace
            .as_mut()
            .map(|t| std::mem::take(&mut t.layers))
            .unwrap_or_default()
    }

    /// Whether a trace keeps the router's softmax (so that [`RoutingStats::record`] needs
    /// the logits).
    fn wants_probs(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.probs)
    }

    /// Counts a layer's routing of a step and keeps it when tracing; `logits` (`[T, E]`) is
    /// asked for only when the softmax is kept.
    pub(crate) fn record(
        &mut self,
        layer: usize,
        experts: &[u32],
        weights: &[f32],
        logits: impl FnOnce() -> candle_core::Result<Vec<f32>>,
    ) -> candle_core::Result<()> {
        let logits = if self.wants_probs() {
            Some(logits()?)
        } else {
            None
        };
        self.record_host(layer, experts, weights, logits.as_deref());
        Ok(())
    }

    /// [`RoutingStats::record`] with the logits at hand (on the host).
    pub(crate) fn record_host(
        &mut self,
        layer: usize,
        experts: &[u32],
        weights: &[f32],
        logits: Option<&[f32]>,
    ) {
        self.add(layer, experts);
        let e = self.counts.get(layer).map_or(0, Vec::len);
        let Some(trace) = self.trace.as_mut() else {
            return;
        };
        let mut probs = Vec::new();
        if let (true, Some(logits)) = (trace.probs && e > 0, logits) {
            probs = logits.to_vec();
            for row in probs.chunks_exact_mut(e) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in row.iter_mut() {
                    *v /= sum;
                }
            }
        }
        trace.layers.push(LayerRoutes {
            layer,
            experts: experts.to_vec(),
            weights: weights.to_vec(),
            probs,
        });
    }

    /// [`RoutingStats::record`] of a routing on a device: counted there, or read back to the
    /// host when tracing.
    pub fn record_tensors(
        &mut self,
        layer: usize,
        ids: &Tensor,
        weights: &Tensor,
        logits: &Tensor,
    ) -> candle_core::Result<()> {
        if !self.tracing() {
            return self.add_on_device(layer, ids);
        }
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let w = weights
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        self.record(layer, &ids, &w, || {
            logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        })
    }

    fn add(&mut self, layer: usize, experts: &[u32]) {
        if let Some(row) = self.counts.get_mut(layer) {
            for &e in experts {
                if let Some(c) = row.get_mut(e as usize) {
                    *c += 1;
                }
            }
        }
    }

    /// Counts the experts of `ids` (u32, any shape, on any device) for `layer` on their device,
    /// without reading them back: [`RoutingStats::flush`] does, once.
    pub fn add_on_device(&mut self, layer: usize, ids: &Tensor) -> candle_core::Result<()> {
        let Some(e) = self.counts.get(layer).map(Vec::len) else {
            return Ok(());
        };
        let ids = ids.flatten_all()?;
        let ones = Tensor::ones(ids.elem_count(), DType::F32, ids.device())?;
        let counts = Tensor::zeros(e, DType::F32, ids.device())?.index_add(&ids, &ones, 0)?;
        self.pending.push((layer, counts));
        Ok(())
    }

    /// Reads the counts [`RoutingStats::add_on_device`] left on a device into `counts`: one
    /// copy to the host for all layers of a step.
    pub fn flush(&mut self) -> candle_core::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let all = Tensor::stack(
            &pending.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
            0,
        )?
        .to_vec2::<f32>()?;
        for ((layer, _), row) in pending.iter().zip(all) {
            if let Some(counts) = self.counts.get_mut(*layer) {
                for (c, n) in counts.iter_mut().zip(row) {
                    *c += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// The MoE block alone: `x` `[T, H]` (normed) → `[T, H]`, the weighted sum of each token's
/// `a` experts, counting routed tokens into `stats` for `layer` when given.
pub fn moe_block(
    router: &Matrix,
    experts: &Experts,
    a: usize,
    x: &Tensor,
    layer: usize,
    stats: Option<&mut RoutingStats>,
) -> Result<Tensor> {
    let mut step = MoeStep {
        a,
        layer,
        stats,
        cache: None,
    };
    moe_layer(router, experts, x, &mut step)
}

/// What one layer's MoE block is given besides its weights and input.
pub(crate) struct MoeStep<'a> {
    /// Experts per token.
    pub a: usize,
    pub layer: usize,
    /// Routed tokens are counted here when given.
    pub stats: Option<&'a mut RoutingStats>,
    /// For experts kept in host memory beside a model on a device: the device copies of some
    /// of them ([`crate::ExpertCache`]), and where this step's routed tokens went.
    pub cache: Option<(&'a Resident, &'a mut LayerUsage)>,
}

/// [`moe_block`] with a layer's full context.
pub(crate) fn moe_layer(
    router: &Matrix,
    experts: &Experts,
    x: &Tensor,
    step: &mut MoeStep<'_>,
) -> Result<Tensor> {
    let (a, layer) = (step.a, step.layer);
    let stats = step.stats.as_deref_mut();
    match (router, experts) {
        (Matrix::Host(r), Experts::Host { gate, up, down }) => {
            moe_host(r, HostExperts { gate, up, down, a }, x, layer, stats)
        }
        // Host experts beside a router on a device: the split step.
        (_, Experts::Host { gate, up, down }) => crate::moe_split::moe_split(
            router,
            &HostExperts { gate, up, down, a },
            x,
            layer,
            stats,
            step.cache.as_mut().map(|(r, u)| (*r, &mut **u)),
        ),
        #[cfg(feature = "cuda")]
        (_, Experts::Quant { .. } | Experts::Tensor { .. }) if cuda::takes(experts, x) => {
            cuda::moe(router, experts, a, x, layer, stats)
        }
        (_, Experts::Tensor { gate, up, down }) => {
            moe_tensor(router, gate, up, down, a, x, layer, stats)
        }
        (_, Experts::Quant { .. }) => Err(ModelError::Batch(
            "experts kept as ggml blocks need a CUDA device and activations on it".into(),
        )),
    }
}

/// The MoE block on a CUDA device: routing and the grouping of the step's (token, choice)
/// assignments by expert are bora's kernels (`bora_kernels::cuda`), nothing is read back to the
/// host, and each expert's weights are read once per step by candle's MoE kernels: a grouped
/// GEMM for prefill-sized steps, a GEMV fused over the assignments for decode-sized ones.
#[cfg(feature = "cuda")]
mod cuda {
    use bora_kernels::cuda::{route_topk, sort_by_expert};
    use bora_weights::{Experts, Matrix};
    use candle_core::{DType, Tensor};
    use candle_nn::moe::{moe_gemm, moe_gemm_gguf};

    use super::RoutingStats;
    use crate::Result;

    /// Steps of at most this many tokens take the GEMV kernels (llama.cpp's cut for its
    /// quantized GEMV is 8 rows too); larger ones the grouped GEMM.
    pub const GEMV_MAX_TOKENS: usize = 8;

    /// Whether these experts and activations take this path: on a CUDA device, and dense
    /// experts in bf16 or f16 (candle's grouped GEMM takes no f32).
    pub fn takes(experts: &Experts, x: &Tensor) -> bool {
        x.device().is_cuda()
            && match experts {
                Experts::Quant { .. } => true,
                Experts::Tensor { gate, .. } => {
                    matches!(gate.dtype(), DType::BF16 | DType::F16) && gate.dtype() == x.dtype()
                }
                Experts::Host { .. } => false,
            }
    }

    /// candle's MoE kernels read a tensor's storage from its start: a tensor that is a view
    /// into a larger one is copied first.
    fn own(t: &Tensor) -> candle_core::Result<Tensor> {
        if t.is_contiguous() && t.layout().start_offset() == 0 {
            Ok(t.clone())
        } else {
            t.force_contiguous()
        }
    }

    pub fn moe(
        router: &Matrix,
        experts: &Experts,
        a: usize,
        x: &Tensor,
        layer: usize,
        stats: Option<&mut RoutingStats>,
    ) -> Result<Tensor> {
        let (t, h) = x.dims2()?;
        let logits = router.forward(x)?; // [T, E]
        let (ids, w) = route_topk(&logits, a)?; // [T, A] each
        if let Some(s) = stats {
            // Counted on the device: no sync in the layer (unless tracing).
            s.record_tensors(layer, &ids, &w, &logits)?;
        }
        let (expert_ids, slots) = sort_by_expert(&ids, experts.count())?; // [T·A] each
        let w = Some(own(&w.flatten_all()?)?);
        let prefill = t > GEMV_MAX_TOKENS;
        // The GEMV keeps a row of weight blocks per warp in shared memory: where one would not
        // fit, the grouped GEMM runs instead (decode of 8x7B's Q8_0 down projection).
        let gemv = |q: &candle_core::quantized::QTensor| {
            let k = q.shape().dims().last().copied().unwrap_or(0);
            let dt = q.dtype();
            !prefill && super::gemv_fits(dt.block_size(), dt.type_size(), k)
        };
        let y = match experts {
            Experts::Tensor { gate, up, down } => {
                let xs = own(x)?;
                let g = moe_gemm(&xs, gate, &None, &slots, &expert_ids, a, prefill)?; // [T·A, I]
                let u = moe_gemm(&xs, up, &None, &slots, &expert_ids, a, prefill)?;
                let act = own(&(candle_nn::ops::silu(&g)? * u)?)?;
                moe_gemm(&act, down, &w, &slots, &expert_ids, a, prefill)? // [T·A, H]
            }
            Experts::Quant { gate, up, down } => {
                // f32 activations in and out; the GEMM tiles take them in 16 bits: f16, which
                // keeps 3 more bits of mantissa than bf16 (normed activations and SwiGLU
                // products stay far inside its range), unless the model runs in bf16.
                let half = if x.dtype() == DType::BF16 {
                    DType::BF16
                } else {
                    DType::F16
                };
                let xs = own(&x.to_dtype(DType::F32)?)?;
                let gemm = |x: &Tensor, q: &candle_core::quantized::QTensor, w: &Option<Tensor>| {
                    moe_gemm_gguf(x, q, w, &slots, &expert_ids, a, !gemv(q), half)
                };
                let g = gemm(&xs, gate, &None)?;
                let u = gemm(&xs, up, &None)?;
                let act = own(&(candle_nn::ops::silu(&g)? * u)?)?;
                gemm(&act, down, &w)?
            }
            Experts::Host { .. } => {
                return Err(crate::ModelError::Batch(
                    "host experts on the CUDA path".into(),
                ))
            }
        };
        Ok(y.reshape((t, a, h))?.sum(1)?.to_dtype(x.dtype())?)
    }
}

/// Dynamic shared memory that candle's quantized MoE GEMV asks for at launch: one row of
/// weight blocks for each of its 4 warps, and 1 KiB (`LAUNCH_MOE_GGUF` in candle-kernels'
/// `moe_gguf.cu`), for rows of `k` values in blocks of `block_size` values and `type_size` bytes.
pub fn gemv_shared_bytes(block_size: usize, type_size: usize, k: usize) -> usize {
    k / block_size.max(1) * type_size * 4 + 1024
}

/// Shared memory a kernel may take without raising its limit (48 KiB on every CUDA GPU).
pub const DEFAULT_SHARED_BYTES: usize = 48 << 10;

/// Whether candle's quantized MoE GEMV can launch for rows of `k` values (see
/// [`gemv_shared_bytes`]); it does not raise the limit, and a launch over it fails silently.
pub fn gemv_fits(block_size: usize, type_size: usize, k: usize) -> bool {
    gemv_shared_bytes(block_size, type_size, k) <= DEFAULT_SHARED_BYTES
}

/// bora's CPU path: routing, grouping and SwiGLU over host matrices in their stored dtype.
fn moe_host(
    router: &HostMatrix,
    experts: HostExperts<'_>,
    x: &Tensor,
    layer: usize,
    stats: Option<&mut RoutingStats>,
) -> Result<Tensor> {
    let (t, h) = x.dims2()?;
    let x = x.contiguous()?;
    if !x.device().is_cpu() {
        return Err(ModelError::Batch(
            "host experts need CPU activations".into(),
        ));
    }
    let a = experts.a;
    let out = with_cpu_f32(&x, |xs| {
        let e = router.rows();
        let mut logits = vec![0f32; t * e]; // [T, E]
        matmul_xwt(xs, t, h, router.weights(), e, &mut logits);
        let mut chosen = vec![0u32; t * a]; // [T, A]
        let mut weights = vec![0f32; t * a]; // [T, A]
        for ((l, c), w) in logits
            .chunks_exact(e)
            .zip(chosen.chunks_exact_mut(a))
            .zip(weights.chunks_exact_mut(a))
        {
            route(l, c, w);
        }
        if let Some(s) = stats {
            s.record_host(layer, &chosen, &weights, Some(&logits));
        }
        experts.run_routed(xs, t, h, &chosen, &weights, &|_| true)
    })?;
    Ok(Tensor::from_vec(out, (t, h), &Device::Cpu)?)
}

/// The host matrices of one MoE block.
pub(crate) struct HostExperts<'a> {
    pub gate: &'a [HostMatrix],
    pub up: &'a [HostMatrix],
    pub down: &'a [HostMatrix],
    /// Experts per token.
    pub a: usize,
}

impl HostExperts<'_> {
    /// `xs` `[T, H]` → `[T, H]`: the weighted sum over each token's assignments whose expert
    /// `take` accepts, `chosen` and `weights` `[T, A]` being the routing.
    pub fn run_routed(
        &self,
        xs: &[f32],
        t: usize,
        h: usize,
        chosen: &[u32],
        weights: &[f32],
        take: &dyn Fn(u32) -> bool,
    ) -> Vec<f32> {
        let (gate, up, down, a) = (self.gate, self.up, self.down, self.a);
        let e = gate.len();
        // Group the (token, slot) assignments by expert; gather each expert's tokens.
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); e];
        for (i, &c) in chosen.iter().enumerate() {
            if take(c) {
                if let Some(list) = by_expert.get_mut(c as usize) {
                    list.push(i);
                }
            }
        }
        let hit: Vec<usize> = (0..e).filter(|&ex| !by_expert[ex].is_empty()).collect();
        let im = gate.first().map(|g| g.rows()).unwrap_or(0);
        let xe: Vec<Vec<f32>> = hit
            .iter()
            .map(|&ex| {
                by_expert[ex]
                    .iter()
                    .flat_map(|&i| &xs[i / a * h..(i / a + 1) * h])
                    .copied()
                    .collect()
            })
            .collect(); // per expert [n, H]
        let rows = |ex: usize| by_expert[ex].len();
        let mut g: Vec<Vec<f32>> = hit.iter().map(|&ex| vec![0f32; rows(ex) * im]).collect(); // [n, I]
        let mut u: Vec<Vec<f32>> = g.clone();
        let mut y: Vec<Vec<f32>> = hit.iter().map(|&ex| vec![0f32; rows(ex) * h]).collect(); // [n, H]

        // All experts' gate and up projections in one parallel region, then all down projections.
        let mut products = Vec::with_capacity(hit.len());
        for (((&ex, x), g), u) in hit.iter().zip(&xe).zip(g.iter_mut()).zip(u.iter_mut()) {
            let m = rows(ex);
            // Gate and up share the input: row j of both in one pass where the kernel can.
            products.push(Product {
                x,
                m,
                k: h,
                w: gate[ex].weights(),
                n: im,
                out: g,
                twin: Some(Twin {
                    w: up[ex].weights(),
                    out: u,
                }),
            });
        }
        matmul_many(&mut products);
        for (g, u) in g.iter_mut().zip(&u) {
            silu_mul(g, u);
        }
        let mut products: Vec<Product<'_>> = hit
            .iter()
            .zip(&g)
            .zip(y.iter_mut())
            .map(|((&ex, g), y)| Product {
                x: g,
                m: rows(ex),
                k: im,
                w: down[ex].weights(),
                n: h,
                out: y,
                twin: None,
            })
            .collect();
        matmul_many(&mut products);
        let mut out = vec![0f32; t * h]; // [T, H]
        for (&ex, y) in hit.iter().zip(&y) {
            for (r, &i) in by_expert[ex].iter().enumerate() {
                let tok = i / a;
                let wgt = weights[i];
                for (o, v) in out[tok * h..(tok + 1) * h]
                    .iter_mut()
                    .zip(&y[r * h..(r + 1) * h])
                {
                    *o += wgt * v;
                }
            }
        }
        out
    }
}

/// candle's path, for any device. Routing runs on the device; the expert of each assignment is
/// then read back to group the tokens (one small copy per layer; a device-side grouping kernel
/// replaces it with the CUDA work).
#[allow(clippy::too_many_arguments)]
fn moe_tensor(
    router: &Matrix,
    gate: &Tensor,
    up: &Tensor,
    down: &Tensor,
    a: usize,
    x: &Tensor,
    layer: usize,
    stats: Option<&mut RoutingStats>,
) -> Result<Tensor> {
    let logits = router.forward(x)?; // [T, E]
    let (idx, w) = route_tensor(&logits, a)?; // [T, A] each
    let chosen = idx.flatten_all()?.to_vec1::<u32>()?;
    if let Some(s) = stats {
        let weights = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        s.record(layer, &chosen, &weights, || {
            logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        })?;
    }
    let e = gate.dim(0)?;
    let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); e];
    for (i, &c) in chosen.iter().enumerate() {
        by_expert[c as usize].push(i as u32);
    }
    let w = w.flatten_all()?.to_dtype(x.dtype())?; // [T·A]
    let mut out = x.zeros_like()?;
    for (ex, assigned) in by_expert.iter().enumerate() {
        if assigned.is_empty() {
            continue;
        }
        let slots = Tensor::new(assigned.as_slice(), x.device())?;
        let toks: Vec<u32> = assigned.iter().map(|&i| i / a as u32).collect();
        let toks = Tensor::new(toks.as_slice(), x.device())?;
        let xe = x.index_select(&toks, 0)?; // [n, H]
        let g = xe.matmul(&gate.i(ex)?.t()?)?; // [n, I]
        let u = xe.matmul(&up.i(ex)?.t()?)?;
        let y = (candle_nn::ops::silu(&g)? * u)?.matmul(&down.i(ex)?.t()?)?; // [n, H]
        let y = y.broadcast_mul(&w.index_select(&slots, 0)?.unsqueeze(1)?)?;
        out = out.index_add(&toks, &y, 0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn the_gemv_is_chosen_where_its_shared_memory_fits() {
        let fits = |t: GgmlDType, k: usize| gemv_fits(t.block_size(), t.type_size(), k);
        // 8x7B: hidden 4096, intermediate 14336 (the down projection's rows).
        assert!(fits(GgmlDType::Q4K, 14336) && fits(GgmlDType::Q6K, 14336));
        assert!(fits(GgmlDType::Q8_0, 4096));
        assert!(
            !fits(GgmlDType::Q8_0, 14336),
            "{}",
            gemv_shared_bytes(32, 34, 14336)
        );
        // 8x22B: hidden 6144, intermediate 16384.
        assert!(fits(GgmlDType::Q4K, 16384) && fits(GgmlDType::Q5K, 16384));
        assert!(!fits(GgmlDType::Q6K, 16384));
        assert!(!fits(GgmlDType::Q8_0, 16384) && fits(GgmlDType::Q8_0, 6144));
    }

    #[test]
    fn counts_on_the_device_equal_counts_on_the_host() {
        let ids: Vec<u32> = vec![0, 3, 3, 7, 1, 3, 0, 0];
        let mut host = RoutingStats::new(2, 8);
        host.add(1, &ids);
        host.add(0, &ids[..4]);
        let mut dev = RoutingStats::new(2, 8);
        let t = Tensor::from_slice(&ids, (4, 2), &Device::Cpu).unwrap();
        dev.add_on_device(1, &t).unwrap();
        dev.add_on_device(0, &t.narrow(0, 0, 2).unwrap()).unwrap();
        assert_ne!(dev.counts, host.counts);
        dev.flush().unwrap();
        assert_eq!(dev, host);
        dev.flush().unwrap();
        assert_eq!(dev, host);
    }
}
