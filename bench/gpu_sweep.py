"""Tile-size sweep and per-kernel profile of the fixed-point intrinsic kernel on a GPU
(numbers for tuning; bench/gpu_check.py gives the issue's table).

    PYTHONPATH=. python bench/gpu_sweep.py            # CUDA
    PYTHONPATH=. python bench/gpu_sweep.py --dry-run  # CPU, interpreter, tiny sizes

First the 512^3 linear with nine small tiles, each with and without prefetch (they set
intrinsic.PREFETCH_PROGRAMS_PER_SM and the small-launch tiles); then, for the linear at
2048^3 and the ResNet-50 conv layer (batch 32, 256->256, 14x14, 3x3), each (BLOCK_M,
BLOCK_N, num_warps) in QMAC/s; then a profile of one forward of ResNet-50 with every conv
and fc intrinsic fixed(16,8), the kernels that take the most device time.  Rows print as
they are measured (gpu_check.Rows), so a run cut short keeps them.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--parts", default="small,big,profile",
                    help="comma-separated: small (512^3 tiles), big (2048^3 and conv tiles), profile (ResNet-50)")
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    if parts - {"small", "big", "profile"}:
        ap.error(f"unknown parts {sorted(parts - {'small', 'big', 'profile'})}")
    sys.stdout.reconfigure(line_buffering=True)
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import gpu_check as gc  # noqa: E402  (bench/ is on sys.path when run as a script)

    import qlab
    from qlab.core.intrinsic import intrinsic_conv, intrinsic_linear
    from qlab.ext.triton import intrinsic as ti

    dev = "cpu" if a.dry_run else "cuda"
    gc.DEV = dev
    if a.dry_run:
        from qlab.ext import backends as xb

        assert xb.register_triton("cpu")
    n, (B, C, S) = (16, (1, 4, 5)) if a.dry_run else (2048, (32, 256, 14))
    reps = 1 if a.dry_run else 10
    x, w = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    xc, wc = torch.randn(B, C, S, S, device=dev), torch.randn(C, C, 3, 3, device=dev) * 0.05
    cmacs = B * S * S * C * C * 9
    configs = [(64, 64, 4), (64, 64, 8), (128, 64, 4), (128, 64, 8), (64, 128, 4), (64, 128, 8), (128, 128, 8),
               (32, 64, 4), (128, 32, 4)]
    if a.dry_run:
        configs = configs[:2]
    def tile(bm, bn, nw):
        return gc.setting(ti, _block=lambda *a, **k: (bm, bn), NUM_WARPS=nw, WIDE_TILE=None)

    # small GEMMs first (they set intrinsic.PREFETCH_PROGRAMS_PER_SM and the small tiles):
    # 512^3 with 128x32 tiles is 64 programs on 132 SMs (the H200 gave 0.27 T QMAC/s there
    # vs 2.05 T at 2048^3); smaller tiles fill the chip
    m = 16 if a.dry_run else 512
    xs, ws = torch.randn(m, m, device=dev), torch.randn(m, m, device=dev)
    # (64, 32, 2) and (32, 32, 1) keep 32 outputs per thread, as 128x32 with 4 warps does:
    # the loop stages operands in shared memory (6.0 sm_90 instructions per MAC in range,
    # bench/sass_count.py); 8 or 16 per thread load each operand from global (10-11)
    small = [(128, 32, 4), (64, 32, 4), (64, 32, 2), (32, 32, 4), (32, 32, 2), (32, 32, 1), (64, 16, 2),
             (32, 16, 1), (16, 32, 1)]
    # each with the operands of k + 1 prefetched (intrinsic.PREFETCH; "auto" does below
    # 4 programs per SM) and without; rows print as they are measured (gpu_check.Rows)
    t = gc.Rows(f"fixed(16,8) sequential, linear {m}^3: tile sweep",
                ["tile, warps", "programs", "prefetch ms", "rate", "no prefetch ms", "rate"])

    def small_row(bm, bn, nw):
        sl = {}
        for on in (True, False):
            with tile(bm, bn, nw), gc.setting(ti, PREFETCH=on):
                sl[on] = gc.timed(lambda: intrinsic_linear(xs, ws, None, spec="fixed(16,8)"), reps)
        return [-(-m // bm) * -(-m // bn), f"{sl[True] * 1e3:.3f}", gc.fmt_rate(m ** 3 / sl[True], "QMAC/s"),
                f"{sl[False] * 1e3:.3f}", gc.fmt_rate(m ** 3 / sl[False], "QMAC/s")]
    for bm, bn, nw in (small[:2] if a.dry_run else small) if "small" in parts else []:
        t.add(f"{bm}x{bn}, {nw} warps", lambda: small_row(bm, bn, nw))

    t = gc.Rows(f"fixed(16,8) sequential: tile sweep (linear {n}^3; conv batch {B}, {C}->{C}, {S}x{S}, 3x3)",
                ["tile, warps", "linear ms", "linear rate", "conv ms", "conv rate"])

    def big_row(bm, bn, nw):
        with tile(bm, bn, nw):
            sl = gc.timed(lambda: intrinsic_linear(x, w, None, spec="fixed(16,8)"), reps)
            sc = gc.timed(lambda: intrinsic_conv(xc, wc, None, padding=1, spec="fixed(16,8)"), reps)
        return [f"{sl * 1e3:.3f}", gc.fmt_rate(n ** 3 / sl, "QMAC/s"), f"{sc * 1e3:.3f}", gc.fmt_rate(cmacs / sc, "QMAC/s")]
    for bm, bn, nw in configs if "big" in parts else []:
        t.add(f"{bm}x{bn}, {nw} warps", lambda: big_row(bm, bn, nw))

    if "profile" not in parts:
        return 0
    model, name = gc.resnet50()
    model = model.to(dev).eval()
    bs, side = (1, 32) if a.dry_run else (64, 224)
    xi = torch.randn(bs, 3, side, side, device=dev)
    plan = qlab.Plan(intrinsic={"type:Conv2d": "fixed(16,8)", "type:Linear": "fixed(16,8)"})
    if a.dry_run:
        os.environ["QLAB_BACKEND"] = "cpu"
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev == "cuda" else [])
    with torch.no_grad(), qlab.quantize(model, plan):
        model(xi)  # compiles
        if dev == "cuda":
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=acts) as prof:
            model(xi)
            if dev == "cuda":
                torch.cuda.synchronize()
    key = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
    print(f"\n{name}, batch {bs}, every conv and fc intrinsic fixed(16,8): kernels by device time")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
