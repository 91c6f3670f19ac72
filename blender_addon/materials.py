"""Materials: the splat material (reads i3d_color / i3d_opacity) and a vertex-colour mesh material.

Both work in Eevee and Cycles. The splat material reads each attribute twice — as an *instancer*
attribute (ellipsoid instances carry the point's attributes on the instance domain) and as a *geometry*
attribute (the light points mode) — and adds them: the one that does not exist reads as 0. ``i3d_color``
holds display-referred sRGB values (docs/conventions.md); shading needs linear, so the material applies
the sRGB curve's power segment ((c + 0.055) / 1.055)^2.4 (off by < 1e-3 below c = 0.04 where the exact
curve is linear).
"""

from __future__ import annotations

import bpy

SPLAT_MATERIAL = "I3D Splat"
MESH_MATERIAL = "I3D Vertex Colour"
MESH_COLOR_ATTR = "Col"
MATERIAL_VERSION = 1


def _input(node, *names):
    """First enabled input whose identifier or name is in ``names`` (socket names changed in 4.0)."""
    for key in names:
        for s in node.inputs:
            if s.identifier == key or (s.name == key and getattr(s, "enabled", True)):
                return s
    raise KeyError(f"{node.bl_idname} has none of the inputs {names}")


def _output(node, name):
    for s in node.outputs:
        if s.identifier == name or (s.name == name and getattr(s, "enabled", True)):
            return s
    raise KeyError(f"{node.bl_idname} has no output {name!r}")


def _fresh(name: str) -> bpy.types.Material | None:
    mat = bpy.data.materials.get(name)
    if mat is not None and mat.get("i3d_version") == MATERIAL_VERSION:
        return mat
    return None


def _new_material(name: str) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat["i3d_version"] = MATERIAL_VERSION
    if bpy.app.version < (5, 0, 0) and not mat.use_nodes:
        mat.use_nodes = True  # always on (and deprecated) from 5.0; needed on 4.x
    for node in list(mat.node_tree.nodes):
        mat.node_tree.nodes.remove(node)
    return mat


def _set_blended(mat: bpy.types.Material) -> None:
    if hasattr(mat, "surface_render_method"):  # Eevee Next (4.2+)
        mat.surface_render_method = "BLENDED"
    elif hasattr(mat, "blend_method"):
        mat.blend_method = "BLEND"


def _summed_attribute(tree, name: str, output: str):
    """Instancer attribute + geometry attribute (only one exists for a given geometry)."""
    inst = tree.nodes.new("ShaderNodeAttribute")
    inst.attribute_type, inst.attribute_name = "INSTANCER", name
    geom = tree.nodes.new("ShaderNodeAttribute")
    geom.attribute_type, geom.attribute_name = "GEOMETRY", name
    if output == "Vector":
        add = tree.nodes.new("ShaderNodeVectorMath")
        add.operation = "ADD"
        tree.links.new(_output(inst, "Vector"), add.inputs[0])
        tree.links.new(_output(geom, "Vector"), add.inputs[1])
        return _output(add, "Vector")
    add = tree.nodes.new("ShaderNodeMath")
    add.operation = "ADD"
    tree.links.new(_output(inst, "Fac"), add.inputs[0])
    tree.links.new(_output(geom, "Fac"), add.inputs[1])
    return _output(add, "Value")


def splat_material() -> bpy.types.Material:
    """The shared splat material (created once per .blend)."""
    mat = _fresh(SPLAT_MATERIAL)
    if mat is not None:
        return mat
    mat = _new_material(SPLAT_MATERIAL)
    tree = mat.node_tree
    link = tree.links.new
    color = _summed_attribute(tree, "i3d_color", "Vector")
    opacity = _summed_attribute(tree, "i3d_opacity", "Fac")
    # sRGB → linear: ((c + 0.055) / 1.055) ^ 2.4
    affine = tree.nodes.new("ShaderNodeVectorMath")
    affine.operation = "MULTIPLY_ADD"
    link(color, affine.inputs[0])
    affine.inputs[1].default_value = (1 / 1.055,) * 3
    affine.inputs[2].default_value = (0.055 / 1.055,) * 3
    gamma = tree.nodes.new("ShaderNodeGamma")
    link(_output(affine, "Vector"), _input(gamma, "Color"))
    _input(gamma, "Gamma").default_value = 2.4
    # Emission + transparency: splats carry radiance already (as 3DGS renders them), no relighting.
    emission = tree.nodes.new("ShaderNodeEmission")
    link(_output(gamma, "Color"), _input(emission, "Color"))
    _input(emission, "Strength").default_value = 1.0
    transparent = tree.nodes.new("ShaderNodeBsdfTransparent")
    mix = tree.nodes.new("ShaderNodeMixShader")
    link(opacity, _input(mix, "Fac"))
    link(_output(transparent, "BSDF"), mix.inputs[1])
    link(_output(emission, "Emission"), mix.inputs[2])
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    link(_output(mix, "Shader"), _input(out, "Surface"))
    _set_blended(mat)
    return mat


def vertex_color_material() -> bpy.types.Material:
    """Principled BSDF whose base colour is the mesh's colour attribute ``Col`` (linear)."""
    mat = _fresh(MESH_MATERIAL)
    if mat is not None:
        return mat
    mat = _new_material(MESH_MATERIAL)
    tree = mat.node_tree
    attr = tree.nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", MESH_COLOR_ATTR
    bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
    tree.links.new(_output(attr, "Color"), _input(bsdf, "Base Color"))
    _input(bsdf, "Roughness").default_value = 0.8
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(_output(bsdf, "BSDF"), _input(out, "Surface"))
    return mat


def texture_material(name: str, image: bpy.types.Image) -> bpy.types.Material:
    """Principled BSDF whose base colour is ``image`` (sRGB) sampled at the mesh's active UV map — one
    material per baked texture (each extraction bakes its own)."""
    mat = _new_material(name)
    tree = mat.node_tree
    uv = tree.nodes.new("ShaderNodeUVMap")
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    tex.extension = "EXTEND"  # outside the padded charts: the border colour, never a wrapped-around one
    tree.links.new(_output(uv, "UV"), _input(tex, "Vector"))
    bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
    tree.links.new(_output(tex, "Color"), _input(bsdf, "Base Color"))
    _input(bsdf, "Roughness").default_value = 0.8
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(_output(bsdf, "BSDF"), _input(out, "Surface"))
    return mat
