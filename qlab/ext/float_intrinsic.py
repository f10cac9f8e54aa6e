"""What the compiled intrinsic float(E, M) kernels (Triton and CPU) share: which specs they
cover and the constants they run with.  Pure Python (no triton import).

The kernels form every product exactly (float32 where the format's products fit 24 bits
and float32's normal range, else float64, then rounded to odd in float32), add with a
float32 two-sum rounded to odd (``sequential``) or as exact int64 multiples of Q's
smallest step (``final``), and round with float32 bit arithmetic.  Rounding to odd in
float32 and then to a format of <= 22 significant bits is the correct rounding of the
exact value, which makes them bit-identical with the float64 reference
(:func:`qlab.core.intrinsic.float_matmul`).  Covered: Q and A Float formats with M <= 21;
not FN formats with E = 8 (values beyond float32); an A with E = 8 and ``inf=True`` is
declined (a float32 sum overflowing must mean "past A's range" in every mode, true only
when A saturates); ``final`` only where the exact sum fits int64 (the reference's own
exact range).  One exception to M <= 21: A = float(8, 23, even) -- binary32 itself, with
or without inf (``FloatPlan.a32``; mixed precision: fp16, bf16 or fp8 products summed in
float32, as matrix units do): there every A(s + p) is one float32 addition (IEEE: the
exact sum rounded to nearest even) and, where A saturates, a clamp to the largest finite
value; ``final`` converts the exact int64 sum to float32 (rounded to nearest even) and
scales it by a power of two, exact there (Q's smallest step >= 2**-149).  Q may be binary32
too (``FloatPlan.q32``; with A = Q a float32 dot product summed in k order): each product
is the exact float64 product converted to float32 (nearest even), clamped where Q
saturates (``final`` is beyond int64 there: declined).  Where A rounds to nearest even with
M_A <= 10 and Q is no more precise (M_Q <= M_A), A(s + p) is A(s + p rounded to float32)
(``FloatPlan.sum32``): s and p are numbers of A's precision p_A <= 11 bits, and for
addition a first rounding to 24 >= 2 p_A + 1 bits never changes the second (S. A.
Figueroa, "When is double rounding innocuous?", SIGNUM Newsletter 30(3), 1995); in A's
subnormal range the exact sum lies on a grid float32 holds.  Checked pair by pair in
tests/ext/test_triton_intrinsic.py; M_Q <= M_A is necessary there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("nearest", "even", "down", "up", "zero")


@dataclass(frozen=True)
class FloatPlan:
    p32: bool  # products exact in float32
    seq: bool
    q: tuple  # (emin, M, maxv, inf, rounding)
    a: tuple
    to_steps: float  # 2**-lsb: a finite product in Q's smallest steps
    from_steps: float  # 2**lsb
    a32: bool = False  # A is binary32 itself, nearest even: each sum one float32 addition
    q32: bool = False  # Q likewise: each product the float64 product rounded to float32 (nearest even)
    # A(s + p) = A(float32 s + p): A nearest even with M_A <= 10 and M_Q <= M_A (no two-sum needed)
    sum32: bool = False


def plan(spec, K: int) -> FloatPlan | None:
    """The constants for ``spec`` with K terms per output, or None where the kernels do not apply."""
    from qlab.core.formats import Float, _float_params

    q, A = getattr(spec, "q", None), getattr(spec, "A", None)
    if not (type(q) is Float and type(A) is Float):
        return None
    modes = MODES + ("stochastic",)
    if q.rounding not in modes or A.rounding not in modes:
        return None
    a32 = (A.E, A.M, A.fn, A.rounding) == (8, 23, False, "even")
    q32 = (q.E, q.M, q.fn, q.rounding) == (8, 23, False, "even")
    if (q.M > 21 and not q32) or (A.M > 21 and not a32) or (q.fn and q.E == 8) or (A.fn and A.E == 8):
        return None
    qemin, qemax, qmax = _float_params(q.E, q.M, q.fn)
    aemin, aemax, amax = _float_params(A.E, A.M, A.fn)
    if A.inf and aemax >= 127 and not a32:
        return None
    lsb = qemin - q.M
    seq = spec.accumulate == "sequential"
    if not seq and (qemax + 1 - lsb) + math.ceil(math.log2(max(2, K))) > 62:
        return None
    p32 = bool(spec.inputs) and 2 * (q.M + 1) <= 24 and 2 * lsb >= -126 and 2 * (qemax + 1) <= 128
    return FloatPlan(p32, seq, (qemin, q.M, qmax, q.inf, q.rounding), (aemin, A.M, amax, A.inf, A.rounding),
                     2.0 ** -lsb, 2.0 ** lsb, a32, q32, A.rounding == "even" and q.M <= A.M <= 10)


def operands(x, w, bias, spec, generator=None):
    """Q(x) (x itself with inputs=False), Q(w), Q(b) as float32: exact upcasts, then one pass each."""
    q = spec.q
    x32 = x.float()
    xin = q.quantize(x32, generator) if spec.inputs else x32
    wq = q.quantize(w.float(), generator)
    bq = q.quantize(bias.float(), generator).contiguous() if bias is not None else None
    return xin, wq, bq


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
