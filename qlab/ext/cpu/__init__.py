"""Compiled CPU kernels: the elementwise fixed(W, F) quantizer (``fixed``), intrinsic
fixed-point linear/matmul, convolution and accumulation (``fixed_matmul``,
``fixed_conv2d``, ``fixed_accumulate``; the step after the sums in one C pass too,
``EPILOGUE_KERNEL``), intrinsic fixed-point batch norm and elementwise add/sub/mul
(``fixed_batch_norm``, ``fixed_elementwise``), the intrinsic float(E, M) matmul and
conv (``float_matmul``, ``float_conv2d``), the float formats' batch norm and elementwise
ops (``float_batch_norm``, ``float_elementwise``) and the elementwise float(E, M)
quantizer (``float``; nearest-even formats by a short rounding, ``FLOAT_HW``), all
bit-identical to the torch reference for deterministic rounding; stochastic rounding
(every fixed-point step, ``STOCHASTIC_KERNELS``; the float matmul and conv) draws from a
counter-based hash seeded from torch's generator: the reference's distribution, not its
draws.  The float kernels live in ``float_matmul.c`` (see its header and
:mod:`qlab.ext.float_intrinsic`): the quantizer on float32 CPU tensors (every mode) and
float64 ones (M <= 21, deterministic modes), the pointwise steps likewise deterministic;
float32/float16/bfloat16 for the matmul and conv, every mode (stochastic full tiles on 8
lanes, ``FLOAT_STO_VEC``; the short roundings without their saturation and NaN selects
where a bound on the operands shows them idle, ``FLOAT_IN_RANGE``, :func:`_in_range`).

Fixed point: ``qlab.core.intrinsic._fixed_accumulate`` asks the backend registry first; this module
answers for CPU tensors with one fused C pass (``fixed_accumulate.c``): per output, every
product is rounded, clamped, shifted to the accumulator grid and added (with saturation
for ``sequential``) without intermediate tensors, bit-identical to the torch reference;
clamps that a bound on the operands shows idle are left out (``_product_bound``).
Linear layers and matmuls (``fixed_matmul``, :func:`fixed_matmul`) and convolutions
(``fixed_conv2d``, :func:`fixed_conv2d`: each tile's windows gathered from the input's
grid integers, no im2col tensor) run whole in this module: operands to int32 grid
integers in one C pass each (:func:`grid_ints`), the same accumulation code, the
reference's epilogue.  ``MATMUL_KERNEL`` / ``CONV_KERNEL = False`` restore the
reference's steps around the accumulation kernel.

Covered (:func:`covers`): grid-exact inputs (``inputs=True``), deterministic rounding
(nearest, even, down, up, zero) with 0 <= q.F <= 62, stochastic rounding with
0 <= q.F <= 30 and K < 2**24 (draws from ``draws.h``, seeded from torch's generator at
each C call; every step: grid integers, products, epilogue), an accumulator at least as
fine as the operands (A.F >= q.F, any rounding: it never acts) with
``q.W - 1 + A.F - q.F <= 61``, both accumulate modes.  Declined (the reference runs):
``inputs=False``, A.F < q.F, negative or larger F, shifts that could overflow int64,
non-CPU tensors.

The shared library is built with gcc at first use into
``qlab.ext.store.cache_root()/"cpu-kernels"``, under a name keyed by a hash of the
source, the flags, the machine and the compiler, atomically (temporary name, then
``os.replace``).  No compiler or a failed build: one warning, and the reference runs.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from qlab.core.formats import FixedPoint
from qlab.core.grid import rescale

SOURCE = Path(__file__).with_name("fixed_accumulate.c")
# -fno-trapping-math lets gcc vectorise the float loops (grid integers, the quantizer) with
# blends; no value changes (no fast-math, no contraction)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-fno-trapping-math",
         "-ffp-contract=off"]
MODES = ("nearest", "even", "down", "up", "zero")
ABI = 11
KINDS = {torch.int32: 0, torch.int64: 1, torch.float32: 2, torch.float64: 3}  # fixed_accumulate.c
JB32 = 32  # columns per tile of the int32 kernels (fixed_accumulate.c)

_lock = threading.Lock()
_lib = None  # the loaded library, False after a failed build
calls = 0  # kernel calls in this process (tests check that the kernel ran)
grid_calls = 0  # grid_ints calls


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "gcc"
    return shutil.which(cc)


def _cpu_id() -> str:
    """The CPU's model and flags (-march=native code must not run on another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def library_path(cc: str, source: Path = SOURCE, flags=FLAGS) -> Path:
    from qlab.ext.store import cache_root

    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    headers = b"".join(p.read_bytes() for p in sorted(source.parent.glob("*.h")))  # draws.h, conv_gather.h: included by both
    for part in (source.read_bytes(), headers, " ".join(flags).encode(), platform.machine().encode(),
                 version.encode(), _cpu_id().encode()):
        h.update(part)
        h.update(b"\0")
    return cache_root() / "cpu-kernels" / f"qlab_cpu_{h.hexdigest()[:16]}.so"


def _compile(source: Path, flags) -> ctypes.CDLL:
    """Build ``source`` into the cache (once per source, flags, compiler and CPU) and load it."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc) found")
    path = library_path(cc, source, flags)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            r = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True,
                               timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-2000:]}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(path))


def _build() -> ctypes.CDLL:
    lib = _compile(SOURCE, FLAGS)
    if lib.qlab_cpu_abi() != ABI:
        raise RuntimeError(f"{lib._name}: unexpected ABI")
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    args = [ptr, i32, i64, i64, ptr, i32, i64, ptr, i32, i64, i64, i64, i64, i64, i64, i32, i32, i64, i64, i64, i64,
            i64, ctypes.c_uint64, i32]
    u64 = ctypes.c_uint64
    conv_args = [ptr, ptr, ptr, ptr, *[i64] * 16, i32, i32, i32, i64, i64, i64, i64, i64, u64, i32]
    lib.qlab_grid_i32.argtypes = [ptr, i32, i64, i32, i32, i32, u64, ptr, ptr, i32]
    lib.qlab_grid_i32.restype = ctypes.c_int
    lib.qlab_fixed_quantize.argtypes = [ptr, ptr, i32, i64, i32, i32, i32, u64, i32]
    lib.qlab_fixed_quantize.restype = ctypes.c_int
    lib.qlab_fixed_epilogue.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, i64, i64, i64, i64, i32, u64,
                                        i32]
    lib.qlab_fixed_bn.argtypes = [ptr, ptr, i32, i64, i64, i64, ptr, ptr, i32, i32, i32, i32, u64, i32]
    lib.qlab_fixed_binary.argtypes = [ptr, ptr, ptr, i32, i64, i32, i32, i32, i32, i32, u64, i32]
    for name in ("qlab_fixed_epilogue", "qlab_fixed_bn", "qlab_fixed_binary"):
        getattr(lib, name).restype = ctypes.c_int
    for acc in ("seq", "fin"):
        for mode in ("none", *MODES, "stochastic"):
            for sfx in ("i32", "i64"):
                for name, a in ((f"qlab_{acc}_{mode}_{sfx}", args), (f"qlab_conv_{acc}_{mode}_{sfx}", conv_args)):
                    fn = getattr(lib, name)
                    fn.argtypes = a
                    fn.restype = ctypes.c_int
    return lib


def load():
    """The compiled library, built on first use; None (after one warning) when it cannot be."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                try:
                    _lib = _build()
                except Exception as e:  # no compiler, build or load failure: the reference runs
                    _lib = False
                    warnings.warn(f"qlab: the CPU kernel could not be built ({e}); using the torch reference")
    return _lib or None


def covers(spec, grid_exact, K: int = 0) -> bool:
    """Whether the kernels compute ``spec``'s accumulation over ``K`` products (without
    building them): deterministic roundings, or stochastic ones with q.F <= 30 (draws of 32
    bits) and K < 2**24 (each draw's counter); A's rounding never acts (its grid is as fine
    as Q's: every move to it is exact), so it may be any."""
    q, A = spec.q, spec.A
    if not (isinstance(q, FixedPoint) and isinstance(A, FixedPoint) and grid_exact):
        return False
    if q.rounding == "stochastic":
        if q.F > 30 or K >= 2 ** 24:
            return False
    elif q.rounding not in MODES:
        return False
    if A.rounding not in (*MODES, "stochastic") or spec.accumulate not in ("sequential", "final"):
        return False
    d = A.F - q.F
    return 0 <= q.F <= 62 and d >= 0 and q.W - 1 + d <= 61 and q.W <= 32 and A.W <= 32


def accepts(xT, w, spec, generator, dt, grid_exact) -> bool:
    if not (xT.device.type == "cpu" and w.device.type == "cpu" and xT.dim() == 2 and w.dim() == 2
            and xT.shape[0] == w.shape[0] and dt in (torch.float32, torch.float64, torch.int64)
            and xT.dtype == dt and w.dtype == dt and covers(spec, grid_exact, xT.shape[0])):
        return False
    q, A = spec.q, spec.A
    if dt == torch.float32 and (A.W > 24 or q.W > 24):  # results exact in the reference's dtype
        return False
    if spec.accumulate == "final" and dt != torch.int64 and xT.shape[0] * 2.0 ** (q.W - 1) >= 2.0 ** 53:
        return False  # the reference's float64 sum would no longer be exact
    return load() is not None


def _use_int32(q: FixedPoint, A: FixedPoint, K: int, final: bool) -> bool:
    """Whether every intermediate fits int32 (twice the lanes of int64)."""
    if q.W > 16 or q.F > 30:  # |x*w| <= 2**30; nearest adds < 2**30 more
        return False
    if final:
        return K * 2 ** (q.W - 1) < 2 ** 31
    return q.W - 1 + (A.F - q.F) <= 29 and A.W <= 30


_GRID_MODES = {"nearest": 1, "even": 2, "down": 3, "up": 4, "zero": 5, "stochastic": 6}  # the C side's modes


def _draw_seed(q, generator) -> int:
    """A 62-bit seed for one C call's stochastic draws, from ``generator`` (else torch's
    default CPU generator, so torch.manual_seed repeats a run); 0 where ``q`` rounds
    deterministically (nothing drawn)."""
    if q.rounding != "stochastic":
        return 0
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, dtype=torch.int64).item())


def grid_ints(t: torch.Tensor, q: FixedPoint, generator=None) -> tuple[torch.Tensor, int]:
    """(k, max |k|): q's grid integers of t as int32 (``fixed_to_grid`` for 0 <= F <= 62;
    stochastic: the reference's distribution, drawn from the hash; NaN -> 0) in one C pass
    over a float32/float64 CPU tensor (float16/bfloat16 widened first, exactly)."""
    global grid_calls
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    t = t.contiguous()
    out = torch.empty(t.shape, dtype=torch.int32)
    amax = ctypes.c_int64(0)
    load().qlab_grid_i32(t.data_ptr(), KINDS[t.dtype], t.numel(), q.W, q.F, _GRID_MODES[q.rounding],
                         _draw_seed(q, generator), out.data_ptr(), ctypes.byref(amax),
                         max(1, torch.get_num_threads()))
    grid_calls += 1
    return out, amax.value


FIXED_KERNEL = True  # False: the elementwise fixed quantizer by the reference's torch steps
fixed_calls = 0  # fixed_quantize calls


def fixed_accepts(x, q, generator=None) -> bool:
    """The elementwise fixed(W, F) quantizer: float32 and float64 CPU tensors, every mode
    (stochastic: draws from a hash seeded from ``generator``), F where x * 2**F is exact in
    double."""
    if not (FIXED_KERNEL and x.device.type == "cpu" and q.rounding in _GRID_MODES):
        return False
    if x.dtype == torch.float32:
        ok = -800 <= q.F <= 800
    elif x.dtype == torch.float64:
        ok = 0 <= q.F <= 900
    else:
        return False
    return ok and load() is not None


def fixed_quantize(x, q, generator=None):
    """Q(x) for fixed(W, F) in one C pass (the reference's values: NaN stays, inf
    saturates, a zero result is +0)."""
    global fixed_calls
    if not fixed_accepts(x, q, generator):
        raise ValueError(f"the CPU fixed quantizer covers float32/float64 CPU tensors, not {q} on {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if xc.numel():
        load().qlab_fixed_quantize(xc.data_ptr(), y.data_ptr(), KINDS[xc.dtype], xc.numel(), q.W, q.F,
                                   _GRID_MODES[q.rounding], _draw_seed(q, generator), max(1, torch.get_num_threads()))
    fixed_calls += 1
    return y


def _swap(M: int, N: int) -> bool:
    """Whether x's M rows should be the vectorised columns of an [M, N] result instead of
    its N outputs: where that leaves fewer outputs in ragged column blocks (the kernels'
    scalar tail), e.g. 12250 conv positions x 48 channels: 16 of every 48 outputs ragged
    one way, 26 of 12250 the other."""
    return (M % JB32) * N < (N % JB32) * M


def _product_bound(a: torch.Tensor, b: torch.Tensor, s: int) -> int:
    """pm = (max|a| * max|b| >> s) + 1, a bound on every rounded product of grid integers
    (any rounding mode); -1 where an operand is empty.  The kernel skips the clamps that
    this bound shows cannot act (fixed_accumulate.c)."""
    if a.numel() == 0 or b.numel() == 0:
        return -1
    return _bound_of(int(a.abs().max().item()), int(b.abs().max().item()), s)


def _bound_of(amax_a: int, amax_b: int, s: int) -> int:
    return ((amax_a * amax_b) >> max(s, 0)) + 1


def _kernel(spec, K: int, final: bool, conv: bool = False):
    """The C function for ``spec``'s rounding, accumulation and integer width."""
    q, A = spec.q, spec.A
    return getattr(load(), f"qlab_{'conv_' if conv else ''}{'fin' if final else 'seq'}_"
                           f"{q.rounding if q.F > 0 else 'none'}_{'i32' if _use_int32(q, A, K, final) else 'i64'}")


def _ran(rc: int) -> None:
    global calls
    if rc != 0:
        raise MemoryError("qlab CPU kernel: out of memory")
    calls += 1


def _final_sum(s, spec, generator):
    """As the reference: the exact sum rescaled to A's grid, clamped to its range."""
    A = spec.A
    return rescale(s, spec.q.F - A.F, A.rounding, generator).clamp_(A.min_int, A.max_int)


def fixed_accumulate(xT, w, spec, generator, dt, grid_exact) -> torch.Tensor:
    """``_fixed_accumulate`` (qlab.core.intrinsic) with the fused kernel: same dtype, same values."""
    q, A = spec.q, spec.A
    K, M = xT.shape
    N = w.shape[1]
    final = spec.accumulate == "final"
    out = torch.empty(M, N, dtype=dt if not final else (torch.float64 if dt != torch.int64 else torch.int64))
    if swap := _swap(M, N):
        # narrow or ragged outputs (conv layers with few channels): vectorise over the M rows
        # of x (the products commute), each tile all N outputs of JB32 rows of x
        A_, B_ = w, (xT if xT.stride(1) == 1 else xT.contiguous())
        R, C, G, so_r, so_c = N, M, N, 1, N
    else:
        A_, B_ = xT, w.to(torch.int32).contiguous()  # w is re-read for every row: int32 once
        R, C, G, so_r, so_c = M, N, 4, N, 1  # tiles of 4 rows: the int32 micro-kernel's
    pm = -1 if q.stochastic else _product_bound(A_, B_, q.F)  # stochastic products: no clamps left out
    _ran(_kernel(spec, K, final)(
        A_.data_ptr(), KINDS[A_.dtype], A_.stride(1), A_.stride(0), B_.data_ptr(), KINDS[B_.dtype], B_.stride(0),
        out.data_ptr(), KINDS[out.dtype], so_r, so_c, R, K, C, G, q.F, A.F - q.F, q.min_int, q.max_int,
        A.min_int, A.max_int, pm, _draw_seed(q, generator), max(1, torch.get_num_threads())))
    return _final_sum(out, spec, generator).to(dt) if final else out


# --------------------------------------------------------------------------- linear and convolution
STOCHASTIC_KERNELS = True  # False: stochastic linear/conv and pointwise steps by the reference, as before 2026-11-30
CONV_KERNEL = True  # False: conv2d by unfold + the accumulation kernel (fixed) or the float matmul (float), as before 2026-11-30
MATMUL_KERNEL = True  # False: linear by the reference's steps around the accumulation kernel (ditto)


def _operands_ok(x, w, bias, spec, K: int) -> bool:
    """What :func:`fixed_matmul` and :func:`fixed_conv2d` share: CPU float tensors of one
    dtype, inputs on the grid, and the cases the reference would hand to
    :func:`fixed_accumulate` (same limits, same dtype rule)."""
    if spec is None or w is None or not getattr(spec, "fixed", False):
        return False
    if spec.q.rounding == "stochastic" and not STOCHASTIC_KERNELS:
        return False
    if not (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype.is_floating_point and w.dtype == x.dtype
            and (bias is None or (bias.dtype == x.dtype and bias.device.type == "cpu"))):
        return False
    if not covers(spec, spec.inputs, K):
        return False
    from qlab.core.intrinsic import _product_dtype

    q, A = spec.q, spec.A
    dt = _product_dtype(q, A)
    if dt == torch.float32 and (A.W > 24 or q.W > 24):
        return False
    if spec.accumulate == "final" and dt != torch.int64 and K * 2.0 ** (q.W - 1) >= 2.0 ** 53:
        return False
    return load() is not None


def matmul_accepts(x, w=None, bias=None, spec=None, generator=None, quantize_w=True) -> bool:
    """Whether :func:`fixed_matmul` computes this intrinsic x @ w (+ bias)."""
    if not MATMUL_KERNEL or w is None or x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[0]:
        return False
    return _operands_ok(x, w, bias, spec, x.shape[1])


def fixed_matmul(x, w, bias, spec, generator=None, quantize_w=True):
    """Intrinsic y = x @ w (+ bias) for x [M, K], w [K, N] (``weight.t()`` of a linear
    layer): both operands to grid integers in one C pass each (no float64 copies, no
    transposed copy of x), the accumulation kernel, then the reference's epilogue.
    Bit-identical to the reference."""
    from qlab.core.intrinsic import fixed_epilogue

    if not matmul_accepts(x, w, bias, spec, generator, quantize_w):
        raise ValueError(f"the CPU matmul kernel does not cover {spec} here")
    q, A = spec.q, spec.A
    M, K = x.shape
    N = w.shape[1]
    if M == 0 or N == 0:
        return w.new_zeros(M, N, dtype=x.dtype)
    final = spec.accumulate == "final"
    if K == 0:
        return fixed_epilogue(torch.zeros(M, N, dtype=torch.int64), bias, spec, generator, x.dtype)
    kx, ax = grid_ints(x, q, generator)  # [M, K]
    kwt, aw = grid_ints(w.t(), q, generator)  # [N, K]: the weight as stored, no copy for a linear layer's w
    out = torch.empty(M, N, dtype=torch.int64)
    # few outputs: rows are w's columns, the long loop runs over x's rows (not for ragged
    # blocks alone as _swap: x's transposed copy costs more than the ragged tail here)
    if N < JB32 and M > N:
        A_, B_, R, C, G, so_r, so_c = kwt, kx.t().contiguous(), N, M, N, 1, N
    else:
        A_, B_, R, C, G, so_r, so_c = kx, kwt.t().contiguous(), M, N, 4, N, 1
    _ran(_kernel(spec, K, final)(
        A_.data_ptr(), KINDS[torch.int32], A_.stride(0), A_.stride(1), B_.data_ptr(), KINDS[torch.int32],
        B_.stride(0), out.data_ptr(), KINDS[torch.int64], so_r, so_c, R, K, C, G, q.F, A.F - q.F, q.min_int,
        q.max_int, A.min_int, A.max_int, _bound_of(ax, aw, q.F), _draw_seed(q, generator),
        max(1, torch.get_num_threads())))
    if _epilogue_ok(x.dtype):  # sums [M, N] as a [M, 1, 1, N] view, the bias along N
        return _epilogue(out, (M, 1, 1, N), (N, 0, 0, 1), bias, (0, 0, 1), spec, generator, x.dtype, (M, N))
    return fixed_epilogue(_final_sum(out, spec, generator) if final else out, bias, spec, generator, x.dtype)


def conv_accepts(x, w=None, bias=None, stride=None, pads=None, dilation=None, groups=1, spec=None,
                 generator=None) -> bool:
    """Whether :func:`fixed_conv2d` computes this intrinsic conv2d."""
    if not CONV_KERNEL or w is None or x.dim() != 4 or w.dim() != 4:
        return False
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:  # the reference raises torch's error
        return False
    return _operands_ok(x, w, bias, spec, w.shape[1] * w.shape[2] * w.shape[3])


def fixed_conv2d(x, w, bias, stride, pads, dilation, groups, spec, generator=None):
    """Intrinsic conv2d on x [B, C, H, W] with weight [O, C/groups, kh, kw], pads = (left,
    right, top, bottom) zeros: one C pass that gathers each window from the input's grid
    integers as its tile needs it (no im2col tensor), then the reference's epilogue (bias,
    back to Q's grid).  Bit-identical to the reference."""
    from qlab.core.intrinsic import fixed_epilogue

    if not conv_accepts(x, w, bias, stride, pads, dilation, groups, spec, generator):
        raise ValueError(f"the CPU conv kernel does not cover {spec} here")
    q, A = spec.q, spec.A
    B, C, H, W_ = x.shape
    O, CG, KH, KW = w.shape
    SH, SW = stride
    DH, DW = dilation
    pl, pr, pt, pb = pads
    HO = max((H + pt + pb - DH * (KH - 1) - 1) // SH + 1, 0)
    WO = max((W_ + pl + pr - DW * (KW - 1) - 1) // SW + 1, 0)
    K, og, P = CG * KH * KW, O // groups, B * HO * WO
    final = spec.accumulate == "final"
    if P == 0 or O == 0 or K == 0:
        return fixed_epilogue(torch.zeros(B, O, HO, WO, dtype=torch.int64), bias, spec, generator, x.dtype, (1, O, 1, 1))
    kx, ax = grid_ints(x, q, generator)
    kw, aw = grid_ints(w, q, generator)
    kw = kw.reshape(groups, og, K)  # [G, og, K]
    # columns (the vectorised loop) are blocks of positions, each block's windows gathered once
    # for all the group's channels -- unless there are fewer positions than a block and more
    # channels (then rows are positions, columns channels)
    swap = P >= JB32 or og <= P
    wk = kw if swap else kw.transpose(1, 2).contiguous()  # [G, K, og] for columns = channels
    out = torch.empty(groups, og, P, dtype=torch.int64) if swap else torch.empty(groups, P, og, dtype=torch.int64)
    _ran(_kernel(spec, K, final, conv=True)(
        kx.data_ptr(), kw.data_ptr(), wk.data_ptr(), out.data_ptr(), B, C, H, W_, HO, WO, KH, KW, SH, SW, pt, pl,
        DH, DW, groups, og, int(swap), q.F, A.F - q.F, q.min_int, q.max_int, A.min_int, A.max_int,
        _bound_of(ax, aw, q.F), _draw_seed(q, generator), max(1, torch.get_num_threads())))
    L = HO * WO
    if _epilogue_ok(x.dtype):  # read as [B, G, og, L] from either layout, written contiguous
        st = (L, og * B * L, B * L, 1) if swap else (L * og, B * L * og, 1, og)
        return _epilogue(out, (B, groups, og, L), st, bias, (og, 1, 0), spec, generator, x.dtype, (B, O, HO, WO))
    if swap:  # [G, og, B, L] -> [B, G, og, L]
        s = out.view(groups, og, B, HO * WO).permute(2, 0, 1, 3)
    else:  # [G, B, L, og] -> [B, G, og, L]
        s = out.view(groups, B, HO * WO, og).permute(1, 0, 3, 2)
    s = s.reshape(B, O, HO, WO)
    return fixed_epilogue(_final_sum(s, spec, generator) if final else s, bias, spec, generator, x.dtype,
                          (1, O, 1, 1))


# --------------------------------------------------------------------------- pointwise steps
EPILOGUE_KERNEL = True  # False: the linear/conv epilogue, batch norm and elementwise ops (fixed and float) by torch steps
epilogue_calls = 0  # C calls of the three below (tests check that they ran)


def _epilogue_ok(dtype) -> bool:
    return EPILOGUE_KERNEL and dtype in (torch.float32, torch.float64)


def _counted(rc: int) -> None:
    global epilogue_calls
    if rc != 0:
        raise RuntimeError("qlab CPU kernel: pointwise step failed")
    epilogue_calls += 1


def _epilogue(s, sizes, strides, bias, bias_strides, spec, generator, dtype, shape):
    """:func:`qlab.core.intrinsic.fixed_epilogue` (and, for ``final``, the exact sum's move
    to A first) in one C pass over the int64 sums ``s`` read as a 4-d view (``sizes``,
    ``strides`` in elements), the bias's grid integers indexed by the view's last three
    dims (``bias_strides``); the values in ``dtype`` (float32/float64), shaped ``shape``."""
    from qlab.core.intrinsic import _grid_int

    q, A = spec.q, spec.A
    y = torch.empty(shape, dtype=dtype)
    kb = _grid_int(bias, q, generator).contiguous() if bias is not None else None
    n = torch.tensor(sizes, dtype=torch.int64)
    st = torch.tensor(strides, dtype=torch.int64)
    bs = torch.tensor(bias_strides, dtype=torch.int64)
    _counted(load().qlab_fixed_epilogue(
        s.data_ptr(), n.data_ptr(), st.data_ptr(), kb.data_ptr() if kb is not None else None, bs.data_ptr(),
        y.data_ptr(), KINDS[dtype], int(spec.accumulate == "final"), A.F - q.F, _GRID_MODES[q.rounding],
        A.min_int, A.max_int, q.min_int, q.max_int, q.F, _draw_seed(q, generator), max(1, torch.get_num_threads())))
    return y


def _pointwise_ok(x, spec) -> bool:
    """CPU float32/float64 values, a fixed format (any rounding), 0 <= F <= 62."""
    if not (EPILOGUE_KERNEL and getattr(spec, "fixed", False) and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)):
        return False
    q = spec.q
    if q.rounding == "stochastic" and not STOCHASTIC_KERNELS:
        return False
    return q.rounding in _GRID_MODES and 0 <= q.F <= 62 and q.W <= 32 and load() is not None


def batch_norm_accepts(x, g=None, r=None, spec=None, generator=None) -> bool:
    """Whether :func:`fixed_batch_norm` computes this intrinsic batch norm."""
    return spec is not None and x.dim() >= 2 and len(g) == x.shape[1] and _pointwise_ok(x, spec)


def fixed_batch_norm(x, g, r, spec, generator=None):
    """Intrinsic batch norm (eval) y = Q(Q(Q(x) g) + r) with the per-channel grid integers
    g, r (``_bn_constants_fixed``) in one C pass; the reference's values."""
    if not batch_norm_accepts(x, g, r, spec, generator):
        raise ValueError(f"the CPU batch-norm kernel does not cover {spec} on {x.dtype}")
    q = spec.q
    xc = x.contiguous()
    y = torch.empty_like(xc)
    N, C = xc.shape[0], xc.shape[1]
    L = xc[0, 0].numel() if xc.numel() else 0
    if xc.numel():
        kg = torch.tensor(list(g), dtype=torch.int64)
        kr = torch.tensor(list(r), dtype=torch.int64)
        _counted(load().qlab_fixed_bn(xc.data_ptr(), y.data_ptr(), KINDS[xc.dtype], N, C, L, kg.data_ptr(),
                                      kr.data_ptr(), q.W, q.F, _GRID_MODES[q.rounding], int(spec.inputs),
                                      _draw_seed(q, generator), max(1, torch.get_num_threads())))
    return y


_BINARY_OPS = {"add": 0, "sub": 1, "mul": 2}


def elementwise_accepts(a, b=None, op=None, spec=None, generator=None) -> bool:
    """Whether :func:`fixed_elementwise` computes this intrinsic a op b (same shape and dtype)."""
    return (isinstance(b, torch.Tensor) and op in _BINARY_OPS and a.shape == b.shape and a.dtype == b.dtype
            and b.device.type == "cpu" and _pointwise_ok(a, spec))


def fixed_elementwise(a, b, op, spec, generator=None):
    """Intrinsic y = Q(Q(a) op Q(b)) in one C pass; the reference's values."""
    if not elementwise_accepts(a, b, op, spec, generator):
        raise ValueError(f"the CPU elementwise kernel does not cover {op} with {spec} here")
    q = spec.q
    ac, bc = a.contiguous(), b.contiguous()
    y = torch.empty_like(ac)
    if ac.numel():
        _counted(load().qlab_fixed_binary(ac.data_ptr(), bc.data_ptr(), y.data_ptr(), KINDS[ac.dtype], ac.numel(),
                                          _BINARY_OPS[op], q.W, q.F, _GRID_MODES[q.rounding], int(spec.inputs),
                                          _draw_seed(q, generator), max(1, torch.get_num_threads())))
    return y


# --------------------------------------------------------------------------- float formats
FLOAT_SOURCE = SOURCE.with_name("float_matmul.c")
FLOAT_FLAGS = FLAGS + ["-fno-fast-math"]
FLOAT_ABI = 20
FLOAT_HW = True  # False: nearest-even formats rounded by the general bit arithmetic, not the short ones (float_matmul.c)
FLOAT_STO_VEC = True  # False: stochastic float tiles one column at a time (row_sto), as before 2026-11-30: the same values
FLOAT_IN_RANGE = True  # False: the short roundings keep their saturation/NaN selects where a bound shows them idle (_in_range)
FLOAT_EPI_VEC = True  # False: every tile's epilogue (bias, the output's rounding) one column at a time: the same values
FLOAT_PAD = True  # False: ragged column blocks (< 32 columns) one column at a time, not as zero-padded full tiles
_flib = None
float_calls = 0  # float_matmul kernel calls in this process (tests check that it ran)
round_calls = 0  # float_quantize kernel calls


def load_float():
    """The compiled float-format library (``float_matmul.c``), or None after one warning."""
    global _flib
    if _flib is None:
        with _lock:
            if _flib is None:
                try:
                    lib = _compile(FLOAT_SOURCE, FLOAT_FLAGS)
                    if lib.qlab_float_abi() != FLOAT_ABI:
                        raise RuntimeError(f"{lib._name}: unexpected ABI")
                    i64, i32, ptr, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
                    lib.qlab_float_matmul.argtypes = [ptr, i64, i64, ptr, i64, ptr, i64, i64, ptr, i64, i64, i64, i64, i64,
                                                      ptr, ptr, ptr, ptr, i32, i32, f32, f32, i32, ctypes.c_uint64, i32,
                                                      i32, i32, i32, i32]
                    lib.qlab_float_matmul.restype = ctypes.c_int
                    lib.qlab_float_conv.argtypes = [ptr, ptr, ptr, ptr, ptr, *[i64] * 16, i32, ptr, ptr, ptr, ptr, i32,
                                                    i32, f32, f32, i32, ctypes.c_uint64, i32, i32, i32, i32, i32]
                    lib.qlab_float_conv.restype = ctypes.c_int
                    lib.qlab_float_round.argtypes = [ptr, ptr, i64, ptr, ptr, i32, i32, i32, ctypes.c_uint64]
                    lib.qlab_float_round.restype = ctypes.c_int
                    lib.qlab_float_bn.argtypes = [ptr, ptr, i32, i64, i64, i64, ptr, ptr, ptr, ptr, i32, i32, i32]
                    lib.qlab_float_binary.argtypes = [ptr, ptr, ptr, i32, i64, i32, ptr, ptr, i32, i32, i32]
                    lib.qlab_abs_bits.argtypes = [ptr, i64, i64, i64, ptr, ptr, i32]
                    for name in ("qlab_float_bn", "qlab_float_binary", "qlab_abs_bits"):
                        getattr(lib, name).restype = ctypes.c_int
                    _flib = lib
                except Exception as e:
                    _flib = False
                    warnings.warn(f"qlab: the CPU float kernel could not be built ({e}); using the torch reference")
    return _flib or None


# rounding modes as flags: gt, tie, tie-and-odd, negative, positive round the magnitude up;
# keep_all / keep_zero_in: the sign of a zero result, as the reference's torch ops give it
# (gt, tie, tie-and-odd, negative, positive, keep_all, keep_zero_in, stochastic)
_MODE_FLAGS = {"nearest": (1, 1, 0, 0, 0, 0, 0, 0), "even": (1, 0, 1, 0, 0, 1, 0, 0), "down": (0, 0, 0, 1, 0, 1, 0, 0),
               "up": (0, 0, 0, 0, 1, 1, 0, 0), "zero": (0, 0, 0, 0, 0, 0, 1, 0),
               "stochastic": (0, 0, 0, 0, 0, 0, 0, 1)}


@functools.lru_cache(maxsize=256)
def _fmt_arrays(fmt):
    """The C kernels' format arrays (ints, floats) for fmt = (emin, M, maxv, inf, rounding);
    cached: callers only pass their data pointers."""
    emin, M, maxv, inf, rounding = fmt
    ints = torch.tensor([emin, M] + [-f for f in _MODE_FLAGS[rounding]], dtype=torch.int32)
    floats = torch.tensor([maxv, math.inf if inf else maxv], dtype=torch.float32)
    return ints, floats


def _float_pointwise_ok(x, spec) -> bool:
    """The float formats' pointwise steps: CPU float32/float64 values, a Float format with a
    deterministic rounding and M <= 21 (what the float64 quantizer covers)."""
    from qlab.core.formats import Float

    q = getattr(spec, "q", None)
    return (EPILOGUE_KERNEL and isinstance(q, Float) and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and q.rounding in MODES and q.M <= 21
            and not (q.fn and q.E == 8) and load_float() is not None)


def _float_fmt(q):
    from qlab.core.formats import _float_params

    emin, _, maxv = _float_params(q.E, q.M, q.fn)
    return _fmt_arrays((emin, q.M, maxv, q.inf, q.rounding))


def float_batch_norm_accepts(x, g=None, r=None, spec=None, generator=None) -> bool:
    """Whether :func:`float_batch_norm` computes this intrinsic batch norm."""
    return (spec is not None and x.dim() >= 2 and g is not None and r is not None and g.numel() == x.shape[1]
            and r.numel() == x.shape[1] and _float_pointwise_ok(x, spec))


def float_batch_norm(x, g, r, spec, generator=None):
    """Intrinsic batch norm (eval) for float formats, y = Q(Q(x^ g) + r) with the per-channel
    g, r (Q's values, float64) in one C pass: the reference's float64 steps."""
    if not float_batch_norm_accepts(x, g, r, spec, generator):
        raise ValueError(f"the CPU float batch-norm kernel does not cover {spec} on {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if xc.numel():
        qi, qv = _float_fmt(spec.q)
        g64, r64 = g.detach().double().cpu().contiguous(), r.detach().double().cpu().contiguous()
        _counted(load_float().qlab_float_bn(xc.data_ptr(), y.data_ptr(), int(xc.dtype == torch.float64), xc.shape[0],
                                            xc.shape[1], xc[0, 0].numel(), g64.data_ptr(), r64.data_ptr(),
                                            qi.data_ptr(), qv.data_ptr(), int(spec.inputs), int(FLOAT_HW),
                                            max(1, torch.get_num_threads())))
    return y


def float_elementwise_accepts(a, b=None, op=None, spec=None, generator=None) -> bool:
    """Whether :func:`float_elementwise` computes this intrinsic a op b (same shape and dtype)."""
    return (isinstance(b, torch.Tensor) and op in _BINARY_OPS and a.shape == b.shape and a.dtype == b.dtype
            and b.device.type == "cpu" and _float_pointwise_ok(a, spec))


def float_elementwise(a, b, op, spec, generator=None):
    """Intrinsic y = Q(Q(a) op Q(b)) for float formats in one C pass; the reference's values."""
    if not float_elementwise_accepts(a, b, op, spec, generator):
        raise ValueError(f"the CPU float elementwise kernel does not cover {op} with {spec} here")
    ac, bc = a.contiguous(), b.contiguous()
    y = torch.empty_like(ac)
    if ac.numel():
        qi, qv = _float_fmt(spec.q)
        _counted(load_float().qlab_float_binary(ac.data_ptr(), bc.data_ptr(), y.data_ptr(),
                                                int(ac.dtype == torch.float64), ac.numel(), _BINARY_OPS[op],
                                                qi.data_ptr(), qv.data_ptr(), int(spec.inputs), int(FLOAT_HW),
                                                max(1, torch.get_num_threads())))
    return y


def float_accepts(x, q, generator=None) -> bool:
    """The elementwise float(E, M) quantizer: float32 CPU tensors, and float64 ones for
    formats with M <= 21 (E <= 8 always: float32's exponent range); deterministic modes,
    and stochastic rounding of float32 tensors (draws from the hash, seeded from
    ``generator``: the reference's distribution; a float64 value's stochastic rounding
    would need all its bits, not its rounding to odd)."""
    if not (x.device.type == "cpu" and not (q.fn and q.E == 8)):
        return False
    if not (q.rounding in MODES or (q.rounding == "stochastic" and x.dtype == torch.float32)):
        return False
    if x.dtype == torch.float64:
        if q.M > 21:
            return False
    elif x.dtype != torch.float32:
        return False
    return load_float() is not None


def float_quantize(x, q, generator=None):
    """Q(x) for a float32 (or float64, see float_accepts) CPU tensor with the compiled rounding (same bits as the reference)."""
    if not float_accepts(x, q, generator):
        raise ValueError(f"the CPU float kernel covers float32 (and, for M <= 21 and deterministic modes, "
                         f"float64) CPU tensors, not {q} on {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if xc.numel():
        qi, qv = _float_fmt(q)
        load_float().qlab_float_round(xc.data_ptr(), y.data_ptr(), xc.numel(), qi.data_ptr(), qv.data_ptr(),
                                      max(1, torch.get_num_threads()), int(FLOAT_HW), int(xc.dtype == torch.float64),
                                      _draw_seed(q, generator))
    global round_calls
    round_calls += 1
    return y


def _float_flags(in_range: bool = False, pad: bool = False, exact: bool = False) -> int:
    """The float matmul/conv's switches as its flags argument (float_matmul.c, fcall)."""
    return (int(FLOAT_HW) | 2 * int(FLOAT_STO_VEC) | 4 * int(in_range) | 8 * int(FLOAT_EPI_VEC) | 16 * int(pad)
            | 32 * int(exact))


def _abs_range(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (dim 1) of t [B, C, ...] (float32, contiguous): (max |t|, min nonzero |t|)
    as float32 tensors of C values, in one C pass; NaN shows as a NaN max, no nonzero
    value as a NaN min (treat as none)."""
    C = t.shape[1]
    hi, lo = torch.empty(C, dtype=torch.int32), torch.empty(C, dtype=torch.int32)
    load_float().qlab_abs_bits(t.data_ptr(), t.shape[0], C, t[0, 0].numel() if t.shape[0] else 0, hi.data_ptr(),
                               lo.data_ptr(), max(1, torch.get_num_threads()))
    return hi.view(torch.float32), lo.view(torch.float32)


def _amin_nonzero(t: torch.Tensor) -> float:
    """min |t| over t's nonzero values (inf where there are none)."""
    a = t.detach().abs()
    return float(torch.where(a == 0, math.inf, a).amin()) if a.numel() else math.inf


def _products_exact(fp, spec, in_range: bool, xmin, w: torch.Tensor) -> bool:
    """Whether the checked float32 products (_product_mode 2: operands of <= 12 significant
    bits, whose product is exact unless it overflows or falls below 2**-126) are all exact:
    in range (no product past Q's max < 2**128; finite operands) and the smallest nonzero
    magnitudes' product at least 2**-126 (a zero product is exact); xmin() gives x's
    smallest nonzero magnitude (called only where the rest holds)."""
    if not (FLOAT_IN_RANGE and in_range and _product_mode(fp, spec) == 2):
        return False
    return xmin() * _amin_nonzero(w) >= 2.0 ** -126


def _growth(fmt) -> tuple[float, float]:
    """(g, d) with |R(v)| <= g |v| + d for every real v and the format's rounding R before
    saturation: the step at |v| is at most |v| 2**-M in a normal binade and 2**(emin - M)
    below; nearest roundings move v by half a step at most."""
    emin, M, _, _, rounding = fmt
    frac = 0.5 if rounding in ("even", "nearest") else 1.0
    return 1.0 + frac * 2.0 ** -M, frac * 2.0 ** (emin - M)


def _in_range(fp, K: int, xmax: float, wmax: float, dot: float) -> bool:
    """Whether, in a dot product of length K with |x| <= xmax, |w| <= wmax and sum_k |x_k w_k|
    <= dot, every product and (sequential sums) every partial sum is finite and at most its
    format's max in magnitude before it is rounded, so that no saturation or NaN can arise
    (float_matmul.c's IN_RANGE).  NaN or inf arguments: False.

    Bound: the float32 product (exact, or rounded to odd) lies within a |x w| + b,
    a = 1 + 2**-23, b = 2**-149 (<= max of Q: the products); Q rounds it to
    p_k <= g_Q (a |x_k w_k| + b) + d_Q (_growth).  Before A's rounding a sum is
    t_k <= a (s_{k-1} + p_k) + b (rounded to odd, or one float32 addition), after it
    s_k <= g_A t_k + d_A, so with c = a g_A, s_k <= c s_{k-1} + c p_k + (g_A b + d_A) and every
    t_k <= c**K (sum_k p_k + K (g_A b + d_A)) + b: this must be <= A's max.  Roundings are
    monotone and max lies on the grid, so no value <= max rounds past it."""
    if not FLOAT_IN_RANGE or fp.a32 or fp.q32 or K < 1:
        return False
    a, b = 1.0 + 2.0 ** -23, 2.0 ** -149
    if not xmax * wmax * a + b <= fp.q[2]:  # NaN and inf fail too
        return False
    if not fp.seq:
        return True  # final: the float64 sum of the products is exact (the caller's dsum_ok)
    (gq, dq), (ga, da) = _growth(fp.q), _growth(fp.a)
    c1 = (a - 1.0) + (ga - 1.0) + (a - 1.0) * (ga - 1.0)  # c - 1
    sum_p = gq * a * dot + K * (gq * b + dq)
    t = math.exp(K * math.log1p(c1)) * (sum_p + K * (ga * b + da)) + b
    return t * (1.0 + 1e-9) <= fp.a[2]  # the margin covers this float64 arithmetic


def _matmul_in_range(fp, x: torch.Tensor, w: torch.Tensor) -> bool:
    """_in_range for x [M, K] @ w [K, N]: sum_k |x_k w_k| bounded through each side's largest
    magnitude per k (in float64: exact products, sums within K 2**-53 of theirs)."""
    K = x.shape[1]
    if not FLOAT_IN_RANGE or x.numel() == 0 or w.numel() == 0:
        return False
    xa, wa = x.detach().abs().double(), w.detach().abs().double()
    xk, wk = xa.amax(0), wa.amax(1)  # per k: the largest |x| over rows, |w| over columns
    dot = min(float((xa @ wk).max()), float((xk @ wa).max())) * (1.0 + K * 2.0 ** -52)
    return _in_range(fp, K, float(xk.max()), float(wk.max()), dot)


def _conv_in_range(fp, xmax: torch.Tensor, w: torch.Tensor, groups: int) -> bool:
    """_in_range for a conv of x [B, C, H, W] with w [O, C/groups, kh, kw] (zero padding),
    xmax the largest |x| per input channel (_abs_range): each window's sum_k |x_k w_k| is at
    most sum over w of |w| times its channel's max |x|."""
    if not FLOAT_IN_RANGE or xmax.numel() == 0 or w.numel() == 0:
        return False
    O, CG, KH, KW = w.shape
    K = CG * KH * KW
    xc = xmax.double()
    wa = w.detach().abs().double().reshape(groups, O // groups, CG, KH * KW)
    dot = float((wa * xc.reshape(groups, 1, CG, 1)).sum((2, 3)).max()) * (1.0 + K * 2.0 ** -52)
    return _in_range(fp, K, float(xc.max()), float(wa.max()), dot)


def _seed(spec, generator) -> int:
    """A 62-bit seed for stochastic rounding from ``generator`` (else torch's default CPU
    generator, so torch.manual_seed repeats a run); 0 when nothing is stochastic."""
    if not (spec.q.stochastic or spec.A.stochastic):
        return 0
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, dtype=torch.int64).item())


def _product_mode(fp, spec) -> int:
    """0: float32 products are exact; 2: float32 products checked for under/overflow (operands
    of <= 12 significant bits); 1: float64 products (inputs=False: x has 24 bits)."""
    if fp.p32:
        return 0
    return 2 if spec.inputs and spec.q.M <= 11 else 1


def _dsum_exact(fp, K: int) -> bool:
    """Whether a float64 sum of K finite products (multiples of Q's smallest step) is exact."""
    maxv = fp.q[2]
    return K * maxv * fp.to_steps < 2.0 ** 53  # K times the largest product, in steps


def float_matmul_accepts(x, w=None, bias=None, spec=None, generator=None, quantize_w=True) -> bool:
    from qlab.ext.float_intrinsic import FLOAT_DTYPES, plan

    if w is None or spec is None or x.dim() != 2 or w.dim() != 2 or x.device.type != "cpu":
        return False
    if not (quantize_w or spec.inputs) or plan(spec, x.shape[1]) is None:
        return False
    if (spec.q.stochastic or spec.A.stochastic) and max(x.shape[0], w.shape[1]) * (x.shape[1] + 1) * 8 >= 2 ** 32:
        return False  # the draws' 32-bit counters would repeat within a row
    if not all(t.dtype in FLOAT_DTYPES for t in (x, w) + ((bias,) if bias is not None else ())):
        return False
    return load_float() is not None


def float_matmul(x, w, bias, spec, generator=None, quantize_w=True):
    """``qlab.core.intrinsic.float_matmul`` for x [M, K], w [K, N] with the compiled kernel."""
    from qlab.ext.float_intrinsic import operands, plan

    global float_calls
    fp = plan(spec, x.shape[1])
    if fp is None or not float_matmul_accepts(x, w, bias, spec, generator, quantize_w):
        raise ValueError(f"the CPU float kernel does not cover {spec} here")
    M, K = x.shape
    N = w.shape[1]
    y = torch.zeros(M, N, dtype=torch.float32)
    if M and N:
        xin, wq, bq = operands(x, w, bias, spec, generator)
        qi, qv = _fmt_arrays(fp.q)
        ai, av = _fmt_arrays(fp.a)
        if _swap(M, N):
            # few or ragged outputs (conv layers with few channels): vectorise over x's M rows
            # instead; the products commute and k runs in the same order
            rows, cols = wq, xin.t()  # rows (n, k) = w[k, n]; cols (k, m)
            R, C, sr, sb, sy = N, M, (wq.stride(1), wq.stride(0)), (1, 0), (1, N)
        else:
            rows, cols = xin, wq
            R, C, sr, sb, sy = M, N, (xin.stride(0), xin.stride(1)), (0, 1), (N, 1)
        inr = _matmul_in_range(fp, xin, wq)
        pad = FLOAT_PAD and C % 32 != 0  # the last column block zero-padded: a full vector tile
        if pad:
            cols = torch.zeros(K, -(-C // 32) * 32, dtype=cols.dtype).narrow(1, 0, C).copy_(cols)
        else:
            cols = cols.contiguous()
        sk = cols.stride(0)
        rc = load_float().qlab_float_matmul(
            rows.data_ptr(), sr[0], sr[1], cols.data_ptr(), sk,
            bq.data_ptr() if bq is not None else None, sb[0], sb[1], y.data_ptr(), sy[0], sy[1], R, K, C,
            qi.data_ptr(), qv.data_ptr(), ai.data_ptr(), av.data_ptr(), int(fp.seq), _product_mode(fp, spec),
            fp.to_steps, fp.from_steps, int(_dsum_exact(fp, K)), _seed(spec, generator), max(1, torch.get_num_threads()),
            int(fp.a32), int(fp.q32), int(fp.sum32), _float_flags(inr, pad, _products_exact(fp, spec, inr, lambda: _amin_nonzero(xin), wq)))
        if rc != 0:
            raise ValueError(f"the CPU float kernel refused {spec}")
        float_calls += 1
    return y.to(x.dtype)  # Q's values are exact in float32: one rounding, as the reference casts


def float_conv_accepts(x, w=None, bias=None, stride=None, pads=None, dilation=None, groups=1, spec=None,
                       generator=None) -> bool:
    """Whether :func:`float_conv2d` computes this intrinsic conv2d (what the float matmul
    takes, on a conv's shapes)."""
    from qlab.ext.float_intrinsic import FLOAT_DTYPES, plan

    if not CONV_KERNEL or w is None or spec is None or x.dim() != 4 or w.dim() != 4 or x.device.type != "cpu":
        return False
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:  # the reference raises torch's error
        return False
    K = w.shape[1] * w.shape[2] * w.shape[3]
    if plan(spec, K) is None:
        return False
    if not all(t.dtype in FLOAT_DTYPES for t in (x, w) + ((bias,) if bias is not None else ())):
        return False
    if spec.q.stochastic or spec.A.stochastic:  # the draws' 32-bit counters must not repeat within a row
        B, H, W_ = x.shape[0], x.shape[2], x.shape[3]
        if max(B * H * W_, w.shape[0]) * (K + 1) * 8 >= 2 ** 32:  # positions <= B * H * W (stride >= 1, pads ...)
            return False
    return load_float() is not None


def float_conv2d(x, w, bias, stride, pads, dilation, groups, spec, generator=None):
    """Intrinsic conv2d for float formats on x [B, C, H, W], weight [O, C/groups, kh, kw],
    pads = (left, right, top, bottom) zeros: Q(x) once, then one C pass whose tiles gather
    their windows from it (no im2col tensor); the float matmul's arithmetic, so the
    reference's values."""
    from qlab.ext.float_intrinsic import operands, plan

    global float_calls
    if not float_conv_accepts(x, w, bias, stride, pads, dilation, groups, spec, generator):
        raise ValueError(f"the CPU float conv kernel does not cover {spec} here")
    B, C, H, W_ = x.shape
    O, CG, KH, KW = w.shape
    (SH, SW), (DH, DW), (pl, pr, pt, pb) = stride, dilation, pads
    HO = max((H + pt + pb - DH * (KH - 1) - 1) // SH + 1, 0)
    WO = max((W_ + pl + pr - DW * (KW - 1) - 1) // SW + 1, 0)
    K, og, P = CG * KH * KW, O // groups, B * HO * WO
    y = torch.zeros(B, O, HO, WO, dtype=torch.float32)
    if y.numel():
        fp = plan(spec, K)
        xin, wq, bq = operands(x, w, bias, spec, generator)
        xin = xin.contiguous()
        wt = wq.reshape(groups, og, K).contiguous()
        swap = P >= 32 or og <= P  # columns (the vector side) are positions, unless there are few of them
        wk = wt if swap else wt.transpose(1, 2).contiguous()
        qi, qv = _fmt_arrays(fp.q)
        ai, av = _fmt_arrays(fp.a)
        inr = exact = False
        if FLOAT_IN_RANGE:
            xmax, xmin = _abs_range(xin)
            inr = _conv_in_range(fp, xmax, wq, groups)
            exact = _products_exact(fp, spec, inr, lambda: float(torch.where(xmin.isnan(), math.inf, xmin).min()), wq)
        rc = load_float().qlab_float_conv(
            xin.data_ptr(), wt.data_ptr(), wk.data_ptr(), bq.data_ptr() if bq is not None else None, y.data_ptr(),
            B, C, H, W_, HO, WO, KH, KW, SH, SW, pt, pl, DH, DW, groups, og, int(swap),
            qi.data_ptr(), qv.data_ptr(), ai.data_ptr(), av.data_ptr(), int(fp.seq), _product_mode(fp, spec),
            fp.to_steps, fp.from_steps, int(_dsum_exact(fp, K)), _seed(spec, generator), max(1, torch.get_num_threads()),
            int(fp.a32), int(fp.q32), int(fp.sum32), _float_flags(inr, FLOAT_PAD, exact))
        if rc == -2:
            raise MemoryError("qlab CPU float conv kernel: out of memory")
        if rc != 0:
            raise ValueError(f"the CPU float conv kernel refused {spec}")
        float_calls += 1
    return y.to(x.dtype)  # Q's values are exact in float32: one rounding, as the reference casts
