// test_nn_emulated.cc: runs the CUDA backend's own encoder kernels, the
// code of cuda/nn_kernels.cuh unchanged, on the CPU through cuda/emulate.h
// and compares them with the CPU backend (through the public C ABI) on
// the same inputs: ReLU, add, max and global average pooling, batch norm
// (training and evaluation, forward and backward), the linear layer's
// bias gradient and the three optimizer steps, in float32 and, for the
// activations, bfloat16. The cuDNN convolutions and cuBLAS products of
// nn_cuda.cu cannot be emulated; bindings/nn_cuda_test.go checks them,
// and all of this again, on a GPU.
//
// Tolerances, as a bound on |got - want| / (1 + |want|) per element:
//   exact   ReLU, add, pooling: the same float operations in the same
//           order as the CPU (maxpool's gradient gathers in the CPU's
//           window order), so 0.
//   sums    batch norm, bias gradient: sums in double like the CPU but
//           merged in another order; after rounding to float the
//           statistics differ by an ulp at most, which moves y and dx by a
//           few ulps of their size: 1e-5 (observed 0).
//   optim   the optimizer steps: the CPU's float32 expressions term for
//           term; only LARS's norms are summed in another order (double):
//           1e-6 (observed 0).
//   bf16    bf16 activations against the CPU's float32 on the same (bf16)
//           inputs: one rounding of the output (unit roundoff 2^-8, as
//           bf16 keeps 8 significant bits) plus the float32 bound: 5e-3
//           (observed 3.3e-3).
// Prints one line per case and "N passed, N failed"; exits non-zero on a
// failure.
#define POLYVIEW_CUDA_EMULATE 1
#include "nn_kernels.cuh"  // the kernels under test, compiled as C++

#include <cstdarg>
#include <cstdlib>
#include <string>
#include <vector>

#include "polyview.h"

#include "emulate_services.h"  // host(), fail, ctx_alloc, ... over host memory
#include "emulate_inputs.h"    // Rng, gaussian, round_bf16

// ---- inputs, the CPU side, reporting ------------------------------------------------

namespace {

using pvcuda::nn::bf16;
using emutest::count;
using emutest::gaussian;
using emutest::Rng;
using emutest::round_bf16;
using emutest::Shape;
using emutest::Vec;




// Small integers: many ties, for the pooling tie rule; some exact zeros.
Vec ties(int64_t n, uint64_t seed) {
  Rng r{seed};
  Vec v((size_t)n);
  for (float &x : v) x = (float)((int)(r.next() % 5) - 2);
  return v;
}


std::vector<bf16> to_bf16(const Vec &v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

Vec from_bf16(const std::vector<bf16> &v) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __bfloat162float(v[i]);
  return out;
}

// CPU tensors of one case, freed together.
struct Cpu {
  pv_device *dev = nullptr;
  std::vector<pv_tensor *> owned;
  Cpu() {
    if (pv_device_open(PV_DEVICE_CPU, 0, &dev) != PV_OK) die("open cpu");
  }
  ~Cpu() {
    for (pv_tensor *t : owned) pv_tensor_free(t);
    pv_device_close(dev);
  }
  static void die(const char *what) {
    std::fprintf(stderr, "cpu reference: %s: %s\n", what, pv_last_error());
    std::exit(2);
  }
  pv_tensor *make(const Shape &s, const Vec *data = nullptr) {
    pv_tensor *t;
    if (pv_tensor_create(dev, PV_F32, (int)s.size(), s.data(), &t) != PV_OK) die("create");
    owned.push_back(t);
    Vec zero;
    if (!data) zero.assign((size_t)count(s), 0.f), data = &zero;
    if (pv_tensor_write(t, data->data(), (int64_t)data->size() * 4) != PV_OK) die("write");
    return t;
  }
  Vec read(const pv_tensor *t) {
    Vec v((size_t)pv_tensor_numel(t));
    if (pv_tensor_read(t, v.data(), (int64_t)v.size() * 4) != PV_OK) die("read");
    return v;
  }
  void ok(pv_status st, const char *what) {
    if (st != PV_OK) die(what);
  }
};

int g_passed = 0, g_failed = 0;

// Largest |got - want| / (1 + |want|).
double max_err(const Vec &got, const Vec &want) {
  if (got.size() != want.size()) return INFINITY;
  double e = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double d = std::fabs((double)got[i] - (double)want[i]) / (1 + std::fabs(want[i]));
    if (!(d <= e)) e = std::isnan(d) ? INFINITY : d;
  }
  return e;
}

void compare(const std::string &what, const Vec &got, const Vec &want, double tol) {
  const double e = max_err(got, want);
  const bool ok = e <= tol;
  std::printf("%s %-58s err %.1e <= %.0e\n", ok ? "ok  " : "FAIL", what.c_str(), e, tol);
  (ok ? g_passed : g_failed)++;
}

void status_ok(const std::string &what, pv_status st) {
  if (st == PV_OK) return;
  std::printf("FAIL %s: status %d: %s\n", what.c_str(), st, pvcuda::g_error.c_str());
  g_failed++;
}

constexpr double kExact = 0, kSums = 1e-5, kOptim = 1e-6, kBF16 = 5e-3;

pvcuda::Context g_ctx;

// ---- elementwise -----------------------------------------------------------------------

void test_eltwise(int64_t n) {
  Cpu cpu;
  const Shape s = {n};
  Vec x = ties(n, 1), dy = gaussian(n, 2), b = gaussian(n, 3);
  for (int64_t i = 0; i < n; i += 7) x[i] = gaussian(1, 10 + i)[0];
  pv_tensor *tx = cpu.make(s, &x), *tdy = cpu.make(s, &dy), *tb = cpu.make(s, &b);
  pv_tensor *ty = cpu.make(s), *tdx = cpu.make(s), *tsum = cpu.make(s);
  cpu.ok(pv_relu_forward(cpu.dev, tx, ty), "relu forward");
  cpu.ok(pv_relu_backward(cpu.dev, ty, tdy, tdx), "relu backward");
  cpu.ok(pv_add(cpu.dev, tx, tb, tsum), "add");
  const Vec y = cpu.read(ty), dx = cpu.read(tdx), sum = cpu.read(tsum);

  Vec gy(n), gdx(n), gsum(n);
  pv_eltwise_args a = {n, PV_F32, x.data(), nullptr, gy.data()};
  status_ok("relu forward", pvcuda::nn::relu_forward(&g_ctx, &a));
  a = {n, PV_F32, gy.data(), dy.data(), gdx.data()};
  status_ok("relu backward", pvcuda::nn::relu_backward(&g_ctx, &a));
  a = {n, PV_F32, x.data(), b.data(), gsum.data()};
  status_ok("add", pvcuda::nn::add(&g_ctx, &a));
  const std::string tag = " n=" + std::to_string(n) + " f32";
  compare("relu forward" + tag, gy, y, kExact);
  compare("relu backward" + tag, gdx, dx, kExact);
  compare("add" + tag, gsum, sum, kExact);

  // bf16: inputs already bf16, so the CPU sees the same values; one
  // rounding of the output is the whole difference (none for ReLU).
  const Vec xr = round_bf16(x), dyr = round_bf16(dy), br = round_bf16(b);
  Cpu c2;
  pv_tensor *rx = c2.make(s, &xr), *rdy = c2.make(s, &dyr), *rb = c2.make(s, &br);
  pv_tensor *ry = c2.make(s), *rdx = c2.make(s), *rsum = c2.make(s);
  c2.ok(pv_relu_forward(c2.dev, rx, ry), "relu forward");
  c2.ok(pv_relu_backward(c2.dev, ry, rdy, rdx), "relu backward");
  c2.ok(pv_add(c2.dev, rx, rb, rsum), "add");
  std::vector<bf16> hx = to_bf16(x), hdy = to_bf16(dy), hb = to_bf16(b);
  std::vector<bf16> hy(n), hdx(n), hsum(n);
  a = {n, PV_BF16, hx.data(), nullptr, hy.data()};
  status_ok("relu forward bf16", pvcuda::nn::relu_forward(&g_ctx, &a));
  a = {n, PV_BF16, hy.data(), hdy.data(), hdx.data()};
  status_ok("relu backward bf16", pvcuda::nn::relu_backward(&g_ctx, &a));
  a = {n, PV_BF16, hx.data(), hb.data(), hsum.data()};
  status_ok("add bf16", pvcuda::nn::add(&g_ctx, &a));
  compare("relu forward bf16" + tag.substr(0, tag.size() - 4), from_bf16(hy), c2.read(ry),
          kExact);
  compare("relu backward bf16" + tag.substr(0, tag.size() - 4), from_bf16(hdx), c2.read(rdx),
          kExact);
  compare("add bf16" + tag.substr(0, tag.size() - 4), from_bf16(hsum), c2.read(rsum), kBF16);
}

// ---- pooling -----------------------------------------------------------------------------

void test_maxpool(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t stride,
                  int64_t pad) {
  Cpu cpu;
  pv_maxpool_desc d = {k, stride, pad};
  const int64_t p = (h + 2 * pad - k) / stride + 1, q = (w + 2 * pad - k) / stride + 1;
  const Shape xs = {n, h, w, c}, ys = {n, p, q, c};
  const Vec x = ties(count(xs), (uint64_t)(h * 31 + k)), dy = gaussian(count(ys), 5);
  pv_tensor *tx = cpu.make(xs, &x), *ty = cpu.make(ys), *tdy = cpu.make(ys, &dy);
  pv_tensor *tdx = cpu.make(xs);
  cpu.ok(pv_maxpool_forward(cpu.dev, &d, tx, ty), "maxpool forward");
  cpu.ok(pv_maxpool_backward(cpu.dev, &d, tx, ty, tdy, tdx), "maxpool backward");

  Vec gy((size_t)count(ys)), gdx((size_t)count(xs));
  pv_pool_args a = {n, h, w, c, p, q, k, stride, pad, PV_F32, x.data(), nullptr, nullptr,
                    gy.data()};
  status_ok("maxpool forward", pvcuda::nn::maxpool_forward(&g_ctx, &a));
  a.y_ptr = gy.data(), a.dy_ptr = dy.data(), a.out_ptr = gdx.data();
  status_ok("maxpool backward", pvcuda::nn::maxpool_backward(&g_ctx, &a));
  char tag[96];
  snprintf(tag, sizeof tag, " [%lld,%lld,%lld,%lld] k%lld s%lld p%lld", (long long)n,
           (long long)h, (long long)w, (long long)c, (long long)k, (long long)stride,
           (long long)pad);
  compare(std::string("maxpool forward") + tag, gy, cpu.read(ty), kExact);
  compare(std::string("maxpool backward (ties)") + tag, gdx, cpu.read(tdx), kExact);
}

void test_avgpool(int64_t n, int64_t h, int64_t w, int64_t c) {
  Cpu cpu;
  const Shape xs = {n, h, w, c}, ys = {n, c};
  const Vec x = gaussian(count(xs), 7), dy = gaussian(count(ys), 8);
  pv_tensor *tx = cpu.make(xs, &x), *ty = cpu.make(ys), *tdy = cpu.make(ys, &dy);
  pv_tensor *tdx = cpu.make(xs);
  cpu.ok(pv_global_avgpool_forward(cpu.dev, tx, ty), "avgpool forward");
  cpu.ok(pv_global_avgpool_backward(cpu.dev, tdy, tdx), "avgpool backward");
  Vec gy((size_t)count(ys)), gdx((size_t)count(xs));
  pv_pool_args a = {n, h, w, c, 1, 1, 0, 0, 0, PV_F32, x.data(), nullptr, nullptr, gy.data()};
  status_ok("avgpool forward", pvcuda::nn::avgpool_forward(&g_ctx, &a));
  a.x_ptr = nullptr, a.dy_ptr = dy.data(), a.out_ptr = gdx.data();
  status_ok("avgpool backward", pvcuda::nn::avgpool_backward(&g_ctx, &a));
  char tag[64];
  snprintf(tag, sizeof tag, " [%lld,%lld,%lld,%lld]", (long long)n, (long long)h, (long long)w,
           (long long)c);
  compare(std::string("global avgpool forward") + tag, gy, cpu.read(ty), kExact);
  compare(std::string("global avgpool backward") + tag, gdx, cpu.read(tdx), kExact);
}

// ---- batch norm --------------------------------------------------------------------------

// Forward then backward with the statistics forward saved, in training or
// evaluation, f32 or bf16 activations (x then holds bf16 values).
void test_batchnorm(const Shape &xs, bool training, bool bf) {
  Cpu cpu;
  const int64_t c = xs.back(), rows = count(xs) / c, n = count(xs);
  const Shape cs = {c};
  Vec x = gaussian(n, 11, 2.f, 0.5f), dy = gaussian(n, 12);
  if (bf) x = round_bf16(x), dy = round_bf16(dy);
  const Vec gamma = gaussian(c, 13, 0.5f, 1.f), beta = gaussian(c, 14);
  const Vec rm0 = gaussian(c, 15, 0.1f), rv0 = gaussian(c, 16, 0.1f, 1.f);
  pv_batchnorm_desc d = {training ? 1 : 0, 0.1, 1e-5};
  pv_tensor *tx = cpu.make(xs, &x), *tg = cpu.make(cs, &gamma), *tb = cpu.make(cs, &beta);
  pv_tensor *trm = cpu.make(cs, &rm0), *trv = cpu.make(cs, &rv0);
  pv_tensor *tsm = cpu.make(cs), *tsi = cpu.make(cs), *ty = cpu.make(xs);
  pv_tensor *tdy = cpu.make(xs, &dy), *tdx = cpu.make(xs), *tdg = cpu.make(cs);
  pv_tensor *tdb = cpu.make(cs);
  cpu.ok(pv_batchnorm_forward(cpu.dev, &d, tx, tg, tb, trm, trv, tsm, tsi, ty), "bn forward");
  cpu.ok(pv_batchnorm_backward(cpu.dev, &d, tx, tg, tsm, tsi, tdy, tdx, tdg, tdb),
         "bn backward");

  Vec rm = rm0, rv = rv0, sm(c), si(c), dg(c), db(c), y(n), dx(n);
  std::vector<bf16> hx = to_bf16(x), hdy = to_bf16(dy), hy(n), hdx(n);
  pv_batchnorm_args a = {};
  a.rows = rows, a.c = c, a.training = d.training, a.momentum = d.momentum, a.eps = d.eps;
  a.act_dtype = bf ? PV_BF16 : PV_F32, a.param_dtype = PV_F32;
  a.x_ptr = bf ? (const void *)hx.data() : x.data();
  a.gamma_ptr = gamma.data(), a.beta_ptr = beta.data();
  a.running_mean_ptr = rm.data(), a.running_var_ptr = rv.data();
  a.save_mean_ptr = sm.data(), a.save_invstd_ptr = si.data();
  a.y_ptr = bf ? (void *)hy.data() : y.data();
  status_ok("bn forward", pvcuda::nn::batchnorm_forward(&g_ctx, &a));
  a.dy_ptr = bf ? (const void *)hdy.data() : dy.data();
  a.dx_ptr = bf ? (void *)hdx.data() : dx.data();
  a.dgamma_ptr = dg.data(), a.dbeta_ptr = db.data();
  status_ok("bn backward", pvcuda::nn::batchnorm_backward(&g_ctx, &a));
  if (bf) y = from_bf16(hy), dx = from_bf16(hdx);

  std::string tag = " [";
  for (size_t i = 0; i < xs.size(); i++) tag += (i ? "," : "") + std::to_string(xs[i]);
  tag += std::string("] ") + (training ? "train" : "eval") + (bf ? " bf16" : " f32");
  const double tol = bf ? kBF16 : kSums;
  compare("bn y" + tag, y, cpu.read(ty), tol);
  compare("bn running mean" + tag, rm, cpu.read(trm), kSums);
  compare("bn running var" + tag, rv, cpu.read(trv), kSums);
  compare("bn save mean" + tag, sm, cpu.read(tsm), kSums);
  compare("bn save invstd" + tag, si, cpu.read(tsi), kSums);
  compare("bn dx" + tag, dx, cpu.read(tdx), tol);
  compare("bn dgamma" + tag, dg, cpu.read(tdg), kSums);
  compare("bn dbeta" + tag, db, cpu.read(tdb), kSums);
}

// ---- linear bias gradient ----------------------------------------------------------------

void test_bias_grad(int64_t rows, int64_t in, int64_t out) {
  Cpu cpu;
  const Vec x = gaussian(rows * in, 21), w = gaussian(out * in, 22);
  const Vec dy = gaussian(rows * out, 23, 1.f, 0.25f);
  pv_tensor *tx = cpu.make({rows, in}, &x), *tw = cpu.make({out, in}, &w);
  pv_tensor *tdy = cpu.make({rows, out}, &dy), *tdw = cpu.make({out, in});
  pv_tensor *tdb = cpu.make({out});
  cpu.ok(pv_linear_backward(cpu.dev, tx, tw, tdy, nullptr, tdw, tdb), "linear backward");
  Vec db(out);
  status_ok("column sums", pvcuda::nn::column_sums(&g_ctx, dy.data(), rows, out, db.data()));
  compare("linear db [" + std::to_string(rows) + "," + std::to_string(out) + "]", db,
          cpu.read(tdb), kSums);
  // The bias add of the forward pass: y = src + b, rounded once.
  Vec src = gaussian(rows * out, 24), b = gaussian(out, 25), y(rows * out), want(rows * out);
  for (int64_t i = 0; i < rows * out; i++) want[i] = src[i] + b[i % out];
  status_ok("bias store", pvcuda::nn::bias_store(&g_ctx, src.data(), b.data(), y.data(), rows,
                                                 out));
  compare("linear bias add [" + std::to_string(rows) + "," + std::to_string(out) + "]", y, want,
          kExact);
}

// ---- optimizer steps ---------------------------------------------------------------------

void test_optimizer(const char *name, pv_optim_desc d, int64_t n) {
  Cpu cpu;
  const Shape s = {n};
  Vec p = gaussian(n, 31), m(n, 0.f), v(n, 0.f);
  pv_tensor *tp = cpu.make(s, &p), *tm = cpu.make(s), *tv = cpu.make(s), *tg = cpu.make(s);
  for (int step = 1; step <= 3; step++) {
    const Vec g = gaussian(n, 40 + step, 0.1f);
    if (pv_tensor_write(tg, g.data(), n * 4) != PV_OK) Cpu::die("write");
    d.step = step;
    cpu.ok(pv_optimizer_step(cpu.dev, &d, tp, tg, tm, d.kind == PV_OPT_ADAMW ? tv : nullptr),
           "optimizer step");
    pv_optim_args a = {d, n, PV_F32, p.data(), g.data(), m.data(),
                       d.kind == PV_OPT_ADAMW ? v.data() : nullptr};
    status_ok(name, pvcuda::nn::optimizer_step(&g_ctx, &a));
  }
  const std::string tag = std::string(name) + " n=" + std::to_string(n) + ", 3 steps";
  compare(tag + ": param", p, cpu.read(tp), kOptim);
  compare(tag + ": state0", m, cpu.read(tm), kOptim);
  if (d.kind == PV_OPT_ADAMW) compare(tag + ": state1", v, cpu.read(tv), kOptim);
}

}  // namespace

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  g_ctx.sm = 90;

  test_eltwise(1000);
  test_eltwise(3);

  test_maxpool(2, 7, 7, 5, 3, 2, 1);    // ResNet's stem pool, odd size
  test_maxpool(1, 8, 6, 33, 2, 2, 0);   // disjoint windows, > 32 channels
  test_maxpool(2, 5, 6, 3, 3, 1, 1);    // overlapping windows, stride 1
  test_maxpool(1, 4, 4, 2, 3, 3, 2);    // windows mostly padding
  test_avgpool(3, 4, 5, 37);
  test_avgpool(2, 1, 1, 8);

  for (int bf = 0; bf < 2; bf++)
    for (int training = 1; training >= 0; training--) {
      test_batchnorm({3, 5, 4, 37}, training, bf);  // C not a multiple of 32
      test_batchnorm({2, 16, 16, 8}, training, bf); // 512 rows: several chunks
      test_batchnorm({300, 70}, training, bf);      // [N, C], as in the head
    }

  test_bias_grad(150, 9, 45);
  test_bias_grad(2, 3, 70);

  pv_optim_desc sgd = {};
  sgd.kind = PV_OPT_SGD, sgd.lr = 0.1, sgd.momentum = 0.9, sgd.weight_decay = 1e-2;
  test_optimizer("sgd", sgd, 5000);
  sgd.nesterov = 1;
  test_optimizer("sgd nesterov", sgd, 777);
  pv_optim_desc lars = sgd;
  lars.kind = PV_OPT_LARS, lars.nesterov = 0, lars.eta = 0.001, lars.lr = 2.0;
  test_optimizer("lars", lars, 5000);
  lars.nesterov = 1;
  test_optimizer("lars nesterov", lars, 300);
  lars.nesterov = 0, lars.exclude = 1;
  test_optimizer("lars exclude", lars, 300);
  pv_optim_desc adamw = {};
  adamw.kind = PV_OPT_ADAMW, adamw.lr = 1e-3, adamw.weight_decay = 0.05;
  adamw.beta1 = 0.9, adamw.beta2 = 0.999, adamw.eps = 1e-8;
  test_optimizer("adamw", adamw, 5000);
  adamw.exclude = 1;
  test_optimizer("adamw exclude", adamw, 300);

  // Unsupported dtypes are refused with a message, not run.
  {
    pv_optim_args a = {sgd, 4, PV_F64, nullptr, nullptr, nullptr, nullptr};
    const pv_status st = pvcuda::nn::optimizer_step(&g_ctx, &a);
    const bool ok =
        st == PV_ERR_UNSUPPORTED && pvcuda::g_error.find("float32") != std::string::npos;
    std::printf("%s float64 optimizer step refused: \"%s\"\n", ok ? "ok  " : "FAIL",
                pvcuda::g_error.c_str());
    (ok ? g_passed : g_failed)++;
  }
  {
    const bool ok = g_ctx.in_use == 0 && g_ctx.peak > 0;
    std::printf("%s scratch freed (in use %lld), peak %lld bytes\n", ok ? "ok  " : "FAIL",
                (long long)g_ctx.in_use, (long long)g_ctx.peak);
    (ok ? g_passed : g_failed)++;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
