/*
 * augment_params.h: how a view's random parameters are drawn, and the bits
 * of geometry both backends must compute alike (bilinear source
 * coordinates, border reflection, blur taps). Host and device code.
 *
 * Identical parameters on the CPU and the GPU. Each parameter comes from
 * fixed Philox draws (the slot table below), so turning one op off never
 * moves another op's numbers. The arithmetic on those draws is double
 * precision and rounds every step on its own: pv_dadd and friends use
 * nvcc's _rn intrinsics on the device, which are never fused into an FMA,
 * and plain operators on the host, where pv_sample_view must not be
 * inlined into a function compiled with FMA (augment_cpu.cc calls it from
 * portable code). exp is pv_dexp below, built from those steps, and the
 * two logarithms come precomputed from the host (pv_augment_args). So an
 * integer crop box, a flip or a factor is bit-identical on both backends.
 */
#ifndef POLYVIEW_AUGMENT_PARAMS_H
#define POLYVIEW_AUGMENT_PARAMS_H

#include <math.h>
#include <stdint.h>

#include "philox.h"
#include "polyview.h"

/* Philox blocks of one view. Blocks 0-9 are the crop's ten tries (area,
 * aspect, top, left); the rest are one word per decision. */
#define PV_SLOT_CROP_TRIES 10
#define PV_SLOT_FLIP 40       /* block 10 */
#define PV_SLOT_JITTER 41
#define PV_SLOT_GRAY 42
#define PV_SLOT_BLUR 43
#define PV_SLOT_BRIGHTNESS 44 /* block 11 */
#define PV_SLOT_CONTRAST 45
#define PV_SLOT_SATURATION 46
#define PV_SLOT_HUE 47
#define PV_SLOT_ORDER 48      /* block 12: three words for the shuffle */
#define PV_SLOT_SIGMA 51
#define PV_SLOT_SOLARIZE 52   /* block 13 */
#define PV_SLOT_BLOCKS 14

/* Blur taps whose normalised weight is below this are dropped: each adds
 * less than 1e-8 to a value in [0, 1], under float32's resolution there,
 * and sigma <= 2 then needs 15 taps rather than the 23 of a 224 view. */
#define PV_BLUR_MIN_WEIGHT 1e-8f
#define PV_BLUR_MAX_KERNEL 255

/* ---- exactly rounded double steps -------------------------------------- */

PV_HD double pv_dadd(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
PV_HD double pv_dsub(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
PV_HD double pv_dmul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PV_HD double pv_ddiv(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
PV_HD double pv_dsqrt(double a) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(a);
#else
  return sqrt(a);
#endif
}

/* exp(x) for |x| < 700 from rounded steps only: x = n ln2 + r with
 * |r| <= ln2 / 2 and a degree-13 Taylor polynomial (truncation error below
 * 1e-17 relative), then 2^n exactly. Within a few ulp of exp, and the same
 * bits on every IEEE machine. */
PV_HD double pv_dexp(double x) {
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  const double inv_fact[14] = {1.0,          1.0,           1.0 / 2,         1.0 / 6,
                               1.0 / 24,     1.0 / 120,     1.0 / 720,       1.0 / 5040,
                               1.0 / 40320,  1.0 / 362880,  1.0 / 3628800,   1.0 / 39916800,
                               1.0 / 479001600, 1.0 / 6227020800.0};
  const double n = rint(pv_dmul(x, 1.44269504088896338700));
  const double r = pv_dsub(pv_dsub(x, pv_dmul(n, ln2_hi)), pv_dmul(n, ln2_lo));
  double p = inv_fact[13];
  for (int k = 12; k >= 0; k--) p = pv_dadd(pv_dmul(p, r), inv_fact[k]);
  return ldexp(p, (int)n);
}

/* float32 product, never fused with a later add (the bilinear taps). */
PV_HD float pv_fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/* ---- drawing ------------------------------------------------------------ */

/* The words of one view's Philox blocks, drawn on demand. */
typedef struct pv_view_rng {
  uint32_t key[2];
  uint64_t epoch, index;
  uint32_t view;
  uint32_t block;  /* the block held in words, or UINT32_MAX */
  uint32_t words[4];
} pv_view_rng;

PV_HD void pv_view_rng_init(pv_view_rng *g, uint64_t seed, uint64_t epoch, uint64_t index,
                            uint32_t view) {
  g->key[0] = (uint32_t)seed;
  g->key[1] = (uint32_t)(seed >> 32);
  g->epoch = epoch;
  g->index = index;
  g->view = view;
  g->block = 0xffffffffu;
  g->words[0] = g->words[1] = g->words[2] = g->words[3] = 0;
}

PV_HD uint32_t pv_view_word(pv_view_rng *g, uint32_t slot) {
  const uint32_t block = slot / 4;
  if (block != g->block) {
    uint32_t ctr[4];
    pv_philox_view_counter(g->epoch, g->index, g->view, block, ctr);
    pv_philox4x32_10_block(ctr, g->key, g->words);
    g->block = block;
  }
  return g->words[slot % 4];
}

/* A uniform double in [0, 1) with 32 random bits: exact. */
PV_HD double pv_view_uniform(pv_view_rng *g, uint32_t slot) {
  return (double)pv_view_word(g, slot) * (1.0 / 4294967296.0);
}

/* A uniform integer in [0, n) for n <= 2^32, by multiply-high: exact. */
PV_HD int64_t pv_view_below(pv_view_rng *g, uint32_t slot, int64_t n) {
  return (int64_t)(((uint64_t)pv_view_word(g, slot) * (uint64_t)n) >> 32);
}

/* lo + u (hi - lo), rounded step by step. */
PV_HD double pv_lerp_draw(double lo, double hi, double u) {
  return pv_dadd(lo, pv_dmul(u, pv_dsub(hi, lo)));
}

/* torchvision's RandomResizedCrop.get_params with our draws. Python's
 * round() is half-to-even, which rint is in the default rounding mode.
 * One departure: scale_min = 1 takes the whole image, where torchvision's
 * rounding can pick a smaller box on tiny images. */
PV_HD void pv_sample_crop(const pv_view_recipe *r, double log_ratio_min, double log_ratio_max,
                          pv_view_rng *g, int64_t h, int64_t w, pv_view_params *p) {
  if (r->scale_min == 1.0) {  /* the whole area: the whole image */
    p->crop_y = p->crop_x = 0;
    p->crop_h = h;
    p->crop_w = w;
    return;
  }
  const double area = (double)h * (double)w;
  for (uint32_t t = 0; t < PV_SLOT_CROP_TRIES; t++) {
    const double target =
        pv_dmul(area, pv_lerp_draw(r->scale_min, r->scale_max, pv_view_uniform(g, 4 * t)));
    const double aspect =
        pv_dexp(pv_lerp_draw(log_ratio_min, log_ratio_max, pv_view_uniform(g, 4 * t + 1)));
    const double cw = rint(pv_dsqrt(pv_dmul(target, aspect)));
    const double ch = rint(pv_dsqrt(pv_ddiv(target, aspect)));
    if (cw > 0 && cw <= (double)w && ch > 0 && ch <= (double)h) {
      p->crop_h = (int64_t)ch;
      p->crop_w = (int64_t)cw;
      p->crop_y = pv_view_below(g, 4 * t + 2, h - p->crop_h + 1);
      p->crop_x = pv_view_below(g, 4 * t + 3, w - p->crop_w + 1);
      return;
    }
  }
  /* The central crop, its aspect clamped into the ratio range. */
  const double in_ratio = pv_ddiv((double)w, (double)h);
  if (in_ratio < r->ratio_min) {
    p->crop_w = w;
    p->crop_h = (int64_t)rint(pv_ddiv((double)w, r->ratio_min));
  } else if (in_ratio > r->ratio_max) {
    p->crop_h = h;
    p->crop_w = (int64_t)rint(pv_dmul((double)h, r->ratio_max));
  } else {
    p->crop_w = w;
    p->crop_h = h;
  }
  if (p->crop_h < 1) p->crop_h = 1;
  if (p->crop_w < 1) p->crop_w = 1;
  p->crop_y = (h - p->crop_h) / 2;
  p->crop_x = (w - p->crop_w) / 2;
}

/* A jitter factor uniform in [max(0, 1 - s), 1 + s]. */
PV_HD float pv_jitter_factor(double s, double u) {
  const double lo = pv_dsub(1.0, s);
  return (float)pv_lerp_draw(lo > 0 ? lo : 0.0, pv_dadd(1.0, s), u);
}

/* Every parameter of one view. recipe is validated, its blur_kernel
 * resolved; log_ratio_* are ln(ratio_min), ln(ratio_max). */
PV_HD void pv_sample_view(const pv_view_recipe *r, double log_ratio_min,
                          double log_ratio_max, uint64_t seed, uint64_t epoch,
                          uint64_t index, uint32_t view, int64_t h, int64_t w,
                          pv_view_params *p) {
  pv_view_rng g;
  pv_view_rng_init(&g, seed, epoch, index, view);
  pv_sample_crop(r, log_ratio_min, log_ratio_max, &g, h, w, p);
  p->flip = pv_view_uniform(&g, PV_SLOT_FLIP) < r->flip_p;

  /* Colour jitter: a shuffle of the four ops (Fisher-Yates), then the
   * factors; ops of strength 0 are left out, as torchvision leaves out
   * its None factors. */
  p->brightness = p->contrast = p->saturation = 1.0f;
  p->hue = 0.0f;
  p->jitter_ops = 0;
  for (int k = 0; k < 4; k++) p->order[k] = k;
  if (pv_view_uniform(&g, PV_SLOT_JITTER) < r->jitter_p) {
    int32_t perm[4] = {0, 1, 2, 3};
    for (int k = 3; k > 0; k--) {
      const int64_t j = pv_view_below(&g, PV_SLOT_ORDER + (3 - k), k + 1);
      const int32_t t = perm[k];
      perm[k] = perm[j];
      perm[j] = t;
    }
    const double strength[4] = {r->brightness, r->contrast, r->saturation, r->hue};
    for (int k = 0; k < 4; k++)
      if (strength[perm[k]] > 0) p->order[p->jitter_ops++] = perm[k];
    if (r->brightness > 0)
      p->brightness = pv_jitter_factor(r->brightness, pv_view_uniform(&g, PV_SLOT_BRIGHTNESS));
    if (r->contrast > 0)
      p->contrast = pv_jitter_factor(r->contrast, pv_view_uniform(&g, PV_SLOT_CONTRAST));
    if (r->saturation > 0)
      p->saturation = pv_jitter_factor(r->saturation, pv_view_uniform(&g, PV_SLOT_SATURATION));
    if (r->hue > 0)
      p->hue = (float)pv_lerp_draw(-r->hue, r->hue, pv_view_uniform(&g, PV_SLOT_HUE));
  }

  p->gray = pv_view_uniform(&g, PV_SLOT_GRAY) < r->gray_p;
  p->blur = pv_view_uniform(&g, PV_SLOT_BLUR) < r->blur_p;
  p->blur_kernel = (int32_t)r->blur_kernel;
  p->blur_sigma = p->blur ? (float)pv_lerp_draw(r->blur_sigma_min, r->blur_sigma_max,
                                                pv_view_uniform(&g, PV_SLOT_SIGMA))
                          : 0.0f;
  p->solarize = pv_view_uniform(&g, PV_SLOT_SOLARIZE) < r->solarize_p;
  p->solarize_threshold = (float)r->solarize_threshold;
}

/* ---- geometry both backends share -------------------------------------- */

/* The source taps of output coordinate d of a crop of `crop` pixels
 * resized to `out`: PyTorch's bilinear with align_corners=False (half-pixel
 * centres, clamped at the low edge, the high tap clamped into the crop).
 * Offsets are relative to the crop; frac weighs i1. */
PV_HD void pv_bilinear_taps(int64_t d, int64_t crop, int64_t out, int64_t *i0, int64_t *i1,
                            float *frac) {
  const float scale = (float)crop / (float)out;
  float s = pv_fmul((float)d + 0.5f, scale) - 0.5f;
  if (s < 0.0f) s = 0.0f;
  int64_t a = (int64_t)s;
  if (a > crop - 1) a = crop - 1;
  *i0 = a;
  *i1 = a + 1 < crop ? a + 1 : crop - 1;
  *frac = s - (float)a;
}

/* Bilinear interpolation of four uint8 samples, scaled to [0, 1]: p01
 * and p11 sit at frac fx across, p10 and p11 at fy down. */
PV_HD float pv_bilerp(float p00, float p01, float p10, float p11, float fx, float fy) {
  const float top = (1.0f - fx) * p00 + fx * p01;
  const float bottom = (1.0f - fx) * p10 + fx * p11;
  return ((1.0f - fy) * top + fy * bottom) * (1.0f / 255.0f);
}

/* Index j reflected into [0, n) without repeating the edge ("reflect"
 * padding: -1 -> 1, n -> n - 2), folded again when j is far out. */
PV_HD int64_t pv_reflect(int64_t j, int64_t n) {
  if (j >= 0 && j < n) return j;  /* the common case, without a division */
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  j %= period;
  if (j < 0) j += period;
  return j < n ? j : period - j;
}

/* The blur's taps: w[0 .. 2 radius] of exp(-x^2 / (2 sigma^2)) over
 * x = -(kernel-1)/2 .. (kernel-1)/2, normalised to sum 1, then the outer
 * taps below PV_BLUR_MIN_WEIGHT dropped. w must hold kernel floats and
 * returns centred: w[radius] is the middle tap. Returns the radius. */
PV_HD int pv_blur_taps(int kernel, float sigma, float *w) {
  const int half = (kernel - 1) / 2;
  float sum = 0.0f;
  for (int k = 0; k < kernel; k++) {
    const float x = (float)(k - half) / sigma;
    w[k] = expf(-0.5f * x * x);
    sum += w[k];
  }
  int drop = 0;
  while (drop < half && w[drop] / sum < PV_BLUR_MIN_WEIGHT) drop++;
  const int radius = half - drop;
  for (int k = 0; k <= 2 * radius; k++) w[k] = w[k + drop] / sum;
  return radius;
}

#endif /* POLYVIEW_AUGMENT_PARAMS_H */
