"""mpool: Python's ``multiprocessing.Pool`` and ``Process``, served by mpoold.

mpoold keeps a pool of preforked workers for every program on the machine;
this package is its Python client, pure Python over the MessagePack-RPC
protocol (proto/PROTOCOL.md) with ``msgpack``.  It follows multiprocessing
name for name where the meaning carries over::

    import mpool

    with mpool.Pool() as pool:
        pool.apply("builtin.square", (7,))                 # 49
        pool.map("builtin.square", range(10), chunksize=2)
        for r in pool.imap("builtin.square", (i for i in range(10_000_000))):
            ...                                            # streamed both ways

    p = mpool.Process("builtin.sleep", (500,), name="nap")
    p.start(); p.join(); p.exitcode                        # 0

The differences, each because mpoold runs compiled task functions shared by
every client:

- A function is named as on the wire, ``"module.function"``, and takes one
  argument: ``args`` of one element pass that element, several pass an
  array, none pass ``None`` (:func:`call_argument`).  No keyword arguments.
- ``Pool(socket=None, *, timeout=None, retries=0)``: which daemon, a
  per-item deadline in seconds, and reruns of items lost to a dead worker.
  The pool's size, initializer and ``maxtasksperchild`` are the daemon's.
- ``chunksize=None`` everywhere lets mpoold choose (for imap too).
- ``close``, ``join`` and ``terminate`` act on this client's own jobs.
- Errors are exceptions, one class per protocol error code
  (:mod:`mpool.errors`), carrying the daemon's message; a map raises the
  error of its first failed item.

Threads: a Pool is thread-safe; its callbacks run in the thread that reads
the connection and must not wait on that Pool.  There is no asyncio flavour:
``loop.run_in_executor`` over the blocking calls, or ``apply_async``'s
callbacks with ``loop.call_soon_threadsafe``, serve asyncio programs.
"""

from ._conn import default_socket_path
from .errors import (ERRORS, BadRequest, BadResult, Cancelled, ConnectionClosed, InternalError,
                     LimitExceeded, MpoolError, NoFunction, NoMethod, NotFound, PermissionDenied,
                     ProtocolError, ShuttingDown, TaskError, TaskTimeout, TaskTypeError,
                     Terminated, Unavailable, UntrustedServer, WorkerDied, error_from_wire)
from .pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool, call_argument
from .process import Process

__all__ = [
    "Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "Process",
    "call_argument", "default_socket_path", "error_from_wire", "ERRORS",
    "MpoolError", "BadRequest", "NoMethod", "NoFunction", "TaskError", "TaskTypeError",
    "WorkerDied", "Terminated", "ShuttingDown", "LimitExceeded", "TaskTimeout",
    "InternalError", "BadResult", "Unavailable", "Cancelled", "PermissionDenied", "NotFound",
    "ProtocolError", "ConnectionClosed", "UntrustedServer",
]
