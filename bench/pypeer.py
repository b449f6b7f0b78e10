#!/usr/bin/env python3
"""pypeer: the Python side of mpool's benchmark.

Runs the same workloads as bench/mpbench through multiprocessing.Pool and
prints one JSON object on stdout.  The task functions, from
bench/pytasks.py, mirror mpoold's builtins: square (int -> int), echo
(bytes -> bytes), spin (busy loop of ms milliseconds); mpoold runs the same
file's functions in the Python figures.  Pool uses the fork start method (Linux's default in
3.11) and as many processes as mpoold has workers.

    pypeer.py FIGURE [--workers N] [--reps R] [--n N]

FIGURE is one of map, apply, pipeline, recycle, spin, echo.  Each prints
{"figure": ..., "reps": [...], ...}; the runner takes medians.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time


# The same functions mpoold's py module runs in the Python figures.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytasks import echo, spin, square  # noqa: E402


def warm(pool):
    """Every worker has run a task before the clock starts."""
    pool.map(square, range(64), chunksize=1)


def fig_map(a):
    data = list(range(a.n))
    reps = []
    with mp.Pool(a.workers) as pool:
        warm(pool)
        for _ in range(a.reps):
            t0 = time.perf_counter()
            out = pool.map(square, data)
            dt = time.perf_counter() - t0
            assert len(out) == a.n and out[-1] == (a.n - 1) ** 2
            reps.append(a.n / dt)
    return {"unit": "items/s", "n": a.n, "reps": reps}


def fig_apply(a):
    reps = []
    with mp.Pool(a.workers) as pool:
        warm(pool)
        for _ in range(a.reps):
            lat = []
            for i in range(a.n):
                t0 = time.perf_counter_ns()
                r = pool.apply(square, (7,))
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
                assert r == 49
            lat.sort()
            reps.append({"p50": lat[len(lat) // 2], "p99": lat[len(lat) * 99 // 100]})
    return {"unit": "us", "n": a.n, "reps": reps}


def fig_pipeline(a):
    reps = []
    with mp.Pool(a.workers) as pool:
        warm(pool)
        for _ in range(a.reps):
            t0 = time.perf_counter()
            rs = [pool.apply_async(square, (i,)) for i in range(a.n)]
            for i, r in enumerate(rs):
                assert r.get() == i * i
            reps.append(a.n / (time.perf_counter() - t0))
    return {"unit": "tasks/s", "n": a.n, "reps": reps}


def fig_recycle(a):
    # maxtasksperchild counts chunks: chunksize=1 makes every task a chunk,
    # so each worker process runs exactly one task.
    reps = []
    for _ in range(a.reps):
        with mp.Pool(a.workers, maxtasksperchild=1) as pool:
            pool.map(square, range(a.workers), chunksize=1)
            t0 = time.perf_counter()
            out = pool.map(square, range(a.n), chunksize=1)
            reps.append(a.n / (time.perf_counter() - t0))
            assert out[-1] == (a.n - 1) ** 2
    return {"unit": "tasks/s", "n": a.n, "reps": reps}


def fig_spin(a):
    reps = []
    with mp.Pool(a.workers) as pool:
        warm(pool)
        for _ in range(a.reps):
            t0 = time.perf_counter()
            pool.map(spin, [1] * a.n)
            dt = time.perf_counter() - t0
            ideal = a.n * 0.001 / a.workers
            reps.append(100.0 * ideal / dt)
    return {"unit": "%", "n": a.n, "reps": reps}


def fig_echo(a):
    base = bytes(range(256)) * 4
    # Distinct objects: pickle would send one shared object only once.
    data = [i.to_bytes(4, "little") + base[4:] for i in range(a.n)]
    reps = []
    with mp.Pool(a.workers) as pool:
        warm(pool)
        for _ in range(a.reps):
            t0 = time.perf_counter()
            out = pool.map(echo, data)
            dt = time.perf_counter() - t0
            assert len(out) == a.n and out[-1] == data[-1]
            reps.append(a.n * 1024 / dt / 1e6)
    return {"unit": "MB/s", "n": a.n, "reps": reps}


FIGURES = {
    "map": (fig_map, 1_000_000),
    "apply": (fig_apply, 3000),
    "pipeline": (fig_pipeline, 30000),
    "recycle": (fig_recycle, 400),
    "spin": (fig_spin, 1000),
    "echo": (fig_echo, 50000),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", choices=sorted(FIGURES))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=0)
    a = ap.parse_args()
    fn, default_n = FIGURES[a.figure]
    a.n = a.n or default_n
    mp.set_start_method("fork")
    out = fn(a)
    out.update(figure=a.figure, workers=a.workers, python=sys.version.split()[0])
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
