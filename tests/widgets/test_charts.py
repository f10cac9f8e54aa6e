"""Chart specs through to_dict(), and saving charts offline (HTML without CDN, PNG)."""
import re

import pandas as pd
import pytest

pytest.importorskip("altair")
pytest.importorskip("vl_convert")

from qlab.widgets import charts  # noqa: E402


def _rows(spec: dict) -> list:
    """The data rows of a top-level chart spec (altair puts them in ``datasets``)."""
    (name,) = spec["datasets"]
    assert spec["data"] == {"name": name}
    return spec["datasets"][name]


@pytest.fixture
def best_df():
    rows = []
    for model, drop in [("lenet300", 0.0), ("lenet5", 0.05)]:
        for placement in ["extrinsic", "intrinsic"]:
            for w in range(4, 9):
                rows.append(dict(model=model, placement=placement, rounding="nearest", W=w, F=w // 2 - 1,
                                 relative_accuracy=min(1.0, w / 8) - drop))
    return pd.DataFrame(rows)


@pytest.fixture
def search_df():
    rows = []
    for layer, w in [("fc1", 6), ("fc2", 4), ("fc3", 8)]:
        for t in [0.9, 1.0, 0.99]:
            rows.append(dict(model="lenet300", layer=layer, threshold=t, W=w + int(t * 10) - 9, F=w // 2,
                             relative_accuracy=t + 0.001, evaluations=7, seconds=0.5, algorithm="greedy"))
    return pd.DataFrame(rows)


@pytest.fixture
def sweep_df():
    rows = []
    for placement in ["intrinsic", "extrinsic"]:
        for rounding in ["nearest", "stochastic", "down"]:
            for w in range(4, 8):
                for f in range(0, w):
                    rel = 0.1 * f + (0.05 if rounding == "nearest" else 0.0) + (0.01 if placement == "extrinsic" else 0)
                    rows.append(dict(model="lenet300", placement=placement, rounding=rounding, W=w, F=f,
                                     accuracy=0.9 * rel, float_accuracy=0.9, relative_accuracy=rel))
    return pd.DataFrame(rows)


def test_accuracy_over_width_spec(best_df):
    spec = charts.accuracy_over_width(best_df).to_dict()
    assert spec["mark"] == {"type": "line", "point": True}
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"]) == ("W", "quantitative")
    assert (enc["y"]["field"], enc["y"]["type"]) == ("relative_accuracy", "quantitative")
    assert (enc["color"]["field"], enc["color"]["type"]) == ("model", "nominal")
    assert (enc["strokeDash"]["field"], enc["strokeDash"]["type"]) == ("placement", "nominal")
    assert {t["field"] for t in enc["tooltip"]} >= {"model", "placement", "W", "F", "relative_accuracy"}
    rows = _rows(spec)
    assert len(rows) == len(best_df) == 20
    assert rows[0] == {"model": "lenet300", "placement": "extrinsic", "rounding": "nearest", "W": 4, "F": 1,
                       "relative_accuracy": 0.5}
    assert {r["model"] for r in rows} == {"lenet300", "lenet5"}


def test_layer_heatmap_spec(search_df):
    spec = charts.layer_heatmap(search_df).to_dict()
    rect, text = spec["layer"]
    assert rect["mark"]["type"] == "rect" and text["mark"]["type"] == "text"
    for part in (rect, text):
        # layers keep the table's (model) order, thresholds go from strict to loose
        assert part["encoding"]["y"]["field"] == "layer" and part["encoding"]["y"]["sort"] == ["fc1", "fc2", "fc3"]
        assert part["encoding"]["x"]["field"] == "threshold" and part["encoding"]["x"]["sort"] == [1.0, 0.99, 0.9]
        assert part["encoding"]["x"]["type"] == "ordinal"
    assert (rect["encoding"]["color"]["field"], rect["encoding"]["color"]["type"]) == ("W", "quantitative")
    assert text["encoding"]["text"]["field"] == "WF"
    rows = _rows(spec)
    assert len(rows) == 9
    cell = next(r for r in rows if r["layer"] == "fc2" and r["threshold"] == 0.99)
    assert (cell["W"], cell["F"], cell["WF"]) == (4, 2, "4,2")
    assert all(r["WF"] == f"{r['W']},{r['F']}" for r in rows)
    assert spec["title"] == "Smallest (W,F) per layer"


def test_layer_heatmap_layer_that_gave_up(search_df):
    """search_layers leaves W and F empty (pandas Int64 NA) for a layer that needs more than 24 bits."""
    df = search_df.copy()
    df["W"] = df["W"].astype("Int64")
    df["F"] = df["F"].astype("Int64")
    df.loc[(df.layer == "fc3") & (df.threshold == 1.0), ["W", "F"]] = pd.NA
    rows = _rows(charts.layer_heatmap(df).to_dict())
    cell = next(r for r in rows if r["layer"] == "fc3" and r["threshold"] == 1.0)
    assert cell["WF"] == "float" and cell["W"] is None
    other = next(r for r in rows if r["layer"] == "fc2" and r["threshold"] == 0.99)
    assert (other["W"], other["WF"]) == (4, "4,2")


def test_accuracy_over_width_dash_legend(best_df):
    enc = charts.accuracy_over_width(best_df).to_dict()["encoding"]
    assert enc["strokeDash"]["field"] == "placement"
    assert enc["strokeDash"]["legend"]["symbolType"] == "stroke"


def test_rounding_chart_half_and_best(sweep_df):
    spec = charts.rounding_chart(sweep_df).to_dict()
    assert spec["facet"]["column"]["field"] == "placement"
    assert spec["facet"]["column"]["sort"] == ["extrinsic", "intrinsic"]
    inner = spec["spec"]
    assert inner["mark"] == {"type": "line", "point": True}
    assert inner["encoding"]["x"]["field"] == "W"
    assert inner["encoding"]["y"]["field"] == "relative_accuracy"
    assert inner["encoding"]["color"]["field"] == "rounding"
    assert "strokeDash" not in inner["encoding"]  # one model: no dash
    rows = _rows(spec)
    assert len(rows) == 2 * 3 * 4  # one point per (placement, rounding, W)
    assert all(r["F"] == r["W"] // 2 for r in rows)

    best = _rows(charts.rounding_chart(sweep_df, f="best").to_dict())
    assert len(best) == 24
    assert all(r["F"] == r["W"] - 1 for r in best)  # the sweep's accuracy rises with F

    two = pd.concat([sweep_df, sweep_df.assign(model="lenet5")])
    assert charts.rounding_chart(two).to_dict()["spec"]["encoding"]["strokeDash"]["field"] == "model"
    with pytest.raises(ValueError, match="f must be"):
        charts.rounding_chart(sweep_df, f="third")


def test_runs_chart_spec():
    runs = pd.DataFrame([
        dict(run=1, label="float", accuracy=0.9, float_accuracy=0.9, relative_accuracy=1.0),
        dict(run=2, label="extrinsic fixed(2,0,nearest) [all layers]", accuracy=0.45, float_accuracy=0.9,
             relative_accuracy=0.5),
    ])
    spec = charts.runs_chart(runs).to_dict()
    assert spec["mark"]["type"] == "line" and spec["mark"]["point"]["filled"] is True
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["y"]["field"]) == ("run", "relative_accuracy")
    assert enc["x"]["scale"]["domain"] == [0.5, 2.5]
    tips = {t["field"]: t for t in enc["tooltip"]}
    assert tips["label"]["title"] == "plan"
    assert [r["label"] for r in _rows(spec)] == ["float", "extrinsic fixed(2,0,nearest) [all layers]"]
    # an empty table (no run yet) still makes a chart
    empty = charts.runs_chart(runs.iloc[:0]).to_dict()
    assert _rows(empty) == []


def test_missing_columns_are_named(best_df):
    with pytest.raises(ValueError, match="relative_accuracy"):
        charts.accuracy_over_width(best_df.drop(columns="relative_accuracy"))
    with pytest.raises(TypeError, match="DataFrame"):
        charts.runs_chart([{"run": 1}])


def test_save_is_offline_html_and_png(tmp_path, search_df, sweep_df):
    for name, chart in [("heatmap", charts.layer_heatmap(search_df)), ("rounding", charts.rounding_chart(sweep_df))]:
        html_path, png_path = charts.save(chart, tmp_path / "out" / name)
        assert html_path == tmp_path / "out" / f"{name}.html" and png_path == tmp_path / "out" / f"{name}.png"
        html = html_path.read_text(encoding="utf-8")
        assert "cdn.jsdelivr" not in html
        assert not re.search(r"<script[^>]*src=", html)  # every script inline
        assert "vegaEmbed" in html and len(html) > 300_000  # vega, vega-lite and vega-embed are in the file
        assert "lenet300" in html  # the data too
        png = png_path.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 200 and height > 100


def test_save_refuses_html_that_loads_scripts(tmp_path):
    class CdnChart:  # stands in for a chart whose renderer ignored inline=True
        def save(self, fp, format=None, **kwargs):
            with open(fp, "w") as f:
                f.write('<script src="https://cdn.jsdelivr.net/npm/vega@6"></script>')

    with pytest.raises(RuntimeError, match="loads scripts from the network"):
        charts.save(CdnChart(), tmp_path / "cdn")
