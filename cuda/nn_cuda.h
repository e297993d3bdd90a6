// nn_cuda.h: how the CUDA backend takes in the encoder ops (nn_cuda.cu:
// cuDNN convolutions, cuBLAS linear layers, and the kernels of
// nn_kernels.cuh for the rest). backend_cuda.cu includes this and, while
// it fills its table in pv_backend_entry, calls
//
//   pv_cuda_register_nn(table);
//
// which sets every "-- encoder ops --" entry of csrc/backend.h. The ops
// run on the context's stream (pvcuda::Context of common.cuh) and report
// errors through pvcuda::fail, like the loss. Built only when CMake finds
// cuDNN 9 (POLYVIEW_HAVE_NN); without it the entries stay NULL and the
// core answers PV_ERR_UNSUPPORTED.
#ifndef POLYVIEW_NN_CUDA_H
#define POLYVIEW_NN_CUDA_H

#include "backend.h"

void pv_cuda_register_nn(pv_backend *table);

// Sets the four synchronised batch norm entries (nn_syncbn_cuda.cu), built
// and registered with the encoder ops.
void pv_cuda_register_syncbn(pv_backend *table);

#endif  // POLYVIEW_NN_CUDA_H
