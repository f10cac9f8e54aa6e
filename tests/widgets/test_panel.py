"""The panel, headless: the controller's state and actions, and the ipywidgets view driven from Python."""
import json
import re

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("vl_convert")

import qlab  # noqa: E402
from qlab.ext import data as qdata  # noqa: E402
from qlab.ext import zoo  # noqa: E402
from qlab.widgets import ALL, Panel, PanelController, PanelError  # noqa: E402
from qlab.widgets.panel import f_range, spec_string  # noqa: E402

LAYERS = ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return zoo.train("lenet300", "digits", progress=False)  # seconds; cached under QLAB_CACHE


@pytest.fixture(scope="module")
def test_data():
    return qdata.digits("test")


@pytest.fixture
def ctl(model, test_data):
    return PanelController(model, test_data, n=200, progress=False)


def test_rows_follow_the_model(ctl):
    assert ctl.layers == LAYERS
    assert ctl.kinds["fc1"] == "Linear" and ctl.kinds["relu2"] == "ReLU"
    assert len(ctl.data) == 200
    t = ctl.table()
    assert list(t["layer"]) == LAYERS
    assert set(t["placement"]) == {"none"} and set(t["spec"]) == {""}
    assert ctl.build_plan() == qlab.Plan()


def test_set_rows_and_all_layers(ctl):
    ctl.set("fc1", placement="extrinsic", W=6, F=3)
    ctl.set("fc3", placement="weights", method="ternary")
    plan = ctl.build_plan()
    assert plan == qlab.Plan(extrinsic={"fc1": "fixed(6,3,nearest)"}, weights={"fc3": "ternary"})
    assert ctl.label() == "extrinsic fixed(6,3,nearest) [fc1]; weights ternary(auto,mean) [fc3]"

    s = ctl.set(ALL, placement="intrinsic", method="fixed", W=12, F=6, rounding="down")
    assert all(ctl.rows[n] == s for n in LAYERS)
    assert ctl.build_plan() == qlab.Plan(intrinsic={n: "fixed(12,6,down)" for n in LAYERS})
    assert ctl.label() == "intrinsic fixed(12,6,down) [all layers]"
    ctl.set("fc2", placement="none")
    assert "fc2" not in ctl.build_plan().intrinsic and len(ctl.build_plan().intrinsic) == 5


def test_weights_go_to_layers_with_parameters(ctl):
    ctl.set(ALL, placement="weights", method="binary")
    plan = ctl.build_plan()
    assert plan == qlab.Plan(weights={"fc1": "binary", "fc2": "binary", "fc3": "binary"})
    assert ctl.label() == "weights binary(mean) [fc1, fc2, fc3]"
    run = ctl.evaluate()
    assert run is not None and 0 <= run["relative_accuracy"] < 1.0, ctl.message
    ctl.set("relu1", placement="intrinsic", method="fixed", W=16, F=8)
    assert ctl.build_plan().intrinsic == {"relu1": qlab.parse("intrinsic(fixed(16,8,nearest))")}


def test_spec_per_method_and_f_range(ctl):
    assert spec_string("fixed", 8, -2, "zero") == "fixed(8,-2,zero)"
    assert spec_string("float", 16, 10, "even") == "float(5,10,even)"  # fp16: 16 bits, 10 mantissa bits
    assert spec_string("log", 8, 3, "log") == "log(8,3,log)"
    assert spec_string("binary", 8, 4, "nearest") == "binary"
    assert f_range("fixed", 8) == (-8, 16)
    assert f_range("float", 16) == (7, 13)
    # F follows W: narrowing W or switching to float clamps F into the new range
    ctl.set("fc1", W=4, F=12)
    assert ctl.rows["fc1"].F == 12
    ctl.set("fc1", W=2)
    assert ctl.rows["fc1"].F == 10
    ctl.set("fc1", method="float", W=16)
    assert ctl.rows["fc1"].F == 10
    ctl.set("fc1", placement="weights")
    assert ctl.build_plan().weights == {"fc1": qlab.parse("float(5,10,nearest)")}
    with pytest.raises(ValueError, match="placement 'gradients'"):
        ctl.set("fc1", placement="gradients")
    with pytest.raises(ValueError, match="W=40 outside"):
        ctl.set("fc1", W=40)
    with pytest.raises(KeyError, match="no layer 'fc9'"):
        ctl.set("fc9", W=4)


def test_all_float_plan_has_relative_accuracy_one(ctl):
    run = ctl.evaluate()
    assert run["label"] == "float" and run["relative_accuracy"] == 1.0
    assert run["accuracy"] == run["float_accuracy"] > 0.7
    # float(8,23) is float32 itself: quantizing every output to it changes nothing
    ctl.set(ALL, placement="extrinsic", method="float", W=32, F=23)
    run = ctl.evaluate()
    assert run["relative_accuracy"] == 1.0
    assert list(ctl.runs["run"]) == [1, 2]
    assert "relative accuracy 1.0000" in ctl.message


def test_coarse_fixed_point_lowers_accuracy(ctl):
    ctl.evaluate()
    ctl.set(ALL, placement="extrinsic", method="fixed", W=2, F=0)
    run = ctl.evaluate()
    assert run["label"] == "extrinsic fixed(2,0,nearest) [all layers]"
    assert run["relative_accuracy"] < 0.9
    assert run["accuracy"] == pytest.approx(run["relative_accuracy"] * run["float_accuracy"])
    runs = ctl.runs
    assert list(runs.columns[:5]) == ["run", "label", "accuracy", "float_accuracy", "relative_accuracy"]
    assert len(runs) == 2 and runs["relative_accuracy"].iloc[1] < runs["relative_accuracy"].iloc[0] == 1.0
    assert qlab.Plan.from_json(runs["plan"].iloc[1]) == ctl.build_plan()
    # the chart shows every run
    spec = ctl.chart().to_dict()
    assert [r["run"] for r in spec["datasets"][spec["data"]["name"]]] == [1, 2]


@pytest.mark.parametrize("row, reason", [
    (dict(placement="intrinsic", method="binary"), "intrinsic arithmetic needs a fixed, float or log format"),
    (dict(placement="extrinsic", method="float", W=2), "exponent bits E=1 outside 2..8"),  # 2 bits leave no room
    (dict(placement="weights", method="log", rounding="even"), "unknown rounding 'even'"),
    (dict(placement="extrinsic", method="fixed", rounding="log"), "unknown rounding 'log'"),
])
def test_invalid_combinations_give_a_message(ctl, row, reason):
    ctl.set("fc2", **row)
    problem = ctl.problem()
    assert problem.startswith("layer fc2: ") and reason in problem
    with pytest.raises(PanelError, match="layer fc2"):
        ctl.build_plan()
    assert ctl.evaluate() is None
    assert ctl.message == problem and len(ctl.runs) == 0
    with pytest.raises(PanelError):
        ctl.export_json()


def test_progress_bar_on_request(ctl, capsys):
    ctl.evaluate(progress=False)
    assert "evaluate" not in capsys.readouterr().err
    ctl.evaluate(progress=True)  # outside a notebook tqdm writes to stderr
    assert "/200" in capsys.readouterr().err
    assert len(ctl.runs) == 2


def test_export_round_trip(ctl):
    ctl.set(ALL, placement="extrinsic", method="fixed", W=8, F=4, rounding="stochastic")
    ctl.set("fc1", placement="intrinsic", method="float", W=16, F=10, rounding="even")
    ctl.set("fc3", placement="weights", method="log", W=6, F=0, rounding="log")
    ctl.set("relu1", placement="none")
    plan = ctl.build_plan()
    assert qlab.Plan.from_json(ctl.export_json()) == plan
    assert json.loads(ctl.export_json())["intrinsic"] == {"fc1": "intrinsic(fp16)"}  # float(5,10,even) is fp16
    code = ctl.export_python()
    assert code.startswith("qlab.Plan(")
    assert eval(code, {"qlab": qlab}) == plan
    assert set(plan.extrinsic) == {"flatten", "fc2", "relu2"}


def test_listeners_hear_changes(ctl):
    events = []
    ctl.observe(events.append)
    ctl.set("fc1", W=5)
    ctl.evaluate()
    ctl.set("fc1", placement="intrinsic", method="ternary")
    ctl.evaluate()
    assert events == ["settings", "run", "settings", "message"]


# -- the ipywidgets view ---------------------------------------------------------------

@pytest.fixture
def panel(model, test_data):
    return Panel(model, test_data, n=200, progress=False)


def _points(svg: str) -> int:
    """Runs shown in the chart's SVG (each point carries its tooltip as a <title>)."""
    return len(set(re.findall(r"<title>run: (\d+);", svg)))


def test_panel_widgets_drive_the_controller(panel):
    c = panel.controller
    assert set(panel.rows) == {ALL, *LAYERS}
    fc1 = panel.rows["fc1"]
    fc1["placement"].value = "weights"
    fc1["W"].value = 4
    fc1["F"].value = 1
    assert c.rows["fc1"].placement == "weights" and (c.rows["fc1"].W, c.rows["fc1"].F) == (4, 1)
    assert (fc1["F"].min, fc1["F"].max) == (-4, 12)  # F's range follows W
    fc1["method"].value = "float"
    fc1["W"].value = 8
    assert fc1["F"].description == "M" and (fc1["F"].min, fc1["F"].max) == (0, 5)
    assert c.build_plan() == qlab.Plan(weights={"fc1": "float(6,1,nearest)"})

    # the all-layers row sets every row's widgets
    panel.rows[ALL]["placement"].value = "extrinsic"
    assert all(panel.rows[n]["placement"].value == "extrinsic" for n in LAYERS)
    assert all(panel.rows[n]["method"].value == "fixed" for n in LAYERS)
    # ... and the controller's changes show in the widgets
    c.set("fc2", method="binary")
    assert panel.rows["fc2"]["method"].value == "binary" and panel.rows["fc2"]["W"].disabled


def test_panel_buttons_evaluate_and_export(panel):
    assert panel.accuracy.value == "no run yet" and _points(panel.chart.value) == 0
    panel.evaluate_button.click()
    assert "relative accuracy <b>1.0000</b>" in panel.accuracy.value
    assert _points(panel.chart.value) == 1
    panel.rows[ALL]["placement"].value = "extrinsic"
    panel.rows[ALL]["W"].value = 2
    panel.rows[ALL]["F"].value = 0
    panel.evaluate_button.click()
    assert panel.accuracy.value.startswith("run 2: relative accuracy")
    assert "1.0000</b>" not in panel.accuracy.value
    assert _points(panel.chart.value) == 2 and len(panel.controller.runs) == 2

    panel.export_button.click()
    assert panel.exports.layout.display == "flex"
    assert qlab.Plan.from_json(panel.export_json.value) == panel.controller.build_plan()
    assert panel.export_python.value == panel.controller.build_plan().to_python()

    # an invalid row: the message shows as soon as it is set, and Evaluate adds no run
    panel.rows["fc1"]["placement"].value = "intrinsic"
    panel.rows["fc1"]["method"].value = "binary"
    assert "layer fc1: intrinsic binary is not possible" in panel.status.value
    panel.evaluate_button.click()
    assert len(panel.controller.runs) == 2 and "layer fc1" in panel.status.value


def test_panel_displays_as_a_widget(panel):
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
