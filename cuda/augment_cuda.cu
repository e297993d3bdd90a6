// augment_cuda.cu: the views on the GPU, one fused launch per group.
//
// One thread block makes one view (image i, view a) from start to end:
//   1. thread 0 draws the view's parameters (augment_params.h, the same
//      code and the same bits as the CPU) and its blur taps into shared
//      memory;
//   2. when contrast is applied, a sweep over the view's pixels computes
//      the mean gray level before contrast (a block reduction);
//   3. every output pixel is sampled (bilinear from the uint8 source, flip
//      folded into the column) and coloured (augment_pixel.h);
//   4. without blur it is solarised, normalised and stored: one read of
//      the source, one write of the output;
//   5. with blur, rows go through shared memory: a chunk of coloured rows,
//      blurred along x into a ring of rows, and the vertical taps read the
//      ring. The ring holds the chunk plus 2 x radius rows, so each row is
//      coloured and blurred along x once and nothing but the output is
//      written to global memory.
// Sweep 2 reads the source a second time (through L1/L2), the price of
// not keeping a whole 224 x 224 view on chip.
//
// Launch: on the context's stream, like every op of the backend; the
// per-call metadata (images, recipes: a few KB) goes through the
// context's counted, stream-ordered allocation. With POLYVIEW_CUDA_EMULATE
// the same code runs on the CPU through cuda/emulate.h
// (test_augment_emulated.cc).
#include "common.cuh"  // first: it picks CUDA or cuda/emulate.h

#ifndef POLYVIEW_CUDA_EMULATE
#include <cuda_bf16.h>
#define PV_AUG_SHARED(name) extern __shared__ float name[]
#define PV_AUG_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#else
// The emulator runs one block at a time: one host buffer is the block's
// dynamic shared memory.
#include <vector>
inline std::vector<float> &pv_aug_emulated_shared() {
  static std::vector<float> buf;
  return buf;
}
#define PV_AUG_SHARED(name) float *name = pv_aug_emulated_shared().data()
#define PV_AUG_LAUNCH(kernel, grid, block, smem, stream)            \
  pv_aug_emulated_shared().assign((size_t)(smem) / sizeof(float), NAN), \
      ::emu::launch(kernel, grid, block)
#endif

#include <cmath>
#include <cstring>
#include <vector>

#include "augment_cuda.h"
#include "augment_pixel.h"

namespace pvcuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChunkRows = 16;
// Shared memory the blur rows may take: 96 KB lets two blocks share an
// SM on sm_90 (228 KB) and one on sm_80.
constexpr int kSharedBudget = 96 * 1024;

struct ImageMeta {
  int64_t offset, height, width, channels, index;
};

struct KernelArgs {
  const uint8_t *pixels;
  const ImageMeta *images;         // [n]
  const pv_view_recipe *recipes;   // [views]
  const double *log_ratio;         // [2 views]
  int64_t first_view;
  int views;
  uint64_t seed, epoch;
  int oh, ow;
  int chunk_rows, ring_rows;       // blur rows in shared memory
  void *out;                       // [n, views, oh, ow, 3]
};

typedef pv_colour<pv_scalar_math> Colour;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ void store(float *o, float v) { *o = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *o, float v) { *o = __float2bfloat16_rn(v); }

// What every thread of a block needs about its view.
struct View {
  const pv_view_params *p;
  const uint8_t *src;  // the crop's top-left pixel
  int64_t row_bytes, channels;
  int oh, ow;
  float scale[3], bias[3];
};

// The bilinear sample of output pixel (y, x) in [0, 1].
__device__ __forceinline__ void sample(const View &v, int y, int x, float &r, float &g,
                                       float &b) {
  const pv_view_params &p = *v.p;
  int64_t y0, y1, x0, x1;
  float fy, fx;
  pv_bilinear_taps(y, p.crop_h, v.oh, &y0, &y1, &fy);
  pv_bilinear_taps(p.flip ? v.ow - 1 - x : x, p.crop_w, v.ow, &x0, &x1, &fx);
  const uint8_t *s0 = v.src + y0 * v.row_bytes, *s1 = v.src + y1 * v.row_bytes;
  const int64_t c = v.channels;
  x0 *= c;
  x1 *= c;
  r = pv_bilerp(s0[x0], s0[x1], s1[x0], s1[x1], fx, fy);
  if (c == 1) {
    g = b = r;
    return;
  }
  g = pv_bilerp(s0[x0 + 1], s0[x1 + 1], s1[x0 + 1], s1[x1 + 1], fx, fy);
  b = pv_bilerp(s0[x0 + 2], s0[x1 + 2], s1[x0 + 2], s1[x1 + 2], fx, fy);
}

// Sampled, jittered and grayscaled: the pixel before blur.
__device__ __forceinline__ void colour(const View &v, int y, int x, float mean, float &r,
                                       float &g, float &b) {
  sample(v, y, x, r, g, b);
  Colour::jitter(r, g, b, *v.p, 0, v.p->jitter_ops, mean);
  Colour::grayscale(r, g, b, *v.p);
}

template <typename OutT>
__device__ __forceinline__ void finish_store(const View &v, OutT *out, float r, float g,
                                             float b) {
  store(out, Colour::finish(r, *v.p, v.scale[0], v.bias[0]));
  store(out + 1, Colour::finish(g, *v.p, v.scale[1], v.bias[1]));
  store(out + 2, Colour::finish(b, *v.p, v.scale[2], v.bias[2]));
}

// The sum of x over the block, returned to every thread.
__device__ float block_sum(float x, float *scratch) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < (int)(blockDim.x / 32); w++) total += scratch[w];
  __syncthreads();
  return total;
}

// Step 5: the blurred view through shared memory (see the file comment).
template <typename OutT>
__device__ void blur_view(const View &v, const KernelArgs &k, const float *taps, int radius,
                          float mean, OutT *out) {
  PV_AUG_SHARED(rows);
  const int row_len = v.ow * 3, n_taps = 2 * radius + 1;
  float *chunk = rows;                                // [chunk_rows][row_len]
  float *ring = rows + k.chunk_rows * row_len;       // [ring_rows][row_len]
  int next = 0;  // rows [0, next) are in the ring
  for (int y0 = 0; y0 < v.oh; y0 += k.chunk_rows) {
    const int y_end = imin(v.oh, y0 + k.chunk_rows);
    const int need = imin(v.oh, y_end + radius);
    while (next < need) {
      const int cnt = imin(k.chunk_rows, need - next);
      for (int q = threadIdx.x; q < cnt * v.ow; q += blockDim.x) {
        const int row = q / v.ow, x = q % v.ow;
        float *px = chunk + row * row_len + 3 * x;
        colour(v, next + row, x, mean, px[0], px[1], px[2]);
      }
      __syncthreads();
      for (int q = threadIdx.x; q < cnt * row_len; q += blockDim.x) {
        const int row = q / row_len, x = (q % row_len) / 3, c = q % 3;
        const float *in = chunk + row * row_len + c;
        float acc = 0.0f;
        for (int t = 0; t < n_taps; t++)
          acc += taps[t] * in[3 * pv_reflect(x + t - radius, v.ow)];
        ring[((next + row) % k.ring_rows) * row_len + 3 * x + c] = acc;
      }
      __syncthreads();
      next += cnt;
    }
    for (int q = threadIdx.x; q < (y_end - y0) * v.ow; q += blockDim.x) {
      const int y = y0 + q / v.ow, x = q % v.ow;
      float acc[3] = {0.0f, 0.0f, 0.0f};
      for (int t = 0; t < n_taps; t++) {
        const float *in =
            ring + (pv_reflect(y + t - radius, v.oh) % k.ring_rows) * row_len + 3 * x;
        acc[0] += taps[t] * in[0];
        acc[1] += taps[t] * in[1];
        acc[2] += taps[t] * in[2];
      }
      finish_store(v, out + ((int64_t)y * v.ow + x) * 3, acc[0], acc[1], acc[2]);
    }
    __syncthreads();  // the ring's next rows overwrite what this chunk read
  }
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads) augment_kernel(KernelArgs k) {
  __shared__ pv_view_params params;
  __shared__ float taps[PV_BLUR_MAX_KERNEL];
  __shared__ float scratch[32];
  __shared__ int radius;
  const int64_t task = blockIdx.x;
  const int64_t i = task / k.views;
  const int a = (int)(task % k.views);
  const ImageMeta im = k.images[i];
  const pv_view_recipe &rec = k.recipes[a];

  // 1. Parameters and taps, drawn once per view.
  if (threadIdx.x == 0) {
    pv_sample_view(&rec, k.log_ratio[2 * a], k.log_ratio[2 * a + 1], k.seed, k.epoch,
                   (uint64_t)im.index, (uint32_t)(k.first_view + a), im.height, im.width,
                   &params);
    radius = params.blur ? pv_blur_taps(params.blur_kernel, params.blur_sigma, taps) : 0;
  }
  __syncthreads();

  View v;
  v.p = &params;
  v.channels = im.channels;
  v.row_bytes = im.width * im.channels;
  v.src = k.pixels + im.offset + params.crop_y * v.row_bytes + params.crop_x * im.channels;
  v.oh = k.oh;
  v.ow = k.ow;
  for (int c = 0; c < 3; c++) {
    v.scale[c] = (float)(1.0 / rec.std[c]);
    v.bias[c] = (float)(-rec.mean[c] / rec.std[c]);
  }
  const int npx = k.oh * k.ow;
  OutT *out = static_cast<OutT *>(k.out) + task * npx * 3;

  // 2. The mean gray level before contrast, when contrast is applied.
  float mean = 0.0f;
  const int cpos = pv_contrast_position(&params);
  if (cpos >= 0) {
    float sum = 0.0f;
    for (int q = threadIdx.x; q < npx; q += blockDim.x) {
      float r, g, b;
      sample(v, q / k.ow, q % k.ow, r, g, b);
      Colour::jitter(r, g, b, params, 0, cpos, 0.0f);
      sum += Colour::gray(r, g, b);
    }
    mean = block_sum(sum, scratch) / (float)npx;
  }

  // 3-5. Colour, then store or blur.
  if (params.blur) {
    blur_view(v, k, taps, radius, mean, out);
    return;
  }
  for (int q = threadIdx.x; q < npx; q += blockDim.x) {
    float r, g, b;
    colour(v, q / k.ow, q % k.ow, mean, r, g, b);
    finish_store(v, out + (int64_t)q * 3, r, g, b);
  }
}

// The largest dynamic shared memory a block may have on the current GPU,
// less the kernel's static shared memory (with room).
pv_status shared_limit(Context *ctx, int *bytes) {
#ifndef POLYVIEW_CUDA_EMULATE
  PV_CUDA(cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx->device));
#else
  (void)ctx;
  *bytes = 227 * 1024;  // sm_90's
#endif
  *bytes -= 4096;
  return PV_OK;
}

template <typename OutT>
pv_status launch(const KernelArgs &k, int64_t blocks, int smem, cudaStream_t stream) {
#ifndef POLYVIEW_CUDA_EMULATE
  if (smem > 48 * 1024)
    PV_CUDA(cudaFuncSetAttribute(augment_kernel<OutT>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
#endif
  PV_AUG_LAUNCH(augment_kernel<OutT>, (unsigned)blocks, kThreads, smem, stream)(k);
  PV_LAUNCHED("augment_kernel");
  return PV_OK;
}

// Rows of blur in shared memory for views of width ow whose widest blur
// has max_radius (-1: no view blurs): a chunk, and a ring of chunk + 2
// radius rows. Sets *smem to their bytes.
pv_status blur_rows(Context *ctx, int64_t ow, int max_radius, int *chunk_rows, int *ring_rows,
                    int *smem) {
  *chunk_rows = *ring_rows = *smem = 0;
  if (max_radius < 0) return PV_OK;
  int limit = 0;
  pv_status st = shared_limit(ctx, &limit);
  if (st != PV_OK) return st;
  const int64_t row_bytes = ow * 3 * (int64_t)sizeof(float);
  const int64_t budget = limit < kSharedBudget ? limit : kSharedBudget;
  int rows = kMaxChunkRows;
  while (rows > 1 && (2 * rows + 2 * max_radius) * row_bytes > budget) rows--;
  const int64_t need = (2 * rows + 2 * max_radius) * row_bytes;
  if (need > limit)
    return fail(PV_ERR_UNSUPPORTED,
                "augment: blurring %lld-pixel-wide views with %d taps needs %lld bytes of "
                "shared memory per block, this GPU offers %d", (long long)ow,
                2 * max_radius + 1, (long long)need, limit);
  *chunk_rows = rows;
  *ring_rows = rows + 2 * max_radius;
  *smem = (int)need;
  return PV_OK;
}

// Frees the metadata when the op returns, whatever the path.
struct Metadata {
  Context *ctx;
  void *ptr = nullptr;
  ~Metadata() { ctx_free(ctx, ptr); }
};

pv_status augment(void *vctx, const pv_augment_args *a) {
  Context *ctx = static_cast<Context *>(vctx);
  if (a->n * a->views > 0x7fffffff)
    return fail(PV_ERR_UNSUPPORTED, "augment: %lld views in one call, the GPU takes 2^31 - 1",
                (long long)(a->n * a->views));
  PV_CUDA(cudaSetDevice(ctx->device));
  const cudaStream_t stream = ctx->stream;

  int max_radius = -1;
  for (int64_t v = 0; v < a->views; v++)
    if (a->recipes[v].blur_p > 0 && (a->recipes[v].blur_kernel - 1) / 2 > max_radius)
      max_radius = (int)((a->recipes[v].blur_kernel - 1) / 2);
  int chunk_rows, ring_rows, smem;
  pv_status st = blur_rows(ctx, a->out_w, max_radius, &chunk_rows, &ring_rows, &smem);
  if (st != PV_OK) return st;

  // Metadata to the device: images, recipes, log ratios in one buffer.
  const size_t img_bytes = sizeof(ImageMeta) * a->n;
  const size_t rec_bytes = sizeof(pv_view_recipe) * a->views;
  const size_t total = img_bytes + rec_bytes + sizeof(double) * 2 * a->views;
  std::vector<unsigned char> host(total);
  ImageMeta *meta = reinterpret_cast<ImageMeta *>(host.data());
  for (int64_t i = 0; i < a->n; i++)
    meta[i] = {a->offset[i], a->height[i], a->width[i], a->channels[i], a->index[i]};
  memcpy(host.data() + img_bytes, a->recipes, rec_bytes);
  memcpy(host.data() + img_bytes + rec_bytes, a->log_ratio, sizeof(double) * 2 * a->views);
  Metadata dev{ctx};
  st = ctx_alloc(ctx, (int64_t)total, &dev.ptr, __FILE__, __LINE__);
  if (st != PV_OK) return st;
  // From pageable memory the copy has read `host` when it returns.
  PV_CUDA(cudaMemcpyAsync(dev.ptr, host.data(), total, cudaMemcpyHostToDevice, stream));

  KernelArgs k;
  const char *base = static_cast<const char *>(dev.ptr);
  k.pixels = a->pixels_ptr;
  k.images = reinterpret_cast<const ImageMeta *>(base);
  k.recipes = reinterpret_cast<const pv_view_recipe *>(base + img_bytes);
  k.log_ratio = reinterpret_cast<const double *>(base + img_bytes + rec_bytes);
  k.first_view = a->first_view;
  k.views = (int)a->views;
  k.seed = a->seed;
  k.epoch = a->epoch;
  k.oh = (int)a->out_h;
  k.ow = (int)a->out_w;
  k.chunk_rows = chunk_rows;
  k.ring_rows = ring_rows;
  k.out = a->out_ptr;
  if (a->out_dtype == PV_BF16) return launch<__nv_bfloat16>(k, a->n * a->views, smem, stream);
  return launch<float>(k, a->n * a->views, smem, stream);
}

}  // namespace
}  // namespace pvcuda

void pv_cuda_register_augment(pv_backend *table) { table->augment = pvcuda::augment; }
