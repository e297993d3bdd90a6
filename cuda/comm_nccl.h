// comm_nccl.h: how the CUDA backend takes in the NCCL collectives
// (comm_nccl.cu). backend_cuda.cu includes this and, while it fills its
// table in pv_backend_entry, calls
//
//   pv_cuda_register_comm(table);
//
// which sets every comm_* entry of csrc/backend.h. Built only when CMake
// finds NCCL (POLYVIEW_HAVE_NCCL); without it the entries stay NULL and
// the core answers PV_ERR_UNSUPPORTED, naming the missing library.
#ifndef POLYVIEW_COMM_NCCL_H
#define POLYVIEW_COMM_NCCL_H

#include "backend.h"

void pv_cuda_register_comm(pv_backend *table);

#endif  // POLYVIEW_COMM_NCCL_H
