"""Triton kernels for CUDA tensors (issue 3), registered by :mod:`qlab.ext.backends`.

* :mod:`.elementwise`: fixed(W,F) in every rounding mode (stochastic via Philox),
  float(E,M) and log(W,E) -- one read and one write per element;
* :mod:`.intrinsic`: intrinsic fixed-point linear and implicit-GEMM convolution.

Bit-identical with the torch reference for deterministic modes; tested on the CPU under
``TRITON_INTERPRET=1`` (:mod:`.checks`, :mod:`.testing`) and on a GPU by
``bench/gpu_check.py`` and the ``cuda`` test parameter.
"""
