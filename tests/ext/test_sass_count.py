"""The fixed-point kernel compiled for sm_90 (no GPU needed): skipping the per-product
clamp where the operands' bounds allow it shortens the k loop (bench/sass_count.py)."""
import os

import pytest

triton = pytest.importorskip("triton")
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "cuobjdump")), reason="no cuobjdump in triton")


@pytest.fixture(scope="module")
def sass_count():
    """bench/sass_count.py as a module."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import sass_count

    return sass_count


def _sass_with(sass_count, spec, **switches):
    """SASS of ``spec`` (linear, 128x32 tile, 4 warps) compiled with the given module switches
    of qlab.ext.triton.intrinsic set, restored afterwards."""
    from qlab.ext.triton import intrinsic as ti

    old = {k: getattr(ti, k) for k in switches}
    for k, v in switches.items():
        setattr(ti, k, v)
    try:
        return sass_count.compile_sass(spec, False, 128, 32, 4)
    finally:
        for k, v in old.items():
            setattr(ti, k, v)


def test_skip_loop_is_shorter(sass_count):
    per_thread = 128 * 32 / (32 * 4)
    lens = sorted(n for n, _ in sass_count.loops(sass_count.compile_sass("fixed(16,8)", False, 128, 32, 4)))
    # runs without any clamp, stretches that clamp the sums, the loop that clamps each product too
    assert len(lens) == 3, lens
    assert lens[0] < 0.6 * lens[1] and lens[1] < 0.8 * lens[2], lens
    # without the device flag only the clamping loop exists
    only = [n for n, _ in sass_count.loops(sass_count.compile_sass("fixed(16,8)", False, 128, 32, 4, inrange=False))]
    assert len(only) == 1 and abs(only[0] - lens[2]) <= 0.1 * lens[2], (only, lens)
    assert lens[1] / per_thread < 8, lens  # products, rounding, accumulate, clamp the sum: 6 + loads
    # SKIP_SUM_CLAMP off: no runs, the two loops as before
    two = sorted(n for n, _ in sass_count.loops(_sass_with(sass_count, "fixed(16,8)", SKIP_SUM_CLAMP=False)))
    assert len(two) == 2 and lens[1] < two[0] < two[1], (two, lens)


def test_runs_are_one_multiply_add_per_mac(sass_count):
    """The runs without clamps (SKIP_SUM_CLAMP) carry each sum as a 64-bit pair whose low
    word is the rounding's 2**31 (PAIR_SUM): ptxas updates the pair's high register in place
    with one IMAD.HI per MAC -- no integer-ALU work per MAC (no VIMNMX) and under 3.2
    instructions per MAC, linear and 3x3 conv, with the prefetch or without.  Without the
    pair ptxas copies the rounding constant and the sum into a fresh pair for each MAC: more
    FMA-pipe instructions than MACs plus one."""
    per_thread = 128 * 32 / (32 * 4)
    for conv in (False, True):
        macs = per_thread * (3 if conv else 1)
        for prefetch in (True, False):
            n, ops = min(sass_count.loops(sass_count.compile_sass("fixed(16,8)", conv, 128, 32, 4, prefetch=prefetch)),
                         key=lambda t: t[0])
            assert "VIMNMX" not in ops and n / macs < 3.2, (conv, prefetch, n / macs, ops)
            assert sass_count.pipes(ops)[1] / macs < 0.5, (conv, prefetch, ops)
        n0, ops0 = min(sass_count.loops(_sass_with(sass_count, "fixed(16,8)", PAIR_SUM=False)), key=lambda t: t[0])
    n, ops = min(sass_count.loops(sass_count.compile_sass("fixed(16,8)", False, 128, 32, 4)), key=lambda t: t[0])
    assert sass_count.pipes(ops0)[2] >= 2 * per_thread and n < 0.85 * n0, (n, n0, ops, ops0)


def test_float_even_rounding_is_the_short_path(sass_count):
    """Nearest-even (the named formats' default) takes the short rounding code: the fp8e5m2
    k loop is well under the general code's (the same spec with ties away)."""
    even = min(n for n, _ in sass_count.loops(sass_count.compile_sass("fp8e5m2", False, 128, 32, 4)))
    away = min(n for n, _ in sass_count.loops(
        sass_count.compile_sass("intrinsic(float(5,2,nearest),acc=float(5,2,nearest))", False, 128, 32, 4)))
    assert even < 0.7 * away, (even, away)


def test_fp16_and_bf16_run_as_native_16bit_arithmetic(sass_count):
    """Intrinsic fp16/bf16 sequential nearest-even: each MAC is one hardware product and one
    sum (packed two per instruction by ptxas) and the saturating clamps -- a few sm_90
    instructions per MAC instead of 50-70 of the general float code; every product is a
    multiply of its own (HMUL2), never fused with the sum."""
    per_thread = 128 * 32 / (32 * 4)
    for spec in ["fp16", "bf16"]:
        found = [sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4, float_pass=p))[0] for p in (1, 2)]
        for n, ops in found:  # without the clamps (pass 1), with them (pass 2: HW16_RETRY)
            assert 2 * ops["HMUL2"] >= per_thread, (spec, ops)  # every product multiplied on its own
        n = max(n for n, _ in found)
        # the general code's bit arithmetic (FLOAT_QHW off too: else its sums and products are
        # float32 operations rounded by the hardware's conversions, about 6 per MAC)
        (n_gen, _), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_HW16=False, FLOAT_QHW=False))
        assert n / per_thread < 6.5 and n < 0.15 * n_gen, (spec, n, n_gen)


def test_saturating_fp16_runs_its_loop_without_clamps_first(sass_count):
    """HW16_RETRY: the saturating fp16/bf16 k loop runs without its clamps (pass 1: no
    HMNMX2, under 0.7x the clamped loop's length), the clamped loop only in a second launch
    (pass 2) for the tiles that overflowed; one pass with clamps with the switch off.  Each
    kernel holds one loop, so the registers stay those of one loop (the 3x3 conv with both
    loops in one kernel took 254 per thread)."""
    for spec in ["fp16", "bf16"]:
        (short, s_ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4, float_pass=1))
        (full, f_ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4, float_pass=2))
        assert "HMNMX2" not in s_ops and f_ops["HMNMX2"] > 0 and short < 0.7 * full, (spec, short, full)
        (only, o_ops), = sass_count.loops(_sass_with(sass_count, spec, HW16_RETRY=False))
        assert o_ops["HMNMX2"] > 0, (spec, o_ops)
        sass_count.compile_sass(spec, True, 128, 32, 4, float_pass=1)
        assert sass_count.compile_sass.n_regs <= 200, (spec, sass_count.compile_sass.n_regs)


def test_wide_step_moves_work_off_the_integer_alu(sass_count):
    """nearest with W <= 16 in range: product, rounding and sum are one 64-bit multiply-add
    (IMAD.WIDE, its carry, IMAD.X) and the sum's clamp -- the integer ALU, the binding pipe
    of the clamping loop, does about 3.3 operations per MAC instead of 5.2."""
    per_thread = 128 * 32 / (32 * 4)
    for conv in (False, True):
        wide = min(sass_count.loops(sass_count.compile_sass("fixed(16,8)", conv, 128, 32, 4)), key=lambda t: t[0])
        plain = min(sass_count.loops(sass_count.compile_sass("fixed(16,8)", conv, 128, 32, 4, wide=False)),
                    key=lambda t: t[0])
        ks = [3 if conv else 1] * 2  # the conv loop unrolls the 3x3 kernel's columns: 3 values of k per pass
        alu = [sass_count.pipes(ops)[1] / (per_thread * k) for (_, ops), k in zip((wide, plain), ks)]
        assert alu[0] < 3.8 and alu[0] < 0.75 * alu[1], (conv, alu)
        assert wide[1]["IMAD"] >= per_thread, wide  # one (wide) multiply-add per MAC at least
    # the PTX only where the plan takes the step: even rounding has no wide loop
    even = sass_count.loops(sass_count.compile_sass("fixed(16,8,even)", False, 128, 32, 4))
    assert min(sass_count.pipes(ops)[1] for _, ops in even) / per_thread > 4, even


def test_wide_step_carry_folds_into_one_multiply(sass_count):
    """WIDE_ASM 2: the rounding's 2**31 enters through the low word's carry (mad.lo.cc +
    madc.hi), which ptxas folds into one IMAD.HI with a 64-bit addend -- no IADD3 per MAC
    as with one mad.wide.s32 (WIDE_ASM 1), and a shorter in-range loop."""
    per_thread = 128 * 32 / (32 * 4)
    n2, ops2 = min(sass_count.loops(_sass_with(sass_count, "fixed(16,8)", WIDE_ASM=2)), key=lambda t: t[0])
    n1, ops1 = min(sass_count.loops(_sass_with(sass_count, "fixed(16,8)", WIDE_ASM=1)), key=lambda t: t[0])
    assert ops1["IADD3"] >= per_thread and ops2["IADD3"] < per_thread / 4 and n2 < 0.92 * n1, (n2, n1, ops1, ops2)


def test_wide_product_in_the_clamping_loop(sass_count):
    """W <= 15: the clamping loop takes the 64-bit multiply step too (every grid integer
    meets its operand bounds), the product then clamped apart -- about 5.3 integer-ALU
    operations per MAC instead of 7.2; W = 16 keeps the plain clamping loop (a weight of
    -2**15 breaks the bound)."""
    per_thread = 128 * 32 / (32 * 4)

    def clamp_alu(spec, **kw):
        ls = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4, **kw))
        return sass_count.pipes(max(ls, key=lambda t: t[0])[1])[1] / per_thread

    w8, w8_plain, w16 = clamp_alu("fixed(8,4)"), clamp_alu("fixed(8,4)", wide=False), clamp_alu("fixed(16,8)")
    assert w8 < 6 and w8 < 0.8 * w8_plain, (w8, w8_plain)
    assert abs(w16 - w8_plain) < 0.5, (w16, w8_plain)


def test_philox4_halves_the_stochastic_kernel(sass_count):
    """PHILOX4 (the default): one Philox call per four elements, about half the sm_90
    instructions per element of one call per element; nearest stays below both."""
    n = {(m, f): sum(sass_count.opcodes(sass_count.compile_elementwise_sass(m, f)).values())
         for m, f in [("nearest", False), ("stochastic", True), ("stochastic", False)]}
    assert n["stochastic", True] < 0.65 * n["stochastic", False], n
    assert n["nearest", False] < n["stochastic", True], n


def test_stochastic_products_draw_philox_one_k_in_four(sass_count):
    """fixed(16,8,stochastic): the Philox block (most of the loop's code) sits behind a
    branch taken once per 4 k (SHARE = 4 for F <= 8), so about a quarter of it runs per MAC."""
    per_thread = 128 * 32 / (32 * 4)
    sass = sass_count.compile_sass("fixed(16,8,stochastic)", False, 128, 32, 4)
    for (n, _), blocks in zip(sass_count.loops(sass), sass_count.skipped_blocks(sass)):
        assert blocks and max(blocks) > 0.7 * n, (n, blocks)  # Philox: behind a branch
        assert (n - 0.75 * max(blocks)) / per_thread < 30, (n, blocks)
    sass = _sass_with(sass_count, "fixed(16,8,stochastic)", SHARE_DRAWS=False)
    assert all(not b or max(b) < 0.3 * n for (n, _), b in zip(sass_count.loops(sass), sass_count.skipped_blocks(sass)))


def test_fp8_sequential_rounds_with_the_hardware(sass_count):
    """fp8e4m3 / fp8e5m2 presets (sequential, Q = A): every product and sum rounded by the
    hardware's fp8 conversion (F2FP) -- under 8 sm_90 instructions per MAC against over 40
    for the general float code (FLOAT_FP8 off)."""
    per_thread = 128 * 32 / (32 * 4)
    for spec in ["fp8e4m3", "fp8e5m2"]:
        (n, ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4))
        (n_gen, _), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_FP8=False))
        assert ops["F2FP"] >= per_thread and n / per_thread < 8 and n_gen / per_thread > 40, (spec, n, n_gen)


def test_fp8_final_rounds_products_with_the_hardware(sass_count):
    """intrinsic(fp8e4m3, acc=fp16, final): each product rounded by the fp8 conversion (F2FP)
    and summed in int32 -- under 10 sm_90 instructions per MAC, against the general float
    code's bit arithmetic and int64 sums (FLOAT_FP8 off, over 20)."""
    per_thread = 128 * 32 / (32 * 4)
    spec = "intrinsic(fp8e4m3,acc=fp16,accumulate=final)"
    (n, ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4))
    (n_gen, _), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_FP8=False))
    assert ops["F2FP"] >= per_thread / 2 and n / per_thread < 10 and n_gen / per_thread > 20, (n, n_gen, ops)


def test_float32_accumulator_adds_in_hardware(sass_count):
    """intrinsic(fp16, acc=float(8,23,even)) -- fp16 products summed in float32, as matrix
    units do: each product rounded by the hardware's fp16 conversion (F2FP, FLOAT_QHW), each
    sum one float32 addition -- without clamps in the first launch (HW16_RETRY: under 5.5
    sm_90 instructions per MAC), clamped by NaN-keeping min/max in the second (under 8);
    over 15 with the products' general bit rounding (FLOAT_QHW off)."""
    import re

    per_thread = 128 * 32 / (32 * 4)
    spec = "intrinsic(fp16,acc=float(8,23,even))"
    sass1 = sass_count.compile_sass(spec, False, 128, 32, 4)  # PASS 1, unclamped (the default here)
    sass2 = sass_count.compile_sass(spec, False, 128, 32, 4, float_pass=2)
    (n, ops), = sass_count.loops(sass1)
    (n2, _), = sass_count.loops(sass2)
    (n_gen, _), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_QHW=False))
    assert ops["F2FP"] >= per_thread / 2 and ops["FADD"] >= per_thread and "FMNMX" not in sass1, ops
    assert len(re.findall(r"FMNMX\.NAN", sass2)) >= 2 * per_thread and "FMNMX " not in sass2
    assert n / per_thread < 5.5 and n2 / per_thread < 8 and n_gen / per_thread > 15, (n, n2, n_gen)
    # bfloat16 products: formed in float32 (not float64) and rounded by the bf16 conversion
    spec = "intrinsic(bf16,acc=float(8,23,even))"
    (n, ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4))
    (n_gen, ops_gen), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_QHW=False))
    assert ops["F2FP"] >= per_thread / 2 and ops["DMUL"] == 0 and ops_gen["DMUL"] >= per_thread, (ops, ops_gen)
    assert n / per_thread < 8 and n_gen / per_thread > 30, (n, n_gen)


def test_float32_products_are_never_fused_into_the_sum(sass_count):
    """intrinsic(float(8,23)) -- a float32 dot product in k order: each product one FMUL
    (mul.rn.f32, rounded on its own) and each sum one FADD; an FFMA would round x w + s once
    and break the contract.  With FLOAT_QHW off the product is a float64 one converted (DMUL)."""
    import qlab

    per_thread = 128 * 32 / (32 * 4)
    f32inf = qlab.Float(8, 23, "even", inf=True)  # no clamp between product and sum: a plain
    for spec in ["intrinsic(float(8,23))", qlab.Intrinsic(f32inf, acc=f32inf)]:  # multiply would fuse here
        (n, ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4))
        assert ops["FMUL"] >= per_thread and ops["FADD"] >= per_thread and ops["FFMA"] == 0, ops
        (_, ops64), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_QHW=False))
        assert ops64["DMUL"] >= per_thread and ops64["FFMA"] == 0, ops64


def test_fp8_products_summed_in_fp16_by_the_conversion(sass_count):
    """intrinsic(fp8e4m3, acc=fp16) -- the default sequential sum: each product rounded by the
    fp8 conversion, each sum s + p in float32 rounded by the fp16 conversion (F2FP;
    intrinsic._a_native) -- under 8 sm_90 instructions per MAC, against over 20 with the
    general code (two-sum rounded to odd, bit rounding; FLOAT_QHW off)."""
    per_thread = 128 * 32 / (32 * 4)
    spec = "intrinsic(fp8e4m3,acc=fp16)"
    (n, ops), = sass_count.loops(sass_count.compile_sass(spec, False, 128, 32, 4))
    (n_gen, _), = sass_count.loops(_sass_with(sass_count, spec, FLOAT_QHW=False))
    assert ops["F2FP"] >= per_thread and n / per_thread < 8 and n_gen / per_thread > 20, (n, n_gen, ops)
