"""Fill qlab.core's backend registry with what can load here (imported by ``import qlab``)."""
from __future__ import annotations

import warnings

from qlab.core import backends


def register_triton() -> bool:
    try:
        from qlab.ext.triton import elementwise
    except Exception as e:  # triton missing or broken: the torch path stays
        import torch

        if torch.cuda.is_available():
            warnings.warn(f"qlab: triton unavailable ({e}); CUDA tensors use the torch reference path")
        return False
    backends.register("fixed", "cuda", "triton", elementwise.fixed_quantize, elementwise.accepts)
    return True


register_triton()
