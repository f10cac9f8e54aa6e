"""CPU benchmark of intrinsic fixed-point arithmetic (issue 2).

Usage:  PYTHONPATH=. python bench/intrinsic_cpu.py [--quick]

Prints one table: qlab intrinsic Linear vs the naive per-k torch loop vs fp32,
a saturating case, and an intrinsic LeNet-5 forward over random images.
"""
import argparse
import platform
import time

import torch

import qlab
from qlab.ext.zoo import build


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def naive_loop(x, w, frac, total):
    """The per-k loop from the issue: a, b are fixed(total,frac) grid integers as float32."""
    M, K = x.shape
    N = w.shape[0]
    lo, hi = -2.0 ** (total - 1), 2.0 ** (total - 1) - 1
    scale = 2.0 ** frac
    a = torch.clamp(torch.round(x * scale), lo, hi)
    b = torch.clamp(torch.round(w.t() * scale), lo, hi) * 2.0 ** -frac  # prescaled by 2**-frac
    s = torch.zeros(M, N)
    for k in range(K):
        s = torch.clamp(s + torch.round(a[:, k, None] * b[None, k, :]), lo, hi)
    return s / scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    n = 64 if args.quick else 256
    repeats = 2 if args.quick else 5
    images, batch = (200, 100) if args.quick else (10_000, 1000)
    M = K = N = n
    macs = M * K * N
    rows = []

    # (a)-(c): no saturation, fixed(16,8)
    x = torch.randn(M, K)
    w = torch.randn(N, K) * 0.1
    t_q = best_of(lambda: qlab.intrinsic_linear(x, w, None, "fixed(16,8,nearest)"), repeats)
    t_n = best_of(lambda: naive_loop(x, w, 8, 16), repeats)
    t_f = best_of(lambda: x @ w.t(), repeats)
    rows.append((f"(a) qlab intrinsic fixed(16,8) Linear {n}^3", t_q, macs / t_q, t_n / t_q))
    rows.append((f"(b) naive per-k loop fixed(16,8) {n}^3", t_n, macs / t_n, 1.0))
    rows.append((f"(c) fp32 x @ w.t() {n}^3", t_f, macs / t_f, t_n / t_f))

    # (d): saturating, fixed(8,4)
    xs = torch.randn(M, K) * 50
    ws = torch.randn(N, K) * 5
    t_qs = best_of(lambda: qlab.intrinsic_linear(xs, ws, None, "fixed(8,4,nearest)"), repeats)
    t_ns = best_of(lambda: naive_loop(xs, ws, 4, 8), repeats)
    rows.append((f"(d) qlab intrinsic fixed(8,4) saturating {n}^3", t_qs, macs / t_qs, t_ns / t_qs))
    rows.append((f"(d) naive per-k loop fixed(8,4) saturating {n}^3", t_ns, macs / t_ns, 1.0))

    # (e): intrinsic LeNet-5 forward, run once
    model = build("lenet5").eval()
    plan = qlab.Plan(intrinsic={"*": "fixed(16,8,nearest)"})
    data = torch.rand(images, 1, 28, 28)
    t0 = time.perf_counter()
    with torch.no_grad(), qlab.quantize(model, plan):
        for i in range(0, images, batch):
            model(data[i:i + batch])
    t_l = time.perf_counter() - t0
    rows.append((f"(e) intrinsic LeNet-5 fixed(16,8), {images} images, batch {batch}", t_l, float("nan"), float("nan")))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"best of {repeats} (LeNet-5 once)")
    print()
    print("| case | time (s) | (Q)MAC/s | speed-up vs naive loop |")
    print("|---|---:|---:|---:|")
    for name, t, rate, ratio in rows:
        rate_s = "-" if rate != rate else f"{rate:.3g}"
        ratio_s = "-" if ratio != ratio else f"{ratio:.2f}x"
        print(f"| {name} | {t:.4f} | {rate_s} | {ratio_s} |")


if __name__ == "__main__":
    main()
