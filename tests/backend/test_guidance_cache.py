"""Tests of backend/stage1/guidance_cache.py and of guidance as a session resource (issue 18): a diffusion model
is loaded once per (model, dtype, device) for the whole server (tiny SD components saved to a real folder and
loaded by diffusers' from_pretrained), evicted past the memory bound; the session's prompt, negative prompt and
model persist across jobs and checkpoints; a semantic edit after any other job uses the session's guidance and
the oracle only when asked."""

from __future__ import annotations

import time

import pytest
import torch
from _server_helpers import ThreadedServer
from _tiny_diffusion import save_tiny_sd
from interactive3d.backend.service import checkpoint as ckpt_mod
from interactive3d.backend.stage1.guidance import GuidanceConfig, OracleGuidance, StableDiffusionGuidance
from interactive3d.backend.stage1.guidance_cache import (
    DeferredGuidance,
    GuidanceCache,
    GuidanceSpec,
    module_bytes,
)
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RemoteError


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def test_cache_loads_once_per_key_and_evicts_past_bound(tiny_sd, tmp_path):
    """Two gets of one (model, dtype, device) load once and share the UNet; a get with another config is a view
    with the same modules; float64 is another key (2 loads). With a bound of one model's bytes, loading a second
    model evicts the first, so getting the first again loads it a third time."""
    cache = GuidanceCache()
    a = cache.get("sd", tiny_sd, "cpu", local_files_only=True)
    b = cache.get("sd", tiny_sd + "/", "cpu", local_files_only=True, config=GuidanceConfig(guidance_scale=7.5))
    assert isinstance(a, StableDiffusionGuidance) and cache.loads == 1 and cache.hits == 1
    assert b.unet is a.unet and b.embeddings is a.embeddings
    assert b.config.guidance_scale == 7.5 and a.config.guidance_scale == 100.0
    c = cache.get("sd", tiny_sd, "cpu", dtype=torch.float64, local_files_only=True)
    assert cache.loads == 2 and c.unet is not a.unet and next(c.unet.parameters()).dtype == torch.float64
    size = module_bytes(a)
    assert size == sum(p.numel() * p.element_size() for m in (a.text_encoder, a.vae, a.unet) for p in (*m.parameters(), *m.buffers()))

    other = save_tiny_sd(tmp_path / "other", seed=1)
    small = GuidanceCache(max_bytes=size)
    small.get("sd", tiny_sd, "cpu", local_files_only=True)
    small.get("sd", other, "cpu", local_files_only=True)
    assert [k.model for k in small.keys()] == [str((tmp_path / "other").resolve())]
    assert small.total_bytes() <= size
    small.get("sd", tiny_sd, "cpu", local_files_only=True)
    assert small.loads == 3
    with pytest.raises(ValueError, match="max_bytes"):
        GuidanceCache(max_bytes=-1)


def test_deferred_guidance_loads_at_first_call_only():
    calls = []

    class G:
        def __call__(self, x):
            return x + 1

    d = DeferredGuidance(lambda: calls.append(1) or G())
    assert d.loaded is None and calls == []
    assert d(1) == 2 and d(2) == 3 and calls == [1]


def test_spec_validation_and_round_trip():
    spec = GuidanceSpec("sd", "m", True, "a cat", "blurry", False, 50.0)
    assert GuidanceSpec.from_dict(spec.to_dict()) == spec
    assert spec.negative_prompt == "blurry" and spec.config().guidance_scale == 50.0
    with pytest.raises(ValueError, match="prompt"):
        GuidanceSpec("sd", prompt=" ")
    with pytest.raises(ValueError, match="kind"):
        GuidanceSpec("dalle", prompt="x")
    assert GuidanceSpec("oracle").model_or_default is None


def _wait(c: Client, job: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.poll(100):
            if m.kind == "event" and m.header.get("job") == job and m.header["event"] in ("done", "error"):
                assert m.header["event"] == "done", m.header
                return m.header["data"]
    raise AssertionError(f"job {job} did not finish")


def _run(c: Client, op: str, args: dict):
    job = c.request(op, args).result["job"]
    _wait(c, job)


def test_session_guidance_shared_by_every_job(tiny_sd, tmp_path):
    """One server, tiny SD in a local folder. Stage I (prompt, negative, model) loads it: 1 load. A second
    stage1.start with neither prompt nor model uses the session's (still 1 load, its own CFG scale). After a drag
    without guidance and with a reference object set, a semantic edit uses the session's SD (the cached UNet),
    not the oracle; oracle=true gives the oracle. A guided drag without a prompt uses the session's prompt.
    Distillation then refinement with guidance 'sd' reuse the cached model, and so does an edit after them. A second session with the same
    model: still 1 load. The session's guidance survives a checkpoint round trip."""
    ts = ThreadedServer()
    srv = ts.server
    try:
        with Client(ts.address) as c:
            sid = c.request("session.create", {}).result["session"]
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 80, "seed": 1})
            c.request("parts.select", {"session": sid, "name": "right", "kind": "aabb", "min": [0.0, -1, -1], "max": [1, 1, 1]})
            s = srv.sessions[sid]
            common = {"session": sid, "batch": 1, "resolution": 32}
            _run(c, "stage1.start", {**common, "guidance": "sd", "model": tiny_sd, "local_files_only": True,
                                     "prompt": "a red chair", "negative_prompt": "blurry", "steps": 2})
            cache = srv.guidance_cache
            assert cache.loads == 1
            base = cache.get("sd", tiny_sd, "cpu")  # the cached object (a hit, not a load)
            assert cache.loads == 1 and s.job.job.guidance.unet is base.unet
            assert s.guidance == GuidanceSpec("sd", tiny_sd, True, "a red chair", "blurry", True, 100.0)

            r = c.request("stage1.start", {**common, "guidance": "sd", "steps": 1, "guidance_scale": 50.0}).result
            assert r["model"] == tiny_sd
            _wait(c, r["job"])
            job = s.job.job
            assert cache.loads == 1 and job.guidance.unet is base.unet and job.guidance.config.guidance_scale == 50.0
            assert (job.prompt.prompt, job.prompt.negative_prompt) == ("a red chair", "blurry")

            c.request("stage1.set_reference", {"session": sid})  # an oracle is available, but not asked for
            _run(c, "interact.drag", {"session": sid, "source": [0.0, 0.0, 0.3], "target": [0.0, 0.0, 0.5], "radius": 0.3, "steps": 2})
            _run(c, "interact.edit", {"session": sid, "part": "right", "prompt": "a blue part", "steps": 1, "resolution": 32, "fixed_t": 0.5})
            edit = s.job.job
            assert isinstance(edit.guidance, DeferredGuidance) and edit.guidance.loaded.unet is base.unet
            assert edit.cfg.sds.prompt == "a blue part" and edit.cfg.sds.negative_prompt == "blurry"
            _run(c, "interact.edit", {"session": sid, "part": "right", "prompt": "a blue part", "steps": 1, "resolution": 32,
                                      "fixed_t": 0.5, "oracle": True})
            assert isinstance(s.job.job.guidance, OracleGuidance)
            _run(c, "interact.drag", {"session": sid, "source": [0.0, 0.0, 0.3], "target": [0.0, 0.0, 0.4], "radius": 0.3,
                                      "steps": 1, "guidance": True, "resolution": 32, "fixed_t": 0.5})
            drag = s.job.job
            assert drag.cfg.sds.prompt == "a red chair" and drag.guidance.loaded.unet is base.unet

            _run(c, "stage2.distill", {"session": sid, "steps": 2, "resolution": 16, "view_pool": 2, "rays_per_step": 128,
                                       "n_samples": 8, "levels": 4, "log2_table_size": 10, "base_resolution": 8, "per_level_scale": 1.5})
            c.request("stage2.add_part", {"session": sid, "name": "p", "center": [0.0, 0.0, 0.0], "radius": 0.5, "levels": 2, "log2_table_size": 8})
            _run(c, "stage2.refine", {"session": sid, "parts": ["p"], "guidance": "sd", "fixed_t": 0.3, "steps": 1, "views": 1,
                                      "resolution": 32, "rays_per_step": 64, "n_samples": 8})
            refine = s.job.job
            assert refine.guidance.unet is base.unet and refine.cfg.prompt == "a red chair"
            _run(c, "interact.edit", {"session": sid, "part": "right", "prompt": "a blue part", "steps": 1, "resolution": 32, "fixed_t": 0.5})
            assert s.job.job.guidance.loaded.unet is base.unet  # after a distillation and a refinement too
            assert cache.loads == 1

            other = c.request("session.create", {}).result["session"]
            c.request("gaussians.init", {"session": other, "kind": "random", "n": 40})
            _run(c, "stage1.start", {**common, "session": other, "guidance": "sd", "model": tiny_sd, "local_files_only": True,
                                     "prompt": "a lamp", "steps": 1})
            assert cache.loads == 1 and srv.sessions[other].guidance.prompt == "a lamp"
            assert srv.sessions[sid].guidance.prompt == "a red chair"

            with pytest.raises(RemoteError) as err:  # a session without guidance: a typed error, not the oracle
                c.request("interact.edit", {"session": other, "part": "right", "prompt": "x"})
            assert err.value.code in ("not_found", "invalid_args")
    finally:
        ts.stop()
    ckpt_mod.write(tmp_path, ckpt_mod.capture(s))
    back = ckpt_mod.restore_session(ckpt_mod.read(tmp_path, sid))
    assert back.guidance == s.guidance


def test_edit_without_session_guidance_is_refused_even_with_reference():
    """A reference object alone is not the session's guidance: interact.edit is invalid_args unless oracle=true."""
    ts = ThreadedServer()
    try:
        with Client(ts.address) as c:
            sid = c.request("session.create", {}).result["session"]
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 40})
            c.request("parts.select", {"session": sid, "name": "all", "kind": "all"})
            c.request("stage1.set_reference", {"session": sid})
            with pytest.raises(RemoteError) as err:
                c.request("interact.edit", {"session": sid, "part": "all", "prompt": "x", "steps": 1})
            assert err.value.code == "invalid_args" and "no guidance" in str(err.value)
            job = c.request("interact.edit", {"session": sid, "part": "all", "prompt": "x", "steps": 1, "resolution": 16,
                                              "fixed_t": 0.5, "oracle": True}).result["job"]
            _wait(c, job)
            assert isinstance(ts.server.sessions[sid].job.job.guidance, OracleGuidance)
            assert ts.server.guidance_cache.loads == 0
    finally:
        ts.stop()
