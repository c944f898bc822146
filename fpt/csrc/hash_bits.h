/* Hash dropout's random bits, shared by every kernel that drops (fpt/csrc/hash_dropout.c,
   fpt/csrc/short_attention.c) so that their masks are the same function of (seed, element index):
   the high 32 bits of SplitMix64's output function at seed + i * golden. fastops.hash_keep_mask is
   this in torch. */
#ifndef FPT_HASH_BITS_H
#define FPT_HASH_BITS_H
#include <stdint.h>

#define GOLDEN 0x9e3779b97f4a7c15ULL

static inline uint32_t bits(uint64_t seed, uint64_t i) {
    uint64_t z = seed + i * GOLDEN;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}
#endif
