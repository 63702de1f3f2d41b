/* Functions of native.c that the other kernel sources build on (gpt_step.c). */
#ifndef ITF_KERNELS_H
#define ITF_KERNELS_H
#include <stdint.h>

/* What is done to each output after the product: bias, then GELU or + residual (M, N). */
typedef struct { const float *bias, *residual; int gelu; } epilogue_t;

void itf_layer_norm_rows(const float *x, int M, int K, const float *w, const float *b, float eps, float *out);
void itf_quantize_rows(const float *x, int M, int K, int Kp, uint8_t *xq, float *sx, int32_t *zp);
void itf_gemv_group(int g, const uint8_t *xq, const float *sx, const int32_t *zp, int M, int K, const int8_t *wp,
                    const int32_t *wsum, const float *ws, int N, const epilogue_t *ep, float *y);
void itf_attend_head(int h, const float *q, long q_stride, const uint16_t *K, const uint16_t *V, long head_stride,
                     int n, const float *mask, int S, int H, int d, float scale, float *sc, float *out);
#endif
