"""bench/gpu_check.py runs end to end in its dry-run mode (CPU, Triton interpreter, tiny
sizes), so a mistake in the GPU script shows in CI instead of in scarce GPU minutes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_prints_every_table():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("QLAB_BACKEND", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--skip-checks"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "DRY RUN" in out
    for title in ["elementwise, 4096 float32 elements", "intrinsic linear", "ResNet-50 layer: batch 1",
                  "resnet50, random weights"]:
        assert title in out, (title, out[-3000:])
    for row in ["qlab fixed(8,4,stochastic)", "naive per-k torch loop", "qlab intrinsic linear bf16",
                "qlab intrinsic conv fixed(16,8)", "every conv and fc intrinsic fp16", "128x32 tiles only",
                "FUSED_GRID_INTS off", "products saturate (clamping loop), WIDE_STEP off",
                "qlab grid integers fixed(16,8) + max|k|", "bf16, native 16-bit arithmetic off",
                "one Philox call per product (SHARE_DRAWS off)", "(PREFETCH True)", "(PREFETCH False)",
                "bf16, clamps at every MAC (HW16_RETRY off)", "fp16, every tile overflows", "(FLOAT_FP8 off)",
                "qlab intrinsic linear fp8e5m2", "every conv and fc intrinsic fp8e4m3", "(WIDE_ASM 1)", "NUM_WARPS 4"]:
        assert row in out, (row, out[-3000:])
    for r_ in ("elementwise", "linear", "conv", "resnet"):
        assert f"({r_}: " in out


def test_gpu_sweep_dry_run_prints_its_tables():
    """bench/gpu_sweep.py (tile sweeps and the ResNet-50 profile) runs end to end too."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("QLAB_BACKEND", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--dry-run"], cwd=ROOT / "bench",
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for title in ["tile sweep (linear 16^3", "linear 16^3: tile sweep", "kernels by device time"]:
        assert title in r.stdout, (title, r.stdout[-3000:])
