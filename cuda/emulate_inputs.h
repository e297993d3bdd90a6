// emulate_inputs.h: the inputs of the emulated kernel tests
// (test_*_emulated.cc): a counter-based generator that gives the same
// numbers on every machine, Gaussian tensors, and bf16 rounding.
// Include it after the kernel header under test (which brings the bf16
// type of cuda/emulate.h).
#ifndef POLYVIEW_EMULATE_INPUTS_H
#define POLYVIEW_EMULATE_INPUTS_H

#include <cmath>
#include <cstdint>
#include <vector>

namespace emutest {

typedef std::vector<float> Vec;
typedef std::vector<int64_t> Shape;

// splitmix64 for bits, Box-Muller for normals.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double)(next() >> 11) / 9007199254740992.0; }
  double normal() {
    const double u = uniform() + 1e-300, v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

// The number of elements of a shape.
inline int64_t count(const Shape &s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// n values shift + scale N(0, 1).
inline Vec gaussian(int64_t n, uint64_t seed, float scale = 1.f, float shift = 0.f) {
  Rng r{seed};
  Vec v((size_t)n);
  for (float &x : v) x = shift + scale * (float)r.normal();
  return v;
}

// v rounded to bf16 and back: the values a bf16 tensor holds.
inline Vec round_bf16(const Vec &v) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __bfloat162float(__float2bfloat16_rn(v[i]));
  return out;
}

}  // namespace emutest

#endif  // POLYVIEW_EMULATE_INPUTS_H
