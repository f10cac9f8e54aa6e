"""IDX files, Fashion-MNIST from a folder, digits, subsets and batches."""
import gzip
import struct

import numpy as np
import pytest
import torch

from qlab.ext import data

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written here independently of the reader."""
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress=False):
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", list(CODES))
def test_read_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = data.read_idx(write_idx(tmp_path / "a.idx", array, compress))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_one_dimensional(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "l", labels)), labels)


def test_read_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="bad-magic.*not an IDX file"):
        data.read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")  # unknown dtype code
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_names_file(tmp_path, compress):
    raw = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10]
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match="short.idx.*truncated"):
        data.read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        data.read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "head"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="head.*truncated IDX header"):
        data.read_idx(path)


def write_split(folder, prefix, n, compress, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    gz = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{gz}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", labels, compress)
    return images, labels


def test_fashion_mnist_from_folder(tmp_path):
    images, labels = write_split(tmp_path, "train", 12, compress=True)
    write_split(tmp_path, "t10k", 5, compress=False, seed=1)
    ds = data.fashion_mnist("train", data_dir=tmp_path)
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    expected = (torch.from_numpy(images).float() / 255 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    torch.testing.assert_close(ds.images[:, 0], expected, rtol=0, atol=1e-6)
    assert len(data.fashion_mnist("test", data_dir=tmp_path)) == 5


def test_load_idx_dataset_generic_names(tmp_path):
    write_split(tmp_path, "t10k", 3, compress=False)
    ds = data.load_idx_dataset(tmp_path, "test")
    assert ds.name == tmp_path.name and ds.classes == [str(i) for i in range(len(ds.classes))]
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0


def test_fashion_mnist_missing_folder_names_package(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        data.fashion_mnist("train", data_dir=missing)
    message = str(err.value)
    assert str(missing) in message
    assert "dataset-fashion-mnist" in message and "apt-get install" in message
    assert "/usr/share/datasets/fashion-mnist" in message and "data_dir=" in message and "torchvision" in message


def test_missing_file_names_path(tmp_path):
    write_split(tmp_path, "train", 2, compress=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        data.load_idx_dataset(tmp_path, "train")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="'valid'"):
        data.load_idx_dataset(tmp_path, "valid")


def test_digits():
    ds = data.digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.labels.shape == (1797,)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert abs(float(ds.images.mean())) < 0.01 and abs(float(ds.images.std()) - 1) < 0.01
    train, test = data.digits("train"), data.digits("test")
    assert len(train) + len(test) == len(ds)
    assert torch.equal(torch.cat([train.images, test.images]), ds.images)


def test_subset_is_deterministic():
    ds = data.digits()
    a, b = data.subset(ds, 100, seed=3), data.subset(ds, 100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.name == b.name == "digits[100@3]"
    c = data.subset(ds, 100, seed=4)
    assert not torch.equal(a.labels, c.labels) and c.name != a.name
    assert data.subset(ds, 10_000) is ds


def test_loader_batches_in_order():
    ds = data.subset(data.digits(), 50)
    batches = list(data.loader(ds, 16))
    assert len(batches) == len(data.loader(ds, 16)) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.images)
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
