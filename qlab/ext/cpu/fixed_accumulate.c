/* Fused intrinsic fixed-point accumulation on the CPU (qlab.ext.cpu).
 *
 * For grid integers a[r, k] (the rows' operand) and b[k, c] (the columns' operand, c
 * contiguous), every product p = a*b (grid 2F) is rounded to grid F (R(p * 2**-s),
 * s = q.F), clamped to [qlo, qhi] (q's range) and then, in one pass with no
 * intermediate tensors:
 *
 *   sequential: moved to the accumulator grid (exact left shift by d = A.F - q.F) and
 *               added in k order with saturation: acc = clamp(acc + (p << d), lo, hi);
 *   final:      summed exactly (the caller rescales the sum and clamps it to A).
 *
 * Operands and output may be int32, int64, float32 or float64 tensors holding grid
 * integers (strided; read as int32, W <= 32); the Python side (qlab/ext/cpu/__init__.py)
 * picks x or w as the rows so that the vectorised column loop is the long one.
 * This is bit-identical to qlab.core.intrinsic._fixed_accumulate for the cases the
 * Python side accepts (qlab/ext/cpu/__init__.py), which keep every intermediate inside
 * the integer type T:
 *   T = int32_t: |a*b| <= 2**30, s <= 30, |p << d| <= 2**29, |acc| <= 2**29 (or, final,
 *                K * 2**(W-1) < 2**31);
 *   T = int64_t: |a*b| <= 2**62, s <= 62, |p << d| <= 2**61, |acc| <= 2**31.
 * Rounding of an integer n by 2**-s (arithmetic shifts, as qlab.core.grid.rescale_int):
 *   down    n >> s                      up      (n + mask) >> s
 *   zero    (n + (mask if n < 0)) >> s  nearest (n + (n < 0 ? -1 : 0) + half) >> s
 *   even    q = (n + half) >> s, minus 1 where n is a tie (n & mask == half) and q odd
 * One function per (rounding, type, accumulate): the inner loop over j has no switch,
 * and gcc vectorises it (-O3 -march=native).  Work is split over (row, column block)
 * tiles with OpenMP; the thread count is the caller's (torch.get_num_threads()).
 */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#define JB32 32 /* columns per tile: 4 AVX2 registers of int32 */
#define JB64 16 /* 4 AVX2 registers of int64 */

/* ------------------------------------------------------------------ rounding */
#define DEFINE_ROUNDERS(T, U, SFX, BITS)                                                        \
    static inline T rnd_none_##SFX(T n, int s, T half, T mask) {                               \
        (void)s; (void)half; (void)mask;                                                        \
        return n;                                                                               \
    }                                                                                           \
    static inline T rnd_down_##SFX(T n, int s, T half, T mask) {                               \
        (void)half; (void)mask;                                                                 \
        return n >> s;                                                                          \
    }                                                                                           \
    static inline T rnd_up_##SFX(T n, int s, T half, T mask) {                                 \
        (void)half;                                                                             \
        return (n + mask) >> s;                                                                 \
    }                                                                                           \
    static inline T rnd_zero_##SFX(T n, int s, T half, T mask) {                               \
        (void)half;                                                                             \
        return (n + ((n >> (BITS - 1)) & mask)) >> s;                                           \
    }                                                                                           \
    static inline T rnd_nearest_##SFX(T n, int s, T half, T mask) {                            \
        (void)mask;                                                                             \
        return (n + (n >> (BITS - 1)) + half) >> s;                                             \
    }                                                                                           \
    static inline T rnd_even_##SFX(T n, int s, T half, T mask) {                               \
        T q = (n + half) >> s;                                                                  \
        T tie = (T)((n & mask) == half);                                                        \
        return q - (tie & q & 1);                                                               \
    }                                                                                           \
    static inline T clamp_##SFX(T v, T lo, T hi) {                                              \
        v = v < lo ? lo : v;                                                                    \
        return v > hi ? hi : v;                                                                 \
    }                                                                                           \
    static inline T shl_##SFX(T v, int d) { return (T)((U)v << d); }

DEFINE_ROUNDERS(int32_t, uint32_t, i32, 32)
DEFINE_ROUNDERS(int64_t, uint64_t, i64, 64)

/* ------------------------------------------------------------------ operands */
enum { KIND_I32 = 0, KIND_I64 = 1, KIND_F32 = 2, KIND_F64 = 3 };

/* dst[t] = src[t * stride] as int32 (grid integers, exact), for t < n. */
static void load_i32(int32_t *dst, const void *src, int kind, int64_t stride, int64_t n) {
    switch (kind) {
    case KIND_I32: for (int64_t t = 0; t < n; t++) dst[t] = ((const int32_t *)src)[t * stride]; break;
    case KIND_I64: for (int64_t t = 0; t < n; t++) dst[t] = (int32_t)((const int64_t *)src)[t * stride]; break;
    case KIND_F32: for (int64_t t = 0; t < n; t++) dst[t] = (int32_t)((const float *)src)[t * stride]; break;
    default: for (int64_t t = 0; t < n; t++) dst[t] = (int32_t)((const double *)src)[t * stride]; break;
    }
}

/* out[t * stride] = acc[t] in the output's type, for t < n. */
#define DEFINE_STORE(T, SFX)                                                                    \
    static void store_##SFX(void *out, int kind, int64_t stride, const T *acc, int64_t n) {    \
        switch (kind) {                                                                         \
        case KIND_I32: for (int64_t t = 0; t < n; t++) ((int32_t *)out)[t * stride] = (int32_t)acc[t]; break; \
        case KIND_I64: for (int64_t t = 0; t < n; t++) ((int64_t *)out)[t * stride] = (int64_t)acc[t]; break; \
        case KIND_F32: for (int64_t t = 0; t < n; t++) ((float *)out)[t * stride] = (float)acc[t]; break;     \
        default: for (int64_t t = 0; t < n; t++) ((double *)out)[t * stride] = (double)acc[t]; break;         \
        }                                                                                       \
    }
DEFINE_STORE(int32_t, i32)
DEFINE_STORE(int64_t, i64)

static size_t elsize(int kind) { return kind == KIND_I64 || kind == KIND_F64 ? 8 : 4; }

/* ------------------------------------------------------------------ kernels */
/* The addend for row value av and column value bv (T-typed product of two int32). */
#define ADDEND(MODE, T, SFX, av, bv)                                                            \
    clamp_##SFX(rnd_##MODE##_##SFX((T)(av) * (T)(bv), s, half, mask), qlo, qhi)

/* acc[0:JN] for one row (its K values in ar) and a block of columns (bb, row stride ldb). */
#define ROW_BODY(MODE, T, SFX, ACC, JN)                                                         \
    do {                                                                                        \
        for (int64_t jj = 0; jj < (JN); jj++) acc[jj] = 0;                                      \
        for (int64_t k = 0; k < K; k++) {                                                       \
            const T av = (T)ar[k];                                                              \
            const int32_t *br = bb + k * ldb;                                                   \
            for (int64_t jj = 0; jj < (JN); jj++) {                                             \
                T v = ADDEND(MODE, T, SFX, av, br[jj]);                                         \
                ACC;                                                                            \
            }                                                                                   \
        }                                                                                       \
    } while (0)

#define ACC_SEQUENTIAL(SFX) acc[jj] = clamp_##SFX(acc[jj] + shl_##SFX(v, d), lo, hi)
#define ACC_FINAL(SFX) acc[jj] += v

/* For r < R rows and c < C columns:
 *   out[r * so_r + c * so_c] = accumulate over k of addend(A[r * sa_r + k * sa_k], B[k * sb_k + c]).
 * Tiles: G rows (1, or R when the rows are few) x JB columns, in parallel.  B's block is
 * read in place when it is int32 (kind 0), else converted once per tile; A's row is
 * converted once per (tile, row).  Operand and output types: KIND_*. */
#define DEFINE_KERNEL(MODE, T, SFX, JB, NAME, ACC)                                              \
    int NAME##_##MODE##_##SFX(const void *A, int a_kind, int64_t sa_r, int64_t sa_k,            \
                              const void *B, int b_kind, int64_t sb_k,                          \
                              void *out, int o_kind, int64_t so_r, int64_t so_c,                \
                              int64_t R, int64_t K, int64_t C, int64_t G,                       \
                              int s, int d, int64_t qlo_, int64_t qhi_, int64_t lo_, int64_t hi_, \
                              int nthreads) {                                                   \
        const T qlo = (T)qlo_, qhi = (T)qhi_, lo = (T)lo_, hi = (T)hi_;                         \
        const T half = s > 0 ? (T)((T)1 << (s - 1)) : 0;                                        \
        const T mask = s > 0 ? (T)(((T)1 << (s - 1)) - 1 + ((T)1 << (s - 1))) : 0;              \
        (void)lo; (void)hi; (void)d;                                                            \
        if (G < 1) G = 1;                                                                       \
        const int64_t ngrp = (R + G - 1) / G;                                                   \
        const int64_t nblk = (C + JB - 1) / JB;                                                 \
        const int64_t ntiles = ngrp * nblk;                                                     \
        const int par = nthreads > 1 && ntiles > 1 && R * C * K >= 65536;                       \
        const int nt = par ? nthreads : 1;                                                      \
        const size_t per = (size_t)(K > 0 ? K : 1) * (b_kind == KIND_I32 ? 1 : 1 + JB);         \
        int32_t *bufs = (int32_t *)malloc(sizeof(int32_t) * per * (size_t)nt);                  \
        if (bufs == NULL) return -1;                                                            \
        _Pragma("omp parallel num_threads(nt) if(par)")                                         \
        {                                                                                       \
            int32_t *abuf = bufs + per * (size_t)omp_get_thread_num();                          \
            int32_t *bbuf = abuf + (K > 0 ? K : 1);                                             \
            T acc[JB];                                                                          \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t t = 0; t < ntiles; t++) {                                              \
                const int64_t g = t / nblk;                                                     \
                const int64_t j0 = (t - g * nblk) * JB;                                         \
                const int64_t jn = C - j0 < JB ? C - j0 : JB;                                   \
                const int32_t *bb;                                                              \
                int64_t ldb;                                                                    \
                if (b_kind == KIND_I32) {                                                       \
                    bb = (const int32_t *)B + j0;                                               \
                    ldb = sb_k;                                                                 \
                } else {                                                                        \
                    const char *bsrc = (const char *)B + (size_t)j0 * elsize(b_kind);           \
                    for (int64_t k = 0; k < K; k++)                                             \
                        load_i32(bbuf + k * JB, bsrc + (size_t)(k * sb_k) * elsize(b_kind),     \
                                 b_kind, 1, jn);                                                \
                    bb = bbuf;                                                                  \
                    ldb = JB;                                                                   \
                }                                                                               \
                const int64_t r1 = (g + 1) * G < R ? (g + 1) * G : R;                           \
                for (int64_t r = g * G; r < r1; r++) {                                          \
                    load_i32(abuf, (const char *)A + (size_t)(r * sa_r) * elsize(a_kind),       \
                             a_kind, sa_k, K);                                                  \
                    const int32_t *ar = abuf;                                                   \
                    if (jn == JB) ROW_BODY(MODE, T, SFX, ACC(SFX), JB);                         \
                    else ROW_BODY(MODE, T, SFX, ACC(SFX), jn);                                  \
                    store_##SFX((char *)out + (size_t)(r * so_r + j0 * so_c) * elsize(o_kind),  \
                                o_kind, so_c, acc, jn);                                         \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        free(bufs);                                                                             \
        return 0;                                                                 \
    }

#define DEFINE_ALL(MODE)                                                                        \
    DEFINE_KERNEL(MODE, int32_t, i32, JB32, qlab_seq, ACC_SEQUENTIAL)                           \
    DEFINE_KERNEL(MODE, int64_t, i64, JB64, qlab_seq, ACC_SEQUENTIAL)                           \
    DEFINE_KERNEL(MODE, int32_t, i32, JB32, qlab_fin, ACC_FINAL)                                \
    DEFINE_KERNEL(MODE, int64_t, i64, JB64, qlab_fin, ACC_FINAL)

DEFINE_ALL(none)
DEFINE_ALL(nearest)
DEFINE_ALL(even)
DEFINE_ALL(down)
DEFINE_ALL(up)
DEFINE_ALL(zero)

/* Version of the calling convention, checked by the loader. */
int qlab_cpu_abi(void) { return 2; }
