// backend_cpu.cc: the CPU backend's table. Device memory is host memory,
// 64-byte aligned and counted so that benchmarks can report the peak.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu_ops.h"
#include "threadpool.h"

namespace pv {
namespace {

std::atomic<int64_t> g_in_use{0}, g_peak{0};

struct AllocHeader {
  int64_t bytes;
  int64_t pad[7];  // keeps the payload 64-byte aligned
};

pv_status cpu_device_count(int *count) {
  *count = 1;
  return PV_OK;
}

pv_status cpu_device_init(int, void **ctx, char *name, int cap) {
  *ctx = nullptr;
  snprintf(name, cap, "cpu (%d threads, %s)", cpu_threads(), cpu_simd_name());
  return PV_OK;
}

void cpu_device_release(void *) {}
pv_status cpu_synchronize(void *) { return PV_OK; }

pv_status cpu_memory(void *, int64_t *in_use, int64_t *peak) {
  *in_use = g_in_use.load();
  *peak = g_peak.load();
  return PV_OK;
}

pv_status cpu_reset_peak(void *) {
  g_peak.store(g_in_use.load());
  return PV_OK;
}

pv_status cpu_alloc(void *, int64_t bytes, void **ptr) {
  *ptr = cpu_malloc(bytes);
  if (!*ptr && bytes > 0)
    return fail(PV_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %lld bytes", (long long)bytes);
  return PV_OK;
}

void cpu_free_op(void *, void *ptr) { cpu_free(ptr); }

pv_status cpu_copy(void *, void *dst, const void *src, int64_t bytes) {
  std::memcpy(dst, src, (size_t)bytes);
  return PV_OK;
}

pv_backend make_table() {
  pv_backend t;
  std::memset(&t, 0, sizeof t);
  t.abi_version = PV_ABI_VERSION;
  t.name = "cpu";
  t.device_count = cpu_device_count;
  t.device_init = cpu_device_init;
  t.device_release = cpu_device_release;
  t.synchronize = cpu_synchronize;
  t.memory = cpu_memory;
  t.reset_peak = cpu_reset_peak;
  t.alloc = cpu_alloc;
  t.free = cpu_free_op;
  t.copy_h2d = cpu_copy;
  t.copy_d2h = cpu_copy;
  t.loss = cpu_loss;
  t.augment = cpu_augment;
  t.conv2d_forward = cpu_conv2d_forward;
  t.conv2d_backward = cpu_conv2d_backward;
  t.batchnorm_forward = cpu_batchnorm_forward;
  t.batchnorm_backward = cpu_batchnorm_backward;
  t.batchnorm_stats = cpu_batchnorm_stats;
  t.batchnorm_forward_stats = cpu_batchnorm_forward_stats;
  t.batchnorm_backward_stats = cpu_batchnorm_backward_stats;
  t.batchnorm_backward_input = cpu_batchnorm_backward_input;
  t.relu_forward = cpu_relu_forward;
  t.relu_backward = cpu_relu_backward;
  t.maxpool_forward = cpu_maxpool_forward;
  t.maxpool_backward = cpu_maxpool_backward;
  t.avgpool_forward = cpu_avgpool_forward;
  t.avgpool_backward = cpu_avgpool_backward;
  t.add = cpu_add;
  t.linear_forward = cpu_linear_forward;
  t.linear_backward = cpu_linear_backward;
  t.optimizer_step = cpu_optimizer_step;
  // Copies within the device; no collectives (CPU ranks use the TCP group).
  t.copy_d2d = cpu_copy;
  return t;
}

}  // namespace

void *cpu_malloc(int64_t bytes) {
  if (bytes < 0) return nullptr;
  void *raw = std::aligned_alloc(64, sizeof(AllocHeader) + ((bytes + 63) / 64) * 64);
  if (!raw) return nullptr;
  static_cast<AllocHeader *>(raw)->bytes = bytes;
  int64_t now = g_in_use.fetch_add(bytes) + bytes;
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return static_cast<char *>(raw) + sizeof(AllocHeader);
}

void cpu_free(void *ptr) {
  if (!ptr) return;
  auto *hdr = reinterpret_cast<AllocHeader *>(static_cast<char *>(ptr) - sizeof(AllocHeader));
  g_in_use.fetch_sub(hdr->bytes);
  std::free(hdr);
}

}  // namespace pv

extern "C" {

const pv_backend *pv_cpu_backend(void) {
  static const pv_backend table = pv::make_table();
  return &table;
}

pv_status pv_cpu_set_threads(int n) {
  if (n < 0) return pv::fail(PV_ERR_INVALID_ARGUMENT, "pv_cpu_set_threads: %d threads", n);
  pv::set_cpu_threads(n);
  return PV_OK;
}

int pv_cpu_threads(void) { return pv::cpu_threads(); }

}  // extern "C"
