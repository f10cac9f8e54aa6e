"""One script for a lent GPU (issue 3): first the CUDA exactness checks (the same checks
as tests/ext/test_triton_*.py: CPU torch path vs CUDA Triton path, bit for bit), then
the speed tables.

    PYTHONPATH=. python bench/gpu_check.py [--quick] [--skip-checks] [--only ROWS] [--jobs N]
    PYTHONPATH=. python bench/gpu_check.py --dry-run   # CPU, Triton interpreter, tiny sizes

Every kernel variant compiles on first use (constexpr specialisations: the checks
compile at most about 370, counted under the interpreter as distinct constexpr and
argument-type signatures on 2026-11-30); with ``--jobs 8`` the checks took 92 s on an
H200 (2026-11-28, fewer variants then, compiles included) and the rows about a minute,
so checks and rows should fit one call of 10 minutes.  Output is line-buffered and the checks
print section by section, so a run stopped by a time limit still shows what finished.

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
``INT32_TILES`` (128x32 only), ``FLOAT_HW16``, ``HW16_RETRY`` (and fp16 where every tile
overflows), ``FLOAT_FP8``, ``SHARE_DRAWS``, ``PREFETCH`` (forced on and off; the default
"auto" prefetches small launches) and ``elementwise.PHILOX4``; also fixed(8,4) with
saturating products (the clamping loop), stochastic fixed(16,8), and the operand pass
(grid integers + max |k|) beside copy.
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
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--jobs", type=int, default=1, help="check sections run at once (each compiles its kernels)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per row")
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes (script check)")
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


def timed(fn, reps: int) -> float:
    """Seconds per call (CUDA events, one warm-up call; the wall clock in a dry run)."""
    fn()
    if DEV == "cpu":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps / 1e3


# --------------------------------------------------------------------------- exactness
def check_exact(device: str = "cuda", jobs: int = 1) -> bool:
    """Each check section in its own subprocess, printed as it ends (a run cut short by a
    time limit still shows the sections that finished).  ``jobs`` > 1 runs that many
    sections at once: the checks are mostly kernel compiles, which are CPU work."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from qlab.ext.triton.checks import ELEMENTWISE, INTRINSIC
    from qlab.ext.triton.testing import run_sections

    def one(name, body):
        t = time.time()
        return name, run_sections({name: body}, device)[name], time.time() - t

    ok = True
    t0 = time.time()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futs = [pool.submit(one, n, b) for n, b in {**ELEMENTWISE, **INTRINSIC}.items()]
        for f in as_completed(futs):
            name, res, sec = f.result()
            good = res == "ok"
            ok &= good
            print(f"exactness {name}: {'ok' if good else 'FAILED'}  ({sec:.0f} s, compiles included)")
            if not good:
                print(res)
    print(f"{device} (Triton) == CPU (torch) bit for bit: {ok}  ({time.time() - t0:.0f} s)")
    return ok


# --------------------------------------------------------------------------- rows
def bench_elementwise(sz: dict, reps: int):
    import qlab

    n = sz["elem"]
    x = torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    qn, qs = qlab.FixedPoint(8, 4), qlab.FixedPoint(8, 4, "stochastic")
    rows = [
        ("device-to-device copy", timed(lambda: y.copy_(x), reps)),
        ("torch.fake_quantize_per_tensor_affine", timed(lambda: torch.fake_quantize_per_tensor_affine(x, 1 / 16, 0, -128, 127), reps)),
        ("qlab fixed(8,4,nearest)", timed(lambda: qn(x), reps)),
        ("qlab fixed(8,4,stochastic)", timed(lambda: qs(x), reps)),
    ]
    from qlab.ext.triton import elementwise as ew

    with setting(ew, PHILOX4=False):  # one Philox call per element (the default before 2026-11-28)
        rows.append(("qlab fixed(8,4,stochastic), PHILOX4 off", timed(lambda: qs(x), reps)))
    # the intrinsic kernels' operand pass: int32 grid integers and max |k| (4 + 4 bytes per element)
    rows.append(("qlab grid integers fixed(16,8) + max|k| (intrinsic operands)",
                 timed(lambda: ew.fixed_grid_ints(x, qlab.FixedPoint(16, 8)), reps)))
    copy_bw = 2 * 4 * n / rows[0][1]
    out = [[name, f"{sec * 1e3:.3f}", f"{2 * 4 * n / sec / 1e9:.0f}", f"{2 * 4 * n / sec / copy_bw * 100:.0f}%"]
           for name, sec in rows]
    print(table(f"elementwise, {n} float32 elements, read + write", ["op", "ms", "GB/s", "of copy"], out))


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


def bench_linear(sz: dict, reps: int):
    from qlab.core.intrinsic import _grid_int, intrinsic_linear

    spec = "fixed(16,8)"
    import qlab

    q = qlab.FixedPoint(16, 8)
    rows = []
    sizes = sz["linear"]
    for n in sizes:
        x = torch.randn(n, n, device=DEV)
        w = torch.randn(n, n, device=DEV)
        sec = timed(lambda: intrinsic_linear(x, w, None, spec=spec), reps)
        rows.append([f"qlab intrinsic linear {spec} sequential (Triton)", f"{n}^3", f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
        if n == sizes[0]:
            kx, kw = _grid_int(x, q), _grid_int(w.t().contiguous(), q)
            sec = timed(lambda: naive_loop(kx, kw, q), max(1, reps // 5))
            rows.append(["naive per-k torch loop (int64)", f"{n}^3", f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
            os.environ["QLAB_BACKEND"] = "torch"
            try:
                sec = timed(lambda: intrinsic_linear(x, w, None, spec=spec), max(1, reps // 5))
            finally:
                os.environ.pop("QLAB_BACKEND")
            rows.append(["qlab torch reference path on CUDA", f"{n}^3", f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
    # the same kernel clamping every product (as before the in-range skip), for the ratio
    from qlab.ext.triton import intrinsic as ti

    for label, switch, ns in [("without the one-multiply-add step (WIDE_STEP off)", dict(WIDE_STEP=False), sizes),
                              ("every product clamped (SKIP_PRODUCT_CLAMP off)", dict(SKIP_PRODUCT_CLAMP=False), sizes),
                              ("128x32 tiles only (64 programs at 512^3)", dict(INT32_TILES=((128, 32),)), sizes[:1]),
                              ("4 warps in every tile (8 outputs per thread at 32x32; NUM_WARPS 4)",
                               dict(NUM_WARPS=4), sizes[:1]),
                              ("64-bit step as one mad.wide.s32 (WIDE_ASM 1)", dict(WIDE_ASM=1), sizes),
                              ("operands of k + 1 always prefetched (PREFETCH True)", dict(PREFETCH=True), sizes),
                              ("operands never prefetched (PREFETCH False)", dict(PREFETCH=False), sizes),
                              ("operands to grid integers by torch ops (FUSED_GRID_INTS off)",
                               dict(FUSED_GRID_INTS=False), sizes)]:
        with setting(ti, **switch):
            for n in ns:
                x, w = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
                sec = timed(lambda: intrinsic_linear(x, w, None, spec=spec), reps)
                rows.append([f"  same, {label}", f"{n}^3", f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
    # fixed(8,4) on N(0, 1) operands: products beyond Q's range, so the clamping loop runs
    # (with the 64-bit multiply step for W <= 15, and without it)
    n = sizes[-1]
    x, w = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
    for label, switch in [("", {}), (", WIDE_STEP off", dict(WIDE_STEP=False))]:
        with setting(ti, **switch):
            sec = timed(lambda: intrinsic_linear(x, w, None, spec="fixed(8,4)"), reps)
        rows.append([f"qlab intrinsic linear fixed(8,4), products saturate (clamping loop){label}", f"{n}^3",
                     f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
    # stochastic products (the deck's rounding experiment, intrinsic): Philox draws per MAC
    for label, switch in [("", {}), (", one Philox call per product (SHARE_DRAWS off)", dict(SHARE_DRAWS=False))]:
        with setting(ti, **switch):
            sec = timed(lambda: intrinsic_linear(x, w, None, spec="fixed(16,8,stochastic)"), max(1, reps // 2))
        rows.append([f"qlab intrinsic linear fixed(16,8,stochastic) sequential{label}", f"{n}^3",
                     f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "QMAC/s")])
    x, w = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV) * 0.05
    # ties-away takes the general rounding code; nearest-even (fp16's default) the short one
    for fspec in ["fp16", "intrinsic(float(5,10,nearest),acc=float(5,10,nearest))",
                  "intrinsic(fp8e4m3,acc=fp16,accumulate=final)", "bf16"]:
        sec = timed(lambda: intrinsic_linear(x, w, None, spec=fspec), max(1, reps // 2))
        rows.append([f"qlab intrinsic linear {fspec} (Triton float kernel)", f"{n}^3", f"{sec * 1e3:.3f}",
                     fmt_rate(n ** 3 / sec, "QMAC/s")])
    with setting(ti, FLOAT_HW16=False):  # fp16/bf16 through the general float code, as before 2026-11-28
        for fspec in ["fp16", "bf16"]:
            sec = timed(lambda: intrinsic_linear(x, w, None, spec=fspec), max(1, reps // 2))
            rows.append([f"  {fspec}, native 16-bit arithmetic off (FLOAT_HW16 off)", f"{n}^3", f"{sec * 1e3:.3f}",
                         fmt_rate(n ** 3 / sec, "QMAC/s")])
    with setting(ti, HW16_RETRY=False):  # every MAC clamped, as before 2026-11-30
        for fspec in ["fp16", "bf16"]:
            sec = timed(lambda: intrinsic_linear(x, w, None, spec=fspec), max(1, reps // 2))
            rows.append([f"  {fspec}, clamps at every MAC (HW16_RETRY off)", f"{n}^3", f"{sec * 1e3:.3f}",
                         fmt_rate(n ** 3 / sec, "QMAC/s")])
    for fspec in ["fp8e4m3", "fp8e5m2"]:  # sequential, Q = A: the hardware's fp8 conversions
        sec = timed(lambda: intrinsic_linear(x, w, None, spec=fspec), max(1, reps // 2))
        rows.append([f"qlab intrinsic linear {fspec} (Triton float kernel)", f"{n}^3", f"{sec * 1e3:.3f}",
                     fmt_rate(n ** 3 / sec, "QMAC/s")])
    with setting(ti, FLOAT_FP8=False):  # fp8 through the general float code (bit arithmetic, int64 final sums)
        for fspec in ["intrinsic(fp8e4m3,acc=fp16,accumulate=final)", "fp8e4m3"]:
            sec = timed(lambda: intrinsic_linear(x, w, None, spec=fspec), max(1, reps // 2))
            rows.append([f"  {fspec}, general float code (FLOAT_FP8 off)", f"{n}^3", f"{sec * 1e3:.3f}",
                         fmt_rate(n ** 3 / sec, "QMAC/s")])
    xo = x * 400.0  # products beyond fp16's 65504 in every tile: both loops run (the worst case)
    sec = timed(lambda: intrinsic_linear(xo, w * 400.0, None, spec="fp16"), max(1, reps // 2))
    rows.append(["  fp16, every tile overflows (unclamped loop, then the clamped one)", f"{n}^3", f"{sec * 1e3:.3f}",
                 fmt_rate(n ** 3 / sec, "QMAC/s")])
    a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        sec = timed(lambda: a @ b, reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    rows.append(["cuBLAS fp32 matmul (TF32 off)", f"{n}^3", f"{sec * 1e3:.3f}", fmt_rate(n ** 3 / sec, "MAC/s")])
    print(table("intrinsic linear", ["op", "size", "ms", "rate"], rows))


def bench_conv(sz: dict, reps: int):
    from qlab.core.intrinsic import intrinsic_conv, intrinsic_linear

    spec = "fixed(16,8)"
    B, C, S = sz["conv"]
    x = torch.randn(B, C, S, S, device=DEV)
    w = torch.randn(C, C, 3, 3, device=DEV) * 0.05
    macs = B * S * S * C * C * 9
    sec_c = timed(lambda: intrinsic_conv(x, w, None, padding=1, spec=spec), reps)
    xl = torch.randn(B * S * S, C * 9, device=DEV)
    wl = torch.randn(C, C * 9, device=DEV) * 0.05
    sec_l = timed(lambda: intrinsic_linear(xl, wl, None, spec=spec), reps)
    sec_f = timed(lambda: torch.nn.functional.conv2d(x, w, None, padding=1), reps)
    from qlab.ext.triton import intrinsic as ti

    with setting(ti, WIDE_STEP=False):
        sec_w = timed(lambda: intrinsic_conv(x, w, None, padding=1, spec=spec), reps)
    with setting(ti, WIDE_ASM=1):
        sec_a = timed(lambda: intrinsic_conv(x, w, None, padding=1, spec=spec), reps)
    sec_p = {}
    for on in (True, False):
        with setting(ti, PREFETCH=on):
            sec_p[on] = timed(lambda: intrinsic_conv(x, w, None, padding=1, spec=spec), reps)
    rows = [
        [f"qlab intrinsic conv {spec} (implicit GEMM)", f"{sec_c * 1e3:.3f}", fmt_rate(macs / sec_c, "QMAC/s"), f"{sec_c / sec_l:.2f}"],
        ["  same, without the one-multiply-add step (WIDE_STEP off)", f"{sec_w * 1e3:.3f}", fmt_rate(macs / sec_w, "QMAC/s"), ""],
        ["  same, 64-bit step as one mad.wide.s32 (WIDE_ASM 1)", f"{sec_a * 1e3:.3f}", fmt_rate(macs / sec_a, "QMAC/s"), ""],
        ["  same, operands of k + 1 always prefetched (PREFETCH True)", f"{sec_p[True] * 1e3:.3f}",
         fmt_rate(macs / sec_p[True], "QMAC/s"), ""],
        ["  same, operands never prefetched (PREFETCH False)", f"{sec_p[False] * 1e3:.3f}",
         fmt_rate(macs / sec_p[False], "QMAC/s"), ""],
        [f"qlab intrinsic linear {spec}, same GEMM ({B * S * S}x{C * 9}x{C})", f"{sec_l * 1e3:.3f}", fmt_rate(macs / sec_l, "QMAC/s"), "1.00"],
        ["float conv2d (cuDNN)", f"{sec_f * 1e3:.3f}", fmt_rate(macs / sec_f, "MAC/s"), ""],
    ]
    print(table(f"ResNet-50 layer: batch {B}, {C}->{C}, {S}x{S}, 3x3, pad 1 ({macs / 1e9:.2f} GMAC)",
                ["op", "ms", "rate", "time / linear"], rows))


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


def bench_resnet(sz: dict, reps: int):
    import qlab

    model, name = resnet50()
    model = model.to(DEV).eval()
    B, S = sz["resnet"]
    x = torch.randn(B, 3, S, S, device=DEV)
    plan = qlab.Plan(intrinsic={"type:Conv2d": "fixed(16,8)", "type:Linear": "fixed(16,8)"})
    plan16 = qlab.Plan(intrinsic={"type:Conv2d": "fp16", "type:Linear": "fp16"})
    plan8 = qlab.Plan(intrinsic={"type:Conv2d": "fp8e4m3", "type:Linear": "fp8e4m3"})
    if DEV == "cpu":  # dry run: the interpreter is far too slow for 53 layers; the C kernel runs them
        os.environ["QLAB_BACKEND"] = "cpu"
    try:
        with torch.no_grad():
            sec_f = timed(lambda: model(x), reps)
            with qlab.quantize(model, plan):
                sec_q = timed(lambda: model(x), max(1, reps // 2))
            with qlab.quantize(model, plan16):
                sec_h = timed(lambda: model(x), max(1, reps // 2))
            with qlab.quantize(model, plan8):
                sec_8 = timed(lambda: model(x), max(1, reps // 2))
            from qlab.ext.triton import intrinsic as ti

            with setting(ti, SKIP_PRODUCT_CLAMP=False), qlab.quantize(model, plan):
                sec_c = timed(lambda: model(x), max(1, reps // 2))
            with setting(ti, WIDE_STEP=False), qlab.quantize(model, plan):
                sec_w = timed(lambda: model(x), max(1, reps // 2))
            with setting(ti, FUSED_GRID_INTS=False), qlab.quantize(model, plan):
                sec_g = timed(lambda: model(x), max(1, reps // 2))
            sec_p = {}
            for on in (True, False):
                with setting(ti, PREFETCH=on), qlab.quantize(model, plan):
                    sec_p[on] = timed(lambda: model(x), max(1, reps // 2))
    finally:
        os.environ.pop("QLAB_BACKEND", None)
    rows = [
        ["float32 (cuDNN)", f"{sec_f * 1e3:.1f}", f"{B / sec_f:.0f}"],
        ["every conv and fc intrinsic fixed(16,8), sequential (Triton)", f"{sec_q * 1e3:.1f}", f"{B / sec_q:.0f}"],
        ["  same, without the one-multiply-add step (WIDE_STEP off)", f"{sec_w * 1e3:.1f}", f"{B / sec_w:.0f}"],
        ["  same, every product clamped (SKIP_PRODUCT_CLAMP off)", f"{sec_c * 1e3:.1f}", f"{B / sec_c:.0f}"],
        ["  same, operands to grid integers by torch ops (FUSED_GRID_INTS off)", f"{sec_g * 1e3:.1f}", f"{B / sec_g:.0f}"],
        ["  same, operands of k + 1 always prefetched (PREFETCH True)", f"{sec_p[True] * 1e3:.1f}", f"{B / sec_p[True]:.0f}"],
        ["  same, operands never prefetched (PREFETCH False)", f"{sec_p[False] * 1e3:.1f}", f"{B / sec_p[False]:.0f}"],
        ["every conv and fc intrinsic fp16, sequential (Triton float kernel)", f"{sec_h * 1e3:.1f}", f"{B / sec_h:.0f}"],
        ["every conv and fc intrinsic fp8e4m3, sequential (Triton float kernel)", f"{sec_8 * 1e3:.1f}", f"{B / sec_8:.0f}"],
    ]
    print(table(f"{name}, random weights, batch {B}, {S}x{S}", ["model", "ms / batch", "images/s"], rows))


def main(argv=None) -> int:
    global DEV
    a = parse_args(argv)
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
              f"{time.strftime('%Y-%m-%d')}")
    good = True
    if not a.skip_checks:
        good = check_exact("interpreter" if a.dry_run else "cuda", a.jobs)
    fns = {"elementwise": bench_elementwise, "linear": bench_linear, "conv": bench_conv, "resnet": bench_resnet}
    sz = SIZES["dry" if a.dry_run else "quick" if a.quick else "full"]
    for r in a.only:
        t = time.time()
        fns[r](sz, 1 if a.dry_run else a.reps)
        print(f"({r}: {time.time() - t:.0f} s)", flush=True)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
