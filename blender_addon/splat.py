"""Splat objects: a mesh of loose vertices (the Gaussian centres) carrying per-splat attributes.

The object layout is a contract (shared/DESIGN.md): vertices = centres μ in the object's local frame and
POINT attributes holding the *activated* state frame (docs/conventions.md)

    i3d_color     FLOAT_VECTOR  rgb in [0,1], display-referred (sRGB)
    i3d_opacity   FLOAT         opacity in [0,1]
    i3d_scale     FLOAT_VECTOR  σ_x σ_y σ_z > 0
    i3d_rotation  QUATERNION    unit quaternion, w-first (Blender stores quaternion attributes w,x,y,z)

plus a geometry-nodes modifier that instances ellipsoids (geometry_nodes.py).

Vertex i is Gaussian i only while nobody edits the mesh's topology in Blender (issue 14). So every state
write also stamps the mesh: an INT attribute ``i3d_index`` = 0…N−1 (Blender's delete, duplicate, extrude
and merge carry it along with the vertices, so any of them shows as a break in 0…N−1) and ID properties
``i3d_count``, ``i3d_revision`` (the backend's state revision of the frame) and ``i3d_session``. Blender's
undo restores them together with the vertices they describe. :func:`index_map_problem` checks them. Everything is written with
``foreach_set`` on float32 arrays: no Python loop runs per splat.

A .ply import also keeps the file's exact pre-activation values (``i3d_ply_*`` attributes) so that an
export of an unchanged splat is bit-identical to the file; see :func:`splat_data`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import bpy
import numpy as np

from . import geometry_nodes, materials
from ._deps import splat_data as splat_io  # not to shadow splat_data() below

log = logging.getLogger(__name__)

ATTR_COLOR = "i3d_color"
ATTR_OPACITY = "i3d_opacity"
ATTR_SCALE = "i3d_scale"
ATTR_ROTATION = "i3d_rotation"
PART_PREFIX = "i3d_part_"
# The file's own pre-activation values, kept for lossless export (see splat_data()).
PLY_PREFIX = "i3d_ply_"
_PLY_DC, _PLY_OPACITY, _PLY_SCALE, _PLY_ROT, _PLY_NORMAL = (
    PLY_PREFIX + "f_dc", PLY_PREFIX + "opacity", PLY_PREFIX + "scale", PLY_PREFIX + "rot", PLY_PREFIX + "normal")
_PLY_REST = PLY_PREFIX + "f_rest_"  # + k: FLOAT_VECTOR, SH coefficient k+1 of (r, g, b)
_PLY_EXTRA = PLY_PREFIX + "x_"  # + property name: FLOAT
ATTR_INDEX = "i3d_index"  # INT: the Gaussian index of each vertex when the frame was written
PROP_COUNT, PROP_REVISION, PROP_SESSION = "i3d_count", "i3d_revision", "i3d_session"

# Above this many splats a new object starts in the light display mode (points), see BLENDER.md.
LIGHT_MODE_THRESHOLD = 100_000
MODIFIER_NAME = "I3D Splats"
_STATE_ATTRS = (  # (name, type, columns of the state frame)
    (ATTR_COLOR, "FLOAT_VECTOR", slice(3, 6)),
    (ATTR_OPACITY, "FLOAT", slice(6, 7)),
    (ATTR_SCALE, "FLOAT_VECTOR", slice(7, 10)),
    (ATTR_ROTATION, "QUATERNION", slice(10, 14)),
)
_FOREACH_KEY = {"FLOAT": "value", "FLOAT_VECTOR": "vector", "QUATERNION": "value", "BOOLEAN": "value",
                "INT": "value", "FLOAT_COLOR": "color"}
_WIDTH = {"FLOAT": 1, "FLOAT_VECTOR": 3, "QUATERNION": 4, "BOOLEAN": 1, "INT": 1, "FLOAT_COLOR": 4}


# -- validation ---------------------------------------------------------------------------------------
def _check_state(state) -> np.ndarray:
    if not isinstance(state, np.ndarray):
        raise TypeError(f"state must be a numpy array [N,14], got {type(state).__name__}")
    if state.ndim != 2 or state.shape[1] != 14:
        raise ValueError(f"state must have shape [N,14], got {state.shape}")
    if not np.issubdtype(state.dtype, np.floating):
        raise TypeError(f"state must be floating point, got dtype {state.dtype}")
    return np.ascontiguousarray(state, dtype=np.float32)


def _check_mesh_object(obj) -> bpy.types.Mesh:
    if not isinstance(obj, bpy.types.Object) or obj.type != "MESH":
        raise TypeError(f"obj must be a mesh object, got {getattr(obj, 'type', type(obj).__name__)}")
    return obj.data


def is_splat_object(obj) -> bool:
    """True if ``obj`` is a mesh object with the four i3d_* state attributes."""
    if not isinstance(obj, bpy.types.Object) or obj.type != "MESH":
        return False
    attrs = obj.data.attributes
    return all(attrs.get(name) is not None for name, _, _ in _STATE_ATTRS)


# -- attribute helpers (foreach_set / foreach_get on float32, the fast path) --------------------------
def _write_attr(mesh: bpy.types.Mesh, name: str, kind: str, values: np.ndarray) -> None:
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.data_type != kind or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(name, kind, "POINT")
    dtype = bool if kind == "BOOLEAN" else (np.int32 if kind == "INT" else np.float32)
    attr.data.foreach_set(_FOREACH_KEY[kind], np.ascontiguousarray(values, dtype=dtype).ravel())


def _read_attr(mesh: bpy.types.Mesh, name: str) -> np.ndarray | None:
    attr = mesh.attributes.get(name)
    if attr is None:
        return None
    kind = attr.data_type
    if kind not in _FOREACH_KEY:
        raise TypeError(f"attribute {name!r} has unsupported type {kind}")
    n, width = len(attr.data), _WIDTH[kind]
    dtype = bool if kind == "BOOLEAN" else (np.int32 if kind == "INT" else np.float32)
    out = np.empty(n * width, dtype=dtype)
    attr.data.foreach_get(_FOREACH_KEY[kind], out)
    return out.reshape(n, width) if width > 1 else out


def _remove_attrs(mesh: bpy.types.Mesh, prefix: str) -> None:
    for name in [a.name for a in mesh.attributes if a.name.startswith(prefix)]:
        mesh.attributes.remove(mesh.attributes[name])


def _set_vertex_count(mesh: bpy.types.Mesh, n: int) -> None:
    """Make the mesh exactly ``n`` loose vertices (clearing it drops every attribute)."""
    if len(mesh.vertices) == n and len(mesh.edges) == 0 and len(mesh.polygons) == 0:
        return
    mesh.clear_geometry()
    mesh.vertices.add(n)


# -- public API -----------------------------------------------------------------------------------------
def apply_state(obj: bpy.types.Object, state: np.ndarray,
                parts: Mapping[str, np.ndarray] | None = None) -> None:
    """Write an activated state frame onto a splat object (the sync step calls this per state event).

    Args:
        obj: the splat object (a mesh object).
        state: [N,14] float x y z | r g b | opacity | sx sy sz | qw qx qy qz (docs/conventions.md), local frame.
        parts: optional name → bool [N] masks, stored as BOOLEAN attributes ``i3d_part_<name>``; when given,
            parts not named are removed. When None, existing part attributes are kept if N is unchanged.

    If N changes the mesh is rebuilt (all attributes, including the file's ``i3d_ply_*`` values, go away).
    """
    mesh = _check_mesh_object(obj)
    state = _check_state(state)
    n = state.shape[0]
    if parts is not None:
        for name, mask in parts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"part names must be non-empty strings, got {name!r}")
            if np.shape(mask) != (n,):
                raise ValueError(f"parts[{name!r}] must be a bool mask of shape ({n},), got {np.shape(mask)}")
    if obj.mode == "EDIT":
        # In Edit Mode the edit-mesh is the truth (mesh attributes read as empty, and the edit-mesh would
        # overwrite the mesh on exit): step out to Object Mode, write, step back in. The selection
        # survives (it is flushed to the mesh), unless N changed.
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
            bpy.ops.object.mode_set(mode="OBJECT")
        try:
            apply_state(obj, state, parts)
        finally:
            with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
                bpy.ops.object.mode_set(mode="EDIT")
        return
    _set_vertex_count(mesh, n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(state[:, 0:3]).ravel())
    for name, kind, cols in _STATE_ATTRS:
        _write_attr(mesh, name, kind, state[:, cols])
    _write_attr(mesh, ATTR_INDEX, "INT", np.arange(n, dtype=np.int32))  # rewritten every time: cheap, and exact
    mesh[PROP_COUNT] = n
    if parts is not None:
        _remove_attrs(mesh, PART_PREFIX)
        for name, mask in parts.items():
            _write_attr(mesh, PART_PREFIX + name, "BOOLEAN", np.asarray(mask, dtype=bool))
    mesh.update()


@contextlib.contextmanager
def _readable_mesh(obj: bpy.types.Object):
    """The object's mesh with its attributes readable by foreach_get.

    In Edit Mode the mesh's attribute API points at the (empty) edit-mesh layers, so the edit-mesh is
    flushed and a temporary copy is read instead (one C-level copy; removed afterwards).
    """
    mesh = _check_mesh_object(obj)
    if obj.mode != "EDIT":
        yield mesh
        return
    obj.update_from_editmode()
    copy = mesh.copy()
    try:
        yield copy
    finally:
        bpy.data.meshes.remove(copy)


def _state_of(mesh: bpy.types.Mesh, label: str) -> np.ndarray:
    n = len(mesh.vertices)
    out = np.empty((n, 14), np.float32)
    co = np.empty(n * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    out[:, 0:3] = co.reshape(n, 3)
    for name, _, cols in _STATE_ATTRS:
        values = _read_attr(mesh, name)
        if values is None:
            raise ValueError(f"object {label!r} is not a splat object: attribute {name!r} is missing")
        out[:, cols] = values.reshape(n, -1)
    return out


def read_state(obj: bpy.types.Object) -> np.ndarray:
    """The object's state frame [N,14] float32 (positions in the local frame), read with foreach_get.

    In Edit Mode the edit-mesh is flushed first so moved or deleted vertices are seen.
    """
    with _readable_mesh(obj) as mesh:
        return _state_of(mesh, obj.name)


def read_parts(obj: bpy.types.Object) -> dict[str, np.ndarray]:
    """name → bool [N] part masks stored on the object."""
    with _readable_mesh(obj) as mesh:
        return {a.name[len(PART_PREFIX):]: _read_attr(mesh, a.name)
                for a in list(mesh.attributes) if a.name.startswith(PART_PREFIX)}


def selected_indices(obj: bpy.types.Object) -> np.ndarray:
    """Indices (int64, ascending) of the selected vertices = the selected Gaussians.

    Works in Edit Mode (the edit-mesh selection is flushed to the mesh first) and in Object Mode
    (the selection last left by Edit Mode).
    """
    mesh = _check_mesh_object(obj)
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    sel = np.empty(len(mesh.vertices), dtype=bool)
    mesh.vertices.foreach_get("select", sel)
    return np.flatnonzero(sel)


def stamp_revision(obj: bpy.types.Object, revision: int | None, session: str | None) -> None:
    """Record on the mesh which backend state (session, revision) its vertices are (after apply_state)."""
    mesh = _check_mesh_object(obj)
    if revision is None:
        mesh.pop(PROP_REVISION, None)
    else:
        mesh[PROP_REVISION] = int(revision)
    mesh[PROP_SESSION] = session or ""


def stored_revision(obj: bpy.types.Object) -> tuple[str, int | None]:
    """(session, revision) of the state frame last written onto ``obj`` (revision None if unknown)."""
    mesh = _check_mesh_object(obj)
    rev = mesh.get(PROP_REVISION)
    return str(mesh.get(PROP_SESSION, "")), None if rev is None else int(rev)


def vertex_count(obj: bpy.types.Object) -> int:
    """Vertices of the object now, Edit Mode included (the edit-mesh's count; O(1), no flush)."""
    mesh = _check_mesh_object(obj)
    if obj.mode == "EDIT":
        import bmesh

        return len(bmesh.from_edit_mesh(mesh).verts)
    return len(mesh.vertices)


def index_map_problem(obj: bpy.types.Object, positions: np.ndarray | None = None) -> str | None:
    """Why vertex i is no longer Gaussian i on ``obj`` (None when it still is).

    Checks the vertex count against the stamped count and the ``i3d_index`` attribute against 0…N−1
    (deleted, duplicated, extruded or merged vertices break it); with ``positions`` [N,3] (the last state
    frame written) also whether vertices were moved in Blender (G/R/S in Edit Mode). Edit Mode is flushed.
    """
    mesh = _check_mesh_object(obj)
    stamped = mesh.get(PROP_COUNT)
    if stamped is None:
        return "it was never synced with the backend"
    n = vertex_count(obj)
    if n != int(stamped):
        return f"it has {n} vertices but the backend state it shows has {int(stamped)} (vertices were added or deleted in Blender)"
    with _readable_mesh(obj) as m:
        index = _read_attr(m, ATTR_INDEX)
        if index is None or index.shape != (n,) or not np.array_equal(index, np.arange(n, dtype=index.dtype)):
            return "its vertices were deleted, duplicated, merged or reordered in Blender"
        if positions is not None:
            co = np.empty(n * 3, np.float32)
            m.vertices.foreach_get("co", co)
            if positions.shape != (n, 3) or not np.array_equal(co.reshape(n, 3), np.asarray(positions, np.float32)):
                return "splats were moved in Blender (Edit Mode G/R/S); use Transform Selected to move them"
    return None


def new_splat_object(name: str, state: np.ndarray, collection: bpy.types.Collection | None = None,
                     light: bool | None = None) -> bpy.types.Object:
    """Create a splat object from a state frame [N,14] with the ellipsoid modifier and material.

    Args:
        name: object and mesh name.
        state: [N,14] activated frame in the new object's local frame (its matrix_world is identity).
        collection: where to link it; defaults to the current scene's collection.
        light: start in the light display mode (points); None → N ≥ LIGHT_MODE_THRESHOLD.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    state = _check_state(state)
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    apply_state(obj, state)
    (collection or bpy.context.scene.collection).objects.link(obj)
    attach_display(obj, light=state.shape[0] >= LIGHT_MODE_THRESHOLD if light is None else light)
    return obj


def attach_display(obj: bpy.types.Object, light: bool = False) -> bpy.types.Modifier:
    """Add (or reuse) the geometry-nodes modifier that draws the splats, with the splat material."""
    _check_mesh_object(obj)
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None or mod.type != "NODES":
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = geometry_nodes.splat_node_group()
    geometry_nodes.set_inputs(mod, material=materials.splat_material(), points=light)
    if hasattr(obj, "i3d_display"):  # the add-on is registered: keep its panel setting in step (no callback)
        obj.i3d_display["mode"] = 1 if light else 0
    return mod


def mesh_object_from_arrays(name: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None,
                            matrix_world, collection: bpy.types.Collection | None = None,
                            uvs: np.ndarray | None = None, texture: np.ndarray | None = None) -> bpy.types.Object:
    """A triangle-mesh object with per-vertex colours and a vertex-colour material, or, given ``uvs`` and
    ``texture``, a UV map and a material with the texture (packed into the .blend); the colour attribute
    is kept either way.

    Args:
        vertices: [V,3] float positions (local frame of the new object).
        faces: [F,3] int vertex indices.
        colors: [V,3|4] uint8 (sRGB 0..255) or float in [0,1] (sRGB), or None.
        matrix_world: 4×4 (mathutils.Matrix or array-like), e.g. the splat object's matrix_world.
        uvs: [V,2] float UVs, v up. texture: [H,W,3|4] uint8 sRGB, row 0 at the top.
    """
    from mathutils import Matrix

    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V,3], got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be an integer array [F,3], got {faces.dtype} {faces.shape}")
    v, f = vertices.shape[0], faces.shape[0]
    if f and (faces.min() < 0 or faces.max() >= v):
        raise ValueError(f"faces index vertices outside [0,{v}): min {faces.min()}, max {faces.max()}")
    matrix = Matrix([list(map(float, row)) for row in np.asarray(matrix_world, dtype=np.float64).reshape(4, 4)])

    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(v)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(vertices, dtype=np.float32).ravel())
    mesh.loops.add(3 * f)
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, dtype=np.int32).ravel())
    mesh.polygons.add(f)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * f, 3, dtype=np.int32))
    if colors is not None:
        colors = np.asarray(colors)
        if colors.ndim != 2 or colors.shape[0] != v or colors.shape[1] not in (3, 4):
            raise ValueError(f"colors must be [V,3] or [V,4] with V={v}, got {colors.shape}")
        rgba = np.ones((v, 4), np.float32)
        scale = 255.0 if colors.dtype == np.uint8 else 1.0
        rgba[:, : colors.shape[1]] = colors.astype(np.float32) / scale
        attr = mesh.color_attributes.new(materials.MESH_COLOR_ATTR, "BYTE_COLOR", "POINT")
        attr.data.foreach_set("color_srgb", rgba.ravel())  # the values are sRGB: Blender linearises
        mesh.color_attributes.active_color = attr
    textured = uvs is not None and texture is not None
    if textured:
        uvs, texture = np.asarray(uvs, np.float32), np.asarray(texture)
        if uvs.shape != (v, 2):
            raise ValueError(f"uvs must be [V,2] with V={v}, got {uvs.shape}")
        if texture.ndim != 3 or texture.shape[2] not in (3, 4) or texture.dtype != np.uint8:
            raise ValueError(f"texture must be uint8 [H,W,3|4], got {texture.dtype} {texture.shape}")
        layer = mesh.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", np.ascontiguousarray(uvs[np.asarray(faces, np.int64).ravel()]).ravel())
    mesh.update(calc_edges=True)
    # Faces come over the wire: repair degenerate/duplicate ones rather than let Blender draw garbage.
    if mesh.validate(clean_customdata=False):
        log.warning("mesh %r had invalid faces; Blender removed them", name)
    if hasattr(mesh, "shade_smooth"):  # 4.1+; marching-cubes surfaces look faceted otherwise
        mesh.shade_smooth()
    if textured:
        h, w = texture.shape[:2]
        image = bpy.data.images.new(name + " Texture", w, h, alpha=True)
        image.colorspace_settings.name = "sRGB"
        rgba = np.full((h, w, 4), 255, np.uint8)
        rgba[..., : texture.shape[2]] = texture
        # Blender's pixel rows run bottom-up; values in [0,1] in the image's (sRGB) space
        image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], np.float32).ravel() / 255.0)
        image.pack()  # a .blend saved later carries the texture
        mesh.materials.append(materials.texture_material(name + " Material", image))
    else:
        mesh.materials.append(materials.vertex_color_material())
    obj = bpy.data.objects.new(name, mesh)
    obj.matrix_world = matrix
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


# -- files ------------------------------------------------------------------------------------------------
def store_splat_data(obj: bpy.types.Object, data) -> None:
    """Write a file's SplatData (pre-activation) onto the object: state attributes + exact ``i3d_ply_*``."""
    mesh = _check_mesh_object(obj)
    apply_state(obj, splat_io.splat_to_state(data))
    _remove_attrs(mesh, PLY_PREFIX)
    _write_attr(mesh, _PLY_DC, "FLOAT_VECTOR", data.sh_dc)
    _write_attr(mesh, _PLY_OPACITY, "FLOAT", data.opacity_logits)
    _write_attr(mesh, _PLY_SCALE, "FLOAT_VECTOR", data.log_scales)
    _write_attr(mesh, _PLY_ROT, "QUATERNION", data.quats)
    _write_attr(mesh, _PLY_NORMAL, "FLOAT_VECTOR", data.normals)
    for k in range(data.sh_rest.shape[1]):
        _write_attr(mesh, f"{_PLY_REST}{k}", "FLOAT_VECTOR", data.sh_rest[:, k, :])
    for key, values in data.extra.items():
        _write_attr(mesh, _PLY_EXTRA + key, "FLOAT", np.asarray(values, dtype=np.float32))
    mesh.update()


def splat_data(obj: bpy.types.Object):
    """The object's Gaussians as SplatData (pre-activation) in its local frame, for writing files.

    Each quantity of each splat (colour, opacity, scale, rotation) is taken from the file's exact value
    (``i3d_ply_*``) while the displayed value still equals what that file value activates to, and from
    the displayed (activated) value otherwise — so an untouched import exports bit-identically, and edits
    from the backend or by hand are never lost. A splat whose colour changed loses its higher SH bands.
    """
    with _readable_mesh(obj) as mesh:
        return _splat_data_of(mesh, obj.name)


def _splat_data_of(mesh: bpy.types.Mesh, label: str):
    state = _state_of(mesh, label)
    derived = splat_io.state_to_splat(state)
    raw = {name: _read_attr(mesh, name) for name in (_PLY_DC, _PLY_OPACITY, _PLY_SCALE, _PLY_ROT, _PLY_NORMAL)}
    n = state.shape[0]
    rest_names = sorted((a.name for a in mesh.attributes if a.name.startswith(_PLY_REST)),
                        key=lambda s: int(s[len(_PLY_REST):]))
    sh_rest = np.zeros((n, len(rest_names), 3), np.float32)
    for k, name in enumerate(rest_names):
        sh_rest[:, k, :] = _read_attr(mesh, name)
    extra = {a.name[len(_PLY_EXTRA):]: _read_attr(mesh, a.name)
             for a in list(mesh.attributes) if a.name.startswith(_PLY_EXTRA)}
    if any(value is None for value in raw.values()):
        derived.sh_rest = sh_rest if rest_names else derived.sh_rest
        derived.extra = extra
        return derived

    # Which file values still activate to what is displayed (exactly: same float32 code path as import).
    file_state = splat_io.splat_to_state(splat_io.SplatData(
        means=state[:, 0:3], sh_dc=raw[_PLY_DC], sh_rest=np.zeros((n, 0, 3), np.float32),
        opacity_logits=raw[_PLY_OPACITY], log_scales=raw[_PLY_SCALE], quats=raw[_PLY_ROT]))
    same_color = np.all(file_state[:, 3:6] == state[:, 3:6], axis=1)
    same_opacity = file_state[:, 6] == state[:, 6]
    same_scale = np.all(file_state[:, 7:10] == state[:, 7:10], axis=1)
    same_rot = np.all(file_state[:, 10:14] == state[:, 10:14], axis=1)
    sh_rest[~same_color] = 0.0
    return splat_io.SplatData(
        means=state[:, 0:3].copy(),
        sh_dc=np.where(same_color[:, None], raw[_PLY_DC], derived.sh_dc),
        sh_rest=sh_rest,
        opacity_logits=np.where(same_opacity, raw[_PLY_OPACITY], derived.opacity_logits),
        log_scales=np.where(same_scale[:, None], raw[_PLY_SCALE], derived.log_scales),
        quats=np.where(same_rot[:, None], raw[_PLY_ROT], derived.quats),
        normals=raw[_PLY_NORMAL],
        extra=extra,
    )


def transform_splat_data(data, matrix: np.ndarray):
    """Apply a 4×4 affine ``matrix`` to Gaussians: μ' = Aμ + t, Σ' = A Σ Aᵀ re-factorised as R' S'² R'ᵀ.

    Works for any invertible A (rotation, uniform or non-uniform scale, shear, mirror). Higher SH bands
    are NOT rotated (view-dependent colour keeps its old orientation); callers say so to the user.
    Returns a new SplatData; the input is untouched.
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
    a, t = m[:3, :3], m[:3, 3]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError("matrix is singular: its 3x3 part has determinant ~0")
    q = data.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rot = _quat_to_matrix(q)  # [N,3,3]
    s = np.exp(data.log_scales.astype(np.float64))
    m_ = np.einsum("ij,njk->nik", a, rot * s[:, None, :])  # A R S, so Σ' = (ARS)(ARS)ᵀ
    cov = m_ @ np.swapaxes(m_, 1, 2)
    evals, evecs = np.linalg.eigh(cov)  # ascending eigenvalues, orthonormal eigenvectors
    det = np.linalg.det(evecs)
    evecs[:, :, 2] *= np.where(det < 0, -1.0, 1.0)[:, None]  # a proper rotation (det +1)
    new_q = _matrix_to_quat(evecs)
    means = data.means.astype(np.float64) @ a.T + t
    return splat_io.SplatData(
        means=means.astype(np.float32), sh_dc=data.sh_dc.copy(), sh_rest=data.sh_rest.copy(),
        opacity_logits=data.opacity_logits.copy(),
        log_scales=(0.5 * np.log(np.maximum(evals, 1e-300))).astype(np.float32),
        quats=new_q.astype(np.float32),
        normals=None if data.normals is None else _transform_normals(data.normals, a),
        extra={k: v.copy() for k, v in data.extra.items()},
    )


def _transform_normals(normals: np.ndarray, a: np.ndarray) -> np.ndarray:
    out = normals.astype(np.float64) @ np.linalg.inv(a)  # (A⁻ᵀ n)ᵀ = nᵀ A⁻¹
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norm > 0, out / np.maximum(norm, 1e-30), 0.0).astype(np.float32)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """[N,4] unit w-first → [N,3,3]."""
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def _matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """[N,3,3] proper rotations → [N,4] unit w-first (Shepperd: largest diagonal term, no division by ~0)."""
    n = r.shape[0]
    tr = np.trace(r, axis1=1, axis2=2)
    cand = np.stack([tr, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    q = np.empty((n, 4))
    for case in range(4):  # 4 vectorised cases, not a loop over splats
        i = np.flatnonzero(k == case)
        if i.size == 0:
            continue
        m = r[i]
        if case == 0:
            s = 2.0 * np.sqrt(1.0 + tr[i])
            q[i] = np.stack([0.25 * s, (m[:, 2, 1] - m[:, 1, 2]) / s, (m[:, 0, 2] - m[:, 2, 0]) / s,
                             (m[:, 1, 0] - m[:, 0, 1]) / s], 1)
        elif case == 1:
            s = 2.0 * np.sqrt(1.0 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2])
            q[i] = np.stack([(m[:, 2, 1] - m[:, 1, 2]) / s, 0.25 * s, (m[:, 0, 1] + m[:, 1, 0]) / s,
                             (m[:, 0, 2] + m[:, 2, 0]) / s], 1)
        elif case == 2:
            s = 2.0 * np.sqrt(1.0 + m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2])
            q[i] = np.stack([(m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 0, 1] + m[:, 1, 0]) / s, 0.25 * s,
                             (m[:, 1, 2] + m[:, 2, 1]) / s], 1)
        else:
            s = 2.0 * np.sqrt(1.0 + m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1])
            q[i] = np.stack([(m[:, 1, 0] - m[:, 0, 1]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s,
                             (m[:, 1, 2] + m[:, 2, 1]) / s, 0.25 * s], 1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)  # canonical sign: w ≥ 0
    return q / np.linalg.norm(q, axis=1, keepdims=True)
