"""Sweeps over word width W x fraction bits F x rounding x placement, as a pandas DataFrame.

One row per point: model, placement, rounding, W, F, accuracy, float_accuracy,
relative_accuracy.  Each point is cached on disk (see
:class:`~qlab.ext.evaluation.Evaluator`), so an interrupted sweep resumes where it
stopped and a rerun is instant.  :func:`best_fraction_bits` reduces a sweep to the
deck's "relative accuracy, best F" for each W.
"""
from __future__ import annotations

from itertools import product
from typing import Callable, Iterable

from torch import nn

from qlab.core import Plan
from qlab.core.rounding import ROUNDINGS

from . import data as qdata
from .evaluation import Evaluator, check_layers

PLACEMENTS = ("extrinsic", "intrinsic", "weights")
COLUMNS = ["model", "placement", "rounding", "W", "F", "accuracy", "float_accuracy", "relative_accuracy"]


def fixed_spec(W: int, F: int, rounding: str = "nearest") -> str:
    return f"fixed({W},{F},{rounding})"


def fractions_for(fractions, W: int) -> list[int]:
    """The F values ``fractions`` names for width W ("half", "all", an int, a list or a function of W)."""
    if fractions == "half":
        return [W // 2]
    if fractions == "all":
        return list(range(0, W))
    if callable(fractions):
        return [int(f) for f in fractions(W)]
    if isinstance(fractions, int):
        return [fractions]
    return [int(f) for f in fractions]


def _check_choice(kind: str, values, allowed) -> tuple:
    values = (values,) if isinstance(values, str) else tuple(values)
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {kind} {v!r}; expected one of {', '.join(allowed)}")
    if not values:
        raise ValueError(f"no {kind} given")
    return values


def sweep(
    model: nn.Module,
    data: qdata.Dataset,
    widths: Iterable[int],
    fractions: str | int | Iterable[int] | Callable[[int], Iterable[int]] = "half",
    roundings: str | Iterable[str] = ("nearest",),
    placements: str | Iterable[str] = ("extrinsic",),
    layers: str | Iterable[str] = "*",
    name: str | None = None,
    cache=None,
    progress: bool = True,
    batch_size: int = 250,
    seed: int = 0,
):
    """Relative accuracy of ``model`` on ``data`` for every (placement, rounding, W, F).

    ``fractions``: "half" (F = W // 2, the deck's rounding experiment), "all"
    (F = 0 .. W-1, for :func:`best_fraction_bits`), an int, a list, or a function of W.
    ``layers``: the plan pattern(s) quantized (default every module).  ``cache``:
    None for the default result cache, False for none, a folder or a ResultCache.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    widths = [int(w) for w in ([widths] if isinstance(widths, int) else widths)]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be integers >= 1, got {widths}")
    roundings = _check_choice("rounding", roundings, ROUNDINGS)
    placements = _check_choice("placement", placements, PLACEMENTS)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    check_layers(model, [p for p in patterns if not any(c in p for c in "*?[") and not p.startswith("type:")])
    name = name or type(model).__name__
    ev = Evaluator(model, data, cache=cache, batch_size=batch_size, seed=seed)
    points = [(p, r, W, F) for p, r, W in product(placements, roundings, widths) for F in fractions_for(fractions, W)]
    rows = []
    float_acc = ev.accuracy(None)
    for placement, rounding, W, F in tqdm(points, desc=f"sweep {name}", unit="point", disable=not progress):
        spec = fixed_spec(W, F, rounding)
        plan = Plan(**{placement: {p: spec for p in patterns}})
        acc = ev.accuracy(plan)
        rows.append((name, placement, rounding, W, F, acc, float_acc, acc / float_acc if float_acc else float("nan")))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["evaluations"] = ev.evaluations
    return df


def best_per_width(df, keys=None):
    """One row (all columns) per (keys, W): the F with the highest relative accuracy.

    ``keys`` default to those of model / placement / rounding / variant that ``df`` has.
    Ties go to the smallest F (the most integer bits, so the most headroom), which is how
    a walk upward from F = 0 with a strict "better than" would report it.  Text keys keep
    the order their values first appear in (models as given), W ascends.
    """
    keys = [c for c in ("model", "placement", "rounding", "variant") if c in df.columns] if keys is None else list(keys)
    keys = keys + ["W"]
    ordered = df.sort_values(keys + ["relative_accuracy", "F"], ascending=[True] * len(keys) + [False, True],
                             kind="stable", key=_first_seen)
    return ordered.groupby(keys, sort=False, as_index=False).head(1).reset_index(drop=True)


def _first_seen(column):
    """Sort key: text columns in the order their values first appear, numbers as they are."""
    if column.dtype.kind in "biuf":
        return column
    return column.map({v: i for i, v in enumerate(dict.fromkeys(column))})


def best_fraction_bits(df):
    """The deck's "relative accuracy, best F" for each (model, placement, rounding, W) of a sweep."""
    keys = [c for c in ("model", "placement", "rounding") if c in df.columns]
    return best_per_width(df, keys)[keys + ["W", "F", "relative_accuracy"]]
