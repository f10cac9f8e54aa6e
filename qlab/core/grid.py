"""Exact arithmetic on a fixed-point integer grid.

A fixed(W, F) value is k * 2**-F for a W-bit integer k.  Intrinsic arithmetic works on
the integers k: a product of two grid values is k1*k2 on grid 2F, a sum of values on
grids F1 and F2 is exact on the finer grid.  Moving an integer n from grid G to grid F
is ``R(n * 2**(F-G))``: an exact shift when F >= G, a rounding otherwise.

Two representations, chosen by the caller for speed:

* float tensors holding integers (float64 is exact while |n| < 2**53, float32 while
  |n| < 2**24): the fast path, vectorised by torch's float kernels;
* int64 tensors: exact for every W <= 32 (products < 2**62), slower.

``rescale(n, shift, mode)`` = R(n * 2**-shift) works on both.
"""
from __future__ import annotations

import torch

from .rounding import round_to_integer


def _half_away_float(y: torch.Tensor) -> torch.Tensor:
    """Nearest, ties away, for y = n / 2**s with |n| + 2**(s-1) exactly representable.

    Then |y| + 0.5 is exact and floor(|y| + 0.5) is right (4 vectorised passes).
    """
    r = torch.abs(y).add_(0.5).floor_()
    return torch.copysign(r, y, out=r)


def rescale_float(n: torch.Tensor, shift: int, mode: str, generator=None, grid_exact: bool = True) -> torch.Tensor:
    """R(n * 2**-shift) for integer-valued float n (exact, see module docstring).

    ``grid_exact``: n holds integers small enough that n*2**-shift + 1/2 is exact
    (the fast nearest); else the general exact rounding is used.
    """
    if shift == 0 and grid_exact:
        return n
    y = n * (2.0 ** -shift)
    if shift <= 0 and grid_exact:
        return y  # an integer already
    if mode == "nearest" and grid_exact:
        return _half_away_float(y)
    return round_to_integer(y, mode, generator)


def rescale_int(n: torch.Tensor, shift: int, mode: str, generator=None) -> torch.Tensor:
    """R(n * 2**-shift) for an int64 tensor n; a left shift (exact) when shift <= 0.

    The caller keeps |n| * 2**-shift inside int64 for shift < 0.
    """
    if shift <= 0:
        return n << (-shift)
    if shift >= 63:
        # |n| < 2**62 <= 2**(shift-1): the value is in (-1/2, 1/2)
        sign = torch.sign(n)
        if mode == "down":
            return torch.where(n < 0, -1, 0).to(n.dtype)
        if mode == "up":
            return torch.where(n > 0, 1, 0).to(n.dtype)
        if mode == "stochastic":
            # probability |n| / 2**shift < 2**-1: draw in float64 (exact enough: <= 2**-53 bias)
            p = n.abs().to(torch.float64) * (2.0 ** -shift)
            u = torch.rand(n.shape, generator=generator, device=n.device, dtype=torch.float64)
            return torch.where(n < 0, -1, 0).to(n.dtype) + (u < torch.where(n < 0, 1 - p, p)).to(n.dtype)
        return torch.zeros_like(n) * sign
    half = 1 << (shift - 1)
    mask = (1 << shift) - 1
    if mode == "down":
        return n >> shift
    if mode == "up":
        return -((-n) >> shift)
    if mode == "zero":
        return torch.where(n >= 0, n >> shift, -((-n) >> shift))
    if mode == "nearest":  # ties away: subtract 1 from negatives so their ties go down
        return (n + (n >> 63) + half) >> shift
    if mode == "even":
        q = (n + half) >> shift
        tie = (n & mask) == half
        return q - (tie & ((q & 1) == 1)).to(n.dtype)
    if mode == "stochastic":
        r = n & mask  # n mod 2**shift, in [0, 2**shift)
        u = torch.randint(0, 1 << shift, n.shape, generator=generator, device=n.device, dtype=torch.int64)
        return (n >> shift) + (u < r).to(n.dtype)
    raise ValueError(f"unknown rounding {mode!r}")


def rescale(n: torch.Tensor, shift: int, mode: str, generator=None, grid_exact: bool = True) -> torch.Tensor:
    if n.dtype == torch.int64:
        return rescale_int(n, shift, mode, generator)
    return rescale_float(n, shift, mode, generator, grid_exact)


def div_round_int(n: torch.Tensor, d, mode: str, generator=None) -> torch.Tensor:
    """R(n / d) for int64 n and positive integer d (scalar or int64 tensor), exactly."""
    d = torch.as_tensor(d, dtype=torch.int64, device=n.device)
    f = torch.div(n, d, rounding_mode="floor")
    r = n - f * d  # in [0, d)
    if mode == "down":
        return f
    if mode == "up":
        return f + (r > 0).to(torch.int64)
    if mode == "zero":
        return f + ((r > 0) & (n < 0)).to(torch.int64)
    if mode in ("nearest", "even"):
        up = 2 * r > d
        tie = 2 * r == d
        if mode == "nearest":  # ties away from zero: up for positives
            up = up | (tie & (n >= 0))
        else:
            up = up | (tie & ((f & 1) == 1))
        return f + up.to(torch.int64)
    if mode == "stochastic":
        dd = d.expand_as(n) if d.dim() else d.expand(n.shape)
        u = (torch.rand(n.shape, generator=generator, device=n.device, dtype=torch.float64) * dd.to(torch.float64)).floor().to(torch.int64)
        return f + (u < r).to(torch.int64)
    raise ValueError(f"unknown rounding {mode!r}")
