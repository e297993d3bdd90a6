// core.cc: the C ABI's errors, logging, backend loading, devices and
// tensors. Ops live in their own files (loss.cc, ...).
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "core_internal.h"

namespace {

thread_local std::string g_last_error;

std::mutex g_log_mu;
pv_log_fn g_log_fn = nullptr;
void *g_log_user = nullptr;

std::mutex g_cuda_mu;
pv_backend g_cuda_table;
bool g_cuda_ready = false;
void *g_cuda_handle = nullptr;

void host_set_error(const char *msg) { g_last_error = msg ? msg : ""; }

void host_log(int level, const char *msg) {
  std::lock_guard<std::mutex> lock(g_log_mu);
  if (g_log_fn) g_log_fn(level, msg, g_log_user);
}

const pv_host_services g_host = {host_set_error, host_log};

}  // namespace

namespace pv {

pv_status fail(pv_status status, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_last_error = buf;
  return status;
}

void logf(pv_log_level level, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  host_log(level, buf);
}

const pv_host_services *host_services() { return &g_host; }

int64_t dtype_size(pv_dtype dtype) {
  switch (dtype) {
    case PV_F32: return 4;
    case PV_BF16: return 2;
    case PV_F64: return 8;
    case PV_U8: return 1;
    case PV_I32: return 4;
  }
  return 0;
}

const char *dtype_name(pv_dtype dtype) {
  switch (dtype) {
    case PV_F32: return "float32";
    case PV_BF16: return "bfloat16";
    case PV_F64: return "float64";
    case PV_U8: return "uint8";
    case PV_I32: return "int32";
  }
  return "unknown dtype";
}

void device_unref(pv_device *dev) {
  if (dev->refs.fetch_sub(1) == 1) {
    dev->backend->device_release(dev->ctx);
    delete dev;
  }
}

pv_status check_tensor(const pv_tensor *t, const pv_device *dev, const char *what) {
  if (!t) return fail(PV_ERR_INVALID_ARGUMENT, "%s is NULL", what);
  if (t->dev != dev)
    return fail(PV_ERR_INVALID_ARGUMENT, "%s lives on device %s, the op runs on %s", what,
                t->dev->name, dev->name);
  return PV_OK;
}

}  // namespace pv

extern "C" {

const char *pv_last_error(void) { return g_last_error.c_str(); }

void pv_set_log_callback(pv_log_fn fn, void *user) {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_log_fn = fn;
  g_log_user = user;
}

const char *pv_status_string(pv_status s) {
  switch (s) {
    case PV_OK: return "ok";
    case PV_ERR_INVALID_ARGUMENT: return "invalid argument";
    case PV_ERR_OUT_OF_MEMORY: return "out of memory";
    case PV_ERR_UNAVAILABLE: return "unavailable";
    case PV_ERR_UNSUPPORTED: return "unsupported";
    case PV_ERR_BACKEND: return "backend failure";
    case PV_ERR_NUMERIC: return "numeric error";
    case PV_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

// ---- backends --------------------------------------------------------------

pv_status pv_cuda_load(const char *path) {
  std::lock_guard<std::mutex> lock(g_cuda_mu);
  if (g_cuda_ready) return PV_OK;
  if (!path || !*path) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_cuda_load: empty path");

  // RTLD_LOCAL keeps the CUDA libraries' symbols away from the host's.
  dlerror();
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char *why = dlerror();
    return pv::fail(PV_ERR_UNAVAILABLE, "load CUDA backend %s: %s", path, why ? why : "?");
  }
  auto entry = reinterpret_cast<pv_backend_entry_fn>(dlsym(handle, PV_BACKEND_ENTRY_SYMBOL));
  if (!entry) {
    dlclose(handle);
    return pv::fail(PV_ERR_UNAVAILABLE, "load CUDA backend %s: no symbol %s", path,
                    PV_BACKEND_ENTRY_SYMBOL);
  }
  pv_backend table;
  std::memset(&table, 0, sizeof table);
  pv_status st = entry(PV_ABI_VERSION, &g_host, &table);
  if (st != PV_OK) {
    dlclose(handle);
    return st;  // the backend has set the message
  }
  if (table.abi_version != PV_ABI_VERSION) {
    dlclose(handle);
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "load CUDA backend %s: ABI version %d, this build expects %d", path,
                    table.abi_version, PV_ABI_VERSION);
  }
  g_cuda_table = table;
  g_cuda_handle = handle;
  g_cuda_ready = true;
  pv::logf(PV_LOG_DEBUG, "loaded CUDA backend from %s", path);
  return PV_OK;
}

int pv_cuda_loaded(void) {
  std::lock_guard<std::mutex> lock(g_cuda_mu);
  return g_cuda_ready ? 1 : 0;
}

pv_status pv_cuda_device_count(int *count) {
  if (!count) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_cuda_device_count: count is NULL");
  *count = 0;
  if (!pv_cuda_loaded()) return pv::fail(PV_ERR_UNAVAILABLE, "CUDA backend is not loaded");
  return g_cuda_table.device_count(count);
}

pv_status pv_device_open(pv_device_kind kind, int index, pv_device **out) {
  if (!out) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_device_open: out is NULL");
  *out = nullptr;
  const pv_backend *backend = nullptr;
  if (kind == PV_DEVICE_CPU) {
    backend = pv_cpu_backend();
    index = 0;
  } else if (kind == PV_DEVICE_CUDA) {
    if (!pv_cuda_loaded())
      return pv::fail(PV_ERR_UNAVAILABLE,
                      "CUDA device requested but the CUDA backend library is not loaded "
                      "(build it with CMake and pass its path)");
    backend = &g_cuda_table;
  } else {
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_device_open: unknown device kind %d", kind);
  }
  PV_GUARD({
    pv_device *dev = new pv_device();
    dev->backend = backend;
    dev->kind = kind;
    dev->index = index;
    pv_status st = backend->device_init(index, &dev->ctx, dev->name, sizeof dev->name);
    if (st != PV_OK) {
      delete dev;
      return st;
    }
    *out = dev;
    return PV_OK;
  })
}

void pv_device_close(pv_device *dev) {
  if (dev) pv::device_unref(dev);
}

const char *pv_device_name(const pv_device *dev) { return dev ? dev->name : ""; }

pv_device_kind pv_device_get_kind(const pv_device *dev) {
  return dev ? dev->kind : PV_DEVICE_CPU;
}

int pv_device_has_ops(const pv_device *dev, const char *family) {
  if (!dev || !family) return 0;
  const pv_backend *b = dev->backend;
  if (!std::strcmp(family, "loss")) return b->loss != nullptr;
  if (!std::strcmp(family, "augment")) return b->augment != nullptr;
  if (!std::strcmp(family, "encoder"))
    return b->conv2d_forward && b->conv2d_backward && b->batchnorm_forward &&
           b->batchnorm_backward && b->batchnorm_stats && b->batchnorm_forward_stats &&
           b->batchnorm_backward_stats && b->batchnorm_backward_input &&
           b->relu_forward && b->relu_backward &&
           b->maxpool_forward && b->maxpool_backward && b->avgpool_forward &&
           b->avgpool_backward && b->add && b->linear_forward && b->linear_backward &&
           b->optimizer_step;
  if (!std::strcmp(family, "comm"))
    return b->comm_unique_id && b->comm_init && b->comm_all_reduce && b->comm_all_gather &&
           b->comm_broadcast && b->comm_abort && b->comm_destroy;
  return 0;
}

pv_status pv_device_synchronize(pv_device *dev) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_device_synchronize: dev is NULL");
  return dev->backend->synchronize(dev->ctx);
}

pv_status pv_profiler_set(pv_device *dev, int on) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_profiler_set: dev is NULL");
  return dev->backend->profiler_set ? dev->backend->profiler_set(dev->ctx, on) : PV_OK;
}

pv_status pv_range_push(pv_device *dev, const char *name) {
  if (!dev || !name) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_range_push: NULL argument");
  return dev->backend->range_push ? dev->backend->range_push(dev->ctx, name) : PV_OK;
}

pv_status pv_range_pop(pv_device *dev) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_range_pop: dev is NULL");
  return dev->backend->range_pop ? dev->backend->range_pop(dev->ctx) : PV_OK;
}

pv_status pv_device_memory(pv_device *dev, int64_t *in_use, int64_t *peak) {
  if (!dev || !in_use || !peak)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_device_memory: NULL argument");
  return dev->backend->memory(dev->ctx, in_use, peak);
}

pv_status pv_device_reset_peak(pv_device *dev) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_device_reset_peak: dev is NULL");
  return dev->backend->reset_peak(dev->ctx);
}

// ---- tensors ---------------------------------------------------------------

pv_status pv_tensor_create(pv_device *dev, pv_dtype dtype, int ndim, const int64_t *shape,
                           pv_tensor **out) {
  if (!out) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: out is NULL");
  *out = nullptr;
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: dev is NULL");
  if (pv::dtype_size(dtype) == 0)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: unknown dtype %d", dtype);
  if (dtype == PV_F64 && dev->kind != PV_DEVICE_CPU)
    return pv::fail(PV_ERR_UNSUPPORTED, "float64 tensors exist on the CPU only");
  if (ndim < 0 || ndim > PV_MAX_DIMS || (ndim > 0 && !shape))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: ndim %d outside [0, %d]",
                    ndim, PV_MAX_DIMS);
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: dimension %d is %lld", i,
                      (long long)shape[i]);
    // Refuse sizes whose byte count would overflow int64.
    if (shape[i] > 0 && numel > (INT64_MAX / 16) / shape[i])
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_create: shape too large");
    numel *= shape[i];
  }
  PV_GUARD({
    pv_tensor *t = new pv_tensor();
    t->dev = dev;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->numel = numel;
    pv_status st = dev->backend->alloc(dev->ctx, numel * pv::dtype_size(dtype), &t->data);
    if (st != PV_OK) {
      delete t;
      return st;
    }
    dev->refs.fetch_add(1);
    *out = t;
    return PV_OK;
  })
}

void pv_tensor_free(pv_tensor *t) {
  if (!t) return;
  pv_device *dev = t->dev;
  dev->backend->free(dev->ctx, t->data);
  delete t;
  pv::device_unref(dev);
}

pv_dtype pv_tensor_dtype(const pv_tensor *t) { return t->dtype; }
int pv_tensor_ndim(const pv_tensor *t) { return t->ndim; }
int64_t pv_tensor_dim(const pv_tensor *t, int axis) {
  return axis >= 0 && axis < t->ndim ? t->shape[axis] : 0;
}
int64_t pv_tensor_numel(const pv_tensor *t) { return t->numel; }
int64_t pv_tensor_bytes(const pv_tensor *t) { return t->numel * pv::dtype_size(t->dtype); }
pv_device *pv_tensor_device(const pv_tensor *t) { return t->dev; }

pv_status pv_tensor_reshape(pv_tensor *t, int ndim, const int64_t *shape) {
  if (!t || (ndim > 0 && !shape))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_reshape: NULL argument");
  if (ndim < 0 || ndim > PV_MAX_DIMS)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "reshape: ndim %d outside [0, %d]", ndim,
                    PV_MAX_DIMS);
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && numel > INT64_MAX / shape[i]))
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "reshape: bad dimension %d", i);
    numel *= shape[i];
  }
  if (numel != t->numel)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "reshape: %lld elements into a shape of %lld",
                    (long long)t->numel, (long long)numel);
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  return PV_OK;
}

pv_status pv_tensor_write(pv_tensor *t, const void *src, int64_t bytes) {
  if (!t || (!src && bytes > 0))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_write: NULL argument");
  if (bytes != pv_tensor_bytes(t))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_write: %lld bytes for a %lld-byte tensor",
                    (long long)bytes, (long long)pv_tensor_bytes(t));
  if (bytes == 0) return PV_OK;
  return t->dev->backend->copy_h2d(t->dev->ctx, t->data, src, bytes);
}

pv_status pv_tensor_read(const pv_tensor *t, void *dst, int64_t bytes) {
  if (!t || (!dst && bytes > 0))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_read: NULL argument");
  if (bytes != pv_tensor_bytes(t))
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_tensor_read: %lld bytes for a %lld-byte tensor",
                    (long long)bytes, (long long)pv_tensor_bytes(t));
  if (bytes == 0) return PV_OK;
  return t->dev->backend->copy_d2h(t->dev->ctx, dst, t->data, bytes);
}

}  // extern "C"
