// augment_cpu.cc: the views on the CPU, the reference the CUDA kernel is
// tested against.
//
// One task per (image, view), spread over the pool by parallel_for. A task
// draws its parameters (augment_params.h), then works on one view held in
// three float planes (R, G, B; rows padded to 8 floats) in a per-worker
// scratch that stays in L2 (600 KB at 224 x 224):
//   A. per row: bilinear samples of the crop (flip folded into the column
//      taps), then the jitter ops before contrast, in 8-float vectors;
//   B. when contrast is applied: its mean is the mean gray level after A,
//      so a second sweep applies contrast and the remaining ops;
//   C. when the view is blurred: a horizontal pass into a second set of
//      planes, then the vertical pass.
// The last sweep solarises, normalises and writes the NHWC output. Views
// without contrast or blur are done in the one sweep A. The colour math is
// augment_pixel.h, shared with CUDA; the sweeps compile twice, for
// AVX2+FMA and portable, chosen at run time like loss_cpu.cc.
#include <cstring>
#include <vector>

#include "augment_pixel.h"
#include "cpu_ops.h"
#include "simd.h"
#include "threadpool.h"

namespace pv {
namespace {

typedef Vec<float>::type VF;
typedef Vec<float>::itype VI;
constexpr int kLanes = Vec<float>::lanes;

// augment_pixel.h's Math for 8-float vectors.
struct VecMath {
  typedef VF V;
  static PV_INLINE V splat(float x) { return V{} + x; }
  static PV_INLINE V min(V a, V b) { return a < b ? a : b; }
  static PV_INLINE V max(V a, V b) { return a > b ? a : b; }
  static PV_INLINE V floor(V a) {
    V t = __builtin_convertvector(__builtin_convertvector(a, VI), V);
    return t > a ? t - 1.0f : t;
  }
  static PV_INLINE V select(VI m, V a, V b) { return m ? a : b; }
};
typedef pv_colour<VecMath> Colour;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Floats of one worker's scratch for views of oh x ow.
int64_t scratch_floats(int64_t oh, int64_t ow) {
  const int64_t plane = oh * round_up(ow, kLanes);
  const int64_t row = round_up(ow, kLanes) + 2 * PV_BLUR_MAX_KERNEL + kLanes;
  return 6 * plane + row + 3 * ow + oh + PV_BLUR_MAX_KERNEL;  // + xfrac, xtap, yfrac, taps
}

// One view's work: its parameters and the tables the sweeps read.
struct ViewTask {
  const pv_augment_args *a;
  pv_view_params p;
  const uint8_t *src;      // first byte of the crop's top-left pixel row 0
  int64_t row_bytes, channels;
  int64_t oh, ow, stride;  // output size, plane row stride
  const int64_t *ytap;     // [2 oh]: source rows (relative to the crop)
  const float *yfrac;      // [oh]
  const int32_t *xtap;     // [2 ow]: byte offsets of the two source pixels
  const float *xfrac;      // [ow]
  const float *blur_w;     // [2 radius + 1]
  int radius;
  float scale[3], bias[3];  // normalisation as x * scale + bias
  float *plane[3], *tmp[3], *row;
  void *out;               // this view's [oh, ow, 3]
};

// Bilinear samples of output row y into the planes, in [0, 1]; lanes past
// ow are zero, which every op before contrast keeps zero (the gray sum
// needs no mask).
PV_INLINE void resample_row(const ViewTask &t, int64_t y) {
  const uint8_t *s0 = t.src + t.ytap[2 * y] * t.row_bytes;
  const uint8_t *s1 = t.src + t.ytap[2 * y + 1] * t.row_bytes;
  const float fy = t.yfrac[y];
  float *r = t.plane[0] + y * t.stride, *g = t.plane[1] + y * t.stride,
        *b = t.plane[2] + y * t.stride;
  for (int64_t x = 0; x < t.ow; x++) {
    const int32_t o0 = t.xtap[2 * x], o1 = t.xtap[2 * x + 1];
    const float fx = t.xfrac[x];
    if (t.channels == 3) {
      r[x] = pv_bilerp(s0[o0], s0[o1], s1[o0], s1[o1], fx, fy);
      g[x] = pv_bilerp(s0[o0 + 1], s0[o1 + 1], s1[o0 + 1], s1[o1 + 1], fx, fy);
      b[x] = pv_bilerp(s0[o0 + 2], s0[o1 + 2], s1[o0 + 2], s1[o1 + 2], fx, fy);
    } else {
      r[x] = g[x] = b[x] = pv_bilerp(s0[o0], s0[o1], s1[o0], s1[o1], fx, fy);
    }
  }
  for (int64_t x = t.ow; x < t.stride; x++) r[x] = g[x] = b[x] = 0.0f;
}

// Writes lanes x .. x + 7 (those below ow) of row y: solarise, normalise,
// interleave into NHWC.
PV_INLINE void write_pixels(const ViewTask &t, int64_t y, int64_t x, VF r, VF g, VF b) {
  r = Colour::finish(r, t.p, t.scale[0], t.bias[0]);
  g = Colour::finish(g, t.p, t.scale[1], t.bias[1]);
  b = Colour::finish(b, t.p, t.scale[2], t.bias[2]);
  const int64_t n = t.ow - x < kLanes ? t.ow - x : kLanes;
  const int64_t at = (y * t.ow + x) * 3;
  if (t.a->out_dtype == PV_F32) {
    float *o = static_cast<float *>(t.out) + at;
    for (int64_t k = 0; k < n; k++) {
      o[3 * k] = r[k];
      o[3 * k + 1] = g[k];
      o[3 * k + 2] = b[k];
    }
  } else {
    uint16_t *o = static_cast<uint16_t *>(t.out) + at;
    for (int64_t k = 0; k < n; k++) {
      o[3 * k] = f32_to_bf16(r[k]);
      o[3 * k + 1] = f32_to_bf16(g[k]);
      o[3 * k + 2] = f32_to_bf16(b[k]);
    }
  }
}

// The ops after jitter op `from`: the rest of the jitter, grayscale, then
// either the output (no blur) or the planes (blur comes next).
PV_INLINE void finish_colour(const ViewTask &t, int64_t y, int64_t x, VF r, VF g, VF b,
                             int from, float mean) {
  Colour::jitter(r, g, b, t.p, from, t.p.jitter_ops, mean);
  Colour::grayscale(r, g, b, t.p);
  if (t.p.blur) {
    const int64_t at = y * t.stride + x;
    vstore(t.plane[0] + at, r);
    vstore(t.plane[1] + at, g);
    vstore(t.plane[2] + at, b);
  } else {
    write_pixels(t, y, x, r, g, b);
  }
}

// Sweeps A and B.
PV_INLINE void colour_sweeps(const ViewTask &t) {
  const int cpos = pv_contrast_position(&t.p);
  const int pre = cpos >= 0 ? cpos : t.p.jitter_ops;
  double gray_sum = 0;
  for (int64_t y = 0; y < t.oh; y++) {
    resample_row(t, y);
    VF acc = VF{};
    for (int64_t x = 0; x < t.stride; x += kLanes) {
      const int64_t at = y * t.stride + x;
      VF r = vload<VF>(t.plane[0] + at), g = vload<VF>(t.plane[1] + at),
         b = vload<VF>(t.plane[2] + at);
      Colour::jitter(r, g, b, t.p, 0, pre, 0.0f);
      if (cpos < 0) {
        finish_colour(t, y, x, r, g, b, pre, 0.0f);
        continue;
      }
      vstore(t.plane[0] + at, r);
      vstore(t.plane[1] + at, g);
      vstore(t.plane[2] + at, b);
      acc += Colour::gray(r, g, b);
    }
    gray_sum += hsum<float>(acc);
  }
  if (cpos < 0) return;

  const float mean = (float)(gray_sum / (double)(t.oh * t.ow));
  for (int64_t y = 0; y < t.oh; y++)
    for (int64_t x = 0; x < t.stride; x += kLanes) {
      const int64_t at = y * t.stride + x;
      finish_colour(t, y, x, vload<VF>(t.plane[0] + at), vload<VF>(t.plane[1] + at),
                    vload<VF>(t.plane[2] + at), cpos, mean);
    }
}

// Sweep C: the separable blur, horizontal into tmp, then vertical into
// the output.
PV_INLINE void blur_sweeps(const ViewTask &t) {
  const int radius = t.radius, taps = 2 * radius + 1;
  for (int c = 0; c < 3; c++)
    for (int64_t y = 0; y < t.oh; y++) {
      const float *in = t.plane[c] + y * t.stride;
      for (int64_t k = -radius; k < t.ow + radius; k++)
        t.row[k + radius] = in[pv_reflect(k, t.ow)];
      for (int64_t k = t.ow + 2 * radius; k < t.stride + 2 * radius + kLanes; k++)
        t.row[k] = 0.0f;
      float *o = t.tmp[c] + y * t.stride;
      for (int64_t x = 0; x < t.stride; x += kLanes) {
        VF acc = VF{};
        for (int k = 0; k < taps; k++) acc += t.blur_w[k] * vload<VF>(t.row + x + k);
        vstore(o + x, acc);
      }
    }
  for (int64_t y = 0; y < t.oh; y++)
    for (int64_t x = 0; x < t.stride; x += kLanes) {
      VF acc[3] = {VF{}, VF{}, VF{}};
      for (int k = 0; k < taps; k++) {
        const int64_t at = pv_reflect(y + k - radius, t.oh) * t.stride + x;
        for (int c = 0; c < 3; c++) acc[c] += t.blur_w[k] * vload<VF>(t.tmp[c] + at);
      }
      write_pixels(t, y, x, acc[0], acc[1], acc[2]);
    }
}

PV_TARGET_AVX2 void sweeps_avx2(const ViewTask &t) {
  colour_sweeps(t);
  if (t.p.blur) blur_sweeps(t);
}

void sweeps_portable(const ViewTask &t) {
  colour_sweeps(t);
  if (t.p.blur) blur_sweeps(t);
}

// Draws view a of image i and builds its tables in the worker's scratch.
// Portable code on purpose: the parameter and tap arithmetic must not be
// fused into FMAs, so that it matches the CUDA kernel bit for bit.
__attribute__((noinline)) void prepare(const pv_augment_args &a, int64_t i, int64_t v,
                                       float *scratch, int64_t *ytap, ViewTask &t) {
  const pv_view_recipe &r = a.recipes[v];
  const int64_t h = a.height[i], w = a.width[i], c = a.channels[i];
  pv_sample_view(&r, a.log_ratio[2 * v], a.log_ratio[2 * v + 1], a.seed, a.epoch,
                 (uint64_t)a.index[i], (uint32_t)(a.first_view + v), h, w, &t.p);
  t.a = &a;
  t.oh = a.out_h;
  t.ow = a.out_w;
  t.stride = round_up(t.ow, kLanes);
  t.channels = c;
  t.row_bytes = w * c;
  t.src = a.pixels_ptr + a.offset[i] + t.p.crop_y * t.row_bytes + t.p.crop_x * c;
  for (int k = 0; k < 3; k++) {
    t.scale[k] = (float)(1.0 / r.std[k]);
    t.bias[k] = (float)(-r.mean[k] / r.std[k]);
  }

  const int64_t plane = t.oh * t.stride;
  float *f = scratch;
  for (int k = 0; k < 3; k++) t.plane[k] = f + k * plane;
  for (int k = 0; k < 3; k++) t.tmp[k] = f + (3 + k) * plane;
  f += 6 * plane;
  t.row = f;
  f += t.stride + 2 * PV_BLUR_MAX_KERNEL + kLanes;
  float *xfrac = f;
  f += t.ow;
  float *yfrac = f;
  f += t.oh;
  float *blur_w = f;
  f += PV_BLUR_MAX_KERNEL;
  // The integer tables live in the float scratch (same size, 4 bytes).
  int32_t *xtap = reinterpret_cast<int32_t *>(f);

  for (int64_t x = 0; x < t.ow; x++) {
    const int64_t xs = t.p.flip ? t.ow - 1 - x : x;
    int64_t i0, i1;
    pv_bilinear_taps(xs, t.p.crop_w, t.ow, &i0, &i1, &xfrac[x]);
    xtap[2 * x] = (int32_t)(i0 * c);
    xtap[2 * x + 1] = (int32_t)(i1 * c);
  }
  for (int64_t y = 0; y < t.oh; y++)
    pv_bilinear_taps(y, t.p.crop_h, t.oh, &ytap[2 * y], &ytap[2 * y + 1], &yfrac[y]);
  t.ytap = ytap;
  t.xtap = xtap;
  t.xfrac = xfrac;
  t.yfrac = yfrac;
  t.blur_w = blur_w;
  t.radius = t.p.blur ? pv_blur_taps(t.p.blur_kernel, t.p.blur_sigma, blur_w) : 0;
}

}  // namespace

pv_status cpu_augment(void *, const pv_augment_args *args) {
  const pv_augment_args &a = *args;
  const int workers = cpu_threads();
  const int64_t per_worker = scratch_floats(a.out_h, a.out_w);
  CpuBuffer<float> scratch(per_worker * workers);
  CpuBuffer<int64_t> ytaps(2 * a.out_h * workers);
  const int64_t view_elems = a.out_h * a.out_w * 3;
  const int64_t elem = a.out_dtype == PV_F32 ? 4 : 2;

  parallel_for(a.n * a.views, [&](int64_t task, int worker) {
    const int64_t i = task / a.views, v = task % a.views;
    ViewTask t;
    prepare(a, i, v, scratch.get() + worker * per_worker, ytaps.get() + worker * 2 * a.out_h,
            t);
    t.out = static_cast<char *>(a.out_ptr) + task * view_elems * elem;
    cpu_has_avx2_fma() ? sweeps_avx2(t) : sweeps_portable(t);
  });
  return PV_OK;
}

}  // namespace pv
