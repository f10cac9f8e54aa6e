"""Stochastic rounding in the compiled CPU paths (qlab.ext.cpu): the grid integers, the
linear and conv kernels (products), their epilogue, batch norm and elementwise ops.

The kernels draw from a counter-based hash seeded from torch's generator, so they follow
the reference's distribution, not its draws.  What is checked: where one rounding acts
per output, every result is its round-down or its round-up and rounds up with the right
frequency; with several roundings, results lie between the all-down and all-up results
(saturating sums are monotone); with every rounding acting (inputs off the grid), the
mean is the exact value and the variance the reference's; draws are independent between
neighbouring outputs; torch.manual_seed (or a generator) repeats a run, and neither the
thread count nor the path a row takes (four-row micro-kernel or one row) changes it.
"""
import math

import pytest
import torch

import qlab
from qlab.core.formats import FixedPoint
from qlab.ext import cpu
from tests.ext.test_cpu_kernel import kernel  # noqa: F401  (autouse: builds and registers the kernels, or skips)


def _calls():
    return cpu.calls + cpu.epilogue_calls + cpu.grid_calls


def _spec(text, mode):
    return qlab.core.intrinsic.as_intrinsic(text.format(mode=mode))


def _with_mode(run, text, mode, backend=None, monkeypatch=None):
    if backend is not None:
        monkeypatch.setenv("QLAB_BACKEND", backend)
    try:
        return run(_spec(text, mode))
    finally:
        if backend is not None:
            monkeypatch.delenv("QLAB_BACKEND")


def _on_grid(shape, F, lim, gen):
    """Values k * 2**-F with integer |k| < lim."""
    return torch.randint(-lim + 1, lim, shape, generator=gen).double().mul_(2.0 ** -F).float()


def _check_floor_or_ceil(y, lo, hi, p_up, where):
    """Each y is lo or hi; the fraction of hi where they differ is p_up within 5 sigma."""
    assert bool(((y == lo) | (y == hi)).all()), where
    diff = lo != hi
    n = int(diff.sum())
    assert n > 100, where
    up = (y[diff] == hi[diff]).double()
    p = p_up[diff].double()
    assert abs(up.sum().item() - p.sum().item()) <= 5 * math.sqrt((p * (1 - p)).sum().item()) + 1, where


# one rounding site acts per output: (name, spec template, run(spec) -> y, the up-probability)
def _single_site_cases():
    g = torch.Generator().manual_seed(1)
    # linear with K = 1 on the grid: y = R(x w) (products of grid 2F rounded to F)
    x1, w1 = _on_grid((300, 1), 4, 40, g), _on_grid((70, 1), 4, 40, g)
    p_lin = ((x1.double() @ w1.double().t()) * 16) % 1.0
    # conv 1x1 with one input channel per group (K = 1), 40 outputs (positions as columns)
    xc, wc = _on_grid((3, 4, 10, 10), 4, 40, g), _on_grid((8, 1, 1, 1), 4, 40, g)
    p_conv = (torch.nn.functional.conv2d(xc.double(), wc.double(), groups=4) * 16) % 1.0
    # the epilogue: exact products (w integers) saturate A = fixed(8, 6) at 127/64; back to
    # fixed(8, 4): R(127/4) = 31 or 32 with P(32) = 3/4
    xe, we = _on_grid((200, 3), 4, 40, g).abs() + 1, torch.ones(50, 3) * 2
    p_epi = torch.full((200, 50), 0.75, dtype=torch.float64)
    # batch norm with exact constants (sqrt(0.25) = 0.5, gamma and beta on the grid): y = R(R(x) g) + r
    xb_ = _on_grid((64, 6, 9, 9), 4, 100, g)
    mean, var = torch.zeros(6), torch.full((6,), 0.25)
    gamma, beta = _on_grid((6,), 4, 30, g) / 2, _on_grid((6,), 4, 30, g)
    kg = (gamma.double() * 2 * 16).round()
    p_bn = ((xb_.double() * 16) * kg.view(1, 6, 1, 1) / 16) % 1.0
    # elementwise mul on the grid: y = R(a b)
    a, b = _on_grid((40, 500), 4, 60, g), _on_grid((40, 500), 4, 60, g)
    p_mul = ((a.double() * b.double()) * 16) % 1.0
    return [
        ("linear", "intrinsic(fixed(16,4,{mode}),acc=fixed(24,4,{mode}))",
         lambda s: qlab.intrinsic_linear(x1, w1, None, s), p_lin),
        ("conv", "intrinsic(fixed(16,4,{mode}),acc=fixed(24,4,{mode}))",
         lambda s: qlab.intrinsic_conv(xc, wc, None, groups=4, spec=s), p_conv),
        ("epilogue", "intrinsic(fixed(8,4,{mode}),acc=fixed(8,6,{mode}))",
         lambda s: qlab.intrinsic_linear(xe, we, None, s), p_epi),
        ("batch norm", "fixed(16,4,{mode})",
         lambda s: qlab.intrinsic_batch_norm(xb_, mean, var, gamma, beta, 0.0, s), p_bn),
        ("mul", "fixed(16,4,{mode})", lambda s: qlab.intrinsic_elementwise("mul", a, b, s), p_mul),
    ]


@pytest.mark.parametrize("case", range(5))
def test_one_rounding_gives_floor_or_ceil_with_its_probability(monkeypatch, case):
    name, text, run, p_up = _single_site_cases()[case]
    lo = _with_mode(run, text, "down", "torch", monkeypatch)
    hi = _with_mode(run, text, "up", "torch", monkeypatch)
    before = _calls()
    torch.manual_seed(3)
    y = _with_mode(run, text, "stochastic")
    assert _calls() > before, name
    assert y.shape == lo.shape and y.dtype == lo.dtype
    _check_floor_or_ceil(y, lo, hi, p_up, name)
    ref = _with_mode(run, text, "stochastic", "torch", monkeypatch)  # the reference: the same two values
    assert bool(((ref == lo) | (ref == hi)).all()), name


@pytest.mark.parametrize("acc", ["sequential", "final"])
def test_many_roundings_lie_between_all_down_and_all_up(monkeypatch, acc):
    """Inputs on the grid, K products rounded and summed with saturation (monotone in each
    product), W = 8 (int32 micro-kernel, four rows at a time) and W = 20 (int64 sums)."""
    g = torch.Generator().manual_seed(2)
    for W, F in ((8, 4), (20, 6)):
        lim = 2 ** (W - 1)
        x, w = _on_grid((37, 50), F, lim // 4, g), _on_grid((45, 50), F, lim // 4, g)
        xc, wc = _on_grid((2, 6, 9, 9), F, lim // 4, g), _on_grid((20, 3, 3, 3), F, lim // 4, g)
        text = f"intrinsic(fixed({W},{F},{{mode}}),accumulate={acc})"
        for run in (lambda s: qlab.intrinsic_linear(x, w, None, s),
                    lambda s: qlab.intrinsic_conv(xc, wc, None, padding=1, groups=2, spec=s)):
            lo = _with_mode(run, text, "down", "torch", monkeypatch)
            hi = _with_mode(run, text, "up", "torch", monkeypatch)
            torch.manual_seed(4)
            y = _with_mode(run, text, "stochastic")
            assert bool(((y >= lo) & (y <= hi)).all()) and bool((y != lo).any()) and bool((y != hi).any()), (W, acc)
            assert bool((hi == (lim - 1) * 2.0 ** -F).any() and (lo == -lim * 2.0 ** -F).any()), (W, acc)  # saturated


def _rows_stats(y):
    """Per-column mean and variance over rows, float64."""
    y = y.double().reshape(y.shape[0], -1)
    return y.mean(0), y.var(0)


def test_every_rounding_unbiased_with_the_references_variance(monkeypatch):
    """Inputs off the grid: each element's grid integer, each product and the step back to Q
    round stochastically (A finer than Q).  Over 800 identical rows the mean is the exact
    value within 5 sigma, and the summed variance is the reference's within 12%; likewise
    for a conv (one image repeated), batch norm and elementwise add and mul."""
    g = torch.Generator().manual_seed(5)
    R = 800
    x = (torch.randn(1, 40, generator=g) * 3).repeat(R, 1)
    w = _on_grid((12, 40), 5, 24, g)  # on the grid: one draw per call would be shared by every row
    b = _on_grid((12,), 5, 40, g)
    xc = (torch.randn(1, 3, 6, 6, generator=g) * 3).repeat(R // 8, 1, 1, 1)
    wc = _on_grid((5, 3, 3, 3), 5, 24, g)
    xb_ = (torch.randn(1, 4, 5, 5, generator=g) * 3).repeat(R, 1, 1, 1)
    mean, var = torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5
    gamma, beta = torch.randn(4, generator=g), torch.randn(4, generator=g)
    ea, eb = (torch.randn(1, 64, generator=g) * 3).repeat(R, 1), (torch.randn(1, 64, generator=g) * 3).repeat(R, 1)
    text = "intrinsic(fixed(12,5,{mode}),acc=fixed(20,9,{mode}))"
    cases = [
        ("linear", lambda s: qlab.intrinsic_linear(x, w, b, s),
         (x[:1].double() @ w.double().t() + b.double()).reshape(-1)),
        ("conv", lambda s: qlab.intrinsic_conv(xc, wc, None, padding=1, spec=s),
         torch.nn.functional.conv2d(xc[:1].double(), wc.double(), padding=1).reshape(-1)),
        ("add", lambda s: qlab.intrinsic_elementwise("add", ea, eb, s), (ea[:1].double() + eb[:1].double()).reshape(-1)),
        ("mul", lambda s: qlab.intrinsic_elementwise("mul", ea / 2, eb / 2, s),  # products inside the range
         (ea[:1].double() * eb[:1].double() / 4).reshape(-1)),
    ]
    for name, run, exact in cases:
        torch.manual_seed(6)
        before = _calls()
        y = _with_mode(run, text, "stochastic")
        assert _calls() > before, name
        torch.manual_seed(6)
        ref = _with_mode(run, text, "stochastic", "torch", monkeypatch)
        m, v = _rows_stats(y)
        mr, vr = _rows_stats(ref)
        n = y.shape[0]
        assert bool(((m - exact).abs() <= 5 * (v / n).sqrt() + 1e-9).all()), (name, (m - exact).abs().max())
        assert abs(v.sum().item() / vr.sum().item() - 1) <= 0.12, (name, v.sum().item(), vr.sum().item())
    # batch norm: its constants are drawn too (one set per call), so its mean is compared
    # with the reference's mean over as many rows, not with the exact value
    bn = lambda s: qlab.intrinsic_batch_norm(xb_, mean, var, gamma, beta, 1e-5, s)  # noqa: E731
    torch.manual_seed(6)
    y = _with_mode(bn, "fixed(12,5,{mode})", "stochastic")
    torch.manual_seed(6)
    ref = _with_mode(bn, "fixed(12,5,{mode})", "stochastic", "torch", monkeypatch)  # the same constants' draws
    m, v = _rows_stats(y)
    mr, vr = _rows_stats(ref)
    assert bool(((m - mr).abs() <= 5 * ((v + vr) / R).sqrt() + 1e-9).all())
    assert abs(v.sum().item() / vr.sum().item() - 1) <= 0.12


def test_neighbouring_outputs_draw_independently():
    """Residuals over 1000 identical rows: no correlation (within 5 sigma of 0) between
    neighbouring rows (the four-row kernel's), neighbouring columns, and between outputs
    with identical operands that a shared draw would make equal -- columns j and j + 16
    (one hash's two halves), j and j + 32 (the next column block), and a grouped conv's
    two identical groups."""
    g = torch.Generator().manual_seed(8)
    R = 1000
    x = _on_grid((1, 64), 4, 60, g).repeat(R, 1)
    w = torch.empty(66, 64)
    w[:16] = (torch.randn(16, 64, generator=g) * 11).round() / 16 + 1 / 32  # remainders: products round
    w[16:32] = w[:16]
    w[32:64] = w[:32]
    w[64:] = (torch.randn(2, 64, generator=g) * 11).round() / 16 + 1 / 32
    torch.manual_seed(9)
    y = qlab.intrinsic_linear(x, w, None, "fixed(16,5,stochastic)").double()
    r = y - y.mean(0)
    assert bool((r.std(0) > 0).all())

    def near_zero(a, b):
        n = a.numel()
        c = ((a * b).sum() / (a.norm() * b.norm())).item()
        return abs(c) <= 5 / math.sqrt(n)

    assert near_zero(r[1:], r[:-1])  # rows
    assert near_zero(r[:, 1:16], r[:, :15]) and near_zero(r[:, 33:48], r[:, 32:47])  # columns
    assert near_zero(r[:, 16:32], r[:, :16])  # one hash's halves
    assert near_zero(r[:, 32:64], r[:, :32])  # column blocks
    xc = _on_grid((1, 2, 8, 8), 4, 60, g).repeat(125, 2, 1, 1)  # the second group's input = the first's
    wc = (torch.randn(3, 2, 3, 3, generator=g) * 16).round() / 16 + 1 / 64
    yc = qlab.intrinsic_conv(xc, wc.repeat(2, 1, 1, 1), None, padding=1, groups=2, spec="fixed(16,5,stochastic)")
    rc = (yc.double() - yc.double().mean(0))
    assert near_zero(rc[:, :3], rc[:, 3:])  # the groups
    assert near_zero(rc[1:], rc[:-1]) and near_zero(rc[..., 1:], rc[..., :-1])  # images, positions


def test_seed_threads_and_paths_repeat_a_run():
    """torch.manual_seed repeats a run and another seed changes it; a generator alone
    repeats it; one thread or two give the same draws; a row's results do not depend on
    the other rows (the four-row micro-kernel and the one-row path draw alike), nor an
    image's on the batch it is in."""
    g = torch.Generator().manual_seed(10)
    x, w, b = torch.randn(8, 70, generator=g) * 3, torch.randn(40, 70, generator=g), torch.randn(40, generator=g)
    xc, wc = torch.randn(3, 4, 7, 7, generator=g) * 3, torch.randn(6, 2, 3, 3, generator=g)
    xb_ = torch.randn(5, 3, 4, 4, generator=g) * 3
    stats = (torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g),
             torch.randn(3, generator=g))
    spec = "intrinsic(fixed(12,5,stochastic),acc=fixed(20,9,stochastic))"
    runs = {
        "linear": lambda: qlab.intrinsic_linear(x, w, b, spec),
        "linear, int64 sums": lambda: qlab.intrinsic_linear(x, w, b, "fixed(24,10,stochastic)"),
        "linear, final": lambda: qlab.intrinsic_linear(x, w, b, "intrinsic(fixed(12,5,stochastic),accumulate=final)"),
        "linear, F = 20": lambda: qlab.intrinsic_linear(x / 256, w / 256, None, "fixed(16,20,stochastic)"),
        "conv": lambda: qlab.intrinsic_conv(xc, wc, None, padding=1, groups=2, spec=spec),
        "batch norm": lambda: qlab.intrinsic_batch_norm(xb_, *stats, 1e-5, "fixed(12,5,stochastic)"),
        "sub": lambda: qlab.intrinsic_elementwise("sub", xc, xc * 0.3, "fixed(12,5,stochastic)"),
    }
    threads = torch.get_num_threads()
    for name, run in runs.items():
        torch.manual_seed(1)
        y1 = run()
        torch.manual_seed(1)
        assert torch.equal(y1, run()), name
        torch.manual_seed(2)
        assert not torch.equal(y1, run()), name
        torch.set_num_threads(1)
        try:
            torch.manual_seed(1)
            assert torch.equal(y1, run()), name
        finally:
            torch.set_num_threads(threads)
    torch.manual_seed(1)
    full = runs["linear"]()
    for M in (5, 6, 7):  # rows 4.. through the one-row path instead of the micro-kernel
        torch.manual_seed(1)
        assert torch.equal(full[:M], qlab.intrinsic_linear(x[:M], w, b, spec)), M
    torch.manual_seed(1)
    full = runs["conv"]()
    torch.manual_seed(1)
    assert torch.equal(full[:1], qlab.intrinsic_conv(xc[:1], wc, None, padding=1, groups=2, spec=spec))
    # a generator alone repeats a run (batch-norm constants included)
    for run in (lambda gen: qlab.intrinsic_linear(x, w, b, spec, generator=gen),
                lambda gen: qlab.intrinsic_batch_norm(xb_, *stats, 1e-5, "fixed(12,5,stochastic)", generator=gen)):
        torch.manual_seed(3)
        a = run(torch.Generator().manual_seed(4))
        torch.manual_seed(5)
        assert torch.equal(a, run(torch.Generator().manual_seed(4)))


def test_limits_of_the_stochastic_kernels(monkeypatch):
    """Products draw 32 bits: q.F > 30 goes to the reference; so do K >= 2**24 (each
    draw's counter); the pointwise steps take F up to 62 (draws of 32 bits scaled)."""
    x, w = torch.randn(4, 6), torch.randn(6, 5)
    q = qlab.Intrinsic(FixedPoint(32, 31, "stochastic"))
    assert not cpu.matmul_accepts(x, w, None, q)
    assert cpu.matmul_accepts(x, w, None, qlab.Intrinsic(FixedPoint(32, 30, "stochastic")))
    assert not cpu.covers(qlab.Intrinsic(FixedPoint(8, 4, "stochastic")), True, 2 ** 24)
    assert cpu.covers(qlab.Intrinsic(FixedPoint(8, 4, "stochastic")), True, 2 ** 24 - 1)
    assert cpu.covers(qlab.Intrinsic(FixedPoint(8, 4, "nearest")), True, 2 ** 30)
    # F = 40: a * b = (2**20 + 1) * 2**19 steps of 2**-80, i.e. 1/2 + 2**-21 steps of 2**-40
    spec = qlab.Intrinsic(FixedPoint(32, 40, "stochastic"))
    a = torch.full((20000,), (2 ** 20 + 1) * 2.0 ** -40, dtype=torch.float64)
    torch.manual_seed(0)
    before = cpu.epilogue_calls
    y = qlab.intrinsic_elementwise("mul", a, torch.full_like(a, 2.0 ** -21), spec)
    assert cpu.epilogue_calls == before + 1
    assert bool(((y == 0) | (y == 2.0 ** -40)).all())
    assert abs((y > 0).double().mean().item() - 0.5) <= 5 * math.sqrt(0.25 / 20000)
