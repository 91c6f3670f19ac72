"""Mesh files as other programs expect them: GLB (glTF 2.0 binary), OBJ (+ MTL + PNG) and PLY.

numpy and Pillow only. The conversions themselves are in maths/conventions.py (shared with the readers);
how each format uses them is here:

- **World frame**: the backend's (Blender's) Z-up, metres. glTF is +Y up, +Z forward, right-handed, metres;
  Blender's glTF importer maps glTF (x, y, z) to Blender (x, −z, y). So a Blender point (x, y, z) is written
  as (x, z, −y). OBJ has no fixed convention; Blender's OBJ importer
  assumes Y up and −Z forward by default, the same mapping, so OBJ gets (x, z, −y) too. PLY is written in
  Blender's own axes (its importer's default forward Y, up Z applies no conversion).
- **Colour**: the field's colours are display-referred sRGB in [0, 1] (docs/conventions.md). glTF defines
  COLOR_0 as *linear*: it is written as float RGBA after the sRGB → linear transfer function. Textures are
  sRGB PNGs (glTF's baseColorTexture is sRGB by definition; so is an MTL ``map_Kd``). OBJ ``v x y z r g b``
  and PLY ``red green blue`` uchar are read as sRGB by Blender's importers, so they carry the sRGB values.
- **UVs**: :class:`MeshResult` UVs are Blender/OBJ-style, v up (row 0 of the texture image is v = 1). glTF's
  TEXCOORD_0 has v down: it is written as (u, 1 − v).

A textured GLB carries no COLOR_0: glTF multiplies COLOR_0 into the base colour, so the colour would be
applied twice. The vertex colours stay in the untextured export, the PLY, and the arrays.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

from ..maths.conventions import blender_to_y_up, linear_to_srgb, srgb_to_linear  # noqa: F401  (re-exported)

# glTF constants
_FLOAT, _UINT = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V,3] float32 unit normals: the sum of the adjacent faces' area-weighted normals, over every vertex at
    the same position (so UV seams, where vertices are split, do not show in the shading); +Z if zero."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    _, weld = np.unique(np.asarray(vertices, np.float32), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 × area
    n = np.zeros((int(weld.max()) + 1 if len(weld) else 0, 3))
    for k in range(3):
        np.add.at(n, weld[f[:, k]], fn)
    n = n[weld]
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 0, n / np.maximum(length, 1e-30), [0.0, 0.0, 1.0])
    return n.astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    """[H,W,3|4] uint8 (row 0 at the top) → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None,
              uvs: np.ndarray | None = None, texture: np.ndarray | None = None, name: str = "mesh") -> bytes:
    """A GLB with one mesh, in glTF's axes and colour spaces (module docstring).

    Args:
        vertices: [V,3] Blender-frame positions. faces: [F,3] vertex indices.
        colors: [V,3|4] uint8 sRGB vertex colours → COLOR_0 (linear float), unless ``texture`` is given.
        normals: [V,3] Blender-frame unit normals (default: :func:`vertex_normals`).
        uvs: [V,2] v-up UVs, with ``texture`` [H,W,3|4] uint8 sRGB → TEXCOORD_0 + baseColorTexture.
    """
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.uint32)
    n = vertex_normals(v, f) if normals is None else np.asarray(normals, np.float32)
    pos = blender_to_y_up(v).astype(np.float32)
    attrs: list[tuple[str, np.ndarray, str]] = [("POSITION", pos, "VEC3"), ("NORMAL", blender_to_y_up(n).astype(np.float32), "VEC3")]
    if texture is not None:
        if uvs is None:
            raise ValueError("a texture needs uvs [V,2]")
        uv = np.asarray(uvs, np.float32)
        attrs.append(("TEXCOORD_0", np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32), "VEC2"))
    elif colors is not None:
        c = np.asarray(colors)
        rgba = np.ones((len(v), 4), np.float64)
        rgba[:, :3] = srgb_to_linear(c[:, :3].astype(np.float64) / 255.0)
        if c.shape[1] == 4:
            rgba[:, 3] = c[:, 3] / 255.0
        attrs.append(("COLOR_0", rgba.astype(np.float32), "VEC4"))

    blob = bytearray()
    views, accessors = [], []

    def add_view(data: bytes, target: int | None = None) -> int:
        while len(blob) % 4:
            blob.append(0)
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    attributes = {}
    for key, arr, kind in attrs:
        acc = {"bufferView": add_view(arr.tobytes(), _ARRAY_BUFFER), "componentType": _FLOAT, "count": len(arr), "type": kind}
        if key == "POSITION" and len(arr):  # required for POSITION
            acc["min"], acc["max"] = arr.min(axis=0).tolist(), arr.max(axis=0).tolist()
        accessors.append(acc)
        attributes[key] = len(accessors) - 1
    accessors.append({"bufferView": add_view(f.ravel().tobytes(), _ELEMENT_ARRAY_BUFFER), "componentType": _UINT,
                      "count": int(f.size), "type": "SCALAR"})
    pbr: dict = {"metallicFactor": 0.0, "roughnessFactor": 0.8}
    doc: dict = {"asset": {"version": "2.0", "generator": "interactive3d"}}
    if texture is not None:
        pbr["baseColorTexture"] = {"index": 0}
        doc["images"] = [{"bufferView": add_view(png_bytes(texture)), "mimeType": "image/png", "name": f"{name}_color"}]
        doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]  # linear, clamp
        doc["textures"] = [{"sampler": 0, "source": 0}]
    doc.update({
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": len(accessors) - 1, "material": 0, "mode": 4}]}],
        "materials": [{"name": f"{name}_material", "pbrMetallicRoughness": pbr}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    })
    while len(blob) % 4:
        blob.append(0)
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    return b"".join([struct.pack("<III", 0x46546C67, 2, total), struct.pack("<II", len(js), 0x4E4F534A), js,
                     struct.pack("<II", len(blob), 0x004E4942), bytes(blob)])


def obj_files(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None,
              uvs: np.ndarray | None = None, texture: np.ndarray | None = None, stem: str = "mesh") -> dict[str, bytes]:
    """OBJ text (Y up, −Z forward: Blender's OBJ importer default) and, with a texture, its MTL and PNG.

    Returns {suffix: bytes} for ``.obj`` and, when textured, ``.mtl`` and ``.png`` (named ``stem`` + suffix,
    which the OBJ/MTL reference). Vertex colours ride on the ``v`` lines as sRGB floats (Blender's reading)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64) + 1
    n = vertex_normals(v, np.asarray(faces)) if normals is None else np.asarray(normals, np.float64)
    out = io.StringIO()
    out.write("# interactive3d mesh: metres, Y up, -Z forward (Blender's OBJ importer default); colours sRGB\n")
    if texture is not None:
        out.write(f"mtllib {stem}.mtl\n")
    out.write(f"o {stem}\n")
    p = blender_to_y_up(v)
    if colors is not None:
        c = np.asarray(colors)[:, :3].astype(np.float64) / 255.0
        np.savetxt(out, np.concatenate([p, c], axis=1), fmt="v %.7g %.7g %.7g %.6g %.6g %.6g")
    else:
        np.savetxt(out, p, fmt="v %.7g %.7g %.7g")
    np.savetxt(out, blender_to_y_up(n), fmt="vn %.6g %.6g %.6g")
    files = {}
    if texture is not None:
        if uvs is None:
            raise ValueError("a texture needs uvs [V,2]")
        np.savetxt(out, np.asarray(uvs, np.float64), fmt="vt %.7g %.7g")
        out.write(f"usemtl {stem}_material\n")
        np.savetxt(out, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
        files[".mtl"] = (f"# interactive3d\nnewmtl {stem}_material\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 10\nillum 1\n"
                         f"map_Kd {stem}.png\n").encode()
        files[".png"] = png_bytes(texture)
    else:
        np.savetxt(out, np.stack([f[:, 0], f[:, 0], f[:, 1], f[:, 1], f[:, 2], f[:, 2]], axis=1), fmt="f %d//%d %d//%d %d//%d")
    files[".obj"] = out.getvalue().encode()
    return files


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None) -> bytes:
    """Binary little-endian PLY in Blender's axes (Z up, metres): float x y z nx ny nz, uchar sRGB
    red green blue alpha, and a ``vertex_indices`` list per face."""
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int32)
    n = vertex_normals(v, f) if normals is None else np.asarray(normals, np.float32)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    table = np.empty(len(v), np.dtype(fields))
    for i, k in enumerate("xyz"):
        table[k], table["n" + k] = v[:, i], n[:, i]
    if colors is not None:
        c = np.asarray(colors, np.uint8)
        for i, k in enumerate(("red", "green", "blue")):
            table[k] = c[:, i]
        table["alpha"] = c[:, 3] if c.shape[1] == 4 else 255
    face_table = np.empty(len(f), np.dtype([("n", "u1"), ("idx", "<i4", 3)]))
    face_table["n"], face_table["idx"] = 3, f
    header = ["ply", "format binary_little_endian 1.0",
              "comment interactive3d mesh: metres, Z up (Blender's axes); colours are sRGB",
              f"element vertex {len(v)}", *(f"property {'float' if t == '<f4' else 'uchar'} {k}" for k, t in fields),
              f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + table.tobytes() + face_table.tobytes()
