"""Per-layer search: the smallest fixed-point (W, F) for each layer alone that keeps a relative accuracy.

Each layer is made intrinsic ``fixed(W,F,rounding)`` while the rest of the network
stays float, as in the deck's Inception V3 table; the compression factor is then
32-bit floats over the chosen widths, weighted by each layer's parameter count.

Two algorithms; for deterministic rounding both return the same (W, F) per layer
and threshold, because ``fast`` takes exactly the same decisions, only cheaper:

``greedy``
    TensorQuant's walk: start at (4, 2); F += 2 while F + 2 < W; then W += 4, F = 2;
    give up above W = 24.  Every trial evaluates the whole network on every image,
    and each threshold walks on its own (points already seen are not recomputed).

``fast`` (qlab's)
    * One walk serves every threshold: a point is tried once, against all the
      thresholds still open, and the walk stops when the strictest one is met.
    * Images go in order of their float margin (top logit minus the next, negative
      when float is wrong), the fragile ones first.  A trial stops as soon as its
      verdict is certain for every open threshold: enough images right to pass, or
      too many wrong to pass.  Failing trials, most of a walk, then end after a
      small part of the data: the images quantization breaks are the fragile ones.
    * The values the rest of the network reads that do not depend on the layer
      (its input, a residual branch) are computed once in float and cached, so a
      trial runs only the layer and what comes after it: a torch.fx replay of the
      traced model.  Models that torch.fx cannot trace, or whose cached values
      would pass ``cache_bytes``, replay the whole network (with the early stop).
    * The chosen points are then completed on every image for their exact
      relative accuracy.
    Every image is classified on its own (batch norm in eval mode), so the order
    and the batching do not change a count; with ``stochastic`` rounding the random
    draws differ, and so may the answers.

Results are cached per (algorithm, model, data, layer, thresholds, rounding): an
interrupted search resumes at the layer it was on, and a rerun is instant.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from qlab.core import Plan, quantize
from qlab.core.rounding import ROUNDINGS

from . import data as qdata
from .evaluation import (Evaluator, as_cache, check_dataset, check_layers, data_fingerprint, model_fingerprint,
                         quantizable_layers)
from .store import key
from .sweep import fixed_spec

ALGORITHMS = ("greedy", "fast")
THRESHOLDS = (1.0, 0.99, 0.9)
MAX_WIDTH = 24
COLUMNS = ["model", "layer", "threshold", "W", "F", "relative_accuracy", "evaluations", "seconds", "algorithm"]


def greedy_order(max_width: int = MAX_WIDTH):
    """TensorQuant's trial order: (4,2), (8,2), (8,4), (8,6), (12,2), ... up to W = ``max_width``."""
    W, F = 4, 2
    while W <= max_width:
        yield W, F
        if F + 2 < W:
            F += 2
        else:
            W, F = W + 4, 2


def _needed(threshold: float, float_correct: int) -> int:
    """Fewest images right for relative accuracy >= threshold."""
    return max(0, math.ceil(threshold * float_correct - 1e-9))


def check_thresholds(thresholds) -> tuple[float, ...]:
    thresholds = (thresholds,) if isinstance(thresholds, (int, float)) else tuple(thresholds)
    if not thresholds:
        raise ValueError("no threshold given")
    for t in thresholds:
        if not isinstance(t, (int, float)) or not (0 < t <= 1):
            raise ValueError(f"threshold {t!r} is outside (0, 1]: relative accuracy thresholds are fractions, "
                             "e.g. 1.0, 0.99, 0.9")
    return tuple(float(t) for t in thresholds)


@dataclass
class SearchResult:
    """The chosen (W, F) per layer and threshold, and what finding them cost."""

    table: "object"  # pandas DataFrame with COLUMNS
    compression: dict = field(default_factory=dict)  # threshold -> factor against 32-bit floats
    evaluations: int = 0
    seconds: float = 0.0
    algorithm: str = ""
    full_passes: float = 0.0  # images classified under a quantized layer / images in the data set

    def choices(self, threshold: float) -> dict:
        """{layer: (W, F) or None} for one threshold."""
        import pandas as pd

        rows = self.table[self.table.threshold == threshold]
        return {r.layer: (None if pd.isna(r.W) else (int(r.W), int(r.F))) for r in rows.itertuples()}

    def plan(self, threshold: float, rounding: str = "nearest") -> Plan:
        """All layers intrinsic at their chosen (W, F) for ``threshold`` (layers that gave up stay float)."""
        return Plan(intrinsic={layer: fixed_spec(W, F, rounding) for layer, wf in self.choices(threshold).items()
                               if wf is not None for W, F in [wf]})

    def __repr__(self):
        comp = ", ".join(f"{t:g}: x{c:.2f}" for t, c in self.compression.items())
        return (f"SearchResult({self.algorithm}, {len(self.table)} rows, {self.evaluations} evaluations "
                f"({self.full_passes:.1f} full passes), {self.seconds:.1f} s, compression {{{comp}}})")

    def _repr_html_(self):
        return f"<p>{self!r}</p>" + self.table.to_html(index=False)


def compression_factor(model: nn.Module, widths: dict) -> float:
    """32-bit floats over the chosen widths, weighted by parameters: {layer: W or None (stays 32)}."""
    modules = dict(model.named_modules())
    bits_float = bits_quant = 0
    for layer, W in widths.items():
        n = sum(p.numel() for p in modules[layer].parameters(recurse=True))
        bits_float += 32 * n
        bits_quant += (32 if W is None else W) * n
    return bits_float / bits_quant if bits_quant else 1.0


# -- replaying the rest of the network -------------------------------------------------

class _Replay:
    """Trials of one layer: the number right under a plan, on images in fragile-first order.

    ``order`` is a permutation of the data set; ``batches`` follow it.
    """

    def __init__(self, model, data, layer, order, batch_size, seed, cache_bytes):
        self.model, self.layer, self.seed = model, layer, seed
        self.n = len(data)
        self.batches = [(data.images[idx], data.labels[idx]) for idx in order.split(batch_size)]
        self.trials = 0
        self.images = 0  # images classified over all trials
        self._fx = self._trace(cache_bytes)

    def _trace(self, cache_bytes):
        import torch.fx as fx

        try:
            gm = fx.symbolic_trace(self.model)
        except Exception:
            return None
        nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == self.layer]
        if len(nodes) != 1:
            return None
        downstream = set()
        for n in gm.graph.nodes:
            if n is nodes[0] or any(a in downstream for a in n.all_input_nodes):
                downstream.add(n)
        frontier = {a for n in downstream for a in n.all_input_nodes if a not in downstream}
        store = {n: [] for n in frontier}
        used = [0]

        class Collect(fx.Interpreter):
            def run_node(self, n):
                if n in downstream:
                    return None  # the float pass stops where the layer begins
                out = super().run_node(n)
                if n in store:
                    store[n].append(out)
                    if isinstance(out, torch.Tensor):
                        used[0] += out.numel() * out.element_size()
                return out

        with torch.no_grad():
            for x, _ in self.batches:
                Collect(gm).run(x)
                if used[0] > cache_bytes:
                    return None
        return gm, downstream, store

    def _logits(self, b: int, x):
        if self._fx is None:
            return self.model(x)
        import torch.fx as fx

        gm, downstream, store = self._fx

        class Replay(fx.Interpreter):
            def run_node(self, n):
                if n in downstream:
                    return super().run_node(n)
                if n in store:
                    return store[n][b]
                return None  # read only by nodes that are not replayed

        return Replay(gm).run(x)

    def count(self, plan: Plan, decided=None) -> tuple[int, int]:
        """(lo, hi) bounds on the number right under ``plan``: exact (lo == hi) unless
        ``decided(lo, hi)`` said True after some batch and the trial stopped there."""
        self.trials += 1
        right = done = 0
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad(), quantize(self.model, plan, generator):
            for b, (x, y) in enumerate(self.batches):
                right += int((self._logits(b, x).argmax(dim=1) == y).sum())
                done += len(y)
                if decided is not None and decided(right, right + self.n - done):
                    break
        self.images += done
        return right, right + self.n - done


@torch.no_grad()
def fragile_first(model: nn.Module, data: qdata.Dataset, batch_size: int = 250) -> tuple[torch.Tensor, int]:
    """(permutation of ``data`` by ascending float margin, number float gets right).

    The margin is the label's logit minus the best other logit: negative when the
    float model is wrong, small when it is nearly wrong.
    """
    margins, right = [], 0
    for x, y in qdata.loader(data, batch_size):
        logits = model(x)
        true = logits.gather(1, y[:, None])[:, 0]
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        margins.append(true - other)
        right += int((logits.argmax(dim=1) == y).sum())
    return torch.argsort(torch.cat(margins), stable=True), right


# -- the two algorithms ----------------------------------------------------------------

def _greedy_layer(new_evaluator, layer, thresholds, rounding, max_width):
    """One walk per threshold, as TensorQuant's fixed_opt.py runs once per margin."""
    out, evaluations = {}, 0
    for t in thresholds:
        ev = new_evaluator()  # nothing shared between thresholds but the disk cache
        float_correct = ev.float_correct
        out[t] = None
        for W, F in greedy_order(max_width):
            c = ev.correct(Plan(intrinsic={layer: fixed_spec(W, F, rounding)}))
            if c >= _needed(t, float_correct):
                out[t] = (W, F, c / float_correct if float_correct else math.nan)
                break
        evaluations += ev.evaluations
    return out, evaluations


def _fast_layer(replay: _Replay, float_correct: int, layer, thresholds, rounding, max_width):
    needed = {t: _needed(t, float_correct) for t in thresholds}
    found: dict[float, tuple] = {}
    counts: dict[tuple[int, int], tuple[int, int]] = {}

    def plan(W, F):
        return Plan(intrinsic={layer: fixed_spec(W, F, rounding)})

    for W, F in greedy_order(max_width):
        open_needs = [needed[t] for t in thresholds if t not in found]
        if not open_needs:
            break

        def decided(lo, hi, open_needs=open_needs):
            return all(lo >= k or hi < k for k in open_needs)

        lo, hi = replay.count(plan(W, F), decided)
        counts[(W, F)] = (lo, hi)
        for t in thresholds:
            if t not in found and lo >= needed[t]:
                found[t] = (W, F)
    result = {}
    for t in thresholds:
        if t not in found:
            result[t] = None
            continue
        lo, hi = counts[found[t]]
        if lo != hi:
            lo, hi = replay.count(plan(*found[t]))
            counts[found[t]] = (lo, hi)
        result[t] = (*found[t], lo / float_correct if float_correct else math.nan)
    return result


def search_layers(
    model: nn.Module,
    data: qdata.Dataset,
    thresholds=THRESHOLDS,
    algorithm: str = "fast",
    layers=None,
    rounding: str = "nearest",
    name: str | None = None,
    cache=None,
    progress: bool = True,
    batch_size: int = 250,
    seed: int = 0,
    max_width: int = MAX_WIDTH,
    cache_bytes: int = 2 << 30,
) -> SearchResult:
    """The smallest intrinsic fixed(W,F) per layer (each alone, the rest float) keeping each threshold.

    ``layers`` defaults to every Linear and Conv layer.  A layer that needs more than
    ``max_width`` bits gets W = F = None (it stays float; 32 bits in the compression
    factor).  ``cache``: None for the default result cache, False for none.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown search algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")
    thresholds = check_thresholds(thresholds)
    data = check_dataset(data)
    layers = quantizable_layers(model, weighted=True) if layers is None else check_layers(model, layers)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to search; name the layers")
    name = name or type(model).__name__
    store = as_cache(cache)
    mfp, dfp = model_fingerprint(model), data_fingerprint(data)

    def new_evaluator():
        return Evaluator(model, data, cache=store if store is not None else False, batch_size=batch_size,
                         seed=seed, fingerprints=(mfp, dfp))

    rows, total_evals, total_images, total_seconds = [], 0, 0, 0.0
    order, fast_float_correct = None, 0
    fast_batch = max(1, min(batch_size, 100))  # small batches let a trial stop soon
    was_training = model.training
    model.eval()
    try:
        for layer in tqdm(layers, desc=f"{algorithm} search {name}", unit="layer", disable=not progress):
            k = key(kind="search-layer", algorithm=algorithm, model=mfp, data=dfp, layer=layer,
                    thresholds=list(thresholds), rounding=rounding, seed=seed, max_width=max_width)
            if store is not None and store.exists(k):
                rec = store.load(k)
            else:
                t0 = time.perf_counter()
                if algorithm == "greedy":
                    found, evals = _greedy_layer(new_evaluator, layer, thresholds, rounding, max_width)
                    images = evals * len(data)
                else:
                    if order is None:
                        order, fast_float_correct = fragile_first(model, data, batch_size)
                    replay = _Replay(model, data, layer, order, fast_batch, seed, cache_bytes)
                    found = _fast_layer(replay, fast_float_correct, layer, thresholds, rounding, max_width)
                    evals, images = replay.trials, replay.images
                rec = {"found": {str(t): found[t] for t in thresholds}, "evaluations": evals,
                       "images": images, "seconds": time.perf_counter() - t0}
                if store is not None:
                    store.save(k, rec)
            total_evals += rec["evaluations"]
            total_images += rec["images"]
            total_seconds += rec["seconds"]
            for t in thresholds:
                wf = rec["found"][str(t)]
                W, F, rel = (None, None, math.nan) if wf is None else wf
                rows.append((name, layer, t, W, F, rel, rec["evaluations"], rec["seconds"], algorithm))
    finally:
        model.train(was_training)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["W"] = table["W"].astype("Int64")
    table["F"] = table["F"].astype("Int64")
    compression = {t: compression_factor(model, {r.layer: (None if pd.isna(r.W) else int(r.W))
                                                 for r in table[table.threshold == t].itertuples()})
                   for t in thresholds}
    return SearchResult(table, compression, total_evals, total_seconds, algorithm, total_images / len(data))
