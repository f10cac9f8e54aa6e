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


def test_the_loops_without_prefetch_match_too(results):
    """The sections above force the k loop's prefetch on; this one runs a cross-section of
    the same checks with it off (intrinsic.PREFETCH "auto" picks either by the launch's size)."""
    assert results["no_prefetch"] == "ok", results["no_prefetch"]


def test_warps_keep_32_outputs_per_thread(monkeypatch):
    """Warps per program follow the tile (32 outputs per thread), the int64 tile keeps 4,
    and NUM_WARPS overrides both."""
    import triton.language as tl

    from qlab.ext.triton import intrinsic as ti

    assert [ti._warps(bm, bn) for bm, bn in ti.INT32_TILES] == [4, 2, 1]
    assert ti._warps(32, 64, tl.int64) == 4
    monkeypatch.setattr(ti, "NUM_WARPS", 8)
    assert ti._warps(32, 32) == 8 and ti._warps(32, 64, tl.int64) == 8


def test_prefetch_auto_follows_programs_per_sm(monkeypatch):
    from qlab.ext.triton import intrinsic as ti

    monkeypatch.setattr(ti, "_sm_count", lambda device: 132)
    assert ti.PREFETCH == "auto"
    assert ti._prefetch(256) and ti._prefetch(4 * 132 - 1)  # a 512^3 GEMM in 32x32 tiles: few warps per SM
    assert not ti._prefetch(4 * 132) and not ti._prefetch(1024)  # 2048^3 in 128x32 tiles
    monkeypatch.setattr(ti, "PREFETCH", False)
    assert not ti._prefetch(1)
    monkeypatch.setattr(ti, "PREFETCH", "yes")
    with pytest.raises(ValueError, match="'yes'"):
        ti._prefetch(1)


def test_section_results_do_not_mix_names_that_share_a_prefix():
    """run_sections reads each section's verdict by its whole name: a failing "a" must not
    pass because "a_b" passed."""
    res = run_sections({"a": "assert False, 'a fails'", "a_b": "pass"}, "interpreter")
    assert res["a_b"] == "ok"
    assert res["a"] != "ok" and "a fails" in res["a"]


def test_cpu_tensors_keep_the_torch_path():
    import torch

    from qlab.core import backends
    from qlab.core.intrinsic import as_intrinsic

    x = torch.zeros(2, 3)
    from qlab.ext.triton import intrinsic as tri

    # CPU tensors: the compiled C kernels or the reference, never the Triton kernel
    assert backends.lookup("fixed_matmul", x, torch.zeros(3, 2), None, as_intrinsic("fixed(8,4)"), None, True) \
        is not tri.fixed_matmul
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


def test_wide_tile_for_large_deterministic_linears(monkeypatch):
    """Deterministic linears that fill whole waves add a WIDE_TILE (128x128, 8 warps) launch
    for the loops without product clamps: two launches, ONLY=1 at the wide tile (prefetching
    unless PREFETCH is False) and ONLY=2 at the usual tile, so the device's operand bounds
    pick; convs, stochastic plans, plans without the in-range test (inputs=False) and
    WIDE_TILE = None keep one launch (ONLY=0)."""
    import torch
    import triton.language as tl

    from qlab.core.intrinsic import as_intrinsic
    from qlab.ext.triton import intrinsic as ti

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(ti, "_sm_count", lambda device: 132)
    assert ti._wide_block(2048, 2048, tl.int32) == (128, 128, 8)  # 256 programs: two waves, 97% full
    assert ti._wide_block(1536, 1536, tl.int32) is None  # 144: the second wave 9% full
    assert ti._wide_block(1024, 2048, tl.int32) is None  # 128 < 132 SMs
    assert ti._wide_block(16896, 128, tl.int32) == (128, 128, 8)  # 132: one full wave
    assert ti._wide_block(6272, 256, tl.int32) is None  # 98 programs
    assert ti._wide_block(2048, 2048, tl.int64) is None
    assert ti._block(2048, 2048, tl.int32) == (128, 32)
    monkeypatch.setattr(ti, "WIDE_TILE", None)
    assert ti._wide_block(2048, 2048, tl.int32) is None
    monkeypatch.setattr(ti, "WIDE_TILE", (128, 128, 8))

    launches = []

    class Kernel:  # records each launch's grid and constexprs instead of running it
        def __getitem__(self, grid):
            return lambda *a, **k: launches.append((grid, k["ONLY"], k["PREFETCH"], k["BLOCK_M"], k["BLOCK_N"],
                                                    k["num_warps"]))

    monkeypatch.setattr(ti, "_fixed_gemm_kernel", Kernel())
    monkeypatch.setattr(ti, "_grid_ints", lambda t, q, g, idt: (torch.zeros(t.shape, dtype=torch.int32),
                                                                 torch.zeros(1, dtype=torch.int64)))
    monkeypatch.setattr(ti, "matmul_accepts", lambda *a: True)
    monkeypatch.setattr(ti, "_asm_ok", lambda: False)
    x, w = torch.ones(2048, 64), torch.ones(64, 2048)

    def run(spec):
        launches.clear()
        ti.fixed_matmul(x, w, None, as_intrinsic(spec))
        return list(launches)

    assert run("fixed(16,8)") == [((16, 16, 1), 1, True, 128, 128, 8), ((16, 64, 1), 2, False, 128, 32, 4)]
    assert [o for _, o, *_ in run("intrinsic(fixed(8,4),acc=fixed(16,4,down))")] == [1, 2]
    for spec in ["fixed(16,8,stochastic)", "intrinsic(fixed(8,4),acc=fixed(16,4,stochastic))",
                 "intrinsic(fixed(8,4),inputs=False)"]:
        assert run(spec) == [((16, 64, 1), 0, False, 128, 32, 4)], spec
    monkeypatch.setattr(ti, "PREFETCH", False)
    assert [(o, p) for _, o, p, *_ in run("fixed(16,8)")] == [(1, False), (2, False)]
    monkeypatch.setattr(ti, "NUM_WARPS", 2)  # overrides both launches' warps
    assert [r[-1] for r in run("fixed(16,8)")] == [2, 2]
    monkeypatch.setattr(ti, "NUM_WARPS", None)
    monkeypatch.setattr(ti, "PREFETCH", "auto")
    monkeypatch.setattr(ti, "SKIP_PRODUCT_CLAMP", False)  # no in-range test on the device: one launch
    assert [o for _, o, *_ in run("fixed(16,8)")] == [0]
    monkeypatch.setattr(ti, "SKIP_PRODUCT_CLAMP", True)
    monkeypatch.setattr(ti, "WIDE_TILE", None)
    assert [o for _, o, *_ in run("fixed(16,8)")] == [0]


def _hw16_recipe(x, w, fmt, hmax, saturate, retry=False, tile=(8, 4)):
    """The CUDA kernel's binary16/bfloat16 recipe in torch's 16-bit CPU arithmetic (each
    op computed in float32 and rounded once to the format: exact, as float32 has more
    than 2p + 2 bits): p = clamp(x_k * w_k), s = clamp(s + p), k in order.  ``retry``
    (intrinsic.HW16_RETRY): without the clamps first, then with them for each tile of the
    output that holds an inf or NaN."""
    import torch

    if saturate and retry:
        out = _hw16_recipe(x, w, fmt, hmax, False)
        clamped = _hw16_recipe(x, w, fmt, hmax, True)
        _hw16_recipe.retried = 0
        for i in range(0, out.shape[0], tile[0]):
            for j in range(0, out.shape[1], tile[1]):
                t = out[i:i + tile[0], j:j + tile[1]]
                if not t.isfinite().all():
                    out[i:i + tile[0], j:j + tile[1]] = clamped[i:i + tile[0], j:j + tile[1]]
                    _hw16_recipe.retried += 1
        return out
    xh, wh = x.to(fmt), w.to(fmt)
    s = torch.zeros(x.shape[0], w.shape[0], dtype=fmt)
    for k in range(x.shape[1]):
        p = xh[:, k, None] * wh[None, :, k]
        if saturate:
            p = p.clamp(-hmax, hmax)  # torch.clamp keeps NaN, as min/max.NaN do
        s = s + p
        if saturate:
            s = s.clamp(-hmax, hmax)
    return s.float()


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "clamped"])
@pytest.mark.parametrize("name, E, M, inf", [("fp16", 5, 10, False), ("bf16", 8, 7, False),
                                               ("fp16 with inf", 5, 10, True)])
def test_native_16bit_recipe_equals_the_reference(monkeypatch, name, E, M, inf, retry):
    """The float kernel's native path on CUDA (_hw16_step: the hardware's mul.rn/add.rn
    and NaN-keeping clamps) computes intrinsic fp16/bf16 sequential nearest-even exactly
    as SEMANTICS.md section 4 says: the same recipe in torch's exactly rounded 16-bit CPU
    arithmetic equals the reference on random operands (saturating products and sums,
    subnormal products), NaN/inf, signed zeros and ties.  The GPU check sections run the
    kernel itself."""
    import math

    import torch

    import qlab
    from qlab.core.intrinsic import Intrinsic, intrinsic_linear
    from qlab.ext.triton import intrinsic as ti

    q = qlab.Float(E, M, "even", inf=inf)
    spec = Intrinsic(q, acc=q, accumulate="sequential")
    monkeypatch.setattr(ti, "_asm_ok", lambda: True)
    assert ti._native_kind(spec) == (1 if E == 5 else 2)
    fmt = torch.float16 if E == 5 else torch.bfloat16
    g = torch.Generator().manual_seed(E * 100 + inf)
    u = 2.0 ** -M
    cases = [(torch.tensor([[1.0, u / 2], [1.0 + u, u / 2], [-1.0, -u / 2], [1.0 + u, 0.0]]),
              torch.tensor([[1.0, 1.0], [1.5, 0.0]]))]
    big = 6e4 if E == 5 else 3e38  # a sum that saturates and comes back: 6e4 + 6e4 - 6e4
    cases.append((torch.tensor([[big, big, -big], [1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 1.0]])))
    for sc in [1.0, 300.0 if E == 5 else 1e20, 1e-3 if E == 5 else 1e-20, 30.0 if E == 5 else 1e19]:
        x, w = torch.randn(23, 17, generator=g) * sc, torch.randn(7, 17, generator=g) * sc
        if sc == 1.0:
            x[0, :5] = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0])
            x[1], w[0] = -0.0, -0.0
        cases.append((x, w))
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    retried = []
    for x, w in cases:
        ref = intrinsic_linear(x, w, None, spec=spec)
        xq, wq = q(x), q(w)
        got = _hw16_recipe(xq, wq, fmt, q.max_value, not inf, retry)
        if retry and not inf:
            retried.append(_hw16_recipe.retried)
        same = torch.equal(ref.isnan(), got.isnan()) and torch.equal(ref[~ref.isnan()], got[~got.isnan()]) and \
            torch.equal(torch.signbit(ref[~ref.isnan()]), torch.signbit(got[~got.isnan()]))
        assert same, (name, (ref != got).sum().item(), ref[ref != got][:5], got[ref != got][:5])
    if retry and not inf:  # some tiles overflowed without the clamps (and were redone), others not
        assert max(retried) > 0 and min(retried) == 0, retried
    # where the native path does not apply
    for other in [Intrinsic(q, acc=q, accumulate="final"), Intrinsic(q, acc=q, inputs=False),
                  Intrinsic(qlab.Float(E, M, "nearest", inf=inf), accumulate="sequential"),
                  Intrinsic(q, acc=qlab.Float(8, 7) if E == 5 else qlab.Float(5, 10))]:
        assert ti._native_kind(other) == 0, other
    monkeypatch.setattr(ti, "_asm_ok", lambda: False)  # the interpreter: the general code
    assert ti._native_kind(spec) == 0


def _fp8_final_recipe(xq, wq):
    """The CUDA float kernel's fp8 e4m3 ``final`` path in torch CPU arithmetic: each product
    exact in float32, rounded by the hardware's satfinite conversion (nearest even, +-448,
    NaN kept: here a clamp and torch's own e4m3 cast), then summed as the int32 bits of
    v * 2**9 + 1.5 * 2**23 (wrapping), K copies of that constant's bits taken off at the end;
    returns the exact sum (float64) and whether each output saw a NaN product."""
    import torch

    p = xq[:, None, :] * wq[None, :, :]  # [M, N, K] float32, exact for e4m3 operands
    v = p.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
    bits = (v * 512.0 + 12582912.0).view(torch.int32).to(torch.int64)
    k = xq.shape[1]
    wrapped = (bits.sum(-1) - k * 0x4B400000 + 2 ** 31) % 2 ** 32 - 2 ** 31  # int32 arithmetic
    return wrapped.double() / 512.0, v.isnan().any(-1)


def test_fp8_final_recipe_equals_the_reference(monkeypatch):
    """intrinsic(fp8e4m3, acc=..., final) on CUDA (sm_89+): the hardware rounds each product
    to e4m3 and the exact sum runs in int32 (``_fp8_final``).  The same recipe in torch CPU
    arithmetic gives the reference's exact sum: random operands with saturating, subnormal
    and tied products, NaN, and K = 9362 products of 448 (a sum just below 2**31 steps)."""
    import math

    import torch

    import qlab
    from qlab.core.intrinsic import Intrinsic, as_intrinsic, intrinsic_linear
    from qlab.ext.float_intrinsic import plan
    from qlab.ext.triton import intrinsic as ti

    spec = as_intrinsic("intrinsic(fp8e4m3,acc=fp16,accumulate=final)")
    q, A = spec.q, spec.A
    g = torch.Generator().manual_seed(8)
    cases = []
    for sc, K in [(1.0, 37), (30.0, 41), (0.02, 29), (6.0, 300)]:
        x, w = torch.randn(9, K, generator=g) * sc, torch.randn(5, K, generator=g) * sc
        if sc == 1.0:
            x[0, 3], w[2, 5] = math.nan, math.nan
            x[1, :4] = torch.tensor([1.125, 1.0625, 2 ** -9, 3 * 2 ** -10])  # ties on e4m3's grid
        cases.append((x, w))
    big = torch.full((2, 9362), 22.0)
    big[1] = -22.0  # 22 * 22 = 484 saturates to 448
    cases.append((big, torch.full((1, 9362), 22.0)))
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    for x, w in cases:
        ref = intrinsic_linear(x, w, None, spec=spec)
        exact, nan = _fp8_final_recipe(q(x), q(w))
        got = torch.where(nan, torch.full_like(exact, math.nan), exact)
        got = q.quantize(A.quantize(got)).float()  # A(exact sum), then back onto Q, as the kernel ends
        assert torch.equal(ref.isnan(), got.isnan()), (ref, got)
        assert torch.equal(ref[~ref.isnan()], got[~got.isnan()]), (x.shape, (ref != got).sum())
    assert abs(exact).max().item() * 512 > 2 ** 31 - 2 ** 17  # the last case nearly fills int32
    # where the path applies (compiled CUDA: _asm_ok), and where not
    monkeypatch.setattr(ti, "_asm_ok", lambda: True)
    assert ti._fp8_final(spec, plan(spec, 9362), 9362)
    assert not ti._fp8_final(spec, plan(spec, 9363), 9363)  # 448 * 2**9 * 9363 >= 2**31
    for other in ["intrinsic(fp8e4m3,acc=fp16)", "intrinsic(fp8e5m2,acc=fp16,accumulate=final)",
                  "intrinsic(fp8e4m3,acc=fp16,accumulate=final,inputs=false)",
                  Intrinsic(qlab.Float(4, 3, "nearest", fn=True), acc=qlab.Float(5, 10), accumulate="final")]:
        o = as_intrinsic(other)
        assert not ti._fp8_final(o, plan(o, 64), 64), other
    monkeypatch.setattr(ti, "_asm_ok", lambda: False)
    assert not ti._fp8_final(spec, plan(spec, 64), 64)


@pytest.mark.parametrize("name, fmt_name, maxv", [("fp8e4m3", "float8_e4m3fn", 448.0), ("fp8e5m2", "float8_e5m2", 57344.0)])
def test_fp8_sequential_recipe_equals_the_reference(monkeypatch, name, fmt_name, maxv):
    """Intrinsic fp8e4m3 / fp8e5m2 (sequential, nearest even, Q = A) on CUDA (sm_89+): each
    product exact in float32 and rounded by the hardware's satfinite conversion, each sum
    s + p in float32 and rounded the same way (_f8_loop).  The same recipe in torch CPU
    arithmetic (a clamp and torch's fp8 cast) equals the reference: saturating, subnormal
    and tied products, NaN, and e5m2 sums whose float32 addition is inexact (exponents 31
    apart: one rounding or two give the same)."""
    import math

    import torch

    from qlab.core.intrinsic import as_intrinsic, intrinsic_linear
    from qlab.ext.triton import intrinsic as ti

    spec = as_intrinsic(name)
    q = spec.q
    fmt = getattr(torch, fmt_name)

    def rnd(t):
        return t.clamp(-maxv, maxv).to(fmt).float()  # clamp keeps NaN

    def recipe(xq, wq):
        s = torch.zeros(xq.shape[0], wq.shape[0])
        for k in range(xq.shape[1]):
            s = rnd(s + rnd(xq[:, k, None] * wq[None, :, k]))
        return s

    g = torch.Generator().manual_seed(9)
    cases = []
    for sc in [1.0, 40.0 if name == "fp8e4m3" else 600.0, 0.05 if name == "fp8e4m3" else 2e-3, 8.0]:
        x, w = torch.randn(13, 29, generator=g) * sc, torch.randn(6, 29, generator=g) * sc
        if sc == 1.0:
            x[0, 3], w[2, 5] = math.nan, math.nan
            x[1, :3] = torch.tensor([1.125, 1.0625, 1.1875])  # ties on e4m3's grid (e5m2: off-grid inputs)
        cases.append((x, w))
    # e5m2: 2**15 + 2**-16 is inexact in float32; -2**15 brings the sum back
    cases.append((torch.tensor([[2.0 ** 8, 2.0 ** -8, -2.0 ** 8, 2.0 ** -8]]),
                  torch.tensor([[2.0 ** 7, 2.0 ** -8, 2.0 ** 7, 2.0 ** -8]])))
    monkeypatch.setenv("QLAB_BACKEND", "torch")
    for x, w in cases:
        ref = intrinsic_linear(x, w, None, spec=spec)
        got = recipe(q(x), q(w))
        assert torch.equal(ref.isnan(), got.isnan()), (ref, got)
        assert torch.equal(ref[~ref.isnan()], got[~got.isnan()]), (name, x.shape, (ref != got).sum())
    monkeypatch.setattr(ti, "_asm_ok", lambda: True)
    assert ti._native_kind(spec) == (3 if name == "fp8e4m3" else 4)
    monkeypatch.setattr(ti, "FLOAT_FP8", False)
    assert ti._native_kind(spec) == 0


def test_bf16_product_recipe_equals_the_reference():
    """On CUDA a bfloat16 product is formed in float32 and rounded by the hardware's bf16
    conversion (intrinsic._q_native, QHW 6/7).  Above float32's range the product is inf
    (Q gives the largest value or inf either way); within it a 16-bit product is exact; below
    2**-126 float32 may round once before the conversion rounds again.  The same recipe in
    torch CPU arithmetic (an IEEE float32 multiply keeping subnormals, then the round-to-
    nearest-even cast) equals the exact product rounded once by qlab's bf16, over every pair
    of positive bfloat16 values whose exact product lies in [2**-160, 2**-120) (74.6 million
    pairs; negative operands mirror them), and on random pairs over the whole range."""
    import torch

    import qlab

    q = qlab.Float(8, 7, "even")
    pos = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()  # every finite > 0
    lx = torch.log2(pos.double())
    n = bad = 0
    for i in range(0, pos.numel(), 128):
        lo, hi = -160 - lx[i:i + 128], -120 - lx[i:i + 128]
        r, c = ((lx[None, :] >= lo[:, None]) & (lx[None, :] < hi[:, None])).nonzero(as_tuple=True)
        x, w = pos[i:i + 128][r], pos[c]
        n += r.numel()
        bad += int((q.quantize(x.double() * w.double()) != (x * w).to(torch.bfloat16).double()).sum())
    assert n > 7e7 and bad == 0, (n, bad)
    g = torch.Generator().manual_seed(0)
    allv = torch.cat([pos, -pos, torch.tensor([0.0, -0.0])])
    x, w = (allv[torch.randint(0, allv.numel(), (2_000_000,), generator=g)] for _ in range(2))
    got = (x * w).to(torch.bfloat16).float().clamp(-q.max_value, q.max_value)  # satfinite: the largest value
    ref = q.quantize(x.double() * w.double()).float()
    assert torch.equal(got, ref) and torch.equal(torch.signbit(got), torch.signbit(ref))


def _float_values(E, M, fn=False):
    """Every finite value of qlab's float(E, M) (both signs), float64."""
    import torch

    import qlab

    q = qlab.Float(E, M, "even", fn=fn)
    if (E, M) == (5, 10):
        v = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16).double()
    elif (E, M) == (8, 7):
        v = torch.arange(0, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).double()
    else:
        bias = 2 ** (E - 1) - 1
        m = torch.arange(2 ** M, dtype=torch.float64) / 2 ** M
        v = torch.cat([m * 2.0 ** (1 - bias)] + [(1 + m) * 2.0 ** e for e in range(1 - bias, 2 ** E - bias)])
        v = v[v <= q.max_value]
    return torch.cat([v, -v[1:]])


@pytest.mark.parametrize("A,Q,pairs", [((5, 10), (4, 3), None), ((5, 10), (5, 2), None), ((8, 7), (4, 3), None),
                                       ((8, 7), (5, 2), None), ((4, 3), (5, 2), None), ((5, 10), (5, 10), 4_000_000),
                                       ((8, 7), (8, 7), 4_000_000), ((5, 10), (8, 7), 4_000_000)])
def test_sum_in_float32_then_hardware_rounding_equals_the_reference(A, Q, pairs):
    """On CUDA a sequential sum A(s + p) with A = fp16/bf16/fp8 (nearest even) and Q no more
    precise than A is s + p in float32, then A's hardware conversion (intrinsic._a_native).
    The same recipe in torch CPU arithmetic equals the reference's A(s + p) for every pair
    (s in A, p in Q) of the fp8 combinations, and for random pairs where that is too many;
    saturating and overflowing A alike (the conversion's overflow, then the clamp)."""
    import torch

    import qlab

    qa = qlab.Float(*A, "even", fn=A == (4, 3))
    sv, pv = _float_values(*A, fn=A == (4, 3)), _float_values(*Q, fn=Q == (4, 3))
    if pairs is None:
        s, p = sv.repeat_interleave(pv.numel()), pv.repeat(sv.numel())
    else:
        g = torch.Generator().manual_seed(2)
        s, p = sv[torch.randint(0, sv.numel(), (pairs,), generator=g)], pv[torch.randint(0, pv.numel(), (pairs,), generator=g)]
    r32 = s.float() + p.float()
    for inf in (False, True):
        if inf and A == (4, 3):
            continue
        qa = qlab.Float(*A, "even", fn=A == (4, 3), inf=inf)
        if A == (5, 10):
            got = r32.half().double()
        elif A == (8, 7):
            got = r32.bfloat16().double()
        else:  # fp8: the conversion rounds the float32 value exactly once
            got = qa.quantize(r32.double())
        if not inf:
            got = got.clamp(-qa.max_value, qa.max_value)  # satfinite
        ref = qa.quantize(s + p)
        assert torch.equal(got, ref), (A, Q, inf, int((got != ref).sum()))
