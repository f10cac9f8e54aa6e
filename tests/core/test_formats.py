"""Every format and rounding mode against the Python-integer references."""
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qlab
from qlab.core.formats import ROUNDINGS

from . import reference as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DET = ["nearest", "even", "down", "up", "zero"]


def _specials(W, F):
    """Ties, range ends, signed zeros, NaN/inf for fixed(W, F)."""
    step = 2.0 ** -F
    hi = (2 ** (W - 1) - 1) * step
    lo = -(2 ** (W - 1)) * step
    vals = [0.0, -0.0, math.nan, math.inf, -math.inf, hi, lo, hi + step / 2, lo - step / 2, hi * 4, lo * 4]
    for k in (-3, -2, -1, 0, 1, 2, 3, 7):
        vals += [(k + 0.5) * step, (k + 0.25) * step, (k - 0.25) * step, (k + 0.5) * step * (1 + 2 ** -20)]
    vals += [0.49999997 * step, -0.49999997 * step, 2.5 * step, -2.5 * step, 1e-40, -1e-40]
    return vals


def _randoms(n, W, F, seed):
    rng = random.Random(seed)
    scale = 2.0 ** (W - 1 - F)
    return [rng.uniform(-1.5, 1.5) * scale * rng.choice([1, 0.01, 1e-3]) for _ in range(n)]


def _check(out, expected, dtype, label):
    got = out.tolist()
    for g, e, i in zip(got, expected, range(len(got))):
        e_val = e if isinstance(e, float) else ref.to_dtype(e, dtype)
        if isinstance(e_val, float) and math.isnan(e_val):
            assert math.isnan(g), f"{label}[{i}]: expected NaN, got {g}"
        else:
            assert g == e_val, f"{label}[{i}]: got {g!r}, expected {e_val!r}"


@pytest.mark.parametrize("mode", DET)
@pytest.mark.parametrize("W,F", [(8, 4), (4, 0), (1, 0), (2, 5), (16, 8), (8, -2), (12, 15), (24, 10), (25, 3), (32, 16), (32, -3), (6, 40)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_matches_reference(mode, W, F, dtype):
    q = qlab.FixedPoint(W, F, mode)
    vals = _specials(W, F) + _randoms(200, W, F, seed=W * 100 + F)
    x = torch.tensor(vals, dtype=torch.float64).to(dtype)
    xs = x.to(torch.float64).tolist()  # the values as stored in dtype
    out = q(x)
    assert out.dtype == dtype and out.shape == x.shape
    _check(out, [ref.fixed(v, W, F, mode) for v in xs], dtype, str(q))


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=50),
       st.integers(1, 32), st.integers(-20, 40), st.sampled_from(DET))
@settings(max_examples=150, deadline=None)
def test_fixed_hypothesis(vals, W, F, mode):
    q = qlab.FixedPoint(W, F, mode)
    x = torch.tensor(vals, dtype=torch.float32)
    _check(q(x), [ref.fixed(v, W, F, mode) for v in x.double().tolist()], torch.float32, str(q))


@pytest.mark.parametrize("mode", DET)
def test_fixed_idempotent(mode):
    q = qlab.FixedPoint(10, 3, mode)
    x = torch.randn(1000) * 100
    y = q(x)
    assert torch.equal(q(y), y)


def test_fixed_negative_zero_is_positive_zero():
    y = qlab.FixedPoint(8, 4)(torch.tensor([-0.0, -0.01]))
    assert torch.equal(torch.signbit(y), torch.tensor([False, False]))


def test_empty_and_shapes():
    for q in [qlab.FixedPoint(8, 4), qlab.parse("fp16"), qlab.Log(5, 0), qlab.Binary(), qlab.Ternary(), qlab.Sparse(0.1)]:
        e = torch.empty(0, 3)
        assert q(e).shape == (0, 3)
        x = torch.randn(2, 3, 4)
        assert q(x).shape == x.shape


def test_non_float_raises():
    with pytest.raises(ValueError, match="int64"):
        qlab.FixedPoint(8, 4)(torch.arange(3))


def test_stochastic_repeatable_and_unbiased():
    q = qlab.FixedPoint(8, 2, "stochastic")
    x = torch.full((200000,), 0.3)  # between 0.25 and 0.5: P(0.5) = 0.2
    torch.manual_seed(1)
    a = q(x)
    torch.manual_seed(1)
    b = q(x)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.25, 0.5}
    # mean should be 0.3: std of the mean = 0.25*0.4/sqrt(n) ~ 2.2e-4
    assert abs(a.double().mean().item() - 0.3) < 1.5e-3
    g = torch.Generator().manual_seed(5)
    c = q(x, generator=g)
    g2 = torch.Generator().manual_seed(5)
    assert torch.equal(c, q(x, generator=g2))
    # on-grid values never move
    grid = torch.arange(-20, 20) * 0.25
    assert torch.equal(q(grid), grid)


def test_stochastic_matches_reference_given_draws(monkeypatch):
    """With the same uniforms the stochastic result is the reference's (floor + [u < frac]).
    The torch path's draws: compiled kernels draw their own (the CPU quantizer from a hash)."""
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    q = qlab.FixedPoint(12, 5, "stochastic")
    x = torch.randn(500) * 10
    g = torch.Generator().manual_seed(3)
    out = q(x, generator=g)
    u = torch.rand(500, generator=torch.Generator().manual_seed(3), dtype=torch.float32).tolist()
    _check(out, [ref.fixed(v, 12, 5, "stochastic", uu) for v, uu in zip(x.double().tolist(), u)], torch.float32, "st")


def test_straight_through_gradient():
    x = torch.randn(10, requires_grad=True)
    for q in [qlab.FixedPoint(4, 2), qlab.parse("fp8e4m3"), qlab.Log(4, 0), qlab.Binary(), qlab.Ternary()]:
        x.grad = None
        q(x).sum().backward()
        assert torch.equal(x.grad, torch.ones(10)), str(q)


FLOATS = [(5, 10, False), (8, 7, False), (5, 2, False), (4, 3, True), (3, 1, False), (6, 4, False)]


@pytest.mark.parametrize("E,M,fn", FLOATS)
@pytest.mark.parametrize("mode", ["even", "zero", "nearest", "down", "up"])
@pytest.mark.parametrize("inf", [False, True])
def test_float_matches_reference(E, M, fn, mode, inf):
    if fn and inf:
        pytest.skip("FN formats have no inf")
    q = qlab.Float(E, M, mode, fn=fn, inf=inf)
    rng = random.Random(E * 31 + M)
    mx = q.max_value
    vals = [0.0, -0.0, math.nan, math.inf, -math.inf, mx, -mx, mx * 1.03, mx * 1.07, mx * 2, 1e-30, -1e-30]
    tiny = 2.0 ** (2 - 2 ** (E - 1) - M)  # smallest subnormal
    vals += [tiny * k / 2 for k in range(-9, 10)] + [tiny * 0.5, tiny * 0.75, tiny * 1.5]
    vals += [rng.uniform(-1, 1) * 2.0 ** rng.randint(-30, 20) for _ in range(300)]
    x = torch.tensor(vals, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        _check(q(xd), [ref.float_fmt(v, E, M, mode, fn, inf) for v in xd.double().tolist()], dtype, str(q))


def test_float_presets_match_torch_casts():
    x = torch.randn(100000) * torch.exp(torch.randn(100000) * 6)
    x = torch.cat([x, torch.tensor([65504.0, 65520.0, 65519.0, 1e9, -1e9, 6e-8, 3e-8])])
    assert torch.equal(qlab.Float(5, 10, inf=True)(x), x.half().float())
    assert torch.equal(qlab.Float(8, 7, inf=True)(x), x.bfloat16().float())
    # saturating by default
    assert qlab.parse("fp16")(torch.tensor([1e9])).item() == 65504.0
    assert qlab.parse("fp8e4m3").max_value == 448.0
    assert qlab.parse("fp8e5m2").max_value == 57344.0
    assert torch.equal(qlab.parse("fp8e4m3")(x), x.to(torch.float8_e4m3fn).float().clamp(-448, 448).where(x.abs() <= 464, torch.sign(x) * 448))


def test_float_stochastic_unbiased():
    q = qlab.Float(5, 2, "stochastic")  # 1.0, 1.25 neighbours
    x = torch.full((200000,), 1.1)
    torch.manual_seed(0)
    y = q(x)
    assert set(y.unique().tolist()) == {1.0, 1.25}
    assert abs(y.double().mean().item() - 1.1) < 2e-3


@pytest.mark.parametrize("mode", ["nearest", "log", "down"])
@pytest.mark.parametrize("W,E", [(4, 0), (5, 3), (3, -2), (8, 10), (9, 127), (32, 0)])
def test_log_matches_reference(mode, W, E):
    q = qlab.Log(W, E, mode)
    rng = random.Random(W + E)
    emin = E - 2 ** (W - 1) + 2
    vals = [0.0, -0.0, math.nan, math.inf, -math.inf, 2.0 ** E, 2.0 ** E * 1.9, 2.0 ** (E + 3)]
    if emin > -1000:
        p = 2.0 ** emin
        vals += [p, p * 0.5, p * 0.49, p * 0.75, -p * 0.5, p * 1.5, p * 1.42, p * 1.4143]
    vals += [rng.uniform(-1, 1) * 2.0 ** rng.randint(-40, E + 2) for _ in range(300)]
    vals += [1.5 * 2.0 ** k for k in range(-5, 3)] + [math.sqrt(2) * 2.0 ** k for k in range(-5, 3)]
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(vals, dtype=torch.float64).to(dtype)
        _check(q(x), [ref.log_fmt(v, W, E, mode) for v in x.double().tolist()], dtype, str(q))


def test_binary_ternary_sparse():
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-0.5, 0.5, 0.1, -0.1]])
    m = x.abs().mean().item()
    assert torch.equal(qlab.Binary()(x), torch.where(x >= 0, m, -m))
    ch = x.abs().mean(dim=1, keepdim=True)
    assert torch.equal(qlab.Binary("channel")(x), torch.where(x >= 0, ch, -ch))
    assert torch.equal(qlab.Binary(0.25)(x), torch.where(x >= 0, 0.25, -0.25))
    t = 0.7 * m
    keep = x.abs() > t
    a = x.abs()[keep].mean()
    assert torch.allclose(qlab.Ternary()(x), torch.where(keep, torch.sign(x) * a, torch.zeros_like(x)), rtol=0, atol=1e-7)
    assert torch.equal(qlab.Ternary(0.2, 1.0)(x), torch.where(x.abs() > 0.2, torch.sign(x), torch.zeros_like(x)))
    assert torch.equal(qlab.Sparse(0.1)(x), torch.where(x.abs() > 0.1, x, torch.zeros_like(x)))
    nanx = torch.tensor([1.0, math.nan, -1.0])
    for q in (qlab.Binary(), qlab.Ternary(), qlab.Sparse(0.1)):
        y = q(nanx)
        assert math.isnan(y[1].item()) and not math.isnan(y[0].item()), str(q)


@pytest.mark.parametrize("bad,match", [
    (lambda: qlab.FixedPoint(0, 4), "W=0"),
    (lambda: qlab.FixedPoint(33, 4), "W=33"),
    (lambda: qlab.FixedPoint(8, 4, "nearst"), "nearst"),
    (lambda: qlab.Float(5, 10, "sideways"), "sideways"),
    (lambda: qlab.Log(1, 0), "W=1"),
    (lambda: qlab.Binary("median"), "median"),
    (lambda: qlab.Sparse(-1), "-1"),
])
def test_bad_formats(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_all_roundings_known():
    assert set(ROUNDINGS) == {"nearest", "even", "down", "up", "zero", "stochastic"}
