"""The published numbers qlab reproduces: the CSV tables under ``papers/``.

>>> from qlab.ext import papers
>>> papers.tables()[:2]
['deep_compression/table1', 'tensorquant/extrinsic_width']
>>> df = papers.table("tensorquant/extrinsic_width")       # tidy, one row per cell
>>> df.query("topology == 'ResNet 50' and W == 8")[["relative_accuracy", "best_F"]].values.tolist()
[[0.99, 2]]
>>> papers.wide("tensorquant/extrinsic_width").loc["ResNet 50", 8]
'0.99,2'

A table's name is ``<source folder>/<file stem>``.  ``papers/`` sits next to the
``qlab`` package (``Path(qlab.__file__).parents[1] / "papers"``), which holds for a source
checkout and for an editable install; each source folder's README.md documents where
every number comes from and what every column means.  :data:`SCHEMAS` gives the columns
and dtypes that :func:`table` checks and returns.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import pandas as pd

import qlab

__all__ = ["SCHEMAS", "papers_dir", "tables", "table", "wide"]

_WIDTH = {"topology": "string", "W": "int64", "relative_accuracy": "float64", "best_F": "Int64"}

#: Documented columns (in file order) and pandas dtypes of every table.
SCHEMAS: dict[str, dict[str, str]] = {
    "tensorquant/extrinsic_width": dict(_WIDTH),
    "tensorquant/intrinsic_width": dict(_WIDTH),
    "tensorquant/lenet_intrinsic": dict(_WIDTH),
    "tensorquant/inception_v3_per_layer": {
        "layer": "string", "position": "int64", "threshold": "float64",
        "W": "Int64", "F": "Int64", "ocr_text": "string", "reading": "string",
    },
    "tensorquant/inception_v3_compression": {"threshold": "float64", "compression": "float64"},
    "tensorquant/gradient_alexnet": {"W": "int64", "F": "int64", "relative_accuracy": "float64"},
    "deep_compression/table1": {
        "network": "string", "variant": "string", "top1_error": "float64", "top5_error": "float64",
        "parameters": "float64", "parameters_unit": "string", "compression": "float64",
    },
}

MISSING = "-"  # how wide() shows a missing cell, as the deck does


def papers_dir(root: str | Path | None = None) -> Path:
    """The ``papers/`` folder: ``root`` if given, else the one next to the qlab package."""
    path = Path(root) if root is not None else Path(qlab.__file__).resolve().parents[1] / "papers"
    if not path.is_dir():
        raise FileNotFoundError(
            f"qlab.ext.papers: no papers/ folder at {path}; it comes with a source checkout "
            "or an editable install (pip install -e .), not with a built wheel")
    return path


def tables(root: str | Path | None = None) -> list[str]:
    """Names of all tables, ``<source>/<stem>``, sorted."""
    base = papers_dir(root)
    return sorted(f"{p.parent.name}/{p.stem}" for p in base.glob("*/*.csv"))


def _resolve(name: str, root: str | Path | None) -> tuple[str, Path]:
    known = tables(root)
    key = str(name).strip().strip("/").removesuffix(".csv")
    if key not in known:
        nearest = difflib.get_close_matches(key, known, n=len(known), cutoff=0.0)
        rest = [k for k in known if k not in nearest]
        raise ValueError(f"unknown papers table {name!r}; known (nearest first): {', '.join(nearest + rest)}")
    return key, papers_dir(root) / f"{key}.csv"


def table(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """One table as a tidy DataFrame, with the columns and dtypes of :data:`SCHEMAS`.

    Only empty CSV cells are missing values (NaN / <NA>); strings such as "NA" stay text.
    """
    key, path = _resolve(name, root)
    schema = SCHEMAS.get(key)
    df = pd.read_csv(path, dtype=schema, keep_default_na=False, na_values=[""], encoding="utf-8")
    if schema is not None and list(df.columns) != list(schema):
        raise ValueError(f"{path}: columns {list(df.columns)} differ from the documented {list(schema)}")
    return df


# ---------------------------------------------------------------------------- wide()

def _grid(df: pd.DataFrame, row: str, col: str, cell: Callable[[pd.Series], str],
          index_name: str | None = None, columns_name: str | None = None) -> pd.DataFrame:
    """Pivot to rows x columns in first-appearance order, each cell formatted by ``cell(row)``."""
    rows = list(pd.unique(df[row]))
    cols = list(pd.unique(df[col]))
    out = pd.DataFrame(MISSING, index=pd.Index(rows, name=index_name or row),
                       columns=pd.Index(cols, name=columns_name or col), dtype=object)
    for _, r in df.iterrows():
        out.loc[r[row], r[col]] = cell(r)
    return out


def _width_cell(r: pd.Series) -> str:
    if pd.isna(r["relative_accuracy"]) or pd.isna(r["best_F"]):
        return MISSING
    return f"{r['relative_accuracy']:.2f},{int(r['best_F'])}"


def _pct(t: float) -> str:
    return f"{t:.0%}"


def _wf(w, f) -> str:
    return MISSING if pd.isna(w) or pd.isna(f) else f"{int(w)},{int(f)}"


def _wide_width(df):
    return _grid(df, "topology", "W", _width_cell)


def _wide_per_layer(df):
    d = df.sort_values(["position"], kind="stable").assign(col=df["threshold"].map(_pct))
    return _grid(d, "layer", "col", lambda r: _wf(r["W"], r["F"]), columns_name="threshold")


def _wide_compression(df):
    d = df.assign(row="compression", col=df["threshold"].map(_pct))
    return _grid(d, "row", "col", lambda r: f"x{r['compression']:g}", index_name=None,
                 columns_name="threshold").rename_axis(index=None)


def _wide_gradient(df):
    d = df.assign(row="rel. accuracy", col=[f"{w},{f}" for w, f in zip(df["W"], df["F"])])
    return _grid(d, "row", "col", lambda r: repr(float(r["relative_accuracy"])),
                 columns_name="(W,F)").rename_axis(index=None)


def _wide_table1(df):
    idx = [f"{n} {v.capitalize()}" for n, v in zip(df["network"], df["variant"])]

    def err(x):
        return MISSING if pd.isna(x) else f"{x:.2f}%"

    out = pd.DataFrame({
        "Top-1 Error": [err(x) for x in df["top1_error"]],
        "Top-5 Error": [err(x) for x in df["top5_error"]],
        "Parameters": [f"{p:g} {u}" for p, u in zip(df["parameters"], df["parameters_unit"])],
        "Compress Rate": ["" if pd.isna(c) else f"{c:g}x" for c in df["compression"]],
    }, index=pd.Index(idx, name="Network"), dtype=object)
    return out


_WIDE: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "tensorquant/extrinsic_width": _wide_width,
    "tensorquant/intrinsic_width": _wide_width,
    "tensorquant/lenet_intrinsic": _wide_width,
    "tensorquant/inception_v3_per_layer": _wide_per_layer,
    "tensorquant/inception_v3_compression": _wide_compression,
    "tensorquant/gradient_alexnet": _wide_gradient,
    "deep_compression/table1": _wide_table1,
}


def wide(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """The table in the deck's 2-D layout, every cell a string as the deck prints it.

    Width tables: topology x W, cells ``"0.98,2"`` (relative accuracy, best F).  Per layer:
    layer x ``"100%"/"99%"/"90%"``, cells ``"W,F"``.  Missing cells are ``"-"``.
    """
    key, _ = _resolve(name, root)
    if key not in _WIDE:
        raise ValueError(f"no 2-D layout known for {key!r}; tables with one: {', '.join(sorted(_WIDE))}")
    return _WIDE[key](table(key, root))
