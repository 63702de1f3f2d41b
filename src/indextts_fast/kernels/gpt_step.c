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

static void product(const quantised_t *in, int S, int K, const itf_block_t *b, int i, int N, const float *residual,
                    int gelu, float *y) {
    epilogue_t ep = {b->bias[i], residual, gelu};
    #pragma omp for schedule(static)
    for (int g = 0; g < (N + 63) / 64; g++) itf_gemv_group(g, in->xq, in->sx, in->zp, S, K, b->w[i], b->wsum[i], b->ws[i], N, &ep, y);
}

/* x (S, D) fp32, in place. k, v: the cache, (L, H, cap, d) bf16 with the given layer and head strides; the
   step's rows go to positions lo .. lo+S-1, attention reads positions 0 .. lo+S-1 with the additive (S, lo+S)
   mask (NULL: all). d a multiple of 16 (<= 256), S <= 8. Returns 0, -1 without scratch memory, -2 for a
   bad shape. */
int itf_gpt_step(float *x, int S, int D, int L, const itf_block_t *blocks, float eps, uint16_t *k, uint16_t *v,
                 long layer_stride, long head_stride, int lo, const float *mask, int H, int d, float scale) {
    if (d % 16 || d > 256 || S < 1 || S > 8 || H * d != D) return -2;
    int n = lo + S, F = 4 * D, Dp = (D + 3) / 4 * 4, Fp = (F + 3) / 4 * 4;   /* rows padded to 4 bytes */
    float *qkv = malloc(sizeof(float) * (size_t)S * 3 * D), *a = malloc(sizeof(float) * (size_t)S * D);
    float *h = malloc(sizeof(float) * (size_t)S * F), *xn = malloc(sizeof(float) * (size_t)S * D);
    float *scores = malloc(sizeof(float) * (size_t)H * S * (n + 16));
    quantised_t in = {aligned_alloc(64, ((size_t)S * Fp + 63) / 64 * 64), malloc(sizeof(float) * S), malloc(sizeof(int32_t) * S)};
    int ok = qkv && a && h && xn && scores && in.xq && in.sx && in.zp;
    if (ok) {
        #pragma omp parallel
        for (int l = 0; l < L; l++) {
            const itf_block_t *b = blocks + l;
            uint16_t *kl = k + (size_t)l * layer_stride, *vl = v + (size_t)l * layer_stride;
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln1_w, b->ln1_b, eps, xn);
                itf_quantize_rows(xn, S, D, Dp, in.xq, in.sx, in.zp);
            }
            product(&in, S, D, b, 0, 3 * D, NULL, 0, qkv);
            #pragma omp for schedule(static)
            for (int hh = 0; hh < H; hh++) {       /* this head's new keys and values, then its attention */
                for (int r = 0; r < S; r++)
                    for (int c = 0; c < d; c += 16) {
                        const float *row = qkv + (size_t)r * 3 * D + hh * d + c;
                        size_t at = (size_t)hh * head_stride + (size_t)(lo + r) * d + c;
                        _mm256_storeu_si256((__m256i *)(kl + at), bf16_round(_mm512_loadu_ps(row + D)));
                        _mm256_storeu_si256((__m256i *)(vl + at), bf16_round(_mm512_loadu_ps(row + 2 * D)));
                    }
                itf_attend_head(hh, qkv, 3 * D, kl, vl, head_stride, n, mask, S, H, d, scale,
                                scores + (size_t)hh * S * (n + 16), a);
            }
            #pragma omp single
            itf_quantize_rows(a, S, D, Dp, in.xq, in.sx, in.zp);
            product(&in, S, D, b, 1, D, x, 0, x);
            #pragma omp single
            {
                itf_layer_norm_rows(x, S, D, b->ln2_w, b->ln2_b, eps, xn);
                itf_quantize_rows(xn, S, D, Dp, in.xq, in.sx, in.zp);
            }
            product(&in, S, D, b, 2, F, NULL, 1, h);
            #pragma omp single
            itf_quantize_rows(h, S, F, Fp, in.xq, in.sx, in.zp);
            product(&in, S, F, b, 3, D, x, 0, x);
        }
    }
    free(qkv); free(a); free(h); free(xn); free(scores); free(in.xq); free(in.sx); free(in.zp);
    return ok ? 0 : -1;
}
