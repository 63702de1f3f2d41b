/* A whole int8 GPT-2 decode step (every block) in one call and one parallel region.

   Per block, for S rows x (S, D) fp32, updated in place:
     qkv = LN1(x)·Wattnᵀ + b          k, v of the S new positions -> the bf16 cache (slots lo .. lo+S-1)
     a   = attention(q, cache[:n])     x += a·Wprojᵀ + b
     h   = GELU(LN2(x)·Wfcᵀ + b)       x += h·Wmlpᵀ + b
   with the int8 GEMV (itf_gemv_group, activations quantised per row) and the decode attention
   (itf_attend_head) of decode_attention.c: the same arithmetic as calling them one by one, without a Python round
   trip and a thread-pool fork/join per product (~15-20 µs each, 96+ per step). */
#include <stdlib.h>
#include <string.h>
#include "kernels.h"
#include "simd.h"

typedef struct {                 /* one block's weights: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj */
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const int8_t *w[4];          /* packed by precision.pack_vnni */
    const int32_t *wsum[4];
    const float *ws[4], *bias[4];
} itf_block_t;

typedef struct {                 /* what the rows of one product share: quantised input and its scales */
    uint8_t *xq;
    float *sx;
    int32_t *zp;
} quantised_t;

/* AMX from this many rows (fewer: VPDPBUSD is as fast or faster, `python -m indextts_fast.kernels`); the same bits. */
#define AMX_ROWS 5

static void product(const quantised_t *in, int S, int K, const itf_block_t *b, int i, int N, const float *residual,
                    int gelu, float *y, int amx) {
    epilogue_t ep = {b->bias[i], residual, gelu};
    int tiles = amx && S >= AMX_ROWS && K % 64 == 0;
    #pragma omp for schedule(static)
    for (int g = 0; g < (N + 63) / 64; g++)
        if (tiles) itf_gemv_group_amx(g, in->xq, in->sx, in->zp, S, K, b->w[i], b->wsum[i], b->ws[i], N, &ep, y);
        else itf_gemv_group(g, in->xq, in->sx, in->zp, S, K, b->w[i], b->wsum[i], b->ws[i], N, &ep, y);
}

/* x (S, D) fp32, in place: the rows of G requests (itf_group_t, kernels.h), each with its own bf16 cache; the
   products run on all S rows at once (every weight read once per step, each row's result independent of the
   others: per-row quantisation, exact int32 sums), the attention per request and head. d a multiple of 16
   (<= 256). amx: 1 to take the products of AMX_ROWS+ rows on AMX tiles (the CPU has AMX-INT8
   and itf_amx_init succeeded; the same bits as without). Returns 0, -1 without scratch memory, -2 for a bad
   shape. */
/* LayerNorm (when w) and per-row quantisation of S rows, the rows split across the threads. */
static void ln_quantize(const float *x, int S, int K, int Kp, const float *w, const float *b, float eps, float *xn,
                        const quantised_t *in) {
    #pragma omp for schedule(static)
    for (int m = 0; m < S; m++) {
        const float *row = x + (size_t)m * K;
        if (w) {
            itf_layer_norm_rows(row, 1, K, w, b, eps, xn + (size_t)m * K);
            row = xn + (size_t)m * K;
        }
        itf_quantize_rows(row, 1, K, Kp, in->xq + (size_t)m * Kp, in->sx + m, in->zp + m);
    }
}

/* The calling thread's scratch, kept between steps (a step's buffers are a few MB at most: mapping and
   faulting them in anew every step cost more than the step's own quantisation). */
static __thread char *kept;
static __thread size_t kept_bytes;

static char *scratch_of(size_t bytes) {
    if (bytes > kept_bytes) {
        free(kept);
        kept_bytes = (bytes + 4095) / 4096 * 4096;
        kept = aligned_alloc(64, kept_bytes);
        if (!kept) kept_bytes = 0;
    }
    return kept;
}

#define CARVE(type, n) (type *)(base + used); used += ((size_t)(n) * sizeof(type) + 63) / 64 * 64

int itf_gpt_step(float *x, int S, int D, int L, const itf_block_t *blocks, float eps, int G, const itf_group_t *groups,
                 int H, int d, float scale, int amx) {
    if (d % 16 || d > 256 || S < 1 || G < 1 || H * d != D) return -2;
    int F = 4 * D, Dp = (D + 3) / 4 * 4, Fp = (F + 3) / 4 * 4, S16 = (S + 15) / 16 * 16;
    long keys = itf_groups_layout(groups, G, S, H, 16, NULL, NULL);
    if (keys < 0) return -2;
    size_t need = 64 * 10 + sizeof(float) * ((size_t)S * (3 * D + D + F + D) + (size_t)keys + 2 * S) + (size_t)S16 * Fp
                  + (sizeof(int) + sizeof(size_t)) * G;
    char *base = scratch_of(need);
    if (!base) return -1;
    size_t used = 0;
    float *qkv = CARVE(float, (size_t)S * 3 * D);
    float *a = CARVE(float, (size_t)S * D);
    float *h = CARVE(float, (size_t)S * F);
    float *xn = CARVE(float, (size_t)S * D);
    float *scores = CARVE(float, keys);
    uint8_t *xq = CARVE(uint8_t, (size_t)S16 * Fp);   /* whole AMX row blocks */
    float *sx = CARVE(float, S);
    int32_t *zp = CARVE(int32_t, S);
    int *first = CARVE(int, G);
    size_t *at = CARVE(size_t, G);
    quantised_t in = {xq, sx, zp};
    itf_groups_layout(groups, G, S, H, 16, first, at);
    #pragma omp parallel
    {
        if (amx) itf_amx_tiles();   /* each thread's tile configuration */
        for (int l = 0; l < L; l++) {
            const itf_block_t *b = blocks + l;
            ln_quantize(x, S, D, Dp, b->ln1_w, b->ln1_b, eps, xn, &in);
            product(&in, S, D, b, 0, 3 * D, NULL, 0, qkv, amx);
            #pragma omp for schedule(dynamic, 2)   /* row-heads of unequal cost: whoever is free takes the next */
            for (int gh = 0; gh < G * H; gh++) {   /* one request's head: its new keys and values, its attention */
                int g = gh / H, hh = gh % H, r0 = first[g], R = groups[g].rows, lo = groups[g].lo;
                uint16_t *kl = (uint16_t *)groups[g].k + (size_t)l * groups[g].layer_stride;
                uint16_t *vl = (uint16_t *)groups[g].v + (size_t)l * groups[g].layer_stride;
                long hs = groups[g].head_stride;
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < d; c += 16) {
                        const float *row = qkv + (size_t)(r0 + r) * 3 * D + hh * d + c;
                        size_t pos = (size_t)hh * hs + (size_t)(lo + r) * d + c;
                        _mm256_storeu_si256((__m256i *)(kl + pos), bf16_round(_mm512_loadu_ps(row + D)));
                        _mm256_storeu_si256((__m256i *)(vl + pos), bf16_round(_mm512_loadu_ps(row + 2 * D)));
                    }
                int n = groups[g].nkeys;
                itf_attend_head(hh, qkv + (size_t)r0 * 3 * D, 3 * D, kl, vl, hs, n, groups[g].keys, R, H, d, scale,
                                scores + at[g] + (size_t)hh * itf_score_rows(R) * (n + 16), a + (size_t)r0 * D);
            }
            ln_quantize(a, S, D, Dp, NULL, NULL, 0.f, NULL, &in);
            product(&in, S, D, b, 1, D, x, 0, x, amx);
            ln_quantize(x, S, D, Dp, b->ln2_w, b->ln2_b, eps, xn, &in);
            product(&in, S, D, b, 2, F, NULL, 1, h, amx);
            ln_quantize(h, S, F, Fp, NULL, NULL, 0.f, NULL, &in);
            product(&in, S, F, b, 3, D, x, 0, x, amx);
        }
        if (amx) itf_amx_release();
    }
    return 0;
}
