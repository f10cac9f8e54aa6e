"""One script for a lent GPU (issue 3): the issue's speed rows, the CUDA exactness checks
(the same checks as tests/ext/test_triton_*.py: CPU torch path vs CUDA Triton path, bit
for bit), then more rows (other formats; each change made without a GPU, switched off).

    PYTHONPATH=. python bench/gpu_check.py [--quick] [--skip-checks] [--only ROWS] [--jobs N] [--budget S]
    PYTHONPATH=. python bench/gpu_check.py --dry-run   # CPU, Triton interpreter, tiny sizes

Device minutes are scarce (15 per session, machine start included), so the order is chosen
for a run stopped by its time limit: the issue's rows first (about a minute), then the
checks, then the optional rows, which are skipped once ``--budget`` seconds have passed.
Every row is printed as soon as it is measured (line-buffered), a row that raises prints
its error and the run goes on, and a check section that fails is run again with each
module switch back at its state before the changes made without a GPU (``triage``: the
variants that pass name the change to suspect, so one call both finds and isolates a
failure).  Save the whole log: ``... 2>&1 | tee $OUT/gpu_check.log``.

Every kernel variant compiles on first use (constexpr specialisations: the checks
compile at most about 370, counted under the interpreter as distinct constexpr and
argument-type signatures on 2026-11-30); with ``--jobs 8`` the checks took 92 s on an
H200 (2026-11-28, fewer variants then, compiles included) and the rows about a minute.

``--dry-run`` runs every row's code on tiny CPU tensors under ``TRITON_INTERPRET=1`` (the
numbers mean nothing) so a mistake in the script shows here, not in scarce GPU minutes;
tests/ext/test_gpu_check.py runs it in CI.

Needs only torch and triton (no pytest; torchvision is used for ResNet-50 when present,
else an equivalent ResNet-50 defined here).  Rows:

* elementwise fixed(8,4) nearest and stochastic on 2**28 float32: GB/s beside a
  device-to-device copy and torch.fake_quantize_per_tensor_affine;
* intrinsic linear fixed(16,8) sequential at 512^3 and 2048^3: quantized MACs/s beside
  a naive per-k torch loop (512^3) and cuBLAS fp32 with TF32 off (2048^3); the float
  formats fp16, fp8e4m3 products with an fp16 final sum, and bf16 (float64 products);
* intrinsic conv, ResNet-50 layer (batch 32, 256->256, 14x14, 3x3, pad 1): QMAC/s, and
  the intrinsic linear at the same GEMM shape (equal MACs) for the ratio;
* ResNet-50 (random weights), every conv and fc intrinsic fixed(16,8), batch 64:
  images/s, and the float model; the same with intrinsic fp16 and fp8e4m3.

Beside the defaults, rows with one module switch off time each change made without a
GPU (docs/benchmarks.md, sessions 5 to 7): ``intrinsic.WIDE_STEP``,
``SKIP_PRODUCT_CLAMP``, ``FUSED_GRID_INTS``, ``WIDE_ASM`` (1: the mad.wide form),
``INT32_TILES`` (128x32 only), ``WIDE_TILE`` (None: one launch at 128x32; 64x128 with 4
warps), ``FLOAT_HW16``, ``HW16_RETRY`` (and fp16 where every tile overflows),
``FLOAT_FP8``, ``FLOAT_QHW`` (fp16 products, float32 sums), ``SHARE_DRAWS``, ``PREFETCH``
(forced on and off; the default "auto" prefetches small launches),
``SKIP_SUM_CLAMP`` and ``PAIR_SUM`` (session 9: sums without clamps where a bound allows,
carried as 64-bit pairs; also with weights at a trained layer's scale, N(0, 1/K)) and
``elementwise.PHILOX4``; also fixed(8,4) with saturating products (the clamping loop),
stochastic fixed(16,8), and the operand pass (grid integers + max |k|) beside copy.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

ROWS = ("elementwise", "linear", "conv", "resnet")
DEV = "cuda"
# sizes per mode: elementwise elements, linear sizes, conv (batch, channels, side), resnet (batch, side)
SIZES = {
    "full": dict(elem=1 << 28, linear=[512, 2048], conv=(32, 256, 14), resnet=(64, 224)),
    "quick": dict(elem=1 << 24, linear=[256, 1024], conv=(8, 256, 14), resnet=(8, 224)),
    "dry": dict(elem=1 << 12, linear=[8, 16], conv=(1, 4, 5), resnet=(1, 32)),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--skip-checks", action="store_true", help="skip the CUDA exactness checks")
    ap.add_argument("--checks", default=None, help="comma-separated check sections to run (default: all)")
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--jobs", type=int, default=1, help="check sections run at once (each compiles its kernels)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per row")
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes (script check)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which the optional rows are skipped (the issue's rows and the checks always run)")
    ap.add_argument("--check-timeout", type=float, default=600, help="seconds for one check section")
    ap.add_argument("--no-triage", dest="triage", action="store_false",
                    help="do not rerun a failed check section with each switch off")
    a = ap.parse_args(argv)
    a.only = [r.strip() for r in a.only.split(",") if r.strip()]
    bad = [r for r in a.only if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {ROWS}")
    return a


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A markdown table (numbers already formatted by the caller)."""
    out = [f"\n{title}", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_rate(v: float, unit: str) -> str:
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if v >= p:
            return f"{v / p:.2f} {s}{unit}"
    return f"{v:.1f} {unit}"


@contextlib.contextmanager
def setting(module, **values):
    """Module-level switches (PHILOX4, SKIP_PRODUCT_CLAMP, _block, ...) set for a block, restored after."""
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


WARMUP_S, WINDOW_S, WINDOWS = 0.1, 0.02, 3


def timed(fn, reps: int) -> float:
    """Seconds per call: calls for WARMUP_S first (compiles, and the clocks ramp up from idle:
    on 2026-11-30 the first compute-bound row, a 512^3 linear timed right after one warm-up
    call, read 0.74 ms, the same kernel 0.31 ms later in the run), then the median of
    WINDOWS windows of at least reps / WINDOWS calls and WINDOW_S each (CUDA events; the wall
    clock in a dry run, one warm-up call)."""
    fn()
    if DEV == "cpu":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps
    torch.cuda.synchronize()
    t0, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        if calls % 4 == 0 or calls == 1:
            torch.cuda.synchronize()
            if time.perf_counter() - t0 >= WARMUP_S:
                break
    n = max(-(-reps // WINDOWS), int(WINDOW_S * calls / (time.perf_counter() - t0)) + 1)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per = []
    while len(per) < WINDOWS:
        s.record()
        for _ in range(n):
            fn()
        e.record()
        torch.cuda.synchronize()
        sec = s.elapsed_time(e) / 1e3
        if sec < WINDOW_S:  # the calls got faster than in the warm-up: a longer window, again
            n = min(8 * n, int(n * WINDOW_S / max(sec, 1e-9)) + 1)
            continue
        per.append(sec / n)
    return sorted(per)[len(per) // 2]


class Rows:
    """A markdown table printed row by row, so a run stopped by a time limit keeps every row
    it measured.  ``add(label, fn)`` prints [label, *fn()]; a row whose fn raises prints
    the error and the table goes on; an optional table's rows past the deadline are
    listed as skipped instead of run."""

    def __init__(self, title: str, header: list[str], optional: bool = False):
        self.title, self.header, self.optional, self.shown = title, header, optional, False

    def add(self, label: str, fn) -> None:
        if not self.shown:
            print(table(self.title, self.header, []))
            self.shown = True
        if self.optional and past_deadline():
            cells = ["skipped: past --budget"]
        else:
            try:
                cells = list(fn())
            except Exception as e:  # a compile error or a failed assertion: the other rows still run
                msg = str(e).strip().splitlines()
                cells = [f"ERROR {type(e).__name__}: {msg[0][:200] if msg else ''}"]
        print("| " + " | ".join(str(c) for c in [label, *cells]) + " |")


START = time.time()
BUDGET = None  # seconds from START after which optional rows are skipped (--budget)


def past_deadline() -> bool:
    return BUDGET is not None and time.time() - START > BUDGET


# --------------------------------------------------------------------------- exactness
def _in_pool(jobs: int, items: dict, work, timeout: float):
    """work(label, body) for each item, ``jobs`` at once; yields (label, result, seconds) as each ends."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def one(label, body):
        t = time.time()
        return label, work(label, body, timeout), time.time() - t

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for f in as_completed([pool.submit(one, k, v) for k, v in items.items()]):
            yield f.result()


def _section(device: str):
    from qlab.ext.triton.testing import run_sections

    def work(label, body, timeout):
        try:
            return run_sections({"s": body}, device, timeout)["s"]
        except Exception as e:  # subprocess.TimeoutExpired: a hung kernel
            return f"{type(e).__name__}: {e}"
    return work


def check_exact(device: str = "cuda", jobs: int = 1, timeout: float = 600, sections: dict | None = None) -> list[str]:
    """Each check section in its own subprocess, printed as it ends (a run cut short by a
    time limit still shows the sections that finished).  ``jobs`` > 1 runs that many
    sections at once: the checks are mostly kernel compiles, which are CPU work.
    Returns the names of the sections that failed."""
    if sections is None:
        from qlab.ext.triton.checks import ELEMENTWISE, INTRINSIC

        sections = {**ELEMENTWISE, **INTRINSIC}
    failed, t0 = [], time.time()
    for name, res, sec in _in_pool(jobs, sections, _section(device), timeout):
        print(f"exactness {name}: {'ok' if res == 'ok' else 'FAILED'}  ({sec:.0f} s, compiles included)")
        if res != "ok":
            failed.append(name)
            print(res[-6000:])
    print(f"{device} (Triton) == CPU (torch) bit for bit: {not failed}  ({time.time() - t0:.0f} s)")
    return failed


def triage(failed: list[str], device: str = "cuda", jobs: int = 1, timeout: float = 600, only=None,
           variants=None) -> dict[str, list[str]]:
    """Each failed section again with one switch back at its state before the changes made
    without a GPU (and with all of them): {section: labels of the variants that pass}."""
    if variants is None:
        from qlab.ext.triton.checks import variants
    items = {(name, label): body for name in failed for label, body in variants(name, only).items()}
    passing = {name: [] for name in failed}
    work = _section(device)
    for (name, label), res, sec in _in_pool(jobs, items, work, timeout):
        print(f"triage {name} with {label}: {'passes' if res == 'ok' else 'fails'}  ({sec:.0f} s)")
        if res == "ok":
            passing[name].append(label)
    for name, labels in passing.items():
        print(f"TRIAGE {name}: passes with " + ("; ".join(sorted(labels)) if labels else "none of the switches"))
    return passing


# --------------------------------------------------------------------------- rows
# Each bench has two parts: "goals" (the rows, run first) and "more" (other formats
# and each change's switch, optional: skipped past --budget).
_COPY_SEC = {}


def bench_elementwise(sz: dict, reps: int, part: str):
    import qlab
    from qlab.ext.triton import elementwise as ew

    n = sz["elem"]
    x = torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    qn, qs = qlab.FixedPoint(8, 4), qlab.FixedPoint(8, 4, "stochastic")
    if n not in _COPY_SEC:
        _COPY_SEC[n] = timed(lambda: y.copy_(x), reps)

    def cells(fn, **switch):
        with setting(ew, **switch):
            sec = timed(fn, reps)
        return [f"{sec * 1e3:.3f}", f"{2 * 4 * n / sec / 1e9:.0f}", f"{_COPY_SEC[n] / sec * 100:.0f}%"]

    t = Rows(f"elementwise, {n} float32 elements, read + write" + ("" if part == "goals" else " (more)"),
             ["op", "ms", "GB/s", "of copy"], optional=part != "goals")
    if part == "goals":
        t.add("device-to-device copy", lambda: cells(lambda: y.copy_(x)))
        t.add("torch.fake_quantize_per_tensor_affine",
              lambda: cells(lambda: torch.fake_quantize_per_tensor_affine(x, 1 / 16, 0, -128, 127)))
        t.add("qlab fixed(8,4,nearest)", lambda: cells(lambda: qn(x)))
        t.add("qlab fixed(8,4,stochastic)", lambda: cells(lambda: qs(x)))
        return
    # one Philox call per element (the default before 2026-11-28)
    t.add("qlab fixed(8,4,stochastic), PHILOX4 off", lambda: cells(lambda: qs(x), PHILOX4=False))
    # the intrinsic kernels' operand pass: int32 grid integers and max |k| (4 + 4 bytes per element)
    t.add("qlab grid integers fixed(16,8) + max|k| (intrinsic operands)",
          lambda: cells(lambda: ew.fixed_grid_ints(x, qlab.FixedPoint(16, 8))))


def naive_loop(kx, kw, q):
    """The naive per-k torch loop: one vectorised step per k (product, round, clamp, add, clamp)."""
    M, K = kx.shape
    s = torch.zeros(M, kw.shape[1], dtype=torch.int64, device=kx.device)
    half = 1 << (q.F - 1)
    for k in range(K):
        p = kx[:, k, None] * kw[None, k, :]
        p = (p - (p < 0).to(p.dtype) + half) >> q.F  # nearest, ties away
        s = (s + p.clamp_(q.min_int, q.max_int)).clamp_(q.min_int, q.max_int)
    return s


def _rate(macs: float, fn, reps: int, unit: str = "QMAC/s", module=None, **switch):
    """[ms, rate] of fn() with ``module``'s switches set."""
    if module is None:
        from qlab.ext.triton import intrinsic as module
    with setting(module, **switch):
        sec = timed(fn, reps)
    return [f"{sec * 1e3:.3f}", fmt_rate(macs / sec, unit)]


def bench_linear(sz: dict, reps: int, part: str):
    import qlab
    from qlab.core.intrinsic import _grid_int, intrinsic_linear

    spec, q, sizes = "fixed(16,8)", qlab.FixedPoint(16, 8), sz["linear"]
    t = Rows("intrinsic linear" + ("" if part == "goals" else " (more)"), ["op", "size", "ms", "rate"],
             optional=part != "goals")

    def lin(n, s=spec, r=reps, scale=1.0, wscale=1.0, **switch):
        x, w = torch.randn(n, n, device=DEV) * scale, torch.randn(n, n, device=DEV) * wscale
        return [f"{n}^3", *_rate(n ** 3, lambda: intrinsic_linear(x, w, None, spec=s), r, **switch)]

    if part == "goals":
        for n in sizes:
            t.add(f"qlab intrinsic linear {spec} sequential (Triton)", lambda: lin(n))
        n = sizes[0]
        x, w = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
        kx, kw = _grid_int(x, q), _grid_int(w.t().contiguous(), q)
        t.add("naive per-k torch loop (int64)", lambda: [f"{n}^3", *_rate(n ** 3, lambda: naive_loop(kx, kw, q),
                                                                            max(1, reps // 5))])

        def torch_path():
            os.environ["QLAB_BACKEND"] = "torch"
            try:
                return [f"{n}^3", *_rate(n ** 3, lambda: intrinsic_linear(x, w, None, spec=spec), max(1, reps // 5))]
            finally:
                os.environ.pop("QLAB_BACKEND")
        t.add("qlab torch reference path on CUDA", torch_path)

        def cublas():
            n = sizes[-1]
            a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
            tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return [f"{n}^3", *_rate(n ** 3, lambda: a @ b, reps, "MAC/s")]
            finally:
                torch.backends.cuda.matmul.allow_tf32 = tf32
        t.add("cuBLAS fp32 matmul (TF32 off)", cublas)
        return
    n, r2 = sizes[-1], max(1, reps // 2)
    # the float formats (w small enough that fp16 sums stay finite); ties-away takes the
    # general rounding code, nearest-even (fp16's default) the short one
    # and fp16 / bf16 / fp8 products summed in float32 (A = binary32, as matrix units do)
    a32 = ["intrinsic(fp16,acc=float(8,23,even))", "intrinsic(bf16,acc=float(8,23,even))",
           "intrinsic(fp8e4m3,acc=float(8,23,even))", "intrinsic(float(8,23))"]  # the last: float32 in k order
    conv_a = "intrinsic(fp8e4m3,acc=fp16)"  # sequential fp16 sums rounded by the hardware's conversion
    for fspec in ["fp16", "intrinsic(float(5,10,nearest),acc=float(5,10,nearest))",
                  "intrinsic(fp8e4m3,acc=fp16,accumulate=final)", "bf16", "fp8e4m3", "fp8e5m2", *a32, conv_a]:
        t.add(f"qlab intrinsic linear {fspec} (Triton float kernel)", lambda: lin(n, fspec, r2, wscale=0.05))
    # fixed(8,4) on N(0, 1) operands: products beyond Q's range, so the clamping loop runs
    # (with the 64-bit multiply step for W <= 15, and without it)
    for label, switch in [("", {}), (", WIDE_STEP off", dict(WIDE_STEP=False)),
                          (", one launch, 128x32 tiles (WIDE_TILE None)", dict(WIDE_TILE=None))]:
        t.add(f"qlab intrinsic linear fixed(8,4), products saturate (clamping loop){label}",
              lambda: lin(n, "fixed(8,4)", **switch))
    # stochastic products (the deck's rounding experiment, intrinsic): Philox draws per MAC
    for label, switch in [("", {}), (", one Philox call per product (SHARE_DRAWS off)", dict(SHARE_DRAWS=False))]:
        t.add(f"qlab intrinsic linear fixed(16,8,stochastic) sequential{label}",
              lambda: lin(n, "fixed(16,8,stochastic)", r2, **switch))
    # each change made without a GPU, switched off (or forced), beside the default rows above
    for label, switch, ns in [("without the one-multiply-add step (WIDE_STEP off)", dict(WIDE_STEP=False), sizes),
                              ("every product clamped (SKIP_PRODUCT_CLAMP off)", dict(SKIP_PRODUCT_CLAMP=False), sizes),
                              ("128x32 tiles only (64 programs at 512^3)", dict(INT32_TILES=((128, 32),)), sizes[:1]),
                              ("one launch, 128x32 tiles (WIDE_TILE None)", dict(WIDE_TILE=None), sizes[-1:]),
                              ("wide tile 64x128, 4 warps (WIDE_TILE (64, 128, 4))",
                               dict(WIDE_TILE=(64, 128, 4)), sizes[-1:]),
                              ("4 warps in every tile (8 outputs per thread at 32x32; NUM_WARPS 4)",
                               dict(NUM_WARPS=4), sizes[:1]),
                              ("64-bit step as one mad.wide.s32 (WIDE_ASM 1)", dict(WIDE_ASM=1), sizes),
                              ("every sum clamped, no runs (SKIP_SUM_CLAMP off)", dict(SKIP_SUM_CLAMP=False), sizes),
                              ("sum pair rebuilt for every MAC (PAIR_SUM off)", dict(PAIR_SUM=False), sizes),
                              ("operands of k + 1 always prefetched (PREFETCH True)", dict(PREFETCH=True), sizes),
                              ("operands never prefetched (PREFETCH False)", dict(PREFETCH=False), sizes),
                              ("operands to grid integers by torch ops (FUSED_GRID_INTS off)",
                               dict(FUSED_GRID_INTS=False), sizes)]:
        for m in ns:
            t.add(f"  {spec}, {label}", lambda: lin(m, **switch))
    # weights at a trained layer's scale, N(0, 1/K): the sums provably stay in range for long
    # stretches, which run without clamps (N(0, 1) weights allow only a few k at a time)
    for label, switch in [("", {}), (", SKIP_SUM_CLAMP off", dict(SKIP_SUM_CLAMP=False)),
                          (", PAIR_SUM off", dict(PAIR_SUM=False)), (", WIDE_TILE None", dict(WIDE_TILE=None))]:
        t.add(f"  {spec}, weights N(0, 1/K): runs without clamps{label}",
              lambda: lin(n, wscale=n ** -0.5, **switch))
    for fspec in ["fp16", "bf16"]:  # through the general float code, as before 2026-11-28
        t.add(f"  {fspec}, native 16-bit arithmetic off (FLOAT_HW16 off)",
              lambda: lin(n, fspec, r2, wscale=0.05, FLOAT_HW16=False))
    for fspec in ["fp16", "bf16", a32[0], a32[3]]:  # every MAC clamped, as before 2026-11-30
        t.add(f"  {fspec}, clamps at every MAC (HW16_RETRY off)", lambda: lin(n, fspec, r2, wscale=0.05, HW16_RETRY=False))
    # fp8 through the general float code (bit arithmetic, int64 final sums)
    for fspec in ["intrinsic(fp8e4m3,acc=fp16,accumulate=final)", "fp8e4m3"]:
        t.add(f"  {fspec}, general float code (FLOAT_FP8 off)", lambda: lin(n, fspec, r2, wscale=0.05, FLOAT_FP8=False))
    for fspec in [*a32[:2], conv_a]:
        t.add(f"  {fspec}, rounded by bit code (FLOAT_QHW off)",
              lambda: lin(n, fspec, r2, wscale=0.05, FLOAT_QHW=False))
    # products beyond fp16's 65504 in every tile: both loops run (the worst case)
    t.add("  fp16, every tile overflows (unclamped loop, then the clamped one)",
          lambda: lin(n, "fp16", r2, scale=400.0, wscale=20.0))


def bench_conv(sz: dict, reps: int, part: str):
    from qlab.core.intrinsic import intrinsic_conv, intrinsic_linear

    spec = "fixed(16,8)"
    B, C, S = sz["conv"]
    x = torch.randn(B, C, S, S, device=DEV)
    w = torch.randn(C, C, 3, 3, device=DEV) * 0.05
    macs = B * S * S * C * C * 9
    t = Rows(f"ResNet-50 layer: batch {B}, {C}->{C}, {S}x{S}, 3x3, pad 1 ({macs / 1e9:.2f} GMAC)"
             + ("" if part == "goals" else " (more)"), ["op", "ms", "rate"], optional=part != "goals")

    def conv(**switch):
        return _rate(macs, lambda: intrinsic_conv(x, w, None, padding=1, spec=spec), reps, **switch)

    if part == "goals":
        secs = {}

        def row(key, fn, unit="QMAC/s"):
            secs[key] = timed(fn, reps)
            ratio = f"{secs['conv'] / secs[key]:.2f}" if key != "conv" and "conv" in secs else ""
            return [f"{secs[key] * 1e3:.3f}", fmt_rate(macs / secs[key], unit), ratio]

        t.header = ["op", "ms", "rate", "conv time / this"]
        t.add(f"qlab intrinsic conv {spec} (implicit GEMM)", lambda: row("conv", lambda: intrinsic_conv(
            x, w, None, padding=1, spec=spec)))
        xl = torch.randn(B * S * S, C * 9, device=DEV)
        wl = torch.randn(C, C * 9, device=DEV) * 0.05
        t.add(f"qlab intrinsic linear {spec}, same GEMM ({B * S * S}x{C * 9}x{C})",
              lambda: row("linear", lambda: intrinsic_linear(xl, wl, None, spec=spec)))
        t.add("float conv2d (cuDNN)", lambda: row("cudnn", lambda: torch.nn.functional.conv2d(x, w, None, padding=1),
                                                  "MAC/s"))
        return
    t.add("  same, without the one-multiply-add step (WIDE_STEP off)", lambda: conv(WIDE_STEP=False))
    t.add("  same, 64-bit step as one mad.wide.s32 (WIDE_ASM 1)", lambda: conv(WIDE_ASM=1))
    t.add("  same, every sum clamped, no runs (SKIP_SUM_CLAMP off)", lambda: conv(SKIP_SUM_CLAMP=False))
    t.add("  same, sum pair rebuilt for every MAC (PAIR_SUM off)", lambda: conv(PAIR_SUM=False))
    t.add("  same, operands of k + 1 always prefetched (PREFETCH True)", lambda: conv(PREFETCH=True))
    t.add("  same, operands never prefetched (PREFETCH False)", lambda: conv(PREFETCH=False))


def resnet50():
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None), "torchvision resnet50"
    except ImportError:
        return _ResNet50(), "ResNet-50 (torchvision layout, defined in bench/gpu_check.py)"


class _Bottleneck(torch.nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        nn = torch.nn
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class _ResNet50(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            mods = []
            for i in range(blocks):
                mods.append(_Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bench_resnet(sz: dict, reps: int, part: str):
    import qlab
    from qlab.ext.triton import intrinsic as ti

    model, name = resnet50()
    model = model.to(DEV).eval()
    B, S = sz["resnet"]
    x = torch.randn(B, 3, S, S, device=DEV)

    def plan(spec):
        return qlab.Plan(intrinsic={"type:Conv2d": spec, "type:Linear": spec})

    def run(p=None, r=max(1, reps // 2), **switch):
        with setting(ti, **switch), (qlab.quantize(model, p) if p else contextlib.nullcontext()):
            sec = timed(lambda: model(x), r)
        return [f"{sec * 1e3:.1f}", f"{B / sec:.0f}"]

    t = Rows(f"{name}, random weights, batch {B}, {S}x{S}" + ("" if part == "goals" else " (more)"),
             ["model", "ms / batch", "images/s"], optional=part != "goals")
    fixed = plan("fixed(16,8)")
    if DEV == "cpu":  # dry run: the interpreter is far too slow for 53 layers; the C kernel runs them
        os.environ["QLAB_BACKEND"] = "cpu"
    try:
        with torch.no_grad():
            if part == "goals":
                t.add("float32 (cuDNN)", lambda: run(r=reps))
                t.add("every conv and fc intrinsic fixed(16,8), sequential (Triton)", lambda: run(fixed))
                return
            for spec in ("fp16", "fp8e4m3"):
                t.add(f"every conv and fc intrinsic {spec}, sequential (Triton float kernel)", lambda: run(plan(spec)))
            for label, switch in [("without the one-multiply-add step (WIDE_STEP off)", dict(WIDE_STEP=False)),
                                  ("every product clamped (SKIP_PRODUCT_CLAMP off)", dict(SKIP_PRODUCT_CLAMP=False)),
                                  ("operands to grid integers by torch ops (FUSED_GRID_INTS off)",
                                   dict(FUSED_GRID_INTS=False)),
                                  ("operands of k + 1 always prefetched (PREFETCH True)", dict(PREFETCH=True)),
                                  ("operands never prefetched (PREFETCH False)", dict(PREFETCH=False)),
                                  ("64-bit step as one mad.wide.s32 (WIDE_ASM 1)", dict(WIDE_ASM=1)),
                                  ("every sum clamped, no runs (SKIP_SUM_CLAMP off)", dict(SKIP_SUM_CLAMP=False)),
                                  ("sum pair rebuilt for every MAC (PAIR_SUM off)", dict(PAIR_SUM=False))]:
                t.add(f"  fixed(16,8), {label}", lambda: run(fixed, **switch))
    finally:
        os.environ.pop("QLAB_BACKEND", None)


def main(argv=None) -> int:
    global DEV, BUDGET
    a = parse_args(argv)
    BUDGET = a.budget
    sys.stdout.reconfigure(line_buffering=True)  # every line out at once: a cut-short run keeps what it printed
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check or time (--dry-run checks the script on the CPU)")
        return 0
    import triton

    import qlab  # noqa: F401  (registers the Triton backend)

    if a.dry_run:
        from qlab.ext import backends as xb

        assert xb.register_triton("cpu")
        print(f"DRY RUN (CPU, Triton interpreter; numbers mean nothing), triton {triton.__version__}")
    else:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    fns = {"elementwise": bench_elementwise, "linear": bench_linear, "conv": bench_conv, "resnet": bench_resnet}
    sz = SIZES["dry" if a.dry_run else "quick" if a.quick else "full"]
    reps = 1 if a.dry_run else a.reps
    device = "interpreter" if a.dry_run else "cuda"

    def rows(part):
        for r in a.only:
            t = time.time()
            try:
                fns[r](sz, reps, part)
            except Exception as e:  # set-up of a bench (a model, a tensor) failed: the others still run
                print(f"{r} ({part}): ERROR {type(e).__name__}: {e}")
            print(f"({r}, {part}: {time.time() - t:.0f} s; {time.time() - START:.0f} s in all)", flush=True)

    # the rows first, then the exactness checks (and triage of any failure), then
    # the optional rows: a run stopped by its time limit loses the least important part
    rows("goals")
    failed = []
    if not a.skip_checks:
        sections = None
        if a.checks:
            from qlab.ext.triton.checks import ELEMENTWISE, INTRINSIC

            known = {**ELEMENTWISE, **INTRINSIC}
            names = [c.strip() for c in a.checks.split(",") if c.strip()]
            unknown = [c for c in names if c not in known]
            if unknown:
                raise SystemExit(f"unknown check sections {unknown}; choose from {sorted(known)}")
            sections = {c: known[c] for c in names}
        failed = check_exact(device, a.jobs, a.check_timeout, sections)
        if failed and a.triage:
            triage(failed, device, a.jobs, a.check_timeout)
    rows("more")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
