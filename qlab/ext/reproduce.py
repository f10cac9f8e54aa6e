"""Render the reproduction notebooks with papermill and write an index: ``make reproduce``.

    python -m qlab.ext.reproduce --out build [--only rounding lenet] [--parameters '{"n": 200}'] [-p KEY VALUE ...]

Each notebook ``NAME`` runs with its working folder at the repository root and renders
into ``<out>/NAME/`` (the notebook, its HTML view, and what it writes there: tables and
charts), with ``out_dir`` pointed at that folder.  ``--parameters`` (a JSON object) and
``-p`` override the notebooks' ``parameters`` cells; a key goes only to the notebooks
that declare it.  ``<out>/index.html`` links every rendered notebook, table (CSV/JSON)
and chart (HTML/PNG) found under ``<out>/NAME/``.  A notebook that fails is reported in
the index and the exit status, and the others still run.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import sys
import time
from pathlib import Path

NOTEBOOKS = {
    "quickstart": "00_quickstart.ipynb",
    "rounding": "10_rounding.ipynb",
    "extrinsic_intrinsic": "11_extrinsic_intrinsic.ipynb",
    "lenet": "12_lenet.ipynb",
    "per_layer": "13_per_layer.ipynb",
    "accumulation": "14_accumulation.ipynb",
}

TITLES = {
    "quickstart": "Quickstart: a float MLP on digits, extrinsic and intrinsic plans",
    "rounding": "Rounding: nearest vs stochastic (and down, zero), intrinsic vs extrinsic",
    "extrinsic_intrinsic": "Extrinsic vs intrinsic: relative accuracy and best F per W for every topology",
    "lenet": "LeNet: intrinsic, nearest, best F for W = 4 .. 20",
    "per_layer": "Per layer: smallest (W,F) for 100 / 99 / 90 % and the compression factor",
    "accumulation": "Accumulation (our own): sequential vs final, and a wider accumulator",
}

TABLE_SUFFIXES = (".csv", ".json")
CHART_SUFFIXES = (".html", ".png")
STATUS_FILE = "reproduce.json"  # per notebook: seconds, ok, error


def default_notebooks_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "notebooks"


class _ParameterNoise(logging.Filter):
    """Drops papermill's warnings from its own reading of a parameters cell: it splits
    lines at '=' and so misreads spec strings such as ``acc=fixed(16,8)`` ("Unable to parse
    line ...", "Passed unknown parameter ...").  qlab reads the cell with Python's parser
    (:func:`declared_parameters`) and passes only the names declared there."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Unable to parse line") or msg.startswith("Passed unknown parameter"))


_NOISE = _ParameterNoise()


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (read with Python's parser)."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def render(name: str, out_dir: Path, notebooks_dir: Path | None = None, parameters: dict | None = None,
           progress: bool = True, html_view: bool = True) -> Path:
    """Execute notebook ``name`` into ``out_dir/name/`` and return the rendered notebook's path.

    ``parameters`` that the notebook does not declare are left out (and named on stderr);
    ``out_dir`` is set to ``out_dir/name`` when the notebook declares it.
    """
    import papermill as pm

    if name not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    src = notebooks_dir / NOTEBOOKS[name]
    exp_dir = (Path(out_dir) / name).resolve()
    exp_dir.mkdir(parents=True, exist_ok=True)
    dst = exp_dir / NOTEBOOKS[name]
    declared = declared_parameters(src)
    params = {k: v for k, v in (parameters or {}).items() if k in declared}
    skipped = sorted(set(parameters or {}) - declared)
    if skipped:
        print(f"[qlab] {name}: does not take {', '.join(skipped)}", file=sys.stderr)
    if "out_dir" in declared:
        params["out_dir"] = str(exp_dir)
    bar = {"desc": name, "unit": "cell", "leave": True} if progress else False
    for logger in ("papermill", "papermill.translators"):  # a filter sees only its own logger's records
        if _NOISE not in logging.getLogger(logger).filters:
            logging.getLogger(logger).addFilter(_NOISE)
    try:
        pm.execute_notebook(str(src), str(dst), parameters=params, progress_bar=bar,
                            cwd=str(notebooks_dir.parent), kernel_name="python3")
    finally:
        if html_view and dst.is_file():
            _html_view(dst)
    return dst


def _html_view(notebook: Path) -> Path | None:
    """The rendered notebook as ``<stem>.html`` beside it (nbconvert's HTML export)."""
    try:
        import nbformat
        from nbconvert import HTMLExporter
    except ImportError:
        return None
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _link(path: Path, root: Path, label: str | None = None) -> str:
    rel = path.relative_to(root).as_posix()
    return f'<a href="{html.escape(rel)}">{html.escape(label or path.name)}</a>'


def write_index(out_dir: Path) -> Path:
    """``out_dir/index.html``: per experiment folder, its notebook(s), tables, charts and other files, with links."""
    out_dir = Path(out_dir)
    status = {}
    if (out_dir / STATUS_FILE).is_file():
        status = json.loads((out_dir / STATUS_FILE).read_text())
    known = [n for n in NOTEBOOKS if (out_dir / n).is_dir()]
    others = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name not in NOTEBOOKS) if out_dir.is_dir() else []
    sections = []
    for name in known + others:
        folder = out_dir / name
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        notebooks = [f for f in files if f.suffix == ".ipynb"]
        views = {f.with_suffix(".html") for f in notebooks}
        charts = [f for f in files if f.suffix in CHART_SUFFIXES and f not in views]
        tables = [f for f in files if f.suffix in TABLE_SUFFIXES]
        rest = [f for f in files if f not in notebooks and f not in views and f not in charts and f not in tables]
        st = status.get(name, {})
        state = ""
        if st:
            state = f" ({st['seconds']:.0f} s)" if st.get("ok") else f" <b>failed</b>: {html.escape(st.get('error', ''))}"
        parts = [f"<h2 id='{html.escape(name)}'>{html.escape(TITLES.get(name, name))}{state}</h2>"]
        nb_links = []
        for nb in notebooks:
            view = nb.with_suffix(".html")
            extra = f" ({_link(view, out_dir, 'HTML')})" if view in files else ""
            nb_links.append(f"<li>{_link(nb, out_dir)}{extra}</li>")
        for title, group in (("notebook", nb_links),
                             ("tables", [f"<li>{_link(f, out_dir)}</li>" for f in tables]),
                             ("charts", [f"<li>{_link(f, out_dir)}</li>" for f in charts]),
                             ("other files", [f"<li>{_link(f, out_dir)}</li>" for f in rest])):
            if group:
                parts.append(f"<h3>{title}</h3><ul>" + "".join(group) + "</ul>")
        pngs = [f for f in charts if f.suffix == ".png"]
        if pngs:
            parts.append("<p>" + "".join(
                f'<a href="{html.escape(f.with_suffix(".html").relative_to(out_dir).as_posix())}">'
                f'<img src="{html.escape(f.relative_to(out_dir).as_posix())}" alt="{html.escape(f.stem)}" '
                'style="max-width:420px;margin:4px"></a>' for f in pngs) + "</p>")
        sections.append("\n".join(parts))
    page = ("<!doctype html><meta charset='utf-8'><title>qlab reproduction</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}</style>"
            "<h1>qlab reproduction</h1>"
            "<p>The TensorQuant deck's experiments re-run with qlab; each notebook shows our table beside "
            "the published one and states how the data and models differ.</p>"
            + ("\n".join(sections) if sections else "<p>Nothing rendered yet.</p>"))
    idx = out_dir / "index.html"
    idx.parent.mkdir(parents=True, exist_ok=True)
    idx.write_text(page, encoding="utf-8")
    return idx


def _value(text: str):
    """A command-line value: JSON if it parses (numbers, lists, true/null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build", help="output folder (default build)")
    ap.add_argument("--notebooks", default=str(default_notebooks_dir()), help="folder of the notebooks")
    ap.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=list(NOTEBOOKS),
                    help=f"render only these: {', '.join(NOTEBOOKS)}")
    ap.add_argument("--parameters", default="{}", metavar="JSON",
                    help='JSON object of parameters for every notebook, e.g. \'{"n": 200, "device": "cuda"}\'')
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="one parameter (VALUE read as JSON when it parses); repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        params = json.loads(a.parameters)
    except json.JSONDecodeError as e:
        ap.error(f"--parameters is not JSON: {e}")
    if not isinstance(params, dict):
        ap.error("--parameters must be a JSON object")
    params.update({k: _value(v) for k, v in a.p})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(a.only or NOTEBOOKS))
    notebooks_dir = Path(a.notebooks)
    declared = set().union(*(declared_parameters(notebooks_dir / NOTEBOOKS[n]) for n in names))
    unknown = sorted(set(params) - declared)
    if unknown:
        ap.error(f"no notebook of {', '.join(names)} takes {', '.join(unknown)}")
    status_path = out / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    failed = []
    for name in names:
        print(f"[qlab] rendering {name} ({NOTEBOOKS[name]})", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            render(name, out, notebooks_dir, params, progress=not a.no_progress)
            status[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # papermill's PapermillExecutionError names the cell; go on with the rest
            failed.append(name)
            first = str(e).strip().splitlines()
            status[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 1),
                            "error": f"{type(e).__name__}: {first[-1] if first else ''}"}
            print(f"[qlab] {name} failed: {status[name]['error']}", file=sys.stderr)
        print(f"[qlab] {name}: {status[name]['seconds']:.0f} s", file=sys.stderr)
        status_path.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    print(f"[qlab] index: {write_index(out)}", file=sys.stderr)
    if failed:
        print(f"[qlab] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
