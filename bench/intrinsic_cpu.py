"""CPU benchmark of intrinsic fixed-point arithmetic (issue 2).

Usage:  PYTHONPATH=. python bench/intrinsic_cpu.py [--quick] [--threads 2] [--ref-images N]

Prints one table, side by side in one run: qlab intrinsic Linear with the compiled C
kernel (qlab.ext.cpu, the default on CPU tensors) vs the torch reference
(QLAB_BACKEND=torch) vs the naive per-k torch loop vs fp32, a saturating case, and an
intrinsic LeNet-5 (zoo.pretrained("lenet5")) over the Fashion-MNIST test images with
the C kernel and with the torch reference (on the first --ref-images images, scaled);
(f) intrinsic float formats (fp16, bf16, fp8e4m3 products with an fp16 final sum) with
the float kernel vs the float64 reference; (g) LeNet-5 with every op intrinsic fp16.
"""
import argparse
import contextlib
import os
import platform
import time

import torch

import qlab
from qlab.ext import cpu, data, zoo


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def reference():
    """The torch reference path (QLAB_BACKEND=torch) inside the block."""
    old = os.environ.get("QLAB_BACKEND")
    os.environ["QLAB_BACKEND"] = "torch"
    try:
        yield
    finally:
        if old is None:
            del os.environ["QLAB_BACKEND"]
        else:
            os.environ["QLAB_BACKEND"] = old


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


def lenet(model, plan, images, batch):
    """Seconds and logits of the intrinsic model over ``images``."""
    outs = []
    t0 = time.perf_counter()
    with torch.no_grad(), qlab.quantize(model, plan):
        for i in range(0, len(images), batch):
            outs.append(model(images[i:i + batch]))
    return time.perf_counter() - t0, torch.cat(outs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref-images", type=int, default=None,
                    help="LeNet-5 images for the torch reference (default all; its time is scaled to all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if cpu.load() is None:
        print("warning: the C kernel is unavailable: the 'C kernel' rows run the torch reference")

    n = 64 if args.quick else 256
    repeats = 2 if args.quick else 5
    images, batch = (200, 100) if args.quick else (10_000, 1000)
    M = K = N = n
    macs = M * K * N
    rows = []

    def linear_rows(tag, spec, x, w, frac, total):
        calls = cpu.calls
        t_c = best_of(lambda: qlab.intrinsic_linear(x, w, None, spec), repeats)
        ran = cpu.calls > calls
        with reference():
            t_r = best_of(lambda: qlab.intrinsic_linear(x, w, None, spec), max(1, repeats // 2))
            y_r = qlab.intrinsic_linear(x, w, None, spec)
        assert torch.equal(qlab.intrinsic_linear(x, w, None, spec), y_r)
        t_n = best_of(lambda: naive_loop(x, w, frac, total), repeats)
        rows.append((f"{tag} C kernel{'' if ran else ' (did not run!)'}, intrinsic {spec} Linear {n}^3", t_c, macs / t_c,
                     t_n / t_c))
        rows.append((f"{tag} torch reference (QLAB_BACKEND=torch), same", t_r, macs / t_r, t_n / t_r))
        rows.append((f"{tag} naive per-k loop {spec}", t_n, macs / t_n, 1.0))
        return t_n

    # (a)-(c): no saturation, fixed(16,8), sequential
    x = torch.randn(M, K)
    w = torch.randn(N, K) * 0.1
    t_n = linear_rows("(a)", "fixed(16,8,nearest)", x, w, 8, 16)
    t_f = best_of(lambda: x @ w.t(), repeats)
    rows.append((f"(c) fp32 x @ w.t() {n}^3", t_f, macs / t_f, t_n / t_f))

    # (d): saturating, fixed(8,4)
    linear_rows("(d) saturating:", "fixed(8,4,nearest)", torch.randn(M, K) * 50, torch.randn(N, K) * 5, 4, 8)

    # (e): intrinsic LeNet-5 (trained weights) over the Fashion-MNIST test images, run once
    model = zoo.pretrained("lenet5", progress=False).eval()
    test = data.fashion_mnist("test")
    x_e, y_e = test.images[:images], test.labels[:images]
    n_ref = min(images, args.ref_images or images)

    def lenet_rows(tag, spec):
        plan = qlab.Plan(intrinsic={"*": spec})
        t_c, out_c = lenet(model, plan, x_e, batch)
        with reference():
            t_r, out_r = lenet(model, plan, x_e[:n_ref], batch)
        assert torch.equal(out_c[:n_ref], out_r), f"C kernel and torch reference differ on LeNet-5 ({spec})"
        t_r_all = t_r * images / n_ref
        acc = (out_c.argmax(1) == y_e).float().mean().item()
        rows.append((f"{tag}: C kernel (accuracy {acc:.4f})", t_c, float("nan"), t_r_all / t_c))
        scaled = "" if n_ref == images else f" ({t_r:.1f} s on the first {n_ref} images, scaled)"
        rows.append((f"{tag}: torch reference{scaled}, identical logits", t_r_all, float("nan"), 1.0))

    lenet_rows(f"(e) intrinsic LeNet-5 fixed(16,8), {images} Fashion-MNIST test images, batch {batch}",
               "fixed(16,8,nearest)")

    # (f): float formats (qlab/ext/cpu/float_matmul.c) vs the float64 reference
    xf, wf = torch.randn(M, K) * 3, torch.randn(N, K) * 0.05
    for spec in ["fp16", "bf16", "intrinsic(fp8e4m3,acc=fp16,accumulate=final)"]:
        calls = cpu.float_calls
        t_c = best_of(lambda: qlab.intrinsic_linear(xf, wf, None, spec), repeats)
        ran = cpu.float_calls > calls
        with reference():
            t_r = best_of(lambda: qlab.intrinsic_linear(xf, wf, None, spec), 1)
            y_r = qlab.intrinsic_linear(xf, wf, None, spec)
        assert torch.equal(qlab.intrinsic_linear(xf, wf, None, spec), y_r), spec
        rows.append((f"(f) C kernel{'' if ran else ' (did not run!)'}, intrinsic {spec} Linear {n}^3", t_c, macs / t_c,
                     t_r / t_c))
        rows.append((f"(f) torch reference, same", t_r, macs / t_r, 1.0))

    # (g): intrinsic LeNet-5 in fp16 (every op)
    lenet_rows(f"(g) intrinsic LeNet-5 fp16, {images} images, batch {batch}", "fp16")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"best of {repeats} (reference best of {max(1, repeats // 2)}; LeNet-5 once)")
    print()
    print("| case | time (s) | (Q)MAC/s | speed-up vs naive loop ((e)-(g): vs torch reference) |")
    print("|---|---:|---:|---:|")
    for name, t, rate, ratio in rows:
        rate_s = "-" if rate != rate else f"{rate:.3g}"
        ratio_s = "-" if ratio != ratio else f"{ratio:.2f}x"
        print(f"| {name} | {t:.4f} | {rate_s} | {ratio_s} |")


if __name__ == "__main__":
    main()
