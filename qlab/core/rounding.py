"""Rounding a float tensor to integers, exactly, in six modes.

Every function here takes a float tensor ``y`` whose values are to be rounded to
integers and returns a tensor of the same dtype holding integers (NaN stays NaN,
+-inf stays +-inf).  The rounding is exact for every finite float32/float64 value:
no step adds a constant that could round (``floor(y + 0.5)`` is wrong for
``0.49999997``), only ``frac``/``floor``/``ceil``, which are exact.
"""
from __future__ import annotations

import torch

ROUNDINGS = ("nearest", "even", "down", "up", "zero", "stochastic")
DETERMINISTIC = ("nearest", "even", "down", "up", "zero")


def round_nearest(y: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties away from zero (C ``round``, TensorQuant)."""
    d = torch.frac(y)  # y - trunc(y), exact, same sign as y
    t = y - d  # trunc(y), exact
    # |d| >= 0.5 -> step one away from zero.  (torch.trunc is slow on CPU.)
    step = (d >= 0.5).to(y.dtype) - (d <= -0.5).to(y.dtype)
    return t + step


def round_stochastic(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(y) + 1 with probability y - floor(y), independent per element.

    The uniform draws come from ``generator`` or torch's default generator for the
    tensor's device, so ``torch.manual_seed`` repeats a run.
    """
    f = torch.floor(y)
    u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return f + (u < (y - f)).to(y.dtype)


def round_to_integer(y: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``y`` to integers with ``mode`` (one of :data:`ROUNDINGS`)."""
    if mode == "nearest":
        return round_nearest(y)
    if mode == "even":
        return torch.round(y)
    if mode == "down":
        return torch.floor(y)
    if mode == "up":
        return torch.ceil(y)
    if mode == "zero":
        # y - frac(y) is trunc(y), exact, and vectorised (torch.trunc is not on CPU).
        return y - torch.frac(y)
    if mode == "stochastic":
        return round_stochastic(y, generator)
    raise ValueError(f"unknown rounding {mode!r}; expected one of {', '.join(ROUNDINGS)}")


def check_rounding(mode: str, allowed=ROUNDINGS, what: str = "rounding") -> str:
    if mode not in allowed:
        import difflib

        near = difflib.get_close_matches(str(mode), allowed, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown {what} {mode!r}{hint}; expected one of {', '.join(allowed)}")
    return mode
