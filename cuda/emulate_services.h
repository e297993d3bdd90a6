// emulate_services.h: the backend services (cuda/common.cuh) that a CUDA
// op's code calls, implemented over host memory for the emulated tests
// (test_*_emulated.cc). Include it once, after the .cu under test.
// Errors land in pvcuda::g_error and in the core's last-error message;
// allocations are host memory, counted in the Context as on the GPU and
// filled with garbage so that a read of an unwritten value shows up.
#ifndef POLYVIEW_EMULATE_SERVICES_H
#define POLYVIEW_EMULATE_SERVICES_H

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "core_internal.h"

namespace pvcuda {

std::string g_error;  // the last error an op reported

namespace {
void record_error(const char *msg) {
  g_error = msg;
  pv::fail(PV_ERR_BACKEND, "%s", msg);
}
void drop_log(int, const char *) {}
const pv_host_services g_services = {record_error, drop_log};
}  // namespace

const pv_host_services &host() { return g_services; }

pv_status fail(pv_status status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  record_error(msg);
  return status;
}

pv_status fail_at(pv_status status, const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  int k = snprintf(msg, sizeof msg, "%s:%d: ", file, line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
  va_end(ap);
  record_error(msg);
  return status;
}

pv_status cuda_fail(cudaError_t err, const char *file, int line, const char *call) {
  return fail_at(PV_ERR_BACKEND, file, line, "%s: emulated error %d", call, err);
}

void log_msg(pv_log_level, const char *, ...) {}

pv_status ctx_alloc(Context *ctx, int64_t bytes, void **ptr, const char *, int) {
  *ptr = bytes > 0 ? std::aligned_alloc(256, (size_t)(bytes + 255) / 256 * 256) : nullptr;
  if (bytes > 0 && !*ptr) return fail(PV_ERR_OUT_OF_MEMORY, "emulated alloc failed");
  if (*ptr) std::memset(*ptr, 0x7f, (size_t)bytes);
  std::lock_guard<std::mutex> lock(ctx->mu);
  ctx->in_use += bytes;
  ctx->sizes[*ptr] = bytes;
  if (ctx->in_use > ctx->peak) ctx->peak = ctx->in_use;
  return PV_OK;
}

void ctx_free(Context *ctx, void *ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(ctx->mu);
  ctx->in_use -= ctx->sizes[ptr];
  ctx->sizes.erase(ptr);
  std::free(ptr);
}

}  // namespace pvcuda

#endif  // POLYVIEW_EMULATE_SERVICES_H
