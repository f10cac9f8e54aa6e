"""The fixed-point kernel compiled for sm_90 (no GPU needed): skipping the per-product
clamp where the operands' bounds allow it shortens the k loop (bench/sass_count.py)."""
import os

import pytest

triton = pytest.importorskip("triton")
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "cuobjdump")), reason="no cuobjdump in triton")


def test_skip_loop_is_shorter():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import sass_count

    per_thread = 128 * 32 / (32 * 4)
    lens = sorted(n for n, _ in sass_count.loops(sass_count.compile_sass("fixed(16,8)", False, 128, 32, 4)))
    assert len(lens) == 2, lens  # one loop clamps each product, the other does not
    assert lens[0] < 0.8 * lens[1], lens
    # without the device flag only the clamping loop exists
    only = [n for n, _ in sass_count.loops(sass_count.compile_sass("fixed(16,8)", False, 128, 32, 4, inrange=False))]
    assert len(only) == 1 and abs(only[0] - lens[1]) <= 0.1 * lens[1], (only, lens)
    assert lens[0] / per_thread < 8, lens  # products, rounding, accumulate, clamp the sum: 6 + loads


def test_float_even_rounding_is_the_short_path():
    """Nearest-even (the named formats' default) takes the short rounding code: the fp16
    k loop is well under the general code's (the same spec with ties away)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import sass_count

    even = min(n for n, _ in sass_count.loops(sass_count.compile_sass("fp16", False, 128, 32, 4)))
    away = min(n for n, _ in sass_count.loops(
        sass_count.compile_sass("intrinsic(float(5,10,nearest),acc=float(5,10,nearest))", False, 128, 32, 4)))
    assert even < 0.7 * away, (even, away)
