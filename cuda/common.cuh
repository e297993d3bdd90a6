// common.cuh: what every file of the CUDA backend shares: the per-device
// context, memory that is counted and stream-ordered, and the checks that
// turn a failed CUDA call into a pv_status plus a message naming the file,
// the line and the call ("loss_cuda.cu:212: cudaMallocAsync: out of
// memory"). Nothing here throws and nothing aborts.
#ifndef POLYVIEW_CUDA_COMMON_CUH
#define POLYVIEW_CUDA_COMMON_CUH

#ifdef POLYVIEW_CUDA_EMULATE
#include "emulate.h"  // CPU stand-in for tests without a GPU
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <mutex>
#include <new>
#include <unordered_map>

#include "backend.h"

namespace pvcuda {

// One opened device: the GPU index, the stream every op of this context is
// queued on, and the bytes allocated through it. Ops call cudaSetDevice
// first, since one host thread may drive several GPUs.
struct Context {
  int device = 0;
  int sm = 0;              // compute capability as major * 10 + minor
  bool pooled = false;     // stream-ordered allocator (cudaMallocAsync)
  cudaStream_t stream = nullptr;
  std::mutex mu;           // guards sizes, in_use and peak
  std::unordered_map<void *, int64_t> sizes;
  int64_t in_use = 0, peak = 0;
  // The encoder ops' state (nn_cuda.cu: cuDNN and cuBLAS handles, the
  // convolution algorithm cache), made at their first use; device_release
  // calls release_nn when it is set.
  void *nn = nullptr;
  void (*release_nn)(Context *) = nullptr;
};

// The services the core lent at pv_backend_entry.
const pv_host_services &host();

// Sets the host's last-error message, printf style, and returns status.
// fail is for errors in the caller's request or data, worded like the CPU
// backend's; fail_at prefixes "file:line: " for failures of the backend.
pv_status fail(pv_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
pv_status fail_at(pv_status status, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Turns a failed CUDA call into a status (out of memory, unavailable for
// a missing driver or GPU, backend failure otherwise) and a message with
// the call's name and CUDA's own text. Clears a non-sticky error.
pv_status cuda_fail(cudaError_t err, const char *file, int line, const char *call);

// Sends one line to the host's log callback, printf style.
void log_msg(pv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Counted device memory, queued on the context's stream when the device
// has a memory pool (so a free never waits for the GPU), else cudaMalloc.
pv_status ctx_alloc(Context *ctx, int64_t bytes, void **ptr, const char *file, int line);
void ctx_free(Context *ctx, void *ptr);

// The loss op of the table (loss_cuda.cu).
pv_status loss(void *ctx, const pv_loss_args *args);

// Fails with PV_ERR_UNSUPPORTED, naming the architectures this library
// was built for, when the context's GPU cannot run its kernels.
pv_status check_kernel_image(Context *ctx);

}  // namespace pvcuda

#define PV_FAIL(status, ...) ::pvcuda::fail_at((status), __FILE__, __LINE__, __VA_ARGS__)

namespace pvcuda {

// A dtype's name for messages, as the CPU backend spells it.
inline const char *dtype_name(pv_dtype dt) {
  switch (dt) {
    case PV_F32: return "float32";
    case PV_BF16: return "bfloat16";
    case PV_F64: return "float64";
    case PV_U8: return "uint8";
    case PV_I32: return "int32";
  }
  return "unknown dtype";
}

// Runs body and turns any C++ exception into a status, so none crosses
// the C ABI: every entry of the backend's table goes through it.
template <typename F>
pv_status guarded(const char *op, F body) {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    return PV_FAIL(PV_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  } catch (...) {
    return PV_FAIL(PV_ERR_INTERNAL, "%s: unexpected C++ exception", op);
  }
}

}  // namespace pvcuda

// Checks a CUDA runtime call; on failure returns its status from the
// enclosing function.
#define PV_CUDA(call)                                                  \
  do {                                                                 \
    cudaError_t pv_err_ = (call);                                      \
    if (pv_err_ != cudaSuccess)                                        \
      return ::pvcuda::cuda_fail(pv_err_, __FILE__, __LINE__, #call);  \
  } while (0)

// Checks the launch of the kernel just queued (bad configuration, missing
// image for this GPU); errors inside the kernel surface at the next sync.
#define PV_LAUNCHED(name)                                                  \
  do {                                                                     \
    cudaError_t pv_err_ = cudaGetLastError();                              \
    if (pv_err_ != cudaSuccess)                                            \
      return ::pvcuda::cuda_fail(pv_err_, __FILE__, __LINE__, "launch " name); \
  } while (0)

#endif  // POLYVIEW_CUDA_COMMON_CUH
