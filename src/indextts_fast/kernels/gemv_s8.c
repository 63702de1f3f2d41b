#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

/* y[m, n] = sx[m] * ws[n] * sum_k (xu[m,k] - zp[m]) * w[n,k] + b[n]: activations quantised per row,
   asymmetric (xu = round(x / sx) + zp in [0, 255], 0 exact; the skewed post-GELU rows keep all 256
   levels), weights per output channel, symmetric int8. Weights packed in groups of 64 outputs: group g,
   step k4 (4 k's), block j (16 outputs), lane l, byte i at ((g*K4 + k4)*4 + j)*64 + l*4 + i.
   VNNI dpbusd multiplies u8 (xu) by s8 (w); the zp·Σw term is removed with wsum[n] = Σ_k w[n,k]. */

static void quantize_rows(const float *x, int M, int K, int Kp, uint8_t *xq, float *sx, int32_t *zp) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        float lo = 0.f, hi = 0.f;
        for (int k = 0; k < K; k++) { lo = r[k] < lo ? r[k] : lo; hi = r[k] > hi ? r[k] : hi; }
        float s = hi > lo ? (hi - lo) / 255.f : 1.f, inv = 1.f / s;
        int z = (int)nearbyintf(-lo * inv);
        z = z < 0 ? 0 : (z > 255 ? 255 : z);
        uint8_t *q = xq + (size_t)m * Kp;
        for (int k = 0; k < K; k++) {
            float v = nearbyintf(r[k] * inv) + (float)z;
            q[k] = (uint8_t)(v > 255.f ? 255.f : (v < 0.f ? 0.f : v));
        }
        for (int k = K; k < Kp; k++) q[k] = (uint8_t)z;
        sx[m] = s;
        zp[m] = z;
    }
}

/* One row's 4 accumulators (64 outputs), as named variables so that they stay in registers. */
#define ACC_DECL(r) __m512i a##r##0 = _mm512_setzero_si512(), a##r##1 = _mm512_setzero_si512(), \
                            a##r##2 = _mm512_setzero_si512(), a##r##3 = _mm512_setzero_si512();
#define ACC_STEP(r)                                                                                   \
    {                                                                                                 \
        __m512i xb = _mm512_set1_epi32(*(const int32_t *)(xq + (size_t)(m0 + r) * Kp + 4 * k4));      \
        a##r##0 = _mm512_dpbusd_epi32(a##r##0, xb, w0);                                               \
        a##r##1 = _mm512_dpbusd_epi32(a##r##1, xb, w1);                                               \
        a##r##2 = _mm512_dpbusd_epi32(a##r##2, xb, w2);                                               \
        a##r##3 = _mm512_dpbusd_epi32(a##r##3, xb, w3);                                               \
    }
#define ACC_STORE(r)                                                                                  \
    store16(a##r##0, g * 64, m0 + r, N, wsum, ws, bias, sx, zp, y);                                      \
    store16(a##r##1, g * 64 + 16, m0 + r, N, wsum, ws, bias, sx, zp, y);                                 \
    store16(a##r##2, g * 64 + 32, m0 + r, N, wsum, ws, bias, sx, zp, y);                                 \
    store16(a##r##3, g * 64 + 48, m0 + r, N, wsum, ws, bias, sx, zp, y);

/* (acc - zp[m]·Σw) · sx[m] · ws[n] + b[n] for outputs n0..n0+15 of row m (masked at the tail). */
static inline void store16(__m512i acc, int n0, int m, int N, const int32_t *wsum, const float *ws,
                           const float *bias, const float *sx, const int32_t *zp, float *y) {
    if (n0 >= N) return;
    __m512i c = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_loadu_si512(wsum + n0), _mm512_set1_epi32(zp[m])));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(_mm512_set1_ps(sx[m]), _mm512_loadu_ps(ws + n0)));
    if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n0));
    __mmask16 mask = N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
    _mm512_mask_storeu_ps(y + (size_t)m * N + n0, mask, v);
}

#ifndef PREFETCH
#define PREFETCH 4096 /* bytes ahead in the weight stream (2+ rows: compute hides less of the latency) */
#endif
#define GROUP_LOOP(PF, STEPS)                                                                             \
    {                                                                                                 \
        const int8_t *p = wp + (size_t)g * K4 * 256;                                                  \
        for (int k4 = 0; k4 < K4; k4++, p += 256) {                                                   \
            if (PF) {                                                                                 \
                _mm_prefetch((const char *)p + PREFETCH, _MM_HINT_T0);                                \
                _mm_prefetch((const char *)p + PREFETCH + 64, _MM_HINT_T0);                           \
                _mm_prefetch((const char *)p + PREFETCH + 128, _MM_HINT_T0);                          \
                _mm_prefetch((const char *)p + PREFETCH + 192, _MM_HINT_T0);                          \
            }                                                                                         \
            __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);                    \
            __m512i w2 = _mm512_loadu_si512(p + 128), w3 = _mm512_loadu_si512(p + 192);             \
            STEPS                                                                                     \
        }                                                                                             \
    }

/* ws, wsum, bias: padded to G*64 entries. Returns 0, or -1 when scratch memory is not available. */
int itf_gemv_s8(const float *x, int M, int K, const int8_t *wp, const int32_t *wsum, const float *ws,
                const float *bias, int N, float *y) {
    int K4 = (K + 3) / 4, Kp = 4 * K4, G = (N + 63) / 64;
    uint8_t *xq = (uint8_t *)aligned_alloc(64, ((size_t)M * Kp + 63) / 64 * 64);
    float *sx = (float *)malloc(sizeof(float) * (size_t)M);
    int32_t *zp = (int32_t *)malloc(sizeof(int32_t) * (size_t)M);
    if (!xq || !sx || !zp) { free(xq); free(sx); free(zp); return -1; }
    quantize_rows(x, M, K, Kp, xq, sx, zp);
    #pragma omp parallel for schedule(static)
    for (int g = 0; g < G; g++) {
        int m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) {
            ACC_DECL(0) ACC_DECL(1) ACC_DECL(2) ACC_DECL(3)
            GROUP_LOOP(1, ACC_STEP(0) ACC_STEP(1) ACC_STEP(2) ACC_STEP(3))
            ACC_STORE(0) ACC_STORE(1) ACC_STORE(2) ACC_STORE(3)
        }
        if (M - m0 == 3) {
            ACC_DECL(0) ACC_DECL(1) ACC_DECL(2)
            GROUP_LOOP(1, ACC_STEP(0) ACC_STEP(1) ACC_STEP(2))
            ACC_STORE(0) ACC_STORE(1) ACC_STORE(2)
        } else if (M - m0 == 2) {
            ACC_DECL(0) ACC_DECL(1)
            GROUP_LOOP(1, ACC_STEP(0) ACC_STEP(1))
            ACC_STORE(0) ACC_STORE(1)
        } else if (M - m0 == 1) {
            ACC_DECL(0)
            GROUP_LOOP(0, ACC_STEP(0))
            ACC_STORE(0)
        }
    }
    free(xq); free(sx); free(zp);
    return 0;
}
