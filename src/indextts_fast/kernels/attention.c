/* Non-causal attention of a bf16 DiT step: softmax(scale·q·kᵀ, keys < len)·v, on AMX tiles (TDPBF16PS)
   or, on CPUs with AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake), with VDPBF16PS.

   Per (batch, head): k is packed once as kᵀ in pairs (d/2 rows of 32-bit [k(j, 2r), k(j, 2r+1)], keys
   padded to a multiple of 32 with zeros) and v as key pairs ((keys/2) rows of [v(2p, n), v(2p+1, n)]),
   the VNNI layouts a B tile wants (and VDPBF16PS's second operand). Then per block of 32 query rows: the
   scores of all keys in fp32, an exact softmax over the valid keys (fp32, P rounded to bf16), and P·v
   accumulated in fp32. The scores of a block stay in L1/L2 (32 x keys x 4 B), so unlike a flash kernel no
   running rescale is needed. d = 64 only (the DiT's head width). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "simd.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands the AMX tile state to a process only on request; 0 when granted (or already held). */
int itf_amx_init(void) { return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? -1 : 0; }

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

__attribute__((target("amx-tile,amx-bf16")))
void itf_amx_tiles(void) {   /* tiles 0-7: 16 rows x 64 bytes (16 x 32 bf16 or 16 x 16 fp32) */
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    /* GCC 12 does not treat ldtilecfg as reading its operand and drops the stores above as dead (the CPU
       then faults on a config of zero-width tiles): the empty asm makes them visible first. */
    __asm__ __volatile__("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
}

/* 16 x 16 32-bit transpose in registers: four block swaps (8, 4, 2, 1) of two-row permutes (gathers are
   slow on CPUs with the Downfall mitigation). */
static void transpose16(__m512i *r) {
    for (int s = 8; s; s >>= 1) {
        int ia[16], ib[16];
        for (int c = 0; c < 16; c++) {
            ia[c] = c & s ? 16 + c - s : c;
            ib[c] = c & s ? 16 + c : c + s;
        }
        __m512i xa = _mm512_loadu_si512(ia), xb = _mm512_loadu_si512(ib);
        for (int i = 0; i < 16; i++)
            if (!(i & s)) {
                __m512i a = r[i], b = r[i + s];
                r[i] = _mm512_permutex2var_epi32(a, xa, b);
                r[i + s] = _mm512_permutex2var_epi32(a, xb, b);
            }
    }
}

/* One row of q or k (64 bf16) as the kernel reads it: rotated by RoPE row `tab` (32 [cos, sin]) first when
   tab is not NULL (then into `tmp`, returned), else the row itself. */
static const uint16_t *rope_row(const uint16_t *x, const float *tab, uint16_t *tmp) {
    if (!tab) return x;
    for (int i = 0; i < 64; i += 16) rope16_bf16(x + i, tab + i, tmp + i);
    return tmp;
}

static void pack_head(const uint16_t *k, long kst, const uint16_t *v, long vst, int T, int Tp, const float *rope,
                      uint32_t *kp, uint32_t *vp) {
    uint16_t rotated[16][64];
    for (int j = 0; j < Tp; j += 16) {           /* kᵀ in d pairs, 16 keys x 16 pairs at a time */
        const uint16_t *row[16];
        for (int i = 0; i < 16 && j + i < T; i++)
            row[i] = rope_row(k + (size_t)(j + i) * kst, rope ? rope + (size_t)(j + i) * 64 : NULL, rotated[i]);
        for (int h = 0; h < 2; h++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = j + i < T ? _mm512_loadu_si512(row[i] + 32 * h) : _mm512_setzero_si512();
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_si512(kp + (size_t)(16 * h + i) * Tp + j, r[i]);
        }
    }
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int p = 0; p < Tp / 2; p++) {           /* v(2p, n) and v(2p+1, n) interleaved; zeros past T */
        for (int c = 0; c < 2; c++) {
            __m512i a = 2 * p < T ? _mm512_loadu_si512(v + (size_t)(2 * p) * vst + 32 * c) : _mm512_setzero_si512();
            __m512i b = 2 * p + 1 < T ? _mm512_loadu_si512(v + (size_t)(2 * p + 1) * vst + 32 * c) : _mm512_setzero_si512();
            _mm512_storeu_si512(vp + (size_t)p * 64 + 32 * c, _mm512_permutex2var_epi16(a, lo, b));
            _mm512_storeu_si512(vp + (size_t)p * 64 + 32 * c + 16, _mm512_permutex2var_epi16(a, hi, b));
        }
    }
}

/* softmax of one row of n valid scores (of np) -> bf16 P (zeros from n to np); returns 1 / Σ e.
   e = 2^t, t = (s − max)·scale·log2(e), degree-5 polynomial of the fraction (rel. error 3e-6, far below
   P's bf16 rounding). */
__attribute__((target("avx512bf16")))
static float softmax_row(const float *s, int n, int np, float scale, uint16_t *p) {
    __m512 vmx = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
    for (int k = 0; k < n; k += 16) {
        __mmask16 m = n - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - k)) - 1);
        vmx = _mm512_mask_max_ps(vmx, m, vmx, _mm512_maskz_loadu_ps(m, s + k));
    }
    float c = scale * 1.44269504088896341f;
    __m512 vc = _mm512_set1_ps(c), off = _mm512_set1_ps(_mm512_reduce_max_ps(vmx) * c);
    for (int k = 0; k < np; k += 16) {
        __mmask16 m = k >= n ? 0 : n - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - k)) - 1);
        __m512 t = _mm512_fmsub_ps(_mm512_loadu_ps(s + k), vc, off);   /* <= 0; very negative -> scalef gives 0 */
        __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 f = _mm512_sub_ps(t, r), q = _mm512_set1_ps(1.3333558e-3f);
        q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(9.6181291e-3f));
        q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(5.5504109e-2f));
        q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(2.4022651e-1f));
        q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(6.9314718e-1f));
        q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.f));
        __m512 e = _mm512_maskz_scalef_ps(m, q, r);
        vsum = _mm512_add_ps(vsum, e);
        _mm256_storeu_si256((__m256i *)(p + k), (__m256i)_mm512_cvtneps_pbh(e));
    }
    return 1.f / _mm512_reduce_add_ps(vsum);
}

/* The block's q rows (RoPE'd when rope is not NULL: its rows for these queries) into qb, zeros past `rows`. */
static void load_queries(const uint16_t *q, long qst, int rows, const float *rope, uint16_t *qb) {
    for (int r = 0; r < 32; r++) {
        if (r >= rows) memset(qb + r * 64, 0, 128);
        else if (rope) rope_row(q + (size_t)r * qst, rope + r * 64, qb + r * 64);
        else memcpy(qb + r * 64, q + (size_t)r * qst, 128);
    }
}

/* 32 query rows (two 16-row tiles, so that every key and value tile loaded serves both). */
__attribute__((target("amx-tile,amx-bf16")))
static void query_block(const uint16_t *q, long qst, int rows, const float *rope, const uint32_t *kp,
                        const uint32_t *vp, int n, int Tp, float scale, float *S, uint16_t *P, uint16_t *out,
                        long ost) {
    uint16_t qb[32 * 64];
    float o[32 * 64], inv[32];
    load_queries(q, qst, rows, rope, qb);
    int nk = (n + 31) / 32 * 32;                 /* keys visited: the valid ones, rounded up to a pair tile */
    _tile_loadd(0, qb, 128);                     /* rows 0-15, d 0-31 and 32-63; then rows 16-31 */
    _tile_loadd(1, qb + 32, 128);
    _tile_loadd(2, qb + 16 * 64, 128);
    _tile_loadd(3, qb + 16 * 64 + 32, 128);
    for (int j = 0; j < nk; j += 16) {           /* scores of keys j..j+15 for both row tiles */
        _tile_zero(6);
        _tile_zero(7);
        _tile_loadd(4, kp + j, Tp * 4);
        _tile_loadd(5, kp + (size_t)16 * Tp + j, Tp * 4);
        _tile_dpbf16ps(6, 0, 4);
        _tile_dpbf16ps(7, 2, 4);
        _tile_dpbf16ps(6, 1, 5);
        _tile_dpbf16ps(7, 3, 5);
        _tile_stored(6, S + j, Tp * 4);
        _tile_stored(7, S + (size_t)16 * Tp + j, Tp * 4);
    }
    for (int r = 0; r < rows; r++) inv[r] = softmax_row(S + (size_t)r * Tp, n, nk, scale, P + (size_t)r * Tp);
    for (int r = rows; r < 32; r++) memset(P + (size_t)r * Tp, 0, sizeof(uint16_t) * nk);
    for (int c = 0; c < 64; c += 32) {           /* o[:, c:c+32] += P[:, j:j+32] · v[j:j+32, c:c+32] */
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        for (int j = 0; j < nk; j += 32) {
            const uint32_t *vj = vp + (size_t)(j / 2) * 64 + c;
            _tile_loadd(0, P + j, Tp * 2);
            _tile_loadd(1, P + (size_t)16 * Tp + j, Tp * 2);
            _tile_loadd(2, vj, 256);
            _tile_loadd(3, vj + 16, 256);
            _tile_dpbf16ps(4, 0, 2);
            _tile_dpbf16ps(5, 0, 3);
            _tile_dpbf16ps(6, 1, 2);
            _tile_dpbf16ps(7, 1, 3);
        }
        _tile_stored(4, o + c, 256);
        _tile_stored(5, o + c + 16, 256);
        _tile_stored(6, o + 16 * 64 + c, 256);
        _tile_stored(7, o + 16 * 64 + c + 16, 256);
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < 64; c += 16)
            _mm256_storeu_si256((__m256i *)(out + (size_t)r * ost + c),
                                bf16_round(_mm512_mul_ps(_mm512_loadu_ps(o + r * 64 + c), _mm512_set1_ps(inv[r]))));
}

/* The same 32-row block with VDPBF16PS: scores of 8 rows x 32 keys per pass (16 accumulators, each key
   vector loaded once for the 8 rows, each query pair broadcast), then P·v for 4 rows x 64 columns per pass
   (16 accumulators, each value vector loaded once for the 4 rows). */
__attribute__((target("avx512bf16")))
static void query_block_avx512(const uint16_t *q, long qst, int rows, const float *rope, const uint32_t *kp,
                               const uint32_t *vp, int n, int Tp, float scale, float *S, uint16_t *P,
                               uint16_t *out, long ost) {
    uint32_t qb[32 * 32];                        /* the block's q rows as d pairs; rows past `rows` zero */
    load_queries(q, qst, rows, rope, (uint16_t *)qb);
    int nk = (n + 31) / 32 * 32, nr = (rows + 7) / 8 * 8;
    for (int r0 = 0; r0 < nr; r0 += 8)
        for (int j = 0; j < nk; j += 32) {
            __m512 acc[8][2];
            for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
            for (int pr = 0; pr < 32; pr++) {
                __m512bh k0 = (__m512bh)_mm512_loadu_si512(kp + (size_t)pr * Tp + j);
                __m512bh k1 = (__m512bh)_mm512_loadu_si512(kp + (size_t)pr * Tp + j + 16);
                for (int i = 0; i < 8; i++) {
                    __m512bh qi = (__m512bh)_mm512_set1_epi32((int)qb[(r0 + i) * 32 + pr]);
                    acc[i][0] = _mm512_dpbf16_ps(acc[i][0], qi, k0);
                    acc[i][1] = _mm512_dpbf16_ps(acc[i][1], qi, k1);
                }
            }
            for (int i = 0; i < 8; i++) {
                _mm512_storeu_ps(S + (size_t)(r0 + i) * Tp + j, acc[i][0]);
                _mm512_storeu_ps(S + (size_t)(r0 + i) * Tp + j + 16, acc[i][1]);
            }
        }
    float inv[32];
    for (int r = 0; r < rows; r++) inv[r] = softmax_row(S + (size_t)r * Tp, n, nk, scale, P + (size_t)r * Tp);
    for (int r = rows; r < nr; r++) memset(P + (size_t)r * Tp, 0, sizeof(uint16_t) * nk);
    for (int r0 = 0; r0 < rows; r0 += 4) {
        __m512 o[4][4];
        for (int i = 0; i < 4; i++) for (int c = 0; c < 4; c++) o[i][c] = _mm512_setzero_ps();
        for (int pp = 0; pp < nk / 2; pp++) {
            const uint32_t *vj = vp + (size_t)pp * 64;
            __m512bh v0 = (__m512bh)_mm512_loadu_si512(vj), v1 = (__m512bh)_mm512_loadu_si512(vj + 16);
            __m512bh v2 = (__m512bh)_mm512_loadu_si512(vj + 32), v3 = (__m512bh)_mm512_loadu_si512(vj + 48);
            for (int i = 0; i < 4; i++) {
                uint32_t pair;
                memcpy(&pair, P + (size_t)(r0 + i) * Tp + 2 * pp, 4);
                __m512bh pi = (__m512bh)_mm512_set1_epi32((int)pair);
                o[i][0] = _mm512_dpbf16_ps(o[i][0], pi, v0);
                o[i][1] = _mm512_dpbf16_ps(o[i][1], pi, v1);
                o[i][2] = _mm512_dpbf16_ps(o[i][2], pi, v2);
                o[i][3] = _mm512_dpbf16_ps(o[i][3], pi, v3);
            }
        }
        for (int i = 0; i < 4 && r0 + i < rows; i++)
            for (int c = 0; c < 4; c++)
                _mm256_storeu_si256((__m256i *)(out + (size_t)(r0 + i) * ost + 16 * c),
                                    bf16_round(_mm512_mul_ps(o[i][c], _mm512_set1_ps(inv[r0 + i]))));
    }
}

__attribute__((target("amx-tile,amx-bf16")))
static void tiles_on(void) { itf_amx_tiles(); }
__attribute__((target("amx-tile,amx-bf16")))
void itf_amx_release(void) { _tile_release(); }
static void tiles_off(void) { itf_amx_release(); }

/* q, k, v, out: (B, H, T, 64) bf16 with strides in elements (batch, head, time; d contiguous); key_len:
   B valid-key counts (1..T) or NULL for all; rope: NULL, or the (T, 32, 2) fp32 [cos, sin] table that q
   and k are rotated by as they are read (the same values as rotating them first, itf_rope_bf16); amx: 1 for the AMX tiles (the CPU must have them and
   itf_amx_init must have succeeded), 0 for VDPBF16PS (AVX512-BF16). Returns 0, -1 without scratch
   memory, -2 for a bad shape. */
int itf_attention_bf16(const uint16_t *q, long qsb, long qsh, long qst, const uint16_t *k, long ksb, long ksh,
                       long kst, const uint16_t *v, long vsb, long vsh, long vst, const int *key_len, int B,
                       int H, int T, int d, float scale, uint16_t *out, long osb, long osh, long ost,
                       const float *rope, int amx) {
    if (d != 64 || T < 1 || B < 1 || H < 1 || kst % 2) return -2;
    for (int b = 0; b < B; b++)
        if (key_len && (key_len[b] < 1 || key_len[b] > T)) return -2;
    int Tp = (T + 31) / 32 * 32, blocks = (T + 31) / 32;
    uint32_t *packed = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)B * H * Tp * 64);
    if (!packed) return -1;
    int failed = 0;
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        uint32_t *kp = packed + (size_t)bh * Tp * 64;
        pack_head(k + b * ksb + h * ksh, kst, v + b * vsb + h * vsh, vst, T, Tp, rope, kp, kp + (size_t)32 * Tp);
    }
    #pragma omp parallel
    {
        float *S = (float *)malloc(sizeof(float) * 32 * (size_t)Tp);
        uint16_t *P = (uint16_t *)malloc(sizeof(uint16_t) * 32 * (size_t)Tp);
        if (!S || !P) {
            #pragma omp atomic write
            failed = 1;
        } else if (amx) {
            tiles_on();
        }
        #pragma omp for schedule(static)
        for (long item = 0; item < (long)B * H * blocks; item++) {
            if (!S || !P) continue;
            int bh = (int)(item / blocks), b = bh / H, h = bh % H, q0 = (int)(item % blocks) * 32;
            int rows = T - q0 < 32 ? T - q0 : 32;
            const uint32_t *kp = packed + (size_t)bh * Tp * 64;
            (amx ? query_block : query_block_avx512)(q + b * qsb + h * qsh + q0 * qst, qst, rows,
                                                     rope ? rope + (size_t)q0 * 64 : NULL, kp,
                                                     kp + (size_t)32 * Tp, key_len ? key_len[b] : T, Tp, scale,
                                                     S, P, out + b * osb + h * osh + q0 * ost, ost);
        }
        if (S && P && amx) tiles_off();
        free(S);
        free(P);
    }
    free(packed);
    return failed ? -1 : 0;
}
