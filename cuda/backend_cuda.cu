// backend_cuda.cu: the CUDA backend's table, its devices, memory and
// copies. The library exports one symbol, pv_backend_entry (see
// csrc/backend.h); everything else is hidden (-fvisibility=hidden plus the
// version script cuda/exports.map), so the static CUDA runtime inside it
// never clashes with a host's own.
//
// With no driver or no GPU every entry still returns: device_count says 0
// and device_init fails with a message that says what is missing.
#include <dlfcn.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>

#include <nvtx3/nvToolsExt.h>

#include "augment_cuda.h"
#include "common.cuh"
#include "nn_cuda.h"
#ifdef POLYVIEW_HAVE_NCCL
#include "comm_nccl.h"
#endif

namespace pvcuda {
namespace {

void no_error(const char *) {}
void no_log(int, const char *) {}
pv_host_services g_host = {no_error, no_log};

const char *base_name(const char *path) {
  const char *slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

Context *as_ctx(void *p) { return static_cast<Context *>(p); }

// The CUDA runtime reports a missing driver as an "insufficient" one; say
// which it is. Writes "" when libcuda.so.1 loads.
void driver_note(char *buf, size_t cap) {
  buf[0] = 0;
  void *lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (lib) {
    dlclose(lib);
    return;
  }
  const char *why = dlerror();
  snprintf(buf, cap, "; no NVIDIA driver is installed (%s)", why ? why : "libcuda.so.1");
}

// ---- devices ---------------------------------------------------------------

pv_status device_count(int *count) {
  *count = 0;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    // No GPU or no driver is a normal machine, not a failure: count 0.
    cudaGetLastError();
    log_msg(PV_LOG_DEBUG, "cuda: no device: %s", cudaGetErrorString(err));
    return PV_OK;
  }
  PV_CUDA(err);
  *count = n;
  return PV_OK;
}

pv_status device_init(int index, void **out, char *name, int name_cap) {
  *out = nullptr;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    char note[512] = "";
    if (err == cudaErrorInsufficientDriver) driver_note(note, sizeof note);
    return fail(PV_ERR_UNAVAILABLE, "cuda: cannot open GPU %d: %s (%s)%s", index,
                cudaGetErrorString(err), cudaGetErrorName(err), note);
  }
  if (index < 0 || index >= n)
    return fail(PV_ERR_UNAVAILABLE, "cuda: no GPU %d: this machine has %d", index, n);
  PV_CUDA(cudaSetDevice(index));

  cudaDeviceProp prop;
  PV_CUDA(cudaGetDeviceProperties(&prop, index));
  int pools = 0;
  PV_CUDA(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, index));

  // A pool that keeps freed memory makes the loss's per-call workspace
  // cost no driver call after the first step.
  if (pools) {
    cudaMemPool_t pool;
    PV_CUDA(cudaDeviceGetDefaultMemPool(&pool, index));
    uint64_t keep = UINT64_MAX;
    PV_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  cudaStream_t stream;
  PV_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  Context *ctx = new (std::nothrow) Context();
  if (!ctx) {
    cudaStreamDestroy(stream);
    return PV_FAIL(PV_ERR_OUT_OF_MEMORY, "cuda: out of host memory");
  }
  ctx->device = index;
  ctx->sm = prop.major * 10 + prop.minor;
  ctx->pooled = pools != 0;
  ctx->stream = stream;
  pv_status st = check_kernel_image(ctx);
  if (st != PV_OK) {
    cudaStreamDestroy(stream);
    delete ctx;
    return st;
  }
  const double gib = (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0);
  snprintf(name, name_cap, "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor, gib);
  log_msg(PV_LOG_DEBUG, "cuda: opened GPU %d: %s, %d SMs, %s allocator", index, name,
       prop.multiProcessorCount, pools ? "stream-ordered" : "synchronous");
  *out = ctx;
  return PV_OK;
}

void device_release(void *p) {
  Context *ctx = as_ctx(p);
  if (!ctx) return;
  cudaSetDevice(ctx->device);
  cudaStreamSynchronize(ctx->stream);
  if (ctx->release_nn) ctx->release_nn(ctx);
  cudaStreamDestroy(ctx->stream);
  if (ctx->in_use != 0)
    log_msg(PV_LOG_WARN, "cuda: GPU %d closed with %lld bytes still allocated", ctx->device,
         (long long)ctx->in_use);
  delete ctx;
}

pv_status synchronize(void *p) {
  Context *ctx = as_ctx(p);
  PV_CUDA(cudaSetDevice(ctx->device));
  PV_CUDA(cudaStreamSynchronize(ctx->stream));
  return PV_OK;
}

pv_status memory(void *p, int64_t *in_use, int64_t *peak) {
  Context *ctx = as_ctx(p);
  std::lock_guard<std::mutex> lock(ctx->mu);
  *in_use = ctx->in_use;
  *peak = ctx->peak;
  return PV_OK;
}

pv_status reset_peak(void *p) {
  Context *ctx = as_ctx(p);
  std::lock_guard<std::mutex> lock(ctx->mu);
  ctx->peak = ctx->in_use;
  return PV_OK;
}

// ---- memory and copies -------------------------------------------------------

pv_status alloc(void *p, int64_t bytes, void **ptr) {
  return guarded("cuda alloc", [&] { return ctx_alloc(as_ctx(p), bytes, ptr, __FILE__, __LINE__); });
}

void free_op(void *p, void *ptr) {
  try {
    ctx_free(as_ctx(p), ptr);
  } catch (...) {
    log_msg(PV_LOG_ERROR, "cuda: unexpected C++ exception in free");
  }
}

// Both copies wait for the stream: the host buffer belongs to the caller
// once the call returns, and a read must see every op queued before it.
pv_status copy(Context *ctx, void *dst, const void *src, int64_t bytes, cudaMemcpyKind kind) {
  if (bytes <= 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  PV_CUDA(cudaMemcpyAsync(dst, src, (size_t)bytes, kind, ctx->stream));
  PV_CUDA(cudaStreamSynchronize(ctx->stream));
  return PV_OK;
}

pv_status copy_h2d(void *p, void *dst, const void *src, int64_t bytes) {
  return copy(as_ctx(p), dst, src, bytes, cudaMemcpyHostToDevice);
}

pv_status copy_d2h(void *p, void *dst, const void *src, int64_t bytes) {
  return copy(as_ctx(p), dst, src, bytes, cudaMemcpyDeviceToHost);
}

// A copy within the device is queued like an op: no host buffer waits on
// it, and the stream orders it between the ops around it.
pv_status copy_d2d(void *p, void *dst, const void *src, int64_t bytes) {
  Context *ctx = as_ctx(p);
  if (bytes <= 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  PV_CUDA(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, ctx->stream));
  return PV_OK;
}

pv_status loss_op(void *p, const pv_loss_args *args) {
  return guarded("cuda loss", [&] { return loss(p, args); });
}

}  // namespace

// ---- shared helpers (common.cuh) ---------------------------------------------

const pv_host_services &host() { return g_host; }

pv_status fail(pv_status status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g_host.set_error(msg);
  return status;
}

pv_status fail_at(pv_status status, const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  int k = snprintf(msg, sizeof msg, "%s:%d: ", base_name(file), line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
  va_end(ap);
  g_host.set_error(msg);
  return status;
}

pv_status cuda_fail(cudaError_t err, const char *file, int line, const char *call) {
  // Name the function only: "cudaMallocAsync", not its argument list.
  char fn[96];
  size_t len = std::strcspn(call, "(");
  if (len >= sizeof fn) len = sizeof fn - 1;
  std::memcpy(fn, call, len);
  fn[len] = 0;
  cudaGetLastError();  // clears the error unless it is sticky
  pv_status status = PV_ERR_BACKEND;
  if (err == cudaErrorMemoryAllocation) status = PV_ERR_OUT_OF_MEMORY;
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) status = PV_ERR_UNAVAILABLE;
  return fail_at(status, file, line, "%s: %s (%s)", fn, cudaGetErrorString(err),
                 cudaGetErrorName(err));
}

void log_msg(pv_log_level level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g_host.log(level, msg);
}

pv_status ctx_alloc(Context *ctx, int64_t bytes, void **ptr, const char *file, int line) {
  *ptr = nullptr;
  if (bytes <= 0) return PV_OK;
  cudaError_t err = cudaSetDevice(ctx->device);
  if (err == cudaSuccess)
    err = ctx->pooled ? cudaMallocAsync(ptr, (size_t)bytes, ctx->stream)
                      : cudaMalloc(ptr, (size_t)bytes);
  if (err != cudaSuccess) {
    *ptr = nullptr;
    const char *fn = ctx->pooled ? "cudaMallocAsync" : "cudaMalloc";
    if (err != cudaErrorMemoryAllocation) return cuda_fail(err, file, line, fn);
    cudaGetLastError();
    int64_t held;
    {
      std::lock_guard<std::mutex> lock(ctx->mu);
      held = ctx->in_use;
    }
    return fail_at(PV_ERR_OUT_OF_MEMORY, file, line,
                   "%s: out of memory on GPU %d allocating %lld bytes (%lld bytes held by "
                   "polyview)", fn, ctx->device, (long long)bytes, (long long)held);
  }
  std::lock_guard<std::mutex> lock(ctx->mu);
  ctx->sizes[*ptr] = bytes;
  ctx->in_use += bytes;
  if (ctx->in_use > ctx->peak) ctx->peak = ctx->in_use;
  return PV_OK;
}

void ctx_free(Context *ctx, void *ptr) {
  if (!ptr) return;
  {
    std::lock_guard<std::mutex> lock(ctx->mu);
    auto it = ctx->sizes.find(ptr);
    if (it != ctx->sizes.end()) {
      ctx->in_use -= it->second;
      ctx->sizes.erase(it);
    }
  }
  cudaSetDevice(ctx->device);
  cudaError_t err = ctx->pooled ? cudaFreeAsync(ptr, ctx->stream) : cudaFree(ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    log_msg(PV_LOG_ERROR, "cuda: free on GPU %d: %s", ctx->device, cudaGetErrorString(err));
  }
}

}  // namespace pvcuda

// cuda_profiler_api.h is not in every toolkit wheel; cudart has the calls.
extern "C" cudaError_t cudaProfilerStart(void);
extern "C" cudaError_t cudaProfilerStop(void);

namespace pvcuda {

// Nsight's --capture-range=cudaProfilerApi records between these calls.
pv_status profiler_set(void *p, int on) {
  auto *ctx = static_cast<Context *>(p);
  cudaSetDevice(ctx->device);
  cudaError_t err = on ? cudaProfilerStart() : cudaProfilerStop();
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fail(PV_ERR_BACKEND, "cuda: %s on GPU %d: %s",
                on ? "cudaProfilerStart" : "cudaProfilerStop", ctx->device,
                cudaGetErrorString(err));
  }
  return PV_OK;
}

// NVTX ranges cost a few hundred nanoseconds without a tool attached.
pv_status range_push(void *, const char *name) {
  nvtxRangePushA(name);
  return PV_OK;
}

pv_status range_pop(void *) {
  nvtxRangePop();
  return PV_OK;
}

}  // namespace pvcuda

extern "C" __attribute__((visibility("default"))) pv_status pv_backend_entry(
    int abi_version, const pv_host_services *host, pv_backend *table) {
  using namespace pvcuda;
  if (!host || !table) return PV_ERR_INVALID_ARGUMENT;
  g_host.set_error = host->set_error ? host->set_error : no_error;
  g_host.log = host->log ? host->log : no_log;
  if (abi_version != PV_ABI_VERSION)
    return fail(PV_ERR_INVALID_ARGUMENT,
                "cuda backend: the host speaks ABI version %d, this library version %d "
                "(rebuild it from the same source)", abi_version, PV_ABI_VERSION);
  std::memset(table, 0, sizeof *table);
  table->abi_version = PV_ABI_VERSION;
  table->name = "cuda";
  table->device_count = device_count;
  table->device_init = device_init;
  table->device_release = device_release;
  table->synchronize = synchronize;
  table->memory = memory;
  table->reset_peak = reset_peak;
  table->profiler_set = profiler_set;
  table->range_push = range_push;
  table->range_pop = range_pop;
  table->alloc = alloc;
  table->free = free_op;
  table->copy_h2d = copy_h2d;
  table->copy_d2h = copy_d2h;
  table->loss = loss_op;
  pv_cuda_register_augment(table);
#ifdef POLYVIEW_HAVE_NN
  pv_cuda_register_nn(table);  // without cuDNN the encoder ops stay NULL (unsupported)
  pv_cuda_register_syncbn(table);  // synchronised batch norm, with the encoder ops
#endif
  // -- copies within a device and collectives --
  table->copy_d2d = copy_d2d;
#ifdef POLYVIEW_HAVE_NCCL
  pv_cuda_register_comm(table);  // without NCCL the comm_* entries stay NULL (unsupported)
#endif
  return PV_OK;
}
