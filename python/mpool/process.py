"""Process: multiprocessing.Process's interface, run by mpoold.

A Process is one call of a task function in a process of its own, forked by
mpoold from its prefork image (the task modules already loaded), outside the
pool's workers: protocol version 2's ``spawn`` (proto/PROTOCOL.md,
"Supervised processes").  ``daemon`` has Python's meaning:

- a daemon process is a helper of this interpreter: mpoold terminates it
  when the interpreter's connection closes, at exit at the latest;
- a non-daemon process runs to completion whatever happens to its client,
  and at interpreter exit this module joins every non-daemon process it
  started and did not join, as multiprocessing joins its children.

Processes of one interpreter share one connection per socket path, so that
a daemon process lives as long as the interpreter and not as long as one
object.
"""

import atexit
import math
import threading
from typing import Any, Dict, List, Optional, Sequence

from ._conn import Connection
from .errors import MpoolError, NotFound, error_from_wire
from .pool import call_argument

__all__ = ["Process", "PROTOCOL"]

#: The protocol version whose spawn this module speaks.
PROTOCOL = 2

_shared_lock = threading.Lock()
_shared: Dict[str, Connection] = {}
_children: "set[Process]" = set()      # started, non-daemon, not yet joined


def _connection(path: Optional[str]) -> Connection:
    """The interpreter's connection for processes on that socket."""
    key = path or ""
    with _shared_lock:
        conn = _shared.get(key)
        if conn is None or conn.closed:
            conn = Connection(path)
            _shared[key] = conn
        return conn


class Process:
    """``multiprocessing.Process(target, args, name, daemon)`` run by mpoold.

    ``target`` is a task function named as on the wire
    (``"module.function"``); ``args`` become its one argument as for
    :meth:`mpool.Pool.apply` (``kwargs``, keyword-only here, must be empty).
    ``name`` is at most 64 characters; mpoold names it ``Process-ID``
    without one.  ``socket`` picks the daemon (default as
    :class:`mpool.Pool`'s).

    Beyond multiprocessing: after :meth:`join`, ``result`` holds the
    function's result and ``error`` the exception it reported, if any.
    """

    def __init__(self, target: str, args: Sequence[Any] = (), name: Optional[str] = None,
                 daemon: bool = False, *, kwargs: Optional[Dict[str, Any]] = None,
                 socket: Optional[str] = None) -> None:
        if not isinstance(target, str):
            raise TypeError("a target is named as on the wire, \"module.function\", not %s"
                            % type(target).__name__)
        self._target = target
        self._arg = call_argument(args, kwargs)
        self._name = name
        self._daemon = bool(daemon)
        self._socket = socket
        self._conn: Optional[Connection] = None
        self._id: Optional[int] = None
        self._pid: Optional[int] = None
        self._exitcode: Optional[int] = None
        self.result: Any = None
        self.error: Optional[MpoolError] = None

    def __repr__(self) -> str:
        if self._id is None:
            state = "initial"
        elif self._exitcode is None:
            state = "started"
        else:
            state = "stopped exitcode=%d" % self._exitcode
        return "<mpool.Process name=%r %s%s>" % (self.name, state,
                                                 " daemon" if self._daemon else "")

    # ---- attributes, as multiprocessing's ---------------------------------

    @property
    def name(self) -> str:
        """The name given, or mpoold's (``Process-ID``) once started."""
        if self._name is not None:
            return self._name
        return "Process-%s" % (self._id if self._id is not None else "?")

    @name.setter
    def name(self, value: str) -> None:
        if self._id is not None:
            raise RuntimeError("cannot rename a started process")
        self._name = value

    @property
    def daemon(self) -> bool:
        """Whether the process ends with this interpreter's connection."""
        return self._daemon

    @daemon.setter
    def daemon(self, value: bool) -> None:
        if self._id is not None:
            raise RuntimeError("process has already started")
        self._daemon = bool(value)

    @property
    def pid(self) -> Optional[int]:
        """The process id, None before start."""
        return self._pid

    ident = pid

    @property
    def id(self) -> Optional[int]:
        """mpoold's id of the process (``mpctl ps``), None before start."""
        return self._id

    @property
    def exitcode(self) -> Optional[int]:
        """None while running; else 0 when the function returned, 1 when it
        reported a failure, the status it passed to exit(), or minus the
        signal that killed it."""
        if self._id is None or self._exitcode is not None:
            return self._exitcode
        if not self.is_alive():
            self.join()
        return self._exitcode

    # ---- the calls ------------------------------------------------------------

    def start(self) -> None:
        """Starts the process; returns once mpoold has forked it."""
        if self._id is not None:
            raise RuntimeError("cannot start a process twice")
        options: Dict[str, Any] = {"protocol": PROTOCOL, "daemon": self._daemon}
        if self._name is not None:
            options["name"] = self._name
        conn = _connection(self._socket)
        r = conn.call("spawn", [self._target, self._arg, options])
        self._conn, self._id, self._pid = conn, r["id"], r["pid"]
        if not self._daemon:
            with _shared_lock:
                _children.add(self)

    def _started(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the process has not been started")
        return self._conn

    def join(self, timeout: Optional[float] = None) -> None:
        """Waits until the process exits, or timeout seconds pass (then it
        goes on running: check exitcode or is_alive())."""
        conn = self._started()
        if self._exitcode is not None:
            return
        if timeout is not None and timeout <= 0:
            if self.is_alive():
                return
            timeout = None           # it has exited: fetch its outcome
        params: List[Any] = [self._id]
        if timeout is not None:
            # 0 means "no limit" on the wire: the shortest wait is 1 ms.
            params.append({"timeout_ms": max(1, math.ceil(timeout * 1000))})
        info = conn.call("join", params)
        if info.get("state") != "exited":
            return
        self._exitcode = info.get("exitcode")
        self.result = info.get("result")
        err = info.get("error")
        if err is not None:
            self.error = error_from_wire(err)
        with _shared_lock:
            _children.discard(self)

    def is_alive(self) -> bool:
        """Whether the process runs."""
        if self._conn is None or self._exitcode is not None:
            return False
        return bool(self._conn.call("is_alive", [self._id]))

    def terminate(self) -> None:
        """SIGTERM now, SIGKILL after mpoold's --process-grace."""
        self._signal("terminate_process")

    def kill(self) -> None:
        """SIGKILL now."""
        self._signal("kill_process")

    def _signal(self, method: str) -> None:
        conn = self._started()
        if self._exitcode is not None:
            return
        try:
            conn.call(method, [self._id])
        except NotFound:
            pass                     # exited and forgotten: nothing to stop


def _at_exit() -> None:
    """Joins the non-daemon processes as multiprocessing does at exit, then
    closes the connections (so mpoold ends the daemon ones)."""
    while True:
        with _shared_lock:
            if not _children:
                break
            p = _children.pop()
        try:
            p.join()
        except MpoolError:
            pass        # the daemon is gone or forgot it: nothing to wait for
    with _shared_lock:
        conns = list(_shared.values())
        _shared.clear()
    for c in conns:
        c.close()


atexit.register(_at_exit)
