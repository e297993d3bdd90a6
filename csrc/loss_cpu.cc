// loss_cpu.cc: the poly-view objectives on the CPU, fused so that the
// R x R similarity matrix S is never stored (memory O(R d)).
//
// Layout. Rows are stored view-major, q = b * np + i for view b of image
// i, each view's block padded to np images (a multiple of kBlock) and each
// row to dp floats (a multiple of kPanel), padding zero. A tile of S is
// then kBlock rows of one view against kBlock rows of one view, so the
// negatives of a row in a view are contiguous and the per-view LSEs of
// OBJECTIVES.md are plain row reductions.
//
// Passes (see objective_math.h):
//   1. for every tile pair (K1 <= K2) compute S = X X^T / tau once and
//      reduce it both ways: rows of K1 against view(K2), rows of K2
//      against view(K1); online max-shifted LSE, positives recorded;
//   2. per image, pv_image_terms turns Lv and P into the loss and into G's
//      constants;
//   3. recompute each tile, form G + G^T for it, and accumulate
//      (G + G^T) X into the rows of both blocks.
// Symmetry halves the multiply-adds: 0.5 R^2 d in pass 1, 1.5 R^2 d in
// pass 3. Work is split into a fixed number of shares with their own
// accumulators, merged in share order, so a result depends on the thread
// count but never on scheduling: the same run repeats bit for bit.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "objective_math.h"
#include "simd.h"
#include "threadpool.h"

namespace pv {
namespace {

constexpr int kBlock = 64;  // rows per tile side
constexpr int kPanel = 16;  // columns per packed panel of the S kernel
constexpr int kMaxShares = 32;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// One contrastive problem in internal layout. For most objectives x holds
// the normalised views z; suffstats runs M problems of two "views" each.
template <typename T>
struct Problem {
  pv_objective obj;
  int64_t n, m, np, dp;  // images, views, padded images, padded width
  T inv_tau;
  const T *x;   // [m * np][dp]
  const T *xp;  // x packed in panels: [m * np / kPanel][dp][kPanel]
  int64_t rows() const { return m * np; }
  int64_t blocks() const { return rows() / kBlock; }
};

// Per-share running LSE state of pass 1: max and shifted sum, [rows][m].
template <typename T>
struct RowStats {
  T *mx, *sum;
};

// ---- tile kernels -------------------------------------------------------

// s[64][64] = scale * A B^T for A = 64 rows of x (stride dp) and B given as
// 4 packed panels. 4 x 16 register blocking: 8 accumulators of 8 floats.
template <typename T>
PV_INLINE void tile_similarity(const T *a, const T *bp, int64_t dp, T scale, T *s) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes, NV = kPanel / L;
  for (int r = 0; r < kBlock; r += 4) {
    const T *a0 = a + r * dp;
    for (int p = 0; p < kBlock / kPanel; p++) {
      const T *panel = bp + p * dp * kPanel;
      V acc[4][NV];
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = V{};
      for (int64_t t = 0; t < dp; t++) {
        V b[NV];
        for (int v = 0; v < NV; v++) b[v] = vload<V>(panel + t * kPanel + v * L);
        for (int i = 0; i < 4; i++) {
          T ai = a0[i * dp + t];
          for (int v = 0; v < NV; v++) acc[i][v] += ai * b[v];
        }
      }
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < NV; v++)
          vstore(s + (r + i) * kBlock + p * kPanel + v * L, acc[i][v] * scale);
    }
  }
}

// out[64][dp] += g[64][64] * x[64][dp] (x rows with stride dp).
template <typename T>
PV_INLINE void tile_accumulate(const T *g, const T *x, int64_t dp, T *out) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes, NV = kPanel / L;
  for (int r = 0; r < kBlock; r += 4) {
    for (int64_t t0 = 0; t0 < dp; t0 += kPanel) {
      V acc[4][NV];
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = vload<V>(out + (r + i) * dp + t0 + v * L);
      for (int c = 0; c < kBlock; c++) {
        V xv[NV];
        for (int v = 0; v < NV; v++) xv[v] = vload<V>(x + c * dp + t0 + v * L);
        for (int i = 0; i < 4; i++) {
          T gi = g[(r + i) * kBlock + c];
          for (int v = 0; v < NV; v++) acc[i][v] += gi * xv[v];
        }
      }
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < NV; v++) vstore(out + (r + i) * dp + t0 + v * L, acc[i][v]);
    }
  }
}

template <typename T>
PV_INLINE void transpose_tile(const T *s, T *st) {
  for (int r = 0; r < kBlock; r++)
    for (int c = 0; c < kBlock; c++) st[c * kBlock + r] = s[r * kBlock + c];
}

// Folds 64 values (excluded ones already -inf) into a running LSE.
template <typename T>
PV_INLINE void lse_fold(const T *v, T *mx, T *sum) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  V vm = V{} - INFINITY;
  for (int c = 0; c < kBlock; c += L) {
    V x = vload<V>(v + c);
    vm = x > vm ? x : vm;
  }
  T cmax = hmax<T>(vm);
  if (cmax == -INFINITY) return;
  T m_new = cmax > *mx ? cmax : *mx;
  V acc = V{};
  for (int c = 0; c < kBlock; c += L) acc += vexp(vload<V>(v + c) - m_new);
  *sum = *sum * std::exp(*mx - m_new) + hsum<T>(acc);
  *mx = m_new;
}

// ---- pass 1: per-row, per-view LSE over negatives and positive logits ----

template <typename T>
struct Pass1 {
  const Problem<T> *pb;
  const int32_t *pairs;  // tile pairs (K1, K2), K1 <= K2
  int64_t npairs;
  int shares;
  std::vector<RowStats<T>> stats;  // one per share
  T *pos;                          // [rows][m], written once per entry
};

// Reduces the rows of s (tile of row block kr against column block kc)
// into stats of kr's rows for view(kc); records positives.
template <typename T>
PV_INLINE void reduce_rows(const Problem<T> &pb, int64_t kr, int64_t kc, T *s,
                           RowStats<T> st, T *pos) {
  const int64_t bpv = pb.np / kBlock;  // blocks per view
  const int64_t vr = kr / bpv, vc = kc / bpv;
  const int64_t i0 = (kr % bpv) * kBlock, j0 = (kc % bpv) * kBlock;
  const int64_t m = pb.m;
  int64_t jvalid = std::min<int64_t>(kBlock, pb.n - j0);
  for (int rr = 0; rr < kBlock; rr++) {
    const int64_t i = i0 + rr;
    if (i >= pb.n) break;
    T *row = s + rr * kBlock;
    for (int64_t c = jvalid; c < kBlock; c++) row[c] = -INFINITY;
    const int64_t q = kr * kBlock + rr;
    if (i >= j0 && i < j0 + kBlock) {
      if (vr != vc) pos[q * m + vc] = row[i - j0];
      row[i - j0] = -INFINITY;  // self or positive: never a negative
    }
    lse_fold(row, &st.mx[q * m + vc], &st.sum[q * m + vc]);
  }
}

template <typename T>
PV_INLINE void pass1_share(Pass1<T> &p1, int share) {
  const Problem<T> &pb = *p1.pb;
  T s[kBlock * kBlock], st[kBlock * kBlock];
  for (int64_t k = share; k < p1.npairs; k += p1.shares) {
    const int64_t k1 = p1.pairs[2 * k], k2 = p1.pairs[2 * k + 1];
    tile_similarity(pb.x + k1 * kBlock * pb.dp, pb.xp + k2 * kBlock * pb.dp, pb.dp,
                    pb.inv_tau, s);
    if (k1 != k2) transpose_tile(s, st);
    reduce_rows(pb, k1, k2, s, p1.stats[share], p1.pos);
    if (k1 != k2) reduce_rows(pb, k2, k1, st, p1.stats[share], p1.pos);
  }
}

PV_TARGET_AVX2 void pass1_share_avx2(Pass1<float> &p1, int share) { pass1_share(p1, share); }
void pass1_share_portable(Pass1<float> &p1, int share) { pass1_share(p1, share); }
void pass1_share_f64(Pass1<double> &p1, int share) { pass1_share(p1, share); }

// ---- pass 3: (G + G^T) X -------------------------------------------------

template <typename T>
struct Pass3 {
  const Problem<T> *pb;
  const int32_t *pairs;
  int64_t npairs;
  int shares;
  const T *k, *coef, *pos_g;  // [rows][m] each
  std::vector<T *> dx;        // per share [rows][dp]
};

template <typename T>
PV_INLINE void pass3_share(Pass3<T> &p3, int share) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  const Problem<T> &pb = *p3.pb;
  const int64_t m = pb.m, dp = pb.dp, bpv = pb.np / kBlock;
  T s[kBlock * kBlock], g[kBlock * kBlock], gt[kBlock * kBlock];
  T ck[kBlock], cc[kBlock];
  T *dx = p3.dx[share];
  for (int64_t k = share; k < p3.npairs; k += p3.shares) {
    const int64_t k1 = p3.pairs[2 * k], k2 = p3.pairs[2 * k + 1];
    const int64_t v1 = k1 / bpv, v2 = k2 / bpv;
    const int64_t i0 = (k1 % bpv) * kBlock, j0 = (k2 % bpv) * kBlock;
    tile_similarity(pb.x + k1 * kBlock * dp, pb.xp + k2 * kBlock * dp, dp, pb.inv_tau, s);

    // Column constants: G[col, row] uses the column's K and coef for the
    // row block's view. Padding columns get coef 0 and a harmless shift.
    for (int c = 0; c < kBlock; c++) {
      const int64_t q2 = k2 * kBlock + c;
      bool ok = j0 + c < pb.n;
      ck[c] = ok ? p3.k[q2 * m + v1] : (T)0;
      cc[c] = ok ? p3.coef[q2 * m + v1] : (T)0;
    }
    for (int rr = 0; rr < kBlock; rr++) {
      const int64_t i = i0 + rr, q1 = k1 * kBlock + rr;
      T *grow = g + rr * kBlock;
      if (i >= pb.n) {
        for (int c = 0; c < kBlock; c++) grow[c] = 0;
        continue;
      }
      const V rk = V{} + p3.k[q1 * m + v2], rc = V{} + p3.coef[q1 * m + v2];
      const T *srow = s + rr * kBlock;
      for (int c = 0; c < kBlock; c += L) {
        V sv = vload<V>(srow + c);
        V gv = rc * vexp(sv - rk) + vload<V>(cc + c) * vexp(sv - vload<V>(ck + c));
        vstore(grow + c, gv);
      }
      for (int64_t c = std::min<int64_t>(kBlock, pb.n - j0); c < kBlock; c++) grow[c] = 0;
      if (i >= j0 && i < j0 + kBlock) {
        const int64_t q2 = k2 * kBlock + (i - j0);
        grow[i - j0] = v1 == v2 ? (T)0 : p3.pos_g[q1 * m + v2] + p3.pos_g[q2 * m + v1];
      }
    }
    tile_accumulate(g, pb.x + k2 * kBlock * dp, dp, dx + k1 * kBlock * dp);
    if (k1 != k2) {
      transpose_tile(g, gt);
      tile_accumulate(gt, pb.x + k1 * kBlock * dp, dp, dx + k2 * kBlock * dp);
    }
  }
}

PV_TARGET_AVX2 void pass3_share_avx2(Pass3<float> &p3, int share) { pass3_share(p3, share); }
void pass3_share_portable(Pass3<float> &p3, int share) { pass3_share(p3, share); }
void pass3_share_f64(Pass3<double> &p3, int share) { pass3_share(p3, share); }

void run_pass1(Pass1<float> &p, int share) {
  cpu_has_avx2_fma() ? pass1_share_avx2(p, share) : pass1_share_portable(p, share);
}
void run_pass1(Pass1<double> &p, int share) { pass1_share_f64(p, share); }
void run_pass3(Pass3<float> &p, int share) {
  cpu_has_avx2_fma() ? pass3_share_avx2(p, share) : pass3_share_portable(p, share);
}
void run_pass3(Pass3<double> &p, int share) { pass3_share_f64(p, share); }

// ---- one contrastive problem ----------------------------------------------

int share_count(int64_t npairs) {
  return (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)cpu_threads(), kMaxShares, npairs}));
}

// Packs x [rows][dp] into panels [rows / kPanel][dp][kPanel].
template <typename T>
void pack_panels(const T *x, int64_t rows, int64_t dp, T *xp) {
  parallel_for(rows / kPanel, [&](int64_t p, int) {
    T *dst = xp + p * dp * kPanel;
    for (int64_t t = 0; t < dp; t++)
      for (int c = 0; c < kPanel; c++) dst[t * kPanel + c] = x[(p * kPanel + c) * dp + t];
  });
}

// Evaluates the loss of pb and, when dx is not NULL, writes
// dL/dx = (G + G^T) x / tau into dx [rows][dp] (padding rows zero).
template <typename T>
double contrast(Problem<T> &pb, T *dx) {
  const int64_t rows = pb.rows(), m = pb.m, nb = pb.blocks();
  CpuBuffer<T> xp(rows * pb.dp);
  pack_panels(pb.x, rows, pb.dp, xp.get());
  pb.xp = xp.get();

  std::vector<int32_t> pairs;
  pairs.reserve(nb * (nb + 1));
  for (int64_t k1 = 0; k1 < nb; k1++)
    for (int64_t k2 = k1; k2 < nb; k2++) {
      pairs.push_back((int32_t)k1);
      pairs.push_back((int32_t)k2);
    }
  const int64_t npairs = (int64_t)pairs.size() / 2;
  const int shares = share_count(npairs);

  // Pass 1.
  CpuBuffer<T> stat_buf(2 * shares * rows * m), pos(rows * m);
  Pass1<T> p1{&pb, pairs.data(), npairs, shares, {}, pos.get()};
  for (int s = 0; s < shares; s++) {
    T *base = stat_buf.get() + 2 * s * rows * m;
    std::fill(base, base + rows * m, (T)-INFINITY);
    std::fill(base + rows * m, base + 2 * rows * m, (T)0);
    p1.stats.push_back({base, base + rows * m});
  }
  parallel_for(shares, [&](int64_t s, int) { run_pass1(p1, (int)s); });

  // Merge shares into Lv, in share order.
  CpuBuffer<T> lv(rows * m);
  parallel_for(nb, [&](int64_t blk, int) {
    for (int64_t e = blk * kBlock * m; e < (blk + 1) * kBlock * m; e++) {
      T mx = -INFINITY;
      for (int s = 0; s < shares; s++) mx = std::max(mx, p1.stats[s].mx[e]);
      double sum = 0;
      for (int s = 0; s < shares; s++)
        if (p1.stats[s].sum[e] > 0) sum += (double)p1.stats[s].sum[e] * std::exp((double)(p1.stats[s].mx[e] - mx));
      lv[e] = (T)((double)mx + std::log(sum));
    }
  });

  // Per-image terms.
  CpuBuffer<T> kk(rows * m), coef(rows * m), pos_g(rows * m);
  const int64_t chunk = 256, nchunks = (pb.n + chunk - 1) / chunk;
  std::vector<double> partial(nchunks, 0.0);
  const double big_k = 2.0 * (double)pb.inv_tau + 1.0;
  parallel_for(nchunks, [&](int64_t ch, int) {
    T lvi[PV_MAX_VIEWS * PV_MAX_VIEWS], pi[PV_MAX_VIEWS * PV_MAX_VIEWS];
    T ki[PV_MAX_VIEWS * PV_MAX_VIEWS], ci[PV_MAX_VIEWS * PV_MAX_VIEWS];
    T gi[PV_MAX_VIEWS * PV_MAX_VIEWS];
    double acc = 0;
    for (int64_t i = ch * chunk; i < std::min(pb.n, (ch + 1) * chunk); i++) {
      for (int64_t a = 0; a < m; a++)
        for (int64_t b = 0; b < m; b++) {
          const int64_t e = (a * pb.np + i) * m + b;
          lvi[a * m + b] = lv[e];
          pi[a * m + b] = a == b ? (T)0 : pos[e];
        }
      acc += pv_image_terms<T>(pb.obj, (int)m, pb.n, big_k, lvi, pi, ki, ci, gi);
      for (int64_t a = 0; a < m; a++)
        for (int64_t b = 0; b < m; b++) {
          const int64_t e = (a * pb.np + i) * m + b;
          kk[e] = ki[a * m + b];
          coef[e] = ci[a * m + b];
          pos_g[e] = gi[a * m + b];
        }
    }
    partial[ch] = acc;
  });
  double loss = 0;
  for (double p : partial) loss += p;
  if (!dx) return loss;

  // Pass 3, then the shares' sum scaled by 1 / tau.
  CpuBuffer<T> dx_buf(shares > 1 ? (shares - 1) * rows * pb.dp : 0);
  Pass3<T> p3{&pb, pairs.data(), npairs, shares, kk.get(), coef.get(), pos_g.get(), {}};
  p3.dx.push_back(dx);
  for (int s = 1; s < shares; s++) p3.dx.push_back(dx_buf.get() + (s - 1) * rows * pb.dp);
  for (int s = 0; s < shares; s++) std::fill(p3.dx[s], p3.dx[s] + rows * pb.dp, (T)0);
  parallel_for(shares, [&](int64_t s, int) { run_pass3(p3, (int)s); });
  parallel_for(nb, [&](int64_t blk, int) {
    for (int64_t e = blk * kBlock * pb.dp; e < (blk + 1) * kBlock * pb.dp; e++) {
      T v = dx[e];
      for (int s = 1; s < shares; s++) v += p3.dx[s][e];
      dx[e] = v * pb.inv_tau;
    }
  });
  return loss;
}

// ---- input, output and the objectives' entry ------------------------------

template <typename T>
T load_elem(const void *p, pv_dtype dt, int64_t i) {
  switch (dt) {
    case PV_F32: return (T) static_cast<const float *>(p)[i];
    case PV_F64: return (T) static_cast<const double *>(p)[i];
    case PV_BF16: return (T)bf16_to_f32(static_cast<const uint16_t *>(p)[i]);
    default: return 0;
  }
}

template <typename T>
void store_elem(void *p, pv_dtype dt, int64_t i, T v) {
  switch (dt) {
    case PV_F32: static_cast<float *>(p)[i] = (float)v; break;
    case PV_F64: static_cast<double *>(p)[i] = (double)v; break;
    case PV_BF16: static_cast<uint16_t *>(p)[i] = f32_to_bf16((float)v); break;
    default: break;
  }
}

// Normalises h [n][m][d] into z (view-major, padded) and keeps the norms.
// Fails on a non-finite or zero-norm row, naming it.
template <typename T>
pv_status normalise(const pv_loss_args &a, int64_t np, int64_t dp, T *z, T *norms) {
  const char *name = pv_objective_name(a.objective);
  std::vector<int64_t> bad(a.n * a.m, 0);  // 1: non-finite, 2: zero norm
  parallel_for(a.n, [&](int64_t i, int) {
    for (int64_t v = 0; v < a.m; v++) {
      const int64_t src = (i * a.m + v) * a.d;
      T *dst = z + (v * np + i) * dp;
      double ss = 0;
      bool finite = true;
      for (int64_t t = 0; t < a.d; t++) {
        double x = (double)load_elem<T>(a.h_ptr, a.h_dtype, src + t);
        finite = finite && std::isfinite(x);
        ss += x * x;
      }
      double nrm = std::sqrt(ss);
      if (!finite || !(nrm > 0) || !std::isfinite(nrm)) {
        bad[i * a.m + v] = finite ? 2 : 1;
        continue;
      }
      norms[v * np + i] = (T)nrm;
      for (int64_t t = 0; t < a.d; t++)
        dst[t] = (T)((double)load_elem<T>(a.h_ptr, a.h_dtype, src + t) / nrm);
    }
  });
  for (int64_t r = 0; r < a.n * a.m; r++) {
    if (bad[r] == 1)
      return fail(PV_ERR_NUMERIC, "%s: h[%lld][%lld] (image %lld, view %lld) is not finite",
                  name, (long long)(r / a.m), (long long)(r % a.m), (long long)(r / a.m),
                  (long long)(r % a.m));
    if (bad[r] == 2)
      return fail(PV_ERR_NUMERIC,
                  "%s: h[%lld][%lld] (image %lld, view %lld) has zero norm and cannot be "
                  "normalised", name, (long long)(r / a.m), (long long)(r % a.m),
                  (long long)(r / a.m), (long long)(r % a.m));
  }
  return PV_OK;
}

// suffstats: for each view a, NT-Xent between u_i = z_ia and the mean of
// the other views T_i, accumulated into dz (view-major like z).
template <typename T>
double suffstats(const pv_loss_args &a, int64_t np, int64_t dp, const T *z, T *dz) {
  const int64_t n = a.n, m = a.m;
  CpuBuffer<T> x(2 * np * dp), dx(dz ? 2 * np * dp : 0);
  std::fill(x.get(), x.get() + 2 * np * dp, (T)0);
  double loss = 0;
  const T inv_rest = (T)(1.0 / (double)(m - 1));
  for (int64_t v = 0; v < m; v++) {
    parallel_for(n, [&](int64_t i, int) {
      T *u = x.get() + i * dp, *rest = x.get() + (np + i) * dp;
      for (int64_t t = 0; t < dp; t++) {
        u[t] = z[(v * np + i) * dp + t];
        T acc = 0;
        for (int64_t b = 0; b < m; b++)
          if (b != v) acc += z[(b * np + i) * dp + t];
        rest[t] = acc * inv_rest;
      }
    });
    Problem<T> pb{PV_OBJ_SIMCLR, n, 2, np, dp, (T)(1.0 / a.tau), x.get(), nullptr};
    loss += contrast(pb, dz ? dx.get() : nullptr) / (double)m;
    if (!dz) continue;
    const T scale = (T)(1.0 / (double)m);
    parallel_for(n, [&](int64_t i, int) {
      const T *du = dx.get() + i * dp, *drest = dx.get() + (np + i) * dp;
      for (int64_t b = 0; b < m; b++) {
        T *dst = dz + (b * np + i) * dp;
        T w = b == v ? scale : scale * inv_rest;
        const T *src = b == v ? du : drest;
        for (int64_t t = 0; t < dp; t++) dst[t] += w * src[t];
      }
    });
  }
  return loss;
}

template <typename T>
pv_status loss_typed(const pv_loss_args &a) {
  const int64_t np = round_up(a.n, kBlock), dp = round_up(a.d, kPanel);
  const int64_t rows = a.m * np;
  CpuBuffer<T> z(rows * dp), norms(rows);
  std::fill(z.get(), z.get() + rows * dp, (T)0);
  pv_status st = normalise<T>(a, np, dp, z.get(), norms.get());
  if (st != PV_OK) return st;

  const bool want_grad = a.grad_ptr != nullptr;
  CpuBuffer<T> dz(want_grad ? rows * dp : 0);
  double loss;
  if (a.objective == PV_OBJ_SUFFSTATS) {
    if (want_grad) std::fill(dz.get(), dz.get() + rows * dp, (T)0);
    loss = suffstats<T>(a, np, dp, z.get(), want_grad ? dz.get() : nullptr);
  } else {
    Problem<T> pb{a.objective, a.n, a.m, np, dp, (T)(1.0 / a.tau), z.get(), nullptr};
    loss = contrast(pb, want_grad ? dz.get() : nullptr);
  }
  if (!std::isfinite(loss))
    return fail(PV_ERR_NUMERIC, "%s: loss is not finite (tau = %g)",
                pv_objective_name(a.objective), a.tau);
  *a.loss = loss;
  if (!want_grad) return PV_OK;

  // Through the normalisation: dh = (dz - z <z, dz>) / ||h||, back to
  // sample-major order.
  parallel_for(a.n, [&](int64_t i, int) {
    for (int64_t v = 0; v < a.m; v++) {
      const int64_t q = v * np + i;
      const T *zr = z.get() + q * dp, *gr = dz.get() + q * dp;
      double dot = 0;
      for (int64_t t = 0; t < a.d; t++) dot += (double)zr[t] * (double)gr[t];
      const double inv = 1.0 / (double)norms[q];
      const int64_t dst = (i * a.m + v) * a.d;
      for (int64_t t = 0; t < a.d; t++)
        store_elem<T>(a.grad_ptr, a.grad_dtype, dst + t,
                      (T)(((double)gr[t] - (double)zr[t] * dot) * inv));
    }
  });
  return PV_OK;
}

}  // namespace

// The widest vector path the CPU ops take (the GEMM uses AVX-512 where
// present; the loss and the elementwise ops stop at AVX2).
const char *cpu_simd_name() {
  return cpu_has_avx512() ? "avx512" : cpu_has_avx2_fma() ? "avx2+fma" : "portable";
}

pv_status cpu_loss(void *, const pv_loss_args *args) {
  // float64 in, float64 compute: the reference for gradient checks.
  if (args->h_dtype == PV_F64) return loss_typed<double>(*args);
  return loss_typed<float>(*args);
}

}  // namespace pv
