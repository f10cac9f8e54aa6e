"""Checkpoints and results on disk, keyed by a hash of what produced them.

:func:`key` hashes the canonical JSON of its keyword arguments (architecture, data
set, recipe, seed, ...), so the same recipe finds the same file in every process.
Every write is atomic: the bytes go to a temporary file in the target folder, are
fsync'ed, and ``os.replace`` gives the file its final name.  A process killed
mid-write leaves at most a hidden ``.*.tmp`` file, never a corrupt file under a
final name, and a rerun simply redoes the work or reuses what was finished.

The cache folder is ``$QLAB_CACHE`` or else ``~/.cache/qlab``; checkpoints live in
its ``checkpoints/`` and results in its ``results/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

KEY_LENGTH = 16  # hex digits of sha256 kept: 64 bits


def cache_root() -> Path:
    """``$QLAB_CACHE`` if set, else ``~/.cache/qlab``."""
    return Path(os.environ.get("QLAB_CACHE") or Path.home() / ".cache" / "qlab").expanduser()


def canonical_json(obj) -> str:
    """JSON with sorted keys and no spaces: equal dicts give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def key(**parts) -> str:
    """Short hex sha256 of the canonical JSON of ``parts``, e.g. ``key(arch="lenet5", data="fashion-mnist", seed=0)``."""
    try:
        text = canonical_json(parts)
    except TypeError as e:
        raise TypeError(f"key parts must be JSON values (str, number, bool, None, list, dict): {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temporary binary file that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_key(k: str) -> str:
    if not k or os.sep in k or k.startswith(".") or (os.altsep and os.altsep in k):
        raise ValueError(f"store key {k!r}: must be a plain file name (no path separators, no leading dot)")
    return k


class CheckpointStore:
    """State dicts with a JSON ``meta`` dict, one ``<key>.pt`` file each under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root() / "checkpoints"

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / f"{_check_key(key)}.pt"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, state_dict: dict, meta: dict | None = None) -> Path:
        """Write ``state_dict`` (tensors, nested dicts/lists of them) and ``meta`` (JSON values) atomically."""
        meta = dict(meta or {})
        canonical_json(meta)  # refuse what would not load back as plain data
        payload = {"state_dict": state_dict, "meta": meta}
        return atomic_write(self.path(key), lambda f: torch.save(payload, f))

    def load(self, key: str) -> tuple[dict, dict]:
        """``(state_dict, meta)`` saved under ``key``, tensors on the CPU; ``FileNotFoundError`` if none."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {key} in {self.root} ({path})")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return payload["state_dict"], payload["meta"]

    def remove(self, key: str) -> None:
        """Delete the checkpoint under ``key`` if there is one."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass


class ResultCache:
    """JSON values and pandas DataFrames, one ``<key>.json`` file each under ``root``.

    Sweeps resume with :meth:`get_or_compute`: a finished point is read back, a
    missing one is computed and written (atomically) before the next starts.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root() / "results"

    def __repr__(self) -> str:
        return f"ResultCache({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / f"{_check_key(key)}.json"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, value) -> Path:
        """Write ``value``: a JSON value (dict, list, str, number, bool, None) or a pandas DataFrame."""
        if _is_frame(value):
            record = {"kind": "frame", "value": _frame_to_json(value)}
        else:
            record = {"kind": "json", "value": value}
        try:
            text = json.dumps(record, sort_keys=True, default=_numpy_scalar, allow_nan=True)
        except TypeError as e:
            raise TypeError(f"result {key}: not a JSON value or DataFrame: {e}") from None
        return atomic_write(self.path(key), lambda f: f.write(text.encode()))

    def load(self, key: str):
        """The value saved under ``key`` (a DataFrame comes back as one); ``FileNotFoundError`` if none."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no result {key} in {self.root} ({path})")
        record = json.loads(path.read_text())
        return _frame_from_json(record["value"]) if record["kind"] == "frame" else record["value"]

    def get_or_compute(self, key: str, compute):
        """The value under ``key``, computing it with ``compute()`` and saving it first if missing."""
        if self.exists(key):
            return self.load(key)
        value = compute()
        self.save(key, value)
        return self.load(key)  # the same round trip on first and later calls

    def remove(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass


def _is_frame(value) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "to_dict")


def _numpy_scalar(x):
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "isoformat"):  # timestamps
        return x.isoformat()
    raise TypeError(f"{type(x).__name__} {x!r} is not JSON serialisable")


def _frame_to_json(df) -> dict:
    split = df.to_dict(orient="split")
    return {
        "columns": [str(c) for c in df.columns],
        "index": split["index"],
        "index_name": df.index.name,
        "data": split["data"],
        "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
    }


def _frame_from_json(d: dict):
    import pandas as pd

    df = pd.DataFrame(d["data"], columns=d["columns"], index=d["index"])
    df.index.name = d["index_name"]
    return df.astype({c: t for c, t in d["dtypes"].items() if t != "object"})
