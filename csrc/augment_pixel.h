/*
 * augment_pixel.h: the colour ops of a view, written once for both
 * backends. Host and device code.
 *
 * Each op works on R, G, B values of type V: one float per thread in the
 * CUDA kernel, 8 floats (GCC vector) per call on the CPU. Math supplies
 * what differs between the two: splat, min, max, floor and select.
 * Formulas follow torchvision.transforms.v2.functional on float images:
 * every blend clamps into [0, 1], hue goes through HSV.
 */
#ifndef POLYVIEW_AUGMENT_PIXEL_H
#define POLYVIEW_AUGMENT_PIXEL_H

#include "augment_params.h"

/* Always inlined: on the CPU these run inside AVX2 sweeps, and a call to
 * a non-inlined copy would pass 8-float vectors through memory. */
#ifdef __CUDACC__
#define PV_PX __host__ __device__ __forceinline__
#else
#define PV_PX inline __attribute__((always_inline))
#endif

/* Luma weights of torchvision's rgb_to_grayscale. */
#define PV_GRAY_R 0.2989f
#define PV_GRAY_G 0.587f
#define PV_GRAY_B 0.114f

/* Scalar Math for CUDA threads (and host tests). */
struct pv_scalar_math {
  typedef float V;
  static PV_PX V splat(float x) { return x; }
  static PV_PX V min(V a, V b) { return a < b ? a : b; }
  static PV_PX V max(V a, V b) { return a > b ? a : b; }
  static PV_PX V floor(V a) { return floorf(a); }
  static PV_PX V select(bool m, V a, V b) { return m ? a : b; }
};

template <typename Math>
struct pv_colour {
  typedef typename Math::V V;

  static PV_PX V clamp01(V x) {
    return Math::min(Math::max(x, Math::splat(0.0f)), Math::splat(1.0f));
  }

  static PV_PX V gray(V r, V g, V b) { return PV_GRAY_R * r + PV_GRAY_G * g + PV_GRAY_B * b; }

  /* torchvision's _blend: clamp(f x + (1 - f) y). */
  static PV_PX V blend(V x, V y, float f) { return clamp01(f * x + (1.0f - f) * y); }

  static PV_PX void brightness(V &r, V &g, V &b, float f) {
    r = clamp01(f * r);
    g = clamp01(f * g);
    b = clamp01(f * b);
  }

  /* mean: the mean gray level of the whole view before this op. */
  static PV_PX void contrast(V &r, V &g, V &b, float f, float mean) {
    const V m = Math::splat(mean);
    r = blend(r, m, f);
    g = blend(g, m, f);
    b = blend(b, m, f);
  }

  static PV_PX void saturation(V &r, V &g, V &b, float f) {
    const V l = gray(r, g, b);
    r = blend(r, l, f);
    g = blend(g, l, f);
    b = blend(b, l, f);
  }

  /* RGB -> HSV, h += shift (mod 1), HSV -> RGB, as torchvision's
   * _rgb2hsv / _hsv2rgb. */
  static PV_PX void hue(V &r, V &g, V &b, float shift) {
    const V one = Math::splat(1.0f);
    const V maxc = Math::max(Math::max(r, g), b);
    const V minc = Math::min(Math::min(r, g), b);
    const auto eqc = maxc == minc;
    const V cr = maxc - minc;
    const V s = cr / Math::select(eqc, one, maxc);
    const V crd = Math::select(eqc, one, cr);
    const V rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
    V h = Math::select(maxc == r, bc - gc,
                       Math::select(maxc == g, 2.0f + rc - bc, 4.0f + gc - rc));
    h = h * (1.0f / 6.0f) + 1.0f;
    h = h - Math::floor(h);
    h = h + shift;
    h = h - Math::floor(h);

    const V v = maxc;
    const V h6 = h * 6.0f;
    V i = Math::floor(h6);
    const V f = h6 - i;
    i = Math::select(i >= 6.0f, i - 6.0f, i);
    const V p = clamp01(v * (1.0f - s));
    const V q = clamp01(v * (1.0f - s * f));
    const V t = clamp01(v * (1.0f - s * (1.0f - f)));
    const auto i0 = i == 0.0f, i1 = i == 1.0f, i2 = i == 2.0f, i3 = i == 3.0f,
               i4 = i == 4.0f;
    r = Math::select(i0, v, Math::select(i1, q, Math::select(i2, p,
        Math::select(i3, p, Math::select(i4, t, v)))));
    g = Math::select(i0, t, Math::select(i1, v, Math::select(i2, v,
        Math::select(i3, q, Math::select(i4, p, p)))));
    b = Math::select(i0, p, Math::select(i1, p, Math::select(i2, t,
        Math::select(i3, v, Math::select(i4, v, q)))));
  }

  /* Jitter ops order[from .. to) of p; mean is used by contrast only. */
  static PV_PX void jitter(V &r, V &g, V &b, const pv_view_params &p, int from, int to,
                           float mean) {
    for (int k = from; k < to; k++) {
      switch (p.order[k]) {
        case PV_JITTER_BRIGHTNESS: brightness(r, g, b, p.brightness); break;
        case PV_JITTER_CONTRAST: contrast(r, g, b, p.contrast, mean); break;
        case PV_JITTER_SATURATION: saturation(r, g, b, p.saturation); break;
        default: hue(r, g, b, p.hue); break;
      }
    }
  }

  /* Grayscale when p.gray: all three channels become the luma. */
  static PV_PX void grayscale(V &r, V &g, V &b, const pv_view_params &p) {
    if (!p.gray) return;
    r = g = b = gray(r, g, b);
  }

  /* Solarisation when p.solarize, then (x - mean) / std as x * scale +
   * bias with scale = 1 / std, bias = -mean / std. */
  static PV_PX V finish(V x, const pv_view_params &p, float scale, float bias) {
    if (p.solarize) x = Math::select(x >= p.solarize_threshold, 1.0f - x, x);
    return x * scale + bias;
  }
};

/* The position of contrast among the applied jitter ops, or -1: the view
 * needs its mean gray level after ops [0, position). */
PV_PX int pv_contrast_position(const pv_view_params *p) {
  for (int k = 0; k < p->jitter_ops; k++)
    if (p->order[k] == PV_JITTER_CONTRAST) return k;
  return -1;
}

#endif /* POLYVIEW_AUGMENT_PIXEL_H */
