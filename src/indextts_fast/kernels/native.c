#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include "simd.h"
#include "kernels.h"

/* y[m, n] = sx[m] * ws[n] * sum_k (xu[m,k] - zp[m]) * w[n,k] + b[n]: activations quantised per row,
   asymmetric (xu = round(x / sx) + zp in [0, 255], 0 exact; the skewed post-GELU rows keep all 256
   levels), weights per output channel, symmetric int8. Weights packed in groups of 64 outputs: group g,
   step k4 (4 k's), block j (16 outputs), lane l, byte i at ((g*K4 + k4)*4 + j)*64 + l*4 + i.
   VNNI dpbusd multiplies u8 (xu) by s8 (w); the zp·Σw term is removed with wsum[n] = Σ_k w[n,k]. */

void itf_quantize_rows(const float *x, int M, int K, int Kp, uint8_t *xq, float *sx, int32_t *zp) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16) {
            __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(mk, r + k);      /* the masked lanes read 0: lo <= 0 <= hi anyway */
            vlo = _mm512_min_ps(vlo, v);
            vhi = _mm512_max_ps(vhi, v);
        }
        float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
        float s = hi > lo ? (hi - lo) / 255.f : 1.f, inv = 1.f / s;
        int z = (int)nearbyintf(-lo * inv);
        z = z < 0 ? 0 : (z > 255 ? 255 : z);
        uint8_t *q = xq + (size_t)m * Kp;
        __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps((float)z);
        for (int k = 0; k < K; k += 16) {   /* round(x/s) + z, clamped to [0, 255] (nearest even, as nearbyintf) */
            __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, r + k), vinv),
                                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
            v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.f));
            _mm_mask_storeu_epi8(q + k, mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        }
        for (int k = K; k < Kp; k++) q[k] = (uint8_t)z;
        sx[m] = s;
        zp[m] = z;
    }
}

/* itf_layer_norm_rows (kernels.h): in avx2.c, which every library holds. */

/* tanh(u) = sign(u) · (1 − e^(−2|u|)) / (1 + e^(−2|u|)) */
static inline __m512 tanh_ps(__m512 u) {
    __m512 e = exp_neg(_mm512_mul_ps(_mm512_abs_ps(u), _mm512_set1_ps(-2.f)));
    __m512 th = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.f), e), _mm512_add_ps(_mm512_set1_ps(1.f), e));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(th),
                               _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32((int)0x80000000))));
}

/* sigmoid(x) = 1/(1+e^-x) for x >= 0, e^x/(1+e^x) for x < 0: both from e^-|x| */
static inline __m512 sigmoid_ps(__m512 x) {
    __m512 e = exp_neg(_mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(-1.f)));
    __m512 sig = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e));
    return _mm512_mask_mul_ps(sig, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), sig, e);
}

/* GPT-2's "gelu_new": v/2 · (1 + tanh(sqrt(2/pi) · (v + 0.044715 v^3))). */
static inline __m512 gelu_tanh(__m512 v) {
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                             _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.f), tanh_ps(u)));
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
    store16(a##r##0, g * 64, m0 + r, N, wsum, ws, ep, sx, zp, y);                                      \
    store16(a##r##1, g * 64 + 16, m0 + r, N, wsum, ws, ep, sx, zp, y);                                 \
    store16(a##r##2, g * 64 + 32, m0 + r, N, wsum, ws, ep, sx, zp, y);                                 \
    store16(a##r##3, g * 64 + 48, m0 + r, N, wsum, ws, ep, sx, zp, y);

/* (acc - zp[m]·Σw) · sx[m] · ws[n] + b[n], then the epilogue, for outputs n0..n0+15 of row m (masked at the
   tail). */
static inline void store16(__m512i acc, int n0, int m, int N, const int32_t *wsum, const float *ws,
                           const epilogue_t *ep, const float *sx, const int32_t *zp, float *y) {
    if (n0 >= N) return;
    __m512i c = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_loadu_si512(wsum + n0), _mm512_set1_epi32(zp[m])));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(_mm512_set1_ps(sx[m]), _mm512_loadu_ps(ws + n0)));
    if (ep->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(ep->bias + n0));
    __mmask16 mask = N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
    if (ep->gelu) v = gelu_tanh(v);
    if (ep->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, ep->residual + (size_t)m * N + n0));
    _mm512_mask_storeu_ps(y + (size_t)m * N + n0, mask, v);
}

#ifndef PREFETCH
#define PREFETCH 4096 /* bytes ahead in the weight stream (2+ rows: compute hides less of the latency) */
#endif
#ifndef FAR_PREFETCH
/* Bytes ahead for a second, L2 prefetch (T2) of the weight stream: an L1 prefetch that misses holds one of the
   core's few fill buffers for a whole DRAM round trip; one that finds the line in L2 does not (any distance
   from 8 to 64 KB did as well; the A/B figures are in issue 15's notes). */
#define FAR_PREFETCH 16384
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
                for (int line = 0; line < 256; line += 64)                                            \
                    _mm_prefetch((const char *)p + FAR_PREFETCH + line, _MM_HINT_T2);                 \
            }                                                                                         \
            __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);                    \
            __m512i w2 = _mm512_loadu_si512(p + 128), w3 = _mm512_loadu_si512(p + 192);             \
            STEPS                                                                                     \
        }                                                                                             \
    }

/* Outputs g*64 .. g*64+63 of every row: y = epilogue(x (M rows, quantised) · Wᵀ). */
void itf_gemv_group(int g, const uint8_t *xq, const float *sx, const int32_t *zp, int M, int K, const int8_t *wp,
                    const int32_t *wsum, const float *ws, int N, const epilogue_t *ep, float *y) {
    int K4 = (K + 3) / 4, Kp = 4 * K4, m0 = 0;
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

#ifndef AMX_PREFETCH
#define AMX_PREFETCH 4096 /* bytes ahead in the weight stream: tile loads do not wake the hardware prefetchers */
#endif
/* Outputs g*64 .. g*64+63 of every row on AMX: per block of 16 rows, four 16x16 int32 C tiles (one per 16
   outputs) accumulate A (16 rows x 64 k of xq) times B (16 k-quads x 16 outputs: pack_vnni's layout is
   already the B tile's, 256 bytes between k-quads). Exact integer sums like VPDPBUSD's, then store16. */
__attribute__((target("amx-tile,amx-int8")))
void itf_gemv_group_amx(int g, const uint8_t *xq, const float *sx, const int32_t *zp, int M, int K, const int8_t *wp,
                        const int32_t *wsum, const float *ws, int N, const epilogue_t *ep, float *y) {
    int K4 = K / 4;
    const int8_t *w = wp + (size_t)g * K4 * 256;
    int32_t acc[4][16][16];
    for (int m0 = 0; m0 < M; m0 += 16) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int k4 = 0; k4 < K4; k4 += 16) {
            const int8_t *b = w + (size_t)k4 * 256;
            /* The next k block's 4 KB of weights (and the far L2 prefetch), a quarter between tile loads: 64
               prefetches in one burst stalled on the fill buffers. */
#define AMX_PREFETCH_QUARTER(q)                                                                     \
            for (int line = 1024 * (q); line < 1024 * (q) + 1024; line += 64) {                       \
                _mm_prefetch((const char *)b + AMX_PREFETCH + line, _MM_HINT_T0);                     \
                _mm_prefetch((const char *)b + FAR_PREFETCH + line, _MM_HINT_T2);                     \
            }
            _tile_loadd(4, xq + (size_t)m0 * K + 4 * k4, K);
            AMX_PREFETCH_QUARTER(0)
            _tile_loadd(5, b, 256);
            _tile_loadd(6, b + 64, 256);
            _tile_dpbusd(0, 4, 5);
            AMX_PREFETCH_QUARTER(1)
            _tile_loadd(7, b + 128, 256);
            _tile_dpbusd(1, 4, 6);
            AMX_PREFETCH_QUARTER(2)
            _tile_loadd(5, b + 192, 256);
            _tile_dpbusd(2, 4, 7);
            AMX_PREFETCH_QUARTER(3)
            _tile_dpbusd(3, 4, 5);
#undef AMX_PREFETCH_QUARTER
        }
        _tile_stored(0, acc[0], 64); _tile_stored(1, acc[1], 64);
        _tile_stored(2, acc[2], 64); _tile_stored(3, acc[3], 64);
        for (int r = 0; r < 16 && m0 + r < M; r++)
            for (int blk = 0; blk < 4; blk++)
                store16(_mm512_loadu_si512(acc[blk][r]), g * 64 + 16 * blk, m0 + r, N, wsum, ws, ep, sx, zp, y);
    }
}

/* y (M, N) = epilogue(LN?(x) (M, K) · Wᵀ): ln_w/ln_b (K) or NULL for no LayerNorm; ws, wsum, bias padded
   to G*64 entries; residual (M, N) or NULL (may be y itself); gelu 0/1; amx 1: rows in blocks of 16 on AMX
   tiles (K % 64 == 0; the CPU has AMX-INT8 and itf_amx_init succeeded), the same bits as VPDPBUSD.
   Returns 0, or -1 when scratch memory is not available. */
int itf_gemv_s8(const float *x, int M, int K, const float *ln_w, const float *ln_b, float ln_eps,
                const int8_t *wp, const int32_t *wsum, const float *ws, const float *bias, int N,
                const float *residual, int gelu, float *y, int amx) {
    int Kp = (K + 3) / 4 * 4, G = (N + 63) / 64, tiles = amx && K % 64 == 0;
    epilogue_t ep = {bias, residual, gelu};
    uint8_t *xq = (uint8_t *)aligned_alloc(64, ((size_t)(M + 15) / 16 * 16 * Kp + 63) / 64 * 64);
    float *sx = (float *)malloc(sizeof(float) * (size_t)M);
    int32_t *zp = (int32_t *)malloc(sizeof(int32_t) * (size_t)M);
    float *xn = ln_w ? (float *)malloc(sizeof(float) * (size_t)M * K) : NULL;
    if (!xq || !sx || !zp || (ln_w && !xn)) { free(xq); free(sx); free(zp); free(xn); return -1; }
    if (ln_w) itf_layer_norm_rows(x, M, K, ln_w, ln_b, ln_eps, xn);
    itf_quantize_rows(ln_w ? xn : x, M, K, Kp, xq, sx, zp);
    #pragma omp parallel
    {
        if (tiles) itf_amx_tiles();
        #pragma omp for schedule(static)
        for (int g = 0; g < G; g++)
            if (tiles) itf_gemv_group_amx(g, xq, sx, zp, M, K, wp, wsum, ws, N, &ep, y);
            else itf_gemv_group(g, xq, sx, zp, M, K, wp, wsum, ws, N, &ep, y);
        if (tiles) itf_amx_release();
    }
    free(xq); free(sx); free(zp); free(xn);
    return 0;
}

/* ---- elementwise chains of a bf16 DiT step (S2Mel): one pass each instead of several ---------------- */

static inline __m512 bf16_load(const uint16_t *p) { return load_bf16x16(p); }


static inline void bf16_store(uint16_t *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, bf16_round(v)); }

/* SwiGLU gate: out = silu(a) · b over n bf16 values (n a multiple of 16); out may alias a. */
void itf_silu_mul_bf16(const uint16_t *a, const uint16_t *b, uint16_t *out, long n) {
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i += 16) {
        __m512 x = bf16_load(a + i);
        bf16_store(out + i, _mm512_mul_ps(_mm512_mul_ps(x, sigmoid_ps(x)), bf16_load(b + i)));
    }
}

/* RoPE of interleaved pairs: x (B, T, NH, d) bf16 with strides sb, st, sh (elements; d contiguous),
   table (T, d/2, 2) fp32 [cos, sin]; out (B, NH, T, d) contiguous bf16:
   (x0·cos − x1·sin, x1·cos + x0·sin), computed in fp32, rounded once. d a multiple of 16. */
void itf_rope_bf16(const uint16_t *x, long sb, long st, long sh, int B, int T, int NH, int d,
                   const float *table, uint16_t *out) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const uint16_t *src = x + b * sb + t * st + h * sh;
                uint16_t *dst = out + (((size_t)b * NH + h) * T + t) * d;
                const float *tab = table + (size_t)t * d;        /* d/2 pairs of [cos, sin] = d floats */
                for (int i = 0; i < d; i += 16) rope16_bf16(src + i, tab + i, dst + i);
            }
}

/* AdaLN-RMS: out[b, t] = shift[b] + scale[b] · x[b, t] · rsqrt(mean(x[b, t]²) + eps), x (B, T, D) bf16
   contiguous, scale/shift bf16 rows with stride ss (elements) per b; out (B, T, D). D a multiple of 16. */
void itf_adaln_rms_bf16(const uint16_t *x, const uint16_t *scale, const uint16_t *shift, long ss, float eps,
                        int B, int T, int D, uint16_t *out) {
    #pragma omp parallel for schedule(static)
    for (long row = 0; row < (long)B * T; row++) {
        int b = (int)(row / T);
        const uint16_t *r = x + row * D;
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < D; i += 16) { __m512 v = bf16_load(r + i); acc = _mm512_fmadd_ps(v, v, acc); }
        __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / D + eps));
        const uint16_t *sc = scale + b * ss, *sh = shift + b * ss;
        for (int i = 0; i < D; i += 16)
            bf16_store(out + row * D + i, _mm512_fmadd_ps(_mm512_mul_ps(bf16_load(sc + i), inv), bf16_load(r + i),
                                                           bf16_load(sh + i)));
    }
}

/* WaveNet gate, time-major: out[b, t, c] = tanh(a[b, t, c] + g[b, c]) · sigmoid(a[b, t, H + c] + g[b, H + c]),
   a (B, T, 2H) bf16 contiguous, g bf16 with batch stride gs (channel stride 1), out (B, T, H). */
void itf_wavenet_gate_bf16(const uint16_t *a, const uint16_t *g, long gs, int B, int H, int T, uint16_t *out) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const uint16_t *x1 = a + ((size_t)b * T + t) * 2 * H, *x2 = x1 + H, *g1 = g + b * gs, *g2 = g1 + H;
            uint16_t *o = out + ((size_t)b * T + t) * H;
            for (int c = 0; c < H; c += 16) {
                __mmask16 m = H - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (H - c)) - 1);
                __m512 u = _mm512_add_ps(bf16_load_masked(x1 + c, m), bf16_load_masked(g1 + c, m));
                __m512 v = _mm512_add_ps(bf16_load_masked(x2 + c, m), bf16_load_masked(g2 + c, m));
                _mm256_mask_storeu_epi16(o + c, m, bf16_round(_mm512_mul_ps(tanh_ps(u), sigmoid_ps(v))));
            }
        }
}

/* ---- BigVGAN's anti-aliased Snake activation (bf16 vocoder stage; computed in fp32) ------------------ */

/* sin²(y): sin² has period π, so y is reduced by multiples of π (4-part Cody-Waite) to [−π/2, π/2] and
   sin taken from its Taylor series to r¹¹ (error < 1e-7 there). */
static inline __m512 sin2_ps(__m512 y) {
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(0.31830988618379067f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(3.140625f), y);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(9.670257568359375e-4f), r);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(6.2771141529083251953e-7f), r);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.2154201256553420762e-10f), r);
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(-1.f / 39916800.f);
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.f / 362880.f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.f / 5040.f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(-1.f / 6.f));
    __m512 s = _mm512_fmadd_ps(_mm512_mul_ps(r, r2), p, r);
    return _mm512_mul_ps(s, s);
}

/* x (R, T) fp32 rows (R = batch·channels) -> out (R, Tp) fp32, Tp >= T: the official Activation1d —
   u = 2·(12-tap polyphase up-sampling ×2 of x, replicate padding), z = u + sin²(α·u)·(1/β) per row,
   out[i] = Σ_k down[k]·z[2i + k − 5] (replicate padding 5 left, 6 right) — then zeros from T on.
   up2: the up-sampling filter already ×2; alpha, inv_beta per row. Returns 0, or -1 when scratch memory
   is not available. */
int itf_aa_snake(const float *x, long R, int T, const float *alpha, const float *inv_beta, const float *up2,
                  const float *down, int Tp, float *out) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    int failed = 0;
    #pragma omp parallel
    {
        float *xp = (float *)malloc(sizeof(float) * ((size_t)T + 64));
        float *z = (float *)malloc(sizeof(float) * (2 * (size_t)T + 128));
        #pragma omp for schedule(static)
        for (long row = 0; row < R; row++) {
            if (!xp || !z) { failed = 1; continue; }
            const float *xr = x + row * T;
            float *o = out + row * Tp;
            for (int j = 0; j < 3; j++) xp[j] = xr[0];                  /* xp[j] = x[clamp(j − 3)] */
            for (int j = 0; j < T; j++) xp[3 + j] = xr[j];
            for (int j = T + 3; j < T + 64; j++) xp[j] = xr[T - 1];
            __m512 a = _mm512_set1_ps(alpha[row]), ib = _mm512_set1_ps(inv_beta[row]);
            for (int i = 0; i < T; i += 16) {
                __m512 ue = _mm512_setzero_ps(), uo = _mm512_setzero_ps();
                for (int k = 0; k < 6; k++) {   /* u[2i] = Σ up2[2k+1]·x[i+2−k], u[2i+1] = Σ up2[2k]·x[i+3−k] */
                    ue = _mm512_fmadd_ps(_mm512_set1_ps(up2[2 * k + 1]), _mm512_loadu_ps(xp + i + 5 - k), ue);
                    uo = _mm512_fmadd_ps(_mm512_set1_ps(up2[2 * k]), _mm512_loadu_ps(xp + i + 6 - k), uo);
                }
                __m512 ze = _mm512_add_ps(ue, _mm512_mul_ps(sin2_ps(_mm512_mul_ps(ue, a)), ib));
                __m512 zo = _mm512_add_ps(uo, _mm512_mul_ps(sin2_ps(_mm512_mul_ps(uo, a)), ib));
                _mm512_storeu_ps(z + 5 + 2 * i, _mm512_permutex2var_ps(ze, lo, zo));
                _mm512_storeu_ps(z + 5 + 2 * i + 16, _mm512_permutex2var_ps(ze, hi, zo));
            }
            for (int j = 0; j < 5; j++) z[j] = z[5];                    /* replicate padding of z */
            for (int j = 0; j < 6 + 64; j++) z[5 + 2 * T + j] = z[5 + 2 * T - 1];
            for (int i = 0; i < T; i += 16) {
                __m512 acc = _mm512_setzero_ps();
                for (int k = 0; k < 12; k++) {
                    __m512 ev = _mm512_permutex2var_ps(_mm512_loadu_ps(z + 2 * i + k), evens,
                                                       _mm512_loadu_ps(z + 2 * i + k + 16));
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(down[k]), ev, acc);
                }
                __mmask16 m = T - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (T - i)) - 1);
                _mm512_mask_storeu_ps(o + i, m, acc);
            }
            for (int j = T; j < Tp; j++) o[j] = 0.f;
        }
        free(xp);
        free(z);
    }
    return failed ? -1 : 0;
}

/* The same activation on a time-major bf16 signal x (B, T, C) -> out (B, T, C) bf16 (fp32 arithmetic, the
   same sums in the same order, one rounding at the end), 16 channels per vector: alpha, inv_beta (C) fp32.
   Outputs are made in chunks of AA_CHUNK samples, each from the chunk's 2·AA_CHUNK + 12 up-sampled values
   (kept in a scratch of 16-channel vectors). Returns 0, or -1 when scratch memory is not available. */
#define AA_CHUNK 128
int itf_aa_snake_tm_bf16(const uint16_t *x, int B, int T, int C, const float *alpha, const float *inv_beta,
                         const float *up2, const float *down, uint16_t *out) {
    int blocks = (C + 15) / 16, chunks = (T + AA_CHUNK - 1) / AA_CHUNK, failed = 0;
    #pragma omp parallel
    {
        __m512 *z = (__m512 *)aligned_alloc(64, sizeof(__m512) * (2 * AA_CHUNK + 12));
        #pragma omp for collapse(2) schedule(static)
        for (int bc = 0; bc < B * blocks; bc++)
            for (int ch = 0; ch < chunks; ch++) {
                if (!z) { failed = 1; continue; }
                int b = bc / blocks, c0 = (bc % blocks) * 16, t0 = ch * AA_CHUNK;
                int t1 = t0 + AA_CHUNK < T ? t0 + AA_CHUNK : T;
                __mmask16 m = C - c0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c0)) - 1);
                const uint16_t *xb = x + (size_t)b * T * C + c0;
                __m512 a = _mm512_maskz_loadu_ps(m, alpha + c0), ib = _mm512_maskz_loadu_ps(m, inv_beta + c0);
                /* z[j] for j = 2·t0 − 5 .. 2·t1 + 5, the up-sampled index clamped to [0, 2T − 1] (replicate) */
                for (int j = 2 * t0 - 5; j <= 2 * t1 + 6; j++) {
                    int jj = j < 0 ? 0 : (j > 2 * T - 1 ? 2 * T - 1 : j), i = jj >> 1;
                    __m512 u = _mm512_setzero_ps();
                    for (int k = 0; k < 6; k++) {   /* u[2i] = Σ up2[2k+1]·x[i+2−k], u[2i+1] = Σ up2[2k]·x[i+3−k] */
                        int t = i + (jj & 1) + 2 - k;
                        t = t < 0 ? 0 : (t > T - 1 ? T - 1 : t);
                        u = _mm512_fmadd_ps(_mm512_set1_ps(up2[2 * k + 1 - (jj & 1)]),
                                            bf16_load_masked(xb + (size_t)t * C, m), u);
                    }
                    z[j - (2 * t0 - 5)] = _mm512_add_ps(u, _mm512_mul_ps(sin2_ps(_mm512_mul_ps(u, a)), ib));
                }
                for (int i = t0; i < t1; i++) {   /* out[i] = Σ down[k]·z[2i + k − 5] */
                    __m512 acc = _mm512_setzero_ps();
                    for (int k = 0; k < 12; k++)
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(down[k]), z[2 * (i - t0) + k], acc);
                    _mm256_mask_storeu_epi16(out + ((size_t)b * T + i) * C + c0, m, bf16_round(acc));
                }
            }
        free(z);
    }
    return failed ? -1 : 0;
}

/* ---- per-tensor asymmetric uint8 quantisation (the activations of the many-row int8 GEMM) ----------- */

/* out = clamp(round(x / scale) + zp, 0, 255) with scale = (max(x, 0) − min(x, 0)) / 255 (1 when x is all
   zeros) and zp = round(−min / scale): 0 is exact. Writes scale and zp. One body for fp32 and bf16 x,
   16 values per vector (the tail masked); round to nearest even, as nearbyintf. */
static inline __m512 load16(const float *x, long i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x + i); }
static inline __m512 load16_bf16(const uint16_t *x, long i, __mmask16 m) { return bf16_load_masked(x + i, m); }
static inline __mmask16 tail_mask(long n, long i) { return n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1); }

#define QUANTIZE_U8(LOAD)                                                                                   \
    float lo = 0.f, hi = 0.f;                                                                               \
    _Pragma("omp parallel reduction(min : lo) reduction(max : hi)")                                         \
    {                                                                                                       \
        __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();                                        \
        _Pragma("omp for schedule(static)")                                                                 \
        for (long i = 0; i < n; i += 16) {                                                                  \
            __m512 v = LOAD(x, i, tail_mask(n, i));   /* masked lanes read 0: inside [lo, hi] already */   \
            vlo = _mm512_min_ps(vlo, v);                                                                    \
            vhi = _mm512_max_ps(vhi, v);                                                                    \
        }                                                                                                   \
        float l = _mm512_reduce_min_ps(vlo), h = _mm512_reduce_max_ps(vhi);                                 \
        lo = l < lo ? l : lo;                                                                               \
        hi = h > hi ? h : hi;                                                                               \
    }                                                                                                       \
    float s = hi > lo ? (hi - lo) / 255.f : 1.f, inv = 1.f / s;                                             \
    int z = (int)nearbyintf(-lo * inv);                                                                     \
    z = z < 0 ? 0 : (z > 255 ? 255 : z);                                                                    \
    const __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps((float)z);                                 \
    const __m512 v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.f);                                    \
    _Pragma("omp parallel for schedule(static)")                                                            \
    for (long i = 0; i < n; i += 16) {                                                                      \
        __mmask16 m = tail_mask(n, i);                                                                      \
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(LOAD(x, i, m), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); \
        v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), v0), v255);                                   \
        _mm_mask_storeu_epi8(out + i, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));                      \
    }                                                                                                       \
    *scale_out = s;                                                                                         \
    *zp_out = z;

void itf_quantize_u8(const float *x, long n, uint8_t *out, float *scale_out, int *zp_out) {
    QUANTIZE_U8(load16)
}

void itf_quantize_u8_bf16(const uint16_t *x, long n, uint8_t *out, float *scale_out, int *zp_out) {
    QUANTIZE_U8(load16_bf16)
}
