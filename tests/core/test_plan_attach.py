"""Spec parsing, plans (precedence, JSON, errors) and attaching a plan to a model."""
import io
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qlab


# ----------------------------------------------------------------------------- spec
@pytest.mark.parametrize("text,obj", [
    ("fixed(8,4,nearest)", qlab.FixedPoint(8, 4, "nearest")),
    ("nearest,8,4", qlab.FixedPoint(8, 4, "nearest")),
    ("stochastic,16,14", qlab.FixedPoint(16, 14, "stochastic")),
    ("zero,8,4", qlab.FixedPoint(8, 4, "zero")),
    ("down,8,4", qlab.FixedPoint(8, 4, "down")),
    ("sparse,0.01", qlab.Sparse(0.01)),
    ("logarithmic", qlab.Log(9, 127, "down")),
    ("fp16", qlab.Float(5, 10)),
    ("binary", qlab.Binary()),
    ("binary,0.5", qlab.Binary(0.5)),
    ("ternary", qlab.Ternary()),
    ("ternary,1.5,0.2", qlab.Ternary(0.2, 1.5)),
    ("none", qlab.Identity()),
    (" fixed( 8 , -2 ) ", qlab.FixedPoint(8, -2)),
])
def test_parse(text, obj):
    q = qlab.parse(text)
    assert q == obj
    assert qlab.parse(str(q)) == q


def test_canonical_round_trip_all_kinds():
    for q in [qlab.FixedPoint(32, -5, "even"), qlab.Float(4, 3, "stochastic", fn=True), qlab.Float(5, 2, inf=True),
              qlab.Log(5, -3, "log"), qlab.Binary("channel"), qlab.Ternary(0.05, "mean"), qlab.Sparse(1e-8),
              qlab.Intrinsic(qlab.FixedPoint(8, 4), acc=qlab.FixedPoint(20, 8), accumulate="final", inputs=False)]:
        assert qlab.parse(str(q)) == q, str(q)


@pytest.mark.parametrize("bad,match", [
    ("fixd(8,4)", "fixd.*did you mean 'fixed'"),
    ("fixed(8)", "2 to 3 arguments"),
    ("fixed(0,4)", "W=0"),
    ("fixed(40,4)", "W=40"),
    ("fixed(8,4,nearst)", "nearst"),
    ("fixed(8,4", "expected"),
    ("fixed(8.5,4)", "integer"),
    ("nearest,8", "2 arguments"),
    ("", "empty"),
    ("fixed(8,4) extra", "unexpected"),
    ("intrinsic(fixed(8,4),accumulate=sideways)", "sideways"),
])
def test_parse_errors_name_the_text(bad, match):
    with pytest.raises(ValueError, match=match):
        qlab.parse(bad)


# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out += x  # functional arithmetic in the container
        return out


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(1, 4, 3, padding=1),
        block=Block(),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        fc=nn.Linear(4, 3),
    ))
    with torch.no_grad():
        net.block.bn1.running_mean.uniform_(-0.5, 0.5)
        net.block.bn1.running_var.uniform_(0.5, 2)
    return net.eval()


def _state_bytes(m):
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    return buf.getvalue()


def _no_hooks(m):
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, mod
        assert "forward" not in mod.__dict__
    for p in m.parameters():
        assert not p._backward_hooks


# ----------------------------------------------------------------------------- precedence
def test_precedence_exact_beats_glob_beats_type_and_inner_wins():
    net = small_net()
    plan = qlab.Plan(extrinsic={"type:Conv2d": "fixed(4,2)", "block*": "fixed(5,2)", "block.conv1": "fixed(6,2)",
                                "*": "fixed(7,2)", "b*": "fixed(9,2)"})
    r = plan.resolve(net)["extrinsic"]
    assert r["block.conv1"] == qlab.FixedPoint(6, 2)  # exact name
    assert r["block"] == qlab.FixedPoint(5, 2)  # longest glob ('block*' beats 'b*' and '*')
    assert r["block.bn1"] == qlab.FixedPoint(5, 2)  # 'block*' matches block.bn1 too
    assert r["stem"] == qlab.FixedPoint(7, 2)  # '*' glob beats type:Conv2d
    plan2 = qlab.Plan(extrinsic={"block": "fixed(5,2)", "type:BatchNorm2d": "fixed(4,2)"})
    r2 = plan2.resolve(net)["extrinsic"]
    assert r2["block.conv1"] == qlab.FixedPoint(5, 2)  # container covers what is inside
    assert r2["block.bn1"] == qlab.FixedPoint(4, 2)  # a pattern matching the module itself wins
    assert "stem" not in r2


def test_pattern_matching_nothing_lists_nearest_names():
    with pytest.raises(ValueError, match=r"'blok\.conv1'.*block\.conv1"):
        qlab.quantize(small_net(), qlab.Plan(extrinsic={"blok.conv1": "fixed(8,4)"}))
    with pytest.raises(ValueError, match="type:Conv2d"):
        qlab.quantize(small_net(), qlab.Plan(weights={"type:Conv3d": "fixed(8,4)"}))


def test_placement_that_cannot_apply():
    with pytest.raises(ValueError, match="covers no parameters"):
        qlab.quantize(small_net(), qlab.Plan(weights={"block.relu": "fixed(8,4)"}))
    lstm = nn.Sequential(OrderedDict(rnn=nn.LSTM(3, 3)))
    with pytest.raises(ValueError, match="LSTM"):
        qlab.quantize(lstm, qlab.Plan(intrinsic={"rnn": "fixed(8,4)"}))


def test_plan_json_round_trip_and_python():
    plan = qlab.Plan(extrinsic={"features.*": "nearest,8,4"}, intrinsic={"fc": "intrinsic(fixed(8,4,nearest),accumulate=final)"},
                     weights={"type:Linear": "ternary"}, gradients={"*": "stochastic,16,14"})
    assert qlab.Plan.from_json(plan.to_json()) == plan
    assert "qlab.Plan(" in plan.to_python()
    assert eval(plan.to_python(), {"qlab": qlab}) == plan


# ----------------------------------------------------------------------------- attach
ALL_PLANS = [
    qlab.Plan(extrinsic={"*": "fixed(8,4,nearest)"}),
    qlab.Plan(weights={"*": "fixed(4,2,nearest)"}),
    qlab.Plan(intrinsic={"*": "fixed(12,6,nearest)"}),
    qlab.Plan(intrinsic={"*": "fixed(12,6,nearest)"}, extrinsic={"fc": "fixed(6,3)"}, weights={"type:Conv2d": "fixed(6,4)"}),
]


@pytest.mark.parametrize("plan", ALL_PLANS, ids=lambda p: p.to_json())
def test_quantize_changes_then_restores_exactly(plan):
    net = small_net()
    x = torch.randn(2, 1, 6, 6)
    before = net(x)
    state = _state_bytes(net)
    params = [p for p in net.parameters()]
    with qlab.quantize(net, plan) as m:
        assert m is net
        y = net(x)
    assert not torch.equal(y, before)
    assert torch.equal(net(x), before)
    assert _state_bytes(net) == state
    assert all(a is b for a, b in zip(params, net.parameters()))
    _no_hooks(net)
    h = qlab.quantize(net, plan)
    assert torch.equal(net(x), y)
    h.remove()
    assert torch.equal(net(x), before)
    _no_hooks(net)


def test_restored_even_after_an_exception_inside():
    net = small_net()
    x = torch.randn(1, 1, 6, 6)
    before = net(x)
    with pytest.raises(RuntimeError):
        with qlab.quantize(net, qlab.Plan(weights={"*": "fixed(4,2)"}, intrinsic={"*": "fixed(8,4)"})):
            net(torch.randn(1, 2, 6, 6))  # wrong channels
    assert torch.equal(net(x), before)
    _no_hooks(net)


def test_extrinsic_equals_quantized_outputs():
    net = small_net()
    x = torch.randn(2, 1, 6, 6)
    q = qlab.FixedPoint(8, 4)
    with qlab.quantize(net, qlab.Plan(extrinsic={"fc": "fixed(8,4,nearest)"})):
        y = net(x)
    assert torch.equal(y, q(net(x)))


def test_weights_use_quantized_params_and_gradients_flow_straight_through():
    lin = nn.Linear(5, 3)
    net = nn.Sequential(OrderedDict(fc=lin))
    x = torch.randn(4, 5)
    q = qlab.FixedPoint(4, 2)
    with qlab.quantize(net, qlab.Plan(weights={"fc": "fixed(4,2,nearest)"})):
        y = net(x)
        y.sum().backward()
    assert torch.equal(y, F.linear(x, q(lin.weight), q(lin.bias)))
    assert torch.equal(lin.weight.grad, torch.ones(4, 3).t() @ x)


def test_gradients_quantized_as_produced():
    net = nn.Sequential(OrderedDict(fc=nn.Linear(5, 3)))
    x = torch.randn(4, 5) * 3
    with qlab.quantize(net, qlab.Plan(gradients={"fc": "fixed(6,1,nearest)"})):
        (net(x) * 0.37).sum().backward()
    g = net.fc.weight.grad
    assert torch.equal(g, qlab.FixedPoint(6, 1)(torch.full((3, 4), 0.37) @ x))
    net.zero_grad()
    (net(x) * 0.37).sum().backward()
    assert not torch.equal(net.fc.weight.grad, g)


def test_intrinsic_on_module_equals_functional_op():
    net = small_net()
    x = torch.randn(2, 1, 6, 6)
    spec = qlab.Intrinsic(qlab.FixedPoint(12, 6))
    with qlab.quantize(net, qlab.Plan(intrinsic={"stem": spec})):
        y = net.stem(x)
    assert torch.equal(y, qlab.intrinsic_conv(x, net.stem.weight, net.stem.bias, 1, 1, 1, 1, spec))


def test_intrinsic_container_covers_residual_add():
    net = small_net()
    x = torch.randn(2, 4, 6, 6)
    spec = qlab.Intrinsic(qlab.FixedPoint(10, 4))
    b = net.block
    with qlab.quantize(net, qlab.Plan(intrinsic={"block": spec})):
        y = b(x)
    h = torch.relu(qlab.intrinsic_batch_norm(qlab.intrinsic_conv(x, b.conv1.weight, None, 1, 1, 1, 1, spec),
                                             b.bn1.running_mean, b.bn1.running_var, b.bn1.weight, b.bn1.bias,
                                             b.bn1.eps, spec))
    assert torch.equal(y, qlab.intrinsic_elementwise("add", h, x, spec))


def test_intrinsic_inner_none_switches_off():
    net = small_net()
    x = torch.randn(2, 1, 6, 6)
    with qlab.quantize(net, qlab.Plan(intrinsic={"*": "fixed(12,6)", "fc": "none"})):
        y = net(x)
    with qlab.quantize(net, qlab.Plan(intrinsic={"stem": "fixed(12,6)", "block": "fixed(12,6)", "pool": "fixed(12,6)"})):
        y2 = net(x)
    assert torch.equal(y, y2)


def test_intrinsic_unemulated_functional_op_raises():
    class Soft(nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    net = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), soft=Soft()))
    with qlab.quantize(net, qlab.Plan(intrinsic={"*": "fixed(8,4)"})):
        with pytest.raises(ValueError, match="softmax"):
            net(torch.randn(2, 3))
    net(torch.randn(2, 3))  # fine again outside


def test_intrinsic_batchnorm_training_mode_raises():
    net = small_net().train()
    with qlab.quantize(net, qlab.Plan(intrinsic={"block": "fixed(8,4)"})):
        with pytest.raises(ValueError, match="eval"):
            net(torch.randn(2, 1, 6, 6))


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "alexnet"])
def test_torchvision_models_all_intrinsic_and_extrinsic(name):
    tv = pytest.importorskip("torchvision")
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    m = getattr(tv.models, name)(weights=None, num_classes=10, **kw).eval()
    x = torch.randn(1, 3, 64, 64) if name != "alexnet" else torch.randn(1, 3, 63, 63)
    before = m(x)
    for plan in (qlab.Plan(intrinsic={"*": "fixed(16,8)"}), qlab.Plan(extrinsic={"*": "fixed(16,8)"})):
        with qlab.quantize(m, plan):
            y = m(x)
        assert y.shape == before.shape and torch.isfinite(y).all()
    assert torch.equal(m(x), before)
    _no_hooks(m)
