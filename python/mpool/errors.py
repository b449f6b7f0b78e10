"""The exceptions of the mpool client: one class per protocol error code.

Every error the daemon reports is an error object ``{"code", "message"[,
"index"]}`` (proto/PROTOCOL.md, "Errors").  The client raises the class of
its code, carrying the daemon's message; a code this client does not know
raises :class:`MpoolError` itself, with ``code`` set, so a newer daemon's
codes still arrive intact.  Errors that arise in the client (the connection
closed, an unreadable reply, a server that may not be trusted) have codes of
their own above 100, the same numbers as libmpool's local codes.
"""

from typing import Any, Dict, Optional, Type

__all__ = [
    "MpoolError", "BadRequest", "NoMethod", "NoFunction", "TaskError",
    "TaskTypeError", "WorkerDied", "Terminated", "ShuttingDown",
    "LimitExceeded", "TaskTimeout", "InternalError", "BadResult",
    "Unavailable", "Cancelled", "PermissionDenied", "NotFound",
    "ProtocolError", "ConnectionClosed",
    "UntrustedServer", "ERRORS", "error_from_wire",
]


class MpoolError(Exception):
    """Base class of every mpool error.

    Attributes:
        code: the protocol's error code (``1`` … ``16``), or a local code
            (``101`` and up) for errors found by the client.
        name: the code's name as the protocol spells it (``"task_error"``).
        message: the daemon's message, a sentence for a human.
        index: for an item of a map, its position (0-based); else ``None``.
    """

    code: int = 0
    name: str = "unknown"

    def __init__(self, message: str = "", *, code: Optional[int] = None,
                 index: Optional[int] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.index = index

    def __str__(self) -> str:
        where = "" if self.index is None else "item %d: " % self.index
        return "%s%s: %s" % (where, self.name, self.message)

    def __reduce__(self) -> Any:
        # Keep code and index across pickling (multiprocessing, logging
        # handlers in other processes).
        return (_rebuild, (type(self), self.message, self.code, self.index))


def _rebuild(cls: Type[MpoolError], message: str, code: int,
             index: Optional[int]) -> MpoolError:
    return cls(message, code=code, index=index)


def _define(name: str, code: int, wire: str, doc: str) -> Type[MpoolError]:
    cls = type(name, (MpoolError,), {"code": code, "name": wire, "__doc__": doc,
                                     "__module__": __name__})
    return cls


BadRequest = _define("BadRequest", 1, "bad_request",
                     "Malformed request: wrong params, types or options (code 1).")
NoMethod = _define("NoMethod", 2, "no_method", "Unknown method (code 2).")
NoFunction = _define("NoFunction", 3, "no_function",
                     "No loaded module has that function (code 3).")
TaskError = _define("TaskError", 4, "task_error",
                    "The task function reported a failure (code 4).")
TaskTypeError = _define("TaskTypeError", 5, "type_error",
                        "The task's argument has the wrong type (code 5).")
WorkerDied = _define("WorkerDied", 6, "worker_died",
                     "The worker running the item died before reporting it (code 6); "
                     "the message names the pid and the signal or exit status.")
Terminated = _define("Terminated", 7, "terminated",
                     "The pool was terminated before the work finished (code 7).")
ShuttingDown = _define("ShuttingDown", 8, "shutting_down",
                       "The daemon is draining and takes no new work (code 8).")
LimitExceeded = _define("LimitExceeded", 9, "limit",
                        "A configured limit was exceeded (code 9).")
TaskTimeout = _define("TaskTimeout", 10, "timeout",
                      "The item ran past its deadline and its worker was killed (code 10).")
InternalError = _define("InternalError", 11, "internal",
                        "The daemon failed, for instance out of memory (code 11).")
BadResult = _define("BadResult", 12, "bad_result",
                    "The task produced no valid result (code 12).")
Unavailable = _define("Unavailable", 13, "unavailable",
                      "No worker could be started within the daemon's recovery timeout "
                      "(code 13).")
Cancelled = _define("Cancelled", 14, "cancelled",
                    "The job was cancelled by its owner or an admin (code 14).")
PermissionDenied = _define("PermissionDenied", 15, "permission",
                           "The caller may not do this (code 15).")
NotFound = _define("NotFound", 16, "not_found", "No such job, worker or process (code 16).")

# Local errors: never on the wire; the numbers are libmpool's.
ProtocolError = _define("ProtocolError", 101, "protocol",
                        "The daemon sent something this client cannot read (local code 101).")
ConnectionClosed = _define("ConnectionClosed", 102, "closed",
                           "The connection to the daemon is closed (local code 102).")
UntrustedServer = _define("UntrustedServer", 106, "untrusted_server",
                          "The server runs as a user this client must not trust: neither "
                          "root, nor you, nor the mpool service user, nor $MPOOL_TRUST_UID "
                          "(local code 106).")
#: Protocol error code -> exception class.
ERRORS: Dict[int, Type[MpoolError]] = {
    cls.code: cls for cls in (
        BadRequest, NoMethod, NoFunction, TaskError, TaskTypeError, WorkerDied,
        Terminated, ShuttingDown, LimitExceeded, TaskTimeout, InternalError,
        BadResult, Unavailable, Cancelled, PermissionDenied, NotFound,
        ProtocolError, ConnectionClosed, UntrustedServer)
}


def error_from_wire(err: Any) -> MpoolError:
    """The exception for one error object of the protocol.

    Unknown keys are ignored, as the protocol asks; an unknown code gives a
    plain :class:`MpoolError` with that code, and a value that is no error
    object a :class:`ProtocolError`.
    """
    if not isinstance(err, dict) or not isinstance(err.get("code"), int):
        return ProtocolError("the daemon sent an error that is no error object: %r" % (err,))
    code = err["code"]
    message = err.get("message")
    if not isinstance(message, str):
        message = ""
    index = err.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        index = None
    cls = ERRORS.get(code)
    if cls is None:
        exc = MpoolError(message, code=code, index=index)
        exc.name = "error %d" % code
        return exc
    return cls(message, index=index)
