/*
 * polyview.h: the one public C ABI of polyview.
 *
 * Plain C: opaque handles, a status code from every call, a thread-local
 * last-error message, sizes as int64_t. No C++ exception and no CUDA type
 * crosses this header, and no call aborts the process: a library linked
 * into a service returns an error and leaves the decision to the caller.
 *
 * Two backends fill one table of ops (csrc/backend.h): the CPU backend is
 * compiled in; the CUDA backend is a shared library opened at run time
 * with pv_cuda_load().
 */
#ifndef POLYVIEW_H
#define POLYVIEW_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the backend table or an argument struct changes. */
#define PV_ABI_VERSION 1

typedef enum pv_status {
  PV_OK = 0,
  PV_ERR_INVALID_ARGUMENT = 1, /* a shape, a value or a flag is wrong */
  PV_ERR_OUT_OF_MEMORY = 2,
  PV_ERR_UNAVAILABLE = 3,      /* backend library, driver or GPU missing */
  PV_ERR_UNSUPPORTED = 4,      /* valid request this backend cannot do */
  PV_ERR_BACKEND = 5,          /* a CUDA, cuDNN, cuBLAS or NCCL call failed */
  PV_ERR_NUMERIC = 6,          /* non-finite or degenerate data */
  PV_ERR_INTERNAL = 7
} pv_status;

typedef enum pv_dtype {
  PV_F32 = 0,
  PV_BF16 = 1,
  PV_F64 = 2, /* CPU only: the float64 reference used by gradient checks */
  PV_U8 = 3,
  PV_I32 = 4
} pv_dtype;

typedef enum pv_device_kind { PV_DEVICE_CPU = 0, PV_DEVICE_CUDA = 1 } pv_device_kind;

typedef enum pv_log_level {
  PV_LOG_DEBUG = 0,
  PV_LOG_INFO = 1,
  PV_LOG_WARN = 2,
  PV_LOG_ERROR = 3
} pv_log_level;

typedef struct pv_device pv_device; /* a backend bound to one processor */
typedef struct pv_tensor pv_tensor; /* dense, row-major memory on a device */

/* ---- errors and logging ------------------------------------------------ */

/* The message of the last failed call on this thread ("" if none). The
 * pointer stays valid until the next polyview call on the same thread. */
const char *pv_last_error(void);

/* Log lines from both backends go through one callback the host installs;
 * with none installed they are dropped. msg is valid during the call only. */
typedef void (*pv_log_fn)(int level, const char *msg, void *user);
void pv_set_log_callback(pv_log_fn fn, void *user);

/* Short text for a status code, e.g. "invalid argument". */
const char *pv_status_string(pv_status s);

/* ---- backends and devices ---------------------------------------------- */

/* Opens the CUDA backend library at path (dlopen). Returns
 * PV_ERR_UNAVAILABLE, with the loader's message, when the file is absent or
 * does not load, and PV_ERR_INVALID_ARGUMENT when its ABI version differs.
 * Loading twice is a no-op. */
pv_status pv_cuda_load(const char *path);

/* 1 when a CUDA backend library is loaded, else 0. */
int pv_cuda_loaded(void);

/* Number of CUDA devices the loaded backend sees (0 without a driver). */
pv_status pv_cuda_device_count(int *count);

/* Opens a device. kind CPU ignores index. For CUDA the backend must be
 * loaded and index must name a present GPU. */
pv_status pv_device_open(pv_device_kind kind, int index, pv_device **out);
void pv_device_close(pv_device *dev);

/* A human-readable name: "cpu (2 threads, avx2+fma)", "NVIDIA H200 (sm_90)". */
const char *pv_device_name(const pv_device *dev);
pv_device_kind pv_device_get_kind(const pv_device *dev);

/* Waits for all work queued on the device. */
pv_status pv_device_synchronize(pv_device *dev);

/* Threads the CPU backend uses for one op (0 = all hardware threads). */
pv_status pv_cpu_set_threads(int n);
int pv_cpu_threads(void);

/* Bytes of device memory a device's backend has allocated and not freed,
 * and the high-water mark since the last reset (loss workspaces included). */
pv_status pv_device_memory(pv_device *dev, int64_t *in_use, int64_t *peak);
pv_status pv_device_reset_peak(pv_device *dev);

/* ---- tensors ------------------------------------------------------------ */

#define PV_MAX_DIMS 8

/* Allocates an uninitialised tensor of the given shape on dev. */
pv_status pv_tensor_create(pv_device *dev, pv_dtype dtype, int ndim,
                           const int64_t *shape, pv_tensor **out);
void pv_tensor_free(pv_tensor *t);

pv_dtype pv_tensor_dtype(const pv_tensor *t);
int pv_tensor_ndim(const pv_tensor *t);
int64_t pv_tensor_dim(const pv_tensor *t, int axis);
int64_t pv_tensor_numel(const pv_tensor *t);
int64_t pv_tensor_bytes(const pv_tensor *t);
pv_device *pv_tensor_device(const pv_tensor *t);

/* Copies bytes between host memory and the tensor; bytes must equal
 * pv_tensor_bytes(t). */
pv_status pv_tensor_write(pv_tensor *t, const void *src, int64_t bytes);
pv_status pv_tensor_read(const pv_tensor *t, void *dst, int64_t bytes);

/* ---- poly-view objectives (OBJECTIVES.md) ------------------------------ */

typedef enum pv_objective {
  PV_OBJ_SIMCLR = 0,
  PV_OBJ_MULTICROP = 1,
  PV_OBJ_GPVC = 2,
  PV_OBJ_APVC = 3,
  PV_OBJ_SUFFSTATS = 4,
  PV_OBJ_MVINFONCE = 5,
  PV_OBJ_MVDHEL = 6,
  PV_OBJ_COUNT = 7
} pv_objective;

/* The name used in flags and configs: "simclr", "gpvc", ... */
const char *pv_objective_name(pv_objective obj);

/*
 * Poly-view loss of h [N, M, d] (sample-major: row i*M + a is view a of
 * image i), dtype F32, BF16 or F64 (CPU only), at temperature tau.
 * Writes the scalar loss to *loss (host memory). When grad is not NULL it
 * receives dL/dh, same shape as h, dtype F32, BF16 or F64; it may be h
 * itself. The R x R similarity matrix is never stored: memory is O(N M d).
 * Errors: N < 2, M < 2, M != 2 for simclr, d < 1, tau not finite and > 0,
 * a zero-norm or non-finite row (named by image and view).
 */
pv_status pv_loss(pv_device *dev, pv_objective obj, double tau,
                  const pv_tensor *h, pv_tensor *grad, double *loss);

/* ---- views: augmentation (csrc/augment*.cc) ---------------------------- */

/* ---- encoder ops: layers and optimizers (csrc/nn*.cc) ------------------ */

#ifdef __cplusplus
}
#endif
#endif /* POLYVIEW_H */
