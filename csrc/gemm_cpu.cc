// gemm_cpu.cc: a blocked, multithreaded GEMM for the CPU backend.
//
// After the Goto/BLIS structure: B is packed into column slivers of NR
// (once per call when it is small, as weights are; else per depth slice
// and column block), and an MR x NR micro-kernel keeps MR x NV vector
// accumulators in registers, issuing NV FMAs per broadcast of A, so that
// it is bound by FMA throughput rather than loads. A row-major A (the
// column matrix, an output gradient) is not packed: the micro-kernel reads
// each sliver's MR rows in place while B's column group sits in L2. A
// transposed A (weight gradients) is packed per A block and depth slice,
// or read in place when the task has few B slivers. gemm_rows takes A as
// row pointers instead (an implicit convolution's input rows), read in
// place the same way, each slice within one segment of them. Depth is cut
// into equal slices (slice_depth). One template compiles three times and the
// widest the processor runs is chosen at run time (cpu_simd_level):
// AVX-512 with 6 x 64 float tiles for a row-major A (24 of the 32 zmm
// registers, each broadcast of A feeding four FMAs) and 8 x 32 for a
// transposed one, AVX2+FMA with 6 x 16 tiles (12 of the 16 ymm
// registers), and portable. Threads split the A blocks and, when there are
// too few for the pool, the columns of B as well; a product whose depth
// dwarfs its output splits the depth instead (gemm_split_k).
#include "gemm_cpu.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "simd.h"
#include "threadpool.h"

namespace pv {
namespace {

constexpr int64_t kKC = 256;   // most depth of a slice with packed A; split-k granularity
constexpr int64_t kMC = 120;   // rows of an A block: 120 KiB packed (float), in L2
constexpr int64_t kNC = 3072;  // columns of a packed B block (per-slice passes)
constexpr int64_t kWholeDepthBytes = 16 << 20;  // whole-depth packed B: fits the L3
constexpr int64_t kSerialPassDepth = 2048;     // see gemm_impl

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A micro-tile: MR rows by Vecs vectors of Bytes. kMC is a multiple of MR.
// Full slivers of a row-major A (the column matrix, an output gradient)
// are read by the micro-kernel straight from their MR rows instead of a
// packed copy (block_rows_in_place). On the AVX2 machine (Zen 3) that was
// faster for every convolution shape measured, most where B is narrow, since each packed A
// element then feeds few FMAs: 93 to 131 GFLOP/s for 12544 x 64 x 288,
// 105 to 132 for 512 x 512 x 4608, 144 to 162 for a square 512. On the
// AVX-512 machine (Sapphire Rapids class) ResNet-18's forward GEMMs ran
// 12-15% faster in place, input gradients 3%.
// TransInPlace: the most B slivers a task may have for full slivers of a
// transposed A to be read in place too (see block_task).
// RowsDepth: the most depth of a slice when A is read in place by rows.
// There the A sliver (MR x depth) is what stays in L1 and the B column
// group sits in L2, so the slice may be deeper than where a packed B
// sliver (depth x NR) must fit L1 (kKC); C is then read and written once
// per deeper slice. On the AVX-512 machine (Sapphire Rapids class, 48 KiB
// L1, 2 MiB L2) 384 ran ResNet-18's forward GEMMs 5% faster than 256 and
// square ones 2% faster, 512 was between them.
template <typename T, int Bytes, int Rows, int Vecs, int TransInPlace, int RowsDepth>
struct Tile {
  typedef T V __attribute__((vector_size(Bytes)));
  static constexpr int L = Bytes / (int)sizeof(T), MR = Rows, NV = Vecs, NR = Vecs * L;
  static constexpr int kTransInPlace = TransInPlace;
  static constexpr int64_t kRowsDepth = RowsDepth;
  static_assert(kMC % MR == 0, "A blocks hold whole slivers");
  // The A scratch (kMC x kKC per worker) holds a packed transposed block
  // or a partial row-major sliver (MR x RowsDepth).
  static_assert(RowsDepth >= kKC && MR * RowsDepth <= kMC * kKC, "slice depth out of range");
};
template <typename T>
using NarrowTile = Tile<T, 32, 6, 2, 8, 256>;  // AVX2 and portable
// On AVX-512 a row-major A takes 6 x 64 tiles: in a loop on cached data
// 6 x 4 vectors ran at 89% of a core's FMA peak, 8 x 2 at 84% (more loads
// per FMA), and products with 64 columns (a 64-channel layer's forward
// and input gradient) 23% faster, square ones 0-8%; ResNet-50's
// convolutions took 1-3% less time. A transposed A (weight gradients)
// keeps 8 x 32: its packing and the transposed stores of gemm_ct want
// slivers of 8 rows, and 6 x 64 ran those products 3-15% slower.
template <typename T>
using WideTile = Tile<T, 64, 6, 4, 1, 384>;
template <typename T>
using WideTileT = Tile<T, 64, 8, 2, 2, 384>;

// The depth of each slice for a product of depth k whose slices may be no
// deeper than most: k split into equal slices, rounded up to 8, rather than
// full ones and a shallow remainder (576 as 288 + 288, not 256 + 256 + 64,
// whose last pass reads and writes C for a quarter of the work). It
// depends on k alone, so results do not depend on the thread count.
int64_t slice_depth(int64_t k, int64_t most) {
  const int64_t slices = (k + most - 1) / most;
  return std::min(most, ((k + slices - 1) / slices + 7) / 8 * 8);
}

// One call's operands plus the current column block jc and its packed B.
template <typename T>
struct Job {
  bool ta, tb;
  int64_t m, n, k;
  T alpha;
  const T *a, *b;
  int64_t lda, ldb;
  T beta;
  T *c;
  int64_t ldc;
  int64_t jc, nc;
  int64_t kcs;        // depth of a slice (slice_depth); the last may be shallower
  int64_t pc0, pc1;   // depth range of this pass, a whole number of slices
  int64_t ncp;        // nc rounded up to NR: packed row length of B
  const T *bpack;     // slice pc at bpack + (pc - pc0) * ncp: [slivers][kc][NR]
  T *apack;           // [workers][kMC * kKC]
  T *tile;            // buffered gemm_ct: [workers][kMC * col_chunk], else null; see block_task
  int64_t col_tasks;  // column chunks per A block
  int64_t col_chunk;  // columns per chunk, a multiple of NR
  const GemmRows<T> *rows;  // gathered rows of A (gemm_rows), else null
  int64_t seg;              // rows->segment, else 0: slices end at segment ends
  bool ct;                  // c holds C^T [n][ldc] (gemm_ct)
};

// The depth of the slice that starts at pc: kcs, cut at the end of k and,
// for gathered rows, at the end of pc's segment.
template <typename T>
PV_INLINE int64_t slice_at(const Job<T> &j, int64_t pc) {
  const int64_t end = j.seg ? std::min(j.k, (pc / j.seg + 1) * j.seg) : j.k;
  return std::min(j.kcs, end - pc);
}

// How many depths ahead a transposed A is prefetched, read in place or
// packed. Its rows are lda apart, farther than the hardware's stride prefetcher
// follows, so each depth's line came from L3 on demand (about 300 cycles,
// some 35 depths of multiply-adds).
constexpr int64_t kStridedAhead = 32;

// N values of T as one vector (N T a power of two bytes).
template <typename T, int N>
struct Run {
  typedef T U __attribute__((vector_size(N * sizeof(T))));
};

// Packs op(A)[i0 : i0 + mc][pc : pc + kc] into MR-row slivers
// dst[sliver][kk][MR], rows past the end zero. Packing A is redone for
// every task and showed up at ~10% of a ResNet step, so full slivers of a
// transposed A take a vector path.
template <typename T, typename S>
PV_INLINE void pack_a(const Job<T> &j, int64_t i0, int64_t mc, int64_t pc, int64_t kc,
                      T *dst) {
  constexpr int MR = S::MR;
  if (j.ta) {
    // Depth by depth across all full slivers: each depth's row of A^T is
    // read as one run of mc values, a few cache lines in sequence, and
    // prefetched kStridedAhead depths ahead (sliver by sliver, MR values
    // per row, the copy waited on L3 for every line, twice). Each sliver's
    // MR values go as one vector where MR values make one (8 floats on the
    // wide tile); on the narrow tile (6 floats) as a vector of L that runs
    // into the next depth's slot, rewritten next, except at the last depth
    // (value by value on the AVX2 machine this copy was ~15% of the weight
    // gradients' time).
    const int64_t full = mc / MR * MR, lda = j.lda;
    const T *src = j.a + pc * lda + i0;
    constexpr int64_t kLine = 64 / (int64_t)sizeof(T);
    for (int64_t kk = 0; kk < kc; kk++, src += lda) {
      for (int64_t x = 0; x < full; x += kLine) __builtin_prefetch(src + kStridedAhead * lda + x);
      T *d = dst + kk * MR;
      if constexpr ((MR & (MR - 1)) == 0) {
        typedef typename Run<T, MR>::U U;
        for (int64_t ir = 0; ir < full; ir += MR, d += MR * kc) vstore(d, vload<U>(src + ir));
      } else if (S::L >= MR && kk + 1 < kc) {
        // The load may read past the sliver into the next row of A, which
        // exists since kk + 1 < kc.
        typedef typename S::V V;
        for (int64_t ir = 0; ir < full; ir += MR, d += MR * kc) vstore(d, vload<V>(src + ir));
      } else {
        for (int64_t ir = 0; ir < full; ir += MR, d += MR * kc)
          for (int r = 0; r < MR; r++) d[r] = src[ir + r];
      }
    }
    if (full == mc) return;
    T *d = dst + full * kc;
    const int rows = (int)(mc - full);
    for (int64_t kk = 0; kk < kc; kk++) {
      const T *row = j.a + (pc + kk) * lda + i0 + full;
      for (int r = 0; r < MR; r++) d[kk * MR + r] = r < rows ? row[r] : (T)0;
    }
    return;
  }
  // A row-major A packs only a last partial sliver (block_rows_in_place).
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int rows = (int)std::min<int64_t>(MR, mc - ir);
    T *d = dst + ir * kc;
    for (int r = 0; r < MR; r++) {
      const T *src = j.a + (i0 + ir + r) * j.lda + pc;
      for (int64_t kk = 0; kk < kc; kk++) d[kk * MR + r] = r < rows ? src[kk] : (T)0;
    }
  }
}

// Packs a partial sliver of gathered rows (rp[0 : rows], depths [0, kc)
// of each) into dst[kk][MR], the rows past the end zero.
template <typename T, typename S>
PV_INLINE void pack_rows(const T *const *rp, int rows, int64_t kc, T *dst) {
  constexpr int MR = S::MR;
  for (int r = 0; r < MR; r++)
    for (int64_t kk = 0; kk < kc; kk++) dst[kk * MR + r] = r < rows ? rp[r][kk] : (T)0;
}

// Packs the NR-column sliver p of op(B)[pc : pc + kc][jc : jc + nc] into
// its place in j.bpack. Full slivers skip the per-element bounds test.
template <typename T, typename S>
PV_INLINE void pack_b_sliver(const Job<T> &j, int64_t p, int64_t pc, int64_t kc) {
  typedef typename S::V V;
  constexpr int NR = S::NR, L = S::L;
  const int64_t j0 = j.jc + p * NR;
  const int cols = (int)std::min<int64_t>(NR, j.jc + j.nc - j0);
  T *d = const_cast<T *>(j.bpack) + (pc - j.pc0) * j.ncp + p * kc * NR;
  if (!j.tb) {
    for (int64_t kk = 0; kk < kc; kk++) {
      const T *src = j.b + (pc + kk) * j.ldb + j0;
      if (cols == NR) {  // vector copies: GCC kept the loop scalar
        for (int v = 0; v < S::NV; v++) vstore(d + kk * NR + v * L, vload<V>(src + v * L));
      } else {
        for (int c = 0; c < NR; c++) d[kk * NR + c] = c < cols ? src[c] : (T)0;
      }
    }
  } else {
    // A transpose, 8 depths at a time so that the writes stay within 8
    // packed rows (in L1) while each source row is read 8 elements at a
    // go: column by column over all of kc it was 8% of a square GEMM.
    int64_t kk0 = 0;
    for (; kk0 + 8 <= kc; kk0 += 8) {
      T *dk = d + kk0 * NR;
      for (int c = 0; c < cols; c++) {
        const T *src = j.b + (j0 + c) * j.ldb + pc + kk0;
        for (int t = 0; t < 8; t++) dk[t * NR + c] = src[t];
      }
      for (int c = cols; c < NR; c++)
        for (int t = 0; t < 8; t++) dk[t * NR + c] = (T)0;
    }
    for (int c = 0; c < NR; c++) {
      const T *src = j.b + (j0 + c) * j.ldb + pc;
      for (int64_t kk = kk0; kk < kc; kk++) d[kk * NR + c] = c < cols ? src[kk] : (T)0;
    }
  }
}

// c[rows][cols] = alpha * acc + beta * c for one MR x NR micro-tile of
// accumulators; beta == 0 never reads c. With CT, c holds the tile
// transposed, element (i, jj) at c[jj * ldc + i], and prior, when given,
// a row-major partial sum of the tile (row stride ldp) that is added
// first: alpha * acc + prior, then transposed.
template <typename T, typename S, bool CT = false>
PV_INLINE void store_tile(const typename S::V (&acc)[S::MR][S::NV], T alpha, T beta, T *c,
                          int64_t ldc, int rows, int cols, const T *prior = nullptr,
                          int64_t ldp = 0) {
  typedef typename S::V V;
  constexpr int L = S::L, NR = S::NR, MR = S::MR;
  if (!CT && rows == MR && cols == NR) {
    for (int i = 0; i < MR; i++)
      for (int v = 0; v < S::NV; v++) {
        V r = acc[i][v] * alpha;
        if (beta != (T)0) r += beta * vload<V>(c + i * ldc + v * L);
        vstore(c + i * ldc + v * L, r);
      }
    return;
  }
  // prior's rows past rows, and columns past cols, lie inside its buffer
  // and are read but never used.
  T tmp[MR * NR];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < S::NV; v++) {
      V r = acc[i][v] * alpha;
      if (CT && prior) r += vload<V>(prior + i * ldp + v * L);
      vstore(tmp + i * NR + v * L, r);
    }
  if constexpr (CT && MR <= 8 && std::is_same_v<T, float>) {
    // Eight columns at a time, transposed in registers (rows past MR
    // zero): each column of the tile is MR adjacent values of c. Element
    // by element, these stores made gemm_ct run at half the speed of gemm
    // (weight gradients of ResNet-50: 130 against 220 GFLOP/s).
    if (rows == MR) {
      typedef Vec<float>::type W;
      for (int c0 = 0; c0 < cols; c0 += 8) {
        W r[8];
        for (int i = 0; i < 8; i++) r[i] = i < MR ? vload<W>(tmp + i * NR + c0) : W{};
        transpose8(r);
        for (int t = 0; t < 8 && c0 + t < cols; t++) {
          T *dst = c + (c0 + t) * ldc;
          W v = r[t];
          if (beta != (T)0) {
            W old{};
            __builtin_memcpy(&old, dst, MR * sizeof(T));
            v += beta * old;
          }
          __builtin_memcpy(dst, &v, MR * sizeof(T));
        }
      }
      return;
    }
  }
  for (int i = 0; i < rows; i++)
    for (int jj = 0; jj < cols; jj++) {
      T *dst = CT ? c + jj * ldc + i : c + i * ldc + jj;
      T r = tmp[i * NR + jj];
      if (beta != (T)0) r += beta * *dst;
      *dst = r;
    }
}

// c[rows][cols] = alpha * ap bp + beta * c for one MR x NR micro-tile.
// The MR values of A for depth kk are at ap + kk * lda: lda is MR for a
// packed sliver and the row stride for transposed A read in place. With
// Rows, A is row-major in place: value i of depth kk at ap[i * lda + kk].
template <typename T, typename S, bool Rows = false, bool Strided = false, bool CT = false>
PV_INLINE void micro_kernel(int64_t kc, const T *ap, int64_t lda, const T *bp, T alpha,
                            T beta, T *c, int64_t ldc, int rows, int cols,
                            const T *prior = nullptr, int64_t ldp = 0) {
  typedef typename S::V V;
  constexpr int L = S::L, NR = S::NR, MR = S::MR;
  V acc[MR][S::NV];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < S::NV; v++) acc[i][v] = V{};
  // Unrolled by 4: the loop's own add/compare otherwise compete with the
  // MR NV FMAs of an iteration for issue slots.
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < kc; kk++) {
    if (Strided) __builtin_prefetch(ap + kStridedAhead * lda);
    V bv[S::NV];
    for (int v = 0; v < S::NV; v++) bv[v] = vload<V>(bp + v * L);
    for (int i = 0; i < MR; i++) {
      const T ai = Rows ? ap[i * lda] : ap[i];
      for (int v = 0; v < S::NV; v++) acc[i][v] += ai * bv[v];
    }
    ap += Rows ? 1 : lda;
    bp += NR;
  }
  store_tile<T, S, CT>(acc, alpha, beta, c, ldc, rows, cols, prior, ldp);
}

// micro_kernel for a full sliver of gathered rows (gemm_rows), alpha 1:
// value i of depth kk at rp[i][kk], each row where it lies.
template <typename T, typename S>
PV_INLINE void micro_kernel_gather(int64_t kc, const T *const *rp, const T *bp, T beta, T *c,
                                   int64_t ldc, int cols) {
  typedef typename S::V V;
  constexpr int L = S::L, NR = S::NR, MR = S::MR;
  const T *r[MR];
  for (int i = 0; i < MR; i++) r[i] = rp[i];
  V acc[MR][S::NV];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < S::NV; v++) acc[i][v] = V{};
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < kc; kk++) {
    V bv[S::NV];
    for (int v = 0; v < S::NV; v++) bv[v] = vload<V>(bp + v * L);
    for (int i = 0; i < MR; i++) {
      const T ai = r[i][kk];
      for (int v = 0; v < S::NV; v++) acc[i][v] += ai * bv[v];
    }
    bp += NR;
  }
  store_tile<T, S>(acc, (T)1, beta, c, ldc, MR, cols);
}

// block_task for a row-major A, read in place. For
// each group of kInPlaceCols columns, sliver by sliver of A: its MR x kc
// values stay in L1 across the group's B slivers, and the group's packed
// B (128 KiB at kc = 256) stays in L2 across the A slivers. Only a last
// partial A sliver is packed, with zero rows.
constexpr int64_t kInPlaceCols = 128;

template <typename T, typename S>
PV_INLINE void block_rows_in_place(const Job<T> &j, int64_t i0, int64_t mc, int64_t c0,
                                   int64_t c1, T *ap) {
  constexpr int NR = S::NR, MR = S::MR;
  static_assert(kInPlaceCols % NR == 0, "column groups hold whole slivers");
  const T *rp[kMC];  // gathered rows (gemm_rows): where each row's slice lies
  for (int64_t pc = j.pc0, kc; pc < j.pc1; pc += kc) {
    kc = slice_at(j, pc);
    const T beta = pc == 0 ? j.beta : (T)1;
    const T *bblk = j.bpack + (pc - j.pc0) * j.ncp;
    const int64_t last = mc / MR * MR;  // start of the partial sliver, if any
    if (j.rows) j.rows->rows(j.rows->ctx, i0, mc, pc, rp);
    if (last < mc) {
      if (j.rows)
        pack_rows<T, S>(rp + last, (int)(mc - last), kc, ap);
      else
        pack_a<T, S>(j, i0 + last, mc - last, pc, kc, ap);
    }
    for (int64_t g0 = c0; g0 < c1; g0 += kInPlaceCols) {
      const int64_t g1 = std::min(c1, g0 + kInPlaceCols);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int rows = (int)std::min<int64_t>(MR, mc - ir);
        const T *a = j.rows ? nullptr : j.a + (i0 + ir) * j.lda + pc;
        for (int64_t jr = g0; jr < g1; jr += NR) {
          const T *bp = bblk + jr * kc;
          const int cols = (int)std::min<int64_t>(NR, j.nc - jr);
          T *cp = j.c + (i0 + ir) * j.ldc + j.jc + jr;
          if (rows < MR)
            micro_kernel<T, S>(kc, ap, MR, bp, j.alpha, beta, cp, j.ldc, rows, cols);
          else if (j.rows)
            micro_kernel_gather<T, S>(kc, rp + ir, bp, beta, cp, j.ldc, cols);
          else
            micro_kernel<T, S, true>(kc, a, j.lda, bp, j.alpha, beta, cp, j.ldc, rows, cols);
        }
      }
    }
  }
}

// One micro-tile of block_task: A sliver ir of the block at i0 (read in
// place below full, else packed at ap), B sliver at bp, into c (with CT
// c^T; see store_tile for prior).
template <typename T, typename S, bool CT>
PV_INLINE void ta_tile(const Job<T> &j, int64_t pc, int64_t kc, int64_t i0, int64_t ir,
                       int64_t full, const T *ap, const T *bp, int rows, int cols, T *c,
                       int64_t ldc, T beta, const T *prior = nullptr, int64_t ldp = 0) {
  constexpr int MR = S::MR;
  if (ir < full)
    micro_kernel<T, S, false, true, CT>(kc, j.a + pc * j.lda + i0 + ir, j.lda, bp, j.alpha, beta,
                                        c, ldc, rows, cols, prior, ldp);
  else
    micro_kernel<T, S, false, false, CT>(kc, ap + (ir - full) * kc, MR, bp, j.alpha, beta, c, ldc,
                                         rows, cols, prior, ldp);
}

// One task: an A block times a column chunk over the pass's depth range.
// When B packed for the whole depth is small (see gemm_impl) the range is
// all of k, so the pool syncs once per column block rather than twice per
// slice and the task's C tile stays in L2 between slices. Per element
// the sums run over the same slices in the same order either way, so
// results do not depend on the thread count or the pass layout. A
// row-major A goes to block_rows_in_place; a transposed one is packed (or
// read in place, below) and, within a slice, sliver by sliver: the B
// sliver stays in L1 while A is in L2.
template <typename T, typename S>
PV_INLINE void block_task(const Job<T> &j, int64_t task, int worker) {
  constexpr int NR = S::NR, MR = S::MR;
  const int64_t i0 = (task / j.col_tasks) * kMC, mc = std::min(kMC, j.m - i0);
  const int64_t c0 = (task % j.col_tasks) * j.col_chunk;
  const int64_t c1 = std::min(j.nc, c0 + j.col_chunk);
  T *ap = j.apack + worker * kMC * kKC;
  if (!j.ta) {
    block_rows_in_place<T, S>(j, i0, mc, c0, c1, ap);
    return;
  }
  // Transposed A (weight gradients: the column matrix) already holds each
  // sliver's MR values side by side in every row, so when the task has few
  // B slivers, full A slivers are read in place: packing cost as much as
  // the multiply there, the copy waiting on A's rows from L3 (AVX-512 with
  // 2 slivers: 576 x 64 x 3072 ran 9-15% faster; AVX2 with up to 8: the
  // ResNet-18 weight gradients with 64 and 128 channels 9-12% faster), while
  // with more B slivers the packed copy pays for itself (4608 x 512: 23-30%
  // slower in place).
  const int64_t full = j.ta && c1 - c0 <= S::kTransInPlace * NR ? mc / MR * MR : 0;
  // gemm_ct over a pass of all k in several slices (j.tile set): each
  // tile's partial sums go row-major into the worker's tile buffer, and
  // only the last slice adds them up and stores C^T, transposed once
  // rather than per slice.
  T *tile = j.tile ? j.tile + worker * kMC * j.col_chunk : nullptr;
  const int64_t ldt = ceil_div(c1 - c0, (int64_t)NR) * NR;
  for (int64_t pc = j.pc0, kc; pc < j.pc1; pc += kc) {
    kc = slice_at(j, pc);
    const bool last = pc + kc >= j.pc1;
    const T beta = pc == 0 ? j.beta : (T)1;
    if (full < mc) pack_a<T, S>(j, i0 + full, mc - full, pc, kc, ap);
    const T *bblk = j.bpack + (pc - j.pc0) * j.ncp;
    for (int64_t jr = c0; jr < c1; jr += NR) {
      const T *bp = bblk + jr * kc;
      const int cols = (int)std::min<int64_t>(NR, j.nc - jr);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int rows = (int)std::min<int64_t>(MR, mc - ir);
        T *ct = j.c + (j.jc + jr) * j.ldc + i0 + ir;
        if (!j.ct) {
          ta_tile<T, S, false>(j, pc, kc, i0, ir, full, ap, bp, rows, cols,
                               j.c + (i0 + ir) * j.ldc + j.jc + jr, j.ldc, beta);
        } else if (!tile) {
          ta_tile<T, S, true>(j, pc, kc, i0, ir, full, ap, bp, rows, cols, ct, j.ldc, beta);
        } else {
          T *tp = tile + ir * ldt + (jr - c0);
          if (last)
            ta_tile<T, S, true>(j, pc, kc, i0, ir, full, ap, bp, rows, cols, ct, j.ldc, j.beta,
                                tp, ldt);
          else
            ta_tile<T, S, false>(j, pc, kc, i0, ir, full, ap, bp, rows, cols, tp, ldt,
                                 pc == 0 ? (T)0 : (T)1);
        }
      }
    }
  }
}

// The compiled variants of the two task bodies, and the table gemm_impl
// picks from: NR differs between them, so it travels with the functions.
template <typename T>
struct Kernels {
  int nr;
  int64_t rows_depth;  // Tile::kRowsDepth
  void (*pack_b)(const Job<T> &, int64_t sliver, int64_t pc, int64_t kc);
  void (*block)(const Job<T> &, int64_t task, int worker);
};

#define PV_GEMM_VARIANT(name, target, tile)                                              \
  template <typename T>                                                                  \
  target void pack_b_##name(const Job<T> &j, int64_t p, int64_t pc, int64_t kc) {        \
    pack_b_sliver<T, tile<T>>(j, p, pc, kc);                                             \
  }                                                                                      \
  template <typename T>                                                                  \
  target void block_task_##name(const Job<T> &j, int64_t t, int w) {                     \
    block_task<T, tile<T>>(j, t, w);                                                     \
  }                                                                                      \
  template <typename T>                                                                  \
  Kernels<T> kernels_##name() {                                                          \
    return Kernels<T>{tile<T>::NR, tile<T>::kRowsDepth,                                  \
                      pack_b_##name<T>, block_task_##name<T>};                           \
  }

PV_GEMM_VARIANT(avx512, PV_TARGET_AVX512, WideTile)
PV_GEMM_VARIANT(avx512t, PV_TARGET_AVX512, WideTileT)
PV_GEMM_VARIANT(avx2, PV_TARGET_AVX2, NarrowTile)
PV_GEMM_VARIANT(portable, , NarrowTile)
#undef PV_GEMM_VARIANT

// The kernels for a row-major (ta false) or transposed A.
template <typename T>
const Kernels<T> &kernels(bool ta) {
  static const Kernels<T> k = cpu_has_avx512()     ? kernels_avx512<T>()
                              : cpu_has_avx2_fma() ? kernels_avx2<T>()
                                                   : kernels_portable<T>();
  static const Kernels<T> kt = cpu_has_avx512() ? kernels_avx512t<T>() : k;
  return ta ? kt : k;
}

template <typename T>
void scale_c(int64_t m, int64_t n, T beta, T *c, int64_t ldc) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t jj = 0; jj < n; jj++)
      c[i * ldc + jj] = beta == (T)0 ? (T)0 : beta * c[i * ldc + jj];
}

// FMA chains for the peak measurement: 10 independent accumulators hide
// the FMA latency (4 cycles x 2 units needs at least 8). Returns a sum of
// the results so that the work is not optimised away.
template <typename S>
PV_INLINE float fma_chains(int64_t iters) {
  typedef typename S::V V;
  V acc[10], x = V{} + 0.999999f, y = V{} + 1e-7f;
  for (int i = 0; i < 10; i++) acc[i] = V{} + (float)i;
  for (int64_t t = 0; t < iters; t++)
    for (int i = 0; i < 10; i++) acc[i] = acc[i] * x + y;
  float s = 0;
  for (int i = 0; i < 10; i++)
    for (int l = 0; l < S::L; l++) s += acc[i][l];
  return s;
}
PV_TARGET_AVX512 float fma_run_avx512(int64_t iters) {
  return fma_chains<WideTile<float>>(iters);
}
PV_TARGET_AVX2 float fma_run_avx2(int64_t iters) { return fma_chains<NarrowTile<float>>(iters); }
float fma_run_portable(int64_t iters) { return fma_chains<NarrowTile<float>>(iters); }

// The calling thread's scratch blocks, freed when the thread ends.
struct ScratchSet {
  void *ptr[kScratchSlots] = {};
  int64_t bytes[kScratchSlots] = {};
  ~ScratchSet() {
    for (void *p : ptr) std::free(p);
  }
};

}  // namespace

void *scratch_bytes(ScratchSlot slot, int64_t bytes) {
  thread_local ScratchSet set;
  if (bytes > set.bytes[slot]) {
    // Grow by at least a quarter so that slowly rising sizes do not
    // reallocate every call; rounded to 64 bytes for aligned_alloc.
    int64_t want = std::max(bytes, set.bytes[slot] + set.bytes[slot] / 4);
    want = (want + 63) / 64 * 64;
    std::free(set.ptr[slot]);
    set.bytes[slot] = 0;
    set.ptr[slot] = std::aligned_alloc(64, (size_t)want);
    if (!set.ptr[slot]) throw std::bad_alloc();
    set.bytes[slot] = want;
  }
  return set.ptr[slot];
}

template <typename T>
void gemm_impl(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a,
               int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc, bool split,
               const GemmRows<T> *rows = nullptr, bool ct = false);

template <typename T>
void sum_parts(int64_t parts, int64_t m, int64_t n, const T *partial, T beta, T *c,
               int64_t ldc, bool transposed) {
  if (transposed) {  // c[jj][i]: a thread per row of c^T, written in sequence
    parallel_for(n, [&](int64_t jj, int) {
      for (int64_t i = 0; i < m; i++) {
        T acc = beta == (T)0 ? (T)0 : beta * c[jj * ldc + i];
        for (int64_t p = 0; p < parts; p++) acc += partial[(p * m + i) * n + jj];
        c[jj * ldc + i] = acc;
      }
    });
    return;
  }
  parallel_for(m, [&](int64_t i, int) {
    for (int64_t jj = 0; jj < n; jj++) {
      T acc = beta == (T)0 ? (T)0 : beta * c[i * ldc + jj];
      for (int64_t p = 0; p < parts; p++) acc += partial[(p * m + i) * n + jj];
      c[i * ldc + jj] = acc;
    }
  });
}
template void sum_parts<float>(int64_t, int64_t, int64_t, const float *, float, float *, int64_t,
                               bool);
template void sum_parts<double>(int64_t, int64_t, int64_t, const double *, double, double *,
                                int64_t, bool);

// Split-k: when the depth dwarfs the output (a weight gradient, where k
// is every pixel of the batch and C is only K x RSC), blocking over C
// leaves threads idle and syncs the pool once per KC slice. Each worker
// instead multiplies its own slice of k into a private C serially, and the
// partial products are summed in worker order (deterministic).
bool split_k_wanted(int64_t m, int64_t n, int64_t k) {
  return cpu_threads() >= 2 && k >= 4 * kKC && k >= 4 * std::max(m, n);
}

template <typename T>
bool gemm_split_k(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a,
                  int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc, bool ct) {
  const int64_t workers = cpu_threads();
  if (!split_k_wanted(m, n, k)) return false;
  const int64_t parts = std::min(workers, k / kKC);
  const int64_t per = ceil_div(ceil_div(k, parts), kKC) * kKC;
  T *partial = scratch<T>(kScratchSplitK, parts * m * n);
  parallel_for(parts, [&](int64_t p, int) {
    const int64_t k0 = p * per, kn = std::min(per, k - k0);
    T *dst = partial + p * m * n;
    if (kn <= 0) {
      std::fill(dst, dst + m * n, (T)0);
      return;
    }
    const T *ap = ta ? a + k0 * lda : a + k0;
    const T *bp = tb ? b + k0 : b + k0 * ldb;
    // Inside a pool task the inner parallel_for calls run inline.
    gemm_impl<T>(ta, tb, m, n, kn, alpha, ap, lda, bp, ldb, 0, dst, n, false);
  });
  sum_parts(parts, m, n, partial, beta, c, ldc, ct);
  return true;
}

template <typename T>
void gemm_impl(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a,
               int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc, bool split,
               const GemmRows<T> *rows, bool ct) {
  const Kernels<T> &kern = kernels<T>(ta);
  const int64_t NR = kern.nr;
  if (m <= 0 || n <= 0) return;
  if (ct && !ta) throw std::invalid_argument("gemm_ct: a transposed A only");
  if (k <= 0 || alpha == (T)0) {
    scale_c(ct ? n : m, ct ? m : n, beta, c, ldc);
    return;
  }
  if (split && gemm_split_k(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ct)) return;
  const int workers = cpu_threads();
  // Whole-depth passes when B packed for all of k fits kWholeDepthBytes
  // (convolution forward and input gradients: B is the weights), else
  // one pass per slice so that packed B stays in cache (weight
  // gradients, where k is every pixel and B is the column matrix).
  // Gathered rows slice each segment as a whole product slices k.
  const int64_t kcs = slice_depth(rows ? rows->segment : k, ta ? kKC : kern.rows_depth);
  const int64_t n_up = ceil_div(n, NR) * NR;
  // On one thread (a split-k part, or a one-thread pool) a transposed A
  // of several blocks and deeper than kSerialPassDepth goes by per-slice
  // passes too: each A block of a whole-depth pass streams its columns of
  // A, strided, over all of k, so A (the activations of a 1x1
  // convolution's weight gradient, from memory) was read once per block;
  // a slice at a time, whole rows of it are read once. 1x1 weight
  // gradients of ResNet-50 (256 x 64 x 25088, 512 x 128 x 6272) ran 7-20%
  // faster so, shallower ones (576 x 64 x 1536 per thread) 14% slower.
  const bool serial = cpu_threads() < 2 || in_parallel_task();
  const bool whole = k * n_up * (int64_t)sizeof(T) <= kWholeDepthBytes &&
                     !(serial && ta && m > kMC && k >= kSerialPassDepth);
  const int64_t nc_blk = whole ? n_up : std::min(n_up, kNC);
  const int64_t depth = whole ? k : kcs;
  T *bpack = scratch<T>(kScratchPackB, std::min(k, depth) * nc_blk);
  T *apack = scratch<T>(kScratchPackA, workers * kMC * kKC);
  Job<T> j{ta, tb, m, n, k, alpha, a, b, lda, ldb, beta, c, ldc,
           0, 0, kcs, 0, 0, 0, bpack, apack, nullptr, 1, 0, rows, rows ? rows->segment : 0, ct};
  std::vector<int64_t> starts;  // the pass's slices
  const int64_t mblocks = ceil_div(m, kMC);
  for (j.jc = 0; j.jc < n; j.jc += nc_blk) {
    j.nc = std::min(nc_blk, n - j.jc);
    const int64_t slivers = ceil_div(j.nc, NR);
    j.ncp = slivers * NR;
    // About eight tasks per worker, so that uneven ones balance, but no
    // column chunk under 4 slivers or 128 columns, whichever is fewer
    // slivers: each task repacks its A block, which then costs about 1% of
    // the task's multiply-adds.
    const int64_t least = std::min<int64_t>(4, ceil_div(128, NR));
    const int64_t want =
        std::max<int64_t>(1, std::min(ceil_div(slivers, least), ceil_div(8 * workers, mblocks)));
    j.col_chunk = ceil_div(slivers, want) * NR;
    j.col_tasks = ceil_div(j.nc, j.col_chunk);
    // The tile buffers (see block_task) for a single pass over all of k in
    // several slices, taken here on the calling thread, where a failed
    // allocation reaches the caller rather than a pool thread.
    if (ct && depth >= k && kcs < k)
      j.tile = scratch<T>(kScratchTile, workers * kMC * j.col_chunk);
    for (j.pc0 = 0; j.pc0 < k; j.pc0 += depth) {
      j.pc1 = std::min(k, j.pc0 + depth);
      starts.clear();
      for (int64_t pc = j.pc0; pc < j.pc1; pc += slice_at(j, pc)) starts.push_back(pc);
      parallel_for(slivers * (int64_t)starts.size(), [&](int64_t t, int) {
        const int64_t pc = starts[t / slivers];
        kern.pack_b(j, t % slivers, pc, slice_at(j, pc));
      });
      parallel_for(mblocks * j.col_tasks, [&](int64_t t, int w) {
        kern.block(j, t, w);
      });
    }
  }
}

template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t lda,
          const T *b, int64_t ldb, T beta, T *c, int64_t ldc) {
  gemm_impl<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, true);
}

template <typename T>
void gemm_ct(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t lda,
             const T *b, int64_t ldb, T beta, T *ct, int64_t ldct) {
  gemm_impl<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, ct, ldct, true, nullptr, true);
}

template <typename T>
bool gemm_rows_fits(int64_t m, int64_t n, int64_t k) {
  const int64_t nr = kernels<T>(false).nr, n_up = ceil_div(n, nr) * nr;
  return m > 0 && n > 0 && k > 0 && k * n_up * (int64_t)sizeof(T) <= kWholeDepthBytes;
}

template <typename T>
void gemm_rows(const GemmRows<T> &a, bool tb, int64_t m, int64_t n, int64_t k, const T *b,
               int64_t ldb, T *c, int64_t ldc) {
  // B packed whole makes one pass over the depth, the only one the
  // gathered rows take (a pass boundary inside a segment would split it),
  // and the depth is never split across threads: for the forward pass of
  // ResNet-18's last stage (512 x 512 x 2304 and x 4608) that ran as fast
  // or 15% faster than split.
  if (!gemm_rows_fits<T>(m, n, k) || a.segment <= 0)
    throw std::invalid_argument("gemm_rows: a product gemm_rows_fits refuses");
  gemm_impl<T>(false, tb, m, n, k, (T)1, nullptr, 0, b, ldb, (T)0, c, ldc, false, &a);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                          const float *, int64_t, float, float *, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double *,
                           int64_t, const double *, int64_t, double, double *, int64_t);
template void gemm_ct<float>(bool, bool, int64_t, int64_t, int64_t, float, const float *,
                             int64_t, const float *, int64_t, float, float *, int64_t);
template void gemm_ct<double>(bool, bool, int64_t, int64_t, int64_t, double, const double *,
                              int64_t, const double *, int64_t, double, double *, int64_t);
template bool gemm_rows_fits<float>(int64_t, int64_t, int64_t);
template bool gemm_rows_fits<double>(int64_t, int64_t, int64_t);
template void gemm_rows<float>(const GemmRows<float> &, bool, int64_t, int64_t, int64_t,
                               const float *, int64_t, float *, int64_t);
template void gemm_rows<double>(const GemmRows<double> &, bool, int64_t, int64_t, int64_t,
                                const double *, int64_t, double *, int64_t);

double cpu_fma_peak_gflops() {
  const int64_t iters = 2000000;
  const bool wide = cpu_has_avx512(), fast = cpu_has_avx2_fma();
  const int lanes = wide ? WideTile<float>::L : NarrowTile<float>::L;
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    sink = sink + (wide ? fma_run_avx512(iters)
                   : fast ? fma_run_avx2(iters) : fma_run_portable(iters));
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * lanes * 10 * (double)iters / s / 1e9);
  }
  return best;
}

}  // namespace pv
