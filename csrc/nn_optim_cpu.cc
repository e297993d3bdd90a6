// nn_optim_cpu.cc: the optimizer step on the CPU, one parameter tensor per
// call, the same update the CUDA backend fuses (see pv_optim_desc in
// polyview.h for the formulas). LARS needs the norms of the parameter and
// of the decayed gradient first: a reduction over fixed blocks merged in
// order, then one elementwise pass.
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "threadpool.h"

namespace pv {
namespace {

constexpr int64_t kGrain = 1 << 14;

template <typename F>
void blocks(int64_t n, const F &fn) {
  const int64_t nb = (n + kGrain - 1) / kGrain;
  parallel_for(nb, [&](int64_t b, int) { fn(b, b * kGrain, std::min(n, (b + 1) * kGrain)); });
}

// Returns |p| and |g + wd p|.
template <typename T>
void lars_norms(const T *p, const T *g, double wd, int64_t n, double *pn, double *gn) {
  const int64_t nb = (n + kGrain - 1) / kGrain;
  std::vector<double> part(2 * nb, 0.0);
  blocks(n, [&](int64_t b, int64_t lo, int64_t hi) {
    double sp = 0, sg = 0;
    for (int64_t i = lo; i < hi; i++) {
      const double pi = (double)p[i], gi = (double)g[i] + wd * pi;
      sp += pi * pi;
      sg += gi * gi;
    }
    part[2 * b] = sp, part[2 * b + 1] = sg;
  });
  double sp = 0, sg = 0;
  for (int64_t b = 0; b < nb; b++) sp += part[2 * b], sg += part[2 * b + 1];
  *pn = std::sqrt(sp), *gn = std::sqrt(sg);
}

template <typename T>
void step(const pv_optim_args &a) {
  const pv_optim_desc &d = a.desc;
  T *p = static_cast<T *>(a.param_ptr), *m = static_cast<T *>(a.state0_ptr);
  T *v = static_cast<T *>(a.state1_ptr);
  const T *g = static_cast<const T *>(a.grad_ptr);
  const double wd = d.exclude ? 0.0 : d.weight_decay;
  const T mu = (T)d.momentum, lr = (T)d.lr, twd = (T)wd;
  switch (d.kind) {
    case PV_OPT_SGD:
      blocks(a.numel, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; i++) {
          const T gi = g[i] + twd * p[i];
          m[i] = mu * m[i] + gi;
          p[i] -= lr * (d.nesterov ? gi + mu * m[i] : m[i]);
        }
      });
      break;
    case PV_OPT_LARS: {
      double pn = 0, gn = 0;
      if (!d.exclude) lars_norms(p, g, wd, a.numel, &pn, &gn);
      const double trust = (d.exclude || pn == 0 || gn == 0) ? 1.0 : d.eta * pn / gn;
      const T scaled = (T)(d.lr * trust);
      blocks(a.numel, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; i++) {
          const T u = scaled * (g[i] + twd * p[i]);
          m[i] = mu * m[i] + u;
          p[i] -= d.nesterov ? mu * m[i] + u : m[i];
        }
      });
      break;
    }
    case PV_OPT_ADAMW: {
      const T b1 = (T)d.beta1, b2 = (T)d.beta2, eps = (T)d.eps;
      const T c1 = (T)(1.0 / (1.0 - std::pow(d.beta1, (double)d.step)));
      const T c2 = (T)(1.0 / (1.0 - std::pow(d.beta2, (double)d.step)));
      const T decay = (T)(1.0 - d.lr * wd);
      blocks(a.numel, [&](int64_t, int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; i++) {
          const T gi = g[i];
          p[i] *= decay;
          m[i] = b1 * m[i] + (1 - b1) * gi;
          v[i] = b2 * v[i] + (1 - b2) * gi * gi;
          p[i] -= lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
        }
      });
      break;
    }
  }
}

}  // namespace

pv_status cpu_optimizer_step(void *, const pv_optim_args *a) {
  if (a->dtype == PV_F64)
    step<double>(*a);
  else if (a->dtype == PV_F32)
    step<float>(*a);
  else
    return fail(PV_ERR_UNSUPPORTED, "optimizer_step: the CPU takes float32 or float64, got %s",
                dtype_name(a->dtype));
  return PV_OK;
}

}  // namespace pv
