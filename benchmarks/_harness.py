"""Shared benchmark plumbing: time one async case in a fresh trio.run, print ratios to a floor."""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, trio {trio.__version__}, "
        f"{os.cpu_count()} cpus, {platform.machine()}"
    )


def timed(fn: Callable[[], Awaitable[Any]], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time over `repeat` fresh trio.run calls, and the last answer."""
    best = float("inf")
    answer: Any = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        answer = trio.run(fn)
        best = min(best, time.perf_counter() - start)
    return best, answer


def report(title: str, n: int, rows: list[tuple[str, float]], floor: str) -> None:
    """Print per-node µs and each row's ratio to the named floor row."""
    base = dict(rows)[floor]
    print(f"\n{title}  (n={n:,})")
    for name, seconds in rows:
        per = seconds / n * 1e6
        mark = "  <- floor" if name == floor else f"  {seconds / base:5.2f}x floor"
        print(f"  {name:44} {seconds * 1000:9.1f} ms  {per:8.2f} us/node{mark}")


def header(what: str) -> None:
    print(f"{what}\nmachine: {machine()}\nargv: {' '.join(sys.argv[1:]) or '(defaults)'}")
