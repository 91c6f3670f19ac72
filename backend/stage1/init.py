"""Initial Gaussian sets for Stage I (paper §3.1): random sphere/ellipsoid, coloured points, a mesh, a .ply.

Every initialiser returns a :class:`~interactive3d.backend.gaussians.Gaussians` with pre-activation
parameters (docs/conventions.md). Sizes follow 3D Gaussian Splatting: a point's initial scale is the
root-mean-square distance to its 3 nearest neighbours (isotropic), opacity 0.1.
The .ply conversions are exact: Gaussians → SplatData → Gaussians reproduces every parameter bit for bit.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from interactive3d.protocol import ply as ply_io, splats
from interactive3d.protocol.splat_data import SplatData
from torch import Tensor

from ..maths.neighbours import knn_distances
from .gaussians import Gaussians, init_random, num_sh_bases

logger = logging.getLogger(__name__)

__all__ = [
    "init_random",
    "init_from_points",
    "init_from_mesh",
    "ply_to_gaussians",
    "gaussians_to_ply",
    "load_ply",
    "save_ply",
    "nn_scales",
]

MAX_POINTS = 10_000_000


def _as_float_array(name: str, value, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape [N,{','.join(map(str, shape_tail))}], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype != np.uint8 and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def nn_scales(points: np.ndarray, k: int = 3, min_scale: float = 1e-4) -> np.ndarray:
    """[N] RMS distance of each point to its k nearest neighbours (3DGS's initial scale)."""
    if points.shape[0] < 2:
        return np.full((points.shape[0],), 0.01, np.float64)
    rms = np.sqrt(np.mean(np.square(knn_distances(points, k)), axis=1))
    return np.maximum(rms, min_scale)


def init_from_points(
    points,  # [N,3] float
    colors=None,  # [N,3] float in [0,1] or uint8 0..255; None = mid grey
    opacity: float = 0.1,
    scale: float | None = None,
    sh_degree: int = 0,
    device: torch.device | str = "cpu",
) -> Gaussians:
    """Gaussians centred on ``points`` with their colours.

    Args:
        points: [N,3] positions (finite).
        colors: [N,3] colours, floats in [0,1] or uint8; None gives grey 0.5.
        opacity: initial opacity in (0,1).
        scale: isotropic scale for every point; None = RMS distance to the 3 nearest neighbours.
    """
    pts = _as_float_array("points", points, (3,)).astype(np.float64)
    n = pts.shape[0]
    if n == 0:
        raise ValueError("points is empty: at least one point is needed")
    if n > MAX_POINTS:
        raise ValueError(f"points has {n} rows, more than the limit {MAX_POINTS}")
    if not (0.0 < opacity < 1.0):
        raise ValueError(f"opacity must be in (0,1), got {opacity}")
    if colors is None:
        rgb = np.full((n, 3), 0.5)
    else:
        rgb = _as_float_array("colors", colors, (3,))
        if rgb.shape[0] != n:
            raise ValueError(f"colors has {rgb.shape[0]} rows but points has {n}")
        rgb = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
        if rgb.min() < 0.0 or rgb.max() > 1.0:
            raise ValueError(f"float colors must lie in [0,1], got range [{rgb.min():.3g}, {rgb.max():.3g}]")
    if scale is None:
        s = nn_scales(pts)
    else:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        s = np.full((n,), float(scale))
    return Gaussians.from_activated(
        torch.from_numpy(pts).float(),
        torch.from_numpy(rgb).float(),
        torch.full((n,), float(opacity)),
        torch.from_numpy(np.repeat(s[:, None], 3, axis=1)).float(),
        sh_degree=sh_degree,
        device=device,
    )


MESH_FORMATS = ("obj", "glb", "gltf", "ply", "stl", "off")  # parsed from bytes; no archives, no formats that fetch


def _reference_guard(fetch):
    """A trimesh resolver through which every file a mesh names (glTF buffers and images that are not ``data:``
    URIs, OBJ ``mtllib`` and ``map_*``, PLY ``TextureFile``) must pass. ``fetch(name) -> bytes`` decides; None
    refuses all. trimesh swallows some failures (an OBJ's missing .mtl only loses its colours), so the guard keeps
    the first refusal and :func:`load_mesh_bytes` raises it after parsing."""
    from trimesh.resolvers import Resolver

    class Guard(Resolver):
        def __init__(self) -> None:
            self.error: Exception | None = None

        def get(self, name):
            try:
                if fetch is None:
                    raise ValueError(f"the mesh refers to the external file {str(name)[:200]!r}; only self-contained "
                                     "meshes are read (embed buffers and textures: .glb or data: URIs)")
                return fetch(str(name))
            except Exception as exc:
                self.error = self.error or exc
                raise

        def namespaced(self, namespace):
            return self

        def keys(self):
            return iter(())

        def write(self, name, data):
            raise ValueError("mesh loading never writes files")

    return Guard()


def load_mesh_bytes(data: bytes | memoryview, file_type: str, fetch=None):
    """A mesh file's bytes as one trimesh.Trimesh in the backend's frame, by each format's convention
    (docs/conventions.md, "Files for other programs"): glTF and OBJ are Y up and come in rotated to Z up
    (as Blender's importers do); glTF's COLOR_0 is linear and becomes sRGB vertex colours; PLY, STL and
    OFF are taken as they are.

    ``file_type`` is one of :data:`MESH_FORMATS`. Files the mesh refers to are read only through
    ``fetch(name) -> bytes`` (which checks ``name`` like any path); None refuses them (ValueError), so an
    upload can never make the server read a file by naming it."""
    import io

    import trimesh

    from ..maths.conventions import linear_to_srgb, y_up_to_blender

    ext = file_type.lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise ValueError(f"mesh format {file_type!r} is not read (formats: {', '.join(MESH_FORMATS)})")
    guard = _reference_guard(fetch)
    try:
        loaded = trimesh.load(io.BytesIO(bytes(data)), file_type=ext, resolver=guard, process=False,
                              **({} if ext in ("glb", "gltf") else {"force": "mesh"}))
    except Exception:
        if guard.error is not None:
            raise guard.error from None
        raise
    if guard.error is not None:  # swallowed by trimesh (an OBJ's material): still refused
        raise guard.error
    if ext in ("glb", "gltf"):
        if isinstance(loaded, trimesh.Scene):  # (Scene.dump would drop the COLOR_0 attribute)
            geoms = []
            for node in loaded.graph.nodes_geometry:
                matrix, name = loaded.graph[node]
                src = loaded.geometry[name]
                g = src.copy()
                g.visual = src.visual  # keep the attributes copy() may drop
                g.vertices = trimesh.transform_points(np.asarray(src.vertices), matrix)
                geoms.append(g)
        else:
            geoms = [loaded]
        parts = []
        for g in geoms:
            visual = g.visual
            image = getattr(getattr(visual, "material", None), "baseColorTexture", None)
            colour = getattr(visual, "vertex_attributes", {}).get("color") if visual.kind != "vertex" else None
            if visual.kind == "vertex":  # COLOR_0 without a material: trimesh keeps the linear values as bytes
                colour = np.asarray(visual.vertex_colors, np.float64) / 255.0
            if colour is not None and not (image is not None and getattr(visual, "uv", None) is not None):
                rgba = np.asarray(colour, np.float64)
                srgb = np.concatenate([linear_to_srgb(rgba[:, :3]), rgba[:, 3:4] if rgba.shape[1] == 4 else np.ones((len(rgba), 1))], axis=1)
                g = trimesh.Trimesh(g.vertices, g.faces, vertex_colors=np.round(srgb * 255).astype(np.uint8), process=False)
            parts.append(g)
        if not parts:
            raise ValueError("the glTF holds no mesh")
        mesh = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    else:
        mesh = loaded
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"the {ext} file holds no triangle mesh")
    if ext in ("glb", "gltf", "obj"):
        mesh = mesh.copy()
        mesh.vertices = y_up_to_blender(np.asarray(mesh.vertices))
    return mesh


def load_mesh_file(path: str | os.PathLike, fetch=None):
    """:func:`load_mesh_bytes` of a file on disk (its suffix names the format). The files it refers to are
    refused unless ``fetch`` is given (:func:`sibling_fetch` reads them from the mesh's own folder)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return load_mesh_bytes(data, os.path.splitext(path)[1], fetch)


def sibling_fetch(path: str | os.PathLike):
    """A ``fetch`` for :func:`load_mesh_file` that reads referenced files from the mesh's folder only (local use:
    the server checks every name against its data folders instead)."""
    folder = os.path.realpath(os.path.dirname(os.fspath(path)))

    def fetch(name: str) -> bytes:
        real = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(real) != folder or not os.path.isfile(real):
            raise ValueError(f"the mesh refers to {name!r}, which is not a file beside it")
        with open(real, "rb") as f:
            return f.read()

    return fetch


def _mesh_sample(mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform surface samples [n,3] and their colours [n,3] in [0,1] (texture, vertex or face)."""
    import trimesh

    kind = getattr(mesh.visual, "kind", None)
    rng = np.random.default_rng(seed)
    if kind == "texture":
        points, _faces, colors = trimesh.sample.sample_surface(mesh, n, sample_color=True, seed=rng)
        rgb = np.asarray(colors, dtype=np.float64)[:, :3] / 255.0
        return np.asarray(points), rgb
    points, faces, bary = trimesh.sample.sample_surface(mesh, n, return_barycentric=True, seed=rng)
    if kind == "vertex":
        vc = np.asarray(mesh.visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        tri = vc[mesh.faces[faces]]  # [n,3 corners,3 rgb]
        rgb = np.einsum("nc,ncr->nr", bary, tri)
    elif kind == "face":
        rgb = np.asarray(mesh.visual.face_colors, dtype=np.float64)[faces, :3] / 255.0
    else:
        rgb = np.full((n, 3), 0.5)
    return np.asarray(points), rgb


def init_from_mesh(
    mesh,  # trimesh.Trimesh | path to a mesh file (.obj .glb .gltf .ply .stl .off), see load_mesh_file
    n: int = 4096,
    seed: int = 0,
    fit_radius: float | None = None,
    opacity: float = 0.1,
    sh_degree: int = 0,
    device: torch.device | str = "cpu",
) -> Gaussians:
    """Gaussians on ``n`` area-uniform surface samples of a mesh, coloured by its texture/vertex/face colours.

    Args:
        mesh: a trimesh.Trimesh or a path (scenes are concatenated into one mesh).
        n: number of samples (paper: 4096).
        fit_radius: if set, centre the mesh's bounding box at the origin and scale it so that the farthest
            vertex lies at this radius (objects live in a sphere of radius ~1, docs/conventions.md).
    """
    import trimesh

    if n <= 0 or n > MAX_POINTS:
        raise ValueError(f"n must be in [1, {MAX_POINTS}], got {n}")
    if not isinstance(mesh, trimesh.Trimesh):
        path = os.fspath(mesh)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mesh file not found: {path}")
        mesh = load_mesh_file(path, sibling_fetch(path))
    if len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("mesh has no faces with positive area")
    if fit_radius is not None:
        if not (math.isfinite(fit_radius) and fit_radius > 0):
            raise ValueError(f"fit_radius must be positive, got {fit_radius}")
        mesh = mesh.copy()
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
        mesh.apply_scale(fit_radius / max(np.linalg.norm(mesh.vertices, axis=1).max(), 1e-12))
    points, rgb = _mesh_sample(mesh, n, seed)
    return init_from_points(points, np.clip(rgb, 0.0, 1.0), opacity=opacity, sh_degree=sh_degree, device=device)


def ply_to_gaussians(data: SplatData, device: torch.device | str = "cpu") -> Gaussians:
    """SplatData (pre-activation, from a .ply) → Gaussians, bit-exact.

    SH bands beyond the largest complete degree are dropped with a warning (e.g. 10 rest bands → degree 2).
    Normals and extra properties are not kept (splatting does not use them).
    """
    if data.n == 0:
        raise ValueError("the .ply holds zero Gaussians")
    m = data.sh_rest.shape[1]
    degree = int(math.isqrt(m + 1)) - 1
    k = num_sh_bases(degree)
    if k - 1 != m:
        logger.warning("%d SH rest bands is not a complete degree; keeping degree %d (%d bands)", m, degree, k - 1)
    sh = np.concatenate([data.sh_dc[:, None, :], data.sh_rest[:, : k - 1, :]], axis=1).astype(np.float32)
    arrays = {
        "means": data.means, "log_scales": data.log_scales, "quats": data.quats,
        "opacity_logits": data.opacity_logits, "sh": sh,
    }
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise ValueError(f"the .ply has non-finite values in {name}")
    params = {
        name: torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device).requires_grad_(True)
        for name, arr in arrays.items()
    }
    return Gaussians(params=params, sh_degree=degree)


def gaussians_to_ply(g: Gaussians) -> SplatData:
    """Gaussians → SplatData (pre-activation; INRIA layout when written), bit-exact."""
    p = {k: v.detach().cpu().float().numpy() for k, v in g.params.items()}
    return SplatData(
        means=p["means"].copy(),
        sh_dc=p["sh"][:, 0, :].copy(),
        sh_rest=p["sh"][:, 1:, :].copy(),
        opacity_logits=p["opacity_logits"].copy(),
        log_scales=p["log_scales"].copy(),
        quats=p["quats"].copy(),
    )


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu", spz_axes: str = "ply") -> Gaussians:
    """Read a splat file (INRIA or compressed .ply, .splat, .spz, .sog: protocol.splats.read_any; ``spz_axes`` as
    there) into Gaussians (FileNotFoundError / PlyFormatError / ValueError)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f".ply file not found: {os.fspath(path)}")
    return ply_to_gaussians(splats.read_any(path, spz_axes=spz_axes), device=device)


def save_ply(g: Gaussians, path: str | os.PathLike) -> None:
    """Write Gaussians as an INRIA-layout .ply (atomic: temp file + rename)."""
    if g.n == 0:
        raise ValueError("cannot save zero Gaussians")
    ply_io.write_ply(path, gaussians_to_ply(g))
