/*
 * philox.h: Philox-4x32-10, the counter-based generator behind every
 * random parameter of a view (Salmon et al., "Parallel random numbers: as
 * easy as 1, 2, 3", SC 2011). Host and device code (__host__ __device__
 * under nvcc), so the CPU and CUDA backends draw the same numbers.
 *
 * A counter-based generator has no state: the numbers of view m of image
 * k are a pure function of (seed, epoch, k, m, draw), whatever the batch
 * split, worker count or restart. The key is the 64-bit seed; the 128-bit
 * counter packs the rest (pv_philox_view_counter).
 */
#ifndef POLYVIEW_PHILOX_H
#define POLYVIEW_PHILOX_H

#include <stdint.h>

#ifndef PV_HD
#ifdef __CUDACC__
#define PV_HD __host__ __device__ inline
#else
#define PV_HD inline
#endif
#endif

/* The Weyl increments of the key and the round multipliers. */
#define PV_PHILOX_W0 0x9E3779B9u
#define PV_PHILOX_W1 0xBB67AE85u
#define PV_PHILOX_M0 0xD2511F53u
#define PV_PHILOX_M1 0xCD9E8D57u

/* One Philox-4x32 block: 10 rounds of ctr under key, into out (which may
 * alias ctr). Known-answer tests are in bindings/augment_test.go. */
PV_HD void pv_philox4x32_10_block(const uint32_t ctr[4], const uint32_t key[2],
                                  uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; round++) {
    const uint64_t p0 = (uint64_t)PV_PHILOX_M0 * c0;
    const uint64_t p1 = (uint64_t)PV_PHILOX_M1 * c2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += PV_PHILOX_W0;
    k1 += PV_PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The counter of draw block `block` of view `view` of image `index` in
 * `epoch`: word 0 holds block (low 16 bits) and view (high 16), word 1 the
 * epoch, words 2-3 the 64-bit image index. The packing is one-to-one for
 * block, view < 2^16 and epoch < 2^32, which pv_augment checks. */
PV_HD void pv_philox_view_counter(uint64_t epoch, uint64_t index, uint32_t view,
                                  uint32_t block, uint32_t ctr[4]) {
  ctr[0] = (block & 0xffffu) | (view << 16);
  ctr[1] = (uint32_t)epoch;
  ctr[2] = (uint32_t)index;
  ctr[3] = (uint32_t)(index >> 32);
}

#endif /* POLYVIEW_PHILOX_H */
