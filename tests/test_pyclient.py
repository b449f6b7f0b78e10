#!/usr/bin/env python3
"""An independent Python client for mpoold, written from proto/PROTOCOL.md alone.

It proves that the protocol document is enough to talk to the daemon: a small
MessagePack codec (standard library only), a MessagePack-RPC client that reads
messages incrementally from the stream, and a unittest suite run against a
real mpoold started on a temporary socket.

Run:  python3 tests/test_pyclient.py        (env MPOOLD overrides the binary)
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPOOLD = os.environ.get("MPOOLD", os.path.join(REPO_ROOT, "build", "daemon", "mpoold"))
WORKERS = 2

# Error codes (PROTOCOL.md, "Errors").
BAD_REQUEST, NO_METHOD, NO_FUNCTION, TASK_ERROR, TYPE_ERROR = 1, 2, 3, 4, 5
WORKER_DIED, TERMINATED, SHUTTING_DOWN, LIMIT, TIMEOUT = 6, 7, 8, 9, 10
INTERNAL, BAD_RESULT = 11, 12
NOT_FOUND = 16

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2


# --------------------------------------------------------------------------
# MessagePack (https://github.com/msgpack/msgpack/blob/master/spec.md)
# --------------------------------------------------------------------------

class Raw:
    """Bytes inserted verbatim by the encoder (to force a particular width)."""

    def __init__(self, data):
        self.data = bytes(data)


class Ext:
    def __init__(self, code, data):
        self.code, self.data = code, bytes(data)

    def __eq__(self, other):
        return isinstance(other, Ext) and (self.code, self.data) == (other.code, other.data)

    def __repr__(self):
        return "Ext(%d, %r)" % (self.code, self.data)


_INT_FORMATS = {
    # name: (type byte, struct format)
    "uint8": (0xCC, ">B"), "uint16": (0xCD, ">H"), "uint32": (0xCE, ">I"), "uint64": (0xCF, ">Q"),
    "int8": (0xD0, ">b"), "int16": (0xD1, ">h"), "int32": (0xD2, ">i"), "int64": (0xD3, ">q"),
}


def int_as(width, value):
    """Encode integer `value` in the given MessagePack format (e.g. "uint32")."""
    tag, fmt = _INT_FORMATS[width]
    return Raw(bytes([tag]) + struct.pack(fmt, value))


def _pack_int(n, out):
    if 0 <= n <= 0x7F:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        if n <= 0xFF:
            out += b"\xcc" + struct.pack(">B", n)
        elif n <= 0xFFFF:
            out += b"\xcd" + struct.pack(">H", n)
        elif n <= 0xFFFFFFFF:
            out += b"\xce" + struct.pack(">I", n)
        elif n <= 0xFFFFFFFFFFFFFFFF:
            out += b"\xcf" + struct.pack(">Q", n)
        else:
            raise OverflowError("integer too large for MessagePack: %d" % n)
    else:
        if n >= -0x80:
            out += b"\xd0" + struct.pack(">b", n)
        elif n >= -0x8000:
            out += b"\xd1" + struct.pack(">h", n)
        elif n >= -0x80000000:
            out += b"\xd2" + struct.pack(">i", n)
        elif n >= -0x8000000000000000:
            out += b"\xd3" + struct.pack(">q", n)
        else:
            raise OverflowError("integer too small for MessagePack: %d" % n)


def _pack_len(n, fix_base, fix_max, tags, out):
    """Header of a str/bin/array/map of length n. tags: (8-bit, 16-bit, 32-bit) or None."""
    if fix_base is not None and n <= fix_max:
        out.append(fix_base | n)
    elif tags[0] is not None and n <= 0xFF:
        out += bytes([tags[0]]) + struct.pack(">B", n)
    elif n <= 0xFFFF:
        out += bytes([tags[1]]) + struct.pack(">H", n)
    elif n <= 0xFFFFFFFF:
        out += bytes([tags[2]]) + struct.pack(">I", n)
    else:
        raise OverflowError("too long for MessagePack")


def _pack(obj, out):
    if obj is None:
        out.append(0xC0)
    elif obj is False:
        out.append(0xC2)
    elif obj is True:
        out.append(0xC3)
    elif isinstance(obj, Raw):
        out += obj.data
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out += b"\xcb" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_len(len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _pack_len(len(data), None, 0, (0xC4, 0xC5, 0xC6), out)
        out += data
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), 0x90, 15, (None, 0xDC, 0xDD), out)
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        _pack_len(len(obj), 0x80, 15, (None, 0xDE, 0xDF), out)
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    elif isinstance(obj, Ext):
        n = len(obj.data)
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        if n in fixed:
            out.append(fixed[n])
        else:
            _pack_len(n, None, 0, (0xC7, 0xC8, 0xC9), out)
        out += struct.pack(">b", obj.code) + obj.data
    else:
        raise TypeError("cannot encode %r" % type(obj))


def packb(obj):
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


class Incomplete(Exception):
    """The buffer ends inside a value: more bytes are needed."""


class DecodeError(Exception):
    pass


def _need(buf, pos, n):
    if pos + n > len(buf):
        raise Incomplete()


def _hashable(key):
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return tuple((_hashable(k), _hashable(v)) for k, v in key.items())
    return key


_FIXED = {
    # tag: (struct format, size)
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}
_LEN = {1: ">B", 2: ">H", 4: ">I"}


def unpack_from(buf, pos=0):
    """Decode one value starting at buf[pos]. Returns (value, next_pos).

    Raises Incomplete when buf ends before the value does."""
    _need(buf, pos, 1)
    tag = buf[pos]
    pos += 1

    def length(size):
        nonlocal pos
        _need(buf, pos, size)
        (n,) = struct.unpack_from(_LEN[size], buf, pos)
        pos += size
        return n

    def raw(n):
        nonlocal pos
        _need(buf, pos, n)
        data = bytes(buf[pos:pos + n])
        pos += n
        return data

    def array(n):
        nonlocal pos
        items = []
        for _ in range(n):
            item, pos = unpack_from(buf, pos)
            items.append(item)
        return items

    def mapping(n):
        nonlocal pos
        result = {}
        for _ in range(n):
            key, pos = unpack_from(buf, pos)
            value, pos = unpack_from(buf, pos)
            result[_hashable(key)] = value
        return result

    if tag <= 0x7F:
        return tag, pos
    if tag >= 0xE0:
        return tag - 0x100, pos
    if 0x80 <= tag <= 0x8F:
        return mapping(tag & 0x0F), pos
    if 0x90 <= tag <= 0x9F:
        return array(tag & 0x0F), pos
    if 0xA0 <= tag <= 0xBF:
        return raw(tag & 0x1F).decode("utf-8"), pos
    if tag == 0xC0:
        return None, pos
    if tag == 0xC2:
        return False, pos
    if tag == 0xC3:
        return True, pos
    if tag in _FIXED:
        fmt, size = _FIXED[tag]
        _need(buf, pos, size)
        (value,) = struct.unpack_from(fmt, buf, pos)
        return value, pos + size
    if tag in (0xC4, 0xC5, 0xC6):
        return raw(length(1 << (tag - 0xC4))), pos
    if tag in (0xD9, 0xDA, 0xDB):
        return raw(length(1 << (tag - 0xD9))).decode("utf-8"), pos
    if tag in (0xDC, 0xDD):
        return array(length(2 if tag == 0xDC else 4)), pos
    if tag in (0xDE, 0xDF):
        return mapping(length(2 if tag == 0xDE else 4)), pos
    if tag in (0xC7, 0xC8, 0xC9):
        n = length(1 << (tag - 0xC7))
        code = struct.unpack(">b", raw(1))[0]
        return Ext(code, raw(n)), pos
    if 0xD4 <= tag <= 0xD8:
        n = 1 << (tag - 0xD4)
        code = struct.unpack(">b", raw(1))[0]
        return Ext(code, raw(n)), pos
    raise DecodeError("byte 0x%02x is no MessagePack type" % tag)


def unpackb(data):
    value, pos = unpack_from(data, 0)
    if pos != len(data):
        raise DecodeError("%d trailing bytes" % (len(data) - pos))
    return value


class StreamDecoder:
    """Values back to back in a byte stream, fed in arbitrary pieces."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data

    def next(self):
        """Return (value, raw_bytes) of the next complete value, or None."""
        if not self.buf:
            return None
        try:
            value, end = unpack_from(self.buf, 0)
        except Incomplete:
            return None
        raw_bytes = bytes(self.buf[:end])
        del self.buf[:end]
        return value, raw_bytes


# --------------------------------------------------------------------------
# MessagePack-RPC client
# --------------------------------------------------------------------------

class ConnectionClosed(Exception):
    pass


class Client:
    def __init__(self, path, timeout=60.0, recv_size=65536):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise
        self.recv_size = recv_size
        self.decoder = StreamDecoder()
        self.next_msgid = 1
        self.recv_calls = 0
        self.pending = []  # messages read but not yet claimed (other msgids)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(packb(obj))

    def request(self, method, params, msgid=None):
        """Send a request without waiting; returns its msgid."""
        if msgid is None:
            msgid = self.next_msgid
            self.next_msgid += 1
        self.send([REQUEST, msgid, method, params])
        return msgid

    def read_raw(self):
        """Next message from the stream as (value, raw_bytes)."""
        while True:
            item = self.decoder.next()
            if item is not None:
                return item
            data = self.sock.recv(self.recv_size)
            self.recv_calls += 1
            if not data:
                raise ConnectionClosed("connection closed (%d bytes of a partial message buffered)"
                                       % len(self.decoder.buf))
            self.decoder.feed(data)

    def read(self):
        if self.pending:
            return self.pending.pop(0)
        return self.read_raw()[0]

    def wait_response(self, msgid, notifications=None):
        """Read until the response to msgid. Notifications of kind "result"
        carrying msgid go to `notifications`; anything else is kept pending."""
        kept = []
        try:
            while True:
                msg = self.read()
                if msg[0] == RESPONSE and msg[1] == msgid:
                    return msg
                if (notifications is not None and msg[0] == NOTIFICATION and msg[1] == "result"
                        and msg[2][0] == msgid):
                    notifications.append(msg)
                    continue
                kept.append(msg)
        finally:
            self.pending = kept + self.pending

    def call(self, method, params, msgid=None):
        """Returns (error, result)."""
        msgid = self.request(method, params, msgid)
        response = self.wait_response(msgid)
        assert len(response) == 4, response
        return response[2], response[3]

    def apply(self, function, argument, *options):
        return self.call("apply", [function, argument, *options])

    def map(self, function, items, options=None, msgid=None):
        """Returns (notifications, error, result); notifications are the
        params arrays [msgid, first, results, errors] in arrival order."""
        params = [function, items] if options is None else [function, items, options]
        msgid = self.request("map", params, msgid)
        notes = []
        response = self.wait_response(msgid, notes)
        return [n[2] for n in notes], response[2], response[3]


# --------------------------------------------------------------------------
# The daemon under test
# --------------------------------------------------------------------------

def _die_with_parent():
    """preexec: the daemon gets SIGKILL if the test runner dies (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class DaemonTestCase(unittest.TestCase):
    """Each subclass gets its own mpoold (started in setUpClass)."""
    proc = None
    tmpdir = None
    DAEMON_ARGS = ()

    @classmethod
    def setUpClass(cls):
        if not os.access(MPOOLD, os.X_OK):
            # fail, not skip: a missing daemon must not look like a pass
            raise RuntimeError("no executable mpoold at %s (build it, or set MPOOLD)" % MPOOLD)
        cls.tmpdir = tempfile.mkdtemp(prefix="mpool-pytest-")
        cls.addClassCleanup(cls._stop_daemon)
        cls.socket_path = os.path.join(cls.tmpdir, "mpoold.sock")
        cls.log_path = os.path.join(cls.tmpdir, "mpoold.log")
        with open(cls.log_path, "wb") as log:
            cls.proc = subprocess.Popen(
                [MPOOLD, "--socket", cls.socket_path, "--workers", str(WORKERS), *cls.DAEMON_ARGS],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_die_with_parent)
        cls._wait_ready()

    @classmethod
    def _wait_ready(cls):
        deadline = time.monotonic() + 10.0
        last = None
        while time.monotonic() < deadline:
            if cls.proc.poll() is not None:
                raise RuntimeError("mpoold exited with %s before it was ready; log:\n%s"
                                   % (cls.proc.returncode, cls._log()))
            try:
                with Client(cls.socket_path, timeout=max(0.1, deadline - time.monotonic())) as c:
                    error, result = c.call("ping", [])
                    if error is None and result == "pong":
                        return
                    last = "ping answered %r %r" % (error, result)
            except (OSError, ConnectionClosed) as e:
                last = e
            time.sleep(0.02)  # polling interval, not synchronisation
        raise RuntimeError("mpoold not ready within 10 s (last: %s); log:\n%s" % (last, cls._log()))

    @classmethod
    def _log(cls):
        try:
            with open(cls.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    @classmethod
    def _stop_daemon(cls):
        if cls.proc is not None:
            try:
                os.killpg(cls.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            cls.proc.wait()
            cls.proc = None
        if cls.tmpdir is not None:
            shutil.rmtree(cls.tmpdir, ignore_errors=True)
            cls.tmpdir = None

    def setUp(self):
        self.client = Client(self.socket_path)
        self.addCleanup(self.client.close)

    # helpers ---------------------------------------------------------------

    def assertError(self, error, result, code):
        self.assertIsNone(result, "result must be nil when error is set")
        self.assertIsInstance(error, dict, "error must be an error object, got %r" % (error,))
        self.assertEqual(error.get("code"), code, error)
        self.assertIsInstance(error.get("message"), str, error)
        self.assertTrue(error["message"], "error message is empty")

    def assertOk(self, error, result, expected):
        self.assertIsNone(error)
        self.assertEqual(result, expected)

    def check_tiling(self, notes, n, msgid=None, ordered=True):
        """The notifications cover 0..n-1 exactly once; returns the results."""
        results = [None] * n
        seen = [False] * n
        prev_first = -1
        for note in notes:
            self.assertEqual(len(note), 4, note[:2])
            nid, first, chunk, errors = note
            if msgid is not None:
                self.assertEqual(nid, msgid)
            self.assertIsInstance(chunk, list)
            self.assertIsInstance(errors, list)
            if ordered:
                self.assertGreater(first, prev_first, "notifications not ordered by first")
                prev_first = first
            for i, value in enumerate(chunk):
                self.assertLess(first + i, n, "chunk runs past the end")
                self.assertFalse(seen[first + i], "item %d delivered twice" % (first + i))
                seen[first + i] = True
                results[first + i] = value
        missing = [i for i, s in enumerate(seen) if not s]
        self.assertEqual(missing, [], "items never delivered")
        if ordered:
            # contiguous: each chunk starts where the previous one ended
            expect = 0
            for note in notes:
                self.assertEqual(note[1], expect)
                expect += len(note[2])
        return results


# --------------------------------------------------------------------------
# Codec self-tests (no daemon)
# --------------------------------------------------------------------------

class CodecTest(unittest.TestCase):
    def test_known_encodings(self):
        cases = [
            (None, "c0"), (False, "c2"), (True, "c3"),
            (0, "00"), (127, "7f"), (128, "cc80"), (255, "ccff"), (256, "cd0100"),
            (65536, "ce00010000"), (2 ** 32, "cf0000000100000000"),
            (2 ** 64 - 1, "cfffffffffffffffff"),
            (-1, "ff"), (-32, "e0"), (-33, "d0df"), (-129, "d1ff7f"),
            (-32769, "d2ffff7fff"), (-2 ** 63, "d38000000000000000"),
            (1.5, "cb3ff8000000000000"),
            ("", "a0"), ("a" * 32, "d920" + "61" * 32), (b"\x01", "c40101"),
            ([], "90"), ([1, 2], "920102"), ({}, "80"), ({"a": 1}, "81a16101"),
            (list(range(16)), "dc0010" + "".join("%02x" % i for i in range(16))),
        ]
        for value, hexbytes in cases:
            with self.subTest(value=value):
                self.assertEqual(packb(value).hex(), hexbytes)
                decoded = unpackb(bytes.fromhex(hexbytes))
                self.assertEqual(decoded, value)
                self.assertIs(type(decoded), type(value) if not isinstance(value, bytearray) else bytes)

    def test_wide_forms_decode(self):
        self.assertEqual(unpackb(bytes.fromhex("cf0000000000000007")), 7)
        self.assertEqual(unpackb(bytes.fromhex("d3fffffffffffffff4")), -12)
        self.assertEqual(unpackb(bytes.fromhex("ca3fc00000")), 1.5)
        self.assertEqual(unpackb(bytes.fromhex("da0001") + b"x"), "x")
        self.assertEqual(unpackb(bytes.fromhex("db00000001") + b"x"), "x")
        self.assertEqual(unpackb(bytes.fromhex("c6000000020102")), b"\x01\x02")
        self.assertEqual(unpackb(bytes.fromhex("dd0000000101")), [1])
        self.assertEqual(unpackb(bytes.fromhex("df00000001a16101")), {"a": 1})
        self.assertEqual(unpackb(bytes.fromhex("d40102")), Ext(1, b"\x02"))
        with self.assertRaises(DecodeError):
            unpackb(b"\xc1")

    def test_stream_split_anywhere(self):
        values = [{"k": [1, -2, 2 ** 40, "s" * 300, b"\x00" * 70000, None, True, 0.25]},
                  [2, "result", [1, 0, [], []]], "tail"]
        stream = b"".join(packb(v) for v in values)
        dec = StreamDecoder()
        out = []
        for b in stream:  # one byte at a time
            dec.feed(bytes([b]))
            item = dec.next()
            if item is not None:
                out.append(item[0])
        self.assertEqual(out, values)
        self.assertEqual(dec.buf, b"")


# --------------------------------------------------------------------------
# Against the daemon
# --------------------------------------------------------------------------

class BasicTest(DaemonTestCase):
    def test_ping(self):
        self.assertOk(*self.client.call("ping", []), "pong")

    def test_apply_square(self):
        self.assertOk(*self.client.apply("builtin.square", 7), 49)

    def test_apply_square_integer_widths(self):
        cases = [(7, ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"]),
                 (2 ** 31 + 5, ["uint32", "uint64", "int64"]),
                 (-12, ["int8", "int16", "int32", "int64"]),
                 (-3000000000, ["int64"]),
                 (3037000499, ["uint32", "uint64", "int64"])]  # largest square in int64
        for value, widths in cases:
            for form in [None] + widths:
                with self.subTest(value=value, form=form):
                    arg = value if form is None else int_as(form, value)
                    self.assertOk(*self.client.apply("builtin.square", arg), value * value)

    def test_apply_square_overflow(self):
        # PROTOCOL.md: task_error when the square does not fit in 64 bits.
        for value in (2 ** 32, -(2 ** 32), 2 ** 63):
            with self.subTest(value=value):
                self.assertError(*self.client.apply("builtin.square", value), TASK_ERROR)

    def test_echo_roundtrip(self):
        value = {
            "str": "héllo wörld",
            "long": "x" * 70000,
            "ints": [0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536,
                     2 ** 32, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1],
            "nested": [[1, [2, [3, {"deep": [None]}]]], {}, []],
            "bin": bytes(range(256)),
            "bigbin": b"\xff" * 70000,
            "bools": [True, False],
            "nil": None,
            "float": 3.141592653589793,
            "floats": [0.0, -1.5, 1e300, -2.5e-300],
            "": "empty key",
        }
        self.assertOk(*self.client.apply("builtin.echo", value), value)
        for scalar in (None, True, False, 0, -1, "", b"", [], {}, 2.5):
            with self.subTest(scalar=scalar):
                error, result = self.client.apply("builtin.echo", scalar)
                self.assertIsNone(error)
                self.assertEqual(result, scalar)
                self.assertIs(type(result), type(scalar))

    def test_apply_type_error(self):
        error, result = self.client.apply("builtin.square", "seven")
        self.assertError(error, result, TYPE_ERROR)
        self.assertNotIn("index", error, "an apply error carries no index")
        for bad in (1.5, None, True, [7], {"a": 7}, b"7"):
            with self.subTest(arg=bad):
                self.assertError(*self.client.apply("builtin.square", bad), TYPE_ERROR)

    def test_no_function(self):
        for name in ("builtin.nosuch", "nosuchmodule.square", "square", ""):
            with self.subTest(name=name):
                self.assertError(*self.client.apply(name, 1), NO_FUNCTION)

    def test_no_method(self):
        self.assertError(*self.client.call("nosuch", []), NO_METHOD)
        self.assertError(*self.client.call("PING", []), NO_METHOD)
        # the connection stays usable
        self.assertOk(*self.client.call("ping", []), "pong")

    def test_bad_request_params(self):
        cases = [
            ("ping", [1]),
            ("apply", []),
            ("apply", ["builtin.square"]),
            ("apply", [7, 7]),
            ("apply", ["builtin.square", 7, {"timeout": 5}]),
            ("apply", ["builtin.square", 7, "notamap"]),
            ("apply", ["builtin.square", 7, {}, 1]),
            ("map", ["builtin.square"]),
            ("map", ["builtin.square", 7]),
            ("map", ["builtin.square", [1], {"nosuch": 1}]),
            ("map", ["builtin.square", [1], {"chunksize": 0}]),
            ("map", ["builtin.square", [1], {"chunksize": -1}]),
            ("map", ["builtin.square", [1], {"chunksize": "2"}]),
            ("map", ["builtin.square", [1], {"ordered": 1}]),
            ("status", [1]),
        ]
        for method, params in cases:
            with self.subTest(method=method, params=params):
                self.assertError(*self.client.call(method, params), BAD_REQUEST)
        self.assertOk(*self.client.call("ping", []), "pong")

    def test_apply_empty_options(self):
        self.assertOk(*self.client.apply("builtin.square", 6, {}), 36)

    def test_other_builtins(self):
        self.assertOk(*self.client.apply("builtin.sleep", 5), 5)
        self.assertOk(*self.client.apply("builtin.spin", 2), 2)
        error, pid = self.client.apply("builtin.pid", None)
        self.assertIsNone(error)
        self.assertIsInstance(pid, int)
        status = self.client.call("status", [])[1]
        self.assertIn(pid, [w["pid"] for w in status["workers"]])
        self.assertNotEqual(pid, status["pid"])

    def test_msgid_extremes(self):
        for msgid in (0, 2 ** 32, 2 ** 64 - 1):
            with self.subTest(msgid=msgid):
                msg_id = self.client.request("ping", [], msgid=msgid)
                response = self.client.wait_response(msg_id)
                self.assertEqual(response, [RESPONSE, msgid, None, "pong"])
        # a msgid in a wide encoding is answered with the same number
        self.client.send_raw(packb([REQUEST, int_as("uint64", 5), "ping", []]))
        self.assertEqual(self.client.read(), [RESPONSE, 5, None, "pong"])


class MapTest(DaemonTestCase):
    def test_map_default(self):
        n = 10000
        notes, error, result = self.client.map("builtin.square", list(range(n)), msgid=77)
        self.assertIsNone(error)
        self.assertEqual(result, {"items": n, "failed": 0})
        results = self.check_tiling(notes, n, msgid=77, ordered=True)
        self.assertEqual(results, [i * i for i in range(n)])
        for note in notes:
            self.assertEqual(note[3], [])
        # default chunksize: ceil(n / (4 * workers)), capped at 4096
        default = min(-(-n // (4 * WORKERS)), 4096)
        sizes = [len(note[2]) for note in notes]
        self.assertTrue(all(s <= default for s in sizes), sizes)
        self.assertTrue(all(s == default for s in sizes[:-1]), sizes)

    def test_map_unordered_chunksize(self):
        n = 10000
        notes, error, result = self.client.map("builtin.square", list(range(n)),
                                               {"ordered": False, "chunksize": 37})
        self.assertIsNone(error)
        self.assertEqual(result, {"items": n, "failed": 0})
        results = self.check_tiling(notes, n, ordered=False)
        self.assertEqual(results, [i * i for i in range(n)])
        for note in notes:
            self.assertGreaterEqual(len(note[2]), 1)
            self.assertLessEqual(len(note[2]), 37)
        self.assertGreaterEqual(len(notes), -(-n // 37))

    def test_map_ordered_chunksize(self):
        n = 1000
        notes, error, result = self.client.map("builtin.square", list(range(n)),
                                               {"ordered": True, "chunksize": 64})
        self.assertIsNone(error)
        self.assertEqual(result, {"items": n, "failed": 0})
        self.assertEqual(self.check_tiling(notes, n), [i * i for i in range(n)])
        self.assertTrue(all(len(note[2]) <= 64 for note in notes))

    def test_map_item_errors(self):
        n = 500
        bad = {0, 3, 37, 38, 250, 499}
        items = ["s%d" % i if i in bad else i for i in range(n)]
        for options in (None, {"chunksize": 10}, {"chunksize": 1, "ordered": False}):
            with self.subTest(options=options):
                notes, error, result = self.client.map("builtin.square", items, options)
                self.assertIsNone(error)
                self.assertEqual(result, {"items": n, "failed": len(bad)})
                results = self.check_tiling(notes, n, ordered=options is None or options.get("ordered", True))
                self.assertEqual(results, [None if i in bad else i * i for i in range(n)])
                error_indexes = []
                for _, first, chunk, errors in notes:
                    for err in errors:
                        self.assertEqual(err["code"], TYPE_ERROR, err)
                        self.assertIsInstance(err["message"], str)
                        idx = err["index"]
                        self.assertTrue(first <= idx < first + len(chunk),
                                        "error index %d outside its chunk at %d" % (idx, first))
                        self.assertIsNone(chunk[idx - first])
                        error_indexes.append(idx)
                self.assertEqual(sorted(error_indexes), sorted(bad))

    def test_map_empty(self):
        for options in (None, {"ordered": False}, {"chunksize": 5}):
            with self.subTest(options=options):
                notes, error, result = self.client.map("builtin.square", [], options)
                self.assertIsNone(error)
                self.assertEqual(result, {"items": 0, "failed": 0})
                for note in notes:  # if any, they cover nothing
                    self.assertEqual(note[2], [])
                    self.assertEqual(note[3], [])

    def test_map_no_function(self):
        notes, error, result = self.client.map("builtin.nosuch", [1, 2, 3])
        self.assertError(error, result, NO_FUNCTION)

    def test_map_echo_mixed(self):
        items = [None, True, "a", b"b", [1, [2]], {"k": 1.5}, -7, 2 ** 64 - 1]
        notes, error, result = self.client.map("builtin.echo", items, {"chunksize": 3})
        self.assertIsNone(error)
        self.assertEqual(result, {"items": len(items), "failed": 0})
        self.assertEqual(self.check_tiling(notes, len(items)), items)

    def test_map_split_across_recv(self):
        # a client that receives one byte per recv(): every message is split
        with Client(self.socket_path, recv_size=1) as c:
            notes, error, result = c.map("builtin.square", list(range(300)), {"chunksize": 100})
            self.assertIsNone(error)
            self.assertEqual(result, {"items": 300, "failed": 0})
            self.assertEqual(self.check_tiling(notes, 300), [i * i for i in range(300)])
            self.assertGreater(c.recv_calls, 300)

    def test_request_split_across_send(self):
        # the daemon must reassemble a request sent in small pieces
        data = packb([REQUEST, 9, "apply", ["builtin.echo", "z" * 1000]])
        for i in range(0, len(data), 7):
            self.client.send_raw(data[i:i + 7])
        self.assertEqual(self.client.read(), [RESPONSE, 9, None, "z" * 1000])


class StatusTest(DaemonTestCase):
    TOTALS = ("workers", "max_tasks_per_child", "tasks_done", "tasks_failed", "workers_started",
              "workers_recycled", "workers_died", "jobs_active", "jobs_done", "chunks_queued",
              "clients")

    def status(self):
        error, result = self.client.call("status", [])
        self.assertIsNone(error)
        self.assertIsInstance(result, dict)
        return result

    def test_status_keys(self):
        st = self.status()
        for key in ("version", "protocol", "pid", "state", "uptime_ms", "workers", "totals"):
            self.assertIn(key, st)
        self.assertIsInstance(st["version"], str)
        self.assertEqual(st["protocol"], 2)
        self.assertEqual(st["pid"], self.proc.pid)
        self.assertEqual(st["state"], "running")
        self.assertIsInstance(st["uptime_ms"], int)
        self.assertGreaterEqual(st["uptime_ms"], 0)
        self.assertIsInstance(st["workers"], list)
        self.assertEqual(len(st["workers"]), WORKERS)
        for w in st["workers"]:
            for key in ("pid", "state", "tasks_done", "job", "age_ms"):
                self.assertIn(key, w)
            self.assertIsInstance(w["pid"], int)
            self.assertIn(w["state"], ("starting", "idle", "busy", "exiting"))
            self.assertIsInstance(w["tasks_done"], int)
            self.assertTrue(w["job"] is None or isinstance(w["job"], int), w)
            self.assertIsInstance(w["age_ms"], int)
        # The fork server: a map while one runs (the build has one beside
        # mpoold), nil otherwise.
        self.assertIn("fork_server", st)
        fs = st["fork_server"]
        self.assertIsInstance(fs, dict)
        self.assertIsInstance(fs["pid"], int)
        self.assertNotEqual(fs["pid"], st["pid"])
        self.assertNotIn(fs["pid"], [w["pid"] for w in st["workers"]])
        self.assertEqual(set(fs), {"pid", "state"})
        self.assertIn(fs["state"], ("loading", "ready"))
        totals = st["totals"]
        for key in self.TOTALS:
            self.assertIn(key, totals)
            self.assertIsInstance(totals[key], int, key)
            self.assertNotIsInstance(totals[key], bool, key)
        self.assertEqual(totals["workers"], WORKERS)
        self.assertEqual(totals["max_tasks_per_child"], 0)
        self.assertGreaterEqual(totals["clients"], 1)
        self.assertGreaterEqual(totals["jobs_active"], 0)

    def test_status_uptime_grows(self):
        first = self.status()["uptime_ms"]
        self.client.apply("builtin.sleep", 20)
        self.assertGreater(self.status()["uptime_ms"], first)

    def test_tasks_done_grows(self):
        before = self.status()
        self.assertOk(*self.client.apply("builtin.square", 3), 9)
        notes, error, result = self.client.map("builtin.square", list(range(50)))
        self.assertIsNone(error)
        notes, error, result = self.client.map("builtin.square", [1, "x"])
        self.assertEqual(result, {"items": 2, "failed": 1})
        after = self.status()
        self.assertGreaterEqual(after["totals"]["tasks_done"], before["totals"]["tasks_done"] + 53)
        self.assertGreaterEqual(after["totals"]["tasks_failed"], before["totals"]["tasks_failed"] + 1)
        self.assertGreaterEqual(after["totals"]["jobs_done"], before["totals"]["jobs_done"] + 3)
        self.assertGreaterEqual(sum(w["tasks_done"] for w in after["workers"]),
                                sum(w["tasks_done"] for w in before["workers"]) + 53)

    def test_busy_worker_shows_job(self):
        msgid = self.client.request("apply", ["builtin.sleep", 1500])
        with Client(self.socket_path) as other:
            deadline = time.monotonic() + 1.0
            busy = []
            while not busy and time.monotonic() < deadline:
                st = other.call("status", [])[1]
                busy = [w for w in st["workers"] if w["state"] == "busy"]
            self.assertTrue(busy, "no worker reported busy during a 1.5 s sleep")
            self.assertIsInstance(busy[0]["job"], int)
            self.assertGreaterEqual(st["totals"]["jobs_active"], 1)
        self.assertEqual(self.client.wait_response(msgid), [RESPONSE, msgid, None, 1500])


class ProcessTest(DaemonTestCase):
    """Supervised processes (PROTOCOL.md "Supervised processes"), protocol 2:
    spawn says its protocol, and daemon has Python's meaning."""

    def spawn(self, client, fn, arg, **options):
        options.setdefault("protocol", 2)
        error, result = client.call("spawn", [fn, arg, options])
        self.assertIsNone(error, error)
        self.assertIsInstance(result["id"], int)
        self.assertIsInstance(result["pid"], int)
        return result["id"]

    def listed(self, pid_id):
        error, procs = self.client.call("processes", [])
        self.assertIsNone(error)
        return [p for p in procs if p["id"] == pid_id]

    def test_spawn_without_protocol_is_refused(self):
        # A client of protocol 1 would mean the opposite by "daemon".
        before = len(self.client.call("processes", [])[1])
        for params in (["builtin.sleep", 30000],
                       ["builtin.sleep", 30000, {"daemon": True}],
                       ["builtin.sleep", 30000, {"protocol": 1, "daemon": False}]):
            with self.subTest(params=params):
                error, result = self.client.call("spawn", params)
                self.assertError(error, result, BAD_REQUEST)
                self.assertIn("protocol", error["message"])
        error, procs = self.client.call("processes", [])
        self.assertEqual(len(procs), before, "a refused spawn ran")

    def test_nondaemon_outlives_its_client(self):
        with Client(self.socket_path) as c:
            pid_id = self.spawn(c, "builtin.sleep", 300)
        # the client is gone; the process runs to completion and its
        # result waits for a join (timeout_ms 0: wait as long as it runs)
        error, info = self.client.call("join", [pid_id, {"timeout_ms": 0}])
        self.assertIsNone(error, error)
        self.assertEqual(info["state"], "exited")
        self.assertEqual(info["exitcode"], 0)
        self.assertEqual(info["result"], 300)
        self.assertIs(info["daemon"], False)
        # and again: the outcome is kept
        error, info = self.client.call("join", [pid_id])
        self.assertEqual(info["result"], 300)

    def test_daemon_dies_with_its_client(self):
        with Client(self.socket_path) as c:
            pid_id = self.spawn(c, "builtin.sleep", 30000, daemon=True)
            error, alive = c.call("is_alive", [pid_id])
            self.assertIs(alive, True)
        deadline = time.monotonic() + 10.0
        while self.listed(pid_id):
            self.assertLess(time.monotonic(), deadline, "the daemon process outlived its client")
            time.sleep(0.02)  # polling interval, not synchronisation
        error, result = self.client.call("join", [pid_id])
        self.assertError(error, result, NOT_FOUND)

    def test_join_timeout_range(self):
        pid_id = self.spawn(self.client, "builtin.sleep", 2000)
        error, info = self.client.call("join", [pid_id, {"timeout_ms": 50}])
        self.assertIsNone(error)
        self.assertEqual(info["state"], "running")
        self.assertIsNone(info["exitcode"])
        for bad in (86400001, -1, "5"):
            with self.subTest(timeout_ms=bad):
                self.assertError(*self.client.call("join", [pid_id, {"timeout_ms": bad}]),
                                 BAD_REQUEST)
        self.assertOk(*self.client.call("kill_process", [pid_id]), True)
        error, info = self.client.call("join", [pid_id, {"timeout_ms": 86400000}])
        self.assertEqual(info["exitcode"], -9)

    def test_names(self):
        # 64 characters, not bytes; printable UTF-8 only
        pid_id = self.spawn(self.client, "builtin.echo", 1, name="é" * 64)
        self.assertEqual(self.listed(pid_id)[0]["name"], "é" * 64)
        for bad in ("é" * 65, "", "a\u009bb", "a\nb", "a\u202eb", Raw(b"\xa3\xc2\xa0\xff")):
            with self.subTest(name=bad):
                error, result = self.client.call(
                    "spawn", ["builtin.echo", 1, {"protocol": 2, "name": bad}])
                self.assertError(error, result, BAD_REQUEST)

    def test_spawn_errors(self):
        self.assertError(*self.client.call("spawn", ["builtin.nosuch", 1, {"protocol": 2}]),
                         NO_FUNCTION)
        deep = 1
        for _ in range(30):
            deep = [deep]
        self.assertError(*self.client.call("spawn", ["builtin.echo", deep, {"protocol": 2}]),
                         LIMIT)
        self.assertError(*self.client.call("spawn", ["builtin.echo", 1, {"protocol": 2,
                                                                        "nosuch": 1}]),
                         BAD_REQUEST)

    def test_status_process_limits(self):
        error, st = self.client.call("status", [])
        lim = st["process_limits"]
        for key in ("max_processes", "max_processes_per_uid", "admin_processes",
                    "max_kept_processes", "max_kept_bytes", "running", "kept", "limit_hits",
                    "dropped_unjoined"):
            self.assertIsInstance(lim.get(key), int, key)


class PipelineTest(DaemonTestCase):
    def test_pipelined_applies(self):
        msgids = [1000 + 17 * i for i in range(20)]
        data = b"".join(packb([REQUEST, m, "apply", ["builtin.square", i]])
                        for i, m in enumerate(msgids))
        self.client.send_raw(data)  # all 20 before reading anything
        responses = {}
        for _ in range(20):
            msg = self.client.read()
            self.assertEqual(msg[0], RESPONSE)
            self.assertNotIn(msg[1], responses, "two responses for one msgid")
            responses[msg[1]] = msg
        self.assertEqual(sorted(responses), sorted(msgids))
        for i, m in enumerate(msgids):
            self.assertEqual(responses[m], [RESPONSE, m, None, i * i])

    def test_pipelined_mixed(self):
        # a slow apply, a map and a ping in flight together; the ping may
        # overtake the others; map notifications precede the map's response
        self.client.request("apply", ["builtin.sleep", 300], msgid=1)
        self.client.request("map", ["builtin.square", list(range(100)), {"chunksize": 10}], msgid=2)
        self.client.request("ping", [], msgid=3)
        seen_responses = set()
        map_notes = []
        while len(seen_responses) < 3:
            msg = self.client.read()
            if msg[0] == NOTIFICATION:
                self.assertEqual(msg[1], "result")
                self.assertEqual(msg[2][0], 2)
                self.assertNotIn(2, seen_responses, "notification after its response")
                map_notes.append(msg[2])
            else:
                self.assertEqual(msg[0], RESPONSE)
                self.assertNotIn(msg[1], seen_responses)
                seen_responses.add(msg[1])
                expected = {1: 300, 2: {"items": 100, "failed": 0}, 3: "pong"}[msg[1]]
                self.assertEqual(msg[2:], [None, expected])
        self.assertEqual(self.check_tiling(map_notes, 100), [i * i for i in range(100)])

    def test_reused_msgid(self):
        # "A msgid must not be reused while its request is still open on the
        # same connection (answered with bad_request)."
        for second in (["apply", ["builtin.square", 3]],
                       ["map", ["builtin.square", [1, 2]]]):
            with self.subTest(second=second[0]):
                self.client.request("apply", ["builtin.sleep", 300], msgid=42)
                self.client.request(*second, msgid=42)  # 42 still open
                first = self.client.read()
                self.assertEqual(first[:2], [RESPONSE, 42])
                self.assertError(first[2], first[3], BAD_REQUEST)
                self.assertEqual(self.client.read(), [RESPONSE, 42, None, 300])
        # closed now: reusable
        self.assertOk(*self.client.call("apply", ["builtin.square", 4], msgid=42), 16)

    def test_reused_msgid_instant_methods(self):
        # The same rule for ping and status: the document makes no exception
        # for them (mpoold 0.1.0 answers them normally, so the client sees two
        # responses carrying msgid 42 and cannot tell them apart).
        for method in ("ping", "status"):
            with self.subTest(method=method):
                self.client.request("apply", ["builtin.sleep", 300], msgid=42)
                self.client.request(method, [], msgid=42)
                first = self.client.read()
                second = self.client.read()
                self.assertEqual(second, [RESPONSE, 42, None, 300])
                self.assertEqual(first[:2], [RESPONSE, 42])
                self.assertError(first[2], first[3], BAD_REQUEST)

    def test_connections_independent(self):
        with Client(self.socket_path) as other:
            self.client.request("ping", [], msgid=5)
            other.request("ping", [], msgid=5)  # same msgid, other connection
            self.assertEqual(other.read(), [RESPONSE, 5, None, "pong"])
            self.assertEqual(self.client.read(), [RESPONSE, 5, None, "pong"])


class MalformedTest(DaemonTestCase):
    def expect_error_then_close(self, client):
        msg = client.read()
        self.assertEqual(msg[0], NOTIFICATION, msg)
        self.assertEqual(msg[1], "error")
        self.assertEqual(len(msg[2]), 1)
        self.assertIsInstance(msg[2][0], dict)
        self.assertIn("code", msg[2][0])
        self.assertIsInstance(msg[2][0]["message"], str)
        with self.assertRaises(ConnectionClosed):
            client.read()
        return msg[2][0]

    def test_invalid_byte(self):
        self.client.send_raw(b"\xc1")
        self.expect_error_then_close(self.client)
        # other clients are unaffected
        with Client(self.socket_path) as other:
            self.assertOk(*other.call("ping", []), "pong")

    def test_not_rpc(self):
        for value in ("hello", [0, 1, "ping"], [5, 1, "ping", []], {"a": 1}, [2, "x"]):
            with self.subTest(value=value), Client(self.socket_path) as c:
                c.send(value)
                self.expect_error_then_close(c)

    def test_malformed_with_msgid(self):
        for params in ("notarray", 7, None):
            with self.subTest(params=params):
                self.client.send([REQUEST, 11, "ping", params])
                msg = self.client.read()
                self.assertEqual(msg[:2], [RESPONSE, 11])
                self.assertError(msg[2], msg[3], BAD_REQUEST)
        self.client.send([REQUEST, 12, 7, []])  # method not a string
        msg = self.client.read()
        self.assertEqual(msg[:2], [RESPONSE, 12])
        self.assertError(msg[2], msg[3], BAD_REQUEST)
        self.assertOk(*self.client.call("ping", []), "pong")

    @staticmethod
    def nested(levels):
        value = 1
        for _ in range(levels):
            value = [value]
        return value

    def test_depth_limit_map_item(self):
        # "an item ... may nest 29 levels deep"
        notes, error, result = self.client.map("builtin.echo", [self.nested(29)])
        self.assertOk(error, result, {"items": 1, "failed": 0})
        self.assertEqual(self.check_tiling(notes, 1), [self.nested(29)])
        with Client(self.socket_path) as c:
            c.request("map", ["builtin.echo", [self.nested(30)]])
            self.assertEqual(self.expect_error_then_close(c)["code"], LIMIT)
        # empty containers count too: 29 levels of arrays, innermost empty
        notes, error, result = self.client.map("builtin.echo", [self._empty(29)])
        self.assertOk(error, result, {"items": 1, "failed": 0})
        with Client(self.socket_path) as c:
            c.request("map", ["builtin.echo", [self._empty(30)]])
            self.assertEqual(self.expect_error_then_close(c)["code"], LIMIT)

    @staticmethod
    def _empty(levels):
        value = []
        for _ in range(levels - 1):
            value = [value]
        return value

    def test_depth_limit_apply_argument(self):
        # "... or an apply argument may nest 29 levels deep". Envelope and
        # params are only two levels, so a 30-level argument still fits the
        # 32-level message limit: mpoold answers it with a `limit` error
        # response and keeps the connection (not in PROTOCOL.md's table).
        self.assertOk(*self.client.apply("builtin.echo", self.nested(29)), self.nested(29))
        self.assertError(*self.client.apply("builtin.echo", self.nested(30)), LIMIT)
        self.assertOk(*self.client.call("ping", []), "pong")
        # 31 levels make a 33-level message: error notification, then close
        with Client(self.socket_path) as c:
            c.request("apply", ["builtin.echo", self.nested(31)])
            self.assertEqual(self.expect_error_then_close(c)["code"], LIMIT)


class LimitsTest(DaemonTestCase):
    """The limits table, with small limits."""
    MAX_FRAME, MAX_ITEMS, MAX_JOBS, MAX_CLIENTS = 4096, 100, 3, 4
    DAEMON_ARGS = ("--max-frame", str(MAX_FRAME), "--max-items", str(MAX_ITEMS),
                   "--max-jobs", str(MAX_JOBS), "--max-clients", str(MAX_CLIENTS))

    @staticmethod
    def echo_message_of_size(size):
        for k in range(size):
            data = packb([REQUEST, 1, "apply", ["builtin.echo", b"x" * k]])
            if len(data) == size:
                return data, b"x" * k
        raise AssertionError("no echo message of %d bytes" % size)

    def test_max_frame(self):
        for size in (self.MAX_FRAME - 1, self.MAX_FRAME):
            with self.subTest(size=size):
                data, arg = self.echo_message_of_size(size)
                self.client.send_raw(data)
                self.assertEqual(self.client.read(), [RESPONSE, 1, None, arg])
        with Client(self.socket_path) as c:
            c.send_raw(self.echo_message_of_size(self.MAX_FRAME + 1)[0])
            self.assertEqual(MalformedTest.expect_error_then_close(self, c)["code"], LIMIT)
        self.assertOk(*self.client.call("ping", []), "pong")

    def test_max_items(self):
        notes, error, result = self.client.map("builtin.square", list(range(self.MAX_ITEMS)))
        self.assertOk(error, result, {"items": self.MAX_ITEMS, "failed": 0})
        notes, error, result = self.client.map("builtin.square", list(range(self.MAX_ITEMS + 1)))
        self.assertEqual(notes, [])
        self.assertError(error, result, LIMIT)
        self.assertOk(*self.client.call("ping", []), "pong")

    def test_max_jobs(self):
        for i in range(self.MAX_JOBS):
            self.client.request("apply", ["builtin.sleep", 300], msgid=10 + i)
        self.client.request("apply", ["builtin.square", 2], msgid=20)
        responses = {}
        while len(responses) < self.MAX_JOBS + 1:
            msg = self.client.read()
            responses[msg[1]] = msg
        self.assertError(responses[20][2], responses[20][3], LIMIT)
        for i in range(self.MAX_JOBS):
            self.assertEqual(responses[10 + i], [RESPONSE, 10 + i, None, 300])
        self.assertOk(*self.client.apply("builtin.square", 2), 4)

    def wait_clients(self, n):
        deadline = time.monotonic() + 10
        while True:
            clients = self.client.call("status", [])[1]["totals"]["clients"]
            if clients == n or time.monotonic() > deadline:
                return clients
            time.sleep(0.01)

    def test_max_clients(self):
        # earlier tests' connections may still be closing: wait until only ours is left
        self.assertEqual(self.wait_clients(1), 1)
        others = [Client(self.socket_path) for _ in range(self.MAX_CLIENTS - 1)]
        try:
            for c in others:
                self.assertOk(*c.call("ping", []), "pong")
            with Client(self.socket_path) as extra:
                # "connection closed at once" (mpoold says why first: tolerated)
                try:
                    msg = extra.read()
                    self.assertEqual(msg[:2], [NOTIFICATION, "error"])
                    self.assertEqual(msg[2][0]["code"], LIMIT)
                    with self.assertRaises(ConnectionClosed):
                        extra.read()
                except (ConnectionClosed, ConnectionResetError):
                    pass
            for c in others:  # the others are not affected
                self.assertOk(*c.call("ping", []), "pong")
        finally:
            for c in others:
                c.close()
        self.assertEqual(self.wait_clients(1), 1)
        with Client(self.socket_path) as again:
            self.assertOk(*again.call("ping", []), "pong")


def _process_gone(pid):
    """True if pid no longer exists (or is a zombie no longer ours to reap)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class TerminateTest(DaemonTestCase):
    def test_terminate(self):
        workers = [w["pid"] for w in self.client.call("status", [])[1]["workers"]]
        with Client(self.socket_path) as a, Client(self.socket_path) as b:
            a.request("apply", ["builtin.sleep", 5000], msgid=1)
            b.request("map", ["builtin.sleep", [100] * 40, {"chunksize": 1}], msgid=2)
            # wait (bounded) until both jobs are running
            deadline = time.monotonic() + 5
            while self.client.call("status", [])[1]["totals"]["jobs_active"] < 2:
                self.assertLess(time.monotonic(), deadline, "jobs never became active")
                time.sleep(0.01)
            self.assertOk(*self.client.call("terminate", []), True)
            msg = a.read()
            self.assertEqual(msg[:2], [RESPONSE, 1])
            self.assertError(msg[2], msg[3], TERMINATED)
            notes = []
            msg = b.wait_response(2, notes)
            self.assertError(msg[2], msg[3], TERMINATED)
            self.assertLess(sum(len(n[2][2]) for n in notes), 40)
            for c in (a, b, self.client):
                with self.assertRaises((ConnectionClosed, ConnectionResetError)):
                    c.read()
        self.proc.wait(timeout=10)  # "and mpoold exits"
        deadline = time.monotonic() + 5
        while not all(_process_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(all(_process_gone(pid) for pid in workers), "a worker survived terminate")


class ShutdownTest(DaemonTestCase):
    def test_sigterm_drains(self):
        workers = [w["pid"] for w in self.client.call("status", [])[1]["workers"]]
        with Client(self.socket_path) as a:
            a.request("apply", ["builtin.sleep", 800], msgid=1)
            a.request("map", ["builtin.sleep", [50] * 10, {"chunksize": 1}], msgid=2)
            deadline = time.monotonic() + 5
            while self.client.call("status", [])[1]["totals"]["jobs_active"] < 2:
                self.assertLess(time.monotonic(), deadline, "jobs never became active")
                time.sleep(0.01)
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while True:
                status = self.client.call("status", [])
                if status[1] and status[1]["state"] == "draining":
                    break
                self.assertLess(time.monotonic(), deadline, "never draining: %r" % (status,))
                time.sleep(0.01)
            # new work on an open connection: shutting_down
            self.assertError(*self.client.apply("builtin.square", 2), SHUTTING_DOWN)
            notes, error, result = self.client.map("builtin.square", [1, 2])
            self.assertEqual(notes, [])
            self.assertError(error, result, SHUTTING_DOWN)
            # new connections: refused
            with self.assertRaises(OSError):
                Client(self.socket_path, timeout=2).close()
            # open requests finish
            notes = []
            responses = {}
            while len(responses) < 2:
                msg = a.read()
                if msg[0] == NOTIFICATION:
                    self.assertNotIn(2, responses)
                    notes.append(msg[2])
                else:
                    responses[msg[1]] = msg
            self.assertEqual(responses[1], [RESPONSE, 1, None, 800])
            self.assertEqual(responses[2], [RESPONSE, 2, None, {"items": 10, "failed": 0}])
            self.assertEqual(self.check_tiling(notes, 10), [50] * 10)
        self.assertEqual(self.proc.wait(timeout=10), 0)  # "then exits 0"
        deadline = time.monotonic() + 5
        while not all(_process_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(all(_process_gone(pid) for pid in workers), "a worker outlived mpoold")


class ExamplesTest(DaemonTestCase):
    """The byte-by-byte examples of PROTOCOL.md."""

    @staticmethod
    def hexbytes(text):
        return bytes.fromhex(text)

    def test_example_apply(self):
        request = self.hexbytes("94 00 01 a5 61 70 70 6c 79 92 ae 62 75 69 6c 74 69 6e 2e 73"
                                " 71 75 61 72 65 07")
        self.assertEqual(unpackb(request), [0, 1, "apply", ["builtin.square", 7]])
        self.assertEqual(packb([0, 1, "apply", ["builtin.square", 7]]), request)
        self.client.send_raw(request)
        value, raw = self.client.read_raw()
        self.assertEqual(raw.hex(" "), "94 01 01 c0 31")
        self.assertEqual(value, [1, 1, None, 49])

    def test_example_map(self):
        request = self.hexbytes("94 00 02 a3 6d 61 70 93 ae 62 75 69 6c 74 69 6e 2e 73 71 75 61 72 65"
                                " 93 01 02 03 81 a9 63 68 75 6e 6b 73 69 7a 65 02")
        self.assertEqual(unpackb(request),
                         [0, 2, "map", ["builtin.square", [1, 2, 3], {"chunksize": 2}]])
        expected = ["93 02 a6 72 65 73 75 6c 74 94 02 00 92 01 04 90",
                    "93 02 a6 72 65 73 75 6c 74 94 02 02 91 09 90",
                    "94 01 02 c0 82 a5 69 74 65 6d 73 03 a6 66 61 69 6c 65 64 00"]
        self.assertEqual([unpackb(self.hexbytes(e)) for e in expected],
                         [[2, "result", [2, 0, [1, 4], []]], [2, "result", [2, 2, [9], []]],
                          [1, 2, None, {"items": 3, "failed": 0}]])
        self.client.send_raw(request)
        got = [self.client.read_raw()[1].hex(" ") for _ in expected]
        self.assertEqual(got, expected)

    def test_example_type_error(self):
        request = self.hexbytes("94 00 03 a5 61 70 70 6c 79 92 ae 62 75 69 6c 74 69 6e 2e 73"
                                " 71 75 61 72 65 a1 78")
        self.assertEqual(unpackb(request), [0, 3, "apply", ["builtin.square", "x"]])
        self.client.send_raw(request)
        value, raw = self.client.read_raw()
        prefix = self.hexbytes("94 01 03 82 a4 63 6f 64 65 05 a7 6d 65 73 73 61 67 65")
        self.assertEqual(raw[:len(prefix)].hex(" "), prefix.hex(" "))
        # <str>: one MessagePack string, then c0 (nil result) ends the message
        message, end = unpack_from(raw, len(prefix))
        self.assertIsInstance(message, str)
        self.assertTrue(message)
        self.assertEqual(raw[end:], b"\xc0")
        self.assertEqual(value, [1, 3, {"code": 5, "message": message}, None])


if __name__ == "__main__":
    unittest.main(verbosity=2)
