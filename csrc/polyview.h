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
#define PV_ABI_VERSION 3

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

/* 1 when the device's backend implements every op of a family, else 0.
 * Families: "loss", "augment", "encoder" (convolution, batch norm and
 * its synchronised ops, pooling, ReLU, add, linear, optimizer step), "comm" (the NCCL
 * collectives, pv_comm_*). Lets a caller fall back to
 * the CPU before it starts work the device cannot finish. */
int pv_device_has_ops(const pv_device *dev, const char *family);

/* Waits for all work queued on the device. */
pv_status pv_device_synchronize(pv_device *dev);

/* Starts (on = 1) or stops (on = 0) a profiler's capture: on the GPU
 * cudaProfilerStart/Stop, for Nsight's --capture-range=cudaProfilerApi.
 * The CPU has no capture: a no-op. */
pv_status pv_profiler_set(pv_device *dev, int on);

/* Opens and closes a named range for a profiler's timeline (NVTX on the
 * GPU; a no-op on the CPU). Ranges nest. */
pv_status pv_range_push(pv_device *dev, const char *name);
pv_status pv_range_pop(pv_device *dev);

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

/* Gives the tensor a new shape with the same number of elements; the data
 * (row-major) is untouched. */
pv_status pv_tensor_reshape(pv_tensor *t, int ndim, const int64_t *shape);

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

/*
 * How one view is drawn from an image: the SimCLR / BYOL family of
 * augmentations, each as torchvision.transforms.v2 defines it on float
 * images in [0, 1], applied in this order:
 *   1. random resized crop: area fraction in [scale_min, scale_max], aspect
 *      (width / height) log-uniform in [ratio_min, ratio_max], 10 tries then
 *      the central crop; resized to out_h x out_w by bilinear interpolation
 *      (half-pixel centres, no antialiasing); scale_min = 1 takes the
 *      whole image;
 *   2. horizontal flip with probability flip_p;
 *   3. with probability jitter_p, colour jitter: brightness, contrast,
 *      saturation and hue in a random order, factors uniform in
 *      [max(0, 1 - x), 1 + x] (hue: a shift uniform in [-hue, hue] turns);
 *      an op whose strength is 0 is skipped;
 *   4. grayscale (0.2989 R + 0.587 G + 0.114 B) with probability gray_p;
 *   5. Gaussian blur with probability blur_p: sigma uniform in
 *      [blur_sigma_min, blur_sigma_max] output pixels, blur_kernel taps per
 *      axis (odd; 0 picks 10% of the smaller output side, made odd, at
 *      least 3), reflected at the borders;
 *   6. solarisation with probability solarize_p: x >= solarize_threshold
 *      becomes 1 - x;
 *   7. normalisation per channel: (x - mean) / std.
 */
typedef struct pv_view_recipe {
  int64_t out_h, out_w;                  /* output size in pixels, [1, 4096] */
  double scale_min, scale_max;           /* crop area / image area, in (0, 1] */
  double ratio_min, ratio_max;           /* crop width / height, > 0 */
  double flip_p;                         /* probabilities are in [0, 1] */
  double jitter_p;
  double brightness, contrast, saturation; /* >= 0 */
  double hue;                            /* in [0, 0.5] */
  double gray_p;
  double blur_p;
  double blur_sigma_min, blur_sigma_max; /* > 0 */
  int64_t blur_kernel;                   /* odd, <= 255, or 0 (automatic) */
  double solarize_p;
  double solarize_threshold;             /* in [0, 1] */
  double mean[3], std[3];                /* RGB; std > 0 */
} pv_view_recipe;

/* N images, each of its own size, packed in one uint8 tensor on the
 * device. Image i is height[i] x width[i] x channels[i] bytes (HWC, row
 * major) from byte offset[i] of pixels; channels is 1 (gray, used as R = G
 * = B) or 3 (RGB). index[i] is the image's global index in its dataset,
 * which keys the generator; NULL means 0 .. n-1. The int64 arrays are host
 * memory and are read during the call only. */
typedef struct pv_image_batch {
  int64_t n;
  const pv_tensor *pixels;
  const int64_t *offset, *height, *width, *channels;
  const int64_t *index;
} pv_image_batch;

/* Jitter ops, as they appear in pv_view_params.order. */
typedef enum pv_jitter_op {
  PV_JITTER_BRIGHTNESS = 0,
  PV_JITTER_CONTRAST = 1,
  PV_JITTER_SATURATION = 2,
  PV_JITTER_HUE = 3
} pv_jitter_op;

/* The parameters drawn for one view: what pv_augment applies. */
typedef struct pv_view_params {
  int64_t crop_y, crop_x, crop_h, crop_w; /* in source pixels */
  int32_t flip, gray, blur, solarize;     /* 1 when the op is applied */
  int32_t jitter_ops;                     /* ops applied, 0 when no jitter */
  int32_t order[4];                       /* order[0 .. jitter_ops): pv_jitter_op */
  float brightness, contrast, saturation; /* factors; 1 when not applied */
  float hue;                              /* shift in turns; 0 when not applied */
  float blur_sigma;                       /* 0 when no blur */
  int32_t blur_kernel;                    /* taps per axis, odd */
  float solarize_threshold;
} pv_view_params;

/* The parameters of view `view` of the image with global index `index`
 * and size height x width, as pv_augment draws them under (seed, epoch).
 * Errors: the recipe's, and view >= 65536, epoch >= 2^32, size < 1. */
pv_status pv_view_sample(const pv_view_recipe *recipe, uint64_t seed, uint64_t epoch,
                         int64_t index, int64_t view, int64_t height, int64_t width,
                         pv_view_params *out);

/*
 * Views first_view .. first_view + views - 1 of every image of batch into
 * out [N, views, out_h, out_w, 3] (NHWC per view; row i * views + a is
 * view first_view + a of image i), dtype F32 or BF16. recipes[a] draws
 * view first_view + a; all share out's out_h x out_w (views of another
 * size go in another call). Every random parameter of view m of image k
 * comes from Philox-4x32-10 keyed by (seed, epoch, index[k], m), so the
 * result does not depend on how a dataset is split into batches.
 * Errors name the field: an empty batch, an image of size 0, channels not
 * 1 or 3, bytes outside pixels, a recipe value out of range, out of the
 * wrong shape or dtype, epoch >= 2^32, first_view + views > 65536.
 */
pv_status pv_augment(pv_device *dev, const pv_image_batch *batch,
                     const pv_view_recipe *recipes, int64_t first_view, int64_t views,
                     uint64_t seed, uint64_t epoch, pv_tensor *out);

/* One Philox-4x32-10 block (philox.h), for tests and tools that want to
 * reproduce the generator's stream. */
void pv_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* ---- encoder ops: layers and optimizers (csrc/nn*.cc) ------------------ */

/*
 * Layout and dtypes. Activations are NHWC: x [N, H, W, C], the layout of
 * the views and of cuDNN's fast paths. Convolution weights are [K, R, S, C]
 * (output channels, kernel rows, kernel columns, input channels); linear
 * weights are [out, in] as in PyTorch. The activations of one call (x, y,
 * dx, dy) share one dtype and the parameters (weights, BN scale, shift and
 * statistics, their gradients) share one dtype. The CPU takes F32 or F64
 * (the float64 reference of gradient checks) for both, equal; CUDA takes
 * BF16 or F32 activations with F32 parameters. Gradients are written, not
 * accumulated. An output may not alias an input unless the op says so.
 */

/* Convolution geometry; the kernel size comes from the weight tensor.
 * Output size P = (H + 2 pad - R) / stride + 1, likewise Q. */
typedef struct pv_conv2d_desc {
  int64_t stride; /* >= 1, both axes */
  int64_t pad;    /* >= 0 zero rows and columns on every side */
} pv_conv2d_desc;

/* y [N, P, Q, K] = conv(x [N, H, W, C], w [K, R, S, C]), no bias. */
pv_status pv_conv2d_forward(pv_device *dev, const pv_conv2d_desc *desc, const pv_tensor *x,
                            const pv_tensor *w, pv_tensor *y);

/* From dy [N, P, Q, K]: dx (x's shape; NULL to skip, as for a network's
 * input) and dw (w's shape; NULL to skip). */
pv_status pv_conv2d_backward(pv_device *dev, const pv_conv2d_desc *desc, const pv_tensor *x,
                             const pv_tensor *w, const pv_tensor *dy, pv_tensor *dx,
                             pv_tensor *dw);

/* Batch normalisation over every axis but the last (C): x is [N, H, W, C]
 * or [N, C]. In training, normalises with the batch's mean and biased
 * variance and updates running_mean and running_var (unbiased variance,
 * as PyTorch) by r = (1 - momentum) r + momentum batch. In evaluation,
 * normalises with the running statistics and leaves them. */
typedef struct pv_batchnorm_desc {
  int training;    /* 1: batch statistics; 0: running statistics */
  double momentum; /* in [0, 1], e.g. 0.1 */
  double eps;      /* > 0, e.g. 1e-5 */
} pv_batchnorm_desc;

/* y = gamma (x - mean) invstd + beta. gamma, beta, running_mean,
 * running_var, save_mean and save_invstd are [C]; save_mean and
 * save_invstd receive the statistics used (batch or running) for the
 * backward pass. y may be x. */
pv_status pv_batchnorm_forward(pv_device *dev, const pv_batchnorm_desc *desc,
                               const pv_tensor *x, const pv_tensor *gamma,
                               const pv_tensor *beta, pv_tensor *running_mean,
                               pv_tensor *running_var, pv_tensor *save_mean,
                               pv_tensor *save_invstd, pv_tensor *y);

/* From dy: dx (through the batch statistics in training, through fixed
 * statistics in evaluation), dgamma and dbeta [C]. desc->training must
 * match the forward call. */
pv_status pv_batchnorm_backward(pv_device *dev, const pv_batchnorm_desc *desc,
                                const pv_tensor *x, const pv_tensor *gamma,
                                const pv_tensor *save_mean, const pv_tensor *save_invstd,
                                const pv_tensor *dy, pv_tensor *dx, pv_tensor *dgamma,
                                pv_tensor *dbeta);

/*
 * Synchronised batch norm: training statistics over the batch of every
 * data-parallel rank, each rank holding its own rows of x. The caller
 * all-reduces (sums) two small [2, C] tensors between the ops:
 *   forward:  pv_batchnorm_stats -> all-reduce -> pv_batchnorm_forward_stats
 *   backward: pv_batchnorm_backward_stats -> all-reduce ->
 *             pv_batchnorm_backward_input
 * With the sums of every rank, each rank gets the y, dx, statistics and
 * running averages that pv_batchnorm_forward/backward would give on the
 * whole batch, and the all-reduced backward stats are dbeta and dgamma.
 * stats tensors are [2, C] in the parameters' dtype; count is the number
 * of rows over all ranks (each rank's x viewed as [rows, C]), at least 2
 * (a single row has no variance: pv_batchnorm_forward refuses it too) and
 * at least this rank's rows. A rank may hold any number of rows, 0 too.
 * Sums accumulate in double; summed in float32 across ranks they stay
 * accurate because the forward ones are taken about a shift near the
 * mean.
 */

/* stats[0, c] = sum over rows of (x - shift[c]), stats[1, c] = sum of
 * (x - shift[c])^2. shift [C] is running_mean as forward_stats will see
 * it on entry. */
pv_status pv_batchnorm_stats(pv_device *dev, const pv_tensor *x, const pv_tensor *shift,
                             pv_tensor *stats);

/* From the all-reduced stats, taken with shift = running_mean as it is
 * on entry: mean = shift + s0 / count, biased var = max(s1 / count -
 * (s0 / count)^2, 0), invstd = 1 / sqrt(var + eps). Writes save_mean and
 * save_invstd, y = gamma (x - mean) invstd + beta (y may be x), then
 * updates running_mean and running_var as pv_batchnorm_forward does in
 * training (unbiased variance var count / (count - 1)). desc->training
 * must be 1. */
pv_status pv_batchnorm_forward_stats(pv_device *dev, const pv_batchnorm_desc *desc,
                                     const pv_tensor *x, const pv_tensor *gamma,
                                     const pv_tensor *beta, const pv_tensor *stats,
                                     int64_t count, pv_tensor *running_mean,
                                     pv_tensor *running_var, pv_tensor *save_mean,
                                     pv_tensor *save_invstd, pv_tensor *y);

/* With xhat = (x - save_mean) save_invstd: stats[0, c] = sum of dy and
 * stats[1, c] = sum of dy xhat over this rank's rows: its dbeta and
 * dgamma. */
pv_status pv_batchnorm_backward_stats(pv_device *dev, const pv_tensor *x,
                                      const pv_tensor *save_mean,
                                      const pv_tensor *save_invstd, const pv_tensor *dy,
                                      pv_tensor *stats);

/* dx = gamma invstd (dy - s0 / count - xhat s1 / count) from the
 * all-reduced backward stats; dx may be dy. */
pv_status pv_batchnorm_backward_input(pv_device *dev, const pv_tensor *x,
                                      const pv_tensor *gamma, const pv_tensor *save_mean,
                                      const pv_tensor *save_invstd, const pv_tensor *dy,
                                      const pv_tensor *stats, int64_t count, pv_tensor *dx);

/* y = max(x, 0), any shape; y may be x. */
pv_status pv_relu_forward(pv_device *dev, const pv_tensor *x, pv_tensor *y);

/* dx = dy where y > 0, else 0, from the forward output y; dx may be dy. */
pv_status pv_relu_backward(pv_device *dev, const pv_tensor *y, const pv_tensor *dy,
                           pv_tensor *dx);

/* Max pooling geometry: a kernel x kernel window every stride pixels,
 * padding that never wins (as -inf). P = (H + 2 pad - kernel) / stride + 1. */
typedef struct pv_maxpool_desc {
  int64_t kernel, stride, pad; /* kernel >= 1, stride >= 1, 0 <= pad < kernel */
} pv_maxpool_desc;

/* y [N, P, Q, C] = max over each window of x [N, H, W, C]. */
pv_status pv_maxpool_forward(pv_device *dev, const pv_maxpool_desc *desc, const pv_tensor *x,
                             pv_tensor *y);

/* dx gets dy at each window's first maximal element (ties to the first in
 * row-major order), summed over overlapping windows. */
pv_status pv_maxpool_backward(pv_device *dev, const pv_maxpool_desc *desc,
                              const pv_tensor *x, const pv_tensor *y, const pv_tensor *dy,
                              pv_tensor *dx);

/* y [N, C] = mean of x [N, H, W, C] over H and W. */
pv_status pv_global_avgpool_forward(pv_device *dev, const pv_tensor *x, pv_tensor *y);

/* dx [N, H, W, C] = dy [N, C] / (H W) at every pixel. */
pv_status pv_global_avgpool_backward(pv_device *dev, const pv_tensor *dy, pv_tensor *dx);

/* y = a + b elementwise, equal shapes: the residual join, and the sum of
 * gradients where a path forks. y may be a or b. */
pv_status pv_add(pv_device *dev, const pv_tensor *a, const pv_tensor *b, pv_tensor *y);

/* y [..., out] = x [..., in] w^T + b: the leading axes of x and of y are
 * rows, each with as many rows as the other but grouped freely, so a head
 * may read [N M, in] and write [N, M, d] for the loss directly. w is
 * [out, in]; b [out] or NULL. */
pv_status pv_linear_forward(pv_device *dev, const pv_tensor *x, const pv_tensor *w,
                            const pv_tensor *b, pv_tensor *y);

/* From dy [..., out]: dx (NULL to skip), dw [out, in] and db [out] (NULL
 * to skip). */
pv_status pv_linear_backward(pv_device *dev, const pv_tensor *x, const pv_tensor *w,
                             const pv_tensor *dy, pv_tensor *dx, pv_tensor *dw,
                             pv_tensor *db);

typedef enum pv_optimizer {
  PV_OPT_SGD = 0,   /* momentum, optional Nesterov, L2 weight decay */
  PV_OPT_LARS = 1,  /* SGD with a layer-wise trust ratio (You et al. 2017) */
  PV_OPT_ADAMW = 2  /* Adam with decoupled weight decay */
} pv_optimizer;

/*
 * One optimizer step on one parameter tensor, in place. With g the
 * gradient, p the parameter and wd = 0 when exclude is set:
 *   SGD:   g += wd p; v = momentum v + g; p -= lr (nesterov ? g + momentum v : v)
 *   LARS:  g += wd p; r = exclude or |p| = 0 or |g| = 0 ? 1 : eta |p| / |g|;
 *          v = momentum v + lr r g; p -= nesterov ? momentum v + lr r g : v
 *   AdamW: p -= lr wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 *          p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * exclude marks BN parameters and biases: no weight decay and, for LARS,
 * no trust-ratio adaptation. |.| is the tensor's L2 norm.
 */
typedef struct pv_optim_desc {
  pv_optimizer kind;
  double lr;           /* this step's learning rate (the schedule's value) */
  double momentum;     /* SGD, LARS */
  int nesterov;        /* SGD, LARS */
  double weight_decay;
  double eta;          /* LARS trust coefficient, e.g. 0.001 */
  double beta1, beta2; /* AdamW, e.g. 0.9, 0.999 */
  double eps;          /* AdamW, e.g. 1e-8 */
  int64_t step;        /* AdamW: t, 1 for the first step */
  int exclude;
} pv_optim_desc;

/* param, grad and state0 (momentum v; AdamW's m) share a shape and a
 * dtype (F32; F64 on the CPU); state1 is AdamW's v and NULL otherwise.
 * State starts at zero. */
pv_status pv_optimizer_step(pv_device *dev, const pv_optim_desc *desc, pv_tensor *param,
                            const pv_tensor *grad, pv_tensor *state0, pv_tensor *state1);

/* The CPU backend's float32 multiply-add peak in GFLOP/s with
 * pv_cpu_threads() threads busy at once, measured (about 0.2 s): the
 * yardstick for the GEMM's efficiency. */
pv_status pv_cpu_fma_peak(double *gflops);

/* ---- collectives: copies within a device, NCCL across GPUs (csrc/comm.cc) */

/* Copies count elements from src[src_offset ..] to dst[dst_offset ..],
 * in element units of their common dtype, on their common device, queued
 * in order with the device's other work (no host round trip). Both ranges
 * must lie inside their tensors; dst and src may be one tensor when the
 * ranges do not overlap. count 0 copies nothing. */
pv_status pv_tensor_copy(pv_tensor *dst, int64_t dst_offset, const pv_tensor *src,
                         int64_t src_offset, int64_t count);

/*
 * A communicator: one rank of a group of GPU ranks, one GPU per rank,
 * joined over NCCL for data-parallel training. Every rank makes the same
 * collective calls in the same order, with tensors of the same dtype and
 * element count. Each collective is queued after the work already queued
 * on its device and returns only once its result is in place, or with an
 * error; it never waits longer than the communicator's timeout: past it
 * (another rank died or hangs) or on an NCCL error the communicator is
 * aborted, the call fails and so does every later call. Calls on one
 * communicator from several threads run one at a time. The CPU backend
 * has no collectives (CPU ranks meet over polyview's TCP group): there
 * every pv_comm_* call fails with PV_ERR_UNSUPPORTED.
 */
typedef struct pv_comm pv_comm;

/* Bytes of a communicator's id (NCCL's unique id). */
#define PV_COMM_ID_BYTES 128

/* Makes a new id for a group. Rank 0 calls it and sends the bytes to the
 * other ranks (the trainer does so over TCP); an id serves one pv_comm_init
 * per rank. */
pv_status pv_comm_unique_id(pv_device *dev, uint8_t id[PV_COMM_ID_BYTES]);

/* Joins the group named by id as rank (in [0, size)) on dev, a GPU that no
 * other rank of the group uses. Returns once all size ranks have joined;
 * fails after timeout_seconds (> 0, finite), which also bounds every
 * later collective of the communicator, counted from the call (device
 * work queued before it included) to its result. */
pv_status pv_comm_init(pv_device *dev, const uint8_t id[PV_COMM_ID_BYTES], int rank, int size,
                       double timeout_seconds, pv_comm **out);

/* Replaces t, on every rank, by the element-wise sum of all ranks' t, in
 * place. dtype F32 or BF16. */
pv_status pv_comm_all_reduce_sum(pv_comm *c, pv_tensor *t);

/* out receives every rank's local, concatenated in rank order: rank r's
 * elements at [r n, (r + 1) n) of out's row-major data, n the elements of
 * local. out has size times local's elements and local's dtype. */
pv_status pv_comm_all_gather(pv_comm *c, const pv_tensor *local, pv_tensor *out);

/* Copies root's t to t on every other rank, in place; root in [0, size). */
pv_status pv_comm_broadcast(pv_comm *c, pv_tensor *t, int root);

/* Aborts the communicator: a collective in flight on another thread
 * returns an error, and so do later ones. Callable from any thread, any
 * number of times, until pv_comm_destroy. */
pv_status pv_comm_abort(pv_comm *c);

/* Frees the communicator (aborting it if a rank cannot finish cleanly in
 * its timeout). Call it after every other use, from any thread. */
void pv_comm_destroy(pv_comm *c);

/* Rank and size the communicator was made with (-1 and 0 for NULL). */
int pv_comm_rank(const pv_comm *c);
int pv_comm_size(const pv_comm *c);

#ifdef __cplusplus
}
#endif
#endif /* POLYVIEW_H */
