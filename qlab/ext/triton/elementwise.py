"""Triton kernel for the elementwise fixed-point quantizer (one read, one write).

Bit-identical to the torch reference for every deterministic rounding mode: the kernel
works in float32 on the same exact steps (scale by 2**F, clamp, round, scale back), so
it serves inputs where the reference itself computes in float32 (W <= 24, F in range).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_MODES = {"nearest": 0, "even": 1, "down": 2, "up": 3, "zero": 4}


@triton.jit
def _fixed_kernel(x_ptr, y_ptr, n, scale, inv_scale, lo, hi, MODE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * scale
    y = tl.minimum(tl.maximum(y, lo), hi)
    y = tl.where(x != x, x, y)  # NaN stays NaN
    t = tl.where(y < 0, tl.ceil(y), tl.floor(y))  # trunc(y)
    d = y - t  # exact (y - floor(y) is not, for small negative y)
    sgn = tl.where(y < 0, -1.0, 1.0)
    if MODE == 0:  # nearest, ties away from zero
        r = tl.where((d >= 0.5) | (d <= -0.5), t + sgn, t)
    elif MODE == 1:  # ties to even
        t_odd = (t - 2.0 * tl.floor(t * 0.5)) == 1.0
        ad = tl.abs(d)
        r = tl.where((ad > 0.5) | ((ad == 0.5) & t_odd), t + sgn, t)
    elif MODE == 2:
        r = tl.floor(y)
    elif MODE == 3:
        r = tl.ceil(y)
    else:  # toward zero
        r = t
    out = r * inv_scale + 0.0
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


def fixed_quantize(x: torch.Tensor, q, generator=None) -> torch.Tensor:
    from qlab.core.formats import fixed_compute_dtype

    if q.rounding not in _MODES or fixed_compute_dtype(x.dtype, q.W, q.F) != torch.float32:
        raise ValueError(f"the Triton kernel covers deterministic float32-exact fixed formats, not {q} on {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    n = xc.numel()
    if n:
        BLOCK = 1024
        _fixed_kernel[(triton.cdiv(n, BLOCK),)](xc, y, n, 2.0 ** q.F, 2.0 ** -q.F, float(q.min_int), float(q.max_int),
                                               MODE=_MODES[q.rounding], BLOCK=BLOCK)
    return y


def accepts(x: torch.Tensor, q, generator=None) -> bool:
    from qlab.core.formats import fixed_compute_dtype

    return q.rounding in _MODES and x.dtype == torch.float32 and fixed_compute_dtype(x.dtype, q.W, q.F) == torch.float32
