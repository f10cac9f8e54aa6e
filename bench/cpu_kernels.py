"""The fixed-point CPU kernels (qlab.ext.cpu), side by side in one process with what each
replaces (alternating, best of ``--repeats``, results checked equal):

* the C conv kernel (windows gathered from the input's grid integers,
  ``qlab.ext.cpu.fixed_conv2d``) beside the path it replaces (unfold the gridded input,
  then the accumulation kernel: ``cpu.CONV_KERNEL = False``): single conv layers (the
  zoo's shapes at batch ``--images``) and every zoo CNN with all conv and fc layers
  intrinsic fixed(16,8) (random weights; one forward pass);
* the accumulation kernel with every clamp (its product bound withheld) beside the
  default, which leaves out the clamps the bound shows idle: 256x512x256 grid integers,
  weights N(0, 1/K) or N(0, 1);
* intrinsic batch norm, elementwise add and the linear/conv epilogue in one C pass each
  (``cpu.EPILOGUE_KERNEL``) beside the reference's torch steps: single ops on
  250x32x14x14 values and every zoo CNN all-intrinsic fixed(16,8) (random weights);
* fp16 and bf16 with nearest even rounded by a short sequence (the CPU's half conversion;
  a rounding at bit 16: ``cpu.FLOAT_HW``) beside the general bit arithmetic: the float
  quantizer and zoo CNNs all-intrinsic (random weights); float formats' batch norm and
  add in one C pass (``cpu.EPILOGUE_KERNEL``) and their conv kernel (``cpu.CONV_KERNEL``:
  windows gathered from Q(x)) beside the reference's steps (unfold + the float matmul);
  stochastic float tiles on 8 lanes beside the scalar rows (``cpu.FLOAT_STO_VEC``, the
  same draws: outputs checked equal); the short roundings without their saturation and
  NaN selects where a bound shows them idle (``cpu.FLOAT_IN_RANGE``) beside with them: a
  conv layer and the trained zoo CNNs (``zoo.pretrained``) on Fashion-MNIST test images;
* the elementwise fixed(8,4) quantizer (one C pass, ``cpu.FIXED_KERNEL``) beside the
  reference's torch steps on 250x48x14x14 float32 values, and every zoo CNN with all
  layers' outputs quantized extrinsic fixed(8,4) (beside the float model);
* stochastic rounding in every step of the linear/conv kernels, their epilogue, batch
  norm and elementwise ops (``cpu.STOCHASTIC_KERNELS``) beside the reference's steps
  around the stochastic accumulation kernel: single layers (the conv at the zoo's shapes)
  and every zoo CNN all-intrinsic fixed(16,8,stochastic) (random weights; results are
  different draws of one distribution, so they are compared by shape only);
* with ``--lenet``: the trained LeNet-5 (``zoo.pretrained``) over the 10,000 Fashion-MNIST
  test images, every layer intrinsic fixed(16,8), batch 1000 (the issue-2 row of
  docs/benchmarks.md), with the linear and conv kernels and with both switched off.

    PYTHONPATH=. python bench/cpu_kernels.py [--threads 2] [--repeats 5] [--images 250] [--lenet]
        [--only conv,accumulation,models,pointwise,extrinsic,float,stochastic]
"""
import argparse
import time

import torch

import qlab
from intrinsic_cpu import best_of  # bench/ is on the path when this script runs
from qlab.ext import cpu, zoo


def best(fn, repeats):
    """Best of ``repeats`` timed calls after one warm-up call."""
    fn()
    return best_of(fn, repeats)


def side_by_side_switch(switch, fn, repeats):
    """(seconds with ``cpu.<switch>`` off, with it on, the two results), alternating."""
    times, outs = {False: [], True: []}, {}
    try:
        for on in (False, True, False, True):
            setattr(cpu, switch, on)
            times[on].append(best(fn, repeats))
            outs[on] = fn()
    finally:
        setattr(cpu, switch, True)
    return min(times[False]), min(times[True]), outs


SECTIONS = ("conv", "accumulation", "models", "pointwise", "extrinsic", "float", "stochastic")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=250)
    ap.add_argument("--lenet", action="store_true", help="also the trained LeNet-5 over the 10k test images")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    if only - set(SECTIONS):
        ap.error(f"unknown sections {sorted(only - set(SECTIONS))}; choose from {','.join(SECTIONS)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B = a.images
    print(f"torch {torch.__version__}, {a.threads} threads, best of {a.repeats}, alternating")
    xs = torch.randn(B, 1, 28, 28)
    plan = qlab.Plan(intrinsic={"*": "fixed(16,8,nearest)"})
    if "conv" in only:
        conv_rows(a, B)
    if "accumulation" in only:
        accumulation_rows(a)
    if "models" in only:
        model_rows(a, B, xs, plan)
    if "pointwise" in only:
        pointwise_rows(a, B, xs, plan)
    if "extrinsic" in only:
        extrinsic_rows(a, B, xs)
    if "float" in only:
        float_rows(a, B, xs)
    if "stochastic" in only:
        stochastic_rows(a, B, xs)
    if a.lenet:
        lenet_row(plan)


def conv_rows(a, B):
    print("| case | unfold + accumulation (ms) | conv kernel (ms) | G QMAC/s (kernel) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for C, S, O, k in [(1, 28, 6, 5), (6, 14, 16, 5), (32, 14, 32, 3), (32, 14, 64, 3), (64, 7, 64, 3)]:
        x, w = torch.randn(B, C, S, S), torch.randn(O, C, k, k) * (C * k * k) ** -0.5
        macs = B * S * S * O * C * k * k
        t0, t1, outs = side_by_side_switch(
            "CONV_KERNEL", lambda: qlab.intrinsic_conv(x, w, None, padding=k // 2, spec="fixed(16,8)"), a.repeats)
        assert torch.equal(outs[False], outs[True])
        print(f"| conv {B}x{C}x{S}x{S} -> {O}, {k}x{k}, fixed(16,8) | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} | "
              f"{macs / t1 / 1e9:.2f} | {t0 / t1:.1f}x |")
    print()


def accumulation_rows(a):
    print("| accumulation 256x512x256 (grid integers) | every clamp (ms) | default (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    from qlab.core.intrinsic import as_intrinsic

    bound = cpu._product_bound
    M, K, N = 256, 512, 256
    for wname, wsc in [("N(0, 1/K)", K ** -0.5), ("N(0, 1)", 1.0)]:
        xT = torch.round(torch.randn(K, M) * 256).clamp(-32768, 32767)
        w = torch.round(torch.randn(K, N) * 256 * wsc).clamp(-32768, 32767)
        for spec in ["fixed(16,8)", "intrinsic(fixed(16,8),accumulate=final)", "fixed(16,8,even)"]:
            sp = as_intrinsic(spec)
            times, outs = {0: [], 1: []}, {}
            try:
                for on in (0, 1, 0, 1):
                    cpu._product_bound = bound if on else (lambda a, b, s: -1)
                    times[on].append(best(lambda: cpu.fixed_accumulate(xT, w, sp, None, torch.float32, True),
                                          a.repeats))
                    outs[on] = cpu.fixed_accumulate(xT, w, sp, None, torch.float32, True)
            finally:
                cpu._product_bound = bound
            assert torch.equal(outs[0], outs[1])
            t0, t1 = min(times[0]), min(times[1])
            print(f"| {spec}, x N(0, 1), w {wname} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}x |")
    print()


def model_rows(a, B, xs, plan):
    print("| model | unfold + accumulation (ms) | conv kernel (ms) | | speed-up |")
    print("|---|---:|---:|---:|---:|")
    zoo_rows("CONV_KERNEL", "every conv and fc", a, B, xs, plan)
    print()


def zoo_rows(switch, what, a, B, xs, plan, names=("lenet5", "alexnet_small", "resnet_small", "inception_small"),
             same=True, seed=None, trained=False):
    """One row per zoo CNN (random weights; ``trained``: zoo.pretrained's) under ``plan``:
    ``cpu.<switch>`` off, on (``same``: the two outputs checked equal, else their shapes;
    ``seed``: torch.manual_seed before every forward pass, so stochastic draws repeat)."""
    for name in names:
        model = (zoo.pretrained(name) if trained else zoo.build(name)).eval()

        def run():
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad(), qlab.quantize(model, plan):
                return model(xs)

        t0, t1, outs = side_by_side_switch(switch, run, max(1, a.repeats // 2))
        assert torch.equal(outs[False], outs[True]) if same else outs[False].shape == outs[True].shape
        print(f"| {name}{' (trained)' if trained else ''}, {what} {plan.intrinsic['*']}, {B} images | "
              f"{t0 * 1e3:.0f} | {t1 * 1e3:.0f} | "
              f"| {t0 / t1:.1f}x |")


def pointwise_rows(a, B, xs, plan):
    print("| intrinsic fixed(16,8), pointwise steps | torch steps (ms) | one C pass (ms) | | speed-up |")
    print("|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, 32, 14, 14, generator=g) * 4, torch.randn(B, 32, 14, 14, generator=g) * 4
    mean, var = torch.randn(32, generator=g), torch.rand(32, generator=g) + 0.5
    gamma, beta = torch.randn(32, generator=g), torch.randn(32, generator=g)
    w = torch.randn(32, 32, 3, 3, generator=g) / 17
    for label, fn in [
        (f"batch norm {B}x32x14x14", lambda: qlab.intrinsic_batch_norm(x, mean, var, gamma, beta, 1e-5, "fixed(16,8)")),
        (f"add {B}x32x14x14", lambda: qlab.intrinsic_elementwise("add", x, y, "fixed(16,8)")),
        (f"conv {B}x32x14x14 -> 32, 3x3 (the epilogue's share)", lambda: qlab.intrinsic_conv(x, w, gamma, padding=1,
                                                                                             spec="fixed(16,8)"))]:
        t0, t1, outs = side_by_side_switch("EPILOGUE_KERNEL", fn, a.repeats)
        assert torch.equal(outs[False], outs[True])
        print(f"| {label} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | | {t0 / t1:.1f}x |")
    zoo_rows("EPILOGUE_KERNEL", "every layer", a, B, xs, plan)
    print()


def extrinsic_rows(a, B, xs):
    print("| extrinsic fixed(8,4) | torch steps (ms) | C quantizer (ms) | float model (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    q = qlab.FixedPoint(8, 4)
    xq = torch.randn(B, 48, 14, 14)
    t0, t1, outs = side_by_side_switch("FIXED_KERNEL", lambda: q(xq), a.repeats)
    assert torch.equal(outs[False], outs[True])
    print(f"| quantize {xq.numel()} float32 values (copy: {best(lambda: xq.clone(), a.repeats) * 1e3:.2f} ms) | "
          f"{t0 * 1e3:.2f} | {t1 * 1e3:.2f} | | {t0 / t1:.1f}x |")
    ext = qlab.Plan(extrinsic={"*": "fixed(8,4)"})
    for name in ["lenet5", "alexnet_small", "resnet_small", "inception_small"]:
        model = zoo.build(name).eval()
        with torch.no_grad():
            tf = best(lambda: model(xs), max(1, a.repeats // 2))

            def run():
                with qlab.quantize(model, ext):
                    return model(xs)

            t0, t1, outs = side_by_side_switch("FIXED_KERNEL", run, max(1, a.repeats // 2))
        assert torch.equal(outs[False], outs[True])
        print(f"| {name}, every layer's output fixed(8,4), {B} images | {t0 * 1e3:.0f} | {t1 * 1e3:.0f} | "
              f"{tf * 1e3:.0f} | {t0 / t1:.1f}x |")
    print()


def float_rows(a, B, xs):
    print("| fp16 / bf16, nearest even | general rounding (ms) | short rounding (ms) | | speed-up |")
    print("|---|---:|---:|---:|---:|")
    xq = torch.randn(B, 48, 14, 14) * 100
    for fmt in ("fp16", "bf16"):
        q = qlab.parse(fmt)
        t0, t1, outs = side_by_side_switch("FLOAT_HW", lambda: q(xq), a.repeats)
        assert torch.equal(outs[False], outs[True])
        print(f"| quantize {xq.numel()} float32 values to {fmt} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | | {t0 / t1:.1f}x |")
    for fmt in ("fp16", "bf16"):
        zoo_rows("FLOAT_HW", "every layer", a, B, xs, qlab.Plan(intrinsic={"*": fmt}), ("lenet5", "resnet_small"))
    print()
    print("| float formats | torch steps / unfold (ms) | C kernel (ms) | | speed-up |")
    print("|---|---:|---:|---:|---:|")
    x, y = torch.randn(B, 32, 14, 14) * 4, torch.randn(B, 32, 14, 14) * 4
    stats = [torch.randn(32), torch.rand(32) + 0.5, torch.randn(32), torch.randn(32)]
    for fmt in ("fp16", "bf16", "fp8e4m3"):
        for name, run in [("batch norm", lambda: qlab.intrinsic_batch_norm(x, *stats, 1e-5, fmt)),
                          ("add", lambda: qlab.intrinsic_elementwise("add", x, y, fmt))]:
            t0, t1, outs = side_by_side_switch("EPILOGUE_KERNEL", run, a.repeats)
            assert torch.equal(outs[False], outs[True])
            print(f"| {name} {tuple(x.shape)}, {fmt} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | | {t0 / t1:.1f}x |")
    w = torch.randn(32, 32, 3, 3) * 32 ** -0.5
    for fmt in ("fp16", "bf16", "fp8e4m3"):
        t0, t1, outs = side_by_side_switch("CONV_KERNEL", lambda: qlab.intrinsic_conv(x, w, None, padding=1, spec=fmt),
                                           a.repeats)
        assert torch.equal(outs[False], outs[True])
        print(f"| conv {tuple(x.shape)} -> 32, 3x3, {fmt} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} | | {t0 / t1:.1f}x |")
    for fmt in ("fp16", "bf16", "fp8e4m3"):
        zoo_rows("CONV_KERNEL", "every layer", a, B, xs, qlab.Plan(intrinsic={"*": fmt}))
    print()
    print("| stochastic float formats | scalar rows (ms) | 8 lanes (ms) | | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for fmt in ("float(5,10,stochastic)", "float(4,3,stochastic,fn)"):
        zoo_rows("FLOAT_STO_VEC", "every layer", a, B, xs, qlab.Plan(intrinsic={"*": fmt}), ("lenet5", "resnet_small"),
                 seed=0)
    print()
    print("| in range (no saturation/NaN selects where a bound allows) | with the selects (ms) | without (ms) | "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|")
    specs = ("fp16", "bf16", "intrinsic(fp8e4m3,acc=fp16)", "intrinsic(fp16,accumulate=final)")
    for fmt in specs:
        t0, t1, outs = side_by_side_switch("FLOAT_IN_RANGE", lambda: qlab.intrinsic_conv(x, w, None, padding=1, spec=fmt),
                                           a.repeats)
        assert torch.equal(outs[False], outs[True])
        print(f"| conv {tuple(x.shape)} -> 32, 3x3, {fmt} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} | | {t0 / t1:.1f}x |")
    from qlab.ext import data

    images = data.fashion_mnist("test").images[:B]
    for fmt in specs[:3]:
        zoo_rows("FLOAT_IN_RANGE", "every layer", a, B, images, qlab.Plan(intrinsic={"*": fmt}), trained=True)
    print()


def stochastic_rows(a, B, xs):
    print("| fixed(16,8,stochastic) | reference steps (ms) | C kernels (ms) | G QMAC/s (C) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    spec = "fixed(16,8,stochastic)"
    x, w = torch.randn(256, 512), torch.randn(256, 512) * 512 ** -0.5
    for name, run, macs in [
        ("linear 256x512 -> 256", lambda: qlab.intrinsic_linear(x, w, None, spec), 256 * 512 * 256),
        *[(f"conv {B}x{C}x{S}x{S} -> {O}, {k}x{k}",
           (lambda xc=torch.randn(B, C, S, S), wc=torch.randn(O, C, k, k) * (C * k * k) ** -0.5, k=k:
            qlab.intrinsic_conv(xc, wc, None, padding=k // 2, spec=spec)), B * S * S * O * C * k * k)
          for C, S, O, k in [(6, 14, 16, 5), (32, 14, 32, 3)]]]:
        t0, t1, outs = side_by_side_switch("STOCHASTIC_KERNELS", run, a.repeats)
        assert outs[False].shape == outs[True].shape
        print(f"| {name} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} | {macs / t1 / 1e9:.2f} | {t0 / t1:.1f}x |")
    zoo_rows("STOCHASTIC_KERNELS", "every layer", a, B, xs, qlab.Plan(intrinsic={"*": spec}), same=False)
    print()


def lenet_row(plan):
    from qlab.ext import data

    model = zoo.pretrained("lenet5").eval()
    test = data.fashion_mnist("test")
    images, labels = test.images, test.labels

    def lenet():
        with torch.no_grad(), qlab.quantize(model, plan):
            return torch.cat([model(images[i:i + 1000]) for i in range(0, len(images), 1000)])

    times, outs = {}, {}
    for on in (False, True, False, True):
        cpu.CONV_KERNEL = cpu.MATMUL_KERNEL = on
        t = time.perf_counter()
        outs[on] = lenet()
        times.setdefault(on, []).append(time.perf_counter() - t)
    cpu.CONV_KERNEL = cpu.MATMUL_KERNEL = True
    assert torch.equal(outs[False], outs[True])
    acc = (outs[True].argmax(1) == labels).double().mean().item()
    print()
    print(f"| LeNet-5 (trained), every layer intrinsic fixed(16,8), 10,000 test images, batch 1000 "
          f"(accuracy {acc:.4f}) | unfold + accumulation {min(times[False]):.2f} s | linear and conv kernels "
          f"{min(times[True]):.2f} s | {min(times[False]) / min(times[True]):.1f}x |")


if __name__ == "__main__":
    main()
