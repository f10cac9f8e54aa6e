"""Image data sets held in memory as tensors: IDX files (MNIST, Fashion-MNIST), scikit-learn's digits.

A :class:`Dataset` is the whole split as two tensors, ``images`` float32 ``[N, C, H, W]``
and ``labels`` int64 ``[N]``.  Pixels are scaled to [0, 1] and then normalised with
fixed per-data-set constants, ``x = (p / p_max - mean) / std``, so the same file always
gives the same tensor.  Batches come in file order (:func:`loader`); training code
shuffles with its own generator.

IDX is the format of the MNIST files: a magic number ``0x00 0x00 <dtype> <ndim>``,
``ndim`` big-endian uint32 sizes, then the values big-endian, row-major.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Mean and standard deviation of the 60,000 training images scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# scikit-learn's digits: 16 grey levels; mean and std of all 1,797 images / 16.
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760
DIGITS_TRAIN = 1437  # the first 80 % of load_digits() is "train", the rest "test"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

SPLITS = ("train", "test")
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Dataset:
    """One split in memory: ``images`` float32 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    classes: list

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, images={list(self.images.shape)}, classes={len(self.classes)})"


# -- IDX files -----------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed or not), native byte order."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; an IDX file starts with 0x00 0x00
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(f"{path}: broken or truncated gzip stream ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file, magic {raw[:4].hex()!r} should be 0000<dtype><ndim> "
            f"with dtype one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)}"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims need {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes in"
        raise ValueError(f"{path}: {what} IDX data: shape {shape} of {dtype.name} needs {expected} bytes, file has {len(raw)}")
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    # MNIST's own names use "-idx3-ubyte"; some mirrors write ".idx3-ubyte".
    names = [stem, stem.replace("-idx", ".idx")]
    candidates = [folder / (n + gz) for n in names for gz in (".gz", "")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no {stem} in {folder}: looked for {', '.join(c.name for c in candidates)}")


def load_idx_dataset(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    name: str | None = None,
    classes: list | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> Dataset:
    """The ``split`` ("train" or "test") of the MNIST-style IDX files in ``data_dir``.

    Looks for ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
    (``t10k-...`` for "test").  Pixels become ``(p / 255 - mean) / std``; ``name``
    defaults to the folder's name and ``classes`` to "0".."9".
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {SPLITS}")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (data_dir of the IDX files)")
    prefix = _IDX_PREFIX[split]
    image_file = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    label_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{image_file} {images.shape} and {label_file} {labels.shape} are not N images and N labels")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    x = (x / scale - mean) / std
    y = torch.from_numpy(labels.astype(np.int64))
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    return Dataset(x.contiguous(), y, name or folder.name, list(classes))


def fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST, 28x28 grey, 10 classes; 60,000 "train" and 10,000 "test" images.

    Reads the IDX files from ``data_dir``, by default where Debian's package
    ``dataset-fashion-mnist`` puts them (/usr/share/datasets/fashion-mnist).
    """
    folder = Path(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    try:
        return load_idx_dataset(
            folder, split, name="fashion-mnist", classes=FASHION_MNIST_CLASSES,
            mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {e}. Get it with Debian's package dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist; files under {FASHION_MNIST_DIR}), "
            "or pass data_dir= any folder holding its four IDX files, "
            "or download it with torchvision: torchvision_dataset('FashionMNIST', root, split, download=True)"
        ) from None


def digits(split: str = "all") -> Dataset:
    """scikit-learn's bundled 8x8 digits ``[N, 1, 8, 8]``: 1,797 images, "train" the first 1,437, "test" the rest."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)
    x = (x / 16.0 - DIGITS_MEAN) / DIGITS_STD
    y = torch.from_numpy(bunch.target.astype(np.int64))
    rows = {"all": slice(None), "train": slice(None, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None)}
    if split not in rows:
        raise ValueError(f"split {split!r}: use one of {tuple(rows)}")
    name = "digits" if split == "all" else f"digits-{split}"
    return Dataset(x[rows[split]].contiguous(), y[rows[split]].contiguous(), name, [str(i) for i in range(10)])


def torchvision_dataset(name: str, root: str | os.PathLike, split: str = "test", download: bool = False):
    """A torchvision data set of normalised ``(image, label)`` pairs, for data too big to hold as tensors.

    ``name`` is "MNIST", "FashionMNIST", "CIFAR10" (``root`` as torchvision lays it
    out) or "ImageFolder" (``root/split/<class>/*.jpeg``, e.g. ImageNet's "val",
    resized to 256 and centre-cropped to 224).  Batch it with ``torch.utils.data.DataLoader``.
    """
    import torchvision
    from torchvision import transforms as T

    train = split == "train"
    if name == "ImageFolder":
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return torchvision.datasets.ImageFolder(os.path.join(root, split), transform=tf)
    stats = {
        "MNIST": (MNIST_MEAN, MNIST_STD),
        "FashionMNIST": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        "CIFAR10": (CIFAR10_MEAN, CIFAR10_STD),
    }
    if name not in stats:
        raise ValueError(f"torchvision data set {name!r}: use one of {[*stats, 'ImageFolder']}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {SPLITS}")
    tf = T.Compose([T.ToTensor(), T.Normalize(*stats[name])])
    return getattr(torchvision.datasets, name)(root, train=train, transform=tf, download=download)


# -- subsets and batches -------------------------------------------------------------

def subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` images of ``ds`` drawn without replacement, in file order; the same for the same (len, n, seed).

    The name records the draw (``"fashion-mnist[1000@0]"``), so results keyed by
    name tell subsets apart.  ``n >= len(ds)`` gives ``ds`` itself.
    """
    if n < 0:
        raise ValueError(f"subset of {n} images: n must be >= 0")
    if n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values
    return Dataset(ds.images[idx], ds.labels[idx], f"{ds.name}[{n}@{seed}]", ds.classes)


class Loader:
    """Batches ``(images, labels)`` of a :class:`Dataset` in order, the last one possibly shorter."""

    def __init__(self, ds: Dataset, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be >= 1")
        self.ds, self.batch_size = ds, batch_size

    def __len__(self) -> int:
        return -(-len(self.ds) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.ds), self.batch_size):
            stop = start + self.batch_size
            yield self.ds.images[start:stop], self.ds.labels[start:stop]


def loader(ds: Dataset, batch_size: int = 256) -> Loader:
    """Iterate ``ds`` in batches of ``batch_size`` without shuffling (evaluation order)."""
    return Loader(ds, batch_size)
