"""Number formats: each a small frozen value object whose ``__call__`` quantizes a tensor.

The exact contract is ``SEMANTICS.md`` section 2; every class docstring restates its
formula.  All quantizers

* accept any floating-point tensor (float16, bfloat16, float32, float64) on any device
  and return a tensor of the same shape, dtype and device;
* compute exactly (in float64 or on an integer grid where the input dtype is too
  narrow) and round the exact result once to the tensor's dtype;
* are straight-through for autograd: the gradient of ``q(x)`` w.r.t. ``x`` is 1;
* print canonically: ``qlab.parse(str(q)) == q``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from . import backends
from .rounding import DETERMINISTIC, ROUNDINGS, check_rounding, round_to_integer

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(x, who) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who} quantizes tensors, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{who} needs a floating-point tensor, got dtype {x.dtype}")
    return x


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2**e as float64 for an integer tensor e in [-1022, 1023], built from its bits (exact)."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _fmt_num(v: float) -> str:
    """Shortest text that reads back as the same float ('0.5', '1', '1e-08')."""
    v = float(v)
    if v == int(v) and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, quantizer, generator):
        return quantizer.quantize(x, generator)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class Quantizer:
    """Base class.  Subclasses implement :meth:`quantize` (no autograd) and ``__str__``."""

    #: True when the result depends on random draws.
    stochastic: ClassVar[bool] = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_float_tensor(x, str(self))
        if x.requires_grad and torch.is_grad_enabled():
            return _StraightThrough.apply(x, self, generator)
        return self.quantize(x, generator)

    def quantize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"qlab.parse({str(self)!r})"


# --------------------------------------------------------------------------- fixed point
def cast_exact(t64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round a float64 tensor once (to nearest even) to ``dtype``.

    torch converts float64 to float16/bfloat16 through float32, which can round
    twice; we round in float64 to the target format first, so the cast is exact.
    """
    if dtype == torch.float64:
        return t64
    if dtype == torch.float32:
        return t64.to(dtype)
    if dtype == torch.float16:
        return _float_round(t64, 5, 10, "even", fn=False, overflow_inf=True, generator=None).to(dtype)
    if dtype == torch.bfloat16:
        return _float_round(t64, 8, 7, "even", fn=False, overflow_inf=True, generator=None).to(dtype)
    raise ValueError(f"cannot cast to {dtype}")


def fixed_compute_dtype(dtype: torch.dtype, W: int, F: int) -> torch.dtype:
    """float32 where every step is exact in it, else float64.

    float32 holds the grid integers exactly up to 2**24 (W <= 24), and 2**F,
    2**-F and the largest result are normal float32 numbers for the F range below.
    """
    if dtype != torch.float64 and W <= 24 and -126 <= F <= 126 and W - 1 - F <= 126:
        return torch.float32
    return torch.float64


def fixed_to_grid(x: torch.Tensor, W: int, F: int, rounding: str, generator=None, dtype=None) -> torch.Tensor:
    """The integers k = clamp(R(x * 2**F)) as a float tensor of ``dtype`` (exact)."""
    ct = dtype or fixed_compute_dtype(x.dtype, W, F)
    y = x.to(ct) * (2.0 ** F)
    if F < 0:
        # A tiny nonzero x can underflow to 0 in x * 2**F, but ceil/floor/stochastic
        # still see it: keep its sign with a stand-in far below 1/2.
        tiny = torch.finfo(ct).tiny
        y = torch.where((y == 0) & (x != 0), torch.copysign(torch.full_like(y, tiny), y.new_tensor(1.0) * x.to(ct)), y)
    lo, hi = -(2 ** (W - 1)), 2 ** (W - 1) - 1
    y = torch.clamp(y, lo, hi)  # clamp(R(y)) == R(clamp(y)): the bounds are integers
    k = round_to_integer(y, rounding, generator)
    return k + 0.0  # k == 0 is +0: integers have no negative zero


@dataclass(frozen=True)
class FixedPoint(Quantizer):
    """W-bit two's complement integer k, value k * 2**-F.

    ``Q(x) = clamp(R(x * 2**F), -2**(W-1), 2**(W-1) - 1) * 2**-F``

    R is ``nearest`` (ties away from zero), ``even`` (ties to even), ``down`` (floor),
    ``up`` (ceil), ``zero`` (truncate) or ``stochastic`` (floor(y) + 1 with probability
    y - floor(y)).  W in 1..32; F any integer in [-1000, 1000] (negative: a coarser
    grid; F >= W: all fraction).  NaN stays NaN, +inf -> max, -inf -> min, and a zero
    result is +0.
    """

    W: int
    F: int
    rounding: str = "nearest"

    def __post_init__(self):
        for name in ("W", "F"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"fixed({self.W},{self.F},{self.rounding}): {name} must be an integer, got {v!r}")
        if not 1 <= self.W <= 32:
            raise ValueError(f"fixed({self.W},{self.F},{self.rounding}): word width W={self.W} is outside 1..32")
        if not -1000 <= self.F <= 1000:
            raise ValueError(f"fixed({self.W},{self.F},{self.rounding}): F={self.F} is outside -1000..1000")
        check_rounding(self.rounding)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.rounding == "stochastic"

    @property
    def min_int(self) -> int:
        return -(2 ** (self.W - 1))

    @property
    def max_int(self) -> int:
        return 2 ** (self.W - 1) - 1

    @property
    def resolution(self) -> float:
        return 2.0 ** -self.F

    @property
    def max_value(self) -> float:
        return self.max_int * 2.0 ** -self.F

    @property
    def min_value(self) -> float:
        return self.min_int * 2.0 ** -self.F

    def __str__(self) -> str:
        return f"fixed({self.W},{self.F},{self.rounding})"

    def quantize(self, x, generator=None):
        fast = backends.lookup("fixed", x, self)
        if fast is not None:
            return fast(x, self, generator)
        if x.numel() == 0:
            return x.clone()
        ct = fixed_compute_dtype(x.dtype, self.W, self.F)
        k = fixed_to_grid(x, self.W, self.F, self.rounding, generator, ct)
        v = k * (2.0 ** -self.F)  # exact in ct
        return v.to(x.dtype) if ct == torch.float32 or x.dtype == ct else cast_exact(v, x.dtype)


# --------------------------------------------------------------------------- floats
def _float_params(E: int, M: int, fn: bool):
    bias = 2 ** (E - 1) - 1
    emin = 1 - bias
    if fn:  # OCP "FN": the all-ones exponent is a normal binade, only S.1111.111 is NaN
        emax = bias + 1
        max_value = (2.0 - 2.0 ** (1 - M)) * 2.0 ** emax
    else:
        emax = bias
        max_value = (2.0 - 2.0 ** -M) * 2.0 ** emax
    return emin, emax, max_value


def _float_round(x64, E, M, rounding, fn, overflow_inf, generator):
    """Round float64 values to the float(E,M) format, result in float64 (exact)."""
    emin, emax, max_value = _float_params(E, M, fn)
    finite = torch.isfinite(x64)
    xf = torch.where(finite, x64, torch.zeros_like(x64))
    _, k = torch.frexp(xf)  # |x| = m * 2**k, m in [0.5, 1)
    e = torch.clamp(k.to(torch.int64) - 1, min=emin, max=emax + 1)  # exponent of x's binade
    y = xf * pow2(M - e)  # x / ulp, exact (power-of-two scaling in range)
    r = round_to_integer(y, rounding, generator)
    q = r * pow2(e - M)
    big = q.abs() > max_value
    over = torch.full_like(q, math.inf if overflow_inf else max_value)
    q = torch.where(big, torch.copysign(over, q), q)
    # infinities: kept with inf=True, else saturated; NaN stays NaN
    inf_val = torch.full_like(q, math.inf if overflow_inf else max_value)
    return torch.where(finite, q, torch.where(torch.isnan(x64), x64, torch.copysign(inf_val, x64)))


FLOAT_ROUNDINGS = ("even", "stochastic", "zero", "nearest", "down", "up")

_FLOAT_PRESETS = {
    "fp16": (5, 10, False),
    "bf16": (8, 7, False),
    "fp8e5m2": (5, 2, False),
    "fp8e4m3": (4, 3, True),
}


@dataclass(frozen=True)
class Float(Quantizer):
    """IEEE-like binary float: E exponent bits, M mantissa bits, subnormals.

    bias = 2**(E-1) - 1, emin = 1 - bias.  A finite x in binade e = max(floor(log2|x|),
    emin) is rounded on the grid 2**(e-M): ``Q(x) = R(x / 2**(e-M)) * 2**(e-M)``, R
    ``even`` by default (``stochastic``, ``zero`` and the fixed-point modes too).
    IEEE variant: emax = bias, max = (2 - 2**-M) * 2**emax.  ``fn=True`` (OCP FN,
    e.g. fp8e4m3): the all-ones exponent holds normal numbers, emax = bias + 1,
    max = (2 - 2**(1-M)) * 2**emax (448 for E4M3), no infinities.
    Results above max saturate to +-max (``inf=True``: overflow to +-inf); +-inf
    inputs become +-max (or stay with ``inf=True``); NaN stays NaN; zero keeps its sign.
    E in 2..8, M in 0..23 (formats up to float32's width).
    """

    E: int
    M: int
    rounding: str = "even"
    fn: bool = False
    inf: bool = False

    def __post_init__(self):
        if not (isinstance(self.E, int) and 2 <= self.E <= 8):
            raise ValueError(f"{self}: exponent bits E={self.E!r} outside 2..8")
        if not (isinstance(self.M, int) and 0 <= self.M <= 23):
            raise ValueError(f"{self}: mantissa bits M={self.M!r} outside 0..23")
        check_rounding(self.rounding, FLOAT_ROUNDINGS)
        if self.fn and self.inf:
            raise ValueError(f"{self}: an FN format (no infinities) cannot overflow to inf")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.rounding == "stochastic"

    @property
    def max_value(self) -> float:
        return _float_params(self.E, self.M, self.fn)[2]

    def __str__(self) -> str:
        for name, (e, m, fn) in _FLOAT_PRESETS.items():
            if (self.E, self.M, self.fn, self.rounding, self.inf) == (e, m, fn, "even", False):
                return name
        extra = (",fn" if self.fn else "") + (",inf" if self.inf else "")
        return f"float({self.E},{self.M},{self.rounding}{extra})"

    def quantize(self, x, generator=None):
        fast = backends.lookup("float", x, self)
        if fast is not None:
            return fast(x, self, generator)
        if x.numel() == 0:
            return x.clone()
        q = _float_round(x.to(torch.float64), self.E, self.M, self.rounding, self.fn, self.inf, generator)
        return cast_exact(q, x.dtype)


def float_preset(name: str) -> Float:
    e, m, fn = _FLOAT_PRESETS[name]
    return Float(e, m, "even", fn=fn)


# --------------------------------------------------------------------------- logarithmic
LOG_ROUNDINGS = ("nearest", "log", "down")


def _sqrt_half_up() -> float:
    """The smallest float64 c with c*c >= 1/2 exactly: for float64 m, m >= c <=> m >= sqrt(1/2)."""
    from fractions import Fraction

    c = math.sqrt(0.5)
    while Fraction(c) ** 2 < Fraction(1, 2):
        c = math.nextafter(c, 1.0)
    while Fraction(math.nextafter(c, 0.0)) ** 2 >= Fraction(1, 2):
        c = math.nextafter(c, 0.0)
    return c


_SQRT_HALF_UP = _sqrt_half_up()


@dataclass(frozen=True)
class Log(Quantizer):
    """Sign and power of two: {0} and +-2**e for the 2**(W-1) - 1 exponents e <= E ending at E.

    p = 2**(E - 2**(W-1) + 2) is the smallest power.  |x| > 2**E saturates to 2**E
    (+-inf too); |x| < p goes to 0 or p, whichever is nearer (ties to p).  In range:
    ``nearest`` picks the nearer power in the linear domain (ties up), ``log`` the
    nearer in the log2 domain (threshold sqrt(2) * 2**e), ``down`` 2**floor(log2|x|)
    (TensorQuant).  Zero is +0, NaN stays NaN.  W in 2..32.
    """

    W: int
    E: int
    rounding: str = "nearest"

    def __post_init__(self):
        if not (isinstance(self.W, int) and 2 <= self.W <= 32):
            raise ValueError(f"log({self.W},{self.E},{self.rounding}): W={self.W!r} outside 2..32")
        if not (isinstance(self.E, int) and -1000 <= self.E <= 1000):
            raise ValueError(f"log({self.W},{self.E},{self.rounding}): E={self.E!r} outside -1000..1000")
        check_rounding(self.rounding, LOG_ROUNDINGS)

    @property
    def min_exponent(self) -> int:
        return self.E - 2 ** (self.W - 1) + 2

    def __str__(self) -> str:
        return f"log({self.W},{self.E},{self.rounding})"

    def quantize(self, x, generator=None):
        fast = backends.lookup("log", x, self)
        if fast is not None:
            return fast(x, self, generator)
        if x.numel() == 0:
            return x.clone()
        x64 = x.to(torch.float64)
        a = x64.abs()
        m, k = torch.frexp(torch.where(torch.isfinite(a), a, torch.ones_like(a)))
        e = k.to(torch.int64) - 1  # |x| in [2**e, 2**(e+1))
        if self.rounding == "nearest":
            e = e + (m >= 0.75).to(torch.int64)
        elif self.rounding == "log":
            e = e + (m >= _SQRT_HALF_UP).to(torch.int64)
        emin = max(self.min_exponent, -1074)
        e = torch.clamp(e, min=-1074, max=self.E)
        mag = torch.ldexp(torch.ones_like(a), e)
        p = math.ldexp(1.0, emin) if self.min_exponent >= -1074 else 0.0
        if p > 0:
            mag = torch.where(a < p, torch.where(a >= p / 2, torch.full_like(a, p), torch.zeros_like(a)), mag)
        mag = torch.where(torch.isinf(a), torch.full_like(a, math.ldexp(1.0, self.E)), mag)
        mag = torch.where(a == 0, torch.zeros_like(a), mag)
        q = torch.where(torch.isnan(x64), x64, torch.where(x64 < 0, -mag, mag))
        return cast_exact(q, x.dtype)


# --------------------------------------------------------------------------- binary, ternary, sparse, none
Scale = Union[float, str]


def _mean_abs(x64: torch.Tensor, per_channel: bool) -> torch.Tensor:
    a = x64.abs()
    if per_channel and x64.dim() >= 1:
        return a.reshape(a.shape[0], -1).nanmean(dim=1).reshape((-1,) + (1,) * (x64.dim() - 1))
    return a.nanmean()


@dataclass(frozen=True)
class Binary(Quantizer):
    """x >= 0 -> +a, else -a.  a is a constant, ``mean`` (mean |x| over the tensor) or
    ``channel`` (mean |x| per output channel, dim 0).  NaN stays NaN (and is left out
    of the means)."""

    scale: Scale = "mean"

    def __post_init__(self):
        if isinstance(self.scale, str):
            check_rounding(self.scale, ("mean", "channel"), what="binary scale")
        elif isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"binary scale must be 'mean', 'channel' or a finite number, got {self.scale!r}")
        else:
            object.__setattr__(self, "scale", float(self.scale))

    def __str__(self) -> str:
        s = self.scale if isinstance(self.scale, str) else _fmt_num(self.scale)
        return f"binary({s})"

    def quantize(self, x, generator=None):
        if x.numel() == 0:
            return x.clone()
        x64 = x.to(torch.float64)
        a = x64.new_tensor(self.scale) if not isinstance(self.scale, str) else _mean_abs(x64, self.scale == "channel")
        q = torch.where(x64 >= 0, a, -a)
        return cast_exact(torch.where(torch.isnan(x64), x64, q), x.dtype)


@dataclass(frozen=True)
class Ternary(Quantizer):
    """|x| <= t -> 0, else sign(x) * a.

    Default (TWN, Li & Liu 2016): t = 0.7 * mean|x| (``threshold='auto'``), a = mean
    of |x| over |x| > t (``scale='mean'``; 0 when nothing exceeds t).  Either may be a
    constant.  NaN stays NaN (and is left out of the means).
    """

    threshold: Scale = "auto"
    scale: Scale = "mean"

    def __post_init__(self):
        for name, word in (("threshold", "auto"), ("scale", "mean")):
            v = getattr(self, name)
            if isinstance(v, str):
                if v != word:
                    raise ValueError(f"ternary {name} must be {word!r} or a number, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"ternary {name} must be {word!r} or a non-negative number, got {v!r}")
            else:
                object.__setattr__(self, name, float(v))

    def __str__(self) -> str:
        t = self.threshold if isinstance(self.threshold, str) else _fmt_num(self.threshold)
        s = self.scale if isinstance(self.scale, str) else _fmt_num(self.scale)
        return f"ternary({t},{s})"

    def quantize(self, x, generator=None):
        if x.numel() == 0:
            return x.clone()
        x64 = x.to(torch.float64)
        a_x = x64.abs()
        t = 0.7 * a_x.nanmean() if self.threshold == "auto" else x64.new_tensor(self.threshold)
        keep = a_x > t
        if self.scale == "mean":
            n = keep.sum()
            a = torch.where(n > 0, torch.where(keep, a_x, 0.0).sum() / n.clamp(min=1), 0.0)
        else:
            a = x64.new_tensor(self.scale)
        q = torch.where(keep, torch.copysign(a.expand_as(x64), x64), torch.zeros_like(x64))
        return cast_exact(torch.where(torch.isnan(x64), x64, q), x.dtype)


@dataclass(frozen=True)
class Sparse(Quantizer):
    """x if |x| > T else 0 (NaN stays NaN)."""

    threshold: float

    def __post_init__(self):
        v = self.threshold
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
            raise ValueError(f"sparse threshold must be a finite number >= 0, got {v!r}")
        object.__setattr__(self, "threshold", float(v))

    def __str__(self) -> str:
        return f"sparse({_fmt_num(self.threshold)})"

    def quantize(self, x, generator=None):
        drop = x.abs() <= self.threshold
        return torch.where(drop, torch.zeros_like(x), x)


@dataclass(frozen=True)
class Identity(Quantizer):
    """No quantization: returns x unchanged."""

    def __str__(self) -> str:
        return "none"

    def quantize(self, x, generator=None):
        return x


__all__ = [
    "Quantizer",
    "FixedPoint",
    "Float",
    "Log",
    "Binary",
    "Ternary",
    "Sparse",
    "Identity",
    "ROUNDINGS",
    "DETERMINISTIC",
    "cast_exact",
    "float_preset",
]


def uniform_draw(generator=None) -> float:
    """One uniform draw in [0, 1) from ``generator`` (on its device), else torch's default
    CPU generator: the scalar stochastic roundings' draws."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand((), generator=generator, device=device, dtype=torch.float64).item()


def round_fraction(v, q: FixedPoint, generator=None) -> int:
    """R(v) clamped to q's integer range, for an exact rational v (fractions.Fraction);
    stochastic draws from ``generator`` (:func:`uniform_draw`)."""
    from fractions import Fraction

    v = Fraction(v)
    fl = v.numerator // v.denominator
    r = v - fl
    mode = q.rounding
    if r == 0:
        k = fl
    elif mode == "down":
        k = fl
    elif mode == "up":
        k = fl + 1
    elif mode == "zero":
        k = fl + 1 if v < 0 else fl
    elif mode == "nearest":
        k = fl + 1 if (r > Fraction(1, 2) or (r == Fraction(1, 2) and v > 0)) else fl
    elif mode == "even":
        k = fl + 1 if (r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2 == 1)) else fl
    else:  # stochastic
        k = fl + int(uniform_draw(generator) < float(r))
    return max(q.min_int, min(q.max_int, k))
