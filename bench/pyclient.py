#!/usr/bin/env python3
"""bench/pyclient.py: figures of the mpool Python client (python/mpool).

    pyclient.py imap --socket PATH --n N

streams N integers from a generator through Pool.imap(builtin.square) and
prints one JSON line: the items per second, this process's peak RSS
(VmHWM, MiB), how far ahead of the results the generator was read at most,
and whether the results were right.  bench/run starts it against its own
mpoold and reads the daemon's peak RSS itself; the python suite
(python/tests/test_mpool.py) runs it to check both against 64 MiB.

It imports mpool from this source tree (python/) unless told otherwise by
PYTHONPATH, so that it measures the tree it is part of.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import mpool  # noqa: E402  (after the path)


def vmhwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def imap(a):
    n = a.n
    pulled = 0

    def gen():
        nonlocal pulled
        for i in range(n):
            pulled = i + 1
            yield i
    count = total = max_ahead = 0
    with mpool.Pool(a.socket) as p:
        t = time.monotonic()
        for r in p.imap("builtin.square", gen(), a.chunksize):
            if count & 0xFFFF == 0:
                max_ahead = max(max_ahead, pulled - count)
            total += r
            count += 1
        seconds = time.monotonic() - t
    return {"figure": "imap", "n": n, "seconds": round(seconds, 3),
            "items_per_s": round(n / seconds) if seconds else None,
            "client_vmhwm_mib": round(vmhwm_mib(), 1), "max_ahead": max_ahead,
            "correct": count == n and total == (n - 1) * n * (2 * n - 1) // 6}


def main():
    ap = argparse.ArgumentParser(description="mpool Python client figures")
    ap.add_argument("figure", choices=["imap"])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--n", type=int, default=10000000)
    ap.add_argument("--chunksize", type=int, default=None)
    a = ap.parse_args()
    print(json.dumps({"imap": imap}[a.figure](a)))


if __name__ == "__main__":
    main()
