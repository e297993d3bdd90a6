// test_augment_emulated.cc: runs the views' kernel, the code of
// cuda/augment_cuda.cu unchanged, on the CPU through cuda/emulate.h, and
// compares its views with the CPU backend's on the same batch (both
// through pv_augment, so the core's checks and resolution are shared).
// It checks the kernel's indexing, the contrast reduction, the blur's
// chunk-and-ring rows and the barriers on machines with no GPU; it cannot
// check timing or the GPU's float rounding, which
// bindings/augment_test.go (TestAugmentCUDAMatchesCPU) checks on a GPU.
// Prints one line per case and "N passed, N failed"; exits non-zero on a
// failure.
//
//   g++ -std=c++17 -O2 -Icsrc -Icuda cuda/test_augment_emulated.cc csrc/*.cc
//       -ldl -lpthread -o /tmp/test_augment_emulated && /tmp/test_augment_emulated
#define POLYVIEW_CUDA_EMULATE 1
#include "augment_cuda.cu"  // the kernel under test, compiled as C++

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core_internal.h"
#include "polyview.h"

#include "emulate_services.h"  // host(), fail, ctx_alloc, ... over host memory

// ---- an emulated device: host memory, the kernel as its augment op -------------

namespace {

pv_status emu_alloc(void *ctx, int64_t bytes, void **ptr) {
  return pvcuda::ctx_alloc(static_cast<pvcuda::Context *>(ctx), bytes, ptr, __FILE__,
                           __LINE__);
}
void emu_free(void *ctx, void *ptr) { pvcuda::ctx_free(static_cast<pvcuda::Context *>(ctx), ptr); }
pv_status emu_copy(void *, void *dst, const void *src, int64_t bytes) {
  std::memcpy(dst, src, (size_t)bytes);
  return PV_OK;
}

pv_backend emulated_table() {
  pv_backend t;
  std::memset(&t, 0, sizeof t);
  t.abi_version = PV_ABI_VERSION;
  t.name = "cuda (emulated)";
  t.alloc = emu_alloc;
  t.free = emu_free;
  t.copy_h2d = emu_copy;
  t.copy_d2h = emu_copy;
  pv_cuda_register_augment(&t);
  return t;
}

struct Batch {
  std::vector<uint8_t> pixels;
  std::vector<int64_t> offset, height, width, channels, index;
};

// Images of several sizes, gray and RGB, smooth ramps plus noise.
Batch make_batch() {
  Batch b;
  const int sizes[][3] = {{61, 90, 3}, {37, 29, 1}, {120, 80, 3}, {45, 200, 3}};
  uint32_t s = 12345;
  for (int i = 0; i < 4; i++) {
    const int h = sizes[i][0], w = sizes[i][1], c = sizes[i][2];
    b.offset.push_back((int64_t)b.pixels.size());
    b.height.push_back(h);
    b.width.push_back(w);
    b.channels.push_back(c);
    b.index.push_back(700 + 3 * i);
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int k = 0; k < c; k++) {
          s = s * 1664525u + 1013904223u;
          const int v = 30 + 160 * x / w + 40 * ((y * (k + 1)) % h) / h + (int)(s >> 28);
          b.pixels.push_back((uint8_t)(v > 255 ? 255 : v));
        }
  }
  return b;
}

// The views of b on dev as floats, or the error text.
bool run(pv_device *dev, const Batch &b, const std::vector<pv_view_recipe> &recipes,
         int first, pv_dtype dtype, std::vector<float> *out, std::string *err) {
  const int64_t n = (int64_t)b.height.size(), v = (int64_t)recipes.size();
  const int64_t px_shape[1] = {(int64_t)b.pixels.size()};
  const int64_t shape[5] = {n, v, recipes[0].out_h, recipes[0].out_w, 3};
  pv_tensor *px = nullptr, *o = nullptr;
  pv_status st = pv_tensor_create(dev, PV_U8, 1, px_shape, &px);
  if (st == PV_OK) st = pv_tensor_write(px, b.pixels.data(), (int64_t)b.pixels.size());
  if (st == PV_OK) st = pv_tensor_create(dev, dtype, 5, shape, &o);
  if (st == PV_OK) {
    pv_image_batch batch = {n, px, b.offset.data(), b.height.data(), b.width.data(),
                            b.channels.data(), b.index.data()};
    st = pv_augment(dev, &batch, recipes.data(), first, v, 99, 5, o);
  }
  if (st == PV_OK) {
    const int64_t numel = pv_tensor_numel(o);
    out->resize((size_t)numel);
    if (dtype == PV_F32) {
      st = pv_tensor_read(o, out->data(), numel * 4);
    } else {
      std::vector<uint16_t> raw((size_t)numel);
      st = pv_tensor_read(o, raw.data(), numel * 2);
      for (int64_t k = 0; k < numel; k++) (*out)[k] = __bfloat162float(__nv_bfloat16{raw[k]});
    }
  }
  if (st != PV_OK) *err = pv_last_error();
  pv_tensor_free(o);
  pv_tensor_free(px);
  return st == PV_OK;
}

pv_view_recipe simclr(int size) {
  pv_view_recipe r = {};
  r.out_h = r.out_w = size;
  r.scale_min = 0.08, r.scale_max = 1, r.ratio_min = 0.75, r.ratio_max = 4.0 / 3;
  r.flip_p = 0.5, r.jitter_p = 0.8;
  r.brightness = r.contrast = r.saturation = 0.8, r.hue = 0.2;
  r.gray_p = 0.2, r.blur_p = 0.5, r.blur_sigma_min = 0.1, r.blur_sigma_max = 2;
  r.solarize_p = 0.3, r.solarize_threshold = 0.5;
  const double mean[3] = {0.485, 0.456, 0.406}, std_[3] = {0.229, 0.224, 0.225};
  for (int c = 0; c < 3; c++) r.mean[c] = mean[c], r.std[c] = std_[c];
  return r;
}

}  // namespace

int main() {
  pvcuda::Context ctx;
  const pv_backend table = emulated_table();
  pv_device emu;
  std::memset(&emu, 0, sizeof emu);
  emu.refs.store(1);  // the caller's reference: tensors never release this device
  emu.backend = &table;
  emu.ctx = &ctx;
  emu.kind = PV_DEVICE_CUDA;
  std::snprintf(emu.name, sizeof emu.name, "cuda (emulated)");
  pv_device *cpu = nullptr;
  if (pv_device_open(PV_DEVICE_CPU, 0, &cpu) != PV_OK) {
    std::fprintf(stderr, "open cpu: %s\n", pv_last_error());
    return 1;
  }
  const Batch b = make_batch();

  struct Case {
    const char *name;
    std::vector<pv_view_recipe> recipes;
  };
  std::vector<Case> cases;
  cases.push_back({"simclr 32 x 4 views", std::vector<pv_view_recipe>(4, simclr(32))});
  pv_view_recipe always = simclr(40);
  always.jitter_p = always.blur_p = 1, always.blur_kernel = 9, always.out_w = 28;
  cases.push_back({"jitter + blur 40 x 28", std::vector<pv_view_recipe>(3, always)});
  pv_view_recipe wide = simclr(96);
  wide.blur_p = 1, wide.blur_sigma_min = 1.5, wide.out_h = 70;
  cases.push_back({"blur 70 x 96 (chunked ring)", std::vector<pv_view_recipe>(2, wide)});
  cases.push_back({"simclr 224", std::vector<pv_view_recipe>(2, simclr(224))});
  pv_view_recipe tiny = simclr(3);
  tiny.blur_p = 1, tiny.blur_kernel = 7;  // radius beyond the view: folded reflection
  cases.push_back({"blur wider than 3 x 3", std::vector<pv_view_recipe>(2, tiny)});

  // Same code, same inputs, same float32 operations (the emulator does not
  // fuse multiply-adds where g++ does not): only the contrast mean's
  // summation order differs (block tree vs. row sums), a few ulp of the
  // mean, times contrast factors up to 1.8 and 1 / std < 4.5: 1e-5. A
  // value within that of a solarisation threshold may land either side:
  // allow 1 in 10^4. In bfloat16 two float32 values that close may round
  // to neighbouring bf16 numbers: one ulp, |x| / 128 at most.
  int passed = 0, failed = 0;
  for (const Case &c : cases) {
    for (pv_dtype dt : {PV_F32, PV_BF16}) {
      std::vector<float> want, got;
      std::string err;
      if (!run(cpu, b, c.recipes, 3, dt, &want, &err) ||
          !run(&emu, b, c.recipes, 3, dt, &got, &err)) {
        std::printf("FAIL %s: %s\n", c.name, err.c_str());
        failed++;
        continue;
      }
      size_t bad = 0;
      double worst = 0;
      for (size_t k = 0; k < want.size(); k++) {
        const double d = std::fabs((double)got[k] - want[k]);
        const double tol = 1e-5 + (dt == PV_BF16 ? std::fabs(want[k]) / 128 : 0);
        if (!(d <= tol)) bad++;
        if (d > worst || d != d) worst = d;
      }
      const bool ok = bad * 10000 <= want.size();
      std::printf("%s %s %s: max |emulated - cpu| %.3g, %zu of %zu over tolerance\n",
                  ok ? "ok  " : "FAIL", c.name, dt == PV_F32 ? "f32" : "bf16", worst, bad,
                  want.size());
      ok ? passed++ : failed++;
    }
  }
  pv_device_close(cpu);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
