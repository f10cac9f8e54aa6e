"""A small registry of fast backends that ``qlab.ext`` fills in.

The core never imports ``qlab.ext``: it computes everything with plain torch ops (the
reference).  A backend module (the Triton kernels for CUDA tensors, a compiled CPU
kernel) registers implementations of named operations for a device type; the core asks
:func:`lookup` before running its reference code.

``QLAB_BACKEND=torch`` forces the reference everywhere; ``QLAB_BACKEND=<name>`` makes
that backend the only candidate.  Every registered implementation must give results
bit-identical to the reference for every deterministic rounding mode.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

# (op, device_type) -> list of (backend name, function, accepts(tensor, *args) -> bool)
_REGISTRY: dict[tuple[str, str], list[tuple[str, Callable, Callable | None]]] = {}


def register(op: str, device_type: str, backend: str, fn: Callable, accepts: Callable | None = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` for ``device_type`` tensors."""
    entries = _REGISTRY.setdefault((op, device_type), [])
    entries[:] = [e for e in entries if e[0] != backend]
    entries.append((backend, fn, accepts))


def unregister(backend: str) -> None:
    for entries in _REGISTRY.values():
        entries[:] = [e for e in entries if e[0] != backend]


def forced() -> str | None:
    v = os.environ.get("QLAB_BACKEND", "").strip().lower()
    return v or None


def lookup(op: str, x: torch.Tensor, *args) -> Callable | None:
    """The fast implementation of ``op`` for tensor ``x``, or None for the torch reference."""
    if not _REGISTRY:
        return None
    want = forced()
    if want == "torch":
        return None
    for name, fn, accepts in reversed(_REGISTRY.get((op, x.device.type), ())):
        if want is not None and name != want:
            continue
        if accepts is None or accepts(x, *args):
            return fn
    return None


def available(device_type: str | None = None) -> dict[str, list[str]]:
    """{op: [backend, ...]} registered (for one device type, or all as 'op@device')."""
    out: dict[str, list[str]] = {}
    for (op, dev), entries in _REGISTRY.items():
        if device_type is None or dev == device_type:
            key = op if device_type else f"{op}@{dev}"
            out.setdefault(key, []).extend(e[0] for e in entries)
    return out
