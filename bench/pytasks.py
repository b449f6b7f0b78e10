"""The benchmark's task functions in Python, run by both sides: by mpoold's
workers through the py module (as py.pytasks.square, ...) and by the
Python peer's multiprocessing.Pool (bench/pypeer.py imports them from
here), so the two sides run the same code.  They mirror mpoold's builtins.
"""
import time


def square(x):
    return x * x


def echo(b):
    return b


def spin(ms):
    """A busy loop of ms milliseconds."""
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass
    return ms
