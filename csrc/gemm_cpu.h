// gemm_cpu.h: the CPU backend's matrix multiply, used by convolution and
// linear layers (nn_cpu.cc). No system BLAS: packed, blocked, threaded.
#ifndef POLYVIEW_GEMM_CPU_H
#define POLYVIEW_GEMM_CPU_H

#include <cstdint>

namespace pv {

// C = alpha * op(A) op(B) + beta * C, all row-major. op(A) is [m][k]: A
// itself (stored [m][lda], lda >= k) or, when trans_a, A^T with A stored
// [k][lda], lda >= m. Likewise op(B) is [k][n]: B ([k][ldb]) or B^T (B
// stored [n][ldb]). C is [m][ldc]. beta == 0 never reads C, so C may hold
// garbage. Runs on the CPU thread pool; called from inside a pool task it
// runs on that thread alone. Instantiated for float and double.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T *a,
          int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc);

// gemm with C stored transposed: C^T [n][ldct] = alpha op(A) op(B) + beta
// C^T, each micro-tile summed over the depth slices row-major in a
// per-worker buffer and written transposed once, so that a weight
// gradient summed as R S C x K lands in the weights' K x R S C layout
// without a transpose pass. trans_a only (throws otherwise).
template <typename T>
void gemm_ct(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T *a,
             int64_t lda, const T *b, int64_t ldb, T beta, T *ct, int64_t ldct);

// op(A) given row by row, as an implicit convolution reads its input:
// rows(ctx, i0, count, d, out) sets out[r] for the rows i = i0 + r,
// r < count, so that op(A)[i][d + t] = out[r][t] for every t with d + t
// in the same segment of depths as d ([s * segment, (s + 1) * segment)).
// The rows need not be evenly spaced.
template <typename T>
struct GemmRows {
  void (*rows)(const void *ctx, int64_t i0, int64_t count, int64_t depth, const T **out);
  const void *ctx;
  int64_t segment;
};

// C = op(A) op(B) (alpha 1, beta 0) with op(A) from rows, never
// materialised: the micro-kernel reads each sliver's rows where they lie.
// Only where gemm_rows_fits(m, n, k): B packs whole. The depth is never
// split across threads. Results do not depend on the thread count.
template <typename T>
bool gemm_rows_fits(int64_t m, int64_t n, int64_t k);
template <typename T>
void gemm_rows(const GemmRows<T> &a, bool trans_b, int64_t m, int64_t n, int64_t k, const T *b,
               int64_t ldb, T *c, int64_t ldc);

// Scratch memory for one use (slot) on the calling thread, grown as needed
// and kept for the thread's life, so that the large temporaries of a
// training step (im2col matrices, packed GEMM blocks) are not mapped and
// faulted in afresh on every call (page faults were ~8% of a ResNet-18
// step, these among them). The cost: each thread that ever ran a
// convolution keeps its peak (tens of MiB at 224 px) until it exits.
// Holds at least n elements of garbage; valid until the next call with the
// same slot on the same thread. Nested users take different slots. Not
// counted by pv_device_memory. Throws std::bad_alloc like CpuBuffer.
enum ScratchSlot {
  kScratchCol,
  kScratchPackA,
  kScratchPackB,
  kScratchSplitK,
  kScratchPartial,
  kScratchFlipped,
  kScratchTile,
  kScratchSlots
};
void *scratch_bytes(ScratchSlot slot, int64_t bytes);
template <typename T>
T *scratch(ScratchSlot slot, int64_t n) {
  return static_cast<T *>(scratch_bytes(slot, n * (int64_t)sizeof(T)));
}

// c [m][n] (row stride ldc) = beta c + the sum of parts partial products
// partial [parts][m][n], added in part order whatever the thread count;
// transposed, c is [n][m] and receives the sum's transpose.
template <typename T>
void sum_parts(int64_t parts, int64_t m, int64_t n, const T *partial, T beta, T *c,
               int64_t ldc, bool transposed = false);

// The calling thread's float32 multiply-add throughput in GFLOP/s (an FMA
// counts as 2), measured with register-resident chains on the widest unit
// the kernels use (about 50 ms): pv_cpu_fma_peak sums it over threads.
double cpu_fma_peak_gflops();

}  // namespace pv

#endif  // POLYVIEW_GEMM_CPU_H
