"""Spec-template sweeps and the table helpers of the reproduction notebooks (qlab.ext.experiments)."""
import json

import pandas as pd
import pytest
import torch
from torch import nn

from qlab.ext import data as qdata
from qlab.ext import experiments as ex
from qlab.ext import lab

SEQ = "intrinsic(fixed({W},{F},nearest))"
FINAL = "intrinsic(fixed({W},{F},nearest),accumulate=final)"
WIDE = "intrinsic(fixed({W},{F},nearest),acc=fixed({2*W},{F},nearest))"


def test_expand_holes_and_callables():
    assert ex.expand(SEQ, 8, 4) == "intrinsic(fixed(8,4,nearest))"
    assert ex.expand(WIDE, 6, 3) == "intrinsic(fixed(6,3,nearest),acc=fixed(12,3,nearest))"
    assert ex.expand("fixed({W + 8},{(W - 2) // 2},zero)", 10, 0) == "fixed(18,4,zero)"
    assert ex.expand("fixed({-F + W},{F})", 5, 2) == "fixed(3,2)"
    assert ex.expand(lambda W, F: f"fixed({W},{W - F})", 8, 3) == "fixed(8,5)"
    assert ex.expand("none", 8, 4) == "none"


@pytest.mark.parametrize("bad, message", [
    ("fixed({X},{F})", "unknown name 'X'"),
    ("fixed({W**2},{F})", "only integers"),
    ("fixed({__import__('os')},{F})", "only integers"),
    ("fixed({W/2},{F})", "only integers"),
    ("fixed({W +},{F})", "not an expression"),
])
def test_expand_refuses_anything_but_integer_arithmetic(bad, message):
    with pytest.raises(ValueError, match=message):
        ex.expand(bad, 8, 4)


def test_around_half_stays_inside_the_word():
    f = ex.around_half(2)
    assert f(8) == [2, 3, 4, 5, 6]
    assert f(4) == [0, 1, 2, 3]
    assert f(2) == [0, 1]
    assert ex.around_half(0)(9) == [4]


def walked(W, scores, radius=1):
    calls = []

    def score(f):
        calls.append(f)
        return scores[f]

    tried = ex.Walk(radius).run(W, score)
    assert sorted(calls) == sorted(tried) and len(set(calls)) == len(calls)  # each F scored once
    return tried


def test_walk_climbs_to_the_peak_and_stops_on_plateaus():
    #          F: 0    1    2    3    4    5    6    7
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.7]
    assert walked(8, rising) == [3, 4, 5, 6, 7]           # 5 beats 4: go up; 6 beats 5; 7 is worse: stop
    falling = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert walked(8, falling) == [3, 4, 5, 2, 1, 0]       # down to the edge F = 0
    peak_inside = [0.1, 0.2, 0.3, 0.5, 0.9, 0.4, 0.3, 0.2]
    assert walked(8, peak_inside) == [3, 4, 5]
    plateau = [0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9]
    assert walked(8, plateau) == [3, 4, 5]                # 3 ties 4: no walk down
    assert walked(8, [0.0] * 8) == [3, 4, 5]
    assert walked(8, falling, radius=2) == [2, 3, 4, 5, 6, 1, 0]
    assert walked(2, [0.5, 0.7]) == [0, 1]
    assert walked(1, [0.5]) == [0]
    assert walked(8, [float("nan")] * 2 + [0.1] * 6) == [3, 4, 5]
    with pytest.raises(ValueError, match="radius"):
        ex.Walk(0)  # a single F has no neighbour to compare with


def test_fixed_sweep_walk_matches_lab_sweep_everywhere_it_looked(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    test = qdata.subset(qdata.digits("test"), 60)
    full = lab.sweep(model, test, [4, 6, 8], fractions="all", roundings="nearest", placements="intrinsic",
                     cache=tmp_path, progress=False)
    walked_df = ex.fixed_sweep(model, test, [4, 6, 8], ex.Walk(1), "nearest", "intrinsic", cache=tmp_path,
                               progress=False)
    assert list(walked_df.columns) == list(full.columns)
    assert walked_df.attrs["evaluations"] == 0  # lab.sweep's points, read back from the same cache
    merged = walked_df.merge(full, on=["placement", "rounding", "W", "F"], suffixes=("", "_all"))
    assert len(merged) == len(walked_df) < len(full) and (merged.accuracy == merged.accuracy_all).all()
    # here the walk finds the best relative accuracy of all F for every W
    assert ex.best_per_width(walked_df).relative_accuracy.tolist() == \
        ex.best_per_width(full).relative_accuracy.tolist()


def test_sweep_specs_walk_tries_contiguous_fractions_around_half(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    test = qdata.subset(qdata.digits("test"), 40)
    specs = {"final": FINAL, "sequential": SEQ}
    df = ex.sweep_specs(model, test, specs, widths=[5, 7], fractions=ex.Walk(1), cache=tmp_path, progress=False)
    assert list(dict.fromkeys(df.variant)) == ["final", "sequential"]  # the order of specs, then W, then F
    assert df[["W", "F"]].equals(df.sort_values(["variant", "W", "F"], key=lambda c: c.map(list(specs).index)
                                                if c.name == "variant" else c)[["W", "F"]])
    full = ex.sweep_specs(model, test, specs, widths=[5, 7], fractions="all", cache=tmp_path, progress=False)
    for (v, W), part in df.groupby(["variant", "W"]):
        fs = sorted(part.F)
        assert fs == list(range(fs[0], fs[-1] + 1)) and {W // 2 - 1, W // 2, W // 2 + 1} <= set(fs)
        best_tried = part.relative_accuracy.max()
        if fs[0] > 0:  # the walk stopped above 0: the point below was no better than its neighbour
            row = full[(full.variant == v) & (full.W == W)].set_index("F").relative_accuracy
            assert row[fs[0]] <= row[fs[0] + 1] or row[fs[0]] < best_tried


def test_f_choice():
    assert ex.f_choice("walk", 2) == ex.Walk(2)
    assert ex.f_choice("window", 1)(8) == [3, 4, 5]
    assert ex.f_choice("all") == "all" and ex.f_choice("half") == "half"
    with pytest.raises(ValueError, match="F search"):
        ex.f_choice("best")


def accumulator_model() -> nn.Module:
    """Two classes.  Logit 0 = 7*x0 + 7*x1 - 7*x2 (products 7, 7, -7 for x = 1); logit 1 = its bias 3.

    In fixed(4,0) (range -8..7) a sequential sum saturates: 7, sat(14) = 7, 7 - 7 = 0 < 3,
    so the image is misclassified; the final (exact) sum is 7 > 3, right; a sequential sum in
    a 2W = 8 bit accumulator (range -128..127) is also 7.  From W = 5 (range -16..15) on, all
    three are right.
    """
    m = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[7.0, 7.0, -7.0], [0.0, 0.0, 0.0]]))
        m[0].bias.copy_(torch.tensor([0.0, 3.0]))
    return m.eval()


def one_image() -> qdata.Dataset:
    return qdata.Dataset(torch.ones(1, 3), torch.tensor([0]), "ones", ["a", "b"])


def test_sweep_specs_known_answer_sequential_final_and_wide_accumulator():
    df = ex.sweep_specs(accumulator_model(), one_image(), {"sequential": SEQ, "final": FINAL, "wide": WIDE},
                        widths=[4, 5, 6], fractions=0, cache=False, progress=False)
    assert list(df.columns) == ex.SPEC_COLUMNS
    assert len(df) == 9 and (df.float_accuracy == 1.0).all() and (df.placement == "intrinsic").all()
    got = {(r.variant, r.W): r.relative_accuracy for r in df.itertuples()}
    assert got == {
        ("sequential", 4): 0.0, ("sequential", 5): 1.0, ("sequential", 6): 1.0,
        ("final", 4): 1.0, ("final", 5): 1.0, ("final", 6): 1.0,
        ("wide", 4): 1.0, ("wide", 5): 1.0, ("wide", 6): 1.0,
    }
    assert df.set_index(["variant", "W"]).loc[("wide", 4), "spec"] == \
        "intrinsic(fixed(4,0,nearest),acc=fixed(8,0,nearest))"
    assert df.attrs["evaluations"] == 9


def test_sweep_specs_agrees_with_lab_sweep_on_fixed_specs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    test = qdata.subset(qdata.digits("test"), 60)
    ours = ex.sweep_specs(model, test, {"nearest": "fixed({W},{F},nearest)", "zero": "fixed({W},{F},zero)"},
                          widths=[3, 6], fractions="all", cache=tmp_path / "a", progress=False)
    theirs = lab.sweep(model, test, [3, 6], fractions="all", roundings=("nearest", "zero"), placements="intrinsic",
                       cache=tmp_path / "b", progress=False)
    merged = ours.rename(columns={"variant": "rounding"}).merge(theirs, on=["rounding", "W", "F"], suffixes=("", "_lab"))
    assert len(merged) == len(ours) == len(theirs) == 2 * (3 + 6)
    assert (merged.accuracy == merged.accuracy_lab).all()
    assert merged.accuracy.nunique() > 1  # the widths make a difference on this model
    # a rerun reads every point back from the cache
    again = ex.sweep_specs(model, test, {"nearest": "fixed({W},{F},nearest)", "zero": "fixed({W},{F},zero)"},
                           widths=[3, 6], fractions="all", cache=tmp_path / "a", progress=False)
    assert again.attrs["evaluations"] == 0 and again.equals(ours)


def test_sweep_specs_checks_before_it_evaluates():
    model, ds = accumulator_model(), one_image()
    with pytest.raises(ValueError, match="no spec templates"):
        ex.sweep_specs(model, ds, {}, [4], cache=False, progress=False)
    with pytest.raises(ValueError, match="widths"):
        ex.sweep_specs(model, ds, {"s": SEQ}, [], cache=False, progress=False)
    with pytest.raises(ValueError, match="placement"):
        ex.sweep_specs(model, ds, {"s": SEQ}, [4], placement="inside", cache=False, progress=False)
    with pytest.raises(ValueError, match="not a module"):
        ex.sweep_specs(model, ds, {"s": SEQ}, [4], layers="fc9", cache=False, progress=False)
    with pytest.raises(Exception, match="frobnicate"):
        ex.sweep_specs(model, ds, {"s": SEQ, "bad": "frobnicate({W})"}, [4], cache=False, progress=False)


def test_best_per_width_ties_go_to_the_smallest_F():
    df = pd.DataFrame({
        "model": ["m"] * 5, "variant": ["a", "a", "a", "b", "b"], "W": [4, 4, 4, 4, 4], "F": [0, 1, 2, 0, 3],
        "relative_accuracy": [0.5, 0.9, 0.9, 0.2, 0.1],
    })
    best = ex.best_per_width(df)
    assert best[["variant", "W", "F", "relative_accuracy"]].values.tolist() == [["a", 4, 1, 0.9], ["b", 4, 0, 0.2]]
    # models keep the order they came in (not alphabetical), W ascends
    two = pd.DataFrame({"model": ["z", "z", "a", "a"], "W": [8, 4, 8, 4], "F": [1, 1, 1, 1],
                        "relative_accuracy": [0.1, 0.2, 0.3, 0.4]})
    assert ex.best_per_width(two)[["model", "W"]].values.tolist() == [["z", 4], ["z", 8], ["a", 4], ["a", 8]]


def test_smallest_width_per_variant():
    df = pd.DataFrame({
        "model": ["m"] * 6, "variant": ["a", "a", "a", "b", "b", "b"], "W": [4, 6, 6, 4, 6, 8], "F": [2, 2, 3, 2, 3, 4],
        "relative_accuracy": [0.5, 0.95, 0.995, 0.1, 0.2, 0.3],
    })
    got = ex.smallest_width(df, 0.99)
    assert got.variant.tolist() == ["a", "b"] and (got.W[0], got.F[0]) == (6, 3)
    assert pd.isna(got.W[1]) and pd.isna(got.F[1])
    assert got.relative_accuracy.iloc[0] == 0.995 and pd.isna(got.relative_accuracy.iloc[1])
    assert ex.smallest_width(df, 0.3).W.tolist() == [4, 8]


def test_width_table_and_side_by_side():
    best = pd.DataFrame({"model": ["lenet5", "lenet5", "resnet"], "W": [4, 8, 8], "F": [3, 4, 2],
                         "relative_accuracy": [0.404, 0.9, 1.0]})
    ours = ex.width_table(best)
    assert ours.loc["lenet5", 4] == "0.40,3" and ours.loc["resnet", 8] == "1.00,2" and ours.loc["resnet", 4] == "-"
    published = pd.DataFrame({8: ["0.90,4"], 12: ["1.00,6"]}, index=pd.Index(["LeNet"], name="topology"))
    both = ex.side_by_side(ours, published, "qlab", "deck")
    assert list(both.columns) == [4, 8, 12]
    assert both.loc[("qlab", "lenet5"), 12] == "-" and both.loc[("deck", "LeNet"), 8] == "0.90,4"
    assert both.loc[("deck", "LeNet"), 4] == "-"
    assert list(both.index.get_level_values(0)) == ["qlab", "qlab", "deck"]


def test_output_dir_and_writers(tmp_path, monkeypatch):
    out = ex.output_dir("x", tmp_path / "a" / "b")
    assert out.is_dir()
    monkeypatch.setattr(ex, "repo_root", lambda: tmp_path / "repo")
    assert ex.output_dir("rounding") == tmp_path / "repo" / "build" / "rounding"
    assert ex.output_dir("rounding", "") == tmp_path / "repo" / "build" / "rounding"
    p = ex.write_table(pd.DataFrame({"W": [4], "x": [0.5]}), out, "t")
    assert pd.read_csv(p).to_dict("list") == {"W": [4], "x": [0.5]}
    j = ex.write_json({"a": torch.tensor(2).numpy().astype("int64")[()], "b": [1.5]}, out, "j")
    assert json.loads(j.read_text()) == {"a": 2, "b": [1.5]}


def test_load_data_choices():
    ds = ex.load_data("digits", n=50, seed=1)
    assert len(ds) == 50 and ds.images.shape[1:] == (1, 8, 8) and ds.name == "digits-test[50@1]"
    assert len(ex.load_data("digits")) == 1797 - qdata.DIGITS_TRAIN
    with pytest.raises(ValueError, match="unknown data set"):
        ex.load_data("cifar")
    with pytest.raises(ValueError, match="needs data_dir"):
        ex.load_data("imagenet")
    with pytest.raises(ValueError, match="torchvision model"):
        ex.load_model("lenet5", "imagenet")


def test_load_model_torchvision_weights_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet50.pth"):
        ex.load_model("resnet50", "imagenet", weights_dir=tmp_path)
    assert ex.is_torchvision("resnet50") and not ex.is_torchvision("lenet5")
    assert ex.image_size("inception_v3") == 299 and ex.image_size("resnet50") == 224


def test_imagenet_folder_is_read_into_memory(tmp_path):
    from PIL import Image

    for c, colour in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / "val" / c / f"{i}.JPEG")
    ds = ex.load_data("imagenet", tmp_path, n=4, seed=0, image_size=32)
    assert ds.images.shape == (4, 3, 32, 32) and ds.classes == ["n01", "n02"]
    assert ds.name == "imagenet-val[4@0]" and set(ds.labels.tolist()) <= {0, 1}
    every = ex.load_data("imagenet", tmp_path, n=None, image_size=32)
    assert every.name == "imagenet-val" and every.labels.tolist() == [0, 0, 0, 1, 1, 1]
    red, blue = every.images[0], every.images[3]
    assert red[0].mean() > red[2].mean() and blue[2].mean() > blue[0].mean()


def test_variant_chart_carries_its_rows():
    df = pd.DataFrame({"model": ["m", "m"], "variant": ["a", "b"], "W": [4, 4], "F": [2, 2],
                       "relative_accuracy": [0.5, 1.0]})
    spec = ex.variant_chart(df).to_dict()
    assert spec["mark"]["type"] == "line" and spec["encoding"]["color"]["field"] == "variant"
    values = next(iter(spec["datasets"].values()))
    assert [v["relative_accuracy"] for v in values] == [0.5, 1.0]
    with pytest.raises(ValueError, match="variant"):
        ex.variant_chart(df.drop(columns="variant"))
