"""Render the reproduction notebooks with papermill and write an index: ``make reproduce``.

    python -m qlab.ext.reproduce --out build [--only quickstart] [-p key value ...]
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

NOTEBOOKS = {
    "quickstart": "00_quickstart.ipynb",
}


def render(name: str, out_dir: Path, notebooks_dir: Path, parameters: dict | None = None) -> Path:
    import papermill as pm

    if name not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")
    src = notebooks_dir / NOTEBOOKS[name]
    exp_dir = out_dir / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    dst = exp_dir / NOTEBOOKS[name]
    params = dict(parameters or {})
    pm.execute_notebook(str(src), str(dst), parameters=params, progress_bar=True, cwd=str(notebooks_dir.parent),
                        kernel_name="python3")
    return dst


def write_index(out_dir: Path) -> Path:
    rows = []
    for f in sorted(out_dir.rglob("*")):
        if f.is_file() and f.name != "index.html":
            rel = f.relative_to(out_dir).as_posix()
            rows.append(f'<li><a href="{html.escape(rel)}">{html.escape(rel)}</a></li>')
    page = ("<!doctype html><meta charset='utf-8'><title>qlab reproduction</title>"
            "<h1>qlab reproduction</h1><ul>" + "\n".join(rows) + "</ul>")
    idx = out_dir / "index.html"
    idx.write_text(page)
    return idx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="build")
    ap.add_argument("--notebooks", default=str(Path(__file__).resolve().parents[2] / "notebooks"))
    ap.add_argument("--only", action="append", help="render only these (repeatable)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    params = {}
    for k, v in a.p:
        try:
            params[k] = int(v)
        except ValueError:
            try:
                params[k] = float(v)
            except ValueError:
                params[k] = v
    for name in a.only or list(NOTEBOOKS):
        print(f"[qlab] rendering {name}", file=sys.stderr)
        render(name, out, Path(a.notebooks), params)
    print(f"[qlab] index: {write_index(out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
