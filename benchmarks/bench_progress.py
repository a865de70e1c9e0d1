"""The CLI's live progress display must not slow a run: a 10,000-node graph with and without it.

Each graph (a static 10,000-node fan-out + fan-in, and a graph_fn mapping a tool over 10,000
items) is run five ways in the same process, in interleaved rounds, timing the best CPU time
of each (the machine is shared; CPU time does not count other processes' load):

- `run_async` alone (the floor),
- `run_async` with a listener that does nothing (what run events cost by themselves),
- the CLI's run driver with the progress listener and a display that draws nothing,
- the same with the plain-lines display (`trioflow run ... 2>log`),
- the same with the `rich` live display, drawing to a terminal-like console at 10 Hz.

    python benchmarks/bench_progress.py [--smoke] [--n 10000]
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import math
import os
import sys
import time
from typing import Any

import trio
from _harness import header, report
from rich.console import Console

import trioflow
from trioflow._cli_run import _drive
from trioflow._live import LiveDisplay
from trioflow._progress import PlainDisplay, Progress


@trioflow.tool(outputs=["y"])
async def inc(x: int) -> int:
    return x + 1


@trioflow.tool(outputs=["total"])
async def total(xs: list[int]) -> int:
    return sum(xs)


@trioflow.graphify(name="wide", outputs=["total"])
def wide(n: int) -> Any:
    outs = [inc(x=i) for i in range(n)]
    return total(xs=[o.y for o in outs]).total


@trioflow.graph_fn(name="mapped", outputs=["total"])
async def mapped(n: int) -> int:
    results = await trioflow.map(inc, range(n))
    return sum(r["y"] for r in results)


class NoDisplay:
    interval = 0.1

    def update(self, progress: Progress, now: float, final: bool = False) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    n = 200 if args.smoke else args.n
    repeat = 1 if args.smoke else 15
    header("CLI progress display overhead")
    options = {"max_concurrency": math.inf, "on_error": "fail_fast", "timeout": None}
    expected = {"total": sum(range(n)) + n}
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole benchmark
    for graph in (wide, mapped):
        inputs = {"n": n}

        async def floor(graph: Any = graph, inputs: dict[str, int] = inputs) -> Any:
            result = await trioflow.run_async(graph, inputs, record=True, **options)
            return result.outputs

        async def driven(make: Any, graph: Any = graph, inputs: dict[str, int] = inputs) -> Any:
            progress = Progress()
            display = make()
            if isinstance(display, LiveDisplay):
                with display:
                    outcome = await _drive(graph, inputs, dict(options), progress, display)
            else:
                outcome = await _drive(graph, inputs, dict(options), progress, display)
            assert outcome.result is not None, outcome.error
            # (not outcome.result.record: the record is built on first read, and the floor
            # does not read it either)
            assert progress.done >= n and progress.failed == 0
            return outcome.result.outputs

        def live() -> LiveDisplay:
            console = Console(file=io.StringIO(), force_terminal=True, width=100)
            return LiveDisplay(console, "bench")

        async def noop(graph: Any = graph, inputs: dict[str, int] = inputs) -> Any:
            result = await trioflow.run_async(
                graph, inputs, record=True, on_event=lambda event: None, **options
            )
            return result.outputs

        cases = [
            ("run_async (no listener)", floor),
            ("run_async, a listener doing nothing", noop),
            ("progress listener, nothing drawn", functools.partial(driven, NoDisplay)),
            (
                "progress + plain lines (1/s)",
                functools.partial(driven, lambda: PlainDisplay(devnull)),
            ),
            ("progress + rich live display (10/s)", functools.partial(driven, live)),
        ]
        # Interleaved rounds (each case once per round, best of the rounds): the machine is
        # shared, and load that comes and goes then hits every case alike.
        # CPU time of this process, not wall time: other processes' load does not count.
        best = dict.fromkeys((name for name, _ in cases), float("inf"))
        for _ in range(repeat):
            for name, fn in cases:
                gc.collect()
                start = time.process_time()
                answer = trio.run(fn)
                seconds = time.process_time() - start
                assert answer == expected, (name, answer)
                best[name] = min(best[name], seconds)
        rows = list(best.items())
        report(f"{graph.name}: {n:,} nodes", n, rows, floor="run_async (no listener)")
        events = best["run_async, a listener doing nothing"]
        live = best["progress + rich live display (10/s)"]
        print(f"  the live display over a do-nothing listener: {live / events:5.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
