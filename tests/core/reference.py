"""Slow, obviously-right references in Python integers and fractions.

Every function takes Python floats and returns exact Fractions (or float('nan') /
+-inf); tests compare the tensor code to these element by element.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

DTYPE_BITS = {  # significand bits (with the hidden one), emin, emax
    torch.float64: (53, -1022, 1023),
    torch.float32: (24, -126, 127),
    torch.float16: (11, -14, 15),
    torch.bfloat16: (8, -126, 127),
}


def R(v: Fraction, mode: str, u: float | None = None) -> int:
    """Round a rational to an integer."""
    fl = v.numerator // v.denominator
    r = v - fl
    if r == 0:
        return fl
    if mode == "down":
        return fl
    if mode == "up":
        return fl + 1
    if mode == "zero":
        return fl + 1 if v < 0 else fl
    if mode == "nearest":
        return fl + 1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and v > 0) else fl
    if mode == "even":
        return fl + 1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2) else fl
    if mode == "stochastic":
        return fl + (1 if u is not None and u < r else 0)
    raise ValueError(mode)


def to_dtype(v, dtype) -> float:
    """Round an exact value once to nearest-even in dtype (overflow -> inf)."""
    if isinstance(v, float):
        return v
    p, emin, emax = DTYPE_BITS[dtype]
    if v == 0:
        return 0.0
    sign = -1 if v < 0 else 1
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, emin)
    ulp = Fraction(2) ** (e - p + 1)
    k = R(a / ulp, "even")
    val = k * ulp
    if val >= Fraction(2) ** (emax + 1):
        return sign * math.inf
    return sign * float(val)


def fixed(x: float, W: int, F: int, mode: str, u=None):
    if math.isnan(x):
        return math.nan
    lo, hi = -(2 ** (W - 1)), 2 ** (W - 1) - 1
    if math.isinf(x):
        k = hi if x > 0 else lo
    else:
        k = max(lo, min(hi, R(Fraction(x) * Fraction(2) ** F, mode, u)))
    return Fraction(k) * Fraction(2) ** -F


def float_fmt(x: float, E: int, M: int, mode: str = "even", fn: bool = False, inf: bool = False):
    bias = 2 ** (E - 1) - 1
    emin = 1 - bias
    emax = bias + 1 if fn else bias
    maxv = (2 - Fraction(2) ** ((1 if fn else 0) - M)) * Fraction(2) ** emax
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        return math.copysign(math.inf, x) if inf else (maxv if x > 0 else -maxv)
    if x == 0:
        return x  # keeps the sign of zero
    v = Fraction(x)
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, emin)
    ulp = Fraction(2) ** (e - M)
    k = R(v / ulp, mode)
    q = k * ulp
    if abs(q) > maxv:
        if inf:
            return math.copysign(math.inf, x)
        return maxv if q > 0 else -maxv
    if q == 0:
        return math.copysign(0.0, x)
    return q


def log_fmt(x: float, W: int, E: int, mode: str):
    if math.isnan(x):
        return math.nan
    emin = E - 2 ** (W - 1) + 2
    if x == 0:
        return Fraction(0)
    sign = -1 if x < 0 else 1
    a = abs(Fraction(x)) if not math.isinf(x) else None
    top = Fraction(2) ** E
    if a is None or a > top:
        return sign * top
    p = Fraction(2) ** emin if emin > -1100 else Fraction(0)  # below every float64
    if a < p:
        return sign * (p if a >= p / 2 else Fraction(0))
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    lo_p = Fraction(2) ** e
    if mode == "down":
        m = lo_p
    elif mode == "nearest":
        m = lo_p * 2 if a >= lo_p * Fraction(3, 2) else lo_p
    else:  # log: a >= sqrt(2) * 2**e  <=>  a**2 >= 2 * 4**e
        m = lo_p * 2 if a * a >= 2 * lo_p * lo_p else lo_p
    return sign * min(m, top)


def intrinsic_dot(xs, ws, b, W, F, mode, Wa, Fa, mode_a, accumulate, inputs=True):
    """One output of intrinsic linear, with Python integers (grid values)."""
    two = Fraction(2)
    q = lambda v: fixed(float(v), W, F, mode) if isinstance(v, float) else _q_exact(v, W, F, mode)  # noqa: E731
    a = lambda v: _q_exact(v, Wa, Fa, mode_a)  # noqa: E731
    xh = [q(x) if inputs else Fraction(x) for x in xs]
    wh = [q(w) for w in ws]
    ps = [_q_exact(x * w, W, F, mode) for x, w in zip(xh, wh)]
    if accumulate == "sequential":
        s = Fraction(0)
        for p in ps:
            s = a(s + p)
    else:
        s = a(sum(ps, Fraction(0)))
    bh = q(b) if b is not None else Fraction(0)
    return _q_exact(a(s + bh), W, F, mode)


def _q_exact(v: Fraction, W, F, mode):
    lo, hi = -(2 ** (W - 1)), 2 ** (W - 1) - 1
    k = max(lo, min(hi, R(v * Fraction(2) ** F, mode)))
    return Fraction(k) * Fraction(2) ** -F
