// test_gemm.cc: the CPU GEMM (csrc/gemm_cpu.cc) against a float64 triple
// loop, run by ctest once per SIMD level the machine has (POLYVIEW_CPU_SIMD
// caps it). The shapes reach every path of the packed GEMM: ragged edges in
// m, n and k against every tile (6 or 8 rows, 16 or 32 columns), more than
// 128 columns (the column groups of a row-major A read in place), more
// than 3072 (several B blocks when B is too large to pack whole), depths
// over one 256-deep slice, a transposed A with few and many B slivers (read
// in place, or packed a vector per depth), the split-k path (depth much
// larger than the output), strides wider than the rows, alpha and beta,
// and 1, 2 and 3 threads; gemm_rows, whose A rows are gathered segment
// by segment; and gemm_ct, which stores C transposed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "gemm_cpu.h"
#include "simd.h"
#include "threadpool.h"

namespace {

struct Shape {
  bool ta, tb;
  int64_t m, n, k;
};

// Returns the number of elements out of tolerance, printing the first.
template <typename T>
long check(const Shape &s, T alpha, T beta, std::mt19937 &rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  // Leading dimensions 3 wider than the rows they hold.
  const int64_t lda = (s.ta ? s.m : s.k) + 3, ldb = (s.tb ? s.k : s.n) + 3, ldc = s.n + 3;
  std::vector<T> a((size_t)((s.ta ? s.k : s.m) * lda)), b((size_t)((s.tb ? s.n : s.k) * ldb));
  std::vector<T> c((size_t)(s.m * ldc));
  for (T &v : a) v = (T)u(rng);
  for (T &v : b) v = (T)u(rng);
  for (T &v : c) v = beta == (T)0 ? std::numeric_limits<T>::quiet_NaN() : (T)u(rng);
  const std::vector<T> c0 = c;
  pv::gemm<T>(s.ta, s.tb, s.m, s.n, s.k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(),
              ldc);
  long bad = 0;
  for (int64_t i = 0; i < s.m; i++) {
    for (int64_t j = 0; j < ldc; j++) {
      const T got = c[(size_t)(i * ldc + j)];
      if (j >= s.n) {  // past the columns: untouched
        const T was = c0[(size_t)(i * ldc + j)];
        if (!(got == was || (std::isnan(got) && std::isnan(was)))) bad++;
        continue;
      }
      double want = 0, mag = 0;
      for (int64_t p = 0; p < s.k; p++) {
        const double x = s.ta ? a[(size_t)(p * lda + i)] : a[(size_t)(i * lda + p)];
        const double y = s.tb ? b[(size_t)(j * ldb + p)] : b[(size_t)(p * ldb + j)];
        want += x * y;
        mag += std::fabs(x * y);
      }
      want *= alpha;
      mag *= std::fabs((double)alpha);
      if (beta != (T)0) {
        want += beta * (double)c0[(size_t)(i * ldc + j)];
        mag += std::fabs(beta * (double)c0[(size_t)(i * ldc + j)]);
      }
      // A sum of k rounded products in blocks: the error is about
      // sqrt(k) * u * sum |a b| for random signs (u = 6e-8 in float32), at
      // most 4e-6 of the magnitude at the deepest k here (4100); 2e-5
      // leaves a factor 5. In float64 the same reasoning gives 1e-13.
      const double tol = (sizeof(T) == 4 ? 2e-5 : 1e-13) * (mag + 1e-30);
      if (!(std::fabs(got - want) <= tol)) {
        if (bad == 0)
          std::printf("  %s ta=%d tb=%d m=%ld n=%ld k=%ld alpha=%g beta=%g: c[%ld][%ld] = %.9g, "
                      "want %.9g\n",
                      sizeof(T) == 4 ? "float" : "double", s.ta, s.tb, (long)s.m, (long)s.n,
                      (long)s.k, (double)alpha, (double)beta, (long)i, (long)j, (double)got,
                      want);
        bad++;
      }
    }
  }
  return bad;
}

// gemm_ct: the same product stored transposed, C^T [n][ldct], beta
// included, and the columns of C^T past m left alone.
template <typename T>
long check_ct(const Shape &s, T alpha, T beta, std::mt19937 &rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t lda = s.m + 3, ldb = (s.tb ? s.k : s.n) + 3, ldct = s.m + 2;
  std::vector<T> a((size_t)(s.k * lda)), b((size_t)((s.tb ? s.n : s.k) * ldb));
  std::vector<T> ct((size_t)(s.n * ldct));
  for (T &v : a) v = (T)u(rng);
  for (T &v : b) v = (T)u(rng);
  for (T &v : ct) v = (T)u(rng);
  const std::vector<T> ct0 = ct;
  pv::gemm_ct<T>(true, s.tb, s.m, s.n, s.k, alpha, a.data(), lda, b.data(), ldb, beta,
                 ct.data(), ldct);
  long bad = 0;
  for (int64_t j = 0; j < s.n; j++)
    for (int64_t i = 0; i < ldct; i++) {
      const T got = ct[(size_t)(j * ldct + i)];
      if (i >= s.m) {
        if (got != ct0[(size_t)(j * ldct + i)]) bad++;
        continue;
      }
      double want = 0, mag = 0;
      for (int64_t p = 0; p < s.k; p++) {
        const double x = a[(size_t)(p * lda + i)];
        const double y = s.tb ? b[(size_t)(j * ldb + p)] : b[(size_t)(p * ldb + j)];
        want += x * y;
        mag += std::fabs(x * y);
      }
      want = alpha * want + beta * (double)ct0[(size_t)(j * ldct + i)];
      mag = std::fabs((double)alpha) * mag + std::fabs(beta * (double)ct0[(size_t)(j * ldct + i)]);
      // As for gemm (check).
      if (!(std::fabs(got - want) <= (sizeof(T) == 4 ? 2e-5 : 1e-13) * (mag + 1e-30))) {
        if (bad == 0)
          std::printf("  gemm_ct %s m=%ld n=%ld k=%ld: ct[%ld][%ld] = %.9g, want %.9g\n",
                      sizeof(T) == 4 ? "float" : "double", (long)s.m, (long)s.n, (long)s.k,
                      (long)j, (long)i, (double)got, want);
        bad++;
      }
    }
  return bad;
}

// gemm_rows: op(A) gathered from rows stored out of order, each segment
// of a row in its own place (as an implicit convolution's input rows lie),
// checked against the same float64 sums.
struct Gathered {
  const void *store;
  int64_t m, seg;
  std::vector<int64_t> perm;
};

template <typename T>
const T *gathered_row(const void *ctx, int64_t i, int64_t d) {
  const Gathered &g = *static_cast<const Gathered *>(ctx);
  const T *base = static_cast<const T *>(g.store);
  return base + ((d / g.seg) * g.m + g.perm[(size_t)i]) * (g.seg + 2) + d % g.seg;
}

template <typename T>
void gathered_rows(const void *ctx, int64_t i0, int64_t count, int64_t d, const T **out) {
  for (int64_t r = 0; r < count; r++) out[r] = gathered_row<T>(ctx, i0 + r, d);
}

template <typename T>
long check_rows(int64_t m, int64_t n, int64_t k, int64_t seg, bool tb, std::mt19937 &rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t segs = (k + seg - 1) / seg, ldb = (tb ? k : n) + 3, ldc = n + 1;
  Gathered g{nullptr, m, seg, std::vector<int64_t>((size_t)m)};
  for (int64_t i = 0; i < m; i++) g.perm[(size_t)i] = (i * 7 + 3) % m;  // m not a multiple of 7
  std::vector<T> store((size_t)(segs * m * (seg + 2))), b((size_t)((tb ? n : k) * ldb));
  std::vector<T> c((size_t)(m * ldc), (T)-7);
  for (T &v : store) v = (T)u(rng);
  for (T &v : b) v = (T)u(rng);
  g.store = store.data();
  const pv::GemmRows<T> rows{gathered_rows<T>, &g, seg};
  if (!pv::gemm_rows_fits<T>(m, n, k)) {
    std::printf("  gemm_rows m=%ld n=%ld k=%ld: does not fit\n", (long)m, (long)n, (long)k);
    return 1;
  }
  pv::gemm_rows<T>(rows, tb, m, n, k, b.data(), ldb, c.data(), ldc);
  long bad = 0;
  for (int64_t i = 0; i < m; i++) {
    if (c[(size_t)(i * ldc + n)] != (T)-7) bad++;  // past the columns: untouched
    for (int64_t j = 0; j < n; j++) {
      double want = 0, mag = 0;
      for (int64_t p = 0; p < k; p++) {
        const double x = gathered_row<T>(&g, i, p)[0];
        const double y = tb ? b[(size_t)(j * ldb + p)] : b[(size_t)(p * ldb + j)];
        want += x * y;
        mag += std::fabs(x * y);
      }
      const double got = c[(size_t)(i * ldc + j)];
      // As for gemm (check).
      if (!(std::fabs(got - want) <= (sizeof(T) == 4 ? 2e-5 : 1e-13) * (mag + 1e-30))) {
        if (bad == 0)
          std::printf("  gemm_rows %s m=%ld n=%ld k=%ld segment=%ld: c[%ld][%ld] = %.9g, "
                      "want %.9g\n", sizeof(T) == 4 ? "float" : "double", (long)m, (long)n,
                      (long)k, (long)seg, (long)i, (long)j, got, want);
        bad++;
      }
    }
  }
  return bad;
}

}  // namespace

int main() {
  const Shape shapes[] = {
      {false, true, 1, 1, 1},        {false, true, 7, 17, 3},
      {false, true, 50, 33, 300},    {false, true, 121, 130, 257},  // groups, depth slices
      {false, false, 13, 290, 64},   {false, false, 125, 3100, 40},  // several B blocks
      {false, true, 40, 3300, 1300},                                  // B too large to pack whole
      {true, false, 37, 64, 500},    {true, false, 130, 128, 300},   // transposed A in place
      {true, false, 61, 300, 100},   {true, false, 9, 32, 4100},     // packed; split-k
      {true, false, 40, 20, 2000},   {true, true, 45, 50, 70},       // split-k; both transposed
      {false, false, 200, 19, 1200},
      {true, false, 1000, 200, 40},  // tasks of 13 B slivers at 1 thread: A packed
  };
  const char *level_name[] = {"portable", "avx2", "avx512"};
  std::printf("gemm: SIMD level %s\n", level_name[pv::cpu_simd_level()]);
  std::mt19937 rng(7);
  long bad = 0;
  for (int threads : {1, 2, 3}) {
    pv::set_cpu_threads(threads);
    for (const Shape &s : shapes) {
      bad += check<float>(s, 1.0f, 0.0f, rng);
      bad += check<float>(s, -0.5f, 1.0f, rng);
      bad += check<float>(s, 2.0f, 0.25f, rng);
      if (threads == 2) bad += check<double>(s, 1.5, 0.5, rng);
    }
    // Segments of whole slices, ragged ones (100 deep against slices
    // rounded to 8, a last segment cut short by k), segments deeper than
    // one slice, partial slivers, more than one column group.
    bad += check_rows<float>(121, 130, 576, 192, true, rng);
    bad += check_rows<float>(50, 33, 300, 100, true, rng);
    bad += check_rows<float>(37, 64, 250, 96, false, rng);
    bad += check_rows<float>(45, 20, 1000, 500, true, rng);
    if (threads == 2) bad += check_rows<double>(37, 40, 250, 96, true, rng);
    // Stored transposed: A in place and packed, ragged edges, split-k;
    // tiles summed over slices in the tile buffer with full and partial
    // column groups and several column tasks (130 x 50, 250 x 300); at
    // one thread, per-slice passes storing C^T every slice (130 x 40 x
    // 2100, split-k at more).
    for (const Shape &s : {Shape{true, false, 37, 64, 500}, Shape{true, false, 130, 128, 300},
                           Shape{true, false, 61, 300, 100}, Shape{true, false, 9, 32, 4100},
                           Shape{true, true, 45, 50, 70}, Shape{true, false, 130, 50, 600},
                           Shape{true, false, 250, 300, 700}, Shape{true, false, 130, 40, 2100}}) {
      bad += check_ct<float>(s, 1.0f, 0.0f, rng);
      bad += check_ct<float>(s, 0.5f, 1.0f, rng);
      if (threads == 2) bad += check_ct<double>(s, 1.5, 0.5, rng);
    }
  }
  if (bad) {
    std::printf("gemm: %ld elements wrong\n", bad);
    return 1;
  }
  std::printf("gemm: all shapes match the float64 reference\n");
  return 0;
}
