"""The message catalogue: every op of the wire protocol, its args, buffers, result, events and errors.

This module is the single source of truth. The server validates every request against its
:class:`OpSpec` *before* any handler runs (:func:`validate_request`), and the reference page
docs/protocol.md is generated from it::

    python -m interactive3d.protocol.catalogue --markdown > docs/protocol.md

Sections: each backend module owns one list below (``_SERVER_OPS``, ``_STAGE1_OPS``,
``_INTERACTION_OPS``, ``_STAGE2_OPS``); :data:`OPS` is their concatenation. Adding an op: append an
``OpSpec`` to your section, a handler to your ``backend/ops_*.py`` ``HANDLERS`` dict, then regenerate
docs/protocol.md (a test compares it with the generated text). See docs/backend-api.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .codec import DTYPES, PROTOCOL_VERSION
from .errors import ERROR_CODES, InvalidArgs

# Columns of the [N,14] float32 state frame, all activated values (docs/conventions.md).
STATE_COLUMNS: tuple[str, ...] = ("x", "y", "z", "r", "g", "b", "opacity", "sx", "sy", "sz", "qw", "qx", "qy", "qz")

# Event kinds a job streams (header field "event"); "data" holds the payload map.
EVENT_KINDS: dict[str, str] = {
    "progress": 'data {"step": steps done, "total": total steps, "metrics": {name: float}}; jobs with a preview '
    '(stage2.distill) add "preview": [H, W] and one float32 [H,W,3] buffer when a new preview was rendered',
    "state": 'data {"step", "count": N, "columns": STATE_COLUMNS, "revision": the session\'s state revision of this '
    'frame}; buffers [state [N,14] float32]',
    "mesh": 'data {"step", "vertices": V, "faces": F}; buffers [vertices [V,3] float32, faces [F,3] int32, colors [V,4] uint8]: '
    'a Stage II job\'s low-resolution preview mesh (mesh_every), object frame',
    "paused": 'data {"step"}: the job stopped between two steps',
    "resumed": 'data {"step"}: the job continues',
    "done": 'data {"status": "done"|"cancelled", "steps": steps done, "total", ...the job\'s result fields}',
    "error": 'data {"code", "message", "step"}: the job failed; the session keeps its last state',
}

ARG_TYPES = ("str", "int", "float", "bool", "list", "map", "any")
FLOAT_FAMILY = ("float16", "float32", "float64")
_MISSING = object()


@dataclass(frozen=True)
class Arg:
    """One argument of an op.

    Attributes:
        name: key in ``args``.
        type: one of "str", "int", "float" (ints accepted, converted), "bool", "list", "map", "any".
        doc: one line for the reference page.
        required: a missing required arg is ``invalid_args``.
        default: filled in when the arg is optional and missing (None allowed).
        min, max: inclusive bounds for int/float (and for every item of a numeric list).
        finite: floats (and float items) must be finite (NaN/inf → ``invalid_args``).
        choices: allowed values (str/int).
        items: element type of a list ("str", "int", "float", "bool", "any").
        length: exact list length (e.g. 3 for a point), or None.
        nullable: None is an accepted value.
    """

    name: str
    type: str
    doc: str = ""
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    finite: bool = True
    choices: tuple | None = None
    items: str | None = None
    length: int | None = None
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.type not in ARG_TYPES:
            raise ValueError(f"Arg {self.name!r}: type {self.type!r} not in {ARG_TYPES}")
        if self.items is not None and self.items not in ARG_TYPES:
            raise ValueError(f"Arg {self.name!r}: items {self.items!r} not in {ARG_TYPES}")


@dataclass(frozen=True)
class Buffer:
    """One array frame of a request (or reply, for documentation).

    Attributes:
        name: what it is (documentation and error messages).
        dtypes: accepted wire dtypes.
        shape: expected shape; None entries are wildcards (e.g. ``(None, 14)``); ``None`` for any shape.
        optional: may be left out — only trailing buffers can be optional.
        finite: float contents must be finite.
        doc: one line.
    """

    name: str
    dtypes: tuple[str, ...]
    shape: tuple[int | None, ...] | None = None
    optional: bool = False
    finite: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"Buffer {self.name!r}: unsupported dtypes {bad}")


@dataclass(frozen=True)
class OpSpec:
    """One op of the protocol.

    Attributes:
        name: the op string (``"section.verb"``).
        summary: what it does, one or two sentences.
        args: its arguments.
        buffers: request frames, in order.
        result: (field, doc) pairs of the reply's result map.
        result_buffers: reply frames, in order.
        events: event kinds it causes (jobs).
        errors: error codes it can answer with beyond the generic ones.
        session: it acts on a session — ``args["session"]`` is required and resolved by the server
            (``not_found`` when unknown) before the handler runs.
        starts_job: it starts a job on the session (``busy`` if one is in flight).
        preempts: its job may start while a Stage I job runs or is paused: the Stage I job pauses
            (``paused`` event) until this job ends, then carries on as it was (``resumed`` if it was
            running); ``busy`` while another job holds the session.
        mutates: (session ops) it changes the session or its job, so only the session's owner may send it
            (``unauthorized`` for any other client, before its args are looked at); False: it only reads the
            session (state, status, renders, exports) and any authenticated client may send it. True by
            default, so a new op is owner-only until someone decides it is a read.
    """

    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    buffers: tuple[Buffer, ...] = ()
    result: tuple[tuple[str, str], ...] = ()
    result_buffers: tuple[Buffer, ...] = ()
    events: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    session: bool = False
    starts_job: bool = False
    preempts: bool = False
    mutates: bool = True

    def __post_init__(self) -> None:
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"OpSpec {self.name!r}: duplicate arg names {names}")
        if self.session and "session" in names:
            raise ValueError(f"OpSpec {self.name!r}: 'session' is implied by session=True; do not declare it")
        if self.starts_job and not self.mutates:
            raise ValueError(f"OpSpec {self.name!r}: an op that starts a job changes the session (mutates=True)")
        seen_optional = False
        for b in self.buffers:
            if seen_optional and not b.optional:
                raise ValueError(f"OpSpec {self.name!r}: optional buffers must come last")
            seen_optional = seen_optional or b.optional
        for code in self.errors:
            if code not in ERROR_CODES:
                raise ValueError(f"OpSpec {self.name!r}: unknown error code {code!r}")
        for e in self.events:
            if e not in EVENT_KINDS:
                raise ValueError(f"OpSpec {self.name!r}: unknown event kind {e!r}")

    @property
    def all_args(self) -> tuple[Arg, ...]:
        if self.session:
            return (SESSION_ARG, *self.args)
        return self.args


SESSION_ARG = Arg("session", "str", "session id (from session.create)", required=True)
# every op that reads a splat file: which axes an .spz holds (its header does not say; protocol/spz.py)
_SPZ_AXES = Arg("spz_axes", "str", "which axes an .spz file holds: ply = as stored (splat-transform 3.x, the default), "
                "rub = Niantic's RUB, flipped (splat-transform 2.x); docs/conventions.md", default="ply", choices=("ply", "rub"))
GENERIC_ERRORS = ("bad_message", "unsupported_version", "unknown_op", "invalid_args", "too_large", "unauthorized", "internal")


# -- validation ------------------------------------------------------------------------------------
def _type_ok(value: Any, type_: str) -> bool:
    if type_ == "any":
        return True
    if type_ == "bool":
        return isinstance(value, bool)
    if type_ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "str":
        return isinstance(value, str)
    if type_ == "list":
        return isinstance(value, list)
    if type_ == "map":
        return isinstance(value, dict)
    return False


def _check_scalar(op: str, where: str, value: Any, type_: str, a: Arg) -> Any:
    if not _type_ok(value, type_):
        raise InvalidArgs(f"{op}: {where} must be {type_}, got {type(value).__name__} {_short(value)}")
    if type_ == "float":
        value = float(value)
        if a.finite and not math.isfinite(value):
            raise InvalidArgs(f"{op}: {where} must be finite, got {value}")
    if type_ in ("int", "float"):
        if a.min is not None and value < a.min:
            raise InvalidArgs(f"{op}: {where} must be >= {a.min}, got {value}")
        if a.max is not None and value > a.max:
            raise InvalidArgs(f"{op}: {where} must be <= {a.max}, got {value}")
    if a.choices is not None and value not in a.choices:
        raise InvalidArgs(f"{op}: {where} must be one of {list(a.choices)}, got {_short(value)}")
    return value


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def validate_args(spec: OpSpec, args: Any) -> dict:
    """``args`` checked against ``spec`` with defaults filled in; unknown keys are kept (tolerated).

    Raises InvalidArgs naming the op, the field and the value.
    """
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidArgs(f"{spec.name}: args must be a map, got {type(args).__name__}")
    out = dict(args)
    for a in spec.all_args:
        v = args.get(a.name, _MISSING)
        if v is _MISSING:
            if a.required:
                raise InvalidArgs(f"{spec.name}: missing required arg {a.name!r}")
            out[a.name] = a.default
            continue
        if v is None:
            if a.nullable or (not a.required and a.default is None):
                out[a.name] = None
                continue
            raise InvalidArgs(f"{spec.name}: arg {a.name!r} must not be null")
        if a.type == "list":
            if not isinstance(v, list):
                raise InvalidArgs(f"{spec.name}: arg {a.name!r} must be list, got {type(v).__name__} {_short(v)}")
            if a.length is not None and len(v) != a.length:
                raise InvalidArgs(f"{spec.name}: arg {a.name!r} must have {a.length} items, got {len(v)}")
            if a.items is not None:
                v = [_check_scalar(spec.name, f"arg {a.name!r}[{i}]", x, a.items, a) for i, x in enumerate(v)]
            out[a.name] = v
        else:
            out[a.name] = _check_scalar(spec.name, f"arg {a.name!r}", v, a.type, a)
    return out


def validate_buffers(spec: OpSpec, buffers: Sequence[np.ndarray]) -> None:
    """Check count, dtypes, shapes and finiteness of request buffers against ``spec.buffers``."""
    n_req = sum(not b.optional for b in spec.buffers)
    if len(buffers) < n_req or len(buffers) > len(spec.buffers):
        want = f"{n_req}" if n_req == len(spec.buffers) else f"{n_req}..{len(spec.buffers)}"
        names = ", ".join(b.name for b in spec.buffers) or "none"
        raise InvalidArgs(f"{spec.name}: expected {want} buffers ({names}), got {len(buffers)}")
    for b, arr in zip(spec.buffers, buffers):
        if arr.dtype.name not in b.dtypes:
            raise InvalidArgs(f"{spec.name}: buffer {b.name!r} must have dtype in {list(b.dtypes)}, got {arr.dtype.name}")
        if b.shape is not None:
            ok = len(arr.shape) == len(b.shape) and all(w is None or w == d for w, d in zip(b.shape, arr.shape))
            if not ok:
                want = "[" + ", ".join("*" if w is None else str(w) for w in b.shape) + "]"
                raise InvalidArgs(f"{spec.name}: buffer {b.name!r} must have shape {want}, got {list(arr.shape)}")
        if b.finite and arr.dtype.name in FLOAT_FAMILY + ("complex64", "complex128") and arr.size and not np.isfinite(arr).all():
            raise InvalidArgs(f"{spec.name}: buffer {b.name!r} must be finite (has NaN or inf)")


def validate_request(spec: OpSpec, args: Any, buffers: Sequence[np.ndarray]) -> dict:
    """Args (defaults filled) after checking args and buffers against ``spec``."""
    out = validate_args(spec, args)
    validate_buffers(spec, buffers)
    return out


# -- the server and session ops (backend/service/server.py, backend/service/ops_session.py) ------------------------
_JOB_RESULT = (
    ("job", "job id or null"),
    ("kind", "job kind (e.g. 'stage1') or null"),
    ("state", "'idle' | 'running' | 'pausing' | 'paused' | 'cancelling' | 'done' | 'cancelled' | 'error'"),
    ("step", "steps done"),
    ("total", "total steps"),
    ("metrics", "last progress metrics {name: float}"),
    ("suspended", "id of the Stage I job paused behind this job (it preempts Stage I) or null"),
)
# Every reply of an op on a session carries the session's state revision after the op (issue 14).
_REVISION_RESULT = ("revision", "the session's state revision after the op (bumped by every change of its Gaussians)")
_HISTORY_RESULT = (
    ("undo", "labels of undoable states, oldest first"),
    ("redo", "labels of redoable states, next first"),
    ("count", "Gaussians after the op"),
    _REVISION_RESULT,
)

_SERVER_OPS: list[OpSpec] = [
    OpSpec(
        "ping",
        "Liveness and version check; needs no session.",
        result=(
            ("name", "'interactive3d-backend'"),
            ("version", "protocol version (int)"),
            ("server_version", "package version"),
            ("device", "torch device the backend computes on"),
            ("ops", "names of the ops this server handles"),
            ("backends", "{render|hashgrid|volrend: {backend, fast, ok, reason}}: the GPU fast path or torch twin each uses on the device, and why"),
        ),
    ),
    OpSpec(
        "session.create",
        "Create an empty session (no Gaussians yet; a stage op initialises them).",
        args=(Arg("name", "str", "optional human-readable label", default=""),),
        result=(("session", "the new session id"),),
    ),
    OpSpec(
        "session.list",
        "Open sessions, and sessions with a checkpoint in the state dir that can be resumed.",
        result=(
            ("sessions", "[{session, name, count, job, state, step, history, mine}] for open sessions (mine: this client owns it: created, resumed or took it over)"),
            ("checkpoints", "[{session, step, time}] resumable from the state dir"),
        ),
    ),
    OpSpec(
        "session.attach",
        "Observe a session: its job events also go to this client. The creator (or resumer) of a session "
        "gets them by default, and so does whoever starts a job on it. With take_over=true this client also "
        "becomes the session's owner (the only client whose ops may change it); the previous owner keeps "
        "getting its events. A client that reconnects with a new identity (e.g. after a restart) takes its "
        "session back this way.",
        args=(Arg("take_over", "bool", "become the session's owner (counts against max_sessions_per_client)", default=False),),
        session=True,
        mutates=False,
        result=(("session", "the session id"), ("job", "its current or last job id, or null"),
                ("owner", "true when this client owns the session (after the take-over, if asked)")),
        events=("progress", "state", "done", "error"),
        errors=("busy",),
    ),
    OpSpec(
        "session.close",
        "Cancel the session's job (between two steps) and drop the session. With checkpoint=true it stays "
        "resumable; otherwise its checkpoint folder is deleted.",
        args=(Arg("checkpoint", "bool", "write a checkpoint first (keep it resumable)", default=False),),
        session=True,
        result=(("closed", "true"),),
    ),
    OpSpec(
        "session.resume",
        "Re-open a session from its last checkpoint in the state dir (after a crash or restart). A job that "
        "was running when the checkpoint was written is restarted at the checkpointed step, paused if "
        "paused=true. Events go to the client that sent this request, which becomes the session's owner. A session "
        "that is still open is not re-read: the caller takes it over as it is (as session.attach with take_over=true; "
        "its job goes on, paused is ignored) and the reply describes it.",
        args=(
            Arg("session", "str", "id of a checkpointed session (session.list shows them)", required=True),
            Arg("paused", "bool", "restart the job paused", default=False),
        ),
        result=(
            ("session", "the session id"),
            ("count", "Gaussians restored"),
            ("job", "the restarted job id or null"),
            ("step", "step the job continues from (0 if none)"),
            _REVISION_RESULT,
            ("suspended", "id of a Stage I job restarted paused behind that job (an interaction that preempts "
                          "it), which goes on when the interaction ends; null if none"),
        ),
        events=("progress", "state", "done", "error"),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "session.checkpoint",
        "Write the session's checkpoint now (atomic: temp file + rename).",
        session=True,
        result=(("path", "checkpoint file"), ("step", "job step recorded (0 if no job)")),
    ),
    OpSpec("job.status", "The session's current or last job.", session=True, mutates=False, result=_JOB_RESULT),
    OpSpec(
        "job.pause",
        "Pause the running job after its current step (a 'paused' event follows).",
        session=True,
        result=_JOB_RESULT,
        events=("paused",),
        errors=("not_found",),
    ),
    OpSpec(
        "job.resume",
        "Continue a paused job.",
        session=True,
        result=_JOB_RESULT,
        events=("resumed",),
        errors=("not_found",),
    ),
    OpSpec(
        "job.cancel",
        "Stop the job after its current step; a 'done' event with status 'cancelled' follows.",
        session=True,
        result=_JOB_RESULT,
        events=("done",),
        errors=("not_found",),
    ),
    OpSpec(
        "history.undo",
        "Restore the state before the last recorded edit (exact: parameters, optimiser moments, parts, extras).",
        session=True,
        result=_HISTORY_RESULT,
        errors=("busy", "not_found"),
    ),
    OpSpec("history.redo", "Re-apply the last undone edit.", session=True, result=_HISTORY_RESULT, errors=("busy", "not_found")),
    OpSpec("history.list", "Undo and redo labels.", session=True, mutates=False, result=_HISTORY_RESULT),
    OpSpec(
        "state.get",
        "The session's Gaussians as one [N,14] float32 state frame (activated values, STATE_COLUMNS order).",
        session=True,
        mutates=False,
        result=(
            ("count", "N"),
            ("columns", "STATE_COLUMNS"),
            ("parts", "part names"),
            ("part_counts", "{part: Gaussians in it}"),
            _REVISION_RESULT,
        ),
        result_buffers=(Buffer("state", ("float32",), (None, 14), doc="[N,14] state frame"),),
    ),
]

# -- Stage I (backend/service/ops_stage1.py) -----------------------------------------------------------------
_STAGE1_OPS: list[OpSpec] = [
    OpSpec(
        "gaussians.init",
        "Initialise the session's Gaussians (an undo point): 'random' points in a sphere/ellipsoid (paper: "
        "4096), 'points' from a buffer with optional colours, 'ply' from a 3DGS .ply, 'mesh' from surface "
        "samples of a mesh file (texture/vertex/face colours), 'shap_e' from n surface samples of Shap-E's mesh for "
        "the prompt (paper §4, as GSGen; the pipeline is loaded once per server, on this request; fit_radius "
        "default 0.6). Replaces existing Gaussians.",
        args=(
            Arg("kind", "str", "random | points | ply | mesh | shap_e", required=True, choices=("random", "points", "ply", "mesh", "shap_e")),
            Arg("n", "int", "random/mesh: number of Gaussians", default=4096, min=1, max=10_000_000),
            Arg("radius", "float", "random: sphere radius", default=0.5, min=1e-6, max=1e6),
            Arg("axes", "list", "random: ellipsoid semi-axes [a,b,c] (overrides radius)", items="float", length=3, min=1e-6, max=1e6),
            Arg("seed", "int", "random/mesh: seed", default=0, min=0, max=2**63 - 1),
            Arg("sh_degree", "int", "random/points/mesh: SH degree", default=0, min=0, max=3),
            Arg("path", "str", "ply/mesh: file path inside the server's data folders (--data-dir); or send the file as a frame"),
            Arg("filename", "str", "ply/mesh with a file frame: its name (the suffix picks the format)"),
            _SPZ_AXES,
            Arg("fit_radius", "float", "mesh: centre and scale the mesh into this radius", min=1e-6, max=1e6),
            Arg("opacity", "float", "points/mesh: initial opacity", default=0.1, min=1e-4, max=0.9999),
            Arg("scale", "float", "points: isotropic scale (default: RMS distance to 3 nearest neighbours)", min=1e-8, max=1e6),
            Arg("prompt", "str", "shap_e: the text prompt (default: the session's)", default=""),
            Arg("model", "str", "shap_e: hub id or local diffusers folder inside the server's model folders (--model-dir) (default openai/shap-e)"),
            Arg("local_files_only", "bool", "shap_e: never download weights", default=False),
            Arg("shap_e_steps", "int", "shap_e: denoising steps of the prior", default=64, min=1, max=1000),
            Arg("shap_e_guidance_scale", "float", "shap_e: classifier-free guidance scale of the prior", default=15.0, min=0.0, max=1000.0),
            Arg("shap_e_grid", "int", "shap_e: SDF grid size of the mesh decoder", default=128, min=8, max=512),
        ),
        buffers=(
            Buffer("points", ("float32", "float64"), (None, 3), optional=True, doc="kind 'points': [N,3] positions"),
            Buffer("colors", ("float32", "float64", "uint8"), (None, 3), optional=True,
                   doc="kind 'points': [N,3] colours in [0,1] (float) or 0..255 (uint8)"),
            Buffer("file", ("uint8",), (None,), optional=True,
                   doc="kind 'ply'/'mesh' without path: the file's bytes (remote clients), after two empty [0,3] "
                       "placeholders for points and colors; 'filename' names its format"),
        ),
        session=True,
        result=(("count", "Gaussians created"), ("sh_degree", "SH degree")),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "gaussians.load_ply",
        "Replace the session's Gaussians by a splat file: a 3DGS .ply (INRIA layout; extra SH bands and properties "
        "tolerated), a compressed .ply, .splat, .spz, .sog or a SOG's meta.json.",
        args=(
            Arg("path", "str", ".ply (or .splat) path inside the server's data folders (--data-dir); or send the file as a frame"),
            Arg("filename", "str", "with a file frame: its name (the suffix picks the format; default .ply)"),
            _SPZ_AXES,
        ),
        buffers=(Buffer("file", ("uint8",), (None,), optional=True, doc="the file's bytes instead of path (remote clients; name the format with path's suffix or filename)"),),
        session=True,
        result=(("count", "Gaussians loaded"), ("sh_degree", "SH degree")),
        errors=("not_found", "busy", "too_large"),
    ),
    OpSpec(
        "gaussians.save_ply",
        "Write the session's Gaussians as a 3DGS .ply (INRIA layout, pre-activation; atomic write).",
        args=(
            Arg("path", "str", "output path inside the server's data folders (its folder must exist; an existing "
                "regular file is replaced atomically); none: return_file"),
            Arg("return_file", "bool", "send the file's bytes back as a uint8 frame (remote clients)", default=False),
        ),
        session=True,
        mutates=False,
        result=(("path", "absolute path written or null"), ("count", "Gaussians written")),
        result_buffers=(Buffer("file", ("uint8",), (None,), optional=True, doc="with return_file: the .ply bytes"),),
        errors=("not_found",),
    ),
    OpSpec(
        "gaussians.render",
        "Render the session's Gaussians from Blender cameras (matrix_world, horizontal fov).",
        args=(
            Arg("fov_x", "float", "horizontal field of view, radians", required=True, min=1e-3, max=3.1),
            Arg("width", "int", "image width", default=256, min=1, max=4096),
            Arg("height", "int", "image height", default=256, min=1, max=4096),
            Arg("background", "list", "RGB background in [0,1]", default=[1.0, 1.0, 1.0], items="float", length=3, min=0.0, max=1.0),
        ),
        buffers=(Buffer("c2w", ("float32", "float64"), None, doc="[4,4] or [B,4,4] Blender camera matrix_world (B ≤ 64)"),),
        session=True,
        mutates=False,
        result=(("count", "images rendered (B)"),),
        result_buffers=(
            Buffer("rgb", ("float32",), (None, None, None, 3), doc="[B,H,W,3] in [0,1], row 0 at the top"),
            Buffer("alpha", ("float32",), (None, None, None, 1), doc="[B,H,W,1]"),
        ),
    ),
    OpSpec(
        "stage1.set_reference",
        "Set the oracle guidance's reference object: a .ply, or a copy of the session's current Gaussians.",
        args=(
            Arg("path", "str", "reference .ply inside the server's data folders; omitted (and no frame): the session's current Gaussians"),
            Arg("filename", "str", "with a file frame: its name (the suffix picks the format; default .ply)"),
            _SPZ_AXES,
        ),
        buffers=(Buffer("file", ("uint8",), (None,), optional=True, doc="the file's bytes instead of path (remote clients; name the format with path's suffix or filename)"),),
        session=True,
        result=(("count", "Gaussians in the reference"),),
        errors=("not_found",),
    ),
    OpSpec(
        "stage1.start",
        "Start Stage I (paper §3.1): batches of orbit views rendered and optimised with SDS (AdamW, paper "
        "lrs), densify & prune. guidance 'sd' (Stable Diffusion, default stabilityai/stable-diffusion-2-1-base), "
        "'pixart' (PixArt-α), 'oracle' (closed-form denoiser toward a reference object; no weights), 'none' "
        "(renders only). The model loads on the job thread, once per (model, dtype, device) for the whole server "
        "(a memory-bounded cache shared with drag, semantic edit and refinement); a model that is certainly "
        "unavailable is refused with not_found. Guidance, model, prompt and negative prompt become the session's "
        "(kept in checkpoints) and fill what later requests leave out.",
        args=(
            Arg("guidance", "str", "sd | pixart | oracle | none", default="sd", choices=("sd", "pixart", "oracle", "none")),
            Arg("prompt", "str", "text prompt (required for sd/pixart; default: the session's)", default=""),
            Arg("negative_prompt", "str", "negative prompt", default=""),
            Arg("view_dependent", "bool", "append front/side/back/overhead view to the prompt", default=True),
            Arg("model", "str", "hub id or local diffusers folder inside the server's model folders (--model-dir; outside: invalid_args) (default: the session's, else per guidance)"),
            Arg("local_files_only", "bool", "never download weights", default=False),
            Arg("reference_path", "str", "oracle: reference .ply inside the server's data folders (default: stage1.set_reference's, which also takes a file frame)"),
            Arg("steps", "int", "optimisation steps", default=2000, min=1, max=1_000_000),
            Arg("batch", "int", "views per step", default=4, min=1, max=64),
            Arg("resolution", "int", "square render size (paper: 256)", default=256, min=8, max=2048),
            Arg("guidance_scale", "float", "classifier-free guidance scale", default=100.0, min=0.0, max=1000.0),
            Arg("t_range", "list", "[t_min, t_max] fractions at step 0", default=[0.02, 0.98], items="float", length=2, min=0.0, max=1.0),
            Arg("t_min", "float", "t_range[0] (alternative spelling; overrides t_range)", min=0.0, max=1.0),
            Arg("t_max", "float", "t_range[1] (alternative spelling; overrides t_range)", min=0.0, max=1.0),
            Arg("t_range_end", "list", "[t_min, t_max] reached after anneal_steps (linear)", items="float", length=2, min=0.0, max=1.0),
            Arg("anneal_steps", "int", "length of the t-range annealing", default=0, min=0, max=1_000_000),
            Arg("anneal_start", "int", "step where the t-range annealing starts (threestudio [start, v0, v1, end])", default=0, min=0, max=1_000_000),
            Arg("fixed_t", "float", "user-fixed t in (0,1) (paper §3.1.5; overrides the range)", min=1e-4, max=0.9999),
            Arg("elevation_range_deg", "list", "camera elevation range", default=[-10.0, 45.0], items="float", length=2, min=-89.0, max=89.0),
            Arg("distance_range", "list", "camera distance range", default=[1.5, 2.0], items="float", length=2, min=1e-3, max=1e4),
            Arg("fov_range_deg", "list", "camera fov range", default=[40.0, 70.0], items="float", length=2, min=1.0, max=179.0),
            Arg("background", "list", "RGB background in [0,1]", default=[1.0, 1.0, 1.0], items="float", length=3, min=0.0, max=1.0),
            Arg("random_background", "bool", "one random background colour per view", default=False),
            Arg("densify", "bool", "densify & prune (3DGS schedule)", default=True),
            Arg("densify_schedule", "str", "sds (default): the authors' Stage I practice scaled to `steps` (densify every "
                "max(steps/15, 50) steps through 2·steps/3 at a view-space gradient ≥ 0.2, ≥ 0.05 in runs under 300 steps, and "
                "prune on those steps: opacity < 0.05, scale > 0.1, centre beyond radius 1; no opacity reset; the last step prunes "
                "opacity < 0.1, centres beyond radius 1 and statistical outliers, the haze of floaters); run: 3DGS's 30k schedule (densify from 500 until 15k every 100, reset opacities "
                "every 3k) scaled to `steps`, threshold 0.2; fixed: every 100 steps from 100 until 1500, 3DGS's "
                "threshold 0.0002, whatever `steps`. docs/benchmarks.md compares them",
                default="sds", choices=("sds", "run", "fixed")),
            Arg("densify_grad_threshold", "float", "override the schedule's view-space gradient threshold (floor)", min=1e-12, max=1e6),
            Arg("densify_grad_quantile", "float", "override the schedule's top fraction densified per step (1: every Gaussian above the threshold)",
                min=1e-6, max=1.0),
            Arg("snapshot_every", "int", "state snapshot interval (steps)", default=10, min=1, max=1_000_000),
            Arg("seed", "int", "seed of cameras, backgrounds, t and noise", default=0, min=0, max=2**63 - 1),
        ),
        session=True,
        starts_job=True,
        result=(("job", "job id"), ("total", "steps"), ("count", "Gaussians at the start"), ("guidance", "guidance kind"),
                ("model", "the diffusion model (sd/pixart)"), ("densify_steps", "densify & prune steps scheduled")),
        events=("progress", "state", "done", "error"),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "presets.resolve",
        "The op arguments of a run preset for this backend (backend/service/presets.py): 'paper' = 10k Stage I + 10k "
        "Stage II steps at 256², zoom-in renders 256², threestudio's t annealing, 4096 Shap-E points; 'fast', 'preview' "
        "lighter. On a non-CUDA backend the preset is scaled down and the note says so.",
        args=(Arg("name", "str", "paper | fast | preview", required=True, choices=("paper", "fast", "preview")),),
        result=(("preset", "name"), ("device", "the backend's device type"), ("scaled", "true when scaled down for the device"),
                ("note", "what was run as written or scaled, one sentence"), ("values", "the resolved preset's fields"),
                ("ops", "op name → arguments (gaussians.init, stage1.start, stage2.distill, stage2.refine, interact.drag, interact.edit)")),
    ),
]

# -- interactions (backend/service/ops_interactions.py) ------------------------------------------------------
_PART_NAME_DOC = "part name: 1-64 characters of letters, digits, space, _ . -"
_VEC3 = dict(type="list", items="float", length=3)
_NUMERIC = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float32", "float64")
_SDS_ARGS = (
    Arg("prompt", "str", "prompt of this interaction's SDS (per-part prompt; semantic edit: the new one)", default=""),
    Arg("negative_prompt", "str", "negative prompt", default=""),
    Arg("fixed_t", "float", "user-fixed diffusion time in (0,1), e.g. 0.98 early, 0.3 to fine-tune (§3.1.5)", min=0.0, max=1.0, nullable=True),
    Arg("t_min", "float", "lower end of the sampled t range", default=0.02, min=0.0, max=1.0),
    Arg("t_max", "float", "upper end of the sampled t range", default=0.98, min=0.0, max=1.0),
    Arg("batch", "int", "zoom-in views per step", default=1, min=1, max=16),
    Arg("resolution", "int", "zoom-in render size (pixels, square)", default=64, min=16, max=1024),
    Arg("seed", "int", "seed of the zoom-in cameras and SDS noise", default=0, min=0),
)
# Ops that take Gaussian indices take the state revision they refer to (issue 14): every change of a session's
# Gaussians (ops, job steps that change their number or order, undo, redo, resume) bumps it; a stale one is
# refused with ``conflict`` and nothing changes. Optional so that a script that owns its session may omit it.
_REVISION_ARG = Arg(
    "revision", "int", "the state revision (from state.get, a state event or a reply) the indices / selection refer to; "
    "a stale one is refused with conflict and nothing changes; omitted: not checked", min=0, nullable=True,
)
_INTERACTION_OPS: list[OpSpec] = [
    OpSpec(
        "parts.select",
        "Define (or combine into) a named part (paper §3.1.1): by indices, a sphere, an axis-aligned box, an oriented "
        "box (4×4 mapping the cube [-1,1]³), 2D masks from cameras (a Gaussian is in iff its centre projects inside "
        "the mask in EVERY view; optionally only where not occluded in the rendered depth), or all. Undoable.",
        args=(
            Arg("name", "str", _PART_NAME_DOC, required=True),
            Arg("kind", "str", "selector", required=True, choices=("indices", "sphere", "aabb", "box", "masks", "all")),
            Arg("combine", "str", "how to combine with an existing part of that name", default="replace", choices=("replace", "add", "subtract", "intersect")),
            Arg("indices", "list", "kind=indices: Gaussian indices (or the buffer)", items="int", min=0),
            Arg("center", "list", "kind=sphere: centre (object frame)", items="float", length=3),
            Arg("radius", "float", "kind=sphere: radius (> 0)", min=0.0),
            Arg("min", "list", "kind=aabb: lower corner", items="float", length=3),
            Arg("max", "list", "kind=aabb: upper corner", items="float", length=3),
            Arg("matrix", "list", "kind=box: 16 numbers, row-major 4×4 (or the buffer)", items="float", length=16),
            Arg("fov_x", "float", "kind=masks: horizontal field of view of the cameras (radians)", min=0.0, max=3.14),
            Arg("occlusion_aware", "bool", "kind=masks: require centre depth ≤ rendered depth + tolerance", default=False),
            Arg("depth_tolerance", "float", "kind=masks: depth tolerance (object units)", default=0.05, min=0.0),
            Arg("allow_empty", "bool", "accept a selection that catches no Gaussian", default=False),
            _REVISION_ARG,
        ),
        buffers=(
            Buffer("data", _NUMERIC, None, optional=True, doc="indices [K] int (kind=indices), box matrix [4,4] (kind=box) or masks [B,H,W] uint8/bool (kind=masks)"),
            Buffer("c2w", ("float32", "float64"), (None, 4, 4), optional=True, doc="kind=masks: Blender camera matrix_world per mask [B,4,4]"),
        ),
        result=(("name", "the part"), ("count", "Gaussians in it"), ("total", "Gaussians in the session"), _REVISION_RESULT),
        session=True,
        errors=("not_found", "conflict"),
    ),
    OpSpec(
        "parts.list",
        "Named parts and their sizes.",
        session=True,
        mutates=False,
        result=(("parts", "{name: count}"), ("total", "Gaussians in the session")),
    ),
    OpSpec(
        "parts.forget",
        "Drop a part's name (its Gaussians stay). Undoable.",
        args=(Arg("name", "str", _PART_NAME_DOC, required=True),),
        session=True,
        result=(("parts", "remaining part names"),),
        errors=("not_found",),
    ),
    OpSpec(
        "parts.remove",
        "Delete a part's Gaussians with their optimiser rows (paper Eq. 1), given by name or by an indices buffer "
        "(Blender's Edit-Mode selection). Undoable.",
        args=(
            Arg("part", "str", "part to delete (or give indices)"),
            Arg("indices", "list", "Gaussian indices (or the buffer)", items="int", min=0),
            _REVISION_ARG,
        ),
        buffers=(Buffer("indices", ("int32", "int64", "uint32", "uint64"), (None,), optional=True, doc="Gaussian indices [K]"),),
        result=(("removed", "Gaussians deleted"), ("count", "Gaussians left"), _REVISION_RESULT),
        session=True,
        errors=("not_found", "busy", "conflict"),
    ),
    OpSpec(
        "parts.add",
        "Merge another Gaussian set into the session (E₁ ∪ E₂, §3.1.1) from a splat file (a path, or its bytes as a "
        "uint8 frame like gaussians.load_ply: remote clients), another open session, or a state-frame buffer, optionally "
        "transformed by a 4×4 first; the new rows become part `name`. Undoable.",
        args=(
            Arg("name", "str", "part name for the merged Gaussians (" + _PART_NAME_DOC + ")", default=""),
            Arg("path", "str", "a splat file (.ply, compressed .ply, .splat, .spz, .sog or a SOG's meta.json) inside the server's data folders (--data-dir); "
                "or send the file as a frame"),
            Arg("filename", "str", "with a file frame: its name (the suffix picks the format; default .ply)"),
            _SPZ_AXES,
            Arg("source_session", "str", "another open session to copy from"),
            Arg("matrix", "list", "16 numbers, row-major 4×4 applied to the added set (or the buffer)", items="float", length=16),
        ),
        buffers=(
            Buffer("a", ("float32", "float64", "uint8"), None, optional=True,
                   doc="the Gaussians — a state frame [M,14] or the splat file's bytes uint8 [nbytes] — or the [4,4] "
                       "transform (either order)"),
            Buffer("b", ("float32", "float64", "uint8"), None, optional=True, doc="the other one of the two"),
        ),
        result=(("added", "Gaussians merged"), ("count", "Gaussians in the session"), ("name", "their part or null")),
        session=True,
        errors=("not_found", "busy", "too_large"),
    ),
    OpSpec(
        "parts.transform",
        "Apply a 4×4 affine to a part (paper Eq. 2) about its bounding-box centre or a pivot: positions moved, rotations "
        "composed into the quaternions, stretch/shear applied to the covariances (Σ' = AΣAᵀ re-factorised). Undoable.",
        args=(
            Arg("part", "str", "the part", required=True),
            Arg("matrix", "list", "16 numbers, row-major 4×4 (or the buffer)", items="float", length=16),
            Arg("pivot", "list", "pivot point; default the part's bounding-box centre", items="float", length=3),
            _REVISION_ARG,
        ),
        buffers=(Buffer("matrix", ("float32", "float64"), (4, 4), optional=True, doc="the 4×4 transform"),),
        result=(("count", "Gaussians transformed"), ("pivot", "pivot used"), ("similarity", "true if A was ±s·R"), _REVISION_RESULT),
        session=True,
        errors=("not_found", "busy", "conflict"),
    ),
    OpSpec(
        "interact.drag",
        "Deformable or rigid drag (paper Eq. 3–6) as a job: P = {i: ‖μ_i − p_s‖ ≤ r}; before each step P moves by "
        "α toward p_t (the source moves with it); L_motion (+ L_rigid in rigid mode) (+ interactive SDS with zoom-in "
        "cameras when guidance=true); only Gaussians that may move are updated; densify & prune after. Undoable.",
        args=(
            Arg("source", "list", "p_s (object frame)", required=True, items="float", length=3),
            Arg("target", "list", "p_t (object frame), ≠ p_s", required=True, items="float", length=3),
            Arg("radius", "float", "r (> 0)", required=True, min=0.0),
            Arg("mode", "str", "deformable: P recomputed around the moving source; rigid: P fixed + L_rigid", default="deformable", choices=("deformable", "rigid")),
            Arg("steps", "int", "optimisation steps", default=50, min=1, max=100000),
            Arg("step_size", "float", "α per step; default |p_t − p_s| / (steps/2)", min=0.0, nullable=True),
            Arg("motion_weight", "float", "weight of L_motion (Eq. 5)", default=1.0, min=0.0),
            Arg("rigid_weight", "float", "weight of L_rigid (Eq. 6)", default=30.0, min=0.0),
            Arg("lr_scale", "float", "multiplies the session's learning rates during the drag", default=0.1, min=0.0),
            Arg("densify_after", "bool", "fill gaps and prune after the drag", default=True),
            Arg("guidance", "bool", "add interactive SDS with the session's guidance (prompt: this one or the session's)", default=False),
            Arg("oracle", "bool", "guide with the oracle (stage1.set_reference's object) instead of the session's guidance", default=False),
            *_SDS_ARGS,
        ),
        result=(("job", "job id"), ("steps", "total steps"), ("active", "|P| at the start")),
        events=("progress", "state", "done", "error"),
        session=True,
        starts_job=True,
        preempts=True,
        errors=("busy", "not_found"),
    ),
    OpSpec(
        "interact.edit",
        "Semantic editing (paper §3.1.4) as a job: SDS with the new prompt on zoom-in views of the part; only the part's "
        "Gaussians are updated (everything outside stays bit-identical). Uses the session's guidance (the model of its "
        "last stage1.start with guidance sd/pixart/oracle, whatever jobs ran since), the oracle only with oracle=true. Undoable.",
        args=(
            Arg("part", "str", "the part to edit", required=True),
            Arg("steps", "int", "optimisation steps", default=200, min=1, max=100000),
            Arg("densify_every", "int", "densify & prune inside the part every this many steps (0 = off)", default=0, min=0),
            Arg("oracle", "bool", "guide with the oracle (stage1.set_reference's object) instead of the session's guidance", default=False),
            *_SDS_ARGS,
        ),
        result=(("job", "job id"), ("steps", "total steps"), ("part_size", "Gaussians in the part")),
        events=("progress", "state", "done", "error"),
        session=True,
        starts_job=True,
        preempts=True,
        errors=("busy", "not_found"),
    ),
    OpSpec(
        "segment.sam",
        "Optional: a mask from Segment Anything for clicked points on an image (needs the segment-anything package and "
        "a checkpoint on the backend machine; not_found otherwise).",
        args=(
            Arg("checkpoint", "str", "path of the SAM checkpoint inside the server's model folders (--model-dir)", required=True),
            Arg("model_type", "str", "SAM variant", default="vit_h", choices=("vit_h", "vit_l", "vit_b")),
            Arg("points", "list", "clicks [[x, y], …] in pixels", required=True),
        ),
        buffers=(Buffer("image", ("float32", "uint8"), (None, None, 3), doc="the image [H,W,3]"),),
        result=(("count", "pixels in the mask"),),
        result_buffers=(Buffer("mask", ("uint8",), (None, None), doc="[H,W] 1 = inside"),),
        errors=("not_found",),
    ),
]

# -- Stage II (backend/service/ops_stage2.py) ----------------------------------------------------------------
_STAGE2_OPS: list[OpSpec] = [
    OpSpec(
        "stage2.distill",
        "Distil the session's Gaussians into the hash-grid NeRF (paper Eq. 7: L1 between NeRF and Gaussian "
        "renders from random orbit cameras). Creates the field at the first step (undoable), or continues the "
        "existing one unless reset=true. The field options apply when a field is created.",
        args=(
            Arg("steps", "int", "optimisation steps (paper: 10000)", default=1000, min=1, max=1_000_000),
            Arg("resolution", "int", "Gaussian target size (square; each target pixel averages 4×4 sub-pixels, fewer "
                "above 256² and no finer than the session's last stage1.start resolution, so thin Gaussians keep their "
                "silhouette)", default=64, min=8, max=1024),
            Arg("rays_per_step", "int", "random target pixels per step", default=4096, min=1, max=1 << 20),
            Arg("view_pool", "int", "render this many orbit views once and draw rays from all (0: new cameras each step)", default=0, min=0, max=4096),
            Arg("lr_grid", "float", "Adam learning rate of the hash tables (the official configs: 0.01)", default=0.01, min=1e-6, max=1.0),
            Arg("lr_mlp", "float", "Adam learning rate of the MLPs (the official configs: 0.001)", default=1e-3, min=1e-6, max=1.0),
            Arg("n_samples", "int", "marching steps per AABB diagonal (step 2√3·r/n; the official configs use 512)", default=64, min=4, max=1024),
            Arg("levels", "int", "hash grid levels", default=16, min=1, max=32),
            Arg("features", "int", "features per level", default=2, min=1, max=8),
            Arg("log2_table_size", "int", "log2 entries per level table", default=19, min=4, max=24),
            Arg("base_resolution", "int", "coarsest grid resolution", default=16, min=1, max=1024),
            Arg("per_level_scale", "float", "resolution growth per level", default=1.447, min=1.0, max=4.0),
            Arg("aabb_radius", "float", "scene box half-size", default=1.0, min=1e-3, max=1e3),
            Arg("background", "list", "background colour", items="float", length=3, default=[1.0, 1.0, 1.0], min=0.0, max=1.0),
            Arg("backend", "str", "hash-grid backend", default="auto", choices=("auto", "torch", "triton", "tcnn")),
            Arg("preview_every", "int", "steps between previews (sent with progress events and by stage2.preview)", default=10, min=0, max=1_000_000),
            Arg("opacity_weight", "float", "weight of |NeRF opacity − Gaussian alpha| (0 with depth_weight 0: the paper's Eq. 7 alone)", default=0.1, min=0.0, max=100.0),
            Arg("depth_weight", "float", "weight of |NeRF depth − Gaussian depth| where the Gaussians are opaque", default=0.03, min=0.0, max=100.0),
            Arg("orientation_weight", "float", "weight of DreamFusion's orientation loss on density-gradient normals (0: off)", default=0.01, min=0.0, max=1e4),
            Arg("mesh_every", "int", "steps between low-resolution preview meshes sent as mesh events (0: none)", default=0, min=0, max=1_000_000),
            Arg("mesh_resolution", "int", "preview mesh grid resolution", default=48, min=8, max=256),
            Arg("reset", "bool", "start from a fresh field", default=False),
            Arg("seed", "int", "seed", default=0, min=0, max=2**31 - 1),
        ),
        session=True,
        starts_job=True,
        result=(("job", "job id"), ("total", "total steps"), ("target_supersample", "s: each target pixel averages s×s sub-pixels")),
        events=("progress", "state", "mesh", "paused", "resumed", "done", "error"),
        errors=("busy",),
    ),
    OpSpec(
        "stage2.occupancy",
        "Recompute the occupancy grid (paper: 32³) from the field's density (an undo point).",
        args=(
            Arg("resolution", "int", "grid resolution", default=32, min=1, max=256),
            Arg("threshold", "float", "occupied where σ·step exceeds it (nerfacc's occ_thre)", default=0.01, min=0.0, max=1e6),
            Arg("n_samples", "int", "the marching density the grid is for: step = 2√3·r/n_samples (use the distillation's)", default=64, min=4, max=1024),
        ),
        session=True,
        result=(("resolution", "R"), ("occupied", "occupied cells"), ("fraction", "occupied fraction")),
        result_buffers=(Buffer("occupancy", ("uint8",), (None, None, None), doc="[R,R,R] 1 = occupied, indexed [x,y,z]"),),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "stage2.add_part",
        "Add a refinement part (paper Eq. 9): the region sphere ∩ occupancy grid = O_part, with its own multi-level "
        "hash tables in coordinates local to O_part's box (finer than the base field there by default) and residual "
        "MLPs reading the part's and the base field's features and the base density. An undo point. Errors: radius ≤ 0, a region with no occupied cell.",
        args=(
            Arg("name", "str", "part name", required=True),
            Arg("center", "list", "region centre (object frame)", items="float", length=3, required=True),
            Arg("radius", "float", "region radius (> 0)", required=True),
            Arg("levels", "int", "levels of the part's tables (paper: 8)", default=8, min=1, max=32),
            Arg("features", "int", "features per level (paper: 2)", default=2, min=1, max=8),
            Arg("log2_table_size", "int", "log2 entries per table (paper: 19)", default=19, min=4, max=24),
            Arg("base_resolution", "int", "cells across the part's box at its coarsest level", default=16, min=1, max=65536),
            Arg("finest_resolution", "int", "cells across the part's box at its finest level (default: twice the base field's finest over the box)", min=1, max=65536),
            Arg("seed", "int", "seed", default=0, min=0, max=2**31 - 1),
        ),
        session=True,
        result=(
            ("part", "name"), ("cells", "cells in O_part"), ("parts", "all part names"),
            ("resolutions", "the part's level resolutions, cells across its box (local coordinates)"),
            ("box", "[lo, hi] world corners of the part's box (O_part's bounding box)"),
            ("base_finest_over_box", "cells of the base field's finest level across the same box"),
        ),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "stage2.refine",
        "Refine the chosen parts (paper Eq. 8–9): toward fresh Gaussian renders from zoom-in cameras around their "
        "region, or with interactive SDS (zoom-in cameras, the user's t) when guidance='sd' (weights loaded at the "
        "first step; a missing model ends the job with an error event). The base field and other parts stay "
        "bit-identical.",
        args=(
            Arg("parts", "list", "names of the parts to train", items="str", required=True),
            Arg("guidance", "str", "'none': L1 toward fresh Gaussian renders; 'sd': interactive SDS (Eq. 8)", default="none", choices=("none", "sd")),
            Arg("prompt", "str", "guidance 'sd': the part's prompt (default: the session's)"),
            Arg("fixed_t", "float", "guidance 'sd': the user's diffusion time t (e.g. 0.3)", min=0.001, max=0.999),
            Arg("model", "str", "guidance 'sd': model id or local folder inside the server's model folders (--model-dir) (default: the session's SD model, else SD 2.1 base)"),
            Arg("local_files_only", "bool", "guidance 'sd': never download", default=True),
            Arg("steps", "int", "optimisation steps", default=200, min=1, max=1_000_000),
            Arg("views", "int", "zoom-in target views", default=8, min=1, max=256),
            Arg("resolution", "int", "target render size", default=64, min=8, max=1024),
            Arg("rays_per_step", "int", "random target pixels per step", default=2048, min=1, max=1 << 20),
            Arg("n_samples", "int", "marching steps per AABB diagonal (step 2√3·r/n)", default=64, min=4, max=1024),
            Arg("orientation_weight", "float", "weight of DreamFusion's orientation loss on density-gradient normals (0: off)", default=0.01, min=0.0, max=1e4),
            Arg("mesh_every", "int", "steps between low-resolution preview meshes sent as mesh events (0: none)", default=0, min=0, max=1_000_000),
            Arg("mesh_resolution", "int", "preview mesh grid resolution", default=48, min=8, max=256),
            Arg("background", "list", "background colour", items="float", length=3, default=[1.0, 1.0, 1.0], min=0.0, max=1.0),
            Arg("seed", "int", "seed", default=0, min=0, max=2**31 - 1),
        ),
        session=True,
        starts_job=True,
        result=(("job", "job id"), ("total", "total steps")),
        events=("progress", "state", "mesh", "paused", "resumed", "done", "error"),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "stage2.extract_mesh",
        "Marching cubes on the (refined) field with vertex colours and floater removal; optionally "
        "written to path (glb/obj/ply); the arrays come back for the add-on. The surface is where a ray from "
        "outside has gathered opacity_level of opacity (default), or the density iso-level threshold.",
        args=(
            Arg("resolution", "int", "density grid resolution (cap 512)", default=256, min=2, max=512),
            Arg("surface", "str", "'opacity': accumulated opacity from outside = opacity_level; 'density': σ = threshold", default="opacity", choices=("opacity", "density")),
            Arg("opacity_level", "float", "opacity of the surface when surface='opacity'", default=0.5, min=0.001, max=0.999),
            Arg("threshold", "float", "density iso-level when surface='density'", default=10.0, min=0.0, max=1e9),
            Arg("min_component_fraction", "float", "drop components smaller than this × the largest", default=0.05, min=0.0, max=0.999),
            Arg("path", "str", "output file inside the server's data folders (none: arrays only)"),
            Arg("format", "str", "file format (default: from the path's suffix)", choices=("glb", "obj", "ply")),
            Arg("texture", "bool", "also UV-unwrap (xatlas) and bake the field's colour into a texture: GLB with a "
                "baseColorTexture, OBJ + MTL + PNG", default=False),
            Arg("texture_size", "int", "texels per side of the square texture", default=1024, min=16, max=8192),
            Arg("texture_padding", "int", "texels around each chart filled with its colour", default=4, min=0, max=64),
            Arg("return_file", "bool", "also send the file's bytes back as the last frame (uint8; format: 'format', default glb)", default=False),
        ),
        session=True,
        mutates=False,
        result=(("vertices", "V"), ("faces", "F"), ("path", "written file or null"), ("removed_components", "floaters dropped"),
                ("textured", "true when uvs and texture follow"),
                ("signed_error", "the vertices' signed distance to the session's Gaussians' surface (mean, p10, p50, p90, "
                 "mean_abs, vertices; > 0 = outside, i.e. inflated; backend/stage2/mesh_error.py), null without Gaussians")),
        result_buffers=(
            Buffer("vertices", ("float32",), (None, 3), doc="[V,3] positions"),
            Buffer("faces", ("int32",), (None, 3), doc="[F,3] vertex indices"),
            Buffer("colors", ("uint8",), (None, 4), doc="[V,4] RGBA vertex colours (sRGB)"),
            Buffer("uvs", ("float32",), (None, 2), optional=True, doc="texture only: [V,2] UVs, v up"),
            Buffer("texture", ("uint8",), (None, None, 4), optional=True, doc="texture only: [S,S,4] sRGB RGBA, row 0 at the top"),
            Buffer("file", ("uint8",), (None,), optional=True, doc="with return_file: the mesh file's bytes (always the last frame)"),
        ),
        errors=("not_found", "busy"),
    ),
    OpSpec(
        "stage2.preview",
        "The current or last distillation's low-resolution preview render (a fixed front view).",
        session=True,
        mutates=False,
        result=(("step", "job step"), ("height", "H"), ("width", "W")),
        result_buffers=(Buffer("image", ("float32",), (None, None, 3), doc="[H,W,3] in [0,1], row 0 at the top"),),
        errors=("not_found",),
    ),
    OpSpec(
        "stage2.render",
        "Render the Stage II field with its refinement parts from Blender cameras (matrix_world, horizontal fov), "
        "with the same arguments and buffers as gaussians.render, plus depth and normals. Allowed while a job runs "
        "(it renders between two steps).",
        args=(
            Arg("fov_x", "float", "horizontal field of view, radians", required=True, min=1e-3, max=3.1),
            Arg("width", "int", "image width", default=256, min=1, max=4096),
            Arg("height", "int", "image height", default=256, min=1, max=4096),
            Arg("background", "list", "RGB background in [0,1]", default=[1.0, 1.0, 1.0], items="float", length=3, min=0.0, max=1.0),
            Arg("n_samples", "int", "samples per ray across the field's box", default=64, min=4, max=1024),
            Arg("normals", "bool", "also compute normals (density gradient; ≈ 2.5× the cost); else they are 0", default=True),
        ),
        buffers=(Buffer("c2w", ("float32", "float64"), None, doc="[4,4] or [B,4,4] Blender camera matrix_world (B ≤ 64)"),),
        session=True,
        mutates=False,
        result=(("count", "images rendered (B)"),),
        result_buffers=(
            Buffer("rgb", ("float32",), (None, None, None, 3), doc="[B,H,W,3] in [0,1], row 0 at the top"),
            Buffer("alpha", ("float32",), (None, None, None, 1), doc="[B,H,W,1] accumulated opacity"),
            Buffer("depth", ("float32",), (None, None, None, 1), doc="[B,H,W,1] expected camera-space depth (0 where empty)"),
            Buffer("normals", ("float32",), (None, None, None, 3), doc="[B,H,W,3] opacity-weighted normals −∇σ/‖∇σ‖, object frame"),
        ),
        errors=("not_found", "too_large"),
    ),
]

OPS: dict[str, OpSpec] = {}
for _spec in (*_SERVER_OPS, *_STAGE1_OPS, *_INTERACTION_OPS, *_STAGE2_OPS):
    if _spec.name in OPS:
        raise ValueError(f"duplicate op {_spec.name!r} in the catalogue")
    OPS[_spec.name] = _spec
del _spec


# -- the reference page ----------------------------------------------------------------------------
def _fmt_shape(shape: tuple | None) -> str:
    if shape is None:
        return "any"
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


def _fmt_arg(a: Arg) -> str:
    t = a.type if a.items is None else f"list[{a.items}]"
    if a.length is not None:
        t += f" (len {a.length})"
    constraints = []
    if a.min is not None:
        constraints.append(f">= {a.min}")
    if a.max is not None:
        constraints.append(f"<= {a.max}")
    if a.choices is not None:
        constraints.append("one of " + ", ".join(f"`{c}`" for c in a.choices))
    if a.nullable:
        constraints.append("nullable")
    req = "required" if a.required else f"default `{a.default!r}`"
    extra = f" ({'; '.join(constraints)})" if constraints else ""
    return f"| `{a.name}` | {t} | {req}{extra} | {a.doc} |"


def _section(title: str, ops: list[OpSpec]) -> list[str]:
    lines = [f"## {title}", ""]
    if not ops:
        return lines + ["(none yet)", ""]
    for s in ops:
        lines += [f"### `{s.name}`", "", s.summary, ""]
        flags = []
        if s.session:
            flags.append("acts on a session")
        if s.starts_job:
            flags.append("starts a job")
        if s.preempts:
            flags.append("pauses a Stage I job for its duration")
        if s.session:
            flags.append("owner only" if s.mutates else "any client (reads only)")
        if flags:
            lines += ["*" + ", ".join(flags) + "*", ""]
        if s.all_args:
            lines += ["| arg | type | | |", "|---|---|---|---|", *(_fmt_arg(a) for a in s.all_args), ""]
        if s.buffers:
            lines += ["Request buffers:", ""]
            for b in s.buffers:
                opt = " (optional)" if b.optional else ""
                lines.append(f"- `{b.name}` {'/'.join(b.dtypes)} {_fmt_shape(b.shape)}{opt}: {b.doc}")
            lines.append("")
        if s.result:
            lines += ["Result:", ""] + [f"- `{k}`: {v}" for k, v in s.result] + [""]
        if s.result_buffers:
            lines += ["Reply buffers:", ""]
            lines += [f"- `{b.name}` {'/'.join(b.dtypes)} {_fmt_shape(b.shape)}: {b.doc}" for b in s.result_buffers]
            lines.append("")
        if s.events:
            lines += ["Events: " + ", ".join(f"`{e}`" for e in s.events), ""]
        if s.errors:
            lines += ["Errors (besides the generic ones): " + ", ".join(f"`{e}`" for e in s.errors), ""]
    return lines


def markdown() -> str:
    """The reference page docs/protocol.md, generated from this catalogue."""
    lines = [
        "# Interactive3D wire protocol",
        "",
        "<!-- GENERATED by `python -m interactive3d.protocol.catalogue --markdown > docs/protocol.md`; do not edit. -->",
        "",
        f"Protocol version: **{PROTOCOL_VERSION}**",
        "",
        "## Envelope",
        "",
        "ZeroMQ multipart `[header, buf0, buf1, …]` (client DEALER ⇄ server ROUTER). The header is a msgpack map;",
        "each buffer frame holds the raw little-endian C-order bytes of one array whose dtype and shape the",
        "header declares (`prod(shape) × itemsize` must equal the frame length). Unknown header fields are ignored.",
        "",
        f"- request: `{{\"v\": {PROTOCOL_VERSION}, \"id\": str, \"op\": str, \"args\": map, \"buffers\": [{{\"dtype\": str, \"shape\": [int…]}}…]}}`",
        f"- reply: `{{\"v\": {PROTOCOL_VERSION}, \"id\": str, \"ok\": true, \"result\": map, \"buffers\": […]}}`",
        f"- error reply: `{{\"v\": {PROTOCOL_VERSION}, \"id\": str, \"ok\": false, \"error\": {{\"code\": str, \"message\": str}}}}`",
        f"- event: `{{\"v\": {PROTOCOL_VERSION}, \"id\": <request that started the job>, \"event\": str, \"session\": str, \"job\": str, \"data\": map, \"buffers\": […]}}`",
        "",
        "### Transport (when the server has a key)",
        "",
        "A server with a key speaks ZeroMQ CURVE, and only key holders pass its handshake: a peer without the key",
        "never gets a frame into the server (nothing it sends is buffered, hashed or parsed) and gets no reply at all.",
        "Both key pairs derive from the key: the 32-byte CURVE secret keys are",
        "`HMAC-SHA256(key, \"i3d-curve-server-v1\")` for the server and `HMAC-SHA256(key, \"i3d-curve-client-v1\")`",
        "for every client (the ASCII names, no zero byte), Z85-encoded as ZeroMQ takes them; the public keys are",
        "their Curve25519 public keys (`zmq_curve_public`). A client sets `CURVE_SERVERKEY` to the server's",
        "public key and `CURVE_PUBLICKEY`/`CURVE_SECRETKEY` to the client pair; the server's ZAP handler admits",
        "only the client public key. `i3d serve --curve-secret-file` replaces the server pair with the",
        "operator's (clients are given its public key); the client pair and the gate stay. Messages are signed",
        "as below all the same: CURVE admits key holders, the signature binds each message to the key, its time",
        "and its nonce.",
        "",
        "A server without a key uses no CURVE and binds only loopback addresses (`tcp://127.*`, `localhost`,",
        "`::1`) or `ipc://` (a non-loopback bind needs a key): any local user who can reach the port (or open",
        "the socket file) may send it messages within the caps and hold memory with multipart messages it",
        "never finishes. Set a key on a machine shared with users you do not trust.",
        "",
        "Every frame is also capped at the socket (ZMQ_MAXMSGSIZE = the largest frame the caps allow, 1 GiB by",
        "default): a larger frame closes the sender's connection as it arrives, with no reply.",
        "",
        "### Signing (when the server has a key)",
        "",
        "The key is the bytes of the key file (`--auth-key-file`, `$I3D_AUTH_KEY_FILE`) or of `$I3D_AUTH_KEY`, with",
        "surrounding whitespace stripped and nothing decoded (a hex string is used as its ASCII bytes); at least 32 bytes.",
        "Every request, reply and event is signed; the server checks requests exactly as follows.",
        "",
        "1. Build the header map with `\"auth\"` as its **last** key: `\"auth\": {\"ts\": T, \"nonce\": N, \"sig\": Z}` with",
        "   `sig` the **last** key inside it. `T`: seconds since the Unix epoch (a msgpack float or int); `N`: a string",
        "   of 16–128 characters never used before (e.g. 32 random hex digits); `Z`: 32 zero bytes as msgpack",
        "   `bin` (`0xc4 0x20` then the 32 bytes). Pack it with any msgpack encoder: the receiver never re-encodes,",
        "   it hashes the bytes it got, so the packed header ends with `c4 20` + 32 bytes.",
        "2. `sig = HMAC-SHA256(key, D ‖ H ‖ buf0 ‖ buf1 ‖ …)`: `D` the domain, the 15 bytes `i3d-request-v1\\0`",
        "   (ASCII, then one zero byte) for requests; `H` the packed header of step 1 (with the zero `sig`); then",
        "   each buffer frame's bytes in frame order (the header's `buffers` list declares their dtypes and shapes,",
        "   so frame boundaries are covered too). `‖` is plain concatenation: no lengths, no separators.",
        "3. Overwrite the header's last 32 bytes (the zeros) with `sig` and send `[H', buf0, buf1, …]`.",
        "",
        "The server refuses (`unauthorized`) a header whose last 34 bytes are not `c4 20` + the `sig` it names, a",
        "`sig` that differs (compared in constant time), a `ts` that is not finite or is more than 300 s from its",
        "clock, a `ts` at or before the moment the server started (it cannot vouch for nonces seen before), and a",
        "nonce it has seen within the ±300 s window. Replies and events are signed the same way under the domain",
        "`i3d-reply-v1\\0` (13 bytes: a captured reply sent back as a request fails); a client verifies them by",
        "zeroing the last 32 bytes of the header it got and recomputing. (The domains' own `-v1` names the signing",
        "scheme, not the envelope.)",
        "",
        f"Versions: the envelope's `v` changes whenever the bytes on the wire change. Version {PROTOCOL_VERSION} added the",
        "domain prefix `D` to the signature (version 1 signed `H ‖ buf0 ‖ …`). A message of another version is",
        "answered `unsupported_version` naming both versions and, for version 1, what changed; that reply is sent",
        "in the sender's own version so an older client can read it. An *unsigned* version-1 message is byte for",
        "byte what it was, so a server with no key still answers one — its reply (or error) in version 1; job",
        "events are always sent in version 2, so a client that subscribes to a session should speak version 2.",
        "A server with a key refuses version 1 as a whole (its signature changed), naming the change.",
        "",
        "The CURVE transport of a server with a key (see 'Transport') came without a new version: `v` numbers",
        "the envelope, whose bytes did not change, and a server without a key is reached exactly as before. A",
        "client with a key that predates it cannot reach a server with a key (its handshake lacks CURVE) and",
        "sees no reply at all, so no version reply could tell it; the server logs each refused handshake and",
        "says why (no CURVE: an old client or no key; other CURVE keys: another key), and this release's",
        "client names the likely cause in its timeout error (the connection's handshake events).",
        "",
        "Requests are answered in any order; match replies by `id`. A request re-sent with the same `id` (a",
        "client retry) gets the first successful reply again instead of running twice (the cache is per client",
        "identity). Job events go to every client subscribed to the session: its creator (or resumer), a client",
        "that starts a job on it, and clients that call `session.attach`.",
        "",
        "State revisions: each session counts a `revision` that every change of its Gaussians bumps (every op that",
        "changes them, job steps that change their number or order, undo, redo, resume). The replies of every op on a",
        "session and every `state` event carry it. Ops that take Gaussian indices",
        "(`parts.select`, `parts.remove`, `parts.transform`) take the `revision` the indices refer to and answer",
        "`conflict`, changing nothing, when it is stale.",
        "",
        "Session ownership: a session belongs to the client identity (ZeroMQ routing id) that created or resumed it.",
        "Ops marked *owner only* below (everything that changes a session or its job, undo/redo, close) answer",
        "`unauthorized` to any other client, before their args are looked at; ops marked *any client* only read",
        "(state, status, renders, exports) and stay open to every client. `session.attach` with `take_over=true`",
        "(or `session.resume` of a session that is still open) makes the caller the owner; the previous owner keeps",
        "its events. Threat model: ownership stops one client from changing another's work by accident or through a",
        "guessed or leaked session id; it is not a boundary between users — everyone holding the auth key may take",
        "a session over explicitly. The Blender add-on keeps one identity per Blender session and takes its session",
        "back (`take_over`) when it re-attaches after a restart.",
        "",
        "Buffer dtypes: " + ", ".join(f"`{d}`" for d in DTYPES) + ".",
        "",
        "Default caps (server `--max-bytes` etc.): 64 frames, 1 MiB header, 1 GiB per frame and in total.",
        "",
        "State frame columns (`STATE_COLUMNS`): " + ", ".join(f"`{c}`" for c in STATE_COLUMNS) + " — float32 [N,14], activated values.",
        "",
        "## Error codes",
        "",
        "| code | meaning |",
        "|---|---|",
    ]
    meanings = {
        "bad_message": "the envelope cannot be decoded (garbage, non-map header, missing keys, frame/size mismatch, unsupported dtype)",
        "unsupported_version": "header `v` is not this protocol version (the message names both; see 'Versions' above)",
        "unknown_op": "no such op (or this server has no handler for it)",
        "invalid_args": "args or buffers do not match the op's spec (type, range, NaN, shape, dtype, count), or fail semantic checks",
        "too_large": "over a size cap (frames, bytes)",
        "not_found": "unknown session, job, part or file",
        "busy": "the session has a job in flight",
        "unauthorized": "authentication is on and the message is unsigned, wrongly signed, stale or replayed; or an owner-only "
        "op on a session another client owns (take it over with `session.attach` `take_over=true`)",
        "internal": "unexpected backend exception (logged with traceback); the server keeps running",
        "conflict": "the op's Gaussian indices refer to a stale state `revision` (the session's Gaussians changed since); "
        "nothing changed: fetch `state.get` and select again",
    }
    lines += [f"| `{c}` | {meanings[c]} |" for c in ERROR_CODES]
    lines += ["", "## Events", "", "| event | payload |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in EVENT_KINDS.items()]
    lines += [""]
    lines += _section("Server and session ops", _SERVER_OPS)
    lines += _section("Stage I ops", _STAGE1_OPS)
    lines += _section("Interaction ops", _INTERACTION_OPS)
    lines += _section("Stage II ops", _STAGE2_OPS)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--markdown"]:
        sys.stderr.write("usage: python -m interactive3d.protocol.catalogue --markdown > docs/protocol.md\n")
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
