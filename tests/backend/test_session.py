"""Sessions: undo/redo restore exact states (parameters, part masks, optimiser moments, extra slots), and
checkpoints round-trip all of it, history included, through an atomic file write."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from interactive3d.backend.service import checkpoint as ck
from interactive3d.backend.service.session import Session
from interactive3d.backend.stage1.gaussians import init_random, make_optimizers


class Field:
    """A stand-in for a stage's extra state (e.g. the Stage II field): a tensor and a counter."""

    def __init__(self, w: torch.Tensor, k: int = 0) -> None:
        self.w, self.k = w, k

    def state_dict(self) -> dict:
        return {"w": self.w, "k": self.k}

    def load_state_dict(self, d: dict) -> None:
        self.w, self.k = d["w"].clone(), int(d["k"])

    @classmethod
    def from_state_dict(cls, d: dict, device) -> "Field":
        return cls(d["w"].clone().to(device), int(d["k"]))


def _step(s: Session) -> None:
    """One real AdamW step on every group, so optimiser moments are non-zero."""
    g = s.gaussians
    loss = sum((p.float() ** 2).sum() for p in g.params.values())
    for o in s.optimizers.values():
        o.zero_grad()
    loss.backward()
    for o in s.optimizers.values():
        o.step()


def _fingerprint(s: Session) -> dict:
    snap = s.gaussians.snapshot()
    out = {k: v.copy() for k, v in snap.items()}
    for name, o in s.optimizers.items():
        st = o.state_dict()["state"][0]
        out[f"opt/{name}/exp_avg"] = st["exp_avg"].numpy().copy()
        out[f"opt/{name}/exp_avg_sq"] = st["exp_avg_sq"].numpy().copy()
    for k, e in s.extras.items():
        out[f"extra/{k}/w"] = e.w.numpy().copy()
        out[f"extra/{k}/k"] = np.array(e.k)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _session() -> Session:
    s = Session("s1")
    s.gaussians = init_random(50, seed=1)
    s.optimizers = make_optimizers(s.gaussians)
    s.extras["stage2"] = Field(torch.arange(4.0))
    _step(s)
    return s


def test_undo_redo_exact():
    """Each undo returns exactly (bitwise) to the recorded state, each redo to the later one."""
    s = _session()
    states = [_fingerprint(s)]
    for i in range(3):
        s.record(f"edit{i}")
        _step(s)
        s.gaussians.set_part("p", torch.arange(50) < 10 * (i + 1))
        s.extras["stage2"].w = s.extras["stage2"].w + 1
        s.extras["stage2"].k += 1
        states.append(_fingerprint(s))
    for i in (2, 1, 0):
        assert s.undo() == f"edit{i}"
        assert _same(_fingerprint(s), states[i])
    with pytest.raises(LookupError):
        s.undo()
    for i in (0, 1):
        assert s.redo() == f"edit{i}"
        assert _same(_fingerprint(s), states[i + 1])
    _step(s)  # optimisers still work after a restore
    s.record("new")  # a new edit clears redo
    assert s.history.labels() == {"undo": ["edit0", "edit1", "new"], "redo": []}


def test_history_depth_is_bounded():
    s = Session("s2", history_depth=3)
    for i in range(5):
        s.record(f"e{i}")
    assert s.history.labels()["undo"] == ["e2", "e3", "e4"]


def test_checkpoint_round_trip(tmp_path):
    """Written atomically (no temp file left), read back: current state, history and extras identical."""
    s = _session()
    before_edit = _fingerprint(s)
    s.record("edit")
    _step(s)
    s.extras["stage2"].k = 7
    now = _fingerprint(s)
    path = ck.write(tmp_path, ck.capture(s))
    assert path == tmp_path / "sessions" / "s1" / "checkpoint.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == [".i3d-session", "checkpoint.pt", "history"]
    assert len(list((path.parent / "history").iterdir())) == 1  # the one undo entry
    with pytest.raises(ValueError, match="refusing"):  # only trusted modules' classes are imported
        ck.read(tmp_path, "s1")
    r = ck.restore_session(ck.read(tmp_path, "s1", trusted=("interactive3d.", Field.__module__)))
    assert r.extras["stage2"].__class__.__name__ == "Field"
    assert _same(_fingerprint(r), now)
    assert r.undo() == "edit" and _same(_fingerprint(r), before_edit)
    assert ck.list_checkpoints(tmp_path)[0]["session"] == "s1"


def test_checkpoint_keeps_the_fit_resolution(tmp_path):
    """The render size Stage I fitted the set at (distillation's target bound) survives a checkpoint; a file
    without it, or with a damaged value, resumes with None (unknown)."""
    s = _session()
    assert s.fit_resolution is None
    s.fit_resolution = 48
    ck.write(tmp_path, ck.capture(s))
    trusted = ("interactive3d.", Field.__module__)
    assert ck.restore_session(ck.read(tmp_path, "s1", trusted=trusted)).fit_resolution == 48
    for bad in (None, "48", -3, True, 2.5):
        c = ck.capture(s)
        c.fit_resolution = bad
        ck.write(tmp_path, c)
        assert ck.restore_session(ck.read(tmp_path, "s1", trusted=trusted)).fit_resolution is None, bad


def test_prune_deletes_only_checkpoints_older_than_the_limit(tmp_path):
    """A checkpoint last written 40 days ago goes with a 30-day limit (folder and history); a fresh one and,
    with limit 0, every one stays."""
    for sid in ("fresh", "stale"):
        s = Session(sid)
        s.gaussians = init_random(20, seed=2)
        s.record("edit")  # a history entry, so the folder has more than the one file
        ck.write(tmp_path, ck.capture(s))
    old = tmp_path / "sessions" / "stale" / "checkpoint.pt"
    t = old.stat().st_mtime - 40 * 86400
    os.utime(old, (t, t))
    assert ck.prune(tmp_path, 0) == []
    assert ck.prune(tmp_path, 30 * 86400) == ["stale"]
    assert not (tmp_path / "sessions" / "stale").exists()
    assert [c["session"] for c in ck.list_checkpoints(tmp_path)] == ["fresh"]
    assert ck.restore_session(ck.read(tmp_path, "fresh")).gaussians.n == 20


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temp file behind."""
    s = _session()
    ck.write(tmp_path, ck.capture(s))
    good = (tmp_path / "sessions" / "s1" / "checkpoint.pt").read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    _step(s)
    with pytest.raises(OSError):
        ck.write(tmp_path, ck.capture(s))
    assert (tmp_path / "sessions" / "s1" / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "sessions" / "s1").iterdir()) == [".i3d-session", "checkpoint.pt", "history"]


def test_session_id_is_checked():
    with pytest.raises(ValueError, match="session id"):
        Session("../etc")


def test_history_entries_written_once_and_pruned(tmp_path):
    """Periodic checkpoints do not rewrite history entries (same file, same mtime); entries dropped from
    the history (redo cleared by a new edit) are deleted."""
    s = _session()
    s.record("a")
    s.record("b")
    ck.write(tmp_path, ck.capture(s))
    hist = tmp_path / "sessions" / "s1" / "history"
    first = {p.name: p.stat().st_mtime_ns for p in hist.iterdir()}
    assert len(first) == 2
    _step(s)
    ck.write(tmp_path, ck.capture(s))
    assert {p.name: p.stat().st_mtime_ns for p in hist.iterdir()} == first
    s.undo()  # "b" moves to redo (a fresh capture of the state it replaced)
    s.record("c")  # clears redo
    ck.write(tmp_path, ck.capture(s))
    names = {p.name for p in hist.iterdir()}
    assert names == {f"{e.uid}.pt" for e in s.history.undo} and len(names) == 2
    r = ck.restore_session(ck.read(tmp_path, "s1", trusted=("interactive3d.", Field.__module__)))
    assert r.history.labels() == {"undo": ["a", "c"], "redo": []}


def test_checkpoint_arrays_round_trip_without_unpickling(tmp_path):
    """numpy arrays in a checkpoint (job buffers, snapshots) come back with their exact dtype, shape and values
    — 0-d, empty, non-contiguous, bool — through torch.load(weights_only=True) (issue 25)."""
    import io

    arrays = [np.array(3), np.zeros((2, 0, 3), np.float16), np.arange(6).reshape(2, 3).T, np.array([True, False])]
    buf = io.BytesIO()
    torch.save(ck._to_safe({"a": [arrays, tuple(arrays)]}), buf)
    buf.seek(0)
    back = ck._from_safe(torch.load(buf, weights_only=True))["a"]
    for got_list in back:
        for got, want in zip(got_list, arrays):
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
