"""Zoo models, the registry, training with resume, torchvision builders."""
import pytest
import torch
from torch import nn

from qlab.ext import data, zoo
from qlab.ext.store import CheckpointStore

# The layer types a plan may meet in a zoo model (plus the containers holding them).
STANDARD_LAYERS = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_build_gives_logits_from_standard_layers(name):
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    leaves = [m for m in model.modules() if not list(m.children())]
    assert leaves and all(isinstance(m, STANDARD_LAYERS) for m in leaves), {type(m).__name__ for m in leaves}


def test_build_unknown_name_lists_known_and_nearest():
    with pytest.raises(ValueError) as err:
        zoo.build("resnet_smal")
    message = str(err.value)
    assert "'resnet_smal'" in message and "did you mean 'resnet_small'" in message
    assert all(name in message for name in zoo.MODELS)


def test_train_unknown_data_set():
    with pytest.raises(ValueError, match="did you mean 'fashion-mnist'"):
        zoo.train("lenet300", data="fashion_mnist", store=False, progress=False)


class Interrupt(Exception):
    pass


def test_train_resumes_after_interruption_bit_for_bit(tmp_path):
    ds = data.digits("train")
    # An uninterrupted run.
    reference = zoo.train("lenet300", ds, seed=1, epochs=2, store=CheckpointStore(tmp_path / "a"), progress=False)

    # The same run, killed after its first epoch ...
    store = CheckpointStore(tmp_path / "b")

    def stop_after_first(epoch, model):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        zoo.train("lenet300", ds, seed=1, epochs=2, store=store, progress=False, on_epoch=stop_after_first)
    saved = sorted(p.name for p in store.root.iterdir())
    assert len(saved) == 1 and saved[0].endswith("-resume.pt")
    _, meta = store.load(saved[0][: -len(".pt")])
    assert meta["epoch"] == 1

    # ... and rerun: it trains epoch 2 only and ends with the same weights.
    seen = []
    resumed = zoo.train("lenet300", ds, seed=1, epochs=2, store=store, progress=False,
                        on_epoch=lambda epoch, model: seen.append(epoch))
    assert seen == [2]
    assert not resumed.training
    for (k, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in store.root.iterdir()] == [saved[0].replace("-resume", "")]

    # A third call loads the finished model without training.
    again = zoo.train("lenet300", ds, seed=1, epochs=2, store=store, progress=False,
                      on_epoch=lambda epoch, model: seen.append(epoch))
    assert seen == [2]
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), again.state_dict().values()))
    assert zoo.evaluate(again, data.digits("test")) > 0.8


def test_train_depends_on_seed_and_leaves_global_rng_alone():
    ds = data.subset(data.digits("train"), 300)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = zoo.train("resnet_small", ds, seed=0, epochs=1, store=False, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = zoo.train("resnet_small", ds, seed=0, epochs=1, store=False, progress=False)
    c = zoo.train("resnet_small", ds, seed=1, epochs=1, store=False, progress=False)
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)
    assert a.fc.weight.is_contiguous() and a.stem[0].weight.is_contiguous()


def test_learning_rate_warms_up_then_decays_to_zero():
    r = zoo.recipe("lenet5", epochs=2)
    total = 100
    lrs = [zoo.learning_rate(r, s, total) for s in range(total)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == r["lr"] and 0 < peak < total // 2
    assert all(x <= y for x, y in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(x >= y for x, y in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 1e-3 * r["lr"]


@pytest.mark.parametrize("name, shape", [("resnet50", (1, 3, 64, 64)), ("googlenet", (1, 3, 64, 64))])
def test_torchvision_forward(name, shape):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = zoo.torchvision_model(name, num_classes=7)
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (1, 7)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "inception_v3", "resnet152"])
def test_torchvision_construct(name):
    pytest.importorskip("torchvision")
    model = zoo.torchvision_model(name)
    assert not model.training and sum(p.numel() for p in model.parameters()) > 1_000_000


def test_torchvision_weights_file_with_aux_heads(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    source = tvm.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pth"
    torch.save(source.state_dict(), path)
    model = zoo.torchvision_model("googlenet", weights_path=path)
    assert model.transform_input and model.aux1 is None
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_torchvision_unknown_name():
    with pytest.raises(ValueError, match="did you mean 'resnet50'"):
        zoo.torchvision_model("resnet5O")
