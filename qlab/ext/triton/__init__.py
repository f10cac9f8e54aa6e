"""Triton kernels (issue 3, in progress): the elementwise fixed-point quantizer so far.

Registered for CUDA tensors by :mod:`qlab.ext.backends`; tested on the CPU under
``TRITON_INTERPRET=1``.  Intrinsic linear/conv kernels are still owed.
"""
