"""Run one benchmark cell in this (fresh) process and write its result as JSON lines.

    python _cell.py '{"system": ..., "workload": ..., "n": ..., "cap": ..., "out": PATH}'

A tiny warm-up run of the same workload comes first (imports, caches, a server's start-up), then
the measured run: wall time, the answer checked against the expected one, and peak resident
memory above the pre-run baseline (Linux: VmHWM after resetting it through clear_refs).
suite.py starts this in a new session and kills the session at the cell's time budget.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from _systems import SYSTEMS
from _workloads import build, expected, ideal_seconds

MEMORY_LIMIT = 8 * 1024**3  # a runaway cell fails with MemoryError instead of eating the box


def status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> int | None:
    """Reset the resident high-water mark; return the current resident size in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    rss = status_kb("VmRSS")
    return None if rss is None else rss * 1024


def emit(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = spec["out"]
    emit(out, {"event": "started", "pid": os.getpid(), "wall": time.time()})
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    system = SYSTEMS[spec["system"]]
    cap = int(spec["cap"])
    dag = build(spec["workload"], int(spec["n"]))
    answer_expected = expected(dag)

    warm = build(spec["workload"], min(8, int(spec["n"])))
    got, _ = system.prepare(warm, cap)()
    if got != expected(warm):
        raise AssertionError(f"warm-up answered {got!r}, expected {expected(warm)!r}")

    go = system.prepare(dag, cap)
    gc.collect()
    base = reset_peak()
    emit(out, {"event": "timing", "wall": time.time()})
    start = time.perf_counter()
    answer, extra = go()
    seconds = time.perf_counter() - start
    hwm = status_kb("VmHWM")
    peak = None if base is None or hwm is None else max(0, hwm * 1024 - base)
    if answer != answer_expected:
        raise AssertionError(f"answered {answer!r}, expected {answer_expected!r}")
    ideal = ideal_seconds(dag, cap)
    if ideal is not None:
        extra["ideal_s"] = ideal
    result = {
        "event": "result",
        "status": "ok",
        "seconds": seconds,
        "nodes": dag.n,
        "peak_bytes": peak,
        "answer": answer,
        "extra": extra,
    }
    emit(out, result)
    if system.rerun:  # the same graph again: its own budget, from a new timing event
        emit(out, {"event": "timing", "wall": time.time()})
        start = time.perf_counter()
        again, _ = go()
        rerun_s = time.perf_counter() - start
        if again != answer_expected:
            raise AssertionError(f"second run answered {again!r}, expected {answer_expected!r}")
        emit(out, {"event": "rerun", "seconds": rerun_s})


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # the parent reads this; then the process exits non-zero
        if len(sys.argv) > 1:
            emit(
                json.loads(sys.argv[1])["out"],
                {
                    "event": "result",
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-3000:],
                },
            )
        raise
