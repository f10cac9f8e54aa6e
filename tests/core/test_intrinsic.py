"""Intrinsic ops against a scalar loop in Python rationals (SEMANTICS.md section 4)."""
import math
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import qlab
from qlab.core.formats import FixedPoint
from qlab.core.intrinsic import as_intrinsic, intrinsic_conv, intrinsic_matmul

from . import reference as ref


def _spec(W, Fb, Wa, Fa, mode, acc, inputs=True):
    return qlab.Intrinsic(FixedPoint(W, Fb, mode), acc=FixedPoint(Wa, Fa, mode), accumulate=acc, inputs=inputs)


CASES = [
    (8, 4, 8, 4, "nearest", "sequential"),
    (8, 4, 8, 4, "nearest", "final"),
    (6, 3, 8, 2, "even", "final"),
    (6, 3, 10, 5, "down", "sequential"),
    (5, 2, 5, 2, "up", "sequential"),
    (16, 8, 16, 8, "nearest", "sequential"),
    (16, 8, 20, 10, "zero", "final"),
    (30, 10, 32, 12, "zero", "sequential"),
    (32, 16, 32, 16, "nearest", "sequential"),
    (8, -1, 8, -1, "nearest", "sequential"),
]


def _linear_ref(x, w, b, W, Fb, Wa, Fa, mode, acc, inputs=True):
    rows = []
    for i in range(x.shape[0]):
        rows.append([float(ref.intrinsic_dot(x[i].double().tolist(), w[o].double().tolist(),
                                             None if b is None else b[o].item(), W, Fb, mode, Wa, Fa, mode, acc,
                                             inputs)) for o in range(w.shape[0])])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("W,Fb,Wa,Fa,mode,acc", CASES)
@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_linear_matches_scalar_loop(W, Fb, Wa, Fa, mode, acc, scale):
    g = torch.Generator().manual_seed(W * 7 + Fb)
    x = torch.randn(5, 9, generator=g) * scale
    w = torch.randn(4, 9, generator=g) * 2
    b = torch.randn(4, generator=g)
    y = qlab.intrinsic_linear(x, w, b, _spec(W, Fb, Wa, Fa, mode, acc))
    assert y.dtype == torch.float32
    expected = _linear_ref(x, w, b, W, Fb, Wa, Fa, mode, acc)
    assert torch.equal(y.double(), expected.float().double())


def test_saturation_makes_sequential_and_final_differ():
    """+big then -big: the sequential partial sum saturates, the exact final sum does not."""
    x = torch.tensor([[7.0, 7.0, -7.0, -7.0]])
    w = torch.ones(1, 4)
    seq = qlab.intrinsic_linear(x, w, None, _spec(8, 4, 8, 4, "nearest", "sequential"))
    fin = qlab.intrinsic_linear(x, w, None, _spec(8, 4, 8, 4, "nearest", "final"))
    assert fin.item() == 0.0
    assert seq.item() == 7.9375 - 7.0 - 7.0  # 7, then 14 saturates at 7.9375, then -7, -7
    assert seq.item() == float(ref.intrinsic_dot([7.0, 7.0, -7.0, -7.0], [1.0] * 4, None, 8, 4, "nearest", 8, 4,
                                                 "nearest", "sequential"))


def test_linear_inputs_false_and_no_bias():
    x = torch.randn(3, 6)
    w = torch.randn(2, 6)
    y = qlab.intrinsic_linear(x, w, None, _spec(10, 5, 12, 6, "nearest", "sequential", inputs=False))
    assert torch.equal(y.double(), _linear_ref(x, w, None, 10, 5, 12, 6, "nearest", "sequential", inputs=False))


def test_empty_and_batched_shapes():
    spec = "fixed(8,4,nearest)"
    assert qlab.intrinsic_linear(torch.empty(0, 5), torch.randn(3, 5), None, spec).shape == (0, 3)
    assert qlab.intrinsic_linear(torch.randn(2, 4, 5), torch.randn(3, 5), None, spec).shape == (2, 4, 3)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (2, "same", 1, 1)])
@pytest.mark.parametrize("acc", ["sequential", "final"])
def test_conv2d_equals_linear_on_columns(stride, padding, dilation, groups, acc):
    if padding == "same" and stride != 1:
        stride = 1
    spec = _spec(8, 3, 9, 3, "nearest", acc)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 6, generator=g) * 4
    w = torch.randn(6, 4 // groups, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    y = qlab.intrinsic_conv(x, w, b, stride, padding, dilation, groups, spec)
    ref_shape = F.conv2d(x, w, b, stride, padding, dilation, groups).shape
    assert y.shape == ref_shape
    # scalar check of a few outputs: gather the receptive field by hand
    pads = padding if isinstance(padding, int) else 1
    xp = F.pad(x, (pads,) * 4)
    og = 6 // groups
    rng = random.Random(0)
    for _ in range(6):
        n, o = rng.randrange(2), rng.randrange(6)
        i, j = rng.randrange(y.shape[2]), rng.randrange(y.shape[3])
        gi = o // og
        cs = range(gi * (4 // groups), (gi + 1) * (4 // groups))
        xs = [xp[n, c, i * stride + di * dilation, j * stride + dj * dilation].item() for c in cs for di in range(3) for dj in range(3)]
        ws = w[o].flatten().tolist()
        e = ref.intrinsic_dot(xs, ws, b[o].item(), 8, 3, "nearest", 9, 3, "nearest", acc)
        assert y[n, o, i, j].item() == float(e)


def test_conv1d_matches_conv2d():
    spec = "fixed(8,4,nearest)"
    x = torch.randn(2, 3, 10)
    w = torch.randn(5, 3, 3)
    y1 = qlab.intrinsic_conv(x, w, None, 2, 1, 1, 1, spec)
    y2 = qlab.intrinsic_conv(x.unsqueeze(2), w.unsqueeze(2), None, (1, 2), (0, 1), 1, 1, spec)
    assert torch.equal(y1, y2.squeeze(2))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_avg_pool2d(kw):
    Q = FixedPoint(8, 4, "nearest")
    x = torch.randn(1, 2, 7, 7) * 3
    y = qlab.intrinsic_avg_pool2d(x, spec=qlab.Intrinsic(Q, acc=FixedPoint(14, 4)), **kw)  # no saturation
    assert y.shape == F.avg_pool2d(x, **kw).shape
    # the exact quotient of the exact (non-saturating) window sum, rounded once
    xq = Q(x)
    cnt = F.avg_pool2d(torch.ones_like(x), **{**kw, "divisor_override": 1})
    s = F.avg_pool2d(xq.double(), **{**kw, "divisor_override": 1})
    div = torch.round(cnt / F.avg_pool2d(torch.ones_like(x), **kw))
    for v, ss, d in zip(y.flatten().tolist(), s.flatten().tolist(), div.flatten().tolist()):
        assert v == float(ref._q_exact(Fraction(ss) / int(d), 8, 4, "nearest"))


def test_adaptive_avg_pool():
    Q = FixedPoint(10, 5, "even")
    x = torch.randn(2, 3, 5, 7)
    y = qlab.intrinsic_adaptive_avg_pool2d(x, (2, 3), spec=qlab.Intrinsic(Q, acc=FixedPoint(16, 5, "even")))
    xq = Q(x).double()
    for i, (h0, h1) in enumerate([(0, 3), (2, 5)]):
        for j, (w0, w1) in enumerate([(0, 3), (2, 5), (4, 7)]):
            s = xq[:, :, h0:h1, w0:w1].sum((-1, -2))
            n = (h1 - h0) * (w1 - w0)
            for a, b in zip(y[:, :, i, j].flatten().tolist(), s.flatten().tolist()):
                assert a == float(ref._q_exact(Fraction(b) / n, 10, 5, "even"))


def test_batch_norm_formula():
    Q = FixedPoint(12, 6, "nearest")
    C = 4
    g = torch.Generator().manual_seed(2)
    mean, var = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.1
    gamma, beta = torch.randn(C, generator=g), torch.randn(C, generator=g)
    x = torch.randn(2, C, 3, 3, generator=g) * 2
    y = qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, qlab.Intrinsic(Q))
    q = lambda v: ref._q_exact(Fraction(v), 12, 6, "nearest")  # noqa: E731
    for c in range(C):
        v = Fraction(var[c].item()) + Fraction(1e-5)
        # Q(sqrt(v)): find k with the scalar definition by bisection on squares
        k = 0
        t = v * 2 ** 12
        import math
        fl = math.isqrt(t.numerator // t.denominator)
        k = fl + 1 if t >= Fraction(2 * fl + 1, 2) ** 2 else fl
        s = Fraction(k, 2 ** 6)
        inv = q(1 / s)
        gg = q(inv * Fraction(gamma[c].item()))
        r = q(Fraction(beta[c].item()) - q(Fraction(mean[c].item()) * gg))
        for xv, yv in zip(x[:, c].flatten().tolist(), y[:, c].flatten().tolist()):
            assert yv == float(q(q(q(Fraction(xv)) * gg) + r))


def test_batch_norm_constants_follow_the_statistics():
    """The constants are remembered by value: statistics changed in place (training, a
    loaded checkpoint) give new constants; equal statistics and format give equal ones."""
    from qlab.core import intrinsic as I

    Q = FixedPoint(10, 5, "nearest")
    g = torch.Generator().manual_seed(3)
    mean, var = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.1
    gamma, beta = torch.randn(3, generator=g), torch.randn(3, generator=g)
    x = torch.randn(2, 3, 4, 4, generator=g) * 2
    spec = qlab.Intrinsic(Q)
    y1 = qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, spec)
    assert torch.equal(qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, spec), y1)
    I._BN_CONSTANTS.clear()
    assert torch.equal(qlab.intrinsic_batch_norm(x, mean.clone(), var.clone(), gamma, beta, 1e-5, spec), y1)
    var.mul_(4)  # in place: the next call must see it
    y2 = qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, spec)
    I._BN_CONSTANTS.clear()
    assert torch.equal(qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, spec), y2)
    assert not torch.equal(y1, y2)
    gamma.neg_()
    y3 = qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, spec)
    assert not torch.equal(y3, y2)
    assert torch.equal(qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, qlab.Intrinsic(FixedPoint(10, 5, "even"))),
                       qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, qlab.Intrinsic(FixedPoint(10, 5, "even"))))
    assert I._BN_CONSTANTS  # deterministic formats are remembered ...
    n = len(I._BN_CONSTANTS)
    qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, qlab.Intrinsic(FixedPoint(10, 5, "stochastic")))
    assert len(I._BN_CONSTANTS) == n  # ... stochastic ones are drawn anew each call


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_elementwise(op):
    Q = FixedPoint(6, 2, "nearest")
    a, b = torch.randn(50) * 5, torch.randn(50) * 5
    y = qlab.intrinsic_elementwise(op, a, b, qlab.Intrinsic(Q))
    f = {"add": lambda u, v: u + v, "sub": lambda u, v: u - v, "mul": lambda u, v: u * v}[op]
    for yy, u, v in zip(y.tolist(), a.tolist(), b.tolist()):
        e = ref._q_exact(f(ref.fixed(u, 6, 2, "nearest"), ref.fixed(v, 6, 2, "nearest")), 6, 2, "nearest")
        assert yy == float(e)


def test_float_format_linear_matches_scalar():
    spec = qlab.Intrinsic(qlab.parse("fp8e4m3"), acc=qlab.parse("fp16"))
    x, w = torch.randn(3, 5), torch.randn(2, 5)
    y = qlab.intrinsic_linear(x, w, None, spec)
    for i in range(3):
        for o in range(2):
            xs = [ref.float_fmt(v, 4, 3, fn=True) for v in x[i].double().tolist()]
            ws = [ref.float_fmt(v, 4, 3, fn=True) for v in w[o].double().tolist()]
            s = Fraction(0)
            for xv, wv in zip(xs, ws):
                p = Fraction(ref.float_fmt(float(Fraction(xv) * Fraction(wv)), 4, 3, fn=True))
                s = Fraction(ref.float_fmt(float(s + p), 5, 10))  # s + p exact in float64 here
            assert y[i, o].item() == float(ref.float_fmt(float(s), 4, 3, fn=True))


@pytest.mark.parametrize("mode", ["even", "nearest", "up", "down", "zero"])
@pytest.mark.parametrize("acc", ["sequential", "final"])
def test_float_format_exact_sums_in_rationals(mode, acc):
    """Float formats: every + exact before its rounding (tiny addends beside big ones decide the
    directed modes), products exact, bias; against Python rationals."""
    Qf, Af = (5, 2), (5, 10)  # e5m2 products, fp16 accumulator
    spec = qlab.Intrinsic(qlab.Float(*Qf, mode), acc=qlab.Float(*Af, mode), accumulate=acc)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 7, generator=g) * 2.0 ** torch.randint(-14, 12, (6, 7), generator=g)
    x[0, :3] = torch.tensor([1024.0, 2.0 ** -14, -(2.0 ** -15)])
    w, b = torch.randn(3, 7, generator=g), torch.randn(3, generator=g) * 4
    y = qlab.intrinsic_linear(x, w, b, spec)

    def q(v):
        return Fraction(ref.float_fmt(v, *Qf, mode))

    def a(v):
        return Fraction(ref.float_fmt(v, *Af, mode))

    for i in range(6):
        for o in range(3):
            ps = [q(q(float(xv)) * q(float(wv))) for xv, wv in zip(x[i].tolist(), w[o].tolist())]
            if acc == "sequential":
                s = Fraction(0)
                for p_ in ps:
                    s = a(s + p_)
            else:
                s = a(sum(ps))
            s = a(s + q(b[o].item()))
            assert y[i, o].item() == float(q(s)), (i, o)


def test_float_format_non_finite_sums():
    """An infinite or NaN product decides the sum as float addition does, in both modes."""
    w = torch.ones(1, 3)
    for acc in ["sequential", "final"]:
        spec = qlab.Intrinsic(qlab.Float(5, 10, inf=True), accumulate=acc)
        for row, want in [([math.inf, 1.0, 2.0], math.inf), ([math.inf, -math.inf, 0.0], math.nan),
                          ([math.nan, 1.0, 1.0], math.nan), ([-math.inf, 3.0, 0.0], -math.inf)]:
            y = qlab.intrinsic_linear(torch.tensor([row]), w, None, spec).item()
            assert (math.isnan(y) and math.isnan(want)) or y == want, (acc, row, y)


def test_backward_is_float_gradient():
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(3, 6, requires_grad=True)
    qlab.intrinsic_linear(x, w, None, "fixed(8,4,nearest)").sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gw, w.grad)


def test_bad_intrinsic_specs():
    with pytest.raises(ValueError, match="sideways"):
        qlab.Intrinsic(FixedPoint(8, 4), accumulate="sideways")
    with pytest.raises(ValueError, match="binary"):
        qlab.Intrinsic(qlab.Binary())


@pytest.mark.parametrize("spec", ["fixed(8,4)", "intrinsic(fixed(8,4),accumulate=final)", "fp16",
                                  "intrinsic(fp8e4m3,acc=fp16,accumulate=final)"])
def test_empty_operands(spec):
    """K = 0: the sum is 0, so y = Q(A(0 + Q(b))); zero rows or batches give empty results."""
    b = torch.tensor([1.0, -2.5, 0.3, 100.0])
    y = qlab.intrinsic_linear(torch.randn(3, 0), torch.randn(4, 0), b, spec)
    q = as_intrinsic(spec).q
    assert torch.equal(y, q.quantize(b).expand(3, 4)), y
    assert qlab.intrinsic_linear(torch.randn(0, 5), torch.randn(4, 5), None, spec).shape == (0, 4)
    assert torch.equal(intrinsic_matmul(torch.randn(2, 3, 0), torch.randn(0, 4), spec), torch.zeros(2, 3, 4))
    assert intrinsic_conv(torch.randn(0, 2, 5, 5), torch.randn(3, 2, 3, 3), None, padding=1,
                               spec=spec).shape == (0, 3, 5, 5)


@pytest.mark.parametrize("backend", ["torch", "default"])
@pytest.mark.parametrize("spec", ["fixed(12,3,stochastic)", "float(5,2,stochastic)"])
def test_stochastic_conv_rounds_each_input_element_once(monkeypatch, backend, spec):
    """x^ = Q(x) (SEMANTICS 4): an input element read by several windows has one rounded
    value.  Kernel [1, 0] reads a window's first element, [0, 1] its second, so channel 0
    at window i + 1 and channel 1 at window i both equal x^[i + 1], draw for draw; the
    draws differ between elements and between calls."""
    if backend == "torch":
        monkeypatch.setenv("QLAB_BACKEND", "torch")
    else:
        monkeypatch.delenv("QLAB_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, 1, 6, generator=gen) * 4 + 0.05
    w = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    torch.manual_seed(1)
    y = intrinsic_conv(x, w, spec=spec)  # [400, 2, 1, 5]
    assert torch.equal(y[:, 0, 0, 1:], y[:, 1, 0, :-1])
    lo, hi = qlab.parse(spec.replace("stochastic", "down"))(x), qlab.parse(spec.replace("stochastic", "up"))(x)
    assert bool(((y[:, 1, 0] == lo[:, 0, 0, 1:]) | (y[:, 1, 0] == hi[:, 0, 0, 1:])).all())
    assert bool((y[:, 1, 0] != lo[:, 0, 0, 1:]).any()) and bool((y[:, 1, 0] != hi[:, 0, 0, 1:]).any())
