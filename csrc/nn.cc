// nn.cc: the encoder ops' C ABI entry points (convolution, batch norm,
// ReLU, pooling, add, linear, optimizer step). Each checks its tensors'
// devices, shapes and dtypes, with errors that name the op, the argument
// and the problem, then fills the backend's argument struct and
// dispatches through the device's table.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core_internal.h"
#include "cpu_ops.h"
#include "gemm_cpu.h"
#include "threadpool.h"

namespace pv {
namespace {

std::string shape_str(const pv_tensor *t) {
  std::string s = "[";
  for (int i = 0; i < t->ndim; i++) {
    if (i) s += ", ";
    s += std::to_string((long long)t->shape[i]);
  }
  return s + "]";
}

// check_tensor with the op's name in front of its message.
pv_status usable(const char *op, const pv_tensor *t, const pv_device *dev, const char *what) {
  if (check_tensor(t, dev, what) == PV_OK) return PV_OK;
  std::string msg = pv_last_error();
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s", op, msg.c_str());
}

// t must have exactly the dims in want (ndim of them).
pv_status want_shape(const char *op, const pv_tensor *t, const char *what, int ndim,
                     const int64_t *want) {
  bool ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
  if (ok) return PV_OK;
  std::string w = "[";
  for (int i = 0; i < ndim; i++) w += (i ? ", " : "") + std::to_string((long long)want[i]);
  w += "]";
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, want %s", op, what,
              shape_str(t).c_str(), w.c_str());
}

pv_status want_same_shape(const char *op, const pv_tensor *t, const char *what,
                          const pv_tensor *ref, const char *ref_name) {
  bool ok = t->ndim == ref->ndim;
  for (int i = 0; ok && i < t->ndim; i++) ok = t->shape[i] == ref->shape[i];
  if (ok) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, want %s's %s", op, what,
              shape_str(t).c_str(), ref_name, shape_str(ref).c_str());
}

pv_status want_dtype(const char *op, const pv_tensor *t, const char *what, pv_dtype dt,
                     const char *ref_name) {
  if (t->dtype == dt) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s, want %s's %s", op, what,
              dtype_name(t->dtype), ref_name, dtype_name(dt));
}

pv_status want_float(const char *op, const pv_tensor *t, const char *what) {
  if (t->dtype == PV_F32 || t->dtype == PV_F64 || t->dtype == PV_BF16) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s, want a floating-point type", op,
              what, dtype_name(t->dtype));
}

pv_status no_op(const char *op, const pv_device *dev) {
  return fail(PV_ERR_UNSUPPORTED, "%s: backend %s has no such op", op, dev->backend->name);
}

#define PV_TRY(expr)                  \
  do {                                \
    pv_status st_ = (expr);           \
    if (st_ != PV_OK) return st_;     \
  } while (0)

// Optional tensors: checked only when present.
#define PV_TRY_IF(t, expr) \
  do {                     \
    if (t) PV_TRY(expr);   \
  } while (0)

// Shared by forward and backward: checks x and w, derives the geometry.
pv_status conv_args(const char *op, pv_device *dev, const pv_conv2d_desc *d, const pv_tensor *x,
                    const pv_tensor *w, pv_conv2d_args *a) {
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  if (!d) return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(usable(op, w, dev, "w"));
  PV_TRY(want_float(op, x, "x"));
  PV_TRY(want_float(op, w, "w"));
  if (x->ndim != 4)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: x has shape %s, want [N, H, W, C]", op,
                shape_str(x).c_str());
  if (w->ndim != 4)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: w has shape %s, want [K, R, S, C]", op,
                shape_str(w).c_str());
  if (w->shape[3] != x->shape[3])
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: w has %lld input channels, x has %lld", op,
                (long long)w->shape[3], (long long)x->shape[3]);
  if (d->stride < 1 || d->pad < 0)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: stride %lld and pad %lld, want >= 1 and >= 0",
                op, (long long)d->stride, (long long)d->pad);
  *a = pv_conv2d_args{};
  a->n = x->shape[0], a->h = x->shape[1], a->w = x->shape[2], a->c = x->shape[3];
  a->k = w->shape[0], a->r = w->shape[1], a->s = w->shape[2];
  a->stride = d->stride, a->pad = d->pad;
  if (a->h + 2 * a->pad < a->r || a->w + 2 * a->pad < a->s)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: a %lldx%lld kernel does not fit the %lldx%lld "
                "input with pad %lld", op, (long long)a->r, (long long)a->s, (long long)a->h,
                (long long)a->w, (long long)a->pad);
  a->p = (a->h + 2 * a->pad - a->r) / a->stride + 1;
  a->q = (a->w + 2 * a->pad - a->s) / a->stride + 1;
  a->act_dtype = x->dtype, a->param_dtype = w->dtype;
  a->x_ptr = x->data, a->w_ptr = w->data;
  return PV_OK;
}

pv_status bn_common(const char *op, pv_device *dev, const pv_batchnorm_desc *d,
                    const pv_tensor *x, const pv_tensor *gamma, pv_batchnorm_args *a) {
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  if (!d) return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(usable(op, gamma, dev, "gamma"));
  PV_TRY(want_float(op, x, "x"));
  PV_TRY(want_float(op, gamma, "gamma"));
  if (x->ndim < 2)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: x has shape %s, want [N, ..., C]", op,
                shape_str(x).c_str());
  if (!(d->eps > 0) || !(d->momentum >= 0 && d->momentum <= 1))
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: eps %g must be > 0 and momentum %g in [0, 1]",
                op, d->eps, d->momentum);
  *a = pv_batchnorm_args{};
  a->c = x->shape[x->ndim - 1];
  a->rows = x->numel / (a->c > 0 ? a->c : 1);
  if (d->training && a->rows < 2)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: training needs at least 2 values per channel, "
                "x %s has %lld", op, shape_str(x).c_str(), (long long)a->rows);
  a->training = d->training ? 1 : 0;
  a->momentum = d->momentum, a->eps = d->eps;
  a->act_dtype = x->dtype, a->param_dtype = gamma->dtype;
  a->x_ptr = x->data, a->gamma_ptr = gamma->data;
  return PV_OK;
}

// Every [C] tensor of a BN call: on dev, [C], the parameters' dtype.
pv_status bn_vec(const char *op, pv_device *dev, const pv_tensor *t, const char *what,
                 const pv_tensor *gamma, int64_t c) {
  PV_TRY(usable(op, t, dev, what));
  PV_TRY(want_shape(op, t, what, 1, &c));
  return want_dtype(op, t, what, gamma->dtype, "gamma");
}

pv_status pool_input(const char *op, pv_device *dev, const pv_tensor *x, pv_pool_args *a) {
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(want_float(op, x, "x"));
  if (x->ndim != 4)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: x has shape %s, want [N, H, W, C]", op,
                shape_str(x).c_str());
  *a = pv_pool_args{};
  a->n = x->shape[0], a->h = x->shape[1], a->w = x->shape[2], a->c = x->shape[3];
  a->dtype = x->dtype;
  a->x_ptr = x->data;
  return PV_OK;
}

pv_status maxpool_geometry(const char *op, const pv_maxpool_desc *d, pv_pool_args *a) {
  if (!d) return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc is NULL", op);
  if (d->kernel < 1 || d->stride < 1 || d->pad < 0 || d->pad >= d->kernel)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: kernel %lld, stride %lld, pad %lld: want "
                "kernel >= 1, stride >= 1, 0 <= pad < kernel", op, (long long)d->kernel,
                (long long)d->stride, (long long)d->pad);
  if (a->h + 2 * d->pad < d->kernel || a->w + 2 * d->pad < d->kernel)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: window %lld does not fit the %lldx%lld input",
                op, (long long)d->kernel, (long long)a->h, (long long)a->w);
  a->kernel = d->kernel, a->stride = d->stride, a->pad = d->pad;
  a->p = (a->h + 2 * d->pad - d->kernel) / d->stride + 1;
  a->q = (a->w + 2 * d->pad - d->kernel) / d->stride + 1;
  return PV_OK;
}

pv_status linear_common(const char *op, pv_device *dev, const pv_tensor *x, const pv_tensor *w,
                        pv_linear_args *a) {
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(usable(op, w, dev, "w"));
  PV_TRY(want_float(op, x, "x"));
  PV_TRY(want_float(op, w, "w"));
  if (w->ndim != 2)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: w has shape %s, want [out, in]", op,
                shape_str(w).c_str());
  if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: x has shape %s, want [..., %lld] to match w %s",
                op, shape_str(x).c_str(), (long long)w->shape[1], shape_str(w).c_str());
  *a = pv_linear_args{};
  a->in = w->shape[1], a->out = w->shape[0];
  a->rows = a->in > 0 ? x->numel / a->in : 0;
  a->act_dtype = x->dtype, a->param_dtype = w->dtype;
  a->x_ptr = x->data, a->w_ptr = w->data;
  return PV_OK;
}

// y [..., out] with as many rows as x, grouped as the caller likes.
pv_status linear_out(const char *op, const pv_tensor *x, const pv_tensor *y, const char *what,
                     int64_t out) {
  const int64_t rows = x->shape[x->ndim - 1] > 0 ? x->numel / x->shape[x->ndim - 1] : 0;
  if (y->ndim >= 1 && y->shape[y->ndim - 1] == out && y->numel == rows * out) return PV_OK;
  return fail(PV_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, want [..., %lld] with %lld rows "
              "like x %s", op, what, shape_str(y).c_str(), (long long)out, (long long)rows,
              shape_str(x).c_str());
}

}  // namespace
}  // namespace pv

using namespace pv;

extern "C" {

pv_status pv_conv2d_forward(pv_device *dev, const pv_conv2d_desc *desc, const pv_tensor *x,
                            const pv_tensor *w, pv_tensor *y) {
  const char *op = "conv2d_forward";
  pv_conv2d_args a;
  PV_TRY(conv_args(op, dev, desc, x, w, &a));
  PV_TRY(usable(op, y, dev, "y"));
  const int64_t ys[4] = {a.n, a.p, a.q, a.k};
  PV_TRY(want_shape(op, y, "y", 4, ys));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->conv2d_forward) return no_op(op, dev);
  a.y_ptr = y->data;
  PV_GUARD({ return dev->backend->conv2d_forward(dev->ctx, &a); })
}

pv_status pv_conv2d_backward(pv_device *dev, const pv_conv2d_desc *desc, const pv_tensor *x,
                             const pv_tensor *w, const pv_tensor *dy, pv_tensor *dx,
                             pv_tensor *dw) {
  const char *op = "conv2d_backward";
  pv_conv2d_args a;
  PV_TRY(conv_args(op, dev, desc, x, w, &a));
  PV_TRY(usable(op, dy, dev, "dy"));
  const int64_t ys[4] = {a.n, a.p, a.q, a.k};
  PV_TRY(want_shape(op, dy, "dy", 4, ys));
  PV_TRY(want_dtype(op, dy, "dy", x->dtype, "x"));
  PV_TRY_IF(dx, usable(op, dx, dev, "dx"));
  PV_TRY_IF(dx, want_same_shape(op, dx, "dx", x, "x"));
  PV_TRY_IF(dx, want_dtype(op, dx, "dx", x->dtype, "x"));
  PV_TRY_IF(dw, usable(op, dw, dev, "dw"));
  PV_TRY_IF(dw, want_same_shape(op, dw, "dw", w, "w"));
  PV_TRY_IF(dw, want_dtype(op, dw, "dw", w->dtype, "w"));
  if (!dev->backend->conv2d_backward) return no_op(op, dev);
  a.dy_ptr = dy->data;
  a.dx_ptr = dx ? dx->data : nullptr;
  a.dw_ptr = dw ? dw->data : nullptr;
  PV_GUARD({ return dev->backend->conv2d_backward(dev->ctx, &a); })
}

pv_status pv_batchnorm_forward(pv_device *dev, const pv_batchnorm_desc *desc,
                               const pv_tensor *x, const pv_tensor *gamma,
                               const pv_tensor *beta, pv_tensor *running_mean,
                               pv_tensor *running_var, pv_tensor *save_mean,
                               pv_tensor *save_invstd, pv_tensor *y) {
  const char *op = "batchnorm_forward";
  pv_batchnorm_args a;
  PV_TRY(bn_common(op, dev, desc, x, gamma, &a));
  PV_TRY(bn_vec(op, dev, gamma, "gamma", gamma, a.c));
  PV_TRY(bn_vec(op, dev, beta, "beta", gamma, a.c));
  PV_TRY(bn_vec(op, dev, running_mean, "running_mean", gamma, a.c));
  PV_TRY(bn_vec(op, dev, running_var, "running_var", gamma, a.c));
  PV_TRY(bn_vec(op, dev, save_mean, "save_mean", gamma, a.c));
  PV_TRY(bn_vec(op, dev, save_invstd, "save_invstd", gamma, a.c));
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(want_same_shape(op, y, "y", x, "x"));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->batchnorm_forward) return no_op(op, dev);
  a.beta_ptr = beta->data;
  a.running_mean_ptr = running_mean->data, a.running_var_ptr = running_var->data;
  a.save_mean_ptr = save_mean->data, a.save_invstd_ptr = save_invstd->data;
  a.y_ptr = y->data;
  PV_GUARD({ return dev->backend->batchnorm_forward(dev->ctx, &a); })
}

pv_status pv_batchnorm_backward(pv_device *dev, const pv_batchnorm_desc *desc,
                                const pv_tensor *x, const pv_tensor *gamma,
                                const pv_tensor *save_mean, const pv_tensor *save_invstd,
                                const pv_tensor *dy, pv_tensor *dx, pv_tensor *dgamma,
                                pv_tensor *dbeta) {
  const char *op = "batchnorm_backward";
  pv_batchnorm_args a;
  PV_TRY(bn_common(op, dev, desc, x, gamma, &a));
  PV_TRY(bn_vec(op, dev, gamma, "gamma", gamma, a.c));
  PV_TRY(bn_vec(op, dev, save_mean, "save_mean", gamma, a.c));
  PV_TRY(bn_vec(op, dev, save_invstd, "save_invstd", gamma, a.c));
  PV_TRY(bn_vec(op, dev, dgamma, "dgamma", gamma, a.c));
  PV_TRY(bn_vec(op, dev, dbeta, "dbeta", gamma, a.c));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(want_same_shape(op, dy, "dy", x, "x"));
  PV_TRY(want_dtype(op, dy, "dy", x->dtype, "x"));
  PV_TRY(usable(op, dx, dev, "dx"));
  PV_TRY(want_same_shape(op, dx, "dx", x, "x"));
  PV_TRY(want_dtype(op, dx, "dx", x->dtype, "x"));
  if (!dev->backend->batchnorm_backward) return no_op(op, dev);
  a.save_mean_ptr = save_mean->data, a.save_invstd_ptr = save_invstd->data;
  a.dy_ptr = dy->data, a.dx_ptr = dx->data;
  a.dgamma_ptr = dgamma->data, a.dbeta_ptr = dbeta->data;
  PV_GUARD({ return dev->backend->batchnorm_backward(dev->ctx, &a); })
}

pv_status pv_relu_forward(pv_device *dev, const pv_tensor *x, pv_tensor *y) {
  const char *op = "relu_forward";
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, x, dev, "x"));
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(want_float(op, x, "x"));
  PV_TRY(want_same_shape(op, y, "y", x, "x"));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->relu_forward) return no_op(op, dev);
  pv_eltwise_args a = {x->numel, x->dtype, x->data, nullptr, y->data};
  PV_GUARD({ return dev->backend->relu_forward(dev->ctx, &a); })
}

pv_status pv_relu_backward(pv_device *dev, const pv_tensor *y, const pv_tensor *dy,
                           pv_tensor *dx) {
  const char *op = "relu_backward";
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(usable(op, dx, dev, "dx"));
  PV_TRY(want_float(op, y, "y"));
  PV_TRY(want_same_shape(op, dy, "dy", y, "y"));
  PV_TRY(want_same_shape(op, dx, "dx", y, "y"));
  PV_TRY(want_dtype(op, dy, "dy", y->dtype, "y"));
  PV_TRY(want_dtype(op, dx, "dx", y->dtype, "y"));
  if (!dev->backend->relu_backward) return no_op(op, dev);
  pv_eltwise_args a = {y->numel, y->dtype, y->data, dy->data, dx->data};
  PV_GUARD({ return dev->backend->relu_backward(dev->ctx, &a); })
}

pv_status pv_maxpool_forward(pv_device *dev, const pv_maxpool_desc *desc, const pv_tensor *x,
                             pv_tensor *y) {
  const char *op = "maxpool_forward";
  pv_pool_args a;
  PV_TRY(pool_input(op, dev, x, &a));
  PV_TRY(maxpool_geometry(op, desc, &a));
  PV_TRY(usable(op, y, dev, "y"));
  const int64_t ys[4] = {a.n, a.p, a.q, a.c};
  PV_TRY(want_shape(op, y, "y", 4, ys));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->maxpool_forward) return no_op(op, dev);
  a.out_ptr = y->data;
  PV_GUARD({ return dev->backend->maxpool_forward(dev->ctx, &a); })
}

pv_status pv_maxpool_backward(pv_device *dev, const pv_maxpool_desc *desc,
                              const pv_tensor *x, const pv_tensor *y, const pv_tensor *dy,
                              pv_tensor *dx) {
  const char *op = "maxpool_backward";
  pv_pool_args a;
  PV_TRY(pool_input(op, dev, x, &a));
  PV_TRY(maxpool_geometry(op, desc, &a));
  const int64_t ys[4] = {a.n, a.p, a.q, a.c};
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(want_shape(op, y, "y", 4, ys));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(want_shape(op, dy, "dy", 4, ys));
  PV_TRY(want_dtype(op, dy, "dy", x->dtype, "x"));
  PV_TRY(usable(op, dx, dev, "dx"));
  PV_TRY(want_same_shape(op, dx, "dx", x, "x"));
  PV_TRY(want_dtype(op, dx, "dx", x->dtype, "x"));
  if (!dev->backend->maxpool_backward) return no_op(op, dev);
  a.y_ptr = y->data, a.dy_ptr = dy->data, a.out_ptr = dx->data;
  PV_GUARD({ return dev->backend->maxpool_backward(dev->ctx, &a); })
}

pv_status pv_global_avgpool_forward(pv_device *dev, const pv_tensor *x, pv_tensor *y) {
  const char *op = "global_avgpool_forward";
  pv_pool_args a;
  PV_TRY(pool_input(op, dev, x, &a));
  PV_TRY(usable(op, y, dev, "y"));
  const int64_t ys[2] = {a.n, a.c};
  PV_TRY(want_shape(op, y, "y", 2, ys));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->avgpool_forward) return no_op(op, dev);
  a.p = a.q = 1;
  a.out_ptr = y->data;
  PV_GUARD({ return dev->backend->avgpool_forward(dev->ctx, &a); })
}

pv_status pv_global_avgpool_backward(pv_device *dev, const pv_tensor *dy, pv_tensor *dx) {
  const char *op = "global_avgpool_backward";
  pv_pool_args a;
  PV_TRY(pool_input(op, dev, dx, &a));
  PV_TRY(usable(op, dy, dev, "dy"));
  const int64_t ys[2] = {a.n, a.c};
  PV_TRY(want_shape(op, dy, "dy", 2, ys));
  PV_TRY(want_dtype(op, dy, "dy", dx->dtype, "dx"));
  if (!dev->backend->avgpool_backward) return no_op(op, dev);
  a.p = a.q = 1;
  a.x_ptr = nullptr;
  a.dy_ptr = dy->data, a.out_ptr = dx->data;
  PV_GUARD({ return dev->backend->avgpool_backward(dev->ctx, &a); })
}

pv_status pv_add(pv_device *dev, const pv_tensor *a, const pv_tensor *b, pv_tensor *y) {
  const char *op = "add";
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  PV_TRY(usable(op, a, dev, "a"));
  PV_TRY(usable(op, b, dev, "b"));
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(want_float(op, a, "a"));
  PV_TRY(want_same_shape(op, b, "b", a, "a"));
  PV_TRY(want_same_shape(op, y, "y", a, "a"));
  PV_TRY(want_dtype(op, b, "b", a->dtype, "a"));
  PV_TRY(want_dtype(op, y, "y", a->dtype, "a"));
  if (!dev->backend->add) return no_op(op, dev);
  pv_eltwise_args args = {a->numel, a->dtype, a->data, b->data, y->data};
  PV_GUARD({ return dev->backend->add(dev->ctx, &args); })
}

pv_status pv_linear_forward(pv_device *dev, const pv_tensor *x, const pv_tensor *w,
                            const pv_tensor *b, pv_tensor *y) {
  const char *op = "linear_forward";
  pv_linear_args a;
  PV_TRY(linear_common(op, dev, x, w, &a));
  PV_TRY_IF(b, usable(op, b, dev, "b"));
  PV_TRY_IF(b, want_shape(op, b, "b", 1, &a.out));
  PV_TRY_IF(b, want_dtype(op, b, "b", w->dtype, "w"));
  PV_TRY(usable(op, y, dev, "y"));
  PV_TRY(linear_out(op, x, y, "y", a.out));
  PV_TRY(want_dtype(op, y, "y", x->dtype, "x"));
  if (!dev->backend->linear_forward) return no_op(op, dev);
  a.b_ptr = b ? b->data : nullptr;
  a.y_ptr = y->data;
  PV_GUARD({ return dev->backend->linear_forward(dev->ctx, &a); })
}

pv_status pv_linear_backward(pv_device *dev, const pv_tensor *x, const pv_tensor *w,
                             const pv_tensor *dy, pv_tensor *dx, pv_tensor *dw,
                             pv_tensor *db) {
  const char *op = "linear_backward";
  pv_linear_args a;
  PV_TRY(linear_common(op, dev, x, w, &a));
  PV_TRY(usable(op, dy, dev, "dy"));
  PV_TRY(linear_out(op, x, dy, "dy", a.out));
  PV_TRY(want_dtype(op, dy, "dy", x->dtype, "x"));
  PV_TRY_IF(dx, usable(op, dx, dev, "dx"));
  PV_TRY_IF(dx, want_same_shape(op, dx, "dx", x, "x"));
  PV_TRY_IF(dx, want_dtype(op, dx, "dx", x->dtype, "x"));
  PV_TRY(usable(op, dw, dev, "dw"));
  PV_TRY(want_same_shape(op, dw, "dw", w, "w"));
  PV_TRY(want_dtype(op, dw, "dw", w->dtype, "w"));
  PV_TRY_IF(db, usable(op, db, dev, "db"));
  PV_TRY_IF(db, want_shape(op, db, "db", 1, &a.out));
  PV_TRY_IF(db, want_dtype(op, db, "db", w->dtype, "w"));
  if (!dev->backend->linear_backward) return no_op(op, dev);
  a.dy_ptr = dy->data;
  a.dx_ptr = dx ? dx->data : nullptr;
  a.dw_ptr = dw->data;
  a.db_ptr = db ? db->data : nullptr;
  PV_GUARD({ return dev->backend->linear_backward(dev->ctx, &a); })
}

pv_status pv_optimizer_step(pv_device *dev, const pv_optim_desc *desc, pv_tensor *param,
                            const pv_tensor *grad, pv_tensor *state0, pv_tensor *state1) {
  const char *op = "optimizer_step";
  if (!dev) return fail(PV_ERR_INVALID_ARGUMENT, "%s: device is NULL", op);
  if (!desc) return fail(PV_ERR_INVALID_ARGUMENT, "%s: desc is NULL", op);
  const pv_optim_desc &d = *desc;
  if (d.kind < PV_OPT_SGD || d.kind > PV_OPT_ADAMW)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: unknown optimizer %d", op, (int)d.kind);
  if (!std::isfinite(d.lr) || d.lr < 0 || !std::isfinite(d.weight_decay) || d.weight_decay < 0)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: lr %g and weight_decay %g must be finite and "
                ">= 0", op, d.lr, d.weight_decay);
  if ((d.kind != PV_OPT_ADAMW) && !(d.momentum >= 0 && d.momentum < 1))
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: momentum %g, want [0, 1)", op, d.momentum);
  if (d.kind == PV_OPT_LARS && !(d.eta > 0 && std::isfinite(d.eta)))
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: LARS eta %g, want > 0", op, d.eta);
  if (d.kind == PV_OPT_ADAMW &&
      (!(d.beta1 >= 0 && d.beta1 < 1) || !(d.beta2 >= 0 && d.beta2 < 1) || !(d.eps > 0) ||
       d.step < 1))
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: AdamW beta1 %g, beta2 %g, eps %g, step %lld: "
                "want betas in [0, 1), eps > 0, step >= 1", op, d.beta1, d.beta2, d.eps,
                (long long)d.step);
  PV_TRY(usable(op, param, dev, "param"));
  PV_TRY(usable(op, grad, dev, "grad"));
  PV_TRY(usable(op, state0, dev, "state0"));
  if (param->dtype != PV_F32 && param->dtype != PV_F64)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s: param has dtype %s, want float32 (or float64 "
                "on the CPU)", op, dtype_name(param->dtype));
  PV_TRY(want_same_shape(op, grad, "grad", param, "param"));
  PV_TRY(want_same_shape(op, state0, "state0", param, "param"));
  PV_TRY(want_dtype(op, grad, "grad", param->dtype, "param"));
  PV_TRY(want_dtype(op, state0, "state0", param->dtype, "param"));
  if (d.kind == PV_OPT_ADAMW) {
    if (!state1) return fail(PV_ERR_INVALID_ARGUMENT, "%s: AdamW needs state1 (v)", op);
    PV_TRY(usable(op, state1, dev, "state1"));
    PV_TRY(want_same_shape(op, state1, "state1", param, "param"));
    PV_TRY(want_dtype(op, state1, "state1", param->dtype, "param"));
  }
  if (!dev->backend->optimizer_step) return no_op(op, dev);
  pv_optim_args a = {d, param->numel, param->dtype, param->data, grad->data, state0->data,
                     d.kind == PV_OPT_ADAMW ? state1->data : nullptr};
  PV_GUARD({ return dev->backend->optimizer_step(dev->ctx, &a); })
}

pv_status pv_cpu_fma_peak(double *gflops) {
  if (!gflops) return fail(PV_ERR_INVALID_ARGUMENT, "cpu_fma_peak: output is NULL");
  PV_GUARD({
    // One measurement per pool thread, all at once: with every core busy
    // the clock is lower than one core's boost, and that is what a
    // threaded GEMM runs at.
    std::vector<double> per(cpu_threads());
    parallel_for((int64_t)per.size(), [&](int64_t t, int) { per[t] = cpu_fma_peak_gflops(); });
    double sum = 0;
    for (double g : per) sum += g;
    *gflops = sum;
    return PV_OK;
  })
}

}  // extern "C"
