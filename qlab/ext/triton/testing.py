"""Helpers for the Triton tests: run a script in a subprocess on a chosen device.

``device="interpreter"``: ``TRITON_INTERPRET=1`` (it must be set before triton is
imported, hence the subprocess), CPU tensors, and the Triton kernels registered for the
"cpu" device type.  ``device="cuda"``: compiled kernels on CUDA tensors, compared
against the CPU torch path.  The script sees ``DEV`` ("cpu" or "cuda") and the helpers
``ref(fn, *tensors)`` (torch path on CPU copies), ``fast(fn, *tensors)`` (Triton path on
DEV copies, result on CPU), ``same(a, b)`` (bit-for-bit, NaN-aware) and ``dispatched``
(whether the registry hands op/tensor/args to the Triton backend).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PRELUDE = textwrap.dedent("""
    import math, os, sys, torch, qlab
    from qlab.core import backends
    from qlab.ext import backends as _xb
    DEV = os.environ["QLAB_TEST_DEVICE"]
    if DEV == "cpu":
        assert _xb.register_triton("cpu")

    def _to(t, dev):
        return t.to(dev) if isinstance(t, torch.Tensor) else t

    def ref(fn, *ts, **kw):
        os.environ["QLAB_BACKEND"] = "torch"
        try:
            return fn(*[_to(t, "cpu") for t in ts], **kw)
        finally:
            os.environ.pop("QLAB_BACKEND")

    def fast(fn, *ts, **kw):
        os.environ["QLAB_BACKEND"] = "triton"
        try:
            out = fn(*[_to(t, DEV) for t in ts], **kw)
        finally:
            os.environ.pop("QLAB_BACKEND")
        if DEV == "cuda":
            torch.cuda.synchronize()
        return out.cpu()

    def same(a, b):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not torch.equal(a.isnan(), b.isnan()):
            return False
        m = ~a.isnan()
        return torch.equal(a[m], b[m]) and torch.equal(torch.signbit(a[m]), torch.signbit(b[m]))

    def dispatched(op, t, *args):
        os.environ["QLAB_BACKEND"] = "triton"
        try:
            return backends.lookup(op, _to(t, DEV), *args) is not None
        finally:
            os.environ.pop("QLAB_BACKEND")
""")

ROOT = Path(__file__).resolve().parents[3]


def run_script(body: str, device: str, timeout: float = 300) -> str:
    """Run PRELUDE + body; returns stdout, raises AssertionError with the output on failure."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep carried packages
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=env_threads())
    env.pop("QLAB_BACKEND", None)
    if device == "interpreter":
        env["TRITON_INTERPRET"] = "1"
        env["QLAB_TEST_DEVICE"] = "cpu"
    else:
        env.pop("TRITON_INTERPRET", None)
        env["QLAB_TEST_DEVICE"] = device
    code = PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"script failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def run_sections(sections: dict[str, str], device: str, timeout: float = 600) -> dict[str, str]:
    """Run several script bodies in one subprocess (imports cost seconds under the
    interpreter); {name: "ok"} or {name: the failure's output}, one entry per section."""
    parts = ["import traceback as _tb"]
    for name, body in sections.items():
        fn = "_section_" + name
        parts.append(f"def {fn}():\n" + textwrap.indent(textwrap.dedent(body), "    "))
        parts.append(f"try:\n    {fn}()\n    print('@@OK {name}', flush=True)\n"
                     f"except BaseException:\n    print('@@FAIL {name}', flush=True)\n"
                     f"    _tb.print_exc(file=sys.stdout)\n    print('@@END {name}', flush=True)")
    out = run_script("\n".join(parts), device, timeout)
    res = {}
    for name in sections:  # whole lines: one section's name may begin another's
        if f"@@OK {name}\n" in out:
            res[name] = "ok"
        elif f"@@FAIL {name}\n" in out:
            res[name] = out.split(f"@@FAIL {name}\n", 1)[1].split(f"@@END {name}\n", 1)[0]
        else:
            res[name] = "section did not run:\n" + out[-3000:]
    return res


def env_threads() -> str:
    return os.environ.get("OMP_NUM_THREADS", "1")


def devices():
    """pytest parameters: the interpreter always, CUDA when a GPU is present."""
    import pytest
    import torch

    return [
        pytest.param("interpreter", id="interpreter"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    ]
