// loss_cuda.cu: the poly-view objectives on the GPU, fused so that the
// R x R similarity matrix S is never stored: workspace is O(R d + R M).
//
// It follows csrc/loss_cpu.cc (the readable specification) step by step:
// the same view-major layout (row q = b * np + i for view b of image i,
// np = N rounded up to the 64-row tile, width dp = d rounded up to 32,
// padding zero), the same three steps of objective_math.h, the same
// masking, the same G + G^T. What changes is who owns what: every kernel
// gives each output row to exactly one CTA and reduces in a fixed order,
// so a result repeats bit for bit and no float is ever added atomically.
// The price is that the tile S[I, J] is computed for I and again for J
// (R^2 d multiply-adds per pass instead of the CPU's half).
//
// Steps of one contrastive problem (suffstats runs M of them):
//   normalise_kernel  h -> z (fp32, and bf16 for the tensor-core path)
//   stats_kernel      Lv[i][a][b] and P[i][a][b] from tiles of S
//   terms_kernel      pv_image_terms per image -> K, coef, pos_g, loss
//   sum_kernel        the loss, summed in a fixed order in double
//   grad_kernel       dZ = (G + G^T) Z / tau from recomputed tiles
//   backward_kernel   dh = (dz - z <z, dz>) / ||h||, sample-major
//
// Two paths compute the tiles: float32 inputs use fp32 FMAs on CUDA cores
// (so results track the CPU's float32 closely); bfloat16 inputs use bf16
// tensor cores (wmma 16x16x16, fp32 accumulation). S, the LSEs and G stay
// fp32 on both; the loss is summed in double.
//
// Sizes: a CTA of 256 threads owns a 64 x 64 tile of S, staged in k-chunks
// of 32 columns; the gradient CTA owns 64 rows x 128 columns of dZ. Shared
// memory: 17 KB (stats), 37 KB (grad), so several CTAs fit an SM. Known
// costs, to measure before changing: S is computed for both (I, J) and
// (J, I) (2x the CPU's multiply-adds), again per 128-column slice of dZ
// when d > 128, and operands are staged without cp.async double buffering.
// terms_kernel inherits 2 KB of per-thread stack from pv_image_terms'
// fixed-size scratch arrays, which makes the driver reserve that much local
// memory for every resident thread of the GPU (~0.5 GB on an H200).
#include "common.cuh"  // first: it picks CUDA or cuda/emulate.h

#ifndef POLYVIEW_CUDA_EMULATE
#include <cuda_bf16.h>
#include <mma.h>
#include <nvtx3/nvToolsExt.h>
#define PV_KERNEL(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#else
#define PV_KERNEL(kernel, grid, block, stream) ::emu::launch(kernel, grid, block)
#endif

#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "objective_math.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "polyview's CUDA kernels need sm_80 or newer (bf16 tensor cores); set CMAKE_CUDA_ARCHITECTURES"
#endif

#ifndef POLYVIEW_CUDA_ARCHS
#define POLYVIEW_CUDA_ARCHS "unknown"
#endif

namespace pvcuda {
namespace {

namespace wmma = nvcuda::wmma;
typedef __nv_bfloat16 bf16;

constexpr int kTile = 64;      // rows per tile side, the CPU's kBlock
constexpr int kThreads = 256;  // threads of every tile kernel
constexpr int kChunk = 32;     // k-width of one step of the S product
constexpr int kSlice = 128;    // dZ columns one grad CTA owns
constexpr int kLdS = kTile + 4;     // fp32 S and G^T tiles, [row][col]
constexpr int kLdH = kChunk + 8;    // bf16 operand chunks, [row][k]
constexpr int kLdG = kTile + 8;     // bf16 G tiles, [row][col]
constexpr int kLdZ32 = kSlice + 4;  // fp32 Z slice chunk, [k][col]
constexpr int kLdZ16 = kSlice + 8;  // bf16 Z slice, [k][col]
constexpr float kLog2e = 1.4426950408889634f;

// Paddings keep rows 16-byte aligned (vector stores) and 32-byte aligned
// at every wmma fragment, and spread a column walk over the banks.
struct SimtOperands {
  float a[kChunk][kLdS];  // X[I] chunk, transposed: [k][row]
  float b[kChunk][kLdS];  // X[J] chunk, transposed: [k][col]
};
struct TensorOperands {
  bf16 a[kTile][kLdH];  // X[I] chunk: [row][k]
  bf16 b[kTile][kLdH];  // X[J] chunk: [col][k]
};

constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
// One shared region serves, in turn, the operand chunks of the S product,
// the S tile, and (grad_kernel) the slice of Z[J] that G multiplies.
constexpr size_t kRegionBytes =
    cmax(cmax(sizeof(SimtOperands), sizeof(TensorOperands)),
         cmax(sizeof(float) * kTile * kLdS,
              cmax(sizeof(float) * kChunk * kLdZ32, sizeof(bf16) * kTile * kLdZ16)));
constexpr size_t kGBytes = cmax(sizeof(float) * kTile * kLdS, 2 * sizeof(bf16) * kTile * kLdG);

// One contrastive problem in internal layout, passed to kernels by value.
struct Problem {
  pv_objective obj;
  int n, m, np;      // images, views, padded images
  int64_t dp;        // padded width
  float inv_tau;
  const float *x32;  // [m * np][dp]
  const bf16 *x16;   // [m * np][dp], tensor-core path only
  float *lv, *pos;   // [n][m][m]: (image, row view, column view)
  float *k, *coef, *pos_g;
  double *img_loss;  // [n]
  double *loss;      // the problem's loss, one double
  float *dx;         // [m * np][dp]; NULL: loss only
};

// Index of (image, row view, column view) in the [n][m][m] arrays; the M x M
// block of one image is what pv_image_terms reads and writes.
__device__ __forceinline__ int64_t vidx(const Problem &p, int i, int a, int b) {
  return ((int64_t)i * p.m + a) * p.m + b;
}

// exp through ex2.approx: ~2 ulp, and -inf -> 0 as masking needs.
__device__ __forceinline__ float fexp(float x) { return exp2f(x * kLog2e); }

// ---- tiles of S ----------------------------------------------------------------

// s[64][kLdS] = scale * X[row0 : +64] X[col0 : +64]^T with fp32 FMAs.
// Fast because each thread keeps a 4 x 4 block of S in registers and
// reads one float4 of A and four conflict-free floats of B per k; chunks
// of 32 columns of both operands are staged in shared memory. s overlays
// the operands, which are dead when it is written.
__device__ __forceinline__ void s_tile_simt(const float *__restrict__ x, int64_t dp,
                                            int64_t row0, int64_t col0, float scale,
                                            unsigned char *region) {
  SimtOperands &op = *reinterpret_cast<SimtOperands *>(region);
  float(*s)[kLdS] = reinterpret_cast<float(*)[kLdS]>(region);
  const int t = threadIdx.x, ty = t / 16, tx = t % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < dp; k0 += kChunk) {
#pragma unroll
    for (int u = 0; u < 2; u++) {  // 64 rows x 32 floats = 512 float4 per operand
      const int e = t + u * kThreads, r = e / 8, c = (e % 8) * 4;
      const float4 va = __ldg(reinterpret_cast<const float4 *>(x + (row0 + r) * dp + k0 + c));
      const float4 vb = __ldg(reinterpret_cast<const float4 *>(x + (col0 + r) * dp + k0 + c));
      op.a[c][r] = va.x, op.a[c + 1][r] = va.y, op.a[c + 2][r] = va.z, op.a[c + 3][r] = va.w;
      op.b[c][r] = vb.x, op.b[c + 1][r] = vb.y, op.b[c + 2][r] = vb.z, op.b[c + 3][r] = vb.w;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kChunk; k++) {
      const float4 av = *reinterpret_cast<const float4 *>(&op.a[k][ty * 4]);
      const float ar[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float bv = op.b[k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; i++) acc[i][j] = fmaf(ar[i], bv, acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) s[ty * 4 + i][tx + 16 * j] = acc[i][j] * scale;
}

// The same tile from bf16 rows on tensor cores: each of the 8 warps owns a
// 16 x 32 strip of S as two 16 x 16 fp32 accumulators; one uint4 per
// thread and operand stages a 64 x 32 chunk.
__device__ __forceinline__ void s_tile_tensor(const bf16 *__restrict__ x, int64_t dp,
                                              int64_t row0, int64_t col0, float scale,
                                              unsigned char *region) {
  TensorOperands &op = *reinterpret_cast<TensorOperands *>(region);
  float *s = reinterpret_cast<float *>(region);
  const int t = threadIdx.x, warp = t / 32, wr = warp / 2, wc = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.f);
  wmma::fill_fragment(acc[1], 0.f);
  const int r = t / 4, c = (t % 4) * 8;
  for (int64_t k0 = 0; k0 < dp; k0 += kChunk) {
    *reinterpret_cast<uint4 *>(&op.a[r][c]) =
        __ldg(reinterpret_cast<const uint4 *>(x + (row0 + r) * dp + k0 + c));
    *reinterpret_cast<uint4 *>(&op.b[r][c]) =
        __ldg(reinterpret_cast<const uint4 *>(x + (col0 + r) * dp + k0 + c));
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kChunk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, &op.a[wr * 16][kk], kLdH);
#pragma unroll
      for (int f = 0; f < 2; f++) {
        // B = X[J]^T: element (k, col) sits at b[col][k], i.e. column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, &op.b[wc * 32 + f * 16][kk], kLdH);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < 2; f++) {
#pragma unroll
    for (int e = 0; e < acc[f].num_elements; e++) acc[f].x[e] *= scale;
    wmma::store_matrix_sync(s + (wr * 16) * kLdS + wc * 32 + f * 16, acc[f], kLdS,
                            wmma::mem_row_major);
  }
}

template <bool kTensor>
__device__ __forceinline__ void s_tile(const Problem &p, int64_t row0, int64_t col0,
                                       unsigned char *region) {
  if constexpr (kTensor)
    s_tile_tensor(p.x16, p.dp, row0, col0, p.inv_tau, region);
  else
    s_tile_simt(p.x32, p.dp, row0, col0, p.inv_tau, region);
}

// ---- pass 1: per-row, per-view LSE over negatives and positive logits ----------

// Grid (row blocks, views): CTA (I, b) owns the 64 rows of block I against
// every column block of view b, so Lv[row][b] is finished in registers and
// written once: no merge, no atomics, and M times the CTAs of a
// one-CTA-per-row-block grid. Four threads share a row (16 columns each)
// and keep its online max-shifted sum, combined with two shuffles.
template <bool kTensor>
__global__ void __launch_bounds__(kThreads) stats_kernel(Problem p) {
  __shared__ __align__(128) unsigned char region[kRegionBytes];
  const float(*s)[kLdS] = reinterpret_cast<const float(*)[kLdS]>(region);
  const int bpv = p.np / kTile;
  const int blk = blockIdx.x, v2 = blockIdx.y;
  const int v1 = blk / bpv, i0 = (blk % bpv) * kTile;
  const int t = threadIdx.x, rr = t / 4, part = t % 4;
  const int i = i0 + rr;
  const bool live = i < p.n;

  float mx = -INFINITY, sum = 0.f;
  for (int jb = 0; jb < bpv; jb++) {
    const int j0 = jb * kTile;
    s_tile<kTensor>(p, (int64_t)blk * kTile, (int64_t)(v2 * bpv + jb) * kTile, region);
    __syncthreads();

    // Mask padding and the self/positive entry; record the positive.
    float v[16], tmax = -INFINITY;
#pragma unroll
    for (int e = 0; e < 16; e++) {
      const int c = part + 4 * e, j = j0 + c;
      float x = s[rr][c];
      if (j == i) {
        if (live) p.pos[vidx(p, i, v1, v2)] = v1 == v2 ? 0.f : x;
        x = -INFINITY;
      }
      if (j >= p.n) x = -INFINITY;
      v[e] = x;
      tmax = fmaxf(tmax, x);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));

    // Fold into the running LSE; an all-masked tile leaves it unchanged.
    const float mnew = fmaxf(mx, tmax);
    const float shift = mnew == -INFINITY ? 0.f : mnew;
    float psum = 0.f;
#pragma unroll
    for (int e = 0; e < 16; e++) psum += fexp(v[e] - shift);
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    sum = sum * fexp(mx - shift) + psum;
    mx = mnew;
    __syncthreads();  // the next tile overwrites s
  }
  if (live && part == 0) p.lv[vidx(p, i, v1, v2)] = mx + logf(sum);
}

// ---- per-image terms and the loss ------------------------------------------------

// One thread per image: O(M^2) float64 work, negligible next to the tiles.
__global__ void terms_kernel(Problem p, double big_k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const int64_t o = (int64_t)i * p.m * p.m;
  p.img_loss[i] = pv_image_terms<float>(p.obj, p.m, p.n, big_k, p.lv + o, p.pos + o, p.k + o,
                                        p.coef + o, p.pos_g + o);
}

// One CTA sums v[0 : n) in double: strided partial sums, then a tree of
// fixed shape, so the result does not depend on timing.
__global__ void __launch_bounds__(256) sum_kernel(const double *v, int n, double *out) {
  __shared__ double part[256];
  const int t = threadIdx.x;
  double acc = 0;
  for (int i = t; i < n; i += 256) acc += v[i];
  part[t] = acc;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (t < w) part[t] += part[t + w];
    __syncthreads();
  }
  if (t == 0) *out = part[0];
}

// ---- pass 3: dZ = (G + G^T) Z / tau --------------------------------------------

// G + G^T times a 64 x 128 slice of Z[J], accumulated over the k = 64
// columns of the tile. The fp32 path keeps a 4 x 8 block per thread in
// registers; the tensor path keeps four 16 x 16 fragments per warp and
// multiplies G split as hi + lo bf16 (two MMAs), which keeps G exact to
// about 2^-16 relative: G stays an fp32 quantity, only Z is bf16.
template <bool kTensor>
struct GradAcc;

template <>
struct GradAcc<false> {
  float v[4][8];
  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) v[i][j] = 0.f;
  }
  __device__ void add(const Problem &p, int64_t zrow0, int64_t c0, unsigned char *region,
                      const unsigned char *gbuf) {
    float(*z)[kLdZ32] = reinterpret_cast<float(*)[kLdZ32]>(region);
    const float(*gt)[kLdS] = reinterpret_cast<const float(*)[kLdS]>(gbuf);
    const int t = threadIdx.x, ty = t / 16, tx = t % 16;
    for (int kc = 0; kc < kTile; kc += kChunk) {
#pragma unroll
      for (int u = 0; u < 4; u++) {  // 32 rows x 128 floats = 1024 float4
        const int e = t + u * kThreads, r = e / 32, c = (e % 32) * 4;
        float4 val = make_float4(0.f, 0.f, 0.f, 0.f);
        if (c0 + c < p.dp)
          val = __ldg(reinterpret_cast<const float4 *>(p.x32 + (zrow0 + kc + r) * p.dp + c0 + c));
        *reinterpret_cast<float4 *>(&z[r][c]) = val;
      }
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < kChunk; k++) {
        const float4 g4 = *reinterpret_cast<const float4 *>(&gt[kc + k][ty * 4]);
        const float g[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
        for (int j = 0; j < 8; j++) {
          const float zv = z[k][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; i++) v[i][j] = fmaf(g[i], zv, v[i][j]);
        }
      }
      __syncthreads();
    }
  }
  __device__ void store(const Problem &p, int64_t row0, int64_t c0) {
    const int t = threadIdx.x, ty = t / 16, tx = t % 16;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int64_t col = c0 + tx + 16 * j;
        if (col < p.dp) p.dx[(row0 + ty * 4 + i) * p.dp + col] = v[i][j] * p.inv_tau;
      }
  }
};

template <>
struct GradAcc<true> {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> f[4];
  __device__ void zero() {
#pragma unroll
    for (int j = 0; j < 4; j++) wmma::fill_fragment(f[j], 0.f);
  }
  __device__ void add(const Problem &p, int64_t zrow0, int64_t c0, unsigned char *region,
                      const unsigned char *gbuf) {
    bf16(*z)[kLdZ16] = reinterpret_cast<bf16(*)[kLdZ16]>(region);
    const bf16(*ghi)[kLdG] = reinterpret_cast<const bf16(*)[kLdG]>(gbuf);
    const bf16(*glo)[kLdG] = ghi + kTile;
    const int t = threadIdx.x, warp = t / 32, wm = warp % 4, wn = warp / 4;
#pragma unroll
    for (int u = 0; u < 4; u++) {  // 64 rows x 128 bf16 = 1024 uint4
      const int e = t + u * kThreads, r = e / 16, c = (e % 16) * 8;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (c0 + c < p.dp)
        val = __ldg(reinterpret_cast<const uint4 *>(p.x16 + (zrow0 + r) * p.dp + c0 + c));
      *reinterpret_cast<uint4 *>(&z[r][c]) = val;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> ah, al;
      wmma::load_matrix_sync(ah, &ghi[wm * 16][kk], kLdG);
      wmma::load_matrix_sync(al, &glo[wm * 16][kk], kLdG);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(b, &z[kk][wn * 64 + j * 16], kLdZ16);
        wmma::mma_sync(f[j], ah, b, f[j]);
        wmma::mma_sync(f[j], al, b, f[j]);
      }
    }
  }
  __device__ void store(const Problem &p, int64_t row0, int64_t c0) {
    const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t col = c0 + wn * 64 + j * 16;  // dp is a multiple of 32
      if (col >= p.dp) continue;
#pragma unroll
      for (int e = 0; e < f[j].num_elements; e++) f[j].x[e] *= p.inv_tau;
      wmma::store_matrix_sync(p.dx + (row0 + wm * 16) * p.dp + col, f[j], (unsigned)p.dp,
                              wmma::mem_row_major);
    }
  }
};

// Grid (row blocks, 128-column slices of dZ): CTA (I, c) owns dZ[I][c]
// and walks every column block J, recomputing S[I, J] (the R x R matrix
// is never stored), forming G + G^T for the tile from per-row constants
// (the rows' K, coef, pos_g for view(J) and the columns' for view(I): the
// second term is the G^T contribution), and accumulating it times Z[J].
// Each dZ element is written once. A width over 128 recomputes S once per
// slice: that trade keeps the accumulator in registers.
template <bool kTensor>
__global__ void __launch_bounds__(kThreads, 2) grad_kernel(Problem p) {
  __shared__ __align__(128) unsigned char region[kRegionBytes];
  __shared__ __align__(128) unsigned char gbuf[kGBytes];
  __shared__ float rk[kTile], rc[kTile], rp[kTile], ck[kTile], cc[kTile], cp[kTile];
  const float(*s)[kLdS] = reinterpret_cast<const float(*)[kLdS]>(region);
  const int bpv = p.np / kTile, nblk = p.m * bpv;
  const int blk = blockIdx.x;
  const int64_t c0 = (int64_t)blockIdx.y * kSlice;
  const int v1 = blk / bpv, i0 = (blk % bpv) * kTile;
  const int t = threadIdx.x;

  GradAcc<kTensor> acc;
  acc.zero();
  for (int jblk = 0; jblk < nblk; jblk++) {
    const int v2 = jblk / bpv, j0 = (jblk % bpv) * kTile;
    if (t < kTile) {  // row constants, for the columns' view
      const int i = i0 + t;
      const bool ok = i < p.n;
      const int64_t e = ok ? vidx(p, i, v1, v2) : 0;
      rk[t] = ok ? p.k[e] : 0.f, rc[t] = ok ? p.coef[e] : 0.f, rp[t] = ok ? p.pos_g[e] : 0.f;
    } else if (t < 2 * kTile) {  // column constants, for the rows' view
      const int c = t - kTile, j = j0 + c;
      const bool ok = j < p.n;
      const int64_t e = ok ? vidx(p, j, v2, v1) : 0;
      ck[c] = ok ? p.k[e] : 0.f, cc[c] = ok ? p.coef[e] : 0.f, cp[c] = ok ? p.pos_g[e] : 0.f;
    }
    s_tile<kTensor>(p, (int64_t)blk * kTile, (int64_t)jblk * kTile, region);
    __syncthreads();

#pragma unroll 2
    for (int e = 0; e < 16; e++) {
      const int r = t / 4, c = t % 4 + 4 * e, i = i0 + r, j = j0 + c;
      float g = 0.f;
      if (i < p.n && j < p.n) {
        if (i == j) {
          g = v1 == v2 ? 0.f : rp[r] + cp[c];  // self, or positive both ways
        } else {
          const float sv = s[r][c];
          g = rc[r] * fexp(sv - rk[r]) + cc[c] * fexp(sv - ck[c]);
        }
      }
      if constexpr (kTensor) {
        bf16(*ghi)[kLdG] = reinterpret_cast<bf16(*)[kLdG]>(gbuf);
        const bf16 hi = __float2bfloat16_rn(g);
        ghi[r][c] = hi;
        ghi[kTile + r][c] = __float2bfloat16_rn(g - __bfloat162float(hi));
      } else {
        reinterpret_cast<float(*)[kLdS]>(gbuf)[c][r] = g;
      }
    }
    __syncthreads();
    acc.add(p, (int64_t)jblk * kTile, c0, region, gbuf);
    __syncthreads();  // the next tile overwrites region, gbuf and constants
  }
  acc.store(p, (int64_t)blk * kTile, c0);
}

// ---- into and out of the internal layout -----------------------------------------

__device__ __forceinline__ float load_h(const void *h, pv_dtype dt, int64_t e) {
  if (dt == PV_BF16) return __bfloat162float(static_cast<const bf16 *>(h)[e]);
  return static_cast<const float *>(h)[e];
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per internal row q: h [n][m][d] (sample-major) -> z32 (and z16)
// [m * np][dp] with padding rows and columns zero. The norm is summed in
// double like the CPU. A bad row is reported through *bad as
// (sample-major row) * 4 + kind, kind 1 not finite, 2 zero norm; the
// smallest code wins, which names the first bad row as the CPU does.
__global__ void normalise_kernel(const void *h, pv_dtype dt, int n, int m, int64_t d, int np,
                                 int64_t dp, float *z32, bf16 *z16, float *norms,
                                 unsigned long long *bad) {
  const int64_t q = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (q >= (int64_t)m * np) return;
  const int v = (int)(q / np), i = (int)(q % np);
  float *zr = z32 + q * dp;
  bf16 *hr = z16 ? z16 + q * dp : nullptr;
  double nrm = 0;
  bool ok = i < n;
  const int64_t src = ((int64_t)i * m + v) * d;
  if (ok) {
    double ss = 0;
    bool finite = true;
    for (int64_t t = lane; t < d; t += 32) {
      const float x = load_h(h, dt, src + t);
      finite = finite && isfinite(x);
      ss += (double)x * (double)x;
    }
    ss = warp_sum(ss);
    finite = __all_sync(0xffffffffu, finite);
    nrm = sqrt(ss);
    if (!finite || !(nrm > 0) || !isfinite(nrm)) {
      if (lane == 0)
        atomicMin(bad, (unsigned long long)((int64_t)i * m + v) * 4 + (finite ? 2 : 1));
      ok = false;
    }
  }
  if (lane == 0) norms[q] = ok ? (float)nrm : 0.f;
  for (int64_t t = lane; t < dp; t += 32) {
    const float val = ok && t < d ? (float)((double)load_h(h, dt, src + t) / nrm) : 0.f;
    zr[t] = val;
    if (hr) hr[t] = __float2bfloat16_rn(val);
  }
}

// One warp per sample-major row r = i * m + v: through the normalisation,
// dh = (dz - z <z, dz>) / ||h||, written as float32 or bfloat16. grad may
// be h itself: h is not read after normalise_kernel.
__global__ void backward_kernel(const float *z32, const float *dz, const float *norms, int n,
                                int m, int64_t d, int np, int64_t dp, void *grad, pv_dtype gdt) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= (int64_t)n * m) return;
  const int i = (int)(r / m), v = (int)(r % m);
  const int64_t q = (int64_t)v * np + i;
  const float *zr = z32 + q * dp, *gr = dz + q * dp;
  double dot = 0;
  for (int64_t t = lane; t < d; t += 32) dot += (double)zr[t] * (double)gr[t];
  dot = warp_sum(dot);
  const double inv = 1.0 / (double)norms[q];
  for (int64_t t = lane; t < d; t += 32) {
    const float val = (float)(((double)gr[t] - (double)zr[t] * dot) * inv);
    if (gdt == PV_BF16)
      static_cast<bf16 *>(grad)[r * d + t] = __float2bfloat16_rn(val);
    else
      static_cast<float *>(grad)[r * d + t] = val;
  }
}

// suffstats, view a: rows u_i = z_ia (first np rows) and T_i = mean over
// b != a of z_ib (next np rows), not renormalised, summed in view order in
// fp32 like the CPU. One thread per element of x [2 np][dp].
__global__ void suffstats_rows_kernel(const float *z32, int n, int m, int np, int64_t dp, int a,
                                      float inv_rest, float *x32, bf16 *x16) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= 2 * (int64_t)np * dp) return;
  const int row = (int)(e / dp);
  const int64_t t = e % dp;
  const int i = row < np ? row : row - np;
  float val = 0.f;
  if (i < n && row < np) {
    val = z32[((int64_t)a * np + i) * dp + t];
  } else if (i < n) {
    float acc = 0.f;
    for (int b = 0; b < m; b++)
      if (b != a) acc += z32[((int64_t)b * np + i) * dp + t];
    val = acc * inv_rest;
  }
  x32[e] = val;
  if (x16) x16[e] = __float2bfloat16_rn(val);
}

// suffstats, view a: dz[b][i] += w_b * dx, w = 1/M for b == a (from u_i)
// and 1/(M(M-1)) otherwise (from T_i). One thread per (image, column),
// views in order, so every element sees the CPU's sequence of additions.
__global__ void suffstats_scatter_kernel(const float *dx, int n, int m, int np, int64_t dp,
                                         int a, float w_own, float w_rest, float *dz) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (int64_t)n * dp) return;
  const int i = (int)(e / dp);
  const int64_t t = e % dp;
  const float du = dx[(int64_t)i * dp + t], drest = dx[((int64_t)np + i) * dp + t];
  for (int b = 0; b < m; b++) {
    float *dst = dz + ((int64_t)b * np + i) * dp + t;
    *dst += b == a ? w_own * du : w_rest * drest;
  }
}

// ---- host side ----------------------------------------------------------------

struct NvtxRange {
  explicit NvtxRange(const char *name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
};

const char *objective_name(pv_objective obj) {
  static const char *names[] = {"simclr", "multicrop", "gpvc", "apvc",
                                "suffstats", "mvinfonce", "mvdhel"};
  return obj >= 0 && obj < PV_OBJ_COUNT ? names[obj] : "unknown";
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }
unsigned grid_for(int64_t items, int per_block) {
  return (unsigned)((items + per_block - 1) / per_block);
}

// Hands out 256-byte-aligned pieces of one allocation. Run once with a
// NULL base to size it, then again on the real allocation.
struct Carver {
  char *base;
  size_t used = 0;
  template <typename T>
  T *take(int64_t count) {
    used = (used + 255) / 256 * 256;
    T *p = base ? reinterpret_cast<T *>(base + used) : nullptr;
    used += (size_t)count * sizeof(T);
    return p;
  }
};

// Counted workspace, freed (stream-ordered) on every way out.
struct Workspace {
  Context *ctx;
  void *ptr = nullptr;
  ~Workspace() { ctx_free(ctx, ptr); }
};

// Queues pass 1, the per-image terms, the loss sum and, when p.dx is set,
// pass 3 for one problem.
pv_status run_problem(Context *ctx, const Problem &p, bool tensor) {
  const cudaStream_t st = ctx->stream;
  const unsigned row_blocks = (unsigned)((int64_t)p.m * p.np / kTile);
  {
    NvtxRange range("loss pass 1: LSE over negatives");
    const dim3 grid(row_blocks, (unsigned)p.m);
    if (tensor)
      PV_KERNEL(stats_kernel<true>, grid, kThreads, st)(p);
    else
      PV_KERNEL(stats_kernel<false>, grid, kThreads, st)(p);
    PV_LAUNCHED("stats_kernel");
  }
  {
    NvtxRange range("loss pass 2: per-image terms");
    const double big_k = 2.0 * (double)p.inv_tau + 1.0;  // as the CPU
    PV_KERNEL(terms_kernel, grid_for(p.n, 64), 64, st)(p, big_k);
    PV_LAUNCHED("terms_kernel");
    PV_KERNEL(sum_kernel, 1, 256, st)(p.img_loss, p.n, p.loss);
    PV_LAUNCHED("sum_kernel");
  }
  if (!p.dx) return PV_OK;
  NvtxRange range("loss pass 3: (G + G^T) Z");
  const dim3 grid(row_blocks, grid_for(p.dp, kSlice));
  if (tensor)
    PV_KERNEL(grad_kernel<true>, grid, kThreads, st)(p);
  else
    PV_KERNEL(grad_kernel<false>, grid, kThreads, st)(p);
  PV_LAUNCHED("grad_kernel");
  return PV_OK;
}

// Device pointers of one loss evaluation, carved from one allocation.
struct Buffers {
  unsigned long long *bad;  // first bad row, see normalise_kernel
  double *slots;            // one loss per problem
  float *norms, *z32, *dz;
  bf16 *z16;
  float *lv, *pos, *k, *coef, *pos_g;  // one problem's [n][m'][m']
  double *img_loss;
  float *x32, *dx;  // suffstats: one view's [2 np][dp] problem
  bf16 *x16;
};

Buffers carve(Carver &cv, int64_t n, int64_t m, int64_t np, int64_t dp, bool tensor,
              bool grad, bool suff) {
  const int64_t rows = m * np, pm = suff ? 2 : m;  // views of one problem
  Buffers b;
  b.bad = cv.take<unsigned long long>(1);
  b.slots = cv.take<double>(m);
  b.norms = cv.take<float>(rows);
  b.z32 = cv.take<float>(rows * dp);
  b.z16 = tensor ? cv.take<bf16>(rows * dp) : nullptr;
  b.dz = grad ? cv.take<float>(rows * dp) : nullptr;
  b.lv = cv.take<float>(n * pm * pm);
  b.pos = cv.take<float>(n * pm * pm);
  b.k = cv.take<float>(n * pm * pm);
  b.coef = cv.take<float>(n * pm * pm);
  b.pos_g = cv.take<float>(n * pm * pm);
  b.img_loss = cv.take<double>(n);
  b.x32 = suff ? cv.take<float>(2 * np * dp) : nullptr;
  b.x16 = suff && tensor ? cv.take<bf16>(2 * np * dp) : nullptr;
  b.dx = suff && grad ? cv.take<float>(2 * np * dp) : nullptr;
  return b;
}

pv_status check_dtype(const char *name, const char *what, pv_dtype dt) {
  if (dt == PV_F32 || dt == PV_BF16) return PV_OK;
  return fail(PV_ERR_UNSUPPORTED, "%s: %s has dtype %s; the CUDA backend takes float32 or "
              "bfloat16", name, what, dtype_name(dt));
}

}  // namespace

pv_status check_kernel_image(Context *ctx) {
  cudaFuncAttributes attr;
  cudaError_t err = cudaFuncGetAttributes(&attr, stats_kernel<true>);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
    cudaGetLastError();
    return fail(PV_ERR_UNSUPPORTED,
                "cuda: GPU %d is sm_%d but this library holds kernels for CUDA architectures "
                "%s only (rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d)", ctx->device, ctx->sm,
                POLYVIEW_CUDA_ARCHS, ctx->sm);
  }
  PV_CUDA(err);
  return PV_OK;
}

pv_status loss(void *vctx, const pv_loss_args *a) {
  Context *ctx = static_cast<Context *>(vctx);
  const char *name = objective_name(a->objective);
  const bool grad = a->grad_ptr != nullptr;
  pv_status st = check_dtype(name, "h", a->h_dtype);
  if (st == PV_OK && grad) st = check_dtype(name, "grad", a->grad_dtype);
  if (st != PV_OK) return st;
  if (a->n > INT_MAX / 2 - kTile || a->m > PV_MAX_VIEWS)
    return fail(PV_ERR_UNSUPPORTED, "%s: N = %lld, M = %lld is beyond the CUDA backend's "
                "limits", name, (long long)a->n, (long long)a->m);
  PV_CUDA(cudaSetDevice(ctx->device));
  NvtxRange range(name);

  const int n = (int)a->n, m = (int)a->m;
  const int64_t d = a->d, np = round_up(n, kTile), dp = round_up(d, kChunk);
  const int64_t rows = m * np;
  const bool tensor = a->h_dtype == PV_BF16;
  const bool suff = a->objective == PV_OBJ_SUFFSTATS;
  const cudaStream_t stream = ctx->stream;

  // Workspace: O(R d) for z and dz, O(R M) for the per-row statistics.
  Carver sizing{nullptr};
  carve(sizing, n, m, np, dp, tensor, grad, suff);
  Workspace ws{ctx};
  st = ctx_alloc(ctx, (int64_t)sizing.used, &ws.ptr, __FILE__, __LINE__);
  if (st != PV_OK) return st;
  Carver cv{static_cast<char *>(ws.ptr)};
  const Buffers b = carve(cv, n, m, np, dp, tensor, grad, suff);
  PV_CUDA(cudaMemsetAsync(b.bad, 0xff, sizeof *b.bad, stream));

  {
    NvtxRange r("loss: normalise");
    PV_KERNEL(normalise_kernel, grid_for(rows, 8), 256, stream)(
        a->h_ptr, a->h_dtype, n, m, d, (int)np, dp, b.z32, b.z16, b.norms, b.bad);
    PV_LAUNCHED("normalise_kernel");
  }

  Problem p;
  p.n = n, p.np = (int)np, p.dp = dp;
  p.inv_tau = (float)(1.0 / a->tau);
  p.lv = b.lv, p.pos = b.pos, p.k = b.k, p.coef = b.coef, p.pos_g = b.pos_g;
  p.img_loss = b.img_loss;
  if (!suff) {
    p.obj = a->objective, p.m = m;
    p.x32 = b.z32, p.x16 = b.z16, p.loss = b.slots, p.dx = b.dz;
    st = run_problem(ctx, p, tensor);
    if (st != PV_OK) return st;
  } else {
    // M two-"view" NT-Xent problems, one per view a, run in turn.
    if (grad) PV_CUDA(cudaMemsetAsync(b.dz, 0, sizeof(float) * rows * dp, stream));
    const float inv_rest = (float)(1.0 / (double)(m - 1));
    const float w_own = (float)(1.0 / (double)m), w_rest = w_own * inv_rest;
    p.obj = PV_OBJ_SIMCLR, p.m = 2;
    p.x32 = b.x32, p.x16 = b.x16, p.dx = b.dx;
    for (int v = 0; v < m; v++) {
      PV_KERNEL(suffstats_rows_kernel, grid_for(2 * np * dp, 256), 256, stream)(
          b.z32, n, m, (int)np, dp, v, inv_rest, b.x32, b.x16);
      PV_LAUNCHED("suffstats_rows_kernel");
      p.loss = b.slots + v;
      st = run_problem(ctx, p, tensor);
      if (st != PV_OK) return st;
      if (!grad) continue;
      PV_KERNEL(suffstats_scatter_kernel, grid_for((int64_t)n * dp, 256), 256, stream)(
          b.dx, n, m, (int)np, dp, v, w_own, w_rest, b.dz);
      PV_LAUNCHED("suffstats_scatter_kernel");
    }
  }

  // The one wait of the op: the bad-row word and the losses. dz is
  // computed already; grad is written only when the input was sound.
  const int nslots = suff ? m : 1;
  std::vector<unsigned char> host(256 + sizeof(double) * (size_t)nslots);
  PV_CUDA(cudaMemcpyAsync(host.data(), b.bad, sizeof *b.bad, cudaMemcpyDeviceToHost, stream));
  PV_CUDA(cudaMemcpyAsync(host.data() + 256, b.slots, sizeof(double) * nslots,
                          cudaMemcpyDeviceToHost, stream));
  PV_CUDA(cudaStreamSynchronize(stream));
  unsigned long long bad;
  std::memcpy(&bad, host.data(), sizeof bad);
  if (bad != ~0ull) {
    const long long r = (long long)(bad / 4), i = r / m, v = r % m;
    if (bad % 4 == 1)
      return fail(PV_ERR_NUMERIC, "%s: h[%lld][%lld] (image %lld, view %lld) is not finite",
                  name, i, v, i, v);
    return fail(PV_ERR_NUMERIC,
                "%s: h[%lld][%lld] (image %lld, view %lld) has zero norm and cannot be "
                "normalised", name, i, v, i, v);
  }
  double value = 0;
  for (int s = 0; s < nslots; s++) {
    double slot;
    std::memcpy(&slot, host.data() + 256 + sizeof(double) * s, sizeof slot);
    value += suff ? slot / (double)m : slot;
  }
  if (!std::isfinite(value))
    return fail(PV_ERR_NUMERIC, "%s: loss is not finite (tau = %g)", name, a->tau);
  *a->loss = value;
  if (!grad) return PV_OK;

  NvtxRange r("loss: gradient through the normalisation");
  PV_KERNEL(backward_kernel, grid_for((int64_t)n * m, 8), 256, stream)(
      b.z32, b.dz, b.norms, n, m, d, (int)np, dp, a->grad_ptr, a->grad_dtype);
  PV_LAUNCHED("backward_kernel");
  return PV_OK;
}

}  // namespace pvcuda
