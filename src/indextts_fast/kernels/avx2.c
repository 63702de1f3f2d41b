/* AVX2 + FMA kernels: the GPT decode step's products on CPUs without AVX-512 (and on those with it: they
   are compiled into both libraries).

   itf_gemv_w8_f32: y = scale ⊙ (x·Wᵀ) + b with int8 weights W (N, K) row-major, per-output scales, fp32
   activations and fp32 arithmetic: each weight byte is widened to fp32 (vpmovsxbd + vcvtdq2ps) and
   multiplied in fp32, so there is no int16 saturation (the vpmaddubsw trap of non-VNNI int8) and no
   activation quantisation: the only error is the weights' int8 rounding.
   itf_gemm_f32_rows: y = x·Wᵀ + b, fp32 W (N, K) row-major: a GPT projection for 1-8 rows (beams) that
   reads every weight once for all rows, on every core.

   Both: blocks of 4 outputs x up to 3 rows (12 accumulators), so that each x vector loaded serves 4 outputs
   and each weight vector loaded serves every row; more rows re-read the block's weights from cache. The
   output blocks are split across OpenMP threads. Sums run in 8 lanes and are reduced at the end (another
   order than a BLAS, the same float rounding per operation). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels.h"

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[r][c] = Σ_k x[r][k]·w[c][k] for R rows and C outputs; K16 = K rounded down to 16 (the tail in scalar).
   One accumulator per (r, c) whatever R and C, so that a row's result is the same alone or among others (batch
   invariance of the decode step; a second chain per output for 1 row was not measurably faster: the read
   of the weights bounds it). PF: how far ahead (bytes) each weight row is prefetched (0: not). */
#define BLOCK_BODY(LOADW, PF)  /* fp32 weights */                                                                              \
    __m256 acc[3][4];                                                                                      \
    for (int r = 0; r < R; r++)                                                                            \
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();                                       \
    int K16 = K & ~15;                                                                                     \
    for (int k = 0; k < K16; k += 16) {                                                                    \
        if (PF)                                                                                            \
            for (int c = 0; c < C; c++) _mm_prefetch((const char *)(w + (size_t)c * K + k) + PF, _MM_HINT_T0); \
        for (int h = 0; h < 2; h++) {                                                                      \
            __m256 wv[4];                                                                                  \
            for (int c = 0; c < C; c++) wv[c] = LOADW(w + (size_t)c * K + k + 8 * h);                      \
            for (int r = 0; r < R; r++) {                                                                  \
                __m256 xv = _mm256_loadu_ps(x + (size_t)r * K + k + 8 * h);                                 \
                for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);             \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    for (int r = 0; r < R; r++)                                                                            \
        for (int c = 0; c < C; c++) {                                                                      \
            float s = hsum8(acc[r][c]);                                                                    \
            for (int k = K16; k < K; k++) s += x[(size_t)r * K + k] * (float)w[(size_t)c * K + k];         \
            out[r * 4 + c] = s;                                                                            \
        }

static inline __attribute__((always_inline)) void block_f32(const float *x, const float *w, int K, int R, int C,
                                                            float *out) {
    BLOCK_BODY(_mm256_loadu_ps, 1024)
}

/* One call per (rows, outputs) shape with constants, so that the compiler unrolls and keeps acc in registers. */
#define DISPATCH(FN, XT, WT)                                                                               \
    static void FN##_any(const XT *x, const WT *w, int K, int R, int C, float *out) {                   \
        switch (R * 8 + C) {                                                                               \
            case 8 + 4: FN(x, w, K, 1, 4, out); break;                                                     \
            case 16 + 4: FN(x, w, K, 2, 4, out); break;                                                    \
            case 24 + 4: FN(x, w, K, 3, 4, out); break;                                                    \
            case 8 + 1: FN(x, w, K, 1, 1, out); break;                                                     \
            case 16 + 1: FN(x, w, K, 2, 1, out); break;                                                    \
            default: FN(x, w, K, 3, 1, out); break;                                                        \
        }                                                                                                  \
    }
DISPATCH(block_f32, float, float)

/* acc[c][r] = Σ_k xq[r][k]·w[c][k] exactly (int16 x int8 products, pairs summed by vpmaddwd into int32 lanes),
   moved to fp32 every FLUSH k so that no int32 lane can overflow (FLUSH/8 products of |x| <= 32767, |w| <= 127
   per lane). w: one block of 4 outputs packed as (K/16, 4, 16): a single sequential stream. */
#define FLUSH 2048
static inline __attribute__((always_inline)) void block_w8(const int16_t *x, const int8_t *w, int K, int R, int C,
                                                           float *out) {
    (void)C;
    __m256 total[3][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) total[r][c] = _mm256_setzero_ps();
    for (int k0 = 0; k0 < K; k0 += FLUSH) {
        int k1 = k0 + FLUSH < K ? k0 + FLUSH : K;
        __m256i acc[3][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_si256();
        for (int k = k0; k < k1; k += 16) {
            const int8_t *wk = w + (size_t)k * 4;
            _mm_prefetch((const char *)wk + 4096, _MM_HINT_T0);
            __m256i wv[4];
            for (int c = 0; c < 4; c++) wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wk + 16 * c)));
            for (int r = 0; r < R; r++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + (size_t)r * K + k));
                for (int c = 0; c < 4; c++) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(xv, wv[c]));
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) total[r][c] = _mm256_add_ps(total[r][c], _mm256_cvtepi32_ps(acc[r][c]));
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) out[r * 4 + c] = hsum8(total[r][c]);
}
static void block_w8_any(const int16_t *x, const int8_t *w, int K, int R, int C, float *out) {
    switch (R) {
        case 1: block_w8(x, w, K, 1, C, out); break;
        case 2: block_w8(x, w, K, 2, C, out); break;
        default: block_w8(x, w, K, 3, C, out); break;
    }
}


/* Each fp32 row of x (M, K) as int16 with its own scale (max |x| -> 32767, round to nearest): relative error
   <= 2^-16 of the row's largest value, far below the int8 weights' rounding. Returns the scales in xs. */
static void quantize_rows_i16(const float *x, int M, int K, int16_t *xq, float *xs) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * K;
        int16_t *out = xq + (size_t)m * K;
        int K16 = K & ~15;
        __m256 vmx = _mm256_setzero_ps();
        for (int k = 0; k < K16; k += 8) vmx = _mm256_max_ps(vmx, _mm256_andnot_ps(sign, _mm256_loadu_ps(row + k)));
        float lanes[8], mx = 0.f;
        _mm256_storeu_ps(lanes, vmx);
        for (int j = 0; j < 8; j++) mx = fmaxf(mx, lanes[j]);
        for (int k = K16; k < K; k++) mx = fmaxf(mx, fabsf(row[k]));
        float scale = mx > 0.f ? mx / 32767.f : 1.f, inv = 1.f / scale;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (int k = 0; k < K16; k += 16) {   /* round to nearest even (the default rounding mode), pack */
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k), vinv));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 8), vinv));
            _mm256_storeu_si256((__m256i *)(out + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
        }
        for (int k = K16; k < K; k++) out[k] = (int16_t)lrintf(row[k] * inv);
        xs[m] = scale;
    }
}

/* The (rows x outputs) walk shared by both products: blocks of 4 outputs split across threads, up to 3 rows
   at a time; y = out·rowscale[r]·scale[n] + bias[n] (a NULL scale or row scale is 1). */
/* Rows are taken MB at a time (their x stays in L2 while every output block streams past), each chunk
   split across threads by blocks of 4 outputs. */
#define MB 48
#define WALK(FN, XT, XPTR, ROWSCALE, BLOCKW, CW)                                                           \
    int blocks = (N + 3) / 4;                                                                              \
    for (int mb = 0; mb < M; mb += MB) {                                                                   \
        int mend = M - mb > MB ? mb + MB : M;                                                              \
        _Pragma("omp parallel for schedule(static)")                                                       \
        for (int nb = 0; nb < blocks; nb++) {                                                              \
            int n0 = nb * 4, C = N - n0 >= 4 ? 4 : (CW), nc = N - n0 >= 4 ? 4 : N - n0;                    \
            float out[12];                                                                                 \
            for (int c0 = 0; c0 < nc; c0 += C)                                                             \
                for (int m0 = mb; m0 < mend; m0 += 3) {                                                    \
                    int R = mend - m0 >= 3 ? 3 : mend - m0;                                                \
                    FN##_any((const XT *)(XPTR) + (size_t)m0 * K, (BLOCKW), K, R, C, out);                 \
                    for (int r = 0; r < R; r++)                                                            \
                        for (int c = 0; c < C && c0 + c < nc; c++) {                                       \
                            int n = n0 + c0 + c;                                                           \
                            float v = out[r * 4 + c] * (ROWSCALE) * (scale ? scale[n] : 1.f);              \
                            y[(size_t)(m0 + r) * N + n] = bias ? v + bias[n] : v;                          \
                        }                                                                                  \
                }                                                                                          \
        }                                                                                                  \
    }

/* x (M, K) fp32 rows; w (N, K); scale (N) or NULL (1); bias (N) or NULL; y (M, N). Return 0, -1 without
   scratch memory, -2 on a bad shape. */
int itf_gemm_f32_rows(const float *x, int M, int K, const float *w, const float *scale, const float *bias, int N,
                      float *y) {
    if (M < 1 || K < 1 || N < 1) return -2;
    WALK(block_f32, float, x, 1.f, w + (size_t)(n0 + c0) * K, 1)
    return 0;
}

/* w: int8 (N, K) packed by blocks of 4 outputs as (ceil(N/4), K/16, 4, 16) (rows past N zero); K % 16 == 0. */
int itf_gemv_w8_f32(const float *x, int M, int K, const int8_t *w, const float *scale, const float *bias, int N,
                    float *y) {
    if (M < 1 || K < 1 || N < 1 || K % 16) return -2;
    int16_t *xq = (int16_t *)malloc(sizeof(int16_t) * (size_t)M * K + 64);
    float *xs = (float *)malloc(sizeof(float) * (size_t)M);
    if (!xq || !xs) { free(xq); free(xs); return -1; }
    quantize_rows_i16(x, M, K, xq, xs);
    WALK(block_w8, int16_t, xq, xs[m0 + r], w + (size_t)nb * 4 * K, 4)
    free(xq);
    free(xs);
    return 0;
}

/* Per-tensor asymmetric unsigned quantisation of fp32 x (the activations of the many-row int8 GEMMs) to
   [0, qmax], the formula of native.c's itf_quantize_u8 (qmax 255): scale = (max(x, 0) − min(x, 0)) / qmax (1 for
   all zeros), zp = round(−min / scale), out = clamp(round(x / scale) + zp, 0, qmax), rounding to nearest even.
   qmax 127 keeps u8 x s8 pair sums inside int16 (CPUs without VNNI). 8 values per vector. */
void itf_quantize_u8_avx2(const float *x, long n, uint8_t *out, float *scale_out, int *zp_out, int qmax) {
    float lo = 0.f, hi = 0.f;
    long n8 = n & ~7L;
    #pragma omp parallel reduction(min : lo) reduction(max : hi)
    {
        __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps();
        #pragma omp for schedule(static)
        for (long i = 0; i < n8; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            vlo = _mm256_min_ps(vlo, v);
            vhi = _mm256_max_ps(vhi, v);
        }
        float l[8], h[8];
        _mm256_storeu_ps(l, vlo);
        _mm256_storeu_ps(h, vhi);
        for (int j = 0; j < 8; j++) {
            lo = l[j] < lo ? l[j] : lo;
            hi = h[j] > hi ? h[j] : hi;
        }
    }
    for (long i = n8; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    const float top = (float)qmax;
    float s = hi > lo ? (hi - lo) / top : 1.f, inv = 1.f / s;
    int z = (int)nearbyintf(-lo * inv);
    z = z < 0 ? 0 : (z > qmax ? qmax : z);
    const __m256 vinv = _mm256_set1_ps(inv), vz = _mm256_set1_ps((float)z);
    const __m256 v0 = _mm256_setzero_ps(), v255 = _mm256_set1_ps(top);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n8; i += 8) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, vz), v0), v255);
        __m256i b = _mm256_shuffle_epi8(_mm256_cvtps_epi32(v), pick);   /* the low byte of each lane */
        uint32_t lo4 = (uint32_t)_mm256_extract_epi32(b, 0), hi4 = (uint32_t)_mm256_extract_epi32(b, 4);
        memcpy(out + i, &lo4, 4);
        memcpy(out + i + 4, &hi4, 4);
    }
    for (long i = n8; i < n; i++) {
        float v = nearbyintf(x[i] * inv) + (float)z;
        out[i] = (uint8_t)(v < 0.f ? 0.f : (v > top ? top : v));
    }
    *scale_out = s;
    *zp_out = z;
}

/* ---- the int8 weight-only GPT-2 decode step, every block in one call and one parallel region -------------

   Per block, for S <= 8 rows x (S, D) fp32, updated in place (GPT2Block of models/gpt.py):
     qkv = LN1(x)·Wattnᵀ + b          k, v of the S new positions -> the fp32 cache (positions lo .. lo+S-1)
     a   = attention(q, cache[:n])     x += a·Wprojᵀ + b
     h   = GELU(LN2(x)·Wfcᵀ + b)       x += h·Wmlpᵀ + b
   with the products of itf_gemv_w8_f32 (same arithmetic) and a per-head attention over the cache, without a
   Python round trip or a thread fork/join per operation. */

typedef struct {                 /* one block: LayerNorms, then c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj */
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const int8_t *w[4];          /* packed by kernels.ops.pack_w8 */
    const float *ws[4], *bias[4];
} itf_block_w8_t;

/* e^x for x <= 0 (8 lanes): 2^t, t = x·log2(e) split into integer and fraction, degree-5 polynomial (relative
   error ~3e-6); t < -126 gives 0, -inf gives 0. */
static inline __m256 exp_nonpos(__m256 x) {
    __m256 t = _mm256_max_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(-127.f));
    __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm256_sub_ps(t, r);
    __m256 q = _mm256_set1_ps(1.3333558e-3f);
    q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(9.6181291e-3f));
    q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(5.5504109e-2f));
    q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(2.4022651e-1f));
    q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(6.9314718e-1f));
    q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(1.f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(q, _mm256_castsi256_ps(e));
    return _mm256_and_ps(y, _mm256_cmp_ps(t, _mm256_set1_ps(-126.f), _CMP_GE_OQ));   /* underflow -> 0 */
}

/* GPT-2's "gelu_new": v/2 · (1 + tanh(sqrt(2/pi)·(v + 0.044715 v^3))), tanh(u) = sign(u)·(1 − e)/(1 + e),
   e = e^(−2|u|). In place over n values (n % 8 == 0). */
static void gelu_rows(float *h, long n) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (long i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(h + i);
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                 _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), _mm256_mul_ps(v, v), v));
        __m256 e = exp_nonpos(_mm256_mul_ps(_mm256_andnot_ps(sign, u), _mm256_set1_ps(-2.f)));
        __m256 th = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), e), _mm256_add_ps(_mm256_set1_ps(1.f), e));
        th = _mm256_or_ps(th, _mm256_and_ps(u, sign));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.f), th)));
    }
}

/* The sum of r[0 .. K-1] (centred on c: of (r[k] − c)² when sq) in double, in 8 running sums: one chain of K
   dependent additions is bound by the adds' latency (~3.5 us a 1280-wide row). */
static double sum8(const float *r, int K, double c, int sq) {
    __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd(), vc = _mm256_set1_pd(c);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 x = _mm256_loadu_ps(r + k);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
        if (sq) {
            lo = _mm256_sub_pd(lo, vc);
            hi = _mm256_sub_pd(hi, vc);
            a = _mm256_fmadd_pd(lo, lo, a);
            b = _mm256_fmadd_pd(hi, hi, b);
        } else {
            a = _mm256_add_pd(a, lo);
            b = _mm256_add_pd(b, hi);
        }
    }
    double lanes[4], total = 0.0;
    _mm256_storeu_pd(lanes, _mm256_add_pd(a, b));
    for (int i = 0; i < 4; i++) total += lanes[i];
    for (; k < K; k++) total += sq ? (r[k] - c) * (r[k] - c) : r[k];
    return total;
}

/* LayerNorm of each row (population variance, as torch), sums in double, into out (M, K); shared with
   native.c and gpt_step.c (kernels.h). */
void itf_layer_norm_rows(const float *x, int M, int K, const float *w, const float *b, float eps, float *out) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        double mean = sum8(r, K, 0.0, 0) / K, sq = sum8(r, K, mean, 1);
        float inv = (float)(1.0 / sqrt(sq / K + eps)), mu = (float)mean;
        float *o = out + (size_t)m * K;
        for (int k = 0; k < K; k++) o[k] = (r[k] - mu) * inv * w[k] + b[k];
    }
}

/* One product of the step inside the parallel region: y (S, N) = xs·(xq·Wᵀ)·ws + bias (+ residual, which may
   be y itself: each output is read before it is written, by the same thread). */
static void step_product(const int16_t *xq, const float *xs, int S, int K, const int8_t *w, const float *ws,
                         const float *bias, int N, const float *residual, float *y) {
    #pragma omp for schedule(static)
    for (int nb = 0; nb < (N + 3) / 4; nb++) {
        int n0 = nb * 4, nc = N - n0 >= 4 ? 4 : N - n0;
        float out[12];
        for (int m0 = 0; m0 < S; m0 += 3) {
            int R = S - m0 >= 3 ? 3 : S - m0;
            block_w8_any(xq + (size_t)m0 * K, w + (size_t)nb * 4 * K, K, R, 4, out);
            for (int r = 0; r < R; r++)
                for (int c = 0; c < nc; c++) {
                    size_t at = (size_t)(m0 + r) * N + n0 + c;
                    float v = out[r * 4 + c] * xs[m0 + r] * ws[n0 + c] + bias[n0 + c];
                    y[at] = residual ? residual[at] + v : v;
                }
        }
    }
}

/* A step's groups (kernels.h) checked against its S rows: -1 when a group is malformed or their rows do not add
   up to S, else the attention scratch they need (H·itf_score_rows(rows)·(nkeys + pad) floats each); with
   first and at, also each group's first row and scratch offset. Shared by both whole-step kernels (gpt_step.c,
   below). */
long itf_groups_layout(const itf_group_t *groups, int G, int S, int H, int pad, int *first, size_t *at) {
    long rows = 0, scratch = 0;
    for (int g = 0; g < G; g++) {
        const itf_group_t *gr = groups + g;
        if (gr->rows < 1 || gr->lo < 0 || gr->nkeys < 1 || gr->nkeys > gr->lo + gr->rows) return -1;
        if (first) first[g] = (int)rows, at[g] = (size_t)scratch;
        rows += gr->rows;
        scratch += (long)H * itf_score_rows(gr->rows) * (gr->nkeys + pad);
    }
    return rows == S ? scratch : -1;
}

/* Head hh of the step's attention: the S query rows of qkv (row stride 3D) over this layer's k, v ((H, cap, d)
   with head stride hs); row r attends the L positions keys[r·L ..] (NULL: 0 .. L-1), as native.c's
   itf_attend_head. out (S, D) at this head's columns. sc: scratch of L + 8 floats. */
static void attend_head(int hh, const float *qkv, int D, const float *k, const float *v, long hs, int L,
                        const int32_t *keys, int S, int d, float scale, float *sc, float *out) {
    const float *kh = k + (size_t)hh * hs, *vh = v + (size_t)hh * hs;
    for (int r = 0; r < S; r++) {
        const float *q = qkv + (size_t)r * 3 * D + hh * d;
        const int32_t *idx = keys ? keys + (size_t)r * L : NULL;
        float mx = -INFINITY;
        for (int j = 0; j < L; j++) {
            const float *kr = kh + (size_t)(idx ? idx[j] : j) * d;
            __m256 acc = _mm256_setzero_ps();
            for (int c = 0; c < d; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(kr + c), acc);
            sc[j] = hsum8(acc) * scale;
            mx = sc[j] > mx ? sc[j] : mx;
        }
        int n8 = L & ~7;
        __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
        for (int j = 0; j < n8; j += 8) {
            __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
            _mm256_storeu_ps(sc + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum8(vsum);
        for (int j = n8; j < L; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        float inv = 1.f / sum;
        __m256 o[32];   /* d <= 256 */
        for (int c = 0; c < d / 8; c++) o[c] = _mm256_setzero_ps();
        for (int j = 0; j < L; j++) {
            const float *vr = vh + (size_t)(idx ? idx[j] : j) * d;
            __m256 p = _mm256_set1_ps(sc[j]);
            for (int c = 0; c < d / 8; c++) o[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * c), o[c]);
        }
        for (int c = 0; c < d / 8; c++)
            _mm256_storeu_ps(out + (size_t)r * D + hh * d + 8 * c, _mm256_mul_ps(o[c], _mm256_set1_ps(inv)));
    }
}

/* x (S, D) fp32, in place: the rows of G requests (itf_group_t, kernels.h), each with its own fp32 cache; the
   products run on all S rows at once (each row's result independent of the others: per-row int16 scale, exact
   integer sums), the attention per request and head. d % 8 == 0 and <= 256, D % 16 == 0. Returns 0, -1 without
   scratch memory, -2 for a bad shape. */
int itf_gpt_step_w8(float *x, int S, int D, int L, const itf_block_w8_t *blocks, float eps, int G,
                    const itf_group_t *groups, int H, int d, float scale) {
    if (d % 8 || d > 256 || D % 16 || S < 1 || G < 1 || H * d != D) return -2;
    int F = 4 * D;
    int *first = malloc(sizeof(int) * (size_t)G);
    size_t *at = malloc(sizeof(size_t) * (size_t)G);
    if (!first || !at) { free(first); free(at); return -1; }
    long scratch = itf_groups_layout(groups, G, S, H, 8, first, at);
    if (scratch < 0) { free(first); free(at); return -2; }
    float *qkv = malloc(sizeof(float) * (size_t)S * 3 * D), *a = malloc(sizeof(float) * (size_t)S * D);
    float *h = malloc(sizeof(float) * (size_t)S * F), *xn = malloc(sizeof(float) * (size_t)S * D);
    float *sc = malloc(sizeof(float) * (size_t)scratch), *xs = malloc(sizeof(float) * S);
    int16_t *xq = malloc(sizeof(int16_t) * (size_t)S * F + 64);
    int ok = qkv && a && h && xn && sc && xs && xq;
    if (ok) {
        #pragma omp parallel
        for (int l = 0; l < L; l++) {
            const itf_block_w8_t *b = blocks + l;
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln1_w, b->ln1_b, eps, xn);
                quantize_rows_i16(xn, S, D, xq, xs);
            }
            step_product(xq, xs, S, D, b->w[0], b->ws[0], b->bias[0], 3 * D, NULL, qkv);
            #pragma omp for schedule(static)
            for (int gh = 0; gh < G * H; gh++) {   /* one request's head: its new keys and values, its attention */
                int g = gh / H, hh = gh % H, r0 = first[g], R = groups[g].rows, lo = groups[g].lo;
                float *kl = (float *)groups[g].k + (size_t)l * groups[g].layer_stride;
                float *vl = (float *)groups[g].v + (size_t)l * groups[g].layer_stride;
                long hs = groups[g].head_stride;
                for (int r = 0; r < R; r++) {
                    size_t pos = (size_t)hh * hs + (size_t)(lo + r) * d;
                    memcpy(kl + pos, qkv + (size_t)(r0 + r) * 3 * D + D + hh * d, sizeof(float) * d);
                    memcpy(vl + pos, qkv + (size_t)(r0 + r) * 3 * D + 2 * D + hh * d, sizeof(float) * d);
                }
                int L = groups[g].nkeys;
                attend_head(hh, qkv + (size_t)r0 * 3 * D, D, kl, vl, hs, L, groups[g].keys, R, d, scale,
                            sc + at[g] + (size_t)hh * (L + 8), a + (size_t)r0 * D);
            }
            #pragma omp single
            quantize_rows_i16(a, S, D, xq, xs);
            step_product(xq, xs, S, D, b->w[1], b->ws[1], b->bias[1], D, x, x);
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln2_w, b->ln2_b, eps, xn);
                quantize_rows_i16(xn, S, D, xq, xs);
            }
            step_product(xq, xs, S, D, b->w[2], b->ws[2], b->bias[2], F, NULL, h);
            #pragma omp for schedule(static)
            for (int r = 0; r < S; r++) gelu_rows(h + (size_t)r * F, F);
            #pragma omp single
            quantize_rows_i16(h, S, F, xq, xs);
            step_product(xq, xs, S, F, b->w[3], b->ws[3], b->bias[3], D, x, x);
        }
    }
    free(qkv); free(a); free(h); free(xn); free(sc); free(xs); free(xq); free(first); free(at);
    return ok ? 0 : -1;
}
