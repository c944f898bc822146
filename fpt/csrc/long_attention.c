/* Attention with hash dropout for long sequences, tiled, for the CPU (built by fpt/native.py, called by
   fpt/fastops/long_attention_kernel.py): flash attention's online softmax, so that no T x T matrix is
   ever in memory, forward and backward, in fp32 and in bf16.

   At 1024 tokens with attention dropout the eager math writes and reads the (B, H, T, T) scores,
   probabilities and mask several times a step, and torch's fused SDPA kernel has no dropout on the CPU.
   Here each (batch, head, block of BQ queries) is one task: it walks the keys in blocks of BK, keeps the
   running row maxima and sums (m, l) and the unnormalised output in the core's cache, and applies hash
   dropout to each tile of probabilities with the mask recomputed from (seed, element index): element
   (b, h, i, j) of the (B, H, T, T) probabilities is index ((b H + h) T + i) T + j, exactly the mask that
   fpt/csrc/hash_dropout.c and fpt/csrc/short_attention.c apply (fastops.hash_keep_mask). The forward
   saves per query row m and 1 / l (the softmax is exp(s - m) / l); the backward (flash attention 2:
   each (batch, head) is one task, keys in the outer loop, queries in the inner) recomputes each tile's
   probabilities and mask from them and from the seed, and takes the softmax's row term from the output:
   sum_j p_ij dp_ij = dout_i . out_i, dropout included.

   Masks: NULL, or bytes, nonzero where a query may look at a key, element (b, i, j) at
   mask[b msb + i msq + j] (msq = 0: one row for all queries, a key padding mask). A row with every key
   masked gets the uniform distribution over the T keys, as the eager path's softmax of finfo.min scores.

   bf16: the products use the bf16 dot-product instruction (AVX512-BF16) with fp32 accumulation; scores,
   softmax and accumulators are fp32; the probabilities and score gradients are rounded to bf16 for the
   products, as the eager path rounds them. fp32: the same tiles with fp32 FMA. Any T (padded inside to
   the blocks), heads a multiple of 16 wide. Without AVX-512 (F, DQ, BW, VL) the file builds
   with none of its kernels and fastops keeps the eager path; without AVX512-BF16 it has the fp32 ones
   only (fpt_long_attention_bf16_ok() says which). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hash_bits.h"

int fpt_long_attention_abi(void) { return 1; }

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#include "vec_exp.h"

#define BQ 64 /* queries per tile */
#define BK 64 /* keys per tile */
#define NEG_MAX (-3.4028234663852886e38f)

static inline int64_t padded(int64_t t) { return (t + BK - 1) / BK * BK; }

static inline float exp_nonpositive1(float x) { return _mm512_cvtss_f32(exp_nonpositive(_mm512_set1_ps(x))); }

/* hash_bits.h's bits() for 8 indices at once: the high 32 bits of SplitMix64's output function of z. */
static inline __m512i bits8(__m512i z) {
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ULL));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64((long long)0x94d049bb133111ebULL));
    return _mm512_srli_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 31)), 32);
}

static const uint64_t LANE_GOLDEN[16] = {0 * GOLDEN, 1 * GOLDEN, 2 * GOLDEN, 3 * GOLDEN, 4 * GOLDEN, 5 * GOLDEN,
                                         6 * GOLDEN, 7 * GOLDEN, 8 * GOLDEN, 9 * GOLDEN, 10 * GOLDEN, 11 * GOLDEN,
                                         12 * GOLDEN, 13 * GOLDEN, 14 * GOLDEN, 15 * GOLDEN};

/* Which of elements idx .. idx + 15 hash dropout keeps: bits(seed, i) >= thr, as hash_dropout.c. */
static inline __mmask16 keep16(uint64_t seed, uint64_t idx, uint32_t thr) {
    __m512i z = _mm512_set1_epi64((long long)(seed + idx * GOLDEN)), t = _mm512_set1_epi64(thr);
    __mmask8 lo = _mm512_cmpge_epu64_mask(bits8(_mm512_add_epi64(z, _mm512_loadu_si512(LANE_GOLDEN))), t);
    __mmask8 hi = _mm512_cmpge_epu64_mask(bits8(_mm512_add_epi64(z, _mm512_loadu_si512(LANE_GOLDEN + 8))), t);
    return (__mmask16)(lo | ((unsigned)hi << 8));
}

/* The columns c .. c + 15 of a tile that are keys (below T): jn valid columns in the tile. */
static inline __mmask16 in_range(int c, int jn) {
    return c >= jn ? 0 : c + 16 <= jn ? (__mmask16)0xffff : (__mmask16)((1u << (jn - c)) - 1);
}

/* ... and of those, the ones the mask lets this query see. */
static inline __mmask16 visible(const uint8_t *mrow, int c, __mmask16 range) {
    if (!mrow || !range) return range;
    __m128i bytes = _mm_maskz_loadu_epi8(range, mrow + c);
    return _mm_test_epi8_mask(bytes, bytes);
}

/* Forward, one tile: S (BQ x BK, fp32) holds q k^T of queries i0.. and keys j0..; on return it holds the
   kept exp(scale s - m_new) (dropped and out-of-range ones 0), m and l are updated, and alpha[r] =
   exp(m_old - m_new) is the factor the output's row r must take before this tile's product is added. */
static void forward_tile(float *S, int64_t i0, int64_t j0, int64_t T, float scale, const uint8_t *mask, int64_t msq,
                         float *m, float *l, float *alpha, uint64_t seed, uint64_t hbase, uint32_t thr) {
    int jn = T - j0 < BK ? (int)(T - j0) : BK;
    for (int r = 0; r < BQ; r++) {
        float *row = S + r * BK;
        int64_t i = i0 + r;
        if (i >= T) { memset(row, 0, sizeof(float) * BK); alpha[r] = 1.0f; continue; }
        const uint8_t *mrow = mask ? mask + i * msq + j0 : NULL;
        __m512 mx = _mm512_set1_ps(NEG_MAX);
        for (int c = 0; c < BK; c += 16) {
            __mmask16 ok = visible(mrow, c, in_range(c, jn));
            __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(NEG_MAX), ok, _mm512_loadu_ps(row + c), _mm512_set1_ps(scale));
            _mm512_storeu_ps(row + c, x);
            mx = _mm512_max_ps(mx, x);
        }
        float tile_max = _mm512_reduce_max_ps(mx), m_new = m[r] > tile_max ? m[r] : tile_max;
        alpha[r] = exp_nonpositive1(m[r] - m_new);
        m[r] = m_new;
        __m512 sum = _mm512_setzero_ps(), mv = _mm512_set1_ps(m_new);
        uint64_t rbase = hbase + (uint64_t)i * (uint64_t)T + (uint64_t)j0;
        for (int c = 0; c < BK; c += 16) {
            __mmask16 range = in_range(c, jn);
            __m512 e = _mm512_maskz_mov_ps(range, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + c), mv)));
            sum = _mm512_add_ps(sum, e);
            if (thr && range) e = _mm512_maskz_mov_ps(keep16(seed, rbase + c, thr), e);
            _mm512_storeu_ps(row + c, e);
        }
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
    }
}

/* Backward, one tile: S holds q k^T and dP dout v^T (before dropout's scale) for queries i0.. and keys j0..;
   on return S holds the kept probabilities (dropped ones 0) and dP the scores' gradient times scale. */
static void backward_tile(float *S, float *dP, int64_t i0, int64_t j0, int64_t T, float scale, const uint8_t *mask,
                          int64_t msq, const float *stats, const float *rowdot, uint64_t seed, uint64_t hbase,
                          uint32_t thr, float dscale) {
    int jn = T - j0 < BK ? (int)(T - j0) : BK;
    for (int r = 0; r < BQ; r++) {
        float *row = S + r * BK, *grow = dP + r * BK;
        int64_t i = i0 + r;
        if (i >= T) { memset(row, 0, sizeof(float) * BK); memset(grow, 0, sizeof(float) * BK); continue; }
        const uint8_t *mrow = mask ? mask + i * msq + j0 : NULL;
        __m512 mv = _mm512_set1_ps(stats[2 * i]), inv = _mm512_set1_ps(stats[2 * i + 1]);
        __m512 di = _mm512_set1_ps(rowdot[i]);
        uint64_t rbase = hbase + (uint64_t)i * (uint64_t)T + (uint64_t)j0;
        for (int c = 0; c < BK; c += 16) {
            __mmask16 range = in_range(c, jn);
            __mmask16 ok = visible(mrow, c, range);
            __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(NEG_MAX), ok, _mm512_loadu_ps(row + c), _mm512_set1_ps(scale));
            __m512 p = _mm512_maskz_mul_ps(range, exp_nonpositive(_mm512_sub_ps(x, mv)), inv);
            __mmask16 keep = thr && range ? keep16(seed, rbase + c, thr) & range : range;
            __m512 dpz = _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(grow + c), _mm512_set1_ps(dscale));
            /* masked scores get no gradient (the eager path's masked_fill), even in a row with every key masked */
            _mm512_storeu_ps(grow + c, _mm512_maskz_mul_ps(ok, _mm512_mul_ps(p, _mm512_sub_ps(dpz, di)), _mm512_set1_ps(scale)));
            _mm512_storeu_ps(row + c, _mm512_maskz_mov_ps(keep, p));
        }
    }
}

/* ---------------------------------------------------------------- fp32 ---------------------------------------------------------------- */

int fpt_long_attention_f32_ok(void) { return 1; }

/* C[RB x 16 CB] (pitch ldc) (+)= A[RB x K] B[K x 16 CB]: A's element (r, k) at A[r lda + k acs], B's (k, n) at
   B[k ldb + n]. */
#define MICROKERNEL_F32(RB, CB)                                                                               \
    static inline void mkf_##RB##_##CB(const float *A, int64_t lda, int64_t acs, const float *B, int64_t ldb, \
                                       int K, float *C, int64_t ldc, int add) {                              \
        __m512 acc[RB][CB];                                                                                   \
        for (int r = 0; r < RB; r++)                                                                          \
            for (int c = 0; c < CB; c++)                                                                      \
                acc[r][c] = add ? _mm512_loadu_ps(C + r * ldc + c * 16) : _mm512_setzero_ps();                \
        for (int k = 0; k < K; k++) {                                                                         \
            __m512 b[CB];                                                                                     \
            for (int c = 0; c < CB; c++) b[c] = _mm512_loadu_ps(B + (int64_t)k * ldb + c * 16);               \
            for (int r = 0; r < RB; r++) {                                                                    \
                __m512 a = _mm512_set1_ps(A[r * lda + k * acs]);                                              \
                for (int c = 0; c < CB; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);                 \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < RB; r++)                                                                          \
            for (int c = 0; c < CB; c++) _mm512_storeu_ps(C + r * ldc + c * 16, acc[r][c]);                   \
    }
MICROKERNEL_F32(4, 4)
MICROKERNEL_F32(4, 2)
MICROKERNEL_F32(4, 1)

/* C (M x N, pitch ldc) (+)= A (M x K) B (K x N); M % 4 == 0, N % 16 == 0. */
static void gemm_f32(const float *A, int64_t lda, int64_t acs, const float *B, int64_t ldb, int M, int N, int K,
                     float *C, int64_t ldc, int add) {
    for (int m = 0; m < M; m += 4)
        for (int n = 0; n < N;) {
            const float *a = A + m * lda;
            float *c = C + (int64_t)m * ldc + n;
            if (N - n >= 64) { mkf_4_4(a, lda, acs, B + n, ldb, K, c, ldc, add); n += 64; }
            else if (N - n >= 32) { mkf_4_2(a, lda, acs, B + n, ldb, K, c, ldc, add); n += 32; }
            else { mkf_4_1(a, lda, acs, B + n, ldb, K, c, ldc, add); n += 16; }
        }
}

/* Rows 0 .. T - 1 of a head (row t at src + t st) into dst (Tp x D, contiguous), zeros below. */
static void stage_f32(const float *src, int64_t st, int64_t T, int64_t Tp, int D, float *dst) {
    for (int64_t t = 0; t < T; t++) memcpy(dst + t * D, src + t * st, sizeof(float) * D);
    memset(dst + T * D, 0, sizeof(float) * (size_t)((Tp - T) * D));
}

/* A staged (Tp x D) head as each key block's transpose: block kb is (D x BK) at dst + kb BK D. */
static void transpose_blocks_f32(const float *x, int64_t Tp, int D, float *dst) {
    for (int64_t kb = 0; kb < Tp / BK; kb++)
        for (int n = 0; n < BK; n++)
            for (int d = 0; d < D; d++) dst[kb * BK * D + (int64_t)d * BK + n] = x[(kb * BK + n) * D + d];
}

/* Strides are in elements; a (B, H, T, D) operand's element (b, h, t, i) is at x[b sb + h sh + t st + i].
   out: (B, T, H, D) contiguous; stats: (B, H, T, 2) fp32, each query row's max m and 1 / l. */
void fpt_long_attention_fwd_f32(const float *q, int64_t qsb, int64_t qsh, int64_t qst,
                                const float *k, int64_t ksb, int64_t ksh, int64_t kst,
                                const float *v, int64_t vsb, int64_t vsh, int64_t vst,
                                const uint8_t *mask, int64_t msb, int64_t msq, int64_t B, int64_t H, int64_t T, int D,
                                float scale, uint64_t seed, uint32_t thr, float dscale, float *out, float *stats,
                                int threads) {
    int64_t Tp = padded(T), nq = Tp / BQ;
    #pragma omp parallel num_threads(threads)
    {
        float *kt = malloc(sizeof(float) * Tp * D), *vs = malloc(sizeof(float) * Tp * D);
        float *qs = malloc(sizeof(float) * BQ * D), *s = malloc(sizeof(float) * BQ * BK), *o = malloc(sizeof(float) * BQ * D);
        float m[BQ], l[BQ], alpha[BQ];
        int64_t cached = -1;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < B * H * nq; task++) {
            int64_t bh = task / nq, b = bh / H, h = bh % H, i0 = task % nq * BQ;
            if (bh != cached) {  /* the head's keys (transposed) and values, once per thread and head */
                stage_f32(k + b * ksb + h * ksh, kst, T, Tp, D, vs);
                transpose_blocks_f32(vs, Tp, D, kt);
                stage_f32(v + b * vsb + h * vsh, vst, T, Tp, D, vs);
                cached = bh;
            }
            int64_t rows = T - i0 < BQ ? T - i0 : BQ;
            stage_f32(q + b * qsb + h * qsh + i0 * qst, qst, rows, BQ, D, qs);
            for (int r = 0; r < BQ; r++) { m[r] = NEG_MAX; l[r] = 0.0f; }
            memset(o, 0, sizeof(float) * BQ * D);
            const uint8_t *mb = mask ? mask + b * msb : NULL;
            for (int64_t j0 = 0; j0 < Tp; j0 += BK) {
                gemm_f32(qs, D, 1, kt + j0 * D, BK, BQ, BK, D, s, BK, 0);
                forward_tile(s, i0, j0, T, scale, mb, msq, m, l, alpha, seed, (uint64_t)bh * T * T, thr);
                for (int r = 0; r < BQ; r++)
                    if (alpha[r] != 1.0f)
                        for (int d = 0; d < D; d += 16)
                            _mm512_storeu_ps(o + r * D + d, _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d), _mm512_set1_ps(alpha[r])));
                gemm_f32(s, BK, 1, vs + j0 * D, D, BQ, D, BK, o, D, 1);
            }
            for (int r = 0; r < rows; r++) {
                int64_t i = i0 + r;
                float inv = 1.0f / l[r];
                for (int d = 0; d < D; d += 16)
                    _mm512_storeu_ps(out + ((b * T + i) * H + h) * D + d,
                                     _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d), _mm512_set1_ps(dscale * inv)));
                stats[(bh * T + i) * 2] = m[r];
                stats[(bh * T + i) * 2 + 1] = inv;
            }
        }
        free(kt); free(vs); free(qs); free(s); free(o);
    }
}

/* The gradients of fpt_long_attention_fwd_f32's output: out, dout (B, T, H, D) contiguous; stats its
   saved row statistics; dq, dk, dv (B, T, H, D) with batch and token strides gsb, gst. */
void fpt_long_attention_bwd_f32(const float *q, int64_t qsb, int64_t qsh, int64_t qst,
                                const float *k, int64_t ksb, int64_t ksh, int64_t kst,
                                const float *v, int64_t vsb, int64_t vsh, int64_t vst,
                                const uint8_t *mask, int64_t msb, int64_t msq, const float *out, const float *dout,
                                const float *stats, int64_t B, int64_t H, int64_t T, int D, float scale, uint64_t seed,
                                uint32_t thr, float dscale, float *dq, float *dk, float *dv, int64_t gsb, int64_t gst,
                                int threads) {
    int64_t Tp = padded(T);
    #pragma omp parallel num_threads(threads)
    {
        size_t td = sizeof(float) * Tp * D, tile = sizeof(float) * BQ * BK;
        float *qs = malloc(td), *ks = malloc(td), *gs = malloc(td), *kt = malloc(td), *vt = malloc(td), *dqa = malloc(td);
        float *rowdot = malloc(sizeof(float) * Tp), *s = malloc(tile), *dp = malloc(tile);
        float *dka = malloc(sizeof(float) * BK * D), *dva = malloc(sizeof(float) * BK * D);
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            const float *ob = out + (b * T * H + h) * D, *gb = dout + (b * T * H + h) * D;
            stage_f32(v + b * vsb + h * vsh, vst, T, Tp, D, dqa);
            transpose_blocks_f32(dqa, Tp, D, vt);
            stage_f32(k + b * ksb + h * ksh, kst, T, Tp, D, ks);
            transpose_blocks_f32(ks, Tp, D, kt);
            stage_f32(q + b * qsb + h * qsh, qst, T, Tp, D, qs);
            stage_f32(gb, H * D, T, Tp, D, gs);
            for (int64_t i = 0; i < T; i++) {  /* sum_j p_ij dp_ij = dout_i . out_i */
                __m512 acc = _mm512_setzero_ps();
                for (int d = 0; d < D; d += 16)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(gb + i * H * D + d), _mm512_loadu_ps(ob + i * H * D + d), acc);
                rowdot[i] = _mm512_reduce_add_ps(acc);
            }
            memset(dqa, 0, td);
            const uint8_t *mb = mask ? mask + b * msb : NULL;
            const float *st = stats + bh * T * 2;
            for (int64_t j0 = 0; j0 < Tp; j0 += BK) {
                memset(dka, 0, sizeof(float) * BK * D);
                memset(dva, 0, sizeof(float) * BK * D);
                for (int64_t i0 = 0; i0 < Tp; i0 += BQ) {
                    gemm_f32(qs + i0 * D, D, 1, kt + j0 * D, BK, BQ, BK, D, s, BK, 0);   /* q k^T */
                    gemm_f32(gs + i0 * D, D, 1, vt + j0 * D, BK, BQ, BK, D, dp, BK, 0);  /* dout v^T */
                    backward_tile(s, dp, i0, j0, T, scale, mb, msq, st, rowdot, seed, (uint64_t)bh * T * T, thr, dscale);
                    gemm_f32(s, 1, BK, gs + i0 * D, D, BK, D, BQ, dva, D, 1);    /* dv += kept p^T dout */
                    gemm_f32(dp, 1, BK, qs + i0 * D, D, BK, D, BQ, dka, D, 1);   /* dk += ds^T q */
                    gemm_f32(dp, BK, 1, ks + j0 * D, D, BQ, D, BK, dqa + i0 * D, D, 1);  /* dq += ds k */
                }
                for (int64_t n = 0; n < BK && j0 + n < T; n++)
                    for (int d = 0; d < D; d += 16) {
                        float *dst = dk + b * gsb + (j0 + n) * gst + h * D + d;
                        _mm512_storeu_ps(dst, _mm512_loadu_ps(dka + n * D + d));
                        _mm512_storeu_ps(dv + (dst - dk), _mm512_mul_ps(_mm512_loadu_ps(dva + n * D + d), _mm512_set1_ps(dscale)));
                    }
            }
            for (int64_t i = 0; i < T; i++)
                memcpy(dq + b * gsb + i * gst + h * D, dqa + i * D, sizeof(float) * D);
        }
        free(qs); free(ks); free(gs); free(kt); free(vt); free(dqa); free(rowdot); free(s); free(dp); free(dka); free(dva);
    }
}

/* ---------------------------------------------------------------- bf16 ---------------------------------------------------------------- */
#if defined(__AVX512BF16__)

int fpt_long_attention_bf16_ok(void) { return 1; }

typedef uint16_t bf16;

/* short_attention.c's: C[RB x 16 CB] (+)= A[RB x K] . B (K = 2 KP); A's pair (r, kp) at A + r lda + kp aps;
   B packed as pairs along k (row pitch N pairs), already offset to this block's first column. */
#define MICROKERNEL_BF16(RB, CB)                                                                              \
    static inline void mkb_##RB##_##CB(const bf16 *A, int64_t lda, int64_t aps, const bf16 *Bp, int N, int KP, \
                                       float *C, int64_t ldc, int add) {                                     \
        __m512 acc[RB][CB];                                                                                   \
        for (int r = 0; r < RB; r++)                                                                          \
            for (int c = 0; c < CB; c++)                                                                      \
                acc[r][c] = add ? _mm512_loadu_ps(C + r * ldc + c * 16) : _mm512_setzero_ps();                \
        for (int kp = 0; kp < KP; kp++) {                                                                     \
            __m512bh b[CB];                                                                                   \
            for (int c = 0; c < CB; c++) b[c] = (__m512bh)_mm512_loadu_si512(Bp + ((int64_t)kp * N + c * 16) * 2); \
            for (int r = 0; r < RB; r++) {                                                                    \
                int32_t pair;                                                                                 \
                memcpy(&pair, A + r * lda + kp * aps, 4);                                                     \
                __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                                               \
                for (int c = 0; c < CB; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);               \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < RB; r++)                                                                          \
            for (int c = 0; c < CB; c++) _mm512_storeu_ps(C + r * ldc + c * 16, acc[r][c]);                   \
    }
MICROKERNEL_BF16(4, 4)
MICROKERNEL_BF16(4, 2)
MICROKERNEL_BF16(4, 1)

static void gemm_bf16(const bf16 *A, int64_t lda, int64_t aps, const bf16 *Bp, int M, int N, int K, float *C,
                      int64_t ldc, int add) {
    for (int m = 0; m < M; m += 4)
        for (int n = 0; n < N;) {
            const bf16 *a = A + m * lda, *bp = Bp + (int64_t)n * 2;
            float *c = C + (int64_t)m * ldc + n;
            if (N - n >= 64) { mkb_4_4(a, lda, aps, bp, N, K / 2, c, ldc, add); n += 64; }
            else if (N - n >= 32) { mkb_4_2(a, lda, aps, bp, N, K / 2, c, ldc, add); n += 32; }
            else { mkb_4_1(a, lda, aps, bp, N, K / 2, c, ldc, add); n += 16; }
        }
}

static const short INTERLEAVE[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                     8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

/* Rows r and r + 1 (16 columns each) as pairs: out[2 n + (0 | 1)]. */
static inline void store_pairs(bf16 *out, __m256i r0, __m256i r1) {
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(r0), r1, 1);
    _mm512_storeu_si512(out, _mm512_permutexvar_epi16(_mm512_loadu_si512(INTERLEAVE), both));
}

/* X (K x N, row pitch N, contiguous) as the B operand of vdpbf16ps: pairs along k, out[(k / 2) N 2 + 2 n + k % 2];
   K even, N % 16 == 0. */
static void pack_rows(const bf16 *x, int K, int N, bf16 *out) {
    for (int kp = 0; kp < K / 2; kp++)
        for (int n = 0; n < N; n += 16)
            store_pairs(out + ((int64_t)kp * N + n) * 2, _mm256_loadu_si256((const __m256i *)(x + (int64_t)2 * kp * N + n)),
                        _mm256_loadu_si256((const __m256i *)(x + (int64_t)(2 * kp + 1) * N + n)));
}

/* A staged head (Tp x D) as each key block's transpose, packed: block kb is the B operand (D x BK) at
   dst + kb BK D. Each pair (two adjacent elements of a row) is one 32-bit word of the source. */
static void pack_transposed_blocks(const bf16 *x, int64_t Tp, int D, bf16 *dst) {
    for (int64_t kb = 0; kb < Tp / BK; kb++)
        for (int n = 0; n < BK; n++) {
            const bf16 *row = x + (kb * BK + n) * D;
            bf16 *o = dst + kb * BK * D;
            for (int kp = 0; kp < D / 2; kp++) memcpy(o + ((int64_t)kp * BK + n) * 2, row + 2 * kp, 4);
        }
}

/* A fp32 tile (BQ x BK) as bf16 pairs along its rows, read as A = tile^T with lda = 2, aps = 2 BK. */
static void tile_pairs_transposed(const float *x, bf16 *out) {
    for (int kp = 0; kp < BQ / 2; kp++)
        for (int n = 0; n < BK; n += 16)
            store_pairs(out + ((int64_t)kp * BK + n) * 2, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + 2 * kp * BK + n)),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + (2 * kp + 1) * BK + n)));
}

static void tile_bf16(const float *x, int n, bf16 *out) {
    for (int i = 0; i < n; i += 16) _mm256_storeu_si256((__m256i *)(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
}

static void stage_bf16(const bf16 *src, int64_t st, int64_t T, int64_t Tp, int D, bf16 *dst) {
    for (int64_t t = 0; t < T; t++) memcpy(dst + t * D, src + t * st, sizeof(bf16) * D);
    memset(dst + T * D, 0, sizeof(bf16) * (size_t)((Tp - T) * D));
}

static inline __m512 load_bf16(const bf16 *src) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
}

static inline void store_bf16(bf16 *dst, __m512 v) { _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(v)); }

/* As fpt_long_attention_fwd_f32, for bf16 operands and output. */
void fpt_long_attention_fwd_bf16(const bf16 *q, int64_t qsb, int64_t qsh, int64_t qst,
                                 const bf16 *k, int64_t ksb, int64_t ksh, int64_t kst,
                                 const bf16 *v, int64_t vsb, int64_t vsh, int64_t vst,
                                 const uint8_t *mask, int64_t msb, int64_t msq, int64_t B, int64_t H, int64_t T, int D,
                                 float scale, uint64_t seed, uint32_t thr, float dscale, bf16 *out, float *stats,
                                 int threads) {
    int64_t Tp = padded(T), nq = Tp / BQ;
    #pragma omp parallel num_threads(threads)
    {
        bf16 *stage = malloc(sizeof(bf16) * Tp * D), *kt = malloc(sizeof(bf16) * Tp * D), *vp = malloc(sizeof(bf16) * Tp * D);
        bf16 *qs = malloc(sizeof(bf16) * BQ * D), *pb = malloc(sizeof(bf16) * BQ * BK);
        float *s = malloc(sizeof(float) * BQ * BK), *o = malloc(sizeof(float) * BQ * D);
        float m[BQ], l[BQ], alpha[BQ];
        int64_t cached = -1;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < B * H * nq; task++) {
            int64_t bh = task / nq, b = bh / H, h = bh % H, i0 = task % nq * BQ;
            if (bh != cached) {  /* the head's keys (transposed) and values, packed once per thread and head */
                stage_bf16(k + b * ksb + h * ksh, kst, T, Tp, D, stage);
                pack_transposed_blocks(stage, Tp, D, kt);
                stage_bf16(v + b * vsb + h * vsh, vst, T, Tp, D, stage);
                for (int64_t j0 = 0; j0 < Tp; j0 += BK) pack_rows(stage + j0 * D, BK, D, vp + j0 * D);
                cached = bh;
            }
            int64_t rows = T - i0 < BQ ? T - i0 : BQ;
            stage_bf16(q + b * qsb + h * qsh + i0 * qst, qst, rows, BQ, D, qs);
            for (int r = 0; r < BQ; r++) { m[r] = NEG_MAX; l[r] = 0.0f; }
            memset(o, 0, sizeof(float) * BQ * D);
            const uint8_t *mb = mask ? mask + b * msb : NULL;
            for (int64_t j0 = 0; j0 < Tp; j0 += BK) {
                gemm_bf16(qs, D, 2, kt + j0 * D, BQ, BK, D, s, BK, 0);
                forward_tile(s, i0, j0, T, scale, mb, msq, m, l, alpha, seed, (uint64_t)bh * T * T, thr);
                for (int r = 0; r < BQ; r++)
                    if (alpha[r] != 1.0f)
                        for (int d = 0; d < D; d += 16)
                            _mm512_storeu_ps(o + r * D + d, _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d), _mm512_set1_ps(alpha[r])));
                tile_bf16(s, BQ * BK, pb);
                gemm_bf16(pb, BK, 2, vp + j0 * D, BQ, D, BK, o, D, 1);
            }
            for (int r = 0; r < rows; r++) {
                int64_t i = i0 + r;
                float inv = 1.0f / l[r];
                for (int d = 0; d < D; d += 16)
                    store_bf16(out + ((b * T + i) * H + h) * D + d,
                               _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d), _mm512_set1_ps(dscale * inv)));
                stats[(bh * T + i) * 2] = m[r];
                stats[(bh * T + i) * 2 + 1] = inv;
            }
        }
        free(stage); free(kt); free(vp); free(qs); free(pb); free(s); free(o);
    }
}

/* As fpt_long_attention_bwd_f32, for bf16 operands, output and gradients. */
void fpt_long_attention_bwd_bf16(const bf16 *q, int64_t qsb, int64_t qsh, int64_t qst,
                                 const bf16 *k, int64_t ksb, int64_t ksh, int64_t kst,
                                 const bf16 *v, int64_t vsb, int64_t vsh, int64_t vst,
                                 const uint8_t *mask, int64_t msb, int64_t msq, const bf16 *out, const bf16 *dout,
                                 const float *stats, int64_t B, int64_t H, int64_t T, int D, float scale, uint64_t seed,
                                 uint32_t thr, float dscale, bf16 *dq, bf16 *dk, bf16 *dv, int64_t gsb, int64_t gst,
                                 int threads) {
    int64_t Tp = padded(T);
    #pragma omp parallel num_threads(threads)
    {
        size_t td = sizeof(bf16) * Tp * D, tile = sizeof(float) * BQ * BK, tile16 = sizeof(bf16) * BQ * BK;
        bf16 *stage = malloc(td), *qs = malloc(td), *gs = malloc(td);  /* q and dout staged: A operands */
        bf16 *kt = malloc(td), *vt = malloc(td), *kp = malloc(td), *qp = malloc(td), *gp = malloc(td);  /* packed */
        bf16 *dsb = malloc(tile16), *dst_ = malloc(tile16), *pdt = malloc(tile16);
        float *dqa = malloc(sizeof(float) * Tp * D), *rowdot = malloc(sizeof(float) * Tp);
        float *s = malloc(tile), *dp = malloc(tile), *dka = malloc(sizeof(float) * BK * D), *dva = malloc(sizeof(float) * BK * D);
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            const bf16 *ob = out + (b * T * H + h) * D, *gb = dout + (b * T * H + h) * D;
            stage_bf16(k + b * ksb + h * ksh, kst, T, Tp, D, stage);
            pack_transposed_blocks(stage, Tp, D, kt);                       /* B = k^T, for q k^T */
            for (int64_t j0 = 0; j0 < Tp; j0 += BK) pack_rows(stage + j0 * D, BK, D, kp + j0 * D);  /* B = k */
            stage_bf16(v + b * vsb + h * vsh, vst, T, Tp, D, stage);
            pack_transposed_blocks(stage, Tp, D, vt);                       /* B = v^T, for dout v^T */
            stage_bf16(q + b * qsb + h * qsh, qst, T, Tp, D, qs);
            stage_bf16(gb, H * D, T, Tp, D, gs);
            for (int64_t i0 = 0; i0 < Tp; i0 += BQ) {
                pack_rows(qs + i0 * D, BQ, D, qp + i0 * D);                 /* B = q */
                pack_rows(gs + i0 * D, BQ, D, gp + i0 * D);                 /* B = dout */
            }
            for (int64_t i = 0; i < T; i++) {  /* sum_j p_ij dp_ij = dout_i . out_i */
                __m512 acc = _mm512_setzero_ps();
                for (int d = 0; d < D; d += 16)
                    acc = _mm512_fmadd_ps(load_bf16(gb + i * H * D + d), load_bf16(ob + i * H * D + d), acc);
                rowdot[i] = _mm512_reduce_add_ps(acc);
            }
            memset(dqa, 0, sizeof(float) * Tp * D);
            const uint8_t *mb = mask ? mask + b * msb : NULL;
            const float *st = stats + bh * T * 2;
            for (int64_t j0 = 0; j0 < Tp; j0 += BK) {
                memset(dka, 0, sizeof(float) * BK * D);
                memset(dva, 0, sizeof(float) * BK * D);
                for (int64_t i0 = 0; i0 < Tp; i0 += BQ) {
                    gemm_bf16(qs + i0 * D, D, 2, kt + j0 * D, BQ, BK, D, s, BK, 0);   /* q k^T */
                    gemm_bf16(gs + i0 * D, D, 2, vt + j0 * D, BQ, BK, D, dp, BK, 0);  /* dout v^T */
                    backward_tile(s, dp, i0, j0, T, scale, mb, msq, st, rowdot, seed, (uint64_t)bh * T * T, thr, dscale);
                    tile_pairs_transposed(s, pdt);
                    tile_pairs_transposed(dp, dst_);
                    tile_bf16(dp, BQ * BK, dsb);
                    gemm_bf16(pdt, 2, 2 * BK, gp + i0 * D, BK, D, BQ, dva, D, 1);    /* dv += kept p^T dout */
                    gemm_bf16(dst_, 2, 2 * BK, qp + i0 * D, BK, D, BQ, dka, D, 1);   /* dk += ds^T q */
                    gemm_bf16(dsb, BK, 2, kp + j0 * D, BQ, D, BK, dqa + i0 * D, D, 1);  /* dq += ds k */
                }
                for (int64_t n = 0; n < BK && j0 + n < T; n++)
                    for (int d = 0; d < D; d += 16) {
                        int64_t at = b * gsb + (j0 + n) * gst + h * D + d;
                        store_bf16(dk + at, _mm512_loadu_ps(dka + n * D + d));
                        store_bf16(dv + at, _mm512_mul_ps(_mm512_loadu_ps(dva + n * D + d), _mm512_set1_ps(dscale)));
                    }
            }
            for (int64_t i = 0; i < T; i++)
                for (int d = 0; d < D; d += 16)
                    store_bf16(dq + b * gsb + i * gst + h * D + d, _mm512_loadu_ps(dqa + i * D + d));
        }
        free(stage); free(qs); free(gs); free(kt); free(vt); free(kp); free(qp); free(gp); free(dsb); free(dst_);
        free(pdt); free(dqa); free(rowdot); free(s); free(dp); free(dka); free(dva);
    }
}

#else
int fpt_long_attention_bf16_ok(void) { return 0; }
#endif /* AVX512-BF16 */

#else
int fpt_long_attention_f32_ok(void) { return 0; }
int fpt_long_attention_bf16_ok(void) { return 0; }
#endif /* AVX-512 */
