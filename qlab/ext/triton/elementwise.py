"""Triton kernels for the elementwise quantizers (one read, one write per element).

* ``fixed(W,F)``: the same exact steps as the torch reference (scale by 2**F, clamp,
  round, scale back) in the reference's compute dtype: float32 where it uses float32
  (W <= 24, F in range), else float64 (W > 24, F far out, float64 tensors).  Every
  rounding mode; ``stochastic`` draws from Triton's Philox generator (``tl.rand``).
* ``float(E,M)`` and ``log(W,E)``: integer bit manipulation of float32 values (int32
  bitcasts, shifts and masks) plus one exact float32 product by a power of two, so the
  kernels neither depend on the device's float conversions nor on libdevice.
* Tensors: float32, float16 and bfloat16 (float64 for fixed point).  16-bit tensors are
  read and written as int16 bits; results go back rounded once, to nearest even, by
  the same integer code (``store_from_float``), as torch's casts round.

Bit-identical to :mod:`qlab.core.formats` for every deterministic mode, including the
sign of zero results, NaN, infinities and subnormals.

Stochastic rounding: a 62-bit Philox seed is drawn per call from torch -- from the
``generator`` given, else from the default generator of the tensor's device (the CUDA
generator for CUDA tensors) -- so ``torch.manual_seed`` repeats a run.  The kernel reads
the seed from device memory (no host synchronisation) and uses the element index as the
Philox counter (``PHILOX4``: element 4i + j takes the j-th of the four outputs of
counter i, a quarter of the Philox work).  Uniforms have 2**-23
resolution (``tl.uint_to_uniform_float``), so the probability of rounding up
is off by less than 2**-23 (bias < 1.2e-7 grid steps); the draws are not the torch
path's draws (only the distribution is shared).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_MODES = {"nearest": 0, "even": 1, "down": 2, "up": 3, "zero": 4, "stochastic": 5}
_LOG_MODES = {"nearest": 0, "log": 1, "down": 2}
BLOCK = 1024


def _block() -> int:
    import os

    # the interpreter's cost is per program instance: fewer, larger ones under it
    return 8192 if os.environ.get("TRITON_INTERPRET") == "1" else BLOCK


def _seed_tensor(x: torch.Tensor, generator) -> torch.Tensor:
    """One int64 Philox seed, drawn from ``generator`` or the default generator of x's device."""
    if generator is not None:
        s = torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device, dtype=torch.int64)
    else:
        s = torch.randint(0, 2 ** 62, (1,), device=x.device, dtype=torch.int64)
    return s.to(x.device)


# --------------------------------------------------------------------------- fixed point
@triton.jit
def _subnormal_f32(b):
    """Whether float32 bits b are a subnormal number (not zero)."""
    return ((b & 0x7F800000) == 0) & ((b & 0x7FFFFFFF) != 0)


@triton.jit
def _floor(y):
    """floor(y), subnormal float32 y included.  Compiled, ``tl.floor``/``tl.ceil`` on
    float32 are libdevice's flush-to-zero variants (Triton builds with FTZ on): they read a
    subnormal y as 0, so floor(-2**-149) came out -0, not -1 (seen on an H100, triton 3.6;
    the interpreter does not flush).  Subnormals are told apart by their bits instead."""
    f = tl.floor(y)
    if y.dtype == tl.float32:
        b = y.to(tl.int32, bitcast=True)
        sub = _subnormal_f32(b)
        f = tl.where(sub & (b < 0), -1.0, tl.where(sub, 0.0, f))
    return f


@triton.jit
def _ceil(y):
    """ceil(y), subnormal float32 y included (see :func:`_floor`); ceil of a negative
    subnormal is -0, built from y's sign bit (no -0.0 literal a compiler might fold)."""
    c = tl.ceil(y)
    if y.dtype == tl.float32:
        b = y.to(tl.int32, bitcast=True)
        sub = _subnormal_f32(b)
        neg0 = (b & (-2147483647 - 1)).to(tl.float32, bitcast=True)
        c = tl.where(sub & (b >= 0), 1.0, tl.where(sub, neg0, c))
    return c


@triton.jit
def uniform(seed, offs, MODE: tl.constexpr):
    """``tl.rand(seed, offs)`` for stochastic rounding (MODE 5); otherwise nothing is drawn."""
    u = tl.full((), 0.0, tl.float32)
    if MODE == 5:
        u = tl.rand(seed, offs)
    return u


# Stochastic elementwise kernels: one Philox call per four elements (True, the default),
# or one per element (tl.rand).  On an H200 the second held stochastic fixed(8,4) to 54% of
# copy bandwidth (nearest: 98%).  The first takes 39 sm_90 instructions per element
# instead of 74 (bench/sass_count.py --elementwise; nearest: 25), which every pipe model
# there puts under the memory's limit -- a prediction until a GPU measures it;
# bench/gpu_check.py times and checks both.
PHILOX4 = True


@triton.jit
def uniform_block(seed_ptr, start, BLOCK: tl.constexpr, MODE: tl.constexpr, FOUR: tl.constexpr):
    """Uniforms for the BLOCK elements from ``start`` (a multiple of BLOCK), for MODE 5
    only.  FOUR: one Philox call (four 32-bit outputs) per four elements, element
    start + 4i + j taking output j of counter start/4 + i; else ``tl.rand`` per element."""
    u = tl.full((), 0.0, tl.float32)
    if MODE == 5:
        seed = tl.load(seed_ptr)
        if FOUR:
            c = start // 4 + tl.arange(0, BLOCK // 4)
            r0, r1, r2, r3 = tl.randint4x(seed, c)
            u = tl.uint_to_uniform_float(tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (BLOCK,)))
        else:
            u = tl.rand(seed, start + tl.arange(0, BLOCK))
    return u


@triton.jit
def round_float(y, MODE: tl.constexpr, u):
    """R(y) for a float32/float64 y, exactly (no step adds a constant that could round).

    MODE: 0 nearest (ties away), 1 even, 2 down, 3 up, 4 zero, 5 stochastic (floor(y) + 1
    with probability y - floor(y); u: the uniforms of :func:`uniform`/:func:`uniform_block`,
    2**-23 resolution).  Shared with the intrinsic kernels.
    """
    t = tl.where(y < 0, _ceil(y), _floor(y))  # trunc(y)
    d = y - t  # exact (y - floor(y) is not, for small negative y)
    sgn = tl.where(y < 0, -1.0, 1.0).to(y.dtype)
    if MODE == 0:
        r = tl.where((d >= 0.5) | (d <= -0.5), t + sgn, t)
    elif MODE == 1:
        t_odd = (t - 2.0 * tl.floor(t * 0.5)) == 1.0
        ad = tl.abs(d)
        r = tl.where((ad > 0.5) | ((ad == 0.5) & t_odd), t + sgn, t)
    elif MODE == 2:
        r = _floor(y)
    elif MODE == 3:
        r = _ceil(y)
    elif MODE == 4:
        r = t
    else:
        f = _floor(y)
        r = tl.where(u.to(y.dtype) < (y - f), f + 1.0, f)
    return r


# --------------------------------------------------------------------------- tensor dtypes
# float16/bfloat16 tensors travel as their int16 bits: the kernels widen them to float32
# and round results back with integer arithmetic (round to nearest even, overflow to inf,
# as torch's casts do), so no step depends on the device's or interpreter's conversions.
_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_DTYPES = "float32/float16/bfloat16/float64"
_DT16 = (torch.float32, torch.float16, torch.bfloat16)  # float and log formats: float32 arithmetic


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


@triton.jit
def load_as_float(ptr, offs, mask, DT: tl.constexpr):
    """float32 values (float64 for DT 3) of a float32/float16-bits/bfloat16-bits/float64 tensor."""
    if DT == 1:
        h = tl.load(ptr + offs, mask=mask, other=0).to(tl.int32) & 0xFFFF
        sign = (h & 0x8000) << 16
        e = (h >> 10) & 0x1F
        m = h & 0x3FF
        normal = ((e + 112) << 23) | (m << 13)
        sub = (m.to(tl.float32) * 5.960464477539063e-08).to(tl.int32, bitcast=True)  # m * 2**-24, exact
        bits = sign | tl.where(e == 0, sub, tl.where(e == 31, 0x7F800000 | (m << 13), normal))
        x = bits.to(tl.float32, bitcast=True)
    elif DT == 2:
        x = (tl.load(ptr + offs, mask=mask, other=0).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    return x


@triton.jit
def f64_to_f32_odd(p):
    """A float64 rounded to odd in float32 (exact information for one later rounding to
    <= 22 significant bits); magnitudes >= 2**128 become inf."""
    f = p.to(tl.float32)  # to nearest
    fb = f.to(tl.int32, bitcast=True)
    over = ((fb & 0x7FFFFFFF) == 0x7F800000) & (tl.abs(p) < 3.402823669209385e38)  # < 2**128
    f = tl.where(over, tl.where(p < 0, -3.4028234663852886e38, 3.4028234663852886e38), f)  # odd: max float32
    fb = f.to(tl.int32, bitcast=True)
    back = f.to(tl.float64)
    fix = (back != p) & ((fb & 0x7F800000) != 0x7F800000) & ((fb & 1) == 0)
    step = tl.where(tl.abs(p) > tl.abs(back), 1, -1)
    return tl.where(fix, (fb + step).to(tl.float32, bitcast=True), f)


@triton.jit
def store_from_float(ptr, offs, y, mask, DT: tl.constexpr):
    """Store float32 or float64 results y into a tensor of kind DT, rounded once to nearest even."""
    if DT == 3:
        tl.store(ptr + offs, y.to(tl.float64), mask=mask)
    elif DT == 0:
        tl.store(ptr + offs, y.to(tl.float32), mask=mask)  # float32 stays; float64 rounds once
    else:
        if y.dtype == tl.float64:
            y = f64_to_f32_odd(y)  # then one rounding to 16 bits is the correct one
        if DT == 1:
            r = round_to_float(y, -14, 10, 65504.0, True, 1, 0.0)
            b = r.to(tl.int32, bitcast=True)
            a = b & 0x7FFFFFFF
            e = a >> 23
            normal = ((e - 112) << 10) | ((a >> 13) & 0x3FF)
            sub = (a.to(tl.float32, bitcast=True) * 16777216.0).to(tl.int32)  # |r| / 2**-24, exact
            h = tl.where(a > 0x7F800000, 0x7E00, tl.where(a == 0x7F800000, 0x7C00, tl.where(e >= 113, normal, sub)))
        else:
            r = round_to_float(y, -126, 7, 3.3895313892515355e38, True, 1, 0.0)
            b = r.to(tl.int32, bitcast=True)
            a = b & 0x7FFFFFFF
            h = tl.where(a > 0x7F800000, 0x7FC0, a >> 16)
        h = h | ((b >> 16) & 0x8000)
        tl.store(ptr + offs, h.to(tl.int16), mask=mask)


@triton.jit
def _pow2_f64(e):
    """The float64 2**e for -1022 <= e <= 1023, from its bits."""
    return ((e.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit(do_not_specialize=["W", "F"])
def _fixed_kernel(x_ptr, y_ptr, seed_ptr, n, W, F, scale, inv_scale, lo, hi, MODE: tl.constexpr, NEG_F: tl.constexpr,
                  CT64: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr, FOUR: tl.constexpr,
                  GRID: tl.constexpr = False, amax_ptr=None):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = load_as_float(x_ptr, offs, mask, DT)
    if CT64:  # the reference's float64 steps (W > 24, F far out, float64 tensors); bounds built here
        x = x.to(tl.float64)
        y = x * _pow2_f64(F)
        one = tl.full((), 1, tl.int64)
        lo64 = (-(one << (W - 1))).to(tl.float64)
        hi64 = ((one << (W - 1)) - 1).to(tl.float64)  # rounded to float64 as the reference's clamp does
        tiny = 2.2250738585072014e-308
    else:
        y = x * scale
        lo64 = lo
        hi64 = hi
        tiny = 1.1754943508222875e-38
    if NEG_F:
        # a tiny nonzero x can underflow to 0 in x * 2**F, but floor/ceil/stochastic see it
        y = tl.where((y == 0) & (x != 0), tl.where(x < 0, -tiny, tiny).to(y.dtype), y)
    y = tl.minimum(tl.maximum(y, lo64), hi64)
    y = tl.where(x != x, x, y)  # NaN stays NaN
    r = round_float(y, MODE, uniform_block(seed_ptr, pid * BLOCK, BLOCK, MODE, FOUR))  # only MODE 5 reads the seed
    if GRID:  # the grid integers k themselves (int32; NaN -> 0) and max |k| (int64, atomic)
        k = tl.where(x != x, 0.0, r)
        tl.store(y_ptr + offs, k.to(tl.int32), mask=mask)
        bmax = tl.max(tl.abs(k), axis=0).to(tl.int64)
        # one atomic per program only where it raises the running maximum (a stale read is
        # never above the true value, so it costs at most an extra atomic): thousands of
        # programs otherwise queue on one address
        tl.atomic_max(amax_ptr, bmax, mask=bmax > tl.load(amax_ptr))
    else:
        if CT64:
            out = r * _pow2_f64(-F) + 0.0
        else:
            out = r * inv_scale + 0.0
        store_from_float(y_ptr, offs, out, mask, DT)


def _fixed_pass(x: torch.Tensor, q, generator, out: torch.Tensor, amax=None):
    """One launch of _fixed_kernel over x into ``out``: Q(x) in x's dtype, or (amax given)
    the grid integers k as int32 and max |k| into amax."""
    from qlab.core.formats import fixed_compute_dtype

    if not fixed_accepts(x, q, generator):
        raise ValueError(f"the Triton kernel covers fixed formats on {_DTYPES} tensors, not {q} on {x.dtype}")
    n = x.numel()
    if n:
        ct64 = fixed_compute_dtype(x.dtype, q.W, q.F) == torch.float64
        sc = (1.0, 1.0, 0.0, 0.0) if ct64 else (2.0 ** q.F, 2.0 ** -q.F, float(q.min_int), float(q.max_int))
        seed = _seed_tensor(x, generator) if q.rounding == "stochastic" else x
        _fixed_kernel[(triton.cdiv(n, _block()),)](_bits(x), _bits(out), seed, n, q.W, q.F, *sc,
                                               MODE=_MODES[q.rounding], NEG_F=q.F < 0, CT64=ct64, DT=_DT[x.dtype],
                                               BLOCK=_block(), FOUR=PHILOX4 and q.rounding == "stochastic",
                                               GRID=amax is not None, amax_ptr=amax)
    return out


def fixed_quantize(x: torch.Tensor, q, generator=None) -> torch.Tensor:
    xc = x.contiguous()
    return _fixed_pass(xc, q, generator, torch.empty_like(xc))


def fixed_grid_ints(x: torch.Tensor, q, generator=None):
    """(k, amax): the integers k = clamp(R(x * 2**F)) of fixed format q as an int32 tensor
    of x's shape (every W <= 32 fits), and max |k| as a one-element int64 tensor -- one
    pass over x, no host synchronisation.  The same steps as :func:`fixed_quantize`, so k
    equals ``qlab.core.formats.fixed_to_grid(x, ...)`` exactly; a NaN gives k = 0 (its
    conversion to an integer is undefined in torch)."""
    xc = x.contiguous()
    amax = torch.zeros(1, dtype=torch.int64, device=xc.device)
    k = _fixed_pass(xc, q, generator, torch.empty(xc.shape, dtype=torch.int32, device=xc.device), amax)
    return k, amax


def fixed_accepts(x: torch.Tensor, q, generator=None) -> bool:
    return q.rounding in _MODES and x.dtype in _DT


accepts = fixed_accepts  # the name the first version registered


# --------------------------------------------------------------------------- float(E, M)
@triton.jit
def _pow2_bits(e):
    """int32 bits of the float32 2**e for -149 <= e <= 127."""
    return tl.where(e >= -126, (e + 127) << 23, 1 << tl.maximum(e + 149, 0))


@triton.jit
def round_to_float(x, EMIN, M, maxv, INF: tl.constexpr, MODE: tl.constexpr, u):
    """Q(x) for float32 x onto float(E, M) (EMIN = 1 - bias, maxv its largest value),
    exactly, as float32.  Shared with the intrinsic float kernels."""
    bits = x.to(tl.int32, bitcast=True)
    a = bits & 0x7FFFFFFF
    ef = a >> 23
    if MODE == 1:
        out = _round_even_bits(bits, a, ef, EMIN, M, maxv, INF)
    else:
        out = _round_any_bits(bits, a, ef, EMIN, M, maxv, INF, MODE, u)
    return out.to(tl.float32, bitcast=True)


@triton.jit
def _round_even_bits(bits, a, ef, EMIN, M, maxv, INF: tl.constexpr):
    """Nearest-even rounding in about half the general code's instructions (the
    intrinsic float kernels round every product and partial sum): where Q's result is
    normal, round the float32 bits at bit 23 - M (a carry into the exponent is the right
    answer); where it is subnormal (|x| < 2**EMIN), (|x| + C) - C with C = 2**(EMIN - M + 23)
    rounds to Q's smallest step 2**(EMIN - M) in the float add's own round-to-nearest-even
    (|x| + C lies in [C, 2C): its ulp is that step; the subtraction is exact)."""
    s = 23 - M
    rn = (a + (((1 << s) >> 1) - 1) + ((a >> s) & 1)) & (-(1 << s))
    rn = tl.where(s > 0, rn, a)  # M = 23: nothing to round
    c = tl.cast((EMIN - M + 150) << 23, tl.int32).to(tl.float32, bitcast=True)
    rs = ((a.to(tl.float32, bitcast=True) + c) - c).to(tl.int32, bitcast=True)
    rf = tl.where(ef < EMIN + 127, rs, rn).to(tl.float32, bitcast=True)
    sat = maxv
    if INF:
        sat = float("inf")
    rf = tl.where(rf > maxv, sat, rf)  # beyond the largest value (inf included)
    out = rf.to(tl.int32, bitcast=True) | (bits & (-2147483647 - 1))  # the sign, also of a zero result
    return tl.where(a > 0x7F800000, bits, out)  # NaN


@triton.jit
def _round_any_bits(bits, a, ef, EMIN, M, maxv, INF: tl.constexpr, MODE: tl.constexpr, u):
    """Every rounding mode (the general code): the int32 bits of Q(x)."""
    neg = bits < 0
    efp = tl.maximum(ef, 1)
    sig = tl.where(ef > 0, (a & 0x7FFFFF) | 0x800000, a & 0x7FFFFF)  # |x| = sig * 2**(efp - 150)
    L = tl.maximum(efp - 127, EMIN) - M  # exponent of the format's ulp at |x|
    st = L - (efp - 150)  # |x| / the ulp = sig / 2**st
    s = tl.minimum(st, 30)  # >= 23 - M; beyond 25 the value is below 1/2 either way
    fl = sig >> s
    rem = sig & ((1 << s) - 1)
    half = (1 << s) >> 1
    inexact = rem != 0
    gt = rem > half
    tie = (rem == half) & inexact
    if MODE == 0:  # nearest: ties away from zero
        up = gt | tie
    elif MODE == 1:  # even
        up = gt | (tie & ((fl & 1) == 1))
    elif MODE == 2:  # down: magnitude up for negatives
        up = inexact & neg
    elif MODE == 3:  # up
        up = inexact & (~neg)
    elif MODE == 4:  # zero
        up = rem < 0
    else:  # stochastic: magnitude up with probability rem / 2**st (the true st: past 30, |x| is below
        # 2**-6 of the ulp and rem = sig; exact for st <= 30, within 2**-31 beyond)
        up = u < rem.to(tl.float32) * _pow2_bits(-tl.minimum(st, 149)).to(tl.float32, bitcast=True)
    r = fl + up.to(tl.int32)  # <= 2**24: exact in float32
    mag = r.to(tl.float32) * _pow2_bits(L).to(tl.float32, bitcast=True)  # exact (inf past float32's max)
    sat = maxv
    if INF:
        sat = float("inf")
    mag = tl.where((mag > maxv) | (a == 0x7F800000), sat, mag)
    mbits = mag.to(tl.int32, bitcast=True)
    # sign of a zero result, as torch's ops give it in the reference: round/ceil/floor keep
    # -0, trunc via y - frac(y) keeps it only for -0 itself, nearest and stochastic give +0
    if MODE == 0:
        keep = mbits != 0
    elif MODE == 4:
        keep = (mbits != 0) | (a == 0)
    elif MODE == 5:
        keep = mbits != 0
    else:
        keep = mbits == mbits
    out = tl.where(neg & keep, mbits | (-2147483647 - 1), mbits)
    return tl.where(a > 0x7F800000, bits, out)  # NaN


@triton.jit(do_not_specialize=["EMIN", "M"])
def _float_kernel(x_ptr, y_ptr, seed_ptr, n, EMIN, M, maxv, INF: tl.constexpr, MODE: tl.constexpr,
                  DT: tl.constexpr, BLOCK: tl.constexpr, FOUR: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = load_as_float(x_ptr, offs, mask, DT)
    y = round_to_float(x, EMIN, M, maxv, INF, MODE, uniform_block(seed_ptr, pid * BLOCK, BLOCK, MODE, FOUR))
    store_from_float(y_ptr, offs, y, mask, DT)


def float_accepts(x: torch.Tensor, q, generator=None) -> bool:
    # fn with E = 8 has values beyond float32's range: the reference handles it
    return x.dtype in _DT16 and not (q.fn and q.E == 8)


def float_quantize(x: torch.Tensor, q, generator=None) -> torch.Tensor:
    from qlab.core.formats import _float_params

    if not float_accepts(x, q, generator):
        raise ValueError(f"the Triton kernel covers float formats on float32/float16/bfloat16 tensors, not {q} on {x.dtype}")
    emin, _, maxv = _float_params(q.E, q.M, q.fn)
    xc = x.contiguous()
    y = torch.empty_like(xc)
    n = xc.numel()
    if n:
        seed = _seed_tensor(xc, generator) if q.rounding == "stochastic" else xc
        _float_kernel[(triton.cdiv(n, _block()),)](_bits(xc), _bits(y), seed, n, emin, q.M, maxv, INF=q.inf,
                                               MODE=_MODES[q.rounding], DT=_DT[x.dtype], BLOCK=_block(),
                                               FOUR=PHILOX4 and q.rounding == "stochastic")
    return y


# --------------------------------------------------------------------------- log(W, E)
def _sqrt_half_mantissa() -> int:
    """Smallest 23-bit mantissa field f with (1 + f/2**23)**2 >= 2, i.e. m >= sqrt(1/2) in frexp terms."""
    f = math.isqrt(2 ** 47) - 2 ** 23
    while (2 ** 23 + f) ** 2 < 2 ** 47:
        f += 1
    while f > 0 and (2 ** 23 + f - 1) ** 2 >= 2 ** 47:
        f -= 1
    return f


_SQRT_HALF_MANT = _sqrt_half_mantissa()


@triton.jit(do_not_specialize=["E", "EMIN"])
def _log_kernel(x_ptr, y_ptr, n, E, EMIN, MODE: tl.constexpr, THRESH: tl.constexpr, DT: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = load_as_float(x_ptr, offs, mask, DT)
    bits = x.to(tl.int32, bitcast=True)
    neg = bits < 0
    a = bits & 0x7FFFFFFF
    ef = a >> 23
    sub = ef == 0
    xn = tl.where(sub, x * 18446744073709551616.0, x)  # 2**64: subnormals become normal (exact)
    bn = xn.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    e0 = (bn >> 23) - 127 - tl.where(sub, 64, 0)  # floor(log2|x|)
    mant = bn & 0x7FFFFF
    e = e0
    if MODE == 0:  # nearest in the linear domain: up from 1.5 * 2**e
        e = e + (mant >= 4194304).to(tl.int32)
    elif MODE == 1:  # nearest in the log domain: up from sqrt(2) * 2**e
        e = e + (mant >= THRESH).to(tl.int32)
    e = tl.minimum(e, E)
    e = tl.where(a == 0x7F800000, E, e)  # infinities saturate
    # below the smallest power p = 2**EMIN: p from p/2 up, else 0
    small = (e0 < EMIN) & (a != 0x7F800000)
    e = tl.where(small, EMIN, e)
    zero = (a == 0) | (small & (e0 < EMIN - 1))
    mbits = tl.where(e > 127, 0x7F800000, tl.where(e >= -149, _pow2_bits(tl.minimum(e, 127)), 0))
    mbits = tl.where(zero, 0, mbits)
    out = tl.where(neg & (a != 0), mbits | (-2147483647 - 1), mbits)
    out = tl.where(a > 0x7F800000, bits, out)  # NaN
    store_from_float(y_ptr, offs, out.to(tl.float32, bitcast=True), mask, DT)


def log_accepts(x: torch.Tensor, q, generator=None) -> bool:
    return x.dtype in _DT16 and q.rounding in _LOG_MODES


def log_quantize(x: torch.Tensor, q, generator=None) -> torch.Tensor:
    if not log_accepts(x, q, generator):
        raise ValueError(f"the Triton kernel covers log formats on float32/float16/bfloat16 tensors, not {q} on {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    n = xc.numel()
    if n:
        # float32 magnitudes are >= 2**-149: a smallest power below 2**-151 never catches one
        E = max(-300, min(300, q.E))  # beyond float32's range either way
        emin = min(max(q.min_exponent, -200), E)
        _log_kernel[(triton.cdiv(n, _block()),)](_bits(xc), _bits(y), n, E, emin, MODE=_LOG_MODES[q.rounding],
                                             THRESH=_SQRT_HALF_MANT, DT=_DT[x.dtype], BLOCK=_block())
    return y
