"""Guidance as a session resource (paper §3.1, §3.1.4–3.1.5, §3.2.2: one diffusion model guides Stage I,
drag, semantic edit and refinement).

- :class:`GuidanceCache` — loaded diffusion models, one per (kind, model, dtype, device), shared by every job
  of every session of a server and evicted least-recently-used beyond a memory bound. Loading Stable
  Diffusion takes seconds to minutes; a model is loaded once and then handed to each job with that job's
  own :class:`~.guidance.GuidanceConfig` (:meth:`~.guidance._SDSBase.with_config` shares the modules).
  The cache belongs to the server (``Server.guidance_cache``) and is passed to jobs through their
  loaders: no process-wide state.
- :class:`GuidanceSpec` — what a session remembers of its guidance (kind, model, prompt, negative prompt):
  plain values, checkpointed with the session, so a semantic edit after a drag, a distillation or a
  restart still uses the model and prompt the object was generated with.
- :class:`DeferredGuidance` — a guidance that loads (from the cache) at its first call, i.e. on the job's
  worker thread, never on the server's router thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .guidance import (
    DEFAULT_PIXART_MODEL,
    DEFAULT_SD_MODEL,
    GuidanceConfig,
    PixArtGuidance,
    StableDiffusionGuidance,
)

logger = logging.getLogger(__name__)

DIFFUSION_KINDS = ("sd", "pixart")
SPEC_KINDS = ("sd", "pixart", "oracle")
# What the cache holds: the SDS guidances, and Shap-E (Stage I's initialisation, backend/stage1/shap_e.py),
# which shares the same memory and the same load-once rule.
CACHE_KINDS = ("sd", "pixart", "shap_e")
# SD 2.1-base in fp16 is ≈2.6 GB, PixArt-α with its T5-XXL encoder ≈11 GB: both fit at once.
DEFAULT_CACHE_BYTES = 16 << 30


def default_model(kind: str) -> str:
    if kind not in CACHE_KINDS:
        raise ValueError(f"model kind must be one of {CACHE_KINDS}, got {kind!r}")
    if kind == "shap_e":
        from .shap_e import DEFAULT_SHAP_E_MODEL

        return DEFAULT_SHAP_E_MODEL
    return DEFAULT_SD_MODEL if kind == "sd" else DEFAULT_PIXART_MODEL


@dataclass(frozen=True)
class GuidanceSpec:
    """The session's guidance: which model and which prompt its SDS jobs use unless a request says otherwise.

    Attributes:
        kind: "sd" | "pixart" | "oracle" (the oracle's reference is the session's ``stage1.reference`` slot).
        model: hub id or local folder (None: the kind's default); unused by the oracle.
        local_files_only: never download the weights.
        prompt, negative_prompt, view_dependent: the object's prompt (PromptSpec).
        guidance_scale: classifier-free guidance scale of the session's SDS.
    """

    kind: str
    model: str | None = None
    local_files_only: bool = False
    prompt: str = ""
    negative_prompt: str = ""
    view_dependent: bool = True
    guidance_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.kind not in SPEC_KINDS:
            raise ValueError(f"GuidanceSpec.kind must be one of {SPEC_KINDS}, got {self.kind!r}")
        if self.kind in DIFFUSION_KINDS and not self.prompt.strip():
            raise ValueError(f"GuidanceSpec: a {self.kind!r} guidance needs a non-empty prompt")

    @property
    def model_or_default(self) -> str | None:
        return None if self.kind == "oracle" else (self.model or default_model(self.kind))

    def config(self) -> GuidanceConfig:
        """The SDS config interactions use with this guidance (they choose t per call)."""
        return GuidanceConfig(guidance_scale=self.guidance_scale)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GuidanceSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class CacheKey:
    kind: str
    model: str  # hub id, or the absolute path of a local folder
    dtype: str
    device: str


def module_bytes(guidance) -> int:
    """Bytes of the parameters and buffers of every torch module a guidance holds (shared ones once)."""
    seen, total = set(), 0
    for value in vars(guidance).values():
        if not isinstance(value, torch.nn.Module):
            continue
        for t in (*value.parameters(), *value.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _pretrained(kind: str, model: str, device: torch.device, dtype: torch.dtype, local_files_only: bool):
    if kind == "shap_e":
        from .shap_e import load_shap_e

        return load_shap_e(model, device, local_files_only, dtype)
    cls = StableDiffusionGuidance if kind == "sd" else PixArtGuidance
    return cls.from_pretrained(model, device=device, local_files_only=local_files_only, dtype=dtype)


class GuidanceCache:
    """Loaded guidances keyed by (kind, model, dtype, device), least-recently-used evicted past ``max_bytes``.

    Thread-safe: jobs of several sessions load on their own threads; a model being loaded is loaded once
    (loads are serialised: two at a time would only compete for the same memory and disk).

    Args:
        max_bytes: memory bound on the modules kept (the model in use is kept even if it alone exceeds it).
        load: ``load(kind, model, device, dtype, local_files_only) -> guidance``; default diffusers'
            ``from_pretrained`` through :class:`StableDiffusionGuidance` / :class:`PixArtGuidance`.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, load: Callable | None = None) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._load = load or _pretrained
        self._entries: OrderedDict[CacheKey, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # models loaded since start (tests and the status op count these)
        self.hits = 0

    @staticmethod
    def key(kind: str, model: str | None, device: torch.device | str, dtype: torch.dtype | None = None) -> CacheKey:
        model = model or default_model(kind)
        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        expanded = os.path.expanduser(model)
        if os.path.isdir(expanded):
            model = os.path.realpath(expanded)  # the same folder however it is spelt
        return CacheKey(kind, model, str(dtype).removeprefix("torch."), str(device))

    def get(
        self,
        kind: str,
        model: str | None,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        config: GuidanceConfig | None = None,
    ):
        """The guidance (or, kind "shap_e", the Shap-E pipeline) for (kind, model, dtype, device), loaded at
        most once while it stays cached.

        Returns the shared object or, with ``config``, a view of it with that config (same modules).
        Raises GuidanceWeightsMissing (from the loader) when the weights cannot be found.
        """
        key = self.key(kind, model, device, dtype)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                guidance = hit[0]
            else:
                dtype_obj = getattr(torch, key.dtype)
                logger.info("loading guidance kind=%s model=%s dtype=%s device=%s", kind, key.model, key.dtype, key.device)
                guidance = self._load(kind, key.model, torch.device(key.device), dtype_obj, local_files_only)
                self.loads += 1
                self._entries[key] = (guidance, module_bytes(guidance))
                self._evict(keep=key)
        return guidance if config is None else guidance.with_config(config)

    def _evict(self, keep: CacheKey) -> None:
        while self.total_bytes() > self.max_bytes and len(self._entries) > 1:
            oldest = next(k for k in self._entries if k != keep)
            _, size = self._entries.pop(oldest)
            logger.info("guidance cache: evicted %s (%d MB) to stay under %d MB", oldest.model, size >> 20, self.max_bytes >> 20)
        if self.total_bytes() > self.max_bytes:
            logger.warning("guidance %s alone (%d MB) exceeds the cache bound (%d MB); kept while in use",
                           keep.model, self.total_bytes() >> 20, self.max_bytes >> 20)

    def total_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class DeferredGuidance:
    """A guidance that calls ``load()`` at its first use (on the job's worker thread) and then behaves as
    the loaded one. ``loaded`` is the loaded guidance or None."""

    def __init__(self, load: Callable[[], object], description: str = "") -> None:
        self._load_fn = load
        self.description = description
        self.loaded = None

    def get(self):
        if self.loaded is None:
            self.loaded = self._load_fn()
        return self.loaded

    def __call__(self, *args, **kwargs):
        return self.get()(*args, **kwargs)
