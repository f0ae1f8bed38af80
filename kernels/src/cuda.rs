//! bora's CUDA kernels (`src/cuda/*.cu`, compiled to PTX by `build.rs`), launched on candle's
//! CUDA device and stream: top-k routing and the grouping of a step's tokens by expert for the
//! MoE block (candle's grouped GEMM and fused quantized GEMV then run each expert's weights once
//! per step), decode attention over the paged KV cache and the cache writes before it, and
//! random ggml blocks written in place for benchmarks of models with no file.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::quantized::QTensor;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result, Shape, Storage, Tensor};

const MOE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/moe.ptx"));
const MOE_MODULE: &str = "bora_moe";

/// A kernel's output buffer as a tensor of `shape`.
fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// Routes every token of `logits` `[T, E]` (E ≤ 64) on its CUDA device, by the rule of
/// bora-model's `router::route`: `(experts [T, A] u32, weights [T, A] f32)`.
pub fn route_topk(logits: &Tensor, a: usize) -> Result<(Tensor, Tensor)> {
    let dev = logits.device().as_cuda_device()?.clone();
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let (t, e) = logits.dims2()?;
    if e > 64 || a == 0 || a > e {
        bail!("route_topk: {a} of {e} experts (at most 64 experts, 1 to E chosen)");
    }
    if t == 0 {
        let dev = logits.device();
        return Ok((
            Tensor::zeros((0, a), DType::U32, dev)?,
            Tensor::zeros((0, a), DType::F32, dev)?,
        ));
    }
    let ids = unsafe { dev.alloc::<u32>(t * a) }?;
    let weights = unsafe { dev.alloc::<f32>(t * a) }?;
    let src = addr(&logits, "route_topk logits")?;
    let func = dev.get_or_load_custom_func("bora_route_topk", MOE_MODULE, MOE_PTX)?;
    let (ti, ei, ai) = (t as i32, e as i32, a as i32);
    let mut b = func.builder();
    b.arg(&src)
        .arg(&ids)
        .arg(&weights)
        .arg(&ti)
        .arg(&ei)
        .arg(&ai);
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok((wrap(ids, &dev, (t, a)), wrap(weights, &dev, (t, a))))
}

/// Groups a step's expert assignments by expert: `ids` `[T, A]` u32 (< `e`, e ≤ 1024) →
/// `(experts [T·A] ascending, slots [T·A])`, where slot `i` is choice `i % A` of token `i / A`
/// and, within one expert, the slots keep their order. What candle's MoE GEMMs take as
/// `expert_ids` and `sorted_token_ids`.
pub fn sort_by_expert(ids: &Tensor, e: usize) -> Result<(Tensor, Tensor)> {
    let dev = ids.device().as_cuda_device()?.clone();
    let ids = ids.flatten_all()?.contiguous()?;
    let n = ids.elem_count();
    if ids.dtype() != DType::U32 || e == 0 || e > 1024 {
        bail!(
            "sort_by_expert: u32 ids and 1 to 1024 experts, got {:?} and {e}",
            ids.dtype()
        );
    }
    if n == 0 {
        let z = Tensor::zeros(0, DType::U32, ids.device())?;
        return Ok((z.clone(), z));
    }
    let experts = unsafe { dev.alloc::<u32>(n) }?;
    let slots = unsafe { dev.alloc::<u32>(n) }?;
    let src = addr(&ids, "sort_by_expert ids")?;
    let func = dev.get_or_load_custom_func("bora_sort_by_expert", MOE_MODULE, MOE_PTX)?;
    let (ni, ei) = (n as i32, e as i32);
    let mut b = func.builder();
    b.arg(&src).arg(&ni).arg(&ei).arg(&experts).arg(&slots);
    let warps = e.min(32) as u32;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32 * warps, 1, 1),
        shared_mem_bytes: 4 * (e as u32 + 1),
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok((wrap(experts, &dev, n), wrap(slots, &dev, n)))
}

/// Overwrites the blocks of `q` (on a CUDA device) with random ones whose scales are `d` and
/// `dmin`: weights for benchmarks, made on the device.
pub fn fill_random_blocks(q: &QTensor, d: f32, dmin: f32, seed: u64) -> Result<()> {
    let dev = q.device();
    let dev = dev.as_cuda_device()?;
    let t = q.dtype();
    let Some(qt) = crate::QType::from_candle(t) else {
        bail!("fill_random_blocks: no random blocks of {t:?}")
    };
    // candle's types (the only ones a candle tensor holds) all have their scales in place.
    let Some((d_off, dmin_off)) = qt.scale_offsets() else {
        bail!("fill_random_blocks: no random blocks of {t:?}")
    };
    let (d_off, dmin_off) = (d_off as i32, dmin_off.map_or(-1, |o| o as i32));
    let nblocks = (q.shape().elem_count() / t.block_size()) as u64;
    if nblocks == 0 {
        return Ok(());
    }
    let ptr = q.device_ptr()? as u64;
    let func = dev.get_or_load_custom_func("bora_fill_blocks", MOE_MODULE, MOE_PTX)?;
    let (bytes, dh, mh) = (
        t.type_size() as i32,
        half::f16::from_f32(d).to_bits(),
        half::f16::from_f32(dmin).to_bits(),
    );
    let mut b = func.builder();
    b.arg(&ptr)
        .arg(&nblocks)
        .arg(&bytes)
        .arg(&d_off)
        .arg(&dmin_off)
        .arg(&dh)
        .arg(&mh)
        .arg(&seed);
    let cfg = LaunchConfig {
        grid_dim: (nblocks.div_ceil(256).min(65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const ATTENTION_MODULE: &str = "bora_attention";

/// The device address of a contiguous tensor's first element. The tensor keeps the memory
/// alive; the caller holds it until the kernel that takes the address is queued (later work
/// on the one stream runs after it).
fn addr(t: &Tensor, what: &str) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let stream = t.device().as_cuda_device()?.cuda_stream();
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*s else {
        bail!("{what}: not on a CUDA device")
    };
    if !l.is_contiguous() {
        bail!("{what}: not contiguous")
    }
    let base = match t.dtype() {
        DType::F32 => c.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::F16 => c.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0,
        DType::BF16 => c.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
        DType::U32 => c.as_cuda_slice::<u32>()?.device_ptr(&stream).0,
        d => bail!("{what}: unexpected dtype {d:?}"),
    };
    Ok(base + (l.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// Writes row `i` of `x` `[N, Hkv, D]` into row `rows[i]` (u32) of a layer's pool
/// `[rows, Hkv, D]`, in place.
pub fn kv_write(pool: &Tensor, x: &Tensor, rows: &Tensor) -> Result<()> {
    let dev = pool.device().as_cuda_device()?.clone();
    let x = x.to_dtype(pool.dtype())?.contiguous()?;
    let rows = rows.contiguous()?;
    let n = rows.elem_count();
    let row_elems = pool.elem_count() / pool.dim(0)?.max(1);
    if x.elem_count() != n * row_elems || rows.dtype() != DType::U32 {
        bail!(
            "kv_write: {n} rows for {:?} into a pool {:?}",
            x.shape(),
            pool.shape()
        );
    }
    if n == 0 {
        return Ok(());
    }
    let units = (row_elems * pool.dtype().size_in_bytes() / 2) as i32;
    let (dst, src, at) = (
        addr(pool, "kv_write pool")?,
        addr(&x, "kv_write rows")?,
        addr(&rows, "kv_write row indices")?,
    );
    let func = dev.get_or_load_custom_func("bora_kv_write", ATTENTION_MODULE, ATTENTION_PTX)?;
    let mut b = func.builder();
    b.arg(&dst).arg(&src).arg(&at).arg(&units);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Attention of `N` one-token steps over the paged KV cache: `q` `[N, Hq, D]` (rotated) against
/// positions `lo[s]..end[s]` of sequence `s`, found through its row of `tables`
/// `[N, stride]` (u32 block ids) in the layer's pools `[rows, Hkv, D]`; `[N, Hq, D]`.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    tables: &Tensor,
    lo: &Tensor,
    end: &Tensor,
    block_size: usize,
    scale: f32,
) -> Result<Tensor> {
    let dev = q.device().as_cuda_device()?.clone();
    let q = q.to_dtype(k_pool.dtype())?.contiguous()?;
    let (n, hq, d) = q.dims3()?;
    let (_, hkv, dk) = k_pool.dims3()?;
    let (tn, stride) = tables.dims2()?;
    if dk != d
        || hkv == 0
        || !hq.is_multiple_of(hkv)
        || d > 256
        || tn != n
        || v_pool.shape() != k_pool.shape()
    {
        bail!(
            "paged_decode: q {:?}, pools {:?}, tables {:?} (head_dim at most 256)",
            q.shape(),
            k_pool.shape(),
            tables.shape()
        );
    }
    let out = Tensor::zeros((n, hq, d), q.dtype(), q.device())?;
    if n == 0 {
        return Ok(out);
    }
    let name = match q.dtype() {
        DType::F32 => "bora_paged_decode_f32",
        DType::F16 => "bora_paged_decode_f16",
        DType::BF16 => "bora_paged_decode_bf16",
        d => bail!("paged_decode: a cache of {d:?}"),
    };
    let (tables, lo, end) = (tables.contiguous()?, lo.contiguous()?, end.contiguous()?);
    let args = [
        addr(&q, "paged_decode q")?,
        addr(k_pool, "paged_decode keys")?,
        addr(v_pool, "paged_decode values")?,
        addr(&tables, "paged_decode tables")?,
    ];
    let (lo_a, end_a, out_a) = (
        addr(&lo, "paged_decode lo")?,
        addr(&end, "paged_decode end")?,
        addr(&out, "paged_decode out")?,
    );
    let (stride, hq_i, hkv_i, d_i, bs) = (
        stride as i32,
        hq as i32,
        hkv as i32,
        d as i32,
        block_size as i32,
    );
    let warps = 4u32;
    let func = dev.get_or_load_custom_func(name, ATTENTION_MODULE, ATTENTION_PTX)?;
    let mut b = func.builder();
    b.arg(&args[0])
        .arg(&args[1])
        .arg(&args[2])
        .arg(&args[3])
        .arg(&stride)
        .arg(&lo_a)
        .arg(&end_a)
        .arg(&out_a)
        .arg(&hq_i)
        .arg(&hkv_i)
        .arg(&d_i)
        .arg(&bs)
        .arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, hq as u32, 1),
        block_dim: (32 * warps, 1, 1),
        shared_mem_bytes: 4 * warps * (d as u32 + 2),
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}
