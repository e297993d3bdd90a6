// augment_cuda.h: how the CUDA backend takes in the views' kernel
// (augment_cuda.cu). backend_cuda.cu includes this and, while it fills its
// table in pv_backend_entry, calls
//
//   pv_cuda_register_augment(table);
//
// which sets table->augment. The op runs on the context's stream
// (pvcuda::Context of common.cuh) and reports errors through
// pvcuda::fail, like the loss.
#ifndef POLYVIEW_AUGMENT_CUDA_H
#define POLYVIEW_AUGMENT_CUDA_H

#include "backend.h"

void pv_cuda_register_augment(pv_backend *table);

#endif  // POLYVIEW_AUGMENT_CUDA_H
