"""Train the whole zoo on Fashion-MNIST from scratch and print a table.

    python bench/train_zoo.py                  # all five models, 2 threads, a temporary store
    python bench/train_zoo.py --models lenet5 resnet_small --epochs 3 --per-epoch

Columns: model, parameters, epochs, training seconds (wall clock, this machine's
CPU), test accuracy on the 10,000 test images.  The goals: LeNet-5 >= 90 %,
LeNet-300-100 >= 88 %, resnet_small and inception_small >= 91 %, the whole zoo
in <= 15 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from qlab.ext import data, zoo
from qlab.ext.store import CheckpointStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(zoo.MODELS), choices=list(zoo.MODELS))
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--store", default=None, help="checkpoint folder (default: a temporary one, so all train)")
    parser.add_argument("--per-epoch", action="store_true", help="also print test accuracy after each epoch")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    train, test = data.fashion_mnist("train", args.data_dir), data.fashion_mnist("test", args.data_dir)
    with tempfile.TemporaryDirectory(prefix="qlab-zoo-") as tmp:
        store = CheckpointStore(args.store or tmp)
        rows = []
        for name in args.models:
            on_epoch = None
            if args.per_epoch:
                def on_epoch(epoch, model, name=name):
                    print(f"  {name} epoch {epoch}: test {zoo.evaluate(model, test):.2%}", flush=True)
            t0 = time.perf_counter()
            model = zoo.train(name, train, seed=args.seed, epochs=args.epochs, store=store,
                              progress=not args.no_progress, on_epoch=on_epoch)
            seconds = time.perf_counter() - t0
            params = sum(p.numel() for p in model.parameters())
            epochs = zoo.recipe(name, args.epochs)["epochs"]
            rows.append((name, params, epochs, seconds, zoo.evaluate(model, test)))
            print(f"{name}: {seconds:.0f} s, test {rows[-1][-1]:.2%}", flush=True)

    print()
    print(f"Fashion-MNIST, torch {torch.__version__}, {args.threads} threads, seed {args.seed}")
    print(f"| {'model':<16} | {'params':>8} | {'epochs':>6} | {'seconds':>7} | {'test acc':>8} |")
    print(f"|{'-' * 18}|{'-' * 9}:|{'-' * 7}:|{'-' * 8}:|{'-' * 9}:|")
    for name, params, epochs, seconds, acc in rows:
        print(f"| {name:<16} | {params:>8,} | {epochs:>6} | {seconds:>7.0f} | {acc:>8.2%} |")
    total = sum(r[3] for r in rows)
    print(f"| {'total':<16} | {'':>8} | {'':>6} | {total:>7.0f} | {'':>8} |")


if __name__ == "__main__":
    main()
