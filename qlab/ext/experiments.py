"""What the reproduction notebooks (``notebooks/1*_*.ipynb``) share: loading a model and its
test images, sweeping arbitrary spec templates over W and F, and writing and showing tables.

The notebooks stay thin: each cell calls one function of :mod:`qlab.ext.lab`, this module
or :mod:`qlab.widgets.charts`.

Spec templates
    :func:`sweep_specs` generalises :func:`qlab.ext.lab.sweep` from ``fixed(W,F,rounding)``
    to any spec string with ``{...}`` holes: integer expressions in ``W`` and ``F`` with
    ``+ - * //`` and parentheses, e.g. ::

        "intrinsic(fixed({W},{F},nearest),accumulate=final)"
        "intrinsic(fixed({W},{F},nearest),acc=fixed({2*W},{F},nearest))"

Data and models
    :func:`load_data` gives the test images as a :class:`~qlab.ext.data.Dataset`:
    "fashion-mnist" (optionally from ``data_dir``), "digits", or "imagenet" (an
    ImageFolder ``data_dir/val/<class>/*.JPEG``, of which ``n`` images are decoded into
    memory).  :func:`load_model` gives a zoo model trained on the matching training
    split (:func:`qlab.ext.zoo.pretrained`) or a torchvision model (``resnet50``, ...) with
    the weights file ``weights_dir/<name>.pth``.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from qlab.core import Plan

from . import data as qdata
from .evaluation import Evaluator, check_layers
from .sweep import best_per_width, fractions_for  # noqa: F401  (best_per_width: part of this module's API)

SPEC_COLUMNS = ["model", "placement", "variant", "spec", "W", "F", "accuracy", "float_accuracy", "relative_accuracy"]
DATASETS = ("fashion-mnist", "digits", "imagenet")

# -- spec templates ------------------------------------------------------------------------

_HOLE = re.compile(r"\{([^{}]*)\}")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _int_expr(text: str, env: Mapping[str, int]) -> int:
    """Value of an integer expression over the names in ``env`` (``+ - * //``, parentheses, unary minus)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"spec template hole {{{text}}}: not an expression") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise ValueError(f"spec template hole {{{text}}}: unknown name {node.id!r}; use {', '.join(env)}")
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"spec template hole {{{text}}}: only integers, {', '.join(env)}, + - * // and "
                         "parentheses are allowed")

    return int(ev(tree))


def expand(template: str | Callable[[int, int], str], W: int, F: int) -> str:
    """The spec for (W, F): ``template``'s ``{...}`` holes evaluated, or ``template(W, F)`` if it is callable.

    >>> expand("intrinsic(fixed({W},{F}),acc=fixed({2*W},{F}))", 8, 4)
    'intrinsic(fixed(8,4),acc=fixed(16,4))'
    """
    if callable(template):
        return str(template(W, F))
    if not isinstance(template, str):
        raise ValueError(f"a spec template must be a string or a function of (W, F), got {type(template).__name__}")
    env = {"W": int(W), "F": int(F)}
    return _HOLE.sub(lambda m: str(_int_expr(m.group(1), env)), template)


def around_half(radius: int) -> Callable[[int], list[int]]:
    """F in W//2 - radius .. W//2 + radius, kept inside 0 .. W-1: a fixed window around the deck's F = W/2."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")

    def fractions(W: int) -> list[int]:
        return [f for f in range(W // 2 - radius, W // 2 + radius + 1) if 0 <= f < W]

    return fractions


@dataclass(frozen=True)
class Walk:
    """The best F for a W without trying every F: start with F in W//2 ± ``radius`` (inside 0..W-1),
    then, while the best F tried sits at an edge of the window and beats its inner neighbour strictly,
    try one F further out.

    Relative accuracy over F rises while more fraction bits resolve the values and falls once too few
    integer bits saturate them, so the walk ends at the peak after a few points.  On a plateau (equal
    accuracy at the edge and next to it) it stops: the best F is then the smallest F tried among the
    best, not necessarily the smallest F overall with that accuracy.
    """

    radius: int = 1

    def __post_init__(self):
        if self.radius < 1:
            raise ValueError(f"a walk's radius must be >= 1 (a window of three F at least), got {self.radius}")

    def run(self, W: int, score: Callable[[int], float]) -> list[int]:
        """The F tried, in order; ``score(F)`` is called once per F tried."""
        lo, hi = max(0, W // 2 - self.radius), min(W - 1, W // 2 + self.radius)
        seen: dict[int, float] = {}

        def best() -> int:
            return min(seen, key=lambda f: (-_key(seen[f]), f))

        for f in range(lo, hi + 1):
            seen[f] = score(f)
        while True:
            b = best()
            if b == lo and lo > 0 and lo + 1 in seen and _key(seen[lo]) > _key(seen[lo + 1]):
                lo -= 1
                seen[lo] = score(lo)
            elif b == hi and hi < W - 1 and hi - 1 in seen and _key(seen[hi]) > _key(seen[hi - 1]):
                hi += 1
                seen[hi] = score(hi)
            else:
                return list(seen)


def _key(x: float) -> float:
    return -math.inf if x != x else x  # nan ranks lowest


def f_choice(search: str = "walk", radius: int = 1):
    """The ``fractions`` argument of the notebooks' best-F sweeps: ``"walk"`` (:class:`Walk` from
    W//2 ± ``radius``), ``"window"`` (every F in W//2 ± ``radius``), ``"all"`` or ``"half"``."""
    if search == "walk":
        return Walk(radius)
    if search == "window":
        return around_half(radius)
    if search in ("all", "half"):
        return search
    raise ValueError(f"unknown F search {search!r}; expected walk, window, all or half")


def _check_sweep(model, specs, widths, placement, layers):
    if not specs:
        raise ValueError("no spec templates given: specs maps a variant name to a template")
    widths = [int(w) for w in ([widths] if isinstance(widths, int) else widths)]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be integers >= 1, got {widths}")
    if placement not in ("extrinsic", "intrinsic", "weights"):
        raise ValueError(f"unknown placement {placement!r}; expected extrinsic, intrinsic or weights")
    patterns = [layers] if isinstance(layers, str) else list(layers)
    check_layers(model, [p for p in patterns if not any(c in p for c in "*?[") and not p.startswith("type:")])
    return widths, patterns


def sweep_specs(
    model: nn.Module,
    data: qdata.Dataset,
    specs: Mapping[str, str | Callable[[int, int], str]],
    widths: Iterable[int],
    fractions="half",
    placement: str = "intrinsic",
    layers: str | Iterable[str] = "*",
    name: str | None = None,
    cache=None,
    progress: bool = True,
    batch_size: int = 250,
    seed: int = 0,
):
    """Accuracy of ``model`` on ``data`` for every (variant, W, F), ``specs`` mapping variant -> template.

    Each point is the plan ``{placement: {pattern: expand(template, W, F)}}`` for every
    pattern of ``layers``, evaluated by an :class:`~qlab.ext.evaluation.Evaluator`
    (cached on disk like :func:`qlab.ext.lab.sweep`; ``cache=False`` for none).
    ``fractions`` as in :func:`qlab.ext.lab.sweep` ("half", "all", an int, a list, a
    function of W such as :func:`around_half`), or a :class:`Walk` that looks for the
    best F of each (variant, W) from W//2.  Returns a DataFrame with
    :data:`SPEC_COLUMNS`, in the order variant, W, F.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    widths, patterns = _check_sweep(model, specs, widths, placement, layers)
    name = name or type(model).__name__
    walk = fractions if isinstance(fractions, Walk) else None
    cells = [(v, W) for v, W in product(specs, widths)]
    candidates = {(v, W): (list(range(W)) if walk else fractions_for(fractions, W)) for v, W in cells}
    plans = {}
    for (v, W), fs in candidates.items():  # every spec parses before the first evaluation
        for F in fs:
            spec = expand(specs[v], W, F)
            plans[v, W, F] = (spec, Plan(**{placement: {p: spec for p in patterns}}))
    ev = Evaluator(model, data, cache=cache, batch_size=batch_size, seed=seed)
    float_acc = ev.accuracy(None)
    rows = []

    def point(v, W, F):
        spec, plan = plans[v, W, F]
        acc = ev.accuracy(plan)
        rel = acc / float_acc if float_acc else math.nan
        rows.append((name, placement, v, spec, W, F, acc, float_acc, rel))
        bar.update(1)
        return rel

    total = len(cells) if walk else len(plans)
    with tqdm(total=total, desc=f"sweep {name}", unit="W" if walk else "point", disable=not progress) as bar:
        for v, W in cells:
            if walk:
                walk.run(W, lambda F: point(v, W, F))
            else:
                for F in candidates[v, W]:
                    point(v, W, F)
    df = pd.DataFrame(rows, columns=SPEC_COLUMNS).sort_values(["variant", "W", "F"], kind="stable",
                                                             key=lambda c: c.map(list(specs).index)
                                                             if c.name == "variant" else c)
    df = df.reset_index(drop=True)
    df.attrs["evaluations"] = ev.evaluations
    return df


def fixed_sweep(model, data, widths, fractions="half", roundings=("nearest",), placements=("extrinsic",),
                layers="*", name=None, cache=None, progress: bool = True, batch_size: int = 250, seed: int = 0):
    """:func:`qlab.ext.lab.sweep`'s table (same columns, same cached points) for ``fixed(W,F,rounding)``,
    with ``fractions`` also a :class:`Walk`."""
    import pandas as pd

    from .sweep import COLUMNS

    roundings = (roundings,) if isinstance(roundings, str) else tuple(roundings)
    placements = (placements,) if isinstance(placements, str) else tuple(placements)
    frames = []
    for placement in placements:
        specs = {r: f"fixed({{W}},{{F}},{r})" for r in roundings}
        df = sweep_specs(model, data, specs, widths, fractions, placement, layers, name, cache, progress,
                         batch_size, seed)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True).rename(columns={"variant": "rounding"})[COLUMNS]
    out.attrs["evaluations"] = sum(f.attrs["evaluations"] for f in frames)
    return out


def smallest_width(df, threshold: float = 0.99, keys: Iterable[str] | None = None):
    """One row per ``keys``: the smallest W at which some F reaches ``threshold`` relative accuracy
    (``W`` is <NA> where no swept W does), with that F and its relative accuracy."""
    import pandas as pd

    keys = [c for c in ("model", "placement", "rounding", "variant") if c in df.columns] if keys is None else list(keys)
    best = best_per_width(df, keys)
    rows = []
    for group, part in best.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        ok = part[part["relative_accuracy"] >= threshold - 1e-12].sort_values("W")
        hit = ok.iloc[0] if len(ok) else None
        rows.append((*group, None if hit is None else int(hit["W"]), None if hit is None else int(hit["F"]),
                     math.nan if hit is None else float(hit["relative_accuracy"])))
    out = pd.DataFrame(rows, columns=[*keys, "W", "F", "relative_accuracy"])
    out[["W", "F"]] = out[["W", "F"]].astype("Int64")
    out.attrs["threshold"] = threshold
    return out


# -- tables in the deck's layout -----------------------------------------------------------

def width_table(best_df, row: str = "model", digits: int = 2):
    """Rows x W, each cell ``"rel,F"`` as the deck prints it (``papers.wide``'s layout); missing cells ``"-"``."""
    import pandas as pd

    rows = list(dict.fromkeys(best_df[row]))
    cols = sorted(dict.fromkeys(int(w) for w in best_df["W"]))
    out = pd.DataFrame("-", index=pd.Index(rows, name=row), columns=pd.Index(cols, name="W"), dtype=object)
    for r in best_df.itertuples(index=False):
        rel = getattr(r, "relative_accuracy")
        if not pd.isna(rel):
            out.loc[getattr(r, row), int(r.W)] = f"{rel:.{digits}f},{int(r.F)}"
    return out


def side_by_side(ours, published, ours_label: str = "qlab", published_label: str = "deck"):
    """``ours`` above ``published`` in one table, a first index level naming the source; missing cells ``"-"``.

    Columns are the union of both, in sorted order when they are all numbers (word widths).
    """
    import pandas as pd

    cols = list(dict.fromkeys([*ours.columns, *published.columns]))
    if all(isinstance(c, (int, float)) for c in cols):
        cols = sorted(cols)
    parts = {ours_label: ours.reindex(columns=cols), published_label: published.reindex(columns=cols)}
    out = pd.concat(parts, names=["source", ours.index.name or published.index.name or "row"])
    return out.astype(object).where(out.notna(), "-")


# -- data, models, output ------------------------------------------------------------------

def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def output_dir(experiment: str, out_dir: str | os.PathLike | None = None) -> Path:
    """``out_dir`` (created), by default ``build/<experiment>`` in the source checkout."""
    path = Path(out_dir) if out_dir else repo_root() / "build" / experiment
    path.mkdir(parents=True, exist_ok=True)
    return path


def _imagenet(data_dir, n: int, seed: int, image_size: int, split: str = "val") -> qdata.Dataset:
    """``n`` images drawn (by ``seed``) from the ImageFolder ``data_dir/split``, decoded into memory."""
    import torchvision
    from torchvision import transforms as T

    resize = round(image_size * 256 / 224)  # torchvision's evaluation transform: 256 -> 224, 342 -> 299
    tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                    T.Normalize(qdata.IMAGENET_MEAN, qdata.IMAGENET_STD)])
    folder = Path(data_dir).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no ImageNet folder {folder}: data_dir must hold {split}/<class>/<images>")
    ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    count = len(ds) if not n or n >= len(ds) else n
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    images, labels = zip(*(ds[int(i)] for i in idx))
    name = f"imagenet-{split}[{count}@{seed}]" if count < len(ds) else f"imagenet-{split}"
    return qdata.Dataset(torch.stack(images), torch.tensor(labels, dtype=torch.int64), name, list(ds.classes))


def load_data(data: str = "fashion-mnist", data_dir=None, n: int | None = None, seed: int = 0,
              split: str = "test", image_size: int = 224) -> qdata.Dataset:
    """The ``split`` of ``data`` ("fashion-mnist", "digits" or "imagenet"), ``n`` images drawn by ``seed`` (None: all).

    "imagenet" needs ``data_dir`` (an ImageFolder with ``val/``; ``split="test"`` reads
    ``val``) and decodes only the ``n`` images it keeps, at ``image_size`` (299 for
    Inception-v3).
    """
    if data not in DATASETS:
        raise ValueError(f"unknown data set {data!r}; expected one of {', '.join(DATASETS)}")
    if data == "imagenet":
        if data_dir is None:
            raise ValueError("data='imagenet' needs data_dir, the ImageNet folder with val/<class>/*.JPEG")
        return _imagenet(data_dir, n or 0, seed, image_size, "val" if split == "test" else split)
    if data == "digits":
        ds = qdata.digits(split)
    else:
        ds = qdata.fashion_mnist(split, data_dir)
    return qdata.subset(ds, n, seed) if n else ds


def is_torchvision(name: str) -> bool:
    from .zoo import TORCHVISION_MODELS

    return name in TORCHVISION_MODELS


def load_model(name: str, data: str = "fashion-mnist", data_dir=None, weights_dir=None, device: str = "cpu",
               progress: bool = False) -> nn.Module:
    """Zoo model ``name`` trained on ``data``'s training split (once, then loaded from the checkpoint store),
    or torchvision model ``name`` with the weights ``weights_dir/<name>.pth``; in eval mode on ``device``."""
    from . import zoo

    if is_torchvision(name):
        path = None
        if weights_dir is not None:
            path = Path(weights_dir).expanduser() / f"{name}.pth"
            if not path.is_file():
                raise FileNotFoundError(f"no weights {path} for torchvision's {name}: save its state dict there")
        model = zoo.torchvision_model(name, path)
    else:
        if data == "imagenet":
            raise ValueError(f"zoo model {name!r} is for 28x28 grey images; on ImageNet use a torchvision model "
                             f"({', '.join(zoo.TORCHVISION_MODELS)})")
        train = qdata.fashion_mnist("train", data_dir) if data == "fashion-mnist" and data_dir else data
        model = zoo.pretrained(name, train, progress=progress)
    return model.to(device).eval()


def image_size(model_name: str) -> int:
    """The input side a torchvision model's published weights expect (299 for Inception-v3, else 224)."""
    return 299 if model_name == "inception_v3" else 224


def write_table(df, out_dir, name: str, index: bool = False) -> Path:
    """``df`` as ``out_dir/<name>.csv``; returns the path."""
    path = Path(out_dir) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=index)
    return path


def write_json(obj, out_dir, name: str) -> Path:
    """``obj`` (JSON values; numpy scalars become numbers) as ``out_dir/<name>.json``; returns the path."""
    def default(x):
        if hasattr(x, "item"):
            return x.item()
        raise TypeError(f"{type(x).__name__} is not JSON serialisable")

    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")
    return path


def variant_chart(df, title: str = "Relative accuracy over word width"):
    """Relative accuracy over W, a colour per variant (one row per (model, variant, W): best F or a fixed F),
    a dash per model."""
    import altair as alt

    missing = [c for c in ("model", "variant", "W", "F", "relative_accuracy") if c not in df.columns]
    if missing:
        raise ValueError(f"variant_chart: the table lacks column(s) {', '.join(missing)}")
    data = df.reset_index(drop=True)
    enc = dict(
        x=alt.X("W:Q", title="word width W (bits)", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("relative_accuracy:Q", title="relative accuracy", scale=alt.Scale(domain=[0, 1.05], clamp=True),
                axis=alt.Axis(format="%")),
        color=alt.Color("variant:N", title="variant"),
        tooltip=["model:N", "variant:N", "W:Q", "F:Q", alt.Tooltip("relative_accuracy:Q", format=".4f")],
    )
    if data["model"].nunique() > 1:
        enc["strokeDash"] = alt.StrokeDash("model:N", title="model")
    return alt.Chart(data, title=title).mark_line(point=True).encode(**enc).properties(width=420, height=260)
