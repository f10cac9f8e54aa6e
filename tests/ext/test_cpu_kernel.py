"""The compiled CPU kernel for intrinsic fixed-point accumulation (qlab.ext.cpu) equals
the torch reference bit for bit, runs where it accepts, and declines the rest."""
import random

import pytest
import torch
import torch.nn as nn

import qlab
from qlab.core import backends
from qlab.core.formats import FixedPoint
from qlab.core.intrinsic import _fixed_accumulate, _grid_int, _product_dtype, as_intrinsic
from qlab.ext import cpu
from qlab.ext import backends as xb  # noqa: F401  (registers the kernel)

MODES = ("nearest", "even", "down", "up", "zero")


@pytest.fixture(autouse=True)
def kernel(monkeypatch):
    monkeypatch.delenv("QLAB_BACKEND", raising=False)
    if cpu.load() is None:
        pytest.skip("no C compiler: the CPU kernel cannot be built here")
    xb.register_cpu()


def _spec(W, Fq, Wa=None, Fa=None, mode="nearest", acc="sequential", acc_mode=None):
    A = None if Wa is None else FixedPoint(Wa, Fa, acc_mode or mode)
    return qlab.Intrinsic(FixedPoint(W, Fq, mode), acc=A, accumulate=acc)


def _operands(spec, M, K, N, xscale, wscale, gen):
    dt = _product_dtype(spec.q, spec.A)
    x = torch.randn(M, K, generator=gen) * xscale
    w = torch.randn(K, N, generator=gen) * wscale
    xT = _grid_int(x, spec.q).t().to(dt).contiguous()
    kw = _grid_int(w, spec.q).to(dt).contiguous()
    return xT, kw, dt


def _both(monkeypatch, fn, *args):
    """(reference, kernel) results of fn(*args), and how many times the kernel ran."""
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    ref = fn(*args)
    monkeypatch.delenv("QLAB_BACKEND")
    before = cpu.calls
    got = fn(*args)
    return ref, got, cpu.calls - before


def _check_accumulate(monkeypatch, spec, M, K, N, xscale=1.0, wscale=1.0, seed=0, expect_kernel=True):
    xT, kw, dt = _operands(spec, M, K, N, xscale, wscale, torch.Generator().manual_seed(seed))
    ref, got, ran = _both(monkeypatch, _fixed_accumulate, xT, kw, spec, None, dt, True)
    assert ran == (1 if expect_kernel else 0), spec
    assert got.dtype == ref.dtype == dt and got.shape == ref.shape == (M, N)
    assert torch.equal(got, ref), (spec, M, K, N, (got != ref).sum())
    return ref


def test_lookup_returns_the_kernel(monkeypatch):
    xT, kw = torch.zeros(3, 4), torch.zeros(3, 5)
    spec = as_intrinsic("fixed(8,4,nearest)")
    assert backends.lookup("fixed_accumulate", xT, kw, spec, None, torch.float32, True) is cpu.fixed_accumulate
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    assert backends.lookup("fixed_accumulate", xT, kw, spec, None, torch.float32, True) is None
    monkeypatch.setenv("QLAB_BACKEND", "cpu")
    assert backends.lookup("fixed_accumulate", xT, kw, spec, None, torch.float32, True) is cpu.fixed_accumulate


@pytest.mark.parametrize("acc", ["sequential", "final"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_equals_reference(monkeypatch, mode, acc):
    # no saturation, saturation, separate finer accumulator, equal accumulator given explicitly
    for W, Fq, Wa, Fa, xs, ws in [(8, 4, None, None, 1.0, 1.0), (8, 4, None, None, 30.0, 5.0),
                                  (16, 8, None, None, 3.0, 1.0), (16, 8, 24, 12, 3.0, 1.0),
                                  (6, 3, 10, 5, 4.0, 2.0), (12, 5, 12, 5, 8.0, 8.0),
                                  (20, 10, 32, 14, 50.0, 9.0), (32, 16, 32, 16, 1e3, 1e2)]:
        spec = _spec(W, Fq, Wa, Fa, mode, acc)
        _check_accumulate(monkeypatch, spec, 37, 45, 40, xs, ws, seed=W + Fq)
        _check_accumulate(monkeypatch, spec, 300, 25, 6, xs, ws, seed=W)  # narrow output: the swapped layout


def test_saturation_happens_and_matches(monkeypatch):
    for acc in ("sequential", "final"):
        spec = _spec(6, 2, mode="nearest", acc=acc)
        s = _check_accumulate(monkeypatch, spec, 20, 64, 33, 20.0, 20.0)
        assert bool((s == spec.A.max_int).any()) and bool((s == spec.A.min_int).any())
    # x = w = 100 -> grid 127 or -128; products clamped to [-128, 127]: +127 +127 -128 -128 -128 +127
    xT = torch.full((6, 1), 127.0)
    kw = torch.tensor([[127.0], [127.0], [-128.0], [-128.0], [-128.0], [127.0]])
    for acc, expected in (("sequential", -1.0), ("final", -3.0)):
        spec = _spec(8, 4, mode="down", acc=acc)
        ref, got, ran = _both(monkeypatch, _fixed_accumulate, xT, kw, spec, None, torch.float32, True)
        assert ran == 1 and torch.equal(got, ref) and got.item() == expected


def test_wide_and_integer_formats(monkeypatch):
    for mode in MODES:
        for acc in ("sequential", "final"):
            _check_accumulate(monkeypatch, _spec(32, 0, mode=mode, acc=acc), 9, 70, 35, 3e8, 3e8)  # W=32 saturating
            _check_accumulate(monkeypatch, _spec(32, 31, mode=mode, acc=acc), 9, 70, 35, 0.5, 0.5)
            _check_accumulate(monkeypatch, _spec(8, 0, mode=mode, acc=acc), 12, 30, 40, 50.0, 3.0)  # F=0
            _check_accumulate(monkeypatch, _spec(16, 0, 32, 0, mode, acc), 12, 30, 40, 300.0, 300.0)
            _check_accumulate(monkeypatch, _spec(24, 20, 32, 28, mode, acc), 12, 30, 40, 3.0, 3.0)
            _check_accumulate(monkeypatch, _spec(4, 30, 4, 30, mode, acc), 12, 30, 40, 1e-8, 1e-8)


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 50, 1), (1, 7, 40), (40, 7, 1), (3, 1, 70), (70, 1, 3),
                                   (0, 5, 4), (4, 5, 0), (4, 0, 5), (33, 9, 31), (31, 9, 33), (65, 3, 17),
                                   (130, 9, 48), (100, 5, 40)])  # ragged outputs: x's rows vectorised
def test_ragged_shapes(monkeypatch, M, K, N):
    for acc in ("sequential", "final"):
        for spec in (_spec(8, 4, mode="even", acc=acc), _spec(20, 9, 30, 12, "up", acc)):
            _check_accumulate(monkeypatch, spec, M, K, N, 4.0, 2.0, seed=M * 100 + N)


def test_random_specs(monkeypatch):
    rng = random.Random(1)
    for trial in range(60):
        W = rng.randint(1, 32)
        Fq = rng.randint(0, min(62, 2 * W + 2))
        d = rng.randint(0, 6)
        Wa = rng.randint(W if rng.random() < 0.5 else 1, 32)
        mode, acc = rng.choice(MODES), rng.choice(["sequential", "final"])
        spec = _spec(W, Fq, Wa, Fq + d, mode, acc, acc_mode=rng.choice(MODES))
        M, K, N = rng.randint(1, 40), rng.randint(1, 60), rng.randint(1, 40)
        scale = 2.0 ** (W - 1 - Fq) * rng.choice([0.01, 0.3, 1.0, 3.0])
        _check_accumulate(monkeypatch, spec, M, K, N, scale, scale, seed=trial)


def test_declined_cases_still_equal(monkeypatch):
    for spec in (_spec(8, 4, 8, 2, "nearest"), _spec(8, 4, 12, 2, "even", "final"),  # coarser accumulator
                 _spec(8, 40, 8, 40, mode="stochastic"), _spec(8, -1), _spec(8, 63, 8, 63),  # draws of 32 bits, F < 0, F > 62
                 _spec(32, 10, 32, 45)):  # the shifted products could overflow int64
        xT, kw, dt = _operands(spec, 5, 7, 6, 2.0, 2.0, torch.Generator().manual_seed(0))
        assert not cpu.accepts(xT, kw, spec, None, dt, True)
        if spec.q.rounding == "stochastic":
            continue
        _check_accumulate(monkeypatch, spec, 5, 7, 6, 2.0, 2.0, expect_kernel=False)
    spec = as_intrinsic("fixed(8,4)")
    xT, kw, dt = _operands(spec, 5, 7, 6, 2.0, 2.0, torch.Generator().manual_seed(0))
    assert not cpu.accepts(xT, kw, spec, None, dt, False)  # inputs=False
    assert cpu.accepts(xT, kw, spec, None, dt, True)


def _through_ops(monkeypatch, fn, *args):
    ref, got, ran = _both(monkeypatch, fn, *args)
    assert ran >= 1
    assert got.dtype == ref.dtype and torch.equal(got, ref)
    return got


@pytest.mark.parametrize("spec", ["fixed(8,4,nearest)", "intrinsic(fixed(16,8,even),acc=fixed(24,12,even))",
                                  "intrinsic(fixed(10,5,zero),accumulate=final)", "fixed(6,3,up)"])
def test_linear_conv_with_bias(monkeypatch, spec):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(17, 40, generator=g) * 3, torch.randn(23, 40, generator=g), torch.randn(23, generator=g)
    _through_ops(monkeypatch, qlab.intrinsic_linear, x, w, b, spec)
    xc, wc, bc = torch.randn(2, 3, 9, 9, generator=g) * 3, torch.randn(5, 3, 3, 3, generator=g), torch.randn(5, generator=g)
    _through_ops(monkeypatch, lambda *a: qlab.intrinsic_conv(*a, padding=1, spec=spec), xc, wc, bc)


def test_quantized_model(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    x = torch.randn(8, 1, 8, 8)
    plan = qlab.Plan(intrinsic={"*": "fixed(12,6,nearest)"})

    def run(x):
        with torch.no_grad(), qlab.quantize(model, plan):
            return model(x)

    _through_ops(monkeypatch, run, x)


def test_threads_do_not_change_results(monkeypatch):
    spec = _spec(16, 8, 20, 10, "nearest")
    xT, kw, dt = _operands(spec, 300, 64, 100, 5.0, 2.0, torch.Generator().manual_seed(5))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.fixed_accumulate(xT, kw, spec, None, dt, True)
        torch.set_num_threads(2)
        two = cpu.fixed_accumulate(xT, kw, spec, None, dt, True)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    xT, kw = torch.zeros(3, 4), torch.zeros(3, 5)
    spec = as_intrinsic("fixed(8,4)")
    with pytest.warns(UserWarning, match="CPU kernel could not be built"):
        assert backends.lookup("fixed_accumulate", xT, kw, spec, None, torch.float32, True) is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.lookup("fixed_accumulate", xT, kw, spec, None, torch.float32, True) is None
    y = qlab.intrinsic_linear(torch.randn(3, 4), torch.randn(5, 4), None, spec)  # the reference runs
    assert y.shape == (3, 5)


# ------------------------------------------------------------------ convolution (no im2col)
_GEOMETRIES = [  # B, C, H, W, O, kh, kw, stride, padding, dilation, groups
    (2, 3, 7, 6, 5, 3, 3, 1, 1, 1, 1),  # few channels: columns are positions
    (2, 4, 9, 8, 40, 3, 2, 2, 1, 1, 2),
    (1, 6, 11, 10, 6, 5, 5, 1, 2, 2, 3),  # dilation, groups
    (3, 2, 5, 5, 33, 1, 1, 1, 0, 1, 1),
    (2, 8, 8, 8, 64, 3, 3, 1, "same", 1, 4),
    (2, 3, 6, 7, 4, 2, 3, (2, 1), (0, 2), (1, 2), 1),  # per-axis stride, padding, dilation
    (1, 2, 4, 3, 70, 3, 3, 1, 1, 1, 1),  # 12 positions, 70 channels: rows are positions, ragged column blocks
    (1, 4, 5, 4, 80, 3, 2, 1, 2, 2, 2),  # rows are positions (30 of them), groups and dilation
    (2, 5, 3, 3, 7, 3, 3, 1, 2, 1, 1),  # windows mostly in the padding
    (2, 1, 9, 9, 6, 5, 5, 1, 2, 1, 1),  # one input channel (a first layer): gathered in one pass
    (2, 4, 6, 6, 8, 3, 3, 2, 1, 1, 4),  # depthwise-like: one channel per group
]


def _conv_case(monkeypatch, geo, spec, scale=3.0, seed=0, dtype=torch.float32):
    B, C, H, W, O, kh, kw, st, pad, dl, g = geo
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, C, H, W, generator=gen) * scale).to(dtype)
    w = torch.randn(O, C // g, kh, kw, generator=gen).to(dtype)
    b = torch.randn(O, generator=gen).to(dtype)
    ref, got, ran = _both(monkeypatch, lambda: qlab.intrinsic_conv(x, w, b, stride=st, padding=pad, dilation=dl,
                                                                   groups=g, spec=spec))
    assert ran == 1, (geo, spec)
    assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref), (geo, spec, (got != ref).sum())
    return ref


@pytest.mark.parametrize("geo", _GEOMETRIES)
def test_conv_kernel_equals_reference(monkeypatch, geo):
    """The conv kernel gathers each window from the input's grid integers (stride,
    padding, dilation, groups; positions or channels as the vectorised columns) and equals
    the reference (unfold, then the accumulation) for every mode, both accumulations, int32
    and int64 sums and an accumulator on a finer grid."""
    differ = 0
    for i, mode in enumerate(MODES):
        for W, Fq, Wa, Fa in [(8, 4, 8, 4), (8, 4, 12, 6), (16, 8, 16, 8), (24, 10, 30, 12), (6, 0, 8, 0)][i % 2::2]:
            outs = [_conv_case(monkeypatch, geo, _spec(W, Fq, Wa, Fa, mode, acc), seed=i) for acc in ("sequential", "final")]
            differ += not torch.equal(*outs)
    B, C, H, W, O, kh, kw, *_, g = geo
    assert differ >= 1 or C // g * kh * kw < 9  # some sums saturate: the two accumulations differ


def test_conv_kernel_dtypes_and_empty(monkeypatch):
    spec = _spec(16, 8, 20, 10, "nearest")
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        _conv_case(monkeypatch, _GEOMETRIES[0], spec, dtype=dtype)
    _conv_case(monkeypatch, _GEOMETRIES[1], _spec(32, 16, 32, 16, "even"), scale=100.0)  # W = 32: int64 sums
    x, w = torch.zeros(0, 3, 5, 5), torch.randn(4, 3, 3, 3)
    ref, got, _ = _both(monkeypatch, lambda: qlab.intrinsic_conv(x, w, padding=1, spec=spec))
    assert got.shape == ref.shape == (0, 4, 5, 5)
    # 1-d convolution goes through the same kernel
    x1, w1 = torch.randn(2, 3, 20) * 3, torch.randn(6, 3, 5)
    ref, got, ran = _both(monkeypatch, lambda: qlab.intrinsic_conv(x1, w1, stride=2, padding=2, spec=spec))
    assert ran == 1 and torch.equal(got, ref)


def test_conv_kernel_declines_what_the_accumulation_declines(monkeypatch):
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    for spec in (_spec(8, 4, 8, 2, "nearest"), _spec(32, 31, mode="stochastic"), _spec(8, -1),
                 qlab.Intrinsic(FixedPoint(8, 4), inputs=False), as_intrinsic("fp16")):
        assert not cpu.conv_accepts(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, spec)
    assert cpu.conv_accepts(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, as_intrinsic("fixed(8,4)"))
    assert not cpu.conv_accepts(x.double(), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, as_intrinsic("fixed(8,4)"))
    # channels that do not match the weight: declined, and the reference raises torch's error
    assert not cpu.conv_accepts(torch.randn(2, 2, 6, 6), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, as_intrinsic("fixed(8,4)"))
    with pytest.raises(RuntimeError):
        qlab.intrinsic_conv(torch.randn(2, 2, 6, 6), w, padding=1, spec="fixed(8,4)")
    monkeypatch.setattr(cpu, "CONV_KERNEL", False)
    assert not cpu.conv_accepts(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, as_intrinsic("fixed(8,4)"))


def test_clamps_left_out_only_where_they_cannot_act(monkeypatch):
    """The int32 micro-kernel (4 rows x 32 columns) skips the product clamp where the
    operands' bound pm = (max|a| max|b| >> F) + 1 <= Q's largest integer, and runs the
    sequential sums without their clamp for (max_A - m) // (pm << d) steps.  Products
    exactly at pm (17 * 17 / 16 rounds up to 19 = (289 >> 4) + 1, -19 rounding down;
    12 * 14 / 16 = 10.5 -> 11 to nearest) rise until k = f and fall after: f = r + 1, r
    the first run's length, puts one sum past A's range, which a run one step too long
    would leave unclamped.  Also sums only below zero (the bound takes |min| too), and
    products one past Q's range."""
    g = torch.Generator().manual_seed(4)
    for W, Fq, Wa, Fa in [(12, 4, 12, 4), (10, 4, 12, 6)]:
        for mode in MODES:
            kx, kw, pm = (12, 14, 11) if mode == "nearest" else (17, 17, 19)
            r = (2 ** (Wa - 1) - 1) // (pm << (Fa - Fq))
            K = r + 12
            f = torch.tensor([r - 1, r, r + 1, r + 2, K // 2, 3, r, r + 1])[:, None]
            rise = torch.where(torch.arange(K)[None, :] < f, kx, -kx).float()
            x = torch.cat([rise, -rise, torch.where(torch.rand(4, K, generator=g) < 0.6, kx, -kx)]) / 2 ** Fq
            w = torch.cat([torch.full((8, K), kw), torch.where(torch.rand(24, K, generator=g) < 0.5, kw, -kw),
                           torch.randint(-kw, kw + 1, (8, K), generator=g)]).float() / 2 ** Fq
            for acc in ("sequential", "final"):
                spec = _spec(W, Fq, Wa, Fa, mode, acc)
                for xx in (x, -rise[[2, 3, 6, 7]] / 2 ** Fq):
                    ref, got, ran = _both(monkeypatch, qlab.intrinsic_linear, xx, w, None, spec)
                    assert ran == 1 and torch.equal(got, ref), (spec, xx.shape)
    # products that reach Q's largest integer + 1 = pm (fixed(8,4): 107 * 19 / 16 = 127.06,
    # up -> 128) keep their clamp: the sum 128 - 100 must be 27
    x = torch.tensor([[107.0, -100.0]] * 4) / 16
    w = torch.tensor([[19.0, 16.0]] * 32) / 16
    for mode in MODES:
        ref, got, ran = _both(monkeypatch, qlab.intrinsic_linear, x, w, None, _spec(8, 4, 16, 4, mode))
        assert ran == 1 and torch.equal(got, ref), mode
    # the bound itself: any rounding of a product of grid integers stays within pm
    a, b = torch.tensor([[3.0, -17.0]]), torch.tensor([[17.0, 2.0]])
    assert cpu._product_bound(a, b, 4) == (17 * 17 >> 4) + 1 and cpu._product_bound(a[:, :0], b, 4) == -1


def test_grid_ints_equal_fixed_to_grid():
    """One C pass from float tensors to q's grid integers (int32) and max |k|, for the
    linear and conv kernels: fixed_to_grid's integers for every deterministic mode, ties,
    saturation, inf, subnormals, signed zeros, float32/64/16 and bfloat16; NaN -> 0."""
    import math

    from qlab.core.formats import fixed_to_grid

    g = torch.Generator().manual_seed(1)
    specials = [0., -0., math.inf, -math.inf, 0.49999997, -0.49999997, 1e-40, -1e-40, 1e-45, 3e38, -3e38, 0.5, -0.5,
                1.5, -1.5, 2.5]
    x = torch.cat([torch.randn(3000, generator=g) * 20, torch.tensor(specials),
                   (torch.arange(-300, 300) + 0.5) / 16, torch.arange(-300, 300) / 16])
    for W, Fq in [(8, 4), (4, 0), (1, 0), (16, 8), (24, 10), (32, 16), (32, 0), (12, 20), (6, 62), (30, 29)]:
        for mode in MODES:
            for t in (x, x.double(), x.half(), x.bfloat16(), (x * 1e4).double()):
                want = fixed_to_grid(t, W, Fq, mode).to(torch.int64)
                k, amax = cpu.grid_ints(t, FixedPoint(W, Fq, mode))
                assert k.dtype == torch.int32 and torch.equal(k.to(torch.int64), want), (W, Fq, mode, t.dtype)
                assert amax == want.abs().max().item()
    k, amax = cpu.grid_ints(torch.tensor([math.nan, 1.0]), FixedPoint(8, 4))
    assert k.tolist() == [0, 16] and amax == 16
    assert cpu.grid_ints(torch.empty(0), FixedPoint(8, 4))[1] == 0


def test_linear_kernel_equals_reference(monkeypatch):
    """intrinsic_linear / intrinsic_matmul on CPU tensors go through fixed_matmul (grid
    integers in one pass, then the accumulation kernel): the reference's result for random
    specs and shapes -- rows in fours or not, column blocks full or ragged, few outputs
    (rows and columns swapped), leading batch dims, bias, float64/16 and bfloat16, empty."""
    rng = random.Random(3)
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        W = rng.choice([4, 8, 12, 16, 20, 24])
        Fq = rng.randint(0, W)
        Wa = rng.randint(W, min(30, W + 12))
        spec = _spec(W, Fq, Wa, Fq + rng.randint(0, Wa - W), rng.choice(MODES), rng.choice(["sequential", "final"]))
        M, K, N = rng.choice([1, 3, 4, 9, 40]), rng.randint(1, 70), rng.choice([1, 5, 31, 32, 33, 70])
        scale = 2.0 ** (W - 1 - Fq) * rng.choice([0.01, 0.3, 1.0, 3.0])
        x = torch.randn(2, M, K, generator=g) * scale
        w, b = torch.randn(N, K, generator=g) * scale, torch.randn(N, generator=g) * scale
        dt = rng.choice([torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if W <= 8 else []))
        ref, got, ran = _both(monkeypatch, qlab.intrinsic_linear, x.to(dt), w.to(dt), b.to(dt), spec)
        assert ran >= 1 and got.dtype == ref.dtype and torch.equal(got, ref), (trial, spec, M, K, N, dt)
    a, c = torch.randn(7, 12, generator=g) * 3, torch.randn(12, 40, generator=g) * 3
    _through_ops(monkeypatch, lambda a, c: qlab.intrinsic_matmul(a, c, spec="fixed(8,4,even)"), a, c)
    for M, K, N in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]:
        x, w = torch.randn(M, K), torch.randn(N, K)
        ref, got, _ = _both(monkeypatch, qlab.intrinsic_linear, x, w, torch.ones(N), "fixed(8,4)")
        assert got.shape == ref.shape == (M, N) and torch.equal(got, ref)
    monkeypatch.setattr(cpu, "MATMUL_KERNEL", False)
    assert not cpu.matmul_accepts(x, w.t(), None, as_intrinsic("fixed(8,4)"))


def test_fixed_quantizer_equals_reference(monkeypatch):
    """The elementwise fixed(W, F) quantizer in one C pass (float32 and float64 CPU
    tensors): the reference's values bit for bit -- random bit patterns (every exponent,
    subnormals, inf, NaN), ties on the grid, signed zeros, saturation, W = 1..32, F from
    -700 to 600 -- and the reference runs where it declines (F out of its exact range,
    float16)."""
    import math

    g = torch.Generator().manual_seed(2)
    bits = torch.randint(-2 ** 31, 2 ** 31, (20000,), dtype=torch.int64, generator=g).to(torch.int32).view(torch.float32)
    specials = torch.tensor([0., -0., math.nan, -math.nan, math.inf, -math.inf, 0.49999997, -0.49999997, 1e-40, -1e-40,
                             1e-45, -1e-45, 3e38, -3e38, 0.5, -0.5, 1.5, -1.5, 2.5])
    x = torch.cat([torch.randn(3000, generator=g) * 20, specials, (torch.arange(-300, 300) + 0.5) / 16, bits])
    xd = torch.cat([x.double(), torch.randn(2000, dtype=torch.float64, generator=g) * 1e6,
                    torch.tensor([2.0 ** 40 + 0.5, -1e-300, 5e-324, 0.49999999999999994], dtype=torch.float64)])

    def same(a, b):
        m = ~a.isnan()
        return (a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a[m], b[m])
                and torch.equal(torch.signbit(a[m]), torch.signbit(b[m])))

    n = 0
    for W, Fq in [(8, 4), (4, 0), (1, 0), (16, 8), (24, 10), (32, 16), (32, 0), (12, 20), (6, 62), (30, 29), (8, -2),
                  (24, -3), (12, 600), (31, -700), (25, 140), (8, 150)]:
        for mode in MODES:
            q = FixedPoint(W, Fq, mode)
            for t in (x, xd):
                if not cpu.fixed_accepts(t, q):
                    assert t.dtype == torch.float64 and Fq < 0
                    continue
                monkeypatch.setenv("QLAB_BACKEND", "torch")
                ref = q(t)
                monkeypatch.delenv("QLAB_BACKEND")
                before = cpu.fixed_calls
                got = q(t)
                assert cpu.fixed_calls == before + 1 and same(got, ref), (str(q), t.dtype)
                n += 1
    assert n == 16 * 5 * 2 - 3 * 5  # float64 with F < 0 declined
    for t, q in [(x.half(), FixedPoint(8, 4)), (x, FixedPoint(8, 900))]:
        assert not cpu.fixed_accepts(t, q)
    assert cpu.fixed_quantize(torch.empty(0), FixedPoint(8, 4)).shape == (0,)


def test_stochastic_products(monkeypatch):
    """Stochastic products in the accumulation kernel (draws from a counter-based hash
    seeded from torch's generator: the reference's distribution, not its draws):
    torch.manual_seed repeats a run and another seed changes it, every result lies between
    the all-down and all-up results, and over 400 identical rows the mean is the exact
    product sum within 5 sigma and the variance that of independent draws (each product
    rounds up with probability equal to its remainder) within 30%."""
    import math

    g = torch.Generator().manual_seed(3)
    K, R = 40, 400
    xr = torch.randint(-12, 13, (1, K), generator=g) / 16.0
    w = torch.randint(-12, 13, (3, K), generator=g) / 16.0
    x = xr.repeat(R, 1)
    exact = (xr.double() @ w.double().t())[0]
    frac = ((xr.double().t() * w.double().t()) * 16) % 1.0
    var_exact = (frac * (1 - frac)).sum(0) * 2.0 ** -8
    for acc in ("sequential", "final"):
        spec = _spec(8, 4, 16, 4, "stochastic", acc)
        before = cpu.calls
        torch.manual_seed(7)
        y1 = qlab.intrinsic_linear(x, w, None, spec)
        assert cpu.calls > before
        torch.manual_seed(7)
        assert torch.equal(y1, qlab.intrinsic_linear(x, w, None, spec))
        torch.manual_seed(8)
        assert not torch.equal(y1, qlab.intrinsic_linear(x, w, None, spec))
        monkeypatch.setenv("QLAB_BACKEND", "torch")
        lo = qlab.intrinsic_linear(x, w, None, _spec(8, 4, 16, 4, "down", acc))
        hi = qlab.intrinsic_linear(x, w, None, _spec(8, 4, 16, 4, "up", acc))
        monkeypatch.delenv("QLAB_BACKEND")
        assert bool(((y1 >= lo) & (y1 <= hi)).all()) and bool((lo < hi).any())
        sigma = math.sqrt(K * 0.25 / R) * 2 ** -4
        assert (y1.double().mean(0) - exact).abs().max().item() <= 5 * sigma, acc
        var = y1.double().var(0)
        assert bool(((var - var_exact).abs() <= 0.3 * var_exact).all()), (acc, var, var_exact)
    # int64 sums (W = 20) and a conv (the conv kernel: tests/ext/test_cpu_stochastic.py has more)
    spec = _spec(20, 10, 24, 10, "stochastic")
    torch.manual_seed(1)
    a = qlab.intrinsic_linear(x[:8] * 5, w, None, spec)
    torch.manual_seed(1)
    assert torch.equal(a, qlab.intrinsic_linear(x[:8] * 5, w, None, spec))
    xc, wc = torch.randn(2, 3, 6, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    before = cpu.calls
    torch.manual_seed(2)
    c1 = qlab.intrinsic_conv(xc, wc, padding=1, spec="fixed(8,4,stochastic)")
    torch.manual_seed(2)
    assert torch.equal(c1, qlab.intrinsic_conv(xc, wc, padding=1, spec="fixed(8,4,stochastic)")) and cpu.calls > before


def stochastic_quantizer_checks(q, x, N, lo_q, hi_q, lim, calls):
    """For a stochastic quantizer q on x (values repeated N times each): torch.manual_seed
    and a generator repeat it, another seed changes it, ``calls()`` counts one kernel call
    per use, every result is its round-down (lo_q) or round-up (hi_q), and each value's
    mean is its position between them (clamped to +-lim) within 5 sigma.  Returns q(x)."""
    import math

    before = calls()
    torch.manual_seed(5)
    y = q(x)
    torch.manual_seed(5)
    assert torch.equal(y, q(x)) and calls() == before + 2
    torch.manual_seed(6)
    assert not torch.equal(y, q(x))
    gen = torch.Generator().manual_seed(11)
    z = q(x, generator=gen)
    gen.manual_seed(11)
    assert torch.equal(z, q(x, generator=gen))
    lo, hi = lo_q(x), hi_q(x)
    assert bool(((y == lo) | (y == hi)).all()), str(q)
    for i in range(x.numel() // N):
        v = x[i * N].item()
        yi, l, h = y[i * N:(i + 1) * N].double(), lo[i * N].item(), hi[i * N].item()
        if l == h:
            assert bool((yi == l).all()), (str(q), v)
            continue
        p = (min(max(v, -lim[0]), lim[1]) - l) / (h - l)
        assert abs(yi.mean().item() - (l + p * (h - l))) <= 5 * (h - l) * math.sqrt(p * (1 - p) / N) + 1e-12, (q, v)
    return y


def test_stochastic_quantizer():
    """The elementwise stochastic fixed quantizer (draws from the hash, seeded from torch's
    generator): repeatable under torch.manual_seed and a given generator, other draws under
    another seed, every value one of its two grid neighbours, unbiased (mean of N draws
    within 5 sigma, off-grid values in several binades and both signs), and independent
    draws for neighbouring elements (agreement 1/2 at a halfway value, lags 1..5, 2**20)."""
    import math

    q = FixedPoint(8, 4, "stochastic")
    N = 4096
    vals = torch.tensor([0.3, -0.3, 1.0 + 1 / 64, -5.77, 7.9, 0.0, 2.5 / 16, 0.01, 3.0, 100.0, -1e-30])
    for dt in (torch.float32, torch.float64):
        stochastic_quantizer_checks(q, vals.to(dt).repeat_interleave(N), N, FixedPoint(8, 4, "down"),
                                    FixedPoint(8, 4, "up"), (8.0, 127 / 16), lambda: cpu.fixed_calls)
    n2 = 2 ** 21
    up = q(torch.full((n2,), 1 / 32)) > 1 / 32
    assert 0.49 < up.double().mean().item() < 0.51
    for lag in (1, 2, 3, 4, 5, 2 ** 20):
        agree = (up[lag:] == up[:-lag]).double().mean().item()
        assert abs(agree - 0.5) <= 5 * math.sqrt(0.25 / (n2 - lag)), (lag, agree)


# ------------------------------------------------------------------ pointwise steps in C
def _both_pointwise(monkeypatch, fn):
    """(reference, kernel) results of fn() and how many pointwise C calls the kernel run made."""
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    ref = fn()
    monkeypatch.delenv("QLAB_BACKEND")
    before = cpu.epilogue_calls
    got = fn()
    return ref, got, cpu.epilogue_calls - before


def _awkward(shape, scale, F, gen, dtype, inf=True):
    """Values at scale, a quarter of them exact ties of the grid (odd multiples of 2**-(F+1)),
    a few +-inf (else +-1e30) and huge ones (saturation), and signed zeros."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    flat = x.view(-1)
    n = flat.numel()
    if n:
        idx = torch.randperm(n, generator=gen)
        ties = idx[: n // 4]
        flat[ties] = (torch.randint(-2 ** 12, 2 ** 12, (len(ties),), generator=gen) * 2 + 1).double() * 2.0 ** -(F + 1)
        flat[idx[n // 4: n // 4 + 3]] = torch.tensor([float("inf") if inf else 1e30, float("-inf") if inf else -1e30, 1e30],
                                                            dtype=torch.float64)[: min(3, n - n // 4)]
        flat[idx[-2:]] = torch.tensor([0.0, -0.0], dtype=torch.float64)[: min(2, n)]
    return x.to(dtype)


def test_batch_norm_kernel_equals_reference(monkeypatch):
    """Intrinsic batch norm in one C pass = the reference's torch steps, for random fixed
    formats (W 2..32, F 0..W+3), every deterministic mode, inputs on and off, 2-, 3- and
    4-d inputs, float32/float64, ties, saturation, +-inf, signed zeros, empty batches."""
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    for trial in range(60):
        W = rng.choice([2, 4, 8, 12, 16, 20, 24, 31, 32])
        Fq = rng.randint(0, W + 3)
        mode = rng.choice(MODES)
        inputs = rng.random() < 0.7
        spec = qlab.Intrinsic(FixedPoint(W, Fq, mode), inputs=inputs)
        C = rng.choice([1, 3, 16])
        shape = rng.choice([(5, C), (4, C, 7), (3, C, 5, 6), (0, C, 2, 2)])
        dtype = rng.choice([torch.float32, torch.float64])
        scale = 2.0 ** (W - 1 - Fq) * rng.choice([0.05, 0.5, 3.0])
        # without inputs x * g is formed as is: inf * 0 would be NaN, whose integer the
        # reference leaves undefined (the kernel takes 0)
        x = _awkward(shape, scale, Fq, gen, dtype, inf=inputs)
        mean, var = torch.randn(C, generator=gen) * scale, torch.rand(C, generator=gen) * scale ** 2 + 0.01
        gamma, beta = torch.randn(C, generator=gen) * rng.choice([1.0, 30.0]), torch.randn(C, generator=gen) * scale
        ref, got, ran = _both_pointwise(monkeypatch, lambda: qlab.intrinsic_batch_norm(
            x, mean.to(dtype), var.to(dtype), gamma.to(dtype), beta.to(dtype), 1e-5, spec))
        assert ran == (1 if x.numel() else 0), (trial, spec)
        assert got.dtype == ref.dtype and got.shape == ref.shape, (trial, spec)
        assert torch.equal(got, ref) and torch.equal(torch.signbit(got), torch.signbit(ref)), \
            (trial, spec, shape, dtype, (got != ref).sum())
    assert not cpu.batch_norm_accepts(x.half(), [1] * C, [0] * C, spec)  # float16: the reference
    assert not cpu.batch_norm_accepts(x, [1] * C, [0] * C, qlab.Intrinsic(FixedPoint(8, -2, "nearest")))
    assert not cpu.batch_norm_accepts(x, [1] * C, [0] * C, qlab.Intrinsic(FixedPoint(8, 63, "nearest")))


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_elementwise_kernel_equals_reference(monkeypatch, op):
    """Intrinsic add/sub/mul of same-shape tensors in one C pass = the reference, for
    random formats (W up to 32, F 0..W+3, F = 62), every mode, inputs on and off, ties,
    saturation, +-inf, signed zeros; other shapes (broadcasting) stay with the reference."""
    rng = random.Random({"add": 1, "sub": 2, "mul": 3}[op])
    gen = torch.Generator().manual_seed(11)
    for trial in range(40):
        W = rng.choice([1, 2, 5, 8, 12, 16, 24, 32])
        Fq = 62 if trial == 0 else rng.randint(0, W + 3)
        spec = qlab.Intrinsic(FixedPoint(W, Fq, rng.choice(MODES)), inputs=rng.random() < 0.7)
        shape = rng.choice([(0,), (7,), (3, 17), (2, 4, 5, 5)])
        dtype = rng.choice([torch.float32, torch.float64])
        scale = 2.0 ** (W - 1 - Fq) * rng.choice([0.05, 0.7, 4.0])
        a, b = _awkward(shape, scale, Fq, gen, dtype), _awkward(shape, scale, Fq, gen, dtype)
        ref, got, ran = _both_pointwise(monkeypatch, lambda: qlab.intrinsic_elementwise(op, a, b, spec))
        assert ran == (1 if a.numel() else 0), (trial, spec)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert torch.equal(got, ref) and torch.equal(torch.signbit(got), torch.signbit(ref)), \
            (trial, spec, shape, dtype, (got != ref).sum())
    full, row = torch.randn(3, 17, generator=gen) * 4, torch.randn(1, 17, generator=gen) * 4
    ref, got, ran = _both_pointwise(monkeypatch, lambda: qlab.intrinsic_elementwise(op, full, row, "fixed(8,4)"))
    assert ran == 0 and torch.equal(got, ref)  # broadcasting: the reference


def test_epilogue_kernel_runs_and_equals_the_torch_epilogue(monkeypatch):
    """The linear and conv kernels end in the C epilogue (bias, final sums, back to Q);
    switched off they end in the reference's torch steps: the same values."""
    gen = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(9, 40, generator=gen) * 4, torch.randn(6, 40, generator=gen), torch.randn(6, generator=gen)
    xc, wc, bc = torch.randn(2, 4, 9, 9, generator=gen) * 4, torch.randn(40, 2, 3, 3, generator=gen), torch.randn(40)
    for spec in ["fixed(8,4,nearest)", "intrinsic(fixed(10,5,even),acc=fixed(16,9,down),accumulate=final)",
                 "intrinsic(fixed(12,3,zero),acc=fixed(20,11,up))", "fixed(32,30,up)",
                 "intrinsic(fixed(8,4,nearest),acc=fixed(8,6,nearest))"]:  # A's range inside Q's: s + b clamps
        runs = [lambda: qlab.intrinsic_linear(x, w, b, spec),
                lambda: qlab.intrinsic_linear(x.double(), w.double(), None, spec),
                lambda: qlab.intrinsic_conv(xc, wc, bc, padding=1, groups=2, spec=spec),
                lambda: qlab.intrinsic_conv(xc[:1, :, :3, :3], wc, bc, groups=2, spec=spec)]  # rows are positions
        for run in runs:
            before = cpu.epilogue_calls
            got = run()
            assert cpu.epilogue_calls == before + 1, spec
            monkeypatch.setattr(cpu, "EPILOGUE_KERNEL", False)
            ref = run()
            monkeypatch.setattr(cpu, "EPILOGUE_KERNEL", True)
            assert got.dtype == ref.dtype and torch.equal(got, ref), spec
