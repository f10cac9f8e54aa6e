"""The Triton elementwise kernels equal the torch reference bit for bit (fixed, float, log),
and stochastic fixed/float rounding is repeatable under a seed, unbiased, and lands on a
neighbouring grid point.  Runs under TRITON_INTERPRET=1 on CPU tensors; on a GPU the
``cuda`` parameter compares the CPU torch path with the CUDA Triton path."""
import pytest

pytest.importorskip("triton")

from qlab.ext.triton.checks import ELEMENTWISE  # noqa: E402
from qlab.ext.triton.testing import devices, run_sections  # noqa: E402

SECTIONS = ELEMENTWISE


@pytest.fixture(scope="module", params=devices())
def results(request):
    return run_sections(SECTIONS, request.param)


def test_fixed_kernel_matches_reference(results):
    assert results["fixed"] == "ok", results["fixed"]


def test_stochastic_rounding_seeded_unbiased_neighbours(results):
    assert results["stochastic"] == "ok", results["stochastic"]


def test_float_kernel_matches_reference(results):
    assert results["float"] == "ok", results["float"]


def test_log_kernel_matches_reference(results):
    assert results["log"] == "ok", results["log"]


def test_cpu_tensors_keep_the_torch_path():
    import torch

    import qlab
    from qlab.core import backends

    from qlab.ext.triton import elementwise as tri

    x = torch.zeros(3)
    # float32 CPU tensors: the compiled C quantizers (qlab.ext.cpu) or the reference, never Triton
    assert backends.lookup("fixed", x, qlab.FixedPoint(8, 4)) is not tri.fixed_quantize
    assert backends.lookup("float", x, qlab.Float(5, 10)) is not tri.float_quantize
    assert backends.lookup("log", x, qlab.Log(4, 2)) is None
