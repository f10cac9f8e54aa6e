"""qlab's notebook front end: the interactive :class:`Panel` and the charts of result tables.

Depends on ``qlab.ext`` and ``qlab.core``; needs the ``notebook`` extra (ipywidgets,
pandas, altair, vl-convert-python).
"""
from . import charts
from .panel import ALL, Panel, PanelController, PanelError

__all__ = ["Panel", "PanelController", "PanelError", "ALL", "charts"]
