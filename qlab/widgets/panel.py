"""The notebook panel: try a placement, method and (W, F) per layer by hand and see the accuracy.

:class:`PanelController` holds all the state and logic and needs no front end (tests drive
it directly); :class:`Panel` is its ipywidgets view.  Each layer row has

* placement: ``none`` / ``extrinsic`` (the layer's output) / ``intrinsic`` (its arithmetic)
  / ``weights`` (its parameters);
* method and two integers W and F, read as the spec
  ``fixed(W,F,r)``; ``float(W-1-F,F,r)`` (W bits in all, F mantissa bits: float(5,10)
  is W=16, F=10); ``log(W,F,r)`` (F is the largest exponent); ``binary``; ``ternary``;
* rounding r (``log`` is log's own mode; each format takes the modes it knows).

A row ``all layers`` copies its setting into every row.  Combinations that make no
format (intrinsic binary, float with too few bits, log with ``even`` ...) are not
refused when set: :meth:`PanelController.problem` names the layer and the reason, and
``evaluate`` reports it in :attr:`PanelController.message` instead of running.
``weights`` on a layer without parameters (ReLU, Flatten, pooling) is left out of the plan.
"""
from __future__ import annotations

import html
import re
import time
from dataclasses import asdict, dataclass, fields, replace

import pandas as pd

from ..core.plan import Plan
from ..core.rounding import ROUNDINGS as _ROUNDINGS
from ..core.spec import parse
from . import charts

PLACEMENTS = ("none", "extrinsic", "intrinsic", "weights")
METHODS = ("fixed", "float", "log", "binary", "ternary")
ROUNDINGS = tuple(_ROUNDINGS) + ("log",)
W_MIN, W_MAX = 1, 32
ALL = "all layers"
RUN_COLUMNS = ["run", "label", "accuracy", "float_accuracy", "relative_accuracy", "plan", "seconds"]
# What the second integer means for each method (the F slider's label).
F_NAMES = {"fixed": "F", "float": "M", "log": "E", "binary": "F", "ternary": "F"}


class PanelError(ValueError):
    """A panel setting that makes no plan; the message names the layer and the reason."""


def f_range(method: str, W: int) -> tuple[int, int]:
    """The range offered for F at word width W: fixed and log -W..W+8 (F may be negative or
    exceed W), float the mantissa widths that leave 2..8 exponent bits."""
    if method == "float":
        return max(0, W - 9), max(0, W - 3)
    return -W, W + 8


@dataclass(frozen=True)
class LayerSetting:
    """One row of the panel."""

    placement: str = "none"
    method: str = "fixed"
    W: int = 8
    F: int = 4
    rounding: str = "nearest"

    def spec(self) -> str | None:
        """The spec string of this row (None when the placement is ``none``); not yet validated."""
        if self.placement == "none":
            return None
        return spec_string(self.method, self.W, self.F, self.rounding)


def spec_string(method: str, W: int, F: int, rounding: str) -> str:
    if method == "fixed":
        return f"fixed({W},{F},{rounding})"
    if method == "float":
        return f"float({W - 1 - F},{F},{rounding})"
    if method == "log":
        return f"log({W},{F},{rounding})"
    if method in ("binary", "ternary"):
        return method
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def _check_value(name: str, value):
    choices = {"placement": PLACEMENTS, "method": METHODS, "rounding": ROUNDINGS}
    if name in choices:
        if value not in choices[name]:
            raise ValueError(f"{name} {value!r}: use one of {', '.join(choices[name])}")
        return value
    if name in ("W", "F"):
        if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
        if name == "W" and not W_MIN <= value <= W_MAX:
            raise ValueError(f"W={value} outside {W_MIN}..{W_MAX}")
        return value
    known = ", ".join(f.name for f in fields(LayerSetting))
    raise ValueError(f"a panel row has no setting {name!r}; it has {known}")


def _clamp_f(s: LayerSetting) -> LayerSetting:
    lo, hi = f_range(s.method, s.W)
    return replace(s, F=min(max(s.F, lo), hi))


class PanelController:
    """State and actions of the panel, without widgets.

    ``model`` is evaluated on ``n`` images of ``data`` (a :class:`qlab.ext.data.Dataset`,
    drawn with ``seed``).  ``layers`` defaults to :func:`qlab.ext.lab.quantizable_layers`.
    """

    def __init__(self, model, data, n: int = 500, *, seed: int = 0, layers=None, batch_size: int = 250,
                 progress: bool = True):
        from ..ext import data as qdata

        self.model = model
        self.data = qdata.subset(data, n, seed=seed)
        if layers is None:
            from ..ext.lab import quantizable_layers

            layers = quantizable_layers(model)
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ValueError(f"layer {unknown[0]!r} is not a module of the model")
        self.layers = list(layers)
        self.kinds = {name: type(modules[name]).__name__ for name in self.layers}
        self.has_parameters = {name: any(True for _ in modules[name].parameters()) for name in self.layers}
        self.batch_size = batch_size
        self.progress = progress
        self.all = LayerSetting()
        self.rows = {name: LayerSetting() for name in self.layers}
        self.runs = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            RUN_COLUMNS, ["int64", "object", "float64", "float64", "float64", "object", "float64"])})
        self.message = ""
        self._float_accuracy = None
        self._listeners = []

    # -- listening (the view redraws on these) ------------------------------------------
    def observe(self, fn):
        """Call ``fn(event)`` after a change; event is "settings", "run" or "message"."""
        self._listeners.append(fn)

    def _notify(self, event: str):
        for fn in self._listeners:
            fn(event)

    # -- settings -----------------------------------------------------------------------
    def setting(self, layer: str) -> LayerSetting:
        return self.all if layer == ALL else self.rows[self._layer(layer)]

    def _layer(self, layer: str) -> str:
        if layer not in self.rows:
            raise KeyError(f"no layer {layer!r} in the panel; its layers: {', '.join(self.layers)}")
        return layer

    def set(self, layer: str, **values) -> LayerSetting:
        """Change fields of one row (``layer`` a layer name, or :data:`ALL` for every row).

        F is clamped to :func:`f_range` of the new method and W."""
        if layer == ALL:
            return self.set_all(**values)
        s = self.rows[self._layer(layer)]
        s = _clamp_f(replace(s, **{k: _check_value(k, v) for k, v in values.items()}))
        self.rows[layer] = s
        self._notify("settings")
        return s

    def set_all(self, **values) -> LayerSetting:
        """Change the ``all layers`` row and copy its whole setting into every row."""
        s = _clamp_f(replace(self.all, **{k: _check_value(k, v) for k, v in values.items()}))
        self.all = s
        for name in self.layers:
            self.rows[name] = s
        self._notify("settings")
        return s

    def table(self) -> pd.DataFrame:
        """The rows as a table: layer, kind, the five settings and the spec they make."""
        rows = []
        for name in self.layers:
            s = self.rows[name]
            rows.append({"layer": name, "kind": self.kinds[name], **asdict(s), "spec": s.spec() or ""})
        return pd.DataFrame(rows)

    # -- the plan -----------------------------------------------------------------------
    def build_plan(self) -> Plan:
        """The :class:`qlab.Plan` of the rows: ``{layer: spec}`` under each row's placement.

        Raises :class:`PanelError` naming the first layer whose setting makes no format."""
        maps = {"extrinsic": {}, "intrinsic": {}, "weights": {}}
        for name in self._planned():
            s = self.rows[name]
            spec = s.spec()
            try:
                Plan(**{s.placement: {name: spec}})  # parses and checks the placement
            except ValueError as e:
                reason = re.sub(r"^plan \w+\[[^\]]*\]: ", "", str(e))
                raise PanelError(f"layer {name}: {s.placement} {spec} is not possible: {reason}") from None
            maps[s.placement][name] = spec
        return Plan(**maps)

    def _planned(self) -> list[str]:
        """The layers whose rows go into the plan: placement not none, and for ``weights`` a
        layer with parameters (on ReLU, Flatten, pooling ... it would quantize nothing)."""
        return [n for n in self.layers if self.rows[n].placement != "none"
                and (self.rows[n].placement != "weights" or self.has_parameters[n])]

    def problem(self) -> str:
        """Why the current rows make no plan, or "" when they do."""
        try:
            self.build_plan()
        except PanelError as e:
            return str(e)
        return ""

    def label(self) -> str:
        """A short description of the current rows: "float", or "<placement> <spec> [layers]; ..."."""
        groups = {}
        for name in self._planned():
            s = self.rows[name]
            groups.setdefault((s.placement, str(parse(s.spec()))), []).append(name)
        if not groups:
            return "float"
        parts = []
        for (placement, spec), names in groups.items():
            where = "all layers" if len(names) == len(self.layers) else ", ".join(names)
            parts.append(f"{placement} {spec} [{where}]")
        return "; ".join(parts)

    def export_json(self, indent: int = 2) -> str:
        return self.build_plan().to_json(indent=indent)

    def export_python(self) -> str:
        return self.build_plan().to_python()

    # -- evaluating ---------------------------------------------------------------------
    @property
    def float_accuracy(self) -> float:
        """Top-1 accuracy of the float model on the panel's images (computed once)."""
        if self._float_accuracy is None:
            from ..ext.lab import evaluate

            self._float_accuracy = float(evaluate(self.model, self.data, None, batch_size=self.batch_size,
                                                  progress=False))
        return self._float_accuracy

    def evaluate(self, label: str | None = None, progress: bool | None = None) -> dict | None:
        """Evaluate the current plan; append and return its run (None, and a message, when the rows make no plan).

        ``progress`` (default: the controller's) shows a progress bar over the images."""
        from ..ext.lab import evaluate

        progress = self.progress if progress is None else progress

        try:
            plan = self.build_plan()
            plan_label = label or self.label()
            float_acc = self.float_accuracy
            t0 = time.perf_counter()
            acc = float(evaluate(self.model, self.data, plan, batch_size=self.batch_size, progress=progress))
            seconds = time.perf_counter() - t0
        except (PanelError, ValueError, RuntimeError, NotImplementedError) as e:
            self.message = str(e) if isinstance(e, PanelError) else f"evaluation failed: {e}"
            self._notify("message")
            return None
        rel = acc / float_acc if float_acc > 0 else float("nan")
        run = {"run": len(self.runs) + 1, "label": plan_label, "accuracy": acc, "float_accuracy": float_acc,
               "relative_accuracy": rel, "plan": plan.to_json(), "seconds": seconds}
        self.runs = pd.concat([self.runs, pd.DataFrame([run])], ignore_index=True)
        self.message = (f"run {run['run']}: relative accuracy {rel:.4f} "
                        f"(accuracy {acc:.4f}, float {float_acc:.4f}, {len(self.data)} images)")
        self._notify("run")
        return run

    def chart(self):
        """The altair chart of the runs so far (:func:`qlab.widgets.charts.runs_chart`)."""
        return charts.runs_chart(self.runs)


# ======================================================================== the view
def chart_svg(chart) -> str:
    """The chart as inline SVG (rendered here by vl-convert, so no JavaScript or network is
    needed in the browser), each mark's aria description also given as its hover tooltip."""
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(chart.to_dict())

    def titled(m):
        tag, label, rest = m.group(1), m.group(2), m.group(3)
        if rest.endswith("/>"):
            return f'{tag}aria-label="{label}"{rest[:-2]}><title>{label}</title></{_tag_name(tag)}>'
        return m.group(0)

    return re.sub(r'(<(?:path|circle|rect)\b[^>]*?)aria-label="([^"]*)"([^>]*/>)', titled, svg)


def _tag_name(tag: str) -> str:
    return tag[1:].split()[0]


class Panel:
    """``qlab.widgets.Panel(model, data, n=500)``: the panel in a notebook (ipywidgets).

    Display it as a cell's last value.  ``panel.controller`` is the
    :class:`PanelController` behind it: changing it from code updates the widgets.
    """

    def __init__(self, model, data, n: int = 500, **kwargs):
        import ipywidgets as w

        self.controller = c = PanelController(model, data, n, **kwargs)
        self._syncing = False
        self.rows = {}
        header = w.HTML(
            f"<b>qlab panel</b>: {len(c.layers)} layers, evaluated on {len(c.data)} images of "
            f"<code>{html.escape(c.data.name)}</code>")
        row_boxes = [self._row(ALL, "the whole model", bold=True)]
        row_boxes += [self._row(name, c.kinds[name]) for name in c.layers]
        self.evaluate_button = w.Button(description="Evaluate", button_style="primary", icon="play")
        self.export_button = w.Button(description="Export", icon="download")
        self.evaluate_button.add_class("qlab-evaluate")
        self.export_button.add_class("qlab-export")
        self.evaluate_button.on_click(lambda _: self.evaluate())
        self.export_button.on_click(lambda _: self.export())
        self.accuracy = w.HTML("no run yet")
        self.accuracy.add_class("qlab-accuracy")
        self.status = w.HTML("")
        self.status.add_class("qlab-message")
        self.progress = w.Output()
        self.chart = w.HTML(chart_svg(c.chart()))
        self.chart.add_class("qlab-chart")
        self.export_json = w.Textarea(layout=w.Layout(width="48%", height="9em"))
        self.export_python = w.Textarea(layout=w.Layout(width="48%", height="9em"))
        self.export_json.add_class("qlab-export-json")
        self.export_python.add_class("qlab-export-python")
        self.exports = w.HBox([self.export_json, self.export_python], layout=w.Layout(display="none"))
        self.widget = w.VBox([
            header, *row_boxes,
            w.HBox([self.evaluate_button, self.export_button]),
            self.progress, self.accuracy, self.status, self.chart, self.exports,
        ])
        self.widget.add_class("qlab-panel")
        c.observe(self._on_controller)
        self._sync_rows()

    def _row(self, name: str, kind: str, bold: bool = False):
        import ipywidgets as w

        s = self.controller.setting(name)
        text = f"<b>{html.escape(name)}</b>" if bold else html.escape(name)
        label = w.HTML(f"{text} <span style='color:#777'>{html.escape(kind)}</span>", layout=w.Layout(width="15em"))
        small = w.Layout(width="9em")
        slider, slider_style = w.Layout(width="20em"), {"description_width": "1.5em"}
        widgets = {
            "placement": w.Dropdown(options=PLACEMENTS, value=s.placement, layout=small),
            "method": w.Dropdown(options=METHODS, value=s.method, layout=small),
            "W": w.IntSlider(value=s.W, min=W_MIN, max=W_MAX, description="W", continuous_update=False,
                             layout=slider, style=slider_style),
            "F": w.IntSlider(value=s.F, min=-W_MAX, max=W_MAX + 8, description="F", continuous_update=False,
                             layout=slider, style=slider_style),
            "rounding": w.Dropdown(options=ROUNDINGS, value=s.rounding, layout=small),
        }
        css = "all" if name == ALL else re.sub(r"[^A-Za-z0-9_-]", "-", name)
        for field_name, widget in widgets.items():
            widget.add_class(f"qlab-{field_name}")
            widget.observe(self._on_widget(name, field_name), names="value")
        self.rows[name] = widgets
        box = w.HBox([label, *widgets.values()])
        box.add_class("qlab-row")
        box.add_class(f"qlab-row-{css}")
        return box

    def _on_widget(self, name: str, field_name: str):
        def handler(change):
            if not self._syncing:
                self.controller.set(name, **{field_name: change["new"]})
        return handler

    def _on_controller(self, event: str):
        if event == "settings":
            self._sync_rows()
        elif event == "run":
            self.chart.value = chart_svg(self.controller.chart())
            last = self.controller.runs.iloc[-1]
            self.accuracy.value = (
                f"run {int(last['run'])}: relative accuracy <b>{last['relative_accuracy']:.4f}</b> "
                f"(accuracy {last['accuracy']:.4f}, float {last['float_accuracy']:.4f}) "
                f"<span style='color:#777'>{html.escape(last['label'])}</span>")
            self.status.value = ""
        elif event == "message":
            self.status.value = f"<span style='color:#b00'>{html.escape(self.controller.message)}</span>"

    def _sync_rows(self):
        """Put the controller's settings into the widgets (F's range and label follow method and W)."""
        self._syncing = True
        try:
            for name, widgets in self.rows.items():
                s = self.controller.setting(name)
                widgets["placement"].value = s.placement
                widgets["method"].value = s.method
                widgets["W"].value = s.W
                lo, hi = f_range(s.method, s.W)
                f = widgets["F"]
                if lo > f.max:
                    f.max, f.min = hi, lo
                else:
                    f.min, f.max = lo, hi
                f.value = s.F
                f.description = F_NAMES[s.method]
                f.disabled = widgets["W"].disabled = s.method in ("binary", "ternary")
                widgets["rounding"].value = s.rounding
                widgets["rounding"].disabled = s.method in ("binary", "ternary")
        finally:
            self._syncing = False
        problem = self.controller.problem()
        self.status.value = f"<span style='color:#b00'>{html.escape(problem)}</span>" if problem else ""

    def evaluate(self):
        """What the Evaluate button does: run the controller's evaluate with a progress bar."""
        self.progress.clear_output()
        try:
            with self.progress:
                return self.controller.evaluate()
        finally:
            self.progress.clear_output()  # the finished bar is closed; its place would read "Loading widget..."

    def export(self):
        """What the Export button does: show the plan as JSON and as Python."""
        try:
            self.export_json.value = self.controller.export_json()
            self.export_python.value = self.controller.export_python()
        except PanelError as e:
            self.controller.message = str(e)
            self._on_controller("message")
            return
        self.exports.layout.display = "flex"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
