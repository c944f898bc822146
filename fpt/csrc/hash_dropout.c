/* Dropout in one pass over the tensor, for the CPU (built by fpt/native.py, called by fpt/fastops/dropout.py and residual.py).

   Element i of a tensor is kept iff bits(seed, i) >= thr: bits is the high 32 bits of SplitMix64's
   output function at seed + i * golden, a counter-based generator. Any element's bits follow from
   its index alone, so the backward recomputes the mask instead of storing it, and the threads split
   the work with no generator state to share. fastops.hash_keep_mask is the same function in torch:
   the fallback, and the reference the tests compare this file against bit for bit.

   Kept elements are x * scale rounded as torch rounds (fp32: one multiply; bf16: multiply in fp32,
   round to nearest even), dropped ones +0: torch.where(keep, x * scale, 0) exactly. The _add kernels
   add an fp32 residual in the same pass, as torch adds a bf16 tensor to an fp32 one (in fp32):
   dropout(h) + r exactly, for the post-norm blocks' LayerNorm(dropout(dense(x)) + x). */
#include <stdint.h>

#include "hash_bits.h"

#define MIN_PARALLEL 32768 /* elements; below this a second thread costs more than it saves */

static inline float from_bf16(uint16_t b) {
    union { uint32_t u; float f; } v = { (uint32_t)b << 16 };
    return v.f;
}

/* Round to nearest even. A NaN stays a NaN: x * scale of a bf16 NaN keeps its high mantissa bits. */
static inline uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

int fpt_hash_dropout_abi(void) { return 2; }

void fpt_hash_dropout_f32(const float *restrict x, float *restrict out, int64_t n, uint64_t seed,
                          uint32_t thr, float scale, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
    for (int64_t i = 0; i < n; i++)
        out[i] = bits(seed, (uint64_t)i) >= thr ? x[i] * scale : 0.0f;
}

void fpt_hash_dropout_bf16(const uint16_t *restrict x, uint16_t *restrict out, int64_t n, uint64_t seed,
                           uint32_t thr, float scale, int threads) {
    if (scale == 1.0f) { /* attention's dropout: the scale goes on the output, not on the scores */
        #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
        for (int64_t i = 0; i < n; i++)
            out[i] = bits(seed, (uint64_t)i) >= thr ? x[i] : 0;
    } else {
        #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
        for (int64_t i = 0; i < n; i++)
            out[i] = bits(seed, (uint64_t)i) >= thr ? to_bf16(from_bf16(x[i]) * scale) : 0;
    }
}

void fpt_hash_dropout_add_f32(const float *restrict h, const float *restrict r, float *restrict out, int64_t n,
                              uint64_t seed, uint32_t thr, float scale, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
    for (int64_t i = 0; i < n; i++)
        out[i] = r[i] + (bits(seed, (uint64_t)i) >= thr ? h[i] * scale : 0.0f);
}

void fpt_hash_dropout_add_bf16(const uint16_t *restrict h, const float *restrict r, float *restrict out, int64_t n,
                               uint64_t seed, uint32_t thr, float scale, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
    for (int64_t i = 0; i < n; i++)
        out[i] = r[i] + (bits(seed, (uint64_t)i) >= thr ? from_bf16(to_bf16(from_bf16(h[i]) * scale)) : 0.0f);
}

/* The gradient of dropout(h) + r for a bf16 h: the fp32 gradient cast to bf16, then dropped and scaled
   (autograd's cast, then hash dropout's backward), in one pass. */
void fpt_hash_dropout_f32_to_bf16(const float *restrict g, uint16_t *restrict out, int64_t n, uint64_t seed,
                                  uint32_t thr, float scale, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if (n >= MIN_PARALLEL)
    for (int64_t i = 0; i < n; i++)
        out[i] = bits(seed, (uint64_t)i) >= thr ? to_bf16(from_bf16(to_bf16(g[i])) * scale) : 0;
}
