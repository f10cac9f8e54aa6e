"""Fill qlab.core's backend registry with what can load here (imported by ``import qlab``).

CUDA tensors use the Triton kernels by default; CPU tensors use the compiled C kernel
for intrinsic fixed-point accumulation (``qlab.ext.cpu``, built with gcc at first use)
and the torch reference for the rest.  Each kernel's ``accepts`` declines what it does
not cover (other dtypes, formats or modes), and the reference runs instead.
``QLAB_BACKEND=torch|triton|cpu`` overrides (core).
"""
from __future__ import annotations

import warnings

from qlab.core import backends

_WARNED = False


def register_triton(device_type: str = "cuda") -> bool:
    """Register the Triton kernels for ``device_type`` tensors ("cpu" only makes sense
    under ``TRITON_INTERPRET=1``, which the tests use).  False when triton cannot load."""
    global _WARNED
    try:
        from qlab.ext.triton import elementwise, intrinsic
    except Exception as e:  # triton missing or broken: the torch path stays
        import torch

        if torch.cuda.is_available() and not _WARNED:
            _WARNED = True
            warnings.warn(f"qlab: triton unavailable ({e}); CUDA tensors use the torch reference path")
        return False
    backends.register("fixed", device_type, "triton", elementwise.fixed_quantize, elementwise.fixed_accepts)
    backends.register("float", device_type, "triton", elementwise.float_quantize, elementwise.float_accepts)
    backends.register("log", device_type, "triton", elementwise.log_quantize, elementwise.log_accepts)
    backends.register("fixed_matmul", device_type, "triton", intrinsic.fixed_matmul, intrinsic.matmul_accepts)
    backends.register("fixed_conv2d", device_type, "triton", intrinsic.fixed_conv2d, intrinsic.conv_accepts)
    backends.register("float_matmul", device_type, "triton", intrinsic.float_matmul, intrinsic.float_matmul_accepts)
    backends.register("float_conv2d", device_type, "triton", intrinsic.float_conv2d, intrinsic.float_conv_accepts)
    return True


def register_cpu() -> bool:
    """Register the compiled CPU kernels (``fixed``, ``fixed_accumulate``, ``fixed_matmul``,
    ``fixed_conv2d``, ``fixed_batch_norm``, ``fixed_elementwise``, ``float_matmul``, ``float``,
    ``float_conv2d``, ``float_batch_norm``, ``float_elementwise``)
    for CPU tensors.  Nothing is compiled here: the first
    accepted call builds it (or warns once and declines)."""
    from qlab.ext import cpu

    backends.register("fixed_accumulate", "cpu", "cpu", cpu.fixed_accumulate, cpu.accepts)
    backends.register("fixed", "cpu", "cpu", cpu.fixed_quantize, cpu.fixed_accepts)
    backends.register("fixed_matmul", "cpu", "cpu", cpu.fixed_matmul, cpu.matmul_accepts)
    backends.register("fixed_conv2d", "cpu", "cpu", cpu.fixed_conv2d, cpu.conv_accepts)
    backends.register("fixed_batch_norm", "cpu", "cpu", cpu.fixed_batch_norm, cpu.batch_norm_accepts)
    backends.register("fixed_elementwise", "cpu", "cpu", cpu.fixed_elementwise, cpu.elementwise_accepts)
    backends.register("float_matmul", "cpu", "cpu", cpu.float_matmul, cpu.float_matmul_accepts)
    backends.register("float_conv2d", "cpu", "cpu", cpu.float_conv2d, cpu.float_conv_accepts)
    backends.register("float", "cpu", "cpu", cpu.float_quantize, cpu.float_accepts)
    backends.register("float_batch_norm", "cpu", "cpu", cpu.float_batch_norm, cpu.float_batch_norm_accepts)
    backends.register("float_elementwise", "cpu", "cpu", cpu.float_elementwise, cpu.float_elementwise_accepts)
    return True


register_triton()
register_cpu()
