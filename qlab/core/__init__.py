"""qlab's core: number formats, spec parsing, plans, attaching a plan, intrinsic arithmetic.

Depends on torch only; ``qlab.ext`` plugs faster backends into :mod:`qlab.core.backends`.
"""
from .attach import QuantizeHandle, intrinsic_scope, quantize
from .formats import Binary, FixedPoint, Float, Identity, Log, Quantizer, Sparse, Ternary
from .intrinsic import (
    Intrinsic,
    intrinsic_adaptive_avg_pool2d,
    intrinsic_avg_pool2d,
    intrinsic_batch_norm,
    intrinsic_conv,
    intrinsic_elementwise,
    intrinsic_linear,
    intrinsic_matmul,
)
from .plan import Plan
from .spec import parse

__all__ = [
    "parse", "Plan", "quantize", "QuantizeHandle", "intrinsic_scope",
    "Quantizer", "FixedPoint", "Float", "Log", "Binary", "Ternary", "Sparse", "Identity", "Intrinsic",
    "intrinsic_linear", "intrinsic_conv", "intrinsic_matmul", "intrinsic_avg_pool2d",
    "intrinsic_adaptive_avg_pool2d", "intrinsic_batch_norm", "intrinsic_elementwise",
]
