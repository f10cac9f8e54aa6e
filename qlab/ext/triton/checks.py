"""The Triton checks shared by the tests (tests/ext/test_triton_*.py) and bench/gpu_check.py.

Each value is a script body for :func:`qlab.ext.triton.testing.run_sections`: it compares
the Triton path on ``DEV`` with the CPU torch reference bit for bit (deterministic
modes) or checks the stochastic properties, and raises on any difference.
"""

FIXED = """
    torch.manual_seed(0)
    specials = [0., -0., math.nan, math.inf, -math.inf, 0.49999997, -0.49999997, 1e-40, -1e-40, 1e-45, -1e-45,
                3e38, -3e38]
    x = torch.cat([torch.randn(1500) * 20, torch.tensor(specials), (torch.arange(-100, 100) + 0.5) / 16])
    bad = []
    for W, F in [(8, 4), (4, 0), (1, 0), (16, 8), (24, 10), (8, -2), (6, 20), (24, -3)]:
        for m in ["nearest", "even", "down", "up", "zero"]:
            q = qlab.FixedPoint(W, F, m)
            assert dispatched("fixed", x, q), q
            if not same(ref(q, x), fast(q, x)):
                bad.append(str(q))
    assert fast(qlab.FixedPoint(8, 4), torch.empty(0)).shape == (0,)
    # float64 steps (W > 24, F far out, float64 tensors) and float16/bfloat16 tensors
    xd = torch.cat([x.double(), torch.randn(500, dtype=torch.float64) * 1e6, torch.tensor([2.0 ** 40 + 0.5, -1e-300])])
    cases = [(W, F_, t) for W, F_ in [(32, 16), (32, 0), (25, 3), (30, 29), (32, -8), (12, 600), (31, -900)]
             for t in (x, xd)]
    cases += [(W, F_, t) for W, F_ in [(8, 4), (16, 8), (24, 10), (32, 16), (12, 20), (6, -3)]
              for t in (x.half(), x.bfloat16(), (x * 3000).half(), (x * 1e4).bfloat16())]
    for W, F_, t in cases:
        for m in ["nearest", "even", "down", "up", "zero"]:
            q = qlab.FixedPoint(W, F_, m)
            assert dispatched("fixed", t, q), (q, t.dtype)
            if not same(ref(q, t), fast(q, t)):
                bad.append((str(q), str(t.dtype)))
    # the intrinsic kernels' operands: grid integers k (int32, NaN -> 0) and max |k| in one pass
    from qlab.core.formats import fixed_to_grid
    from qlab.ext.triton.elementwise import fixed_grid_ints
    for W, F_, t in [(8, 4, x), (16, 8, x * 50), (1, 0, x), (24, -3, x), (32, 16, xd), (31, -900, xd), (32, 0, x),
                     (8, 4, x.half()), (16, 8, (x * 3000).half()), (12, 20, x.bfloat16())]:
        for m in ["nearest", "even", "down", "up", "zero"]:
            q = qlab.FixedPoint(W, F_, m)
            r = fixed_to_grid(t, W, F_, m)
            r = torch.where(r.isnan(), 0, r).to(torch.int64)
            k, amax = fixed_grid_ints(t.to(DEV), q)
            if k.dtype != torch.int32 or not torch.equal(k.cpu().to(torch.int64), r) or amax.item() != r.abs().max().item():
                bad.append(("grid ints", str(q), str(t.dtype)))
    k, amax = fixed_grid_ints(torch.empty(0, device=DEV), qlab.FixedPoint(8, 4))
    assert k.shape == (0,) and amax.item() == 0
    print("BAD", bad)
    assert not bad, bad
"""

STOCHASTIC = """
    import itertools
    from qlab.ext.triton import elementwise as _ew
    N = 1024
    for four, q in itertools.product((False, True), [qlab.FixedPoint(8, 4, "stochastic"), qlab.Float(4, 3, "stochastic")]):
        _ew.PHILOX4 = four  # one Philox call per element, or per four elements
        vals = torch.tensor([0.3, -0.3, 1.0 + 1 / 64, -5.77, 7.9, 0.0, 2.5 / 16, 0.01, 3.0])
        x = vals.repeat_interleave(N)
        assert dispatched("fixed" if isinstance(q, qlab.FixedPoint) else "float", x, q)
        torch.manual_seed(5); y1 = fast(q, x)
        torch.manual_seed(5); y2 = fast(q, x)
        torch.manual_seed(6); y3 = fast(q, x)
        assert torch.equal(y1, y2), "torch.manual_seed must repeat a run"
        assert not torch.equal(y1, y3), "another seed must give other draws"
        g = torch.Generator(device=DEV); g.manual_seed(11)
        z1 = fast(q, x, generator=g)
        g.manual_seed(11)
        z2 = fast(q, x, generator=g)
        assert torch.equal(z1, z2), "a given generator must repeat a run"
        # the two neighbours: down- and up-rounded values (deterministic reference)
        lo = ref(type(q)(*[getattr(q, f) for f in (("W", "F") if isinstance(q, qlab.FixedPoint) else ("E", "M"))], "down"), x)
        hi = ref(type(q)(*[getattr(q, f) for f in (("W", "F") if isinstance(q, qlab.FixedPoint) else ("E", "M"))], "up"), x)
        assert bool(((y1 == lo) | (y1 == hi)).all()), "every result is one of the two neighbouring grid points"
        for i, v in enumerate(vals.tolist()):
            yi = y1[i * N:(i + 1) * N].double()
            l, h = lo[i * N].item(), hi[i * N].item()
            if l == h:
                assert bool((yi == l).all()), (q, v)
                continue
            p = (v - l) / (h - l)
            sigma = (h - l) * math.sqrt(p * (1 - p) / N)
            mean = yi.mean().item()
            # unbiased: the mean of N draws lies within 5 sigma of x (plus the 2**-23 draw resolution)
            assert abs(mean - v) <= 5 * sigma + (h - l) * 2 ** -22, (str(q), four, v, mean, sigma)
            assert 0 < (yi == h).sum().item() < N, (q, v)
        # independent draws: at a halfway value (p = 1/2) neighbours agree half the time
        # (elements share Philox counters in fours: a shared draw would make them agree)
        n2, half = 4096, (1 / 32 if isinstance(q, qlab.FixedPoint) else 1 + 1 / 16)
        up = fast(q, torch.full((n2,), half)) > half
        assert 0.4 < up.double().mean().item() < 0.6, (str(q), four, up.double().mean().item())
        for lag in (1, 2, 3, 4, 5, 1024):
            agree = (up[lag:] == up[:-lag]).double().mean().item()
            assert abs(agree - 0.5) <= 5 * math.sqrt(0.25 / (n2 - lag)), (str(q), four, lag, agree)
    # far below Q's smallest step (|x| / step < 2**-6: past the rounding's 30-bit shift), up
    # with probability |x| / step all the same
    q, n3 = qlab.Float(4, 3, "stochastic"), 1 << 15
    for v in (2.0 ** -17, 3 * 2.0 ** -20):
        torch.manual_seed(7)
        ups = (fast(q, torch.full((n3,), v)) != 0).sum().item()
        p = v / 2.0 ** -9
        assert abs(ups - n3 * p) <= 5 * math.sqrt(n3 * p) + 1, (v, ups, n3 * p)
    print("STOCHASTIC OK")
"""

FLOAT = """
    torch.manual_seed(1)
    bits = torch.randint(-2 ** 31, 2 ** 31, (2500,), dtype=torch.int64).to(torch.int32)
    x_rand = bits.view(torch.float32)  # every exponent, subnormals, inf, NaN
    x_norm = torch.randn(600) * 2.0 ** torch.randint(-20, 20, (600,)).float()
    specials = torch.tensor([0., -0., math.nan, -math.nan, math.inf, -math.inf, 1e-45, -1e-45, 3.4028235e38,
                             -3.4028235e38, 448., 464., 480., 57344., 61440., 65504., 65520., 1e-8, -1e-8])
    bad = []
    for E, M, fn, inf in [(5, 10, False, False), (8, 7, False, False), (5, 2, False, False), (4, 3, True, False),
                          (2, 0, False, False), (3, 1, False, True), (8, 23, False, False), (8, 20, False, True),
                          (6, 5, False, False), (7, 4, True, False)]:
        # exact ties on this format's grid, in every binade
        tie_bit = max(0, 22 - M)
        ties = ((bits & ~((1 << (tie_bit + 1)) - 1)) | (1 << tie_bit)).view(torch.float32)[:800] if M < 23 else x_norm
        x = torch.cat([x_rand, x_norm, specials, ties])
        for m in ["even", "nearest", "down", "up", "zero"]:
            q = qlab.Float(E, M, m, fn=fn, inf=inf)
            assert dispatched("float", x, q), q
            if not same(ref(q, x), fast(q, x)):
                bad.append(str(q))
    q = qlab.Float(8, 3, fn=True)  # values beyond float32: declined, the reference runs
    assert not dispatched("float", x, q) and same(ref(q, x), fast(q, x))
    assert not dispatched("float", x.double(), qlab.Float(5, 2))
    # float16/bfloat16 tensors: the format's value, then one rounding to the tensor's dtype
    x16 = torch.cat([x_norm, specials, torch.randn(300) * 7e4, torch.randn(300) * 1e-6])
    for E, M, fn, inf in [(5, 10, False, False), (8, 7, False, False), (4, 3, True, False), (8, 12, False, True),
                          (6, 13, False, False), (3, 1, False, True)]:
        for dt in (torch.float16, torch.bfloat16):
            for m in ["even", "nearest", "down", "up", "zero"]:
                q = qlab.Float(E, M, m, fn=fn, inf=inf)
                t = x16.to(dt)
                assert dispatched("float", t, q), (q, dt)
                if not same(ref(q, t), fast(q, t)):
                    bad.append((str(q), str(dt)))
    print("BAD", bad)
    assert not bad, bad
"""

LOG = """
    torch.manual_seed(2)
    bits = torch.randint(-2 ** 31, 2 ** 31, (2500,), dtype=torch.int64).to(torch.int32)
    x_rand = bits.view(torch.float32)
    x_norm = torch.randn(800) * 2.0 ** torch.randint(-12, 12, (800,)).float()
    pw = 2.0 ** torch.arange(-149, 128).double()
    specials = torch.cat([torch.tensor([0., -0., math.nan, math.inf, -math.inf, 1e-45, -1e-45, 0.75, 1.5, -3.0]),
                          pw.float(), (pw * 1.5).float(), (pw * 0.75).float(), (pw * math.sqrt(2)).float(),
                          -(pw * math.sqrt(2)).float().nextafter(torch.tensor(0.))])
    x = torch.cat([x_rand, x_norm, specials])
    bad = []
    for W, E in [(4, 2), (8, 0), (9, 127), (2, 5), (32, 10), (5, -140), (3, 200), (6, -130), (4, -147),
                 (16, -160), (3, -400), (7, 60)]:
        for m in ["nearest", "log", "down"]:
            q = qlab.Log(W, E, m)
            assert dispatched("log", x, q), q
            if not same(ref(q, x), fast(q, x)):
                bad.append(str(q))
            if E in (0, 10, -130, 127, 60):  # float16/bfloat16 tensors: one rounding of the power of two
                for t in (x.half(), x.bfloat16()):
                    if not same(ref(q, t), fast(q, t)):
                        bad.append((str(q), str(t.dtype)))
    print("BAD", bad)
    assert not bad, bad
"""


COMMON = """
    from qlab.core.intrinsic import intrinsic_linear, intrinsic_conv, intrinsic_matmul, as_intrinsic, Intrinsic
    MODES = ["nearest", "even", "down", "up", "zero"]

    def spec_of(W, F_, Wa, Fa, mode, acc, inputs=True, amode=None):
        return Intrinsic(qlab.FixedPoint(W, F_, mode), acc=qlab.FixedPoint(Wa, Fa, amode or mode),
                         accumulate=acc, inputs=inputs)

    def lin_pair(*args, spec):  # intrinsic_linear(*args) on the torch path and on the Triton path
        return ref(intrinsic_linear, *args, spec=spec), fast(intrinsic_linear, *args, spec=spec)

    def lin_same(*args, spec):
        return same(*lin_pair(*args, spec=spec))

    def lin_dispatched(x, w, b, spec):
        spec = as_intrinsic(spec)
        return dispatched("fixed_matmul" if spec.fixed else "float_matmul", x, w.t(), b, spec, None, True)
"""

LINEAR = COMMON + """
    rng = torch.Generator().manual_seed(0)
    FORMATS = [  # W, F, Wa, Fa, input scale
        (8, 4, 8, 4, 2.0), (6, 3, 8, 2, 3.0), (6, 3, 10, 5, 2.0), (16, 8, 16, 8, 40.0), (16, 8, 12, 3, 4.0),
        (32, 16, 32, 16, 3.0), (8, -1, 8, -1, 40.0), (5, 2, 5, 2, 6.0), (30, 10, 32, 12, 5.0), (4, 6, 6, 9, 0.1),
    ]
    bad, n = [], 0
    differ = 0
    for i, (W, F_, Wa, Fa, sc) in enumerate(FORMATS):
        for j, mode in enumerate((MODES * 2)[i % 5:i % 5 + 3]):  # three modes per format, every mode 6 times
            M, K, N = [int(v) for v in torch.randint(1, 13, (3,), generator=rng)]
            M += 17 * (j % 2)  # ragged tiles: more than one row block
            x = torch.randn(M, K, generator=rng) * sc
            w = torch.randn(N, K, generator=rng) * sc / 2
            b = torch.randn(N, generator=rng) * sc if (i + j) % 2 else None
            outs = {}
            for acc in ["sequential", "final"]:
                spec = spec_of(W, F_, Wa, Fa, mode, acc)
                assert lin_dispatched(x, w, b, spec), spec
                r, f = lin_pair(x, w, b, spec=spec)
                n += 1
                outs[acc] = r
                if not same(r, f):
                    bad.append((str(spec), M, K, N))
            differ += not torch.equal(outs["sequential"], outs["final"])
    # saturation is exercised: sequential and final differ for some cases
    assert differ >= 3, differ
    # the per-product clamp is skipped only where max|kx| * max|kw| proves every product
    # rounds into Q's range: operands at that bound (fixed(8,4): max 127; 107 * 19 = 2033
    # rounds up to 128 and must clamp; 45 * 45 = 2025 rounds to at most 127, no clamp)
    for kx1, kw1 in [(107, 19), (45, 45), (-45, 45), (46, 46)]:
        x = torch.tensor([[-10.0, kx1], [3.0, -kx1]]) / 16
        w = torch.tensor([[16.0, kw1], [-16.0, kw1]]) / 16
        for mode in MODES:
            for acc in ["sequential", "final"]:
                spec = spec_of(8, 4, 8, 4, mode, acc)
                n += 1
                if not lin_same(x, w, None, spec=spec):
                    bad.append((str(spec), kx1, kw1))
    # nearest with W <= 16 in range: product, rounding and sum in one 64-bit multiply-add.
    # Exact ties of both signs (kx kw = odd * 2**(SP-1)), kx at -2**(W-1), and the largest
    # weights the step takes (|kw| = 2**15 - 1 at W = 16; kw = -2**15 sends the tile to the
    # clamping loop); W + F = 32 (the rounded product is the high word as it is), F = 1.
    for W, F_, xs_, ws_ in [
        (16, 8, [-32768, 32767, 128, -128, 384, -384, 1, 0], [1, -1, 3, -3, 255, -255, 0]),
        (16, 8, [1, -1, 128, -128, 3], [-32767, 32767, 128, -129]),
        (16, 8, [1, -1, 128, -128, 3], [-32768, 32767, 128, -129]),
        (16, 16, [-32768, 32767, 2 ** 15, 7], [1, -1, 0]),
        (12, 20, [-2048, 2047, 1024, -1024], [1, -1, 512]),
        (4, 1, [-8, 7, 1, -1, 3, -3], [-1, 1, 3, 0]),
        (8, 4, [-128, 127, 8, -8, 24, -24], [1, -1, 3, -3, 0]),
        # products beyond Q's range: the clamping loop's 64-bit multiply step (W <= 15)
        (8, 4, [-128, 127, 100, -100, 24, -24, 8], [-128, 127, 64, -64, 1, 3, -3]),
        (15, 10, [-16384, 16383, 512, -512, 1, 3], [-16384, 16383, 1024, -1, 3]),
    ]:
        kx = torch.tensor(xs_, dtype=torch.float64)[torch.randint(0, len(xs_), (23, 9), generator=rng)]
        kw = torch.tensor(ws_, dtype=torch.float64)[torch.randint(0, len(ws_), (7, 9), generator=rng)]
        x, w = (kx / 2.0 ** F_).float(), (kw / 2.0 ** F_).float()
        for acc in ["sequential", "final"]:
            spec = spec_of(W, F_, W, F_, "nearest", acc)
            n += 1
            if not lin_same(x, w, None, spec=spec):
                bad.append((str(spec), "wide", xs_[:2], ws_[:2]))
    # the multiply step with the sum apart (sequential onto a finer or coarser A: D != 0)
    for Wa, Fa, sc in [(12, 2, 2.0), (16, 6, 2.0), (10, 3, 8.0)]:
        x = torch.randn(19, 11, generator=rng) * sc
        w = torch.randn(5, 11, generator=rng)
        for acc in ["sequential", "final"]:
            spec = spec_of(8, 4, Wa, Fa, "nearest", acc)
            n += 1
            if not lin_same(x, w, None, spec=spec):
                bad.append((str(spec), "wide, D != 0"))
    # sequential sums that run without their clamp (intrinsic.SKIP_SUM_CLAMP) for as many
    # rows as a bound allows: with every |product| <= pm and the sums within +-m, the next
    # (ahi - m) // pm products cannot leave A's range.  Products exactly at pm = (P >> 4) + 1
    # (P = max|kx| max|kw|): 17 * 17 / 16 -> 19 rounding up (-19 down), 12 * 14 / 16 = 10.5
    # -> 11 to nearest (the 64-bit pair step), rising until k = f and falling after: f =
    # r + 1, with r the first run's length, puts one product past A's range, which a run one
    # row too long would leave unclamped for the falling products to carry on
    for W, F_, Wa, Fa in [(12, 4, 12, 4), (10, 4, 12, 6)]:
        for mode in MODES:
            kx, kw, pm = (12, 14, 11) if mode == "nearest" else (17, 17, 19)
            r = (2 ** (Wa - 1) - 1) // (pm << (Fa - F_))
            K = r + 12
            f = torch.tensor([r - 1, r, r + 1, r + 2, K // 2])[:, None]
            rise = torch.where(torch.arange(K)[None, :] < f, kx, -kx).float()
            x = torch.cat([rise, -rise, torch.where(torch.rand(2, K, generator=rng) < 0.6, kx, -kx)]) / 2 ** F_
            w = torch.stack([torch.full((K,), kw), torch.where(torch.rand(K, generator=rng) < 0.5, kw, -kw),
                             torch.randint(-kw, kw + 1, (K,), generator=rng)]).float() / 2 ** F_
            for acc in ["sequential", "final"] if mode == "nearest" else ["sequential"]:
                spec = spec_of(W, F_, Wa, Fa, mode, acc)
                for xx in (x, -rise / 2 ** F_):  # and sums only below zero: the bound takes |min| too
                    n += 1
                    if not lin_same(xx, w, None, spec=spec):
                        bad.append((str(spec), "runs"))
    # int64 sums (W = 30), drifting: a run of 18 rows, one of 12, then stretches with the clamp
    for mode in ["nearest", "up", "down"]:
        x = ((torch.randn(5, 150, generator=rng) * 0.3 + 0.8) * 100).clamp(-180, 180)
        w = ((torch.randn(6, 150, generator=rng) * 0.3 + torch.tensor([1.0, -1.0, 0.0, 0.5, -0.5, 0.8])[:, None])
             * 100).clamp(-180, 180)
        spec = spec_of(30, 10, 30, 10, mode, "sequential")
        n += 1
        if not lin_same(x, w, None, spec=spec):
            bad.append((str(spec), "runs int64"))
    # 3x3 conv: a run counts kernel rows of 3 MACs.  Every product 19 = pm (up): 35 rows
    # (1995) are safe, the 36th (channel 11's last row) reaches 2052 and must clamp; then
    # the weights turn negative
    for mode in ["up", "down"]:
        xc = torch.full((1, 20, 3, 4), 17.0 / 16)
        wc = torch.where(torch.arange(20) < 12, 17.0, -17.0)[None, :, None, None].expand(2, 20, 3, 3) / 16
        wc = wc * torch.tensor([1.0, -1.0])[:, None, None, None]
        spec = spec_of(12, 4, 12, 4, mode, "sequential")
        n += 1
        if not same(ref(intrinsic_conv, xc, wc, None, spec=spec), fast(intrinsic_conv, xc, wc, None, spec=spec)):
            bad.append((str(spec), "runs conv rows"))
    # 3x3 conv, groups, random: rows of 3 MACs
    for mode in ["nearest", "even", "up"]:
        xc = torch.randn(2, 24, 6, 5, generator=rng).abs() * 1.1
        wc = (torch.randn(8, 12, 3, 3, generator=rng) + torch.tensor([1.0, -1.0, 0.2, 0.0, 1.0, -1.0, 3.0, -0.1])[:, None, None, None]) * 1.1
        spec = spec_of(12, 4, 12, 4, mode, "sequential")
        n += 1
        if not same(ref(intrinsic_conv, xc, wc, None, padding=1, groups=2, spec=spec),
                    fast(intrinsic_conv, xc, wc, None, padding=1, groups=2, spec=spec)):
            bad.append((str(spec), "runs conv"))
    # inputs=False (the float input times the weight's grid integer, exactly)
    for mode in MODES:
        for acc in ["sequential", "final"]:
            spec = spec_of(8, 4, 10, 5, mode, acc, inputs=False)
            x = torch.randn(9, 7, generator=rng) * 3
            w = torch.randn(5, 7, generator=rng)
            b = torch.randn(5, generator=rng)
            assert lin_dispatched(x, w, b, spec), spec
            n += 1
            if not lin_same(x, w, b, spec=spec):
                bad.append(str(spec))
    # a different accumulator rounding mode, and leading batch dims
    spec = spec_of(8, 4, 8, 2, "nearest", "sequential", amode="down")
    x, w = torch.randn(2, 3, 5, generator=rng) * 4, torch.randn(4, 5, generator=rng)
    n += 1
    if not lin_same(x, w, None, spec=spec):
        bad.append(str(spec))
    # float16/bfloat16 tensors (W <= 24): exact float32 results, one rounding to the dtype
    for dt in (torch.float16, torch.bfloat16):
        for spec in [spec_of(8, 4, 8, 4, "nearest", "sequential"), spec_of(16, 8, 20, 10, "even", "final"),
                     spec_of(24, 20, 24, 20, "down", "sequential"), spec_of(12, 6, 12, 6, "zero", "final", inputs=False)]:
            x = (torch.randn(19, 6, generator=rng) * 4).to(dt)
            w, b = (torch.randn(5, 6, generator=rng)).to(dt), (torch.randn(5, generator=rng)).to(dt)
            assert lin_dispatched(x, w, b, spec), (spec, dt)
            n += 1
            if not lin_same(x, w, b, spec=spec):
                bad.append((str(spec), str(dt)))
    # matmul of two activations (quantize_w=False): both operands on the grid
    a, c = torch.randn(6, 5, generator=rng) * 2, torch.randn(5, 3, generator=rng) * 2
    n += 1
    if not same(ref(intrinsic_matmul, a, c, spec="fixed(8,4,even)"), fast(intrinsic_matmul, a, c, spec="fixed(8,4,even)")):
        bad.append("matmul")
    # outside the kernel: declined, and the reference result comes back
    x, w = torch.randn(5, 4, generator=rng), torch.randn(3, 4, generator=rng)
    for spec, xx, ww in [(spec_of(8, 4, 8, 4, "stochastic", "sequential"), x.double(), w.double()),
                         (as_intrinsic("fixed(8,4)"), x.double(), w.double()),
                         (spec_of(32, 200, 32, 200, "nearest", "sequential"), x, w)]:
        assert not lin_dispatched(xx, ww, None, spec), spec
        if not spec.q.stochastic:
            assert lin_same(xx, ww, None, spec=spec)
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""

CONV = COMMON + """
    rng = torch.Generator().manual_seed(1)
    CASES = [  # B, C, H, W, O, kh, kw, stride, padding, dilation, groups
        (2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1),
        (1, 4, 7, 5, 6, 3, 2, (2, 1), (1, 2), (1, 2), 2),
        (2, 2, 6, 6, 3, 1, 1, 2, 0, 1, 1),
        (1, 6, 5, 5, 6, 3, 3, 1, "same", 2, 6),   # depthwise, 'same' padding
        (1, 2, 4, 7, 2, 2, 3, 3, "valid", 1, 1),
    ]
    bad, n = [], 0
    for i, (B, C, H, W_, O, kh, kw, st, pd, dl, g) in enumerate(CASES):
        x = torch.randn(B, C, H, W_, generator=rng) * 3
        w = torch.randn(O, C // g, kh, kw, generator=rng)
        b = torch.randn(O, generator=rng) if i % 2 == 0 else None
        for j, mode in enumerate((MODES * 2)[2 * i % 5:2 * i % 5 + 3]):  # every mode 3 times over the cases
            W, F_, Wa, Fa = [(8, 4, 8, 4), (6, 2, 9, 4), (16, 8, 12, 3), (32, 16, 32, 16), (6, -1, 6, -1)][(i + j) % 5]
            acc = ["sequential", "final"][j % 2]
            spec = spec_of(W, F_, Wa, Fa, mode, acc)
            kw_ = dict(stride=st, padding=pd, dilation=dl, groups=g, spec=spec)
            assert dispatched("fixed_conv2d", x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), g, spec, None), spec
            n += 1
            if not same(ref(intrinsic_conv, x, w, b, **kw_), fast(intrinsic_conv, x, w, b, **kw_)):
                bad.append((i, str(spec)))
    # conv1d and an unbatched input go through the same kernel
    x1, w1 = torch.randn(2, 3, 9, generator=rng) * 2, torch.randn(4, 3, 3, generator=rng)
    n += 1
    if not same(ref(intrinsic_conv, x1, w1, None, stride=2, padding=1, spec="fixed(8,4)"),
                fast(intrinsic_conv, x1, w1, None, stride=2, padding=1, spec="fixed(8,4)")):
        bad.append("conv1d")
    xb, wb = (torch.randn(2, 4, 6, 6, generator=rng) * 3).bfloat16(), torch.randn(4, 2, 3, 3, generator=rng).bfloat16()
    spec = spec_of(16, 8, 16, 8, "nearest", "sequential")
    assert dispatched("fixed_conv2d", xb, wb, None, (1, 1), (1, 1, 1, 1), (1, 1), 2, spec, None)
    n += 1
    if not same(ref(intrinsic_conv, xb, wb, None, padding=1, groups=2, spec=spec),
                fast(intrinsic_conv, xb, wb, None, padding=1, groups=2, spec=spec)):
        bad.append("bfloat16 conv")
    # nearest's one-multiply-add step in the conv loop: exact ties of both signs, zero padding
    kx = torch.tensor([128., -128., 384., -32768., 32767., 1., 0.])[torch.randint(0, 7, (2, 3, 6, 6), generator=rng)]
    kw = torch.tensor([1., -1., 3., -255.])[torch.randint(0, 4, (4, 3, 3, 3), generator=rng)]
    for acc in ["sequential", "final"]:
        spec = spec_of(16, 8, 16, 8, "nearest", acc)
        n += 1
        if not same(ref(intrinsic_conv, kx / 256, kw / 256, None, padding=1, spec=spec),
                    fast(intrinsic_conv, kx / 256, kw / 256, None, padding=1, spec=spec)):
            bad.append(("wide conv", acc))
    x3 = torch.randn(3, 5, 5, generator=rng) * 2
    w3 = torch.randn(2, 3, 3, 3, generator=rng)
    spec = spec_of(8, 4, 8, 4, "even", "sequential", inputs=False)
    n += 1
    if not same(ref(intrinsic_conv, x3, w3, None, padding=1, spec=spec),
                fast(intrinsic_conv, x3, w3, None, padding=1, spec=spec)):
        bad.append("unbatched inputs=False")
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""

STOCH_INTRINSIC = COMMON + """
    rng = torch.Generator().manual_seed(3)
    K, R = 11, 256
    # operands on fixed(8,4)'s grid (Q(x), Q(w) exact) and small (no saturation): only the products round
    xr = torch.randint(-12, 13, (1, K), generator=rng) / 16.0
    x = xr.repeat(R, 1)
    w = torch.randint(-12, 13, (3, K), generator=rng) / 16.0
    exact = (xr.double() @ w.double().t())[0]
    # the variance of a sum of K independent one-step roundings: sum of p (1 - p) steps**2
    # (draws shared or correlated across k, e.g. one Philox word for several products
    # without fields of their own, would change it)
    frac = ((xr.double().t() * w.double().t()) * 16) % 1.0  # [K, 3]: the products' rounding remainders
    var_exact = (frac * (1 - frac)).sum(0) * 2.0 ** -8
    for acc in ["sequential", "final"]:
        spec = spec_of(8, 4, 16, 4, "stochastic", acc)
        assert lin_dispatched(x, w, None, spec), spec
        torch.manual_seed(7); y1 = fast(intrinsic_linear, x, w, None, spec=spec)
        torch.manual_seed(7); y2 = fast(intrinsic_linear, x, w, None, spec=spec)
        torch.manual_seed(8); y3 = fast(intrinsic_linear, x, w, None, spec=spec)
        assert torch.equal(y1, y2), "torch.manual_seed must repeat a run"
        assert not torch.equal(y1, y3), "another seed must give other draws"
        lo = ref(intrinsic_linear, x, w, None, spec=spec_of(8, 4, 16, 4, "down", acc))
        hi = ref(intrinsic_linear, x, w, None, spec=spec_of(8, 4, 16, 4, "up", acc))
        assert bool(((y1 >= lo) & (y1 <= hi)).all()), "between the all-down and all-up results"
        assert bool((lo < hi).any())
        # unbiased: each of the K products rounds by at most one step of 2**-4, variance <= 1/4 step**2
        sigma = math.sqrt(K * 0.25 / R) * 2 ** -4
        err = (y1.double().mean(0) - exact).abs().max().item()
        assert err <= 5 * sigma, (acc, err, sigma)
        var = y1.double().var(0)  # relative sd of a sample variance: about sqrt(2 / R) = 0.09
        assert bool(((var - var_exact).abs() <= 0.45 * var_exact + 1e-12).all()), (acc, var, var_exact)
    # inputs off the grid: their stochastic rounding (Philox in the operand pass) and the
    # products' are unbiased, so the mean of R identical rows is x . w within 5 sigma
    # (per output sum_k (w_k**2 + 1) / 4 steps**2 of variance at most); repeatable
    xo = (torch.randint(-12, 13, (1, K), generator=rng) + torch.rand(1, K, generator=rng)) / 16.0
    wo = torch.randint(1, 5, (3, K), generator=rng) / 16.0  # one sign: a biased input rounding would add up
    spec = spec_of(8, 4, 16, 4, "stochastic", "sequential")
    torch.manual_seed(5); o1 = fast(intrinsic_linear, xo.repeat(R, 1), wo, None, spec=spec)
    torch.manual_seed(5); o2 = fast(intrinsic_linear, xo.repeat(R, 1), wo, None, spec=spec)
    assert torch.equal(o1, o2)
    exact_o = (xo.double() @ wo.double().t())[0]
    sig_o = torch.sqrt(((wo.double() ** 2).sum(1) + K) * 0.25 / R) * 2 ** -4
    assert bool(((o1.double().mean(0) - exact_o).abs() <= 5 * sig_o).all()), (o1.double().mean(0), exact_o, sig_o)
    assert o1.unique(dim=0).shape[0] > 1, "the rows' draws differ"
    # the conv kernel draws too (repeatable, between down and up)
    xc = torch.randint(-12, 13, (2, 2, 5, 5), generator=rng) / 16.0
    wc = torch.randint(-12, 13, (3, 2, 3, 3), generator=rng) / 16.0
    spec = spec_of(8, 4, 16, 4, "stochastic", "sequential")
    assert dispatched("fixed_conv2d", xc, wc, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, spec, None)
    torch.manual_seed(9); c1 = fast(intrinsic_conv, xc, wc, None, padding=1, spec=spec)
    torch.manual_seed(9); c2 = fast(intrinsic_conv, xc, wc, None, padding=1, spec=spec)
    lo = ref(intrinsic_conv, xc, wc, None, padding=1, spec=spec_of(8, 4, 16, 4, "down", "sequential"))
    hi = ref(intrinsic_conv, xc, wc, None, padding=1, spec=spec_of(8, 4, 16, 4, "up", "sequential"))
    assert torch.equal(c1, c2) and bool(((c1 >= lo) & (c1 <= hi)).all()) and not torch.equal(lo, hi)
    # a k loop in runs (intrinsic.SKIP_SUM_CLAMP): with A = fixed(9,4) and every |product| <=
    # 10 the first run is 25 rows (255 // 10), so the Philox word whose four fields serve
    # k = 24..27 is carried from one run into the next: unbiased, and the variance of
    # independent draws
    K = 40
    xq = torch.randint(-12, 13, (1, K), generator=rng) / 16.0
    w = torch.randint(-12, 13, (3, K), generator=rng) / 16.0
    xk = xq.repeat(R, 1)
    exact = (xq.double() @ w.double().t())[0]
    frac = ((xq.double().t() * w.double().t()) * 16) % 1.0
    var_q = (frac * (1 - frac)).sum(0) * 2.0 ** -8
    spec = spec_of(8, 4, 9, 4, "stochastic", "sequential")
    lo = ref(intrinsic_linear, xk, w, None, spec=spec_of(8, 4, 9, 4, "down", "sequential"))
    hi = ref(intrinsic_linear, xk, w, None, spec=spec_of(8, 4, 9, 4, "up", "sequential"))
    assert bool((lo.abs() < 15).all() and (hi.abs() < 15).all()), "no saturation"
    torch.manual_seed(7); y1 = fast(intrinsic_linear, xk, w, None, spec=spec)
    sigma = math.sqrt(K * 0.25 / R) * 2 ** -4
    err = (y1.double().mean(0) - exact).abs().max().item()
    assert err <= 5 * sigma, ("runs", err, sigma)
    var = y1.double().var(0)
    assert bool(((var - var_q).abs() <= 0.45 * var_q + 1e-12).all()), ("runs", var, var_q)
    print("STOCH OK")
"""

FLOAT_INTRINSIC = COMMON + """
    rng = torch.Generator().manual_seed(4)
    FM = ["even", "nearest", "down", "up", "zero"]

    def fspec(q, a, mode, acc, amode=None, inputs=True):
        E, M_, fn, inf = q
        Ea, Ma, fna, infa = a
        return Intrinsic(qlab.Float(E, M_, mode, fn=fn, inf=inf), acc=qlab.Float(Ea, Ma, amode or mode, fn=fna, inf=infa),
                         accumulate=acc, inputs=inputs)

    FP16, BF16, E4M3, E5M2 = (5, 10, False, False), (8, 7, False, False), (4, 3, True, False), (5, 2, False, False)
    CASES = [  # Q, A, input scale: float32 products, float64 products, saturation, overflow to inf
        (FP16, FP16, 8.0), (E4M3, E4M3, 6.0), (E5M2, FP16, 3.0), (E4M3, (5, 7, False, False), 20.0),
        (BF16, BF16, 1e3), ((3, 1, False, True), (3, 2, False, True), 2.0), ((6, 5, False, False), (8, 12, False, False), 1e4),
        ((2, 1, False, False), (4, 2, False, False), 0.7),
    ]
    bad, n, differ = [], 0, 0
    for i, (qf, af, sc) in enumerate(CASES):
        for j, mode in enumerate((FM * 2)[i % 5:i % 5 + 3]):
            M, K, N = [int(v) for v in torch.randint(1, 11, (3,), generator=rng)]
            M += 17 * (j % 2)
            x = torch.randn(M, K, generator=rng) * sc
            w = torch.randn(N, K, generator=rng) * sc / 2
            b = torch.randn(N, generator=rng) * sc if (i + j) % 2 else None
            if j == 2:  # specials: NaN, infinities, signed zeros, tiny values
                x.view(-1)[: 5] = torch.tensor([math.nan, math.inf, -0.0, 1e-30, -math.inf])[: x.numel()]
            outs = {}
            for acc in ["sequential", "final"]:
                spec = fspec(qf, af, mode, acc)
                if acc == "final" and qf[0] >= 6:  # beyond an exact int64 sum (E >= 6): declined, reference
                    assert not lin_dispatched(x, w, b, spec), spec
                    continue
                assert lin_dispatched(x, w, b, spec), spec
                r, f = lin_pair(x, w, b, spec=spec)
                n += 1
                outs[acc] = r
                if not same(r, f):
                    bad.append((str(spec), M, K, N))
            if len(outs) == 2:
                differ += not same(outs["sequential"], outs["final"])
    assert differ >= 3, differ
    # binary16 / bfloat16, nearest even, sequential: on CUDA each MAC is native 16-bit
    # arithmetic (a product and a sum rounded by the hardware, NaN-keeping clamps where the
    # format saturates).  Overflow and saturation, subnormal products, NaN/inf, signed
    # zeros, with and without inf; then ties of a product and of a sum.
    for qf in [FP16, BF16, (5, 10, False, True)]:
        spec = fspec(qf, qf, "even", "sequential")
        for sc in [1.0, 300.0 if qf[0] == 5 else 1e20, 1e-3 if qf[0] == 5 else 1e-20]:
            x = torch.randn(19, 13, generator=rng) * sc
            w = torch.randn(6, 13, generator=rng) * sc
            b = torch.randn(6, generator=rng) * sc
            if sc == 1.0:
                x[0, :5] = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0])
                x[1], w[0] = -0.0, -0.0  # sums of signed zeros
            assert lin_dispatched(x, w, b, spec), spec
            n += 1
            if not lin_same(x, w, b, spec=spec):
                bad.append(("16-bit", str(spec), sc))
    # fp8 e4m3 products with an exact final sum: on CUDA (sm_89+) the hardware's e4m3
    # conversion and an int32 sum (intrinsic._fp8_final).  Saturating, tied, subnormal and
    # NaN products; on CUDA also K = 9362 products of 448 (the sum just below 2**31 steps)
    spec = as_intrinsic("intrinsic(fp8e4m3,acc=fp16,accumulate=final)")
    fp8 = []
    for sc, K in [(1.0, 37), (30.0, 41), (0.02, 29), (6.0, 300)]:
        x, w = torch.randn(19, K, generator=rng) * sc, torch.randn(5, K, generator=rng) * sc
        if sc == 1.0:
            x[0, 3], w[2, 5] = math.nan, math.nan
            x[1, :4] = torch.tensor([1.125, 1.0625, 2 ** -9, 3 * 2 ** -10])
        fp8.append((x, w))
    if DEV == "cuda":
        big = torch.full((2, 9362), 22.0)
        big[1] = -22.0
        fp8.append((big, torch.full((3, 9362), 22.0)))
    for x, w in fp8:
        assert lin_dispatched(x, w, None, spec), spec
        n += 1
        if not lin_same(x, w, None, spec=spec):
            bad.append(("fp8 final", x.shape[1]))
    # fp8 sequential presets (Q = A, nearest even): on CUDA (sm_89+) the hardware's fp8
    # conversion rounds each product and each float32 sum (intrinsic._f8_loop).  Saturating,
    # subnormal, tied and NaN products; e5m2 sums inexact in float32 (2**15 + 2**-16)
    for name, big, tiny in [("fp8e4m3", 40.0, 0.05), ("fp8e5m2", 600.0, 2e-3)]:
        spec = as_intrinsic(name)
        f8 = []
        for sc in [1.0, big, tiny, 8.0]:
            x, w = torch.randn(19, 23, generator=rng) * sc, torch.randn(6, 23, generator=rng) * sc
            if sc == 1.0:
                x[0, 3], w[2, 5] = math.nan, math.nan
                x[1, :3] = torch.tensor([1.125, 1.0625, 1.1875])
            f8.append((x, w))
        f8.append((torch.tensor([[2.0 ** 8, 2.0 ** -8, -2.0 ** 8, 2.0 ** -8]]),
                   torch.tensor([[2.0 ** 7, 2.0 ** -8, 2.0 ** 7, 2.0 ** -8]])))
        for x, w in f8:
            assert lin_dispatched(x, w, None, spec), spec
            n += 1
            if not lin_same(x, w, None, spec=spec):
                bad.append(("fp8 sequential", name, tuple(x.shape)))
    # a partial sum that saturates and comes back: 6e4 + 6e4 -> 65504, - 6e4 -> 5504 (bf16
    # alike at 3e38).  Without clamps the second sum is inf and stays so: the tile must be
    # redone with them (intrinsic.HW16_RETRY); the other row never leaves the range
    for qf, big in [(FP16, 6e4), (BF16, 3e38)]:
        spec = fspec(qf, qf, "even", "sequential")
        x = torch.tensor([[big, big, -big], [1.0, 2.0, 3.0]])
        w = torch.tensor([[1.0, 1.0, 1.0]])
        r, f = lin_pair(x, w, None, spec=spec)
        assert 0 < r[0, 0].item() < big, (qf, r)
        n += 1
        if not same(r, f):
            bad.append(("16-bit saturating sum", str(spec)))
    u16 = {FP16: 2.0 ** -10, BF16: 2.0 ** -7}
    for qf, u in u16.items():
        spec = fspec(qf, qf, "even", "sequential")
        x = torch.tensor([[1.0, u / 2], [1.0 + u, u / 2], [-1.0, -u / 2], [1.0 + u, 0.0], [-1.0 - u, 0.0]])
        w = torch.tensor([[1.0, 1.0], [1.5, 0.0]])  # sums 1 + u/2 (a tie: 1), products (1 + u) * 1.5 (a tie: up)
        r, f = lin_pair(x, w, None, spec=spec)
        assert r[0, 0].item() == 1.0 and r[1, 0].item() == 1.0 + 2 * u and r[3, 1].item() == 1.5 + 2 * u, (qf, r)
        n += 1
        if not same(r, f):
            bad.append(("16-bit ties", str(spec)))
    # inputs=False (float input times Q(w), exact in float64), another accumulator mode, fp16/bf16 tensors
    for mode in FM:
        spec = fspec(E4M3, FP16, mode, ["sequential", "final"][FM.index(mode) % 2], inputs=False)
        x, w, b = torch.randn(7, 6, generator=rng) * 5, torch.randn(4, 6, generator=rng), torch.randn(4, generator=rng)
        assert lin_dispatched(x, w, b, spec), spec
        n += 1
        if not lin_same(x, w, b, spec=spec):
            bad.append(str(spec))
    for dt in [torch.float16, torch.bfloat16]:
        spec = fspec(E5M2, FP16, "even", "sequential", amode="zero")
        x, w = (torch.randn(5, 9, generator=rng) * 4).to(dt), (torch.randn(3, 9, generator=rng)).to(dt)
        assert lin_dispatched(x, w, None, spec), spec
        n += 1
        if not lin_same(x, w, None, spec=spec):
            bad.append(("dtype", str(dt)))
    # conv: float32 and float64 products, groups, padding, stride, dilation
    for i, (qf, af, acc, kw_) in enumerate([
            (FP16, FP16, "sequential", dict(padding=1)), (E4M3, (5, 6, False, False), "final", dict(stride=2, groups=2)),
            (BF16, BF16, "sequential", dict(padding="same", dilation=2)), (E5M2, E5M2, "final", dict(padding=(0, 1)))]):
        g = kw_.get("groups", 1)
        x = torch.randn(2, 4, 6, 5, generator=rng) * 3
        w = torch.randn(6, 4 // g, 3, 2, generator=rng)
        b = torch.randn(6, generator=rng) if i % 2 else None
        spec = fspec(qf, af, FM[i], acc)
        assert dispatched("float_conv2d", x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), g, spec, None), spec
        n += 1
        if not same(ref(intrinsic_conv, x, w, b, spec=spec, **kw_), fast(intrinsic_conv, x, w, b, spec=spec, **kw_)):
            bad.append(("conv", i, str(spec)))
    # crafted: only a sum or product rounded to odd (not to nearest) in float32 gets these right
    crafted = [([[1024.0, 2.0 ** -20]], [[1.0, 1.0]], FP16, FP16, True, 1025.0),  # 1024 + 2**-20, rounded up
               ([[11184811 * 2.0 ** -23]], [[3.0]], E4M3, FP16, False, 4.5)]  # 4 + 2**-23 (inputs=False), up
    for xv, wv, qf, af, inputs, up in crafted:
        for sign in (1, -1):
            x, w = torch.tensor(xv) * sign, torch.tensor(wv)
            for mode in ["up", "down", "zero"]:
                for acc in ["sequential", "final"]:
                    spec = fspec(qf, af, mode, acc, inputs=inputs)
                    assert lin_dispatched(x, w, None, spec), spec
                    r, f = lin_pair(x, w, None, spec=spec)
                    if mode == "up" and sign == 1:
                        assert r.item() == up, (str(spec), r.item())
                    n += 1
                    if not same(r, f):
                        bad.append(("crafted", str(spec), sign, r.item(), f.item()))
    # A = binary32, nearest even (FloatPlan.a32: fp16/bf16/fp8 products summed in float32):
    # each sum one float32 addition, clamped where A saturates; final: the exact int64 sum
    # converted (nearest even).  Specials, subnormal sums (Q = float(8,10) at 1e-20), sums past
    # float32's range (1e19 squared), with and without inf; bf16 products below 2**-126 and
    # past float32's range (formed in float32 on CUDA); conv; then ties of both sums
    F32, F32I, Q810 = (8, 23, False, False), (8, 23, False, True), (8, 10, False, False)
    for qf, af, sc, accs in [(FP16, F32, 8.0, ("sequential", "final")), (BF16, F32, 1e3, ("sequential",)),
                             (E4M3, F32, 6.0, ("sequential", "final")), (E5M2, F32I, 3.0, ("sequential", "final")),
                             (Q810, F32, 1e19, ("sequential",)), (Q810, F32I, 1e19, ("sequential",)),
                             (Q810, F32, 1e-20, ("sequential",)), ((5, 10, False, True), F32I, 300.0, ("sequential",)),
                             (BF16, F32, 1e-20, ("sequential",)), ((8, 7, False, True), F32I, 1e20, ("sequential",))]:
        x, w = torch.randn(21, 17, generator=rng) * sc, torch.randn(6, 17, generator=rng) * sc
        b = torch.randn(6, generator=rng) * sc
        x[0, :5] = torch.tensor([math.nan, math.inf, -0.0, 1e-30, -math.inf])
        x[1, :2], x[2, :1] = math.inf, -math.inf  # inf - inf: NaN
        for acc in accs:
            spec = fspec(qf, af, "even", acc)
            assert lin_dispatched(x, w, b, spec), spec
            n += 1
            if not lin_same(x, w, b, spec=spec):
                bad.append(("A = float32", str(spec)))
            if acc == "sequential":
                xc, wc = torch.randn(2, 4, 5, 6, generator=rng) * sc, torch.randn(6, 2, 3, 2, generator=rng) * sc
                xc[0, 0, 0, :2] = torch.tensor([math.nan, math.inf])
                kw_ = dict(padding=1, groups=2, spec=spec)
                n += 1
                if not same(ref(intrinsic_conv, xc, wc, b, **kw_), fast(intrinsic_conv, xc, wc, b, **kw_)):
                    bad.append(("A = float32 conv", str(spec)))
    # Q = binary32 too (FloatPlan.q32): each product the exact float64 one rounded to float32;
    # with A = Q a float32 dot product in k order.  Products past float32's range and below
    # its subnormals, NaN/inf, inputs=False, another A; then a product tied at the last bit
    for af, sc, inputs in [(F32, 1.0, True), (F32I, 1e20, True), (F32, 1e-23, False), (FP16, 1.0, True),
                           ((6, 12, False, False), 30.0, False)]:
        x, w = torch.randn(13, 29, generator=rng) * sc, torch.randn(5, 29, generator=rng) * sc
        b = torch.randn(5, generator=rng) * sc
        x[0, :4] = torch.tensor([math.nan, math.inf, -0.0, -math.inf])
        spec = fspec(F32 if af != F32I else F32I, af, "even", "sequential", inputs=inputs)
        assert lin_dispatched(x, w, b, spec), spec
        n += 1
        if not lin_same(x, w, b, spec=spec):
            bad.append(("Q = float32", str(spec)))
    u = 2.0 ** -12  # (1 + u)**2 = 1 + 2**-11 + 2**-24: a tie at float32's last bit (even: down)
    x, w = torch.tensor([[1 + u, 0.0], [1 + u, -(1 + u)]]), torch.tensor([[1 + u, 0.0], [0.0, 1 + 3 * u]])
    r, f = lin_pair(x, w, None, spec=fspec(F32, F32, "even", "sequential"))
    assert r[0, 0].item() == 1 + 2 * u, r
    n += 1
    if not same(r, f):
        bad.append(("Q = float32 tie", f.tolist()))
    # A = fp16 / bf16 / fp8 with nearest even and Q no more precise (intrinsic._a_native): on
    # CUDA each sum s + p in float32, rounded by A's conversion.  Sums that saturate A or
    # overflow it to inf, sums in A's subnormal range, NaN/inf, a bias, conv
    FP16I = (5, 10, False, True)
    for qf, af, sc in [(E4M3, FP16, 6.0), (E4M3, BF16, 6.0), (E5M2, FP16I, 40.0), (BF16, FP16, 300.0), (E5M2, E4M3, 3.0),
                       (BF16, FP16, 1e-4), (E5M2, BF16, 3.0), ((5, 7, False, False), FP16, 2.0)]:
        x, w = torch.randn(19, 23, generator=rng) * sc, torch.randn(6, 23, generator=rng) * sc
        b = torch.randn(6, generator=rng) * sc
        x[0, :4] = torch.tensor([math.nan, math.inf, -0.0, -math.inf])
        spec = fspec(qf, af, "even", "sequential")
        assert lin_dispatched(x, w, b, spec), spec
        n += 1
        if not lin_same(x, w, b, spec=spec):
            bad.append(("A by conversion", str(spec)))
    xc, wc = torch.randn(2, 4, 5, 6, generator=rng) * 6, torch.randn(6, 2, 3, 2, generator=rng) * 6
    spec = fspec(E4M3, FP16, "even", "sequential")
    n += 1
    if not same(ref(intrinsic_conv, xc, wc, None, padding=1, groups=2, spec=spec),
                fast(intrinsic_conv, xc, wc, None, padding=1, groups=2, spec=spec)):
        bad.append(("A by conversion, conv", str(spec)))
    # ties at float32's last bit, seen through the output's rounding to fp16 (y = Q(A(...))):
    # products 1, 2**-11 and 2**-24; 1 + 2**-11 is a midpoint of fp16 (even: 1)
    t, h = 2.0 ** -12, 2.0 ** -11
    x = torch.tensor([[1.0, h, t, 0.0], [1.0, t, h, t], [-1.0, -h, -t, 0.0]])
    w = torch.tensor([[1.0, 1.0, t, 0.0], [1.0, t, 1.0, t]])
    for acc, want in [("sequential", [1.0, 1.0, -1.0]), ("final", [1.0, 1.0 + 2 * h, -1.0])]:
        spec = fspec(FP16, F32, "even", acc)  # sequential: each + 2**-24 a tie (even: down);
        r, f = lin_pair(x, w, None, spec=spec)  # final: 1 + h + 2**-23 is exact, above the midpoint
        assert [r[0, 0].item(), r[1, 1].item(), r[2, 0].item()] == want, (acc, r)
        n += 1
        if not same(r, f):
            bad.append(("A = float32 ties", acc, f.tolist()))
    # outside the kernel: declined, the reference result comes back
    x, w = torch.randn(5, 4, generator=rng), torch.randn(3, 4, generator=rng)
    for spec, xx in [(as_intrinsic("fp16"), x.double()), (fspec(BF16, (8, 7, False, True), "even", "sequential"), x),
                     (as_intrinsic("float(8,22)"), x), (as_intrinsic("intrinsic(float(8,23),accumulate=final)"), x),
                     (as_intrinsic("log(8,0)"), x)]:
        assert not lin_dispatched(xx, w.to(xx.dtype), None, spec), spec
        assert lin_same(xx, w.to(xx.dtype), None, spec=spec), spec
    # stochastic: repeatable under a seed, between the all-down and all-up results
    spec = fspec(E4M3, E4M3, "stochastic", "sequential")
    x, w = torch.randn(64, 6, generator=rng) * 3, torch.randn(5, 6, generator=rng)
    torch.manual_seed(3); s1 = fast(intrinsic_linear, x, w, None, spec=spec)
    torch.manual_seed(3); s2 = fast(intrinsic_linear, x, w, None, spec=spec)
    torch.manual_seed(4); s3 = fast(intrinsic_linear, x, w, None, spec=spec)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    # empty: K = 0 (y = Q(A(Q(b)))), no rows, no batch -- fixed and float kernels
    for spec in ["fixed(8,4)", "intrinsic(fixed(8,4),accumulate=final)", "fp16", "intrinsic(fp8e4m3,acc=fp16,accumulate=final)"]:
        b = torch.tensor([1.0, -2.5, 0.3, 100.0])
        for args in [(torch.randn(3, 0), torch.randn(4, 0), b), (torch.randn(0, 5), torch.randn(4, 5), None)]:
            n += 1
            if not lin_same(*args, spec=spec):
                bad.append(("empty", spec, tuple(args[0].shape)))
        xe, we = torch.randn(0, 2, 5, 5), torch.randn(3, 2, 3, 3)
        n += 1
        if not same(ref(intrinsic_conv, xe, we, None, padding=1, spec=spec), fast(intrinsic_conv, xe, we, None, padding=1, spec=spec)):
            bad.append(("empty conv", spec))
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""

ELEMENTWISE = {"fixed": FIXED, "stochastic": STOCHASTIC, "float": FLOAT, "log": LOG}


# The k loops without prefetch (intrinsic.PREFETCH "auto" takes them for large launches;
# the sections above force prefetch on): a cross-section of what they cover -- in-range,
# clamping, 64-bit multiply-add, int64, F < 0, inputs=False, bias, ragged tiles; conv with
# stride, padding, dilation, groups and 1x1/2x3 kernels; stochastic repeatability and
# bounds; float formats sequential and final with NaN/inf.  Few specs, few compiles.
NO_PREFETCH = COMMON + """
    from qlab.ext.triton import intrinsic as _ti
    rng = torch.Generator().manual_seed(11)
    bad, n = [], 0
    for W, F_, Wa, Fa, sc, mode, acc, inputs in [
        (8, 4, 8, 4, 2.0, "nearest", "sequential", True), (8, 4, 8, 4, 40.0, "even", "sequential", True),
        (16, 8, 16, 8, 4.0, "nearest", "sequential", True), (16, 8, 12, 3, 4.0, "down", "final", True),
        (32, 16, 32, 16, 3.0, "zero", "sequential", True), (8, -1, 8, -1, 40.0, "up", "final", True),
        (8, 4, 10, 5, 3.0, "nearest", "sequential", False)]:
        x = torch.randn(29, 11, generator=rng) * sc
        w = torch.randn(7, 11, generator=rng) * sc / 2
        b = torch.randn(7, generator=rng) * sc
        spec = spec_of(W, F_, Wa, Fa, mode, acc, inputs=inputs)
        assert lin_dispatched(x, w, b, spec), spec
        n += 1
        if not lin_same(x, w, b, spec=spec):
            bad.append(("linear", str(spec)))
    for B, C, H, W_, O, kh, kw, st, pd, dl, g, spec in [
        (2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1, spec_of(16, 8, 16, 8, "nearest", "sequential")),
        (1, 4, 7, 5, 6, 2, 3, (2, 1), (1, 2), (1, 2), 2, spec_of(8, 4, 8, 4, "even", "final")),
        (2, 2, 6, 6, 3, 1, 1, 2, 0, 1, 1, spec_of(6, 2, 9, 4, "down", "sequential"))]:
        x = torch.randn(B, C, H, W_, generator=rng) * 3
        w = torch.randn(O, C // g, kh, kw, generator=rng)
        kw_ = dict(stride=st, padding=pd, dilation=dl, groups=g, spec=spec)
        n += 1
        if not same(ref(intrinsic_conv, x, w, None, **kw_), fast(intrinsic_conv, x, w, None, **kw_)):
            bad.append(("conv", str(spec), kh, kw))
    # the 64-bit multiply step's other PTX form (WIDE_ASM 1; compiled CUDA only): exact ties,
    # both loops (fixed(8,4) on N(0, 10**2) saturates its products)
    _asm, _ti.WIDE_ASM = _ti.WIDE_ASM, 1
    try:
        for W, F_, sc in [(16, 8, 4.0), (8, 4, 10.0)]:
            x = torch.randint(-64, 65, (21, 9), generator=rng) * (sc / 64)
            w = torch.randint(-64, 65, (5, 9), generator=rng) * (sc / 64)
            spec = spec_of(W, F_, W, F_, "nearest", "sequential")
            n += 1
            if not lin_same(x, w, None, spec=spec):
                bad.append(("WIDE_ASM 1", str(spec)))
    finally:
        _ti.WIDE_ASM = _asm
    x = torch.randint(-12, 13, (64, 9), generator=rng) / 16.0
    w = torch.randint(-12, 13, (3, 9), generator=rng) / 16.0
    spec = spec_of(8, 4, 16, 4, "stochastic", "sequential")
    torch.manual_seed(7); y1 = fast(intrinsic_linear, x, w, None, spec=spec)
    torch.manual_seed(7); y2 = fast(intrinsic_linear, x, w, None, spec=spec)
    lo = ref(intrinsic_linear, x, w, None, spec=spec_of(8, 4, 16, 4, "down", "sequential"))
    hi = ref(intrinsic_linear, x, w, None, spec=spec_of(8, 4, 16, 4, "up", "sequential"))
    assert torch.equal(y1, y2) and bool(((y1 >= lo) & (y1 <= hi)).all()) and not torch.equal(lo, hi)
    for fs in ["fp16", "bf16", "fp8e4m3", "intrinsic(fp8e4m3,acc=fp16,accumulate=final)",
               "intrinsic(float(5,2,nearest),acc=float(6,4,down))", "intrinsic(fp16,accumulate=final)",
               "intrinsic(fp16,acc=float(8,23,even))", "intrinsic(float(8,23))"]:
        x = torch.randn(23, 13, generator=rng) * 30
        w = torch.randn(5, 13, generator=rng) * 30
        x[0, :3] = torch.tensor([math.nan, math.inf, -0.0])
        assert lin_dispatched(x, w, None, fs), fs
        n += 1
        if not lin_same(x, w, None, spec=fs):
            bad.append(("float", fs))
    # the large launches' tile (128x32, 4 warps: operands staged through shared memory; the
    # small shapes above take 32x32 on a GPU), without prefetch as "auto" runs it there
    _block = _ti._block
    _ti._block = lambda *a, **k: (128, 32)
    try:
        for fs in ["fixed(16,8)", "fixed(8,4)", "intrinsic(fixed(8,4),accumulate=final)", "fp16", "bf16", "fp8e4m3",
                   "intrinsic(fp8e4m3,acc=fp16,accumulate=final)", "intrinsic(fp16,acc=float(8,23,even))"]:
            x = torch.randn(150, 21, generator=rng) * 12
            w = torch.randn(37, 21, generator=rng) * 12
            n += 1
            if not lin_same(x, w, None, spec=fs):
                bad.append(("128x32", fs))
        x = torch.randn(150, 21, generator=rng) * 300  # fp16 products overflow: the clamped second pass
        x[:64] /= 300  # the first row block stays in range: its tiles skip that pass
        w = torch.randn(37, 21, generator=rng) * 300
        n += 1
        if not lin_same(x, w, None, spec="fp16"):
            bad.append(("128x32", "fp16 overflow"))
        xc, wc = torch.randn(2, 5, 9, 8, generator=rng) * 3, torch.randn(33, 5, 3, 3, generator=rng)
        for fs in ["fixed(16,8)", "fp16"]:
            n += 1
            if not same(ref(intrinsic_conv, xc, wc, None, padding=1, spec=fs),
                        fast(intrinsic_conv, xc, wc, None, padding=1, spec=fs)):
                bad.append(("128x32 conv", fs))
    finally:
        _ti._block = _block
    # the wide tile's launch pair (intrinsic.WIDE_TILE, 128x128 with 8 warps, and 64x128 with
    # 4, for the loops without product clamps; the usual tile for the clamping loop: each
    # stores only the outputs its loop serves), prefetch off and on: ragged row and column
    # blocks, products in range (the wide launch) and saturating (fixed(8,4) at scale 12: the
    # other one), runs without sum clamps (weights N(0, 1/K)), inputs=False (one launch)
    _wide = _ti._wide_block
    try:
        for tile, pre in [((128, 128, 8), False), ((128, 128, 8), True), ((64, 128, 4), True)]:
            _ti._wide_block = lambda *a, **k: tile
            _ti.PREFETCH = pre
            for fs, xs, ws, N in [("fixed(16,8)", 12, 12, 37), ("fixed(8,4)", 12, 12, 150),
                                  ("fixed(8,4)", 0.5, 0.5, 150),
                                  ("intrinsic(fixed(8,4),accumulate=final)", 12, 12, 37),
                                  ("intrinsic(fixed(16,8),acc=fixed(20,8))", 3, 0.2, 150),
                                  ("intrinsic(fixed(8,4),inputs=False)", 2, 2, 37)]:
                x = torch.randn(150, 45, generator=rng) * xs
                w = torch.randn(N, 45, generator=rng) * ws
                b = torch.randn(N, generator=rng)
                assert lin_dispatched(x, w, b, fs), fs
                n += 1
                if not lin_same(x, w, b, spec=fs):
                    bad.append(("wide pair", tile, pre, fs, xs))
    finally:
        _ti._wide_block = _wide
        _ti.PREFETCH = False
    print("CASES", n, "BAD", bad)
    assert not bad, bad
"""


def _switches(module: str = "intrinsic", **values) -> str:
    """Script lines setting qlab.ext.triton.<module>'s switches (sections run in one process)."""
    lines = [f"\n    from qlab.ext.triton import {module} as _sw"] + [f"    _sw.{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# (prefetch, body): each intrinsic section sets the k loop's prefetch itself
_INTRINSIC = {"linear": (True, LINEAR), "conv": (True, CONV), "intrinsic_stochastic": (True, STOCH_INTRINSIC),
              "float_intrinsic": (True, FLOAT_INTRINSIC), "no_prefetch": (False, NO_PREFETCH)}
INTRINSIC = {name: _switches(PREFETCH=on) + body for name, (on, body) in _INTRINSIC.items()}

# Triage of a section that fails on a GPU (bench/gpu_check.py): the section again with one
# switch back at its state before a change made without a GPU (sessions 5-9), and with all
# of them at once; the variants that pass name the change to suspect.
_OLD_INTRINSIC = dict(WIDE_ASM=1, NUM_WARPS=4, WIDE_STEP=False, SKIP_PRODUCT_CLAMP=False, FUSED_GRID_INTS=False,
                      SHARE_DRAWS=False, FLOAT_HW16=False, HW16_RETRY=False, FLOAT_FP8=False, FLOAT_QHW=False,
                      SKIP_SUM_CLAMP=False, PAIR_SUM=False)


def variants(name: str, only: tuple[str, ...] | None = None) -> dict[str, str]:
    """{label: section body} for triage of check section ``name`` (ELEMENTWISE or
    INTRINSIC); ``only`` keeps the labels that start with one of its strings."""
    if name in ELEMENTWISE:
        out = {"elementwise.PHILOX4=False": _switches("elementwise", PHILOX4=False) + ELEMENTWISE[name]}
    else:
        on, body = _INTRINSIC[name]
        sw = {f"WIDE_ASM={v}": dict(WIDE_ASM=v) for v in (1, 0)}
        sw[f"PREFETCH={not on}"] = dict(PREFETCH=not on)
        sw.update({f"{k}={v}": {k: v} for k, v in _OLD_INTRINSIC.items() if k != "WIDE_ASM"})
        sw["all of them (WIDE_ASM=0, no prefetch, 4 warps, ...)"] = dict(_OLD_INTRINSIC, WIDE_ASM=0, PREFETCH=False)
        out = {label: _switches(PREFETCH=on) + _switches(**v) + body for label, v in sw.items()}
    return {k: v for k, v in out.items() if only is None or k.startswith(only)}
