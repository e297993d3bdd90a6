/*
 * objective_math.h: the per-image step of every poly-view objective,
 * shared by the CPU backend and the CUDA backend (__host__ __device__).
 *
 * Both backends evaluate a loss in three steps over the rows r = (i, a):
 *   1. a pass over tiles of S gathers, per row and view b, the LSE over the
 *      negatives of that view, Lv[a][b] = LSE over j != i of s(ia, jb), and
 *      the positive logits P[a][b] = s(ia, ib);
 *   2. this file turns one image's M x M Lv and P into its loss and into
 *      the constants that define G = dL/dS for its M rows;
 *   3. a second pass recomputes tiles of S and accumulates (G + G^T) Z.
 *
 * G for a row r = (i, a) and a column (j, b):
 *   j != i (negative):      G = coef[a][b] * exp(s - K[a][b])
 *   j == i, b != a (pos.):  G = pos_g[a][b]
 *   j == i, b == a (self):  G = 0
 * K is chosen so that every exponential is at most 1 and coef stays
 * bounded (by M / (N M (M-1)) at most), so nothing overflows in fp32.
 * All arithmetic here is float64: it is O(M^2) per image, negligible.
 */
#ifndef POLYVIEW_OBJECTIVE_MATH_H
#define POLYVIEW_OBJECTIVE_MATH_H

#include <math.h>
#include <stdint.h>

#include "polyview.h"

#ifdef __CUDACC__
#define PV_HD __host__ __device__ inline
#else
#define PV_HD inline
#endif

/* Views per image the objectives accept: scratch arrays are sized by it. */
#define PV_MAX_VIEWS 64

PV_HD double pv_logaddexp(double x, double y) {
  double hi = x > y ? x : y, lo = x > y ? y : x;
  if (lo == -INFINITY) return hi;
  return hi + log1p(exp(lo - hi));
}

/* logaddexp of three values. */
PV_HD double pv_logaddexp3(double x, double y, double z) {
  return pv_logaddexp(pv_logaddexp(x, y), z);
}

/*
 * One image's loss term and G constants. Lv and P are M x M row-major
 * (index a*M + b); P's diagonal is unused. n is the number of images.
 * big_k is a shift larger than any logit (2 / tau), used where coef is 0
 * so that exp(s - K) cannot overflow. Returns the image's contribution to
 * the loss (already divided by the objective's normaliser).
 */
template <typename T>
PV_HD double pv_image_terms(pv_objective obj, int m, int64_t n, double big_k,
                            const T *lv, const T *p, T *k, T *coef,
                            T *pos_g) {
  double loss = 0;
  const double rows = (double)n * m;
  if (obj == PV_OBJ_MVINFONCE) {
    /* One term per image: candidates are every non-self entry of its M
     * rows, positives every ordered pair a != b. */
    double lall[PV_MAX_VIEWS];
    double d = -INFINITY, num = -INFINITY;
    for (int a = 0; a < m; a++) {
      double la = -INFINITY;
      for (int b = 0; b < m; b++) {
        la = pv_logaddexp(la, (double)lv[a * m + b]);
        if (b != a) {
          la = pv_logaddexp(la, (double)p[a * m + b]);
          num = pv_logaddexp(num, (double)p[a * m + b]);
        }
      }
      lall[a] = la;
      d = pv_logaddexp(d, la);
    }
    const double w = 1.0 / (double)n;
    for (int a = 0; a < m; a++) {
      for (int b = 0; b < m; b++) {
        k[a * m + b] = (T)lall[a];
        coef[a * m + b] = (T)(w * exp(lall[a] - d));
        double pab = (double)p[a * m + b];
        pos_g[a * m + b] = b == a ? (T)0 : (T)(w * (exp(pab - d) - exp(pab - num)));
      }
    }
    return w * (d - num);
  }
  if (obj == PV_OBJ_MVDHEL) {
    /* Uniformity inside each view, alignment over unordered pairs a < b. */
    double num = -INFINITY;
    for (int a = 0; a < m; a++)
      for (int b = a + 1; b < m; b++) num = pv_logaddexp(num, (double)p[a * m + b]);
    const double w = 1.0 / (double)n;
    for (int a = 0; a < m; a++) {
      loss += (double)lv[a * m + a];
      for (int b = 0; b < m; b++) {
        k[a * m + b] = b == a ? lv[a * m + a] : (T)big_k;
        coef[a * m + b] = b == a ? (T)w : (T)0;
        pos_g[a * m + b] = b > a ? (T)(-w * exp((double)p[a * m + b] - num)) : (T)0;
      }
    }
    return w * (loss - num);
  }

  /* Per-(anchor, positive) families: simclr (which is gpvc at M = 2),
   * gpvc, apvc and multicrop. */
  const double w_pair = 1.0 / (rows * (m - 1));
  for (int a = 0; a < m; a++) {
    const T *lva = lv + a * m;
    const T *pa = p + a * m;
    double lam = -INFINITY;
    for (int b = 0; b < m; b++) lam = pv_logaddexp(lam, (double)lva[b]);

    // Two scratch rows (1 KiB of stack at most): on the GPU every thread
    // of the terms kernel reserves it, so l = logz - P is not stored.
    double logz[PV_MAX_VIEWS], wb[PV_MAX_VIEWS];
    for (int b = 0; b < m; b++) {
      if (b == a) continue;
      if (obj == PV_OBJ_MULTICROP)
        logz[b] = pv_logaddexp3((double)pa[b], (double)lva[a], (double)lva[b]);
      else
        logz[b] = pv_logaddexp((double)pa[b], lam);
    }
    if (obj == PV_OBJ_APVC) {
      /* Soft maximum over positives; its softmax weights the gradient. */
      double lse = -INFINITY;
      for (int b = 0; b < m; b++)
        if (b != a) lse = pv_logaddexp(lse, logz[b] - (double)pa[b]);
      loss += (lse - log((double)(m - 1))) / rows;
      for (int b = 0; b < m; b++)
        if (b != a) wb[b] = exp(logz[b] - (double)pa[b] - lse) / rows;
    } else {
      for (int b = 0; b < m; b++)
        if (b != a) {
          wb[b] = w_pair;
          loss += w_pair * (logz[b] - (double)pa[b]);
        }
    }

    T *ka = k + a * m, *ca = coef + a * m, *ga = pos_g + a * m;
    for (int b = 0; b < m; b++)
      ga[b] = b == a ? (T)0 : (T)(wb[b] * (exp((double)pa[b] - logz[b]) - 1.0));
    if (obj == PV_OBJ_MULTICROP) {
      /* Negatives of view a sit in every pair (a, b); those of view b != a
       * only in the pair (a, b). Shift each view by its own LSE. */
      double own = 0;
      for (int b = 0; b < m; b++)
        if (b != a) own += wb[b] * exp((double)lva[a] - logz[b]);
      for (int b = 0; b < m; b++) {
        ka[b] = lva[b];
        ca[b] = b == a ? (T)own : (T)(wb[b] * exp((double)lva[b] - logz[b]));
      }
    } else {
      double c = 0;
      for (int b = 0; b < m; b++)
        if (b != a) c += wb[b] * exp(lam - logz[b]);
      for (int b = 0; b < m; b++) {
        ka[b] = (T)lam;
        ca[b] = (T)c;
      }
    }
  }
  return loss;
}

#endif /* POLYVIEW_OBJECTIVE_MATH_H */
