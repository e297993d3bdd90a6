// test_syncbn_emulated.cc: runs the CUDA kernels of synchronised batch
// norm (cuda/nn_syncbn_kernels.cuh, unchanged) on the CPU through
// cuda/emulate.h and compares them with the CPU backend's ops (through the
// public C ABI) on the same inputs. Each case splits a batch into W parts
// along N, as W ranks would hold it, and runs the whole recipe on both
// sides: stats per part, a float32 sum of the parts' stats standing in
// for the all-reduce, forward_stats per part, backward_stats, the sum
// again, backward_input. bindings/nn_syncbn_test.go checks the CPU ops
// against the fused batch norm, and all of this again on a GPU.
//
// Tolerances, as a bound on |got - want| / (1 + |want|) per element:
//   sums  both sides sum in double, in another order, and round to
//         float32 once: the stats differ by an ulp at most, the
//         statistics derived from them by a few, and y and dx, computed
//         with the same per-channel coefficients, by a few ulps of their
//         size: 1e-5.
//   bf16  bf16 activations against the CPU's float32 on the same (bf16)
//         inputs: one rounding of y or dx (2^-8 relative) plus the float32
//         bound: 5e-3.
// Prints one line per check and "N passed, N failed"; exits non-zero on
// a failure.
#define POLYVIEW_CUDA_EMULATE 1
#include "nn_syncbn_kernels.cuh"  // the kernels under test, compiled as C++

#include <cstdlib>
#include <string>
#include <vector>

#include "polyview.h"

#include "emulate_services.h"  // host(), fail, ctx_alloc, ... over host memory
#include "emulate_inputs.h"    // Rng, gaussian, round_bf16

namespace {

using pvcuda::nn::bf16;
using emutest::count;
using emutest::gaussian;
using emutest::round_bf16;
using emutest::Shape;
using emutest::Vec;





[[noreturn]] void die(const char *what) {
  std::fprintf(stderr, "cpu reference: %s: %s\n", what, pv_last_error());
  std::exit(2);
}

void ok(pv_status st, const char *what) {
  if (st != PV_OK) die(what);
}

// A float32 CPU tensor, freed with its owner.
struct Cpu {
  pv_device *dev = nullptr;
  std::vector<pv_tensor *> owned;
  Cpu() { ok(pv_device_open(PV_DEVICE_CPU, 0, &dev), "open cpu"); }
  ~Cpu() {
    for (pv_tensor *t : owned) pv_tensor_free(t);
    pv_device_close(dev);
  }
  pv_tensor *make(const Shape &s, const Vec &data) {
    pv_tensor *t;
    ok(pv_tensor_create(dev, PV_F32, (int)s.size(), s.data(), &t), "create");
    owned.push_back(t);
    ok(pv_tensor_write(t, data.data(), (int64_t)data.size() * 4), "write");
    return t;
  }
  pv_tensor *zeros(const Shape &s) { return make(s, Vec((size_t)count(s), 0.f)); }
  Vec read(const pv_tensor *t) {
    Vec v((size_t)pv_tensor_numel(t));
    ok(pv_tensor_read(t, v.data(), (int64_t)v.size() * 4), "read");
    return v;
  }
};

int g_passed = 0, g_failed = 0;

void compare(const std::string &what, const Vec &got, const Vec &want, double tol) {
  double e = got.size() == want.size() ? 0 : INFINITY;
  for (size_t i = 0; e < INFINITY && i < got.size(); i++) {
    const double d = std::fabs((double)got[i] - (double)want[i]) / (1 + std::fabs(want[i]));
    if (!(d <= e)) e = std::isnan(d) ? INFINITY : d;
  }
  const bool pass = e <= tol;
  std::printf("%s %-62s err %.1e <= %.0e\n", pass ? "ok  " : "FAIL", what.c_str(), e, tol);
  (pass ? g_passed : g_failed)++;
}

void status_ok(const std::string &what, pv_status st) {
  if (st == PV_OK) return;
  std::printf("FAIL %s: status %d: %s\n", what.c_str(), st, pvcuda::g_error.c_str());
  g_failed++;
}

// The all-reduce: parts' [2, c] stats summed in float32, in part order.
Vec all_reduce(const std::vector<Vec> &parts) {
  Vec sum(parts[0].size(), 0.f);
  for (const Vec &p : parts)
    for (size_t i = 0; i < sum.size(); i++) sum[i] += p[i];
  return sum;
}

Vec slice(const Vec &v, int64_t begin, int64_t end) {
  return Vec(v.begin() + begin, v.begin() + end);
}

constexpr double kSums = 1e-5, kBF16 = 5e-3;

pvcuda::Context g_ctx;

// One rank's activations in the kernels' dtype: float data, or bf16.
struct Act {
  bool bf;
  Vec f;
  std::vector<bf16> h;
  Act(bool bf16_, const Vec &v) : bf(bf16_), f(v), h(v.size()) {
    for (size_t i = 0; i < v.size(); i++) h[i] = __float2bfloat16_rn(v[i]);
  }
  void *ptr() { return bf ? (void *)h.data() : (void *)f.data(); }
  Vec values() const {
    if (!bf) return f;
    Vec out(h.size());
    for (size_t i = 0; i < h.size(); i++) out[i] = __bfloat162float(h[i]);
    return out;
  }
};

// The recipe on W ranks holding parts[i] images each of a batch of shape
// xs, kernels against the CPU's ops.
void test_split(const Shape &xs, const std::vector<int64_t> &parts, bool bf) {
  const int64_t c = xs.back(), per_image = count(xs) / xs[0], rows = count(xs) / c;
  const Shape cs = {c}, ss = {2, c};
  Vec x = gaussian(count(xs), 31, 2.f, 0.5f), dy = gaussian(count(xs), 32);
  if (bf) x = round_bf16(x), dy = round_bf16(dy);
  const Vec gamma = gaussian(c, 33, 0.5f, 1.f), beta = gaussian(c, 34);
  const Vec rm0 = gaussian(c, 35, 0.1f, 0.3f), rv0 = gaussian(c, 36, 0.1f, 1.f);
  pv_batchnorm_desc d = {1, 0.1, 1e-5};
  const size_t w = parts.size();

  Cpu cpu;
  pv_tensor *tg = cpu.make(cs, gamma), *tb = cpu.make(cs, beta);
  std::vector<pv_tensor *> tx(w), tdy(w), trm(w), trv(w), tsm(w), tsi(w);
  std::vector<Vec> cstats(w), kstats(w);
  std::vector<Act> kx, kdy;
  std::vector<Vec> krm(w, rm0), krv(w, rv0), ksm(w, Vec(c)), ksi(w, Vec(c));
  kx.reserve(w), kdy.reserve(w);  // args keep pointers into them
  std::vector<Shape> shapes(w);
  std::vector<pv_syncbn_args> args(w);
  int64_t first = 0;
  for (size_t i = 0; i < w; i++) {
    shapes[i] = xs;
    shapes[i][0] = parts[i];
    const int64_t b = first * per_image, e = (first + parts[i]) * per_image;
    first += parts[i];
    tx[i] = cpu.make(shapes[i], slice(x, b, e));
    tdy[i] = cpu.make(shapes[i], slice(dy, b, e));
    trm[i] = cpu.make(cs, rm0), trv[i] = cpu.make(cs, rv0);
    tsm[i] = cpu.zeros(cs), tsi[i] = cpu.zeros(cs);
    kx.emplace_back(bf, slice(x, b, e));
    kdy.emplace_back(bf, slice(dy, b, e));
    pv_syncbn_args &a = args[i];
    a = pv_syncbn_args{};
    a.rows = parts[i] * per_image / c, a.c = c, a.count = rows;
    a.momentum = d.momentum, a.eps = d.eps;
    a.act_dtype = bf ? PV_BF16 : PV_F32, a.param_dtype = PV_F32;
    a.x_ptr = kx[i].ptr(), a.dy_ptr = kdy[i].ptr();
    a.gamma_ptr = gamma.data(), a.beta_ptr = beta.data();
    a.running_mean_ptr = krm[i].data(), a.running_var_ptr = krv[i].data();
    a.save_mean_ptr = ksm[i].data(), a.save_invstd_ptr = ksi[i].data();
  }
  std::string tag = " [";
  for (size_t i = 0; i < xs.size(); i++) tag += (i ? "," : "") + std::to_string(xs[i]);
  tag += "] W=" + std::to_string(w) + (bf ? " bf16" : " f32");

  // Forward: local stats about the running mean, the sum, forward_stats.
  for (size_t i = 0; i < w; i++) {
    pv_tensor *st = cpu.zeros(ss);
    ok(pv_batchnorm_stats(cpu.dev, tx[i], trm[i], st), "stats");
    cstats[i] = cpu.read(st);
    kstats[i].assign((size_t)(2 * c), 0.f);
    pv_syncbn_args a = args[i];
    a.shift_ptr = rm0.data(), a.stats_out_ptr = kstats[i].data();
    status_ok("stats", pvcuda::nn::syncbn::batchnorm_stats(&g_ctx, &a));
    compare("stats of part " + std::to_string(i) + tag, kstats[i], cstats[i], kSums);
  }
  const Vec csum = all_reduce(cstats), ksum = all_reduce(kstats);
  pv_tensor *tsum = cpu.make(ss, csum);
  std::vector<Vec> ky(w), cy(w);
  for (size_t i = 0; i < w; i++) {
    pv_tensor *ty = cpu.zeros(shapes[i]);
    ok(pv_batchnorm_forward_stats(cpu.dev, &d, tx[i], tg, tb, tsum, rows, trm[i], trv[i],
                                  tsm[i], tsi[i], ty), "forward_stats");
    cy[i] = cpu.read(ty);
    Act y(bf, Vec(cy[i].size(), 0.f));
    pv_syncbn_args a = args[i];
    a.stats_in_ptr = ksum.data(), a.y_ptr = y.ptr();
    status_ok("forward_stats", pvcuda::nn::syncbn::batchnorm_forward_stats(&g_ctx, &a));
    ky[i] = y.values();
    const std::string p = " of part " + std::to_string(i) + tag;
    compare("y" + p, ky[i], cy[i], bf ? kBF16 : kSums);
    compare("running mean" + p, krm[i], cpu.read(trm[i]), kSums);
    compare("running var" + p, krv[i], cpu.read(trv[i]), kSums);
    compare("save mean" + p, ksm[i], cpu.read(tsm[i]), kSums);
    compare("save invstd" + p, ksi[i], cpu.read(tsi[i]), kSums);
  }

  // Backward: local dbeta and dgamma, the sum, backward_input (in place
  // on the GPU side: dx is dy).
  for (size_t i = 0; i < w; i++) {
    pv_tensor *st = cpu.zeros(ss);
    ok(pv_batchnorm_backward_stats(cpu.dev, tx[i], tsm[i], tsi[i], tdy[i], st),
       "backward_stats");
    cstats[i] = cpu.read(st);
    pv_syncbn_args a = args[i];
    a.stats_out_ptr = kstats[i].data();
    status_ok("backward_stats", pvcuda::nn::syncbn::batchnorm_backward_stats(&g_ctx, &a));
  }
  const Vec cgrad = all_reduce(cstats), kgrad = all_reduce(kstats);
  compare("dbeta, dgamma (summed backward stats)" + tag, kgrad, cgrad, kSums);
  pv_tensor *tgrad = cpu.make(ss, cgrad);
  for (size_t i = 0; i < w; i++) {
    pv_tensor *tdx = cpu.zeros(shapes[i]);
    ok(pv_batchnorm_backward_input(cpu.dev, tx[i], tg, tsm[i], tsi[i], tdy[i], tgrad, rows,
                                   tdx), "backward_input");
    pv_syncbn_args a = args[i];
    a.stats_in_ptr = kgrad.data(), a.dx_ptr = kdy[i].ptr();
    status_ok("backward_input", pvcuda::nn::syncbn::batchnorm_backward_input(&g_ctx, &a));
    compare("dx of part " + std::to_string(i) + tag, kdy[i].values(), cpu.read(tdx),
            bf ? kBF16 : kSums);
  }
}

}  // namespace

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  g_ctx.sm = 90;
  for (int bf = 0; bf < 2; bf++) {
    test_split({3, 5, 4, 37}, {3}, bf);          // one rank; C not a multiple of 32
    test_split({3, 5, 4, 37}, {2, 1}, bf);
    test_split({4, 16, 16, 8}, {1, 3}, bf);      // 768 rows on one part: several chunks
    test_split({4, 16, 16, 8}, {2, 0, 2}, bf);   // a rank with no rows
    test_split({300, 70}, {170, 1, 129}, bf);    // [N, C]; a rank with one row
  }

  // Unsupported dtypes are refused with a message, not run.
  {
    pv_syncbn_args a = {};
    a.c = 4, a.rows = 2, a.count = 2, a.act_dtype = PV_F64, a.param_dtype = PV_F64;
    const pv_status st = pvcuda::nn::syncbn::batchnorm_stats(&g_ctx, &a);
    const bool pass = st == PV_ERR_UNSUPPORTED &&
                      pvcuda::g_error.find("float64") != std::string::npos;
    std::printf("%s float64 stats refused: \"%s\"\n", pass ? "ok  " : "FAIL",
                pvcuda::g_error.c_str());
    (pass ? g_passed : g_failed)++;
  }
  {
    const bool pass = g_ctx.in_use == 0 && g_ctx.peak > 0;
    std::printf("%s scratch freed (in use %lld), peak %lld bytes\n", pass ? "ok  " : "FAIL",
                (long long)g_ctx.in_use, (long long)g_ctx.peak);
    (pass ? g_passed : g_failed)++;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
