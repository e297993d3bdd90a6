// nn_common.cuh: what the encoder kernels (nn_kernels.cuh) and the
// synchronised batch-norm kernels (nn_syncbn_kernels.cuh) share: loads
// and stores of float and bf16 activations, grid-stride helpers, the
// CUDA dtype rule and counted device scratch. Everything here is inline,
// so several translation units may include it.
#ifndef POLYVIEW_CUDA_NN_COMMON_CUH
#define POLYVIEW_CUDA_NN_COMMON_CUH

#include "common.cuh"  // first: it picks CUDA or cuda/emulate.h

#ifndef POLYVIEW_CUDA_EMULATE
#include <cuda_bf16.h>
#define PV_NN_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#else
#define PV_NN_LAUNCH(kernel, grid, block, stream) ::emu::launch(kernel, grid, block)
#endif

#include <cmath>
#include <cstdint>

namespace pvcuda {
namespace nn {

typedef __nv_bfloat16 bf16;

constexpr int kThreads = 256;        // every kernel's block, but lars_trust
constexpr unsigned kMaxBlocks = 8192;  // grid-stride kernels: enough to fill any GPU

// ---- helpers ---------------------------------------------------------------------

__device__ __forceinline__ float load(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16 *p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

__device__ __forceinline__ int64_t first_thread() {
  return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return (int64_t)gridDim.x * blockDim.x; }

// Blocks for items handled one per thread in a grid-stride loop.
inline unsigned blocks_for(int64_t items) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return (unsigned)(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}

// The CUDA backend's dtype rule (polyview.h): float32 or bfloat16
// activations, float32 parameters.
inline pv_status check_act(const char *op, pv_dtype act) {
  if (act == PV_F32 || act == PV_BF16) return PV_OK;
  return fail(PV_ERR_UNSUPPORTED, "%s: the CUDA backend takes float32 or bfloat16 "
              "activations, got %s", op, dtype_name(act));
}
inline pv_status check_param(const char *op, pv_dtype param) {
  if (param == PV_F32) return PV_OK;
  return fail(PV_ERR_UNSUPPORTED, "%s: the CUDA backend takes float32 parameters, got %s",
              op, dtype_name(param));
}

// Counted device scratch, freed (stream-ordered) on every way out.
struct Scratch {
  Context *ctx;
  void *ptr = nullptr;
  explicit Scratch(Context *c) : ctx(c) {}
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
  ~Scratch() { ctx_free(ctx, ptr); }
  pv_status alloc(int64_t bytes, const char *file, int line) {
    return ctx_alloc(ctx, bytes, &ptr, file, line);
  }
  template <typename E>
  E *at(int64_t byte_offset) const {
    return reinterpret_cast<E *>(static_cast<char *>(ptr) + byte_offset);
  }
};

inline int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

constexpr int kBnChannels = 32;      // BN sums: channels per block, one per lane
constexpr int kBnLanes = kThreads / kBnChannels;  // rows walked at once per block

// Per-channel sums over [rows, c] (batch norm's statistics and gradient
// sums, fused and synchronised): a block owns kBnChannels channels, one
// per lane, and a chunk of rows. The grid: about 1024 blocks when the
// matrix is large, chunks of at least 64 rows.
struct SumGrid {
  unsigned ctiles, chunks;
  int64_t chunk_rows;
};

inline SumGrid sum_grid(int64_t rows, int64_t c) {
  SumGrid g;
  g.ctiles = (unsigned)((c + kBnChannels - 1) / kBnChannels);
  int64_t want = (rows + 63) / 64;
  const int64_t cap = (1024 + g.ctiles - 1) / g.ctiles;
  if (want > cap) want = cap;
  if (want > 65535) want = 65535;
  if (want < 1) want = 1;
  g.chunk_rows = rows > 0 ? (rows + want - 1) / want : 1;
  g.chunks = (unsigned)(rows > 0 ? (rows + g.chunk_rows - 1) / g.chunk_rows : 1);
  return g;
}

}  // namespace nn
}  // namespace pvcuda

#endif  // POLYVIEW_CUDA_NN_COMMON_CUH
