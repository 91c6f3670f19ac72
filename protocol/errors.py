"""Typed protocol errors.

Server side, a handler (or the generic validator) raises :class:`ProtocolError` (or one of its
subclasses); the server turns it into ``{"ok": false, "error": {"code", "message"}}``. Client side, an
error reply becomes :class:`RemoteError`, and a request that got no reply after its retries becomes
:class:`RequestTimeout`.
"""

from __future__ import annotations

# The error codes of the wire protocol (DESIGN.md, "Contracts"). ``cancelled`` is not used: a cancelled job
# ends with a ``done`` event whose status says so.
ERROR_CODES: tuple[str, ...] = (
    "bad_message",  # the envelope could not be decoded (garbage, non-map header, frame/size mismatch)
    "unsupported_version",  # header "v" is not a version this side speaks
    "unknown_op",  # no such op in the catalogue (or no handler for it in this server)
    "invalid_args",  # args or buffers do not match the op's spec, or fail the handler's semantic checks
    "too_large",  # over a configured cap (frame count, per-frame or total bytes)
    "not_found",  # unknown session / job / part / file
    "busy",  # the session already has a job in flight (or the op needs it idle)
    "unauthorized",  # unsigned, wrongly signed, stale or replayed; or an owner-only op on another client's session
    "internal",  # an unexpected exception in the backend (logged with traceback there)
    "conflict",  # the Gaussian indices refer to a stale state revision (the session changed since): nothing changed
)


class ProtocolError(Exception):
    """An error that becomes an error reply. ``code`` is one of :data:`ERROR_CODES`.

    ``request_id`` is filled in by the codec when the header could be read far enough to know it, so
    that even a malformed request gets a reply its sender can match.
    """

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, request_id: str = "") -> None:
        super().__init__(message)
        if code is not None:
            if code not in ERROR_CODES:
                raise ValueError(f"unknown error code {code!r}; expected one of {ERROR_CODES}")
            self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class BadMessage(ProtocolError):
    code = "bad_message"


class UnsupportedVersion(ProtocolError):
    """``peer_version``: the older envelope version the peer spoke, to answer it in (None: answer in ours)."""

    code = "unsupported_version"

    def __init__(self, message: str, *, request_id: str = "", peer_version: int | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.peer_version = peer_version


class UnknownOp(ProtocolError):
    code = "unknown_op"


class InvalidArgs(ProtocolError):
    code = "invalid_args"


class TooLarge(ProtocolError):
    code = "too_large"


class NotFound(ProtocolError):
    code = "not_found"


class Busy(ProtocolError):
    code = "busy"


class Unauthorized(ProtocolError):
    code = "unauthorized"


class Internal(ProtocolError):
    code = "internal"


class Conflict(ProtocolError):
    code = "conflict"


class RemoteError(Exception):
    """The backend answered a request with an error reply."""

    def __init__(self, code: str, message: str, op: str = "") -> None:
        super().__init__(f"{op + ': ' if op else ''}{code}: {message}")
        self.code = code
        self.message = message
        self.op = op


class RequestTimeout(TimeoutError):
    """No reply arrived within the timeout on any of the attempts (the backend is down or stuck)."""


class ConnectionLost(RequestTimeout):
    """Raised by :meth:`Client.request` when every attempt, each on a fresh socket, timed out."""
