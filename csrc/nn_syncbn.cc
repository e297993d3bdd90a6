// nn_syncbn.cc: the C ABI entry points of synchronised batch norm
// (polyview.h: pv_batchnorm_stats, _forward_stats, _backward_stats,
// _backward_input). Like nn.cc, each checks devices, shapes, dtypes and
// the global row count, with errors that name the op, the argument and
// the problem, then fills pv_syncbn_args and dispatches through the
// device's table. The small checking helpers repeat nn.cc's, which keeps
// them private to that file.
#include <string>

#include "core_internal.h"

namespace pv {
namespace {

std::string dims(const pv_tensor *t) {
  std::string s = "[";
  for (int i = 0; i < t->ndim; i++) s += (i ? ", " : "") + std::to_string((long long)t->shape[i]);
  return s + "]";
}

#define PV_TRY(expr)              \
  do {                            \
    pv_status st_ = (expr);       \
    if (st_ != PV_OK) return st_; \
  } while (0)

// check_tensor with the op's name in front of its message.
pv_status usable(const char *op, const pv_tensor *t, const pv_device *dev, const char *what) {
  if (check_tensor(t, dev, what) == PV_OK) return PV_OK;
  std::string msg = pv_last_error();
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s", op, msg.c_str());
}

pv_status want_float(const char *op, const pv_tensor *t, const char *what) {
  if (t->dtype == PV_F32 || t->dtype == PV_F64 || t->dtype == PV_BF16) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s, want a floating-point type", op,
              what, dtype_name(t->dtype));
}

pv_status want_dtype(const char *op, const pv_tensor *t, const char *what, pv_dtype dt,
                     const char *ref_name) {
  if (t->dtype == dt) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s, want %s's %s", op, what,
              dtype_name(t->dtype), ref_name, dtype_name(dt));
}

pv_status want_like_x(const char *op, const pv_tensor *t, const char *what,
                      const pv_tensor *x) {
  bool same = t->ndim == x->ndim;
  for (int i = 0; same && i < t->ndim; i++) same = t->shape[i] == x->shape[i];
  if (!same)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, want x's %s", op, what,
                dims(t).c_str(), dims(x).c_str());
  return want_dtype(op, t, what, x->dtype, "x");
}

// A per-channel tensor: [c], or [2, c] for stats, in ref's dtype.
pv_status want_channels(const char *op, pv_device *dev, const pv_tensor *t, const char *what,
                        int64_t c, bool pair, const pv_tensor *ref, const char *ref_name) {
  PV_TRY(usable(op, t, dev, what));
  const bool ok = pair ? t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == c
                       : t->ndim == 1 && t->shape[0] == c;
  if (!ok)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, want [%s%lld]", op, what,
                dims(t).c_str(), pair ? "2, " : "", (long long)c);
  return want_dtype(op, t, what, ref->dtype, ref_name);
}

// x [..., C] on dev, viewed as [rows, c].
pv_status input(const char *op, pv_device *dev, const pv_tensor *x, pv_syncbn_args *a) {
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(want_float(op, x, "x"));
  if (x->ndim < 2)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: x has shape %s, want [N, ..., C]", op,
                dims(x).c_str());
  *a = pv_syncbn_args{};
  a->c = x->shape[x->ndim - 1];
  a->rows = a->c > 0 ? x->numel / a->c : 0;
  a->act_dtype = x->dtype;
  a->x_ptr = x->data;
  return PV_OK;
}

// The global row count of the ops that read all-reduced sums.
pv_status global_count(const char *op, int64_t count, pv_syncbn_args *a) {
  if (count < 2 || count < a->rows)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: count %lld, want the rows of every rank "
                "together: at least 2 (training needs 2 values per channel) and at least "
                "this rank's %lld", op, (long long)count, (long long)a->rows);
  a->count = count;
  return PV_OK;
}

pv_status no_op(const char *op, const pv_device *dev) {
  return fail(PV_ERR_UNSUPPORTED, "%s: backend %s has no such op", op, dev->backend->name);
}

}  // namespace
}  // namespace pv

using namespace pv;

extern "C" {

pv_status pv_batchnorm_stats(pv_device *dev, const pv_tensor *x, const pv_tensor *shift,
                             pv_tensor *stats) {
  const char *op = "batchnorm_stats";
  pv_syncbn_args a;
  PV_TRY(input(op, dev, x, &a));
  PV_TRY(usable(op, shift, dev, "shift"));
  PV_TRY(want_float(op, shift, "shift"));
  PV_TRY(want_channels(op, dev, shift, "shift", a.c, false, shift, "shift"));
  PV_TRY(want_channels(op, dev, stats, "stats", a.c, true, shift, "shift"));
  if (!dev->backend->batchnorm_stats) return no_op(op, dev);
  a.param_dtype = shift->dtype;
  a.shift_ptr = shift->data;
  a.stats_out_ptr = stats->data;
  PV_GUARD({ return dev->backend->batchnorm_stats(dev->ctx, &a); })
}

pv_status pv_batchnorm_forward_stats(pv_device *dev, const pv_batchnorm_desc *desc,
                                     const pv_tensor *x, const pv_tensor *gamma,
                                     const pv_tensor *beta, const pv_tensor *stats,
                                     int64_t count, pv_tensor *running_mean,
                                     pv_tensor *running_var, pv_tensor *save_mean,
                                     pv_tensor *save_invstd, pv_tensor *y) {
  const char *op = "batchnorm_forward_stats";
  pv_syncbn_args a;
  PV_TRY(input(op, dev, x, &a));
  if (!desc) return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc is NULL", op);
  if (!desc->training)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc->training is 0: synchronised statistics "
                "are batch statistics (use pv_batchnorm_forward in evaluation)", op);
  if (!(desc->eps > 0) || !(desc->momentum >= 0 && desc->momentum <= 1))
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: eps %g must be > 0 and momentum %g in [0, 1]",
                op, desc->eps, desc->momentum);
  PV_TRY(global_count(op, count, &a));
  PV_TRY(usable(op, gamma, dev, "gamma"));
  PV_TRY(want_float(op, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, gamma, "gamma", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, beta, "beta", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, stats, "stats", a.c, true, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, running_mean, "running_mean", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, running_var, "running_var", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, save_mean, "save_mean", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, save_invstd, "save_invstd", a.c, false, gamma, "gamma"));
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(want_like_x(op, y, "y", x));
  if (!dev->backend->batchnorm_forward_stats) return no_op(op, dev);
  a.momentum = desc->momentum, a.eps = desc->eps;
  a.param_dtype = gamma->dtype;
  a.gamma_ptr = gamma->data, a.beta_ptr = beta->data;
  a.stats_in_ptr = stats->data;
  a.running_mean_ptr = running_mean->data, a.running_var_ptr = running_var->data;
  a.save_mean_ptr = save_mean->data, a.save_invstd_ptr = save_invstd->data;
  a.y_ptr = y->data;
  PV_GUARD({ return dev->backend->batchnorm_forward_stats(dev->ctx, &a); })
}

pv_status pv_batchnorm_backward_stats(pv_device *dev, const pv_tensor *x,
                                      const pv_tensor *save_mean,
                                      const pv_tensor *save_invstd, const pv_tensor *dy,
                                      pv_tensor *stats) {
  const char *op = "batchnorm_backward_stats";
  pv_syncbn_args a;
  PV_TRY(input(op, dev, x, &a));
  PV_TRY(usable(op, save_mean, dev, "save_mean"));
  PV_TRY(want_float(op, save_mean, "save_mean"));
  PV_TRY(want_channels(op, dev, save_mean, "save_mean", a.c, false, save_mean, "save_mean"));
  PV_TRY(want_channels(op, dev, save_invstd, "save_invstd", a.c, false, save_mean,
                       "save_mean"));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(want_like_x(op, dy, "dy", x));
  PV_TRY(want_channels(op, dev, stats, "stats", a.c, true, save_mean, "save_mean"));
  if (!dev->backend->batchnorm_backward_stats) return no_op(op, dev);
  a.param_dtype = save_mean->dtype;
  a.save_mean_ptr = save_mean->data, a.save_invstd_ptr = save_invstd->data;
  a.dy_ptr = dy->data;
  a.stats_out_ptr = stats->data;
  PV_GUARD({ return dev->backend->batchnorm_backward_stats(dev->ctx, &a); })
}

pv_status pv_batchnorm_backward_input(pv_device *dev, const pv_tensor *x,
                                      const pv_tensor *gamma, const pv_tensor *save_mean,
                                      const pv_tensor *save_invstd, const pv_tensor *dy,
                                      const pv_tensor *stats, int64_t count, pv_tensor *dx) {
  const char *op = "batchnorm_backward_input";
  pv_syncbn_args a;
  PV_TRY(input(op, dev, x, &a));
  PV_TRY(global_count(op, count, &a));
  PV_TRY(usable(op, gamma, dev, "gamma"));
  PV_TRY(want_float(op, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, gamma, "gamma", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, save_mean, "save_mean", a.c, false, gamma, "gamma"));
  PV_TRY(want_channels(op, dev, save_invstd, "save_invstd", a.c, false, gamma, "gamma"));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(want_like_x(op, dy, "dy", x));
  PV_TRY(want_channels(op, dev, stats, "stats", a.c, true, gamma, "gamma"));
  PV_TRY(usable(op, dx, dev, "dx"));
  PV_TRY(want_like_x(op, dx, "dx", x));
  if (!dev->backend->batchnorm_backward_input) return no_op(op, dev);
  a.param_dtype = gamma->dtype;
  a.gamma_ptr = gamma->data;
  a.save_mean_ptr = save_mean->data, a.save_invstd_ptr = save_invstd->data;
  a.dy_ptr = dy->data;
  a.stats_in_ptr = stats->data;
  a.dx_ptr = dx->data;
  PV_GUARD({ return dev->backend->batchnorm_backward_input(dev->ctx, &a); })
}

}  // extern "C"
