"""Intrinsic arithmetic: every multiply and add of an op done in a number format.

SEMANTICS.md section 4.  For linear/convolution/matmul, per output::

    x^ = Q(x) (skipped when inputs=False)   w^ = Q(w)   b^ = Q(b)
    p_k = Q(x^_k * w^_k)                          k = 1..K (weight[o].flatten() order)
    sequential:  s_0 = 0,  s_k = A(s_{k-1} + p_k)
    final:       s = A(sum_k p_k)   (the sum exact)
    y = Q(A(s + b^))

Fixed-point formats run on the integer grid (``grid.py``): products are exact integers,
and the only rounding is the format's own.  Sequential accumulation is saturating
addition in k order; where a bound on sum_k |p_k| shows that no partial sum can leave
A's range (the usual case) the K additions are a plain sum, vectorised over K as well
as over outputs; elsewhere the k loop runs, vectorised over outputs.

Float formats (and log) run in float64: every product of two <= 24-bit significands is
exact there; every sum is computed exactly as a float64 'round-to-odd' value (TwoSum),
which a later rounding to <= 51 bits turns into the correctly rounded sum.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import backends
from .formats import FixedPoint, Float, Identity, Log, Quantizer, cast_exact, fixed_to_grid, uniform_draw
from .grid import div_round_int, rescale, rescale_int
from .rounding import check_rounding

ACCUMULATE = ("sequential", "final")


@dataclass(frozen=True)
class Intrinsic:
    """How an op's arithmetic is quantized: format Q for operands, products and results,
    accumulator format A (default Q), ``accumulate`` 'sequential' or 'final'
    (TensorQuant's), and whether the op's activation inputs are quantized first."""

    q: Quantizer
    acc: Optional[Quantizer] = None
    accumulate: str = "sequential"
    inputs: bool = True

    def __post_init__(self):
        from .spec import parse

        object.__setattr__(self, "q", parse(self.q))
        if self.acc is not None:
            object.__setattr__(self, "acc", parse(self.acc))
            if self.acc == self.q:
                object.__setattr__(self, "acc", None)
        check_rounding(self.accumulate, ACCUMULATE, what="accumulate mode")
        for f in (self.q, self.A):
            if not isinstance(f, (FixedPoint, Float, Log, Identity)):
                raise ValueError(f"intrinsic arithmetic needs a fixed, float or log format, got {f}")
        if isinstance(self.q, FixedPoint) != isinstance(self.A, FixedPoint) and not isinstance(self.q, Identity):
            raise ValueError(f"intrinsic: operand format {self.q} and accumulator {self.A} must both be fixed point or both not")

    @property
    def A(self) -> Quantizer:
        return self.acc if self.acc is not None else self.q

    @property
    def is_identity(self) -> bool:
        return isinstance(self.q, Identity) and isinstance(self.A, Identity)

    @property
    def fixed(self) -> bool:
        return isinstance(self.q, FixedPoint) and isinstance(self.A, FixedPoint)

    def __str__(self) -> str:
        parts = [str(self.q)]
        if self.acc is not None:
            parts.append(f"acc={self.acc}")
        if self.accumulate != "sequential":
            parts.append(f"accumulate={self.accumulate}")
        if not self.inputs:
            parts.append("inputs=false")
        return f"intrinsic({','.join(parts)})"


def as_intrinsic(spec) -> Intrinsic:
    if isinstance(spec, Intrinsic):
        return spec
    from .spec import parse

    s = parse(spec)
    return s if isinstance(s, Intrinsic) else Intrinsic(s)


# =========================================================================== autograd
class _StraightThroughOp(torch.autograd.Function):
    """Forward: the intrinsic result.  Backward: the float op's gradient."""

    @staticmethod
    def forward(ctx, float_fn, quant_fn, *tensors):
        ctx.float_fn = float_fn
        ctx.save_for_backward(*[t if isinstance(t, torch.Tensor) else None for t in tensors])
        ctx.is_tensor = [isinstance(t, torch.Tensor) for t in tensors]
        ctx.others = [None if isinstance(t, torch.Tensor) else t for t in tensors]
        with torch.no_grad():
            out = quant_fn(*tensors)
        # autograd forbids in-place ops (relu_) on a view made inside a Function
        return out.clone() if out._is_view() or any(out is t for t in tensors) else out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        inputs = []
        for t, is_t, other in zip(saved, ctx.is_tensor, ctx.others):
            if is_t and t is not None:
                inputs.append(t.detach().requires_grad_(t.requires_grad))
            else:
                inputs.append(other if not is_t else None)
        with torch.enable_grad():
            y = ctx.float_fn(*inputs)
            wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
            grads = iter(torch.autograd.grad(y, wrt, grad, allow_unused=True)) if wrt else iter(())
        out = [next(grads) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs]
        return (None, None, *out)


def straight_through(float_fn, quant_fn, *tensors):
    """quant_fn(*tensors) with float_fn's gradient (only wrapped when a gradient is needed)."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return _StraightThroughOp.apply(float_fn, quant_fn, *tensors)
    return quant_fn(*tensors)


# =========================================================================== fixed-point matmul
def _grid_int(x: torch.Tensor, q: FixedPoint, generator=None) -> torch.Tensor:
    """Integers k of Q(x) on q's grid, as int64."""
    return fixed_to_grid(x, q.W, q.F, q.rounding, generator).to(torch.int64)


def _product_dtype(q: FixedPoint, A: FixedPoint) -> torch.dtype:
    """Float dtype in which every product, rounding and (bounded) sum is exact; int64 otherwise."""
    # products |kx*kw| <= 2**(2W-2); nearest needs |n| + 2**(F-1) exact too
    if 2 * q.W - 2 <= 22 and A.W <= 24 and abs(A.F - q.F) <= 60 and -100 <= q.F <= 100:
        return torch.float32
    if 2 * q.W - 2 <= 51 and abs(A.F - q.F) <= 900:
        return torch.float64
    return torch.int64


def _chunk_addends(xT, w, spec, k0, k1, dt, generator, grid_exact, to_acc=True, bufs=None):
    """A-grid addends a_k = R_A(p_k * 2**(Fa-F)) with p_k = clamp_Q(R_Q(x_k w_k 2**-F)): [kc, M, N].

    ``bufs``: two preallocated float buffers [kc, M, N]; reusing them keeps the hot loop
    free of large allocations (each one costs page faults on the CPU).
    """
    q, A = spec.q, spec.A
    n = k1 - k0
    if bufs is not None and grid_exact and dt != torch.int64 and q.rounding != "stochastic":
        P, T = bufs[0][:n], bufs[1][:n]
        torch.mul(xT[k0:k1, :, None], w[k0:k1, None, :], out=P)  # exact products on grid 2F
        if q.F > 0:
            P.mul_(2.0 ** -q.F)
            r = q.rounding
            if r == "nearest":  # exact here: see grid._half_away_float
                torch.abs(P, out=T)
                T.add_(0.5).floor_()
                torch.copysign(T, P, out=P)
            elif r == "even":
                P.round_()
            elif r == "down":
                P.floor_()
            elif r == "up":
                P.ceil_()
            else:  # zero
                P.sub_(torch.frac(P, out=T))
        elif q.F < 0:
            P.mul_(2.0 ** -q.F)
    else:
        P = xT[k0:k1, :, None] * w[k0:k1, None, :]  # exact products on grid 2F (x on grid F)
        shift = q.F if grid_exact else 0  # inputs=False: x is a plain float, x*kw is already on grid F
        P = rescale(P, shift, q.rounding, generator, grid_exact)
    P = P.clamp_(q.min_int, q.max_int)
    return rescale(P, q.F - A.F, A.rounding, generator) if to_acc else P


def add_round(ks: torch.Tensor, kp: torch.Tensor, d: int, mode: str, generator=None) -> torch.Tensor:
    """A(s + p) before clamping: s on grid Fa (integers ks), p on grid Fa + d (integers kp)."""
    if d <= 0:
        return ks + rescale(kp, d, mode, generator)
    fine = ks * (2 ** d) + kp if ks.dtype != torch.int64 else (ks << d) + kp
    return rescale(fine, d, mode, generator)


def _fixed_accumulate(xT, w, spec: Intrinsic, generator, dt, grid_exact) -> torch.Tensor:
    """s (A-grid integers, dtype dt) for x^T [K, M] and w^ [K, N] of grid integers."""
    fast = backends.lookup("fixed_accumulate", xT, w, spec, generator, dt, grid_exact)
    if fast is not None:
        return fast(xT, w, spec, generator, dt, grid_exact)
    q, A = spec.q, spec.A
    K, M = xT.shape
    N = w.shape[1]
    device = xT.device
    # ~4 MiB chunks of products keep the work in cache
    kc = max(1, min(K, (1 << 19) // max(1, M * N)))
    if spec.accumulate == "final":
        total = torch.zeros(M, N, dtype=torch.float64 if dt != torch.int64 else dt, device=device)
        for k0 in range(0, K, kc):
            P = xT[k0 : k0 + kc, :, None] * w[k0 : k0 + kc, None, :]
            P = rescale(P, q.F if grid_exact else 0, q.rounding, generator, grid_exact).clamp_(q.min_int, q.max_int)
            total += P.sum(0, dtype=total.dtype)
        s = rescale(total, q.F - A.F, A.rounding, generator)
        return s.clamp_(A.min_int, A.max_int).to(dt)

    lo, hi = A.min_int, A.max_int
    # Bound on sum_k |a_k|: |p_k| <= |x_k w_k| 2**-F + 1, |a_k| <= |p_k| 2**(Fa-F) + 1.
    ax, aw = xT.abs().to(torch.float64), w.abs().to(torch.float64)
    scale_x = 2.0 ** -q.F if grid_exact else 1.0
    bound = (ax.t() @ aw) * scale_x
    bound = torch.minimum(bound + K, torch.full_like(bound, float(K) * 2 ** (q.W - 1)))
    bound = bound * 2.0 ** (A.F - q.F) + K
    bound = bound * (1 + 1e-9) + 1
    safe_rows = (bound <= min(hi, -lo)).all(dim=1)
    # R(s + v) == s + R(v) for an integer s only for floor, ceil and stochastic rounding
    shift_invariant = A.F >= q.F or A.rounding in ("down", "up", "stochastic")
    if not shift_invariant:
        safe_rows = torch.zeros_like(safe_rows)
    s = torch.zeros(M, N, dtype=dt, device=device)
    if bool(safe_rows.all()):
        rows_fast, rows_slow = None, None
    else:
        rows_fast = safe_rows.nonzero().flatten()
        rows_slow = (~safe_rows).nonzero().flatten()
    for part, rows in (("fast", rows_fast), ("slow", rows_slow)):
        if rows is not None and rows.numel() == 0:
            continue
        if part == "slow" and rows is None:
            continue
        xs = xT if rows is None else xT[:, rows]
        acc = torch.zeros(xs.shape[1], N, dtype=dt, device=device)
        bufs = None
        if dt != torch.int64:
            bufs = (torch.empty(min(kc, K), xs.shape[1], N, dtype=dt, device=device),
                    torch.empty(min(kc, K), xs.shape[1], N, dtype=dt, device=device))
        sum_buf = torch.empty(xs.shape[1], N, dtype=dt, device=device)
        for k0 in range(0, K, kc):
            a = None if (part == "slow" and not shift_invariant) else \
                _chunk_addends(xs, w, spec, k0, min(K, k0 + kc), dt, generator, grid_exact, bufs=bufs)
            if part == "fast":
                acc += torch.sum(a, 0, out=sum_buf)
            elif a is not None:
                for j in range(a.shape[0]):
                    acc.add_(a[j]).clamp_(lo, hi)
            else:  # round each sum on A's coarser grid (the mode depends on the whole sum)
                p = _chunk_addends(xs, w, spec, k0, min(K, k0 + kc), dt, generator, grid_exact, to_acc=False)
                for j in range(p.shape[0]):
                    acc = add_round(acc, p[j], q.F - A.F, A.rounding, generator).clamp_(lo, hi)
        if rows is None:
            s = acc
        else:
            s[rows] = acc
    return s


def fixed_matmul(x: torch.Tensor | None, w: torch.Tensor, bias: torch.Tensor | None, spec: Intrinsic, generator=None,
                 quantize_w: bool = True, *, grid_xT: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Intrinsic y = x @ w (+ bias) for x [M, K], w [K, N], bias [N]; fixed-point spec.

    ``quantize_w=False`` treats w like an activation input (``spec.inputs`` decides).
    ``grid_xT`` replaces x by q's grid integers of x, transposed ([K, M], ``_grid_int``
    values held as floats); ``out_dtype`` is then the result's dtype.  The convolution
    grids its input once this way before unfolding it.
    """
    q, A = spec.q, spec.A
    if grid_xT is None:
        fast = backends.lookup("fixed_matmul", x, w, bias, spec, generator, quantize_w)
        if fast is not None:
            return fast(x, w, bias, spec, generator, quantize_w)
        out_dtype = x.dtype
        M, K = x.shape
    else:
        K, M = grid_xT.shape
    N = w.shape[1]
    if M == 0 or N == 0:
        return w.new_zeros(M, N, dtype=out_dtype)
    dt = _product_dtype(q, A)
    grid_exact = spec.inputs
    if grid_exact:
        xT = _grid_int(x, q, generator).t() if grid_xT is None else grid_xT
    else:
        # x used as it is: x * kw is exact in float64 for float32 x and W <= 29
        dt = torch.float64 if dt != torch.int64 or q.W <= 29 else dt
        xT = x.t().to(torch.float64) if dt != torch.int64 else _grid_int(x, FixedPoint(32, q.F + 16, "nearest")).t()
        if dt == torch.int64:  # int path for very wide W with inputs=False: x on a finer grid
            raise ValueError(f"intrinsic {spec}: inputs=False needs W <= 29 for exact products")
    kw = _grid_int(w, q, generator) if (quantize_w or spec.inputs) else None
    if kw is None:
        raise ValueError(f"intrinsic {spec}: inputs=False with two activation operands is not supported")
    if K == 0:
        s = torch.zeros(M, N, dtype=torch.int64, device=w.device)
    else:
        s = _fixed_accumulate(xT.to(dt).contiguous(), kw.to(dt).contiguous(), spec, generator, dt, grid_exact)
        s = s.to(torch.int64) if dt != torch.int64 else s
    return fixed_epilogue(s, bias, spec, generator, out_dtype)


def fixed_epilogue(s: torch.Tensor, bias: torch.Tensor | None, spec: Intrinsic, generator=None,
                   out_dtype: torch.dtype = torch.float32, bias_shape=None) -> torch.Tensor:
    """From the sums s (int64, A's grid) to the output: A(s + Q(bias)) where there is a bias
    (reshaped to ``bias_shape`` to broadcast), the step back to Q's grid and range, and the
    values as ``out_dtype``.  Shared by the reference and the CPU convolution kernel."""
    q, A = spec.q, spec.A
    if bias is not None:
        kb = _grid_int(bias, q, generator)
        kb = kb.view(bias_shape) if bias_shape is not None else kb
        s = add_round(s, kb, q.F - A.F, A.rounding, generator).clamp_(A.min_int, A.max_int)
    ky = rescale_int(s, A.F - q.F, q.rounding, generator).clamp_(q.min_int, q.max_int)
    return _grid_value(ky, q.F, out_dtype)


def _grid_value(k: torch.Tensor, F_: int, dtype: torch.dtype) -> torch.Tensor:
    """k * 2**-F as ``dtype`` (rounded once where W > the dtype's precision)."""
    v = k.to(torch.float64) * (2.0 ** -F_)
    return cast_exact(v, dtype) + 0.0


# =========================================================================== float-format arithmetic
def _two_sum_odd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b rounded to odd in float64: exact information for a later rounding to <= 51 bits."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    inexact = (err != 0) & torch.isfinite(s)
    bits = s.view(torch.int64)
    even = (bits & 1) == 0
    toward = torch.where((err > 0) == (s > 0), 1, -1).to(torch.int64)  # away from / toward zero in magnitude
    fixed = (bits + toward).view(torch.float64)
    return torch.where(inexact & even, fixed, s)


def _qf(qz: Quantizer, t64: torch.Tensor, generator) -> torch.Tensor:
    return qz.quantize(t64, generator)


def float_matmul(x, w, bias, spec: Intrinsic, generator=None, quantize_w=True) -> torch.Tensor:
    """Intrinsic matmul for float/log formats (float64, exact products, round-to-odd sums)."""
    fast = backends.lookup("float_matmul", x, w, bias, spec, generator, quantize_w)
    if fast is not None:  # a compiled kernel (qlab.ext): same result for deterministic modes
        return fast(x, w, bias, spec, generator, quantize_w)
    q, A = spec.q, spec.A
    out_dtype = x.dtype
    x64 = x.to(torch.float64)
    xh = _qf(q, x64, generator) if spec.inputs else x64
    wh = _qf(q, w.to(torch.float64), generator) if (quantize_w or spec.inputs) else w.to(torch.float64)
    M, K = x.shape
    N = w.shape[1]
    s = torch.zeros(M, N, dtype=torch.float64, device=x.device)
    if spec.accumulate == "final":
        terms = [_qf(q, xh[:, k, None] * wh[None, k, :], generator) for k in range(K)]
        if terms:
            s = _exact_sum(torch.stack(terms), q)
        s = _qf(A, s, generator)
    else:
        for k in range(K):
            p = _qf(q, xh[:, k, None] * wh[None, k, :], generator)
            s = _qf(A, _two_sum_odd(s, p), generator)
    if bias is not None:
        s = _qf(A, _two_sum_odd(s, _qf(q, bias.to(torch.float64), generator)[None, :]), generator)
    return cast_exact(_qf(q, s, generator), out_dtype)


def _exact_sum(terms: torch.Tensor, q: Quantizer) -> torch.Tensor:
    """Exact sum over dim 0 where the format's values fit an int64 grid, else float64 (documented)."""
    if isinstance(q, Float):
        from .formats import _float_params

        emin, emax, _ = _float_params(q.E, q.M, q.fn)
        lsb = emin - q.M
        if (emax + 1 - lsb) + math.ceil(math.log2(max(2, terms.shape[0]))) <= 62:
            finite = torch.isfinite(terms)
            ints = torch.round(torch.where(finite, terms, 0.0) * 2.0 ** -lsb).to(torch.int64)
            total = ints.sum(0)
            if total.numel() == 0 or total.abs().max() < 2 ** 53:
                exact = total.to(torch.float64) * 2.0 ** lsb
            else:
                exact = _odd_from_int(total, lsb)
            # a NaN or infinite term decides the sum (inf + -inf = NaN), as float addition does
            return torch.where(finite.all(0), exact, terms.sum(0))
    return terms.sum(0)


def _odd_from_int(n: torch.Tensor, lsb: int) -> torch.Tensor:
    """int64 n * 2**lsb rounded to odd in float64."""
    f = n.to(torch.float64)
    back = f.to(torch.int64)
    err = n - back
    bits = f.view(torch.int64)
    fix = (err != 0) & ((bits & 1) == 0)
    step = torch.where((err > 0) == (f > 0), 1, -1).to(torch.int64)
    f = torch.where(fix, (bits + step).view(torch.float64), f)
    return f * 2.0 ** lsb


# =========================================================================== public ops
def _matmul2d(x, w, bias, spec, generator, quantize_w=True):
    if spec.is_identity:
        y = x @ w
        return y + bias if bias is not None else y
    if spec.fixed:
        return fixed_matmul(x, w, bias, spec, generator, quantize_w)
    return float_matmul(x, w, bias, spec, generator, quantize_w)


def intrinsic_linear(x, weight, bias=None, spec="fixed(8,4,nearest)", generator=None):
    """F.linear(x, weight, bias) with intrinsic arithmetic; x [..., in], weight [out, in]."""
    spec = as_intrinsic(spec)

    def q(x, weight, bias):
        lead = x.shape[:-1]
        y = _matmul2d(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), weight.t(), bias, spec, generator)
        return y.reshape(*lead, weight.shape[0])

    return straight_through(F.linear, q, x, weight, bias)


def intrinsic_matmul(a, b, spec="fixed(8,4,nearest)", generator=None):
    """torch.matmul(a, b) with intrinsic arithmetic (both operands are activation inputs)."""
    spec = as_intrinsic(spec)

    def q(a, b):
        a2 = a.unsqueeze(0) if a.dim() == 1 else a
        b2 = b.unsqueeze(-1) if b.dim() == 1 else b
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        nb = math.prod(batch)
        A_ = a2.expand(*batch, *a2.shape[-2:]).reshape(nb, *a2.shape[-2:])
        B_ = b2.expand(*batch, *b2.shape[-2:]).reshape(nb, *b2.shape[-2:])
        ys = [_matmul2d(A_[i], B_[i], None, spec, generator) for i in range(A_.shape[0])]
        y = torch.stack(ys).reshape(*batch, a2.shape[-2], b2.shape[-1]) if ys else a2.new_zeros(*batch, a2.shape[-2], b2.shape[-1])
        if a.dim() == 1:
            y = y.squeeze(-2)
        if b.dim() == 1:
            y = y.squeeze(-1)
        return y

    return straight_through(torch.matmul, q, a, b)


def _pair(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def intrinsic_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, spec="fixed(8,4,nearest)",
                   generator=None):
    """F.conv1d / F.conv2d with intrinsic arithmetic (zero padding; any stride, dilation, groups).

    The reference lays the input out as columns (unfold); k runs over weight[o].flatten().
    """
    spec = as_intrinsic(spec)
    nd = weight.dim() - 2
    if nd not in (1, 2):
        raise ValueError(f"intrinsic convolution supports 1-d and 2-d, got a {nd}-d weight")
    conv = F.conv1d if nd == 1 else F.conv2d

    def float_fn(x, weight, bias):
        return conv(x, weight, bias, stride, padding, dilation, groups)

    def q(x, weight, bias):
        x4 = x.unsqueeze(-2) if nd == 1 else x
        w4 = weight.unsqueeze(-2) if nd == 1 else weight
        batched = x4.dim() == 4
        if not batched:
            x4 = x4.unsqueeze(0)
        kh, kw = w4.shape[-2:]
        st = (1,) + _pair(stride, 1) if nd == 1 else _pair(stride, 2)
        dl = (1,) + _pair(dilation, 1) if nd == 1 else _pair(dilation, 2)
        if isinstance(padding, str):
            if padding == "valid":
                pads = (0, 0, 0, 0)
            elif padding == "same":
                th, tw = dl[0] * (kh - 1), dl[1] * (kw - 1)
                pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
            else:
                raise ValueError(f"unknown padding {padding!r}")
        else:
            p = (0,) + _pair(padding, 1) if nd == 1 else _pair(padding, 2)
            pads = (p[1], p[1], p[0], p[0])
        op = "fixed_conv2d" if spec.fixed else "float_conv2d"
        fast = backends.lookup(op, x4, w4, bias, st, pads, dl, groups, spec, generator)
        if fast is not None:  # an implicit-GEMM kernel (qlab.ext): same result, no unfold
            y = fast(x4, w4, bias, st, pads, dl, groups, spec, generator)
            y = y.squeeze(-2) if nd == 1 else y
            return y if batched else y.squeeze(0)
        # x^ = Q(x): each input element is rounded once and every window reads that value
        # (kh*kw times fewer roundings; for stochastic rounding also the contract's draws:
        # one per element, not one per window copy), so grid it before unfolding.
        out_dtype = None
        if spec.fixed and spec.inputs and x4.device.type == "cpu":
            out_dtype = x4.dtype
            dt = _product_dtype(spec.q, spec.A)  # unfold in the dtype the products use (exact integers)
            x4 = _grid_int(x4, spec.q, generator).to(dt if dt.is_floating_point else torch.float64)
        elif spec.inputs and spec.q.stochastic:  # values on Q's grid: the matmul's Q leaves them as they are
            x4 = spec.q.quantize(x4, generator)
        if any(pads):
            x4 = F.pad(x4, pads)  # zeros: Q(0) = 0 on every grid
        B, C, H, W_ = x4.shape
        cols = F.unfold(x4, (kh, kw), dilation=dl, stride=st)  # [B, C*kh*kw, L]
        Ho = (H - dl[0] * (kh - 1) - 1) // st[0] + 1
        Wo = (W_ - dl[1] * (kw - 1) - 1) // st[1] + 1
        O = w4.shape[0]
        cg, og = C // groups, O // groups
        cols = cols.reshape(B, groups, cg * kh * kw, Ho * Wo)
        outs = []
        for g in range(groups):
            wg = w4[g * og : (g + 1) * og].reshape(og, -1).t()  # [K, og]
            bg = bias[g * og : (g + 1) * og] if bias is not None else None
            if out_dtype is not None:  # grid integers, laid out [K, B*L] as the accumulation reads them
                xT = cols[:, g].transpose(0, 1).reshape(cg * kh * kw, -1)
                yg = fixed_matmul(None, wg, bg, spec, generator, grid_xT=xT, out_dtype=out_dtype)
            else:
                xg = cols[:, g].transpose(1, 2).reshape(B * Ho * Wo, cg * kh * kw)  # [B*L, K]
                yg = _matmul2d(xg, wg, bg, spec, generator)
            outs.append(yg.reshape(B, Ho * Wo, og))
        y = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, O, Ho, Wo)
        if nd == 1:
            y = y.squeeze(-2)
        return y if batched else y.squeeze(0)

    return straight_through(float_fn, q, x, weight, bias)


# --------------------------------------------------------------------------- sums of windows
def _window_sum_round(win: torch.Tensor, divisor, spec: Intrinsic, generator, out_dtype):
    """Q(s / n) where s is the A-accumulated sum over the last dim of win (values already Q'd)."""
    q, A = spec.q, spec.A
    if spec.fixed:
        kx = _grid_int(win, q, generator)  # inputs=False: values are on the grid already, so this is exact
        a = rescale_int(kx, q.F - A.F, A.rounding, generator)
        if spec.accumulate == "final":
            s = rescale_int(kx.sum(-1), q.F - A.F, A.rounding, generator).clamp_(A.min_int, A.max_int)
        else:
            n = a.shape[-1]
            lim = min(A.max_int, -A.min_int)
            shift_invariant = A.F >= q.F or A.rounding in ("down", "up", "stochastic")
            if shift_invariant and bool((a.abs().sum(-1) <= lim).all()):
                s = a.sum(-1)
            else:
                s = torch.zeros(a.shape[:-1], dtype=torch.int64, device=a.device)
                for k in range(n):
                    if shift_invariant:
                        s.add_(a[..., k]).clamp_(A.min_int, A.max_int)
                    else:
                        s = add_round(s, kx[..., k], q.F - A.F, A.rounding, generator).clamp_(A.min_int, A.max_int)
        # y = Q(s / n): s on grid Fa -> R(s * 2**(F - Fa) / n)
        d = torch.as_tensor(divisor, dtype=torch.int64, device=win.device)
        if q.F >= A.F:
            ky = div_round_int(s << (q.F - A.F), d, q.rounding, generator)
        else:
            ky = div_round_int(s, d << (A.F - q.F), q.rounding, generator)
        return _grid_value(ky.clamp_(q.min_int, q.max_int), q.F, out_dtype)
    w64 = win.to(torch.float64)
    xh = _qf(q, w64, generator) if spec.inputs else w64
    if spec.accumulate == "final":
        s = _qf(A, _exact_sum(xh.movedim(-1, 0), q), generator)
    else:
        s = torch.zeros(xh.shape[:-1], dtype=torch.float64, device=win.device)
        for k in range(xh.shape[-1]):
            s = _qf(A, _two_sum_odd(s, xh[..., k]), generator)
    d = torch.as_tensor(divisor, dtype=torch.float64, device=win.device)
    # s / n rounded in float64 first (exact when n is a power of two); documented in docs/semantics.md
    return cast_exact(_qf(q, s / d, generator), out_dtype)


def intrinsic_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                         divisor_override=None, spec="fixed(8,4,nearest)", generator=None):
    spec = as_intrinsic(spec)
    ks = _pair(kernel_size, 2)
    st = _pair(stride if stride not in (None, []) else kernel_size, 2)
    pd = _pair(padding, 2)

    def float_fn(x):
        return F.avg_pool2d(x, ks, st, pd, ceil_mode, count_include_pad, divisor_override)

    def q(x):
        batched = x.dim() == 4
        x4 = x if batched else x.unsqueeze(0)
        B, C, H, W_ = x4.shape
        ref = F.avg_pool2d(x4[:1, :1], ks, st, pd, ceil_mode, count_include_pad, divisor_override)
        Ho, Wo = ref.shape[-2:]
        # PyTorch's own divisor per output position: count / avg over a tensor of ones
        ones = torch.ones(1, 1, H, W_, dtype=torch.float64, device=x.device)
        cnt = F.avg_pool2d(ones, ks, st, pd, ceil_mode, count_include_pad, 1)
        avg = F.avg_pool2d(ones, ks, st, pd, ceil_mode, count_include_pad, divisor_override)
        div = torch.round(cnt / avg).to(torch.int64).reshape(-1)  # [Ho*Wo]
        # zero-pad so every window (ceil_mode too) lies inside; zeros add nothing
        need_h = (Ho - 1) * st[0] + ks[0] - (H + 2 * pd[0])
        need_w = (Wo - 1) * st[1] + ks[1] - (W_ + 2 * pd[1])
        xp = F.pad(x4, (pd[1], pd[1] + max(0, need_w), pd[0], pd[0] + max(0, need_h)))
        cols = F.unfold(xp, ks, stride=st)  # [B, C*kh*kw, L], window row-major
        L = cols.shape[-1]
        cols = cols[..., : Ho * Wo] if L >= Ho * Wo else cols
        win = cols.reshape(B, C, ks[0] * ks[1], Ho * Wo).transpose(2, 3)  # [B, C, L, n]
        y = _window_sum_round(win, div, spec, generator, x.dtype).reshape(B, C, Ho, Wo)
        return y if batched else y.squeeze(0)

    if spec.is_identity:
        return float_fn(x)
    return straight_through(float_fn, q, x)


def intrinsic_adaptive_avg_pool2d(x, output_size, spec="fixed(8,4,nearest)", generator=None):
    spec = as_intrinsic(spec)

    def float_fn(x):
        return F.adaptive_avg_pool2d(x, output_size)

    def q(x):
        batched = x.dim() == 4
        x4 = x if batched else x.unsqueeze(0)
        B, C, H, W_ = x4.shape
        oh, ow = _pair(output_size, 2)
        oh = H if oh is None else oh
        ow = W_ if ow is None else ow
        out = x4.new_empty(B, C, oh, ow)
        for i in range(oh):
            h0, h1 = (i * H) // oh, -((-(i + 1) * H) // oh)
            for j in range(ow):
                w0, w1 = (j * W_) // ow, -((-(j + 1) * W_) // ow)
                win = x4[:, :, h0:h1, w0:w1].reshape(B, C, -1)
                out[:, :, i, j] = _window_sum_round(win, (h1 - h0) * (w1 - w0), spec, generator, x.dtype)
        return out if batched else out.squeeze(0)

    if spec.is_identity:
        return float_fn(x)
    return straight_through(float_fn, q, x)


# --------------------------------------------------------------------------- batch norm
def _bn_constants_fixed(mean, var, weight, bias, eps, q: FixedPoint, generator=None):
    """Per-channel g and r as grid integers, exactly (Python rationals): see SEMANTICS 4
    (stochastic: drawn from ``generator``, new at every call)."""
    from fractions import Fraction

    from .formats import round_fraction

    C = mean.numel()
    m = mean.detach().double().cpu().tolist()
    v = var.detach().double().cpu().tolist()
    ga = weight.detach().double().cpu().tolist() if weight is not None else [1.0] * C
    be = bias.detach().double().cpu().tolist() if bias is not None else [0.0] * C
    key = (q, float(eps), tuple(m), tuple(v), tuple(ga), tuple(be))
    hit = _BN_CONSTANTS.get(key) if q.rounding != "stochastic" else None
    if hit is not None:  # one exact evaluation per layer and format
        return hit
    two_f = Fraction(2) ** q.F
    gs, rs = [], []
    for c in range(C):
        val = Fraction(v[c]) + Fraction(eps)
        ks = _sqrt_grid(val, q, generator)  # Q(sqrt(var + eps))
        if ks == 0:
            kinv = q.max_int  # 1/0 -> +inf -> saturates
        else:
            kinv = round_fraction(two_f * two_f / ks, q, generator)  # Q(1/s) = R(2**2F / ks)
        kg = round_fraction(Fraction(kinv) * Fraction(ga[c]), q, generator)  # Q(inv * gamma) = R(kinv*gamma)
        kmg = round_fraction(Fraction(m[c]) * kg, q, generator)  # Q(mean * g)
        kr = round_fraction(Fraction(be[c]) * two_f - kmg, q, generator)  # Q(beta - Q(mean g))
        gs.append(kg)
        rs.append(kr)
    if q.rounding != "stochastic":
        _BN_CONSTANTS[key] = (tuple(gs), tuple(rs))
        while len(_BN_CONSTANTS) > 512:
            _BN_CONSTANTS.popitem(last=False)
    return gs, rs


# deterministic batch-norm constants by (format, eps, statistics, affine values), oldest
# dropped first: a sweep evaluates each layer at each format many times, and the exact
# rationals cost ~4 ms a layer
_BN_CONSTANTS: OrderedDict = OrderedDict()


def _sqrt_grid(v, q: FixedPoint, generator=None) -> int:
    """Q(sqrt(v)) as a grid integer for a rational v >= 0: R(sqrt(v * 2**2F)), exact."""
    from fractions import Fraction

    t = v * Fraction(2) ** (2 * q.F)  # want R(sqrt(t))
    fl = math.isqrt(t.numerator // t.denominator)
    exact = Fraction(fl * fl) == t
    if exact:
        k = fl
    else:
        mode = q.rounding
        half = Fraction(2 * fl + 1, 2) ** 2  # (fl + 1/2)**2
        if mode == "down" or mode == "zero":
            k = fl
        elif mode == "up":
            k = fl + 1
        elif mode in ("nearest", "even"):
            if t > half:
                k = fl + 1
            elif t < half:
                k = fl
            else:
                k = fl + 1 if mode == "nearest" or fl % 2 == 1 else fl
        else:  # stochastic: probability sqrt(t) - fl (float64 is plenty for a draw)
            k = fl + int(uniform_draw(generator) < math.sqrt(float(t)) - fl)
    return max(q.min_int, min(q.max_int, k))


def intrinsic_batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, spec="fixed(8,4,nearest)",
                         generator=None):
    """Batch norm in eval mode: inv = Q(1/Q(sqrt(var+eps))), g = Q(inv*gamma),
    r = Q(beta - Q(mean*g)), y = Q(Q(x*g) + r)."""
    spec = as_intrinsic(spec)
    if running_mean is None or running_var is None:
        raise ValueError("intrinsic batch norm needs running statistics (eval mode)")

    def float_fn(x, weight, bias):
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    def q(x, weight, bias):
        Q = spec.q
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if spec.fixed:
            gs, rs = _bn_constants_fixed(running_mean, running_var, weight, bias, eps, Q, generator)
            fast = backends.lookup("fixed_batch_norm", x, gs, rs, spec, generator)
            if fast is not None:  # one compiled pass (qlab.ext): the same values
                return fast(x, gs, rs, spec, generator)
            kg = torch.tensor(gs, dtype=torch.int64, device=x.device).reshape(shape)
            kr = torch.tensor(rs, dtype=torch.int64, device=x.device).reshape(shape)
            kx = _grid_int(x, Q, generator) if spec.inputs else None
            if kx is not None:
                kxg = rescale_int(kx * kg, Q.F, Q.rounding, generator).clamp_(Q.min_int, Q.max_int)
            else:  # x as it is: x * g exact in float64 for float32 x
                kxg = fixed_to_grid(x.to(torch.float64) * (kg.to(torch.float64) * 2.0 ** -Q.F), Q.W, Q.F,
                                    Q.rounding, generator).to(torch.int64)
            ky = (kxg + kr).clamp_(Q.min_int, Q.max_int)
            return _grid_value(ky, Q.F, x.dtype)
        qq = lambda t: _qf(Q, t, generator)  # noqa: E731
        var64 = running_var.to(torch.float64)
        inv = qq(1.0 / qq(torch.sqrt(var64 + eps)))
        g = qq(inv * (weight.to(torch.float64) if weight is not None else 1.0))
        beta = bias.to(torch.float64) if bias is not None else torch.zeros_like(g)
        r = qq(_two_sum_odd(beta, -qq(running_mean.to(torch.float64) * g)))
        fast = backends.lookup("float_batch_norm", x, g, r, spec, generator)
        if fast is not None:  # one compiled pass (qlab.ext): the same values
            return fast(x, g, r, spec, generator)
        x64 = x.to(torch.float64)
        xh = qq(x64) if spec.inputs else x64
        y = qq(_two_sum_odd(qq(xh * g.reshape(shape)), r.reshape(shape)))
        return cast_exact(y, x.dtype)

    if spec.is_identity:
        return float_fn(x, weight, bias)
    return straight_through(float_fn, q, x, weight, bias)


# --------------------------------------------------------------------------- elementwise
_ELEMENTWISE = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}


def intrinsic_elementwise(op: str, a, b, spec="fixed(8,4,nearest)", generator=None):
    """y = Q(Q(a) op Q(b)) for op in add, sub, mul (operands broadcast; scalars allowed)."""
    spec = as_intrinsic(spec)
    if op not in _ELEMENTWISE:
        raise ValueError(f"unknown elementwise op {op!r}")
    ref = a if isinstance(a, torch.Tensor) else b
    a_t = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=ref.dtype, device=ref.device)
    b_t = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=ref.dtype, device=ref.device)
    out_dtype = torch.promote_types(a_t.dtype, b_t.dtype)
    fn = _ELEMENTWISE[op]

    def q(a_t, b_t):
        Q = spec.q
        if spec.fixed:
            fast = backends.lookup("fixed_elementwise", a_t, b_t, op, spec, generator)
            if fast is not None:  # one compiled pass (qlab.ext): the same values
                return fast(a_t, b_t, op, spec, generator)

            def grid(t):
                if spec.inputs:
                    return _grid_int(t, Q, generator)
                return _grid_int(t, FixedPoint(32, Q.F, "nearest"), generator)  # on the grid already
            ka, kb = torch.broadcast_tensors(grid(a_t), grid(b_t))
            if op == "mul":
                ky = rescale_int(ka * kb, Q.F, Q.rounding, generator)
            else:
                ky = ka + kb if op == "add" else ka - kb
            return _grid_value(ky.clamp_(Q.min_int, Q.max_int), Q.F, out_dtype)
        fast = backends.lookup("float_elementwise", a_t, b_t, op, spec, generator)
        if fast is not None:  # one compiled pass (qlab.ext): the same values
            return fast(a_t, b_t, op, spec, generator)
        qq = lambda t: _qf(Q, t, generator)  # noqa: E731
        a64, b64 = a_t.to(torch.float64), b_t.to(torch.float64)
        if spec.inputs:
            a64, b64 = qq(a64), qq(b64)
        if op == "mul":
            y = qq(a64 * b64)
        else:
            y = qq(_two_sum_odd(*torch.broadcast_tensors(a64, b64 if op == "add" else -b64)))
        return cast_exact(y, out_dtype)

    if spec.is_identity:
        return fn(a, b)
    return straight_through(fn, q, a_t, b_t)
