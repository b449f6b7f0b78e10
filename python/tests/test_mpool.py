#!/usr/bin/env python3
"""Tests of the mpool Python package against a real mpoold.

Each test class starts its own mpoold on a temporary socket, in a session
of its own, and kills that session afterwards; a scripted fake server (a
thread of this process, or a child under another uid) stands in where the
daemon cannot be made to say something (internal, bad_result, permission,
a dropped connection, garbage, an untrusted server).

Run by meson (suite "python"); by hand:
    MPOOLD=build/daemon/mpoold MPOOL_TESTMOD=build/tests/testmod.so \\
    PYTHONPATH=python python3 python/tests/test_mpool.py
MPOOL_TEST_STREAM_N sets the length of the streamed imap (default 10 M).
"""

import gc
import json
import multiprocessing
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import msgpack

import mpool
from mpool import errors as E
from mpool import pool as mpool_pool

MPOOLD = os.environ.get("MPOOLD", "")
TESTMOD = os.environ.get("MPOOL_TESTMOD", "")
WORKERS = 2
STREAM_N = int(os.environ.get("MPOOL_TEST_STREAM_N", "10000000"))


def _die_with_parent():
    """preexec: the daemon gets SIGKILL if the test runner dies (Linux)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG


def wait_for(cond, timeout=20.0, what="condition"):
    """Polls cond until true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what))
        time.sleep(0.01)   # polling interval, not synchronisation


def process_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def rss_kib(pid="self", key="VmRSS"):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%s/status" % (key, pid))


class Daemon:
    """A real mpoold on a temporary socket, in its own session."""

    def __init__(self, *args, modules=True):
        if not os.access(MPOOLD, os.X_OK):
            # fail, not skip: a missing daemon must not look like a pass
            raise RuntimeError("no executable mpoold at %r (set MPOOLD)" % MPOOLD)
        self.dir = tempfile.mkdtemp(prefix="mpool-pytest-")
        self.socket = os.path.join(self.dir, "mpoold.sock")
        self.log = os.path.join(self.dir, "mpoold.log")
        cmd = [MPOOLD, "--config", "/dev/null", "--socket", self.socket,
               "--workers", str(WORKERS)]
        if modules:
            if not os.path.exists(TESTMOD):
                raise RuntimeError("no testmod at %r (set MPOOL_TESTMOD)" % TESTMOD)
            cmd += ["--module", TESTMOD]
        cmd += list(args)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC")}
        # An mpoold built with AddressSanitizer keeps freed blocks in a
        # quarantine, 256 MiB of resident memory by default: keep it small
        # (an uninstrumented mpoold ignores the variable).
        old = env.get("ASAN_OPTIONS")
        env["ASAN_OPTIONS"] = (old + ":" if old else "") + "quarantine_size_mb=16"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mpoold exited with %s; log:\n%s"
                                   % (self.proc.returncode, self.read_log()))
            try:
                p = mpool.Pool(self.socket)
                try:
                    p.ping()
                    return
                finally:
                    p.terminate()
            except (OSError, mpool.MpoolError) as e:
                last = e
            time.sleep(0.02)
        raise RuntimeError("mpoold not ready (last: %s); log:\n%s" % (last, self.read_log()))

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def sanitized(self):
        """Whether this mpoold runs with AddressSanitizer."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return "libasan" in f.read()

    def pool(self, **kw):
        return mpool.Pool(self.socket, **kw)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        log = self.read_log()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
        # Under ASan and UBSan a finding in mpoold must fail the suite.
        if "Sanitizer" in log or "runtime error:" in log:
            raise AssertionError("mpoold reported a sanitizer finding:\n" + log)


class DaemonCase(unittest.TestCase):
    DAEMON_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(*cls.DAEMON_ARGS)
        cls.addClassCleanup(cls.daemon.stop)

    def setUp(self):
        self.pool = self.daemon.pool()
        self.addCleanup(self.pool.terminate)

    def assertRaisesCode(self, cls, fn, *args, **kw):
        with self.assertRaises(cls) as cm:
            fn(*args, **kw)
        self.assertEqual(cm.exception.code, cls.code)
        self.assertTrue(cm.exception.message, "the daemon's message is kept")
        return cm.exception


# --------------------------------------------------------------------------
# The Pool API
# --------------------------------------------------------------------------

class PoolTest(DaemonCase):

    def test_apply(self):
        self.assertEqual(self.pool.apply("builtin.square", (7,)), 49)
        # One argument passes as it is, several as an array, none as nil.
        self.assertEqual(self.pool.apply("builtin.echo", ([1, 2],)), [1, 2])
        self.assertEqual(self.pool.apply("builtin.echo", (1, "two")), [1, "two"])
        self.assertIsNone(self.pool.apply("builtin.echo"))
        self.assertEqual(mpool.call_argument((5,)), 5)

    def test_values_round_trip_through_c(self):
        # A Python client calling C functions: builtin.echo and testmod.ok.
        values = [None, True, False, 0, -1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, "",
                  "grüße", b"\x00\xff", [], [1, [2, [3]]], {"a": 1, "b": [None]}, {}]
        for fn in ("builtin.echo", "testmod.ok"):
            for v in values:
                self.assertEqual(self.pool.apply(fn, (v,)), v, "%s(%r)" % (fn, v))
        self.assertEqual(self.pool.apply("builtin.echo", ((1, 2),)), [1, 2])   # tuple -> array
        worker = self.pool.apply("builtin.pid", (None,))
        self.assertIn(worker, [w["pid"] for w in self.pool.status()["workers"]])
        # An integer msgpack cannot carry fails here, before anything is sent.
        with self.assertRaises(OverflowError):
            self.pool.apply("builtin.echo", (2**64,))
        with self.assertRaises(TypeError):
            self.pool.apply("builtin.echo", (object(),))
        self.assertEqual(self.pool.apply("builtin.square", (3,)), 9, "still usable")

    def test_apply_async(self):
        got, failed = [], []
        done = threading.Event()
        r = self.pool.apply_async("builtin.sleep", (300,), callback=got.append)
        self.assertFalse(r.ready())
        with self.assertRaises(ValueError):
            r.successful()
        with self.assertRaises(multiprocessing.TimeoutError):
            r.get(timeout=0.01)
        r.wait(timeout=0.01)
        self.assertFalse(r.ready())
        self.assertEqual(r.get(timeout=30), 300)
        self.assertTrue(r.ready())
        self.assertTrue(r.successful())
        self.assertEqual(got, [300], "callback ran before get() returned")

        def on_error(e):
            failed.append(e)
            done.set()
        r = self.pool.apply_async("builtin.square", ("x",), callback=got.append,
                                  error_callback=on_error)
        self.assertTrue(done.wait(30), "error_callback ran without a get()")
        self.assertIsInstance(failed[0], mpool.TaskTypeError)
        self.assertFalse(r.successful())
        with self.assertRaises(mpool.TaskTypeError):
            r.get()
        self.assertEqual(got, [300])

    def test_callback_runs_without_get_and_cannot_block(self):
        seen = []
        done = threading.Event()

        def cb(value):
            try:
                r2.get()
            except RuntimeError as e:
                seen.append(e)
            done.set()
        r2 = self.pool.apply_async("builtin.sleep", (10,))
        self.pool.apply_async("builtin.square", (2,), callback=cb)
        self.assertTrue(done.wait(30))
        self.assertIsInstance(seen[0], RuntimeError)
        # An exception in a callback is reported and does not stop the reader.
        bad = self.pool.apply_async("builtin.square", (3,), callback=lambda v: 1 / 0)
        self.assertEqual(bad.get(30), 9)
        self.assertEqual(self.pool.apply("builtin.square", (4,)), 16)

    def test_map(self):
        self.assertEqual(self.pool.map("builtin.square", range(10)), [i * i for i in range(10)])
        self.assertEqual(self.pool.map("builtin.square", [3, 4], chunksize=1), [9, 16])
        self.assertEqual(self.pool.map("builtin.square", []), [])
        self.assertEqual(self.pool.map("builtin.square", (i for i in range(5)), 2),
                         [0, 1, 4, 9, 16])
        # More than one request carries: sent in parts through the window.
        n = mpool_pool._DIRECT_MAX_ITEMS + 1000
        self.assertEqual(self.pool.map("builtin.square", list(range(n))),
                         [i * i for i in range(n)])

    def test_map_raises_first_failed_item(self):
        e = self.assertRaisesCode(mpool.TaskTypeError, self.pool.map, "builtin.square",
                                  [1, 2, "x", 4, "y"], 1)
        self.assertEqual(e.index, 2)
        self.assertIn("item 2", str(e))

    def test_map_async_and_starmap(self):
        got = []
        r = self.pool.map_async("builtin.square", [1, 2, 3], callback=got.append)
        self.assertEqual(r.get(30), [1, 4, 9])
        self.assertEqual(got, [[1, 4, 9]])
        self.assertEqual(self.pool.starmap("builtin.echo", [(1, 2), (3,), ()]),
                         [[1, 2], 3, None])
        r = self.pool.starmap_async("builtin.square", iter([(2,), (5,)]), chunksize=1)
        self.assertEqual(r.get(30), [4, 25])
        errs = []
        r = self.pool.map_async("builtin.square", ["x"], error_callback=errs.append)
        with self.assertRaises(mpool.TaskTypeError):
            r.get(30)
        self.assertEqual(len(errs), 1)

    def test_imap(self):
        it = self.pool.imap("builtin.square", iter(range(100)), chunksize=7)
        self.assertIs(iter(it), it)
        self.assertEqual(list(it), [i * i for i in range(100)])
        self.assertEqual(sorted(self.pool.imap_unordered("builtin.square", range(50))),
                         [i * i for i in range(50)])
        # A slow item comes last with imap_unordered.
        out = list(self.pool.imap_unordered("builtin.sleep", [400, 0, 0, 0], chunksize=1))
        self.assertEqual(out[-1], 400)
        self.assertEqual(list(self.pool.imap("builtin.square", [])), [])

    def test_imap_failed_item_raises_there_and_goes_on(self):
        it = self.pool.imap("builtin.square", [1, "x", 3], chunksize=1)
        self.assertEqual(next(it), 1)
        with self.assertRaises(mpool.TaskTypeError) as cm:
            next(it)
        self.assertEqual(cm.exception.index, 1)
        self.assertEqual(next(it), 9)
        with self.assertRaises(StopIteration):
            next(it)

    def test_imap_next_timeout(self):
        it = self.pool.imap("builtin.sleep", [500], chunksize=1)
        with self.assertRaises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        self.assertEqual(it.next(timeout=30), 500)

    def test_imap_slow_generator_is_not_held_back(self):
        # Each item is sent when the generator yields it, even if the next
        # one waits for the result of this one.
        results = []
        got = threading.Event()

        def gen():
            for i in range(3):
                yield i
                got.wait(30)
                got.clear()
        it = self.pool.imap("builtin.square", gen(), chunksize=1)
        for r in it:
            results.append(r)
            got.set()
        self.assertEqual(results, [0, 1, 4])

    def test_imap_source_error_propagates(self):
        def gen():
            yield 1
            yield 2
            raise KeyError("from the input")
        it = self.pool.imap("builtin.square", gen(), chunksize=1)
        got = []
        with self.assertRaises(KeyError):
            for r in it:
                got.append(r)
        self.assertEqual(self.pool.apply("builtin.square", (5,)), 25)

    def test_arguments_checked(self):
        with self.assertRaises(TypeError):
            self.pool.apply(len, (1,))
        with self.assertRaises(TypeError):
            self.pool.apply("builtin.echo", (1,), {"k": 1})
        with self.assertRaises(TypeError):
            self.pool.apply("builtin.echo", 5)
        for bad in (0, -1, 1.5):
            with self.assertRaises(ValueError):
                self.pool.map("builtin.square", [1], chunksize=bad)
        with self.assertRaises(ValueError):
            mpool.Pool(self.daemon.socket, retries=-1)
        with self.assertRaises(ValueError):
            mpool.Pool(self.daemon.socket, timeout=-1)

    def test_close_join(self):
        r = self.pool.apply_async("builtin.sleep", (300,))
        m = self.pool.map_async("builtin.sleep", [100, 100], chunksize=1)
        with self.assertRaises(ValueError):
            self.pool.join()            # still running
        self.pool.close()
        with self.assertRaises(ValueError):
            self.pool.apply("builtin.square", (1,))
        with self.assertRaises(ValueError):
            self.pool.imap("builtin.square", [1])
        self.pool.join()
        self.assertTrue(r.ready() and m.ready())
        self.assertEqual(r.get(), 300)
        self.assertEqual(m.get(), [100, 100])

    def test_join_runs_an_unread_imap_to_its_end(self):
        n = 2 * mpool_pool.MAX_OUTSTANDING + 1000
        it = self.pool.imap("builtin.square", iter(range(n)), chunksize=512)
        self.assertEqual(next(it), 0)
        # Nobody reads: the map pauses a window ahead...
        wait_for(lambda: it.feed.produced >= mpool_pool.MAX_OUTSTANDING, what="the window")
        time.sleep(0.2)
        self.assertLessEqual(it.feed.produced, mpool_pool.MAX_OUTSTANDING + 1)
        self.assertFalse(it.ready())
        # ...until join(), which waits for it, as multiprocessing's does.
        self.pool.close()
        joiner = threading.Thread(target=self.pool.join)
        joiner.start()
        joiner.join(120)
        self.assertFalse(joiner.is_alive(), "join() waited forever for an unread imap")
        rest = list(it)
        self.assertEqual(len(rest), n - 1)
        self.assertEqual(rest[-1], (n - 1) ** 2)

    def test_terminate_kills_own_jobs_only(self):
        other = self.daemon.pool()
        self.addCleanup(other.terminate)
        theirs = other.apply_async("builtin.sleep", (600,))
        mine = self.pool.apply_async("testmod.hang", (None,))
        mine_map = self.pool.map_async("testmod.hang", [None] * 3, chunksize=1)
        wait_for(lambda: other.status()["totals"]["jobs_active"] >= 3, what="jobs to start")
        t = time.monotonic()
        self.pool.terminate()
        self.assertRaisesCode(mpool.Terminated, mine.get, 10)
        self.assertRaises(mpool.Terminated, mine_map.get, 10)
        self.assertLess(time.monotonic() - t, 5)
        self.assertEqual(theirs.get(30), 600, "another client's job is not touched")
        # mpoold killed the hung workers and cancelled the jobs.
        try:
            wait_for(lambda: other.status()["totals"]["jobs_active"] == 0, what="jobs to end")
        except AssertionError as e:
            st = other.status()
            raise AssertionError("%s; jobs %r, workers %r" % (e, st["jobs"], st["workers"]))
        self.assertEqual(other.map("builtin.square", [1, 2], chunksize=1), [1, 4])
        with self.assertRaises(ValueError):
            self.pool.apply("builtin.square", (1,))
        self.pool.join()                # after terminate: returns

    def test_context_manager_terminates(self):
        with self.daemon.pool() as p:
            self.assertEqual(p.apply("builtin.square", (6,)), 36)
            r = p.apply_async("testmod.hang", (None,))
        self.assertRaises(mpool.Terminated, r.get, 10)
        with self.assertRaises(ValueError):
            p.apply("builtin.square", (1,))
        self.assertIn("TERMINATE", repr(p))

    def test_threads_share_a_pool(self):
        errors = []

        def run(k):
            try:
                for i in range(40):
                    n = k * 1000 + i
                    if self.pool.apply("builtin.square", (n,)) != n * n:
                        errors.append("apply %d" % n)
                if self.pool.map("builtin.square", range(k, k + 50), 8) != \
                        [i * i for i in range(k, k + 50)]:
                    errors.append("map %d" % k)
                if list(self.pool.imap("builtin.square", iter(range(k, k + 50)), 3)) != \
                        [i * i for i in range(k, k + 50)]:
                    errors.append("imap %d" % k)
            except Exception as e:    # reported below, with the thread's k
                errors.append("%d: %r" % (k, e))
        threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])

    def test_timeout_and_retries(self):
        with self.daemon.pool(timeout=0.1) as p:
            e = self.assertRaisesCode(mpool.TaskTimeout, p.apply, "builtin.sleep", (5000,))
            self.assertIn("deadline", e.message)
            self.assertEqual(p.apply("builtin.sleep", (1,)), 1)
        path = os.path.join(self.daemon.dir, "crash-once")
        with self.daemon.pool(retries=1) as p:
            self.assertEqual(p.apply("testmod.crash_once", (path,)), path)
        path2 = os.path.join(self.daemon.dir, "crash-once-2")
        e = self.assertRaisesCode(mpool.WorkerDied, self.pool.apply, "testmod.crash_once",
                                  (path2,))
        self.assertIn("SIGSEGV", e.message)

    def test_pool_is_collected_and_closes(self):
        p = self.daemon.pool()
        p.apply("builtin.square", (2,))
        conn = p._conn
        del p
        gc.collect()
        wait_for(lambda: conn.closed, what="a dropped Pool to close its connection")


# --------------------------------------------------------------------------
# Sockets and trust
# --------------------------------------------------------------------------

class SocketPathTest(unittest.TestCase):
    """mpool.default_socket_path() follows libmpool's rule."""

    def setUp(self):
        saved = {k: os.environ.get(k) for k in ("MPOOL_SOCKET", "XDG_RUNTIME_DIR")}

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.addCleanup(restore)

    def test_env_wins(self):
        os.environ["MPOOL_SOCKET"] = "/some/where.sock"
        self.assertEqual(mpool.default_socket_path(), "/some/where.sock")

    def test_default(self):
        os.environ.pop("MPOOL_SOCKET", None)
        os.environ["XDG_RUNTIME_DIR"] = "/nonexistent-xdg"
        if os.geteuid() == 0:
            self.assertEqual(mpool.default_socket_path(), "/run/mpool/mpoold.sock")
            return
        system = os.access("/run/mpool/mpoold.sock", os.F_OK)
        self.assertEqual(mpool.default_socket_path(),
                         "/run/mpool/mpoold.sock" if system
                         else "/nonexistent-xdg/mpool/mpoold.sock")

    def test_pool_uses_env(self):
        d = Daemon(modules=False)
        self.addCleanup(d.stop)
        os.environ["MPOOL_SOCKET"] = d.socket
        with mpool.Pool() as p:
            self.assertEqual(p.apply("builtin.square", (9,)), 81)

    def test_no_daemon(self):
        with self.assertRaises(FileNotFoundError):
            mpool.Pool("/nonexistent/mpoold.sock")


class InstallTest(unittest.TestCase):
    """meson install puts the package where the system's Python finds it."""

    def test_installed_where_python_looks(self):
        build = os.environ.get("MPOOL_BUILD_DIR")
        prefix = os.environ.get("MPOOL_PREFIX")
        if not build or not prefix:
            self.skipTest("needs MPOOL_BUILD_DIR and MPOOL_PREFIX (meson test sets them)")
        dest = tempfile.mkdtemp(prefix="mpool-install-")
        self.addCleanup(subprocess.run, ["rm", "-rf", "--", dest])
        out = subprocess.run(["meson", "install", "-C", build, "--destdir", dest,
                              "--tags", "python-runtime", "--no-rebuild"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        # The directories this interpreter reads under the prefix, as it
        # would read them once installed there.
        code = ("import site, sys; print('\\n'.join(site.getsitepackages()))")
        dirs = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                              text=True, check=True).stdout.split()
        dirs = [d for d in dirs if d.startswith(prefix.rstrip("/") + "/")]
        found = [d for d in dirs if os.path.exists(dest + d + "/mpool/__init__.py")]
        self.assertTrue(found, "mpool not installed under any of %s" % dirs)
        pkg = dest + found[0] + "/mpool"
        self.assertTrue(os.path.exists(pkg + "/py.typed"))
        out = subprocess.run([sys.executable, "-I", "-c",
                              "import sys; sys.path.insert(0, %r); import mpool; "
                              "print(mpool.__file__)" % (dest + found[0])],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), pkg + "/__init__.py", out.stderr)


class FakeServer:
    """A scripted MessagePack-RPC server on a temporary socket.

    reply(msg) returns the bytes to send for each request (or None to close).
    With uid set, it runs in a child process that takes that uid before it
    listens, so SO_PEERCRED names that user.
    """

    def __init__(self, reply, uid=None):
        self.dir = tempfile.mkdtemp(prefix="mpool-fake-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "fake.sock")
        self.reply = reply
        self.pid = None
        if uid is None:
            self.listener = self._listen()
            threading.Thread(target=self._serve, daemon=True).start()
            return
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:      # the child: take the uid, listen, serve, never return
            try:
                os.close(ready_r)
                os.chown(self.dir, uid, -1)
                os.setgid(65534)
                os.setuid(uid)
                self.listener = self._listen()
                os.write(ready_w, b"x")
                self._serve()
            finally:
                os._exit(0)
        os.close(ready_w)
        self.pid = pid
        os.read(ready_r, 1)
        os.close(ready_r)

    def _listen(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.socket)
        s.listen(8)
        return s

    def _serve(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def _client(self, c):
        u = msgpack.Unpacker(raw=False)
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                u.feed(data)
                for msg in u:
                    out = self.reply(msg)
                    if out is None:
                        return
                    c.sendall(out)

    def stop(self):
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        else:
            self.listener.close()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


def pack(*msgs):
    return b"".join(msgpack.packb(m, use_bin_type=True) for m in msgs)


class TrustTest(unittest.TestCase):

    @unittest.skipUnless(os.geteuid() == 0, "making a server of another uid needs root")
    def test_untrusted_server_refused(self):
        nobody = pwd.getpwnam("nobody").pw_uid
        srv = FakeServer(lambda m: pack([1, m[1], None, "pong"]), uid=nobody)
        self.addCleanup(srv.stop)
        saved = os.environ.pop("MPOOL_TRUST_UID", None)
        self.addCleanup(lambda: saved is None or os.environ.__setitem__("MPOOL_TRUST_UID",
                                                                         saved))
        with self.assertRaises(mpool.UntrustedServer) as cm:
            mpool.Pool(srv.socket)
        self.assertEqual(cm.exception.code, 106)
        self.assertIn(srv.socket, cm.exception.message)
        self.assertIn("uid %d" % nobody, cm.exception.message)
        for bad in ("x%d" % nobody, "", "-1", str(nobody + 1)):
            os.environ["MPOOL_TRUST_UID"] = bad
            self.assertRaises(mpool.UntrustedServer, mpool.Pool, srv.socket)
        os.environ["MPOOL_TRUST_UID"] = str(nobody)
        with mpool.Pool(srv.socket) as p:
            p.ping()
        del os.environ["MPOOL_TRUST_UID"]

    def test_own_server_trusted(self):
        srv = FakeServer(lambda m: pack([1, m[1], None, "pong"]))
        self.addCleanup(srv.stop)
        with mpool.Pool(srv.socket) as p:
            p.ping()


# --------------------------------------------------------------------------
# Errors: one class per code
# --------------------------------------------------------------------------

NAMES = {1: "bad_request", 2: "no_method", 3: "no_function", 4: "task_error",
         5: "type_error", 6: "worker_died", 7: "terminated", 8: "shutting_down",
         9: "limit", 10: "timeout", 11: "internal", 12: "bad_result", 13: "unavailable",
         14: "cancelled", 15: "permission", 16: "not_found"}


class ErrorClassesTest(unittest.TestCase):
    """Every protocol code reaches the caller as its class, with its message."""

    def test_every_code_from_a_server(self):
        def reply(m):
            fn = m[3][0]
            code = int(fn.split(".")[1])
            if m[2] == "apply":
                return pack([1, m[1], {"code": code, "message": "said %d" % code,
                                       "extra": "ignored"}, None])
            # a map: one failed item of that code, then the response
            return pack([2, "result", [m[1], 0, [None, 7],
                                       [{"code": code, "message": "item", "index": 0}]]],
                        [1, m[1], None, {"items": 2, "failed": 1}])
        srv = FakeServer(reply)
        self.addCleanup(srv.stop)
        seen = set()
        with mpool.Pool(srv.socket) as p:
            for code, name in NAMES.items():
                cls = mpool.ERRORS[code]
                self.assertTrue(issubclass(cls, mpool.MpoolError))
                self.assertEqual((cls.code, cls.name), (code, name))
                with self.assertRaises(cls) as cm:
                    p.apply("x.%d" % code, (1,))
                e = cm.exception
                self.assertEqual((e.code, e.message, e.index), (code, "said %d" % code, None))
                self.assertEqual(str(e), "%s: said %d" % (name, code))
                with self.assertRaises(cls) as cm:
                    p.map("x.%d" % code, [1, 2])
                self.assertEqual(cm.exception.index, 0)
                it = p.imap("x.%d" % code, iter([1, 2]))
                self.assertRaises(cls, next, it)
                self.assertEqual(list(it), [7])
                seen.add(cls)
            with self.assertRaises(mpool.MpoolError) as cm:     # a code from the future
                p.apply("x.99", (1,))
            self.assertIs(type(cm.exception), mpool.MpoolError)
            self.assertEqual(cm.exception.code, 99)
        self.assertEqual(len(seen), 16, "one class per code")
        import pickle
        e = pickle.loads(pickle.dumps(mpool.TaskError("m", index=3)))
        self.assertEqual((type(e), e.message, e.index), (mpool.TaskError, "m", 3))

    def test_dropped_connection(self):
        def reply(m):
            if m[3][0] == "x.limit":
                return pack([2, "error", [{"code": 9, "message": "frame too large"}]])
            if m[3][0] == "x.garbage":
                return b"\xc1"
            if m[3][0] == "x.shape":         # a result notification of no shape
                return pack([2, "result", [m[1], "zero", 5, None]])
            return None                      # close without an answer
        srv = FakeServer(reply)
        self.addCleanup(srv.stop)
        cases = [("x.limit", mpool.LimitExceeded), ("x.garbage", mpool.ProtocolError),
                 ("x.close", mpool.ConnectionClosed), ("x.shape", mpool.ProtocolError)]
        for fn, cls in cases:
            p = mpool.Pool(srv.socket)
            r = p.map_async(fn, [1, 2])
            with self.assertRaises(cls):
                r.get(10)
            # and every later call on that pool says why
            with self.assertRaises(cls):
                p.apply("x.1", (1,))
            p.terminate()


class DaemonErrorsTest(DaemonCase):
    """The errors the real daemon gives, each caused for real."""
    DAEMON_ARGS = ("--max-retries", "2")

    def test_bad_request(self):
        self.assertRaisesCode(mpool.BadRequest, self.pool.map, "builtin.square", [1],
                              chunksize=2**40)
        self.assertRaisesCode(mpool.BadRequest, self.daemon.pool(retries=3).apply,
                              "builtin.square", (1,))

    def test_no_method(self):
        self.assertRaisesCode(mpool.NoMethod, self.pool._conn.call, "no_such_method", [])

    def test_no_function(self):
        e = self.assertRaisesCode(mpool.NoFunction, self.pool.apply, "nosuch.fn", (1,))
        self.assertIn("nosuch.fn", e.message)
        self.assertRaisesCode(mpool.NoFunction, self.pool.map, "nosuch.fn", [1, 2])
        self.assertRaises(mpool.NoFunction, list, self.pool.imap("nosuch.fn", iter([1, 2])))

    def test_task_and_type_error(self):
        self.assertRaisesCode(mpool.TaskError, self.pool.apply, "builtin.square", (2**40,))
        e = self.assertRaisesCode(mpool.TaskTypeError, self.pool.apply, "builtin.square", ("x",))
        self.assertEqual(e.message, "builtin.square: expected an integer, got str")

    def test_worker_died(self):
        e = self.assertRaisesCode(mpool.WorkerDied, self.pool.apply, "testmod.crash", (None,))
        self.assertIn("killed by SIGSEGV", e.message)
        e = self.assertRaisesCode(mpool.WorkerDied, self.pool.apply, "testmod.exit", (3,))
        self.assertIn("3", e.message)

    def test_limit(self):
        deep = 1
        for _ in range(30):      # an argument may nest 29 levels
            deep = [deep]
        self.assertRaisesCode(mpool.LimitExceeded, self.pool.apply, "builtin.echo", (deep,))
        self.assertEqual(self.pool.apply("builtin.echo", (deep[0],)), deep[0])

    def test_timeout(self):
        with self.daemon.pool(timeout=0.05) as p:
            self.assertRaisesCode(mpool.TaskTimeout, p.apply, "testmod.hang", (None,))

    def test_cancelled_and_not_found(self):
        r = self.pool.apply_async("testmod.sleep", (20000,))
        other = self.daemon.pool()
        self.addCleanup(other.terminate)
        jobs = wait_for(lambda: [j for j in other.status()["jobs"]
                                 if j["function"] == "testmod.sleep"], what="the job")
        self.assertIs(other._conn.call("cancel", [jobs[0]["id"]]), True)
        self.assertRaisesCode(mpool.Cancelled, r.get, 10)
        self.assertRaisesCode(mpool.NotFound, other._conn.call, "cancel", [jobs[0]["id"]])


class ShuttingDownTest(DaemonCase):
    def test_shutting_down(self):
        r = self.pool.apply_async("builtin.sleep", (500,))
        wait_for(lambda: self.pool.status()["totals"]["jobs_active"] == 1, what="the job")
        self.daemon.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: self.pool.status()["state"] == "draining", what="draining")
        self.assertRaisesCode(mpool.ShuttingDown, self.pool.apply, "builtin.square", (2,))
        self.assertEqual(r.get(30), 500, "open work finishes")
        self.assertEqual(self.daemon.proc.wait(30), 0)
        self.assertRaises(mpool.ConnectionClosed, self.pool.apply, "builtin.square", (2,))


class TerminatedTest(DaemonCase):
    def test_terminated(self):
        r = self.pool.apply_async("testmod.hang", (None,))
        wait_for(lambda: self.pool.status()["totals"]["jobs_active"] == 1, what="the job")
        admin = self.daemon.pool()
        self.addCleanup(admin.terminate)
        admin._conn.call("terminate", [])
        e = self.assertRaisesCode(mpool.Terminated, r.get, 10)
        self.assertEqual(e.code, 7)
        self.assertEqual(self.daemon.proc.wait(30), 0)


class UnavailableTest(DaemonCase):
    DAEMON_ARGS = ("--initargs", '{"fail": true}', "--recovery-timeout", "300")

    def test_unavailable(self):
        e = self.assertRaisesCode(mpool.Unavailable, self.pool.apply, "builtin.square", (2,))
        self.assertIn("init failed", e.message)


# --------------------------------------------------------------------------
# Streaming: a long generator through imap, memory bounded on both sides
# --------------------------------------------------------------------------

class StreamTest(DaemonCase):
    """A generator of STREAM_N items through imap, in a fresh interpreter
    (bench/pyclient.py, the bench's own figure), so that its peak RSS is
    the client's alone."""

    def test_imap_streams_a_generator_in_bounded_memory(self):
        script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "bench", "pyclient.py")
        # The daemon is the class's: its high-water mark may come from the
        # test before (64 KiB items).  Reset it to today's RSS (proc(5),
        # clear_refs 5), so that the peak below is this stream's.
        with open("/proc/%d/clear_refs" % self.daemon.proc.pid, "w") as f:
            f.write("5")
        out = subprocess.run([sys.executable, script, "imap", "--socket", self.daemon.socket,
                              "--n", str(STREAM_N)], capture_output=True, text=True,
                             timeout=500)
        self.assertEqual(out.returncode, 0, out.stderr)
        r = json.loads(out.stdout.splitlines()[-1])
        daemon_mib = rss_kib(self.daemon.proc.pid, "VmHWM") / 1024
        print("\nimap of %d items: %.1f s, %d items/s; client peak RSS %.1f MiB, mpoold "
              "peak RSS %.1f MiB; input read at most %d items ahead of the results"
              % (r["n"], r["seconds"], r["items_per_s"], r["client_vmhwm_mib"], daemon_mib,
                 r["max_ahead"]), file=sys.stderr)
        self.assertTrue(r["correct"], r)
        self.assertEqual(r["n"], STREAM_N)
        # Streaming: the input is read only a bounded window ahead.
        self.assertLessEqual(r["max_ahead"], mpool_pool.MAX_OUTSTANDING)
        self.assertLess(r["client_vmhwm_mib"], 64, "client peak RSS")
        # Under ASan every allocation carries shadow memory and redzones,
        # as tests/test_async.c allows for.
        self.assertLess(daemon_mib, 128 if self.daemon.sanitized() else 64, "mpoold peak RSS")

    def test_big_items_stay_bounded(self):
        # 64 KiB items: the prefetch is bounded in bytes as well as items.
        item = b"x" * 65536
        n = 4000
        base = rss_kib()
        peak = base
        count = 0
        for r in self.pool.imap("builtin.echo", (item for _ in range(n)), chunksize=4):
            self.assertEqual(len(r), len(item))
            count += 1
            if count % 200 == 0:
                peak = max(peak, rss_kib())
        self.assertEqual(count, n)
        self.assertLess((peak - base) / 1024, 96, "%d items of 64 KiB: %.1f MiB"
                        % (n, (peak - base) / 1024))


# --------------------------------------------------------------------------
# Process (protocol version 2)
# --------------------------------------------------------------------------

class ProcessTest(DaemonCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        p = mpool.Pool(cls.daemon.socket)
        try:
            version = p.status()["protocol"]
        finally:
            p.terminate()
        if version < 2:
            # fail, not skip: this suite describes protocol 2's Process
            raise RuntimeError("mpoold speaks protocol %d; mpool.Process needs 2" % version)

    def test_start_join_exitcode_result(self):
        p = mpool.Process("builtin.square", (12,), name="squarer")
        self.assertIsNone(p.pid)
        self.assertIsNone(p.exitcode)
        self.assertFalse(p.is_alive())
        p = mpool.Process("builtin.square", (12,), "squarer", False, socket=self.daemon.socket)
        p.start()
        self.assertIsInstance(p.pid, int)
        self.assertEqual(p.name, "squarer")
        with self.assertRaises(RuntimeError):
            p.start()
        p.join()
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(p.result, 144)
        self.assertIsNone(p.error)
        self.assertFalse(p.is_alive())
        self.assertIn("exitcode=0", repr(p))

    def test_failure_and_exit_status(self):
        p = mpool.Process("builtin.square", ("x",), socket=self.daemon.socket)
        p.start()
        p.join()
        self.assertEqual(p.exitcode, 1)
        self.assertIsInstance(p.error, mpool.TaskTypeError)
        self.assertTrue(p.name.startswith("Process-"))
        p = mpool.Process("testmod.exit", (3,), socket=self.daemon.socket)
        p.start()
        p.join(30)
        self.assertEqual(p.exitcode, 3)

    def test_join_timeout_terminate_kill(self):
        p = mpool.Process("testmod.hang", (None,), socket=self.daemon.socket)
        p.start()
        self.assertTrue(p.is_alive())
        t = time.monotonic()
        p.join(0.2)
        self.assertGreaterEqual(time.monotonic() - t, 0.15)
        self.assertTrue(p.is_alive())
        self.assertIsNone(p.exitcode)
        p.join(0)
        self.assertIsNone(p.exitcode)
        self.assertFalse(process_gone(p.pid))
        p.terminate()
        p.join(30)
        self.assertEqual(p.exitcode, -signal.SIGTERM)
        self.assertTrue(wait_for(lambda: process_gone(p.pid), what="the process to go"))
        p.terminate()                    # exited: nothing to do
        q = mpool.Process("testmod.hang_noterm", (None,), socket=self.daemon.socket)
        q.start()
        q.kill()
        q.join(30)
        self.assertEqual(q.exitcode, -signal.SIGKILL)
        r = mpool.Process("builtin.sleep", (50,), socket=self.daemon.socket)
        r.start()
        self.assertEqual(wait_for(lambda: r.exitcode is not None and [r.exitcode],
                                  what="exitcode"), [0])

    def test_daemon_flag_and_exit(self):
        # A script that starts a non-daemon and a daemon process and exits:
        # the interpreter waits for the first (as multiprocessing joins its
        # children) and mpoold ends the second with the connection.
        script = textwrap.dedent("""
            import sys, time, mpool
            s = sys.argv[1]
            t0 = time.monotonic()
            keep = mpool.Process("builtin.sleep", (700,), socket=s)
            keep.start()
            helper = mpool.Process("testmod.hang", (None,), daemon=True, socket=s)
            helper.start()
            print(keep.pid, helper.pid, t0, flush=True)
        """)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run([sys.executable, "-c", script, self.daemon.socket], env=env,
                             capture_output=True, text=True, timeout=60)
        ended = time.monotonic()
        self.assertEqual(out.returncode, 0, out.stderr)
        keep_pid, helper_pid, started = out.stdout.split()
        # The sleep began after t0: an exit that waited for it ends 0.7 s
        # after t0 at the soonest, however slowly the starts went.
        self.assertGreaterEqual(ended - float(started), 0.7, "exit waited for the process")
        self.assertTrue(process_gone(int(keep_pid)))
        # Gone from the system (a zombie counts) and, once mpoold has
        # reaped it, from mpoold's list: a daemon process goes with its
        # connection.
        wait_for(lambda: process_gone(int(helper_pid)), what="the daemon process to end")
        wait_for(lambda: int(helper_pid) not in
                 [p["pid"] for p in self.pool._conn.call("processes", [])],
                 what="mpoold to forget the daemon process")
        procs = {p["pid"]: p for p in self.pool._conn.call("processes", [])}
        self.assertEqual(procs[int(keep_pid)]["exitcode"], 0)
        self.assertTrue(procs[int(keep_pid)]["state"] == "exited")

    def test_not_found(self):
        p = mpool.Process("builtin.square", (2,), socket=self.daemon.socket)
        p.start()
        p._id = 10**9
        self.assertRaisesCode(mpool.NotFound, p.is_alive)


if __name__ == "__main__":
    unittest.main(verbosity=2)
