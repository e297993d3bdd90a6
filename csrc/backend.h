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

/* Arguments of the encoder ops (csrc/nn.cc fills them after checking
 * shapes and dtypes). act_dtype is the activations', param_dtype the
 * parameters'. A NULL output pointer means "skip". */
typedef struct pv_conv2d_args {
  int64_t n, h, w, c;  /* x [n, h, w, c] */
  int64_t k, r, s;     /* w [k, r, s, c] */
  int64_t p, q;        /* y [n, p, q, k] */
  int64_t stride, pad;
  pv_dtype act_dtype, param_dtype;
  const void *x_ptr, *w_ptr;
  void *y_ptr;         /* forward */
  const void *dy_ptr;  /* backward */
  void *dx_ptr, *dw_ptr;
} pv_conv2d_args;

typedef struct pv_batchnorm_args {
  int64_t rows, c;  /* x viewed as [rows, c] */
  int training;
  double momentum, eps;
  pv_dtype act_dtype, param_dtype;
  const void *x_ptr, *gamma_ptr, *beta_ptr;
  void *running_mean_ptr, *running_var_ptr;
  void *save_mean_ptr, *save_invstd_ptr;  /* written by forward, read by backward */
  void *y_ptr;
  const void *dy_ptr;
  void *dx_ptr, *dgamma_ptr, *dbeta_ptr;
} pv_batchnorm_args;

/* Arguments of the synchronised batch norm ops (nn_syncbn.cc fills them).
 * rows is this rank's, count the rows over every rank. stats_in_ptr holds
 * the all-reduced [2, c] sums the op reads (forward_stats,
 * backward_input); stats_out_ptr the [2, c] sums of this rank's rows the
 * op writes (stats, backward_stats). */
typedef struct pv_syncbn_args {
  int64_t rows, c;  /* x viewed as [rows, c] */
  int64_t count;
  double momentum, eps;
  pv_dtype act_dtype, param_dtype;
  const void *x_ptr, *shift_ptr, *gamma_ptr, *beta_ptr;
  const void *stats_in_ptr;
  void *stats_out_ptr;
  void *running_mean_ptr, *running_var_ptr;
  void *save_mean_ptr, *save_invstd_ptr;  /* written by forward_stats, read after */
  void *y_ptr;
  const void *dy_ptr;
  void *dx_ptr;
} pv_syncbn_args;

typedef struct pv_pool_args {
  int64_t n, h, w, c;  /* x [n, h, w, c] */
  int64_t p, q;        /* y [n, p, q, c]; 1 x 1 for the global average */
  int64_t kernel, stride, pad;
  pv_dtype dtype;
  const void *x_ptr, *y_ptr, *dy_ptr;
  void *out_ptr;       /* y for forward, dx for backward */
} pv_pool_args;

typedef struct pv_eltwise_args {
  int64_t numel;
  pv_dtype dtype;
  const void *a_ptr, *b_ptr;  /* relu: a = x (forward) or y (backward), b = dy */
  void *out_ptr;
} pv_eltwise_args;

typedef struct pv_linear_args {
  int64_t rows, in, out;  /* x [rows, in], w [out, in], y [rows, out] */
  pv_dtype act_dtype, param_dtype;
  const void *x_ptr, *w_ptr, *b_ptr;  /* b_ptr may be NULL */
  void *y_ptr;
  const void *dy_ptr;
  void *dx_ptr, *dw_ptr, *db_ptr;
} pv_linear_args;

typedef struct pv_optim_args {
  pv_optim_desc desc;
  int64_t numel;
  pv_dtype dtype;
  void *param_ptr;
  const void *grad_ptr;
  void *state0_ptr, *state1_ptr;  /* state1_ptr NULL except AdamW */
} pv_optim_args;

/* Arguments of one augmentation call (augment.cc fills them after checking
 * every field). recipes have blur_kernel resolved (never 0) and log_ratio
 * holds ln(ratio_min), ln(ratio_max) per view, computed once on the host so
 * that both backends sample crops from identical numbers. */
typedef struct pv_augment_args {
  int64_t n;                      /* images */
  const uint8_t *pixels_ptr;      /* device memory, packed HWC images */
  const int64_t *offset, *height, *width, *channels, *index; /* host, n each */
  const pv_view_recipe *recipes;  /* host, views entries */
  const double *log_ratio;        /* host, 2 * views entries */
  int64_t first_view, views;
  uint64_t seed, epoch;
  int64_t out_h, out_w;
  void *out_ptr;                  /* device memory [n, views, out_h, out_w, 3] */
  pv_dtype out_dtype;             /* F32 or BF16 */
} pv_augment_args;

/* Arguments of the collectives (comm.cc fills them after checking
 * dtypes, element counts and devices). */
typedef struct pv_comm_init_args {
  uint8_t id[PV_COMM_ID_BYTES];
  int rank, size;
  double timeout_seconds;  /* > 0: bounds init and every collective */
} pv_comm_init_args;

/* count is the elements this rank sends: the whole tensor for all-reduce
 * and broadcast (in place: recv_ptr == send_ptr), local's for all-gather,
 * whose recv_ptr holds size * count. */
typedef struct pv_comm_args {
  int64_t count;
  pv_dtype dtype;
  const void *send_ptr;
  void *recv_ptr;
  int root;  /* broadcast */
} pv_comm_args;

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
  /* Profiling: NULL where the backend has none. */
  pv_status (*profiler_set)(void *ctx, int on);
  pv_status (*range_push)(void *ctx, const char *name);
  pv_status (*range_pop)(void *ctx);

  /* Memory. */
  pv_status (*alloc)(void *ctx, int64_t bytes, void **ptr);
  void (*free)(void *ctx, void *ptr);
  pv_status (*copy_h2d)(void *ctx, void *dst, const void *src, int64_t bytes);
  pv_status (*copy_d2h)(void *ctx, void *dst, const void *src, int64_t bytes);

  /* Ops. A NULL op is one the backend does not offer; the core then
   * returns PV_ERR_UNSUPPORTED. New ops are appended at the end. */
  pv_status (*loss)(void *ctx, const pv_loss_args *args);

  /* -- views: augmentation -- */
  pv_status (*augment)(void *ctx, const pv_augment_args *args);

  /* -- encoder ops -- */
  pv_status (*conv2d_forward)(void *ctx, const pv_conv2d_args *args);
  pv_status (*conv2d_backward)(void *ctx, const pv_conv2d_args *args);
  pv_status (*batchnorm_forward)(void *ctx, const pv_batchnorm_args *args);
  pv_status (*batchnorm_backward)(void *ctx, const pv_batchnorm_args *args);
  /* synchronised batch norm: local sums, then ops on all-reduced sums */
  pv_status (*batchnorm_stats)(void *ctx, const pv_syncbn_args *args);
  pv_status (*batchnorm_forward_stats)(void *ctx, const pv_syncbn_args *args);
  pv_status (*batchnorm_backward_stats)(void *ctx, const pv_syncbn_args *args);
  pv_status (*batchnorm_backward_input)(void *ctx, const pv_syncbn_args *args);
  pv_status (*relu_forward)(void *ctx, const pv_eltwise_args *args);
  pv_status (*relu_backward)(void *ctx, const pv_eltwise_args *args);
  pv_status (*maxpool_forward)(void *ctx, const pv_pool_args *args);
  pv_status (*maxpool_backward)(void *ctx, const pv_pool_args *args);
  pv_status (*avgpool_forward)(void *ctx, const pv_pool_args *args);
  pv_status (*avgpool_backward)(void *ctx, const pv_pool_args *args);
  pv_status (*add)(void *ctx, const pv_eltwise_args *args);
  pv_status (*linear_forward)(void *ctx, const pv_linear_args *args);
  pv_status (*linear_backward)(void *ctx, const pv_linear_args *args);
  pv_status (*optimizer_step)(void *ctx, const pv_optim_args *args);

  /* -- copies within a device and collectives (csrc/comm.cc) --
   * copy_d2d queues a copy between two buffers of device ctx on its
   * stream. comm_init joins a group on device ctx and returns the
   * backend's communicator, which the other comm_* entries take; each
   * collective returns once its result is in place. NULL comm_* entries:
   * the backend has no collectives. */
  pv_status (*copy_d2d)(void *ctx, void *dst, const void *src, int64_t bytes);
  pv_status (*comm_unique_id)(void *ctx, uint8_t *id);  /* PV_COMM_ID_BYTES */
  pv_status (*comm_init)(void *ctx, const pv_comm_init_args *args, void **comm);
  pv_status (*comm_all_reduce)(void *comm, const pv_comm_args *args);
  pv_status (*comm_all_gather)(void *comm, const pv_comm_args *args);
  pv_status (*comm_broadcast)(void *comm, const pv_comm_args *args);
  pv_status (*comm_abort)(void *comm);  /* any thread, any number of times */
  void (*comm_destroy)(void *comm);
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
