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

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[r][c] = Σ_k x[r][k]·w[c][k] for R rows and C outputs; K16 = K rounded down to 16 (the tail in scalar).
   Each (r, c) has two accumulators (even and odd groups of 8 k) when R·C <= 4: one FMA chain per output
   would wait on its own latency. PF: how far ahead (bytes) each weight row is prefetched (0: not). */
#define BLOCK_BODY(LOADW, PF)  /* fp32 weights */                                                                              \
    const int S = R * C <= 4 ? 2 : 1;                                                                      \
    __m256 acc[2][3][4];                                                                                   \
    for (int h = 0; h < S; h++)                                                                            \
        for (int r = 0; r < R; r++)                                                                        \
            for (int c = 0; c < C; c++) acc[h][r][c] = _mm256_setzero_ps();                               \
    int K16 = K & ~15;                                                                                     \
    for (int k = 0; k < K16; k += 16) {                                                                    \
        if (PF)                                                                                            \
            for (int c = 0; c < C; c++) _mm_prefetch((const char *)(w + (size_t)c * K + k) + PF, _MM_HINT_T0); \
        for (int h = 0; h < 2; h++) {                                                                      \
            __m256 wv[4];                                                                                  \
            for (int c = 0; c < C; c++) wv[c] = LOADW(w + (size_t)c * K + k + 8 * h);                      \
            for (int r = 0; r < R; r++) {                                                                  \
                __m256 xv = _mm256_loadu_ps(x + (size_t)r * K + k + 8 * h);                                 \
                for (int c = 0; c < C; c++)                                                                \
                    acc[h % S][r][c] = _mm256_fmadd_ps(xv, wv[c], acc[h % S][r][c]);                       \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    for (int r = 0; r < R; r++)                                                                            \
        for (int c = 0; c < C; c++) {                                                                      \
            float s = hsum8(S == 2 ? _mm256_add_ps(acc[0][r][c], acc[S - 1][r][c]) : acc[0][r][c]);        \
            for (int k = K16; k < K; k++) s += x[(size_t)r * K + k] * (float)w[(size_t)c * K + k];         \
            out[r * 4 + c] = s;                                                                            \
        }

static inline __attribute__((always_inline)) void block_f32(const float *x, const float *w, int K, int R, int C,
                                                            float *out) {
    BLOCK_BODY(_mm256_loadu_ps, 0)
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
            _mm_prefetch((const char *)wk + 1024, _MM_HINT_T0);
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
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * K;
        float mx = 0.f;
        for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(row[k]));
        float scale = mx > 0.f ? mx / 32767.f : 1.f, inv = 1.f / scale;
        for (int k = 0; k < K; k++) xq[(size_t)m * K + k] = (int16_t)lrintf(row[k] * inv);
        xs[m] = scale;
    }
}

/* The (rows x outputs) walk shared by both products: blocks of 4 outputs split across threads, up to 3 rows
   at a time; y = out·rowscale[r]·scale[n] + bias[n] (a NULL scale or row scale is 1). */
#define WALK(FN, XT, XPTR, ROWSCALE, BLOCKW, CW)                                                                       \
    int blocks = (N + 3) / 4;                                                                              \
    _Pragma("omp parallel for schedule(static)")                                                           \
    for (int nb = 0; nb < blocks; nb++) {                                                                  \
        int n0 = nb * 4, C = N - n0 >= 4 ? 4 : (CW), nc = N - n0 >= 4 ? 4 : N - n0;                        \
        float out[12];                                                                                     \
        for (int c0 = 0; c0 < nc; c0 += C)                                                                 \
            for (int m0 = 0; m0 < M; m0 += 3) {                                                            \
                int R = M - m0 >= 3 ? 3 : M - m0;                                                          \
                FN##_any((const XT *)(XPTR) + (size_t)m0 * K, (BLOCKW), K, R, C, out);                     \
                for (int r = 0; r < R; r++)                                                                \
                    for (int c = 0; c < C && c0 + c < nc; c++) {                                           \
                        int n = n0 + c0 + c;                                                               \
                        float v = out[r * 4 + c] * (ROWSCALE) * (scale ? scale[n] : 1.f);                  \
                        y[(size_t)(m0 + r) * N + n] = bias ? v + bias[n] : v;                              \
                    }                                                                                      \
            }                                                                                              \
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
