/* The convolution's operands gathered from its input (qlab.ext.cpu: fixed_accumulate.c on
 * grid integers, float_matmul.c on Q's float values): x [B, C, H, W] contiguous, windows
 * read in k order (channel of the group, kernel row, kernel column), zero where a window
 * reaches into the padding.  Positions p = (b, oh, ow), P = B * HO * WO of them. */
#ifndef QLAB_CONV_GATHER_H
#define QLAB_CONV_GATHER_H
#include <stdint.h>

typedef struct {
    const void *x;
    int64_t C, H, W, HO, WO, KH, KW, SH, SW, PT, PL, DH, DW, CG; /* CG: input channels per group */
} conv_geo;

/* gather_row_SFX: dst[k] for k < K, position p's window, channels of group grp.
 * gather_cols_SFX: dst[k * ld + j] for k < K, j < n: the windows of positions p0 + j
 * (n <= ld), group grp; idx: scratch of KH * KW * ld entries. */
#define DEFINE_GATHER(T, SFX)                                                                   \
    static void gather_row_##SFX(T *dst, const conv_geo *g, int64_t p, int64_t grp) {           \
        const T *x = (const T *)g->x;                                                           \
        const int64_t L = g->HO * g->WO, b = p / L, l = p - b * L, oh = l / g->WO, ow = l - oh * g->WO; \
        const int64_t ih0 = oh * g->SH - g->PT, iw0 = ow * g->SW - g->PL;                       \
        int64_t k = 0;                                                                          \
        for (int64_t c = 0; c < g->CG; c++) {                                                   \
            const T *xc = x + ((b * g->C + grp * g->CG + c) * g->H) * g->W;                     \
            for (int64_t r = 0; r < g->KH; r++) {                                               \
                const int64_t ih = ih0 + r * g->DH;                                             \
                const int okh = ih >= 0 && ih < g->H;                                           \
                for (int64_t t = 0; t < g->KW; t++) {                                           \
                    const int64_t iw = iw0 + t * g->DW;                                         \
                    dst[k++] = okh && iw >= 0 && iw < g->W ? xc[ih * g->W + iw] : (T)0;         \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    static void gather_cols_##SFX(T *dst, int64_t ld, const conv_geo *g, int64_t p0, int64_t n, int64_t grp, \
                                  int64_t *idx) {                                               \
        const T *x = (const T *)g->x;                                                           \
        const int64_t L = g->HO * g->WO, HW = g->H * g->W, KHW = g->KH * g->KW;                 \
        const int one = g->CG == 1; /* one channel: the values at once (an index pass would not pay) */ \
        for (int64_t j = 0; j < n; j++) { /* each kernel offset's element per column, -1: padding */ \
            const int64_t p = p0 + j, b = p / L, l = p - b * L, oh = l / g->WO, ow = l - oh * g->WO; \
            const int64_t off = (b * g->C + grp * g->CG) * HW, ih0 = oh * g->SH - g->PT, iw0 = ow * g->SW - g->PL; \
            for (int64_t r = 0; r < g->KH; r++) {                                               \
                const int64_t ih = ih0 + r * g->DH;                                             \
                for (int64_t t = 0; t < g->KW; t++) {                                           \
                    const int64_t iw = iw0 + t * g->DW;                                         \
                    const int ok = ih >= 0 && ih < g->H && iw >= 0 && iw < g->W;                \
                    if (one)                                                                    \
                        dst[(r * g->KW + t) * ld + j] = ok ? x[off + ih * g->W + iw] : (T)0;    \
                    else                                                                        \
                        idx[(r * g->KW + t) * ld + j] = ok ? off + ih * g->W + iw : -1;         \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        for (int64_t c = 0; c < g->CG && !one; c++) { /* the same offsets in every channel */   \
            const T *xc = x + c * HW;                                                           \
            T *d = dst + c * KHW * ld;                                                          \
            for (int64_t rt = 0; rt < KHW; rt++, d += ld) {                                    \
                const int64_t *ix = idx + rt * ld;                                              \
                for (int64_t j = 0; j < n; j++) { /* unconditional loads (element 0 for padding): a vector gather */ \
                    const int64_t i = ix[j];                                                    \
                    const T v = xc[i < 0 ? 0 : i];                                              \
                    d[j] = i < 0 ? (T)0 : v;                                                    \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }
#endif
