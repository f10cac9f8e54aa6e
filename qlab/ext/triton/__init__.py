"""Triton kernels for CUDA tensors (issue 3), registered by :mod:`qlab.ext.backends`.

* :mod:`.elementwise`: fixed(W,F) in every rounding mode (stochastic via Philox),
  float(E,M) and log(W,E) -- one read and one write per element;
* :mod:`.intrinsic`: intrinsic linear and implicit-GEMM convolution, fixed-point and
  float(E,M) formats; on CUDA the named float formats run in the hardware's own
  arithmetic where that is exact (fp16/bf16 sequential, fp8 e4m3/e5m2 via its conversions).

Module switches in :mod:`.intrinsic` (each with a side-by-side row in bench/gpu_check.py;
all on by default): ``SKIP_PRODUCT_CLAMP``, ``WIDE_STEP`` and ``WIDE_ASM`` (the 64-bit
multiply step and its PTX form), ``FUSED_GRID_INTS``, ``SHARE_DRAWS``, ``PREFETCH``
("auto": operands of k + 1 loaded ahead in small launches), ``SKIP_SUM_CLAMP`` (runs
of sequential sums without their clamp where a bound proves it idle), ``PAIR_SUM`` (sums
carried as 64-bit pairs in the one-multiply-add loop), ``FLOAT_HW16``, ``HW16_RETRY``,
``FLOAT_FP8``, ``FLOAT_QHW``; in :mod:`.elementwise`: ``PHILOX4``.

Bit-identical with the torch reference for deterministic modes; tested on the CPU under
``TRITON_INTERPRET=1`` (:mod:`.checks`, :mod:`.testing`) and on a GPU by
``bench/gpu_check.py`` and the ``cuda`` test parameter.
"""
