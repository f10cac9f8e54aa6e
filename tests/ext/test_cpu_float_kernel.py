"""The compiled CPU kernel for intrinsic float(E, M) linear layers (qlab/ext/cpu/float_matmul.c)
equals the float64 reference (qlab.core.intrinsic.float_matmul) bit for bit: vector tiles and
ragged tails, sequential and final (float64 and int64 exact sums), float32, checked and
float64 products, every deterministic mode, NaN/inf/signed zeros, float16/bfloat16 tensors,
more than one thread; sums that only rounding to odd gets right; it declines the rest."""
import math

import pytest
import torch

import qlab
from qlab.core import backends
from qlab.core.intrinsic import as_intrinsic, intrinsic_conv, intrinsic_linear
from qlab.ext import backends as xb
from qlab.ext import cpu
from qlab.ext.float_intrinsic import plan
from tests.ext.test_cpu_kernel import _GEOMETRIES
from tests.ext.test_cpu_kernel import _both_pointwise as both_pointwise
from tests.ext.test_cpu_kernel import stochastic_quantizer_checks

MODES = ("even", "nearest", "down", "up", "zero")
FP16, BF16, E4M3, E5M2 = (5, 10, False, False), (8, 7, False, False), (4, 3, True, False), (5, 2, False, False)


@pytest.fixture(autouse=True)
def kernel(monkeypatch):
    monkeypatch.delenv("QLAB_BACKEND", raising=False)
    if cpu.load_float() is None:
        pytest.skip("no C compiler: the CPU kernel cannot be built here")
    xb.register_cpu()


def fspec(q, a, mode, acc="sequential", amode=None, inputs=True):
    return qlab.Intrinsic(qlab.Float(q[0], q[1], mode, fn=q[2], inf=q[3]),
                          acc=qlab.Float(a[0], a[1], amode or mode, fn=a[2], inf=a[3]), accumulate=acc, inputs=inputs)


def same(a, b):
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.isnan(), b.isnan()):
        return False
    m = ~a.isnan()
    return torch.equal(a[m], b[m]) and torch.equal(torch.signbit(a[m]), torch.signbit(b[m]))


def both(monkeypatch, fn, *args, **kw):
    """(reference, kernel) results and how many times the kernel ran."""
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    ref = fn(*args, **kw)
    monkeypatch.delenv("QLAB_BACKEND")
    before = cpu.float_calls
    got = fn(*args, **kw)
    return ref, got, cpu.float_calls - before


def quantizer_matches_reference(monkeypatch, q, x):
    """q's quantizer on x runs the CPU kernel once and gives the reference's values."""
    before = cpu.round_calls
    got = q.quantize(x)
    assert cpu.round_calls == before + 1, q
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    ref = q.quantize(x)
    monkeypatch.delenv("QLAB_BACKEND")
    assert same(ref, got), str(q)


CASES = [  # Q, A, input scale: float32 products, checked products (bf16), saturation, overflow to inf
    (FP16, FP16, 8.0), (E4M3, E4M3, 6.0), (E5M2, FP16, 3.0), (E4M3, (5, 7, False, False), 20.0),
    (BF16, BF16, 1e3), ((3, 1, False, True), (3, 2, False, True), 2.0), ((6, 5, False, False), (8, 12, False, False), 1e4),
    ((2, 1, False, False), (4, 2, False, False), 0.7), (BF16, FP16, 1e-20),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_linear_matches_reference(monkeypatch, case):
    qf, af, sc = CASES[case]
    g = torch.Generator().manual_seed(case)
    differ = 0
    for j, mode in enumerate(MODES):
        M, K, N = 3 + j, 1 + 7 * j, [40, 64, 7, 33, 96][j]  # full 32-column tiles and ragged tails
        x = torch.randn(M, K, generator=g) * sc
        w = torch.randn(N, K, generator=g) * sc / 2
        b = torch.randn(N, generator=g) * sc if j % 2 else None
        if j == 2:  # NaN, infinities, signed zeros, tiny values
            x.view(-1)[:5] = torch.tensor([math.nan, math.inf, -0.0, 1e-30, -math.inf])[: x.numel()]
        outs = {}
        for acc in ("sequential", "final"):
            spec = fspec(qf, af, mode, acc)
            if acc == "final" and qf[0] >= 6:  # no exact int64 sum: declined, the reference runs
                assert not cpu.float_matmul_accepts(x, w.t(), b, as_intrinsic(spec))
                continue
            ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec=spec)
            assert ran == 1, spec
            assert same(ref, got), (str(spec), M, K, N)
            outs[acc] = ref
        if len(outs) == 2:
            differ += not same(outs["sequential"], outs["final"])
    if qf[0] < 6 and sc > 1:
        assert differ >= 1  # saturation: the accumulation order shows


def test_crafted_sums_and_products_need_rounding_to_odd(monkeypatch):
    """1024 + 2**-20 rounded up is 1025 (a float32 sum rounded to nearest says 1024); with
    inputs=False, 11184811 * 2**-23 * 3 = 4 + 2**-23 rounded up on e4m3 is 4.5."""
    for xv, wv, qf, af, inputs, up in [([[1024.0, 2.0 ** -20]], [[1.0, 1.0]], FP16, FP16, True, 1025.0),
                                       ([[11184811 * 2.0 ** -23]], [[3.0]], E4M3, FP16, False, 4.5)]:
        for sign in (1, -1):
            x = (torch.tensor(xv) * sign).repeat(2, 20)  # 40 columns: one full tile and a tail
            w = torch.tensor(wv).repeat(40, 20)
            x = x[:, : len(xv[0])].contiguous()
            w = w[:, : len(wv[0])].contiguous()
            for mode in ("up", "down", "zero"):
                for acc in ("sequential", "final"):
                    spec = fspec(qf, af, mode, acc, inputs=inputs)
                    ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, None, spec=spec)
                    assert ran == 1 and same(ref, got), (str(spec), sign)
                    if mode == "up" and sign == 1:
                        assert bool((got == up).all()), (str(spec), got)


def test_bf16_products_that_underflow_or_overflow_float32(monkeypatch):
    """bf16 operands: float32 products are exact except where they leave float32's normal
    range; those lanes are redone in float64 (the checked path)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, generator=g) * 2.0 ** torch.randint(-130, 127, (4, 9), generator=g).float()
    w = torch.randn(64, 9, generator=g) * 2.0 ** torch.randint(-130, 127, (64, 9), generator=g).float()
    for mode in MODES:
        for a in (BF16, (8, 12, False, False)):
            spec = fspec(BF16, a, mode)
            ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, None, spec=spec)
            assert ran == 1 and same(ref, got), str(spec)
    p = x[:, None, :].double() * w[None, :, :].double()
    assert bool(((p.abs() < 2.0 ** -126) & (p != 0)).any()) and bool((p.abs() >= 2.0 ** 128).any())


def test_long_final_sums_inputs_false_dtypes_threads_and_conv(monkeypatch):
    g = torch.Generator().manual_seed(6)
    # K = 9000 fp16 products: beyond the exact float64 sum, the int64 sum runs
    x, w = torch.randn(2, 9000, generator=g) * 30, torch.randn(32, 9000, generator=g) * 30
    assert cpu._dsum_exact(plan(as_intrinsic(fspec(FP16, FP16, "up", "final")), 9000), 9000) is False
    for mode in ("up", "even"):
        ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, None, spec=fspec(FP16, FP16, mode, "final"))
        assert ran == 1 and same(ref, got)
    for mode in MODES:  # inputs=False: float64 products
        spec = fspec(E5M2, FP16, mode, ["sequential", "final"][MODES.index(mode) % 2], inputs=False)
        x, w, b = torch.randn(7, 6, generator=g) * 5, torch.randn(35, 6, generator=g), torch.randn(35, generator=g)
        ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec=spec)
        assert ran == 1 and same(ref, got), str(spec)
    for dt in (torch.float16, torch.bfloat16):
        spec = fspec(E4M3, FP16, "even", "sequential", amode="zero")
        x, w = (torch.randn(5, 9, generator=g) * 4).to(dt), torch.randn(40, 9, generator=g).to(dt)
        ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, None, spec=spec)
        assert ran == 1 and same(ref, got) and got.dtype == dt
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # big enough for the parallel loop
        x, w = torch.randn(64, 48, generator=g) * 3, torch.randn(70, 48, generator=g)
        ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, None, spec=fspec(FP16, FP16, "even"))
        assert ran == 1 and same(ref, got)
    finally:
        torch.set_num_threads(threads)
    # few outputs, many rows: the kernel swaps the operands (bias per row then)
    for qf, mode, acc in [(FP16, "up", "sequential"), (BF16, "even", "sequential"), (E4M3, "down", "final"),
                          (E5M2, "nearest", "final")]:
        x, w, b = torch.randn(70, 11, generator=g) * 9, torch.randn(5, 11, generator=g), torch.randn(5, generator=g)
        ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec=fspec(qf, FP16, mode, acc))
        assert ran == 1 and same(ref, got), (qf, mode, acc)
    # convolution (the conv kernel; test_float_conv_kernel_equals_reference has more)
    xc, wc = torch.randn(2, 4, 6, 5, generator=g) * 3, torch.randn(6, 2, 3, 2, generator=g)
    spec = fspec(FP16, FP16, "nearest")
    ref, got, ran = both(monkeypatch, intrinsic_conv, xc, wc, None, stride=1, padding=1, groups=2, spec=spec)
    assert ran >= 1 and same(ref, got)


def test_elementwise_float_quantizer_matches_reference(monkeypatch):
    """The "float" quantizer on float32 CPU tensors: every exponent, subnormals, inf, NaN,
    signed zeros and exact ties on each format's grid, every deterministic mode."""
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(-2 ** 31, 2 ** 31, (3001,), generator=g, dtype=torch.int64).to(torch.int32)
    specials = torch.tensor([0., -0., math.nan, math.inf, -math.inf, 1e-45, -1e-45, 3.4028235e38, 448., 464.,
                             57344., 61440., 65504., 65520., 1e-8, -1e-8])
    for E, M, fn, inf in [(5, 10, False, False), (8, 7, False, False), (4, 3, True, False), (5, 2, False, False),
                          (2, 0, False, False), (3, 1, False, True), (8, 23, False, False), (6, 5, False, False),
                          (7, 4, True, False), (8, 20, False, True)]:
        tie = max(0, 22 - M)
        ties = ((bits & ~((1 << (tie + 1)) - 1)) | (1 << tie)).view(torch.float32)
        x = torch.cat([bits.view(torch.float32), specials, ties])
        for mode in MODES:
            quantizer_matches_reference(monkeypatch, qlab.Float(E, M, mode, fn=fn, inf=inf), x)
    assert backends.lookup("float", x.double(), qlab.Float(8, 23)) is None  # float64 with M > 21: the reference
    assert backends.lookup("float", x.half(), qlab.Float(5, 2)) is None  # float16 tensors: the reference
    assert backends.lookup("float", x.double(), qlab.Float(5, 2, "stochastic")) is None  # float64: the reference
    assert backends.lookup("float", x, qlab.Float(8, 3, fn=True)) is None


def test_stochastic_float_quantizer():
    """The float quantizer's stochastic rounding of float32 tensors (draws from the hash):
    torch.manual_seed or a generator repeats it, another seed changes it; every value is
    its round-down or round-up, up with the probability of its position between them
    (5 sigma over 4096 copies, several binades, subnormals, both signs); an element's draw
    depends on its index only, so the 8-lane loop and the scalar tail agree; neighbouring
    draws are independent."""
    for q in (qlab.Float(5, 2, "stochastic"), qlab.Float(4, 3, "stochastic", fn=True), qlab.Float(8, 7, "stochastic")):
        lo_q, hi_q = qlab.Float(q.E, q.M, "down", fn=q.fn), qlab.Float(q.E, q.M, "up", fn=q.fn)
        vals = torch.tensor([0.3, -0.3, 1.1, -5.77, 7.9, 0.0, 2.0 ** -15 * 1.3, -2.0 ** -16 * 1.7, 100.0, 1e30, 3.0])
        N = 4096
        x = vals.repeat_interleave(N)
        stochastic_quantizer_checks(q, x, N, lo_q, hi_q, (q.max_value, q.max_value), lambda: cpu.round_calls)
        for n in (8 * 37 + 3, 8 * 37 + 7):  # the last elements through the scalar tail, then through the loop
            torch.manual_seed(2)
            short = q(x[:n])
            torch.manual_seed(2)
            assert torch.equal(short, q(x[:n + 8])[:n]), (str(q), n)
    up = qlab.Float(5, 2, "stochastic")(torch.full((2 ** 20,), 1.125)) > 1.125  # halfway between 1 and 1.25
    assert abs(up.double().mean().item() - 0.5) <= 5 * math.sqrt(0.25 / 2 ** 20)
    for lag in (1, 2, 7, 8, 9):
        agree = (up[lag:] == up[:-lag]).double().mean().item()
        assert abs(agree - 0.5) <= 5 * math.sqrt(0.25 / (2 ** 20 - lag)), lag


F32, F32I = (8, 23, False, False), (8, 23, False, True)


def test_plan_binary32_accumulator():
    """A = float(8, 23, even), with or without inf, is binary32 itself (FloatPlan.a32); other
    roundings of it stay outside M <= 21."""
    from qlab.ext.float_intrinsic import plan

    for inf in (False, True):
        fp = plan(fspec(FP16, (8, 23, False, inf), "even"), 64)
        assert fp is not None and fp.a32 and fp.a[1] == 23 and fp.a[2] == torch.finfo(torch.float32).max
    assert plan(fspec(FP16, (8, 23, False, False), "nearest"), 64) is None
    assert plan(fspec(FP16, (8, 22, False, False), "even"), 64) is None
    assert not plan(fspec(FP16, FP16, "even"), 64).a32
    fp = plan(fspec(F32, F32, "even"), 64)
    assert fp.q32 and fp.a32 and not fp.p32 and plan(fspec(F32, F32, "even", "final"), 64) is None


def test_declines_and_lookup(monkeypatch):
    a, w = torch.zeros(3, 5), torch.zeros(5, 2)
    assert backends.lookup("float_matmul", a, w, None, as_intrinsic("fp16"), None, True) is not None
    for spec, t in [(as_intrinsic("intrinsic(fp16,accumulate=sequential)"), a.double()),  # float64 tensors
                    (as_intrinsic("float(8,22)"), a),  # M > 21
                    (as_intrinsic("intrinsic(float(8,23),accumulate=final)"), a),  # binary32 products: beyond int64
                    (fspec((8, 23, False, False), FP16, "nearest"), a),  # binary32 Q with ties away: M > 21
                    (fspec(BF16, (8, 7, False, True), "even"), a),  # A with E = 8 overflowing to inf
                    (as_intrinsic("fixed(8,4)"), a)]:
        assert backends.lookup("float_matmul", t, w.to(t.dtype), None, spec, None, True) is None, spec
    # stochastic: taken, except where a row's 32-bit draw counters would repeat
    sto = fspec(FP16, FP16, "stochastic")
    assert backends.lookup("float_matmul", a, w, None, sto, None, True) is not None
    huge = torch.zeros(1, 8).expand(2 ** 26, 8)
    assert backends.lookup("float_matmul", huge, torch.zeros(8, 2), None, sto, None, True) is None
    assert backends.lookup("float_matmul", huge, torch.zeros(8, 2), None, as_intrinsic("fp16"), None, True) is not None
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    assert backends.lookup("float_matmul", a, w, None, as_intrinsic("fp16"), None, True) is None


@pytest.mark.parametrize("acc", ["sequential", "final"])
def test_stochastic_seeded_bounded_unbiased(acc):
    """Stochastic products, sums and outputs: repeatable under torch.manual_seed and a given
    generator, between the all-down and all-up results, and unbiased: operands on e4m3's
    grid, a wide accumulator, so each of the K products (and the output) rounds by at most
    one step; the mean of R identical rows lies within 5 sigma of the exact dot product."""
    g = torch.Generator().manual_seed(8)
    K, R = 8, 512
    xr = (torch.randint(-12, 13, (1, K), generator=g) / 8.0)
    w = torch.randint(-12, 13, (40, K), generator=g) / 8.0  # 40 outputs: a tile and a tail
    x = xr.repeat(R, 1)
    wide = (8, 20, False, False)

    def run(mode, **kw):
        return intrinsic_linear(x, w, None, spec=fspec(E4M3, wide, mode, acc), **kw)

    before = cpu.float_calls
    torch.manual_seed(1); y1 = run("stochastic")
    torch.manual_seed(1); y2 = run("stochastic")
    torch.manual_seed(2); y3 = run("stochastic")
    assert cpu.float_calls == before + 3
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    gen = torch.Generator().manual_seed(5)
    z1 = run("stochastic", generator=gen)
    gen.manual_seed(5)
    assert torch.equal(z1, run("stochastic", generator=gen))
    lo, hi = run("down"), run("up")
    assert bool(((y1 >= lo) & (y1 <= hi)).all()) and bool((lo < hi).any())
    exact = (xr.double() @ w.double().t())[0]
    # products: <= 1 step of their binade each (<= 2**-3 relative); output: one step of its binade
    p = (xr.double() * w.double()).abs()
    step_p = 2.0 ** (torch.floor(torch.log2(p.clamp_min(1e-30))) - 3)
    step_y = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 2)
    var = (step_p ** 2).sum(1) / 4 + step_y ** 2 / 4  # per output, bounds
    sigma = (var / R).sqrt()
    err = (y1.double().mean(0) - exact).abs()
    assert bool((err <= 5 * sigma + 1e-12).all()), (err / sigma).max()


A32_CASES = [  # Q, A = binary32 (nearest even), input scale, accumulations: fp16/bf16/fp8 products summed in
    # float32; sums past float32's range (Q = float(8,10): 1e19 squared), subnormal sums (1e-20)
    (FP16, F32, 8.0, ("sequential", "final")), (BF16, F32, 1e3, ("sequential",)), (E4M3, F32, 6.0, ("sequential", "final")),
    (E5M2, F32I, 3.0, ("sequential", "final")), ((8, 10, False, False), F32, 1e19, ("sequential",)),
    ((8, 10, False, False), F32I, 1e19, ("sequential",)), ((8, 10, False, False), F32, 1e-20, ("sequential",)),
]


@pytest.mark.parametrize("case", range(len(A32_CASES)))
def test_float32_accumulator_matches_reference(monkeypatch, case):
    """A = float(8, 23, even) (FloatPlan.a32): each sum one float32 addition, clamped where A
    saturates; final sums converted nearest even -- vector tiles (32 columns) and tails, the
    float64 and int64 exact final sums, float32/checked/float64 products, inputs=False,
    stochastic products, NaN/inf."""
    qf, af, sc, accs = A32_CASES[case]
    g = torch.Generator().manual_seed(100 + case)
    for j, N in enumerate([64, 7, 33]):
        x = torch.randn(5, 13 + 40 * j, generator=g) * sc
        w = torch.randn(N, x.shape[1], generator=g) * sc
        b = torch.randn(N, generator=g) * sc if j != 1 else None
        x[0, :5] = torch.tensor([math.nan, math.inf, -0.0, 1e-30, -math.inf])
        x[1, :2], x[2, :1] = math.inf, -math.inf  # inf - inf: NaN
        for acc in accs:
            for qmode, inputs in [("even", True), ("even", False), ("down", True)]:
                spec = fspec(qf, af, qmode, acc, amode="even", inputs=inputs)
                ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec=spec)
                assert ran == 1, spec
                assert same(ref, got), (str(spec), N)
        spec = fspec(qf, af, "stochastic", accs[0], amode="even")
        torch.manual_seed(3)
        y1, before = intrinsic_linear(x, w, b, spec=spec), cpu.float_calls
        torch.manual_seed(3)
        assert same(y1, intrinsic_linear(x, w, b, spec=spec)) and cpu.float_calls == before + 1


def test_float32_accumulator_ties(monkeypatch):
    """Ties at float32's last bit, seen through the output's rounding to fp16: products 1,
    2**-11, 2**-24; sequential sums round each + 2**-24 to even (down), a final sum keeps
    1 + 2**-11 + 2**-23 exactly (above fp16's midpoint); vector tile and scalar tail."""
    t, h = 2.0 ** -12, 2.0 ** -11
    x = torch.tensor([[1.0, h, t, 0.0], [1.0, t, h, t], [-1.0, -h, -t, 0.0]])
    w = torch.tensor([[1.0, 1.0, t, 0.0], [1.0, t, 1.0, t]])
    for n in (2, 32):
        wn = w.repeat(n // 2, 1)
        for acc, want in [("sequential", [1.0, 1.0, -1.0]), ("final", [1.0, 1.0 + 2 * h, -1.0])]:
            ref, got, ran = both(monkeypatch, intrinsic_linear, x, wn, None, spec=fspec(FP16, F32, "even", acc))
            assert [ref[0, 0].item(), ref[1, 1].item(), ref[2, 0].item()] == want, (acc, ref)
            assert ran == 1 and same(ref, got), (acc, n, got)


@pytest.mark.parametrize("qf,af,amode", [(F32, F32, "even"), (F32I, F32I, "even"), (F32, FP16, "even"),
                                         (F32, (6, 12, False, False), "zero"), (F32, (6, 12, False, False), "stochastic")])
def test_float32_products_match_reference(monkeypatch, qf, af, amode):
    """Q = float(8, 23, even) (FloatPlan.q32): each product the exact float64 product rounded to
    float32 (nearest even), clamped where Q saturates; with A = Q a float32 dot product in k
    order.  Overflowing and underflowing products, NaN/inf, inputs=False, a bias, vector-wide
    and narrow outputs, and products tied at float32's last bit."""
    g = torch.Generator().manual_seed(7)
    for sc, N in [(1.0, 40), (1e20, 7), (1e-23, 33)]:
        x, w = torch.randn(6, 29, generator=g) * sc, torch.randn(N, 29, generator=g) * sc
        b = torch.randn(N, generator=g) * sc
        x[0, :4] = torch.tensor([math.nan, math.inf, -0.0, -math.inf])
        for inputs in (True, False):
            spec = fspec(qf, af, "even", amode=amode, inputs=inputs)
            ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec=spec)
            assert ran == 1, spec
            if amode == "stochastic":  # the reference's distribution, not its draws: between down and up
                lo, hi = (intrinsic_linear(x, w, b, spec=fspec(qf, af, "even", amode=m, inputs=inputs))
                          for m in ("down", "up"))
                fin = ~got.isnan()
                assert torch.equal(fin, ~lo.isnan()) and bool(((lo <= got) & (got <= hi))[fin].all()), spec
            else:
                assert same(ref, got), (str(spec), sc, N)
    u = 2.0 ** -12  # (1 + u)**2 = 1 + 2**-11 + 2**-24: a tie at float32's last bit (even: down)
    x, w = torch.tensor([[1 + u, 0.0], [1 + u, -(1 + u)]]), torch.tensor([[1 + u, 0.0], [0.0, 1 + 3 * u]])
    ref, got, _ = both(monkeypatch, intrinsic_linear, x, w, None, spec=fspec(F32, F32, "even"))
    assert ref[0, 0].item() == 1 + 2 * u and same(ref, got), ref


def test_float32_sum_then_rounding_only_where_it_is_exact(monkeypatch):
    """FloatPlan.sum32 (A(s + p) as A of the float32 sum, no two-sum) needs A nearest even and
    Q no more precise than A: with Q = fp16 and A = e5m2 the float32 sum rounded to e5m2 is
    wrong for some pairs, so the kernel must keep the two-sum there.  Rows [s, p] . [1, 1]
    give y = A(s + p) for s in A (exact in Q) and p in Q; 3 million random pairs, against
    the reference, and the plans' flags."""
    from qlab.core.formats import Float

    e5m2, fp16 = (5, 2, False, False), FP16
    assert not plan(fspec(fp16, e5m2, "even"), 2).sum32 and plan(fspec(E4M3, fp16, "even"), 2).sum32
    assert not plan(fspec(E4M3, fp16, "even", amode="nearest"), 2).sum32
    g = torch.Generator().manual_seed(9)
    bits = torch.randint(0, 0x7C00, (3_000_000,), generator=g, dtype=torch.int32)
    sign = torch.randint(0, 2, (3_000_000,), generator=g, dtype=torch.int32) << 15
    p = (bits | sign).to(torch.int16).view(torch.float16).float()  # finite fp16 values
    s = Float(5, 2, "even").quantize(torch.randn(3_000_000, generator=g) * 2.0 ** torch.randint(-14, 16, (3_000_000,), generator=g))
    x = torch.stack([s, p], 1)
    # one output (the kernel vectorises over the rows), and 33 (a vector tile and a scalar tail)
    for rows, n in [(3_000_000, 1), (400_000, 33)]:
        ref, got, ran = both(monkeypatch, intrinsic_linear, x[:rows], torch.ones(n, 2), None, spec=fspec(fp16, e5m2, "even"))
        assert ran == 1 and same(ref, got), n
        wrong = Float(5, 2, "even").quantize(s[:rows] + p[:rows]) != ref[:, -1]  # what sum32 would give
        assert int(wrong.sum()) > 0  # such pairs are in the sample: the test can tell


@pytest.mark.parametrize("E,M", [(5, 10), (8, 7)])
def test_short_fp16_bf16_roundings_equal_the_general_one(monkeypatch, E, M):
    """fp16 (the CPU's half conversion) and bf16 (a rounding at bit 16) with nearest even
    take a short rounding (``FLOAT_HW``) in the quantizer and the matmul's vector tiles: the
    same bits as the general rounding for every float32 high half (2**16 of them) with low
    halves at and around each format's rounding points, for saturating formats and for
    inf=True (the whole float32 range was compared once, 2026-11-30: no difference)."""
    highs = torch.arange(0, 1 << 16, dtype=torch.int64) << 16
    lows = torch.tensor([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2001, 0x3FFF, 0x6000, 0x7FFF, 0x8000,
                         0x8001, 0xBFFF, 0xC000, 0xE000, 0xFFFF], dtype=torch.int64)
    b = (highs[:, None] | lows[None, :]).reshape(-1)
    x = (b - (1 << 32) * (b >= (1 << 31))).to(torch.int32).view(torch.float32)
    for inf in (False, True):
        q = qlab.Float(E, M, "even", inf=inf)
        monkeypatch.setattr(cpu, "FLOAT_HW", True)
        short = cpu.float_quantize(x, q)
        monkeypatch.setattr(cpu, "FLOAT_HW", False)
        general = cpu.float_quantize(x, q)
        assert torch.equal(short.view(torch.int32), general.view(torch.int32)), q
        monkeypatch.setenv("QLAB_BACKEND", "torch")
        ref = q.quantize(x[::7])
        monkeypatch.delenv("QLAB_BACKEND")
        assert same(ref, short[::7]), q
    # formats that share fp16's or bf16's M but not their range take the general rounding:
    # fp16's layout without inf (FN: max 131008), other exponent widths
    monkeypatch.setattr(cpu, "FLOAT_HW", True)
    for q in [qlab.Float(5, 10, "even", fn=True), qlab.Float(4, 10, "even"), qlab.Float(6, M, "even"),
              qlab.Float(E - 1, M, "even")]:
        monkeypatch.setenv("QLAB_BACKEND", "torch")
        ref = q.quantize(x[::3])
        monkeypatch.delenv("QLAB_BACKEND")
        assert same(ref, cpu.float_quantize(x[::3], q)), q
    # the matmul: vector tiles with the short rounding for Q and A, against the general one
    g = torch.Generator().manual_seed(E)
    xm, wm, bm = torch.randn(9, 70, generator=g) * 30, torch.randn(64, 70, generator=g) * 30, torch.randn(64, generator=g)
    xm[0, :5] = torch.tensor([math.inf, -math.inf, math.nan, 1e-30, -0.0])
    spec = f"float({E},{M},even)"
    outs = []
    for hw in (True, False):
        monkeypatch.setattr(cpu, "FLOAT_HW", hw)
        outs.append(intrinsic_linear(xm, wm, bm, spec))
    assert same(outs[0], outs[1])


def test_ragged_outputs_vectorise_over_rows(monkeypatch):
    """48 outputs (a ragged column block) and many rows: the kernel vectorises over x's
    rows instead (cpu._swap); the reference's values for each mode, both accumulations."""
    g = torch.Generator().manual_seed(12)
    x, w, b = torch.randn(130, 20, generator=g) * 4, torch.randn(48, 20, generator=g), torch.randn(48, generator=g)
    assert cpu._swap(130, 48) and not cpu._swap(48, 130)
    for q in (FP16, BF16, E4M3):
        for mode in MODES:
            for acc in ("sequential", "final"):
                spec = fspec(q, q, mode, acc)
                ref, got, ran = both(monkeypatch, intrinsic_linear, x, w, b, spec)
                assert ran == (plan(spec, 20) is not None) and same(ref, got), str(spec)  # bf16 final: declined


def test_float64_quantizer_matches_reference(monkeypatch):
    """float64 values (the float formats' batch norm and elementwise steps work in float64):
    rounded to odd in float32, then rounded to the format -- the reference's bits for
    random float64 patterns across float32's range and past it, values one float64 step
    either side of each format's ties, float64 subnormals, NaN, inf, signed zeros; every
    deterministic mode; formats with M <= 21 (others: the reference)."""
    g = torch.Generator().manual_seed(8)
    e = torch.randint(-160, 140, (4000,), generator=g).double()
    m = torch.rand(4000, generator=g, dtype=torch.float64) + 1.0
    x = m * torch.pow(2.0, e) * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0).double()
    specials = torch.tensor([0., -0., math.nan, math.inf, -math.inf, 5e-324, -5e-324, 1e-310, 3.4028235e38,
                             3.4028236e38, 1e39, -1e300, 448., 464., 65504., 65520., 65519.99999], dtype=torch.float64)
    for E, M, fn, inf in [(5, 10, False, False), (8, 7, False, True), (4, 3, True, False), (5, 2, False, False),
                          (8, 21, False, False), (3, 1, False, True), (6, 12, True, False)]:
        tie_bits = x.float().view(torch.int32) & ~((1 << (23 - M)) - 1) | (1 << (22 - M))  # float32 ties of Q
        ties = tie_bits.view(torch.float32).double()
        near = torch.cat([ties, torch.nextafter(ties, ties * 2), torch.nextafter(ties, ties * 0)])
        xs = torch.cat([x, specials, near])
        for mode in MODES:
            quantizer_matches_reference(monkeypatch, qlab.Float(E, M, mode, fn=fn, inf=inf), xs)
    assert not cpu.float_accepts(x, qlab.Float(8, 23, "even"))  # M > 21: the reference
    assert not cpu.float_accepts(x, qlab.Float(5, 10, "stochastic"))  # stochastic: the reference


@pytest.mark.parametrize("fmt", [E4M3, E5M2, (6, 5, False, False), (3, 1, False, True), (7, 21, False, False),
                                 (2, 0, False, False), (5, 10, True, False)])
def test_short_nearest_even_rounding_equals_the_general_one(monkeypatch, fmt):
    """Other nearest-even formats (E <= 7) round by (x + C) - C, C a power of two set by x's
    exponent: the general rounding's bits for random float32 patterns, each format's ties
    and their float32 neighbours, every exponent, subnormals, saturation, inf/NaN, signed
    zeros (the whole float32 range was compared once for these formats, 2026-11-30: no
    difference); the matmul's vector tiles with it give the general rounding's results."""
    q = qlab.Float(fmt[0], fmt[1], "even", fn=fmt[2], inf=fmt[3])
    g = torch.Generator().manual_seed(q.E * 100 + q.M)
    bits = torch.randint(-2 ** 31, 2 ** 31, (1 << 18,), generator=g, dtype=torch.int64).to(torch.int32)
    exps = (torch.arange(0, 1 << 9, dtype=torch.int32) << 23).repeat_interleave(64)  # sign and exponent
    bits = torch.cat([bits, exps | (bits[: len(exps)] & 0x7FFFFF)])
    tie = 22 - q.M
    ties = (bits & ~((1 << (tie + 1)) - 1)) | (1 << tie)
    x = torch.cat([bits, ties, ties + 1, ties - 1]).view(torch.float32)
    x = torch.cat([x, torch.tensor([0., -0., math.nan, math.inf, -math.inf, 1e-45, -1e-45, 3.4028235e38])])
    monkeypatch.setattr(cpu, "FLOAT_HW", True)
    short = cpu.float_quantize(x, q)
    monkeypatch.setattr(cpu, "FLOAT_HW", False)
    general = cpu.float_quantize(x, q)
    assert torch.equal(short.view(torch.int32), general.view(torch.int32)), q
    monkeypatch.setattr(cpu, "FLOAT_HW", True)
    quantizer_matches_reference(monkeypatch, q, x[::5])
    xm, wm = torch.randn(5, 40, generator=g) * 8, torch.randn(64, 40, generator=g)
    outs = []
    for hw in (True, False):
        monkeypatch.setattr(cpu, "FLOAT_HW", hw)
        outs.append(intrinsic_linear(xm, wm, None, qlab.Intrinsic(q)))
    assert same(outs[0], outs[1])


# ------------------------------------------------------------------ pointwise steps in C
def _float_format(rng):
    E, M = rng.randint(2, 8), rng.randint(0, 21)
    fn = E < 8 and M > 0 and rng.random() < 0.2
    inf = not fn and rng.random() < 0.3
    return qlab.Float(E, M, rng.choice(MODES), fn=fn, inf=inf)


def _float_awkward(shape, q, gen, dtype):
    """Values across Q's binades and past its range: exact ties between Q's neighbours,
    values one float32 step beside them, Q's and float32's subnormals, signed zeros,
    +-inf, NaN, float32's extremes (and, in float64, values past float32's range)."""
    from qlab.core.formats import _float_params

    emin, emax, maxv = _float_params(q.E, q.M, q.fn)
    n = math.prod(shape)
    e = torch.randint(emin - q.M - 3, emax + 3, (n,), generator=gen).double()
    x = (torch.rand(n, generator=gen, dtype=torch.float64) + 1) * torch.exp2(e)
    k = torch.randint(0, 2 ** (q.M + 1), (n,), generator=gen).double()
    ties = (2 * k + 1) * torch.exp2(e - q.M - 1)  # halfway between two of Q's values in binade e
    pick = torch.rand(n, generator=gen)
    x = torch.where(pick < 0.3, ties, x)
    step = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0) * ties.abs() * 2.0 ** -24
    x = torch.where((pick >= 0.3) & (pick < 0.4), ties + step, x)
    x = x * torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0)
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-40, 3.4e38, -3.4e38, maxv, -maxv,
                2.0 ** (emin - q.M), 2.0 ** (emin - q.M - 1)]
    if dtype == torch.float64:
        specials += [1e300, -1e-300, 3.5e38, 3.40282362e38, -3.40282362e38]  # the last: past FLT_MAX + half a step, below 2**128
    idx = torch.randperm(n, generator=gen)[: len(specials)]
    x[idx[: min(n, len(specials))]] = torch.tensor(specials[: min(n, len(specials))], dtype=torch.float64)
    return x.reshape(shape).to(dtype)


def test_float_batch_norm_kernel_equals_reference(monkeypatch):
    """Intrinsic batch norm for float formats in one C pass = the reference's float64 steps:
    random formats (E 2..8, M 0..21, FN, inf), every deterministic mode, inputs on and off,
    float32/float64, ties and their neighbours, subnormals, saturation, +-inf, NaN, signed
    zeros, rows shorter and longer than a vector, an empty batch."""
    import random

    rng = random.Random(21)
    gen = torch.Generator().manual_seed(21)
    for trial in range(50):
        q = _float_format(rng)
        spec = qlab.Intrinsic(q, inputs=rng.random() < 0.7)
        C = rng.choice([1, 3, 8])
        shape = rng.choice([(9, C), (4, C, 13), (3, C, 5, 6), (0, C, 2, 2)])
        dtype = rng.choice([torch.float32, torch.float64])
        x = _float_awkward(shape, q, gen, dtype)
        scale = float(2.0 ** rng.randint(-4, 6))
        mean, var = torch.randn(C, generator=gen) * scale, torch.rand(C, generator=gen) * scale ** 2 + 0.01
        gamma, beta = torch.randn(C, generator=gen) * rng.choice([1.0, 100.0]), torch.randn(C, generator=gen) * scale
        ref, got, ran = both_pointwise(monkeypatch, lambda: qlab.intrinsic_batch_norm(
            x, mean.to(dtype), var.to(dtype), gamma.to(dtype), beta.to(dtype), 1e-5, spec))
        assert ran == (1 if x.numel() else 0), (trial, spec)
        assert same(got, ref), (trial, spec, shape, dtype)


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_float_elementwise_kernel_equals_reference(monkeypatch, op):
    """Intrinsic add/sub/mul of same-shape tensors for float formats in one C pass = the
    reference: random formats and modes, inputs on and off, float32/float64, lengths with
    and without a scalar tail, awkward values; broadcasting and stochastic rounding stay
    with the reference."""
    import random

    rng = random.Random({"add": 31, "sub": 32, "mul": 33}[op])
    gen = torch.Generator().manual_seed(3)
    for trial in range(40):
        q = _float_format(rng)
        spec = qlab.Intrinsic(q, inputs=rng.random() < 0.7)
        shape = rng.choice([(0,), (7,), (3, 17), (2, 4, 5, 5), (1000,)])
        dtype = rng.choice([torch.float32, torch.float64])
        a, b = _float_awkward(shape, q, gen, dtype), _float_awkward(shape, q, gen, dtype)
        if op == "mul" and rng.random() < 0.5:  # products near Q's smallest and largest values
            b = b.abs().clamp(max=4.0).nan_to_num(1.0)
        ref, got, ran = both_pointwise(monkeypatch, lambda: qlab.intrinsic_elementwise(op, a, b, spec))
        assert ran == (1 if a.numel() else 0), (trial, spec)
        assert same(got, ref), (trial, spec, shape, dtype)
    # float64 values between FLT_MAX (+ half a step) and 2**128 round to odd as FLT_MAX, not inf: directed
    # roundings of an inf format then stay finite (the reference's f64_to_f32_odd rule)
    big = torch.tensor([3.40282362e38, -3.40282362e38, 3.0e38, 1.0], dtype=torch.float64)
    for q in (qlab.Float(8, 7, "down", inf=True), qlab.Float(8, 3, "zero", inf=True), qlab.Float(8, 21, "up", inf=True)):
        for inputs in (True, False):
            spec = qlab.Intrinsic(q, inputs=inputs)
            ref, got, ran = both_pointwise(monkeypatch, lambda: qlab.intrinsic_elementwise(
                op, big, torch.ones_like(big) * (op != "sub"), spec))
            assert ran == 1 and same(got, ref) and bool(torch.isfinite(ref[:2]).any()), (q, inputs, got, ref)
    x = torch.randn(3, 17)
    for args in [(x, x[:1], "add", "fp16"), (x, x, "add", "float(5,2,stochastic)"), (x, x, "mul", "log(8,4)"),
                 (x, x, "add", "float(8,22)"), (x.half(), x.half(), "add", "fp16")]:
        assert not cpu.float_elementwise_accepts(args[0], args[1], args[2], as_intrinsic(args[3])), args
    assert cpu.float_elementwise_accepts(x, x, "add", as_intrinsic("fp8e4m3"))
    g = torch.ones(17, dtype=torch.float64)
    assert cpu.float_batch_norm_accepts(x, g, g, as_intrinsic("float(8,3,up)"))
    assert not cpu.float_batch_norm_accepts(x, g, g, as_intrinsic("float(8,3,stochastic)"))
    assert not cpu.float_batch_norm_accepts(x, g[:3], g[:3], as_intrinsic("fp16"))  # channels


_CONV_GEOMETRIES = _GEOMETRIES + [  # the fixed conv kernel's (B, C, H, W, O, kh, kw, stride, padding, dilation, groups)
    (4, 3, 8, 8, 32, 3, 3, 1, 1, 1, 1),  # 256 positions x 32 channels: full vector tiles, two threads
    (1, 4, 4, 4, 6, 3, 3, 1, 1, 1, 2),  # one block of positions per group: each group gathers its own
    (2, 3, 3, 3, 40, 3, 3, 1, 1, 1, 1),  # rows are positions of two images
]


@pytest.mark.parametrize("geo", range(len(_CONV_GEOMETRIES)))
def test_float_conv_kernel_equals_reference(monkeypatch, geo):
    """The float conv kernel (windows gathered from Q(x), no im2col tensor) = the reference's
    unfold + float matmul, bit for bit: every geometry (both layouts, ragged blocks, groups,
    stride, dilation, padding), float32 products and float64 ones (inputs=False), sequential
    and final sums, bias or none, every deterministic mode in turn, float16/bfloat16
    tensors, NaN and inf in the input."""
    import random

    B, C, H, W, O, kh, kw, st, pad, dil, grp = _CONV_GEOMETRIES[geo]
    rng = random.Random(geo)
    g = torch.Generator().manual_seed(geo)
    x = torch.randn(B, C, H, W, generator=g) * 3
    x.view(-1)[rng.randrange(x.numel())] = math.inf
    x.view(-1)[rng.randrange(x.numel())] = math.nan
    w, b = torch.randn(O, C // grp, kh, kw, generator=g), torch.randn(O, generator=g)
    cases = [(FP16, FP16, "sequential", True), (BF16, BF16, "sequential", True), (E4M3, FP16, "final", True),
             (E5M2, FP16, "final", False), (FP16, (8, 23, False, False), "sequential", True)]
    for i, (qf, af, acc, inputs) in enumerate(cases):
        mode = MODES[(geo + i) % len(MODES)]
        spec = fspec(qf, af, mode, acc, amode="even" if af[1] == 23 else None, inputs=inputs)
        dt = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float32][i]
        bias = b.to(dt) if i % 2 == 0 else None
        ref, got, ran = both(monkeypatch, intrinsic_conv, x.to(dt), w.to(dt), bias, stride=st, padding=pad,
                             dilation=dil, groups=grp, spec=spec)
        assert ran == 1 and same(ref, got), (geo, str(spec), dt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one thread: the same values
        ref2, got2, _ = both(monkeypatch, intrinsic_conv, x, w, b, stride=st, padding=pad, dilation=dil, groups=grp,
                             spec=fspec(FP16, FP16, "even"))
        assert same(ref2, got2)
    finally:
        torch.set_num_threads(threads)


def test_float_conv_kernel_stochastic_and_declines(monkeypatch):
    """Stochastic formats through the conv kernel: torch.manual_seed repeats a run, another
    seed changes it, each output lies between the all-down and all-up results (inputs on
    Q's grid, products and sums monotone); shapes whose draw counters could repeat, and
    switched off: the reference."""
    g = torch.Generator().manual_seed(9)
    x = qlab.Float(5, 2, "even")(torch.randn(2, 3, 6, 6, generator=g) * 3)  # on the grid of float(5, 2)
    w = qlab.Float(5, 2, "even")(torch.randn(40, 3, 3, 3, generator=g))
    spec = qlab.Intrinsic(qlab.Float(5, 2, "stochastic"), acc=qlab.Float(5, 10, "stochastic"))
    before = cpu.float_calls
    torch.manual_seed(1)
    y = intrinsic_conv(x, w, None, padding=1, spec=spec)
    assert cpu.float_calls == before + 1
    torch.manual_seed(1)
    assert torch.equal(y, intrinsic_conv(x, w, None, padding=1, spec=spec))
    torch.manual_seed(2)
    assert not torch.equal(y, intrinsic_conv(x, w, None, padding=1, spec=spec))
    lo = intrinsic_conv(x, w, None, padding=1, spec=qlab.Intrinsic(qlab.Float(5, 2, "down"), acc=qlab.Float(5, 10, "down")))
    hi = intrinsic_conv(x, w, None, padding=1, spec=qlab.Intrinsic(qlab.Float(5, 2, "up"), acc=qlab.Float(5, 10, "up")))
    assert bool(((y >= lo) & (y <= hi)).all()) and bool((lo < hi).any())
    # two identical groups: their draws are independent (residuals over 100 images uncorrelated)
    xg = x[:1, :1].repeat(100, 2, 1, 1)
    wg = w[:3, :1].repeat(2, 1, 1, 1)
    yg = intrinsic_conv(xg, wg, None, padding=1, groups=2, spec=spec).double()
    r = yg - yg.mean(0)
    a, b = r[:, :3].reshape(-1), r[:, 3:].reshape(-1)
    assert abs((a @ b).item() / (a.norm() * b.norm()).item()) <= 5 / math.sqrt(a.numel()) and a.norm() > 0
    big, wbig = torch.zeros(64, 1, 256, 256), torch.zeros(4, 1, 15, 15)  # 4.2M positions x 226 x 8 >= 2**32
    assert not cpu.float_conv_accepts(big, wbig, None, (1, 1), (7, 7, 7, 7), (1, 1), 1, spec)
    assert cpu.float_conv_accepts(big, wbig, None, (1, 1), (7, 7, 7, 7), (1, 1), 1, as_intrinsic("fp16"))
    monkeypatch.setattr(cpu, "CONV_KERNEL", False)
    assert not cpu.float_conv_accepts(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, as_intrinsic("fp16"))


def test_stochastic_tiles_on_lanes_equal_the_scalar_rows(monkeypatch):
    """Stochastic full tiles of sequential sums on 8 lanes (cpu.FLOAT_STO_VEC) draw and round
    exactly as the scalar rows: the same values under one seed, for stochastic Q and A,
    float32 and checked (bf16) products, sums by TwoSum, in float32 (sum32) and in binary32
    (a32), with a bias, in linear layers (ragged tails included) and convs; final sums keep
    the scalar rows."""
    g = torch.Generator().manual_seed(12)
    x, w, b = torch.randn(9, 40, generator=g) * 3, torch.randn(70, 40, generator=g), torch.randn(70, generator=g)
    xc, wc = torch.randn(2, 4, 7, 7, generator=g) * 3, torch.randn(40, 2, 3, 3, generator=g)
    specs = [qlab.Intrinsic(qlab.Float(5, 10, "stochastic")),
             qlab.Intrinsic(qlab.Float(4, 3, "stochastic", fn=True), acc=qlab.Float(5, 10, "even")),  # sum32
             qlab.Intrinsic(qlab.Float(8, 7, "stochastic")),  # checked products
             qlab.Intrinsic(qlab.Float(5, 2, "even"), acc=qlab.Float(6, 9, "stochastic")),
             qlab.Intrinsic(qlab.Float(5, 2, "stochastic"), acc=qlab.Float(8, 23, "even")),  # a32
             qlab.Intrinsic(qlab.Float(5, 10, "stochastic"), accumulate="final")]  # final sums: scalar rows only
    for spec in specs:
        for run in (lambda: intrinsic_linear(x, w, b, spec=spec),
                    lambda: intrinsic_conv(xc, wc, b[:40], padding=1, groups=2, spec=spec)):
            outs = {}
            for vec in (True, False):
                monkeypatch.setattr(cpu, "FLOAT_STO_VEC", vec)
                torch.manual_seed(3)
                before = cpu.float_calls
                outs[vec] = run()
                assert cpu.float_calls == before + 1, str(spec)
            assert same(outs[True], outs[False]), str(spec)


# ------------------------------------------------------------------ in range: no saturation selects
def _worst_pre_rounding(q, a, x, w):
    """The largest |value| that Q (the products) and A (the sequential sums) round in the
    dot product x . w (Q's values), in float64 -- exact for the small formats used here."""
    s, worst_p, worst_t = torch.zeros((), dtype=torch.float64), 0.0, 0.0
    for xk, wk in zip(x.tolist(), w.tolist()):
        v = torch.tensor(xk * wk, dtype=torch.float64)
        worst_p = max(worst_p, abs(v.item()))
        t = s + q.quantize(v)
        worst_t = max(worst_t, abs(t.item()))
        s = a.quantize(t)
    return worst_p, worst_t


def test_in_range_bound_holds_for_worst_case_sums():
    """cpu._in_range (which lets the kernel drop its saturation and NaN selects) is sound:
    for random small formats and every rounding mode, at the largest operand scale it
    accepts (found by bisection), no product and no partial sum exceeds its format's max
    before rounding -- with same-sign products of equal size (directed roundings grow such
    sums geometrically: 2**-M per step), and random ones; it rejects NaN and inf; and it
    accepts what real layers see (fp16 and bf16: K = 2304, |x| <= 8, |w| <= 0.5)."""
    import random

    rng = random.Random(5)
    refused = 0
    cases = [(qlab.Float(4, M, mode), qlab.Float(5, M, mode), 24, True) for M in (0, 1) for mode in ("up", "down")]
    for trial in range(60):
        E, M, mode = rng.randint(3, 5), rng.randint(0, 4), rng.choice(MODES)
        cases.append((qlab.Float(E, M, mode), qlab.Float(E + rng.randint(0, 1), M + rng.randint(0, 2), mode),
                      rng.choice([1, 2, 5, 17, 40]), trial % 2 == 1))
    for q, a, K, equal in cases:
        fp = plan(qlab.Intrinsic(q, acc=a), K)
        if equal:  # same-sign products: directed roundings double such a sum per step where M = 0
            x0, w0 = torch.ones(K, dtype=torch.float64), torch.ones(K, dtype=torch.float64)
        else:
            x0 = torch.rand(K, dtype=torch.float64) * 2 - 1
            w0 = torch.rand(K, dtype=torch.float64) * 2 - 1
        accepted = None
        lo, hi = -40.0, 40.0  # log2 of the scale
        for _ in range(30):
            mid = (lo + hi) / 2
            xq, wq = q.quantize(x0 * 2.0 ** mid), q.quantize(w0)
            ok = cpu._in_range(fp, K, float(xq.abs().max()), float(wq.abs().max()), float((xq * wq).abs().sum()))
            if ok:
                lo, accepted = mid, (xq, wq)
            else:
                hi = mid
        if accepted is None:  # directed roundings of M <= 1 double a sum of tiny products per step
            refused += 1
            continue
        worst_p, worst_t = _worst_pre_rounding(q, a, *accepted)
        assert worst_p <= fp.q[2] and worst_t <= fp.a[2], (str(q), str(a), K, worst_p, worst_t)
    assert refused <= 10
    fp = plan(qlab.Intrinsic("fp16"), 16)
    for bad in (math.nan, math.inf):
        assert not cpu._in_range(fp, 16, bad, 1.0, 1.0) and not cpu._in_range(fp, 16, 1.0, 1.0, bad)
    for name in ("fp16", "bf16"):
        fp = plan(qlab.Intrinsic(name), 2304)
        assert cpu._in_range(fp, 2304, 8.0, 0.5, 2304 * 8.0 * 0.5)


@pytest.mark.parametrize("fmt", [FP16, BF16, E4M3, E5M2, (6, 5, False, False), (5, 10, True, False),
                                 (5, 10, False, True)])
def test_in_range_tiles_equal_reference(monkeypatch, fmt):
    """Where the bound holds the short roundings run without their selects (cpu.FLOAT_IN_RANGE):
    linear and conv results equal the reference and the switched-off kernel bit for bit, at
    operand scales below, near and past the bound (the last saturate through the selects);
    sequential sums and final ones (products only), Q = A and a wider A.  Forcing the flag
    where sums overflow changes results: the flag reaches the kernel."""
    q = qlab.Float(fmt[0], fmt[1], "even", fn=fmt[2], inf=fmt[3])
    g = torch.Generator().manual_seed(fmt[0] * 31 + fmt[1])
    x0, w0 = torch.randn(6, 50, generator=g), torch.randn(64, 50, generator=g)
    xc0, wc0 = torch.randn(2, 5, 6, 6, generator=g), torch.randn(32, 5, 3, 3, generator=g)
    maxv = plan(qlab.Intrinsic(q), 50).q[2]
    seen = set()
    for acc in ("sequential", "final"):
        for A in (q, qlab.Float(8, 10, "even")):
            spec = qlab.Intrinsic(q, acc=A, accumulate=acc)
            if plan(spec, 50) is None:
                continue
            for frac in (1e-3, 0.02, 0.2, 2.0):  # the operands' scale against sqrt(max / K)
                s = math.sqrt(maxv / 50) * frac
                x, w, xc, wc = x0 * s, w0 * s, xc0 * s, wc0 * s
                fp = plan(as_intrinsic(spec), 50)
                inr = cpu._matmul_in_range(fp, q(x), q(w).t())
                seen.add(inr)
                for fn, args, kw in [(intrinsic_linear, (x, w, None), {}),
                                     (intrinsic_conv, (xc, wc, None), dict(padding=1))]:
                    ref, got, ran = both(monkeypatch, fn, *args, spec=spec, **kw)
                    assert ran == 1 and same(ref, got), (str(spec), frac, fn.__name__)
                    monkeypatch.setattr(cpu, "FLOAT_IN_RANGE", False)
                    assert same(got, fn(*args, spec=spec, **kw))
                    monkeypatch.setattr(cpu, "FLOAT_IN_RANGE", True)
    assert seen == {True, False}
    # one row (linear) or one 3x3 patch of two channels (conv) far larger than the rest: their
    # sums climb past max (the reference saturates them) and come back (an unchecked inf
    # would not): the bound must see them; forced on, the results differ (for saturating
    # formats), so the flag reaches both kernels
    spec = qlab.Intrinsic(q, accumulate="sequential")
    xs, ws = torch.randn(40, 50, generator=g) * 1e-3, w0.abs()
    ws[:, 25:] = -ws[:, :25]
    xs[2] = 1.5 * maxv / float(ws[:, :25].sum(1).min())
    xcs, wcs = xc0 * 1e-3, wc0.abs()
    wcs[:, 3] = -wcs[:, 2]
    xcs[1, 2:4, 2:5, 2:5] = 1.5 * maxv / float(wcs[:, 2].sum((1, 2)).min())
    for fn, args, kw, bound in [(intrinsic_linear, (xs, ws, None), {}, "_matmul_in_range"),
                                (intrinsic_conv, (xcs, wcs, None), dict(padding=1), "_conv_in_range")]:
        ref, got, ran = both(monkeypatch, fn, *args, spec=spec, **kw)
        assert ran == 1 and same(ref, got), (str(spec), fn.__name__)
        if not q.inf:  # overflow to inf: the selects keep what the short rounding gives
            with monkeypatch.context() as m:
                m.setattr(cpu, bound, lambda *a: True)
                assert not same(ref, fn(*args, spec=spec, **kw)), (str(spec), fn.__name__)


def test_vector_epilogue_equals_the_scalar_one(monkeypatch):
    """Full deterministic tiles finish on 8 lanes (cpu.FLOAT_EPI_VEC: A's rounding of a final
    sum, the bias, Q's rounding): the scalar epilogue's bits and the reference's, with the
    bias along columns and broadcast along a row (both layouts), sequential and final sums,
    sums in float32 (sum32) and in binary32 (a32), binary32 products (q32), general and short
    roundings, NaN, inf and saturating results."""
    g = torch.Generator().manual_seed(21)
    F32 = (8, 23, False, False)
    specs = [fspec(FP16, FP16, "even"), fspec(FP16, FP16, "nearest"), fspec(E4M3, FP16, "even", "final"),
             fspec(BF16, BF16, "down"), fspec(E4M3, (5, 7, False, False), "even"), fspec(FP16, F32, "even", amode="even"),
             fspec(F32, F32, "even", inputs=False), fspec(E5M2, E5M2, "zero", "final")]
    x, w, b = torch.randn(7, 30, generator=g) * 40, torch.randn(64, 30, generator=g) * 40, torch.randn(64, generator=g) * 300
    x[1, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    xs = torch.randn(200, 30, generator=g) * 4  # many rows, 64 columns: vectorised over rows (bias broadcast per row)
    xc, wc, bc = torch.randn(2, 3, 6, 6, generator=g) * 8, torch.randn(40, 3, 3, 3, generator=g), torch.randn(40, generator=g)
    for spec in specs:
        for fn, args, kw in [(intrinsic_linear, (x, w, b), {}), (intrinsic_linear, (xs, w[:48], b[:48]), {}),
                             (intrinsic_conv, (xc, wc, bc), dict(padding=1))]:
            ref, got, ran = both(monkeypatch, fn, *args, spec=spec, **kw)
            assert ran == 1 and same(ref, got), (str(spec), fn.__name__)
            monkeypatch.setattr(cpu, "FLOAT_EPI_VEC", False)
            assert same(got, fn(*args, spec=spec, **kw)), (str(spec), fn.__name__)
            monkeypatch.setattr(cpu, "FLOAT_EPI_VEC", True)


def test_ragged_blocks_as_padded_full_tiles(monkeypatch):
    """A ragged last block of columns (< 32) runs as a zero-padded full tile (cpu.FLOAT_PAD:
    the linear pads its column operand, the conv its gathered block of positions): the
    one-column-at-a-time path's values for deterministic modes (and the reference's), and
    for stochastic ones the same draws, so the same values under one seed; with a bias, both
    orientations of the linear, conv with ragged position blocks and groups."""
    g = torch.Generator().manual_seed(23)
    x, w, b = torch.randn(5, 37, generator=g) * 6, torch.randn(45, 37, generator=g), torch.randn(45, generator=g)
    xs = torch.randn(70, 37, generator=g) * 6  # 70 rows, 45 columns: vectorised over rows (70 = 2 x 32 + 6)
    xc, wc, bc = torch.randn(1, 4, 7, 7, generator=g) * 6, torch.randn(6, 2, 3, 3, generator=g), torch.randn(6, generator=g)
    det = [fspec(FP16, FP16, "even"), fspec(BF16, BF16, "down"), fspec(E4M3, FP16, "even", "final"),
           fspec(E5M2, E5M2, "up")]
    sto = [qlab.Intrinsic(qlab.Float(5, 2, "stochastic"), acc=qlab.Float(5, 10, "stochastic")),
           qlab.Intrinsic(qlab.Float(8, 7, "stochastic"))]
    calls = [(intrinsic_linear, (x, w, b), {}), (intrinsic_linear, (xs, w, b), {}),
             (intrinsic_conv, (xc, wc, bc), dict(padding=1, groups=2))]  # 49 positions: 32 + 17
    for spec in det + sto:
        for fn, args, kw in calls:
            outs = []
            for pad in (True, False):
                monkeypatch.setattr(cpu, "FLOAT_PAD", pad)
                torch.manual_seed(3)
                before = cpu.float_calls
                outs.append(fn(*args, spec=spec, **kw))
                assert cpu.float_calls == before + 1
            assert same(outs[0], outs[1]), (str(spec), fn.__name__)
            if spec in det:
                ref, _, _ = both(monkeypatch, fn, *args, spec=spec, **kw)
                assert same(ref, outs[0]), (str(spec), fn.__name__)


def test_checked_products_skip_their_check_where_none_can_be_inexact(monkeypatch):
    """Formats whose products may leave float32's normal range (bf16, float(8, 11): checked
    products) skip the check where the operands show it idle (cpu._products_exact: in range
    and the smallest nonzero magnitudes' product >= 2**-126): the reference's values for
    operands on both sides of that bound, linear and conv; a claim of exactness on operands
    whose products fall below 2**-126 changes results (12-bit significands, rounding down:
    the float32 product's own rounding shows), so the flag reaches both kernels."""
    g = torch.Generator().manual_seed(31)
    x, w = torch.randn(40, 16, generator=g), torch.randn(64, 16, generator=g)
    xc, wc = torch.randn(2, 4, 6, 6, generator=g), torch.randn(32, 4, 3, 3, generator=g)
    for q in (qlab.Float(8, 7, "even"), qlab.Float(8, 11, "down")):
        spec = qlab.Intrinsic(q)
        fp = plan(as_intrinsic(spec), 16)
        assert cpu._product_mode(fp, as_intrinsic(spec)) == 2
        for scale, exact in ((1.0, True), (2.0 ** -60, False)):  # products ~2**-120 / ~2**-180 (some tiny)
            xs, xcs = x * scale, xc * scale
            assert cpu._products_exact(fp, as_intrinsic(spec), True, lambda: cpu._amin_nonzero(q(xs)), q(w * scale).t()) == exact
            for fn, args, kw in [(intrinsic_linear, (xs, w * scale, None), {}),
                                 (intrinsic_conv, (xcs, wc * scale, None), dict(padding=1))]:
                ref, got, ran = both(monkeypatch, fn, *args, spec=spec, **kw)
                assert ran == 1 and same(ref, got), (str(q), scale, fn.__name__)
    q = qlab.Float(8, 11, "down")
    spec = qlab.Intrinsic(q)
    xs = q(torch.rand(64, 16, generator=g) + 1) * 2.0 ** -64  # products in [2**-128, 2**-126)... and below
    ws = q(torch.rand(64, 16, generator=g) + 1) * 2.0 ** -66
    xcs, wcs = q(torch.rand(4, 4, 9, 9, generator=g) + 1) * 2.0 ** -64, q(torch.rand(32, 4, 3, 3, generator=g) + 1) * 2.0 ** -66
    xmix = xcs.clone()
    xmix[0, :, 0, 0] = 1.0  # one value near 1 per channel, the rest tiny: the smallest nonzero magnitude decides
    ref, got, ran = both(monkeypatch, intrinsic_conv, xmix, wcs, None, padding=1, spec=spec)
    assert ran == 1 and same(ref, got)
    for fn, args, kw in [(intrinsic_linear, (xs, ws, None), {}), (intrinsic_conv, (xcs, wcs, None), dict(padding=1))]:
        ref = fn(*args, spec=spec, **kw)
        with monkeypatch.context() as m:
            m.setattr(cpu, "_products_exact", lambda *a: True)
            assert not same(ref, fn(*args, spec=spec, **kw)), fn.__name__


@pytest.mark.parametrize("fmt", [(5, 10, False, False), (4, 3, True, False), (8, 7, False, True), (3, 0, False, False),
                                 (6, 1, False, False), (7, 21, False, False), (2, 4, True, False)])
def test_normal_range_rounding_path(monkeypatch, fmt):
    """The vector rounding takes a short path where all 8 lanes are zero or finite in Q's
    normal range (the rounding point is then bit 23 - M): the reference's bits for every
    mode, values at and next to ties (both signs, M = 0's power-of-two grid included), at
    the top of the range (saturation or inf), at Q's smallest normal and just below (one
    lane off the path sends its vector to the general code), signed zeros; through the
    quantizer, the stochastic quantizer's floor/ceil, and the matmul's tiles."""
    E, M, fn, inf = fmt
    from qlab.core.formats import _float_params

    emin, _, maxv = _float_params(E, M, fn)
    g = torch.Generator().manual_seed(E * 40 + M)
    n = 8 * 4000
    e = torch.randint(emin, int(math.log2(maxv)) + 1, (n,), generator=g)
    m = torch.randint(0, 1 << 23, (n,), generator=g)
    bits = ((e + 127) << 23) | m
    cut = (bits & ~((1 << (23 - M)) - 1)) | (1 << (22 - M))  # ties of Q's grid
    sel = torch.randint(0, 4, (n,), generator=g)
    bits = torch.where(sel == 1, cut, torch.where(sel == 2, cut + 1, torch.where(sel == 3, cut - 1, bits)))
    sign = torch.randint(0, 2, (n,), generator=g) << 31
    x = (bits | sign).to(torch.int32).view(torch.float32)
    x[::97] = 0.0
    x[1::89] = -0.0
    x[2::301] = min(maxv * 1.01, 3.4028234663852886e38)
    x[3::211] = -maxv
    x[4::503] = 2.0 ** emin * 0.75  # below the normal range: the vector's general code
    x[5::709] = math.nan
    for mode in MODES:
        quantizer_matches_reference(monkeypatch, qlab.Float(E, M, mode, fn=fn, inf=inf), x)
    monkeypatch.setattr(cpu, "FLOAT_HW", False)  # nearest even by this path too, not the short roundings
    quantizer_matches_reference(monkeypatch, qlab.Float(E, M, "even", fn=fn, inf=inf), x)
    monkeypatch.setattr(cpu, "FLOAT_HW", True)
    # stochastic: each value its floor or ceiling on the grid
    qs = qlab.Float(E, M, "stochastic", fn=fn, inf=inf)
    xs = x[torch.isfinite(x)]
    lo, hi = qlab.Float(E, M, "down", fn=fn, inf=inf)(xs), qlab.Float(E, M, "up", fn=fn, inf=inf)(xs)
    y = qs(xs)
    assert bool(((y == lo) | (y == hi)).all()) and bool((y != lo).any()) and bool((y != hi).any())
    xm, wm = torch.randn(5, 40, generator=g) * 2, torch.randn(64, 40, generator=g)
    for mode in MODES:
        spec = fspec(fmt, fmt, mode)
        if plan(as_intrinsic(spec), 40) is None:  # an accumulator with inf and float32's range: the reference
            continue
        ref, got, ran = both(monkeypatch, intrinsic_linear, xm, wm, None, spec=spec)
        assert ran == 1 and same(ref, got), str(spec)


def test_stochastic_rounding_of_values_far_below_the_step():
    """Stochastic rounding of |x| far below Q's smallest step (|x| / step < 2**-6, where the
    rounding's shift passes 30 bits) rounds up with probability |x| / step (it used to take
    rem / 2**30, up to 2**k times too often): the quantizer's vector loop and scalar tail,
    and products in the matmul's tiles (fp8 products of small operands are often that
    small)."""
    q = qlab.Float(4, 3, "stochastic")  # smallest step 2**-9
    n = 1 << 20
    for v in (2.0 ** -17, 3 * 2.0 ** -20, 1.7 * 2.0 ** -24):
        for size in (n, 7):  # the 8-lane loop, the scalar tail (many calls)
            torch.manual_seed(3)
            if size == n:
                ups = int((cpu.float_quantize(torch.full((n,), v), q) != 0).sum())
            else:
                ups = sum(int((cpu.float_quantize(torch.full((7,), v), q) != 0).sum()) for _ in range(n // 7 // 16))
                size = n // 7 // 16 * 7
            p = v / 2.0 ** -9
            assert abs(ups - size * p) <= 5 * math.sqrt(size * p) + 1, (v, size, ups, size * p)
    # products: x = 2**-10, w = 3 * 2**-10 (both on Q's grid): each output is Q(x w), 0 or 2**-9
    spec = qlab.Intrinsic(q, acc=qlab.Float(5, 10, "even"))
    x, w = torch.full((4096, 1), 2.0 ** -10), torch.full((64, 1), 3 * 2.0 ** -10)
    before = cpu.float_calls
    torch.manual_seed(4)
    y = intrinsic_linear(x, w, None, spec=spec)
    assert cpu.float_calls == before + 1
    p, m = 3 * 2.0 ** -11, y.numel()
    assert abs(int((y != 0).sum()) - m * p) <= 5 * math.sqrt(m * p) + 1
