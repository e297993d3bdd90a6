/*
 * backend.h: the table of ops that every backend fills.
 *
 * The CPU backend (backend_cpu.cc) is linked in; the CUDA backend
 * (cuda/backend_cuda.cu) is a shared library whose one exported symbol,
 * pv_backend_entry, fills this table. Plain C types only, so the table has
 * the same layout in g++ and nvcc. Pointers named *_ptr are device memory
 * of the backend that owns them.
 *
 * Every op returns a pv_status; on failure it first calls
 * host->set_error() with a message naming the op and the problem.
 */
#ifndef POLYVIEW_BACKEND_H
#define POLYVIEW_BACKEND_H

#include "polyview.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Services the core lends a backend: error text and log lines. */
typedef struct pv_host_services {
  void (*set_error)(const char *msg);
  void (*log)(int level, const char *msg);
} pv_host_services;

/* Arguments of one loss evaluation; shapes already validated by the core. */
typedef struct pv_loss_args {
  pv_objective objective;
  int64_t n, m, d;    /* h is [n, m, d] */
  double tau;
  const void *h_ptr;  /* device memory */
  pv_dtype h_dtype;
  void *grad_ptr;     /* NULL: loss only */
  pv_dtype grad_dtype;
  double *loss;       /* host memory */
} pv_loss_args;

typedef struct pv_backend {
  int abi_version;   /* PV_ABI_VERSION of the code that filled the table */
  const char *name;  /* "cpu" or "cuda" */

  /* Devices. init opens device index, returning an opaque context and a
   * readable name (written to name, at most name_cap bytes). */
  pv_status (*device_count)(int *count);
  pv_status (*device_init)(int index, void **ctx, char *name, int name_cap);
  void (*device_release)(void *ctx);
  pv_status (*synchronize)(void *ctx);
  pv_status (*memory)(void *ctx, int64_t *in_use, int64_t *peak);
  pv_status (*reset_peak)(void *ctx);

  /* Memory. */
  pv_status (*alloc)(void *ctx, int64_t bytes, void **ptr);
  void (*free)(void *ctx, void *ptr);
  pv_status (*copy_h2d)(void *ctx, void *dst, const void *src, int64_t bytes);
  pv_status (*copy_d2h)(void *ctx, void *dst, const void *src, int64_t bytes);

  /* Ops. A NULL op is one the backend does not offer; the core then
   * returns PV_ERR_UNSUPPORTED. New ops are appended at the end. */
  pv_status (*loss)(void *ctx, const pv_loss_args *args);

  /* -- views: augmentation -- */

  /* -- encoder ops -- */
} pv_backend;

/* The CPU backend's table (backend_cpu.cc). */
const pv_backend *pv_cpu_backend(void);

/* Exported by the CUDA backend library; the core resolves it by dlsym. */
typedef pv_status (*pv_backend_entry_fn)(int abi_version,
                                         const pv_host_services *host,
                                         pv_backend *table);
#define PV_BACKEND_ENTRY_SYMBOL "pv_backend_entry"

#ifdef __cplusplus
}
#endif
#endif /* POLYVIEW_BACKEND_H */
