"""The Triton intrinsic linear/conv kernels equal the torch reference (qlab.core.intrinsic)
bit for bit: every deterministic mode, sequential and final, separate accumulators (finer
and coarser grids), bias, inputs=False, saturation, negative F, W = 32, ragged shapes,
and conv stride/padding/dilation/groups; float(E,M) formats (products exact in float32 or
float64, sums rounded to odd, int64 exact final sums, NaN/inf, fp16/bf16 tensors).  Runs under TRITON_INTERPRET=1 on CPU tensors
(tiny shapes: one or two program instances, K <= 12); ``cuda`` compares CPU torch with
CUDA Triton on a GPU."""
import pytest

pytest.importorskip("triton")

from qlab.ext.triton.checks import INTRINSIC  # noqa: E402
from qlab.ext.triton.testing import devices, run_sections  # noqa: E402

SECTIONS = INTRINSIC


@pytest.fixture(scope="module", params=devices())
def results(request):
    return run_sections(SECTIONS, request.param)


def test_intrinsic_linear_matches_reference(results):
    assert results["linear"] == "ok", results["linear"]


def test_intrinsic_conv_matches_reference(results):
    assert results["conv"] == "ok", results["conv"]


def test_intrinsic_stochastic_seeded_bounded_unbiased(results):
    assert results["intrinsic_stochastic"] == "ok", results["intrinsic_stochastic"]


def test_intrinsic_float_formats_match_reference(results):
    assert results["float_intrinsic"] == "ok", results["float_intrinsic"]


def test_cpu_tensors_keep_the_torch_path():
    import torch

    from qlab.core import backends
    from qlab.core.intrinsic import as_intrinsic

    x = torch.zeros(2, 3)
    assert backends.lookup("fixed_matmul", x, torch.zeros(3, 2), None, as_intrinsic("fixed(8,4)"), None, True) is None
    from qlab.ext.triton import intrinsic as tri

    # CPU tensors: the compiled C kernel or the reference, never the Triton kernel
    assert backends.lookup("float_matmul", x, torch.zeros(3, 2), None, as_intrinsic("fp16"), None, True) \
        is not tri.float_matmul


def test_int32_tiles_give_every_sm_a_program(monkeypatch):
    """The fixed kernel's int32 tile: the largest of INT32_TILES that still gives each SM a
    program (132 on an H100/H200), else the smallest; int64 plans keep theirs."""
    import triton.language as tl

    from qlab.ext.triton import intrinsic as ti

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(ti, "_sm_count", lambda device: 132)
    assert ti._block(2048, 2048, tl.int32) == (128, 32)  # 1024 programs: the tile swept on an H200
    assert ti._block(6272, 256, tl.int32) == (128, 32)  # the ResNet-50 conv layer: 392
    assert ti._block(1024, 512, tl.int32) == (64, 32)  # 128x32 would give 128 programs
    assert ti._block(512, 512, tl.int32) == (32, 32)  # 256 programs instead of 64
    assert ti._block(512, 256, tl.int32, G=2) == (32, 32)  # groups count as programs too
    assert ti._block(512, 512, tl.int32, G=2) == (64, 32)
    assert ti._block(64, 64, tl.int32) == (32, 32)  # nothing fills the chip: the smallest
    assert ti._block(512, 512, tl.int64) == (32, 64)
    monkeypatch.undo()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert ti._sm_count(None) == 1 and ti._sm_count("cpu") == 1  # no CUDA device: the largest tile
    assert ti._block(512, 512, tl.int32, device="cpu") == (128, 32)
