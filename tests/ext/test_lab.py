"""Evaluation, sweeps and the per-layer search (qlab.ext.lab), on tiny models with known answers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import qlab
from qlab.ext import data, evaluation, lab, search, zoo
from qlab.ext.store import ResultCache
from tests.core import reference as ref

torch.set_num_threads(1)


# -- a tiny model with a known answer ----------------------------------------------------
# Two inputs on the 1/16 grid in [-5.5, 5.5]; the label is the larger one (never a tie);
# the model is the identity.  Quantized, the prediction is argmax(q(x)) (first index on a
# tie), so a Python reference computes every accuracy exactly.

def _pairs_dataset(n=160, seed=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-88, 89, (n,), generator=g)
    gap = torch.randint(1, 40, (n,), generator=g) * torch.where(torch.rand(n, generator=g) < 0.5, 1, -1)
    gap[: n // 4] = torch.where(gap[: n // 4] > 0, 1, -1)  # a quarter differ by one step of 1/16
    b = (a + gap).clamp(-88, 88)
    b = torch.where(b == a, a - 1, b)
    x = torch.stack([a, b], 1).float() / 16
    labels = (x[:, 1] > x[:, 0]).long()
    return data.Dataset(x.reshape(n, 1, 1, 2), labels, "pairs", [0, 1])


def _identity_model():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    return nn.Sequential(nn.Flatten(), lin).eval()


def _ref_correct(ds, W, F, rounding="nearest"):
    right = 0
    for (x0, x1), y in zip(ds.images.reshape(-1, 2).tolist(), ds.labels.tolist()):
        q0, q1 = ref.fixed(x0, W, F, rounding), ref.fixed(x1, W, F, rounding)
        right += int((1 if q1 > q0 else 0) == y)
    return right


def test_evaluate_float_and_plan_match_reference():
    ds, model = _pairs_dataset(), _identity_model()
    assert lab.evaluate(model, ds) == 1.0
    for W, F in [(4, 2), (8, 2), (8, 4), (6, 1), (5, 0)]:
        plan = qlab.Plan(extrinsic={"*": f"fixed({W},{F},nearest)"})
        assert lab.evaluate(model, ds, plan, batch_size=7) == _ref_correct(ds, W, F) / len(ds), (W, F)
        intr = qlab.Plan(intrinsic={"1": f"fixed({W},{F},nearest)"})
        if W - F >= 2:  # the weight 1 is representable: the layer computes q(x) exactly
            assert lab.evaluate(model, ds, intr) == _ref_correct(ds, W, F) / len(ds), (W, F)


def test_relative_accuracy_uses_identical_subsets():
    ds = data.digits("test")
    model = zoo.train("lenet300", "digits", progress=False)
    sub = data.subset(ds, 100, seed=1)
    assert torch.equal(sub.images, data.subset(ds, 100, seed=1).images)
    plan = qlab.Plan(extrinsic={"*": "fixed(2,0,nearest)"})
    f = lab.evaluate(model, sub)
    q = lab.evaluate(model, sub, plan)
    assert lab.relative_accuracy(model, sub, plan) == pytest.approx(q / f)
    assert lab.relative_accuracy(model, sub, None) == 1.0
    assert q < f  # 2 bits hurt this model


def test_sweep_and_best_fraction_bits_known_answer(tmp_path):
    ds, model = _pairs_dataset(), _identity_model()
    widths = [4, 6, 8]
    df = lab.sweep(model, ds, widths, fractions="all", roundings=("nearest", "zero"),
                   placements=("extrinsic",), cache=tmp_path, progress=False, name="pairs")
    assert list(df.columns) == ["model", "placement", "rounding", "W", "F", "accuracy", "float_accuracy",
                                "relative_accuracy"]
    assert len(df) == 2 * sum(widths)
    for r in df.itertuples():
        assert r.accuracy == _ref_correct(ds, r.W, r.F, r.rounding) / len(ds), r
        assert r.relative_accuracy == r.accuracy  # float accuracy is 1
    best = lab.best_fraction_bits(df)
    assert len(best) == 2 * len(widths)
    for r in best.itertuples():
        scores = {F: _ref_correct(ds, r.W, F, r.rounding) for F in range(r.W)}
        top = max(scores.values())
        assert r.F == min(F for F, s in scores.items() if s == top)
    # the deck's shape: W=8 F=4 holds every value of this set exactly
    b8 = best[(best.W == 8) & (best.rounding == "nearest")].iloc[0]
    assert (b8.F, b8.relative_accuracy) == (4, 1.0)


def test_sweep_half_and_placements():
    ds, model = _pairs_dataset(40), _identity_model()
    df = lab.sweep(model, ds, [4, 8], placements=("extrinsic", "intrinsic", "weights"), cache=False, progress=False)
    assert sorted(set(df.F)) == [2, 4] and len(df) == 6
    # weights: the identity's 0 and 1 survive every width here, so accuracy stays 1
    assert set(df[df.placement == "weights"].accuracy) == {1.0}


def _greedy_reference(ds, thresholds):
    """The greedy walk with the reference accuracy: the known answer."""
    out = {}
    for t in thresholds:
        out[t] = None
        for W, F in search.greedy_order():
            if _ref_correct(ds, W, F) >= math.ceil(t * len(ds) - 1e-9):
                out[t] = (W, F)
                break
    return out


def test_greedy_order_is_tensorquants_walk():
    walk = list(search.greedy_order())
    assert walk[:6] == [(4, 2), (8, 2), (8, 4), (8, 6), (12, 2), (12, 4)]
    assert walk[-1] == (24, 22) and all(F + 2 <= W for W, F in walk)


@pytest.mark.parametrize("algorithm", ["greedy", "fast"])
def test_search_known_answer(algorithm):
    ds, model = _pairs_dataset(), _identity_model()
    thresholds = (1.0, 0.9, 0.75)
    r = lab.search_layers(model, ds, thresholds, algorithm=algorithm, cache=False, progress=False, batch_size=16)
    expect = _greedy_reference(ds, thresholds)
    assert expect[1.0] == (8, 4)  # needs 1/16 steps (F=4) and |x| <= 5.5 (4 integer bits)
    for t in thresholds:
        assert r.choices(t) == {"1": expect[t]}
        row = r.table[r.table.threshold == t].iloc[0]
        assert row.relative_accuracy == _ref_correct(ds, *expect[t]) / len(ds)
    assert r.compression[1.0] == 32 / 8
    assert r.plan(1.0) == qlab.Plan(intrinsic={"1": "fixed(8,4,nearest)"})
    assert r.evaluations > 0


def test_fast_search_equals_greedy_on_a_trained_model():
    model = zoo.train("lenet300", "digits", progress=False)
    ds = data.subset(data.digits("test"), 150)
    g = lab.search_layers(model, ds, algorithm="greedy", cache=False, progress=False)
    f = lab.search_layers(model, ds, algorithm="fast", cache=False, progress=False)
    cols = ["layer", "threshold", "W", "F", "relative_accuracy"]
    assert g.table[cols].equals(f.table[cols])
    assert f.full_passes < g.full_passes
    assert g.full_passes == g.evaluations


def test_replay_counts_equal_full_evaluation():
    """The fx replay of a residual net (cached skip branch) gives the same count as running the model."""
    torch.manual_seed(0)
    model = zoo.build("resnet_small", num_classes=10, in_channels=1, image_size=8).eval()
    ds = data.subset(data.digits("test"), 40)
    order, _ = search.fragile_first(model, ds)
    for layer in ["layer1.conv1", "layer2.shortcut.0", "fc"]:
        replay = search._Replay(model, ds, layer, order, 16, 0, 1 << 30)
        assert replay._fx is not None, layer
        for spec in ["fixed(6,3,nearest)", "fixed(8,4,zero)"]:
            plan = qlab.Plan(intrinsic={layer: spec})
            lo, hi = replay.count(plan)
            assert lo == hi == evaluation.correct_count(model, ds, plan), (layer, spec)
            with qlab.quantize(model, plan):
                pass


def test_sweep_resumes_after_interruption(tmp_path, monkeypatch):
    ds, model = _pairs_dataset(60), _identity_model()
    widths = [4, 5, 6, 7]
    full = lab.sweep(model, ds, widths, fractions="all", cache=False, progress=False)
    calls = {"n": 0}
    real = evaluation.correct_count

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "correct_count", flaky)
    with pytest.raises(KeyboardInterrupt):
        lab.sweep(model, ds, widths, fractions="all", cache=tmp_path, progress=False)
    monkeypatch.setattr(evaluation, "correct_count", real)
    resumed = lab.sweep(model, ds, widths, fractions="all", cache=tmp_path, progress=False)
    assert resumed.attrs["evaluations"] == len(full) - 6  # 1 float + 6 points were saved before the interrupt
    assert resumed.equals(full)
    again = lab.sweep(model, ds, widths, fractions="all", cache=tmp_path, progress=False)
    assert again.attrs["evaluations"] == 0 and again.equals(full)


def test_search_resumes_per_layer(tmp_path, monkeypatch):
    model = zoo.train("lenet300", "digits", progress=False)
    ds = data.subset(data.digits("test"), 60)
    full = lab.search_layers(model, ds, (0.9,), cache=False, progress=False)
    real = search._fast_layer
    seen = []

    def flaky(replay, *a, **k):
        seen.append(replay.layer)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(replay, *a, **k)

    monkeypatch.setattr(search, "_fast_layer", flaky)
    with pytest.raises(KeyboardInterrupt):
        lab.search_layers(model, ds, (0.9,), cache=tmp_path, progress=False)
    monkeypatch.setattr(search, "_fast_layer", real)
    resumed = lab.search_layers(model, ds, (0.9,), cache=tmp_path, progress=False)
    cols = ["layer", "threshold", "W", "F", "relative_accuracy"]
    assert resumed.table[cols].equals(full.table[cols])
    assert len(list(ResultCache(tmp_path).root.glob("*.json"))) == len(full.table)


def test_bad_input_errors():
    ds, model = _pairs_dataset(20), _identity_model()
    for bad in (1.5, 0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            lab.search_layers(model, ds, (bad,), cache=False, progress=False)
    with pytest.raises(ValueError, match="'conv9' is not a module"):
        lab.search_layers(model, ds, layers=["conv9"], cache=False, progress=False)
    with pytest.raises(ValueError, match="unknown search algorithm 'bisect'"):
        lab.search_layers(model, ds, algorithm="bisect", cache=False, progress=False)
    with pytest.raises(ValueError, match="unknown rounding 'nearst'"):
        lab.sweep(model, ds, [8], roundings="nearst", cache=False, progress=False)
    with pytest.raises(ValueError, match="unknown placement 'gradient'"):
        lab.sweep(model, ds, [8], placements=["gradient"], cache=False, progress=False)
    with pytest.raises(ValueError, match="widths must be integers >= 1"):
        lab.sweep(model, ds, [0, 8], cache=False, progress=False)
    with pytest.raises(ValueError, match="data must be a qlab.ext.data.Dataset"):
        lab.evaluate(model, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown zoo model 'lenet6'; did you mean 'lenet5'"):
        zoo.build("lenet6")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist("test", data_dir="/nonexistent/fashion")
