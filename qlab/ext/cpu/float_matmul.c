/* Intrinsic float(E, M) matmul on the CPU (qlab.ext.cpu), the same arithmetic as the
 * Triton float kernel (qlab/ext/triton/intrinsic.py) and bit-identical to the reference
 * qlab.core.intrinsic.float_matmul for deterministic rounding:
 *
 *   x^ [R, K] (Q(x), or x itself with inputs=False), w^ [K, C] (Q(w)), b^ [C] (Q(b)),
 *   all float32 values;  per output (r, c), in k order:
 *     p = Q(x^[r,k] * w^[k,c])   the product exact: in float32 where the format's products
 *                                 fit (p64 = 0), else in float64 and rounded to odd in float32
 *                                 (p64 = 1), or in float32 checked lane by lane (p64 = 2:
 *                                 operands of <= 12 bits, float64 only where float32
 *                                 underflowed or overflowed);
 *     sequential:  s = A(s + p)   s + p rounded to odd in float32 (two-sum), then to A;
 *     final:       s = A(sum p)   the finite products summed exactly as int64 multiples of
 *                                 Q's smallest step, the total rounded to odd in float32,
 *                                 then to A (an inf/NaN product decides the sum);
 *   y = Q(A(s + b^)).
 * Rounding to odd keeps what one later rounding to <= 22 significant bits needs, so each
 * A(.) and Q(.) is the correct rounding of the exact value (the Python side only sends
 * formats with M <= 21).  The exception, a32: A = binary32 itself with nearest even
 * (float(8, 23, even), qlab.ext.float_intrinsic.FloatPlan.a32): each A(s + p) is the float32
 * addition s + p, clamped where A saturates; a final sum is the exact one converted to
 * float32 (nearest even, from int64 or from an exact float64).  q32 likewise for Q: each
 * product is the float64 product (exact) converted to float32, clamped where Q saturates
 * (float64 products, scalar paths; final sums are declined for it).  sum32: A(s + p) is A
 * of the float32 sum s + p, no two-sum (A nearest even, M_A <= 10, M_Q <= M_A: the first
 * rounding never changes the second; qlab.ext.float_intrinsic).
 * round_fmt works on the float32 bits with integer arithmetic and
 * has no branches, so gcc vectorises the column loop; the rounding mode is a set of
 * flags (which of gt / tie / tie-and-odd / negative / positive round the magnitude up).
 * Built with -ffp-contract=off: no product is fused into an addition.
 * After the matmul: the convolution (qlab_float_conv: the same tiles, their windows
 * gathered from Q(x), conv_gather.h), the quantizer, and the float formats' batch norm
 * and elementwise steps.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define JB 32 /* columns per tile (row_seq_vec: 4 vectors of 8) */

typedef struct {
    int32_t emin, M;      /* 1 - bias, mantissa bits */
    float maxv, sat;      /* largest value; what overflow becomes (maxv or inf) */
    int32_t c_gt, c_tie, c_odd, c_neg, c_pos; /* rounding mode as flags (0 or -1) */
    int32_t keep_all, keep_zero_in;           /* sign of a zero result (as torch's ops) */
    int32_t c_sto;                            /* stochastic: up with probability rem / 2**s */
} fmt_t;

static inline int32_t as_i(float f) { int32_t i; memcpy(&i, &f, 4); return i; }
static inline float as_f(int32_t i) { float f; memcpy(&f, &i, 4); return f; }

/* 2**e as float32 bits for -149 <= e <= 127 */
static inline int32_t pow2_bits(int32_t e) {
    int32_t sh = e + 149 > 0 ? e + 149 : 0;
    return e >= -126 ? (e + 127) << 23 : (int32_t)(1u << (sh & 31));
}

/* Q(x) onto the format (exact), float32 in and out: qlab.ext.triton.elementwise.round_to_float */
#define FMT_ARGS(f) f.emin, f.M, f.maxv, f.sat, f.c_gt, f.c_tie, f.c_odd, f.c_neg, f.c_pos, f.keep_all, f.keep_zero_in, \
    f.c_sto
#define FMT_PARAMS(p) int32_t p##emin, int32_t p##M, float p##maxv, float p##sat, int32_t p##c_gt, int32_t p##c_tie, \
    int32_t p##c_odd, int32_t p##c_neg, int32_t p##c_pos, int32_t p##keep_all, int32_t p##keep_zero_in, int32_t p##c_sto
#define FMT_PASS(p) p##emin, p##M, p##maxv, p##sat, p##c_gt, p##c_tie, p##c_odd, p##c_neg, p##c_pos, p##keep_all, \
    p##keep_zero_in, p##c_sto

/* Stochastic rounding's threshold: up with probability rem / 2**st, the draw's top 30 bits
 * against rem * 2**(30 - st): exact for st <= 30; beyond (|x| below 2**-6 of Q's step),
 * rem * 2**(30 - st) floored: low by less than 2**-30 */
static inline int32_t sto_scaled(int32_t rem, int32_t st) {
    return st <= 30 ? rem << (30 - st) : rem >> (st - 30 < 31 ? st - 30 : 31);
}

static inline float round_fmt_r(float x, uint32_t rnd, FMT_PARAMS(f_)) {
    const int32_t bits = as_i(x);
    const int32_t neg = bits >> 31; /* 0 or -1 */
    const int32_t a = bits & 0x7FFFFFFF;
    const int32_t ef = a >> 23;
    const int32_t efp = ef > 1 ? ef : 1;
    const int32_t sig = ef > 0 ? ((a & 0x7FFFFF) | 0x800000) : (a & 0x7FFFFF);
    const int32_t e = efp - 127 > f_emin ? efp - 127 : f_emin;
    const int32_t L = e - f_M;
    const int32_t st = L - (efp - 150); /* |x| / Q's step = sig / 2**st */
    const int32_t s = st < 30 ? st : 30;     /* beyond 30: fl = 0, rem = sig */
    const int32_t fl = sig >> s;
    const int32_t rem = sig & ((1 << s) - 1);
    const int32_t half = (1 << s) >> 1;
    const int32_t inexact = -(rem != 0);
    const int32_t gt = -(rem > half);
    const int32_t tie = -(rem == half) & inexact;
    const int32_t odd = -(fl & 1);
    const int32_t up = (gt & f_c_gt) | (tie & f_c_tie) | (tie & odd & f_c_odd) | (inexact & neg & f_c_neg) |
                       (inexact & ~neg & f_c_pos) |
                       (f_c_sto & -((int32_t)(rnd >> 2) < sto_scaled(rem, st))); /* rem / 2**st */
    const int32_t r = fl + (up & 1);
    float mag = (float)r * as_f(pow2_bits(L));
    mag = (mag > f_maxv) | (a == 0x7F800000) ? f_sat : mag;
    const int32_t mb = as_i(mag);
    const int32_t keep = f_keep_all | -(mb != 0) | (f_keep_zero_in & -(a == 0));
    int32_t out = mb | (neg & keep & (int32_t)0x80000000);
    out = a > 0x7F800000 ? bits : out;
    return as_f(out);
}

static inline float round_fmt(float x, FMT_PARAMS(f_)) { return round_fmt_r(x, 0, FMT_PASS(f_)); }

#include "draws.h" /* mix32, row_key, draw: the stochastic draws */
#include "conv_gather.h" /* conv_geo, DEFINE_GATHER: the convolution's windows */

/* a + b rounded to odd in float32 (inf/NaN as float addition gives them) */
static inline float two_sum_odd(float a, float b) {
    const float s = a + b;
    const float bb = s - a;
    const float err = (a - (s - bb)) + (b - bb);
    const int32_t sb = as_i(s);
    const int32_t fix = (err != 0.0f) & ((sb & 0x7F800000) != 0x7F800000) & ((sb & 1) == 0);
    const int32_t step = ((err > 0.0f) == (s > 0.0f)) ? 1 : -1;
    return fix ? as_f(sb + step) : s;
}

/* a float64 rounded to odd in float32; magnitudes >= 2**128 become inf */
static inline float f64_to_f32_odd(double p) {
    float f = (float)p;
    const int over = ((as_i(f) & 0x7FFFFFFF) == 0x7F800000) & (fabs(p) < 3.402823669209385e38);
    f = over ? (p < 0 ? -3.4028234663852886e38f : 3.4028234663852886e38f) : f;
    const int32_t fb = as_i(f);
    const double back = (double)f;
    const int32_t fix = (back != p) & ((fb & 0x7F800000) != 0x7F800000) & ((fb & 1) == 0);
    const int32_t step = fabs(p) > fabs(back) ? 1 : -1;
    return fix ? as_f(fb + step) : f;
}

/* an int64 (|n| < 2**62) rounded to odd in float32 */
static inline float i64_to_f32_odd(int64_t n) {
    const float f = (float)n;
    const int64_t back = (int64_t)f;
    const int32_t fb = as_i(f);
    const int32_t fix = (back != n) & ((fb & 1) == 0);
    const int32_t step = ((n > back) == (n > 0)) ? 1 : -1;
    return fix ? as_f(fb + step) : f;
}

static inline float product(float xv, float wv, int p64) {
    return p64 ? f64_to_f32_odd((double)xv * (double)wv) : xv * wv;
}

/* A(s) for A = binary32 with nearest even (a32; Q alike, q32) of a float32 result s: s, clamped to
 * +-maxv where A saturates (sat = maxv; with inf, sat = inf and only inf exceeds maxv);
 * NaN fails both comparisons and stays */
static inline float clamp32(float s, float maxv, float sat) {
    return s > maxv ? sat : (s < -maxv ? -sat : s);
}

/* Q(xv * wv): q32, the float64 product converted to float32 and clamped; else rounded */
static inline float qprod(float xv, float wv, int p64, int q32, uint32_t rnd, FMT_PARAMS(q_)) {
    return q32 ? clamp32((float)((double)xv * (double)wv), q_maxv, q_sat)
               : round_fmt_r(product(xv, wv, p64), rnd, FMT_PASS(q_));
}

/* One k step over n columns: acc = A(acc + Q(xv * w)) */
static inline void seq_step(float *restrict acc, const float *restrict wr, float xv, int64_t n, FMT_PARAMS(q_),
                            FMT_PARAMS(a_), const int p64, const int a32, const int q32, const int sum32) {
    for (int64_t j = 0; j < n; j++) {
        const float p = qprod(xv, wr[j], p64, q32, 0, FMT_PASS(q_));
        acc[j] = a32 ? clamp32(acc[j] + p, a_maxv, a_sat)
                     : round_fmt(sum32 ? acc[j] + p : two_sum_odd(acc[j], p), FMT_PASS(a_));
    }
}

/* One k step over n columns of the exact sum: finite products as int64 steps, the rest as floats */
static inline void fin_step(int64_t *restrict isum, float *restrict nonfin, const float *restrict wr, float xv,
                            int64_t n, FMT_PARAMS(q_), const int p64, const float to_steps) {
    for (int64_t j = 0; j < n; j++) {
        const float p = round_fmt(product(xv, wr[j], p64), FMT_PASS(q_));
        const int fin = (as_i(p) & 0x7F800000) != 0x7F800000;
        isum[j] += (int64_t)(fin ? p * to_steps : 0.0f);
        nonfin[j] += fin ? 0.0f : p;
    }
}

/* ------------------------------------------------------------------ 8 lanes at once
 * The same steps on GCC vector types (8 x int32 / float32: AVX2 registers where the CPU
 * has them); comparisons give -1/0 lane masks, sel() picks by mask.  Used for full tiles
 * of sequential sums with float32 products, the common case (fp16, fp8 formats). */
typedef int32_t vi __attribute__((vector_size(32)));
typedef float vf __attribute__((vector_size(32)));

typedef struct {
    vi emin, M, c_gt, c_tie, c_odd, c_neg, c_pos, keep_all, keep_zero_in;
    vf maxv, sat;
    vi ebmax; /* float32 biased exponent of the binade above maxv (vround_hw's mode 3) */
    vi c_sto;
    /* vround_r's normal-range path: biased emin, shift 23 - M, its mask and half, 30 - shift,
     * the implicit bit where M = 0 (the significand's last kept bit is then bit 23) */
    vi eb_min, s0, mask0, half0, sh30, imp0;
} vfmt_t;

static inline vfmt_t vfmt(const fmt_t f) {
    const vi z = {0};
    const vf zf = {0};
    const int s0 = f.M <= 22 ? 23 - f.M : 1; /* M > 22: never on the normal-range path (vround_r) */
    vfmt_t v = {z + f.emin, z + f.M, z + f.c_gt, z + f.c_tie, z + f.c_odd, z + f.c_neg, z + f.c_pos,
                z + f.keep_all, z + f.keep_zero_in, zf + f.maxv, zf + f.sat, z + (((as_i(f.maxv) >> 23) & 0xFF) + 1),
                z + f.c_sto, z + (f.M <= 22 ? f.emin + 127 : 255), z + s0, z + ((1 << s0) - 1), z + (1 << (s0 - 1)),
                z + (30 - s0), z + (f.M == 0 ? 0x800000 : 0)};
    return v;
}

static inline vi sel(vi m, vi a, vi b) { return (a & m) | (b & ~m); }

/* clamp32 on 8 lanes */
static inline vf vclamp32(vf s, const vfmt_t *f) {
    const vi hi = s > f->maxv, lo = s < -f->maxv;
    return (vf)sel(hi, (vi)f->sat, sel(lo, (vi)(-f->sat), (vi)s));
}

typedef uint32_t vu __attribute__((vector_size(32)));

/* round_fmt_r on 8 lanes: with sto, the stochastic term from the draws rnd (a constant
 * 0 leaves the deterministic modes' code as it was) */
static inline __attribute__((always_inline)) vf vround_r(vf x, const vfmt_t *f, vu rnd, const int sto) {
    const vi one = (vi){0} + 1;
    const vi bits = (vi)x;
    const vi neg = bits >> 31;
    const vi a = bits & 0x7FFFFFFF;
    { /* every lane zero or finite in Q's normal range: the rounding point is bit 23 - M of the
       * float32 bits (the general code's shift s is then 23 - M), no variable shifts */
        const vi normal = ((a >> 23) >= f->eb_min) & (a < 0x7F800000);
        const vi fast = normal | (a == 0);
        uint64_t lanes[4];
        memcpy(lanes, &fast, 32);
        if (__builtin_expect((lanes[0] & lanes[1] & lanes[2] & lanes[3]) == ~(uint64_t)0, 1)) {
            const vi rem = a & f->mask0, inexact = rem != 0;
            const vi gt = rem > f->half0, tie = rem == f->half0;
            const vi odd = -(((a | f->imp0) >> f->s0) & 1);
            vi up = (gt & f->c_gt) | (tie & f->c_tie) | (tie & odd & f->c_odd) | (inexact & neg & f->c_neg) |
                    (inexact & ~neg & f->c_pos);
            if (sto) up |= f->c_sto & ((vi)(rnd >> 2) < (rem << f->sh30));
            vi mb = (a & ~f->mask0) + (up & (f->mask0 + 1)); /* a carry steps the exponent */
            mb = sel((vf)mb > f->maxv, (vi)f->sat, mb);
            const vi keep = f->keep_all | (mb != 0) | (f->keep_zero_in & (a == 0));
            return (vf)(mb | (neg & keep & (int32_t)0x80000000));
        }
    }
    const vi ef = a >> 23;
    const vi efp = sel(ef > 1, ef, one);
    const vi sig = sel(ef > 0, (a & 0x7FFFFF) | 0x800000, a & 0x7FFFFF);
    const vi e = sel(efp - 127 > f->emin, efp - 127, f->emin);
    const vi L = e - f->M;
    const vi st = L - (efp - 150); /* |x| / Q's step = sig / 2**st */
    const vi s = sel(st < 30, st, one * 30);
    const vi fl = sig >> s;
    const vi rem = sig & ((one << s) - 1);
    const vi half = (one << s) >> 1;
    const vi inexact = rem != 0;
    const vi gt = rem > half;
    const vi tie = (rem == half) & inexact;
    const vi odd = -(fl & 1);
    vi up = (gt & f->c_gt) | (tie & f->c_tie) | (tie & odd & f->c_odd) | (inexact & neg & f->c_neg) |
            (inexact & ~neg & f->c_pos);
    if (sto) { /* sto_scaled on 8 lanes */
        const vi over = sel(st - 30 < 31, st - 30, one * 31);
        up |= f->c_sto & ((vi)(rnd >> 2) < sel(st <= 30, rem << (30 - s), rem >> sel(over > 0, over, one * 0)));
    }
    const vi r = fl + (up & 1);
    const vi sh = sel(L + 149 > 0, L + 149, one * 0);
    const vi p2 = sel(L >= -126, (L + 127) << 23, one << sh);
    vf mag = __builtin_convertvector(r, vf) * (vf)p2;
    const vi big = (mag > f->maxv) | (a == 0x7F800000);
    vi mb = sel(big, (vi)f->sat, (vi)mag);
    const vi keep = f->keep_all | (mb != 0) | (f->keep_zero_in & (a == 0));
    vi out = mb | (neg & keep & (int32_t)0x80000000);
    out = sel(a > 0x7F800000, bits, out);
    return (vf)out;
}

static inline vf vround(vf x, const vfmt_t *f) { return vround_r(x, f, (vu){0}, 0); }

static inline __attribute__((always_inline)) vf vtwo_sum_odd(vf a, vf b) {
    const vf s = a + b;
    const vf bb = s - a;
    const vf err = (a - (s - bb)) + (b - bb);
    const vi sb = (vi)s;
    const vi fix = (err != 0) & ((sb & 0x7F800000) != 0x7F800000) & ((sb & 1) == 0);
    const vi step = sel((err > 0) == (s > 0), (vi){0} + 1, (vi){0} - 1);
    return (vf)sel(fix, sb + step, sb);
}

/* vround for the formats whose nearest-even rounding a short sequence computes
 * (FLOAT_HW in qlab/ext/cpu/__init__.py; fmt_hw picks them):
 *   1  fp16 layout (E 5, M 10, IEEE max 65504): the CPU's conversion to half and back
 *      (F16C, round to nearest even, subnormals exact);
 *   2  bf16 layout (E 8, M 7): the float32 bits rounded at bit 16 to nearest even
 *      (bits + 0x7FFF + bit 16, low half cleared: subnormals and overflow to inf alike);
 *   3  any other nearest-even format whose binades stay 2**(23 - M) below float32's top
 *      (E <= 7): (x + C) - C with C = +-2**(e + 23 - M), e = x's exponent clamped to
 *      [emin, the binade above max], rounds x to a multiple of 2**(e - M) by the float32
 *      addition's own nearest even (x + C stays in C's binade, the subtraction is exact);
 *      the sign of x is put back (a zero result keeps it, as nearest even does);
 * then, as vround: magnitudes past max (inf included) become sat with their sign, NaN
 * keeps its bits, a zero keeps its sign (nearest even's rule).  Equal to vround for every
 * float32 input (tests/ext/test_cpu_float_kernel.py runs both over bit patterns).
 * hw | IN_RANGE (the caller has proved every x finite with |x| <= max, so that nothing
 * rounds past max: fcall's in_range) leaves out those two selects. */
#define IN_RANGE 4
#if defined(__F16C__)
#include <immintrin.h>
#endif
static inline __attribute__((always_inline)) vf vround_hw(vf x, const vfmt_t *f, const int hw_in) {
    const int hw = hw_in & 3;
    (void)hw; /* never 1 where the CPU has no half conversion (F16C) */
    const vi bits = (vi)x;
    vi r;
#if defined(__F16C__)
    if (hw == 1) {
        r = (vi)_mm256_cvtph_ps(_mm256_cvtps_ph((__m256)x, _MM_FROUND_TO_NEAREST_INT));
    } else
#endif
    if (hw == 3) {
        const vi sign = bits & (int32_t)0x80000000;
        vi eb = (bits & 0x7FFFFFFF) >> 23;
        eb = sel(eb < f->emin + 127, f->emin + 127, eb);
        eb = sel(eb > f->ebmax, f->ebmax, eb);
        const vf c = (vf)(((eb + 23 - f->M) << 23) | sign);
        r = (vi)((x + c) - c);
        r = (r & 0x7FFFFFFF) | sign;
    } else {
        const vu u = (vu)bits;
        r = (vi)((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
    }
    if (hw_in & IN_RANGE) return (vf)r;
    const vi big = (vf)(r & 0x7FFFFFFF) > f->maxv; /* NaN: false */
    r = sel(big, (vi)f->sat | (bits & (int32_t)0x80000000), r);
    return (vf)sel((bits & 0x7FFFFFFF) > 0x7F800000, bits, r);
}

/* vround of format f, by hw (0: the general bit arithmetic) */
static inline __attribute__((always_inline)) vf vround_by(vf x, const vfmt_t *f, const int hw) {
    return hw ? vround_hw(x, f, hw) : vround(x, f);
}

/* which short rounding (vround_hw) computes f's vround: 0 none */
static int fmt_hw(const fmt_t f, int allow) {
    const int even = f.c_gt == -1 && f.c_tie == 0 && f.c_odd == -1 && f.c_neg == 0 && f.c_pos == 0 &&
                     f.keep_all == -1 && f.c_sto == 0;
    if (!allow || !even) return 0;
#if defined(__F16C__)
    if (f.emin == -14 && f.M == 10 && f.maxv == 65504.0f) return 1;
#endif
    if (f.emin == -126 && f.M == 7 && as_i(f.maxv) == 0x7F7F0000) return 2;
    if (f.M <= 21 && ((as_i(f.maxv) >> 23) & 0xFF) + 1 + 23 - f.M <= 254) return 3;
    return 0;
}

/* x * w for 8 columns in float32; with check, lanes whose float32 product may be inexact
 * (a nonzero product that underflowed below 2**-126 or overflowed) are redone in float64
 * and rounded to odd.  Both operands have <= 12 significant bits, so every other lane is exact. */
static __attribute__((noinline, cold)) vf vproduct_redo(vf p, vi ok, float xs, const float *wr) {
    for (int i = 0; i < 8; i++)
        if (!ok[i]) p[i] = f64_to_f32_odd((double)xs * (double)wr[i]);
    return p;
}
static inline __attribute__((always_inline)) vf vproduct(vf xv, vf wv, float xs, const float *wr, int check) {
    vf p = xv * wv;
    if (check) {
        const vi ap = (vi)p & 0x7FFFFFFF;
        const vi ax = (vi)xv & 0x7FFFFFFF, aw = (vi)wv & 0x7FFFFFFF;
        const vi ok = ((ap >= 0x00800000) & (ap < 0x7F800000)) | (ap > 0x7F800000) | (ax == 0) | (aw == 0) |
                      (ax >= 0x7F800000) | (aw >= 0x7F800000);
        uint64_t lanes[4]; /* any lane not ok: four scalar ORs, not eight lane extractions */
        memcpy(lanes, &ok, 32);
        if (__builtin_expect(~(lanes[0] & lanes[1] & lanes[2] & lanes[3]) != 0, 0))
            p = vproduct_redo(p, ok, xs, wr); /* out of line: the tiles stay small (compile time) */
    }
    return p;
}

/* A full tile (JB = 4 vectors of 8 columns), sequential, float32 products */
static inline __attribute__((always_inline)) void row_seq_body(const float *x, int64_t sx_k, const float *w,
        int64_t sw_k, int64_t K, const fmt_t qf, const fmt_t af, int check, const int a32, const int sum32, float *acc,
        const int hq, const int ha) {
    const vfmt_t q = vfmt(qf), A = vfmt(af);
    vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (int64_t k = 0; k < K; k++) {
        const float xs = x[k * sx_k];
        const vf xv = (vf){0} + xs;
        const float *wr = w + k * sw_k;
        vf w0, w1, w2, w3;
        memcpy(&w0, wr, 32); memcpy(&w1, wr + 8, 32); memcpy(&w2, wr + 16, 32); memcpy(&w3, wr + 24, 32);
        const vf p0 = vround_by(vproduct(xv, w0, xs, wr, check), &q, hq), p1 = vround_by(vproduct(xv, w1, xs, wr + 8, check), &q, hq);
        const vf p2 = vround_by(vproduct(xv, w2, xs, wr + 16, check), &q, hq), p3 = vround_by(vproduct(xv, w3, xs, wr + 24, check), &q, hq);
        if (a32) {
            s0 = vclamp32(s0 + p0, &A); s1 = vclamp32(s1 + p1, &A);
            s2 = vclamp32(s2 + p2, &A); s3 = vclamp32(s3 + p3, &A);
        } else if (sum32) {
            s0 = vround_by(s0 + p0, &A, ha); s1 = vround_by(s1 + p1, &A, ha); s2 = vround_by(s2 + p2, &A, ha); s3 = vround_by(s3 + p3, &A, ha);
        } else {
            s0 = vround_by(vtwo_sum_odd(s0, p0), &A, ha); s1 = vround_by(vtwo_sum_odd(s1, p1), &A, ha);
            s2 = vround_by(vtwo_sum_odd(s2, p2), &A, ha); s3 = vround_by(vtwo_sum_odd(s3, p3), &A, ha);
        }
    }
    memcpy(acc, &s0, 32); memcpy(acc + 8, &s1, 32); memcpy(acc + 16, &s2, 32); memcpy(acc + 24, &s3, 32);
}

/* row_seq_body compiled for each pair of roundings (general or short, for Q and for A) */
static void row_seq_vec(const float *x, int64_t sx_k, const float *w, int64_t sw_k, int64_t K, const fmt_t qf,
                        const fmt_t af, int check, const int a32, const int sum32, float *acc, int hq, int ha) {
#define ROW_SEQ(HQ, HA) row_seq_body(x, sx_k, w, sw_k, K, qf, af, check, a32, sum32, acc, HQ, HA)
#define ROW_SEQ_A(HQ)                                                                           \
    switch (ha) {                                                                               \
    case 0: ROW_SEQ(HQ, 0); break;                                                              \
    case 1: ROW_SEQ(HQ, 1); break;                                                              \
    case 2: ROW_SEQ(HQ, 2); break;                                                              \
    default: ROW_SEQ(HQ, 3); break;                                                             \
    }
#define ROW_SEQ_IN(HQ)                                                                          \
    switch (ha) {                                                                               \
    case 1 | IN_RANGE: ROW_SEQ(HQ, 1 | IN_RANGE); break;                                        \
    case 2 | IN_RANGE: ROW_SEQ(HQ, 2 | IN_RANGE); break;                                        \
    default: ROW_SEQ(HQ, 3 | IN_RANGE); break;                                                  \
    }
    switch (hq) {
    case 0: ROW_SEQ_A(0); break;
    case 1: ROW_SEQ_A(1); break;
    case 2: ROW_SEQ_A(2); break;
    case 3: ROW_SEQ_A(3); break;
    case 1 | IN_RANGE: ROW_SEQ_IN(1 | IN_RANGE); break; /* fcall: ha has IN_RANGE too */
    case 2 | IN_RANGE: ROW_SEQ_IN(2 | IN_RANGE); break;
    default: ROW_SEQ_IN(3 | IN_RANGE); break;
    }
#undef ROW_SEQ_IN
#undef ROW_SEQ_A
#undef ROW_SEQ
}

/* A full tile, final: the products summed in float64, exact while every partial sum is a
 * multiple of Q's smallest step below 2**53 of them (the caller checks: dsum_ok); an
 * inf/NaN product decides the sum as float addition does.  Returns the sums rounded to
 * odd in float32 in acc (a32: to nearest even). */
typedef double vd __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) void row_fin_body(const float *x, int64_t sx_k, const float *w,
        int64_t sw_k, int64_t K, const fmt_t qf, int check, const int a32, float *acc, const int hq) {
    const vfmt_t q = vfmt(qf);
    vd d[8] = {{0}};
    for (int64_t k = 0; k < K; k++) {
        const float xs = x[k * sx_k];
        const vf xv = (vf){0} + xs;
        const float *wr = w + k * sw_k;
        for (int v = 0; v < 4; v++) {
            vf wv;
            memcpy(&wv, wr + 8 * v, 32);
            const vf p = vround_by(vproduct(xv, wv, xs, wr + 8 * v, check), &q, hq);
            vf4 lo, hi; /* the two halves (memcpy: no shuffle builtin, older compilers too) */
            memcpy(&lo, &p, 16);
            memcpy(&hi, (const char *)&p + 16, 16);
            d[2 * v] += __builtin_convertvector(lo, vd);
            d[2 * v + 1] += __builtin_convertvector(hi, vd);
        }
    }
    double tot[JB];
    memcpy(tot, d, sizeof tot);
    for (int j = 0; j < JB; j++) acc[j] = a32 ? (float)tot[j] : f64_to_f32_odd(tot[j]);
}

/* row_fin_body compiled for each product rounding */
static void row_fin_vec(const float *x, int64_t sx_k, const float *w, int64_t sw_k, int64_t K, const fmt_t qf,
                        int check, const int a32, float *acc, int hq) {
#define ROW_FIN(HQ) row_fin_body(x, sx_k, w, sw_k, K, qf, check, a32, acc, HQ)
    switch (hq) {
    case 0: ROW_FIN(0); break;
    case 1: ROW_FIN(1); break;
    case 2: ROW_FIN(2); break;
    case 3: ROW_FIN(3); break;
    case 1 | IN_RANGE: ROW_FIN(1 | IN_RANGE); break;
    case 2 | IN_RANGE: ROW_FIN(2 | IN_RANGE); break;
    default: ROW_FIN(3 | IN_RANGE); break;
    }
#undef ROW_FIN
}

/* One row r, columns j0 .. j0+n-1 (n <= JB) */
static void row(const float *x, int64_t sx_k, const float *w, int64_t sw_k, int64_t K, int64_t n, const fmt_t qf,
                const fmt_t af, int seq, int p64, int a32, int q32, int sum32, float to_steps, float *acc,
                int64_t *isum, float *nonfin) {
    for (int64_t j = 0; j < n; j++) { acc[j] = 0.0f; isum[j] = 0; nonfin[j] = 0.0f; }
    for (int64_t k = 0; k < K; k++) {
        const float xv = x[k * sx_k];
        const float *wr = w + k * sw_k;
        if (seq) {
            if (q32) {
                if (a32) seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 1, 1, 1, sum32);
                else seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 1, 0, 1, sum32);
            } else if (a32) {
                if (p64) seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 1, 1, 0, sum32);
                else seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 0, 1, 0, sum32);
            } else {
                if (p64) seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 1, 0, 0, sum32);
                else seq_step(acc, wr, xv, n, FMT_ARGS(qf), FMT_ARGS(af), 0, 0, 0, sum32);
            }
        } else {
            if (p64) fin_step(isum, nonfin, wr, xv, n, FMT_ARGS(qf), 1, to_steps);
            else fin_step(isum, nonfin, wr, xv, n, FMT_ARGS(qf), 0, to_steps);
        }
    }
}

/* One row with stochastic rounding (scalar): a draw per (row, column, k, rounding site) */
static void row_sto(const float *x, int64_t sx_k, const float *w, int64_t sw_k, int64_t K, int64_t n, int64_t c0,
                    uint32_t key, const fmt_t qf, const fmt_t af, int seq, int p64, int a32, int q32, int sum32,
                    float to_steps, float *acc, int64_t *isum, float *nonfin) {
    for (int64_t j = 0; j < n; j++) { acc[j] = 0.0f; isum[j] = 0; nonfin[j] = 0.0f; }
    for (int64_t k = 0; k < K; k++) {
        const float xv = x[k * sx_k];
        const float *wr = w + k * sw_k;
        for (int64_t j = 0; j < n; j++) {
            const float p = qprod(xv, wr[j], p64, q32, q32 ? 0 : draw(key, c0 + j, K + 1, k, 0), FMT_ARGS(qf));
            if (seq && a32) {
                acc[j] = clamp32(acc[j] + p, af.maxv, af.sat);
            } else if (seq) {
                acc[j] = round_fmt_r(sum32 ? acc[j] + p : two_sum_odd(acc[j], p), draw(key, c0 + j, K + 1, k, 1),
                                     FMT_ARGS(af));
            } else {
                const int fin = (as_i(p) & 0x7F800000) != 0x7F800000;
                isum[j] += (int64_t)(fin ? p * to_steps : 0.0f);
                nonfin[j] += fin ? 0.0f : p;
            }
        }
    }
}

/* mix32 on 8 lanes */
static inline vu vmix32(vu h) {
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}

/* row_sto for a full tile of sequential sums with float32 products (p64 != 1, Q not
 * binary32): the same draws (draw()'s counter in 32-bit arithmetic, 8 columns at once),
 * the same roundings (vround_r = round_fmt_r), so the same values as row_sto. */
static void row_sto_vec(const float *x, int64_t sx_k, const float *w, int64_t sw_k, int64_t K, int64_t c0,
                        uint32_t key, const fmt_t qf, const fmt_t af, int check, int a32, int sum32, float *acc) {
    const vfmt_t q = vfmt(qf), A = vfmt(af);
    const vu lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const uint32_t k1 = (uint32_t)(K + 1);
    vf s[4] = {{0}, {0}, {0}, {0}};
    for (int64_t k = 0; k < K; k++) {
        const float xs = x[k * sx_k];
        const vf xv = (vf){0} + xs;
        const float *wr = w + k * sw_k;
        for (int v = 0; v < 4; v++) {
            vf wv;
            memcpy(&wv, wr + 8 * v, 32);
            /* draw(key, c, K + 1, k, site) for the columns c = c0 + 8v + lane */
            const vu idx = ((lane + (uint32_t)(c0 + 8 * v)) * k1 + (uint32_t)k) * 8u;
            const vf p = vround_r(vproduct(xv, wv, xs, wr + 8 * v, check), &q, vmix32(vmix32(idx) ^ key), 1);
            if (a32) s[v] = vclamp32(s[v] + p, &A);
            else s[v] = vround_r(sum32 ? s[v] + p : vtwo_sum_odd(s[v], p), &A, vmix32(vmix32(idx + 1u) ^ key), 1);
        }
    }
    for (int v = 0; v < 4; v++) memcpy(acc + 8 * v, &s[v], 32);
}

/* What every tile of a call shares: the formats and the plan's switches. */
typedef struct {
    fmt_t qf, af;
    int seq, p64, a32, q32, sum32, dsum_ok, hq, ha;
    int sto_vec; /* stochastic full tiles on 8 lanes (row_sto_vec; else all in row_sto: the tests compare) */
    int epi_vec; /* full deterministic tiles' epilogue on 8 lanes (tile_epilogue_vec; else scalar: the tests compare) */
    int pad;     /* the columns are zero-padded to a multiple of JB: ragged tiles run as full ones */
    float to_steps, from_steps;
    uint64_t seed;
} fcall_t;

/* float_tile's epilogue for a full (or padded) deterministic tile on 8 lanes, jn columns
 * stored: the same steps (fin: A's rounding of the final sum; the bias; Q's rounding), the
 * same values.  The bias adds lie outside IN_RANGE's bound: every rounding here keeps its
 * selects. */
static void tile_epilogue_vec(const fcall_t *P, const float *acc, int fin, const float *bias, int64_t sb_c, float *y,
                              const int64_t *yc, int64_t jn) {
    const vfmt_t q = vfmt(P->qf), A = vfmt(P->af);
    const int hq = P->hq & 3, ha = P->ha & 3;
    for (int v = 0; v < 4; v++) {
        vf s;
        memcpy(&s, acc + 8 * v, 32);
        if (fin) s = P->a32 ? vclamp32(s, &A) : vround_by(s, &A, ha);
        if (bias) {
            vf bv;
            for (int i = 0; i < 8; i++) bv[i] = 8 * v + i < jn ? bias[(8 * v + i) * sb_c] : 0.0f;
            s = P->a32 ? vclamp32(s + bv, &A) : vround_by(P->sum32 ? s + bv : vtwo_sum_odd(s, bv), &A, ha);
        }
        s = P->q32 ? vclamp32(s, &q) : vround_by(s, &q, hq);
        for (int i = 0; i < 8 && 8 * v + i < jn; i++) y[yc[8 * v + i]] = s[i];
    }
}

/* One tile: row xr (K values, stride sx_k) against jn <= JB columns wc (stride sw_k between
 * k), then the epilogue: y[yc[jj]] for column jj, the bias term bias[jj * sb_c] (bias may
 * be NULL); stochastic draws keyed by row kr, columns numbered from j0. */
static void float_tile(const fcall_t *P, const float *xr, int64_t sx_k, const float *wc, int64_t sw_k, int64_t K,
                       int64_t jn, int64_t kr, int64_t j0, const float *bias, int64_t sb_c, float *y,
                       const int64_t *yc) {
    const fmt_t qf = P->qf, af = P->af;
    const int seq = P->seq, p64 = P->p64, a32 = P->a32, q32 = P->q32, sum32 = P->sum32;
    float acc[JB], nonfin[JB];
    int64_t isum[JB];
    /* p64: 0 float32 products (exact), 1 float64 products, 2 float32 checked (float64 where needed) */
    const int sto = (qf.c_sto | af.c_sto) != 0;
    const uint32_t key = sto ? row_key(P->seed, kr) : 0;
    const int full = jn == JB || P->pad; /* pad: a ragged tile's columns readable (zeros) up to JB */
    const int vec = p64 != 1 && full && !sto;
    const int vec_fin = vec && !seq && P->dsum_ok;
    if (vec && seq) row_seq_vec(xr, sx_k, wc, sw_k, K, qf, af, p64 == 2, a32, sum32, acc, P->hq, P->ha);
    else if (vec_fin) row_fin_vec(xr, sx_k, wc, sw_k, K, qf, p64 == 2, a32, acc, P->hq);
    else if (sto && seq && P->sto_vec && p64 != 1 && !q32 && full)
        row_sto_vec(xr, sx_k, wc, sw_k, K, j0, key, qf, af, p64 == 2, a32, sum32, acc);
    else if (sto) row_sto(xr, sx_k, wc, sw_k, K, jn, j0, key, qf, af, seq, p64 != 0, a32, q32, sum32, P->to_steps, acc,
                          isum, nonfin);
    else row(xr, sx_k, wc, sw_k, K, jn, qf, af, seq, p64 != 0, a32, q32, sum32, P->to_steps, acc, isum, nonfin);
    if (vec && (seq || vec_fin) && P->epi_vec) {
        tile_epilogue_vec(P, acc, vec_fin, bias, sb_c, y, yc, jn);
        return;
    }
    for (int64_t jj = 0; jj < jn; jj++) {
        float s = acc[jj];
        if (vec_fin) {
            s = a32 ? clamp32(s, af.maxv, af.sat) : round_fmt(s, FMT_ARGS(af));
        } else if (!seq) {
            /* exact scaling by a power of two (a32: a normal result, or |isum| < 2**24 converted exactly) */
            float total = (a32 ? (float)isum[jj] : i64_to_f32_odd(isum[jj])) * P->from_steps;
            total = nonfin[jj] != 0.0f ? nonfin[jj] : total; /* +-inf or NaN (NaN != 0) */
            s = a32 ? clamp32(total, af.maxv, af.sat)
                    : round_fmt_r(total, sto ? draw(key, j0 + jj, K + 1, K, 2) : 0, FMT_ARGS(af));
        }
        if (bias && a32)
            s = clamp32(s + bias[jj * sb_c], af.maxv, af.sat);
        else if (bias) {
            const float bv = bias[jj * sb_c];
            s = round_fmt_r(sum32 ? s + bv : two_sum_odd(s, bv), sto ? draw(key, j0 + jj, K + 1, K, 3) : 0,
                            FMT_ARGS(af));
        }
        y[yc[jj]] = q32 ? clamp32(s, qf.maxv, qf.sat)
                        : round_fmt_r(s, sto ? draw(key, j0 + jj, K + 1, K, 4) : 0, FMT_ARGS(qf));
    }
}

/* the fcall_t of a call's arguments; -1 in .seq for formats the kernels do not take.
 * flags: bit 0 allows the short roundings (FLOAT_HW), bit 1 the 8-lane stochastic tiles
 * (FLOAT_STO_VEC), bit 2 says the operands are in range: every product, and with seq
 * every partial sum, is finite and at most its format's max in magnitude before its
 * rounding (the caller's bound: qlab/ext/cpu/__init__.py, _in_range), so the short
 * roundings of the full tiles leave out their saturation and NaN selects (IN_RANGE), bit 3
 * the full deterministic tiles' epilogue on 8 lanes (FLOAT_EPI_VEC), bit 4 says the
 * columns are zero-padded to a multiple of JB (readable, ignored past the last; the conv
 * pads its gathered blocks itself, swap = 1), bit 5 that checked products (p64 = 2) are
 * exact in float32: none overflows or underflows (the caller's bound, _products_exact) */
static fcall_t fcall(const int32_t *qi, const float *qv, const int32_t *ai, const float *av, int seq, int p64,
                     float to_steps, float from_steps, int dsum_ok, uint64_t seed, int a32, int q32, int sum32,
                     int flags) {
    const int allow_hw = flags & 1;
    /* formats: ints {emin, M, c_gt, c_tie, c_odd, c_neg, c_pos, keep_all, keep_zero_in, c_sto}, floats {maxv, sat} */
    const fmt_t qf = {qi[0], qi[1], qv[0], qv[1], qi[2], qi[3], qi[4], qi[5], qi[6], qi[7], qi[8], qi[9]};
    const fmt_t af = {ai[0], ai[1], av[0], av[1], ai[2], ai[3], ai[4], ai[5], ai[6], ai[7], ai[8], ai[9]};
    fcall_t P = {qf, af, seq, p64, a32, q32, sum32, dsum_ok, fmt_hw(qf, allow_hw), a32 ? 0 : fmt_hw(af, allow_hw),
                 (flags >> 1) & 1, (flags >> 3) & 1, (flags >> 4) & 1, to_steps, from_steps, seed};
    if ((flags & 32) && p64 == 2) P.p64 = 0; /* the caller's bound: every product exact in float32 */
    if ((flags & 4) && P.hq && (seq ? P.ha != 0 : 1)) {
        P.hq |= IN_RANGE;
        if (seq) P.ha |= IN_RANGE;
    }
    if ((qf.M > 21 && !(q32 && qf.M == 23 && qf.emin == -126 && p64 == 1 && seq)) ||
        (af.M > 21 && !(a32 && af.M == 23 && af.emin == -126)))
        P.seq = -1;
    return P;
}

/* y[r * sy_r + c * sy_c] for r < R, c < C (the bias term b[r * sb_r + c * sb_c]).  The caller
 * may swap the operands (x*w = w*x, same k order) so that the long side is the vector one.
 * Returns 0, or -1 for an impossible argument. */
int qlab_float_matmul(const float *x, int64_t sx_r, int64_t sx_k, const float *w, int64_t sw_k, const float *b,
                      int64_t sb_r, int64_t sb_c, float *y, int64_t sy_r, int64_t sy_c, int64_t R, int64_t K, int64_t C,
                      const int32_t *qi, const float *qv, const int32_t *ai, const float *av,
                      int seq, int p64, float to_steps, float from_steps, int dsum_ok, uint64_t seed,
                      int nthreads, int a32, int q32, int sum32, int flags) {
    const fcall_t P = fcall(qi, qv, ai, av, seq, p64, to_steps, from_steps, dsum_ok, seed, a32, q32, sum32, flags);
    if (P.seq < 0) return -1;
    const int64_t nblk = (C + JB - 1) / JB;
    const int64_t ntiles = R * nblk;
    const int par = nthreads > 1 && ntiles > 1 && R * C * K >= 16384;
    const int colmajor = C > R;
    _Pragma("omp parallel for schedule(static) num_threads(par ? nthreads : 1) if(par)")
    for (int64_t t = 0; t < ntiles; t++) {
        /* tiles in the order that streams the larger operand once: a column block kept in
         * cache for every row where the columns outnumber the rows, else each row for every block */
        const int64_t r = colmajor ? t % R : t / nblk;
        const int64_t j0 = (colmajor ? t / R : t - r * nblk) * JB;
        const int64_t jn = C - j0 < JB ? C - j0 : JB;
        int64_t yc[JB];
        for (int64_t jj = 0; jj < jn; jj++) yc[jj] = r * sy_r + (j0 + jj) * sy_c;
        float_tile(&P, x + r * sx_r, sx_k, w + j0, sw_k, K, jn, r, j0, b ? b + r * sb_r + j0 * sb_c : NULL, sb_c, y, yc);
    }
    return 0;
}

/* Intrinsic conv2d on Q's values xq [B, Cin, H, W] (float32, contiguous; conv_gather.h) with
 * weights wt [G, og, K] and wk = wt transposed [G, K, og], bias b [O] or NULL, into y
 * [B, O, HO, WO]; the tiles and epilogue of qlab_float_matmul:
 *   swap = 0: rows are positions (each row's window gathered), columns the group's channels;
 *   swap = 1: rows are the group's channels, columns blocks of JB positions, gathered once
 *             per block and kept while consecutive tiles (one per channel) read it.
 * Stochastic draws: row key grp * rows + r, columns numbered within the group. */
DEFINE_GATHER(float, f32)
int qlab_float_conv(const float *xq, const float *wt, const float *wk, const float *b, float *y, int64_t B,
                    int64_t Cin, int64_t H, int64_t W, int64_t HO, int64_t WO, int64_t KH, int64_t KW, int64_t SH,
                    int64_t SW, int64_t PT, int64_t PL, int64_t DH, int64_t DW, int64_t G, int64_t og, int swap,
                    const int32_t *qi, const float *qv, const int32_t *ai, const float *av,
                    int seq, int p64, float to_steps, float from_steps, int dsum_ok, uint64_t seed,
                    int nthreads, int a32, int q32, int sum32, int flags) {
    fcall_t P = fcall(qi, qv, ai, av, seq, p64, to_steps, from_steps, dsum_ok, seed, a32, q32, sum32, flags);
    P.pad = P.pad && swap; /* the gathered blocks are padded here; the weights' columns (swap = 0) are not */
    if (P.seq < 0) return -1;
    const conv_geo geo = {xq, Cin, H, W, HO, WO, KH, KW, SH, SW, PT, PL, DH, DW, Cin / G};
    const int64_t K = geo.CG * KH * KW, L = HO * WO, Pn = B * L, O = G * og;
    const int64_t R = swap ? og : Pn, NC = swap ? Pn : og; /* rows, columns per group */
    const int64_t nblk = (NC + JB - 1) / JB;
    const int64_t ntiles = G * R * nblk;
    const int par = nthreads > 1 && ntiles > 1 && R * NC * K >= 16384;
    const int nt = par ? nthreads : 1;
    const size_t per = (size_t)(K > 0 ? K : 1) * JB, nidx = (size_t)(KH * KW * JB);
    float *bufs = (float *)malloc(sizeof(float) * per * (size_t)nt);
    int64_t *idxs = (int64_t *)malloc(sizeof(int64_t) * nidx * (size_t)nt);
    if (bufs == NULL || idxs == NULL) {
        free(bufs);
        free(idxs);
        return -2;
    }
    _Pragma("omp parallel num_threads(nt) if(par)")
    {
        float *buf = bufs + per * (size_t)omp_get_thread_num();
        int64_t *scratch = idxs + nidx * (size_t)omp_get_thread_num(), yc[JB]; /* gather_cols' offsets */
        int64_t held = -1; /* the block (grp * nblk + block) buf holds (swap) */
        _Pragma("omp for schedule(static)")
        for (int64_t t = 0; t < ntiles; t++) {
            /* swap: consecutive tiles are the channels of one block (gathered once); else the
             * blocks of one position's row */
            const int64_t grp = t / (R * nblk), rest = t - grp * R * nblk;
            const int64_t r = swap ? rest % R : rest / nblk, blk = swap ? rest / R : rest % nblk;
            const int64_t j0 = blk * JB, jn = NC - j0 < JB ? NC - j0 : JB;
            const float *xr, *wc;
            int64_t sx_k, sw_k;
            if (swap) {
                if (held != grp * nblk + blk) {
                    gather_cols_f32(buf, JB, &geo, j0, jn, grp, scratch);
                    if (jn < JB && P.pad)
                        for (int64_t k = 0; k < K; k++) memset(buf + k * JB + jn, 0, sizeof(float) * (size_t)(JB - jn));
                    held = grp * nblk + blk;
                }
                xr = wt + (grp * og + r) * K, sx_k = 1, wc = buf, sw_k = JB;
                for (int64_t jj = 0; jj < jn; jj++) { /* column: position p = (b, l) */
                    const int64_t p = j0 + jj, bb = p / L;
                    yc[jj] = bb * O * L + (grp * og + r) * L + (p - bb * L);
                }
            } else {
                gather_row_f32(buf, &geo, r, grp);
                xr = buf, sx_k = 1, wc = wk + grp * K * og + j0, sw_k = og;
                const int64_t bb = r / L;
                for (int64_t jj = 0; jj < jn; jj++) yc[jj] = bb * O * L + (grp * og + j0 + jj) * L + (r - bb * L);
            }
            const float *bias = b ? b + grp * og + (swap ? r : j0) : NULL;
            float_tile(&P, xr, sx_k, wc, sw_k, K, jn, grp * R + r, j0, bias, swap ? 0 : 1, y, yc);
        }
    }
    free(bufs);
    free(idxs);
    return 0;
}

/* y = Q(x) elementwise for n values (the "float" quantizer on CPU tensors): float32, or
 * with f64 float64 in and out, exact: each x rounded to odd in float32 first
 * (f64_to_f32_odd: magnitudes past float32's range become +-FLT_MAX or inf, both past
 * Q's), which keeps what Q's rounding needs where Q has M <= 21 and float32's exponent
 * range (the caller's limits: at least two more bits than Q everywhere). */
static inline float load_f(const void *x, int f64, int64_t i) {
    return f64 ? f64_to_f32_odd(((const double *)x)[i]) : ((const float *)x)[i];
}
static inline void store_f(void *y, int f64, int64_t i, float v) {
    if (f64) ((double *)y)[i] = (double)v;
    else ((float *)y)[i] = v;
}
/* Stochastic formats (float32 values only: the caller's rule) draw elem_draw(seed, i, 0)
 * for element i, 8 at once in the vector loop (i >> 29 is one value per aligned block). */
int qlab_float_round(const void *x, void *y, int64_t n, const int32_t *qi, const float *qv, int nthreads,
                     int allow_hw, int f64, uint64_t seed) {
    const fmt_t qf = {qi[0], qi[1], qv[0], qv[1], qi[2], qi[3], qi[4], qi[5], qi[6], qi[7], qi[8], qi[9]};
    const int64_t nv = n / 8;
    const int par = nthreads > 1 && n >= 65536;
    const int hw = fmt_hw(qf, allow_hw), sto = qf.c_sto != 0;
    _Pragma("omp parallel num_threads(par ? nthreads : 1) if(par)")
    {
        const vfmt_t q = vfmt(qf);
        const vu lane8 = {0, 8, 16, 24, 32, 40, 48, 56};
        _Pragma("omp for schedule(static)")
        for (int64_t i = 0; i < nv; i++) {
            vf v;
            for (int l = 0; l < 8; l++) v[l] = load_f(x, f64, 8 * i + l);
            if (sto) {
                const uint32_t hi = (uint32_t)(seed >> 32) ^ (uint32_t)((8 * i) >> 29) * 0x9e3779b9u;
                const vu c = (lane8 + (uint32_t)(64 * i)) ^ (uint32_t)seed; /* element t: t * 8 + site 0 */
                v = vround_r(v, &q, vmix32(vmix32(c) ^ hi), 1);
            } else {
                /* vround_by with hw spelled out as constants: each branch compiled for its
                 * rounding (vround_by(v, &q, hw) measured slower: fp16 0.30-0.45 -> 0.44-0.50 ms) */
                v = hw == 1 ? vround_hw(v, &q, 1)
                            : (hw == 2 ? vround_hw(v, &q, 2) : (hw == 3 ? vround_hw(v, &q, 3) : vround(v, &q)));
            }
            for (int l = 0; l < 8; l++) store_f(y, f64, 8 * i + l, v[l]);
        }
    }
    for (int64_t i = 8 * nv; i < n; i++)
        store_f(y, f64, i, round_fmt_r(load_f(x, f64, i), sto ? elem_draw(seed, i, 0) : 0u, FMT_ARGS(qf)));
    return 0;
}

/* ------------------------------------------------------------------ pointwise steps
 * Intrinsic batch norm (eval) and elementwise add/sub/mul for float formats: the
 * reference's float64 steps (qlab.core.intrinsic, the float branches), one pass each,
 * deterministic modes, M <= 21.  Q of a double v is f64_to_f32_odd then Q's rounding, as
 * the float64 quantizer above (the reference runs that kernel for its Q steps); sums are
 * float64 TwoSum rounded to odd (_two_sum_odd), products float64 multiplications: every
 * step is the reference's own operation on the same values.  8 lanes at once (doubles in
 * one AVX-512 or two AVX2 registers), a scalar tail. */
typedef double vd8 __attribute__((vector_size(64)));
typedef int64_t vl8 __attribute__((vector_size(64)));

static inline double two_sum_odd64(double a, double b) {
    const double s = a + b;
    const double bb = s - a;
    const double err = (a - (s - bb)) + (b - bb);
    int64_t sb;
    memcpy(&sb, &s, 8);
    const int fix = err != 0.0 && isfinite(s) && (sb & 1) == 0;
    sb += (err > 0.0) == (s > 0.0) ? 1 : -1;
    double fixed;
    memcpy(&fixed, &sb, 8);
    return fix ? fixed : s;
}
static inline vd8 vtwo_sum_odd64(vd8 a, vd8 b) {
    const vd8 s = a + b;
    const vd8 bb = s - a;
    const vd8 err = (a - (s - bb)) + (b - bb);
    const vl8 sb = (vl8)s;
    const vl8 fix = (err != 0.0) & ((sb & 0x7FF0000000000000LL) != 0x7FF0000000000000LL) & ((sb & 1) == 0);
    const vl8 step = (((err > 0.0) == (s > 0.0)) & 2) - 1; /* +1 away from zero, else -1 */
    return (vd8)(sb + (fix & step));
}
/* f64_to_f32_odd on 8 lanes */
static inline vf vf64_to_f32_odd(vd8 p) {
    const vd8 ap = (vd8)((vl8)p & 0x7FFFFFFFFFFFFFFFLL);
    vi fb = (vi)__builtin_convertvector(p, vf);
    const vi over = ((fb & 0x7FFFFFFF) == 0x7F800000) & __builtin_convertvector(ap < 3.402823669209385e38, vi);
    fb = sel(over, (fb & (int32_t)0x80000000) | 0x7F7FFFFF, fb); /* +-FLT_MAX */
    const vd8 back = __builtin_convertvector((vf)fb, vd8);
    const vd8 aback = (vd8)((vl8)back & 0x7FFFFFFFFFFFFFFFLL);
    const vi fix = __builtin_convertvector(back != p, vi) & ((fb & 0x7F800000) != 0x7F800000) & ((fb & 1) == 0);
    const vi step = sel(__builtin_convertvector(ap > aback, vi), (vi){0} + 1, (vi){0} - 1);
    return (vf)sel(fix, fb + step, fb);
}
static inline vd8 vload_d(const void *x, int f64, int64_t i) {
    vd8 v;
    if (f64) {
        memcpy(&v, (const double *)x + i, 64);
    } else {
        vf f;
        memcpy(&f, (const float *)x + i, 32);
        v = __builtin_convertvector(f, vd8);
    }
    return v;
}
static inline void vstore_f(void *y, int f64, int64_t i, vf v) {
    if (f64) {
        const vd8 d = __builtin_convertvector(v, vd8);
        memcpy((double *)y + i, &d, 64);
    } else {
        memcpy((float *)y + i, &v, 32);
    }
}
static inline double load_d(const void *x, int f64, int64_t i) {
    return f64 ? ((const double *)x)[i] : (double)((const float *)x)[i];
}
#define Q64(v) round_fmt(f64_to_f32_odd(v), FMT_ARGS(qf))
#define VQ64(v) __builtin_convertvector(vround_by(vf64_to_f32_odd(v), &q, hw), vd8)
/* the body of each entry below, compiled once per short rounding hw (vround_by) */
#define BY_HW(BODY)                                                                             \
    switch (fmt_hw(qf, allow_hw)) {                                                             \
    case 0: BODY(0); break;                                                                     \
    case 1: BODY(1); break;                                                                     \
    case 2: BODY(2); break;                                                                     \
    default: BODY(3); break;                                                                    \
    }

/* x [N, C, L] (float32, or float64 with f64; contiguous), g and r per channel (Q's values):
 * y = Q(TwoSumOdd(Q(x^ g), r)) with x^ = Q(x) (inputs) or x */
int qlab_float_bn(const void *x, void *y, int f64, int64_t N, int64_t C, int64_t L, const double *g,
                  const double *r, const int32_t *qi, const float *qv, int inputs, int allow_hw, int nthreads) {
    const fmt_t qf = {qi[0], qi[1], qv[0], qv[1], qi[2], qi[3], qi[4], qi[5], qi[6], qi[7], qi[8], qi[9]};
    const int par = nthreads > 1 && N * C * L >= 65536;
#define BN_BODY(HW)                                                                             \
    _Pragma("omp parallel for schedule(static) num_threads(par ? nthreads : 1) if(par)")        \
    for (int64_t nc = 0; nc < N * C; nc++) {                                                    \
        const int hw = (HW);                                                                    \
        const vfmt_t q = vfmt(qf);                                                              \
        const double gc = g[nc % C], rc = r[nc % C];                                            \
        const int64_t i0 = nc * L, i1 = i0 + L;                                                 \
        int64_t i = i0;                                                                         \
        for (; i + 8 <= i1; i += 8) {                                                           \
            vd8 v = vload_d(x, f64, i);                                                         \
            if (inputs) v = VQ64(v);                                                            \
            const vd8 p = VQ64(v * gc);                                                         \
            vstore_f(y, f64, i, vround_by(vf64_to_f32_odd(vtwo_sum_odd64(p, (vd8){0} + rc)), &q, hw)); \
        }                                                                                       \
        for (; i < i1; i++) {                                                                   \
            double v = load_d(x, f64, i);                                                       \
            if (inputs) v = (double)Q64(v);                                                     \
            store_f(y, f64, i, Q64(two_sum_odd64((double)Q64(v * gc), rc)));                    \
        }                                                                                       \
    }
    BY_HW(BN_BODY)
#undef BN_BODY
    return 0;
}

/* same-shape a, b (n values, contiguous): y = Q(a^ op b^), op 0 add, 1 sub (TwoSumOdd), 2 mul */
int qlab_float_binary(const void *a, const void *b, void *y, int f64, int64_t n, int op, const int32_t *qi,
                      const float *qv, int inputs, int allow_hw, int nthreads) {
    const fmt_t qf = {qi[0], qi[1], qv[0], qv[1], qi[2], qi[3], qi[4], qi[5], qi[6], qi[7], qi[8], qi[9]};
    const int par = nthreads > 1 && n >= 65536;
    const int64_t nv = n / 8;
#define BINARY_BODY(HW)                                                                         \
    _Pragma("omp parallel num_threads(par ? nthreads : 1) if(par)")                             \
    {                                                                                           \
        const int hw = (HW);                                                                    \
        const vfmt_t q = vfmt(qf);                                                              \
        _Pragma("omp for schedule(static)")                                                     \
        for (int64_t t = 0; t < nv; t++) {                                                      \
            vd8 u = vload_d(a, f64, 8 * t), v = vload_d(b, f64, 8 * t);                         \
            if (inputs) {                                                                       \
                u = VQ64(u);                                                                    \
                v = VQ64(v);                                                                    \
            }                                                                                   \
            const vd8 s = op == 2 ? u * v : vtwo_sum_odd64(u, op == 0 ? v : -v);                \
            vstore_f(y, f64, 8 * t, vround_by(vf64_to_f32_odd(s), &q, hw));                     \
        }                                                                                       \
    }
    BY_HW(BINARY_BODY)
#undef BINARY_BODY
    for (int64_t i = 8 * nv; i < n; i++) {
        double u = load_d(a, f64, i), v = load_d(b, f64, i);
        if (inputs) {
            u = (double)Q64(u);
            v = (double)Q64(v);
        }
        store_f(y, f64, i, Q64(op == 2 ? u * v : two_sum_odd64(u, op == 0 ? v : -v)));
    }
    return 0;
}
#undef Q64
#undef VQ64
#undef BY_HW

/* Per channel c of x [B, C, HW] (float32, contiguous): the largest |x| and the smallest
 * nonzero |x| as their bits (for finite x the bits order as the magnitudes; NaN's bits
 * exceed inf's, so a NaN shows as the largest; no nonzero value: 0xFFFFFFFF).  One pass,
 * no temporaries (the bounds of _conv_in_range and _products_exact). */
int qlab_abs_bits(const float *x, int64_t B, int64_t C, int64_t HW, uint32_t *cmax, uint32_t *cmin, int nthreads) {
    const int par = nthreads > 1 && C > 1 && B * C * HW >= 65536;
    _Pragma("omp parallel for schedule(static) num_threads(par ? nthreads : 1) if(par)")
    for (int64_t c = 0; c < C; c++) {
        uint32_t hi = 0, lo = 0xFFFFFFFFu;
        for (int64_t b = 0; b < B; b++) {
            const uint32_t *u = (const uint32_t *)(x + (b * C + c) * HW);
            for (int64_t i = 0; i < HW; i++) {
                const uint32_t a = u[i] & 0x7FFFFFFFu;
                hi = a > hi ? a : hi;
                const uint32_t nz = a == 0 ? 0xFFFFFFFFu : a;
                lo = nz < lo ? nz : lo;
            }
        }
        cmax[c] = hi;
        cmin[c] = lo;
    }
    return 0;
}

/* Version of the calling convention, checked by the loader. */
int qlab_float_abi(void) { return 20; }
