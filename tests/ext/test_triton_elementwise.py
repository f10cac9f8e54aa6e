"""The Triton fixed-point kernel equals the torch reference bit for bit (run under TRITON_INTERPRET=1)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import math, torch, qlab
    from qlab.ext.triton.elementwise import fixed_quantize
    torch.manual_seed(0)
    specials = [0., -0., math.nan, math.inf, -math.inf, 0.49999997, -0.49999997, 1e-40, -1e-40, 3e38, -3e38]
    x = torch.cat([torch.randn(1500) * 20, torch.tensor(specials), (torch.arange(-100, 100) + 0.5) / 16])
    bad = []
    for W, F in [(8, 4), (4, 0), (1, 0), (16, 8), (24, 10), (8, -2), (6, 20)]:
        for m in ["nearest", "even", "down", "up", "zero"]:
            q = qlab.FixedPoint(W, F, m)
            a, b = q(x), fixed_quantize(x, q)
            same = torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5)) and torch.equal(a.isnan(), b.isnan()) \\
                and torch.equal(torch.signbit(a), torch.signbit(b))
            if not same:
                bad.append(str(q))
    e = torch.empty(0)
    assert fixed_quantize(e, qlab.FixedPoint(8, 4)).shape == (0,)
    print("BAD", bad)
    assert not bad, bad
""")


def test_triton_fixed_kernel_matches_reference_under_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "BAD []" in r.stdout


def test_cpu_tensors_keep_the_torch_path():
    import torch

    import qlab
    from qlab.core import backends

    assert backends.lookup("fixed", torch.zeros(3), qlab.FixedPoint(8, 4)) is None
