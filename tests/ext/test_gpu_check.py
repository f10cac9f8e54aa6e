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
                "qlab intrinsic linear fp8e5m2", "every conv and fc intrinsic fp8e4m3", "(WIDE_ASM 1)", "NUM_WARPS 4",
                "intrinsic(bf16,acc=float(8,23,even))", "(FLOAT_QHW off)", "(WIDE_TILE None)",
                "(WIDE_TILE (64, 128, 4))"]:
        assert row in out, (row, out[-3000:])
    for r_ in ("elementwise", "linear", "conv", "resnet"):
        assert f"({r_}, goals: " in out and f"({r_}, more: " in out
    assert "ERROR" not in out and "skipped" not in out


def test_cuda_timing_warms_up_then_takes_the_median_window(monkeypatch):
    """timed() on CUDA: calls for WARMUP_S first (the clocks ramp up from idle), then the
    median of WINDOWS windows, each of at least reps / WINDOWS calls and WINDOW_S seconds
    (CUDA events and synchronize replaced by a fake clock: each call advances it by the
    next duration of a list, so the windows' times are known)."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check as gc

    clock = [0.0]
    durations = iter([0.05] * 5 + [0.001] * 10_000)  # slow calls while warming up, then fast

    class Event:
        def __init__(self, **k):
            pass

        def record(self):
            self.t = clock[0]
            records.append(clock[0])

        def elapsed_time(self, other):  # milliseconds, as CUDA events give them
            return (other.t - self.t) * 1e3

    calls, records = [], []

    def fn():
        calls.append(clock[0])
        clock[0] += next(durations)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(gc.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(gc, "DEV", "cuda")
    sec = gc.timed(fn, 10)
    assert sec == pytest.approx(0.001, rel=1e-9)  # every timed window ran fast calls only: the slow ones were warm-up
    assert records[0] >= 0.05 + gc.WARMUP_S  # one call, then WARMUP_S of warm-up calls before any window
    warm = sum(1 for t in calls if t < 0.05 + gc.WARMUP_S)
    assert len(calls) - warm >= gc.WINDOWS * gc.WINDOW_S / 0.001  # windows of >= WINDOW_S


def test_gpu_sweep_dry_run_prints_its_tables():
    """bench/gpu_sweep.py (tile sweeps and the ResNet-50 profile) runs end to end too."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("QLAB_BACKEND", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--dry-run"], cwd=ROOT / "bench",
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for title in ["tile sweep (linear 16^3", "linear 16^3: tile sweep", "kernels by device time"]:
        assert title in r.stdout, (title, r.stdout[-3000:])


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_budget_skips_only_the_optional_rows():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("QLAB_BACKEND", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--skip-checks",
                        "--only", "elementwise,conv", "--budget", "0"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    row = {ln.split(" | ")[0][2:].strip(): ln for ln in lines if ln.startswith("| ")}
    for goal in ["qlab fixed(8,4,stochastic)", "qlab intrinsic conv fixed(16,8) (implicit GEMM)", "float conv2d (cuDNN)"]:
        assert "skipped" not in row[goal] and "ERROR" not in row[goal], row[goal]
    for extra in ["qlab fixed(8,4,stochastic), PHILOX4 off", "same, operands never prefetched (PREFETCH False)"]:
        assert row[extra].endswith("| skipped: past --budget |"), row[extra]
    # the rows come before the optional ones
    assert lines.index(row["float conv2d (cuDNN)"]) < lines.index(row["qlab fixed(8,4,stochastic), PHILOX4 off"])


def test_rows_print_an_error_and_go_on(capsys):
    gc = _gpu_check()
    t = gc.Rows("demo", ["op", "ms"])
    t.add("first", lambda: 1 / 0)
    t.add("second", lambda: ["1.5"])
    out = capsys.readouterr().out
    assert "| first | ERROR ZeroDivisionError: division by zero |" in out
    assert "| second | 1.5 |" in out


def test_triage_names_the_switch_that_makes_a_failing_section_pass(capsys):
    """A section that fails with the defaults is run again with each switch: the report names
    the variants that pass (here a section that needs WIDE_ASM 1, under the interpreter)."""
    from qlab.ext.triton.checks import _switches

    gc = _gpu_check()
    body = "\n    from qlab.ext.triton import intrinsic as _ti\n    assert _ti.WIDE_ASM == 1, 'needs the mad.wide form'\n"
    failed = gc.check_exact("interpreter", 2, 300, sections={"demo": body})
    assert failed == ["demo"]
    out = capsys.readouterr().out
    assert "exactness demo: FAILED" in out and "needs the mad.wide form" in out

    def variants(name, only):
        return {"WIDE_ASM=1": _switches(WIDE_ASM=1) + body, "PREFETCH=False": _switches(PREFETCH=False) + body}
    assert gc.triage(failed, "interpreter", 2, 300, variants=variants) == {"demo": ["WIDE_ASM=1"]}
    assert "TRIAGE demo: passes with WIDE_ASM=1" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["linear", "no_prefetch", "float_intrinsic", "stochastic"])
def test_triage_variants_set_the_switch_they_name(name):
    """Each variant's script, run line by line, leaves the module switches as its label says
    (its own line after the section's PREFETCH line, which it may override)."""
    import importlib
    import re

    from qlab.ext.triton import checks

    vs = checks.variants(name)
    assert vs and all(b.endswith((checks.ELEMENTWISE.get(name) or checks._INTRINSIC[name][1])) for b in vs.values())
    for label, body in vs.items():
        state = {}
        mod = None
        for ln in body.splitlines():
            m = re.match(r"\s*from qlab\.ext\.triton import (\w+) as _sw$", ln)
            if m:
                mod = m.group(1)
            m = re.match(r"\s*_sw\.(\w+) = (.+)$", ln)
            if m:
                assert hasattr(importlib.import_module(f"qlab.ext.triton.{mod}"), m.group(1)), ln
                state[f"{mod}.{m.group(1)}"] = eval(m.group(2))
        if label.startswith("all of them"):
            assert state["intrinsic.WIDE_ASM"] == 0 and state["intrinsic.PREFETCH"] is False
            assert state["intrinsic.FLOAT_FP8"] is False and state["intrinsic.NUM_WARPS"] == 4
            continue
        key, val = label.split("=")
        key = key if "." in key else f"intrinsic.{key}"
        assert state[key] == eval(val), (label, state)
    if name == "no_prefetch":
        assert "PREFETCH=True" in vs
