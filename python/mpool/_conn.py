"""One connection to mpoold: the socket, the server check, msgids and the
reader thread that hands each reply to the request it belongs to.

Internal to the package; Pool and Process are its users.
"""

import os
import pwd
import socket
import struct
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

import msgpack  # type: ignore[import]  # Debian's has no type information

from .errors import (ConnectionClosed, MpoolError, ProtocolError, UntrustedServer,
                     error_from_wire)

SYSTEM_SOCKET = "/run/mpool/mpoold.sock"
#: The system user mpoold.service runs as (systemd/mpool.sysusers).
SERVICE_USER = "mpool"

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2

# How much one recv() may bring; the Unpacker keeps what a message lacks.
_RECV_SIZE = 256 * 1024


def default_socket_path() -> str:
    """The socket a client uses when it is given none, as libmpool picks it.

    ``$MPOOL_SOCKET`` if set; else ``/run/mpool/mpoold.sock`` for root; else
    ``$XDG_RUNTIME_DIR/mpool/mpoold.sock``, or ``/tmp/mpool-UID/mpoold.sock``
    without ``XDG_RUNTIME_DIR``.  A user whose own socket does not exist is
    given the system socket when that one does, so that users reach the
    system's mpoold without configuration.
    """
    env = os.environ.get("MPOOL_SOCKET")
    if env:
        return env
    euid = os.geteuid()
    if euid == 0:
        return SYSTEM_SOCKET
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    path = ("%s/mpool/mpoold.sock" % xdg) if xdg else ("/tmp/mpool-%d/mpoold.sock" % euid)
    if not os.access(path, os.F_OK) and os.access(SYSTEM_SOCKET, os.F_OK):
        return SYSTEM_SOCKET
    return path


def _service_uid() -> Optional[int]:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def _trusted_by_env(uid: int) -> bool:
    s = os.environ.get("MPOOL_TRUST_UID", "")
    return s.isascii() and s.isdigit() and int(s) == uid


def check_server(sock: socket.socket, path: str) -> None:
    """Refuses a server that another user may have put where we look.

    The kernel recorded the credentials of the process that called listen()
    on the other end; the server cannot forge them.  Trusted: root, this
    process's real or effective uid, the uid in ``$MPOOL_TRUST_UID``, and
    the mpool service user (looked up by name, as its uid differs between
    machines).  The same rule as libmpool's (proto/PROTOCOL.md, "Which
    server a client trusts").
    """
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid in (0, os.geteuid(), os.getuid()) or _trusted_by_env(uid):
        return
    # Only now, as it may ask NSS: the usual servers need no lookup.
    if uid == _service_uid():
        return
    raise UntrustedServer(
        "the server at %s runs as uid %d, which is neither root, nor you (uid %d), nor the "
        "%s service user, nor $MPOOL_TRUST_UID: refusing it, as another user may have put "
        "that socket there" % (path, uid, os.geteuid(), SERVICE_USER))


class Handler:
    """What a request's owner is told.  Called in the reader thread, so each
    method must be quick and must not wait for the connection."""

    def on_notify(self, method: str, params: List[Any]) -> None:
        """A notification carrying this request's msgid (result, credit)."""

    def on_response(self, error: Any, result: Any) -> None:
        """The response: error is an error object or None."""

    def on_closed(self, exc: MpoolError) -> None:
        """The connection ended before the response came."""


def report_callback_error() -> None:
    """A user's callback raised: say so on stderr and go on, as an exception
    in a thread is reported; the reader must keep reading."""
    print("mpool: exception in a callback:", file=sys.stderr)
    traceback.print_exc()


class Connection:
    """A connected, checked socket to mpoold and its reader thread.

    Thread-safe: any thread may send; one reader thread dispatches replies.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path if path is not None else default_socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            check_server(sock, self.path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: Dict[int, Handler] = {}
        self._next_msgid = 1
        self._failure: Optional[MpoolError] = None   # why the connection ended
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="mpool-reader",
                                        daemon=True)
        self._reader.start()

    # ---- state -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def in_reader(self) -> bool:
        """True in the reader thread, where nothing may wait for a reply."""
        return threading.current_thread() is self._reader

    def check_can_block(self) -> None:
        if self.in_reader():
            raise RuntimeError("an mpool callback cannot wait for a reply on its own "
                               "connection: the callback runs in the thread that reads them")

    def failure(self) -> MpoolError:
        """The exception that ended the connection (a fresh copy to raise)."""
        f = self._failure or ConnectionClosed("the connection to mpoold is closed")
        exc = type(f)(f.message, code=f.code, index=None)
        exc.name = f.name
        return exc

    # ---- sending ---------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self._failure is not None:
                raise self.failure()
            try:
                self._sock.sendall(data)
            except OSError as e:
                # The reader sees the same end and fails the open requests.
                raise ConnectionClosed("writing to %s: %s" % (self.path, e)) from None

    def request(self, method: str, params: Any, handler: Handler,
                raw_params: Optional[bytes] = None) -> int:
        """Sends a request without waiting; handler hears of its replies.

        raw_params: the params array already packed (large maps), instead
        of params.  Raises TypeError or OverflowError for a value msgpack
        cannot carry, before anything is sent.
        """
        with self._lock:
            if self._failure is not None:
                raise self.failure()
            msgid = self._next_msgid
            self._next_msgid += 1
            self._pending[msgid] = handler
        try:
            packer = msgpack.Packer(use_bin_type=True)
            if raw_params is None:
                data = packer.pack([REQUEST, msgid, method, params])
            else:
                data = (packer.pack_array_header(4) + packer.pack(REQUEST) +
                        packer.pack(msgid) + packer.pack(method) + raw_params)
            self._send(data)
        except BaseException:
            with self._lock:
                self._pending.pop(msgid, None)
            raise
        return msgid

    def notify(self, data: bytes) -> None:
        """Sends one notification, already packed."""
        self._send(data)

    def call(self, method: str, params: Any, timeout: Optional[float] = None) -> Any:
        """Sends a request and waits for its result; raises its error."""
        self.check_can_block()
        waiter = _Waiter()
        self.request(method, params, waiter)
        if not waiter.event.wait(timeout):
            raise TimeoutError("no answer to %s within %s s" % (method, timeout))
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    # ---- reading ---------------------------------------------------------

    def _read_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                    unicode_errors="surrogateescape")
        failure: MpoolError
        while True:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except OSError as e:
                failure = ConnectionClosed("reading from %s: %s" % (self.path, e))
                break
            if not data:
                failure = ConnectionClosed("mpoold closed the connection")
                break
            unpacker.feed(data)
            try:
                for msg in unpacker:
                    self._dispatch(msg)
            except _Dropped as d:
                failure = d.error
                break
            except Exception as e:
                # Undecodable bytes, or a message whose shape the handlers
                # cannot take: nothing later on this stream can be trusted,
                # and a reader that died here would leave every caller
                # waiting.  (User callbacks never get here: their errors
                # are caught where they run.)
                failure = ProtocolError("unreadable message from mpoold: %s: %s"
                                        % (type(e).__name__, e))
                break
        self._fail_all(failure)

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, list) or not msg:
            raise ValueError("not a MessagePack-RPC message: %r" % (msg,)[:200])
        if msg[0] == RESPONSE and len(msg) == 4:
            with self._lock:
                handler = self._pending.pop(msg[1], None)
            if handler is not None:
                handler.on_response(msg[2], msg[3])
            return
        if msg[0] == NOTIFICATION and len(msg) == 3 and isinstance(msg[2], list):
            method, params = msg[1], msg[2]
            if method == "error":
                # The daemon says why it drops this connection; it closes next.
                raise _Dropped(error_from_wire(params[0] if params else None))
            if params:
                with self._lock:
                    handler = self._pending.get(params[0])
                if handler is not None:
                    handler.on_notify(method, params)
            return
        raise ValueError("not a response or notification: %r" % (msg,)[:200])

    def _fail_all(self, failure: MpoolError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure
            failure = self._failure
            pending, self._pending = self._pending, {}
        for handler in pending.values():
            handler.on_closed(failure)

    # ---- closing ---------------------------------------------------------

    def close(self, reason: Optional[MpoolError] = None) -> None:
        """Ends the connection; open requests fail with reason (default:
        ConnectionClosed).  Safe to call twice and from a callback."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._failure is None:
                self._failure = reason or ConnectionClosed("the connection was closed by "
                                                           "this client")
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if not self.in_reader():
            self._reader.join()
        with self._send_lock:
            self._sock.close()


class _Dropped(Exception):
    def __init__(self, error: MpoolError) -> None:
        super().__init__(str(error))
        self.error = error


class _Waiter(Handler):
    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: Optional[MpoolError] = None
        self.result: Any = None

    def on_response(self, error: Any, result: Any) -> None:
        if error is not None:
            self.error = error_from_wire(error)
        self.result = result
        self.event.set()

    def on_closed(self, exc: MpoolError) -> None:
        self.error = exc
        self.event.set()


Callback = Callable[[Any], Any]
