"""Keys, atomic checkpoint writes (a SIGKILL mid-write leaves no corrupt file), result cache."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qlab.ext import store as qstore
from qlab.ext.store import CheckpointStore, ResultCache

REPO = Path(__file__).resolve().parents[2]


def test_key_is_canonical_and_short():
    a = qstore.key(arch="lenet5", data="fashion-mnist", recipe={"lr": 1e-3, "epochs": 3}, seed=0)
    b = qstore.key(seed=0, recipe={"epochs": 3, "lr": 1e-3}, data="fashion-mnist", arch="lenet5")
    assert a == b and len(a) == qstore.KEY_LENGTH and int(a, 16) >= 0
    assert a != qstore.key(arch="lenet5", data="fashion-mnist", recipe={"lr": 1e-3, "epochs": 3}, seed=1)
    with pytest.raises(TypeError, match="JSON"):
        qstore.key(model=torch.nn.Linear(1, 1))


def test_default_root_follows_qlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("QLAB_CACHE", str(tmp_path))
    assert CheckpointStore().root == tmp_path / "checkpoints"
    assert ResultCache().root == tmp_path / "results"
    monkeypatch.delenv("QLAB_CACHE")
    assert CheckpointStore().root == Path.home() / ".cache" / "qlab" / "checkpoints"


def test_save_load_round_trip(tmp_path):
    s = CheckpointStore(tmp_path / "ck")
    k = qstore.key(arch="x")
    assert not s.exists(k)
    state = {"w": torch.arange(6.0).reshape(2, 3), "nested": {"step": torch.tensor(3)}}
    s.save(k, state, {"epoch": 2, "recipe": {"lr": 0.1}})
    assert s.exists(k) and s.path(k) == tmp_path / "ck" / f"{k}.pt"
    got, meta = s.load(k)
    assert torch.equal(got["w"], state["w"]) and torch.equal(got["nested"]["step"], state["nested"]["step"])
    assert meta == {"epoch": 2, "recipe": {"lr": 0.1}}
    assert [p.name for p in (tmp_path / "ck").iterdir()] == [f"{k}.pt"]  # no temporary left behind
    s.remove(k)
    assert not s.exists(k)
    with pytest.raises(FileNotFoundError, match=k):
        s.load(k)


def test_bad_key_and_meta(tmp_path):
    s = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        s.path("../escape")
    with pytest.raises(TypeError):
        s.save("k", {}, {"bad": object()})
    assert not s.exists("k")


# The child saves a ~32 MB checkpoint through a file object that stops halfway, tells
# the parent, and waits to be killed: a crash in the middle of torch.save's writes.
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from qlab.ext import store as qstore

    real_save = torch.save

    class Stall:
        def __init__(self, f):
            self.f, self.n = f, 0
        def write(self, b):
            self.f.write(b)
            self.n += len(b)
            if self.n > 16_000_000:
                self.f.flush()
                print("HALF", flush=True)
                time.sleep(600)
            return len(b)
        def flush(self):
            self.f.flush()

    qstore.torch.save = lambda obj, f: real_save(obj, Stall(f))
    s = qstore.CheckpointStore(sys.argv[1])
    s.save(sys.argv[2], {"w": torch.full((8_000_000,), float(sys.argv[3]))}, {"value": float(sys.argv[3])})
    """
)


def kill_mid_write(root, k, value):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), k, str(value)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "HALF"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_write_leaves_no_checkpoint(tmp_path):
    s = CheckpointStore(tmp_path)
    k = qstore.key(arch="big")
    kill_mid_write(tmp_path, k, 1.0)
    assert not s.exists(k) and not s.path(k).exists()
    leftovers = [p for p in tmp_path.iterdir()]
    assert leftovers and all(p.name.startswith(f".{k}.pt.") and p.name.endswith(".tmp") for p in leftovers)
    assert leftovers[0].stat().st_size > 16_000_000  # the child really was killed mid-write
    # A rerun saves and loads as if nothing had happened.
    s.save(k, {"w": torch.full((1000,), 2.0)}, {"value": 2.0})
    state, meta = s.load(k)
    assert meta == {"value": 2.0} and torch.equal(state["w"], torch.full((1000,), 2.0))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_overwrite_keeps_old_checkpoint(tmp_path):
    s = CheckpointStore(tmp_path)
    k = qstore.key(arch="big", seed=1)
    s.save(k, {"w": torch.full((10,), 1.0)}, {"value": 1.0})
    kill_mid_write(tmp_path, k, 3.0)
    state, meta = s.load(k)
    assert meta == {"value": 1.0} and torch.equal(state["w"], torch.full((10,), 1.0))


def test_result_cache_json_and_frame(tmp_path):
    pd = pytest.importorskip("pandas")
    cache = ResultCache(tmp_path)
    k = qstore.key(sweep="bits", seed=0)
    cache.save(k, {"acc": [0.5, 0.75], "bits": 8})
    assert cache.load(k) == {"acc": [0.5, 0.75], "bits": 8}

    frame = pd.DataFrame(
        {"model": ["lenet5", "resnet_small"], "bits": [8, 4], "acc": [0.91, float("nan")], "ok": [True, False]}
    )
    cache.save("table", frame)
    back = cache.load("table")
    pd.testing.assert_frame_equal(back, frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{k}.json", "table.json"])


def test_result_cache_get_or_compute_resumes(tmp_path):
    cache = ResultCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.9}

    assert cache.get_or_compute("p1", compute) == {"acc": 0.9}
    assert cache.get_or_compute("p1", compute) == {"acc": 0.9}
    assert len(calls) == 1
