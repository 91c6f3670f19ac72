"""Cost accounting: every op that allocates in proportion to its arguments estimates its peak memory first
(issue 15) and is refused with ``too_large`` — naming the estimate and the cap — when it cannot fit under
the server's memory budget; what can be split (render views, mesh slabs) runs in bounded chunks.

The per-item byte figures are upper bounds: ``scripts/bench/op_memory.py`` measures peak RSS growth ÷
items on the torch (CPU) paths (2026-12-02, this build machine: 72 B per bounding-box pair of a render,
608 B per SH-3 Gaussian with optimisers and an undo snapshot) and the constants here are about twice
that; the grid and ray figures are counted from the tensors the code allocates. The CUDA kernels
(gsplat tiles, nerfacc) need less, so the bounds stay safe there.

| op | grows with | constant |
|---|---|---|
| gaussians.init / load_ply / set_reference | N Gaussians (params, Adam moments, undo snapshot) | ``GAUSSIAN_BYTES`` |
| gaussians.render | per view: N (projection) + covered (Gaussian, pixel) pairs; all: views × pixels | ``PROJECT_BYTES``, ``PAIR_BYTES`` |
| stage2.distill / refine | rays × samples (+ hash tables, target views) | ``SAMPLE_BYTES`` |
| stage2.render | one chunk of rays × samples × levels (base + parts); all: views × pixels | ``SAMPLE_BYTES``, ``RAY_BYTES`` |
| stage2.occupancy | resolution³ | ``OCC_VOXEL_BYTES`` |
| stage2.extract_mesh | resolution³ (+ texture_size² when textured) + one chunk of field queries | ``MESH_VOXEL_BYTES``, ``TEXEL_BYTES``, ``SAMPLE_BYTES`` |
| stage2.add_part | levels × 2^log2_table_size × features | ``TABLE_ENTRY_BYTES`` |
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import torch
from interactive3d.protocol.errors import TooLarge

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.5  # of the device's free memory (RAM on CPU) at start-up
GAUSSIAN_BYTES = 1536  # one Gaussian at SH degree 3: params + grads + 2 Adam moments + snapshot + state frame
PROJECT_BYTES = 512  # one Gaussian in one view: means2d, conics, cov2d, depths, radii, colours, sort keys
PAIR_BYTES = 160  # one (Gaussian, pixel) bounding-box pair of the torch rasteriser: ids, gathers, α, transmittance, sort
PIXEL_BYTES = 64  # one output pixel: rgb, alpha, depth tensors and their numpy copies
SAMPLE_BYTES_PER_LEVEL = 160  # one ray sample, per hash-grid level, with autograd (corner ids, weights, features)
SAMPLE_BYTES_MLP = 1024  # one ray sample's MLP activations and gradients
TABLE_ENTRY_BYTES = 16  # one float32 hash-table feature + grad + 2 Adam moments
OCC_VOXEL_BYTES = 48  # cell centres [R³,3], densities, the grid
MESH_VOXEL_BYTES = 64  # density grid, optical depth (float64), marching-cubes scratch
# one baked texel: surface point, masks, colour, the RGBA image and its PNG/GLB encodings. Measured (op_memory.py
# texel, 2026-12-07): 297 B per texel (the slope between 512² and 1536²) on top of the bake's one chunk of field
# queries (counted apart, field_query_bytes); about twice that here
TEXEL_BYTES = 600
# one ray of stage2.render: its origin and direction, rgb/opacity/depth/normals and the handler's camera-z and
# float32 copies. Measured (op_memory.py stage2_render_ray): 465 B per ray with normals; about twice that here
RAY_BYTES = 1024


def _read_int(path: str) -> int | None:
    """An integer from a one-line kernel file ("max" and unreadable files: None)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_folders(root: str, self_cgroup: str) -> list[tuple[str, str, str]]:
    """(folder, limit file, usage file) of this process's memory cgroup, then of each ancestor up to ``root``:
    cgroup v2 (``0::/path`` in ``self_cgroup``: memory.max, memory.current) or v1 (``N:…memory…:/path``:
    memory/…/memory.limit_in_bytes, memory.usage_in_bytes); the root alone when ``self_cgroup`` is unreadable."""
    v2, v1 = None, None
    try:
        with open(self_cgroup, encoding="ascii") as f:
            for line in f:
                num, controllers, path = line.rstrip("\n").split(":", 2)
                if num == "0" and controllers == "":
                    v2 = path
                elif "memory" in controllers.split(","):
                    v1 = path
    except (OSError, ValueError):
        pass
    out = []
    for base, rel, files in ((root, v2, ("memory.max", "memory.current")),
                             (os.path.join(root, "memory"), v1, ("memory.limit_in_bytes", "memory.usage_in_bytes"))):
        parts = [p for p in (rel or "").split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):  # the process's own folder first, the hierarchy's root last
            folder = os.path.join(base, *parts[:depth])
            out.append((folder, os.path.join(folder, files[0]), os.path.join(folder, files[1])))
    return out


def cgroup_headroom(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's cgroup may still allocate: the least of limit − usage over its memory cgroup and every
    ancestor that sets a limit (v2 memory.max − memory.current; v1 memory.limit_in_bytes − memory.usage_in_bytes;
    "max" and v1's huge "unlimited" number set none); None when no level sets one.

    Args:
        root: where the cgroup file system is mounted (a fake tree in tests).
        self_cgroup: the process's cgroup membership file (``/proc/self/cgroup`` format).
    """
    room = None
    for _, limit_file, used_file in _cgroup_folders(root, self_cgroup):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # v1 says "no limit" with a huge number
            left = max(0, limit - (_read_int(used_file) or 0))
            room = left if room is None else min(room, left)
    return room


def _address_space_headroom() -> int | None:
    """Bytes of address space left under RLIMIT_AS (``ulimit -v``), or None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", encoding="ascii") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, soft - used)
    except (ImportError, OSError, ValueError, IndexError):
        return None


def available_bytes(device: torch.device, cgroup_root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int:
    """Free memory of ``device`` now: CUDA's free bytes, else the least of the kernel's MemAvailable, what the
    process's cgroup still allows (:func:`cgroup_headroom` of ``cgroup_root``, ``self_cgroup``) and the address
    space left under RLIMIT_AS (issue 25)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    limits = [x for x in (cgroup_headroom(cgroup_root, self_cgroup), _address_space_headroom()) if x is not None]
    return min([free, *limits])


def splat_file_count(path: str) -> tuple[int, int] | None:
    """(Gaussians, floats per Gaussian) a splat file declares in its header, read without decoding the body
    (.spz: its gzip'd header only, so a tiny file that declares millions is caught); None when unknown."""
    import struct
    import zlib

    from interactive3d.protocol import splat_data, splats

    try:
        fmt = splats.format_of(path)
        if fmt == "splat":
            return os.path.getsize(path) // 32, 14
        if fmt == "sog":  # its reader checks the declared count against MAX_POINTS and the images' sizes
            return None
        with open(path, "rb") as f:
            if fmt in ("ply", "compressed.ply"):
                form, elements = splat_data.parse_ply_elements(f)
                counts = {e.name: e for e in elements}
                v = counts.get("vertex")
                if v is None or not v.props:
                    return None
                sh = counts.get("sh")
                # no more rows than the file can hold (a header that claims more is the reader's invalid_args)
                row = v.dtype().itemsize if form != "ascii" else 2 * len(v.props)
                n = min(v.count, os.path.getsize(path) // max(1, row))
                return n, max(len(v.props), 14 + (len(sh.props) if sh is not None else 0))
            head = f.read(1 << 16)
        if head[:4] == b"NGSP":
            n, degree = struct.unpack_from("<IIIB", head)[2:4]
        else:
            data = zlib.decompressobj(wbits=31).decompress(head, 16)
            n, degree = struct.unpack_from("<IIIB", data)[2:4]
        return int(n), 14 + 3 * {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}.get(int(degree), 24)
    except (OSError, ValueError, struct.error, zlib.error):
        return None


def default_budget(device: torch.device, fraction: float = DEFAULT_FRACTION) -> int:
    return max(1, int(available_bytes(device) * fraction))


def _fmt(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class MemoryBudget:
    """The server's memory budget: :meth:`check` refuses an estimate over the cap; :meth:`reserve` also
    queues ops so that concurrent ones (different sessions) never hold more than the cap together.

    Args:
        cap: bytes.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"memory budget must be >= 1 byte, got {cap}")
        self.cap = int(cap)
        self._used = 0
        self._cond = threading.Condition()

    def check(self, what: str, estimate: float) -> int:
        """``estimate`` (bytes) as an int; TooLarge when it is over the cap."""
        est = int(estimate)
        if est > self.cap:
            raise TooLarge(
                f"{what} needs about {_fmt(est)} ({est} bytes) at peak, over the server's memory budget of "
                f"{_fmt(self.cap)} ({self.cap} bytes); ask for less (fewer views/pixels/rays/samples, a lower "
                f"resolution) or start the server with a larger --memory-budget"
            )
        return est

    @contextlib.contextmanager
    def reserve(self, what: str, estimate: float):
        """Check, then hold ``estimate`` bytes of the budget while the block runs (waits for others)."""
        est = self.check(what, estimate)
        with self._cond:
            while self._used and self._used + est > self.cap:
                self._cond.wait()
            self._used += est
        try:
            yield est
        finally:
            with self._cond:
                self._used -= est
                self._cond.notify_all()


# -- estimates (bytes at peak) -------------------------------------------------------------------------------
def gaussians_bytes(n: int) -> int:
    return int(n) * GAUSSIAN_BYTES


def render_view_bytes(n: int, pairs: int, pixels: int) -> int:
    """One view of the torch rasteriser: projection of n Gaussians and ``pairs`` covered pairs."""
    return int(n) * PROJECT_BYTES + int(pairs) * PAIR_BYTES + int(pixels) * PIXEL_BYTES


def render_output_bytes(views: int, pixels: int) -> int:
    return int(views) * int(pixels) * PIXEL_BYTES


def pair_bound(radii: torch.Tensor, means2d: torch.Tensor, width: int, height: int) -> int:
    """Upper bound on the (Gaussian, pixel) pairs of one view: every visible Gaussian's clipped bounding box.

    Args:
        radii: [N] or [N,2] projected radii in pixels (0: culled).
        means2d: [N,2] projected centres.
    """
    r = radii.reshape(radii.shape[0], -1).double()
    rx, ry = r[:, 0], r[:, -1]
    vis = (rx > 0) & (ry > 0)
    m = means2d.reshape(-1, 2).double()
    x0 = (m[:, 0] - rx).clamp(0, width)
    x1 = (m[:, 0] + rx + 1).clamp(0, width)
    y0 = (m[:, 1] - ry).clamp(0, height)
    y1 = (m[:, 1] + ry + 1).clamp(0, height)
    area = ((x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0))[vis]
    return int(area.sum().item())


def field_bytes(levels: int, features: int, log2_table_size: int, resolution_cap: int | None = None) -> int:
    """Hash tables of one field with optimiser state."""
    return int(levels) * (1 << int(log2_table_size)) * int(features) * TABLE_ENTRY_BYTES


def rays_bytes(rays: int, samples: int, levels: int) -> int:
    """One optimisation step over ``rays`` × ``samples`` with autograd."""
    return int(rays) * int(samples) * (int(levels) * SAMPLE_BYTES_PER_LEVEL + SAMPLE_BYTES_MLP)


def field_query_bytes(points: int, levels: int) -> int:
    """One batch of ``points`` field queries at ``levels`` hash-grid levels (all tables together), counted as a step
    with autograd. Measured (op_memory.py, default 16-level field): 2,434 B per render sample; the texture bake's
    fixed part (one 2¹⁸-point chunk and all else it allocates once) 878 MiB, ≤ 3,510 B per query. This gives 3,584 B
    at 16 levels: 1.47× and ≥ 1.02× those (a thin margin for the bake, whose chunk is a fixed cost per mesh)."""
    return int(points) * (int(levels) * SAMPLE_BYTES_PER_LEVEL + SAMPLE_BYTES_MLP)


def stage2_render_bytes(views: int, width: int, height: int, samples: int, levels: int, chunk: int, normals: bool) -> int:
    """``stage2.render``: the torch renderer evaluates one chunk of ``chunk`` rays × ``samples`` at a time (every
    sample in the worst case: an occupancy grid only skips some), and keeps every ray's outputs. Normals take the
    density's gradient: twice the per-sample bytes (measured 3,155 B per sample at 16 levels; this gives 7,168 B)."""
    rays = int(views) * int(width) * int(height)
    return field_query_bytes(min(rays, int(chunk)) * int(samples), levels) * (2 if normals else 1) + rays * RAY_BYTES


def grid_bytes(resolution: int, per_voxel: int) -> int:
    return int(resolution) ** 3 * int(per_voxel)


def view_pairs(g, cams) -> int:
    """The (Gaussian, pixel) pair bound of one camera (``cams`` holds one view) for Gaussians ``g``:
    one O(N) projection, no rasterisation."""
    from ..maths.rotations import quat_scale_to_covar
    from ..stage1.render import EPS2D, project

    with torch.no_grad():
        covar = quat_scale_to_covar(g.params["quats"], g.scales)
        dt = g.means.dtype
        proj = project(g.means, covar, cams.viewmats.to(dt), cams.Ks.to(dt), cams.width, cams.height, EPS2D, 0.01, 1e10)
        return pair_bound(proj.radii[0], proj.means2d[0], cams.width, cams.height)


def stage1_bytes(g, batch: int, resolution: int, distance: float, fov_deg: float) -> int:
    """A Stage I step: ``batch`` views at ``resolution``² from the nearest distance and widest fov of the
    orbit (the largest footprint), forward and backward, plus the Gaussians' own state."""
    from ..stage1.cameras import orbit_cameras

    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.tensor([distance]), torch.tensor([fov_deg]), resolution, resolution).to(g.device)
    pairs = view_pairs(g, cams)
    per_view = 2 * pairs * PAIR_BYTES + resolution * resolution * PIXEL_BYTES * 4
    return gaussians_bytes(g.n) + int(batch) * per_view
