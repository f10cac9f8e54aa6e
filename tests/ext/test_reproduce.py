"""The reproduction notebooks render with papermill on tiny parameters and write their tables and charts;
``qlab.ext.reproduce`` passes parameters, renders into build/<name>/ and indexes what exists."""
import json
import logging
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from qlab.ext import reproduce

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPERIMENTS = [n for n in reproduce.NOTEBOOKS if n != "quickstart"]

# Every notebook on scikit-learn's 8x8 digits with LeNet-300-100 (trains in about a second), few images and widths.
COMMON = {"models": ["lenet300"], "data": "digits", "threads": 1}
TINY = {
    "rounding": {**COMMON, "roundings": ["nearest", "stochastic"], "widths_extrinsic": [4, 8],
                 "widths_intrinsic": [8], "n_extrinsic": 60, "n_intrinsic": 60},
    "extrinsic_intrinsic": {**COMMON, "widths_extrinsic": [4, 8], "widths_intrinsic": [8], "f_radius_extrinsic": 1,
                            "f_radius_intrinsic": 1, "f_search": "walk", "n_extrinsic": 60, "n_intrinsic": 60},
    "lenet": {**COMMON, "widths": [4, 8], "f_search": "window", "f_radius": 1, "n": 60},
    "per_layer": {**COMMON, "n": 60, "max_width": 12},
    "accumulation": {**COMMON, "widths": [4, 8], "f_search": "walk", "f_radius": 1, "n": 60},
}
# What each notebook must write: CSV tables and their columns (at least), JSON files, charts (html + png).
TABLES = {
    "rounding": {"rounding": ["model", "placement", "rounding", "W", "F", "accuracy", "float_accuracy",
                              "relative_accuracy"],
                 "rounding_wide": ["model", "placement", "rounding"],
                 "smallest_width_99": ["model", "placement", "rounding", "W", "F"]},
    "extrinsic_intrinsic": {"sweep": ["model", "placement", "rounding", "W", "F", "relative_accuracy"],
                            "best_f": ["model", "placement", "rounding", "W", "F", "relative_accuracy"],
                            "extrinsic_table": ["source", "model"], "intrinsic_table": ["source", "model"],
                            "smallest_width_99": ["model", "placement", "W", "F"]},
    "lenet": {"sweep": ["model", "placement", "rounding", "W", "F", "relative_accuracy"],
              "best_f": ["model", "W", "F", "relative_accuracy"], "lenet_table": ["source", "model"]},
    "per_layer": {"per_layer": ["model", "layer", "threshold", "W", "F", "relative_accuracy", "evaluations",
                                "seconds", "algorithm"],
                  "per_layer_wide": ["model", "layer", "100%", "99%", "90%"]},
    "accumulation": {"sweep": ["model", "placement", "variant", "spec", "W", "F", "accuracy", "float_accuracy",
                               "relative_accuracy"],
                     "best_f": ["model", "variant", "W", "F", "relative_accuracy"],
                     "smallest_width_99": ["model", "variant", "W", "F"]},
}
JSONS = {"per_layer": ["compression", "summary"]}
CHARTS = {
    "rounding": ["rounding"],
    "extrinsic_intrinsic": ["accuracy_over_width"],
    "lenet": ["accuracy_over_width"],
    "per_layer": ["heatmap_lenet300"],
    "accumulation": ["accumulation"],
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_notebook_is_parameterised_and_committed_without_outputs(name):
    nb = nbformat.read(str(NOTEBOOKS / reproduce.NOTEBOOKS[name]), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    declared = reproduce.declared_parameters(NOTEBOOKS / reproduce.NOTEBOOKS[name])
    assert {"data", "data_dir", "weights_dir", "device", "out_dir", "seed", "models"} <= declared
    assert set(TINY[name]) <= declared
    assert any(k == "n" or k.startswith("n_") for k in declared)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit notebooks with cleared outputs"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Differences from the deck" in text or "Beside the deck" in text
    assert "ImageNet" in text and "Fashion-MNIST" in text


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Caches (checkpoints, results) in tmp_path; the kernel finds qlab in this checkout."""
    monkeypatch.setenv("QLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_notebook_renders_on_tiny_parameters(name, isolated, caplog):
    out = isolated / "build"
    caplog.set_level(logging.WARNING, logger="papermill")
    rendered = reproduce.render(name, out, NOTEBOOKS, TINY[name], progress=False)
    # papermill's own reading of the parameters cell misreads spec strings ("acc=..."): silenced
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("papermill")]
    exp = out / name
    assert rendered == (exp / reproduce.NOTEBOOKS[name]).resolve() and rendered.is_file()
    assert (exp / reproduce.NOTEBOOKS[name]).with_suffix(".html").is_file()
    nb = nbformat.read(str(rendered), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and f"out_dir = {str(exp.resolve())!r}" in injected[0].source.replace('"', "'")
    for table, columns in TABLES[name].items():
        df = pd.read_csv(exp / f"{table}.csv")
        assert len(df) > 0, table
        assert set(columns) <= set(df.columns), (table, list(df.columns))
        if "relative_accuracy" in df.columns:
            rel = df["relative_accuracy"].dropna()
            assert len(rel) and ((rel >= 0) & (rel <= 1.5)).all(), table
    for chart in CHARTS[name]:
        html, png = exp / f"{chart}.html", exp / f"{chart}.png"
        assert html.stat().st_size > 1000 and "vega" in html.read_text()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for j in JSONS.get(name, []) + ["summary"]:
        assert json.loads((exp / f"{j}.json").read_text())
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["experiment"] == name
    assert summary["parameters"]["models"] == ["lenet300"] and summary["parameters"]["data"] == "digits"
    # the tables hold what the parameters asked for
    if name == "lenet":
        sweep = pd.read_csv(exp / "sweep.csv")
        assert sorted(sweep.W.unique()) == [4, 8] and set(sweep.placement) == {"intrinsic"}
        assert sorted(sweep[sweep.W == 8].F) == [3, 4, 5]
        best = pd.read_csv(exp / "best_f.csv")
        for r in best.itertuples():
            assert r.relative_accuracy == sweep[sweep.W == r.W].relative_accuracy.max()
    if name == "rounding":
        sweep = pd.read_csv(exp / "rounding.csv")
        assert set(sweep.rounding) == {"nearest", "stochastic"} and (sweep.F == sweep.W // 2).all()
        assert set(zip(sweep.placement, sweep.W)) == {("extrinsic", 4), ("extrinsic", 8), ("intrinsic", 8)}
    if name == "accumulation":
        sweep = pd.read_csv(exp / "sweep.csv")
        assert set(sweep.variant) == {"sequential", "final", "sequential, acc 2W", "final, acc 2W"}
        assert "intrinsic(fixed(8,4,nearest),acc=fixed(16,4,nearest),accumulate=final)" in set(sweep.spec)
    if name == "per_layer":
        per_layer = pd.read_csv(exp / "per_layer.csv")
        assert set(per_layer.layer) == {"fc1", "fc2", "fc3"} and set(per_layer.threshold) == {1.0, 0.99, 0.9}
        comp = json.loads((exp / "compression.json").read_text())["lenet300"]
        assert set(comp) == {"1", "0.99", "0.9"} and all(c >= 1 for c in comp.values())
        assert comp["0.9"] >= comp["1"]


def _fake_build(out: Path):
    (out / "rounding").mkdir(parents=True)
    for f in ("10_rounding.ipynb", "10_rounding.html", "rounding.csv", "summary.json", "rounding.html", "rounding.png"):
        (out / "rounding" / f).write_text("x")
    (out / "lenet").mkdir()
    (out / "lenet" / "best_f.csv").write_text("W\n4\n")
    (out / "lenet" / "notes.txt").write_text("x")
    (out / "lenet" / ".hidden.tmp").write_text("x")
    (out / "stray.csv").write_text("x")  # not under an experiment folder


def test_index_links_every_notebook_table_and_chart(tmp_path):
    out = tmp_path / "build"
    _fake_build(out)
    page = reproduce.write_index(out).read_text()
    for rel in ("rounding/10_rounding.ipynb", "rounding/10_rounding.html", "rounding/rounding.csv",
                "rounding/summary.json", "rounding/rounding.html", "rounding/rounding.png", "lenet/best_f.csv",
                "lenet/notes.txt"):
        assert f'href="{rel}"' in page, rel
    assert '<img src="rounding/rounding.png"' in page
    assert ".hidden.tmp" not in page and "stray.csv" not in page
    assert page.index('href="rounding/') < page.index('href="lenet/')  # the notebooks' order
    assert "extrinsic_intrinsic" not in page  # nothing rendered there, nothing linked


def test_index_reports_times_and_failures(tmp_path):
    out = tmp_path / "build"
    _fake_build(out)
    (out / reproduce.STATUS_FILE).write_text(json.dumps({
        "rounding": {"ok": True, "seconds": 12.3}, "lenet": {"ok": False, "seconds": 1, "error": "ValueError: <bad>"}}))
    page = reproduce.write_index(out).read_text()
    assert "(12 s)" in page and "failed" in page and "ValueError: &lt;bad&gt;" in page


def test_main_checks_names_and_parameters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--out", str(tmp_path), "--only", "nonesuch"])
    with pytest.raises(SystemExit):
        reproduce.main(["--out", str(tmp_path), "--only", "lenet", "--parameters", "[1, 2]"])
    with pytest.raises(SystemExit):
        reproduce.main(["--out", str(tmp_path), "--only", "lenet", "--parameters", '{"no_such_parameter": 1}'])
    assert "no_such_parameter" in capsys.readouterr().err


def test_main_renders_only_the_named_notebooks_with_overrides(tmp_path, monkeypatch):
    calls = []

    def fake_render(name, out, notebooks_dir, params, progress=True):
        calls.append((name, dict(params)))
        (Path(out) / name).mkdir(parents=True, exist_ok=True)
        (Path(out) / name / "table.csv").write_text("a\n1\n")
        if name == "per_layer":
            raise RuntimeError("boom")
        return Path(out) / name / reproduce.NOTEBOOKS[name]

    monkeypatch.setattr(reproduce, "render", fake_render)
    rc = reproduce.main(["--out", str(tmp_path), "--only", "lenet", "per_layer", "--no-progress",
                         "--parameters", '{"n": 30, "models": ["lenet300"]}', "-p", "data", "digits", "-p", "seed", "3"])
    assert rc == 1  # per_layer failed
    assert calls == [(n, {"n": 30, "models": ["lenet300"], "data": "digits", "seed": 3}) for n in ("lenet", "per_layer")]
    status = json.loads((tmp_path / reproduce.STATUS_FILE).read_text())
    assert status["lenet"]["ok"] and not status["per_layer"]["ok"] and "boom" in status["per_layer"]["error"]
    page = (tmp_path / "index.html").read_text()
    assert 'href="lenet/table.csv"' in page and 'href="per_layer/table.csv"' in page


def test_every_notebook_is_listed():
    on_disk = {p.name for p in NOTEBOOKS.glob("1?_*.ipynb")} | {"00_quickstart.ipynb"}
    assert set(reproduce.NOTEBOOKS.values()) == on_disk
    assert all((NOTEBOOKS / f).is_file() for f in reproduce.NOTEBOOKS.values())
