"""The geometry-nodes group that draws splat objects.

Per point: an icosphere (radius 1) scaled by ``i3d_scale × Scale Multiplier`` and rotated by
``i3d_rotation`` — the Gaussian's σ-ellipsoid — with the splat material (materials.py). A light display
mode replaces the ellipsoids by points (for 10⁵+ splats, where instancing makes the viewport crawl), and
both modes honour an opacity threshold and a density (random subsample by vertex index, stable across
frames). Sockets are found by identifier, then by name among *enabled* sockets, because identifiers and
dynamic socket types changed between Blender 4.2 and 5.0 (version guards in one place: _socket()).
The modifier's input values are read and written only through :func:`read_input` / :func:`write_input`:
Blender 4.2–5.1 keep them as ID properties on the modifier (``modifier["Socket_1"]``), 5.2+ as
``modifier.properties.inputs.Socket_1.value`` (the modifier there holds no ID properties at all).
"""

from __future__ import annotations

import bpy

GROUP_NAME = "I3D Splats"
GROUP_VERSION = 1  # bump when the tree changes; older groups in a .blend are rebuilt

# Group inputs: name → (socket type, default, min, max). Order is the modifier panel order.
INPUTS = {
    "Points": ("NodeSocketBool", False, None, None),
    "Opacity Threshold": ("NodeSocketFloat", 0.0, 0.0, 1.0),
    "Density": ("NodeSocketFloat", 1.0, 0.0, 1.0),
    "Scale Multiplier": ("NodeSocketFloat", 1.5, 0.0, 100.0),
    "Point Radius": ("NodeSocketFloat", 0.005, 0.0, 10.0),
    "Subdivisions": ("NodeSocketInt", 1, 1, 4),
    "Material": ("NodeSocketMaterial", None, None, None),
}


def _socket(sockets, key: str):
    """The enabled socket with identifier ``key``, else the first enabled socket named ``key``.

    Nodes with per-type sockets (Random Value, Compare before 4.1 …) keep disabled twins with the same
    name, so availability decides, not the name alone.
    """
    for s in sockets:
        if s.identifier == key and getattr(s, "enabled", True):
            return s
    for s in sockets:
        if s.name == key and getattr(s, "enabled", True):
            return s
    raise KeyError(f"no socket {key!r} among {[s.identifier for s in sockets]}")


def _named_attribute(tree, name: str, data_type: str):
    node = tree.nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    _socket(node.inputs, "Name").default_value = name
    return _socket(node.outputs, "Attribute")


def _build(tree) -> None:
    nodes, links = tree.nodes, tree.links
    link = links.new
    iface = tree.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for name, (kind, default, lo, hi) in INPUTS.items():
        sock = iface.new_socket(name, in_out="INPUT", socket_type=kind)
        if default is not None:
            sock.default_value = default
        if lo is not None:
            sock.min_value, sock.max_value = lo, hi
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")

    def group_in(name):
        return _socket(gin.outputs, name)

    # Selection = opacity ≥ threshold AND random(index) < density.
    compare = nodes.new("FunctionNodeCompare")
    compare.data_type, compare.operation = "FLOAT", "GREATER_EQUAL"
    link(_named_attribute(tree, "i3d_opacity", "FLOAT"), _socket(compare.inputs, "A"))
    link(group_in("Opacity Threshold"), _socket(compare.inputs, "B"))
    rand = nodes.new("FunctionNodeRandomValue")
    rand.data_type = "BOOLEAN"
    link(group_in("Density"), _socket(rand.inputs, "Probability"))
    link(nodes.new("GeometryNodeInputIndex").outputs[0], _socket(rand.inputs, "ID"))
    both = nodes.new("FunctionNodeBooleanMath")
    both.operation = "AND"
    link(_socket(compare.outputs, "Result"), both.inputs[0])
    link(_socket(rand.outputs, "Value"), both.inputs[1])
    selection = _socket(both.outputs, "Boolean")

    # Ellipsoids: icosphere instanced per point.
    ico = nodes.new("GeometryNodeMeshIcoSphere")
    _socket(ico.inputs, "Radius").default_value = 1.0
    link(group_in("Subdivisions"), _socket(ico.inputs, "Subdivisions"))
    ico_mat = nodes.new("GeometryNodeSetMaterial")
    link(_socket(ico.outputs, "Mesh"), _socket(ico_mat.inputs, "Geometry"))
    link(group_in("Material"), _socket(ico_mat.inputs, "Material"))
    scale = nodes.new("ShaderNodeVectorMath")
    scale.operation = "SCALE"
    link(_named_attribute(tree, "i3d_scale", "FLOAT_VECTOR"), scale.inputs[0])
    link(group_in("Scale Multiplier"), _socket(scale.inputs, "Scale"))
    inst = nodes.new("GeometryNodeInstanceOnPoints")
    link(group_in("Geometry"), _socket(inst.inputs, "Points"))
    link(selection, _socket(inst.inputs, "Selection"))
    link(_socket(ico_mat.outputs, "Geometry"), _socket(inst.inputs, "Instance"))
    link(_named_attribute(tree, "i3d_rotation", "QUATERNION"), _socket(inst.inputs, "Rotation"))
    link(_socket(scale.outputs, "Vector"), _socket(inst.inputs, "Scale"))

    # Light mode: one point per selected splat.
    to_points = nodes.new("GeometryNodeMeshToPoints")
    link(group_in("Geometry"), _socket(to_points.inputs, "Mesh"))
    link(selection, _socket(to_points.inputs, "Selection"))
    link(group_in("Point Radius"), _socket(to_points.inputs, "Radius"))
    pts_mat = nodes.new("GeometryNodeSetMaterial")
    link(_socket(to_points.outputs, "Points"), _socket(pts_mat.inputs, "Geometry"))
    link(group_in("Material"), _socket(pts_mat.inputs, "Material"))

    switch = nodes.new("GeometryNodeSwitch")
    if hasattr(switch, "input_type"):  # 4.1+: one node, typed by input_type
        switch.input_type = "GEOMETRY"
    link(group_in("Points"), _socket(switch.inputs, "Switch"))
    link(_socket(inst.outputs, "Instances"), _socket(switch.inputs, "False"))
    link(_socket(pts_mat.outputs, "Geometry"), _socket(switch.inputs, "True"))
    link(_socket(switch.outputs, "Output"), _socket(gout.inputs, "Geometry"))


def splat_node_group() -> bpy.types.NodeTree:
    """The shared "I3D Splats" node group, built once per .blend (rebuilt if from an older version)."""
    tree = bpy.data.node_groups.get(GROUP_NAME)
    if tree is not None and tree.bl_idname == "GeometryNodeTree" and tree.get("i3d_version") == GROUP_VERSION:
        return tree
    if tree is not None:
        tree.name = GROUP_NAME + " (old)"  # keep it for whatever still uses it; new objects get the new one
    tree = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    tree["i3d_version"] = GROUP_VERSION
    _build(tree)
    return tree


def input_identifier(tree: bpy.types.NodeTree, name: str) -> str:
    """The identifier (``Socket_N``) of group input ``name``: the key of its value on a modifier."""
    for item in tree.interface.items_tree:
        if getattr(item, "item_type", "SOCKET") == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(f"node group {tree.name!r} has no input {name!r}")


def _input_values(modifier: bpy.types.Modifier):
    """Where a Geometry Nodes modifier keeps its input values: ``modifier.properties.inputs`` (one struct
    per input, ``.value``) on Blender 5.2+, else None: the modifier's own ID properties (4.2–5.1)."""
    props = getattr(modifier, "properties", None)
    return getattr(props, "inputs", None)


def write_input(modifier: bpy.types.Modifier, identifier: str, value) -> None:
    """Set the modifier's value of group input ``identifier`` (``Socket_N``) on any Blender 4.2+."""
    inputs = _input_values(modifier)
    if inputs is None:
        modifier[identifier] = value
    else:
        getattr(inputs, identifier).value = value


def read_input(modifier: bpy.types.Modifier, identifier: str):
    """The modifier's value of group input ``identifier`` (``Socket_N``) on any Blender 4.2+."""
    inputs = _input_values(modifier)
    return modifier[identifier] if inputs is None else getattr(inputs, identifier).value


def set_inputs(modifier: bpy.types.Modifier, **values) -> None:
    """Set group inputs on a splat modifier by python name: points, opacity_threshold, density,
    scale_multiplier, point_radius, subdivisions, material."""
    tree = modifier.node_group
    if tree is None:
        raise ValueError(f"modifier {modifier.name!r} has no node group")
    for key, value in values.items():
        name = key.replace("_", " ").title()
        if name not in INPUTS:
            raise ValueError(f"unknown splat display input {key!r}; expected one of "
                             f"{[n.lower().replace(' ', '_') for n in INPUTS]}")
        write_input(modifier, input_identifier(tree, name), value)
    modifier.id_data.update_tag()


def get_input(modifier: bpy.types.Modifier, key: str):
    """Current value of a group input on the modifier (python name as in set_inputs)."""
    return read_input(modifier, input_identifier(modifier.node_group, key.replace("_", " ").title()))
