"""Altair charts of qlab's result tables, and saving them offline (HTML with vega inlined, PNG).

Each chart is a function of one results table (a pandas DataFrame) with the columns
named below; the chart's data are that table's rows, so ``chart.to_dict()`` carries
them and a saved HTML file is complete on its own.

* :func:`accuracy_over_width`: best-F table ``model, placement, rounding, W, F,
  relative_accuracy``: relative accuracy over W, a colour per model, a dash per placement.
* :func:`layer_heatmap`: per-layer search table ``model, layer, threshold, W, F,
  relative_accuracy, ...``: layers x accuracy threshold, colour = W, text "W,F".
* :func:`rounding_chart`: sweep table ``model, placement, rounding, W, F, accuracy,
  float_accuracy, relative_accuracy``: relative accuracy over W per rounding mode,
  a panel per placement (the deck's F = W/2 points by default).
* :func:`runs_chart`: the panel's runs ``run, label, accuracy, float_accuracy,
  relative_accuracy``: relative accuracy per run, the run's label in the tooltip.
"""
from __future__ import annotations

import re
from pathlib import Path

import altair as alt
import pandas as pd

BEST_COLUMNS = ("model", "placement", "rounding", "W", "F", "relative_accuracy")
SEARCH_COLUMNS = ("model", "layer", "threshold", "W", "F", "relative_accuracy")
SWEEP_COLUMNS = ("model", "placement", "rounding", "W", "F", "relative_accuracy")
RUNS_COLUMNS = ("run", "label", "accuracy", "float_accuracy", "relative_accuracy")

_REL = alt.Y("relative_accuracy:Q", title="relative accuracy", scale=alt.Scale(domain=[0, 1.05], clamp=True),
             axis=alt.Axis(format="%"))


def _check(df: pd.DataFrame, columns, what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")
    return df.reset_index(drop=True)


def accuracy_over_width(best_df: pd.DataFrame, title: str = "Relative accuracy over word width (best F per W)") -> alt.Chart:
    """Relative accuracy over W: a line per model (colour), dashed by placement; the tooltip gives the best F."""
    df = _check(best_df, BEST_COLUMNS, "accuracy_over_width")
    return (
        alt.Chart(df, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("W:Q", title="word width W (bits)", axis=alt.Axis(tickMinStep=1)),
            y=_REL,
            color=alt.Color("model:N", title="model"),
            strokeDash=alt.StrokeDash("placement:N", title="placement", legend=alt.Legend(symbolType="stroke")),
            detail="rounding:N",
            tooltip=["model:N", "placement:N", "rounding:N", "W:Q", "F:Q",
                     alt.Tooltip("relative_accuracy:Q", format=".4f")],
        )
        .properties(width=420, height=260)
    )


def layer_heatmap(search_df: pd.DataFrame, title: str = "Smallest (W,F) per layer") -> alt.LayerChart:
    """Layers (in table order, i.e. model order) x accuracy threshold: colour = W, text "W,F".

    A layer the search gave up on (no W) shows "float" on an uncoloured cell.
    """
    df = _check(search_df, SEARCH_COLUMNS, "layer_heatmap").copy()
    gave_up = df["W"].isna() | df["F"].isna()
    df["WF"] = ["float" if g else f"{int(w)},{int(f)}" for g, w, f in zip(gave_up, df["W"], df["F"])]
    for col in ("W", "F"):  # ints, and JSON null where a layer gave up
        df[col] = df[col].astype("Int64")
    layers = list(dict.fromkeys(df["layer"]))
    thresholds = sorted(dict.fromkeys(df["threshold"]), reverse=True)
    x = alt.X("threshold:O", title="accuracy threshold (relative)", sort=thresholds, axis=alt.Axis(labelAngle=0))
    y = alt.Y("layer:N", title="layer", sort=layers)
    base = alt.Chart(df).encode(x=x, y=y)
    cells = base.mark_rect().encode(
        color=alt.Color("W:Q", title="W (bits)", scale=alt.Scale(scheme="viridis", reverse=True)),
        tooltip=["model:N", "layer:N", "threshold:Q", "W:Q", "F:Q", alt.Tooltip("relative_accuracy:Q", format=".4f")],
    )
    text = base.mark_text(fontSize=11).encode(
        text="WF:N",
        # dark text on the light (small W) cells, white on the dark ones
        color=alt.condition(alt.datum.W < _mid(df["W"]), alt.value("black"), alt.value("white")),
    )
    height = max(120, 22 * len(layers))
    return alt.layer(cells, text, title=title).properties(width=max(160, 70 * len(thresholds)), height=height)


def _mid(w: pd.Series) -> float:
    w = w.dropna()
    return (float(w.min()) + float(w.max())) / 2 if len(w) else 0.0


def rounding_chart(sweep_df: pd.DataFrame, f: str = "half",
                   title: str = "Rounding modes: relative accuracy over W") -> alt.FacetChart:
    """Relative accuracy over W, a colour per rounding mode, a panel per placement (intrinsic / extrinsic).

    ``f`` picks one point per W from a sweep over F: ``"half"`` (the deck's F = W // 2)
    or ``"best"`` (the F with the highest relative accuracy).  With several models the
    line is dashed per model.
    """
    df = _check(sweep_df, SWEEP_COLUMNS, "rounding_chart")
    keys = ["model", "placement", "rounding", "W"]
    if f == "half":
        df = df[df["F"] == df["W"] // 2]
        if df.empty:
            raise ValueError("rounding_chart: the sweep has no point with F = W // 2; use f='best'")
    elif f == "best":
        df = df.loc[df.groupby(keys, sort=False)["relative_accuracy"].idxmax()]
    else:
        raise ValueError(f"rounding_chart: f must be 'half' or 'best', got {f!r}")
    if df.duplicated(keys).any():
        raise ValueError("rounding_chart: several rows per (model, placement, rounding, W); average repeats first")
    df = df.reset_index(drop=True)
    enc = dict(
        x=alt.X("W:Q", title="word width W (bits)", axis=alt.Axis(tickMinStep=1)),
        y=_REL,
        color=alt.Color("rounding:N", title="rounding"),
        tooltip=["model:N", "placement:N", "rounding:N", "W:Q", "F:Q", alt.Tooltip("relative_accuracy:Q", format=".4f")],
    )
    if df["model"].nunique() > 1:
        enc["strokeDash"] = alt.StrokeDash("model:N", title="model")
    placements = [p for p in ("extrinsic", "intrinsic") if p in set(df["placement"])]
    placements += [p for p in dict.fromkeys(df["placement"]) if p not in placements]
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(**enc)
        .properties(width=300, height=240)
        .facet(column=alt.Column("placement:N", title=None, sort=placements), title=title)
    )


def runs_chart(runs_df: pd.DataFrame, title: str = "Panel runs") -> alt.Chart:
    """Relative accuracy per run (x = run number), the run's label and accuracies in the tooltip."""
    df = _check(runs_df, RUNS_COLUMNS, "runs_chart")
    n = int(df["run"].max()) if len(df) else 0
    return (
        alt.Chart(df, title=title)
        .mark_line(point=alt.OverlayMarkDef(size=70, filled=True))
        .encode(
            x=alt.X("run:Q", title="run", scale=alt.Scale(domain=[0.5, max(n, 1) + 0.5]),
                    axis=alt.Axis(tickMinStep=1, format="d")),
            y=_REL,
            tooltip=[
                alt.Tooltip("run:Q", title="run"),
                alt.Tooltip("label:N", title="plan"),
                alt.Tooltip("relative_accuracy:Q", title="relative accuracy", format=".4f"),
                alt.Tooltip("accuracy:Q", title="accuracy", format=".4f"),
                alt.Tooltip("float_accuracy:Q", title="float accuracy", format=".4f"),
            ],
        )
        .properties(width=420, height=220)
    )


_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I)


def save(chart, path) -> tuple[Path, Path]:
    """Write ``<path>.html`` (standalone: vega, vega-lite and vega-embed inlined, no CDN)
    and ``<path>.png`` (rendered by vl-convert); return the two paths."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    html, png = base.with_name(base.name + ".html"), base.with_name(base.name + ".png")
    chart.save(str(html), format="html", inline=True)
    text = html.read_text(encoding="utf-8")
    if _EXTERNAL_SCRIPT.search(text) or "cdn.jsdelivr" in text:
        raise RuntimeError(f"{html}: the saved chart loads scripts from the network; expected them inlined")
    chart.save(str(png), format="png", scale_factor=2)
    return html, png
