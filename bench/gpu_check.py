"""One script for a lent GPU (issue 3): bit-exactness of the CUDA Triton path against the CPU
torch reference, then a bandwidth table.  Run: PYTHONPATH=. python bench/gpu_check.py [--quick]

Intrinsic linear/conv kernels and the ResNet-50 rows are still owed (not yet written).
"""
import argparse
import math
import sys

import torch

import qlab


def check_exact() -> bool:
    torch.manual_seed(0)
    specials = [0.0, -0.0, math.nan, math.inf, -math.inf, 0.49999997, -0.49999997, 1e-40, -1e-40]
    x = torch.cat([torch.randn(1 << 20) * 20, torch.tensor(specials), (torch.arange(-1000, 1000) + 0.5) / 16])
    ok = True
    for W, F in [(8, 4), (4, 0), (1, 0), (16, 8), (24, 10), (8, -2), (6, 20)]:
        for m in ["nearest", "even", "down", "up", "zero"]:
            q = qlab.FixedPoint(W, F, m)
            a = q(x)
            b = q(x.cuda()).cpu()
            same = torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5)) and torch.equal(torch.signbit(a), torch.signbit(b))
            ok &= same
            if not same:
                print("MISMATCH", q)
    print("elementwise fixed, CUDA (Triton) == CPU (torch) bit for bit:", ok)
    return ok


def bench(quick: bool):
    n = 1 << (24 if quick else 28)
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)

    def t(fn, reps=10):
        fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / reps / 1e3

    rows = [
        ("device-to-device copy", t(lambda: y.copy_(x))),
        ("torch.fake_quantize_per_tensor_affine", t(lambda: torch.fake_quantize_per_tensor_affine(x, 1 / 16, 0, -128, 127))),
        ("qlab fixed(8,4,nearest)", t(lambda: qlab.FixedPoint(8, 4)(x))),
    ]
    print(f"\n{torch.cuda.get_device_name()}, {n} float32 elements, read + write")
    print(f"| op | ms | GB/s |\n|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:.3f} | {2 * 4 * n / sec / 1e9:.0f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        sys.exit(0)
    good = check_exact()
    bench(a.quick)
    sys.exit(0 if good else 1)
