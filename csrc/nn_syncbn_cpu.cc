// nn_syncbn_cpu.cc: synchronised batch norm on the CPU, the reference for
// cuda/nn_syncbn_cuda.cu. The four ops cut pv_batchnorm_forward and
// pv_batchnorm_backward (nn_cpu.cc) where they need per-channel sums, so
// that the caller can all-reduce every rank's sums in between
// (polyview.h). x is [rows, c] with channels fastest.
//
// Sums are double, one partial per block of rows merged in block order,
// so a result never depends on thread scheduling. The per-channel
// coefficients are the fused ops' formulas, computed in double and
// rounded once to T; the elementwise passes are the same T expressions
// (y = x scale + shift, dx = k1 dy + k2 x + k3). One rank holding the
// whole batch therefore gets the fused ops' results up to the order of
// the sums and, in float32, the rounding of the sums to the stats tensor.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"

namespace pv {
namespace {

pv_status check_dtypes(const char *op, pv_dtype act, pv_dtype param) {
  if (act == param && (act == PV_F32 || act == PV_F64)) return PV_OK;
  return fail(PV_ERR_UNSUPPORTED, "%s: the CPU takes float32 or float64 activations and "
              "parameters of one dtype, got %s and %s", op, dtype_name(act),
              dtype_name(param));
}

// Blocks of rows: at most 64, so that partials stay small next to x.
constexpr int64_t kMaxBlocks = 64;

// out [2, c] = the sums that row(r, s0, s1) adds into s0 [c] and s1 [c]
// over every row r, in double.
template <typename F>
void two_sums(int64_t rows, int64_t c, double *out, const F &row) {
  const int64_t blocks = std::max<int64_t>(1, std::min(rows, kMaxBlocks));
  const int64_t per = (rows + blocks - 1) / blocks;
  std::vector<double> part((size_t)(blocks * 2 * c), 0.0);
  parallel_for(blocks, [&](int64_t b, int) {
    double *acc = part.data() + b * 2 * c;
    const int64_t end = std::min(rows, (b + 1) * per);
    for (int64_t r = b * per; r < end; r++) row(r, acc, acc + c);
  });
  std::fill(out, out + 2 * c, 0.0);
  for (int64_t b = 0; b < blocks; b++)
    for (int64_t i = 0; i < 2 * c; i++) out[i] += part[(size_t)(b * 2 * c + i)];
}

// Runs fn(r) for every row, rows split across the pool.
template <typename F>
void each_row(int64_t rows, const F &fn) {
  const int64_t blocks = std::max<int64_t>(1, std::min(rows / 64, 4 * (int64_t)cpu_threads()));
  const int64_t per = (rows + blocks - 1) / blocks;
  parallel_for(blocks, [&](int64_t b, int) {
    const int64_t end = std::min(rows, (b + 1) * per);
    for (int64_t r = b * per; r < end; r++) fn(r);
  });
}

template <typename T>
std::vector<double> widen(const void *p, int64_t n) {
  const T *v = static_cast<const T *>(p);
  return std::vector<double>(v, v + n);
}

// stats = sum (x - shift), sum (x - shift)^2.
template <typename T>
void stats(const pv_syncbn_args &a) {
  const int64_t c = a.c;
  const T *x = static_cast<const T *>(a.x_ptr);
  const std::vector<double> shift = widen<T>(a.shift_ptr, c);
  std::vector<double> s((size_t)(2 * c));
  two_sums(a.rows, c, s.data(), [&](int64_t r, double *s0, double *s1) {
    for (int64_t j = 0; j < c; j++) {
      const double d = (double)x[r * c + j] - shift[j];
      s0[j] += d;
      s1[j] += d * d;
    }
  });
  T *out = static_cast<T *>(a.stats_out_ptr);
  for (int64_t i = 0; i < 2 * c; i++) out[i] = (T)s[i];
}

// The statistics from the global sums about the running mean, then y and
// the running averages as bn_forward in training.
template <typename T>
void forward_stats(const pv_syncbn_args &a) {
  const int64_t c = a.c;
  const double n = (double)a.count;
  const T *in = static_cast<const T *>(a.stats_in_ptr);
  const T *gamma = static_cast<const T *>(a.gamma_ptr), *beta = static_cast<const T *>(a.beta_ptr);
  T *rm = static_cast<T *>(a.running_mean_ptr), *rv = static_cast<T *>(a.running_var_ptr);
  T *sm = static_cast<T *>(a.save_mean_ptr), *si = static_cast<T *>(a.save_invstd_ptr);
  std::vector<T> scale((size_t)c), shift((size_t)c);
  for (int64_t j = 0; j < c; j++) {
    const double offset = (double)in[j] / n;  // batch mean - running mean
    const double mean = (double)rm[j] + offset;
    const double var = std::max((double)in[c + j] / n - offset * offset, 0.0);
    const double inv = 1.0 / std::sqrt(var + a.eps), g = (double)gamma[j];
    sm[j] = (T)mean;
    si[j] = (T)inv;
    scale[j] = (T)(g * inv);
    shift[j] = (T)((double)beta[j] - mean * g * inv);
    rm[j] = (T)((1 - a.momentum) * (double)rm[j] + a.momentum * mean);
    rv[j] = (T)((1 - a.momentum) * (double)rv[j] + a.momentum * var * n / (n - 1));
  }
  const T *x = static_cast<const T *>(a.x_ptr);
  T *y = static_cast<T *>(a.y_ptr);
  each_row(a.rows, [&](int64_t r) {
    for (int64_t j = 0; j < c; j++) y[r * c + j] = x[r * c + j] * scale[j] + shift[j];
  });
}

// stats = sum dy, sum dy xhat: the sum of dy (x - mean) in double, scaled
// by invstd once, as bn_backward forms dgamma.
template <typename T>
void backward_stats(const pv_syncbn_args &a) {
  const int64_t c = a.c;
  const T *x = static_cast<const T *>(a.x_ptr), *dy = static_cast<const T *>(a.dy_ptr);
  const std::vector<double> mean = widen<T>(a.save_mean_ptr, c);
  std::vector<double> s((size_t)(2 * c));
  two_sums(a.rows, c, s.data(), [&](int64_t r, double *s0, double *s1) {
    for (int64_t j = 0; j < c; j++) {
      const double g = (double)dy[r * c + j];
      s0[j] += g;
      s1[j] += g * ((double)x[r * c + j] - mean[j]);
    }
  });
  const T *si = static_cast<const T *>(a.save_invstd_ptr);
  T *out = static_cast<T *>(a.stats_out_ptr);
  for (int64_t j = 0; j < c; j++) {
    out[j] = (T)s[j];
    out[c + j] = (T)(s[c + j] * (double)si[j]);
  }
}

// dx = k1 dy + k2 x + k3 with bn_backward's training coefficients, its
// sum dy (x - mean) being s1 / invstd here.
template <typename T>
void backward_input(const pv_syncbn_args &a) {
  const int64_t c = a.c;
  const double n = (double)a.count;
  const T *in = static_cast<const T *>(a.stats_in_ptr);
  const T *gamma = static_cast<const T *>(a.gamma_ptr);
  const T *sm = static_cast<const T *>(a.save_mean_ptr);
  const T *si = static_cast<const T *>(a.save_invstd_ptr);
  std::vector<T> k1((size_t)c), k2((size_t)c), k3((size_t)c);
  for (int64_t j = 0; j < c; j++) {
    const double inv = (double)si[j], g = (double)gamma[j];
    const double s0 = (double)in[j], s1 = (double)in[c + j];
    k1[j] = (T)(g * inv);
    k2[j] = (T)(-g * inv * inv * s1 / n);
    k3[j] = (T)(-g * inv * s0 / n + g * inv * inv * s1 / n * (double)sm[j]);
  }
  const T *x = static_cast<const T *>(a.x_ptr), *dy = static_cast<const T *>(a.dy_ptr);
  T *dx = static_cast<T *>(a.dx_ptr);
  each_row(a.rows, [&](int64_t r) {
    for (int64_t j = 0; j < c; j++)
      dx[r * c + j] = k1[j] * dy[r * c + j] + k2[j] * x[r * c + j] + k3[j];
  });
}

// Checks the CPU's dtype rule, then runs fn<float> or fn<double>.
#define PV_SYNCBN_DISPATCH(op, fn, a)                                 \
  do {                                                                \
    pv_status st_ = check_dtypes(op, (a).act_dtype, (a).param_dtype); \
    if (st_ != PV_OK) return st_;                                     \
    if ((a).act_dtype == PV_F64) fn<double>(a); else fn<float>(a);    \
    return PV_OK;                                                     \
  } while (0)

}  // namespace

pv_status cpu_batchnorm_stats(void *, const pv_syncbn_args *a) {
  PV_SYNCBN_DISPATCH("batchnorm_stats", stats, *a);
}
pv_status cpu_batchnorm_forward_stats(void *, const pv_syncbn_args *a) {
  PV_SYNCBN_DISPATCH("batchnorm_forward_stats", forward_stats, *a);
}
pv_status cpu_batchnorm_backward_stats(void *, const pv_syncbn_args *a) {
  PV_SYNCBN_DISPATCH("batchnorm_backward_stats", backward_stats, *a);
}
pv_status cpu_batchnorm_backward_input(void *, const pv_syncbn_args *a) {
  PV_SYNCBN_DISPATCH("batchnorm_backward_input", backward_input, *a);
}

}  // namespace pv
