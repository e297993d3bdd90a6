// emulate.h: a CPU stand-in for the part of CUDA that cuda/loss_cuda.cu
// uses, so that test_loss_emulated can run the real kernels, unchanged, on
// a machine without a GPU and compare them with the CPU backend. Compiled
// only with -DPOLYVIEW_CUDA_EMULATE; the library never includes it.
//
// What it models. A launch runs its blocks one after another; the threads
// of a block are fibers (ucontext) on one OS thread, switched only at
// __syncthreads and at warp collectives, so a run is deterministic and a
// missing barrier shows up as a wrong result. Barriers follow Volta+
// rules: exited threads count as arrived. wmma fragments hold the whole
// 16 x 16 tile in every lane (the API never exposes the real layout, and
// the kernels only touch fragments element-wise and uniformly); mma
// accumulates in fp32 in k order. exp2f is libm's, not ex2.approx.
// What it does not model: timing, occupancy, register and shared-memory
// limits, bank conflicts, memory races between blocks, alignment traps.
#ifndef POLYVIEW_CUDA_EMULATE_H
#define POLYVIEW_CUDA_EMULATE_H

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

// ---- qualifiers and built-in types ------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
template <typename T>
inline T __ldg(const T *p) { return *p; }

using std::isfinite;

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // nearest even, NaN kept
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}

// ---- the runtime API subset ---------------------------------------------------

typedef int cudaError_t;
enum : int {
  cudaSuccess = 0,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoKernelImageForDevice = 209
};
typedef struct CUstream_st *cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
struct cudaFuncAttributes {
  int numRegs;
};
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind,
                                   cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
  a->numRegs = 0;
  return cudaSuccess;
}
inline const char *cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline const char *cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }

inline void nvtxRangePushA(const char *) {}
inline void nvtxRangePop() {}

// ---- blocks as fibers -----------------------------------------------------------

namespace emu {

enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Scheduler {
  std::vector<ucontext_t> ctx;
  std::vector<State> state;
  std::vector<std::vector<char>> stacks;
  std::vector<uint64_t> exchange;  // one word per thread for warp collectives
  ucontext_t main;
  int current = -1, threads = 0;
  std::function<void()> body;
};

inline Scheduler &sched() {
  static Scheduler s;
  return s;
}

inline int lane() { return sched().current % 32; }

// Parks the calling thread at a barrier and returns to the scheduler.
inline void park(State why) {
  Scheduler &s = sched();
  const int me = s.current;
  s.state[me] = why;
  swapcontext(&s.ctx[me], &s.main);
}

inline void fiber_entry() {
  Scheduler &s = sched();
  s.body();
  s.state[s.current] = kDone;  // uc_link returns to the scheduler
}

// Runs one block of n threads to completion. Every round resumes each
// runnable thread until it parks; then a block barrier opens when every
// live thread waits at one, and a warp's barrier when all of that warp's
// live lanes wait at one.
inline void run_block(int n) {
  Scheduler &s = sched();
  constexpr size_t kStack = 256 * 1024;
  s.threads = n;
  s.ctx.resize(n);
  s.state.assign(n, kRunnable);
  s.exchange.assign(n, 0);
  if ((int)s.stacks.size() < n) s.stacks.resize(n, std::vector<char>(kStack));
  for (int i = 0; i < n; i++) {
    getcontext(&s.ctx[i]);
    s.ctx[i].uc_stack.ss_sp = s.stacks[i].data();
    s.ctx[i].uc_stack.ss_size = kStack;
    s.ctx[i].uc_link = &s.main;
    makecontext(&s.ctx[i], fiber_entry, 0);
  }
  for (;;) {
    for (int i = 0; i < n; i++) {
      if (s.state[i] != kRunnable) continue;
      s.current = i;
      threadIdx = dim3((unsigned)i, 0, 0);
      swapcontext(&s.main, &s.ctx[i]);
    }
    int live = 0, at_block = 0;
    for (int i = 0; i < n; i++) {
      live += s.state[i] != kDone;
      at_block += s.state[i] == kAtBlockBarrier;
    }
    if (live == 0) break;
    if (at_block == live) {
      for (int i = 0; i < n; i++)
        if (s.state[i] == kAtBlockBarrier) s.state[i] = kRunnable;
      continue;
    }
    bool opened = false;
    for (int w = 0; w * 32 < n; w++) {
      int wlive = 0, wwait = 0;
      for (int i = w * 32; i < n && i < w * 32 + 32; i++) {
        wlive += s.state[i] != kDone;
        wwait += s.state[i] == kAtWarpBarrier;
      }
      if (wlive > 0 && wwait == wlive) {
        for (int i = w * 32; i < n && i < w * 32 + 32; i++)
          if (s.state[i] == kAtWarpBarrier) s.state[i] = kRunnable;
        opened = true;
      }
    }
    if (!opened) {
      std::fprintf(stderr, "emulate: threads wait at different barriers (a divergent "
                           "__syncthreads or warp collective)\n");
      std::abort();
    }
  }
  s.current = -1;
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  template <typename... A>
  void operator()(A &&...args) {
    if (block.y != 1 || block.z != 1) {
      std::fprintf(stderr, "emulate: only 1-D blocks are modelled\n");
      std::abort();
    }
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
          blockIdx = dim3(x, y, z);
          sched().body = [&] { kernel(args...); };
          run_block((int)block.x);
        }
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block) {
  return Launch<P...>{kernel, grid, block};
}

}  // namespace emu

// ---- device built-ins ---------------------------------------------------------------

inline void __syncthreads() { emu::park(emu::kAtBlockBarrier); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  static_assert(sizeof(T) <= 8, "one exchange word per thread");
  emu::Scheduler &s = emu::sched();
  const int me = s.current;
  std::memcpy(&s.exchange[me], &v, sizeof v);
  emu::park(emu::kAtWarpBarrier);
  T out;
  std::memcpy(&out, &s.exchange[(me & ~31) | ((me & 31) ^ mask)], sizeof out);
  emu::park(emu::kAtWarpBarrier);  // no lane overwrites before all have read
  return out;
}

inline int __all_sync(unsigned, int pred) {
  emu::Scheduler &s = emu::sched();
  const int me = s.current, w0 = me & ~31;
  s.exchange[me] = pred ? 1 : 0;
  emu::park(emu::kAtWarpBarrier);
  int all = 1;
  for (int i = w0; i < w0 + 32 && i < s.threads; i++)
    if (s.state[i] != emu::kDone && !s.exchange[i]) all = 0;
  emu::park(emu::kAtWarpBarrier);
  return all;
}

inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
  unsigned long long old = *p;  // fibers never preempt each other
  if (v < old) *p = v;
  return old;
}

// ---- wmma: whole tiles, computed by lane 0 ------------------------------------------
//
// A fragment holds the whole tile, but only lane 0's copy is ever
// observable (it alone stores), so the other lanes skip the work: that
// keeps a tensor-core kernel as cheap to emulate as the fp32 one.

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// Element (r, c) of the logical 16 x 16 tile is x[r * 16 + c].
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  typedef typename std::conditional<std::is_same<Use, accumulator>::value, float, T>::type E;
  static constexpr int num_elements = 256;
  E x[256];
};

template <typename F>
inline void fill_fragment(F &f, float v) {
  if (emu::lane() != 0) return;
  for (int e = 0; e < 256; e++) f.x[e] = v;
}

template <typename T>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major> &f, const T *p,
                             unsigned ldm) {
  if (emu::lane() != 0) return;
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r * 16 + c] = p[r * ldm + c];
}

template <typename T>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, row_major> &f, const T *p,
                             unsigned ldm) {
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; k++)
    for (int c = 0; c < 16; c++) f.x[k * 16 + c] = p[k * ldm + c];
}

template <typename T>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major> &f, const T *p,
                             unsigned ldm) {
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; k++)
    for (int c = 0; c < 16; c++) f.x[k * 16 + c] = p[c * ldm + k];
}

template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
  if (emu::lane() != 0) return;
  float out[256];
  for (int r = 0; r < 16; r++)
    for (int col = 0; col < 16; col++) {
      float acc = c.x[r * 16 + col];
      for (int k = 0; k < 16; k++)
        acc = std::fma(__bfloat162float(a.x[r * 16 + k]), __bfloat162float(b.x[k * 16 + col]),
                       acc);
      out[r * 16 + col] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}

// Lane 0 writes the tile (the kernels read it only after a barrier).
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t) {
  if (emu::lane() != 0) return;
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) p[r * ldm + c] = f.x[r * 16 + c];
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // POLYVIEW_CUDA_EMULATE_H
