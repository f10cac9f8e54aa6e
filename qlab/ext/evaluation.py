"""Accuracy of a model under a plan, relative accuracy, and the fingerprints that key cached results.

Relative accuracy is the deck's measure: quantized top-1 / float top-1 on the same
images.  Every function here takes a :class:`~qlab.ext.data.Dataset` and evaluates it
in a fixed order, so the float and the quantized runs see the same images.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from qlab.core import Plan, quantize
from qlab.core.attach import SUPPORTED_LEAVES

from . import data as qdata
from .store import ResultCache, key

# Modules a per-layer plan targets by default: the ones whose weights hold the MACs.
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def check_dataset(data) -> qdata.Dataset:
    if not isinstance(data, qdata.Dataset):
        raise ValueError(f"data must be a qlab.ext.data.Dataset (e.g. data.digits('test')), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"data {data.name!r} is empty")
    return data


def check_plan(plan) -> Plan | None:
    if plan is None or isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    if isinstance(plan, str):
        return Plan.from_json(plan)
    raise ValueError(f"plan must be a qlab.Plan, a dict or its JSON, got {type(plan).__name__}")


def quantizable_layers(model: nn.Module, weighted: bool = False) -> list[str]:
    """Qualified names of the leaf modules a plan can target, in model order.

    ``weighted=True`` keeps only Linear and Conv layers (the per-layer search's default).
    """
    kinds = WEIGHTED if weighted else SUPPORTED_LEAVES
    return [n for n, m in model.named_modules() if n and not list(m.children()) and isinstance(m, kinds)]


def check_layers(model: nn.Module, layers) -> list[str]:
    """``layers`` (names) checked against the model; unknown names raise with the nearest ones."""
    import difflib

    names = [n for n, _ in model.named_modules() if n]
    if isinstance(layers, str):
        layers = [layers]
    out = []
    for layer in layers:
        if layer not in names:
            near = difflib.get_close_matches(str(layer), names, n=5, cutoff=0.3)
            raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; "
                             f"nearest names: {', '.join(near or names[:8])}")
        out.append(layer)
    return out


@torch.no_grad()
def correct_count(model: nn.Module, data: qdata.Dataset, plan: Plan | None = None, *, batch_size: int = 250,
                  progress: bool = False, seed: int = 0, desc: str = "evaluate") -> int:
    """Number of images of ``data`` that ``model`` under ``plan`` classifies right."""
    from tqdm.auto import tqdm

    data = check_dataset(data)
    plan = check_plan(plan)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)  # stochastic rounding repeats run to run
    handle = quantize(model, plan, generator) if plan is not None else None
    correct = 0
    try:
        with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for x, y in qdata.loader(data, batch_size):
                x, y = x.to(device), y.to(device)
                correct += int((model(x).argmax(dim=1) == y).sum())
                bar.update(len(y))
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    return correct


def evaluate(model: nn.Module, data: qdata.Dataset, plan: Plan | None = None, *, batch_size: int = 250,
             progress: bool = False, seed: int = 0) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` with ``plan`` attached (None: float).

    Stochastic rounding draws from a generator seeded with ``seed``: the same call
    gives the same number.
    """
    return correct_count(model, data, plan, batch_size=batch_size, progress=progress, seed=seed) / len(data)


def relative_accuracy(model: nn.Module, data: qdata.Dataset, plan: Plan | None, *, float_accuracy: float | None = None,
                      **kwargs) -> float:
    """Quantized accuracy / float accuracy on the same images (the deck's measure); nan if float accuracy is 0."""
    if float_accuracy is None:
        float_accuracy = evaluate(model, data, None, **kwargs)
    q = evaluate(model, data, plan, **kwargs)
    return q / float_accuracy if float_accuracy > 0 else math.nan


# -- fingerprints and cached evaluation ------------------------------------------------

def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture (its repr and class) and every parameter and buffer, bit for bit."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def data_fingerprint(data: qdata.Dataset) -> str:
    """Hash of the images and labels, bit for bit, and the set's name."""
    h = hashlib.sha256(data.name.encode())
    for t in (data.images, data.labels):
        h.update(f"{t.dtype}:{list(t.shape)}".encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def as_cache(cache) -> ResultCache | None:
    """None/True: the default :class:`ResultCache`; False: no cache; a path or a ResultCache."""
    if cache is None or cache is True:
        return ResultCache()
    if cache is False:
        return None
    if isinstance(cache, ResultCache):
        return cache
    return ResultCache(cache)


class Evaluator:
    """Accuracies of one (model, data set) under many plans, cached on disk by (model, data, plan, seed).

    A sweep or search that is interrupted finds the points it finished in the cache.
    ``evaluations`` counts the quantized points actually computed (not read back; the float run is not counted).
    """

    def __init__(self, model: nn.Module, data: qdata.Dataset, *, cache=None, batch_size: int = 250, seed: int = 0,
                 fingerprints: tuple[str, str] | None = None):
        self.model, self.data = model, check_dataset(data)
        self.cache = as_cache(cache)
        self.batch_size, self.seed = batch_size, seed
        self.evaluations = 0
        self._model_fp, self._data_fp = fingerprints or (model_fingerprint(model), data_fingerprint(self.data))
        self._memo: dict[str, int] = {}

    def point_key(self, plan: Plan | None) -> str:
        return key(kind="correct", model=self._model_fp, data=self._data_fp,
                   plan=None if plan is None else plan.to_dict(), seed=self.seed)

    def correct(self, plan: Plan | None) -> int:
        k = self.point_key(plan)
        if k in self._memo:
            return self._memo[k]
        if self.cache is not None and self.cache.exists(k):
            value = int(self.cache.load(k))
        else:
            value = correct_count(self.model, self.data, plan, batch_size=self.batch_size, seed=self.seed)
            self.evaluations += plan is not None
            if self.cache is not None:
                self.cache.save(k, value)
        self._memo[k] = value
        return value

    def accuracy(self, plan: Plan | None) -> float:
        return self.correct(plan) / len(self.data)

    @property
    def float_correct(self) -> int:
        return self.correct(None)

    def relative(self, plan: Plan | None) -> float:
        f = self.float_correct
        return self.correct(plan) / f if f else math.nan
