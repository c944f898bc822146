/* Attention for short sequences in one pass per head, bf16, for the CPU (built by fpt/native.py, called
   by fpt/fastops/short_attention_kernel.py).

   At MNIST's 64 tokens a head's queries, keys, values and its 64 x 64 scores fit in L1, yet torch runs
   attention as batched matmuls of 64 x 64 x 32 (half the matmul peak), a softmax, a dropout and two
   transposes, each a pass over memory. Here each (batch, head) is one task: scores, softmax, hash
   dropout (the same mask as fpt/csrc/hash_dropout.c on the (B, H, T, T) probabilities) and the product
   with the values, with the bf16 dot-product instruction (AVX512-BF16) and fp32 accumulation; the
   backward likewise. It reads q, k, v where the linear layers wrote them, (B, T, H, d) with any row
   strides, and writes its output and the gradients in that layout, so no transposes are copied.

   Roundings: products accumulate in fp32 and are rounded to bf16 once (the eager path rounds each
   matmul's output, then scales), the softmax is fp32 rounded to bf16 (as torch's bf16 softmax),
   the probabilities are saved in bf16 for the backward (as the eager path saves them).

   T and d must be multiples of 16 (fastops.short_attention_fits); without AVX512-BF16 the file builds
   but fpt_short_attention_ok() returns 0 and fastops keeps the torch path. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hash_bits.h"

int fpt_short_attention_abi(void) { return 2; }

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

#include "vec_exp.h"

int fpt_short_attention_ok(void) { return 1; }

typedef uint16_t bf16;

/* B (K x N), element (k, n) at src[k * rs + n * cs], as pairs along k: out[(k / 2) N 2 + 2 n + k % 2], the
   operand layout of vdpbf16ps. K even; N % 16 == 0 where cs == 1. */
static void pack_pairs(const bf16 *src, int64_t rs, int64_t cs, int K, int N, bf16 *out) {
    if (rs == 1) {  /* each pair is one 32-bit word of the source: a transpose of words */
        for (int n = 0; n < N; n++) {
            const bf16 *col = src + n * cs;
            for (int kp = 0; kp < K / 2; kp++) memcpy(out + ((int64_t)kp * N + n) * 2, col + 2 * kp, 4);
        }
        return;
    }
    if (cs == 1) {  /* rows 2 kp and 2 kp + 1 interleaved, 16 columns at a time */
        const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                    23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for (int kp = 0; kp < K / 2; kp++) {
            const bf16 *r0 = src + (int64_t)(2 * kp) * rs, *r1 = r0 + rs;
            bf16 *o = out + (int64_t)kp * N * 2;
            for (int n = 0; n < N; n += 16) {
                __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(r0 + n))),
                                                  _mm256_loadu_si256((const __m256i *)(r1 + n)), 1);
                _mm512_storeu_si512(o + 2 * n, _mm512_permutexvar_epi16(interleave, both));
            }
        }
        return;
    }
    for (int kp = 0; kp < K / 2; kp++) {
        const bf16 *r0 = src + (int64_t)(2 * kp) * rs, *r1 = r0 + rs;
        bf16 *o = out + (int64_t)kp * N * 2;
        for (int n = 0; n < N; n++) {
            o[2 * n] = r0[n * cs];
            o[2 * n + 1] = r1[n * cs];
        }
    }
}

/* C[RB x 16 CB] (fp32, row pitch ldc) = A[RB x K] . B (K = 2 KP). A's pair (r, kp), two bf16 along k, is at
   A + r lda + kp aps: aps = 2 for row-major A, and A = pack_pairs(X) read with lda = 2, aps = 2 N gives X^T.
   B is packed by pack_pairs (row pitch N pairs) and already offset to this block's first column. */
#define MICROKERNEL(RB, CB)                                                                              \
    static inline void mk_##RB##_##CB(const bf16 *A, int64_t lda, int64_t aps, const bf16 *Bp, int N, int KP, float *C, \
                                      int64_t ldc) {                                                     \
        __m512 acc[RB][CB];                                                                              \
        for (int r = 0; r < RB; r++)                                                                     \
            for (int c = 0; c < CB; c++) acc[r][c] = _mm512_setzero_ps();                               \
        for (int kp = 0; kp < KP; kp++) {                                                                \
            __m512bh b[CB];                                                                              \
            for (int c = 0; c < CB; c++)                                                                 \
                b[c] = (__m512bh)_mm512_loadu_si512(Bp + ((int64_t)kp * N + c * 16) * 2);                \
            for (int r = 0; r < RB; r++) {                                                               \
                int32_t pair;                                                                            \
                memcpy(&pair, A + r * lda + kp * aps, 4);                                                            \
                __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                                          \
                for (int c = 0; c < CB; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);          \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < RB; r++)                                                                     \
            for (int c = 0; c < CB; c++) _mm512_storeu_ps(C + r * ldc + c * 16, acc[r][c]);             \
    }
MICROKERNEL(4, 4)
MICROKERNEL(4, 2)
MICROKERNEL(4, 1)

/* C (M x N fp32, pitch ldc) = A (M x K) . B (packed, N columns); A addressed as in the microkernels;
   M % 4 == 0, N % 16 == 0. */
static void gemm(const bf16 *A, int64_t lda, int64_t aps, const bf16 *Bp, int M, int N, int K, float *C, int64_t ldc) {
    for (int m = 0; m < M; m += 4)
        for (int n = 0; n < N;) {
            const bf16 *a = A + m * lda, *bp = Bp + (int64_t)n * 2;
            float *c = C + (int64_t)m * ldc + n;
            if (N - n >= 64) { mk_4_4(a, lda, aps, bp, N, K / 2, c, ldc); n += 64; }
            else if (N - n >= 32) { mk_4_2(a, lda, aps, bp, N, K / 2, c, ldc); n += 32; }
            else { mk_4_1(a, lda, aps, bp, N, K / 2, c, ldc); n += 16; }
        }
}

/* 16 fp32 -> 16 bf16, round to nearest even (NaN-safe as the instruction is). */
static inline void store_bf16(bf16 *dst, __m512 v) {
    _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 load_bf16(const bf16 *src) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src)), 16));
}

/* Strides are in elements; a (B, H, T, d) operand's element (b, h, t, i) is at x[b sb + h sh + t st + i].
   mask: NULL, or (B, T, T) bytes, nonzero where a query may look at a key (the heads share it).
   probs: (B, H, T, T) contiguous, the softmax before dropout (saved for the backward).
   out: (B, T, H, d) contiguous: the dropped probabilities times v, times dscale. */
void fpt_short_attention_fwd(const bf16 *q, int64_t qsb, int64_t qsh, int64_t qst,
                             const bf16 *k, int64_t ksb, int64_t ksh, int64_t kst,
                             const bf16 *v, int64_t vsb, int64_t vsh, int64_t vst,
                             const uint8_t *mask, int64_t B, int64_t H, int T, int D, float scale,
                             uint64_t seed, uint32_t thr, float dscale, bf16 *probs, bf16 *out, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        bf16 *kp = malloc(sizeof(bf16) * (size_t)T * D), *vp = malloc(sizeof(bf16) * (size_t)T * D);
        bf16 *pd = malloc(sizeof(bf16) * (size_t)T * T);
        float *s = malloc(sizeof(float) * (size_t)T * (T > D ? T : D));
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            const bf16 *qb = q + b * qsb + h * qsh, *kb = k + b * ksb + h * ksh, *vb = v + b * vsb + h * vsh;
            pack_pairs(kb, 1, kst, D, T, kp);  /* B = k^T: (d x T) */
            pack_pairs(vb, vst, 1, T, D, vp);  /* B = v: (T x d) */
            gemm(qb, qst, 2, kp, T, T, D, s, T);  /* scores (T x T), fp32 */
            bf16 *pb = probs + bh * (int64_t)T * T;
            uint64_t base = (uint64_t)bh * T * T;
            for (int i = 0; i < T; i++) {
                float *row = s + (int64_t)i * T;
                const uint8_t *mrow = mask ? mask + (b * T + i) * (int64_t)T : NULL;
                __m512 mx = _mm512_set1_ps(-3.4028234663852886e38f);
                for (int j = 0; j < T; j += 16) {
                    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(row + j), _mm512_set1_ps(scale));
                    if (mrow) {
                        __mmask16 ok = _mm512_test_epi32_mask(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mrow + j))),
                                                              _mm512_set1_epi32(0xff));
                        x = _mm512_mask_mov_ps(_mm512_set1_ps(-3.4028234663852886e38f), ok, x);
                    }
                    _mm512_storeu_ps(row + j, x);
                    mx = _mm512_max_ps(mx, x);
                }
                float m = _mm512_reduce_max_ps(mx);
                __m512 sum = _mm512_setzero_ps();
                for (int j = 0; j < T; j += 16) {
                    __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), _mm512_set1_ps(m)));
                    _mm512_storeu_ps(row + j, e);
                    sum = _mm512_add_ps(sum, e);
                }
                __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
                for (int j = 0; j < T; j += 16)
                    store_bf16(pb + (int64_t)i * T + j, _mm512_mul_ps(_mm512_loadu_ps(row + j), inv));
                if (thr == 0) continue;  /* no dropout: the product takes the probabilities themselves */
                bf16 *prow = pb + (int64_t)i * T, *drow = pd + (int64_t)i * T;
                uint64_t rbase = base + (uint64_t)i * T;
                for (int j = 0; j < T; j++)
                    drow[j] = bits(seed, rbase + j) >= thr ? prow[j] : 0;
            }
            gemm(thr == 0 ? pb : pd, T, 2, vp, T, D, T, s, D);  /* (T x d), fp32 */
            for (int i = 0; i < T; i++)
                for (int j = 0; j < D; j += 16)
                    store_bf16(out + ((b * T + i) * H + h) * (int64_t)D + j,
                               _mm512_mul_ps(_mm512_loadu_ps(s + (int64_t)i * D + j), _mm512_set1_ps(dscale)));
        }
        free(kp); free(vp); free(pd); free(s);
    }
}

/* The gradients of fpt_short_attention_fwd's output: dout (B, T, H, d) contiguous; probs its saved
   softmax; dq, dk, dv (B, T, H, d) with batch and token strides gsb, gst (a token's heads d apart):
   three tensors (gsb = T H d, gst = H d), or the thirds of one (B, T, 3, H, d) gradient of a fused
   query/key/value projection (gsb = 3 T H d, gst = 3 H d). */
void fpt_short_attention_bwd(const bf16 *q, int64_t qsb, int64_t qsh, int64_t qst,
                             const bf16 *k, int64_t ksb, int64_t ksh, int64_t kst,
                             const bf16 *v, int64_t vsb, int64_t vsh, int64_t vst,
                             const bf16 *probs, const bf16 *dout, int64_t B, int64_t H, int T, int D, float scale,
                             uint64_t seed, uint32_t thr, float dscale, bf16 *dq, bf16 *dk, bf16 *dv,
                             int64_t gsb, int64_t gst, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        size_t td = (size_t)T * D, tt = (size_t)T * T;
        bf16 *packed = malloc(sizeof(bf16) * td), *ds = malloc(sizeof(bf16) * tt), *pd = malloc(sizeof(bf16) * tt);
        bf16 *t_ds = malloc(sizeof(bf16) * tt), *t_pd = malloc(sizeof(bf16) * tt);
        float *s = malloc(sizeof(float) * (size_t)T * (T > D ? T : D));
        int64_t dsb = (int64_t)T * H * D, dst = (int64_t)H * D;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            const bf16 *qb = q + b * qsb + h * qsh, *kb = k + b * ksb + h * ksh, *vb = v + b * vsb + h * vsh;
            const bf16 *gb = dout + b * dsb + h * D;
            const bf16 *pb = probs + bh * (int64_t)T * T;
            uint64_t base = (uint64_t)bh * T * T;
            pack_pairs(vb, 1, vst, D, T, packed);  /* B = v^T: (d x T) */
            gemm(gb, dst, 2, packed, T, T, D, s, T);  /* d(dropped probs) = dout . v^T, before dscale */
            for (int i = 0; i < T; i++) {
                float *row = s + (int64_t)i * T;
                const bf16 *prow = pb + (int64_t)i * T;
                bf16 *drow = pd + (int64_t)i * T;
                uint64_t rbase = base + (uint64_t)i * T;
                for (int j = 0; j < T; j++) {  /* the mask once more, from the seed */
                    int keep = bits(seed, rbase + j) >= thr;
                    row[j] = keep ? row[j] * dscale : 0.0f;
                    drow[j] = keep ? prow[j] : 0;
                }
                __m512 dot = _mm512_setzero_ps();
                for (int j = 0; j < T; j += 16)
                    dot = _mm512_fmadd_ps(_mm512_loadu_ps(row + j), load_bf16(prow + j), dot);
                __m512 rowdot = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
                for (int j = 0; j < T; j += 16) {  /* softmax's backward, and the scores' scale */
                    __m512 p = load_bf16(prow + j);
                    __m512 g = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(row + j), rowdot)),
                                             _mm512_set1_ps(scale));
                    store_bf16(ds + (int64_t)i * T + j, g);
                }
            }
            pack_pairs(kb, kst, 1, T, D, packed);  /* B = k: (T x d) */
            gemm(ds, T, 2, packed, T, D, T, s, D);  /* dq = ds . k */
            for (int i = 0; i < T; i++)
                for (int j = 0; j < D; j += 16)
                    store_bf16(dq + b * gsb + i * gst + h * D + j, _mm512_loadu_ps(s + (int64_t)i * D + j));
            pack_pairs(ds, T, 1, T, T, t_ds);             /* A = ds^T, read from ds's pairs */
            pack_pairs(qb, qst, 1, T, D, packed);         /* B = q */
            gemm(t_ds, 2, 2 * T, packed, T, D, T, s, D);  /* dk = ds^T . q */
            for (int i = 0; i < T; i++)
                for (int j = 0; j < D; j += 16)
                    store_bf16(dk + b * gsb + i * gst + h * D + j, _mm512_loadu_ps(s + (int64_t)i * D + j));
            pack_pairs(pd, T, 1, T, T, t_pd);             /* A = (dropped probs)^T */
            pack_pairs(gb, dst, 1, T, D, packed);         /* B = dout */
            gemm(t_pd, 2, 2 * T, packed, T, D, T, s, D);  /* dv = dropped probs^T . dout, times dscale */
            for (int i = 0; i < T; i++)
                for (int j = 0; j < D; j += 16)
                    store_bf16(dv + b * gsb + i * gst + h * D + j,
                               _mm512_mul_ps(_mm512_loadu_ps(s + (int64_t)i * D + j), _mm512_set1_ps(dscale)));
        }
        free(packed); free(ds); free(pd); free(t_ds); free(t_pd); free(s);
    }
}

#else
int fpt_short_attention_ok(void) { return 0; }
#endif
