"""qlab: a Jupyter-first lab for simulating quantized neural networks.

>>> import qlab
>>> q = qlab.parse("fixed(8,4,nearest)")
>>> plan = qlab.Plan(intrinsic={"*": "fixed(16,8,nearest)"})
>>> with qlab.quantize(model, plan):      # doctest: +SKIP
...     model(x)
"""
from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = list(_core_all)


def _load_backends():
    """Register the fast backends of qlab.ext that can load here (Triton on CUDA, ...)."""
    try:
        from .ext import backends as _b  # noqa: F401
    except ImportError:
        pass


_load_backends()
