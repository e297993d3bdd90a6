// nn_kernels.cuh: the encoder ops' own kernels and their launchers, that
// is every encoder op of the CUDA backend except the cuDNN convolutions
// and the cuBLAS products (nn_cuda.cu): ReLU, add, max and global average
// pooling, batch normalisation, the linear layer's bias and bias
// gradient, dtype conversions and the fused optimizer steps. Only the
// CUDA runtime is used here, so cuda/test_nn_emulated.cc compiles this
// file as C++ against cuda/emulate.h and checks it against the CPU
// backend on machines without a GPU.
//
// Each kernel computes the function of its CPU reference (csrc/nn_cpu.cc,
// csrc/nn_optim_cpu.cc) in the same order where the order is visible:
// pooling and ReLU are bit-exact in float32, reductions accumulate in
// double like the CPU and merge partial sums in a fixed order, so every
// result repeats bit for bit from run to run. No kernel uses atomics.
//
// Activations (T) are float or bf16, loaded into float and stored with
// one rounding; parameters and statistics are float; sums are double.
#ifndef POLYVIEW_CUDA_NN_KERNELS_CUH
#define POLYVIEW_CUDA_NN_KERNELS_CUH

#include "nn_common.cuh"  // first: common.cuh picks CUDA or cuda/emulate.h


namespace pvcuda {
namespace nn {

constexpr int kLarsBlocks = 512;  // LARS norm partials, at most

// ---- elementwise -----------------------------------------------------------------
//
// Grid-stride loops over the flat tensor: consecutive threads touch
// consecutive elements, so every warp access is one coalesced transaction
// and the kernels run at memory bandwidth.

template <typename T>
__global__ void relu_forward_kernel(const T *x, T *y, int64_t n) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const float v = load(x, i);
    store(y, i, v > 0.f ? v : 0.f);  // NaN and -0 give +0, as the CPU
  }
}

template <typename T>
__global__ void relu_backward_kernel(const T *y, const T *dy, T *dx, int64_t n) {
  for (int64_t i = first_thread(); i < n; i += grid_threads())
    store(dx, i, load(y, i) > 0.f ? load(dy, i) : 0.f);
}

template <typename T>
__global__ void add_kernel(const T *a, const T *b, T *y, int64_t n) {
  for (int64_t i = first_thread(); i < n; i += grid_threads())
    store(y, i, load(a, i) + load(b, i));
}

// dst = src + bias[column] for a [rows, cols] matrix, rounding once to T:
// the linear layer's bias (bias may be NULL: a plain conversion). src may
// be dst when T is float.
template <typename T>
__global__ void bias_store_kernel(const float *src, const float *bias, T *dst, int64_t n,
                                  int64_t cols) {
  for (int64_t i = first_thread(); i < n; i += grid_threads())
    store(dst, i, bias ? src[i] + bias[i % cols] : src[i]);
}

template <typename S, typename D>
__global__ void convert_kernel(const S *src, D *dst, int64_t n) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) store(dst, i, load(src, i));
}

// ---- pooling ---------------------------------------------------------------------

struct PoolGeom {
  int64_t n, h, w, c, p, q, kernel, stride, pad;
};

// One thread per output element, channels fastest, so a warp reads 32
// consecutive channels of each window pixel: coalesced, and the window's
// rows are shared through L1 by the threads of neighbouring outputs.
template <typename T>
__global__ void maxpool_forward_kernel(PoolGeom g, const T *x, T *y) {
  const int64_t total = g.n * g.p * g.q * g.c;
  for (int64_t i = first_thread(); i < total; i += grid_threads()) {
    const int64_t ch = i % g.c, pix = i / g.c;
    const int64_t ox = pix % g.q, oy = (pix / g.q) % g.p, img = pix / (g.q * g.p);
    float m = -INFINITY;
    for (int64_t ky = 0; ky < g.kernel; ky++) {
      const int64_t iy = oy * g.stride - g.pad + ky;
      if (iy < 0 || iy >= g.h) continue;
      for (int64_t kx = 0; kx < g.kernel; kx++) {
        const int64_t ix = ox * g.stride - g.pad + kx;
        if (ix < 0 || ix >= g.w) continue;
        const float v = load(x, ((img * g.h + iy) * g.w + ix) * g.c + ch);
        m = v > m ? v : m;  // the CPU's comparison: NaN never wins
      }
    }
    store(y, i, m);
  }
}

// Flat offset (iy * w + ix) of the first maximal element of window
// (oy, ox) of one image and channel, with the CPU's rule: the first valid
// element, then only a strictly greater one replaces it; -1 when the
// window holds no valid pixel.
template <typename T>
__device__ __forceinline__ int64_t window_argmax(const PoolGeom &g, const T *ximg, int64_t ch,
                                                 int64_t oy, int64_t ox) {
  int64_t best = -1;
  float bv = -INFINITY;
  for (int64_t ky = 0; ky < g.kernel; ky++) {
    const int64_t iy = oy * g.stride - g.pad + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < g.kernel; kx++) {
      const int64_t ix = ox * g.stride - g.pad + kx;
      if (ix < 0 || ix >= g.w) continue;
      const float v = load(ximg, (iy * g.w + ix) * g.c + ch);
      if (best < 0 || v > bv) bv = v, best = iy * g.w + ix;
    }
  }
  return best;
}

// A gather: one thread per input element sums dy over the windows that
// picked it, recomputing each window's argmax from x. No two threads
// write one element, so there are no atomics, and the windows are visited
// in the CPU's (oy, ox) order: the float32 sums equal the CPU's bit for
// bit. The price is kernel^2 reads per window covering the element (9 per
// window for ResNet's 3x3 stride-2 pool), served mostly from L1.
template <typename T>
__global__ void maxpool_backward_kernel(PoolGeom g, const T *x, const T *dy, T *dx) {
  const int64_t total = g.n * g.h * g.w * g.c;
  for (int64_t i = first_thread(); i < total; i += grid_threads()) {
    const int64_t ch = i % g.c, pix = i / g.c;
    const int64_t ix = pix % g.w, iy = (pix / g.w) % g.h, img = pix / (g.w * g.h);
    const T *ximg = x + img * g.h * g.w * g.c;
    // Windows oy with oy s - pad <= iy <= oy s - pad + kernel - 1.
    const int64_t ly = iy + g.pad - g.kernel + 1, lx = ix + g.pad - g.kernel + 1;
    const int64_t oy0 = ly <= 0 ? 0 : (ly + g.stride - 1) / g.stride;
    const int64_t ox0 = lx <= 0 ? 0 : (lx + g.stride - 1) / g.stride;
    const int64_t oy1 = (iy + g.pad) / g.stride < g.p - 1 ? (iy + g.pad) / g.stride : g.p - 1;
    const int64_t ox1 = (ix + g.pad) / g.stride < g.q - 1 ? (ix + g.pad) / g.stride : g.q - 1;
    const int64_t self = iy * g.w + ix;
    float acc = 0.f;
    for (int64_t oy = oy0; oy <= oy1; oy++)
      for (int64_t ox = ox0; ox <= ox1; ox++)
        if (window_argmax(g, ximg, ch, oy, ox) == self)
          acc += load(dy, ((img * g.p + oy) * g.q + ox) * g.c + ch);
    store(dx, i, acc);
  }
}

// One thread per (image, channel) sums the H W pixels in order, in double,
// as the CPU does (so float32 results match it bit for bit); neighbouring
// threads read neighbouring channels, so each step is coalesced.
template <typename T>
__global__ void avgpool_forward_kernel(const T *x, T *y, int64_t n, int64_t hw, int64_t c) {
  for (int64_t i = first_thread(); i < n * c; i += grid_threads()) {
    const int64_t img = i / c, ch = i % c;
    double acc = 0;
    for (int64_t k = 0; k < hw; k++) acc += (double)load(x, (img * hw + k) * c + ch);
    store(y, i, (float)(acc / (double)hw));
  }
}

template <typename T>
__global__ void avgpool_backward_kernel(const T *dy, T *dx, int64_t n, int64_t hw, int64_t c,
                                        float inv) {
  for (int64_t i = first_thread(); i < n * hw * c; i += grid_threads())
    store(dx, i, load(dy, (i / (hw * c)) * c + i % c) * inv);
}

// ---- per-channel sums (batch norm, the linear bias gradient) ---------------------

enum SumMode {
  kSumX = 0,        // sum x
  kSumSquaredDev,   // sum (x - mean)^2, mean in double
  kSumBackward      // sum dy and sum dy (x - mean), mean the saved float
};

// Tiles of a [rows, c] matrix: blockIdx.x picks 32 channels, blockIdx.y a
// chunk of rows; each block writes partial[chunk][k][c] for its sums k.
// A warp reads 32 consecutive channels of one row (one 128-byte line for
// float32), its 8 warps walk the chunk 8 rows apart, and each thread sums
// in double; the 8 lanes of a channel merge in shared memory in a fixed
// order, and chunks merge later in order, so results never depend on
// scheduling.
template <typename T>
__global__ void channel_sums_kernel(int mode, const T *x, const T *dy, const double *mean_d,
                                    const float *mean_f, int64_t rows, int64_t c,
                                    int64_t chunk_rows, double *partial) {
  __shared__ double part[2][kBnLanes][kBnChannels];
  const int lane = (int)threadIdx.x % kBnChannels, row_lane = (int)threadIdx.x / kBnChannels;
  const int64_t ch = (int64_t)blockIdx.x * kBnChannels + lane;
  const int64_t r0 = (int64_t)blockIdx.y * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  double s0 = 0, s1 = 0;
  if (ch < c) {
    const double m = mode == kSumSquaredDev ? mean_d[ch]
                     : mode == kSumBackward ? (double)mean_f[ch] : 0.0;
    for (int64_t r = r0 + row_lane; r < r1; r += kBnLanes) {
      const double v = (double)load(x, r * c + ch);
      if (mode == kSumX) {
        s0 += v;
      } else if (mode == kSumSquaredDev) {
        s0 += (v - m) * (v - m);
      } else {
        const double g = (double)load(dy, r * c + ch);
        s0 += g;
        s1 += g * (v - m);
      }
    }
  }
  part[0][row_lane][lane] = s0;
  part[1][row_lane][lane] = s1;
  __syncthreads();
  if (row_lane == 0 && ch < c) {
    const int nsums = mode == kSumBackward ? 2 : 1;
    for (int k = 0; k < nsums; k++) {
      double s = 0;
      for (int l = 0; l < kBnLanes; l++) s += part[k][l][lane];
      partial[((int64_t)blockIdx.y * nsums + k) * c + ch] = s;
    }
  }
}


// Sum k of channel ch over the chunks, in chunk order.
__device__ __forceinline__ double merged(const double *partial, int64_t chunks, int nsums,
                                         int k, int64_t c, int64_t ch) {
  double s = 0;
  for (int64_t b = 0; b < chunks; b++) s += partial[(b * nsums + k) * c + ch];
  return s;
}

// out[ch] = the column sum (the linear layer's bias gradient).
__global__ void column_sum_kernel(const double *partial, int64_t chunks, int64_t c,
                                  float *out) {
  for (int64_t ch = first_thread(); ch < c; ch += grid_threads())
    out[ch] = (float)merged(partial, chunks, 1, 0, c, ch);
}

__global__ void bn_mean_kernel(const double *partial, int64_t chunks, int64_t rows, int64_t c,
                               double *mean) {
  for (int64_t ch = first_thread(); ch < c; ch += grid_threads())
    mean[ch] = merged(partial, chunks, 1, 0, c, ch) / (double)rows;
}

struct BnForwardStats {
  int64_t rows, c, chunks;
  int training;
  double momentum, eps;
  const double *partial, *mean;  // training: squared deviations, batch mean
  const float *gamma, *beta;
  float *running_mean, *running_var, *save_mean, *save_invstd;
  float *scale, *shift;  // y = x scale + shift
};

// One thread per channel: the statistics, the running averages (unbiased
// variance, as PyTorch) and the affine map, in double as the CPU.
__global__ void bn_forward_stats_kernel(BnForwardStats s) {
  for (int64_t ch = first_thread(); ch < s.c; ch += grid_threads()) {
    double mean, var;
    if (s.training) {
      mean = s.mean[ch];
      var = merged(s.partial, s.chunks, 1, 0, s.c, ch) / (double)s.rows;
      const double unbiased = var * (double)s.rows / (double)(s.rows - 1);
      s.running_mean[ch] =
          (float)((1 - s.momentum) * (double)s.running_mean[ch] + s.momentum * mean);
      s.running_var[ch] =
          (float)((1 - s.momentum) * (double)s.running_var[ch] + s.momentum * unbiased);
    } else {
      mean = (double)s.running_mean[ch];
      var = (double)s.running_var[ch];
    }
    const double inv = 1.0 / sqrt(var + s.eps);
    const double g = (double)s.gamma[ch];
    s.save_mean[ch] = (float)mean;
    s.save_invstd[ch] = (float)inv;
    s.scale[ch] = (float)(g * inv);
    s.shift[ch] = (float)((double)s.beta[ch] - mean * g * inv);
  }
}

// y = x scale[ch] + shift[ch]; y may be x.
template <typename T>
__global__ void bn_apply_kernel(const T *x, const float *scale, const float *shift, T *y,
                                int64_t n, int64_t c) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const int64_t ch = i % c;
    store(y, i, load(x, i) * scale[ch] + shift[ch]);
  }
}

struct BnBackwardStats {
  int64_t rows, c, chunks;
  int training;
  const double *partial;  // sum dy, sum dy (x - mean)
  const float *gamma, *save_mean, *save_invstd;
  float *dgamma, *dbeta;
  float *k1, *k2, *k3;  // dx = k1 dy + k2 x + k3
};

// One thread per channel: dgamma, dbeta and the coefficients of dx, with
// the CPU's formulas; in evaluation the statistics are constants and only
// k1 remains.
__global__ void bn_backward_stats_kernel(BnBackwardStats s) {
  for (int64_t ch = first_thread(); ch < s.c; ch += grid_threads()) {
    const double sum_dy = merged(s.partial, s.chunks, 2, 0, s.c, ch);
    const double sum_dyx = merged(s.partial, s.chunks, 2, 1, s.c, ch);
    const double inv = (double)s.save_invstd[ch], g = (double)s.gamma[ch];
    s.dbeta[ch] = (float)sum_dy;
    s.dgamma[ch] = (float)(sum_dyx * inv);
    s.k1[ch] = (float)(g * inv);
    if (s.training) {
      const double n = (double)s.rows;
      s.k2[ch] = (float)(-g * inv * inv * inv * sum_dyx / n);
      s.k3[ch] = (float)(-g * inv * sum_dy / n +
                         g * inv * inv * inv * sum_dyx / n * (double)s.save_mean[ch]);
    } else {
      s.k2[ch] = s.k3[ch] = 0.f;
    }
  }
}

template <typename T>
__global__ void bn_backward_apply_kernel(const T *x, const T *dy, const float *k1,
                                         const float *k2, const float *k3, T *dx, int64_t n,
                                         int64_t c) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const int64_t ch = i % c;
    store(dx, i, k1[ch] * load(dy, i) + k2[ch] * load(x, i) + k3[ch]);
  }
}

// ---- optimizer steps -----------------------------------------------------------------
//
// One fused pass per parameter tensor: each element's parameter, gradient
// and state are read once and written once, in the CPU's float32
// arithmetic, term for term.

__global__ void sgd_kernel(float *p, const float *g, float *m, int64_t n, float lr, float mu,
                           float wd, int nesterov) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const float gi = g[i] + wd * p[i];
    const float mi = mu * m[i] + gi;
    m[i] = mi;
    p[i] = p[i] - lr * (nesterov ? gi + mu * mi : mi);
  }
}

// Partial sums of |p|^2 and |g + wd p|^2 in double: each thread strides
// the tensor, then the block folds its 256 sums in a fixed tree; the
// block count depends on n only, so the norms repeat bit for bit.
__global__ void lars_norms_kernel(const float *p, const float *g, int64_t n, double wd,
                                  double *partial) {
  __shared__ double sp[kThreads], sg[kThreads];
  double a = 0, b = 0;
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const double pi = (double)p[i], gi = (double)g[i] + wd * pi;
    a += pi * pi;
    b += gi * gi;
  }
  sp[threadIdx.x] = a;
  sg[threadIdx.x] = b;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half) {
      sp[threadIdx.x] += sp[threadIdx.x + half];
      sg[threadIdx.x] += sg[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sp[0];
    partial[2 * blockIdx.x + 1] = sg[0];
  }
}

// One thread: the trust ratio and the step's scaled rate lr * trust.
__global__ void lars_trust_kernel(const double *partial, int blocks, double lr, double eta,
                                  float *scaled) {
  double a = 0, b = 0;
  for (int k = 0; k < blocks; k++) a += partial[2 * k], b += partial[2 * k + 1];
  const double pn = sqrt(a), gn = sqrt(b);
  const double trust = (pn == 0 || gn == 0) ? 1.0 : eta * pn / gn;
  *scaled = (float)(lr * trust);
}

// scaled_ptr holds lr * trust on the device; NULL means scaled_value
// (exclude: no trust ratio).
__global__ void lars_kernel(float *p, const float *g, float *m, int64_t n,
                            const float *scaled_ptr, float scaled_value, float mu, float wd,
                            int nesterov) {
  const float scaled = scaled_ptr ? *scaled_ptr : scaled_value;
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const float u = scaled * (g[i] + wd * p[i]);
    const float mi = mu * m[i] + u;
    m[i] = mi;
    p[i] = p[i] - (nesterov ? mu * mi + u : mi);
  }
}

struct AdamW {
  float lr, b1, b2, eps, c1, c2, decay;
};

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n, AdamW a) {
  for (int64_t i = first_thread(); i < n; i += grid_threads()) {
    const float gi = g[i];
    const float pi = p[i] * a.decay;
    const float mi = a.b1 * m[i] + (1 - a.b1) * gi;
    const float vi = a.b2 * v[i] + (1 - a.b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - a.lr * (mi * a.c1) / (sqrtf(vi * a.c2) + a.eps);
  }
}

// ---- launchers: the table's ops ----------------------------------------------------
//
// Each checks the CUDA dtype rule (the core checked shapes), selects the
// device and queues its kernels on the context's stream.

#define PV_NN_TRY(expr)              \
  do {                               \
    pv_status pv_st_ = (expr);       \
    if (pv_st_ != PV_OK) return pv_st_; \
  } while (0)

template <typename T>
pv_status relu_forward_t(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_LAUNCH(relu_forward_kernel<T>, blocks_for(a->numel), kThreads, ctx->stream)(
      static_cast<const T *>(a->a_ptr), static_cast<T *>(a->out_ptr), a->numel);
  PV_LAUNCHED("relu_forward_kernel");
  return PV_OK;
}

template <typename T>
pv_status relu_backward_t(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_LAUNCH(relu_backward_kernel<T>, blocks_for(a->numel), kThreads, ctx->stream)(
      static_cast<const T *>(a->a_ptr), static_cast<const T *>(a->b_ptr),
      static_cast<T *>(a->out_ptr), a->numel);
  PV_LAUNCHED("relu_backward_kernel");
  return PV_OK;
}

template <typename T>
pv_status add_t(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_LAUNCH(add_kernel<T>, blocks_for(a->numel), kThreads, ctx->stream)(
      static_cast<const T *>(a->a_ptr), static_cast<const T *>(a->b_ptr),
      static_cast<T *>(a->out_ptr), a->numel);
  PV_LAUNCHED("add_kernel");
  return PV_OK;
}

// Runs fn<float> or fn<bf16> after the dtype check and cudaSetDevice;
// empty tensors queue nothing.
#define PV_NN_BY_DTYPE(op, dtype, numel, fn, ...)            \
  do {                                                       \
    PV_NN_TRY(check_act(op, dtype));                         \
    if ((numel) == 0) return PV_OK;                          \
    PV_CUDA(cudaSetDevice(ctx->device));                     \
    if ((dtype) == PV_BF16) return fn<bf16>(__VA_ARGS__);    \
    return fn<float>(__VA_ARGS__);                           \
  } while (0)

inline pv_status relu_forward(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_BY_DTYPE("relu_forward", a->dtype, a->numel, relu_forward_t, ctx, a);
}
inline pv_status relu_backward(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_BY_DTYPE("relu_backward", a->dtype, a->numel, relu_backward_t, ctx, a);
}
inline pv_status add(Context *ctx, const pv_eltwise_args *a) {
  PV_NN_BY_DTYPE("add", a->dtype, a->numel, add_t, ctx, a);
}

inline PoolGeom pool_geom(const pv_pool_args *a) {
  return PoolGeom{a->n, a->h, a->w, a->c, a->p, a->q, a->kernel, a->stride, a->pad};
}

template <typename T>
pv_status maxpool_forward_t(Context *ctx, const pv_pool_args *a) {
  PV_NN_LAUNCH(maxpool_forward_kernel<T>, blocks_for(a->n * a->p * a->q * a->c), kThreads,
               ctx->stream)(pool_geom(a), static_cast<const T *>(a->x_ptr),
                            static_cast<T *>(a->out_ptr));
  PV_LAUNCHED("maxpool_forward_kernel");
  return PV_OK;
}

template <typename T>
pv_status maxpool_backward_t(Context *ctx, const pv_pool_args *a) {
  PV_NN_LAUNCH(maxpool_backward_kernel<T>, blocks_for(a->n * a->h * a->w * a->c), kThreads,
               ctx->stream)(pool_geom(a), static_cast<const T *>(a->x_ptr),
                            static_cast<const T *>(a->dy_ptr), static_cast<T *>(a->out_ptr));
  PV_LAUNCHED("maxpool_backward_kernel");
  return PV_OK;
}

template <typename T>
pv_status avgpool_forward_t(Context *ctx, const pv_pool_args *a) {
  PV_NN_LAUNCH(avgpool_forward_kernel<T>, blocks_for(a->n * a->c), kThreads, ctx->stream)(
      static_cast<const T *>(a->x_ptr), static_cast<T *>(a->out_ptr), a->n, a->h * a->w, a->c);
  PV_LAUNCHED("avgpool_forward_kernel");
  return PV_OK;
}

template <typename T>
pv_status avgpool_backward_t(Context *ctx, const pv_pool_args *a) {
  const int64_t hw = a->h * a->w;
  const float inv = (float)(1.0 / (double)hw);  // the CPU's (T)(1.0 / hw)
  PV_NN_LAUNCH(avgpool_backward_kernel<T>, blocks_for(a->n * hw * a->c), kThreads,
               ctx->stream)(static_cast<const T *>(a->dy_ptr), static_cast<T *>(a->out_ptr),
                            a->n, hw, a->c, inv);
  PV_LAUNCHED("avgpool_backward_kernel");
  return PV_OK;
}

inline pv_status maxpool_forward(Context *ctx, const pv_pool_args *a) {
  PV_NN_BY_DTYPE("maxpool_forward", a->dtype, a->n * a->p * a->q * a->c, maxpool_forward_t,
                 ctx, a);
}
inline pv_status maxpool_backward(Context *ctx, const pv_pool_args *a) {
  PV_NN_BY_DTYPE("maxpool_backward", a->dtype, a->n * a->h * a->w * a->c, maxpool_backward_t,
                 ctx, a);
}
inline pv_status avgpool_forward(Context *ctx, const pv_pool_args *a) {
  PV_NN_BY_DTYPE("global_avgpool_forward", a->dtype, a->n * a->c, avgpool_forward_t, ctx, a);
}
inline pv_status avgpool_backward(Context *ctx, const pv_pool_args *a) {
  PV_NN_BY_DTYPE("global_avgpool_backward", a->dtype, a->n * a->h * a->w * a->c,
                 avgpool_backward_t, ctx, a);
}

// dst = src converted (float <-> bf16), n elements.
template <typename S, typename D>
pv_status convert(Context *ctx, const S *src, D *dst, int64_t n) {
  if (n == 0) return PV_OK;
  void (*kernel)(const S *, D *, int64_t) = convert_kernel<S, D>;
  PV_NN_LAUNCH(kernel, blocks_for(n), kThreads, ctx->stream)(src, dst, n);
  PV_LAUNCHED("convert_kernel");
  return PV_OK;
}

// dst [rows, cols] = src + bias (bias NULL: src alone), rounded to T.
template <typename T>
pv_status bias_store(Context *ctx, const float *src, const float *bias, T *dst, int64_t rows,
                     int64_t cols) {
  if (rows * cols == 0) return PV_OK;
  PV_NN_LAUNCH(bias_store_kernel<T>, blocks_for(rows * cols), kThreads, ctx->stream)(
      src, bias, dst, rows * cols, cols);
  PV_LAUNCHED("bias_store_kernel");
  return PV_OK;
}

// Queues the per-channel sums of mode over [rows, c] into partial
// ([chunks][nsums][c] doubles, sized by sum_grid).
template <typename T>
pv_status channel_sums(Context *ctx, int mode, const SumGrid &g, const T *x, const T *dy,
                       const double *mean_d, const float *mean_f, int64_t rows, int64_t c,
                       double *partial) {
  PV_NN_LAUNCH(channel_sums_kernel<T>, dim3(g.ctiles, g.chunks), kThreads, ctx->stream)(
      mode, x, dy, mean_d, mean_f, rows, c, g.chunk_rows, partial);
  PV_LAUNCHED("channel_sums_kernel");
  return PV_OK;
}

// out [c] (float32) = column sums of m [rows, c]: the bias gradient.
template <typename T>
pv_status column_sums(Context *ctx, const T *m, int64_t rows, int64_t c, float *out) {
  if (c == 0) return PV_OK;
  const SumGrid g = sum_grid(rows, c);
  Scratch ws(ctx);
  PV_NN_TRY(ws.alloc((int64_t)g.chunks * c * (int64_t)sizeof(double), __FILE__, __LINE__));
  double *partial = ws.at<double>(0);
  PV_NN_TRY(channel_sums<T>(ctx, kSumX, g, m, nullptr, nullptr, nullptr, rows, c, partial));
  PV_NN_LAUNCH(column_sum_kernel, blocks_for(c), kThreads, ctx->stream)(partial, g.chunks, c,
                                                                       out);
  PV_LAUNCHED("column_sum_kernel");
  return PV_OK;
}

// Workspace of one BN call: partial sums, the batch mean, three [c]
// float coefficient vectors.
struct BnScratch {
  double *partial, *mean;
  float *k[3];
};

inline pv_status bn_scratch(Scratch &ws, const SumGrid &g, int64_t c, BnScratch *out) {
  const int64_t partial = align256((int64_t)g.chunks * 2 * c * (int64_t)sizeof(double));
  const int64_t mean = align256(c * (int64_t)sizeof(double));
  const int64_t vec = align256(c * (int64_t)sizeof(float));
  PV_NN_TRY(ws.alloc(partial + mean + 3 * vec, __FILE__, __LINE__));
  out->partial = ws.at<double>(0);
  out->mean = ws.at<double>(partial);
  for (int j = 0; j < 3; j++) out->k[j] = ws.at<float>(partial + mean + j * vec);
  return PV_OK;
}

// Training: pass 1 the mean, pass 2 the squared deviations (two passes,
// as the CPU, for accuracy), then the statistics and one pass for y.
template <typename T>
pv_status bn_forward_t(Context *ctx, const pv_batchnorm_args *a) {
  const int64_t rows = a->rows, c = a->c;
  const T *x = static_cast<const T *>(a->x_ptr);
  const SumGrid g = sum_grid(rows, c);
  Scratch ws(ctx);
  BnScratch b;
  PV_NN_TRY(bn_scratch(ws, g, c, &b));
  if (a->training) {
    PV_NN_TRY(channel_sums<T>(ctx, kSumX, g, x, nullptr, nullptr, nullptr, rows, c, b.partial));
    PV_NN_LAUNCH(bn_mean_kernel, blocks_for(c), kThreads, ctx->stream)(b.partial, g.chunks,
                                                                      rows, c, b.mean);
    PV_LAUNCHED("bn_mean_kernel");
    PV_NN_TRY(channel_sums<T>(ctx, kSumSquaredDev, g, x, nullptr, b.mean, nullptr, rows, c,
                              b.partial));
  }
  BnForwardStats s;
  s.rows = rows, s.c = c, s.chunks = g.chunks;
  s.training = a->training;
  s.momentum = a->momentum, s.eps = a->eps;
  s.partial = b.partial, s.mean = b.mean;
  s.gamma = static_cast<const float *>(a->gamma_ptr);
  s.beta = static_cast<const float *>(a->beta_ptr);
  s.running_mean = static_cast<float *>(a->running_mean_ptr);
  s.running_var = static_cast<float *>(a->running_var_ptr);
  s.save_mean = static_cast<float *>(a->save_mean_ptr);
  s.save_invstd = static_cast<float *>(a->save_invstd_ptr);
  s.scale = b.k[0], s.shift = b.k[1];
  PV_NN_LAUNCH(bn_forward_stats_kernel, blocks_for(c), kThreads, ctx->stream)(s);
  PV_LAUNCHED("bn_forward_stats_kernel");
  if (rows == 0) return PV_OK;
  PV_NN_LAUNCH(bn_apply_kernel<T>, blocks_for(rows * c), kThreads, ctx->stream)(
      x, b.k[0], b.k[1], static_cast<T *>(a->y_ptr), rows * c, c);
  PV_LAUNCHED("bn_apply_kernel");
  return PV_OK;
}

template <typename T>
pv_status bn_backward_t(Context *ctx, const pv_batchnorm_args *a) {
  const int64_t rows = a->rows, c = a->c;
  const T *x = static_cast<const T *>(a->x_ptr), *dy = static_cast<const T *>(a->dy_ptr);
  const SumGrid g = sum_grid(rows, c);
  Scratch ws(ctx);
  BnScratch b;
  PV_NN_TRY(bn_scratch(ws, g, c, &b));
  const float *save_mean = static_cast<const float *>(a->save_mean_ptr);
  PV_NN_TRY(channel_sums<T>(ctx, kSumBackward, g, x, dy, nullptr, save_mean, rows, c,
                            b.partial));
  BnBackwardStats s;
  s.rows = rows, s.c = c, s.chunks = g.chunks;
  s.training = a->training;
  s.partial = b.partial;
  s.gamma = static_cast<const float *>(a->gamma_ptr);
  s.save_mean = save_mean;
  s.save_invstd = static_cast<const float *>(a->save_invstd_ptr);
  s.dgamma = static_cast<float *>(a->dgamma_ptr);
  s.dbeta = static_cast<float *>(a->dbeta_ptr);
  s.k1 = b.k[0], s.k2 = b.k[1], s.k3 = b.k[2];
  PV_NN_LAUNCH(bn_backward_stats_kernel, blocks_for(c), kThreads, ctx->stream)(s);
  PV_LAUNCHED("bn_backward_stats_kernel");
  if (rows == 0) return PV_OK;
  PV_NN_LAUNCH(bn_backward_apply_kernel<T>, blocks_for(rows * c), kThreads, ctx->stream)(
      x, dy, b.k[0], b.k[1], b.k[2], static_cast<T *>(a->dx_ptr), rows * c, c);
  PV_LAUNCHED("bn_backward_apply_kernel");
  return PV_OK;
}

inline pv_status bn_check(const char *op, const pv_batchnorm_args *a) {
  PV_NN_TRY(check_act(op, a->act_dtype));
  return check_param(op, a->param_dtype);
}

inline pv_status batchnorm_forward(Context *ctx, const pv_batchnorm_args *a) {
  PV_NN_TRY(bn_check("batchnorm_forward", a));
  if (a->c == 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  if (a->act_dtype == PV_BF16) return bn_forward_t<bf16>(ctx, a);
  return bn_forward_t<float>(ctx, a);
}

inline pv_status batchnorm_backward(Context *ctx, const pv_batchnorm_args *a) {
  PV_NN_TRY(bn_check("batchnorm_backward", a));
  if (a->c == 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  if (a->act_dtype == PV_BF16) return bn_backward_t<bf16>(ctx, a);
  return bn_backward_t<float>(ctx, a);
}

// LARS: the norms' partials, the trust ratio, then the update, all queued
// on the stream: the host never waits for the norms.
inline pv_status lars_step(Context *ctx, const pv_optim_args *a, double wd) {
  const pv_optim_desc &d = a->desc;
  float *p = static_cast<float *>(a->param_ptr), *m = static_cast<float *>(a->state0_ptr);
  const float *g = static_cast<const float *>(a->grad_ptr);
  const int64_t n = a->numel;
  const unsigned grid = blocks_for(n);
  if (d.exclude) {
    PV_NN_LAUNCH(lars_kernel, grid, kThreads, ctx->stream)(
        p, g, m, n, nullptr, (float)d.lr, (float)d.momentum, 0.f, d.nesterov);
    PV_LAUNCHED("lars_kernel");
    return PV_OK;
  }
  const int64_t want = (n + kThreads * 8 - 1) / (kThreads * 8);
  const unsigned nb = (unsigned)(want < 1 ? 1 : want > kLarsBlocks ? kLarsBlocks : want);
  Scratch ws(ctx);
  PV_NN_TRY(ws.alloc(align256(2 * nb * (int64_t)sizeof(double)) + 256, __FILE__, __LINE__));
  double *partial = ws.at<double>(0);
  float *scaled = ws.at<float>(align256(2 * nb * (int64_t)sizeof(double)));
  PV_NN_LAUNCH(lars_norms_kernel, nb, kThreads, ctx->stream)(p, g, n, wd, partial);
  PV_LAUNCHED("lars_norms_kernel");
  PV_NN_LAUNCH(lars_trust_kernel, 1, 1, ctx->stream)(partial, (int)nb, d.lr, d.eta, scaled);
  PV_LAUNCHED("lars_trust_kernel");
  PV_NN_LAUNCH(lars_kernel, grid, kThreads, ctx->stream)(
      p, g, m, n, scaled, 0.f, (float)d.momentum, (float)wd, d.nesterov);
  PV_LAUNCHED("lars_kernel");
  return PV_OK;
}

inline pv_status optimizer_step(Context *ctx, const pv_optim_args *a) {
  const char *op = "optimizer_step";
  if (a->dtype != PV_F32)
    return fail(PV_ERR_UNSUPPORTED, "%s: the CUDA backend takes float32 parameters, got %s",
                op, dtype_name(a->dtype));
  if (a->numel == 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  const pv_optim_desc &d = a->desc;
  const double wd = d.exclude ? 0.0 : d.weight_decay;
  float *p = static_cast<float *>(a->param_ptr), *m = static_cast<float *>(a->state0_ptr);
  const float *g = static_cast<const float *>(a->grad_ptr);
  const unsigned grid = blocks_for(a->numel);
  switch (d.kind) {
    case PV_OPT_SGD:
      PV_NN_LAUNCH(sgd_kernel, grid, kThreads, ctx->stream)(
          p, g, m, a->numel, (float)d.lr, (float)d.momentum, (float)wd, d.nesterov);
      PV_LAUNCHED("sgd_kernel");
      return PV_OK;
    case PV_OPT_LARS:
      return lars_step(ctx, a, wd);
    case PV_OPT_ADAMW: {
      AdamW w;
      w.lr = (float)d.lr, w.b1 = (float)d.beta1, w.b2 = (float)d.beta2, w.eps = (float)d.eps;
      w.c1 = (float)(1.0 / (1.0 - std::pow(d.beta1, (double)d.step)));
      w.c2 = (float)(1.0 / (1.0 - std::pow(d.beta2, (double)d.step)));
      w.decay = (float)(1.0 - d.lr * wd);
      PV_NN_LAUNCH(adamw_kernel, grid, kThreads, ctx->stream)(
          p, g, m, static_cast<float *>(a->state1_ptr), a->numel, w);
      PV_LAUNCHED("adamw_kernel");
      return PV_OK;
    }
  }
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: unknown optimizer %d", op, (int)d.kind);
}

}  // namespace nn
}  // namespace pvcuda

#endif  // POLYVIEW_CUDA_NN_KERNELS_CUH
