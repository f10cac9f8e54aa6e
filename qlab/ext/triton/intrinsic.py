"""Triton kernels for intrinsic linear and convolution (SEMANTICS.md section 4): fixed
point (below) and float(E, M) formats (the second kernel, at the end of this file).

For fixed point one kernel serves both: each program owns a BLOCK_M x BLOCK_N tile of outputs and walks
k in the order of ``weight[o].flatten()``; per k it forms the exact integer products
kx * kw (grid 2F), rounds them to Q's grid and range, and accumulates on A's grid:

* ``sequential``: s = A(s + p) after every product (saturating, rounded as a whole sum
  where A's grid is coarser: ``add_round`` of the reference);
* ``final``: the exact sum of the products, rounded once to A.

Then bias (A(s + Q(b))), the step back to Q's grid and range, and the float32 store.
The convolution is an implicit GEMM: a row of the tile is an output position (batch,
row, column), its k-th operand is read from the input at (channel, row*stride - pad +
r*dilation, ...) directly -- zero padding reads as 0 -- so no im2col tensor exists.

The operands reach the kernel as grid integers from one fused pass each
(``elementwise.fixed_grid_ints``: read the float tensor, write int32 k, reduce max |k|
on the device).  Where every product provably rounds into Q's range
(``_products_in_range``, decided in the kernel from those maxima), a second copy of the k loop skips the clamp of
each product (about a quarter of the loop's instructions on sm_90, bench/sass_count.py).
For ``nearest`` with W <= 16 that loop also forms product, rounding and sum in one 64-bit
multiply-add (``_wide_step``; ``_plan`` says where): on sm_90 IMAD.WIDE, a carry, IMAD.X
and the sum's two-sided clamp per MAC, about 3.3 integer-ALU operations (the binding pipe)
where the loop without it takes 5.2 (bench/sass_count.py).  The same multiply forms the
rounded product alone where the sum steps apart (A's grid differs from Q's) and in the
clamping loop for W <= 15.

Sequential sums on a grid no coarser than Q's skip their clamp too, in runs: with every
|product| <= pm (from the same maxima) and the tile's sums within +-m (one reduction on
the device), the next (max_A - m) // pm products cannot leave A's range, so that many run
without the clamp; where the bound allows fewer than ``SUM_RUN_MACS``, a stretch with the
clamp, then a fresh bound.  In the runs the one-multiply-add step keeps each sum as a
64-bit pair (``_pair_step``): one IMAD.HI per MAC on sm_90, about 2.2-2.7 instructions
per MAC with loads and addressing (bench/sass_count.py).

Integers are int32 when every product, partial sum and rounding step provably fits
(``_plan``), int64 otherwise; shifts by more than the operand can hold are capped where
that provably gives the same result.  ``inputs=False`` multiplies the float32 input by
the weight's grid integer exactly in float64, like the reference.  What the kernel does
not cover (float64 tensors, float16/bfloat16 with W > 24, ranges beyond int64,
stochastic shifts above 31 bits) is declined by ``matmul_accepts``/``conv_accepts`` and
the torch reference runs.

Bit-identical with :func:`qlab.core.intrinsic.fixed_matmul` / ``intrinsic_conv`` for
every deterministic mode.  Stochastic rounding of products and sums draws from Philox
(``tl.randint``; seed from torch's generator as in :mod:`.elementwise`, one counter per
output, k and rounding site): same distribution as the reference, other draws.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from qlab.ext.float_intrinsic import FLOAT_DTYPES as _FLOAT_DTYPES  # results exact in float32, one cast
from qlab.ext.float_intrinsic import operands

from .elementwise import f64_to_f32_odd, round_float, round_to_float, uniform

_MODES = {"nearest": 0, "even": 1, "down": 2, "up": 3, "zero": 4, "stochastic": 5}
I32 = 2 ** 31 - 1
I64 = 2 ** 63 - 1


@triton.jit
def _rshift_round(n, S: tl.constexpr, MODE: tl.constexpr):
    """R(n / 2**S) for an integer tensor n (S >= 0)."""
    if S == 0:
        r = n
    elif MODE == 2:  # down
        r = n >> S
    elif MODE == 3:  # up
        r = -((-n) >> S)
    elif MODE == 4:  # toward zero
        r = tl.where(n >= 0, n >> S, -((-n) >> S))
    elif MODE == 0:  # nearest, ties away: negatives step down by one so their ties go down
        r = (n - (n < 0).to(n.dtype) + (1 << (S - 1))) >> S
    else:  # even
        q = (n + (1 << (S - 1))) >> S
        tie = (n & ((1 << S) - 1)) == (1 << (S - 1))
        r = q - (tie & ((q & 1) == 1)).to(n.dtype)
    return r


@triton.jit
def _rshift_any(n, S: tl.constexpr, MODE: tl.constexpr, seed, offs):
    """R(n / 2**S), stochastic too: floor + 1 with probability (n mod 2**S) / 2**S (S <= 31)."""
    if MODE == 5:
        if S == 0:
            r = n
        else:
            u = (tl.randint(seed, offs) >> (32 - S)).to(n.dtype)  # uniform in [0, 2**S)
            r = (n >> S) + (u < (n & ((1 << S) - 1))).to(n.dtype)
    else:
        r = _rshift_round(n, S, MODE)
    return r


@triton.jit
def _wide_step(acc, xs, wq, ASM: tl.constexpr):
    """acc + R(kx kw / 2**SP), R = nearest (ties away), as the high word of one 64-bit
    multiply-add: xs * wq + (acc * 2**32 + 2**31), xs = kx << B and wq = (kw << A) +
    sign(kw) (WA, WB of ``_plan``).  Divided by 2**32 that is acc + (kx kw + 2**(SP-1) +
    theta) / 2**SP with theta = sign(kw) kx / 2**A: |theta| < 1 and its sign is the
    product's, so the floor breaks ties away from zero and leaves every other value as it
    is.  ASM 2 (PTX, the default): the low word's sum lo(xs wq) + 2**31 only for its carry
    (mad.lo.cc), the high word hi(xs wq) + acc + carry (madc.hi) -- ptxas makes one IMAD.HI
    with a 64-bit addend of it (sm_90); ASM 1: one mad.wide.s32 (IMAD.WIDE, then IADD3 and
    IMAD.X for the carry); 0: the same integer arithmetic written out (the interpreter runs
    no PTX)."""
    if ASM == 2:
        r = tl.inline_asm_elementwise(
            "{ .reg .b32 lo; mad.lo.cc.u32 lo, $1, $2, 0x80000000; madc.hi.s32 $0, $1, $2, $3; }", "=r,r,r,r",
            [tl.broadcast_to(xs, acc.shape), tl.broadcast_to(wq, acc.shape), acc],
            dtype=tl.int32, is_pure=True, pack=1)
    elif ASM == 1:
        r = tl.inline_asm_elementwise(
            "{ .reg .b64 t; .reg .b32 lo; mov.b32 lo, 0x80000000; mov.b64 t, {lo, $3}; "
            "mad.wide.s32 t, $1, $2, t; mov.b64 {lo, $0}, t; }", "=r,r,r,r",
            [tl.broadcast_to(xs, acc.shape), tl.broadcast_to(wq, acc.shape), acc],
            dtype=tl.int32, is_pure=True, pack=1)
    else:
        r = ((xs.to(tl.int64) * wq.to(tl.int64) + (acc.to(tl.int64) << 32) + (1 << 31)) >> 32).to(tl.int32)
    return r


@triton.jit
def _pair_step(acc2, xs, wq, alo, ahi, CLAMP: tl.constexpr, ASM: tl.constexpr):
    """``_wide_step`` on a sum carried as the 64-bit pair acc2 = acc * 2**32 + 2**31 (low
    word 2**31 for good): acc + R(kx kw / 2**SP) in the high word, clamped to [alo, ahi]
    where CLAMP, and the low word left as it was.  The same integer arithmetic as
    ``_wide_step`` -- hi(xs wq + acc2) with acc2's low word the rounding's 2**31 -- but
    the addend pair is the carried value itself: ptxas (sm_90) updates its high register
    in place with one IMAD.HI, where ``_wide_step`` builds the pair {2**31, acc} anew for
    every MAC (an IMAD.MOV or two on the same FMA pipe: fixed(16,8) 2.5 FMA-pipe
    instructions per MAC -> about 1, bench/sass_count.py).  The high word never wraps:
    the loop runs where every partial sum fits int32 (``_plan``).  ASM 0: integer code."""
    if ASM != 0:
        if CLAMP:
            r = tl.inline_asm_elementwise(
                "{ .reg .b32 lo, hi, t; mov.b64 {lo, hi}, $3; mad.lo.cc.u32 t, $1, $2, lo; "
                "madc.hi.s32 hi, $1, $2, hi; max.s32 hi, hi, $4; min.s32 hi, hi, $5; mov.b64 $0, {lo, hi}; }",
                "=l,r,r,l,r,r",
                [tl.broadcast_to(xs, acc2.shape), tl.broadcast_to(wq, acc2.shape), acc2,
                 tl.broadcast_to(alo.to(tl.int32), acc2.shape), tl.broadcast_to(ahi.to(tl.int32), acc2.shape)],
                dtype=tl.int64, is_pure=True, pack=1)
        else:
            r = tl.inline_asm_elementwise(
                "{ .reg .b32 lo, hi, t; mov.b64 {lo, hi}, $3; mad.lo.cc.u32 t, $1, $2, lo; "
                "madc.hi.s32 hi, $1, $2, hi; mov.b64 $0, {lo, hi}; }",
                "=l,r,r,l",
                [tl.broadcast_to(xs, acc2.shape), tl.broadcast_to(wq, acc2.shape), acc2],
                dtype=tl.int64, is_pure=True, pack=1)
    else:
        hi = (xs.to(tl.int64) * wq.to(tl.int64) + acc2) >> 32
        if CLAMP:
            hi = tl.minimum(tl.maximum(hi, alo.to(tl.int64)), ahi.to(tl.int64))
        r = (hi << 32) + (1 << 31)
    return r


@triton.jit
def _acc_step(acc, p, alo, ahi, D: tl.constexpr, LA: tl.constexpr, AMODE: tl.constexpr, seed, offs):
    """A(s + p) clamped: s on A's grid, p on Q's grid (D = F - Fa)."""
    if D <= 0:
        acc = acc + (p << LA)
    else:
        acc = _rshift_any((acc << D) + p, D, AMODE, seed, offs)
    return tl.minimum(tl.maximum(acc, alo), ahi)


# --------------------------------------------------------------------------- geometry (both kernels)
@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's group and BLOCK_M x BLOCK_N tile of outputs (rows, columns, masks)."""
    g = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return g, offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def _philox(seed_ptr, g, M, N, K_total, offs_m, offs_n, STOCH: tl.constexpr):
    """Seed and counter base for stochastic rounding: one counter per (group, row, column,
    k) and rounding site (the seed offset tells the sites apart); zeros otherwise."""
    seed = tl.full((), 0, tl.int64)  # a tensor either way: jit functions return tensors
    rbase = offs_m[:, None] * 0
    if STOCH:
        seed = tl.load(seed_ptr).to(tl.int64)
        rbase = ((g * M + offs_m).to(tl.int64)[:, None] * N + offs_n[None, :]) * (K_total + 1)
    return seed, rbase


@triton.jit
def _rows(x_ptr, offs_m, g, C_IN, H, W_IN, HO, WO, CG, SH, SW, PT, PL, CONV: tl.constexpr):
    """Per output row: (batch, position, top row, left column, input base) of its window."""
    if CONV:
        b_idx = offs_m // (HO * WO)
        rem = offs_m % (HO * WO)
        ih0 = (rem // WO) * SH - PT
        iw0 = (rem % WO) * SW - PL
        x_row = x_ptr + b_idx.to(tl.int64) * (C_IN * H * W_IN) + (g * CG).to(tl.int64) * (H * W_IN)
    else:
        b_idx, rem, ih0, iw0, x_row = offs_m, offs_m, offs_m, offs_m, x_ptr
    return b_idx, rem, ih0, iw0, x_row


@triton.jit
def _x_at(x_ptr, x_row, offs_m, m_mask, ih0, iw0, M, H, W_IN, c, r, s, k, DH, DW, CONV: tl.constexpr):
    """Pointers and mask of the k-th operand of every row (zero padding: masked off)."""
    if CONV:
        ih = ih0 + r * DH
        iw = iw0 + s * DW
        ok = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W_IN)
        xp = x_row + c * (H * W_IN) + ih * W_IN + iw
    else:  # x^T [K, M]
        ok = m_mask
        xp = x_ptr + k.to(tl.int64) * M + offs_m
    return xp, ok


@triton.jit
def _y_at(offs_m, offs_n, b_idx, rem, g, N, HO, WO, CONV: tl.constexpr):
    if CONV:  # y [B, G*N, HO, WO]
        y_off = (b_idx.to(tl.int64) * (tl.num_programs(2) * N) * (HO * WO) + rem)[:, None] + \
            ((g * N + offs_n).to(tl.int64) * (HO * WO))[None, :]
    else:  # y [M, N]
        y_off = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    return y_off


# Shapes are runtime values, not specialisations: a network's many layer shapes (and the
# checks' ragged ones) would otherwise each compile a kernel of their own (Triton
# specialises integers on == 1 and divisibility by 16).
_SHAPE_ARGS = ["M", "N", "K_total", "C_IN", "H", "W_IN", "HO", "WO", "CG"]
_FORMAT_ARGS = ["qlo", "qhi", "alo", "ahi", "QEMIN", "QM", "AEMIN", "AM"]  # values, not specialisations


@triton.jit
def _operands_at(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, c, r, s, k, valid,
                 DH, DW, CONV: tl.constexpr):
    """The k-th operands: x of every row (zero where padded or masked) and w of every column;
    zeros throughout where not ``valid`` (a prefetch past the last k)."""
    xp, ok = _x_at(x_ptr, x_row, offs_m, m_mask, ih0, iw0, M, H, W_IN, c, r, s, k, DH, DW, CONV)
    xv = tl.load(xp, mask=ok & valid, other=0)
    wv = tl.load(w_base + k * N, mask=n_mask & valid, other=0)
    return xv, wv


@triton.jit
def _operands_first(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, DH, DW,
                    CONV: tl.constexpr, PREFETCH: tl.constexpr):
    """The pair the k loop starts with: the operands of k = 0 (PREFETCH; else nothing loads)."""
    zero = CG * 0  # c = k = 0 as tensors
    return _operands_at(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, zero, 0, 0, zero,
                        (CG > 0) & PREFETCH, DH, DW, CONV)


@triton.jit
def _operands_k(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, cr,
                s: tl.constexpr, k, xn, wn, KH: tl.constexpr, KW: tl.constexpr, DH, DW, CONV: tl.constexpr,
                PREFETCH: tl.constexpr):
    """(x, w) of k = (c, r, s) -- cr = c * KH + r counts the kernel rows of every channel --
    and the pair to carry to k + 1 (the loop over cr starts with ``_operands_first``).
    PREFETCH: (xn, wn) already hold k's operands, loaded one step earlier; the operands of
    k + 1 (the next kernel column, else the next row's first, none past the last k) are
    loaded now, so their latency overlaps k's arithmetic.  Otherwise k's own are loaded
    here and (xn, wn) pass through."""
    c = cr // KH
    r = cr % KH
    if PREFETCH:
        xk, wk = xn, wn
        if s + 1 < KW:
            xn, wn = _operands_at(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, c, r, s + 1,
                                  k + 1, True, DH, DW, CONV)
        else:
            xn, wn = _operands_at(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN,
                                  (cr + 1) // KH, (cr + 1) % KH, 0, k + 1, cr + 1 < CG * KH, DH, DW, CONV)
    else:
        xk, wk = _operands_at(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, c, r, s, k,
                              True, DH, DW, CONV)
    return xk, wk, xn, wn


@triton.jit
def _fixed_k_loop(acc, xn, wn, word, cr_lo, cr_hi, x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H,
                  W_IN, CG, qlo, qhi, alo, ahi, seed, rbase, CONV: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr,
                  DW: tl.constexpr, IDT: tl.constexpr, X_FLOAT: tl.constexpr, QMODE: tl.constexpr,
                  AMODE: tl.constexpr, SEQ: tl.constexpr, SP: tl.constexpr, LP: tl.constexpr, HQ: tl.constexpr,
                  D: tl.constexpr, LA: tl.constexpr, PCLAMP: tl.constexpr, WA: tl.constexpr,
                  WB: tl.constexpr, FUSE: tl.constexpr, SHARE: tl.constexpr, ASM: tl.constexpr,
                  PREFETCH: tl.constexpr, PAIR: tl.constexpr, SCLAMP: tl.constexpr):
    """The k loop over (channel, kernel row) pairs cr_lo <= cr < cr_hi, carrying the
    prefetched operands (xn, wn) and the stochastic products' Philox word from one call to
    the next: per k the exact products, rounded onto Q's grid, clamped to Q's range
    (PCLAMP; False where every product is known to round into it), accumulated.  WA > 0:
    product and rounding in one 64-bit multiply (``_wide_step``) where the operand bounds
    hold -- checked per call without PCLAMP, by the format with it (W <= 15) -- and with
    FUSE and no PCLAMP the sum in the same multiply-add, the sum carried as a 64-bit pair
    there (PAIR, ``_pair_step``; not with ASM 1).  Stochastic products: one 32-bit
    Philox word per output serves SHARE consecutive k, each taking its own 32 / SHARE-bit
    field (SP <= 32 / SHARE: the draws stay independent and exactly uniform).  SCLAMP False
    (sequential, D <= 0): the sums are known to stay in A's range for these k, no clamp."""
    WIDE: tl.constexpr = (WA > 0) & ((not PCLAMP) | (WA <= 15))
    ONE_MAD: tl.constexpr = WIDE & FUSE & (not PCLAMP)
    IN_PAIR: tl.constexpr = ONE_MAD & PAIR  # then acc is the pair (_pair_step; the kernel's PAIRED)
    CLAMP_SUM: tl.constexpr = SEQ & SCLAMP
    for cr in range(cr_lo, cr_hi):  # (channel, kernel row) pairs; the kernel's columns unrolled
        for s in tl.static_range(KW):
            k = cr * KW + s
            xraw, wk, xn, wn = _operands_k(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN,
                                           CG, cr, s, k, xn, wn, KH, KW, DH, DW, CONV, PREFETCH)
            if X_FLOAT:  # inputs=False: x * kw exact in float64, rounded onto Q's grid
                xk = xraw.to(tl.float64)
                pf = round_float(xk[:, None] * wk.to(tl.float64)[None, :], QMODE, uniform(seed, rbase + k, QMODE))
                pf = tl.minimum(tl.maximum(pf, qlo.to(tl.float64)), qhi.to(tl.float64))
                p = pf.to(IDT)
            elif WIDE:  # shifted right after the load: once per operand, not per product
                xs = xraw << WB
                wq = (wk << WA) + (wk > 0).to(wk.dtype) - (wk < 0).to(wk.dtype)
                if IN_PAIR:
                    p = _pair_step(acc, xs[:, None], wq[None, :], alo, ahi, CLAMP_SUM, ASM)  # acc + p, clamped
                elif ONE_MAD:
                    p = _wide_step(acc, xs[:, None], wq[None, :], ASM)
                else:
                    p = _wide_step(tl.zeros_like(acc), xs[:, None], wq[None, :], ASM)  # the product alone
                    if PCLAMP:
                        p = tl.minimum(tl.maximum(p, qlo), qhi)
            else:
                prod = xraw[:, None].to(IDT) * wk[None, :].to(IDT)  # exact, grid 2F
                if LP > 0:  # F < 0: a left shift; beyond +-2**(W-1) it saturates anyway
                    p = tl.minimum(tl.maximum(prod, -HQ), HQ) << LP
                elif (QMODE == 5) & (SHARE > 1) & (SP > 0):
                    j = k % SHARE
                    if j == 0:
                        word = tl.randint(seed, rbase + k // SHARE)
                    u = ((word >> (j * (32 // SHARE)).to(tl.uint32)) & ((1 << SP) - 1)).to(IDT)
                    p = (prod >> SP) + (u < (prod & ((1 << SP) - 1))).to(IDT)
                else:
                    p = _rshift_any(prod, SP, QMODE, seed, rbase + k)
                if PCLAMP:
                    p = tl.minimum(tl.maximum(p, qlo), qhi)
            if IN_PAIR:
                acc = p
            elif ONE_MAD:  # p is already acc + the rounded product (sequential: D = 0)
                if CLAMP_SUM:
                    acc = tl.minimum(tl.maximum(p, alo), ahi)
                else:
                    acc = p
            elif CLAMP_SUM:
                acc = _acc_step(acc, p, alo, ahi, D, LA, AMODE, seed + 1, rbase + k)
            elif SEQ:  # D <= 0: a plain add on A's grid, in range
                acc += p << LA
            else:
                acc += p
    return acc, xn, wn, word


@triton.jit(do_not_specialize=_SHAPE_ARGS + _FORMAT_ARGS[:4])
def _fixed_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, seed_ptr, ax_ptr, aw_ptr,
    M, N, K_total,
    # convolution geometry (matmul: C_IN = K, KH = KW = 1, x is x^T [K, M])
    C_IN, H, W_IN, HO, WO, CG,
    qlo, qhi, alo, ahi, out_scale,
    CONV: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    IDT: tl.constexpr, X_FLOAT: tl.constexpr, QMODE: tl.constexpr, AMODE: tl.constexpr, SEQ: tl.constexpr,
    SP: tl.constexpr, LP: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr, LA: tl.constexpr,
    LT: tl.constexpr, HA: tl.constexpr, SO: tl.constexpr, LO: tl.constexpr,
    HAS_BIAS: tl.constexpr, INRANGE: tl.constexpr, WA: tl.constexpr, WB: tl.constexpr, FUSE: tl.constexpr,
    SHARE: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr, PAIR: tl.constexpr, SUM_RUNS: tl.constexpr,
    SUM_RUN_MACS: tl.constexpr, ONLY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """ONLY (with INRANGE): 0 = this launch computes every output; 1 = only where every
    product is known to round into Q's range (skip), 2 = only where not: the other launch of
    the pair computes them (WIDE_TILE: a tile for each loop, chosen on the device, no host
    sync); a launch with nothing to do runs no k loop and stores nothing."""
    g, offs_m, offs_n, m_mask, n_mask = _tile(M, N, BLOCK_M, BLOCK_N)
    b_idx, rem, ih0, iw0, x_row = _rows(x_ptr, offs_m, g, C_IN, H, W_IN, HO, WO, CG, SH, SW, PT, PL, CONV)
    # weights as [G, K, N]: one coalesced row per k
    w_base = w_ptr + g.to(tl.int64) * K_total * N + offs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=IDT)
    seed, rbase = _philox(seed_ptr, g, M, N, K_total, offs_m, offs_n, (QMODE == 5) | (AMODE == 5))
    # INRANGE: whether every product rounds into Q's range, from max|kx| and max|kw| (reduced
    # on the device as the operands were converted: no host sync; see _products_in_range);
    # then the loop skips the clamp of each product, about a quarter of its instructions
    # (fixed(16,8): 9.5 -> 6.8 per MAC, sm_90), and nearest takes the one-multiply-add step
    skip = False
    ax = 0
    aw = 0
    if INRANGE:
        ax, aw = tl.load(ax_ptr), tl.load(aw_ptr)
        skip = _products_in_range(ax, aw, qhi, SP, WA)
    go = True  # whether this launch computes the outputs (ONLY)
    if ONLY == 1:
        go = skip
    elif ONLY == 2:
        go = skip == 0
        skip = False  # this launch runs the clamping loop alone
    # PREFETCH: the operands of k + 1 are loaded before the products of k are formed, so
    # their memory latency overlaps this k's arithmetic (a pair carried through the loops)
    xn, wn = _operands_first(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, DH, DW, CONV,
                             PREFETCH)
    word = 0
    if (QMODE == 5) & (SHARE > 1):
        word = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.uint32)  # stochastic products: the current Philox word
    n_cr = CG * KH
    if ONLY != 0:
        n_cr = tl.where(go, n_cr, 0)
    # the one-multiply-add loops of the runs carry their sums as 64-bit pairs (_pair_step);
    # not where every sum is clamped, nor for final sums: those loops came out longer with
    # the pair (sm_90 fixed(16,8) sequential 6.0-6.3 against 5.4-5.5 per MAC, final 4.0-4.3
    # against 3.3-3.6; bench/sass_count.py)
    PAIRED: tl.constexpr = (WA > 0) & FUSE & PAIR & (ASM != 1) & SEQ & SUM_RUNS
    if skip:
        if PAIRED:
            # low words: the rounding's 2**31.  z = max|kx| >> 40 is 0 (|kx| <= 2**31) but no
            # compiler can know it, so every output's low word is a value of its own: ptxas would
            # otherwise merge a thread's 32 equal constants into one register and copy it into
            # each pair for every MAC (sm_90)
            z = ax.to(tl.int64) >> 40
            lo = (1 << 31) + z * (tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]).to(tl.int64)
            acc = (acc.to(tl.int64) << 32) + lo
        if SEQ & (D <= 0) & SUM_RUNS:
            # Runs without the sums' clamp: with every |product| <= pm (A's grid: pm * 2**LA) and
            # the tile's sums within +-m now, the next n = (ahi - m) / (KW pm 2**LA) kernel rows
            # keep every partial sum within +-ahi, so no clamp could act (alo = -ahi - 1).  One
            # reduction over the tile per run; where fewer than SUM_RUN_MACS MACs are safe, a
            # stretch with the clamp, then a fresh bound.
            pm = _product_bound(ax, aw, SP)
            cr = n_cr * 0
            while cr < n_cr:
                if PAIRED:
                    a32 = (acc >> 32).to(tl.int32)
                else:
                    a32 = acc
                m = tl.maximum(tl.max(a32).to(tl.int64), -tl.min(a32).to(tl.int64))
                n = (tl.maximum(ahi - m, 0) >> LA) // (KW * pm)
                if n * KW >= SUM_RUN_MACS:
                    hi = tl.minimum(cr + n, n_cr).to(tl.int32)
                    acc, xn, wn, word = _fixed_k_loop(
                        acc, xn, wn, word, cr, hi, x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H,
                        W_IN, CG, qlo, qhi, alo, ahi, seed, rbase, CONV, KH, KW, DH, DW, IDT, X_FLOAT, QMODE, AMODE,
                        SEQ, SP, LP, HQ, D, LA, False, WA, WB, FUSE, SHARE, ASM, PREFETCH, PAIRED, False)
                else:
                    hi = tl.minimum(cr + (4 * SUM_RUN_MACS + KW - 1) // KW, n_cr).to(tl.int32)
                    acc, xn, wn, word = _fixed_k_loop(
                        acc, xn, wn, word, cr, hi, x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H,
                        W_IN, CG, qlo, qhi, alo, ahi, seed, rbase, CONV, KH, KW, DH, DW, IDT, X_FLOAT, QMODE, AMODE,
                        SEQ, SP, LP, HQ, D, LA, False, WA, WB, FUSE, SHARE, ASM, PREFETCH, PAIRED, True)
                cr = hi
        else:
            acc, xn, wn, word = _fixed_k_loop(
                acc, xn, wn, word, 0, n_cr, x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG,
                qlo, qhi, alo, ahi, seed, rbase, CONV, KH, KW, DH, DW, IDT, X_FLOAT, QMODE, AMODE, SEQ, SP, LP, HQ, D,
                LA, False, WA, WB, FUSE, SHARE, ASM, PREFETCH, PAIRED, True)
        if PAIRED:
            acc = (acc >> 32).to(IDT)
    elif ONLY != 1:
        acc, xn, wn, word = _fixed_k_loop(
            acc, xn, wn, word, 0, n_cr, x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG,
            qlo, qhi, alo, ahi, seed, rbase, CONV, KH, KW, DH, DW, IDT, X_FLOAT, QMODE, AMODE, SEQ, SP, LP, HQ, D,
            LA, True, WA, WB, FUSE, SHARE, ASM, PREFETCH, PAIRED, True)
    if not SEQ:  # the exact sum, rounded once onto A
        if D >= 0:
            acc = _rshift_any(acc, D, AMODE, seed + 2, rbase + K_total)
        else:
            acc = tl.minimum(tl.maximum(acc, -HA), HA) << LT
        acc = tl.minimum(tl.maximum(acc, alo), ahi)
    if HAS_BIAS:
        kb = tl.load(b_ptr + g * N + offs_n, mask=n_mask, other=0).to(IDT)
        acc = _acc_step(acc, kb[None, :], alo, ahi, D, LA, AMODE, seed + 3, rbase + K_total)
    # back onto Q's grid: s * 2**(F - Fa)
    if D > 0:
        ky = tl.minimum(tl.maximum(acc, -HQ), HQ) << LO
    else:
        ky = _rshift_any(acc, SO, QMODE, seed + 4, rbase + K_total)
    ky = tl.minimum(tl.maximum(ky, qlo), qhi)
    out = ky.to(tl.float32) * out_scale + 0.0  # one rounding (W > 24), then an exact power of two
    y_off = _y_at(offs_m, offs_n, b_idx, rem, g, N, HO, WO, CONV)
    tl.store(y_ptr + y_off, out, mask=m_mask[:, None] & n_mask[None, :] & go)


def _plan(spec, K: int, has_bias: bool):
    """Constexprs for the kernel, or None where it does not apply (bounds, modes, formats)."""
    from qlab.core.formats import FixedPoint

    q, A = spec.q, spec.A
    if not (isinstance(q, FixedPoint) and isinstance(A, FixedPoint)):
        return None
    if q.rounding not in _MODES or A.rounding not in _MODES:
        return None
    W, F, Wa, Fa = q.W, q.F, A.W, A.F
    if not (F <= 126 and W - 1 - F <= 127):  # 2**-F and the largest value are normal float32 numbers
        return None
    if not spec.inputs and W > 29:  # the reference's own limit for exact float64 products
        return None
    d = F - Fa
    HQ, HA = 2 ** (W - 1), 2 ** (Wa - 1)
    bounds = [2 ** (2 * W - 2)]
    SP = LP = 0
    if F > 0:
        SP = min(F, 2 * W)
        bounds.append(2 ** (2 * W - 2) + 2 ** (SP - 1))
    elif F < 0:
        LP = min(-F, W)
        bounds.append(2 ** (W - 1 + LP))
    LA = LT = 0
    if d <= 0:
        LA = min(-d, Wa + 1)
        step = HA + 2 ** (W - 1 + LA)
    else:
        step = 2 ** (Wa - 1 + d) + HQ + 2 ** (d - 1)
    if spec.accumulate == "sequential" or has_bias:
        bounds.append(step)
    if spec.accumulate == "final":
        total = max(1, K) * HQ
        bounds.append(total)
        if d > 0:
            bounds.append(total + 2 ** (d - 1))
        elif d < 0:
            LT = min(-d, Wa + 1)
            bounds.append(2 ** (Wa - 1 + LT))
    SO = LO = 0
    if d > 0:
        LO = min(d, W + 1)
        bounds.append(2 ** (W - 1 + LO))
    elif d < 0:
        SO = min(-d, Wa + 1)
        bounds.append(HA + 2 ** (SO - 1))
    if q.rounding == "stochastic" and ((F > 0 and SP != F) or SP > 31 or (d < 0 and SO != -d) or SO > 31):
        return None
    if A.rounding == "stochastic" and d > 31:
        return None
    big = max(bounds)
    if big < I32:
        idt = tl.int32
    elif big < I64:
        idt = tl.int64
    else:
        return None
    # the 64-bit multiply step (_wide_step) for nearest: kx << WB and (kw << WA) + sign(kw)
    # are int32 and |kx| < 2**WA for every grid integer when W <= 15 (W = 16: but for
    # kw = -2**15, which _products_in_range checks), and WA + WB + SP = 32 puts the rounded
    # product in the high word.  FUSE: the sum joins the multiply-add where it is a plain
    # add on Q's grid (final, or sequential with D = 0)
    WA = WB = 0
    if q.rounding == "nearest" and spec.inputs and SP >= 1 and W <= 16 and W + SP <= 32 and idt == tl.int32:
        WA, WB = W, 32 - SP - W
    FUSE = spec.accumulate == "final" or d == 0
    # stochastic products: k per 32-bit Philox word, each drawing SP bits of its own field
    SHARE = 1 if not SHARE_DRAWS or SP > 16 else 2 if SP > 8 else 4
    return dict(IDT=idt, X_FLOAT=not spec.inputs, QMODE=_MODES[q.rounding], AMODE=_MODES[A.rounding],
                SEQ=spec.accumulate == "sequential", SP=SP, LP=LP, HQ=HQ, D=d, LA=LA, LT=LT, HA=HA, SO=SO, LO=LO,
                WA=WA, WB=WB, FUSE=FUSE, SHARE=SHARE)


def _torch_int(idt):
    return torch.int32 if idt == tl.int32 else torch.int64


def _common_accepts(x, w, bias, spec, generator, quantize_w, K):
    if not getattr(spec, "fixed", False):
        return False
    if x.dtype not in _FLOAT_DTYPES or w.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return False
    if x.dtype != torch.float32 and spec.q.W > 24:  # float32 results would round twice on the way to 16 bits
        return False
    if not (quantize_w or spec.inputs):  # two activation operands with inputs=False: the reference raises
        return False
    return _plan(spec, K, bias is not None) is not None


def matmul_accepts(x, w=None, bias=None, spec=None, generator=None, quantize_w=True) -> bool:
    if spec is None or w is None or x.dim() != 2 or w.dim() != 2:
        return False
    return _common_accepts(x, w, bias, spec, generator, quantize_w, x.shape[1])


def _launch(xin, kw3, kb, y, M, N, K, G, geom, conv, plan, spec, block, generator=None, amax=None, wide=None):
    """amax: (max |kx|, max |kw|) as one-element int64 device tensors (inputs=True).
    wide: a second tile (WIDE_TILE) for the loops without product clamps: two launches,
    each computing the outputs only where the device's operand bounds pick its loop."""
    q, A = spec.q, spec.A
    C_IN, H, W_IN, HO, WO, CG, KH, KW, SH, SW, PT, PL, DH, DW = geom
    seed = kw3
    if spec.q.stochastic or spec.A.stochastic:
        from .elementwise import _seed_tensor

        seed = _seed_tensor(y, generator)
    if not WIDE_STEP:
        plan = dict(plan, WA=0, WB=0)
    # inputs=False and F < 0 always clamp each product
    inrange = SKIP_PRODUCT_CLAMP and not plan["X_FLOAT"] and plan["LP"] == 0
    ax, aw = amax if inrange else (kw3, kw3)
    # (tile, warps, ONLY, prefetch): the wide tile prefetches unless PREFETCH is False
    # (without it fixed(16,8) at 2048^3 on an H200 ran 20.3 ms at 128x128 against 2.35 with
    # it, 7.2 against 2.47 at 64x128)
    warps = _warps(*block, plan["IDT"])
    launches = [(block, warps, 0, None)]
    if wide is not None and inrange:
        launches = [(wide[:2], NUM_WARPS or wide[2], 1, PREFETCH is not False), (block, warps, 2, None)]
    for (BM, BN), warps, only, prefetch in launches:
        grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), G)
        if prefetch is None:
            prefetch = _prefetch(grid[0] * grid[1] * grid[2], y.device)
        _fixed_gemm_kernel[grid](
            xin, kw3, kb if kb is not None else kw3, y, seed, ax, aw,
            M, N, K, C_IN, H, W_IN, HO, WO, CG,
            q.min_int, q.max_int, A.min_int, A.max_int, 2.0 ** -q.F,
            CONV=conv, KH=KH, KW=KW, SH=SH, SW=SW, PT=PT, PL=PL, DH=DH, DW=DW,
            HAS_BIAS=kb is not None, INRANGE=inrange, ASM=WIDE_ASM if _asm_ok() else 0, PREFETCH=prefetch,
            PAIR=PAIR_SUM, SUM_RUNS=SKIP_SUM_CLAMP, SUM_RUN_MACS=SUM_RUN_MACS, ONLY=only,
            BLOCK_M=BM, BLOCK_N=BN, num_warps=warps, **plan)


def _asm_ok() -> bool:
    """Whether the kernel may use its PTX (compiled CUDA Triton, not the interpreter)."""
    import os

    return os.environ.get("TRITON_INTERPRET") != "1" and torch.version.hip is None


@triton.jit
def _products_in_range(ax, aw, qhi, SP: tl.constexpr, WA: tl.constexpr):
    """Whether every product rounds into Q's range (the kernel may skip clamping each one),
    from ax = max|kx| and aw = max|kw| (int64).  With P = ax * aw every rounded product
    p = R(kx kw / 2**SP) lies in [floor(-P / 2**SP), floor(P / 2**SP) + 1] for every
    rounding mode, so (P >> SP) + 1 <= max_int is enough.  Where the plan has the
    one-multiply-add step (WA > 0), its operand bounds must hold too: |kx| < 2**WA and
    |kw| * 2**WA <= 2**31 - 2 (wq = (kw << WA) + sign(kw) in int32)."""
    if SP >= 62:  # P < 2**62: grid integers have at most 31 bits
        ok = 1 <= qhi
    else:
        ok = ((ax * aw) >> SP) + 1 <= qhi
    if WA > 0:
        ok = ok & (ax < (1 << WA)) & (aw <= ((2 ** 31 - 2) >> WA))
    return ok


@triton.jit
def _product_bound(ax, aw, SP: tl.constexpr):
    """pm = (max|kx| max|kw| >> SP) + 1 >= |p| for every rounded product p (int64; see
    ``_products_in_range``)."""
    if SP >= 62:
        pm = (ax * 0 + 1).to(tl.int64)
    else:
        pm = ((ax.to(tl.int64) * aw.to(tl.int64)) >> SP) + 1
    return pm


# Warps per program: None = 32 outputs per thread (128x32 -> 4 warps, 64x32 -> 2, 32x32 ->
# 1; the int64 tile 32x64 keeps 4).  Fewer outputs per thread cost a lot in sm_90 code
# (bench/sass_count.py, 2026-11-30): with 4 warps a 32x32 tile loads every operand from
# global memory for each thread instead of staging it in shared memory, fixed(16,8) 13.0
# instructions per MAC (1 warp: 5.7) and in the 3x3 conv 21 (1 warp: 5.0, at 168 rather
# than 180 registers); a 64x32 conv with 4 warps 22 at 255 registers.  An int overrides it
# (bench/gpu_sweep.py varies it with _block).
NUM_WARPS = None


def _warps(bm: int, bn: int, idt=tl.int32) -> int:
    if NUM_WARPS is not None:
        return NUM_WARPS
    if idt == tl.int64:
        return 4
    return max(1, bm * bn // 1024)
SKIP_PRODUCT_CLAMP = True  # False: always clamp each product (bench/gpu_check.py times both)
WIDE_STEP = True  # False: nearest without the 64-bit multiply step in any loop (ditto)
FUSED_GRID_INTS = True  # False: operands to grid integers by the torch path's steps (ditto)
SHARE_DRAWS = True  # False: one Philox call per stochastic product (ditto)
# the 64-bit multiply step's PTX (_wide_step): 2 = mad.lo.cc + madc.hi (sm_90: fixed(16,8)
# 6.0 -> 5.4 instructions per MAC), 1 = mad.wide.s32 as before 2026-11-30 (ditto)
WIDE_ASM = 2
# Sequential sums run without their clamp where a bound proves it idle (the kernel's
# runs: the largest |sum| of the tile, reduced on the device, plus the rows ahead times the
# largest product stays within A's range).  sm_90 instructions per MAC, fixed(16,8) in
# range, 128x32 tile, linear / 3x3 conv, prefetch on and off (bench/sass_count.py): runs
# 2.72, 2.34 / 2.43, 2.20; stretches that clamp the sums 5.19, 4.84 / 4.68, 5.03; before,
# every sum clamped: 5.53, 5.38 / 5.16, 4.90.  False: every sum clamped (gpu_check times
# both).  SUM_RUN_MACS: the fewest MACs a run takes (else a stretch of 4x as many with
# the clamp, then a fresh bound).
SKIP_SUM_CLAMP = True
SUM_RUN_MACS = 16
# In the runs and the stretches between them, the one-multiply-add loop carries each sum as
# a 64-bit pair with the rounding's 2**31 as its low word (_pair_step): ptxas then updates
# it in place, where otherwise it copies the constant and the sum into a fresh pair for
# every MAC (runs without it: 3.50, 3.31 / 3.03, 2.83 per MAC).  False: no pairs (gpu_check
# times it)
PAIR_SUM = True
# The operands of k + 1 loaded before k's products are formed: their latency overlaps k's
# arithmetic.  It costs registers (sm_90, fixed(16,8), 128x32 linear: 64 -> 74 per thread) and a
# few instructions (5.4 -> 5.6 per MAC linear, 4.9 -> 5.0 3x3 conv), and it pays
# where an SM has few warps to switch to while one waits: "auto" prefetches launches of
# fewer than PREFETCH_PROGRAMS_PER_SM programs per SM (a 512^3 GEMM, the 7x7 layers of a
# ResNet at small batch).  True / False force it (bench/gpu_check.py times both).
PREFETCH = "auto"
PREFETCH_PROGRAMS_PER_SM = 4


def _prefetch(programs: int, device=None) -> bool:
    if PREFETCH == "auto":
        return programs < PREFETCH_PROGRAMS_PER_SM * _sm_count(device)
    if not isinstance(PREFETCH, bool):
        raise ValueError(f"intrinsic.PREFETCH must be True, False or 'auto', not {PREFETCH!r}")
    return PREFETCH


# int32 tiles, largest first: 128x32 (4 warps) was the best of bench/gpu_sweep.py on an H200
# for the linear at 2048^3 and the ResNet-50 conv layer.  A launch takes the first that
# still gives every SM a program: 128x32 tiles make only 64 programs of a 512^3 GEMM for
# 132 SMs (that row ran at 0.27 T QMAC/s, the 2048^3 one at 2.05 T).
INT32_TILES = ((128, 32), (64, 32), (32, 32))
# Deterministic linears with int32 plans that fill whole waves of wide tiles (one program
# per SM at a time: at least one per SM, and the waves at least WIDE_TILE_FILL full) run
# their loops without product clamps in a wide tile, (BLOCK_M, BLOCK_N, warps): 64 outputs
# per thread, so the staged operands serve twice the MACs (sm_90, triton 3.6, fixed(16,8),
# instructions per MAC in runs / clamped stretches: 128x128 with 8 warps 1.80 / 3.89, 64x128
# with 4 warps 1.89 / 3.92, 128x32 with 4 warps 3.03 / 5.72).  H200, 2026-11-30, 2048^3 with
# the clamping loop still in the kernel: 128x128 2.38-2.41 ms, 64x128 2.45-2.49, 128x32
# 2.53-2.63.  The clamping loop is slower in such tiles (64x128: 13.3 against 9.8 per MAC;
# fixed(8,4) saturating at 2048^3 5.24 ms against 3.58), so it keeps the tile below: two
# launches, each storing only the outputs its loop serves -- the device's operand bounds
# choose, as within one launch (_fixed_gemm_kernel's ONLY); without that loop 128x128 no
# longer spills.  The 3x3 conv spills at these tiles (about 6100 local loads; 99.8 ms
# against 0.80), as does the stochastic loop: both keep the tiles below.  None: one
# launch, INT32_TILES only.
WIDE_TILE = (128, 128, 8)
WIDE_TILE_FILL = 0.85


def _wide_block(M, N, idt, G=1, device=None):
    """WIDE_TILE (BLOCK_M, BLOCK_N, warps) where it applies (a deterministic linear's int32
    plan, whole waves of programs), else None."""
    import os

    if WIDE_TILE is None or idt != tl.int32 or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    bm, bn, _ = WIDE_TILE
    programs, sms = triton.cdiv(M, bm) * triton.cdiv(N, bn) * G, _sm_count(device)
    return WIDE_TILE if programs >= sms and programs >= WIDE_TILE_FILL * sms * triton.cdiv(programs, sms) else None


def _block(M, N, idt, G=1, device=None):
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":  # few program instances under the interpreter
        return (64, 16)
    if idt != tl.int32:
        return (32, 64)
    sms = _sm_count(device)
    for bm, bn in INT32_TILES:
        if triton.cdiv(M, bm) * triton.cdiv(N, bn) * G >= sms:
            return bm, bn
    return INT32_TILES[-1]


@functools.lru_cache(maxsize=None)
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: the largest tile)."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return 1
    d = torch.device(device)
    return _sm_count_of(d.index if d.index is not None else torch.cuda.current_device())


def _grid_ints(t, q, generator, idt):
    """(k, max |k|) of t on q's grid: k in the kernel's integer type, max |k| a one-element
    int64 tensor, from one fused pass (elementwise.fixed_grid_ints: read t, write int32 k,
    reduce max |k| on the device; stochastic rounding draws from Philox, seeded from
    torch's generator like every Triton kernel: the reference's distribution, not its
    draws).  FUSED_GRID_INTS off: the torch path's steps."""
    if FUSED_GRID_INTS:
        from .elementwise import fixed_grid_ints

        k, amax = fixed_grid_ints(t, q, generator)
        return (k if idt == tl.int32 else k.to(torch.int64)), amax
    from qlab.core.intrinsic import _grid_int

    k = _grid_int(t, q, generator)
    return k.to(_torch_int(idt)), (k.abs().amax() if k.numel() else k.new_zeros(())).reshape(1)


def fixed_matmul(x, w, bias, spec, generator=None, quantize_w=True):
    """Intrinsic y = x @ w (+ bias) for x [M, K], w [K, N], bias [N] (float32); fixed-point spec."""
    M, K = x.shape
    N = w.shape[1]
    plan = _plan(spec, K, bias is not None)
    if plan is None or not matmul_accepts(x, w, bias, spec, generator, quantize_w):
        raise ValueError(f"the Triton intrinsic kernel does not cover {spec} here")
    q = spec.q
    y = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y.zero_().to(x.dtype)
    idt = plan["IDT"]
    if spec.inputs:
        kx, ax = _grid_ints(x, q, generator, idt)
        xin = kx.t().contiguous()
    else:
        xin, ax = x.float().t().contiguous(), None
    kw, aw = _grid_ints(w, q, generator, idt)  # [K, N]
    kb = _grid_ints(bias, q, generator, idt)[0] if bias is not None else None
    geom = (K, 1, 1, 1, 1, K, 1, 1, 1, 1, 0, 0, 1, 1)
    wide = None if spec.q.stochastic or spec.A.stochastic else _wide_block(M, N, idt, 1, x.device)
    _launch(xin, kw.contiguous(), kb, y, M, N, K, 1, geom, False, plan, spec, _block(M, N, idt, 1, x.device), generator,
            (ax, aw), wide)
    return y.to(x.dtype)  # float16/bfloat16 (W <= 24): exact float32 values, rounded once


# --------------------------------------------------------------------------- convolution
def conv_accepts(x, w=None, bias=None, stride=None, pads=None, dilation=None, groups=1, spec=None,
                 generator=None) -> bool:
    if spec is None or w is None or x.dim() != 4 or w.dim() != 4:
        return False
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:  # the reference raises torch's error
        return False
    return _common_accepts(x, w, bias, spec, generator, True, w.shape[1] * w.shape[2] * w.shape[3])


def fixed_conv2d(x, w, bias, stride, pads, dilation, groups, spec, generator=None):
    """Intrinsic conv2d on x [B, C, H, W] with weight [O, C/groups, kh, kw]; pads = (left,
    right, top, bottom) zero padding; k order (channel, kernel row, kernel column)."""
    B, C, H, W_ = x.shape
    O, CG, KH, KW = w.shape
    K = CG * KH * KW
    plan = _plan(spec, K, bias is not None)
    if plan is None or not conv_accepts(x, w, bias, stride, pads, dilation, groups, spec, generator):
        raise ValueError(f"the Triton intrinsic conv kernel does not cover {spec} here")
    SH, SW = stride
    DH, DW = dilation
    pl, pr, pt, pb = pads
    HO = (H + pt + pb - DH * (KH - 1) - 1) // SH + 1
    WO = (W_ + pl + pr - DW * (KW - 1) - 1) // SW + 1
    y = torch.empty(B, O, max(HO, 0), max(WO, 0), dtype=torch.float32, device=x.device)
    if y.numel() == 0:
        return y.zero_().to(x.dtype)
    idt = plan["IDT"]
    q = spec.q
    xin, ax = _grid_ints(x, q, generator, idt) if spec.inputs else (x.float().contiguous(), None)
    og = O // groups
    kw, aw = _grid_ints(w, q, generator, idt)
    kw = kw.reshape(groups, og, K).transpose(1, 2).contiguous()  # [G, K, og]
    kb = _grid_ints(bias, q, generator, idt)[0] if bias is not None else None
    M = B * HO * WO
    geom = (C, H, W_, HO, WO, CG, KH, KW, SH, SW, pt, pl, DH, DW)
    _launch(xin, kw, kb, y, M, og, K, groups, geom, True, plan, spec, _block(M, og, idt, groups, x.device), generator, (ax, aw))
    return y.to(x.dtype)


# =========================================================================== float formats
# Q and A are float(E, M) formats; the arithmetic and what is covered are described in
# qlab.ext.float_intrinsic (shared with the CPU kernel).  Operands arrive as Q(x), Q(w),
# Q(b) in float32; per k: exact product, Q, then A(s + p) by a two-sum rounded to odd
# (sequential) or an exact int64 sum rounded once (final).  Sequential binary16/bfloat16
# with nearest-even (fp16, bf16: Q = A) is what the hardware's 16-bit arithmetic does
# itself, one rounding per operation: there each MAC is mul.rn + add.rn in the format
# (``_hw16_step``; ptxas packs two per HMUL2/HADD2), clamped where the format saturates.
@triton.jit
def _two_sum_odd(a, b):
    """a + b rounded to odd in float32 (inf/NaN as float addition gives them)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)  # exact: a + b = s + err
    sb = s.to(tl.int32, bitcast=True)
    fix = (err != 0) & ((sb & 0x7F800000) != 0x7F800000) & ((sb & 1) == 0)
    step = tl.where((err > 0) == (s > 0), 1, -1)  # toward the exact sum
    return tl.where(fix, (sb + step).to(tl.float32, bitcast=True), s)


@triton.jit
def _i64_to_f32_odd(n):
    """An int64 (|n| < 2**62) rounded to odd in float32."""
    f = n.to(tl.float32)
    back = f.to(tl.int64)
    fb = f.to(tl.int32, bitcast=True)
    fix = (back != n) & ((fb & 1) == 0)
    step = tl.where((n > back) == (n > 0), 1, -1)
    return tl.where(fix, (fb + step).to(tl.float32, bitcast=True), f)


@triton.jit
def _hw16(a, b, OP: tl.constexpr, HW: tl.constexpr):
    """One IEEE binary16 (HW 1) or bfloat16 (HW 2) operation, rounded to nearest even by the
    hardware, subnormals kept: OP "mul" and "add" (an explicit .rn never fuses into an
    FMA); "min"/"max" propagate NaN (.NaN), as the saturating clamp needs."""
    T: tl.constexpr = "f16" if HW == 1 else "bf16"
    MOD: tl.constexpr = ".rn" if (OP == "mul") or (OP == "add") else ".NaN"
    return tl.inline_asm_elementwise(OP + MOD + "." + T + " $0, $1, $2;", "=h,h,h", [a, b],
                                     dtype=tl.float16 if HW == 1 else tl.bfloat16, is_pure=True, pack=1)


@triton.jit
def _hw16_step(acc, xh, wh, hmax, HW: tl.constexpr, SAT: tl.constexpr):
    """A(acc + Q(x w)) for Q = A = binary16 or bfloat16, nearest even: the product and the
    sum each rounded once by the hardware, saturated to +-hmax where the format saturates."""
    hi = tl.broadcast_to(hmax, acc.shape)
    p = _hw16(tl.broadcast_to(xh, acc.shape), tl.broadcast_to(wh, acc.shape), "mul", HW)
    if SAT:
        p = _hw16(_hw16(p, hi, "min", HW), -hi, "max", HW)
    acc = _hw16(acc, p, "add", HW)
    if SAT:
        acc = _hw16(_hw16(acc, hi, "min", HW), -hi, "max", HW)
    return acc


@triton.jit
def _f8_round(p, KIND: tl.constexpr):
    """float32 values rounded to fp8 -- KIND 3: e4m3 (FN: max 448, no inf), 4: e5m2 (max
    57344) -- to nearest even, saturating to the largest finite value, NaN kept (the
    hardware's cvt.rn.satfinite, sm_89+, two at a time), and back to float32 exactly (via
    binary16, which holds every fp8 value)."""
    T: tl.constexpr = "e4m3x2" if KIND == 3 else "e5m2x2"
    return tl.inline_asm_elementwise(
        "{ .reg .b16 h, lo, hi; .reg .b32 r; cvt.rn.satfinite." + T + ".f32 h, $3, $2; cvt.rn.f16x2." + T +
        " r, h; mov.b32 {lo, hi}, r; cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }",
        "=f,=f,f,f", [p], dtype=tl.float32, is_pure=True, pack=2)


@triton.jit
def _q_round_hw(p, QHW: tl.constexpr):
    """float32 values rounded to Q by the hardware's conversion, to nearest even, and back
    to float32 exactly: QHW 1 binary16 saturating (cvt.rn.satfinite.f16x2: largest finite
    value, NaN kept), 2 binary16 with inf (cvt.rn.f16x2: IEEE overflow), 3 / 4 fp8 e4m3 /
    e5m2 (``_f8_round``), 6 / 7 bfloat16 saturating / with inf (back to float32 by placing
    its bits in the upper half)."""
    if QHW >= 6:
        SATB: tl.constexpr = ".satfinite" if QHW == 6 else ""
        r = tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi, z; .reg .b32 r; mov.b16 z, 0; cvt.rn" + SATB + ".bf16x2.f32 r, $3, $2; "
            "mov.b32 {lo, hi}, r; mov.b32 $0, {z, lo}; mov.b32 $1, {z, hi}; }",
            "=f,=f,f,f", [p], dtype=tl.float32, is_pure=True, pack=2)
    elif QHW >= 3:
        r = _f8_round(p, QHW)
    else:
        SATF: tl.constexpr = ".satfinite" if QHW == 1 else ""
        r = tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; .reg .b32 r; cvt.rn" + SATF + ".f16x2.f32 r, $3, $2; mov.b32 {lo, hi}, r; "
            "cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }",
            "=f,=f,f,f", [p], dtype=tl.float32, is_pure=True, pack=2)
    return r


@triton.jit
def _sat32(s, amax, AINF: tl.constexpr):
    """A(s) for A = binary32 (nearest even; Q alike) of a float32 result s: s itself, clamped
    to +-amax where A saturates (NaN kept: min.NaN / max.NaN)."""
    if not AINF:
        s = tl.minimum(tl.maximum(s, -amax, propagate_nan=tl.PropagateNan.ALL), amax,
                       propagate_nan=tl.PropagateNan.ALL)
    return s


@triton.jit
def _float_k_loop(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, K_total,
                  QEMIN, QM, qmax, AEMIN, AM, amax, to_steps, seed, rbase,
                  KH: tl.constexpr, KW: tl.constexpr, DH, DW, CONV: tl.constexpr, PREFETCH: tl.constexpr,
                  P64: tl.constexpr, QINF: tl.constexpr, AINF: tl.constexpr, QMODE: tl.constexpr,
                  AMODE: tl.constexpr, SEQ: tl.constexpr, HW: tl.constexpr, SAT: tl.constexpr, FP8: tl.constexpr,
                  A32: tl.constexpr, Q32: tl.constexpr, QHW: tl.constexpr, AHW: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """The float kernel's k loop; returns (sequential sum, final: exact sum of the finite
    products in Q's smallest steps, final: sum of the non-finite ones).  Each k by one of:

    HW 1, 2 -- binary16 / bfloat16 sequential nearest-even, Q = A: the running sum in the
    format itself, each MAC one hardware product and sum (``_hw16_step``), clamped with SAT.
    HW 3, 4 -- fp8 e4m3 / e5m2 likewise: each product exact in float32 (at most 8
    significant bits) and rounded by the hardware's conversion, then s + p in float32,
    rounded the same way.  That sum is exact for e4m3 (multiples of 2**-9 below 2**10); for
    e5m2 it is inexact only where the operands' exponents lie 22 or more apart, and then
    both the exact and the float32 sum are within 2**-20 of the larger operand, an e5m2
    value, far from any e5m2 midpoint: one rounding or two give the same (double rounding
    is innocuous for 24 >= 2 p + 2 bits).
    FP8 -- e4m3 products, final: v * 2**9 is an integer below 2**18 in magnitude, so
    v * 2**9 + 1.5 * 2**23 is exact and its bits are those of 1.5 * 2**23 plus that
    integer: summed in int32 (wrapping), the K copies of the constant come off at the end.
    Otherwise the general code: exact product, Q, then A(s + p) by a two-sum rounded to odd
    (sequential) or an exact int64 sum (final); where A is binary32 itself (A32: nearest
    even) A(s + p) is one float32 addition, clamped where A saturates (Q32: each product the
    float64 one rounded to float32, clamped likewise); where Q is binary16
    or fp8 with nearest even and the product exact in float32 (QHW, compiled CUDA), the
    hardware's conversion rounds it (``_q_round_hw``), and where A is such a format (AHW) the
    sum is s + p in float32 rounded by A's conversion (see ``_a_native``)."""
    ADT: tl.constexpr = tl.float16 if HW == 1 else (tl.bfloat16 if HW == 2 else tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ADT)  # sequential: the running sum (+0)
    isum = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int64)  # final: finite products in Q's smallest steps
    isum32 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)  # FP8: the same, as float bits
    odd = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # final: the sum of non-finite products
    hmax = qmax
    if (HW == 1) | (HW == 2):
        hmax = qmax.to(ADT)  # the largest finite value, exact in the format
    xn, wn = _operands_first(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, DH, DW, CONV,
                             PREFETCH)
    for cr in range(0, CG * KH):  # (channel, kernel row) pairs; the kernel's columns unrolled
        for s in tl.static_range(KW):
            k = cr * KW + s
            xk, wk, xn, wn = _operands_k(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN,
                                         CG, cr, s, k, xn, wn, KH, KW, DH, DW, CONV, PREFETCH)
            if HW >= 3:
                acc = _f8_round(acc + _f8_round(xk[:, None] * wk[None, :], HW), HW)
            elif HW > 0:  # Q(x), Q(w) are exact in the format
                acc = _hw16_step(acc, xk.to(ADT)[:, None], wk.to(ADT)[None, :], hmax, HW, SAT)
            elif FP8:
                v = _f8_round(xk[:, None] * wk[None, :], 3)
                isum32 += (v * to_steps + 12582912.0).to(tl.int32, bitcast=True)
                odd += v * 0.0  # NaN where a product is NaN (e4m3 has no inf), else zero
            else:
                if Q32:  # x w rounded to nearest even in float32, not fused into the sum
                    if QHW == 5:
                        p = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [
                            tl.broadcast_to(xk[:, None], acc.shape), tl.broadcast_to(wk[None, :], acc.shape)],
                            dtype=tl.float32, is_pure=True, pack=1)
                    else:  # the exact float64 product, converted
                        p = (xk.to(tl.float64)[:, None] * wk.to(tl.float64)[None, :]).to(tl.float32)
                    p = _sat32(p, qmax, QINF)
                else:
                    if P64 and QHW < 6:
                        p = f64_to_f32_odd(xk.to(tl.float64)[:, None] * wk.to(tl.float64)[None, :])
                    else:  # exact; bfloat16 (QHW 6, 7): exact or see _q_native
                        p = xk[:, None] * wk[None, :]
                    if QHW > 0:
                        p = _q_round_hw(p, QHW)
                    else:
                        p = round_to_float(p, QEMIN, QM, qmax, QINF, QMODE, uniform(seed, rbase + k, QMODE))
                if SEQ and A32:
                    acc = _sat32(acc + p, amax, AINF)
                elif SEQ and AHW > 0:
                    acc = _q_round_hw(acc + p, AHW)
                elif SEQ:
                    acc = round_to_float(_two_sum_odd(acc, p), AEMIN, AM, amax, AINF, AMODE, uniform(seed + 1, rbase + k, AMODE))
                else:
                    fin = (p.to(tl.int32, bitcast=True) & 0x7F800000) != 0x7F800000
                    isum += tl.where(fin, p * to_steps, 0.0).to(tl.int64)  # exact integers
                    odd += tl.where(fin, 0.0, p)
    if FP8:
        isum = (isum32 - K_total * 0x4B400000).to(tl.int64)  # exact: |sum| < 2**31 steps (_fp8_final's K bound)
    return acc.to(tl.float32), isum, odd  # exact


@triton.jit(do_not_specialize=_SHAPE_ARGS + _FORMAT_ARGS[4:])
def _float_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, seed_ptr, flag_ptr,
    M, N, K_total,
    C_IN, H, W_IN, HO, WO, CG,
    QEMIN, QM, qmax, AEMIN, AM, amax, to_steps, from_steps,
    CONV: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    P64: tl.constexpr, QINF: tl.constexpr, AINF: tl.constexpr, QMODE: tl.constexpr, AMODE: tl.constexpr,
    SEQ: tl.constexpr, HAS_BIAS: tl.constexpr, HW: tl.constexpr, SAT: tl.constexpr, PASS: tl.constexpr,
    FP8: tl.constexpr, A32: tl.constexpr, Q32: tl.constexpr, QHW: tl.constexpr, AHW: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # binary16/bfloat16 where the format saturates, and saturating binary32 accumulators
    # (HW16_RETRY): PASS 1 runs the k loop without the clamps and flags each tile where a
    # value came out inf or NaN; PASS 2 (a second launch) redoes only the flagged tiles with
    # the clamps.  A clamp acts only on a product or sum that rounded to +-inf (IEEE rounding
    # gives +-hmax or +-inf beyond the range; so does round_to_float with inf), and from
    # +-inf no later sum is finite again, so a finite result is the clamped one bit for bit.
    # Two launches, not two loops in one kernel: the two loops together took 254 registers
    # per thread in the 3x3 conv (sm_90), one loop 162.  PASS 0: one pass.
    pid = tl.program_id(0) + tl.num_programs(0) * (tl.program_id(1) + tl.num_programs(1) * tl.program_id(2))
    if PASS == 2:
        if tl.load(flag_ptr + pid) == 0:
            return
    g, offs_m, offs_n, m_mask, n_mask = _tile(M, N, BLOCK_M, BLOCK_N)
    b_idx, rem, ih0, iw0, x_row = _rows(x_ptr, offs_m, g, C_IN, H, W_IN, HO, WO, CG, SH, SW, PT, PL, CONV)
    w_base = w_ptr + g.to(tl.int64) * K_total * N + offs_n
    seed, rbase = _philox(seed_ptr, g, M, N, K_total, offs_m, offs_n, (QMODE == 5) | (AMODE == 5))
    acc, isum, odd = _float_k_loop(x_ptr, x_row, w_base, offs_m, m_mask, n_mask, ih0, iw0, M, N, H, W_IN, CG, K_total,
                                   QEMIN, QM, qmax, AEMIN, AM, amax, to_steps, seed, rbase, KH, KW, DH, DW, CONV,
                                   PREFETCH, P64, QINF | ((PASS == 1) & A32), AINF | ((PASS == 1) & A32), QMODE, AMODE,
                                   SEQ, HW, SAT & (PASS != 1), FP8, A32, Q32, QHW, AHW, BLOCK_M, BLOCK_N)
    if PASS == 1:  # inf or NaN in this tile: PASS 2 redoes it
        tl.store(flag_ptr + pid, tl.max(tl.max(tl.where(tl.abs(acc) <= amax, 0, 1), 1), 0))
    if (not SEQ) and A32:  # the exact sum rounded to nearest even by the conversion; the scaling is
        total = isum.to(tl.float32) * from_steps  # exact (a normal result, or |isum| < 2**24)
        acc = _sat32(tl.where(odd != 0, odd, total), amax, AINF)
    elif not SEQ:
        total = _i64_to_f32_odd(isum) * from_steps  # exact: a power of two in the normal range
        total = tl.where(odd != 0, odd, total)  # +-inf or NaN: float addition's answer
        acc = round_to_float(total, AEMIN, AM, amax, AINF, AMODE, uniform(seed + 2, rbase + K_total, AMODE))
    if HAS_BIAS:
        bq = tl.load(b_ptr + g * N + offs_n, mask=n_mask, other=0.0)
        if A32:
            acc = _sat32(acc + bq[None, :], amax, AINF)
        elif AHW > 0:
            acc = _q_round_hw(acc + bq[None, :], AHW)
        else:
            acc = round_to_float(_two_sum_odd(acc, bq[None, :]), AEMIN, AM, amax, AINF, AMODE,
                                 uniform(seed + 3, rbase + K_total, AMODE))
    if Q32:
        out = _sat32(acc, qmax, QINF)
    else:
        out = round_to_float(acc, QEMIN, QM, qmax, QINF, QMODE, uniform(seed + 4, rbase + K_total, QMODE))
    y_off = _y_at(offs_m, offs_n, b_idx, rem, g, N, HO, WO, CONV)
    tl.store(y_ptr + y_off, out, mask=m_mask[:, None] & n_mask[None, :])


def _float_plan(spec, K: int, device=None):
    """Constexprs and scalars for the float kernel, or None where it does not apply."""
    from qlab.ext.float_intrinsic import plan

    fp = plan(spec, K)
    if fp is None:
        return None
    (qemin, qM, qmax, qinf, qr), (aemin, aM, amax, ainf, ar) = fp.q, fp.a
    kw = dict(P64=not fp.p32, QINF=qinf, AINF=ainf, QMODE=_MODES[qr], AMODE=_MODES[ar], SEQ=fp.seq,
              HW=_native_kind(spec, device), SAT=not spec.q.inf, FP8=_fp8_final(spec, fp, K, device), A32=fp.a32,
              Q32=fp.q32, QHW=_q_native(spec, fp, device), AHW=_a_native(spec, fp, device))
    return kw, (qemin, qM, qmax, aemin, aM, amax, fp.to_steps, fp.from_steps)


FLOAT_HW16 = True  # False: binary16/bfloat16 sequential through the general float code (bench/gpu_check.py)
# saturating fp16/bf16 on that path, and saturating binary32 accumulators (A32, also Q32):
# the k loop without its clamps (sm_90: fp16 3.7 -> 1.9 instructions per MAC), a second
# launch with them only for tiles that overflowed (ditto)
HW16_RETRY = True


def _retry(plan) -> bool:
    """Whether the float kernel runs as two launches (PASS 1 unclamped, PASS 2 for the tiles
    it flags; ``_float_gemm_kernel``)."""
    sat16 = plan["HW"] in (1, 2) and plan["SAT"]
    return HW16_RETRY and plan["SEQ"] and (sat16 or (plan["A32"] and not plan["AINF"]))


FLOAT_FP8 = True  # False: fp8 (sequential e4m3/e5m2, e4m3 final sums) through the general float code (gpu_check)


def _fp8_final(spec, fp, K: int, device=None) -> bool:
    """Whether the float kernel may round each product with the hardware's fp8 e4m3
    conversion and sum in int32: Q = fp8 e4m3 (FN, nearest even), ``final``, products exact
    in float32 (inputs quantized), every sum of K products below 2**31 of Q's smallest
    step (448 * 2**9 * K; K <= 9362), compiled CUDA on sm_89 or newer (the interpreter and
    older GPUs run the general code)."""
    q = spec.q
    if not (FLOAT_FP8 and _asm_ok() and not fp.seq and fp.p32):
        return False
    if (q.E, q.M, q.fn, q.inf, q.rounding) != (4, 3, True, False, "even"):
        return False
    if K * fp.q[2] * fp.to_steps >= 2 ** 31:
        return False
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return False
    return True


_HW_KINDS = {(5, 10, False, False): 1, (5, 10, False, True): 2, (4, 3, True, False): 3, (5, 2, False, False): 4,
             (8, 7, False, False): 6, (8, 7, False, True): 7}  # (E, M, fn, inf): _q_round_hw's kind


def _hw_kind_ok(kind: int, device=None) -> int:
    """kind, or 0 where the device lacks the conversion (fp8: sm_89 and FLOAT_FP8; 16-bit: sm_80)."""
    if kind in (3, 4) and not FLOAT_FP8:
        return 0
    if kind and device is not None and torch.device(device).type == "cuda" \
            and torch.cuda.get_device_capability(device) < ((8, 9) if kind in (3, 4) else (8, 0)):
        return 0
    return kind


def _a_native(spec, fp, device=None) -> int:
    """Where a sequential sum A(s + p) may be s + p in float32 rounded by A's hardware
    conversion (``_q_round_hw``'s kind for A), else 0: compiled CUDA, A one of binary16,
    bfloat16, fp8 e4m3 / e5m2 with nearest even, and Q no more precise than A (M_Q <= M_A).
    Then s (in A) and p (in Q) are both numbers of A's precision p_A <= 11 bits, and
    rounding their sum first to float32 (24 >= 2 p_A + 1 bits) and then to A is the same
    as rounding it once (double rounding is innocuous for addition; Figueroa 1995) -- in A's
    subnormal range too: the exact sum lies on A's finest grid there, which float32 holds.
    Checked in torch CPU arithmetic against the reference's rounding over every pair for
    A = fp16, bf16 with Q = fp8 e4m3/e5m2 and A = e4m3 with Q = e5m2, and 4 million random
    pairs for fp16/bf16 with Q = fp16/bf16 (tests/ext/test_triton_intrinsic.py)."""
    A = spec.A
    if not (FLOAT_QHW and _asm_ok() and fp.seq and fp.sum32):  # sum32: nearest even, M_Q <= M_A <= 10
        return 0
    return _hw_kind_ok(_HW_KINDS.get((A.E, A.M, A.fn, A.inf), 0), device)


def _q_native(spec, fp, device=None) -> int:
    """Where the general float loop may round each product with the hardware's conversion
    (``_q_round_hw``), else 0: compiled CUDA, products exact in float32 (fp.p32), Q with
    nearest even and 1: binary16 saturating, 2: binary16 with inf (sm_80+), 3: fp8 e4m3 (FN),
    4: fp8 e5m2 saturating (sm_89+, ``FLOAT_FP8``); 5: Q = binary32 (FloatPlan.q32), each
    product one mul.rn.f32 (IEEE, subnormals kept; an explicit rounding, so never fused
    into the sum's addition); 6 / 7: bfloat16 saturating / with inf (sm_80+).  bfloat16
    products (16 significant bits) are exact in float32 except beyond its range: above, the
    float32 product is inf and the conversion gives what Q gives the exact one (the
    largest finite value, or inf); below 2**-126 the float32 product may round once before
    the conversion rounds again, and that double rounding never changes the result -- a
    product landing exactly on a bfloat16 midpoint after the first rounding would need
    16 significant bits spanning 2**-135..2**-150, (2**16 - 1) * 2**-150, which is no product
    of two 8-bit significands.  Checked over all 74.6 million pairs of positive bfloat16
    values whose product lies in [2**-160, 2**-120) (tests/ext/test_triton_intrinsic.py)."""
    q = spec.q
    if not (FLOAT_QHW and _asm_ok()):
        return 0
    if fp.q32:  # Q = binary32: 5, the product as mul.rn.f32
        return 5
    if not (spec.inputs and q.rounding == "even"):
        return 0
    kind = _HW_KINDS.get((q.E, q.M, q.fn, q.inf), 0)
    if kind < 6 and not fp.p32:
        return 0
    return _hw_kind_ok(kind, device)


# False: products rounded to Q by the general bit code where the hardware's conversion could (gpu_check)
FLOAT_QHW = True


def _native_kind(spec, device=None) -> int:
    """Where the float kernel may run each MAC with the hardware's own arithmetic, else 0:
    sequential, inputs quantized, Q = A, nearest-even rounding, and Q one of 1: binary16,
    2: bfloat16 (E, M = 5, 10 or 8, 7, not FN; every product and sum one IEEE operation
    rounded to nearest even, plus the clamp where the format saturates; bfloat16 needs
    sm_90), 3: fp8 e4m3 (FN), 4: fp8 e5m2 (saturating) -- exact float32 products and sums
    rounded by the hardware's conversion (sm_89+).  Compiled CUDA only (PTX; the
    interpreter runs the general code)."""
    q, A = spec.q, spec.A
    if not (FLOAT_HW16 and _asm_ok() and spec.accumulate == "sequential" and spec.inputs and q == A):
        return 0
    if q.rounding != "even":
        return 0
    kind = {(5, 10, False): 1, (8, 7, False): 2, (4, 3, True): 3, (5, 2, False): 4}.get((q.E, q.M, q.fn), 0)
    if kind >= 3 and (q.inf or not FLOAT_FP8):  # the conversion saturates
        return 0
    need = {2: (9, 0), 3: (8, 9), 4: (8, 9)}.get(kind)
    if need and device is not None and torch.device(device).type == "cuda" \
            and torch.cuda.get_device_capability(device) < need:
        return 0
    return kind


def _float_accepts(x, w, bias, spec, K, quantize_w=True):
    if spec is None or getattr(spec, "fixed", True) or _float_plan(spec, K) is None:
        return False
    if not (quantize_w or spec.inputs):
        return False
    return all(t.dtype in _FLOAT_DTYPES for t in (x, w) + ((bias,) if bias is not None else ()))


def float_matmul_accepts(x, w=None, bias=None, spec=None, generator=None, quantize_w=True) -> bool:
    if w is None or x.dim() != 2 or w.dim() != 2:
        return False
    return _float_accepts(x, w, bias, spec, x.shape[1], quantize_w)


def float_conv_accepts(x, w=None, bias=None, stride=None, pads=None, dilation=None, groups=1, spec=None,
                       generator=None) -> bool:
    if w is None or x.dim() != 4 or w.dim() != 4:
        return False
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:  # the reference raises torch's error
        return False
    return _float_accepts(x, w, bias, spec, w.shape[1] * w.shape[2] * w.shape[3])


def _float_launch(xin, w3, bq, y, M, N, K, G, geom, conv, spec, generator):
    plan, sc = _float_plan(spec, K, y.device)
    BM, BN = _block(M, N, tl.int32, G, y.device)
    C_IN, H, W_IN, HO, WO, CG, KH, KW, SH, SW, PT, PL, DH, DW = geom
    seed = w3
    if spec.q.stochastic or spec.A.stochastic:
        from .elementwise import _seed_tensor

        seed = _seed_tensor(y, generator)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), G)
    programs = grid[0] * grid[1] * grid[2]
    flags = w3  # PASS 0: not read
    passes = (0,)
    if _retry(plan):  # see _float_gemm_kernel
        flags, passes = torch.empty(programs, dtype=torch.int32, device=y.device), (1, 2)
    for p in passes:
        _float_gemm_kernel[grid](
            xin, w3, bq if bq is not None else w3, y, seed, flags, M, N, K, C_IN, H, W_IN, HO, WO, CG, *sc,
            CONV=conv, KH=KH, KW=KW, SH=SH, SW=SW, PT=PT, PL=PL, DH=DH, DW=DW, HAS_BIAS=bq is not None, PASS=p,
            PREFETCH=_prefetch(programs, y.device), BLOCK_M=BM, BLOCK_N=BN, num_warps=_warps(BM, BN), **plan)


def float_matmul(x, w, bias, spec, generator=None, quantize_w=True):
    """Intrinsic y = x @ w (+ bias) for float(E, M) specs; x [M, K], w [K, N]; y in x's dtype."""
    if not float_matmul_accepts(x, w, bias, spec, generator, quantize_w):
        raise ValueError(f"the Triton intrinsic float kernel does not cover {spec} here")
    M, K = x.shape
    N = w.shape[1]
    y = torch.zeros(M, N, dtype=torch.float32, device=x.device)
    if M and N:
        xin, wq, bq = operands(x, w, bias, spec, generator)
        geom = (K, 1, 1, 1, 1, K, 1, 1, 1, 1, 0, 0, 1, 1)
        _float_launch(xin.t().contiguous(), wq.contiguous(), bq, y, M, N, K, 1, geom, False, spec, generator)
    return y.to(x.dtype)  # Q's values are exact in float32: one rounding, as the reference casts


def float_conv2d(x, w, bias, stride, pads, dilation, groups, spec, generator=None):
    """Intrinsic conv2d for float(E, M) specs (arguments as :func:`fixed_conv2d`)."""
    if not float_conv_accepts(x, w, bias, stride, pads, dilation, groups, spec, generator):
        raise ValueError(f"the Triton intrinsic float conv kernel does not cover {spec} here")
    B, C, H, W_ = x.shape
    O, CG, KH, KW = w.shape
    K = CG * KH * KW
    (SH, SW), (DH, DW), (pl, pr, pt, pb) = stride, dilation, pads
    HO = (H + pt + pb - DH * (KH - 1) - 1) // SH + 1
    WO = (W_ + pl + pr - DW * (KW - 1) - 1) // SW + 1
    y = torch.zeros(B, O, max(HO, 0), max(WO, 0), dtype=torch.float32, device=x.device)
    if y.numel():
        xin, wq, bq = operands(x, w, bias, spec, generator)
        og = O // groups
        w3 = wq.reshape(groups, og, K).transpose(1, 2).contiguous()  # [G, K, og]
        geom = (C, H, W_, HO, WO, CG, KH, KW, SH, SW, pt, pl, DH, DW)
        _float_launch(xin.contiguous(), w3, bq, y, B * HO * WO, og, K, groups, geom, True, spec, generator)
    return y.to(x.dtype)
