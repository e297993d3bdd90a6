// nn_cuda.cu: the encoder ops of the CUDA backend's table. Convolutions
// go to cuDNN, linear layers to cuBLAS; everything else (ReLU, add,
// pooling, batch norm, bias gradients, optimizer steps) is this backend's
// own kernels in nn_kernels.cuh, which the emulated test also runs.
//
// Numerics, against the CPU reference (csrc/nn_cpu.cc):
//   - float32 convolutions ask cuDNN for FMA math (CUDNN_FMA_MATH): no
//     TF32, so results differ from the CPU's by summation order only.
//     CUDNN_DEFAULT_MATH would let Ampere and Hopper round operands to
//     TF32 (10-bit mantissa, ~5e-4 relative per product).
//   - bfloat16 activations run on tensor cores with fp32 accumulation
//     (CUDNN_TENSOR_OP_MATH; cuBLAS bf16 GEMMs with CUBLAS_COMPUTE_32F).
//     Weights are float32 (polyview.h): they are rounded to a bf16 copy
//     for the product, and weight gradients come back in float32 (cuBLAS
//     writes them directly; cuDNN writes bf16, widened after).
//   - float32 GEMMs use CUBLAS_COMPUTE_32F, which never uses TF32.
//   - Backward convolutions prefer cuDNN's deterministic algorithms, so a
//     step repeats bit for bit; a non-deterministic one is taken only when
//     cuDNN offers nothing else, and that is logged.
//
// State per context (made at first use, freed with the context): one
// cuDNN handle, one cuBLAS handle, both bound to the context's stream,
// and the algorithm chosen for each convolution shape. cuDNN's heuristics
// (cudnnGet*_v7) pick the algorithm once per (pass, shape, stride, pad,
// dtype); nothing is benchmarked, so the first step allocates no trial
// buffers. Workspaces come from the context's counted, stream-ordered
// allocator and are freed when the op returns (stream-ordered, so the
// memory is reused by the next op without a device wait).
#include "nn_cuda.h"
#include "nn_kernels.cuh"

#include <cublas_v2.h>
#include <cudnn.h>

#include <climits>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

namespace pvcuda {
namespace nn {
namespace {

constexpr size_t kMaxWorkspace = size_t(1) << 30;  // per convolution algorithm
constexpr int kMaxAlgos = 16;

// The function's name without its arguments, as cuda_fail prints it.
void call_name(const char *call, char *out, size_t cap) {
  size_t len = std::strcspn(call, "(");
  if (len >= cap) len = cap - 1;
  std::memcpy(out, call, len);
  out[len] = 0;
}

pv_status cudnn_fail(cudnnStatus_t st, const char *file, int line, const char *call) {
  char fn[96];
  call_name(call, fn, sizeof fn);
  const pv_status status = st == CUDNN_STATUS_NOT_SUPPORTED ? PV_ERR_UNSUPPORTED : PV_ERR_BACKEND;
  return fail_at(status, file, line, "%s: %s (cudnnStatus %d)", fn, cudnnGetErrorString(st),
                 (int)st);
}

pv_status cublas_fail(cublasStatus_t st, const char *file, int line, const char *call) {
  char fn[96];
  call_name(call, fn, sizeof fn);
  pv_status status = PV_ERR_BACKEND;
  if (st == CUBLAS_STATUS_ALLOC_FAILED) status = PV_ERR_OUT_OF_MEMORY;
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) status = PV_ERR_UNSUPPORTED;
  return fail_at(status, file, line, "%s: %s (cublasStatus %d)", fn, cublasGetStatusString(st),
                 (int)st);
}

#define PV_CUDNN(call)                                                   \
  do {                                                                   \
    cudnnStatus_t pv_cs_ = (call);                                       \
    if (pv_cs_ != CUDNN_STATUS_SUCCESS)                                  \
      return ::pvcuda::nn::cudnn_fail(pv_cs_, __FILE__, __LINE__, #call); \
  } while (0)

#define PV_CUBLAS(call)                                                   \
  do {                                                                    \
    cublasStatus_t pv_bs_ = (call);                                       \
    if (pv_bs_ != CUBLAS_STATUS_SUCCESS)                                  \
      return ::pvcuda::nn::cublas_fail(pv_bs_, __FILE__, __LINE__, #call); \
  } while (0)

// ---- per-context state -------------------------------------------------------------

enum ConvPass { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
const char *kPassNames[] = {"forward", "backward data", "backward filter"};

struct ConvKey {
  int pass;
  pv_dtype dtype;
  int64_t n, h, w, c, k, r, s, stride, pad;
  bool operator==(const ConvKey &o) const {
    return pass == o.pass && dtype == o.dtype && n == o.n && h == o.h && w == o.w &&
           c == o.c && k == o.k && r == o.r && s == o.s && stride == o.stride && pad == o.pad;
  }
};

struct ConvKeyHash {
  size_t operator()(const ConvKey &key) const {
    const int64_t v[] = {key.pass, key.dtype, key.n, key.h, key.w, key.c,
                         key.k, key.r, key.s, key.stride, key.pad};
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (int64_t x : v) h = (h ^ (uint64_t)x) * 1099511628211ull;
    return (size_t)h;
  }
};

struct ConvAlgo {
  int algo;
  cudnnMathType_t math;
  size_t workspace;
};

struct NnState {
  std::mutex mu;  // held through each op: the handles and the cache
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  std::unordered_map<ConvKey, ConvAlgo, ConvKeyHash> algos;
};

std::mutex g_state_mu;  // guards creating a context's state

void release_state(Context *ctx) {
  NnState *s = static_cast<NnState *>(ctx->nn);
  if (!s) return;
  cudaSetDevice(ctx->device);
  if (s->cudnn) cudnnDestroy(s->cudnn);
  if (s->cublas) cublasDestroy(s->cublas);
  delete s;
  ctx->nn = nullptr;
  ctx->release_nn = nullptr;
}

// The context's state with the handle an op needs, made at first use:
// cudnnCreate loads cuDNN's sub-libraries and takes a moment, and a run
// without convolutions never pays it.
pv_status get_state(Context *ctx, bool cudnn, NnState **out) {
  std::lock_guard<std::mutex> lock(g_state_mu);
  if (!ctx->nn) {
    NnState *fresh = new (std::nothrow) NnState();
    if (!fresh) return PV_FAIL(PV_ERR_OUT_OF_MEMORY, "cuda: out of host memory");
    ctx->nn = fresh;
    ctx->release_nn = release_state;
  }
  NnState *s = static_cast<NnState *>(ctx->nn);
  if (cudnn && !s->cudnn) {
    cudnnHandle_t h;
    PV_CUDNN(cudnnCreate(&h));
    const cudnnStatus_t st = cudnnSetStream(h, ctx->stream);
    if (st != CUDNN_STATUS_SUCCESS) {
      cudnnDestroy(h);
      return cudnn_fail(st, __FILE__, __LINE__, "cudnnSetStream");
    }
    s->cudnn = h;
  }
  if (!cudnn && !s->cublas) {
    cublasHandle_t h;
    PV_CUBLAS(cublasCreate(&h));
    const cublasStatus_t st = cublasSetStream(h, ctx->stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(h);
      return cublas_fail(st, __FILE__, __LINE__, "cublasSetStream");
    }
    s->cublas = h;
  }
  *out = s;
  return PV_OK;
}

// ---- convolution: cuDNN ------------------------------------------------------------

// The four descriptors of one convolution, destroyed on every way out.
struct ConvDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  ConvDescs() = default;
  ConvDescs(const ConvDescs &) = delete;
  ConvDescs &operator=(const ConvDescs &) = delete;
  ~ConvDescs() {
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
  }
};

cudnnDataType_t cudnn_type(pv_dtype dt) {
  return dt == PV_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

// x [n, h, w, c] and y [n, p, q, k] as NHWC tensors, w [k, r, s, c] as an
// NHWC filter (cuDNN's KRSC), cross-correlation as PyTorch, fp32
// accumulation. bf16 data with fp32 compute is cuDNN's
// PSEUDO_BFLOAT16_CONFIG.
pv_status describe(const pv_conv2d_args *a, ConvDescs *d) {
  const cudnnDataType_t dt = cudnn_type(a->act_dtype);
  PV_CUDNN(cudnnCreateTensorDescriptor(&d->x));
  PV_CUDNN(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NHWC, dt, (int)a->n, (int)a->c,
                                      (int)a->h, (int)a->w));
  PV_CUDNN(cudnnCreateTensorDescriptor(&d->y));
  PV_CUDNN(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NHWC, dt, (int)a->n, (int)a->k,
                                      (int)a->p, (int)a->q));
  PV_CUDNN(cudnnCreateFilterDescriptor(&d->w));
  PV_CUDNN(cudnnSetFilter4dDescriptor(d->w, dt, CUDNN_TENSOR_NHWC, (int)a->k, (int)a->c,
                                      (int)a->r, (int)a->s));
  PV_CUDNN(cudnnCreateConvolutionDescriptor(&d->conv));
  PV_CUDNN(cudnnSetConvolution2dDescriptor(d->conv, (int)a->pad, (int)a->pad, (int)a->stride,
                                           (int)a->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                           CUDNN_DATA_FLOAT));
  // cuDNN's output size must be the one the core derived.
  int on, oc, oh, ow;
  PV_CUDNN(cudnnGetConvolution2dForwardOutputDim(d->conv, d->x, d->w, &on, &oc, &oh, &ow));
  if (on != a->n || oc != a->k || oh != a->p || ow != a->q)
    return PV_FAIL(PV_ERR_INTERNAL, "conv2d: cuDNN makes y [%d, %d, %d, %d], the core "
                   "[%lld, %lld, %lld, %lld]", on, oh, ow, oc, (long long)a->n,
                   (long long)a->p, (long long)a->q, (long long)a->k);
  return PV_OK;
}

// Index of the algorithm to use among cuDNN's heuristic results (fastest
// first), or -1. float32 takes FMA math only, falling back to default
// math (which may use TF32) when cuDNN lists nothing else; backward
// passes prefer deterministic algorithms. A lower rank wins; the first of
// a rank is the fastest.
template <typename Perf>
int pick(const Perf *perf, int count, bool f32, bool deterministic) {
  int best = -1, best_rank = INT_MAX;
  for (int i = 0; i < count; i++) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > kMaxWorkspace) continue;
    int rank = 0;
    if (f32) {
      if (perf[i].mathType == CUDNN_DEFAULT_MATH)
        rank += 4;
      else if (perf[i].mathType != CUDNN_FMA_MATH)
        continue;
    }
    if (deterministic && perf[i].determinism != CUDNN_DETERMINISTIC) rank += 1;
    if (rank < best_rank) best = i, best_rank = rank;
  }
  return best;
}

template <typename Perf>
void take(const Perf &p, ConvAlgo *out, bool *det) {
  out->algo = (int)p.algo;
  out->math = p.mathType;
  *det = p.determinism == CUDNN_DETERMINISTIC;
}

// The algorithm for this pass and shape: from the cache, or chosen now
// by cuDNN's heuristics and its workspace sized. Leaves d->conv set to the
// algorithm's math type.
pv_status choose(NnState *s, ConvPass pass, const pv_conv2d_args *a, ConvDescs *d,
                 ConvAlgo *out) {
  const ConvKey key = {pass, a->act_dtype, a->n, a->h, a->w, a->c, a->k, a->r, a->s,
                       a->stride, a->pad};
  auto it = s->algos.find(key);
  if (it != s->algos.end()) {
    *out = it->second;
    PV_CUDNN(cudnnSetConvolutionMathType(d->conv, out->math));
    return PV_OK;
  }
  const bool f32 = a->act_dtype == PV_F32;
  PV_CUDNN(cudnnSetConvolutionMathType(d->conv, f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  int count = 0, idx = -1;
  bool det = true;
  ConvAlgo c = {};
  if (pass == kForward) {
    cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
    PV_CUDNN(cudnnGetConvolutionForwardAlgorithm_v7(s->cudnn, d->x, d->w, d->conv, d->y,
                                                    kMaxAlgos, &count, perf));
    if ((idx = pick(perf, count, f32, false)) >= 0) take(perf[idx], &c, &det);
  } else if (pass == kBackwardData) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMaxAlgos];
    PV_CUDNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(s->cudnn, d->w, d->y, d->conv, d->x,
                                                         kMaxAlgos, &count, perf));
    if ((idx = pick(perf, count, f32, true)) >= 0) take(perf[idx], &c, &det);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMaxAlgos];
    PV_CUDNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(s->cudnn, d->x, d->y, d->conv, d->w,
                                                           kMaxAlgos, &count, perf));
    if ((idx = pick(perf, count, f32, true)) >= 0) take(perf[idx], &c, &det);
  }
  if (idx < 0)
    return fail(PV_ERR_UNSUPPORTED, "conv2d %s: cuDNN offers no %s algorithm for x [%lld, "
                "%lld, %lld, %lld], w [%lld, %lld, %lld, %lld], stride %lld, pad %lld (%d "
                "candidates)", kPassNames[pass], dtype_name(a->act_dtype), (long long)a->n,
                (long long)a->h, (long long)a->w, (long long)a->c, (long long)a->k,
                (long long)a->r, (long long)a->s, (long long)a->c, (long long)a->stride,
                (long long)a->pad, count);

  // The workspace at the algorithm's own math type.
  PV_CUDNN(cudnnSetConvolutionMathType(d->conv, c.math));
  if (pass == kForward)
    PV_CUDNN(cudnnGetConvolutionForwardWorkspaceSize(
        s->cudnn, d->x, d->w, d->conv, d->y, (cudnnConvolutionFwdAlgo_t)c.algo, &c.workspace));
  else if (pass == kBackwardData)
    PV_CUDNN(cudnnGetConvolutionBackwardDataWorkspaceSize(
        s->cudnn, d->w, d->y, d->conv, d->x, (cudnnConvolutionBwdDataAlgo_t)c.algo,
        &c.workspace));
  else
    PV_CUDNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(
        s->cudnn, d->x, d->y, d->conv, d->w, (cudnnConvolutionBwdFilterAlgo_t)c.algo,
        &c.workspace));
  const pv_log_level level =
      (!det || (f32 && c.math != CUDNN_FMA_MATH)) ? PV_LOG_WARN : PV_LOG_DEBUG;
  log_msg(level, "cuda: conv2d %s %s x [%lld, %lld, %lld, %lld] w [%lld, %lld, %lld, %lld] "
          "stride %lld pad %lld: cuDNN algorithm %d, math type %d%s%s, workspace %zu bytes",
          kPassNames[pass], dtype_name(a->act_dtype), (long long)a->n, (long long)a->h,
          (long long)a->w, (long long)a->c, (long long)a->k, (long long)a->r, (long long)a->s,
          (long long)a->c, (long long)a->stride, (long long)a->pad, c.algo, (int)c.math,
          det ? "" : ", not deterministic",
          f32 && c.math != CUDNN_FMA_MATH ? ", may round float32 to TF32" : "", c.workspace);
  s->algos[key] = c;
  *out = c;
  return PV_OK;
}

pv_status conv_check(const char *op, const pv_conv2d_args *a) {
  PV_NN_TRY(check_act(op, a->act_dtype));
  PV_NN_TRY(check_param(op, a->param_dtype));
  if (a->n * a->h * a->w * a->c > INT_MAX || a->n * a->p * a->q * a->k > INT_MAX ||
      a->k * a->r * a->s * a->c > INT_MAX)
    return fail(PV_ERR_UNSUPPORTED, "%s: a tensor of 2^31 elements or more (x [%lld, %lld, "
                "%lld, %lld], y [%lld, %lld, %lld, %lld]) is beyond cuDNN's 4-D descriptors; "
                "split the batch", op, (long long)a->n, (long long)a->h, (long long)a->w,
                (long long)a->c, (long long)a->n, (long long)a->p, (long long)a->q,
                (long long)a->k);
  return PV_OK;
}

int64_t act_size(pv_dtype dt) { return dt == PV_BF16 ? 2 : 4; }

// bf16 activations multiply a bf16 copy of the float32 weights.
pv_status weights_for(Context *ctx, const pv_conv2d_args *a, Scratch *copy, const void **w) {
  *w = a->w_ptr;
  if (a->act_dtype != PV_BF16) return PV_OK;
  const int64_t count = a->k * a->r * a->s * a->c;
  PV_NN_TRY(copy->alloc(count * 2, __FILE__, __LINE__));
  PV_NN_TRY(convert(ctx, static_cast<const float *>(a->w_ptr), copy->at<bf16>(0), count));
  *w = copy->ptr;
  return PV_OK;
}

pv_status conv_forward(Context *ctx, const pv_conv2d_args *a) {
  const char *op = "conv2d_forward";
  PV_NN_TRY(conv_check(op, a));
  const int64_t ycount = a->n * a->p * a->q * a->k;
  if (ycount == 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  if (a->c == 0) {  // a sum over nothing
    PV_CUDA(cudaMemsetAsync(a->y_ptr, 0, (size_t)(ycount * act_size(a->act_dtype)),
                            ctx->stream));
    return PV_OK;
  }
  NnState *s;
  PV_NN_TRY(get_state(ctx, true, &s));
  std::lock_guard<std::mutex> lock(s->mu);

  // Describe, pick the algorithm, size the workspace, execute.
  ConvDescs d;
  PV_NN_TRY(describe(a, &d));
  ConvAlgo algo;
  PV_NN_TRY(choose(s, kForward, a, &d, &algo));
  Scratch wcopy(ctx), ws(ctx);
  const void *w;
  PV_NN_TRY(weights_for(ctx, a, &wcopy, &w));
  PV_NN_TRY(ws.alloc((int64_t)algo.workspace, __FILE__, __LINE__));
  const float one = 1.f, zero = 0.f;
  PV_CUDNN(cudnnConvolutionForward(s->cudnn, &one, d.x, a->x_ptr, d.w, w, d.conv,
                                   (cudnnConvolutionFwdAlgo_t)algo.algo, ws.ptr, algo.workspace,
                                   &zero, d.y, a->y_ptr));
  return PV_OK;
}

pv_status conv_backward(Context *ctx, const pv_conv2d_args *a) {
  const char *op = "conv2d_backward";
  PV_NN_TRY(conv_check(op, a));
  const int64_t xcount = a->n * a->h * a->w * a->c, wcount = a->k * a->r * a->s * a->c;
  PV_CUDA(cudaSetDevice(ctx->device));
  if (a->n * a->p * a->q * a->k == 0 || a->c == 0) {  // every gradient is a sum over nothing
    if (a->dx_ptr && xcount > 0)
      PV_CUDA(cudaMemsetAsync(a->dx_ptr, 0, (size_t)(xcount * act_size(a->act_dtype)),
                              ctx->stream));
    if (a->dw_ptr && wcount > 0)
      PV_CUDA(cudaMemsetAsync(a->dw_ptr, 0, (size_t)(wcount * 4), ctx->stream));
    return PV_OK;
  }
  NnState *s;
  PV_NN_TRY(get_state(ctx, true, &s));
  std::lock_guard<std::mutex> lock(s->mu);
  ConvDescs d;
  PV_NN_TRY(describe(a, &d));
  const float one = 1.f, zero = 0.f;

  if (a->dx_ptr) {  // dx = dy convolved with w, transposed
    ConvAlgo algo;
    PV_NN_TRY(choose(s, kBackwardData, a, &d, &algo));
    Scratch wcopy(ctx), ws(ctx);
    const void *w;
    PV_NN_TRY(weights_for(ctx, a, &wcopy, &w));
    PV_NN_TRY(ws.alloc((int64_t)algo.workspace, __FILE__, __LINE__));
    PV_CUDNN(cudnnConvolutionBackwardData(s->cudnn, &one, d.w, w, d.y, a->dy_ptr, d.conv,
                                          (cudnnConvolutionBwdDataAlgo_t)algo.algo, ws.ptr,
                                          algo.workspace, &zero, d.x, a->dx_ptr));
  }
  if (a->dw_ptr) {  // dw = correlation of x with dy; bf16 comes back through a copy
    ConvAlgo algo;
    PV_NN_TRY(choose(s, kBackwardFilter, a, &d, &algo));
    Scratch dwcopy(ctx), ws(ctx);
    void *dw = a->dw_ptr;
    if (a->act_dtype == PV_BF16) {
      PV_NN_TRY(dwcopy.alloc(wcount * 2, __FILE__, __LINE__));
      dw = dwcopy.ptr;
    }
    PV_NN_TRY(ws.alloc((int64_t)algo.workspace, __FILE__, __LINE__));
    PV_CUDNN(cudnnConvolutionBackwardFilter(s->cudnn, &one, d.x, a->x_ptr, d.y, a->dy_ptr,
                                            d.conv, (cudnnConvolutionBwdFilterAlgo_t)algo.algo,
                                            ws.ptr, algo.workspace, &zero, d.w, dw));
    if (a->act_dtype == PV_BF16)
      PV_NN_TRY(convert(ctx, dwcopy.at<bf16>(0), static_cast<float *>(a->dw_ptr), wcount));
  }
  return PV_OK;
}

// ---- linear: cuBLAS ----------------------------------------------------------------
//
// Row-major [a, b] is column-major [b, a] with leading dimension b, so
// each row-major product is issued as its transpose:
//   y [rows, out] = x w^T     ->  y^T = w x^T:   gemm(T, N, out, rows, in)
//   dx [rows, in] = dy w      ->  dx^T = w^T dy^T: gemm(N, N, in, rows, out)
//   dw [out, in] = dy^T x     ->  dw^T = x^T dy:  gemm(N, T, in, out, rows)

cudaDataType blas_type(pv_dtype dt) { return dt == PV_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// C (m x n, column-major) = op(A) op(B), fp32 accumulation.
pv_status gemm(NnState *s, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
               int64_t k, const void *A, cudaDataType at, int64_t lda, const void *B,
               cudaDataType bt, int64_t ldb, void *C, cudaDataType ct, int64_t ldc) {
  const float one = 1.f, zero = 0.f;
  PV_CUBLAS(cublasGemmEx(s->cublas, ta, tb, (int)m, (int)n, (int)k, &one, A, at, (int)lda, B,
                         bt, (int)ldb, &zero, C, ct, (int)ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
  return PV_OK;
}

pv_status linear_check(const char *op, const pv_linear_args *a) {
  PV_NN_TRY(check_act(op, a->act_dtype));
  PV_NN_TRY(check_param(op, a->param_dtype));
  if (a->rows > INT_MAX || a->in > INT_MAX || a->out > INT_MAX)
    return fail(PV_ERR_UNSUPPORTED, "%s: %lld rows of %lld -> %lld is beyond cuBLAS's 32-bit "
                "sizes", op, (long long)a->rows, (long long)a->in, (long long)a->out);
  return PV_OK;
}

// The weights as the product needs them: w itself, or a bf16 copy.
pv_status linear_weights(Context *ctx, const pv_linear_args *a, Scratch *copy, const void **w) {
  *w = a->w_ptr;
  if (a->act_dtype != PV_BF16) return PV_OK;
  PV_NN_TRY(copy->alloc(a->out * a->in * 2, __FILE__, __LINE__));
  PV_NN_TRY(convert(ctx, static_cast<const float *>(a->w_ptr), copy->at<bf16>(0),
                    a->out * a->in));
  *w = copy->ptr;
  return PV_OK;
}

// float32: the GEMM writes y and the bias is added in place, as the CPU.
// bf16: the GEMM writes fp32 into scratch, and one pass adds the bias and
// rounds once.
pv_status linear_forward(Context *ctx, const pv_linear_args *a) {
  const char *op = "linear_forward";
  PV_NN_TRY(linear_check(op, a));
  if (a->rows * a->out == 0) return PV_OK;
  PV_CUDA(cudaSetDevice(ctx->device));
  NnState *s;
  PV_NN_TRY(get_state(ctx, false, &s));
  std::lock_guard<std::mutex> lock(s->mu);
  const bool bf = a->act_dtype == PV_BF16;
  Scratch acc(ctx), wcopy(ctx);
  float *out = static_cast<float *>(a->y_ptr);
  if (bf) {
    PV_NN_TRY(acc.alloc(a->rows * a->out * 4, __FILE__, __LINE__));
    out = acc.at<float>(0);
  }
  if (a->in == 0) {
    PV_CUDA(cudaMemsetAsync(out, 0, (size_t)(a->rows * a->out * 4), ctx->stream));
  } else {
    const void *w;
    PV_NN_TRY(linear_weights(ctx, a, &wcopy, &w));
    const cudaDataType t = blas_type(a->act_dtype);
    PV_NN_TRY(gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, a->out, a->rows, a->in, w, t, a->in, a->x_ptr,
                   t, a->in, out, CUDA_R_32F, a->out));
  }
  const float *bias = static_cast<const float *>(a->b_ptr);
  if (bf) return bias_store(ctx, out, bias, static_cast<bf16 *>(a->y_ptr), a->rows, a->out);
  if (bias) return bias_store(ctx, out, bias, out, a->rows, a->out);
  return PV_OK;
}

pv_status linear_backward(Context *ctx, const pv_linear_args *a) {
  const char *op = "linear_backward";
  PV_NN_TRY(linear_check(op, a));
  PV_CUDA(cudaSetDevice(ctx->device));
  NnState *s;
  PV_NN_TRY(get_state(ctx, false, &s));
  std::lock_guard<std::mutex> lock(s->mu);
  const cudaDataType t = blas_type(a->act_dtype);
  if (a->dx_ptr && a->rows * a->in > 0) {
    if (a->out == 0) {
      PV_CUDA(cudaMemsetAsync(a->dx_ptr, 0, (size_t)(a->rows * a->in * act_size(a->act_dtype)),
                              ctx->stream));
    } else {
      Scratch wcopy(ctx);
      const void *w;
      PV_NN_TRY(linear_weights(ctx, a, &wcopy, &w));
      PV_NN_TRY(gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, a->in, a->rows, a->out, w, t, a->in,
                     a->dy_ptr, t, a->out, a->dx_ptr, t, a->in));
    }
  }
  if (a->out * a->in > 0) {  // dw in float32 straight from the bf16 or f32 product
    if (a->rows == 0)
      PV_CUDA(cudaMemsetAsync(a->dw_ptr, 0, (size_t)(a->out * a->in * 4), ctx->stream));
    else
      PV_NN_TRY(gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, a->in, a->out, a->rows, a->x_ptr, t, a->in,
                     a->dy_ptr, t, a->out, a->dw_ptr, CUDA_R_32F, a->in));
  }
  if (!a->db_ptr) return PV_OK;
  float *db = static_cast<float *>(a->db_ptr);
  if (a->act_dtype == PV_BF16)
    return column_sums(ctx, static_cast<const bf16 *>(a->dy_ptr), a->rows, a->out, db);
  return column_sums(ctx, static_cast<const float *>(a->dy_ptr), a->rows, a->out, db);
}

// ---- the table -----------------------------------------------------------------------

Context *as_ctx(void *p) { return static_cast<Context *>(p); }

#define PV_NN_ENTRY(name, args_type, impl)                             \
  pv_status name(void *ctx, const args_type *a) {                      \
    return guarded(#impl, [&] { return impl(as_ctx(ctx), a); });       \
  }

PV_NN_ENTRY(conv2d_forward_op, pv_conv2d_args, conv_forward)
PV_NN_ENTRY(conv2d_backward_op, pv_conv2d_args, conv_backward)
PV_NN_ENTRY(batchnorm_forward_op, pv_batchnorm_args, batchnorm_forward)
PV_NN_ENTRY(batchnorm_backward_op, pv_batchnorm_args, batchnorm_backward)
PV_NN_ENTRY(relu_forward_op, pv_eltwise_args, relu_forward)
PV_NN_ENTRY(relu_backward_op, pv_eltwise_args, relu_backward)
PV_NN_ENTRY(maxpool_forward_op, pv_pool_args, maxpool_forward)
PV_NN_ENTRY(maxpool_backward_op, pv_pool_args, maxpool_backward)
PV_NN_ENTRY(avgpool_forward_op, pv_pool_args, avgpool_forward)
PV_NN_ENTRY(avgpool_backward_op, pv_pool_args, avgpool_backward)
PV_NN_ENTRY(add_op, pv_eltwise_args, add)
PV_NN_ENTRY(linear_forward_op, pv_linear_args, linear_forward)
PV_NN_ENTRY(linear_backward_op, pv_linear_args, linear_backward)
PV_NN_ENTRY(optimizer_step_op, pv_optim_args, optimizer_step)

}  // namespace
}  // namespace nn
}  // namespace pvcuda

void pv_cuda_register_nn(pv_backend *table) {
  using namespace pvcuda::nn;
  table->conv2d_forward = conv2d_forward_op;
  table->conv2d_backward = conv2d_backward_op;
  table->batchnorm_forward = batchnorm_forward_op;
  table->batchnorm_backward = batchnorm_backward_op;
  table->relu_forward = relu_forward_op;
  table->relu_backward = relu_backward_op;
  table->maxpool_forward = maxpool_forward_op;
  table->maxpool_backward = maxpool_backward_op;
  table->avgpool_forward = avgpool_forward_op;
  table->avgpool_backward = avgpool_backward_op;
  table->add = add_op;
  table->linear_forward = linear_forward_op;
  table->linear_backward = linear_backward_op;
  table->optimizer_step = optimizer_step_op;
}
