// simd.h: the CPU kernels' vector types and vector math, written with GCC
// vector extensions so that one source compiles to AVX2+FMA inside
// functions marked PV_TARGET_AVX2, to AVX-512 inside PV_TARGET_AVX512 (the
// GEMM only) and to portable code elsewhere.
#ifndef POLYVIEW_SIMD_H
#define POLYVIEW_SIMD_H

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#define PV_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__)
#define PV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PV_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#else
#define PV_TARGET_AVX2
#define PV_TARGET_AVX512
#endif

namespace pv {

// The widest kernels this process runs: 2 AVX-512, 1 AVX2+FMA, 0 portable.
// POLYVIEW_CPU_SIMD=avx2 or =portable caps it, so that the narrower paths
// can be tested and timed on a machine that has the wider ones.
inline int cpu_simd_level() {
#if defined(__x86_64__)
  static const int level = [] {
    int l = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
    if (l == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) l = 2;
    const char *cap = std::getenv("POLYVIEW_CPU_SIMD");
    if (cap && std::strcmp(cap, "avx2") == 0) l = l < 1 ? l : 1;
    if (cap && std::strcmp(cap, "portable") == 0) l = 0;
    return l;
  }();
  return level;
#else
  return 0;
#endif
}

// Whether this processor runs the PV_TARGET_AVX2 versions of the kernels.
inline bool cpu_has_avx2_fma() { return cpu_simd_level() >= 1; }

// Whether the GEMM runs its PV_TARGET_AVX512 micro-kernel.
inline bool cpu_has_avx512() { return cpu_simd_level() >= 2; }

// A 32-byte vector of T: 8 floats or 4 doubles.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t itype __attribute__((vector_size(32)));
  static constexpr int lanes = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t itype __attribute__((vector_size(32)));
  static constexpr int lanes = 4;
};

template <typename V, typename T>
PV_INLINE V vload(const T *p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename T>
PV_INLINE void vstore(T *p, V v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// Transposes the 8 x 8 floats r (row i in r[i]) in registers: pairs of
// rows interleaved, then pairs of pairs, then the 128-bit halves swapped
// (24 shuffles, where element by element through memory is 64 loads and
// 64 stores).
PV_INLINE void transpose8(Vec<float>::type (&r)[8]) {
  typedef Vec<float>::type V;
  typedef Vec<float>::itype I;
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], I{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], I{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int h = 0; h < 8; h += 4)
    for (int p = 0; p < 2; p++) {
      u[h + 2 * p] = __builtin_shuffle(t[h + p], t[h + p + 2], I{0, 1, 8, 9, 4, 5, 12, 13});
      u[h + 2 * p + 1] = __builtin_shuffle(t[h + p], t[h + p + 2], I{2, 3, 10, 11, 6, 7, 14, 15});
    }
  for (int i = 0; i < 4; i++) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], I{0, 1, 2, 3, 8, 9, 10, 11});
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], I{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// exp(x) for 8 floats. Range reduction x = n ln2 + r with |r| <= ln2 / 2,
// then a degree-7 Taylor polynomial (relative error below 1e-8 before
// rounding, so about 2 ulp in all) and 2^n built in the exponent bits.
// Inputs below -87.3 give exactly 0, -inf included; inputs are clamped at
// 88 above (the loss never exponentiates a positive number above 2/tau
// minus a larger shift, so the clamp is never reached in practice).
PV_INLINE Vec<float>::type vexp(Vec<float>::type x) {
  typedef Vec<float>::type V;
  typedef Vec<float>::itype I;
  const V lo = V{} - 87.3f, hi = V{} + 88.0f;
  I underflow = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23 rounds to an integer
  V t = x * 1.44269504088896341f + magic;
  V n = t - magic;
  I ni = (I)t - (I)magic;
  V r = x - n * 0.693145751953125f;  // ln2 split in two for exactness
  r = r - n * 1.42860682030941723212e-6f;
  V p = V{} + (1.0f / 5040);
  p = p * r + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I scale = (ni + 127) << 23;
  V y = p * (V)scale;
  return (V)((I)y & ~underflow);
}

// exp(x) lane by lane for doubles: the float64 path is the reference used
// by gradient checks, where libm's accuracy matters more than speed.
PV_INLINE Vec<double>::type vexp(Vec<double>::type x) {
  for (int i = 0; i < 4; i++) x[i] = std::exp(x[i]);
  return x;
}

// Horizontal reductions.
template <typename T>
PV_INLINE T hmax(typename Vec<T>::type v) {
  T m = v[0];
  for (int i = 1; i < Vec<T>::lanes; i++) m = v[i] > m ? v[i] : m;
  return m;
}
template <typename T>
PV_INLINE T hsum(typename Vec<T>::type v) {
  T s = v[0];
  for (int i = 1; i < Vec<T>::lanes; i++) s += v[i];
  return s;
}

// bfloat16 <-> float32: bf16 is the top half of a float32; rounding to
// nearest even, NaN kept a NaN.
PV_INLINE float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
PV_INLINE uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

}  // namespace pv

#endif  // POLYVIEW_SIMD_H
