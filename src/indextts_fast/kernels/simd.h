/* Small AVX-512 helpers shared by the kernel sources (native.c, attention.c). */
#ifndef ITF_SIMD_H
#define ITF_SIMD_H
#include <immintrin.h>
#include <stdint.h>

/* e^z for z <= 0 (z >= -87 after clamping): 2^n · e^(f·ln2), f in [-1/2, 1/2], degree-7 Taylor. */
static inline __m512 exp_neg(__m512 z) {
    z = _mm512_max_ps(z, _mm512_set1_ps(-87.f));
    __m512 t = _mm512_mul_ps(z, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 y = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718055994531f));
    __m512 p = _mm512_set1_ps(1.f / 5040.f);
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f / 720.f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline __m512 bf16_load_masked(const uint16_t *p, __mmask16 m) {   /* masked lanes read 0 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

static inline __m256i bf16_round(__m512 v) {   /* fp32 -> bf16, round to nearest even (finite values) */
    __m512i b = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
}

/* RoPE of 16 bf16 values (8 interleaved pairs) with their 8 [cos, sin] table entries (16 floats):
   (x0·cos − x1·sin, x1·cos + x0·sin) in fp32, rounded once to bf16. */
static inline void rope16_bf16(const uint16_t *src, const float *tab, uint16_t *dst) {
    const __m512i swap = _mm512_set_epi32(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
    const __m512 sign = _mm512_set_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512i even = _mm512_set_epi32(14, 14, 12, 12, 10, 10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0);
    const __m512i odd = _mm512_set_epi32(15, 15, 13, 13, 11, 11, 9, 9, 7, 7, 5, 5, 3, 3, 1, 1);
    __m512 v = load_bf16x16(src), cs = _mm512_loadu_ps(tab);
    __m512 c = _mm512_permutexvar_ps(even, cs), s = _mm512_permutexvar_ps(odd, cs);
    __m512 sw = _mm512_mul_ps(_mm512_permutexvar_ps(swap, v), sign);   /* (-x1, x0) */
    _mm256_storeu_si256((__m256i *)dst, bf16_round(_mm512_fmadd_ps(v, c, _mm512_mul_ps(sw, s))));
}

#endif
