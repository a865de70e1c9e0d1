"""graph_fn fan-outs (gather/map) and awaited chains against the hand-written Trio floors.

The floors are bench_static's two hand-written programs for the same DAG, in the same process:
S0w, `cap` workers fed by a memory channel with in-degree counters (the best one), and S0s, one
task per node spawned when it is ready and a slot is free. The graph_fn programs are what a user
writes: W1 (fan-out/fan-in) as a source call, one `gather` (or `map`) of the middle calls and a
sink call; the 20-layer random DAG as one `gather` per layer. Cases are interleaved (each repeat
runs every program once) and timed in CPU seconds of this process, so that other load on a
shared machine inflates them less than wall time; each case checks its own answer.

    python benchmarks/bench_graph_fn.py [--smoke] [--big] [--memory] [--repeat N]

--big adds a 1,000,000-call `map` at max_concurrency=64 (peak live tasks and peak memory);
--memory reports peak traced memory per node above S0w's (tracemalloc).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from _harness import header
from bench_static import (
    Deps,
    expected,
    fan_out_in,
    hand_written,
    hand_written_spawning,
    layered,
    node_fn,
)

import trioflow

node = trioflow.tool(outputs=["v"], name="node")(node_fn)


async def inc_plain(x: int) -> int:
    return x + 1


inc = trioflow.tool(outputs=["y"], name="inc")(inc_plain)


# -- the graph_fn programs ---------------------------------------------------------------------


def w1_gather(width: int) -> trioflow.GraphFn:
    async def body() -> int:
        src = (await node(i=0, xs=[]))["v"]
        mids = await trioflow.gather(*(node(i=i, xs=[src]) for i in range(1, width + 1)))
        return (await node(i=width + 1, xs=[r["v"] for r in mids]))["v"]

    return trioflow.graph_fn(name="w1_gather", outputs=["v"])(body)


def w1_map(width: int) -> trioflow.GraphFn:
    async def body() -> int:
        src = (await node(i=0, xs=[]))["v"]
        mids = await trioflow.map(node, range(1, width + 1), xs=[src])
        return (await node(i=width + 1, xs=[r["v"] for r in mids]))["v"]

    return trioflow.graph_fn(name="w1_map", outputs=["v"])(body)


def layers_gather(deps: Deps, layers: int = 20) -> trioflow.GraphFn:
    per = len(deps) // layers

    async def body() -> int:
        values: list[int] = []
        for layer in range(layers):
            ids = range(layer * per, (layer + 1) * per)
            out = await trioflow.gather(*(node(i=i, xs=[values[d] for d in deps[i]]) for i in ids))
            values.extend(r["v"] for r in out)
        return values[-1]

    return trioflow.graph_fn(name="layers_gather", outputs=["v"])(body)


@trioflow.graph_fn(name="chain", outputs=["x"])
async def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = (await inc(x=x))["y"]
    return x


async def hand_chain(n: int, cap: int) -> int:
    limiter = trio.CapacityLimiter(cap)
    x = 0
    for _ in range(n):
        async with limiter:
            x = await inc_plain(x)
    return x


# -- measuring ---------------------------------------------------------------------------------

Case = tuple[str, Callable[[], Awaitable[Any]], Any]


def cpu_run(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    gc.collect()
    start = time.process_time()
    answer = trio.run(fn)
    return time.process_time() - start, answer


def interleaved(cases: list[Case], repeat: int) -> list[tuple[str, float]]:
    """Best CPU time of each case; every repeat runs every case once, in turn."""
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(repeat):
        for name, fn, want in cases:
            seconds, got = cpu_run(fn)
            assert got == want, (name, got, want)
            best[name] = min(best[name], seconds)
    return [(name, best[name]) for name, _, _ in cases]


def table(title: str, n: int, rows: list[tuple[str, float]]) -> None:
    s0w, s0s = rows[0][1], rows[1][1]
    print(f"\n{title}  (n={n:,}, load {os.getloadavg()[0]:.1f})")
    for name, seconds in rows:
        print(
            f"  {name:36} {seconds * 1e3:8.1f} ms cpu {seconds / n * 1e6:7.2f} us/node "
            f"{seconds / s0w:5.2f}x S0w {seconds / s0s:5.2f}x S0s"
        )


def fan_cases(deps: Deps, cap: int, graphs: list[tuple[str, trioflow.GraphFn]]) -> list[Case]:
    answer = expected(deps)
    cases: list[Case] = [
        ("S0w: cap workers + channel", functools.partial(hand_written, deps, cap), answer),
        ("S0s: task per ready node", functools.partial(hand_written_spawning, deps, cap), answer),
    ]
    for name, graph in graphs:
        run = functools.partial(trioflow.run_async, graph, max_concurrency=cap)
        cases.append((name, run, {"v": answer}))
    return cases


def peak_bytes(fn: Callable[[], Awaitable[Any]]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        trio.run(fn)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class LiveTasks(trio.abc.Instrument):
    """Counts live tasks; remembers the peak."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live -= 1


def big_map(n: int, cap: int) -> None:
    @trioflow.graph_fn(name="big_map", outputs=["total"])
    async def body() -> int:
        out = await trioflow.map(inc, range(n))
        return sum(r["y"] for r in out)

    count = LiveTasks()
    gc.collect()
    tracemalloc.start()
    start = time.process_time()
    got = trio.run(
        functools.partial(trioflow.run_async, body, max_concurrency=cap), instruments=[count]
    )
    seconds = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == {"total": n * (n + 1) // 2}, got
    print(
        f"\nmap of {n:,} calls, max_concurrency={cap} (load {os.getloadavg()[0]:.1f}): "
        f"{seconds / n * 1e6:.2f} us/call cpu (under tracemalloc), peak live tasks "
        f"{count.peak}, peak traced memory {peak / 2**20:.0f} MB ({peak / n:.0f} B/call: the "
        "results list)"
    )


def fan_tables(n: int, repeat: int) -> None:
    """W1 and W3 of `n` nodes at caps 4 and 64: the hand-written floors, gather and map."""
    w1 = fan_out_in(n - 2)
    dag = layered(n)
    for cap in (4, 64):
        rows = interleaved(
            fan_cases(w1, cap, [("gather", w1_gather(n - 2)), ("map", w1_map(n - 2))]), repeat
        )
        table(f"W1 fan-out/fan-in, max_concurrency={cap}", len(w1), rows)
        rows = interleaved(fan_cases(dag, cap, [("gather per layer", layers_gather(dag))]), repeat)
        table(f"W3 20-layer random DAG, max_concurrency={cap}", len(dag), rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--big", action="store_true", help="add the 1M-call map")
    parser.add_argument(
        "--million", action="store_true", help="also W1 and W3 at 1M calls (~4 min a repeat)"
    )
    parser.add_argument("--memory", action="store_true", help="peak memory per node")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    header(__doc__.splitlines()[0])
    n, n_chain, repeat = (400, 50, 1) if args.smoke else (10_000, 1_000, args.repeat)
    sizes = [n] + ([1_000_000] if args.million else [])
    for size in sizes:
        fan_tables(size, repeat if size == n else 1)
    w1 = fan_out_in(n - 2)
    if args.memory:
        floor = peak_bytes(functools.partial(hand_written, w1, 64))
        ours = peak_bytes(
            functools.partial(trioflow.run_async, w1_gather(n - 2), max_concurrency=64)
        )
        print(
            f"\npeak traced memory, W1 at cap 64: S0w {floor / len(w1):.0f} B/node, gather "
            f"{ours / len(w1):.0f} B/node ({(ours - floor) / len(w1):.0f} B/node above S0w)"
        )
    rows = interleaved(
        [
            ("async with limiter per call", functools.partial(hand_chain, n_chain, 4), n_chain),
            ("awaited calls", functools.partial(trioflow.run_async, chain, {"n": n_chain}),
             {"x": n_chain}),
        ],
        repeat,
    )  # fmt: skip
    print(f"\nchain of {n_chain:,} awaited calls (load {os.getloadavg()[0]:.1f})")
    for name, seconds in rows:
        print(f"  {name:36} {seconds / n_chain * 1e6:7.2f} us/call cpu")
    if args.big:
        big_map(1_000_000, 64)


if __name__ == "__main__":
    main()
