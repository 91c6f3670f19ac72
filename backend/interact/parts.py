"""Adding and removing parts (paper §3.1.1, Eq. 1): E' = E − {e_i : i ∈ I(P)}, and E₁ ∪ E₂.

Both change the number of Gaussians, so both go through :func:`gaussians.keep` / :func:`gaussians.append`
which move parameters, Adam moments and per-Gaussian buffers (part masks) together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..stage1.gaussians import Gaussians, append, keep, num_sh_bases
from .transform import transform_gaussians

_PART_NAME = re.compile(r"^[A-Za-z0-9_.\- ]{1,64}$")


def check_part_name(name: str) -> str:
    """Part names are 1–64 characters of letters, digits, space, ``_ . -`` (they become buffer keys)."""
    if not isinstance(name, str) or not _PART_NAME.match(name):
        raise ValueError(f"part name must be 1-64 characters of [A-Za-z0-9_.- ], got {name!r}")
    return name


@dataclass(frozen=True)
class RemoveResult:
    removed: int
    remaining: int


@dataclass(frozen=True)
class MergeResult:
    added: int
    total: int
    mask: Tensor  # [N_total] bool — the merged rows


def remove_part(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    mask: Tensor,  # [N] bool — the part P to delete
) -> RemoveResult:
    """Delete the Gaussians in ``mask`` with their optimiser rows and buffer rows (Eq. 1), in place."""
    if mask.shape != (g.n,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [{g.n}], got {mask.dtype} {tuple(mask.shape)}")
    removed = int(mask.sum())
    if removed == 0:
        raise ValueError("the part is empty: nothing to remove")
    keep(g, optimizers, ~mask.to(g.device))
    return RemoveResult(removed=removed, remaining=g.n)


def _sh_to_degree(sh: Tensor, degree: int) -> Tensor:
    """[M,K,3] → [M,(degree+1)²,3]: truncate higher bands or pad them with zeros."""
    k = num_sh_bases(degree)
    if sh.shape[1] >= k:
        return sh[:, :k]
    pad = torch.zeros(sh.shape[0], k - sh.shape[1], 3, dtype=sh.dtype, device=sh.device)
    return torch.cat([sh, pad], dim=1)


def merge_gaussians(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    other: Gaussians,
    matrix: Tensor | None = None,  # [4,4] applied to ``other`` (about its origin) before merging
    part_name: str | None = None,  # mark the merged rows as this part
) -> MergeResult:
    """Concatenate ``other`` into ``g`` in place (E₁ ∪ E₂); ``other`` itself is not modified.

    The part masks of ``other`` come along (a part present in both keeps both sets of rows);
    its other buffers (densification statistics) start at zero. SH bands are padded or truncated to
    ``g``'s degree.
    """
    if other.n == 0:
        raise ValueError("the Gaussian set to merge is empty")
    if part_name is not None:
        check_part_name(part_name)
    src = other.clone()
    if matrix is not None:
        transform_gaussians(src, matrix)
    new_params = {k: v.detach() for k, v in src.params.items()}
    new_params["sh"] = _sh_to_degree(new_params["sh"], g.sh_degree)
    new_buffers = {k: v for k, v in src.buffers.items() if k.startswith("part:")}
    if part_name is not None:
        new_buffers[f"part:{part_name}"] = torch.ones(src.n, dtype=torch.bool)
    before = g.n
    append(g, optimizers, new_params, new_buffers)
    mask = torch.zeros(g.n, dtype=torch.bool, device=g.device)
    mask[before:] = True
    return MergeResult(added=src.n, total=g.n, mask=mask)
