// augment.cc: pv_augment, the views' entry point, and pv_view_sample.
// Checks the batch, every recipe field and the output tensor, resolves
// what the backends share (blur kernel sizes, ln of the ratio bounds),
// then hands the work to the device's backend.
#include <cmath>
#include <cstdio>
#include <vector>

#include "augment_params.h"
#include "core_internal.h"

namespace {

constexpr int64_t kMaxOutSide = 4096;
constexpr int64_t kMaxViews = 1 << 16;  // the view field of the Philox counter
constexpr uint64_t kMaxEpoch = 1ull << 32;

bool unit(double p) { return p >= 0 && p <= 1; }  // false for NaN

// Checks one recipe; `at` names it in messages ("view 3"). The field names
// are pv_view_recipe's.
pv_status check_recipe(const pv_view_recipe &r, const char *at) {
  auto bad = [&](const char *field, double v, const char *want) {
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: %s: %s = %g, want %s", at, field, v,
                    want);
  };
  if (r.out_h < 1 || r.out_h > kMaxOutSide)
    return bad("out_h", (double)r.out_h, "1 .. 4096 pixels");
  if (r.out_w < 1 || r.out_w > kMaxOutSide)
    return bad("out_w", (double)r.out_w, "1 .. 4096 pixels");
  if (!(r.scale_min > 0 && r.scale_min <= 1)) return bad("scale_min", r.scale_min, "(0, 1]");
  if (!(r.scale_max > 0 && r.scale_max <= 1)) return bad("scale_max", r.scale_max, "(0, 1]");
  if (r.scale_min > r.scale_max)
    return bad("scale_min", r.scale_min, "at most scale_max");
  if (!(r.ratio_min > 0 && std::isfinite(r.ratio_min)))
    return bad("ratio_min", r.ratio_min, "a finite number > 0");
  if (!(r.ratio_max > 0 && std::isfinite(r.ratio_max)))
    return bad("ratio_max", r.ratio_max, "a finite number > 0");
  if (r.ratio_min > r.ratio_max) return bad("ratio_min", r.ratio_min, "at most ratio_max");
  const struct {
    const char *name;
    double p;
  } probs[] = {{"flip_p", r.flip_p},   {"jitter_p", r.jitter_p},     {"gray_p", r.gray_p},
               {"blur_p", r.blur_p},   {"solarize_p", r.solarize_p}};
  for (const auto &pr : probs)
    if (!unit(pr.p)) return bad(pr.name, pr.p, "a probability in [0, 1]");
  const struct {
    const char *name;
    double s;
  } strengths[] = {{"brightness", r.brightness}, {"contrast", r.contrast},
                   {"saturation", r.saturation}};
  for (const auto &st : strengths)
    if (!(st.s >= 0 && std::isfinite(st.s))) return bad(st.name, st.s, "a finite number >= 0");
  if (!(r.hue >= 0 && r.hue <= 0.5)) return bad("hue", r.hue, "[0, 0.5]");
  if (r.blur_p > 0) {
    if (!(r.blur_sigma_min > 0 && std::isfinite(r.blur_sigma_min)))
      return bad("blur_sigma_min", r.blur_sigma_min, "a finite number > 0");
    if (!(r.blur_sigma_max >= r.blur_sigma_min && std::isfinite(r.blur_sigma_max)))
      return bad("blur_sigma_max", r.blur_sigma_max, "finite and >= blur_sigma_min");
  }
  if (r.blur_kernel != 0 &&
      (r.blur_kernel < 1 || r.blur_kernel % 2 == 0 || r.blur_kernel > PV_BLUR_MAX_KERNEL))
    return bad("blur_kernel", (double)r.blur_kernel, "0 (automatic) or odd in [1, 255]");
  if (!unit(r.solarize_threshold))
    return bad("solarize_threshold", r.solarize_threshold, "[0, 1]");
  for (int c = 0; c < 3; c++) {
    if (!std::isfinite(r.mean[c])) return bad("mean", r.mean[c], "finite values");
    if (!(r.std[c] > 0 && std::isfinite(r.std[c]))) return bad("std", r.std[c], "values > 0");
  }
  return PV_OK;
}

// The recipe with blur_kernel resolved: 10% of the smaller output side,
// made odd, at least 3 (SimCLR's rule; 23 taps at 224).
pv_view_recipe resolve(const pv_view_recipe &r) {
  pv_view_recipe out = r;
  if (out.blur_kernel == 0) {
    int64_t k = (int64_t)(0.1 * (double)(r.out_h < r.out_w ? r.out_h : r.out_w));
    if (k % 2 == 0) k++;
    if (k < 3) k = 3;
    if (k > PV_BLUR_MAX_KERNEL) k = PV_BLUR_MAX_KERNEL;
    out.blur_kernel = k;
  }
  return out;
}

pv_status check_images(const pv_image_batch &b, int64_t bytes) {
  if (b.n < 1)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: empty batch (n = %lld images)",
                    (long long)b.n);
  if (!b.offset || !b.height || !b.width || !b.channels)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "augment: batch offset, height, width and channels must not be NULL");
  for (int64_t i = 0; i < b.n; i++) {
    const long long h = b.height[i], w = b.width[i], c = b.channels[i], off = b.offset[i];
    if (h < 1 || w < 1)
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: image %lld has size %lld x %lld",
                      (long long)i, h, w);
    if (h > (1ll << 20) || w > (1ll << 20))
      return pv::fail(PV_ERR_INVALID_ARGUMENT,
                      "augment: image %lld is %lld x %lld, more than 2^20 on a side",
                      (long long)i, h, w);
    if (c != 1 && c != 3)
      return pv::fail(PV_ERR_INVALID_ARGUMENT,
                      "augment: image %lld has %lld channels, want 1 (gray) or 3 (RGB)",
                      (long long)i, c);
    if (off < 0 || h * w * c > bytes - off)
      return pv::fail(PV_ERR_INVALID_ARGUMENT,
                      "augment: image %lld (offset %lld, %lld bytes) is outside the "
                      "%lld-byte pixel tensor", (long long)i, off, h * w * c, (long long)bytes);
    if (b.index && b.index[i] < 0)
      return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: image %lld has index %lld",
                      (long long)i, (long long)b.index[i]);
  }
  return PV_OK;
}

pv_status check_out(const pv_tensor *out, int64_t n, int64_t views, int64_t oh, int64_t ow) {
  const int64_t want[5] = {n, views, oh, ow, 3};
  bool same = out->ndim == 5;
  for (int k = 0; same && k < 5; k++) same = out->shape[k] == want[k];
  if (!same)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "augment: out must have shape [N, views, out_h, out_w, 3] = "
                    "[%lld, %lld, %lld, %lld, 3]", (long long)n, (long long)views,
                    (long long)oh, (long long)ow);
  if (out->dtype != PV_F32 && out->dtype != PV_BF16)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: out has dtype %s, want float32 or bfloat16",
                    pv::dtype_name(out->dtype));
  return PV_OK;
}

}  // namespace

extern "C" {

void pv_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  pv_philox4x32_10_block(ctr, key, out);
}

pv_status pv_view_sample(const pv_view_recipe *recipe, uint64_t seed, uint64_t epoch,
                         int64_t index, int64_t view, int64_t height, int64_t width,
                         pv_view_params *out) {
  if (!recipe || !out)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "view sample: recipe or out is NULL");
  pv_status st = check_recipe(*recipe, "recipe");
  if (st != PV_OK) return st;
  if (view < 0 || view >= kMaxViews)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "view sample: view %lld outside [0, 65536)",
                    (long long)view);
  if (epoch >= kMaxEpoch)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "view sample: epoch %llu, want < 2^32",
                    (unsigned long long)epoch);
  if (index < 0 || height < 1 || width < 1)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "view sample: index %lld, size %lld x %lld",
                    (long long)index, (long long)height, (long long)width);
  const pv_view_recipe r = resolve(*recipe);
  pv_sample_view(&r, std::log(r.ratio_min), std::log(r.ratio_max), seed, epoch,
                 (uint64_t)index, (uint32_t)view, height, width, out);
  return PV_OK;
}

pv_status pv_augment(pv_device *dev, const pv_image_batch *batch,
                     const pv_view_recipe *recipes, int64_t first_view, int64_t views,
                     uint64_t seed, uint64_t epoch, pv_tensor *out) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: device is NULL");
  if (!batch) return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: batch is NULL");
  if (!recipes) return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: recipes is NULL");
  pv_status st = pv::check_tensor(batch->pixels, dev, "pixels");
  if (st != PV_OK) return st;
  if (batch->pixels->dtype != PV_U8)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: pixels have dtype %s, want uint8",
                    pv::dtype_name(batch->pixels->dtype));
  if ((st = check_images(*batch, batch->pixels->numel)) != PV_OK) return st;
  if (views < 1 || first_view < 0 || first_view + views > kMaxViews)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "augment: views %lld .. %lld, want 1 or more inside [0, 65536)",
                    (long long)first_view, (long long)(first_view + views - 1));
  if (epoch >= kMaxEpoch)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "augment: epoch %llu, want < 2^32",
                    (unsigned long long)epoch);
  for (int64_t a = 0; a < views; a++) {
    char at[32];
    snprintf(at, sizeof at, "view %lld", (long long)(first_view + a));
    if ((st = check_recipe(recipes[a], at)) != PV_OK) return st;
    if (recipes[a].out_h != recipes[0].out_h || recipes[a].out_w != recipes[0].out_w)
      return pv::fail(PV_ERR_INVALID_ARGUMENT,
                      "augment: %s is %lld x %lld, view %lld is %lld x %lld; views of "
                      "one call share a size", at, (long long)recipes[a].out_h,
                      (long long)recipes[a].out_w, (long long)first_view,
                      (long long)recipes[0].out_h, (long long)recipes[0].out_w);
  }
  if ((st = pv::check_tensor(out, dev, "out")) != PV_OK) return st;
  const int64_t oh = recipes[0].out_h, ow = recipes[0].out_w;
  if ((st = check_out(out, batch->n, views, oh, ow)) != PV_OK) return st;
  if (!dev->backend->augment)
    return pv::fail(PV_ERR_UNSUPPORTED, "augment: backend %s has no augment op",
                    dev->backend->name);

  PV_GUARD({
    std::vector<pv_view_recipe> resolved((size_t)views);
    std::vector<double> log_ratio(2 * (size_t)views);
    for (int64_t a = 0; a < views; a++) {
      resolved[a] = resolve(recipes[a]);
      log_ratio[2 * a] = std::log(recipes[a].ratio_min);
      log_ratio[2 * a + 1] = std::log(recipes[a].ratio_max);
    }
    std::vector<int64_t> identity;
    const int64_t *index = batch->index;
    if (!index) {
      identity.resize((size_t)batch->n);
      for (int64_t i = 0; i < batch->n; i++) identity[i] = i;
      index = identity.data();
    }
    pv_augment_args args = {};
    args.n = batch->n;
    args.pixels_ptr = static_cast<const uint8_t *>(batch->pixels->data);
    args.offset = batch->offset;
    args.height = batch->height;
    args.width = batch->width;
    args.channels = batch->channels;
    args.index = index;
    args.recipes = resolved.data();
    args.log_ratio = log_ratio.data();
    args.first_view = first_view;
    args.views = views;
    args.seed = seed;
    args.epoch = epoch;
    args.out_h = oh;
    args.out_w = ow;
    args.out_ptr = out->data;
    args.out_dtype = out->dtype;
    return dev->backend->augment(dev->ctx, &args);
  })
}

}  // extern "C"
