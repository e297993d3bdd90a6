// core_internal.h: what the C ABI's implementation files share: the
// device and tensor structs, error setting and logging. Not public.
#ifndef POLYVIEW_CORE_INTERNAL_H
#define POLYVIEW_CORE_INTERNAL_H

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <new>

#include "backend.h"

// A device lives while its handle is open or any tensor on it exists:
// refs counts both, so tensors may be freed after pv_device_close (as a
// garbage collector does) without touching freed memory.
struct pv_device {
  const pv_backend *backend;  // the table that owns this device's memory
  void *ctx;                  // the backend's per-device context
  pv_device_kind kind;
  int index;
  char name[160];
  std::atomic<int64_t> refs{1};
};

struct pv_tensor {
  pv_device *dev;
  pv_dtype dtype;
  int ndim;
  int64_t shape[PV_MAX_DIMS];
  int64_t numel;
  void *data;  // device memory of dev's backend
};

namespace pv {

// Sets this thread's last-error message, printf style, and returns status.
pv_status fail(pv_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

// Sends a line to the host's log callback, printf style.
void logf(pv_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

// The services handed to backends (set_error and log).
const pv_host_services *host_services();

// Bytes per element of a dtype (0 for an unknown value).
int64_t dtype_size(pv_dtype dtype);
const char *dtype_name(pv_dtype dtype);

// Drops one reference to dev (a handle, a tensor or a communicator),
// releasing the device with the last.
void device_unref(pv_device *dev);

// Checks that t is a usable tensor: not NULL, on dev. what names the
// argument in the error ("h", "grad").
pv_status check_tensor(const pv_tensor *t, const pv_device *dev, const char *what);

}  // namespace pv

// Runs body and turns a C++ exception into a status, so no exception
// crosses the C ABI.
#define PV_GUARD(body)                                                   \
  try {                                                                  \
    body                                                                 \
  } catch (const std::bad_alloc &) {                                     \
    return pv::fail(PV_ERR_OUT_OF_MEMORY, "%s: out of host memory", __func__); \
  } catch (...) {                                                        \
    return pv::fail(PV_ERR_INTERNAL, "%s: unexpected C++ exception", __func__); \
  }

#endif  // POLYVIEW_CORE_INTERNAL_H
