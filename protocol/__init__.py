"""The wire protocol shared by the backend and the Blender add-on (vendored into the extension).

Modules: ``codec`` (envelope), ``errors`` (typed error codes), ``catalogue`` (every op, versioned; the
source of docs/protocol.md), ``auth`` (HMAC-SHA256 signatures), ``client`` (the ZeroMQ DEALER client),
``ply`` (the 3DGS .ply layout). Rules: no torch, no bpy, only relative imports inside this package.
Nothing is imported here so that ``protocol.ply`` stays usable without msgpack or zmq.
"""
