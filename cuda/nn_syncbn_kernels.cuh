// nn_syncbn_kernels.cuh: the kernels and launchers of synchronised batch
// norm (polyview.h: pv_batchnorm_stats, _forward_stats, _backward_stats,
// _backward_input), the CUDA side of csrc/nn_syncbn_cpu.cc. Only the CUDA
// runtime is used, so cuda/test_syncbn_emulated.cc compiles this file as
// C++ against cuda/emulate.h and checks it against the CPU backend.
//
// Sums: a block owns 32 channels (one per lane, so a warp reads 32
// consecutive channels of a row: one 128-byte line in float32) and a chunk
// of rows, which its 8 warps walk 8 rows apart. Each thread accumulates
// in double; the 8 lanes of a channel merge in shared memory, and the
// chunks in chunk order, so results repeat bit for bit and no atomics are
// needed. That is the layout of batch norm's sums in nn_kernels.cuh; the
// per-channel coefficients and the elementwise passes use the formulas of
// the fused ops there and on the CPU.
//
// The helpers it shares with nn_kernels.cuh are in nn_common.cuh
// (nn_kernels.cuh itself defines non-template kernels, which a second
// translation unit would define again at link time).
//
// Activations (T) are float or bf16, loaded into float and stored with
// one rounding; parameters and the stats tensors are float32.
#ifndef POLYVIEW_CUDA_NN_SYNCBN_KERNELS_CUH
#define POLYVIEW_CUDA_NN_SYNCBN_KERNELS_CUH

#include "nn_common.cuh"  // first: common.cuh picks CUDA or cuda/emulate.h

#include <cmath>
#include <cstdint>

namespace pvcuda {
namespace nn {
namespace syncbn {

constexpr int kChannels = kBnChannels;  // sums: channels per block (sum_grid's layout)
constexpr int kLanes = kBnLanes;        // sums: rows walked at once

#define PV_SYNCBN_TRY(expr)             \
  do {                                  \
    pv_status pv_st_ = (expr);          \
    if (pv_st_ != PV_OK) return pv_st_; \
  } while (0)

// ---- helpers ---------------------------------------------------------------------

// The CUDA dtype rule (polyview.h): float32 or bfloat16 activations,
// float32 parameters and stats.
inline pv_status check_dtypes(const char *op, const pv_syncbn_args *a) {
  PV_SYNCBN_TRY(check_act(op, a->act_dtype));
  return check_param(op, a->param_dtype);
}

// ---- per-channel sums ------------------------------------------------------------

enum SumKind {
  kShifted = 0,  // sum (x - center), sum (x - center)^2: center is the shift
  kGradient = 1  // sum dy, sum dy (x - center): center is the saved mean
};

// partial[chunk][k][c] for k = 0, 1: the two sums of kind over the rows
// of blockIdx.y's chunk, for the 32 channels of blockIdx.x.
template <typename T>
__global__ void syncbn_sums_kernel(int kind, const T *x, const T *dy, const float *center,
                                   int64_t rows, int64_t c, int64_t chunk_rows,
                                   double *partial) {
  __shared__ double part[2][kLanes][kChannels];
  const int lane = (int)threadIdx.x % kChannels, row_lane = (int)threadIdx.x / kChannels;
  const int64_t ch = (int64_t)blockIdx.x * kChannels + lane;
  const int64_t r0 = (int64_t)blockIdx.y * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  double s0 = 0, s1 = 0;
  if (ch < c) {
    const double m = (double)center[ch];
    for (int64_t r = r0 + row_lane; r < r1; r += kLanes) {
      const double d = (double)load(x, r * c + ch) - m;
      if (kind == kShifted) {
        s0 += d;
        s1 += d * d;
      } else {
        const double g = (double)load(dy, r * c + ch);
        s0 += g;
        s1 += g * d;
      }
    }
  }
  part[0][row_lane][lane] = s0;
  part[1][row_lane][lane] = s1;
  __syncthreads();
  if (row_lane == 0 && ch < c) {
    for (int k = 0; k < 2; k++) {
      double s = 0;
      for (int l = 0; l < kLanes; l++) s += part[k][l][lane];
      partial[((int64_t)blockIdx.y * 2 + k) * c + ch] = s;
    }
  }
}

// stats [2, c] = the chunks' sums merged in chunk order; the second is
// multiplied by scale1[ch] when scale1 is set (invstd: dy (x - mean)
// becomes dy xhat).
__global__ void syncbn_merge_kernel(const double *partial, int64_t chunks, int64_t c,
                                    const float *scale1, float *stats) {
  for (int64_t ch = first_thread(); ch < c; ch += grid_threads()) {
    double s0 = 0, s1 = 0;
    for (int64_t b = 0; b < chunks; b++) {
      s0 += partial[(b * 2 + 0) * c + ch];
      s1 += partial[(b * 2 + 1) * c + ch];
    }
    stats[ch] = (float)s0;
    stats[c + ch] = (float)(scale1 ? s1 * (double)scale1[ch] : s1);
  }
}


// ---- per-channel coefficients ----------------------------------------------------

struct ForwardCoefs {
  int64_t c;
  double count, momentum, eps;
  const float *stats, *gamma, *beta;
  float *running_mean, *running_var, *save_mean, *save_invstd;
  float *scale, *shift;  // y = x scale + shift
};

// One thread per channel, in double as the CPU: the statistics from the
// global sums about the running mean, then the running averages.
__global__ void syncbn_forward_coefs_kernel(ForwardCoefs s) {
  for (int64_t ch = first_thread(); ch < s.c; ch += grid_threads()) {
    const double offset = (double)s.stats[ch] / s.count;  // batch mean - running mean
    const double mean = (double)s.running_mean[ch] + offset;
    double var = (double)s.stats[s.c + ch] / s.count - offset * offset;
    var = var > 0 ? var : 0;
    const double inv = 1.0 / sqrt(var + s.eps), g = (double)s.gamma[ch];
    s.save_mean[ch] = (float)mean;
    s.save_invstd[ch] = (float)inv;
    s.scale[ch] = (float)(g * inv);
    s.shift[ch] = (float)((double)s.beta[ch] - mean * g * inv);
    s.running_mean[ch] =
        (float)((1 - s.momentum) * (double)s.running_mean[ch] + s.momentum * mean);
    s.running_var[ch] = (float)((1 - s.momentum) * (double)s.running_var[ch] +
                                s.momentum * var * s.count / (s.count - 1));
  }
}

struct InputCoefs {
  int64_t c;
  double count;
  const float *stats, *gamma, *save_mean, *save_invstd;
  float *k1, *k2, *k3;  // dx = k1 dy + k2 x + k3
};

// One thread per channel: the fused backward's training coefficients,
// with its sum dy (x - mean) = stats[1] / invstd.
__global__ void syncbn_input_coefs_kernel(InputCoefs s) {
  for (int64_t ch = first_thread(); ch < s.c; ch += grid_threads()) {
    const double inv = (double)s.save_invstd[ch], g = (double)s.gamma[ch];
    const double s0 = (double)s.stats[ch], s1 = (double)s.stats[s.c + ch];
    s.k1[ch] = (float)(g * inv);
    s.k2[ch] = (float)(-g * inv * inv * s1 / s.count);
    s.k3[ch] = (float)(-g * inv * s0 / s.count +
                       g * inv * inv * s1 / s.count * (double)s.save_mean[ch]);
  }
}

// ---- elementwise -----------------------------------------------------------------

// y = x scale[ch] + shift[ch]; y may be x.
template <typename T>
__global__ void syncbn_apply_kernel(const T *x, const float *scale, const float *shift, T *y,
                                    int64_t n, int64_t c) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const int64_t ch = i % c;
    store(y, i, load(x, i) * scale[ch] + shift[ch]);
  }
}

// dx = k1 dy + k2 x + k3 per channel; dx may be dy.
template <typename T>
__global__ void syncbn_input_kernel(const T *x, const T *dy, const float *k1, const float *k2,
                                    const float *k3, T *dx, int64_t n, int64_t c) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const int64_t ch = i % c;
    store(dx, i, k1[ch] * load(dy, i) + k2[ch] * load(x, i) + k3[ch]);
  }
}

// ---- launchers: the table's ops ----------------------------------------------------
//
// Each checks the CUDA dtype rule (the core checked shapes and count),
// selects the device and queues its kernels on the context's stream;
// nothing waits for the GPU.

// stats [2, c] = the sums of kind over x [rows, c] (and dy).
template <typename T>
pv_status sums(Context *ctx, int kind, const pv_syncbn_args *a, const float *center,
               const float *scale1) {
  const SumGrid g = sum_grid(a->rows, a->c);
  Scratch ws(ctx);
  const int64_t bytes = (int64_t)g.chunks * 2 * a->c * (int64_t)sizeof(double);
  PV_SYNCBN_TRY(ctx_alloc(ctx, bytes, &ws.ptr, __FILE__, __LINE__));
  double *partial = ws.at<double>(0);
  PV_NN_LAUNCH(syncbn_sums_kernel<T>, dim3(g.ctiles, g.chunks), kThreads, ctx->stream)(
      kind, static_cast<const T *>(a->x_ptr), static_cast<const T *>(a->dy_ptr), center,
      a->rows, a->c, g.chunk_rows, partial);
  PV_LAUNCHED("syncbn_sums_kernel");
  PV_NN_LAUNCH(syncbn_merge_kernel, blocks_for(a->c), kThreads, ctx->stream)(
      partial, (int64_t)g.chunks, a->c, scale1, static_cast<float *>(a->stats_out_ptr));
  PV_LAUNCHED("syncbn_merge_kernel");
  return PV_OK;
}

// Three float [c] vectors of per-channel coefficients.
inline pv_status coef_space(Context *ctx, int64_t c, Scratch *ws, float *k[3]) {
  const int64_t vec = align256(c * (int64_t)sizeof(float));
  PV_SYNCBN_TRY(ctx_alloc(ctx, 3 * vec, &ws->ptr, __FILE__, __LINE__));
  for (int j = 0; j < 3; j++) k[j] = ws->at<float>(j * vec);
  return PV_OK;
}

template <typename T>
pv_status forward_stats_t(Context *ctx, const pv_syncbn_args *a) {
  Scratch ws(ctx);
  float *k[3];
  PV_SYNCBN_TRY(coef_space(ctx, a->c, &ws, k));
  ForwardCoefs s;
  s.c = a->c;
  s.count = (double)a->count, s.momentum = a->momentum, s.eps = a->eps;
  s.stats = static_cast<const float *>(a->stats_in_ptr);
  s.gamma = static_cast<const float *>(a->gamma_ptr);
  s.beta = static_cast<const float *>(a->beta_ptr);
  s.running_mean = static_cast<float *>(a->running_mean_ptr);
  s.running_var = static_cast<float *>(a->running_var_ptr);
  s.save_mean = static_cast<float *>(a->save_mean_ptr);
  s.save_invstd = static_cast<float *>(a->save_invstd_ptr);
  s.scale = k[0], s.shift = k[1];
  PV_NN_LAUNCH(syncbn_forward_coefs_kernel, blocks_for(a->c), kThreads, ctx->stream)(s);
  PV_LAUNCHED("syncbn_forward_coefs_kernel");
  const int64_t n = a->rows * a->c;
  if (n == 0) return PV_OK;
  PV_NN_LAUNCH(syncbn_apply_kernel<T>, blocks_for(n), kThreads, ctx->stream)(
      static_cast<const T *>(a->x_ptr), k[0], k[1], static_cast<T *>(a->y_ptr), n, a->c);
  PV_LAUNCHED("syncbn_apply_kernel");
  return PV_OK;
}

template <typename T>
pv_status backward_input_t(Context *ctx, const pv_syncbn_args *a) {
  Scratch ws(ctx);
  float *k[3];
  PV_SYNCBN_TRY(coef_space(ctx, a->c, &ws, k));
  InputCoefs s;
  s.c = a->c;
  s.count = (double)a->count;
  s.stats = static_cast<const float *>(a->stats_in_ptr);
  s.gamma = static_cast<const float *>(a->gamma_ptr);
  s.save_mean = static_cast<const float *>(a->save_mean_ptr);
  s.save_invstd = static_cast<const float *>(a->save_invstd_ptr);
  s.k1 = k[0], s.k2 = k[1], s.k3 = k[2];
  PV_NN_LAUNCH(syncbn_input_coefs_kernel, blocks_for(a->c), kThreads, ctx->stream)(s);
  PV_LAUNCHED("syncbn_input_coefs_kernel");
  const int64_t n = a->rows * a->c;
  if (n == 0) return PV_OK;
  PV_NN_LAUNCH(syncbn_input_kernel<T>, blocks_for(n), kThreads, ctx->stream)(
      static_cast<const T *>(a->x_ptr), static_cast<const T *>(a->dy_ptr), k[0], k[1], k[2],
      static_cast<T *>(a->dx_ptr), n, a->c);
  PV_LAUNCHED("syncbn_input_kernel");
  return PV_OK;
}

// Runs fn<float> or fn<bf16> after the dtype check and cudaSetDevice;
// with no channels there is nothing to do.
#define PV_SYNCBN_BY_DTYPE(op, a, fn, ...)                      \
  do {                                                          \
    PV_SYNCBN_TRY(check_dtypes(op, a));                         \
    if ((a)->c == 0) return PV_OK;                              \
    PV_CUDA(cudaSetDevice(ctx->device));                        \
    if ((a)->act_dtype == PV_BF16) return fn<bf16>(__VA_ARGS__); \
    return fn<float>(__VA_ARGS__);                              \
  } while (0)

inline pv_status batchnorm_stats(Context *ctx, const pv_syncbn_args *a) {
  PV_SYNCBN_BY_DTYPE("batchnorm_stats", a, sums, ctx, kShifted, a,
                     static_cast<const float *>(a->shift_ptr), nullptr);
}

inline pv_status batchnorm_forward_stats(Context *ctx, const pv_syncbn_args *a) {
  PV_SYNCBN_BY_DTYPE("batchnorm_forward_stats", a, forward_stats_t, ctx, a);
}

inline pv_status batchnorm_backward_stats(Context *ctx, const pv_syncbn_args *a) {
  PV_SYNCBN_BY_DTYPE("batchnorm_backward_stats", a, sums, ctx, kGradient, a,
                     static_cast<const float *>(a->save_mean_ptr),
                     static_cast<const float *>(a->save_invstd_ptr));
}

inline pv_status batchnorm_backward_input(Context *ctx, const pv_syncbn_args *a) {
  PV_SYNCBN_BY_DTYPE("batchnorm_backward_input", a, backward_input_t, ctx, a);
}

}  // namespace syncbn
}  // namespace nn
}  // namespace pvcuda

#endif  // POLYVIEW_CUDA_NN_SYNCBN_KERNELS_CUH
