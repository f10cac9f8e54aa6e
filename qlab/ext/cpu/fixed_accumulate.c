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
 * and gcc vectorises it (-O3 -march=native); int32 sums take four rows x 32 columns at
 * once in GCC vector registers, leaving out the clamps a bound shows idle (ROW4_i32).
 * Work is split over (rows, column block) tiles with OpenMP; the thread count is the
 * caller's (torch.get_num_threads()).  The convolution (qlab_conv_*, at the end) shares
 * all of it, its operands gathered from the input's grid integers per tile.  After it:
 * the grid integers of a tensor, the elementwise quantizer, and the pointwise steps
 * (the linear/conv epilogue, batch norm, elementwise add/sub/mul).
 */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>
#include "draws.h" /* row_key, draw: the stochastic draws */

#define JB32 32 /* columns per tile: 4 AVX2 registers of int32 */
#define JB64 16 /* 4 AVX2 registers of int64 */

/* ------------------------------------------------------------------ rounding */
#define DEFINE_ROUNDERS(T, U, SFX, BITS)                                                        \
    static inline T rnd_none_##SFX(T n, int s, T half, T mask, uint32_t u) {                   \
        (void)s; (void)half; (void)mask; (void)u;                                               \
        return n;                                                                               \
    }                                                                                           \
    static inline T rnd_down_##SFX(T n, int s, T half, T mask, uint32_t u) {                   \
        (void)half; (void)mask; (void)u;                                                        \
        return n >> s;                                                                          \
    }                                                                                           \
    static inline T rnd_up_##SFX(T n, int s, T half, T mask, uint32_t u) {                     \
        (void)half; (void)u;                                                                    \
        return (n + mask) >> s;                                                                 \
    }                                                                                           \
    static inline T rnd_zero_##SFX(T n, int s, T half, T mask, uint32_t u) {                   \
        (void)half; (void)u;                                                                    \
        return (n + ((n >> (BITS - 1)) & mask)) >> s;                                           \
    }                                                                                           \
    static inline T rnd_nearest_##SFX(T n, int s, T half, T mask, uint32_t u) {                \
        (void)mask; (void)u;                                                                    \
        return (n + (n >> (BITS - 1)) + half) >> s;                                             \
    }                                                                                           \
    static inline T rnd_even_##SFX(T n, int s, T half, T mask, uint32_t u) {                   \
        (void)u;                                                                                \
        T q = (n + half) >> s;                                                                  \
        T tie = (T)((n & mask) == half);                                                        \
        return q - (tie & q & 1);                                                               \
    }                                                                                           \
    static inline T shl_##SFX(T v, int d) { return (T)((U)v << d); }

#define DEFINE_CLAMP(T, SFX)                                                                    \
    static inline T clamp_##SFX(T v, T lo, T hi) {                                              \
        v = v < lo ? lo : v;                                                                    \
        return v > hi ? hi : v;                                                                 \
    }

DEFINE_ROUNDERS(int32_t, uint32_t, i32, 32)
DEFINE_ROUNDERS(int64_t, uint64_t, i64, 64)
DEFINE_CLAMP(int32_t, i32)
DEFINE_CLAMP(int64_t, i64)

/* stochastic: floor(n / 2**s) + 1 with probability (n mod 2**s) / 2**s, from the s low
 * bits of the draw u (s <= 30 for int32, <= 32 for int64: the caller's limits) */
#define STOCH_none 0
#define STOCH_nearest 0
#define STOCH_even 0
#define STOCH_down 0
#define STOCH_up 0
#define STOCH_zero 0
#define STOCH_stochastic 1
static inline int32_t rnd_stochastic_i32(int32_t n, int s, int32_t half, int32_t mask, uint32_t u) {
    (void)half;
    return (n >> s) + (int32_t)((int32_t)(u & (uint32_t)mask) < (n & mask));
}
static inline int64_t rnd_stochastic_i64(int64_t n, int s, int64_t half, int64_t mask, uint32_t u) {
    (void)half;
    return (n >> s) + (int64_t)((int64_t)(u & (uint64_t)mask) < (n & mask));
}

/* The same rounders on 16 int32 lanes (GCC vector types: one AVX-512 register, two AVX2
 * ones), for the int32 micro-kernel below.  The clamp takes the CPU's min/max where the
 * compiler targets it (gcc turns a mask-and-blend into compare + masked move, two
 * instructions each). */
typedef int32_t v16 __attribute__((vector_size(64)));
typedef uint32_t uv16 __attribute__((vector_size(64)));
DEFINE_ROUNDERS(v16, uv16, v16, 32)
static inline v16 rnd_stochastic_v16(v16 n, int s, v16 half, v16 mask, uint32_t u) {
    (void)s; (void)half; (void)mask; (void)u;
    return n; /* never called: the micro-kernel's stochastic step is rnd_draws_v16 */
}
/* stochastic on 16 lanes with draws u (a comparison gives -1 where true) */
static inline v16 rnd_draws_v16(v16 n, int s, v16 mask, uv16 u) {
    return (n >> s) - (v16)((v16)(u & (uv16)mask) < (n & mask));
}
static inline uv16 mix32_v16(uv16 h) {
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}
#if defined(__AVX512F__)
#include <immintrin.h>
static inline v16 clamp_v16(v16 v, v16 lo, v16 hi) {
    return (v16)_mm512_min_epi32(_mm512_max_epi32((__m512i)v, (__m512i)lo), (__m512i)hi);
}
static inline v16 vmax_v16(v16 a, v16 b) { return (v16)_mm512_max_epi32((__m512i)a, (__m512i)b); }
#elif defined(__AVX2__)
#include <immintrin.h>
static inline v16 clamp_v16(v16 v, v16 lo, v16 hi) {
    __m256i x[2], l[2], h[2];
    __builtin_memcpy(x, &v, 64);
    __builtin_memcpy(l, &lo, 64);
    __builtin_memcpy(h, &hi, 64);
    for (int i = 0; i < 2; i++) x[i] = _mm256_min_epi32(_mm256_max_epi32(x[i], l[i]), h[i]);
    __builtin_memcpy(&v, x, 64);
    return v;
}
static inline v16 vmax_v16(v16 a, v16 b) {
    __m256i x[2], y[2];
    __builtin_memcpy(x, &a, 64);
    __builtin_memcpy(y, &b, 64);
    for (int i = 0; i < 2; i++) x[i] = _mm256_max_epi32(x[i], y[i]);
    __builtin_memcpy(&a, x, 64);
    return a;
}
#else
static inline v16 clamp_v16(v16 v, v16 lo, v16 hi) {
    v16 m = v < lo;
    v = (lo & m) | (v & ~m);
    m = v > hi;
    return (hi & m) | (v & ~m);
}
static inline v16 vmax_v16(v16 a, v16 b) {
    v16 m = a > b;
    return (a & m) | (b & ~m);
}
#endif
static inline v16 vabs_v16(v16 a) { return vmax_v16(a, -a); } /* |a| < 2**31 here */

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
/* The addend for row value av and column value bv (T-typed product of two int32);
 * stochastic: the column's draw ub[jj]. */
#define ADDEND(MODE, T, SFX, av, bv)                                                            \
    clamp_##SFX(rnd_##MODE##_##SFX((T)(av) * (T)(bv), s, half, mask, STOCH_##MODE ? ub[jj] : 0u), qlo, qhi)

/* Step k's draws for the JB columns of a tile row (key): a product's stochastic rounding
 * takes the draw's s <= 30 low bits, so where s <= 16 one 32-bit hash serves two columns
 * (i and i + JB/2: bits 0-15 and 16-31); hash counter k * 32 + i (K < 2**24).  The int32
 * micro-kernel draws the same values (V_DRAWS), so a row's results do not depend on the
 * path it takes. */
#define FILL_DRAWS(PER, JB)                                                                       \
    for (uint32_t i = 0; i < JB / (PER); i++) {                                                 \
        const uint32_t h = tile_draw(key, 32u, (uint32_t)k, i);                                 \
        for (int p = 0; p < (PER); p++) ub[i + p * (JB / (PER))] = h >> (p * (32 / (PER)));     \
    }
#define DRAWS(MODE, JB)                                                                         \
    do {                                                                                        \
        if (!STOCH_##MODE) break;                                                               \
        if (s <= 16) { FILL_DRAWS(2, JB) }                                                      \
        else { FILL_DRAWS(1, JB) }                                                              \
    } while (0)

/* acc[0:JN] for one row (its K values in ar) and a block of columns (bb, row stride ldb). */
#define ROW_BODY(MODE, T, SFX, ACC, JB, JN)                                                     \
    do {                                                                                        \
        uint32_t ub[JB];                                                                        \
        (void)ub;                                                                               \
        for (int64_t jj = 0; jj < (JN); jj++) acc[jj] = 0;                                      \
        for (int64_t k = 0; k < K; k++) {                                                       \
            const T av = (T)ar[k];                                                              \
            const int32_t *br = bb + k * ldb;                                                   \
            DRAWS(MODE, JB);                                                                    \
            for (int64_t jj = 0; jj < (JN); jj++) {                                             \
                T v = ADDEND(MODE, T, SFX, av, br[jj]);                                         \
                ACC;                                                                            \
            }                                                                                   \
        }                                                                                       \
    } while (0)

#define ACC_SEQUENTIAL(SFX) acc[jj] = clamp_##SFX(acc[jj] + shl_##SFX(v, d), lo, hi)
#define ACC_FINAL(SFX) acc[jj] += v

/* Four rows (a4[0..3], K values each) x one full block of 32 columns at once, int32: eight
 * independent sums of 16 lanes in registers.  With one row at a time the two sums of a
 * block form one dependency chain per k (add, then the clamp; spilled to the stack by
 * gcc), which bounded the kernel by latency, not by arithmetic (ABI 4).
 *
 * Clamps that cannot act are left out (ABI 4), as in the Triton kernel: pm (from the
 * caller: (max|a| * max|b| >> s) + 1, or -1) bounds every rounded product, so with
 * pm <= qhi no product needs its clamp; sequential sums then run without theirs for as
 * many k as keep them provably inside A's range -- with the block's sums within +-m, the
 * next (hi - m) / (pm << d) products cannot leave it (lo = -hi - 1) -- and where fewer
 * than V_RUN are safe, V_CHUNK k with the clamp, then a fresh bound.
 *   acc kinds: 0 final (plain sums), 1 sequential with the clamp, 2 without, 3 without
 *   and d = 0 (no shift). */
#define V_RUN 16
#define V_CHUNK 64
#define V_STEP(MODE, c, b, av, PCL, KIND, U)                                                    \
    do {                                                                                        \
        v16 v_ = STOCH_##MODE ? rnd_draws_v16((b) * (int32_t)(av), s, vmask, U)                  \
                              : rnd_##MODE##_v16((b) * (int32_t)(av), s, vhalf, vmask, 0u);     \
        if (PCL) v_ = clamp_v16(v_, vqlo, vqhi);                                                \
        if ((KIND) == 1) c = clamp_v16(c + shl_v16(v_, d), vlo, vhi);                           \
        else if ((KIND) == 2) c = c + shl_v16(v_, d);                                           \
        else c = c + v_;                                                                        \
    } while (0)
#define V_LOOP(MODE, k0, k1, PCL, KIND)                                                         \
    for (int64_t k = (k0); k < (k1); k++) {                                                     \
        const int32_t *br = bb + k * ldb;                                                       \
        v16 b0, b1;                                                                             \
        __builtin_memcpy(&b0, br, sizeof b0);                                                   \
        __builtin_memcpy(&b1, br + 16, sizeof b1);                                              \
        uv16 u0 = {0}, u1 = {0}, u2 = {0}, u3 = {0}; /* each row's draws (stochastic, s <= 16) */ \
        if (STOCH_##MODE) {                                                                     \
            const uv16 m_ = mix32_v16(vlane + (uint32_t)k * 32u);                               \
            u0 = mix32_v16(m_ ^ key4[0]); u1 = mix32_v16(m_ ^ key4[1]);                         \
            u2 = mix32_v16(m_ ^ key4[2]); u3 = mix32_v16(m_ ^ key4[3]);                         \
        }                                                                                       \
        V_STEP(MODE, c00, b0, r0_[k], PCL, KIND, u0); V_STEP(MODE, c01, b1, r0_[k], PCL, KIND, u0 >> 16); \
        V_STEP(MODE, c10, b0, r1_[k], PCL, KIND, u1); V_STEP(MODE, c11, b1, r1_[k], PCL, KIND, u1 >> 16); \
        V_STEP(MODE, c20, b0, r2_[k], PCL, KIND, u2); V_STEP(MODE, c21, b1, r2_[k], PCL, KIND, u2 >> 16); \
        V_STEP(MODE, c30, b0, r3_[k], PCL, KIND, u3); V_STEP(MODE, c31, b1, r3_[k], PCL, KIND, u3 >> 16); \
    }
#define SEQ_ACC_SEQUENTIAL 1
#define SEQ_ACC_FINAL 0
#define ROW4_i32(MODE, ACC, a4, out4, key4)                                                     \
    do {                                                                                        \
        const uv16 vlane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};              \
        (void)vlane;                                                                            \
        const v16 vhalf = (v16){0} + (int32_t)half, vmask = (v16){0} + (int32_t)mask;           \
        const v16 vqlo = (v16){0} + (int32_t)qlo, vqhi = (v16){0} + (int32_t)qhi;               \
        const v16 vlo = (v16){0} + (int32_t)lo, vhi = (v16){0} + (int32_t)hi;                   \
        (void)vlo; (void)vhi;                                                                   \
        v16 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0}; \
        const int32_t *r0_ = (a4)[0], *r1_ = (a4)[1], *r2_ = (a4)[2], *r3_ = (a4)[3];          \
        const int in_range = pm >= 0 && pm <= (int64_t)qhi;                                    \
        if (!SEQ_##ACC) {                                                                       \
            if (in_range) { V_LOOP(MODE, 0, K, 0, 0) }                                          \
            else { V_LOOP(MODE, 0, K, 1, 0) }                                                   \
        } else if (!in_range) {                                                                 \
            V_LOOP(MODE, 0, K, 1, 1)                                                            \
        } else {                                                                                \
            const int64_t pma = pm << d; /* |p << d| <= pma */                                  \
            for (int64_t k0 = 0, k1; k0 < K; k0 = k1) {                                          \
                v16 t = vmax_v16(vabs_v16(c00), vabs_v16(c01));                                 \
                t = vmax_v16(t, vmax_v16(vabs_v16(c10), vabs_v16(c11)));                        \
                t = vmax_v16(t, vmax_v16(vabs_v16(c20), vabs_v16(c21)));                        \
                t = vmax_v16(t, vmax_v16(vabs_v16(c30), vabs_v16(c31)));                        \
                int64_t m = 0;                                                                  \
                for (int i = 0; i < 16; i++) m = t[i] > m ? t[i] : m;                           \
                const int64_t n = ((int64_t)hi - m) / pma;                                      \
                if (n >= V_RUN) {                                                               \
                    k1 = K - k0 < n ? K : k0 + n;                                               \
                    if (d == 0) { V_LOOP(MODE, k0, k1, 0, 3) }                                  \
                    else { V_LOOP(MODE, k0, k1, 0, 2) }                                         \
                } else {                                                                        \
                    k1 = K - k0 < V_CHUNK ? K : k0 + V_CHUNK;                                   \
                    V_LOOP(MODE, k0, k1, 0, 1)                                                  \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        __builtin_memcpy((out4)[0], &c00, 64); __builtin_memcpy((out4)[0] + 16, &c01, 64);      \
        __builtin_memcpy((out4)[1], &c10, 64); __builtin_memcpy((out4)[1] + 16, &c11, 64);      \
        __builtin_memcpy((out4)[2], &c20, 64); __builtin_memcpy((out4)[2] + 16, &c21, 64);      \
        __builtin_memcpy((out4)[3], &c30, 64); __builtin_memcpy((out4)[3] + 16, &c31, 64);      \
    } while (0)
#define ROW4_i64(MODE, ACC, a4, out4, key4) (void)(a4) /* int64 sums: one row at a time */
#define V4_i32 1
#define V4_i64 0

/* Rows r0 <= r < r1 of a tile against its column block (bb, ldb; columns j0 .. j0+jn-1):
 * four at a time through the int32 micro-kernel where the block is full, else one at a
 * time.  ROW(r, buf) is row r's K int32 values (filled into buf, K entries, where it must
 * be); PUT(SFX, r, vals) stores the row's jn sums; stochastic draws are keyed by (rb + r,
 * j0).  Shared by the matmul and conv kernels. */
#define TILE_ROWS(MODE, T, SFX, ACC, JB, r0, r1, rb, ROW, PUT)                                  \
    do {                                                                                        \
        int64_t r = (r0);                                                                       \
        for (; V4_##SFX && (!STOCH_##MODE || s <= 16) && jn == JB && r + 4 <= (r1); r += 4) {   \
            const int32_t *a4[4];                                                               \
            uint32_t key4[4];                                                                   \
            for (int i = 0; i < 4; i++) {                                                       \
                a4[i] = ROW(r + i, abuf + i * K);                                               \
                key4[i] = STOCH_##MODE ? tile_key(seed, (rb) + r + i, j0) : 0u;                 \
            }                                                                                   \
            ROW4_##SFX(MODE, ACC, a4, out4, key4);                                              \
            for (int i = 0; i < 4; i++) PUT(SFX, r + i, out4[i]);                               \
        }                                                                                       \
        for (; r < (r1); r++) {                                                                 \
            const int32_t *ar = ROW(r, abuf);                                                   \
            const uint32_t key = STOCH_##MODE ? tile_key(seed, (rb) + r, j0) : 0u;              \
            (void)key;                                                                          \
            if (jn == JB) ROW_BODY(MODE, T, SFX, ACC(SFX), JB, JB);                             \
            else ROW_BODY(MODE, T, SFX, ACC(SFX), JB, jn);                                      \
            PUT(SFX, r, acc);                                                                   \
        }                                                                                       \
    } while (0)

/* row r of a strided operand of any kind, as int32 in buf */
static inline const int32_t *mm_row(int32_t *buf, const void *A, int a_kind, int64_t sa_r, int64_t sa_k,
                                    int64_t K, int64_t r) {
    load_i32(buf, (const char *)A + (size_t)(r * sa_r) * elsize(a_kind), a_kind, sa_k, K);
    return buf;
}

/* For r < R rows and c < C columns:
 *   out[r * so_r + c * so_c] = accumulate over k of addend(A[r * sa_r + k * sa_k], B[k * sb_k + c]).
 * Tiles: G rows (1, or R when the rows are few) x JB columns, in parallel.  B's block is
 * read in place when it is int32 (kind 0), else converted once per tile; A's row is
 * converted once per (tile, row).  Operand and output types: KIND_*. */
/* the formats' constants of a kernel, from its arguments s, d, qlo_, qhi_, lo_, hi_ */
#define KERNEL_CONSTANTS(T)                                                                     \
    const T qlo = (T)qlo_, qhi = (T)qhi_, lo = (T)lo_, hi = (T)hi_;                             \
    const T half = s > 0 ? (T)((T)1 << (s - 1)) : 0;                                            \
    const T mask = s > 0 ? (T)(((T)1 << (s - 1)) - 1 + ((T)1 << (s - 1))) : 0;                  \
    (void)lo; (void)hi; (void)d; (void)pm

#define MM_ROW(r, buf) mm_row(buf, A, a_kind, sa_r, sa_k, K, r)
#define MM_PUT(SFX, r, vals)                                                                    \
    store_##SFX((char *)out + (size_t)((r) * so_r + j0 * so_c) * elsize(o_kind), o_kind, so_c, vals, jn)
#define DEFINE_KERNEL(MODE, T, SFX, JB, NAME, ACC)                                              \
    int NAME##_##MODE##_##SFX(const void *A, int a_kind, int64_t sa_r, int64_t sa_k,            \
                              const void *B, int b_kind, int64_t sb_k,                          \
                              void *out, int o_kind, int64_t so_r, int64_t so_c,                \
                              int64_t R, int64_t K, int64_t C, int64_t G,                       \
                              int s, int d, int64_t qlo_, int64_t qhi_, int64_t lo_, int64_t hi_, \
                              int64_t pm, uint64_t seed, int nthreads) {                        \
        KERNEL_CONSTANTS(T);                                                                    \
        if (G < 1) G = 1;                                                                       \
        const int64_t ngrp = (R + G - 1) / G;                                                   \
        const int64_t nblk = (C + JB - 1) / JB;                                                 \
        const int64_t ntiles = ngrp * nblk;                                                     \
        const int par = nthreads > 1 && ntiles > 1 && R * C * K >= 65536;                       \
        const int nt = par ? nthreads : 1;                                                      \
        const size_t per = (size_t)(K > 0 ? K : 1) * (b_kind == KIND_I32 ? 4 : 4 + JB);         \
        int32_t *bufs = (int32_t *)malloc(sizeof(int32_t) * per * (size_t)nt);                  \
        if (bufs == NULL) return -1;                                                            \
        _Pragma("omp parallel num_threads(nt) if(par)")                                         \
        {                                                                                       \
            int32_t *abuf = bufs + per * (size_t)omp_get_thread_num();                          \
            int32_t *bbuf = abuf + 4 * (K > 0 ? K : 1);                                         \
            T acc[JB];                                                                          \
            T out4[4][JB];                                                                      \
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
                TILE_ROWS(MODE, T, SFX, ACC, JB, g * G, r1, 0, MM_ROW, MM_PUT);                 \
            }                                                                                   \
        }                                                                                       \
        free(bufs);                                                                             \
        return 0;                                                                 \
    }

/* ------------------------------------------------------------------ convolution */
/* Intrinsic conv2d without an im2col tensor: the operands are gathered from the input's
 * grid integers x [B, Cin, H, W] (int32, contiguous) as the tiles need them, k in the
 * order (channel, kernel row, kernel column), zero where the window reaches into the
 * padding.  Positions p = (b, oh, ow), P = B * HO * WO of them; per group g, og output
 * channels with weights wt [G, og, K] (int32, contiguous).
 *   swap = 0: rows are positions (each row's K values gathered once), columns the group's
 *             output channels, read from wk [G, K, og] (the weights transposed);
 *             out [G, P, og];
 *   swap = 1 (few output channels): rows are the og channels (wt), columns blocks of JB
 *             positions whose [K, JB] values are gathered once per tile; out [G, og, P].
 * out is int64: the A-grid sums (sequential) or the exact sums (final). */
#include "conv_gather.h" /* conv_geo, gather_row_*, gather_cols_* */
DEFINE_GATHER(int32_t, i32)

/* row r: the weights of channel r (swap) or position r's window, gathered into buf */
#define CONV_ROW(r, buf) (swap ? wt + (grp * og + (r)) * K : (gather_row_i32(buf, &geo, r, grp), (const int32_t *)(buf)))
#define CONV_PUT(SFX, r, vals) store_##SFX(out + (grp * R + (r)) * NC + j0, KIND_I64, 1, vals, jn)
#define DEFINE_CONV(MODE, T, SFX, JB, NAME, ACC)                                                \
    int NAME##_##MODE##_##SFX(const int32_t *x, const int32_t *wt, const int32_t *wk, int64_t *out,  \
                              int64_t B, int64_t C, int64_t H, int64_t W, int64_t HO, int64_t WO,  \
                              int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PT, int64_t PL, \
                              int64_t DH, int64_t DW, int64_t G, int64_t og, int swap,          \
                              int s, int d, int64_t qlo_, int64_t qhi_, int64_t lo_, int64_t hi_, \
                              int64_t pm, uint64_t seed, int nthreads) {                        \
        KERNEL_CONSTANTS(T);                                                                    \
        const conv_geo geo = {x, C, H, W, HO, WO, KH, KW, SH, SW, PT, PL, DH, DW, C / G};        \
        const int64_t K = geo.CG * KH * KW, P = B * HO * WO;                                    \
        const int64_t R = swap ? og : P, NC = swap ? P : og;  /* rows, columns per group */      \
        const int64_t nblk = (NC + JB - 1) / JB;                                                \
        const int64_t rows_per = swap ? R : 4;                  /* rows per tile */             \
        const int64_t ngrp = (R + rows_per - 1) / rows_per;                                     \
        const int64_t ntiles = G * ngrp * nblk;                                                 \
        const int par = nthreads > 1 && ntiles > 1 && R * NC * K >= 65536;                      \
        const int nt = par ? nthreads : 1;                                                      \
        const size_t per = (size_t)(K > 0 ? K : 1) * (4 + JB), nidx = (size_t)(KH * KW * JB);   \
        int32_t *bufs = (int32_t *)malloc(sizeof(int32_t) * per * (size_t)nt);                  \
        int64_t *idxs = (int64_t *)malloc(sizeof(int64_t) * nidx * (size_t)nt);                \
        if (bufs == NULL || idxs == NULL) { free(bufs); free(idxs); return -1; }                \
        _Pragma("omp parallel num_threads(nt) if(par)")                                         \
        {                                                                                       \
            int32_t *abuf = bufs + per * (size_t)omp_get_thread_num();                          \
            int32_t *bbuf = abuf + 4 * (K > 0 ? K : 1);                                         \
            int64_t *scratch = idxs + nidx * (size_t)omp_get_thread_num(); /* gather_cols' offsets */ \
            T acc[JB];                                                                          \
            T out4[4][JB];                                                                      \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t t = 0; t < ntiles; t++) {                                              \
                const int64_t grp = t / (ngrp * nblk);                                          \
                const int64_t rest = t - grp * ngrp * nblk;                                     \
                const int64_t rg = rest / nblk;                                                 \
                const int64_t j0 = (rest - rg * nblk) * JB;                                     \
                const int64_t jn = NC - j0 < JB ? NC - j0 : JB;                                 \
                const int32_t *bb;                                                              \
                int64_t ldb;                                                                    \
                if (swap) {                                                                     \
                    gather_cols_i32(bbuf, JB, &geo, j0, jn, grp, scratch);                          \
                    bb = bbuf;                                                                  \
                    ldb = JB;                                                                   \
                } else {                                                                        \
                    bb = wk + grp * K * og + j0;                                                \
                    ldb = og;                                                                   \
                }                                                                               \
                const int64_t r1 = (rg + 1) * rows_per < R ? (rg + 1) * rows_per : R;           \
                TILE_ROWS(MODE, T, SFX, ACC, JB, rg * rows_per, r1, grp * R, CONV_ROW, CONV_PUT); \
            }                                                                                   \
        }                                                                                       \
        free(bufs);                                                                             \
        free(idxs);                                                                             \
        return 0;                                                                               \
    }

/* every kernel: (matmul, conv) x (sequential, final) x (int32, int64) per rounding mode */
#define DEFINE_ALL(MODE)                                                                        \
    DEFINE_KERNEL(MODE, int32_t, i32, JB32, qlab_seq, ACC_SEQUENTIAL)                           \
    DEFINE_KERNEL(MODE, int64_t, i64, JB64, qlab_seq, ACC_SEQUENTIAL)                           \
    DEFINE_KERNEL(MODE, int32_t, i32, JB32, qlab_fin, ACC_FINAL)                                \
    DEFINE_KERNEL(MODE, int64_t, i64, JB64, qlab_fin, ACC_FINAL)                                \
    DEFINE_CONV(MODE, int32_t, i32, JB32, qlab_conv_seq, ACC_SEQUENTIAL)                        \
    DEFINE_CONV(MODE, int64_t, i64, JB64, qlab_conv_seq, ACC_SEQUENTIAL)                        \
    DEFINE_CONV(MODE, int32_t, i32, JB32, qlab_conv_fin, ACC_FINAL)                             \
    DEFINE_CONV(MODE, int64_t, i64, JB64, qlab_conv_fin, ACC_FINAL)

DEFINE_ALL(none)
DEFINE_ALL(nearest)
DEFINE_ALL(even)
DEFINE_ALL(down)
DEFINE_ALL(up)
DEFINE_ALL(zero)
DEFINE_ALL(stochastic) /* s <= 30 (the caller's limit): 32-bit draws */

/* ------------------------------------------------------------------ grid integers */
/* A fixed(W, F) grid's constants and its rounding of doubles and int64s, shared by the
 * grid integers, the quantizer and the pointwise steps below.  Each step is written once
 * as an always-inlined body taking the rounding mode (1 nearest: ties away, 2 even,
 * 3 down, 4 up, 5 zero, 6 stochastic) and entered through BY_MODE_CALL with the mode as a
 * constant, so gcc compiles (and vectorises) one loop per mode with no switch inside.
 * Stochastic roundings take 32 bits u of the hash per (element, site) (elem_draw; the
 * seed is the call's, from torch's generator): floor + 1 with probability (the
 * remainder rounded up to a multiple of 2**-32). */
#include <math.h>
#define INLINE static inline __attribute__((always_inline))
#define BY_MODE_CALL(CALL)                                                                      \
    switch (mode) {                                                                             \
    case 1: CALL(1); break;                                                                     \
    case 2: CALL(2); break;                                                                     \
    case 3: CALL(3); break;                                                                     \
    case 4: CALL(4); break;                                                                     \
    case 6: CALL(6); break;                                                                     \
    default: CALL(5); break;                                                                    \
    }
typedef struct {
    double scale, unscale, lo, hi; /* 2**F, 2**-F, the range as doubles */
    int64_t qlo, qhi;              /* the range as integers */
} grid_t;
static grid_t grid_fmt(int W, int F) {
    const grid_t g = {ldexp(1.0, F), ldexp(1.0, -F), -ldexp(1.0, W - 1), ldexp(1.0, W - 1) - 1.0,
                      -((int64_t)1 << (W - 1)), ((int64_t)1 << (W - 1)) - 1};
    return g;
}
/* nearest, ties away from zero, exactly (as C's round, which gcc calls out of line):
 * t = trunc(y), d = y - t exact, one step away from zero where |d| >= 1/2 */
static inline double round_away(double y) {
    const double t = trunc(y), d = y - t;
    return t + (double)(d >= 0.5) - (double)(d <= -0.5);
}
/* R(y) for a double (stochastic: y - floor(y) is exact) */
INLINE double rnd_dbl(double y, int mode, uint32_t u) {
    switch (mode) {
    case 1: return round_away(y);
    case 2: return nearbyint(y);
    case 3: return floor(y);
    case 4: return ceil(y);
    case 6: {
        const double f = floor(y);
        return f + (double)((double)u * 0x1p-32 < y - f);
    }
    default: return trunc(y);
    }
}
/* v * 2**F clamped to the range (exact in double: the caller's F limits; NaN passes) */
INLINE double scaled(double v, const grid_t g) { /* by value: no address taken, kept in registers */
    const double y = v * g.scale;
    return y < g.lo ? g.lo : (y > g.hi ? g.hi : y);
}
/* k = clamp(R(v * 2**F)) as int64 (clamp(R(y)) = R(clamp(y)): integer bounds), NaN -> 0 */
INLINE int64_t grid_of(double v, const grid_t g, int mode, uint32_t u) {
    const double y = rnd_dbl(scaled(v, g), mode, u);
    return y == y ? (int64_t)y : 0;
}
/* R(n * 2**-s) for int64 n and 0 <= s <= 62 (rescale_int's rounding); s = 0 leaves n.
 * Stochastic: the remainder r = n mod 2**s against the draw's s low bits (s <= 32: exact)
 * or against u * 2**(s - 32) (larger s) */
INLINE int64_t rnd_int(int64_t n, int s, int mode, uint32_t u) {
    if (s == 0) return n;
    const int64_t half = (int64_t)1 << (s - 1), mask = half - 1 + half;
    switch (mode) {
    case 6: { /* the draw's s low bits, or the draw times 2**(s - 32) */
        const uint64_t t = ((uint64_t)u << (s > 32 ? s - 32 : 0)) & (uint64_t)mask;
        return (n >> s) + (int64_t)(t < (uint64_t)(n & mask));
    }
    case 1: return rnd_nearest_i64(n, s, half, mask, 0u);
    case 2: return rnd_even_i64(n, s, half, mask, 0u);
    case 3: return rnd_down_i64(n, s, half, mask, 0u);
    case 4: return rnd_up_i64(n, s, half, mask, 0u);
    default: return rnd_zero_i64(n, s, half, mask, 0u);
    }
}
/* the draw for element t's rounding at site (< 8), only where mode M is stochastic */
#define DRAW(M, t, site) ((M) == 6 ? elem_draw(seed, (t), (site)) : 0u)
static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline int64_t wrap_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline void put_value(void *y, int kind, int64_t t, int64_t k, double unscale) {
    const double v = (double)k * unscale; /* exact: |k| < 2**32, a power of two */
    if (kind == KIND_F32) ((float *)y)[t] = (float)v; /* one rounding, nearest even */
    else ((double *)y)[t] = v;
}

/* out[t] = k = clamp(R(x[t] * 2**F), -2**(W-1), 2**(W-1) - 1) as int32, for float32
 * (kind 2) or float64 (kind 3) x, contiguous; *amax = max |k|.  The scaled value is
 * exact in double (0 <= F <= 62: a power of two times a float32/float64; overflow
 * saturates either way), so this is qlab.core.formats.fixed_to_grid (stochastic: its
 * distribution, drawn from the hash).  NaN gives k = 0 (as the CUDA kernels; the reference's integer
 * cast of NaN is undefined). */
#define GRID_LOOP(T, M)                                                                         \
    do {                                                                                        \
        const T *xs = (const T *)x;                                                             \
        _Pragma("omp parallel for num_threads(nt) if(nt > 1) reduction(max:m) schedule(static)") \
        for (int64_t t = 0; t < n; t++) {                                                       \
            const int32_t k = (int32_t)grid_of((double)xs[t], g, M, DRAW(M, t, 0)); \
            out[t] = k;                                                                         \
            const int64_t a = k < 0 ? -(int64_t)k : k;                                          \
            m = a > m ? a : m;                                                                  \
        }                                                                                       \
    } while (0)
int qlab_grid_i32(const void *x, int kind, int64_t n, int W, int F, int mode, uint64_t seed, int32_t *out,
                  int64_t *amax, int nthreads) {
    const grid_t g = grid_fmt(W, F);
    const int nt = nthreads > 1 && n >= 65536 ? nthreads : 1;
    int64_t m = 0;
#define GRID_F32(M) GRID_LOOP(float, M)
#define GRID_F64(M) GRID_LOOP(double, M)
    if (kind == KIND_F32) {
        BY_MODE_CALL(GRID_F32)
    } else {
        BY_MODE_CALL(GRID_F64)
    }
    *amax = m;
    return 0;
}

/* y[t] = Q(x[t]) = k * 2**-F with k as above, in x's type (float32: kind 2, float64: 3;
 * contiguous): the elementwise fixed(W, F) quantizer.  k * 2**-F is exact in double and
 * rounded once to float32 (nearest even), as the reference's float64 step and cast; NaN
 * stays NaN, a zero result is +0.  The caller keeps F where x * 2**F is exact in double
 * (float32: |F| <= 800; float64: 0 <= F <= 900).  Stochastic (mode 6): a bias below
 * 2**-32. */
#define QUANT_LOOP(T, M)                                                                        \
    do {                                                                                        \
        const T *xs = (const T *)x;                                                             \
        T *ys = (T *)y;                                                                         \
        _Pragma("omp parallel for num_threads(nt) if(nt > 1) schedule(static)")                 \
        for (int64_t t = 0; t < n; t++) {                                                       \
            const double v = rnd_dbl(scaled((double)xs[t], g), M, DRAW(M, t, 0));             \
            ys[t] = v == v ? (T)(v * g.unscale + 0.0) : xs[t];                                  \
        }                                                                                       \
    } while (0)
int qlab_fixed_quantize(const void *x, void *y, int kind, int64_t n, int W, int F, int mode, uint64_t seed,
                        int nthreads) {
    const grid_t g = grid_fmt(W, F);
    const int nt = nthreads > 1 && n >= 65536 ? nthreads : 1;
#define Q_F32(M) QUANT_LOOP(float, M)
#define Q_F64(M) QUANT_LOOP(double, M)
    if (kind == KIND_F32) {
        BY_MODE_CALL(Q_F32)
    } else {
        BY_MODE_CALL(Q_F64)
    }
    return 0;
}

/* ------------------------------------------------------------------ pointwise steps */
/* The intrinsic linear/conv epilogue (qlab.core.intrinsic.fixed_epilogue): from sums s
 * on A's grid (int64; a strided 4-d view, n[4] sizes, st[4] strides) to values y (float32/float64, contiguous in the view's order): with final, the exact
 * sum moved to A (s << dA, clamped); with a bias (grid integers kb, index i1*bs[0] +
 * i2*bs[1] + i3*bs[2]), A(s + kb << dA); then Q: R(s * 2**-dA) clamped, times 2**-F.
 * dA = A.F - q.F >= 0; F in 0..62; shifts and sums wrap as torch's int64 ops do. */
INLINE void epilogue_body(const int64_t *s, const int64_t *n, const int64_t *st, const int64_t *kb,
                          const int64_t *bs, void *y, int kind, int final, int dA, const int mode, int64_t Alo,
                          int64_t Ahi, int64_t qlo, int64_t qhi, double unscale, uint64_t seed, int nt) {
    const int64_t rows = n[0] * n[1] * n[2];
    _Pragma("omp parallel for num_threads(nt) if(nt > 1) schedule(static)")
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i2 = r % n[2], i1 = (r / n[2]) % n[1], i0 = r / (n[2] * n[1]);
        const int64_t *sr = s + i0 * st[0] + i1 * st[1] + i2 * st[2];
        const int64_t *kr = kb ? kb + i1 * bs[0] + i2 * bs[1] : NULL;
        for (int64_t i3 = 0; i3 < n[3]; i3++) {
            int64_t v = sr[i3 * st[3]];
            if (final) v = clamp64(shl_i64(v, dA), Alo, Ahi);
            if (kr) v = clamp64(wrap_add(v, shl_i64(kr[i3 * bs[2]], dA)), Alo, Ahi);
            const int64_t t = r * n[3] + i3;
            put_value(y, kind, t, clamp64(rnd_int(v, dA, mode, DRAW(mode, t, 0)), qlo, qhi), unscale);
        }
    }
}
int qlab_fixed_epilogue(const int64_t *s, const int64_t *n, const int64_t *st, const int64_t *kb,
                        const int64_t *bs, void *y, int kind, int final, int dA, int mode, int64_t Alo,
                        int64_t Ahi, int64_t qlo, int64_t qhi, int F, uint64_t seed, int nthreads) {
    const double unscale = ldexp(1.0, -F);
    const int nt = nthreads > 1 && n[0] * n[1] * n[2] * n[3] >= 65536 ? nthreads : 1;
#define EPILOGUE(M) epilogue_body(s, n, st, kb, bs, y, kind, final, dA, M, Alo, Ahi, qlo, qhi, unscale, seed, nt)
    BY_MODE_CALL(EPILOGUE)
#undef EPILOGUE
    return 0;
}

/* Intrinsic batch norm (eval) on x [N, C, L] (float32/float64, contiguous) with the
 * per-channel constants g, r (grid integers, qlab.core.intrinsic._bn_constants_fixed):
 * kx = Q's grid integer of x (inputs; NaN -> 0), kxg = clamp(R(kx * g * 2**-F)), or
 * without inputs kxg = clamp(R(x * (g 2**-F) * 2**F)) from the same float64 product as
 * the reference; y = clamp(kxg + r) * 2**-F in x's type.  0 <= F <= 62, W <= 32.
 * Stochastic: independent draws for x's grid integer (site 0) and the product (1). */
#define BN_BODY(T, M)                                                                           \
    do {                                                                                        \
        const T *xs = (const T *)x;                                                             \
        T *ys = (T *)y;                                                                         \
        _Pragma("omp parallel for num_threads(nt) if(nt > 1) schedule(static)")                 \
        for (int64_t nc = 0; nc < N * C; nc++) {                                                \
            const int64_t c = nc % C, gc = g[c], rc = rr[c];                                    \
            const double gs = (double)gc * g_.unscale;                                          \
            const T *xr = xs + nc * L;                                                          \
            T *yr = ys + nc * L;                                                                \
            if (inputs)                                                                         \
                for (int64_t l = 0; l < L; l++) {                                               \
                    const int64_t kx = grid_of((double)xr[l], g_, M, DRAW(M, nc * L + l, 0));   \
                    const int64_t kxg = clamp64(rnd_int(kx * gc, F, M, DRAW(M, nc * L + l, 1)), g_.qlo, g_.qhi); \
                    yr[l] = (T)((double)clamp64(kxg + rc, g_.qlo, g_.qhi) * g_.unscale);        \
                }                                                                               \
            else                                                                                \
                for (int64_t l = 0; l < L; l++) {                                               \
                    const int64_t kxg = grid_of((double)xr[l] * gs, g_, M, DRAW(M, nc * L + l, 1)); \
                    yr[l] = (T)((double)clamp64(kxg + rc, g_.qlo, g_.qhi) * g_.unscale);        \
                }                                                                               \
        }                                                                                       \
    } while (0)
int qlab_fixed_bn(const void *x, void *y, int kind, int64_t N, int64_t C, int64_t L, const int64_t *g,
                  const int64_t *rr, int W, int F, int mode, int inputs, uint64_t seed, int nthreads) {
    const grid_t g_ = grid_fmt(W, F);
    const int nt = nthreads > 1 && N * C * L >= 65536 ? nthreads : 1;
#define BN_F32(M) BN_BODY(float, M)
#define BN_F64(M) BN_BODY(double, M)
    if (kind == KIND_F32) {
        BY_MODE_CALL(BN_F32)
    } else {
        BY_MODE_CALL(BN_F64)
    }
    return 0;
}

/* Intrinsic elementwise a op b (0 add, 1 sub, 2 mul) for same-shape contiguous
 * float32/float64 a, b: ka, kb their grid integers (inputs: Q's, else fixed(32, F,
 * nearest)'s; NaN -> 0), y = clamp(ka +- kb) or clamp(R(ka * kb * 2**-F)), times 2**-F.
 * Stochastic: draws at sites 0 (a), 1 (b), 2 (the product). */
#define BINARY_BODY(T, M, MI, OP)                                                               \
    do {                                                                                        \
        const T *as = (const T *)a, *bs_ = (const T *)b;                                        \
        T *ys = (T *)y;                                                                         \
        _Pragma("omp parallel for num_threads(nt) if(nt > 1) schedule(static)")                 \
        for (int64_t t = 0; t < n; t++) {                                                       \
            const int64_t ka = grid_of((double)as[t], gi, MI, DRAW(MI, t, 0));                 \
            const int64_t kb = grid_of((double)bs_[t], gi, MI, DRAW(MI, t, 1));                \
            const int64_t k = (OP) == 2 ? rnd_int(ka * kb, F, M, DRAW(M, t, 2)) : ((OP) == 0 ? ka + kb : ka - kb); \
            ys[t] = (T)((double)clamp64(k, gq.qlo, gq.qhi) * gq.unscale);                       \
        }                                                                                       \
    } while (0)
#define BINARY_OPS(T, M, MI)                                                                    \
    do {                                                                                        \
        if (op == 0) BINARY_BODY(T, M, MI, 0);                                                  \
        else if (op == 1) BINARY_BODY(T, M, MI, 1);                                             \
        else BINARY_BODY(T, M, MI, 2);                                                          \
    } while (0)
int qlab_fixed_binary(const void *a, const void *b, void *y, int kind, int64_t n, int op, int W, int F,
                      int mode, int inputs, uint64_t seed, int nthreads) {
    /* the operands' grid gi: Q's (range and rounding) with inputs, else fixed(32, F) with
     * nearest (they are on it already); the result's: gq */
    const grid_t gq = grid_fmt(W, F), gi = grid_fmt(inputs ? W : 32, F);
    const int nt = nthreads > 1 && n >= 65536 ? nthreads : 1;
#define BIN_F32(M) do { if (inputs) BINARY_OPS(float, M, M); else BINARY_OPS(float, M, 1); } while (0)
#define BIN_F64(M) do { if (inputs) BINARY_OPS(double, M, M); else BINARY_OPS(double, M, 1); } while (0)
    if (kind == KIND_F32) {
        BY_MODE_CALL(BIN_F32)
    } else {
        BY_MODE_CALL(BIN_F64)
    }
    return 0;
}

/* Version of the calling convention, checked by the loader. */
int qlab_cpu_abi(void) { return 11; }
