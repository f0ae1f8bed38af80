// bora's CUDA kernels for the MoE block and the device benchmarks. Compiled to PTX by
// kernels/build.rs (feature `cuda`) and loaded through candle's device (`cuda.rs`).
#include <stdint.h>
#include <math.h>

// Top-k routing, one thread per token: the rule of bora-model's `router::route` (f32 logits,
// the A largest, ties to the lower expert index, softmax probabilities renormalized over the
// chosen ones). A NaN logit is never chosen before a number.
// logits [t, e]; ids [t, a]; weights [t, a]. e <= 64.
extern "C" __global__ void bora_route_topk(const float *logits, uint32_t *ids, float *weights,
                                           int t, int e, int a) {
  int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= t) return;
  const float *l = logits + (size_t)row * e;
  float mx = -INFINITY;
  for (int i = 0; i < e; ++i) mx = fmaxf(mx, l[i]);
  unsigned long long taken = 0;
  float total = 0.f;
  for (int k = 0; k < a; ++k) {
    int best = -1;
    for (int i = 0; i < e; ++i) {
      if (taken & (1ull << i)) continue;
      // strictly greater: the lower index wins a tie; NaN compares false
      if (best < 0 || l[i] > l[best] || (isnan(l[best]) && !isnan(l[i]))) best = i;
    }
    taken |= 1ull << best;
    float w = expf(l[best] - mx);
    ids[(size_t)row * a + k] = (uint32_t)best;
    weights[(size_t)row * a + k] = w;
    total += w;
  }
  for (int k = 0; k < a; ++k) weights[(size_t)row * a + k] /= total;
}

// The step's (token, slot) assignments grouped by expert, stably: `ids` [n] (n = T·A, entry
// i is slot i % A of token i / A) → `experts` [n] ascending and `slots` [n] the assignment
// each came from, in the order of `ids` within one expert. One block; warp w handles experts
// w, w + warps, ... with ballots, so each expert's entries are compacted in order.
extern "C" __global__ void bora_sort_by_expert(const uint32_t *ids, int n, int e,
                                               uint32_t *experts, uint32_t *slots) {
  extern __shared__ int offsets[];  // e + 1
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int x = warp; x < e; x += warps) {
    int count = 0;
    for (int base = 0; base < n; base += 32) {
      int i = base + lane;
      unsigned hit = __ballot_sync(0xffffffffu, i < n && ids[i] == (uint32_t)x);
      count += __popc(hit);
    }
    if (lane == 0) offsets[x + 1] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int x = 0; x < e; ++x) offsets[x + 1] += offsets[x];
  }
  __syncthreads();
  for (int x = warp; x < e; x += warps) {
    int at = offsets[x];
    for (int base = 0; base < n; base += 32) {
      int i = base + lane;
      bool mine = i < n && ids[i] == (uint32_t)x;
      unsigned hit = __ballot_sync(0xffffffffu, mine);
      if (mine) {
        int k = at + __popc(hit & ((1u << lane) - 1u));
        experts[k] = (uint32_t)x;
        slots[k] = (uint32_t)i;
      }
      at += __popc(hit);
    }
  }
}

__device__ __forceinline__ uint32_t bora_hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return (uint32_t)x;
}

// Random ggml blocks in place, for benchmarks of models that have no file: every byte random,
// then the f16 scale at `d_off` (and the minimum's scale at `dmin_off`, if >= 0) set to `d`
// (`dmin`), so that no block holds an infinity or a NaN.
extern "C" __global__ void bora_fill_blocks(uint8_t *data, unsigned long long nblocks,
                                            int block_bytes, int d_off, int dmin_off,
                                            unsigned short d, unsigned short dmin,
                                            unsigned long long seed) {
  unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
       b < nblocks; b += stride) {
    uint8_t *p = data + b * (unsigned long long)block_bytes;
    uint64_t key = seed * 0x9e3779b97f4a7c15ull + b * 0x100000001b3ull;
    for (int i = 0; i < block_bytes; i += 4) {
      uint32_t r = bora_hash(key + (uint64_t)i);
      for (int j = 0; j < 4 && i + j < block_bytes; ++j) p[i + j] = (uint8_t)(r >> (8 * j));
    }
    p[d_off] = (uint8_t)(d & 0xff);
    p[d_off + 1] = (uint8_t)(d >> 8);
    if (dmin_off >= 0) {
      p[dmin_off] = (uint8_t)(dmin & 0xff);
      p[dmin_off + 1] = (uint8_t)(dmin >> 8);
    }
  }
}
