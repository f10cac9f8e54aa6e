"""Per-layer search, greedy (TensorQuant's walk) vs fast (qlab's), side by side, and one intrinsic evaluation per zoo model.

    python bench/search.py                      # LeNet-5 and resnet_small, 1000 Fashion-MNIST test images
    python bench/search.py --models lenet5 --n 500 --skip-eval

Every trial makes one layer intrinsic fixed(W,F,nearest), the rest float; thresholds
1.0 / 0.99 / 0.9 of the float accuracy.  Nothing is read from the result cache (each
run computes everything); trained models come from the checkpoint store (trained
first if missing).  Columns: evaluations (quantized trials), full passes (images
classified under a quantized layer / images in the set), wall seconds, compression
per threshold, and whether fast chose a (W,F) no wider than greedy for every layer.
"""
from __future__ import annotations

import argparse
import time

import torch

import qlab
from qlab.ext import data, lab, zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet_small"], choices=list(zoo.MODELS))
    parser.add_argument("--n", type=int, default=1000, help="test images (a fixed subset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip-eval", action="store_true", help="skip the one-evaluation-per-zoo-model table")
    parser.add_argument("--eval-spec", default="fixed(16,8,nearest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = data.subset(data.fashion_mnist("test", args.data_dir), args.n)
    print(f"# per-layer search, {args.n} Fashion-MNIST test images, intrinsic nearest, {args.threads} threads")
    print("| model | algorithm | evaluations | full passes | seconds | x1.0 | x0.99 | x0.9 | fast no wider |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = zoo.pretrained(name, data.fashion_mnist("train", args.data_dir), progress=False)
        results = {}
        for algorithm in ("greedy", "fast"):
            t0 = time.perf_counter()
            r = lab.search_layers(model, test, algorithm=algorithm, cache=False, progress=False, name=name)
            wall = time.perf_counter() - t0
            results[algorithm] = r
            comp = " | ".join(f"{r.compression[t]:.2f}" for t in (1.0, 0.99, 0.9))
            no_wider = ""
            if algorithm == "fast":
                g, f = results["greedy"].table, r.table
                ok = all((fw is not None and gw is not None and fw <= gw) or gw is None
                         for fw, gw in zip(_widths(f), _widths(g)))
                no_wider = "yes" if ok else "NO"
            print(f"| {name} | {algorithm} | {r.evaluations} | {r.full_passes:.1f} | {wall:.1f} | {comp} | {no_wider} |",
                  flush=True)
        g, f = results["greedy"], results["fast"]
        print(f"|  | fast/greedy time | | | {f.seconds / g.seconds:.2f} ({g.seconds / f.seconds:.1f}x faster) | | | | |")
        merged = g.table[["layer", "threshold", "W", "F"]].merge(
            f.table[["layer", "threshold", "W", "F"]], on=["layer", "threshold"], suffixes=("_greedy", "_fast"))
        print(merged.to_string(index=False))
        print()

    if args.skip_eval:
        return
    print(f"# one intrinsic evaluation ({args.eval_spec} on every module), {args.n} images")
    print("| model | float accuracy | intrinsic accuracy | seconds |")
    print("|---|---|---|---|")
    plan = qlab.Plan(intrinsic={"*": args.eval_spec})
    for name in zoo.MODELS:
        model = zoo.pretrained(name, data.fashion_mnist("train", args.data_dir), progress=False)
        f = lab.evaluate(model, test)
        t0 = time.perf_counter()
        q = lab.evaluate(model, test, plan)
        print(f"| {name} | {f:.4f} | {q:.4f} | {time.perf_counter() - t0:.1f} |", flush=True)


def _widths(table):
    return [None if w is None or w != w else int(w) for w in table.sort_values(["layer", "threshold"]).W.astype(float)]


if __name__ == "__main__":
    main()
