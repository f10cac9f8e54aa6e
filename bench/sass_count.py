"""Instructions per MAC in the fixed-point intrinsic kernel's k loop, read from its sm_90
(Hopper) machine code -- no GPU needed: Triton compiles for a named target, and the
ptxas/cuobjdump it ships turn the result into SASS.

    PYTHONPATH=. python bench/sass_count.py [--spec fixed(16,8)|fp16|...] [--tile 128x32] [--warps 4] [--no-wide]
    PYTHONPATH=. python bench/sass_count.py --elementwise

For each innermost loop of the SASS (from a backward branch's target to the branch; the
fixed kernel's loop over runs holds k loops) the script prints its length, its
instruction mix, instructions per MAC (loop length / MACs per thread per iteration; a 3x3
convolution loop unrolls the kernel's 3 columns: 3 values of k), the integer-ALU and
FMA-pipe shares, and the loop's ceiling rate on an H200 (``bound_rate``: the tightest of
issue, integer ALU and FMA pipe).  The fixed kernel's loops come in the order: runs
without clamps, stretches clamping the sums, the loop clamping each product.  Calibration (docs/benchmarks.md): the clamping fixed(16,8) loop measured
0.88x (linear, 2048^3) and 0.90x (ResNet-50 conv layer) of this ceiling on an H200, where
the integer ALU was the binding limit.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qlab.core.intrinsic import as_intrinsic
from qlab.ext.triton import intrinsic as ti

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


_FLOATS = ("out_scale", "qmax", "amax", "to_steps", "from_steps")  # float32 scalars of the two kernels


def compile_sass(spec: str, conv: bool, bm: int, bn: int, warps: int, inrange: bool = True, wide: bool = True,
                 prefetch: bool = True, float_pass: int | None = None, only: int = 0) -> str:
    """SASS of the fixed-point kernel, or of the float kernel for a float(E, M) spec
    (wide=False: as with ``intrinsic.WIDE_STEP`` off; prefetch=False: ``intrinsic.PREFETCH`` off;
    float_pass: the float kernel's PASS, by default 1 -- the unclamped pass -- where
    saturating fp16/bf16 and binary32 accumulators take two launches (``intrinsic._retry``),
    else 0; only: the fixed kernel's ONLY, 1 for WIDE_TILE's launch)."""
    s = as_intrinsic(spec)
    k = 3 if conv else 1
    const = dict(CONV=conv, KH=k, KW=k, SH=1, SW=1, PT=k // 2, PL=k // 2, DH=1, DW=1, HAS_BIAS=False,
                 PREFETCH=prefetch, BLOCK_M=bm, BLOCK_N=bn)
    if s.fixed:
        fn, plan = ti._fixed_gemm_kernel, ti._plan(s, 2048, False)
        ptr = "*i64" if plan is not None and plan["IDT"] == triton.language.int64 else "*i32"
        const.update(INRANGE=inrange, ASM=ti.WIDE_ASM, PAIR=ti.PAIR_SUM, SUM_RUNS=ti.SKIP_SUM_CLAMP,
                     SUM_RUN_MACS=ti.SUM_RUN_MACS, ONLY=only)
    else:
        fn, plan, ptr = ti._float_gemm_kernel, (ti._float_plan(s, 2048) or (None,))[0], "*fp32"
        if float_pass is None:
            float_pass = 1 if plan is not None and ti._retry(plan) else 0
        const.update(PASS=float_pass)
    if plan is None:
        raise SystemExit(f"the kernel does not cover {spec}")
    const.update(plan)
    if s.fixed and not wide:
        const.update(WA=0, WB=0)
    ptrs = {"x_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr, "y_ptr": "*fp32", "seed_ptr": "*i64", "ax_ptr": "*i64", "aw_ptr": "*i64",
            "flag_ptr": "*i32"}
    sig = {n: ptrs.get(n, "fp32" if n in _FLOATS else ("constexpr" if n in const else "i32")) for n in fn.arg_names}
    kern = triton.compile(ASTSource(fn, sig, {n: v for n, v in const.items() if n in fn.arg_names}),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kern.asm["cubin"])
        dump = os.path.join(BIN, "cuobjdump")
        res = subprocess.run([dump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        compile_sass.n_regs = int(re.search(r"REG:(\d+)", res).group(1))  # registers per thread: occupancy
        return subprocess.run([dump, "-sass", path], capture_output=True, text=True, check=True).stdout


def compile_elementwise_sass(mode: str = "nearest", four: bool = False, block: int = 1024, warps: int = 4,
                             grid: bool = False) -> str:
    """SASS of the elementwise fixed-point kernel on float32 as launched for fixed(8,4)
    (pointers and n divisible by 16: 16-byte loads); ``four``: ``PHILOX4``; ``grid``: the
    grid-integer variant (int32 out, max |k|) that the intrinsic kernels' inputs take."""
    from qlab.ext.triton import elementwise as ew

    fn = ew._fixed_kernel
    sig = dict(x_ptr="*fp32", y_ptr="*i32" if grid else "*fp32", seed_ptr="*i64", n="i32", W="i32", F="i32",
               scale="fp32", inv_scale="fp32", lo="fp32", hi="fp32")
    const = dict(MODE=ew._MODES[mode], NEG_F=False, CT64=False, DT=0, BLOCK=block, FOUR=four, GRID=grid)
    sig.update({k: "constexpr" for k in const})
    if grid:
        sig["amax_ptr"] = "*i64"
    else:
        const["amax_ptr"] = None
        sig["amax_ptr"] = "constexpr"
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in ("x_ptr", "y_ptr", "n")}
    kern = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kern.asm["cubin"])
        return subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout


def opcodes(sass: str) -> collections.Counter:
    """Opcode counts of a whole kernel (straight-line code: every instruction runs once)."""
    ops = collections.Counter()
    for x in sass.splitlines():
        mm = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", x)
        if mm and mm.group(1) != "NOP":
            ops[mm.group(1)] += 1
    return ops


def _branch_lines(sass: str):
    """The SASS lines that carry an address, with their addresses."""
    lines = [x for x in sass.splitlines() if re.search(r"/\*([0-9a-f]{4,})\*/", x)]
    return lines, [int(re.search(r"/\*([0-9a-f]{4,})\*/", x).group(1), 16) for x in lines]


def _inner_spans(lines, addrs):
    """(first, last) line indices of every innermost loop: a backward branch's target to the
    branch, holding no other backward branch (the kernel's run loop around its k loops is
    not a k loop)."""
    spans = []
    for i, line in enumerate(lines):
        m = re.search(r"\bBRA\s+(0x[0-9a-f]+)", line)
        if m and int(m.group(1), 16) < addrs[i]:
            spans.append((addrs.index(int(m.group(1), 16)), i))
    return [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]


def loops(sass: str):
    """(length, opcode counts) of every innermost loop: the code from a backward branch's
    target to it."""
    lines, addrs = _branch_lines(sass)
    out = []
    for a, b in _inner_spans(lines, addrs):
        ops = collections.Counter()
        for x in lines[a:b + 1]:
            mm = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", x)
            if mm:
                ops[mm.group(1)] += 1
        out.append((sum(ops.values()), ops))
    return out


def skipped_blocks(sass: str):
    """For every loop (in the order of :func:`loops`): the instruction counts of the blocks
    that a forward branch inside it can jump over (code run on some iterations only, e.g.
    a Philox call every few k)."""
    lines, addrs = _branch_lines(sass)
    out = []
    for a, b in _inner_spans(lines, addrs):
        blocks = []
        for j in range(a, b):
            f = re.search(r"\bBRA\s+(0x[0-9a-f]+)", lines[j])
            if f and addrs[j] < int(f.group(1), 16) <= addrs[b]:
                blocks.append(sum(1 for x in addrs if addrs[j] < x < int(f.group(1), 16)))
        out.append(blocks)
    return out


_FMA = {"IMAD", "FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2"}  # the FMA pipes (IMAD: 16 lanes each)
_OTHER = {"LDS", "LDG", "STS", "STG", "LDC", "LDSM", "BRA", "BAR", "EXIT", "NOP", "BSYNC", "BSSY", "WARPSYNC",
          "S2R", "S2UR", "R2UR", "DEPBAR", "MEMBAR"}  # memory, control, and the uniform datapath (U...)


def pipes(ops) -> tuple[int, int, int]:
    """(all, integer-ALU, FMA-pipe) instruction counts of a loop.  Hopper issues one warp
    instruction per clock and partition; the integer ALU and IMAD's FMA pipe are 16 lanes
    wide, so each takes two clocks per warp instruction (64 per SM and clock each)."""
    fma = sum(v for k, v in ops.items() if k in _FMA)
    alu = sum(v for k, v in ops.items() if k not in _FMA and k not in _OTHER and not k.startswith("U"))
    return sum(ops.values()), alu, fma


def bound_rate(ops, macs_per_thread: float, sms: int = 132, ghz: float = 1.98) -> float:
    """MACs/s if the loop ran at its tightest bound (issue, ALU or FMA pipe) on every SM:
    a ceiling, not a prediction (H200: 132 SMs at 1.98 GHz)."""
    total, alu, fma = pipes(ops)
    clocks = max(total, 2 * alu, 2 * fma)  # per warp and loop iteration, one partition
    return sms * 4 * ghz * 1e9 * 32 * macs_per_thread / clocks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="fixed(16,8)")
    ap.add_argument("--tile", default="128x32")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--no-wide", action="store_true", help="as with intrinsic.WIDE_STEP off")
    ap.add_argument("--no-prefetch", action="store_true", help="as with intrinsic.PREFETCH off")
    ap.add_argument("--only", type=int, default=0, choices=(0, 1, 2),
                    help="the fixed kernel's ONLY: 1 = WIDE_TILE's launch (no clamping loop), 2 = the clamping loop's")
    ap.add_argument("--elementwise", action="store_true", help="the elementwise fixed(8,4) kernels instead")
    a = ap.parse_args(argv)
    if a.elementwise:
        per = 1024 / (32 * 4)  # BLOCK 1024, 4 warps: elements per thread
        print(f"elementwise fixed(8,4) on float32, BLOCK 1024, 4 warps, sm_90, triton {triton.__version__}")
        for mode, four in [("nearest", False), ("stochastic", True), ("stochastic", False)]:
            ops = opcodes(compile_elementwise_sass(mode, four))
            total, alu, fma = pipes(ops)
            name = mode + (", PHILOX4" if four else ", Philox per element" if mode == "stochastic" else "")
            print(f"  {name:34s} {total / per:5.1f} instructions per element (ALU {alu / per:4.1f}, "
                  f"FMA pipe {fma / per:4.1f})  {dict(ops.most_common(5))}")
        return 0
    bm, bn = (int(v) for v in a.tile.split("x"))
    per_thread = bm * bn / (32 * a.warps)
    print(f"{a.spec}, tile {a.tile}, {a.warps} warps, sm_90, triton {triton.__version__}: "
          f"{per_thread:g} MACs per thread per k")
    for conv in (False, True):
        sass = compile_sass(a.spec, conv, bm, bn, a.warps, wide=not a.no_wide, prefetch=not a.no_prefetch,
                            only=a.only)
        print(f"  {'conv 3x3' if conv else 'linear  '} kernel: {compile_sass.n_regs} registers per thread")
        found = loops(sass)
        for (n, ops), blocks in zip(found, skipped_blocks(sass)):
            if blocks:
                print(f"  (the next loop holds blocks of {blocks} instructions behind forward branches)")
            ks = 3 if conv else 1  # the 3x3 kernel's columns are unrolled: 3 values of k per pass
            _, alu, fma = pipes(ops)
            print(f"  {'conv 3x3' if conv else 'linear  '} loop: {n:4d} instructions, "
                  f"{n / (per_thread * ks):5.2f} per MAC (ALU {alu / (per_thread * ks):4.2f}, "
                  f"FMA pipe {fma / (per_thread * ks):4.2f}), bound {bound_rate(ops, per_thread * ks) / 1e12:4.2f} T/s"
                  f"  {dict(ops.most_common(6))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
