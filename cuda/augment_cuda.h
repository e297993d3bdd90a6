// augment_cuda.h: how the CUDA backend takes in the views' kernel
// (augment_cuda.cu). backend_cuda.cu includes this and, while it fills its
// table in pv_backend_entry, calls
//
//   pv_cuda_register_augment(table, host);
//
// which sets table->augment. host is the pv_host_services the entry was
// given; the kernel's errors reach pv_last_error() through it (without
// it they are reported by status code only).
#ifndef POLYVIEW_AUGMENT_CUDA_H
#define POLYVIEW_AUGMENT_CUDA_H

#include "backend.h"

void pv_cuda_register_augment(pv_backend *table, const pv_host_services *host = nullptr);

#endif  // POLYVIEW_AUGMENT_CUDA_H
