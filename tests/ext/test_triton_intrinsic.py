"""The Triton intrinsic linear/conv kernels equal the torch reference (qlab.core.intrinsic)
bit for bit: every deterministic mode, sequential and final, separate accumulators (finer
and coarser grids), bias, inputs=False, saturation, negative F, W = 32, ragged shapes,
and conv stride/padding/dilation/groups.  Runs under TRITON_INTERPRET=1 on CPU tensors
(tiny shapes: one or two program instances, K <= 12); ``cuda`` compares CPU torch with
CUDA Triton on a GPU."""
import pytest

pytest.importorskip("triton")

from qlab.ext.triton.testing import devices, run_sections  # noqa: E402

COMMON = """
    from qlab.core.intrinsic import intrinsic_linear, intrinsic_conv, intrinsic_matmul, as_intrinsic, Intrinsic
    MODES = ["nearest", "even", "down", "up", "zero"]

    def spec_of(W, F_, Wa, Fa, mode, acc, inputs=True, amode=None):
        return Intrinsic(qlab.FixedPoint(W, F_, mode), acc=qlab.FixedPoint(Wa, Fa, amode or mode),
                         accumulate=acc, inputs=inputs)

    def lin_dispatched(x, w, b, spec):
        return dispatched("fixed_matmul", x, w.t(), b, as_intrinsic(spec), None, True)
"""

LINEAR = COMMON + """
    rng = torch.Generator().manual_seed(0)
    FORMATS = [  # W, F, Wa, Fa, input scale
        (8, 4, 8, 4, 2.0), (6, 3, 8, 2, 3.0), (6, 3, 10, 5, 2.0), (16, 8, 16, 8, 40.0), (16, 8, 12, 3, 4.0),
        (32, 16, 32, 16, 3.0), (8, -1, 8, -1, 40.0), (5, 2, 5, 2, 6.0), (30, 10, 32, 12, 5.0), (4, 6, 6, 9, 0.1),
    ]
    bad, n = [], 0
    differ = 0
    for i, (W, F_, Wa, Fa, sc) in enumerate(FORMATS):
        for j, mode in enumerate(MODES):
            M, K, N = [int(v) for v in torch.randint(1, 13, (3,), generator=rng)]
            M += 17 * (j % 2)  # ragged tiles: more than one row block
            x = torch.randn(M, K, generator=rng) * sc
            w = torch.randn(N, K, generator=rng) * sc / 2
            b = torch.randn(N, generator=rng) * sc if (i + j) % 2 else None
            outs = {}
            for acc in ["sequential", "final"]:
                spec = spec_of(W, F_, Wa, Fa, mode, acc)
                assert lin_dispatched(x, w, b, spec), spec
                r, f = ref(intrinsic_linear, x, w, b, spec=spec), fast(intrinsic_linear, x, w, b, spec=spec)
                n += 1
                outs[acc] = r
                if not same(r, f):
                    bad.append((str(spec), M, K, N))
            differ += not torch.equal(outs["sequential"], outs["final"])
    # saturation is exercised: sequential and final differ for some cases
    assert differ >= 5, differ
    # inputs=False (the float input times the weight's grid integer, exactly)
    for mode in MODES:
        for acc in ["sequential", "final"]:
            spec = spec_of(8, 4, 10, 5, mode, acc, inputs=False)
            x = torch.randn(9, 7, generator=rng) * 3
            w = torch.randn(5, 7, generator=rng)
            b = torch.randn(5, generator=rng)
            assert lin_dispatched(x, w, b, spec), spec
            n += 1
            if not same(ref(intrinsic_linear, x, w, b, spec=spec), fast(intrinsic_linear, x, w, b, spec=spec)):
                bad.append(str(spec))
    # a different accumulator rounding mode, and leading batch dims
    spec = spec_of(8, 4, 8, 2, "nearest", "sequential", amode="down")
    x, w = torch.randn(2, 3, 5, generator=rng) * 4, torch.randn(4, 5, generator=rng)
    n += 1
    if not same(ref(intrinsic_linear, x, w, None, spec=spec), fast(intrinsic_linear, x, w, None, spec=spec)):
        bad.append(str(spec))
    # matmul of two activations (quantize_w=False): both operands on the grid
    a, c = torch.randn(6, 5, generator=rng) * 2, torch.randn(5, 3, generator=rng) * 2
    n += 1
    if not same(ref(intrinsic_matmul, a, c, spec="fixed(8,4,even)"), fast(intrinsic_matmul, a, c, spec="fixed(8,4,even)")):
        bad.append("matmul")
    # outside the kernel: declined, and the reference result comes back
    x, w = torch.randn(5, 4, generator=rng), torch.randn(3, 4, generator=rng)
    for spec, xx, ww in [(spec_of(8, 4, 8, 4, "stochastic", "sequential"), x, w),
                         (as_intrinsic("fixed(8,4)"), x.double(), w.double()),
                         (spec_of(32, 200, 32, 200, "nearest", "sequential"), x, w),
                         (as_intrinsic("fp16"), x, w)]:
        assert not lin_dispatched(xx, ww, None, spec), spec
        if not spec.q.stochastic:
            assert same(ref(intrinsic_linear, xx, ww, None, spec=spec), fast(intrinsic_linear, xx, ww, None, spec=spec))
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""

CONV = COMMON + """
    rng = torch.Generator().manual_seed(1)
    CASES = [  # B, C, H, W, O, kh, kw, stride, padding, dilation, groups
        (2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1),
        (1, 4, 7, 5, 6, 3, 2, (2, 1), (1, 2), (1, 2), 2),
        (2, 2, 6, 6, 3, 1, 1, 2, 0, 1, 1),
        (1, 6, 5, 5, 6, 3, 3, 1, "same", 2, 6),   # depthwise, 'same' padding
        (1, 2, 4, 7, 2, 2, 3, 3, "valid", 1, 1),
    ]
    bad, n = [], 0
    for i, (B, C, H, W_, O, kh, kw, st, pd, dl, g) in enumerate(CASES):
        x = torch.randn(B, C, H, W_, generator=rng) * 3
        w = torch.randn(O, C // g, kh, kw, generator=rng)
        b = torch.randn(O, generator=rng) if i % 2 == 0 else None
        for j, mode in enumerate(MODES):
            W, F_, Wa, Fa = [(8, 4, 8, 4), (6, 2, 9, 4), (16, 8, 12, 3), (32, 16, 32, 16), (6, -1, 6, -1)][(i + j) % 5]
            acc = ["sequential", "final"][j % 2]
            spec = spec_of(W, F_, Wa, Fa, mode, acc)
            kw_ = dict(stride=st, padding=pd, dilation=dl, groups=g, spec=spec)
            assert dispatched("fixed_conv2d", x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), g, spec, None), spec
            n += 1
            if not same(ref(intrinsic_conv, x, w, b, **kw_), fast(intrinsic_conv, x, w, b, **kw_)):
                bad.append((i, str(spec)))
    # conv1d and an unbatched input go through the same kernel
    x1, w1 = torch.randn(2, 3, 9, generator=rng) * 2, torch.randn(4, 3, 3, generator=rng)
    n += 1
    if not same(ref(intrinsic_conv, x1, w1, None, stride=2, padding=1, spec="fixed(8,4)"),
                fast(intrinsic_conv, x1, w1, None, stride=2, padding=1, spec="fixed(8,4)")):
        bad.append("conv1d")
    x3 = torch.randn(3, 5, 5, generator=rng) * 2
    w3 = torch.randn(2, 3, 3, 3, generator=rng)
    spec = spec_of(8, 4, 8, 4, "even", "sequential", inputs=False)
    n += 1
    if not same(ref(intrinsic_conv, x3, w3, None, padding=1, spec=spec),
                fast(intrinsic_conv, x3, w3, None, padding=1, spec=spec)):
        bad.append("unbatched inputs=False")
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""

SECTIONS = {"linear": LINEAR, "conv": CONV}


@pytest.fixture(scope="module", params=devices())
def results(request):
    return run_sections(SECTIONS, request.param)


def test_intrinsic_linear_matches_reference(results):
    assert results["linear"] == "ok", results["linear"]


def test_intrinsic_conv_matches_reference(results):
    assert results["conv"] == "ok", results["conv"]


def test_cpu_tensors_keep_the_torch_path():
    import torch

    from qlab.core import backends
    from qlab.core.intrinsic import as_intrinsic

    x = torch.zeros(2, 3)
    assert backends.lookup("fixed_matmul", x, torch.zeros(3, 2), None, as_intrinsic("fixed(8,4)"), None, True) is None
