/* A whole int8 GPT-2 decode step (every block) in one call and one parallel region.

   Per block, for S rows x (S, D) fp32, updated in place:
     qkv = LN1(x)·Wattnᵀ + b          k, v of the S new positions -> the bf16 cache (slots lo .. lo+S-1)
     a   = attention(q, cache[:n])     x += a·Wprojᵀ + b
     h   = GELU(LN2(x)·Wfcᵀ + b)       x += h·Wmlpᵀ + b
   with the int8 GEMV (itf_gemv_group, activations quantised per row) and the decode attention
   (itf_attend_head) of native.c: the same arithmetic as calling them one by one, without a Python round
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

/* AMX from this many rows (fewer: VPDPBUSD already runs at the weights' read speed); both give the same bits. */
#define AMX_ROWS 4

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
   (<= 256). amx: 1 to take the products of 4+ rows on AMX tiles (the CPU has AMX-INT8
   and itf_amx_init succeeded; the same bits as without). Returns 0, -1 without scratch memory, -2 for a bad
   shape. */
int itf_gpt_step(float *x, int S, int D, int L, const itf_block_t *blocks, float eps, int G, const itf_group_t *groups,
                 int H, int d, float scale, int amx) {
    if (d % 16 || d > 256 || S < 1 || G < 1 || H * d != D) return -2;
    int F = 4 * D, Dp = (D + 3) / 4 * 4, Fp = (F + 3) / 4 * 4, total = 0;   /* rows padded to 4 bytes */
    size_t scratch = 0;
    int *first = malloc(sizeof(int) * (size_t)G);
    size_t *at = malloc(sizeof(size_t) * (size_t)G);
    if (!first || !at) { free(first); free(at); return -1; }
    for (int g = 0; g < G; g++) {
        const itf_group_t *gr = groups + g;
        if (gr->rows < 1 || gr->lo < 0) { free(first); free(at); return -2; }
        first[g] = total, at[g] = scratch;
        total += gr->rows;
        if (gr->nkeys < 1 || gr->nkeys > gr->lo + gr->rows) { free(first); free(at); return -2; }
        scratch += (size_t)H * (gr->nkeys + 16);
    }
    if (total != S) { free(first); free(at); return -2; }
    float *qkv = malloc(sizeof(float) * (size_t)S * 3 * D), *a = malloc(sizeof(float) * (size_t)S * D);
    float *h = malloc(sizeof(float) * (size_t)S * F), *xn = malloc(sizeof(float) * (size_t)S * D);
    float *scores = malloc(sizeof(float) * scratch);
    quantised_t in = {aligned_alloc(64, ((size_t)(S + 15) / 16 * 16 * Fp + 63) / 64 * 64),   /* whole AMX row blocks */
                       malloc(sizeof(float) * S), malloc(sizeof(int32_t) * S)};
    int ok = qkv && a && h && xn && scores && in.xq && in.sx && in.zp;
    if (ok) {
        #pragma omp parallel
        {
        if (amx) itf_amx_tiles();   /* each thread's tile configuration */
        for (int l = 0; l < L; l++) {
            const itf_block_t *b = blocks + l;
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln1_w, b->ln1_b, eps, xn);
                itf_quantize_rows(xn, S, D, Dp, in.xq, in.sx, in.zp);
            }
            product(&in, S, D, b, 0, 3 * D, NULL, 0, qkv, amx);
            #pragma omp for schedule(static)
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
                int L = groups[g].nkeys;
                itf_attend_head(hh, qkv + (size_t)r0 * 3 * D, 3 * D, kl, vl, hs, L, groups[g].keys, R, H, d, scale,
                                scores + at[g] + (size_t)hh * (L + 16), a + (size_t)r0 * D);
            }
            #pragma omp single
            itf_quantize_rows(a, S, D, Dp, in.xq, in.sx, in.zp);
            product(&in, S, D, b, 1, D, x, 0, x, amx);
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln2_w, b->ln2_b, eps, xn);
                itf_quantize_rows(xn, S, D, Dp, in.xq, in.sx, in.zp);
            }
            product(&in, S, D, b, 2, F, NULL, 1, h, amx);
            #pragma omp single
            itf_quantize_rows(h, S, F, Fp, in.xq, in.sx, in.zp);
            product(&in, S, F, b, 3, D, x, 0, x, amx);
        }
        if (amx) itf_amx_release();
        }
    }
    free(qkv); free(a); free(h); free(xn); free(scores); free(in.xq); free(in.sx); free(in.zp); free(first); free(at);
    return ok ? 0 : -1;
}
