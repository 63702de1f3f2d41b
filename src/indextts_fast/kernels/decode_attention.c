/* Attention of one GPT decode step over a bf16 KV cache (AVX-512).

   out (S, H·d) fp32 = softmax(scale · q·K[keys]ᵀ) · V[keys] for each row and head h: row r attends the L cache
   positions keys[r·L .. r·L+L-1] (its prompt and its own ancestry, in cache order), or 0 .. L-1 when keys is
   NULL. q (S, H, d) fp32, rows q_stride floats apart; K, V: the layer's (H, cap, d) bf16 cache (head stride
   cap·d). d a multiple of 16 (<= 256).

   Per row: scores of 16 keys at a time (one transpose-and-add), an exact softmax, then P·V in two FMA chains
   (even and odd keys). A row reads only its own keys, so its result does not depend on the other rows (or
   requests) of the step, and a beam costs its own history, not the whole cache.

   The beams of one request share almost all their keys (the prompt, and the ancestry up to where they split:
   at step 75 of a 3-beam search, 135 distinct positions for 3 x 131 keys). So up to GROUP_ROWS rows go
   together: over the leading keys that all of them list, each key row is loaded and widened once and used
   for every row; past that, each row goes on alone. Every row still computes each of its products, sums and
   FMA chains in the same order, so the bits are those of attending it alone. */
#include <math.h>
#include <stdlib.h>
#include "simd.h"
#include "kernels.h"

#define GROUP_ROWS ITF_GROUP_ROWS

/* Lane k of the result = the sum of v[k]'s 16 lanes (a 16x16 transpose-and-add: 46 instructions for 16
   dot products instead of 16 horizontal reductions). */
static inline __m512 hsum16(const __m512 *v) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)     /* 256-bit halves folded: [v2i(lo+hi) | v2i+1(lo+hi)] */
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 4; i++)     /* quad L of b[i]: 4 partial sums of v[4i + L] */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int i = 0; i < 2; i++)     /* quad L of c[i]: 2 partials of v[8i + L], 2 of v[8i + 4 + L] */
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* lane 4L + m of f: the sum of v[4m + L] */
    __m512 f = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, f);
}

/* Vector c of a bf16 value row as fp32. With an even count of vectors, vector 2w holds the EVEN elements of
   32w .. 32w+31 and vector 2w+1 the odd ones: one shift or one mask per 16 values instead of a widening
   shuffle and a shift (port 5 was the attention's bottleneck); each output dimension still sums its own
   products in the same order (the same bits), finish_row puts the dimensions back in order at the end. */
static inline __attribute__((always_inline)) __m512 value16(const uint16_t *v, int c, int nv) {
    if (nv % 2) return load_bf16x16(v + 16 * c);
    __m512i x = _mm512_loadu_si512(v + 32 * (c >> 1));
    return _mm512_castsi512_ps((c & 1) ? _mm512_and_si512(x, _mm512_set1_epi32((int)0xFFFF0000u))
                                       : _mm512_slli_epi32(x, 16));
}

static inline const uint16_t *key_row(const uint16_t *X, const int32_t *idx, int j, int d) {
    return X + (size_t)(idx ? idx[j] : j) * d;
}

/* How many leading entries the key lists of rows 0 .. rb-1 (L apart) have in common. */
static int common_keys(const int32_t *idx, int rb, int L) {
    if (!idx) return L;
    int n = L;
    for (int r = 1; r < rb; r++) {
        const int32_t *o = idx + (size_t)r * L;
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            __mmask16 ne = _mm512_cmpneq_epi32_mask(_mm512_loadu_si512(idx + j), _mm512_loadu_si512(o + j));
            if (ne) { j += __builtin_ctz(ne); break; }
        }
        if (j + 16 > n) while (j < n && idx[j] == o[j]) j++;
        n = j;
    }
    return n;
}

/* Scores of keys j0 .. j1-1 (whole blocks of 16; the keys of row 0's list, which rows 1 .. rb-1 share there)
   for rb rows: sc[r][j] = scale · q_r·k_j. */
static inline __attribute__((always_inline)) void score_blocks(const float *const *q, const int rb, const uint16_t *Kh,
                                                               const int32_t *idx, int j0, int j1, int L, int d,
                                                               const int nv, float scale, float *const *sc) {
    __m512 qv[GROUP_ROWS][16];
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < nv; c++) qv[r][c] = _mm512_loadu_ps(q[r] + 16 * c);
    for (int j = j0; j < j1; j += 16) {
        __m512 prod[GROUP_ROWS][16];
        for (int jj = 0; jj < 16; jj++) {
            const uint16_t *kr = key_row(Kh, idx, j + jj, d);
            if (j + jj + 16 < L)   /* the gathered rows are no stream the hardware prefetcher follows */
                for (int c = 0; c < d; c += 32)
                    _mm_prefetch((const char *)(key_row(Kh, idx, j + jj + 16, d) + c), _MM_HINT_T0);
            __m512 kv[16];
            for (int c = 0; c < nv; c++) kv[c] = load_bf16x16(kr + 16 * c);
            for (int r = 0; r < rb; r++) {
                prod[r][jj] = _mm512_mul_ps(qv[r][0], kv[0]);
                for (int c = 1; c < nv; c++) prod[r][jj] = _mm512_fmadd_ps(qv[r][c], kv[c], prod[r][jj]);
            }
        }
        for (int r = 0; r < rb; r++) _mm512_storeu_ps(sc[r] + j, _mm512_mul_ps(hsum16(prod[r]), _mm512_set1_ps(scale)));
    }
}

/* One row's keys j0 .. L-1 (j0 a multiple of 16): whole blocks, then the last < 16 keys one by one. */
static inline __attribute__((always_inline)) void score_rest(const float *q, const uint16_t *Kh, const int32_t *idx,
                                                             int j0, int L, int d, const int nv, float scale,
                                                             float *sc) {
    int j1 = j0 + (L - j0) / 16 * 16;
    score_blocks((const float *const *)&q, 1, Kh, idx, j0, j1, L, d, nv, scale, (float *const *)&sc);
    for (int j = j1; j < L; j++) {
        const uint16_t *kr = key_row(Kh, idx, j, d);
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), load_bf16x16(kr));
        for (int c = 1; c < nv; c++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), load_bf16x16(kr + 16 * c), acc);
        sc[j] = _mm512_reduce_add_ps(acc) * scale;
    }
}

/* sc[0 .. L-1] := exp(sc − max), 16 at a time; returns 1 / their sum. */
static inline float softmax_row(float *sc, int L) {
    __m512 vmx = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
    for (int k = 0; k < L; k += 16) {
        __mmask16 m = L - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (L - k)) - 1);
        vmx = _mm512_mask_max_ps(vmx, m, vmx, _mm512_maskz_loadu_ps(m, sc + k));
    }
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
    for (int k = 0; k < L; k += 16) {
        __mmask16 m = L - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (L - k)) - 1);
        __m512 e = _mm512_maskz_mov_ps(m, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + k), mx)));
        vsum = _mm512_add_ps(vsum, e);
        _mm512_mask_storeu_ps(sc + k, m, e);
    }
    return 1.f / _mm512_reduce_add_ps(vsum);
}

/* P·V over keys k0 .. k1-1 (pairs; row 0's list, shared by the rb rows there): acc[r] holds row r's two
   chains (acc[r][0][c]: even keys, acc[r][1][c]: odd keys), carried in and out. Columns in chunks whose
   accumulators fit the registers (several passes over the keys for several rows: the rows are in L1). */
static inline __attribute__((always_inline)) void value_pairs(const float *const *p, const int rb, const uint16_t *Vh,
                                                              const int32_t *idx, int k0, int k1, int L, int d,
                                                              const int nv, __m512 (*acc)[2][16]) {
    const int cw = rb == 1 ? nv : nv % 2 ? 1 : 2;
    for (int c0 = 0; c0 < nv; c0 += cw) {
        __m512 x0[GROUP_ROWS][16], x1[GROUP_ROWS][16];
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < cw; c++) x0[r][c] = acc[r][0][c0 + c], x1[r][c] = acc[r][1][c0 + c];
        for (int k = k0; k < k1; k += 2) {
            const uint16_t *v0 = key_row(Vh, idx, k, d), *v1 = key_row(Vh, idx, k + 1, d);
            if (c0 == 0 && k + 17 < L)
                for (int c = 0; c < d; c += 32) {
                    _mm_prefetch((const char *)(key_row(Vh, idx, k + 16, d) + c), _MM_HINT_T0);
                    _mm_prefetch((const char *)(key_row(Vh, idx, k + 17, d) + c), _MM_HINT_T0);
                }
            for (int c = 0; c < cw; c++) {
                __m512 w0 = value16(v0, c0 + c, nv), w1 = value16(v1, c0 + c, nv);
                for (int r = 0; r < rb; r++) {
                    x0[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[r][k]), w0, x0[r][c]);
                    x1[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[r][k + 1]), w1, x1[r][c]);
                }
            }
        }
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < cw; c++) acc[r][0][c0 + c] = x0[r][c], acc[r][1][c0 + c] = x1[r][c];
    }
}

/* One row's P·V from key k0 (even) on, the odd last key into the even chain; o = (even + odd) · inv, the
   dimensions back in order. */
static inline __attribute__((always_inline)) void value_rest(const float *p, const uint16_t *Vh, const int32_t *idx,
                                                             int k0, int L, int d, const int nv, __m512 (*acc)[16],
                                                             float inv, float *o) {
    int k1 = k0 + (L - k0) / 2 * 2;
    value_pairs((const float *const *)&p, 1, Vh, idx, k0, k1, L, d, nv, (__m512 (*)[2][16])acc);
    __m512 *a0 = acc[0], *a1 = acc[1], vinv = _mm512_set1_ps(inv);
    if (k1 < L) {
        const uint16_t *v0 = key_row(Vh, idx, k1, d);
        for (int c = 0; c < nv; c++) a0[c] = _mm512_fmadd_ps(_mm512_set1_ps(p[k1]), value16(v0, c, nv), a0[c]);
    }
    if (nv % 2) {
        for (int c = 0; c < nv; c++) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(_mm512_add_ps(a0[c], a1[c]), vinv));
        return;
    }
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (int c = 0; c < nv; c += 2) {     /* even and odd dimensions back in order */
        __m512 even = _mm512_mul_ps(_mm512_add_ps(a0[c], a1[c]), vinv);
        __m512 odd = _mm512_mul_ps(_mm512_add_ps(a0[c + 1], a1[c + 1]), vinv);
        _mm512_storeu_ps(o + 16 * c, _mm512_permutex2var_ps(even, lo, odd));
        _mm512_storeu_ps(o + 16 * c + 16, _mm512_permutex2var_ps(even, hi, odd));
    }
}

/* rb rows (r-th: query q[r], key list idx + r·L, scores sc[r], output o[r]) whose lists agree on their first
   `common` keys: those together, the rest row by row. */
static inline __attribute__((always_inline)) void attend_rows(const float *const *q, const int rb, const uint16_t *Kh,
                                                              const uint16_t *Vh, int L, const int32_t *idx,
                                                              int common, int d, const int nv, float scale,
                                                              float *const *sc, float *const *o) {
    int s16 = common / 16 * 16, s2 = common / 2 * 2;
    score_blocks(q, rb, Kh, idx, 0, s16, L, d, nv, scale, sc);
    float inv[GROUP_ROWS];
    for (int r = 0; r < rb; r++) {
        score_rest(q[r], Kh, idx ? idx + (size_t)r * L : NULL, s16, L, d, nv, scale, sc[r]);
        inv[r] = softmax_row(sc[r], L);
    }
    __m512 acc[GROUP_ROWS][2][16];
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < nv; c++) acc[r][0][c] = acc[r][1][c] = _mm512_setzero_ps();
    value_pairs((const float *const *)sc, rb, Vh, idx, 0, s2, L, d, nv, acc);
    for (int r = 0; r < rb; r++)
        value_rest(sc[r], Vh, idx ? idx + (size_t)r * L : NULL, s2, L, d, nv, acc[r], inv[r], o[r]);
}

static void attend_rows_nv(const float *const *q, int rb, const uint16_t *Kh, const uint16_t *Vh, int L,
                           const int32_t *idx, int common, int d, const int nv, float scale, float *const *sc,
                           float *const *o) {
    switch (rb) {   /* the row count as a constant: accumulators in registers */
        case 3: attend_rows(q, 3, Kh, Vh, L, idx, common, d, nv, scale, sc, o); break;
        case 2: attend_rows(q, 2, Kh, Vh, L, idx, common, d, nv, scale, sc, o); break;
        default: attend_rows(q, 1, Kh, Vh, L, idx, L, d, nv, scale, sc, o); break;
    }
}

/* Head h of every row, GROUP_ROWS rows at a time. sc: scratch of itf_score_rows(S) · (L + 16) floats. */
void itf_attend_head(int h, const float *q, long q_stride, const uint16_t *K, const uint16_t *V, long head_stride,
                     int L, const int32_t *keys, int S, int H, int d, float scale, float *sc, float *out) {
    const uint16_t *Kh = K + (size_t)h * head_stride, *Vh = V + (size_t)h * head_stride;
    for (int r0 = 0; r0 < S; r0 += GROUP_ROWS) {
        int rb = itf_score_rows(S - r0);
        const int32_t *idx = keys ? keys + (size_t)r0 * L : NULL;
        int common = common_keys(idx, rb, L);
        const float *qr[GROUP_ROWS];
        float *scr[GROUP_ROWS], *o[GROUP_ROWS];
        for (int r = 0; r < rb; r++) {
            qr[r] = q + (size_t)(r0 + r) * q_stride + (size_t)h * d;
            scr[r] = sc + (size_t)r * (L + 16);
            o[r] = out + ((size_t)(r0 + r) * H + h) * d;
        }
        switch (d / 16) {   /* the head width as a constant */
            case 4: attend_rows_nv(qr, rb, Kh, Vh, L, idx, common, d, 4, scale, scr, o); break;
            case 8: attend_rows_nv(qr, rb, Kh, Vh, L, idx, common, d, 8, scale, scr, o); break;
            case 2: attend_rows_nv(qr, rb, Kh, Vh, L, idx, common, d, 2, scale, scr, o); break;
            case 1: attend_rows_nv(qr, rb, Kh, Vh, L, idx, common, d, 1, scale, scr, o); break;
            default: attend_rows_nv(qr, rb, Kh, Vh, L, idx, common, d, d / 16, scale, scr, o); break;
        }
    }
}

/* All heads, in parallel (keys as itf_attend_head's). Returns 0, -1 when scratch memory is not available, -2
   for an unsupported shape. */
int itf_attend_bf16(const float *q, long q_stride, const uint16_t *K, const uint16_t *V, long head_stride, int L,
                    const int32_t *keys, int S, int H, int d, float scale, float *out) {
    if (d % 16 || d > 256 || S < 1 || L < 1) return -2;
    size_t per_head = (size_t)itf_score_rows(S) * (L + 16);
    float *scores = (float *)malloc(sizeof(float) * (size_t)H * per_head);
    if (!scores) return -1;
    #pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++)
        itf_attend_head(h, q, q_stride, K, V, head_stride, L, keys, S, H, d, scale, scores + (size_t)h * per_head, out);
    free(scores);
    return 0;
}
