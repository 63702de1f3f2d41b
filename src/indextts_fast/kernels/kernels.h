/* Functions of native.c that the other kernel sources build on (gpt_step.c). */
#ifndef ITF_KERNELS_H
#define ITF_KERNELS_H
#include <stdint.h>

/* What is done to each output after the product: bias, then GELU or + residual (M, N). */
typedef struct { const float *bias, *residual; int gelu; } epilogue_t;

/* One request's rows in a batched decode step (kernels gpt_step.c, avx2.c): rows `rows` consecutive rows of x,
   its own KV cache k, v ((L, H, cap, d), bf16 or fp32 by kernel) with the given layer and head strides; its new
   keys/values go to positions lo .. lo+rows-1; row r attends the nkeys positions keys[r·nkeys ..] (its
   prompt and ancestry, the new position included), or 0 .. nkeys-1 when keys is NULL. Each group's attention
   is its own: a row's result does not depend on the other groups in the call. */
typedef struct { int rows, lo; void *k, *v; long layer_stride, head_stride; const int32_t *keys; int nkeys; } itf_group_t;
#include <stddef.h>
/* Rows of a request that the decode attention takes together (decode_attention.c): its score scratch is
   itf_score_rows(rows) · (nkeys + pad) floats per head. */
#define ITF_GROUP_ROWS 3
static inline int itf_score_rows(int rows) { return rows < ITF_GROUP_ROWS ? rows : ITF_GROUP_ROWS; }
long itf_groups_layout(const itf_group_t *groups, int G, int S, int H, int pad, int *first, size_t *at);   /* avx2.c */

void itf_layer_norm_rows(const float *x, int M, int K, const float *w, const float *b, float eps, float *out);
void itf_quantize_rows(const float *x, int M, int K, int Kp, uint8_t *xq, float *sx, int32_t *zp);
void itf_gemv_group(int g, const uint8_t *xq, const float *sx, const int32_t *zp, int M, int K, const int8_t *wp,
                    const int32_t *wsum, const float *ws, int N, const epilogue_t *ep, float *y);
/* AMX (attention.c): every tile 16 rows x 64 bytes, for this thread; and its release. */
void itf_amx_tiles(void);
void itf_amx_release(void);
/* itf_gemv_group on AMX tiles (TDPBUSD): the same exact int32 sums and epilogue, so the same bits; rows in
   blocks of 16 (xq must hold whole blocks: rows past M are read, their results dropped), K % 64 == 0. */
void itf_gemv_group_amx(int g, const uint8_t *xq, const float *sx, const int32_t *zp, int M, int K, const int8_t *wp,
                        const int32_t *wsum, const float *ws, int N, const epilogue_t *ep, float *y);
/* decode_attention.c: head h of a decode step's attention (sc: itf_score_rows(S) · (L + 16) floats). */
void itf_attend_head(int h, const float *q, long q_stride, const uint16_t *K, const uint16_t *V, long head_stride,
                     int L, const int32_t *keys, int S, int H, int d, float scale, float *sc, float *out);
#endif
