// cpu_ops.h: the CPU backend's ops and its counted allocator.
#ifndef POLYVIEW_CPU_OPS_H
#define POLYVIEW_CPU_OPS_H

#include <memory>

#include "core_internal.h"

namespace pv {

// 64-byte aligned host memory counted in the CPU device's in-use and peak
// figures. cpu_malloc returns NULL when out of memory.
void *cpu_malloc(int64_t bytes);
void cpu_free(void *ptr);

// A counted buffer of n elements of T, freed when it goes out of scope.
template <typename T>
struct CpuBuffer {
  explicit CpuBuffer(int64_t n) : ptr(static_cast<T *>(cpu_malloc(n * (int64_t)sizeof(T)))) {
    if (!ptr && n > 0) throw std::bad_alloc();
  }
  ~CpuBuffer() { cpu_free(ptr); }
  CpuBuffer(const CpuBuffer &) = delete;
  CpuBuffer &operator=(const CpuBuffer &) = delete;
  T *get() const { return ptr; }
  T &operator[](int64_t i) const { return ptr[i]; }
  T *ptr;
};

// "avx2+fma" or "portable": the instruction set the kernels dispatch to.
const char *cpu_simd_name();

// The poly-view loss on the CPU (loss_cpu.cc).
pv_status cpu_loss(void *ctx, const pv_loss_args *args);

// The views of a batch on the CPU (augment_cpu.cc).
pv_status cpu_augment(void *ctx, const pv_augment_args *args);

// The encoder's layers (nn_cpu.cc) and optimizer step (nn_optim_cpu.cc).
pv_status cpu_conv2d_forward(void *ctx, const pv_conv2d_args *args);
pv_status cpu_conv2d_backward(void *ctx, const pv_conv2d_args *args);
pv_status cpu_batchnorm_forward(void *ctx, const pv_batchnorm_args *args);
pv_status cpu_batchnorm_backward(void *ctx, const pv_batchnorm_args *args);
// Synchronised batch norm (nn_syncbn_cpu.cc).
pv_status cpu_batchnorm_stats(void *ctx, const pv_syncbn_args *args);
pv_status cpu_batchnorm_forward_stats(void *ctx, const pv_syncbn_args *args);
pv_status cpu_batchnorm_backward_stats(void *ctx, const pv_syncbn_args *args);
pv_status cpu_batchnorm_backward_input(void *ctx, const pv_syncbn_args *args);
pv_status cpu_relu_forward(void *ctx, const pv_eltwise_args *args);
pv_status cpu_relu_backward(void *ctx, const pv_eltwise_args *args);
pv_status cpu_maxpool_forward(void *ctx, const pv_pool_args *args);
pv_status cpu_maxpool_backward(void *ctx, const pv_pool_args *args);
pv_status cpu_avgpool_forward(void *ctx, const pv_pool_args *args);
pv_status cpu_avgpool_backward(void *ctx, const pv_pool_args *args);
pv_status cpu_add(void *ctx, const pv_eltwise_args *args);
pv_status cpu_linear_forward(void *ctx, const pv_linear_args *args);
pv_status cpu_linear_backward(void *ctx, const pv_linear_args *args);
pv_status cpu_optimizer_step(void *ctx, const pv_optim_args *args);

}  // namespace pv

#endif  // POLYVIEW_CPU_OPS_H
