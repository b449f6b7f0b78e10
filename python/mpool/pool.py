"""Pool: multiprocessing.Pool's interface, served by mpoold."""

import collections
import threading
from multiprocessing import TimeoutError
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple, cast

import msgpack  # type: ignore[import]  # Debian's has no type information

from ._conn import NOTIFICATION, Connection, Handler, report_callback_error
from .errors import ConnectionClosed, MpoolError, Terminated, error_from_wire

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "call_argument"]

# A map whose items are a list of at most this many, packing to at most
# _DIRECT_MAX_BYTES, goes in one request; anything larger, and any iterator,
# goes in parts through the protocol's credit window ("Streamed input"), so
# no request nears mpoold's --max-frame (64 MiB by default).
_DIRECT_MAX_ITEMS = 65536
_DIRECT_MAX_BYTES = 4 << 20
# One feed notification carries at most this many items or about this many
# bytes, for the same reason.
_FEED_MAX_ITEMS = 16384
_FEED_MAX_BYTES = 1 << 20
# Items of a streamed map that this client has taken from the input and not
# yet seen consumed (queued, sent, running, or answered and unread): with
# the prefetch below, the bound on the client's memory whatever the input's
# length.  Above mpoold's default window (65 536), so that the daemon's
# credit, not this bound, paces a quick reader.
MAX_OUTSTANDING = 98304
# Items taken from the input ahead of the credit to send them.
_PREFETCH_ITEMS = 16384
_PREFETCH_BYTES = 4 << 20

_RUN, _CLOSE, _TERMINATE = 0, 1, 2


def call_argument(args: Sequence[Any], kwds: Optional[Dict[str, Any]] = None) -> Any:
    """The one argument a task function gets on the wire for ``f(*args)``.

    mpool task functions take one argument.  A call with one positional
    argument passes it as it is, a call with none passes nil (``None``), and
    a call with several passes them as one array, so that ``apply(f, (x,))``
    and ``map(f, [x])`` send the same argument and ``starmap(f, [(a, b)])``
    sends ``[a, b]``.  Keyword arguments have no place on the wire.
    """
    if kwds:
        raise TypeError("mpool task functions take no keyword arguments")
    if not isinstance(args, (tuple, list)):
        raise TypeError("args must be a tuple of arguments, not %s" % type(args).__name__)
    if len(args) == 1:
        return args[0]
    if not args:
        return None
    return list(args)


def _check_function(func: Any) -> str:
    if not isinstance(func, str):
        raise TypeError("an mpool task function is named as on the wire, "
                        "\"module.function\", not %s" % type(func).__name__)
    return func


def _check_chunksize(chunksize: Optional[int]) -> None:
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError("Chunksize must be 1+, not %r" % (chunksize,))


class AsyncResult(Handler):
    """The result of :meth:`Pool.apply_async`, as multiprocessing's.

    ``callback`` gets the result, ``error_callback`` the exception; both
    run in the connection's reader thread, so they must return quickly and
    must not wait on this pool (as multiprocessing's run in its result
    thread).
    """

    def __init__(self, pool: "Pool", callback: Optional[Callable[[Any], Any]] = None,
                 error_callback: Optional[Callable[[BaseException], Any]] = None) -> None:
        self._pool = pool
        self._event = threading.Event()
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._callback = callback
        self._error_callback = error_callback
        self._msgid: Optional[int] = None
        self._set_lock = threading.Lock()
        self._done = False

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising; ValueError if not ready."""
        if not self.ready():
            raise ValueError("{0!r} not ready".format(self))
        return self._error is None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until the result is available or timeout seconds pass."""
        self._pool._conn.check_can_block()
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The result when it arrives: raises its error, or
        multiprocessing.TimeoutError when timeout seconds pass first."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value

    # Completion: once, from the reader thread (or terminate).
    def _set(self, error: Optional[BaseException], value: Any = None) -> None:
        with self._set_lock:
            if self._done:
                return
            self._done = True
        self._error, self._value = error, value
        try:
            if error is None and self._callback is not None:
                self._callback(value)
            elif error is not None and self._error_callback is not None:
                self._error_callback(error)
        except Exception:
            report_callback_error()
        self._event.set()
        self._pool._job_done(self)

    def _stop(self) -> None:
        """The job is ending: stop its helpers."""

    def _fail(self, exc: BaseException) -> None:
        """Ends the job with exc, whatever comes later (terminate)."""
        self._stop()
        self._set(exc)

    def on_response(self, error: Any, result: Any) -> None:
        self._set(error_from_wire(error) if error is not None else None, result)

    def on_closed(self, exc: MpoolError) -> None:
        self._set(exc)


ApplyResult = AsyncResult


class _Feed:
    """The input side of a streamed map: a producer thread takes items from
    the iterable and packs them; a sender thread sends them as mpoold grants
    credit.  Two threads, so that an item is sent as soon as the iterable
    yields it and credit allows, while a slow iterable never holds back
    items already taken.  All of them, and the job's reader and consumer,
    share the job's condition."""

    def __init__(self, job: "_MapJob", iterable: Iterable[Any], star: bool) -> None:
        self.job = job
        self.cond = job.cond
        self.it = iter(iterable)
        self.star = star
        self.queue: Deque[Any] = collections.deque()   # packed items, then _END
        self.credit = 0
        self.produced = 0
        self.bytes_in = 0            # written by the producer only
        self.bytes_out = 0           # written by the sender only
        self.producer_waiting = False
        self.stopped = False
        self.threads = [threading.Thread(target=self._produce, name="mpool-feed-in",
                                         daemon=True),
                        threading.Thread(target=self._send, name="mpool-feed-out",
                                         daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def add_credit(self, n: int) -> None:     # reader thread, cond held
        self.credit += n
        self.cond.notify_all()

    def stop(self) -> None:                   # cond held
        self.stopped = True
        self.cond.notify_all()

    def wake_producer(self) -> None:          # cond held
        if self.producer_waiting:
            self.cond.notify_all()

    def _ahead(self) -> int:
        """How many more items the consumer's pace allows."""
        if self.job.draining:
            return _PREFETCH_ITEMS
        return MAX_OUTSTANDING - (self.produced - self.job.consumed)

    def _full(self) -> bool:
        return (self._ahead() <= 0 or len(self.queue) >= _PREFETCH_ITEMS or
                self.bytes_in - self.bytes_out >= _PREFETCH_BYTES)

    def _produce(self) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        job = self.job
        while True:
            with self.cond:
                while not self.stopped and self._full():
                    self.producer_waiting = True
                    self.cond.wait()
                self.producer_waiting = False
                if self.stopped:
                    return
                allowance = min(self._ahead(), _PREFETCH_ITEMS - len(self.queue))
            for _ in range(allowance):
                try:
                    x = next(self.it)
                    if self.star:
                        x = call_argument(x)
                    data = packer.pack(x)
                except StopIteration:
                    self._put(_END)
                    return
                except BaseException as e:   # the caller's iterable: theirs to see
                    self._put(_Failure(e))
                    return
                self.produced += 1
                self.bytes_in += len(data)
                self._put(data)
                if self.stopped or self.bytes_in - self.bytes_out >= _PREFETCH_BYTES:
                    break

    def _put(self, data: Any) -> None:
        self.queue.append(data)
        # Wake the sender when the queue was empty: it sleeps only then.
        if len(self.queue) == 1 or not isinstance(data, bytes):
            with self.cond:
                self.cond.notify_all()

    def _send(self) -> None:
        packer = msgpack.Packer(use_bin_type=True)
        job = self.job
        while True:
            items: List[bytes] = []
            size = 0
            end = False
            failure = None
            with self.cond:
                while not self.stopped and not self._sendable():
                    # The timeout only bounds a wakeup lost between the
                    # producer's append and its check of the queue's length.
                    self.cond.wait(0.5)
                if self.stopped:
                    return
                room = min(self.credit, _FEED_MAX_ITEMS)
                queue = self.queue
                while queue and len(items) < room and size < _FEED_MAX_BYTES:
                    head = queue[0]
                    if not isinstance(head, bytes):
                        break
                    queue.popleft()
                    items.append(head)
                    size += len(head)
                if queue and not isinstance(queue[0], bytes):
                    if isinstance(queue[0], _Failure):
                        failure = queue[0].exc
                    else:
                        end = True
                self.credit -= len(items)
                self.bytes_out += size
                self.wake_producer()
            if items or end:
                data = (packer.pack_array_header(3) + packer.pack(NOTIFICATION) +
                        packer.pack("feed") + packer.pack_array_header(3) +
                        packer.pack(job.msgid) + packer.pack_array_header(len(items)) +
                        b"".join(items) + packer.pack(end))
                try:
                    job.conn.notify(data)
                except MpoolError:
                    return      # the reader fails the job
            if failure is not None:
                job.source_failed(failure)
                return
            if end:
                return

    def _sendable(self) -> bool:
        if not self.queue:
            return False
        head = self.queue[0]
        if not isinstance(head, bytes):
            return True         # the end needs no credit; a failure ends the map
        return self.credit > 0


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _MapJob(AsyncResult):
    """A map request: results arrive as notifications, then the response."""

    conn: Connection
    cond: threading.Condition
    consumed: int
    draining: bool
    feed: Optional["_Feed"]
    source_error: Optional[BaseException]
    msgid: int

    def __init__(self, pool: "Pool", callback: Optional[Callable[[Any], Any]] = None,
                 error_callback: Optional[Callable[[BaseException], Any]] = None) -> None:
        super().__init__(pool, callback, error_callback)
        self.conn = pool._conn
        self.cond = threading.Condition()
        self.consumed = 0            # items this client is done with
        self.draining = False        # join(): run to the end, results kept
        self.feed: Optional[_Feed] = None
        self.source_error: Optional[BaseException] = None
        self.msgid = 0

    def on_notify(self, method: str, params: List[Any]) -> None:
        if method == "credit" and len(params) == 2 and isinstance(params[1], int):
            with self.cond:
                if self.feed is not None:
                    self.feed.add_credit(params[1])
        elif method == "result" and len(params) == 4:
            _, first, results, errors = params
            failed = {}
            for e in errors or ():
                exc = error_from_wire(e)
                if exc.index is not None:
                    failed[exc.index] = exc
            self._results(first, results, failed)

    def _results(self, first: int, results: List[Any], failed: Dict[int, MpoolError]) -> None:
        raise NotImplementedError

    def source_failed(self, exc: BaseException) -> None:
        """The input iterable raised: the map ends with that exception."""
        with self.cond:
            self.source_error = exc
        try:
            self.conn.request("cancel_request", [self.msgid], Handler())
        except MpoolError:
            pass                 # the connection is gone: the job fails anyway

    def _stop(self) -> None:
        with self.cond:
            if self.feed is not None:
                self.feed.stop()

    def _drain(self) -> None:
        """Pool.join(): the job runs to its end whether or not anyone reads
        its results, which are kept (as multiprocessing keeps them)."""
        with self.cond:
            self.draining = True
            if self.feed is not None:
                self.feed.wake_producer()


class MapResult(_MapJob):
    """The result of :meth:`Pool.map_async` (and starmap_async): an
    :class:`AsyncResult` whose value is the list of results.

    When items fail, ``get()`` raises the error of the first failed item (its
    ``index`` says which); the map's other results are lost with it, as in
    multiprocessing.
    """

    def __init__(self, pool: "Pool", callback: Optional[Callable[[Any], Any]] = None,
                 error_callback: Optional[Callable[[BaseException], Any]] = None) -> None:
        super().__init__(pool, callback, error_callback)
        self._list: List[Any] = []
        self._first_failure: Optional[MpoolError] = None

    def _results(self, first: int, results: List[Any], failed: Dict[int, MpoolError]) -> None:
        end = first + len(results)
        if len(self._list) < end:
            self._list.extend([None] * (end - len(self._list)))
        self._list[first:end] = results
        for index, exc in failed.items():
            if self._first_failure is None or index < (self._first_failure.index or 0):
                self._first_failure = exc
        with self.cond:
            # Answered items are this client's to keep: they count as consumed.
            self.consumed += len(results)
            if self.feed is not None:
                self.feed.wake_producer()

    def on_response(self, error: Any, result: Any) -> None:
        self._stop()
        if self.source_error is not None:
            self._set(self.source_error)
        elif error is not None:
            self._set(error_from_wire(error))
        elif self._first_failure is not None:
            self._set(self._first_failure)
        else:
            n = result.get("items") if isinstance(result, dict) else None
            if isinstance(n, int) and len(self._list) < n:
                self._list.extend([None] * (n - len(self._list)))
            self._set(None, self._list)

    def on_closed(self, exc: MpoolError) -> None:
        self._fail(exc)


class IMapIterator(_MapJob):
    """The iterator of :meth:`Pool.imap` and :meth:`Pool.imap_unordered`.

    Each result is yielded as it arrives (in order for imap); an item that
    failed raises its error when the iteration reaches it, and the iteration
    goes on after it.  ``next(timeout)`` raises multiprocessing.TimeoutError
    when no result comes within timeout seconds.

    The input is read only so far ahead of the results handed out
    (``MAX_OUTSTANDING`` items): an iterator nobody reads pauses its map.
    ``Pool.join()`` lets it run to the end, keeping the results unread.
    """

    def __init__(self, pool: "Pool") -> None:
        super().__init__(pool)
        self._items: Deque[Tuple[Any, Optional[MpoolError]]] = collections.deque()
        self._end: Optional[BaseException] = None   # set with the response
        self._finished = False

    def __iter__(self) -> "IMapIterator":
        return self

    def _results(self, first: int, results: List[Any], failed: Dict[int, MpoolError]) -> None:
        with self.cond:
            for i, value in enumerate(results):
                self._items.append((value, failed.get(first + i)))
            self.cond.notify_all()

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next result; raises StopIteration after the last."""
        self._pool._conn.check_can_block()
        with self.cond:
            if not self._items and not self._event.is_set():
                self.cond.wait_for(lambda: self._items or self._event.is_set(), timeout)
            if self._items:
                value, error = self._items.popleft()
                self.consumed += 1
                if self.feed is not None:
                    self.feed.wake_producer()
                if error is not None:
                    raise error
                return value
            if not self._event.is_set():
                raise TimeoutError
            if self._error is not None and not self._finished:
                self._finished = True
                raise self._error
            raise StopIteration

    __next__ = next

    def on_response(self, error: Any, result: Any) -> None:
        self._stop()
        if self.source_error is not None:
            exc: Optional[BaseException] = self.source_error
        else:
            exc = error_from_wire(error) if error is not None else None
        with self.cond:
            self._set(exc, None)
            self.cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        self._stop()
        with self.cond:
            self._set(exc)
            self.cond.notify_all()

    def on_closed(self, exc: MpoolError) -> None:
        self._fail(exc)


class Pool:
    """A client of mpoold with the interface of ``multiprocessing.Pool``.

    ``socket``: the daemon's socket; default as libmpool's (see
    :func:`mpool.default_socket_path`).  ``timeout``: a deadline in seconds
    for each item (mpoold kills the worker of an item past it, and the item
    fails with :class:`~mpool.TaskTimeout`); ``None`` leaves mpoold's own
    ``--task-timeout``.  ``retries``: how many times mpoold reruns items lost
    to a worker's death or a timeout (for tasks safe to run twice).

    Functions are named as on the wire, ``"module.function"``, and take one
    argument (see :func:`call_argument` for how ``args`` become it).
    ``chunksize=None`` lets mpoold choose, as multiprocessing does for map.

    One Pool is one connection.  It is thread-safe: any thread may submit
    and wait; callbacks run in the connection's reader thread.  ``close``,
    ``join`` and ``terminate`` act on this client's own jobs, never on the
    daemon; as a context manager a Pool terminates on exit, as
    multiprocessing's does.
    """

    def __init__(self, socket: Optional[str] = None, *, timeout: Optional[float] = None,
                 retries: int = 0) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or at least 0, not %r" % (timeout,))
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int of at least 0, not %r" % (retries,))
        self._options: Dict[str, Any] = {}
        if timeout is not None:
            self._options["timeout_ms"] = int(round(timeout * 1000))
        if retries:
            self._options["retries"] = retries
        self._lock = threading.Lock()
        self._jobs: Set[AsyncResult] = set()
        self._idle = threading.Condition(self._lock)
        self._state = _RUN
        self._conn = Connection(socket)

    # ---- lifecycle -------------------------------------------------------

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and not conn.closed:
            conn.close()

    def __repr__(self) -> str:
        state = {_RUN: "RUN", _CLOSE: "CLOSE", _TERMINATE: "TERMINATE"}[self._state]
        return "<mpool.Pool state=%s socket=%r jobs=%d>" % (state, self._conn.path,
                                                           len(self._jobs))

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def close(self) -> None:
        """No more work from this Pool; what was submitted still runs."""
        with self._lock:
            if self._state == _RUN:
                self._state = _CLOSE

    def terminate(self) -> None:
        """Stops this client's open jobs now: mpoold kills the workers running
        them (their chunks are lost), and each fails with Terminated."""
        with self._lock:
            if self._state == _TERMINATE and self._conn.closed:
                return
            self._state = _TERMINATE
            jobs = list(self._jobs)
        why = "this Pool was terminated before the work finished"
        # Fail the jobs first: the cancellations below answer them with
        # "cancelled", which must not win over the reason.
        for job in jobs:
            job._fail(Terminated(why))
        for job in jobs:
            if job._msgid is not None:
                try:
                    self._conn.request("cancel_request", [job._msgid, {"kill": True}], Handler())
                except MpoolError:
                    break        # the connection is gone: nothing runs for us
        self._conn.close(Terminated(why))

    def join(self) -> None:
        """Waits for this Pool's jobs to end; call close() or terminate() first."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._conn.check_can_block()
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            if isinstance(job, _MapJob):
                job._drain()
        with self._idle:
            self._idle.wait_for(lambda: not self._jobs)
        self._conn.close()

    def _job_done(self, job: AsyncResult) -> None:
        with self._idle:
            self._jobs.discard(job)
            if not self._jobs:
                self._idle.notify_all()

    def _submit(self, job: AsyncResult, method: str, params: Any,
                raw_params: Optional[bytes] = None) -> None:
        with self._lock:
            self._check_running()
            self._jobs.add(job)
        try:
            # The msgid is known only once sent, and a reply may come first:
            # the handler learns it from the return value, which nothing
            # needs before the job is visible to the caller.
            job._msgid = self._conn.request(method, params, job, raw_params)
            if isinstance(job, _MapJob):
                job.msgid = job._msgid
        except BaseException:
            self._job_done(job)
            raise

    # ---- the calls ---------------------------------------------------------

    def apply(self, func: str, args: Sequence[Any] = (),
              kwds: Optional[Dict[str, Any]] = None) -> Any:
        """Runs ``func(*args)`` in a worker and returns its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: str, args: Sequence[Any] = (),
                    kwds: Optional[Dict[str, Any]] = None,
                    callback: Optional[Callable[[Any], Any]] = None,
                    error_callback: Optional[Callable[[BaseException], Any]] = None
                    ) -> AsyncResult:
        """Submits ``func(*args)``; returns an :class:`AsyncResult` at once."""
        arg = call_argument(args, kwds)
        params: List[Any] = [_check_function(func), arg]
        if self._options:
            params.append(self._options)
        job = AsyncResult(self, callback, error_callback)
        self._submit(job, "apply", params)
        return job

    def map(self, func: str, iterable: Iterable[Any], chunksize: Optional[int] = None) -> List[Any]:
        """``[func(x) for x in iterable]``, run in the pool; raises the error
        of the first item that failed."""
        result: List[Any] = self.map_async(func, iterable, chunksize).get()
        return result

    def map_async(self, func: str, iterable: Iterable[Any], chunksize: Optional[int] = None,
                  callback: Optional[Callable[[Any], Any]] = None,
                  error_callback: Optional[Callable[[BaseException], Any]] = None
                  ) -> MapResult:
        """Submits a map; returns a :class:`MapResult` at once."""
        job = MapResult(self, callback, error_callback)
        self._map(job, func, iterable, chunksize, ordered=True, star=False)
        return job

    def starmap(self, func: str, iterable: Iterable[Sequence[Any]],
                chunksize: Optional[int] = None) -> List[Any]:
        """``[func(*args) for args in iterable]``, run in the pool."""
        result: List[Any] = self.starmap_async(func, iterable, chunksize).get()
        return result

    def starmap_async(self, func: str, iterable: Iterable[Sequence[Any]],
                      chunksize: Optional[int] = None,
                      callback: Optional[Callable[[Any], Any]] = None,
                      error_callback: Optional[Callable[[BaseException], Any]] = None
                      ) -> MapResult:
        """Submits a starmap; returns a :class:`MapResult` at once."""
        job = MapResult(self, callback, error_callback)
        self._map(job, func, iterable, chunksize, ordered=True, star=True)
        return job

    def imap(self, func: str, iterable: Iterable[Any],
             chunksize: Optional[int] = None) -> IMapIterator:
        """Like map, but yields results in order as they arrive.  The input is
        streamed: it is read as mpoold grants credit, so memory stays bounded
        however long the iterable."""
        job = IMapIterator(self)
        self._map(job, func, iterable, chunksize, ordered=True, star=False, stream=True)
        return job

    def imap_unordered(self, func: str, iterable: Iterable[Any],
                       chunksize: Optional[int] = None) -> IMapIterator:
        """Like imap, but results come in the order they finish."""
        job = IMapIterator(self)
        self._map(job, func, iterable, chunksize, ordered=False, star=False, stream=True)
        return job

    def _map(self, job: _MapJob, func: str, iterable: Iterable[Any], chunksize: Optional[int],
             ordered: bool, star: bool, stream: bool = False) -> None:
        _check_function(func)
        _check_chunksize(chunksize)
        self._check_running()
        options = dict(self._options)
        if chunksize is not None:
            options["chunksize"] = chunksize
        if not ordered:
            options["ordered"] = False
        packer = msgpack.Packer(use_bin_type=True)
        if not stream and isinstance(iterable, (list, tuple, range)) and \
                len(iterable) <= _DIRECT_MAX_ITEMS:
            items = [call_argument(cast(Any, x)) for x in iterable] if star else list(iterable)
            packed = packer.pack(items)
            if len(packed) <= _DIRECT_MAX_BYTES:
                raw = (packer.pack_array_header(3 if options else 2) + packer.pack(func) +
                       packed + (packer.pack(options) if options else b""))
                self._submit(job, "map", None, raw)
                return
        options["stream"] = True
        job.feed = _Feed(job, iterable, star)
        self._submit(job, "map", [func, [], options])
        job.feed.start()

    # ---- beyond multiprocessing ----------------------------------------------

    def status(self) -> Dict[str, Any]:
        """mpoold's ``status`` map (proto/PROTOCOL.md)."""
        result: Dict[str, Any] = self._conn.call("status", [])
        return result

    def ping(self) -> None:
        """Asks mpoold for a "pong"; raises if it does not answer so."""
        if self._conn.call("ping", []) != "pong":
            raise ConnectionClosed("mpoold did not answer ping with pong")
