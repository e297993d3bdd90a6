// loss.cc: pv_loss, the poly-view objectives' entry point. Checks shapes,
// dtypes and tau, then hands the work to the device's backend. The checks
// on values (zero-norm and non-finite rows) happen in the backend, where
// the data lives.
#include <cmath>

#include "core_internal.h"
#include "objective_math.h"

extern "C" {

const char *pv_objective_name(pv_objective obj) {
  switch (obj) {
    case PV_OBJ_SIMCLR: return "simclr";
    case PV_OBJ_MULTICROP: return "multicrop";
    case PV_OBJ_GPVC: return "gpvc";
    case PV_OBJ_APVC: return "apvc";
    case PV_OBJ_SUFFSTATS: return "suffstats";
    case PV_OBJ_MVINFONCE: return "mvinfonce";
    case PV_OBJ_MVDHEL: return "mvdhel";
    case PV_OBJ_COUNT: break;
  }
  return "unknown";
}

pv_status pv_loss(pv_device *dev, pv_objective obj, double tau, const pv_tensor *h,
                  pv_tensor *grad, double *loss) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "loss: device is NULL");
  if (!loss) return pv::fail(PV_ERR_INVALID_ARGUMENT, "loss: loss output is NULL");
  if (obj < 0 || obj >= PV_OBJ_COUNT)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "loss: unknown objective %d", (int)obj);
  const char *name = pv_objective_name(obj);
  pv_status st = pv::check_tensor(h, dev, "h");
  if (st != PV_OK) return st;
  if (!(std::isfinite(tau) && tau > 0))
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: temperature tau must be a positive finite number, got %g", name, tau);
  if (h->ndim != 3)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: h must have shape [N, M, d], got %d dims",
                    name, h->ndim);
  const int64_t n = h->shape[0], m = h->shape[1], d = h->shape[2];
  if (n < 2)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: N = %lld images, need at least 2 (an image needs negatives)", name,
                    (long long)n);
  if (m < 2)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: M = %lld views, need at least 2 (a view needs a positive)", name,
                    (long long)m);
  if (obj == PV_OBJ_SIMCLR && m != 2)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "simclr: M = %lld views, simclr takes exactly 2 (use multicrop, gpvc or "
                    "apvc for more)", (long long)m);
  if (m > PV_MAX_VIEWS)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: M = %lld views, at most %d are supported",
                    name, (long long)m, PV_MAX_VIEWS);
  if (d < 1) return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: embedding width d = 0", name);
  if (h->dtype != PV_F32 && h->dtype != PV_BF16 && h->dtype != PV_F64)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: h has dtype %s, want float32, bfloat16 or float64", name,
                    pv::dtype_name(h->dtype));
  if (grad) {
    st = pv::check_tensor(grad, dev, "grad");
    if (st != PV_OK) return st;
    bool same = grad->ndim == 3;
    for (int i = 0; same && i < 3; i++) same = grad->shape[i] == h->shape[i];
    if (!same)
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: grad shape differs from h's [%lld, %lld, %lld]",
                      name, (long long)n, (long long)m, (long long)d);
    if (grad->dtype != PV_F32 && grad->dtype != PV_BF16 && grad->dtype != PV_F64)
      return pv::fail(PV_ERR_INVALID_ARGUMENT,
                      "%s: grad has dtype %s, want float32, bfloat16 or float64", name,
                      pv::dtype_name(grad->dtype));
  }
  if (!dev->backend->loss)
    return pv::fail(PV_ERR_UNSUPPORTED, "%s: backend %s has no loss op", name,
                    dev->backend->name);

  pv_loss_args args = {};
  args.objective = obj;
  args.n = n;
  args.m = m;
  args.d = d;
  args.tau = tau;
  args.h_ptr = h->data;
  args.h_dtype = h->dtype;
  args.grad_ptr = grad ? grad->data : nullptr;
  args.grad_dtype = grad ? grad->dtype : PV_F32;
  args.loss = loss;
  PV_GUARD({ return dev->backend->loss(dev->ctx, &args); })
}

}  // extern "C"
