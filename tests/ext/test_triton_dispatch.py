"""Dispatch: CUDA tensors go to the Triton kernels, CPU tensors to the torch path,
QLAB_BACKEND overrides, accepts() declines what a kernel does not cover, and a CUDA
machine without triton warns once and keeps the reference."""
import copy
import sys
import warnings

import pytest
import torch

import qlab
from qlab.core import backends
from qlab.core.intrinsic import as_intrinsic

pytest.importorskip("triton")

from qlab.ext import backends as xb  # noqa: E402

OPS = ("fixed", "float", "log", "fixed_matmul", "fixed_conv2d")


@pytest.fixture
def registry(monkeypatch):
    saved = copy.deepcopy(backends._REGISTRY)
    monkeypatch.delenv("QLAB_BACKEND", raising=False)
    yield backends._REGISTRY
    backends._REGISTRY.clear()
    backends._REGISTRY.update(saved)


def test_every_kernel_is_registered_for_cuda():
    got = backends.available("cuda")
    for op in OPS:
        assert "triton" in got.get(op, []), op
    assert not any("triton" in v for v in backends.available("cpu").values())


def test_override_and_accepts(registry, monkeypatch):
    assert xb.register_triton("cpu")  # only lookups here: no kernel runs
    x = torch.zeros(4)
    q = qlab.FixedPoint(8, 4)
    assert backends.lookup("fixed", x, q) is not None
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    assert backends.lookup("fixed", x, q) is None
    monkeypatch.setenv("QLAB_BACKEND", "nosuchbackend")
    assert backends.lookup("fixed", x, q) is None
    monkeypatch.setenv("QLAB_BACKEND", "triton")
    assert backends.lookup("fixed", x, q) is not None
    # covered: float64 tensors and W > 24 (float64 steps), float16/bfloat16 tensors, float intrinsic formats
    assert backends.lookup("fixed", x.double(), q) is not None
    assert backends.lookup("fixed", x, qlab.FixedPoint(32, 8)) is not None
    assert backends.lookup("float", x.bfloat16(), qlab.Float(5, 2)) is not None
    a, w = torch.zeros(3, 5), torch.zeros(5, 2)
    assert backends.lookup("fixed_matmul", a, w, None, as_intrinsic("fixed(8,4)"), None, True) is not None
    assert backends.lookup("fixed_matmul", a, w, None, as_intrinsic("fixed(8,4,stochastic)"), None, True) is not None
    assert backends.lookup("fixed_matmul", a.half(), w.half(), None, as_intrinsic("fixed(8,4)"), None, True) is not None
    assert backends.lookup("float_matmul", a, w, None, as_intrinsic("fp8e4m3"), None, True) is not None
    # declined: fn formats beyond float32, float formats on float64, big stochastic shifts, 16-bit W > 24
    assert backends.lookup("float", x, qlab.Float(8, 3, fn=True)) is None
    assert backends.lookup("float", x.double(), qlab.Float(5, 2)) is None
    assert backends.lookup("fixed_matmul", a, w, None, as_intrinsic("fixed(8,40,stochastic)"), None, True) is None
    assert backends.lookup("fixed_matmul", a.half(), w.half(), None, as_intrinsic("fixed(32,8)"), None, True) is None
    assert backends.lookup("fixed_matmul", a.half(), w, None, as_intrinsic("fixed(8,4)"), None, True) is None
    assert backends.lookup("float_matmul", a.double(), w.double(), None, as_intrinsic("fp16"), None, True) is None
    spec_f = qlab.Intrinsic(qlab.FixedPoint(8, 4), inputs=False)
    assert backends.lookup("fixed_matmul", a, w, None, spec_f, None, False) is None  # two activations, inputs=False


def test_missing_triton_warns_once_and_keeps_the_reference(registry, monkeypatch):
    backends.unregister("triton")
    monkeypatch.setitem(sys.modules, "qlab.ext.triton", None)  # the import fails
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(xb, "_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert xb.register_triton() is False
        assert xb.register_triton() is False
    msgs = [w for w in caught if "triton unavailable" in str(w.message)]
    assert len(msgs) == 1
    assert not any(backends.available("cuda").values())
    x = torch.randn(10)
    from qlab.ext import cpu

    assert backends.lookup("fixed", x, qlab.FixedPoint(8, 4)) in (None, cpu.fixed_quantize)  # never Triton


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_use_triton_by_default(monkeypatch):
    monkeypatch.delenv("QLAB_BACKEND", raising=False)
    x = torch.zeros(4, device="cuda")
    assert backends.lookup("fixed", x, qlab.FixedPoint(8, 4)) is not None
    assert backends.lookup("fixed", x.cpu(), qlab.FixedPoint(8, 4)) is None
