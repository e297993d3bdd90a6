// nn_cpu.cc: the encoder's layers on the CPU, the readable reference that
// the CUDA ops are checked against, and fast enough to train a small
// ConvNet. Activations are NHWC and every op is a template over float and
// double (the float64 path serves gradient checks).
//
// Convolution is im2col + GEMM (gemm_cpu.cc): rows of the column matrix
// are output pixels, columns are (ky, kx, c), so y [pixels, K] =
// col [pixels, R S C] w^T. The column matrix is built a chunk of whole
// images at a time, at most kColBytes, so memory stays bounded at 224 px
// and the chunk stays in cache between im2col and the GEMM.
// 1x1 stride-1 convolutions skip im2col: x already is the column matrix.
// Other stride-1 convolutions skip it too where the GEMM can gather its
// rows from a zero-padded copy of x (forward_gathered), and so, as the
// convolution of dy with the flipped kernel, does their input gradient
// where the weights are small (dx_gathered).
// The input gradient goes the other way, dcol = dy w, then a gather
// (col2im) that sums, for each input pixel, the columns that read it;
// gathering rather than scattering lets threads own disjoint outputs.
// A layer with small weights instead goes backward by pieces
// (backward_pieces): each worker builds pieces of the column matrix for
// itself, sums its own copy of the weight gradient over them and, where
// there are images enough for every worker, scatters dcol into the input
// gradient of images it owns.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "cpu_ops.h"
#include "gemm_cpu.h"
#include "simd.h"
#include "threadpool.h"

namespace pv {
namespace {

// im2col buffer budget per call. 8 MiB rather than more so that the column
// matrix is still in L3 when the GEMM packs it (and dcol when col2im reads
// it): at 32 MiB both passes went to DRAM and a ResNet-18 step took ~6%
// more CPU time; much smaller chunks leave too few A blocks to balance.
constexpr int64_t kColBytes = 8 << 20;
constexpr int64_t kMinChunkRows = 1024;

// The weight gradient of a layer whose R S C x K gradient is small (at
// most kPartialBytes) is summed by each worker into its own copy from
// pieces of the column matrix it builds itself, each about the size of a
// core's L2 (piece_bytes), so that the piece is still there when the GEMM
// reads it (see Conv::backward_pieces). On the 2 MiB L2 machine, 2 MiB
// pieces ran ResNet-18 3-4% faster than 1 MiB ones, and both ran the
// ConvNet 7% faster than chunks built by both threads.
constexpr int64_t kPartialBytes = 1 << 20;

int64_t piece_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? (int64_t)l2 : (int64_t)1 << 20;
  }();
  return bytes;
}

// Runs fn(begin, end) over [0, n) in chunks of at least grain items.
template <typename F>
void parallel_chunks(int64_t n, int64_t grain, const F &fn) {
  if (n <= 0) return;
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n / std::max<int64_t>(grain, 1),
                                                          4 * (int64_t)cpu_threads()));
  int64_t per = (n + chunks - 1) / chunks;
  chunks = (n + per - 1) / per;
  parallel_for(chunks, [&](int64_t t, int) {
    fn(t * per, std::min(n, (t + 1) * per));
  });
}

// dst[0:n] = src[0:n]: short runs inline, long ones by memcpy.
template <typename T>
inline void copy_run(T *dst, const T *src, int64_t n) {
  if (n >= 32) {
    std::memcpy(dst, src, (size_t)n * sizeof(T));
    return;
  }
  for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

// dst [cols][rows] = src [rows][cols]^T (the kernel flip of dx_gathered),
// in bands of kBand rows, threads taking bands. Float on AVX2 machines
// moves 8 x 8 blocks through registers (transpose8_avx2), down the band
// for each group of 8 columns, so that each destination row is written as
// a run of kBand values and the band's source rows stay in L1 across the
// groups. Element by element, 4608 x 512 took 3.5 ms (9.4 MB; a copy of
// that size takes 0.33 ms): 2.5 times faster in blocks.
constexpr int64_t kBand = 256;

template <typename T>
void transpose_rows(const T *src, int64_t lds, int64_t cols, T *dst, int64_t ldd, int64_t r0,
                    int64_t r1, int64_t c0) {
  for (int64_t r = r0; r < r1; r++)
    for (int64_t c = c0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

// The 8 x 8 block at s (row stride lds) into d (row stride ldd),
// transposed in registers (transpose8).
PV_TARGET_AVX2 PV_INLINE void transpose8_avx2(const float *s, int64_t lds, float *d,
                                              int64_t ldd) {
  typedef Vec<float>::type V;
  V r[8];
  for (int i = 0; i < 8; i++) r[i] = vload<V>(s + i * lds);
  transpose8(r);
  for (int i = 0; i < 8; i++) vstore(d + i * ldd, r[i]);
}

PV_TARGET_AVX2 void transpose_band_avx2(const float *src, int64_t lds, int64_t cols,
                                        float *dst, int64_t ldd, int64_t r0, int64_t r1) {
  const int64_t full = r0 + (r1 - r0) / 8 * 8;
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8)
    for (int64_t r = r0; r < full; r += 8)
      transpose8_avx2(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  transpose_rows(src, lds, cols, dst, ldd, r0, r1, c);  // the last columns
  for (int64_t r = full; r < r1; r++)                    // the last rows
    for (int64_t cc = 0; cc < c; cc++) dst[cc * ldd + r] = src[r * lds + cc];
}

// dst[c][r] (row stride ldd) = src[r][c] (row stride lds) for r < rows,
// c < cols.
template <typename T>
void transpose(const T *src, int64_t rows, int64_t cols, int64_t lds, T *dst, int64_t ldd) {
  parallel_for((rows + kBand - 1) / kBand, [&](int64_t band, int) {
    const int64_t r0 = band * kBand, r1 = std::min(rows, r0 + kBand);
    if constexpr (std::is_same_v<T, float>) {
      if (cpu_has_avx2_fma()) {
        transpose_band_avx2(src, lds, cols, dst, ldd, r0, r1);
        return;
      }
    }
    transpose_rows(src, lds, cols, dst, ldd, r0, r1, 0);
  });
}

pv_status cpu_dtype(const char *op, pv_dtype act, pv_dtype param) {
  if (act == param && (act == PV_F32 || act == PV_F64)) return PV_OK;
  return fail(PV_ERR_UNSUPPORTED, "%s: the CPU takes float32 or float64 activations and "
              "parameters of one dtype, got %s and %s", op, dtype_name(act),
              dtype_name(param));
}

// ---- convolution --------------------------------------------------------

template <typename T>
struct Conv {
  const pv_conv2d_args &a;
  int64_t kdim() const { return a.r * a.s * a.c; }
  int64_t pixels() const { return a.p * a.q; }
  bool pointwise() const { return a.r == 1 && a.s == 1 && a.stride == 1 && a.pad == 0; }
  // Images per im2col chunk: as many as fit kColBytes, but enough for
  // kMinChunkRows GEMM rows (small late layers: 256-row GEMMs ran at 3/4
  // the speed of 512-row ones), and the batch split evenly (28 + 4 images
  // made a 64-row GEMM at a third of the speed of the 448-row one).
  int64_t chunk_images() const {
    const int64_t per = std::max<int64_t>(1, pixels() * kdim() * (int64_t)sizeof(T));
    const int64_t rows_min = (kMinChunkRows + pixels() - 1) / pixels();
    const int64_t fit = std::min(a.n, std::max({(int64_t)1, kColBytes / per, rows_min}));
    const int64_t chunks = (a.n + fit - 1) / fit;
    return (a.n + chunks - 1) / chunks;
  }

  // col [images * P * Q][R S C] for images [i0, i0 + ni). The S taps of
  // one kernel row read S adjacent input pixels, so an in-bounds row is
  // one run of S C values: one copy per kernel row rather than per tap,
  // and runs under 32 values (first layers, C = 1 or 3) copied inline
  // rather than by a libc call.
  void im2col(const T *x, int64_t i0, int64_t ni, T *col) const {
    parallel_chunks(ni * a.p, 1, [&](int64_t b, int64_t e) {
      im2col_rows(x, i0 * a.p + b, i0 * a.p + e, col + b * a.q * kdim());
    });
  }

  // col for output rows [r0, r1) of the batch (row = image * P + oy), on
  // the calling thread.
  void im2col_rows(const T *x, int64_t r0, int64_t r1, T *col) const {
    const int64_t kd = kdim(), run = a.s * a.c;
    for (int64_t row = r0; row < r1; row++) {
      const int64_t img = row / a.p, oy = row % a.p;
      for (int64_t ox = 0; ox < a.q; ox++) {
        T *dst = col + ((row - r0) * a.q + ox) * kd;
        const int64_t ix0 = ox * a.stride - a.pad;
        for (int64_t ky = 0; ky < a.r; ky++, dst += run) {
          const int64_t iy = oy * a.stride - a.pad + ky;
          if (iy < 0 || iy >= a.h) {
            std::fill(dst, dst + run, (T)0);
            continue;
          }
          const T *src = x + ((img * a.h + iy) * a.w + ix0) * a.c;
          if (ix0 >= 0 && ix0 + a.s <= a.w) {
            copy_run(dst, src, run);
            continue;
          }
          for (int64_t kx = 0; kx < a.s; kx++) {
            const int64_t ix = ix0 + kx;
            if (ix < 0 || ix >= a.w)
              std::fill(dst + kx * a.c, dst + (kx + 1) * a.c, (T)0);
            else
              copy_run(dst + kx * a.c, src + kx * a.c, a.c);
          }
        }
      }
    }
  }

  // dx for images [i0, i0 + ni) from dcol: each input pixel sums the
  // column entries that read it.
  void col2im(const T *dcol, int64_t i0, int64_t ni, T *dx) const {
    const int64_t kd = kdim();
    parallel_chunks(ni * a.h, 1, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; row++) {
        const int64_t img = row / a.h, iy = row % a.h;
        for (int64_t ix = 0; ix < a.w; ix++) {
          T *dst = dx + (((i0 + img) * a.h + iy) * a.w + ix) * a.c;
          std::fill(dst, dst + a.c, (T)0);
          for (int64_t ky = 0; ky < a.r; ky++) {
            const int64_t ty = iy + a.pad - ky;
            if (ty < 0 || ty % a.stride) continue;
            const int64_t oy = ty / a.stride;
            if (oy >= a.p) continue;
            for (int64_t kx = 0; kx < a.s; kx++) {
              const int64_t tx = ix + a.pad - kx;
              if (tx < 0 || tx % a.stride) continue;
              const int64_t ox = tx / a.stride;
              if (ox >= a.q) continue;
              const T *src = dcol + ((img * a.p + oy) * a.q + ox) * kd + (ky * a.s + kx) * a.c;
              for (int64_t ch = 0; ch < a.c; ch++) dst[ch] += src[ch];
            }
          }
        }
      }
    });
  }

  // The forward pass without im2col: a zero-padded copy of x (xp, an
  // ninth of the column matrix's size at 3x3; none without padding), a
  // chunk of images at a time, and a GEMM whose A rows are
  // gathered from it (gemm_rows). Output pixel (img, oy, ox) at depth
  // (ky, kx, ch) reads xp[img][oy stride + ky][ox stride + kx][ch], so
  // for each ky the S C values of a row lie side by side: one segment of
  // the GEMM's depth. Only at stride 1: there the column matrix is 9
  // times x at 3x3 and the copy saves most of writing it (ResNet-18's
  // stride-1 convolutions ran 7-22% faster), while at stride 2 it is only
  // 9/4 times x and the ConvNet's stride-2 layers ran anywhere from 5%
  // slower to 4% faster. Where the segment is shallow (a first layer: 3 x 3 = 9
  // values) or B is too large to pack whole, im2col remains too.
  // Writing the column matrix was 13% of the forward convolutions'
  // time in a ResNet-18 step.
  struct Padded {
    const T *xp;
    int64_t hp, wp, c, p, q, stride, seg;
  };
  // The rows [i0, i0 + count) at depth d: one division for the first,
  // then a step along the output row and, where it ends, to the next.
  static void padded_rows(const void *ctx, int64_t i0, int64_t count, int64_t d,
                          const T **out) {
    const Padded &g = *static_cast<const Padded *>(ctx);
    const int64_t pix = i0 % (g.p * g.q);
    int64_t row = i0 / (g.p * g.q) * g.p + pix / g.q, ox = pix % g.q;  // row: img P + oy
    const int64_t ky = d / g.seg, within = d % g.seg;
    const T *base = nullptr;
    for (int64_t r = 0; r < count; r++, ox++) {
      if (ox == g.q) ox = 0, row++;
      if (r == 0 || ox == 0) {
        const int64_t img = row / g.p, oy = row % g.p;
        base = g.xp + ((img * g.hp + oy * g.stride + ky) * g.wp) * g.c + within;
      }
      out[r] = base + ox * g.stride * g.c;
    }
  }
  static constexpr int64_t kMinSegment = 64;
  bool gathered() const {
    return !pointwise() && a.stride == 1 && a.s * a.c >= kMinSegment &&
           gemm_rows_fits<T>(padded_images() * pixels(), a.k, kdim());
  }
  // Images per padded chunk: the padded copy at most kPaddedBytes, so
  // that it is still in cache when the GEMM reads it (the whole batch at
  // once, 256 images of the ConvNet made the copy a round trip to memory
  // and its convolutions 10-15% slower than im2col), yet kMinChunkRows
  // output rows, and the batch split evenly.
  static constexpr int64_t kPaddedBytes = 4 << 20;
  int64_t padded_images() const {
    const int64_t per = (a.h + 2 * a.pad) * (a.w + 2 * a.pad) * a.c * (int64_t)sizeof(T);
    const int64_t rows_min = (kMinChunkRows + pixels() - 1) / pixels();
    const int64_t fit = std::min(a.n, std::max({(int64_t)1, kPaddedBytes / per, rows_min}));
    const int64_t chunks = (a.n + fit - 1) / fit;
    return (a.n + chunks - 1) / chunks;
  }

  void forward_gathered(const T *x, const T *w, T *y) const {
    const int64_t hp = a.h + 2 * a.pad, wp = a.w + 2 * a.pad, c = a.c, px = pixels();
    const int64_t ci = padded_images();
    T *xp = a.pad ? scratch<T>(kScratchCol, ci * hp * wp * c) : nullptr;
    for (int64_t i0 = 0; i0 < a.n; i0 += ci) {
      const int64_t ni = std::min(ci, a.n - i0);
      const T *xi = x + i0 * a.h * a.w * c;
      if (a.pad) {  // unpadded, x is read where it lies
        parallel_chunks(ni * hp, 1, [&](int64_t b, int64_t e) {
          for (int64_t row = b; row < e; row++) {
            const int64_t img = row / hp, iy = row % hp - a.pad;
            T *dst = xp + row * wp * c;
            if (iy < 0 || iy >= a.h) {
              std::fill(dst, dst + wp * c, (T)0);
              continue;
            }
            std::fill(dst, dst + a.pad * c, (T)0);
            std::memcpy(dst + a.pad * c, xi + (img * a.h + iy) * a.w * c,
                        (size_t)(a.w * c) * sizeof(T));
            std::fill(dst + (a.pad + a.w) * c, dst + wp * c, (T)0);
          }
        });
      }
      const Padded g{a.pad ? xp : xi, hp, wp, c, a.p, a.q, a.stride, a.s * c};
      const GemmRows<T> rows{padded_rows, &g, a.s * c};
      gemm_rows<T>(rows, true, ni * px, a.k, kdim(), w, kdim(), y + i0 * px * a.k, a.k);
    }
  }

  void forward() const {
    const T *x = static_cast<const T *>(a.x_ptr), *w = static_cast<const T *>(a.w_ptr);
    T *y = static_cast<T *>(a.y_ptr);
    const int64_t kd = kdim(), px = pixels();
    if (pointwise()) {
      gemm<T>(false, true, a.n * px, a.k, kd, 1, x, kd, w, kd, 0, y, a.k);
      return;
    }
    if (gathered()) {
      forward_gathered(x, w, y);
      return;
    }
    const int64_t ci = chunk_images();
    T *col = scratch<T>(kScratchCol, ci * px * kd);
    for (int64_t i0 = 0; i0 < a.n; i0 += ci) {
      const int64_t ni = std::min(ci, a.n - i0);
      im2col(x, i0, ni, col);
      gemm<T>(false, true, ni * px, a.k, kd, 1, col, kd, w, kd, 0, y + i0 * px * a.k, a.k);
    }
  }

  // The weight gradient is a GEMM over all pixels, dw [K][R S C] =
  // dy^T col. The GEMM runs fastest with the larger of K and R S C as its
  // rows (m): its A side is read in place or packed in cache per task,
  // while B is packed whole first. So when R S C >= K (every 3x3 layer,
  // the 1x1 reductions) it is summed transposed, as col^T dy [R S C][K]
  // (5-18% faster on ResNet shapes), each micro-tile stored transposed
  // into dw (gemm_ct; a transpose pass afterwards took 2% of a ResNet-18
  // step); also when R S C is below one micro-tile (a first layer, 9 or
  // 27), where that measured faster too.
  void weight_grad(const T *col, const T *dyc, int64_t rows, bool first, T *dw,
                   bool transposed) const {
    const int64_t kd = kdim();
    const T beta = first ? 0 : 1;
    if (transposed)
      gemm_ct<T>(true, false, kd, a.k, rows, 1, col, kd, dyc, a.k, beta, dw, kd);
    else
      gemm<T>(true, false, a.k, kd, rows, 1, dyc, a.k, col, kd, beta, dw, kd);
  }

  // Whether the weight gradient goes by backward_pieces: summed
  // transposed (see weight_grad), small enough for a copy per worker, and
  // with pieces of at least kMinPieceRows pixels for the GEMM's depth.
  bool by_pieces(bool transposed) const {
    const int64_t kd = kdim();
    return transposed && cpu_threads() > 1 &&
           kd * a.k * (int64_t)sizeof(T) <= kPartialBytes &&
           piece_bytes() / (kd * (int64_t)sizeof(T)) >= kMinPieceRows;
  }
  static constexpr int64_t kMinPieceRows = 256;

  // dw [K][R S C] = (col^T dy)^T with the work split by output rows (row =
  // image * P + oy): each worker takes a contiguous range of rows, in
  // pieces whose column matrix is about piece_bytes() (its own L2), builds
  // each piece's col and adds col^T dy into its own partial sum; the
  // partials are then added in worker order, so the result depends on the
  // thread count only. Built a chunk at a time by both threads, col went
  // to L3, and the GEMM, which reads it a few values per row, waited on
  // it: ResNet-18's first stage's weight gradient ran at 53% of the FMA
  // peak.
  // With dx, the ranges are whole images, and each piece then also takes
  // dcol = dy w into the same buffer and adds it into its images' dx
  // (col2im_add): the worker owns those images' dx, and dcol and dx stay
  // in its L2, where the chunked path wrote dcol to L3 and gathered it
  // back (col2im).
  void backward_pieces(const T *x, const T *w, const T *dy, T *dx, T *dw) const {
    const int64_t kd = kdim(), per_row = a.q * kd, rows = a.n * a.p;
    const int64_t piece = std::max<int64_t>(1, piece_bytes() / (per_row * (int64_t)sizeof(T)));
    const int64_t units = dx ? a.n : (rows + piece - 1) / piece;
    const int64_t workers = std::min<int64_t>(cpu_threads(), units);
    T *partial = scratch<T>(kScratchPartial, workers * kd * a.k);
    parallel_for(workers, [&](int64_t wk, int) {
      const int64_t begin = dx ? wk * a.n / workers * a.p : wk * rows / workers;
      const int64_t end = dx ? (wk + 1) * a.n / workers * a.p : (wk + 1) * rows / workers;
      T *col = scratch<T>(kScratchCol, piece * per_row), *sum = partial + wk * kd * a.k;
      for (int64_t r0 = begin; r0 < end; r0 += piece) {
        const int64_t r1 = std::min(end, r0 + piece), px = (r1 - r0) * a.q;
        const T *dyp = dy + r0 * a.q * a.k;
        im2col_rows(x, r0, r1, col);
        // Inside a pool task the GEMMs run on this thread alone.
        gemm<T>(true, false, kd, a.k, px, 1, col, kd, dyp, a.k, r0 == begin ? 0 : 1, sum, a.k);
        if (!dx) continue;
        gemm<T>(false, false, px, kd, a.k, 1, dyp, a.k, w, kd, 0, col, kd);
        col2im_add(col, r0, r1, dx);
      }
    });
    sum_parts<T>(workers, kd, a.k, partial, 0, dw, kd, true);
  }

  // dx += the entries of dcol (output rows [r0, r1)) at the input pixels
  // they read: a scatter, for a caller that owns these images' dx. An
  // image's dx is zeroed at its first row, so rows must come in order.
  void col2im_add(const T *dcol, int64_t r0, int64_t r1, T *dx) const {
    const int64_t kd = kdim(), image = a.h * a.w * a.c;
    for (int64_t row = r0; row < r1; row++) {
      const int64_t img = row / a.p, oy = row % a.p;
      if (oy == 0) std::fill(dx + img * image, dx + (img + 1) * image, (T)0);
      for (int64_t ox = 0; ox < a.q; ox++) {
        const T *src = dcol + ((row - r0) * a.q + ox) * kd;
        for (int64_t ky = 0; ky < a.r; ky++) {
          const int64_t iy = oy * a.stride - a.pad + ky;
          if (iy < 0 || iy >= a.h) continue;
          for (int64_t kx = 0; kx < a.s; kx++) {
            const int64_t ix = ox * a.stride - a.pad + kx;
            if (ix < 0 || ix >= a.w) continue;
            T *dst = dx + ((img * a.h + iy) * a.w + ix) * a.c;
            const T *from = src + (ky * a.s + kx) * a.c;
            for (int64_t ch = 0; ch < a.c; ch++) dst[ch] += from[ch];
          }
        }
      }
    }
  }

  // The input gradient at stride 1 is the forward convolution of dy,
  // padded by R - 1 - pad, with the kernel flipped and its channel
  // dimensions swapped (flip); with rows gathered (forward_gathered) it
  // needs neither dcol (9 times dx at 3x3, written by a GEMM of depth K)
  // nor its scatter or col2im. ResNet-18's first two stages ran their
  // backward 11% faster so. Square kernels only, where both paddings
  // agree, and weights of at most kPartialBytes: at 512 channels (9.4 MB)
  // the flip cost more than the GEMM saved, and the backward ran 6% slower.
  bool dx_gathered(pv_conv2d_args &f) const {
    if (a.stride != 1 || a.r != a.s || a.pad > a.r - 1) return false;
    if (kdim() * a.k * (int64_t)sizeof(T) > kPartialBytes) return false;
    f = a;
    f.h = a.p, f.w = a.q, f.c = a.k, f.k = a.c, f.p = a.h, f.q = a.w, f.pad = a.r - 1 - a.pad;
    return Conv<T>{f}.gathered();
  }

  // wf [C][R][S][K] with wf[c][ky][kx][k] = w[k][R-1-ky][S-1-kx][c]: per
  // tap, a K x C block of w transposed.
  void flip(const T *w, T *wf) const {
    const int64_t taps = a.r * a.s;
    for (int64_t t = 0; t < taps; t++)
      transpose(w + (taps - 1 - t) * a.c, a.k, a.c, taps * a.c, wf + t * a.k, taps * a.k);
  }

  void backward() const {
    const T *x = static_cast<const T *>(a.x_ptr), *w = static_cast<const T *>(a.w_ptr);
    const T *dy = static_cast<const T *>(a.dy_ptr);
    T *dx = static_cast<T *>(a.dx_ptr), *dw = static_cast<T *>(a.dw_ptr);
    const int64_t kd = kdim(), px = pixels();
    const bool transposed = kd >= a.k || kd < 16;
    if (pointwise()) {
      if (dw) weight_grad(x, dy, a.n * px, true, dw, transposed);
      if (dx) gemm<T>(false, false, a.n * px, kd, a.k, 1, dy, a.k, w, kd, 0, dx, kd);
    } else {
      pv_conv2d_args flipped;
      if (dx && dx_gathered(flipped)) {
        T *wf = scratch<T>(kScratchFlipped, kd * a.k);
        flip(w, wf);
        Conv<T>{flipped}.forward_gathered(dy, wf, dx);
        dx = nullptr;
      }
      // By pieces (backward_pieces) the input gradient too, when every
      // worker gets an image of its own.
      const bool pieces = dw && by_pieces(transposed);
      const bool dx_pieces = pieces && dx && a.n >= cpu_threads();
      if (pieces) backward_pieces(x, w, dy, dx_pieces ? dx : nullptr, dw);
      if (dx_pieces) dx = nullptr;
      const int64_t ci = chunk_images();
      T *col = (dw && !pieces) || dx ? scratch<T>(kScratchCol, ci * px * kd) : nullptr;
      for (int64_t i0 = 0; col && i0 < a.n; i0 += ci) {
        const int64_t ni = std::min(ci, a.n - i0);
        const T *dyc = dy + i0 * px * a.k;
        if (dw && !pieces) {
          im2col(x, i0, ni, col);
          weight_grad(col, dyc, ni * px, i0 == 0, dw, transposed);
        }
        if (dx) {
          gemm<T>(false, false, ni * px, kd, a.k, 1, dyc, a.k, w, kd, 0, col, kd);
          col2im(col, i0, ni, dx);
        }
      }
    }
  }
};

// ---- row kernels of batch norm, ReLU and add --------------------------

// These move a few bytes per flop. Compiled for the baseline x86-64 they
// ran 4 floats an instruction, and the batch-norm sums lived in memory,
// loaded and stored for every row: batch norm, ReLU and add took 10% of
// a ResNet-18 step. Here each is written on vectors of Vec<T> and
// compiled twice, for AVX2 and portable (PV_ROW_KERNEL), the sums kept in
// registers over a run of rows, channel block by channel block.
template <typename T>
struct RowOps {
  typedef typename Vec<T>::type V;
  static constexpr int L = Vec<T>::lanes;

  // acc[j] += sum over the n rows of d = x[r][j] - x0[j], acc[c + j] +=
  // the sum of d^2 (x is [n][c]).
  static PV_INLINE void moments(const T *x, const T *x0, int64_t n, int64_t c, T *acc) {
    int64_t j = 0;
    for (; j + L <= c; j += L) {
      V s = vload<V>(acc + j), q = vload<V>(acc + c + j);
      const V o = vload<V>(x0 + j);
      for (int64_t r = 0; r < n; r++) {
        const V d = vload<V>(x + r * c + j) - o;
        s += d;
        q += d * d;
      }
      vstore(acc + j, s);
      vstore(acc + c + j, q);
    }
    for (; j < c; j++)
      for (int64_t r = 0; r < n; r++) {
        const T d = x[r * c + j] - x0[j];
        acc[j] += d;
        acc[c + j] += d * d;
      }
  }

  // acc[j] += the sum of dy[r][j], acc[c + j] += the sum of
  // dy[r][j] (x[r][j] - m[j]).
  static PV_INLINE void grad_moments(const T *x, const T *dy, const T *m, int64_t n, int64_t c,
                                     T *acc) {
    int64_t j = 0;
    for (; j + L <= c; j += L) {
      V s = vload<V>(acc + j), q = vload<V>(acc + c + j);
      const V mv = vload<V>(m + j);
      for (int64_t r = 0; r < n; r++) {
        const V g = vload<V>(dy + r * c + j);
        s += g;
        q += g * (vload<V>(x + r * c + j) - mv);
      }
      vstore(acc + j, s);
      vstore(acc + c + j, q);
    }
    for (; j < c; j++)
      for (int64_t r = 0; r < n; r++) {
        acc[j] += dy[r * c + j];
        acc[c + j] += dy[r * c + j] * (x[r * c + j] - m[j]);
      }
  }

  // out[r][j] = p[j] u[r][j] + q[j] (+ s[j] v[r][j] when v is given).
  static PV_INLINE void affine(const T *u, const T *v, const T *p, const T *q, const T *s,
                               int64_t n, int64_t c, T *out) {
    for (int64_t r = 0; r < n; r++, u += c, out += c) {
      int64_t j = 0;
      if (v) {
        for (; j + L <= c; j += L)
          vstore(out + j, vload<V>(p + j) * vload<V>(u + j) + vload<V>(s + j) * vload<V>(v + j) +
                              vload<V>(q + j));
        for (; j < c; j++) out[j] = p[j] * u[j] + s[j] * v[j] + q[j];
        v += c;
      } else {
        for (; j + L <= c; j += L)
          vstore(out + j, vload<V>(p + j) * vload<V>(u + j) + vload<V>(q + j));
        for (; j < c; j++) out[j] = p[j] * u[j] + q[j];
      }
    }
  }

  // The flat kernels, over [0, n): y = max(x, 0); dx = y > 0 ? dy : 0
  // (dy read unconditionally, a select rather than a branch that
  // mispredicts half the time); y = a + b.
  static PV_INLINE void relu(const T *x, int64_t n, T *y) {
    int64_t i = 0;
    for (; i + L <= n; i += L) {
      const V v = vload<V>(x + i);
      vstore(y + i, v > V{} ? v : V{});
    }
    for (; i < n; i++) y[i] = x[i] > (T)0 ? x[i] : (T)0;
  }
  static PV_INLINE void relu_grad(const T *y, const T *dy, int64_t n, T *dx) {
    int64_t i = 0;
    for (; i + L <= n; i += L) vstore(dx + i, vload<V>(y + i) > V{} ? vload<V>(dy + i) : V{});
    for (; i < n; i++) {
      const T g = dy[i];
      dx[i] = y[i] > (T)0 ? g : (T)0;
    }
  }
  // The running maximum bv[ch] over one more input src of a pooling
  // window, and in tap[ch] the window position t where it was first seen
  // (a strict > keeps the first), as lanes of the comparison's own width.
  typedef typename Vec<T>::itype IV;
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  static PV_INLINE void window_max(const T *src, I t, int64_t c, T *bv, I *tap) {
    int64_t ch = 0;
    for (; ch + L <= c; ch += L) {
      const V v = vload<V>(src + ch), b = vload<V>(bv + ch);
      const IV gt = v > b;
      vstore(bv + ch, gt ? v : b);
      vstore(tap + ch, gt ? IV{} + t : vload<IV>(tap + ch));
    }
    for (; ch < c; ch++) {
      const bool gt = src[ch] > bv[ch];
      bv[ch] = gt ? src[ch] : bv[ch];
      tap[ch] = gt ? t : tap[ch];
    }
  }
  // dst[ch] += g[ch] where tap[ch] == t.
  static PV_INLINE void add_at_tap(const T *g, const I *tap, I t, int64_t c, T *dst) {
    int64_t ch = 0;
    for (; ch + L <= c; ch += L) {
      const IV hit = vload<IV>(tap + ch) == IV{} + t;
      vstore(dst + ch, vload<V>(dst + ch) + (hit ? vload<V>(g + ch) : V{}));
    }
    for (; ch < c; ch++) dst[ch] += tap[ch] == t ? g[ch] : (T)0;
  }
  static PV_INLINE void sum(const T *a, const T *b, int64_t n, T *y) {
    int64_t i = 0;
    for (; i + L <= n; i += L) vstore(y + i, vload<V>(a + i) + vload<V>(b + i));
    for (; i < n; i++) y[i] = a[i] + b[i];
  }
};

// name<T>(args...) runs RowOps<T>::name compiled for AVX2 where the
// processor has it, else the portable build of the same code.
#define PV_ROW_KERNEL(name)                                                 \
  template <typename T, typename... A>                                      \
  PV_TARGET_AVX2 void name##_avx2(A... args) {                              \
    RowOps<T>::name(args...);                                               \
  }                                                                         \
  template <typename T, typename... A>                                      \
  void name##_portable(A... args) {                                         \
    RowOps<T>::name(args...);                                               \
  }                                                                         \
  template <typename T, typename... A>                                      \
  void row_##name(A... args) {                                              \
    cpu_has_avx2_fma() ? name##_avx2<T>(args...) : name##_portable<T>(args...); \
  }
PV_ROW_KERNEL(moments)
PV_ROW_KERNEL(grad_moments)
PV_ROW_KERNEL(affine)
PV_ROW_KERNEL(relu)
PV_ROW_KERNEL(relu_grad)
PV_ROW_KERNEL(sum)
PV_ROW_KERNEL(window_max)
PV_ROW_KERNEL(add_at_tap)
#undef PV_ROW_KERNEL

// ---- batch normalisation ------------------------------------------------

// Per-channel sums over rows, threads owning row blocks and the blocks
// merged in order, so the result does not depend on scheduling. Within a
// block, runs of kSumRun rows are summed in T by f(r0, r1, run), where the
// loops vectorise (float32 terms summed 16 at a time lose nothing that
// matters; per-element float64 conversion made batch norm ~15% of a
// ConvNet step), and each run's sums are added in float64.
// out[s * c + j] = sum over rows of term s of channel j. There are at most
// 64 blocks, and at least kSumBlock values a block: at ResNet-18's last
// stage (512 rows of 512 channels) 64 blocks of 8 rows made the blocks'
// float64 sums 512 KiB, mapped afresh and merged serially on every call,
// and the whole batch norm took 5 times as long as a ReLU of its size.
constexpr int64_t kSumRun = 16;
constexpr int64_t kSumBlock = 32768;

template <typename T, typename F>
void channel_sums(int64_t rows, int64_t c, int nsums, double *out, const F &f) {
  const int64_t width = nsums * c;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>({rows, 64, rows * c / kSumBlock}));
  const int64_t per = (rows + blocks - 1) / blocks;
  std::vector<double> part((size_t)(blocks * width), 0.0);
  parallel_for(blocks, [&](int64_t blk, int) {
    double *acc = part.data() + blk * width;
    std::vector<T> run((size_t)width);
    const int64_t end = std::min(rows, (blk + 1) * per);
    for (int64_t r = blk * per; r < end; r += kSumRun) {
      std::fill(run.begin(), run.end(), (T)0);
      f(r, std::min(end, r + kSumRun), run.data());
      for (int64_t i = 0; i < width; i++) acc[i] += (double)run[i];
    }
  });
  std::fill(out, out + width, 0.0);
  for (int64_t blk = 0; blk < blocks; blk++)
    for (int64_t i = 0; i < width; i++) out[i] += part[blk * width + i];
}

template <typename T>
void bn_forward(const pv_batchnorm_args &a) {
  const int64_t rows = a.rows, c = a.c;
  const T *x = static_cast<const T *>(a.x_ptr);
  const T *gamma = static_cast<const T *>(a.gamma_ptr), *beta = static_cast<const T *>(a.beta_ptr);
  T *rm = static_cast<T *>(a.running_mean_ptr), *rv = static_cast<T *>(a.running_var_ptr);
  T *sm = static_cast<T *>(a.save_mean_ptr), *si = static_cast<T *>(a.save_invstd_ptr);
  std::vector<double> mean(c), var(c);
  if (a.training) {
    // One pass over x: sums of d = x - x[0] and of d^2 per channel. Shifted
    // by a sample of the channel, the variance E[d^2] - E[d]^2 keeps its
    // accuracy (no large mean to cancel), and a second pass over the
    // activations cost ~2% of a ConvNet step.
    std::vector<double> sums(2 * c);
    const std::vector<T> first(x, x + c);
    const T *x0 = first.data();
    channel_sums<T>(rows, c, 2, sums.data(), [&](int64_t r0, int64_t r1, T *acc) {
      row_moments<T>(x + r0 * c, x0, r1 - r0, c, acc);
    });
    for (int64_t j = 0; j < c; j++) {
      const double m1 = sums[j] / (double)rows;
      mean[j] = (double)x0[j] + m1;
      var[j] = std::max(0.0, sums[c + j] / (double)rows - m1 * m1);
      const double unbiased = var[j] * (double)rows / (double)(rows - 1);
      rm[j] = (T)((1 - a.momentum) * (double)rm[j] + a.momentum * mean[j]);
      rv[j] = (T)((1 - a.momentum) * (double)rv[j] + a.momentum * unbiased);
    }
  } else {
    for (int64_t j = 0; j < c; j++) mean[j] = (double)rm[j], var[j] = (double)rv[j];
  }
  // y = x * scale + shift per channel.
  std::vector<T> scale(c), shift(c);
  for (int64_t j = 0; j < c; j++) {
    const double inv = 1.0 / std::sqrt(var[j] + a.eps);
    sm[j] = (T)mean[j];
    si[j] = (T)inv;
    scale[j] = (T)((double)gamma[j] * inv);
    shift[j] = (T)((double)beta[j] - mean[j] * (double)gamma[j] * inv);
  }
  T *y = static_cast<T *>(a.y_ptr);
  parallel_chunks(rows, 64, [&](int64_t b, int64_t e) {
    row_affine<T>(x + b * c, (const T *)nullptr, scale.data(), shift.data(), (const T *)nullptr,
                  e - b, c, y + b * c);
  });
}

template <typename T>
void bn_backward(const pv_batchnorm_args &a) {
  const int64_t rows = a.rows, c = a.c;
  const T *x = static_cast<const T *>(a.x_ptr), *dy = static_cast<const T *>(a.dy_ptr);
  const T *gamma = static_cast<const T *>(a.gamma_ptr);
  const T *sm = static_cast<const T *>(a.save_mean_ptr);
  const T *si = static_cast<const T *>(a.save_invstd_ptr);
  // sums[0][c] = sum dy, sums[1][c] = sum dy (x - mean).
  std::vector<double> sums(2 * c);
  channel_sums<T>(rows, c, 2, sums.data(), [&](int64_t r0, int64_t r1, T *acc) {
    row_grad_moments<T>(x + r0 * c, dy + r0 * c, sm, r1 - r0, c, acc);
  });
  T *dgamma = static_cast<T *>(a.dgamma_ptr), *dbeta = static_cast<T *>(a.dbeta_ptr);
  // dx = k1 dy + k2 (x - mean) + k3 per channel; in evaluation the
  // statistics are constants and only k1 remains.
  std::vector<T> k1(c), k2(c), k3(c);
  for (int64_t j = 0; j < c; j++) {
    const double inv = (double)si[j], g = (double)gamma[j];
    dbeta[j] = (T)sums[j];
    dgamma[j] = (T)(sums[c + j] * inv);
    k1[j] = (T)(g * inv);
    if (a.training) {
      const double n = (double)rows;
      k2[j] = (T)(-g * inv * inv * inv * sums[c + j] / n);
      k3[j] = (T)(-g * inv * sums[j] / n + g * inv * inv * inv * sums[c + j] / n * (double)sm[j]);
    } else {
      k2[j] = k3[j] = 0;
    }
  }
  T *dx = static_cast<T *>(a.dx_ptr);
  parallel_chunks(rows, 64, [&](int64_t b, int64_t e) {
    row_affine<T>(dy + b * c, x + b * c, k1.data(), k3.data(), k2.data(), e - b, c, dx + b * c);
  });
}

// ---- elementwise, pooling, linear ---------------------------------------

template <typename T>
void relu_forward(const pv_eltwise_args &a) {
  const T *x = static_cast<const T *>(a.a_ptr);
  T *y = static_cast<T *>(a.out_ptr);
  parallel_chunks(a.numel, 1 << 14, [&](int64_t b, int64_t e) {
    row_relu<T>(x + b, e - b, y + b);
  });
}

template <typename T>
void relu_backward(const pv_eltwise_args &a) {
  const T *y = static_cast<const T *>(a.a_ptr), *dy = static_cast<const T *>(a.b_ptr);
  T *dx = static_cast<T *>(a.out_ptr);
  parallel_chunks(a.numel, 1 << 14, [&](int64_t b, int64_t e) {
    row_relu_grad<T>(y + b, dy + b, e - b, dx + b);
  });
}

template <typename T>
void add(const pv_eltwise_args &a) {
  const T *p = static_cast<const T *>(a.a_ptr), *q = static_cast<const T *>(a.b_ptr);
  T *y = static_cast<T *>(a.out_ptr);
  parallel_chunks(a.numel, 1 << 14, [&](int64_t b, int64_t e) {
    row_sum<T>(p + b, q + b, e - b, y + b);
  });
}

template <typename T>
void maxpool_forward(const pv_pool_args &a) {
  const T *x = static_cast<const T *>(a.x_ptr);
  T *y = static_cast<T *>(a.out_ptr);
  parallel_chunks(a.n * a.p, 1, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; row++) {
      const int64_t img = row / a.p, oy = row % a.p;
      for (int64_t ox = 0; ox < a.q; ox++) {
        T *dst = y + (row * a.q + ox) * a.c;
        std::fill(dst, dst + a.c, -INFINITY);
        for (int64_t ky = 0; ky < a.kernel; ky++) {
          const int64_t iy = oy * a.stride - a.pad + ky;
          if (iy < 0 || iy >= a.h) continue;
          for (int64_t kx = 0; kx < a.kernel; kx++) {
            const int64_t ix = ox * a.stride - a.pad + kx;
            if (ix < 0 || ix >= a.w) continue;
            const T *src = x + ((img * a.h + iy) * a.w + ix) * a.c;
            for (int64_t ch = 0; ch < a.c; ch++) dst[ch] = src[ch] > dst[ch] ? src[ch] : dst[ch];
          }
        }
      }
    }
  });
}

// Threads own whole images, so the scatter into overlapping windows is
// race-free.
template <typename T>
void maxpool_backward(const pv_pool_args &a) {
  typedef typename RowOps<T>::I I;
  const T *x = static_cast<const T *>(a.x_ptr), *dy = static_cast<const T *>(a.dy_ptr);
  T *dx = static_cast<T *>(a.out_ptr);
  // Per output pixel, the window position of each channel's first
  // largest input (as the forward pass keeps it), then per position the
  // gradient added to the channels it won, all by vector selects: by
  // data-dependent branches this pass was 26 ms of a ResNet-50 step at
  // batch 8, 12 times the forward's; with selects but an index per
  // channel and a scalar scatter, 11 ms.
  parallel_for(a.n, [&](int64_t img, int) {
    const int64_t image = a.h * a.w * a.c;
    T *dimg = dx + img * image;
    const T *ximg = x + img * image;
    std::fill(dimg, dimg + image, (T)0);
    std::vector<I> taps(a.c);
    std::vector<T> val(a.c);
    I *tap = taps.data();
    T *bv = val.data();
    for (int64_t oy = 0; oy < a.p; oy++)
      for (int64_t ox = 0; ox < a.q; ox++) {
        const int64_t y0 = oy * a.stride - a.pad, x0 = ox * a.stride - a.pad;
        const int64_t ky0 = std::max<int64_t>(0, -y0), ky1 = std::min(a.kernel, a.h - y0);
        const int64_t kx0 = std::max<int64_t>(0, -x0), kx1 = std::min(a.kernel, a.w - x0);
        if (ky0 >= ky1 || kx0 >= kx1) continue;  // a window wholly in the padding
        for (int64_t ky = ky0; ky < ky1; ky++)
          for (int64_t kx = kx0; kx < kx1; kx++) {
            const T *src = ximg + ((y0 + ky) * a.w + x0 + kx) * a.c;
            const I t = (I)(ky * a.kernel + kx);
            if (ky == ky0 && kx == kx0) {
              std::copy(src, src + a.c, bv);
              std::fill(tap, tap + a.c, t);
            } else {
              row_window_max<T>(src, t, a.c, bv, tap);
            }
          }
        const T *g = dy + ((img * a.p + oy) * a.q + ox) * a.c;
        for (int64_t ky = ky0; ky < ky1; ky++)
          for (int64_t kx = kx0; kx < kx1; kx++)
            row_add_at_tap<T>(g, tap, (I)(ky * a.kernel + kx), a.c,
                              dimg + ((y0 + ky) * a.w + x0 + kx) * a.c);
      }
  });
}

template <typename T>
void avgpool_forward(const pv_pool_args &a) {
  const T *x = static_cast<const T *>(a.x_ptr);
  T *y = static_cast<T *>(a.out_ptr);
  const int64_t hw = a.h * a.w;
  parallel_for(a.n, [&](int64_t img, int) {
    std::vector<double> acc(a.c, 0.0);
    for (int64_t i = 0; i < hw; i++)
      for (int64_t ch = 0; ch < a.c; ch++) acc[ch] += (double)x[(img * hw + i) * a.c + ch];
    for (int64_t ch = 0; ch < a.c; ch++) y[img * a.c + ch] = (T)(acc[ch] / (double)hw);
  });
}

template <typename T>
void avgpool_backward(const pv_pool_args &a) {
  const T *dy = static_cast<const T *>(a.dy_ptr);
  T *dx = static_cast<T *>(a.out_ptr);
  const int64_t hw = a.h * a.w;
  const T inv = (T)(1.0 / (double)hw);
  parallel_chunks(a.n * hw, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++)
      for (int64_t ch = 0; ch < a.c; ch++) dx[r * a.c + ch] = dy[(r / hw) * a.c + ch] * inv;
  });
}

template <typename T>
void linear_forward(const pv_linear_args &a) {
  const T *x = static_cast<const T *>(a.x_ptr), *w = static_cast<const T *>(a.w_ptr);
  const T *bias = static_cast<const T *>(a.b_ptr);
  T *y = static_cast<T *>(a.y_ptr);
  gemm<T>(false, true, a.rows, a.out, a.in, 1, x, a.in, w, a.in, 0, y, a.out);
  if (!bias) return;
  parallel_chunks(a.rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++)
      for (int64_t j = 0; j < a.out; j++) y[r * a.out + j] += bias[j];
  });
}

template <typename T>
void linear_backward(const pv_linear_args &a) {
  const T *x = static_cast<const T *>(a.x_ptr), *w = static_cast<const T *>(a.w_ptr);
  const T *dy = static_cast<const T *>(a.dy_ptr);
  T *dx = static_cast<T *>(a.dx_ptr), *dw = static_cast<T *>(a.dw_ptr);
  T *db = static_cast<T *>(a.db_ptr);
  if (dx) gemm<T>(false, false, a.rows, a.in, a.out, 1, dy, a.out, w, a.in, 0, dx, a.in);
  gemm<T>(true, false, a.out, a.in, a.rows, 1, dy, a.out, x, a.in, 0, dw, a.in);
  if (!db) return;
  for (int64_t j = 0; j < a.out; j++) {
    double s = 0;
    for (int64_t r = 0; r < a.rows; r++) s += (double)dy[r * a.out + j];
    db[j] = (T)s;
  }
}

}  // namespace

// Each op picks float or double after checking the CPU's dtype rule.
#define PV_CPU_DISPATCH(op, fn, act, param, args)          \
  do {                                                     \
    pv_status st_ = cpu_dtype(op, act, param);             \
    if (st_ != PV_OK) return st_;                          \
    if ((act) == PV_F64) fn<double>(args); else fn<float>(args); \
    return PV_OK;                                          \
  } while (0)

template <typename T>
static void conv_fwd(const pv_conv2d_args &a) { Conv<T>{a}.forward(); }
template <typename T>
static void conv_bwd(const pv_conv2d_args &a) { Conv<T>{a}.backward(); }

pv_status cpu_conv2d_forward(void *, const pv_conv2d_args *a) {
  PV_CPU_DISPATCH("conv2d_forward", conv_fwd, a->act_dtype, a->param_dtype, *a);
}
pv_status cpu_conv2d_backward(void *, const pv_conv2d_args *a) {
  PV_CPU_DISPATCH("conv2d_backward", conv_bwd, a->act_dtype, a->param_dtype, *a);
}
pv_status cpu_batchnorm_forward(void *, const pv_batchnorm_args *a) {
  PV_CPU_DISPATCH("batchnorm_forward", bn_forward, a->act_dtype, a->param_dtype, *a);
}
pv_status cpu_batchnorm_backward(void *, const pv_batchnorm_args *a) {
  PV_CPU_DISPATCH("batchnorm_backward", bn_backward, a->act_dtype, a->param_dtype, *a);
}
pv_status cpu_relu_forward(void *, const pv_eltwise_args *a) {
  PV_CPU_DISPATCH("relu_forward", relu_forward, a->dtype, a->dtype, *a);
}
pv_status cpu_relu_backward(void *, const pv_eltwise_args *a) {
  PV_CPU_DISPATCH("relu_backward", relu_backward, a->dtype, a->dtype, *a);
}
pv_status cpu_add(void *, const pv_eltwise_args *a) {
  PV_CPU_DISPATCH("add", add, a->dtype, a->dtype, *a);
}
pv_status cpu_maxpool_forward(void *, const pv_pool_args *a) {
  PV_CPU_DISPATCH("maxpool_forward", maxpool_forward, a->dtype, a->dtype, *a);
}
pv_status cpu_maxpool_backward(void *, const pv_pool_args *a) {
  PV_CPU_DISPATCH("maxpool_backward", maxpool_backward, a->dtype, a->dtype, *a);
}
pv_status cpu_avgpool_forward(void *, const pv_pool_args *a) {
  PV_CPU_DISPATCH("global_avgpool_forward", avgpool_forward, a->dtype, a->dtype, *a);
}
pv_status cpu_avgpool_backward(void *, const pv_pool_args *a) {
  PV_CPU_DISPATCH("global_avgpool_backward", avgpool_backward, a->dtype, a->dtype, *a);
}
pv_status cpu_linear_forward(void *, const pv_linear_args *a) {
  PV_CPU_DISPATCH("linear_forward", linear_forward, a->act_dtype, a->param_dtype, *a);
}
pv_status cpu_linear_backward(void *, const pv_linear_args *a) {
  PV_CPU_DISPATCH("linear_backward", linear_backward, a->act_dtype, a->param_dtype, *a);
}

}  // namespace pv
