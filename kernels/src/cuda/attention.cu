// Attention of one-token (decode) steps over the paged KV cache, and the cache writes before
// it. Compiled to PTX by kernels/build.rs (feature `cuda`); launched by `cuda.rs`.
// The pool of one layer is [blocks · block_size, Hkv, D]; position p of a sequence lives in
// row table[p / block_size] · block_size + p % block_size.
#include <stdint.h>
#include <math.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

#define MAX_PER_LANE 8  // head_dim <= 256

// One block per (sequence, query head). Each warp takes every `warps`-th key position, with
// an online softmax; lane l holds dimensions l, l + 32, ...; the warps' partial results are
// merged at the end. q [N, Hq, D] (rotated), out [N, Hq, D]; tables [N, table_stride];
// positions lo[s] .. end[s] (exclusive) are attended to.
template <typename T>
__device__ void paged_decode(const T *q, const T *kpool, const T *vpool, const uint32_t *tables,
                             int table_stride, const uint32_t *lo, const uint32_t *end, T *out,
                             int hq, int hkv, int d, int block_size, float scale) {
  extern __shared__ float shared[];  // [warps · d] partial sums, then [warps] max, [warps] sum
  int s = blockIdx.x, h = blockIdx.y;
  int kvh = h / (hq / hkv);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float qv[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
  for (int i = 0; i < MAX_PER_LANE; ++i) {
    int dim = lane + 32 * i;
    qv[i] = dim < d ? to_f(q[((size_t)s * hq + h) * d + dim]) * scale : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const uint32_t *table = tables + (size_t)s * table_stride;
  for (uint32_t p = lo[s] + warp; p < end[s]; p += warps) {
    size_t row = (size_t)table[p / block_size] * block_size + p % block_size;
    const T *kr = kpool + (row * hkv + kvh) * d;
    const T *vr = vpool + (row * hkv + kvh) * d;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) {
      int dim = lane + 32 * i;
      if (dim < d) dot += qv[i] * to_f(kr[dim]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    float m2 = fmaxf(m, dot);
    float c = expf(m - m2), e = expf(dot - m2);
    l = l * c + e;
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) {
      int dim = lane + 32 * i;
      if (dim < d) acc[i] = acc[i] * c + e * to_f(vr[dim]);
    }
    m = m2;
  }
  float *sacc = shared, *sm = shared + warps * d, *sl = sm + warps;
#pragma unroll
  for (int i = 0; i < MAX_PER_LANE; ++i) {
    int dim = lane + 32 * i;
    if (dim < d) sacc[warp * d + dim] = acc[i];
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < warps; ++w) mx = fmaxf(mx, sm[w]);
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += sm[w] == -INFINITY ? 0.f : sl[w] * expf(sm[w] - mx);
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < warps; ++w)
      if (sm[w] != -INFINITY) o += sacc[w * d + dim] * expf(sm[w] - mx);
    out[((size_t)s * hq + h) * d + dim] = from_f<T>(total > 0.f ? o / total : 0.f);
  }
}

#define PAGED_DECODE(name, T)                                                              \
  extern "C" __global__ void name(const T *q, const T *kpool, const T *vpool,               \
                                  const uint32_t *tables, int table_stride,                 \
                                  const uint32_t *lo, const uint32_t *end, T *out, int hq,  \
                                  int hkv, int d, int block_size, float scale) {            \
    paged_decode<T>(q, kpool, vpool, tables, table_stride, lo, end, out, hq, hkv, d,        \
                    block_size, scale);                                                      \
  }
PAGED_DECODE(bora_paged_decode_f32, float)
PAGED_DECODE(bora_paged_decode_f16, __half)
PAGED_DECODE(bora_paged_decode_bf16, __nv_bfloat16)

// Row i of x [N, row_units] (16-bit units) into row rows[i] of the pool: a step's new keys or
// values into their cache positions. One block per row.
extern "C" __global__ void bora_kv_write(uint16_t *pool, const uint16_t *x, const uint32_t *rows,
                                         int row_units) {
  int i = blockIdx.x;
  uint16_t *dst = pool + (size_t)rows[i] * row_units;
  const uint16_t *src = x + (size_t)i * row_units;
  for (int u = threadIdx.x; u < row_units; u += blockDim.x) dst[u] = src[u];
}
