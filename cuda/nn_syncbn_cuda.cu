// nn_syncbn_cuda.cu: synchronised batch norm in the CUDA backend's table
// (the kernels are in nn_syncbn_kernels.cuh, which the emulated test also
// runs). Built with the other encoder ops, when CMake finds cuDNN
// (POLYVIEW_HAVE_NN), though these ops need only the runtime: a backend
// that can run the fused batch norm can always run these too.
//
// Numerics against the CPU reference (csrc/nn_syncbn_cpu.cc): both sum in
// double and round the sums once to the float32 stats tensor; only the
// order of the double sums differs, so the stats agree to an ulp and y and
// dx, computed with the same per-channel coefficients, to a few.
#include "nn_cuda.h"
#include "nn_syncbn_kernels.cuh"

#include <new>

namespace pvcuda {
namespace nn {
namespace syncbn {
namespace {

#define PV_SYNCBN_ENTRY(name, impl)                                                     \
  pv_status name(void *ctx, const pv_syncbn_args *a) {                                  \
    return guarded(#impl, [&] { return impl(static_cast<Context *>(ctx), a); });        \
  }

PV_SYNCBN_ENTRY(stats_op, batchnorm_stats)
PV_SYNCBN_ENTRY(forward_stats_op, batchnorm_forward_stats)
PV_SYNCBN_ENTRY(backward_stats_op, batchnorm_backward_stats)
PV_SYNCBN_ENTRY(backward_input_op, batchnorm_backward_input)

}  // namespace
}  // namespace syncbn
}  // namespace nn
}  // namespace pvcuda

void pv_cuda_register_syncbn(pv_backend *table) {
  using namespace pvcuda::nn::syncbn;
  table->batchnorm_stats = stats_op;
  table->batchnorm_forward_stats = forward_stats_op;
  table->batchnorm_backward_stats = backward_stats_op;
  table->batchnorm_backward_input = backward_input_op;
}
