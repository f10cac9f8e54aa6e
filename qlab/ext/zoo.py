"""Small models for 28x28 grey images, their training recipe, and torchvision's big models.

Every zoo model is a plain ``nn.Module`` built from standard layers (``nn.Conv2d``,
``nn.Linear``, ``nn.BatchNorm2d``, ``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Flatten``);
residual adds and branch concatenations are written out in ``forward``
(``out + identity``, ``torch.cat``), so a plan can reach each layer by its name.
Models return logits (no softmax, no dropout).  The convolutional ones halve the
image with a strided first conv: on a small CPU the cost of a net is mostly its
activations at full resolution, not its multiply-adds.

:func:`train` trains on the CPU with a fixed recipe, deterministic under the seed,
and keeps a checkpoint per finished epoch in a :class:`~qlab.ext.store.CheckpointStore`
under a hash of (architecture, data set, recipe, seed): a rerun loads the finished
model, a killed run resumes from its last finished epoch.
"""
from __future__ import annotations

import difflib
import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qlab.ext import data as qdata
from qlab.ext.store import CheckpointStore, key as store_key


# -- models --------------------------------------------------------------------------

def _half(size: int) -> int:
    """Side after a stride-2 "same" conv: ceil(size / 2)."""
    return (size + 1) // 2


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class LeNet300(nn.Module):
    """LeNet-300-100: a perceptron with hidden layers of 300 and 100 units."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling: conv5(6) pool conv5(16) pool fc120 fc84 fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = (image_size // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNetSmall(nn.Module):
    """AlexNet's shape, shrunk for 28x28: a strided 5x5 conv, four 3x3 convs, two max pools, three fully connected layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
            nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = _half(image_size) // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(48 * side * side, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv+BN, the input added back (through a 1x1 conv+BN if the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class ResNetSmall(nn.Module):
    """A small ResNet: strided 5x5 conv stem to 14x14, a basic block at 14x14, one at 7x7, a dense classifier.

    The classifier reads the flattened 7x7 maps rather than their global average:
    where on the image a feature sits matters for centred pictures like these, and
    the model reaches its accuracy in fewer epochs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 24):
        super().__init__()
        self.stem = conv_bn(in_channels, width, 5, 2)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.flatten = nn.Flatten()
        side = _half(_half(image_size))
        self.fc = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.flatten(x))


class InceptionBlock(nn.Module):
    """GoogLeNet's module: 1x1, 1x1->3x3, 1x1->5x5 and 3x3-max-pool->1x1 branches, concatenated on channels."""

    def __init__(self, c_in: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, c_pool: int):
        super().__init__()
        self.branch1 = conv_bn(c_in, c1, 1)
        self.branch3 = nn.Sequential(conv_bn(c_in, c3_reduce, 1), conv_bn(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv_bn(c_in, c5_reduce, 1), conv_bn(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c_in, c_pool, 1))
        self.out_channels = c1 + c3 + c5 + c_pool

    def forward(self, x):
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


class InceptionSmall(nn.Module):
    """A small GoogLeNet: strided 5x5 conv stem and max pool to 7x7, two inception blocks, a dense classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.stem = conv_bn(in_channels, 48, 5, 2)
        self.pool = nn.MaxPool2d(2)
        self.inception1 = InceptionBlock(48, 32, 32, 48, 8, 16, 16)  # -> 112 channels
        self.inception2 = InceptionBlock(112, 48, 32, 64, 8, 16, 16)  # -> 144 channels
        self.flatten = nn.Flatten()
        side = _half(image_size) // 2
        self.fc = nn.Linear(self.inception2.out_channels * side * side, num_classes)

    def forward(self, x):
        x = self.inception1(self.pool(self.stem(x)))
        x = self.inception2(x)
        return self.fc(self.flatten(x))


MODELS: dict[str, type[nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "alexnet_small": AlexNetSmall,
    "resnet_small": ResNetSmall,
    "inception_small": InceptionSmall,
}


def _unknown(kind: str, name: str, known) -> ValueError:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.4)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown {kind} {name!r}{hint} Known: {', '.join(known)}")


def build(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """A fresh zoo model ``name`` (one of :data:`MODELS`) with random weights from torch's global generator."""
    if name not in MODELS:
        raise _unknown("zoo model", name, MODELS)
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)


# -- training ------------------------------------------------------------------------

# Adam with a linear warm-up over the first 10 % of batches, then cosine decay to
# zero.  Few epochs: the whole zoo trains in about 8 minutes on 2 CPU cores and
# meets the Fashion-MNIST goals (bench/train_zoo.py measures both).
RECIPES: dict[str, dict] = {
    "lenet300": {"optimizer": "adam", "lr": 2e-3, "batch_size": 128, "epochs": 8, "warmup": 0.1, "weight_decay": 0.0},
    "lenet5": {"optimizer": "adam", "lr": 3e-3, "batch_size": 128, "epochs": 10, "warmup": 0.1, "weight_decay": 0.0},
    "alexnet_small": {"optimizer": "adam", "lr": 2e-3, "batch_size": 128, "epochs": 4, "warmup": 0.1, "weight_decay": 0.0},
    "resnet_small": {"optimizer": "adam", "lr": 4e-3, "batch_size": 128, "epochs": 4, "warmup": 0.1, "weight_decay": 0.0},
    "inception_small": {"optimizer": "adam", "lr": 4e-3, "batch_size": 128, "epochs": 4, "warmup": 0.1, "weight_decay": 0.0},
}


def recipe(name: str, epochs: int | None = None) -> dict:
    """The training recipe of zoo model ``name``, with ``epochs`` overriding its default."""
    if name not in RECIPES:
        raise _unknown("zoo model", name, MODELS)
    r = dict(RECIPES[name])
    if epochs is not None:
        r["epochs"] = int(epochs)
    return r


def learning_rate(r: dict, step: int, total: int) -> float:
    """The recipe's rate at batch ``step`` of ``total``: linear warm-up over ``warmup * total`` steps, then cosine to 0."""
    warm = max(1, round(r["warmup"] * total))
    if step < warm:
        return r["lr"] * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return r["lr"] * 0.5 * (1.0 + math.cos(math.pi * t))


def _optimizer(model: nn.Module, r: dict) -> torch.optim.Optimizer:
    if r["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    if r["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=0.9, nesterov=True, weight_decay=r["weight_decay"])
    raise ValueError(f"recipe optimizer {r['optimizer']!r}: use 'adam' or 'sgd' (Nesterov momentum 0.9)")


def _dataset(data: str | qdata.Dataset, split: str) -> qdata.Dataset:
    if isinstance(data, qdata.Dataset):
        return data
    loaders = {"fashion-mnist": qdata.fashion_mnist, "digits": qdata.digits}
    if data not in loaders:
        raise _unknown("data set", data, loaders)
    return loaders[data](split)


def _checkpoint_key(name: str, ds: qdata.Dataset, r: dict, seed: int) -> str:
    return store_key(arch=name, data=ds.name, recipe=r, seed=seed, shape=list(ds.images.shape[1:]))


def _fresh_model(name: str, ds: qdata.Dataset, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # leave the caller's global generator alone
        torch.manual_seed(seed)
        c, h, _ = ds.images.shape[1:]
        return build(name, num_classes=len(ds.classes), in_channels=c, image_size=h)


def train(
    name: str,
    data: str | qdata.Dataset = "fashion-mnist",
    seed: int = 0,
    epochs: int | None = None,
    store: CheckpointStore | None | bool = None,
    progress: bool = True,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Zoo model ``name`` trained on ``data``'s training split, in eval mode.

    ``data`` is "fashion-mnist", "digits" or a :class:`~qlab.ext.data.Dataset`.
    ``store`` (default: ``CheckpointStore()``; ``False``: none) keeps the result
    under a key hashed from (name, data set name, recipe, seed, image shape): a
    finished model is loaded instead of retrained, and a checkpoint after every
    epoch lets an interrupted run go on from its last finished epoch, ending with
    the same weights bit for bit.  ``on_epoch(epoch, model)`` runs after each
    epoch's checkpoint (epochs count from 1).  The result depends on torch's
    number of threads; ``bench/train_zoo.py`` uses 2.
    """
    r = recipe(name, epochs)
    ds = _dataset(data, "train")
    if store is None or store is True:
        store = CheckpointStore()
    k = _checkpoint_key(name, ds, r, seed)
    resume_key = f"{k}-resume"
    model = _fresh_model(name, ds, seed)
    if store and store.exists(k):
        state, _ = store.load(k)
        model.load_state_dict(state)
        return model.eval()

    optimizer = _optimizer(model, r)
    start, seconds = 0, 0.0
    if store and store.exists(resume_key):
        state, meta = store.load(resume_key)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = meta["epoch"], meta["seconds"]

    # channels_last runs the CPU convolutions about a third faster; the returned model is contiguous again.
    model = model.to(memory_format=torch.channels_last)
    n, bs = len(ds), r["batch_size"]
    per_epoch = -(-n // bs)
    total = r["epochs"] * per_epoch
    meta = {"arch": name, "data": ds.name, "recipe": r, "seed": seed}
    bar = _progress_bar(total, start * per_epoch, name, progress)
    try:
        for epoch in range(start, r["epochs"]):
            t0 = time.perf_counter()
            model.train()
            # Each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(r, epoch * per_epoch + b, total)
                x = ds.images[idx].contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(x), ds.labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
                if b % 20 == 0:
                    bar.set_postfix(epoch=f"{epoch + 1}/{r['epochs']}", loss=f"{loss.item():.3f}", refresh=False)
            seconds += time.perf_counter() - t0
            if store:
                if epoch + 1 < r["epochs"]:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    store.save(resume_key, state, {**meta, "epoch": epoch + 1, "seconds": seconds})
                else:
                    store.save(k, model.state_dict(), {**meta, "epoch": epoch + 1, "seconds": seconds})
                    store.remove(resume_key)
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
    finally:
        bar.close()
    return model.to(memory_format=torch.contiguous_format).eval()


def pretrained(
    name: str,
    data: str | qdata.Dataset = "fashion-mnist",
    seed: int = 0,
    store: CheckpointStore | None = None,
    progress: bool = True,
) -> nn.Module:
    """Zoo model ``name`` with the weights of :func:`train`'s recipe: loaded from ``store``, or trained there first."""
    return train(name, data, seed=seed, store=store, progress=progress)


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {name}", unit="batch", disable=not enabled, leave=False)


@torch.no_grad()
def evaluate(model: nn.Module, ds: qdata.Dataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``ds``, in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in qdata.loader(ds, batch_size):
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(ds))


# -- torchvision's models ------------------------------------------------------------

TORCHVISION_MODELS = ("alexnet", "vgg16", "googlenet", "inception_v3", "resnet50", "resnet152")


def torchvision_model(name: str, weights_path: str | os.PathLike | None = None, num_classes: int = 1000) -> nn.Module:
    """torchvision's ``name`` (one of :data:`TORCHVISION_MODELS`) with random weights, in eval mode.

    Nothing is downloaded.  ``weights_path`` loads a state dict saved by the user
    (e.g. torchvision's ImageNet weights fetched elsewhere).  GoogLeNet and
    Inception-v3 are built without their auxiliary classifiers, whose weights
    such files may carry and which are then skipped.
    """
    import torchvision.models as tvm

    if name not in TORCHVISION_MODELS:
        raise _unknown("torchvision model", name, TORCHVISION_MODELS)
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        # init_weights=False skips scipy's truncated-normal init (slow); torch's default init is used.
        # torchvision's published weights expect transform_input=True (its own loader sets it too).
        kwargs.update(aux_logits=False, init_weights=False, transform_input=weights_path is not None)
    model = getattr(tvm, name)(**kwargs)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if name in ("googlenet", "inception_v3"):
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
        model.load_state_dict(state)
    return model.eval()
