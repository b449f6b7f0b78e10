#!/usr/bin/env python3
"""Task functions written in Python: the py module (docs/python-tasks.md)
against a real mpoold.

Each class starts its own mpoold with the py module and Python code written
to a temporary directory, and talks to it with the protocol-only client of
tests/test_pyclient.py; the C client (libmpool) is exercised through mpctl.
Covers: conversion of every type both ways, exceptions, sys.exit and
os._exit, timeouts, an initializer with initargs, recycling with
max-tasks-per-child, reload picking up changed code, forks made by a task,
supervised processes, a module that fails to import, and imports that take
long: the master serves during them (at start and at reload), and gives up
on a fork server past --fork-server-timeout.

Run:  python3 tests/test_pytask.py   (env MPOOLD, MPOOL_PYMOD, MPCTL)
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_pyclient as pc  # noqa: E402  (its Client, codec and daemon fixture)

BUILD = os.path.join(pc.REPO_ROOT, "build")
PYMOD = os.environ.get("MPOOL_PYMOD", os.path.join(BUILD, "modules", "python", "py.so"))
MPCTL = os.environ.get("MPCTL", os.path.join(BUILD, "client", "mpctl"))
TESTMOD_ABI1 = os.environ.get("MPOOL_TESTMOD_ABI1", os.path.join(BUILD, "tests", "testmod_abi1.so"))

TASKS = '''
import os, random, subprocess, sys, time
from os.path import join            # imported, so not one of ours

_state = {"init": 0, "args": None}


def setup(*args):
    _state["init"] += 1
    _state["args"] = list(args)


def init_state(_):
    return [_state["init"], _state["args"], os.getpid()]


def echo(x):
    return x


def kinds(x):
    """The Python types the argument arrived as, recursively."""
    if isinstance(x, list):
        return ["list", [kinds(v) for v in x]]
    if isinstance(x, dict):
        return ["dict", {k: kinds(v) for k, v in x.items()}]
    return type(x).__name__


def as_tuple(x):
    return tuple(x)


def as_bytearray(x):
    return bytearray(x)


def bad_result(kind):
    deep = []
    for _ in range(40):
        deep = [deep]
    looped = []
    looped.append(looped)
    return {"big": 2**64, "small": -2**63 - 1, "object": object(), "set": {1},
            "surrogate": "\\ud800", "deep": deep, "loop": looped}[kind]


def limits(_):
    return [2**64 - 1, -2**63, 2**63 - 1]


class Oops(Exception):
    pass


def fail(x):
    raise ValueError("bad value %r" % (x,))


def oops(x):
    raise Oops("custom " + str(x))


def exit_with(code):
    sys.exit(code)


def hard_exit(code):
    os._exit(code)


def forever(_):
    while True:
        pass


def pid(_):
    return os.getpid()


def rand(_):
    return [os.getpid(), random.random()]


def forks(_):
    """A task may fork (subprocess, os.fork) while it holds the GIL."""
    rc = subprocess.run(["true"]).returncode
    child = os.fork()
    if child == 0:
        os._exit(7)
    _, status = os.waitpid(child, 0)
    return [rc, os.waitstatus_to_exitcode(status)]


_threads = []


def thread_forks(logpath):
    """A thread that forks while the worker waits for its next task."""
    import threading

    def run():
        for _ in range(20):
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
            with open(logpath, "a") as f:
                f.write("%d\\n" % os.getpid())
            time.sleep(0.002)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    _threads.append(t)
    return os.getpid()


def threads_done(_):
    for t in _threads:
        t.join(20)
    return [os.getpid(), all(not t.is_alive() for t in _threads)]


def _private(x):
    return x
'''

PKG_SUB = '''
__all__ = ["twice", "Maker"]


def twice(x):
    return 2 * x


def hidden(x):
    return x


class Maker:
    pass
'''


class PyTaskCase(pc.DaemonTestCase):
    """An mpoold with the py module; CODE is written to a directory on its
    sys.path first."""
    CODE = {"tasks.py": TASKS, "pkg/__init__.py": "", "pkg/sub.py": PKG_SUB}
    SETTINGS = {"modules": ["tasks", "pkg.sub"]}
    EXTRA = ()
    WAIT_IDLE = True

    @classmethod
    def setUpClass(cls):
        if not os.access(PYMOD, os.R_OK):
            raise RuntimeError("no py module at %s (build with python3-dev, or set "
                               "MPOOL_PYMOD)" % PYMOD)
        cls.code_dir = tempfile.mkdtemp(prefix="mpool-pytask-")
        cls.addClassCleanup(shutil.rmtree, cls.code_dir, True)
        cls.write_code(cls.CODE)
        settings = dict(cls.SETTINGS, path=[cls.code_dir])
        cls.DAEMON_ARGS = ("--config", "/dev/null", "--module", PYMOD,
                           "--initargs", json.dumps(settings), *cls.EXTRA)
        super().setUpClass()
        if cls.WAIT_IDLE:
            cls.wait_workers_idle()

    @classmethod
    def write_code(cls, files):
        for name, text in files.items():
            path = os.path.join(cls.code_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))

    @classmethod
    def status(cls):
        with pc.Client(cls.socket_path) as c:
            error, result = c.call("status", [])
        assert error is None, error
        return result

    @classmethod
    def wait_workers_idle(cls, pred=None, timeout=30.0):
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = cls.status()
            workers = st["workers"]
            if (len(workers) == pc.WORKERS and all(w["state"] == "idle" for w in workers)
                    and (pred is None or pred(st))):
                return st
            time.sleep(0.02)  # polling interval
        raise AssertionError("workers not idle in time: %r\nlog:\n%s" % (st, cls._log()))

    def apply_ok(self, fn, arg, *options):
        error, result = self.client.apply(fn, arg, *options)
        self.assertIsNone(error, "%s(%r): %r" % (fn, arg, error))
        return result


class ConversionTest(PyTaskCase):
    def test_every_type_round_trips(self):
        values = [None, True, False, 0, 1, -1, 127, -33, 2**32, -2**31 - 1,
                  2**63 - 1, -2**63, 2**64 - 1, 0.5, -1e300, "", "héllo ✓", b"", b"\x00\xff",
                  [], [1, [2, [3]]], {}, {"a": 1, "b": [None, {"c": b"x"}]},
                  {1: "int key", "s": 2}]
        for v in values:
            with self.subTest(v=v):
                self.assertEqual(self.apply_ok("py.tasks.echo", v), v)

    def test_arguments_arrive_as_python_types(self):
        got = self.apply_ok("py.tasks.kinds", [None, True, 3, -3, 2**64 - 1, 1.5, "s", b"b",
                                               [1], {"k": 2.0}])
        self.assertEqual(got, ["list", ["NoneType", "bool", "int", "int", "int", "float",
                                        "str", "bytes", ["list", ["int"]],
                                        ["dict", {"k": "float"}]]])
        # float32 on the wire is a float too
        self.assertEqual(self.apply_ok("py.tasks.kinds", pc.Raw(b"\xca\x3f\xc0\x00\x00")),
                         "float")

    def test_tuple_and_bytearray_results(self):
        self.assertEqual(self.apply_ok("py.tasks.as_tuple", [1, "a", None]), [1, "a", None])
        self.assertEqual(self.apply_ok("py.tasks.as_bytearray", b"xyz"), b"xyz")

    def test_int_limits(self):
        self.assertEqual(self.apply_ok("py.tasks.limits", None), [2**64 - 1, -2**63, 2**63 - 1])

    def test_unconvertible_results_are_type_errors(self):
        for kind, words in [("big", "64 bits"), ("small", "64 bits"), ("object", "object"),
                            ("set", "set"), ("surrogate", "surrogate"), ("deep", "deep"),
                            ("loop", "deep")]:
            with self.subTest(kind=kind):
                error, result = self.client.apply("py.tasks.bad_result", kind)
                self.assertError(error, result, pc.TYPE_ERROR)
                self.assertIn(words, error["message"])
        # the worker is fine afterwards
        self.assertEqual(self.apply_ok("py.tasks.echo", 5), 5)

    def test_unconvertible_arguments_are_type_errors(self):
        error, result = self.client.apply("py.tasks.echo", pc.Ext(5, b"x"))
        self.assertError(error, result, pc.TYPE_ERROR)
        self.assertIn("extension", error["message"])
        # a list as a map key: msgpack allows it, Python cannot hash it
        error, result = self.client.apply("py.tasks.echo", pc.Raw(b"\x81\x91\x01\x02"))
        self.assertError(error, result, pc.TYPE_ERROR)
        self.assertIn("hash", error["message"])
        error, result = self.client.apply("py.tasks.echo", pc.Raw(b"\xa2\xff\xfe"))
        self.assertError(error, result, pc.TYPE_ERROR)
        self.assertIn("UTF-8", error["message"])

    def test_map_over_python_function(self):
        notes, error, result = self.client.map("py.tasks.echo", list(range(200)),
                                               {"chunksize": 7})
        self.assertIsNone(error)
        self.assertEqual([v for chunk in notes for v in chunk[2]], list(range(200)))


class NamesAndErrorsTest(PyTaskCase):
    def test_public_functions_only(self):
        self.assertEqual(self.apply_ok("py.pkg.sub.twice", 21), 42)
        for name in ["py.tasks._private", "py.tasks.join", "py.tasks.nope", "py.tasks",
                     "py.pkg.sub.hidden", "py.pkg.sub.Maker", "py.os.getpid", "py."]:
            with self.subTest(name=name):
                error, result = self.client.apply(name, 1)
                if name == "py.pkg.sub.Maker":
                    # in __all__ and callable: a class is a function here
                    self.assertError(error, result, pc.TASK_ERROR)
                    self.assertIn("TypeError: Maker() takes no arguments", error["message"])
                else:
                    self.assertError(error, result, pc.NO_FUNCTION)

    def test_map_of_unknown_name_refused_at_submit(self):
        notes, error, result = self.client.map("py.tasks.missing", [1, 2])
        self.assertError(error, result, pc.NO_FUNCTION)
        self.assertEqual(notes, [])

    def test_exception_is_task_error_with_type_and_message(self):
        error, result = self.client.apply("py.tasks.fail", 3)
        self.assertError(error, result, pc.TASK_ERROR)
        self.assertEqual(error["message"], "ValueError: bad value 3")
        error, result = self.client.apply("py.tasks.oops", "x")
        self.assertError(error, result, pc.TASK_ERROR)
        self.assertEqual(error["message"], "tasks.Oops: custom x")
        # the traceback's last lines are in the log
        deadline = time.monotonic() + 10
        while "in oops" not in self._log() and time.monotonic() < deadline:
            time.sleep(0.02)
        log = self._log()
        self.assertIn("py.tasks.oops:", log)
        self.assertIn('in oops', log)

    def test_exception_fails_only_its_item_in_a_map(self):
        msgid = self.client.request("map", ["py.tasks.fail", [1, 2], {"chunksize": 2}])
        notes = []
        response = self.client.wait_response(msgid, notes)
        self.assertIsNone(response[2])
        errors = [e for n in notes for e in n[2][3]]
        self.assertEqual(sorted(e["message"] for e in errors),
                         ["ValueError: bad value 1", "ValueError: bad value 2"])
        self.assertEqual({e["code"] for e in errors}, {pc.TASK_ERROR})

    def test_a_task_may_fork(self):
        for _ in range(3):
            self.assertEqual(self.apply_ok("py.tasks.forks", None), [0, 7])

    def test_a_thread_may_fork_while_the_worker_waits(self):
        logpath = os.path.join(self.code_dir, "thread-forks.log")
        notes, error, _ = self.client.map("py.tasks.thread_forks", [logpath] * 4,
                                          {"chunksize": 1, "timeout_ms": 20000})
        self.assertIsNone(error)
        pids = {p for chunk in notes for p in chunk[2]}
        # Every thread forks 20 times, mostly while its worker is idle
        # between tasks (the GIL released): wait for all of them.
        deadline = time.monotonic() + 30
        n = 0
        while time.monotonic() < deadline:
            with open(logpath) as f:
                n = len(f.readlines())
            if n >= 4 * 20:
                break
            time.sleep(0.02)  # polling interval
        self.assertEqual(n, 4 * 20, "the forking threads stalled")
        for _ in range(2 * pc.WORKERS):
            got = self.apply_ok("py.tasks.threads_done", None, {"timeout_ms": 20000})
            self.assertTrue(got[1], got)
        self.assertTrue(pids)

    def test_workers_get_different_random_streams(self):
        # CPython reseeds random in a fork child (os.register_at_fork):
        # workers forked by the fork server must not share one stream.
        seen = {}
        deadline = time.monotonic() + 20
        while len(seen) < pc.WORKERS and time.monotonic() < deadline:
            notes, error, _ = self.client.map("py.tasks.rand", list(range(8)),
                                              {"chunksize": 1})
            self.assertIsNone(error)
            for chunk in notes:
                for p, r in chunk[2]:
                    seen.setdefault(p, r)
        self.assertEqual(len(seen), pc.WORKERS, seen)
        self.assertEqual(len(set(seen.values())), pc.WORKERS, seen)

    def test_c_client_calls_python_function(self):
        """libmpool, through mpctl."""
        out = subprocess.run([MPCTL, "-s", self.socket_path, "apply", "py.tasks.echo",
                              '{"a": [1, 2.5, null, true, "x"]}'],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout), {"a": [1, 2.5, None, True, "x"]})
        out = subprocess.run([MPCTL, "-s", self.socket_path, "map", "py.pkg.sub.twice",
                              "1", "2", "3"], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["2", "4", "6"])
        out = subprocess.run([MPCTL, "-s", self.socket_path, "apply", "py.tasks.fail", "1"],
                             capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("task_error: ValueError: bad value 1", out.stderr)

    def test_supervised_process_runs_python(self):
        """spawn forks from the master, which never imported the code: the
        process imports it itself."""
        error, result = self.client.call("spawn", ["py.tasks.pid", None, {"protocol": 2}])
        self.assertIsNone(error, error)
        error, joined = self.client.call("join", [result["id"], {"timeout_ms": 30000}])
        self.assertIsNone(error, error)
        self.assertEqual(joined.get("exitcode"), 0, joined)
        self.assertEqual(joined.get("result"), result["pid"], joined)


class DeathTest(PyTaskCase):
    def test_sys_exit_is_a_worker_death(self):
        error, result = self.client.apply("py.tasks.exit_with", 3)
        self.assertError(error, result, pc.WORKER_DIED)
        self.assertIn("status 3", error["message"])
        self.assertEqual(self.apply_ok("py.tasks.echo", 1), 1)

    def test_os_exit_is_a_worker_death(self):
        error, result = self.client.apply("py.tasks.hard_exit", 5)
        self.assertError(error, result, pc.WORKER_DIED)
        self.assertIn("status 5", error["message"])
        self.assertEqual(self.apply_ok("py.tasks.echo", 2), 2)

    def test_timeout_kills_a_task_that_never_returns(self):
        t0 = time.monotonic()
        error, result = self.client.apply("py.tasks.forever", None, {"timeout_ms": 300})
        self.assertError(error, result, pc.TIMEOUT)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertEqual(self.apply_ok("py.tasks.echo", 3), 3)


class InitializerRecyclingTest(PyTaskCase):
    SETTINGS = {"modules": ["tasks", "pkg.sub"], "initializer": "tasks.setup",
                "initargs": ["db", 3, {"k": [1]}]}
    EXTRA = ("--max-tasks-per-child", "1")

    def test_initializer_once_per_worker_with_initargs(self):
        pids = set()
        for _ in range(6):
            count, args, p = self.apply_ok("py.tasks.init_state", None)
            self.assertEqual(count, 1, "initializer ran %d times in worker %d" % (count, p))
            self.assertEqual(args, ["db", 3, {"k": [1]}])
            pids.add(p)
        # max-tasks-per-child 1: every task had a fresh worker
        self.assertEqual(len(pids), 6)

    def test_recycled_workers_keep_serving_a_map(self):
        notes, error, _ = self.client.map("py.tasks.pid", list(range(12)), {"chunksize": 1})
        self.assertIsNone(error)
        pids = [v for chunk in notes for v in chunk[2]]
        self.assertEqual(len(pids), 12)
        self.assertEqual(len(set(pids)), 12)


# Each import of it appends the importing process's pid to imports.log.
IMPORT_LOG = """
import os
with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as _f:
    _f.write("%d\\n" % os.getpid())
"""


class ReloadTest(PyTaskCase):
    CODE = {"tasks.py": IMPORT_LOG + "def version(_):\n    return 1\n\ndef gone(_):\n    return 0\n"}
    SETTINGS = {"modules": ["tasks"]}

    def imports(self):
        with open(os.path.join(self.code_dir, "imports.log")) as f:
            return [int(line) for line in f]

    def test_reload_picks_up_changed_code(self):
        self.assertEqual(self.apply_ok("py.tasks.version", None), 1)
        # imported once, before the workers were forked, and never by
        # the master
        first = self.imports()
        self.assertEqual(len(first), 1, first)
        self.assertNotEqual(first[0], self.proc.pid)
        before = self.status()["totals"]["recycled_by"]["reload"]
        self.write_code({"tasks.py": IMPORT_LOG + "def version(_):\n    return 2\n\n"
                                     "def added(x):\n    return x + 1\n"})
        error, result = self.client.call("reload", [])
        self.assertIsNone(error)
        self.wait_workers_idle(
            lambda st: st["totals"]["recycled_by"]["reload"] >= before + pc.WORKERS)
        self.assertEqual(self.apply_ok("py.tasks.version", None), 2)
        self.assertEqual(self.apply_ok("py.tasks.added", 41), 42)
        error, result = self.client.apply("py.tasks.gone", None)
        self.assertError(error, result, pc.NO_FUNCTION)
        # once more, by the new fork server
        again = self.imports()
        self.assertEqual(len(again), 2, again)
        self.assertNotIn(self.proc.pid, again)


MDWE_WRAPPER = """#!%s
# Runs mpoold as MemoryDenyWriteExecute=yes would (systemd uses this prctl
# where the kernel has it): no mapping may be both writable and executable.
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(%r, [%r] + sys.argv[1:])
"""

WX_TASK = """
import json, math, mmap


def wx(_):
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        return "allowed"
    except OSError:
        return "refused"


def work(x):
    return json.loads(json.dumps({"r": math.sqrt(x)}))
"""


class SandboxTest(PyTaskCase):
    """The hardened unit's MemoryDenyWriteExecute=yes: CPython runs under it
    (its SystemCallFilter= was checked with strace; docs/python-tasks.md)."""
    CODE = {"tasks.py": WX_TASK}
    SETTINGS = {"modules": ["tasks"]}

    @classmethod
    def setUpClass(cls):
        wrapper_dir = tempfile.mkdtemp(prefix="mpool-mdwe-")
        cls.addClassCleanup(shutil.rmtree, wrapper_dir, True)
        wrapper = os.path.join(wrapper_dir, "mpoold")
        real = os.path.abspath(pc.MPOOLD)
        with open(wrapper, "w") as f:
            f.write(MDWE_WRAPPER % (sys.executable, real, real))
        os.chmod(wrapper, 0o755)
        check = subprocess.run([wrapper, "--version"], capture_output=True)
        if check.returncode == 77:
            raise unittest.SkipTest("the kernel has no PR_SET_MDWE (Linux < 6.3)")
        saved, pc.MPOOLD = pc.MPOOLD, wrapper
        try:
            super().setUpClass()
        finally:
            pc.MPOOLD = saved

    def test_python_tasks_run_without_writable_executable_memory(self):
        self.assertEqual(self.apply_ok("py.tasks.wx", None), "refused")
        self.assertEqual(self.apply_ok("py.tasks.work", 16), {"r": 4.0})


class FailingInitializerTest(PyTaskCase):
    CODE = {"tasks.py": "def setup(n):\n    raise KeyError(n)\n\ndef f(x):\n    return x\n"}
    SETTINGS = {"modules": ["tasks"], "initializer": "tasks.setup", "initargs": ["nope"]}
    WAIT_IDLE = False

    def test_initializer_that_raises_fails_the_worker_start(self):
        want = "module py: init failed: initializer raised KeyError: 'nope'"
        deadline = time.monotonic() + 20
        while want not in self._log() and time.monotonic() < deadline:
            time.sleep(0.02)  # polling interval
        self.assertIn(want, self._log())
        self.assertIn("py: initializer:", self._log())      # the traceback
        # The worker logs before it exits; the master learns of the exit
        # when it reaps it, a moment later.
        totals = self.status()["totals"]
        while ("a module's init failed" not in (totals["last_failure"] or "")
               and time.monotonic() < deadline):
            time.sleep(0.02)  # polling interval
            totals = self.status()["totals"]
        self.assertIn("a module's init failed", totals["last_failure"] or "", totals)
        self.assertEqual(totals["tasks_done"], 0)


class Abi1Test(PyTaskCase):
    """A module of module ABI 1 loads and runs beside the py module."""

    @classmethod
    def setUpClass(cls):
        cls.EXTRA = ("--module", TESTMOD_ABI1)
        super().setUpClass()

    def test_abi1_and_python_side_by_side(self):
        self.assertEqual(self.apply_ok("testmod.ok", [1, "x"]), [1, "x"])
        self.assertEqual(self.apply_ok("py.tasks.echo", [2, "y"]), [2, "y"])
        error, result = self.client.call("spawn", ["testmod.ok", 3, {"protocol": 2}])
        self.assertIsNone(error, error)
        error, joined = self.client.call("join", [result["id"], {"timeout_ms": 30000}])
        self.assertIsNone(error, error)
        self.assertEqual(joined.get("result"), 3, joined)


class ImportFailureTest(PyTaskCase):
    CODE = {"tasks.py": "raise RuntimeError('broken at import')\n"}
    SETTINGS = {"modules": ["tasks"]}

    def test_pool_serves_without_the_python_functions(self):
        error, result = self.client.apply("py.tasks.anything", 1)
        self.assertError(error, result, pc.NO_FUNCTION)
        self.assertEqual(self.apply_ok("builtin.square", 7), 49)
        log = self._log()
        self.assertIn("module py: load failed: import tasks: RuntimeError: broken at import",
                      log)



# An import that takes SECONDS: it says when it starts and when it ends
# (import-start.log, import-done.log beside it, one pid a line).
SLOW_IMPORT = """
import os, time
_here = os.path.dirname(__file__)
with open(os.path.join(_here, "import-start.log"), "a") as _f:
    _f.write("%%d\\n" %% os.getpid())
time.sleep(%s)
with open(os.path.join(_here, "import-done.log"), "a") as _f:
    _f.write("%%d\\n" %% os.getpid())
"""

# Longer than the 5 s the master used to wait for the fork server, before
# it stopped waiting for it at all.
SLOW_S = 6.5
# A master that serves while the fork server imports answers at once; one
# that waits for it answers after the import.  Generous for a loaded
# machine, and well below SLOW_S.
PROMPT_S = 2.0


class SlowImportCase(PyTaskCase):
    WAIT_IDLE = False

    def lines(self, name):
        try:
            with open(os.path.join(self.code_dir, name)) as f:
                return [int(line) for line in f]
        except FileNotFoundError:
            return []

    def wait_lines(self, name, n, timeout=30.0):
        deadline = time.monotonic() + timeout
        while len(self.lines(name)) < n:
            self.assertLess(time.monotonic(), deadline, "no %s line %d; log:\n%s"
                            % (name, n, self._log()))
            time.sleep(0.02)  # polling interval

    def timed(self, fn, *args):
        """fn(*args), how long it took, and whether the import was still
        running when it returned (so it ran entirely during the import)."""
        t0 = time.monotonic()
        got = fn(*args)
        took = time.monotonic() - t0
        return got, took, len(self.lines("import-done.log")) < len(self.lines("import-start.log"))


class SlowImportTest(SlowImportCase):
    """A Python import longer than the old 5 s limit: mpoold serves during
    it, and the functions work once it is done."""
    CODE = {"slow.py": SLOW_IMPORT % SLOW_S + "def inc(x):\n    return x + 1\n"}
    SETTINGS = {"modules": ["slow"]}

    def test_master_serves_while_the_fork_server_imports(self):
        self.wait_lines("import-start.log", 1)
        # Accepted before the names are known: judged when it runs.
        early = self.client.request("apply", ["py.slow.inc", 41])
        during, states = 0, set()
        with pc.Client(self.socket_path) as c:
            while True:
                (error, result), took, importing = self.timed(c.call, "ping", [])
                self.assertEqual((error, result), (None, "pong"))
                if not importing:
                    break
                self.assertLess(took, PROMPT_S, "ping took %.1f s during the import" % took)
                (error, st), took, importing = self.timed(c.call, "status", [])
                self.assertIsNone(error)
                if importing:
                    self.assertLess(took, PROMPT_S, "status took %.1f s during the import"
                                    % took)
                    self.assertEqual(st["workers"], [], st)
                    states.add((st["fork_server"] or {}).get("state"))
                    during += 1
                time.sleep(0.1)  # a client now and then, not a spin
        self.assertGreaterEqual(during, 3, "too few requests during the import")
        self.assertEqual(states, {"loading"})
        response = self.client.wait_response(early)
        self.assertEqual(response[2:], [None, 42])
        st = self.wait_workers_idle()
        self.assertEqual(st["fork_server"]["state"], "ready", st)
        self.assertEqual(self.apply_ok("py.slow.inc", 1), 2)
        # Imported once, by the fork server, and the master waited for no
        # timeout: nothing failed.
        self.assertEqual(self.lines("import-done.log"), self.lines("import-start.log"))
        self.assertEqual(len(self.lines("import-done.log")), 1)
        self.assertNotIn("did not start", self._log())
        error, result = self.client.apply("py.slow.nope", 1)
        self.assertError(error, result, pc.NO_FUNCTION)


class SlowImportUnknownNameTest(SlowImportCase):
    CODE = {"slow.py": SLOW_IMPORT % 2 + "def inc(x):\n    return x + 1\n"}
    SETTINGS = {"modules": ["slow"]}

    def test_a_name_accepted_during_the_import_fails_if_it_does_not_exist(self):
        self.wait_lines("import-start.log", 1)
        msgid = self.client.request("map", ["py.slow.nope", [1, 2], {"chunksize": 1}])
        done_before = len(self.lines("import-done.log"))
        notes = []
        response = self.client.wait_response(msgid, notes)
        if done_before:
            self.skipTest("the import ended before the map was sent")
        self.assertIsNone(response[2], response)
        errors = [e for n in notes for e in n[2][3]]
        self.assertEqual(len(errors), 2, notes)
        self.assertEqual({e["code"] for e in errors}, {pc.NO_FUNCTION})
        self.assertIn("does not define it", errors[0]["message"])
        self.assertEqual(self.apply_ok("py.slow.inc", 1), 2)


class ImportTimeoutTest(SlowImportCase):
    """A fork server that has not imported within --fork-server-timeout is
    killed; the master forks the workers, without the Python functions."""
    CODE = {"slow.py": SLOW_IMPORT % 120 + "def inc(x):\n    return x + 1\n"}
    SETTINGS = {"modules": ["slow"]}
    EXTRA = ("--fork-server-timeout", "1500")

    def test_fork_server_killed_after_the_timeout(self):
        self.wait_lines("import-start.log", 1)
        forksrv = self.lines("import-start.log")[0]
        st = self.wait_workers_idle()
        self.assertIsNone(st["fork_server"], st)
        self.assertIn("the fork server %d did not start (it had not loaded the modules after "
                      "1500 ms, fork-server-timeout): workers fork from the master" % forksrv,
                      self._log())
        self.assertEqual(self._log().count("did not start"), 1)
        self.assertFalse(os.path.exists("/proc/%d" % forksrv), "fork server %d lives on"
                         % forksrv)
        # The workers forked from the master did not import the code.
        self.assertEqual(self.lines("import-start.log"), [forksrv])
        self.assertEqual(self.apply_ok("builtin.square", 7), 49)
        error, result = self.client.apply("py.slow.inc", 1)
        self.assertError(error, result, pc.NO_FUNCTION)


class ForkServerDiesAtImportTest(PyTaskCase):
    """A fork server that exits before its hello: a failed start, said once."""
    CODE = {"dies.py": "import os\nos._exit(4)\n"}
    SETTINGS = {"modules": ["dies"]}

    def test_pool_serves_without_the_python_functions(self):
        self.assertEqual(self.apply_ok("builtin.square", 8), 64)
        error, result = self.client.apply("py.dies.f", 1)
        self.assertError(error, result, pc.NO_FUNCTION)
        self.assertIn("did not start (exited with status 4): workers fork from the master",
                      self._log())
        self.assertEqual(self._log().count("did not start"), 1)
        self.assertIsNone(self.status()["fork_server"])


class ForkServerNonsenseTest(PyTaskCase):
    """A fork server that sends nonsense before its hello (here, module
    code that writes to the fork server's channel): a failed start."""
    CODE = {"junk.py": "import os\nos.write(3, b'junk')\ndef f(x):\n    return x\n"}
    SETTINGS = {"modules": ["junk"]}

    def test_pool_serves_without_the_python_functions(self):
        self.assertEqual(self.apply_ok("builtin.square", 9), 81)
        error, result = self.client.apply("py.junk.f", 1)
        self.assertError(error, result, pc.NO_FUNCTION)
        self.assertIn("did not start (it sent nonsense before its hello): workers fork from "
                      "the master", self._log())
        self.assertEqual(self._log().count("did not start"), 1)


class SlowReloadTest(SlowImportCase):
    """A reload whose import is slow: the old workers serve the old
    functions meanwhile; READY=1 (systemd) comes once new workers run the
    new code."""
    CODE = {"tasks.py": "def version(_):\n    return 1\n\ndef gone(_):\n    return 0\n"}
    SETTINGS = {"modules": ["tasks"]}
    WAIT_IDLE = True

    @classmethod
    def setUpClass(cls):
        cls.notify_dir = tempfile.mkdtemp(prefix="mpool-notify-")
        cls.addClassCleanup(shutil.rmtree, cls.notify_dir, True)
        cls.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        cls.addClassCleanup(cls.notify.close)
        path = os.path.join(cls.notify_dir, "notify")
        cls.notify.bind(path)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            super().setUpClass()
        finally:
            del os.environ["NOTIFY_SOCKET"]

    def notes(self, want=None, timeout=30.0):
        """Notification datagrams, each with whether the import was still
        running once it was read: until one holds the line want, or those
        waiting now."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()) if want else 0)
            try:
                text = self.notify.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                if want is None:
                    return got
                self.fail("no %s in %r; log:\n%s" % (want, got, self._log()))
            got.append((text.split("\n"), len(self.lines("import-done.log")) <
                        len(self.lines("import-start.log"))))
            if want in got[-1][0]:
                return got

    def test_old_functions_serve_during_a_slow_reload(self):
        self.notes("READY=1")
        self.assertEqual(self.apply_ok("py.tasks.version", None), 1)
        before = self.status()["totals"]["recycled_by"]["reload"]
        self.write_code({"tasks.py": SLOW_IMPORT % 4 + "def version(_):\n    return 2\n\n"
                                     "def added(x):\n    return x + 1\n"})
        (error, result), took, _ = self.timed(self.client.call, "reload", [])
        self.assertIsNone(error)
        self.assertLess(took, PROMPT_S, "the reload took %.1f s to answer" % took)
        self.wait_lines("import-start.log", 1)
        during, notes = 0, []
        while True:
            notes += self.notes()
            (error, result), took, importing = self.timed(self.client.apply, "py.tasks.version",
                                                          None)
            if not importing:
                break
            # The old workers, under the old names.
            self.assertEqual((error, result), (None, 1))
            self.assertLess(took, PROMPT_S, "apply took %.1f s during the import" % took)
            error, result = self.client.apply("py.tasks.gone", None)
            self.assertEqual((error, result), (None, 0))
            during += 1
            time.sleep(0.1)  # a client now and then, not a spin
        self.assertGreaterEqual(during, 3, "too few requests during the import")
        # The reload is done once new workers run the new code, after the
        # import, not before.
        if not any("READY=1" in lines for lines, _ in notes):
            notes += self.notes("READY=1")
        self.assertTrue(any("RELOADING=1" in lines for lines, _ in notes), notes)
        self.assertEqual([importing for lines, importing in notes if "READY=1" in lines],
                         [False], "READY=1 during the import: %r" % notes)
        self.assertEqual(self.apply_ok("py.tasks.version", None), 2)
        self.assertEqual(self.apply_ok("py.tasks.added", 41), 42)
        error, result = self.client.apply("py.tasks.gone", None)
        self.assertError(error, result, pc.NO_FUNCTION)
        self.wait_workers_idle(
            lambda st: st["totals"]["recycled_by"]["reload"] >= before + pc.WORKERS)


if __name__ == "__main__":
    unittest.main(verbosity=2)
