"""The Stage II state of a session: the distilled field, its occupancy grid and its refinement parts.

Lives in ``session.extras["stage2"]`` (backend/service/session.py's Extra protocol): ``state_dict`` /
``load_state_dict`` / ``from_state_dict`` make it part of checkpoints and of undo/redo snapshots, so
"add part", a distillation or a refinement can be undone exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .hashgrid import HashGridConfig, loadable_backend
from .nerf import NeRFConfig, NeRFField
from .occupancy import OccupancyGrid
from .parts import PartConfig, RefinedField

SLOT = "stage2"


def _nerf_cfg_from(d: dict) -> NeRFConfig:
    d = dict(d)
    d["grid"] = HashGridConfig(**d["grid"])
    d["background"] = tuple(d["background"])
    return NeRFConfig(**d)


def part_config_from(d: dict, name: str = "") -> PartConfig:
    """A saved part's config. Parts saved before issue 17 (no ``reads_base`` key: tables over the box with
    an explicit per_level_scale, an MLP reading the part's features only) load as such (``reads_base``
    False); unknown keys are refused with a ValueError naming them."""
    d = dict(d)
    d.setdefault("reads_base", False)
    known = {f.name for f in dataclasses.fields(PartConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"stage II part {name!r}: unknown config fields {unknown} (saved by a newer version?)")
    return PartConfig(**d)


@dataclass
class PartInfo:
    cfg: PartConfig
    center: tuple[float, float, float]
    radius: float


class Stage2State:
    """The field (``refined.base``), the refined field with its parts, and the occupancy grid."""

    def __init__(self, cfg: NeRFConfig, device: torch.device | str = "cpu", backend: str = "auto", seed: int = 0) -> None:
        self.cfg, self.backend, self.device = cfg, backend, torch.device(device)
        self.refined = RefinedField(NeRFField(cfg, backend=backend, device=device, seed=seed))
        self.occupancy: OccupancyGrid | None = None
        self.parts: dict[str, PartInfo] = {}
        self.distilled_steps = 0

    @property
    def field(self) -> NeRFField:
        return self.refined.base

    # -- Extra protocol ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "cfg": dataclasses.asdict(self.cfg),
            "backend": self.backend,
            "field": {k: v.detach().cpu().clone() for k, v in self.field.state_dict().items()},
            "occupancy": None if self.occupancy is None else self.occupancy.occ.cpu().clone(),
            # nerfacc-style EMA behind the grid, so the next update after undo/resume continues it
            "occupancy_density": None if self.occupancy is None or self.occupancy.density is None else self.occupancy.density.cpu().clone(),
            "parts": {
                n: {
                    "cfg": dataclasses.asdict(info.cfg),
                    "center": list(info.center),
                    "radius": info.radius,
                    "state": {k: v.detach().cpu().clone() for k, v in self.refined.parts[n].state_dict().items()},
                }
                for n, info in self.parts.items()
            },
            "distilled_steps": self.distilled_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        cfg = _nerf_cfg_from(state["cfg"])
        if cfg != self.cfg:
            self.cfg = cfg
            self.refined = RefinedField(NeRFField(cfg, backend=loadable_backend(state["backend"], self.device), device=self.device))
        self.field.load_state_dict({k: v.to(self.device) for k, v in state["field"].items()})
        occ = state["occupancy"]
        dens = state.get("occupancy_density")  # absent in older checkpoints: the EMA restarts
        self.occupancy = None if occ is None else OccupancyGrid(occ.to(self.device), cfg.aabb_radius, None if dens is None else dens.to(self.device))
        # parts: rebuild the set exactly (undo of "add part" removes it)
        for name in list(self.refined.parts):
            del self.refined.parts[name]
        self.parts = {}
        for name, p in state["parts"].items():
            pcfg = part_config_from(p["cfg"], name)
            cells = p["state"]["cells"].to(self.device)
            grid = OccupancyGrid(cells, cfg.aabb_radius)
            part = self.refined.add_part(name, cells, grid, pcfg)
            try:
                part.load_state_dict({k: v.to(self.device) for k, v in p["state"].items()})
            except RuntimeError as exc:  # shapes that no PartConfig of this version produces
                raise ValueError(f"stage II part {name!r}: saved tables/MLPs do not match its config: {exc}") from exc
            self.parts[name] = PartInfo(part.cfg, tuple(p["center"]), float(p["radius"]))
        self.distilled_steps = int(state["distilled_steps"])

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> "Stage2State":
        # a field saved with tcnn (or triton) rebuilds with what runs here: the table layout is the same
        obj = cls(_nerf_cfg_from(state["cfg"]), device=device, backend=loadable_backend(state["backend"], device))
        obj.backend = state["backend"]
        obj.load_state_dict(state)
        return obj
