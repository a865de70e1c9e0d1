"""Static graphs (@graphify) against the best hand-written Trio program for the same DAG.

The floor is a pool of `cap` workers fed by a memory channel, with dependency counters: a node
is sent to the channel when its last dependency finishes. trioflow runs the same DAG, built by
tracing a @graphify body (trace + lowering are timed separately; since this round the tracer
builds the plan as it goes, so "lower" only finds it; a graph whose shape does not depend on
its inputs is traced once and reused). Every case checks its own answer.

    python benchmarks/bench_static.py [--smoke] [--big] [--memory] [--compile]

--big adds the 1,000,000-node fan-out and the 1k→1M scaling table; --memory reports peak
traced memory per node (tracemalloc; slower); --compile only compares compiling (trace, with
the plan it builds) against one run, per shape and size (1M with --big).
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import trio
from _harness import header, timed

import trioflow

try:
    from trioflow._plan import plan_of_graph as lower
except ImportError:  # an older trioflow lowers in _schedule
    from trioflow._schedule import lower  # type: ignore[no-redef]

try:
    from trioflow._schedule import plan_for
except ImportError:  # an older trioflow (the "before" column of the closing note)
    plan_for = None  # type: ignore[assignment]

partial = functools.partial

Deps = list[list[int]]


# -- workloads: the same DAG for both programs ------------------------------------------------


def fan_out_in(width: int) -> Deps:
    """A source, `width` nodes that depend on it, and a sink that depends on all of them."""
    return [[]] + [[0] for _ in range(width)] + [list(range(1, width + 1))]


def chain(length: int) -> Deps:
    return [[]] + [[i] for i in range(length - 1)]


def layered(n: int, layers: int = 20, seed: int = 7) -> Deps:
    """`layers` layers of n/layers nodes; each node depends on 1-3 nodes of the layer above."""
    rng = random.Random(seed)
    per = n // layers
    deps: Deps = [[] for _ in range(per)]
    for layer in range(1, layers):
        above = range((layer - 1) * per, layer * per)
        for _ in range(per):
            deps.append(sorted(rng.sample(above, rng.randint(1, 3))))
    return deps


def expected(deps: Deps) -> int:
    values: list[int] = []
    for i, ds in enumerate(deps):
        values.append(_value(i, [values[d] for d in ds]))
    return values[-1]


def _value(i: int, xs: Sequence[int]) -> int:
    return (i + sum(xs)) % 1_000_003


async def node_fn(i: int, xs: list[int]) -> int:
    return _value(i, xs)


# -- the floor: cap workers fed by a memory channel ----------------------------------------------


def counters(deps: Deps) -> tuple[Deps, list[int]]:
    """Dependents lists and in-degree counters: what both hand-written programs start from."""
    dependents: Deps = [[] for _ in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    return dependents, [len(ds) for ds in deps]


async def hand_written(deps: Deps, cap: int) -> int:
    n = len(deps)
    dependents, indegree = counters(deps)
    results: list[int] = [0] * n
    remaining = n
    send, receive = trio.open_memory_channel[int](math.inf)
    for i in range(n):
        if not indegree[i]:
            send.send_nowait(i)

    async def worker() -> None:
        nonlocal remaining
        async for i in receive:
            results[i] = await node_fn(i, [results[d] for d in deps[i]])
            for j in dependents[i]:
                indegree[j] -= 1
                if not indegree[j]:
                    send.send_nowait(j)
            remaining -= 1
            if not remaining:
                send.close()

    async with trio.open_nursery() as nursery:
        for _ in range(min(cap, n)):
            nursery.start_soon(worker)
    return results[-1]


async def hand_written_spawning(deps: Deps, cap: int) -> int:
    """The other design: one task per node, spawned when it is ready and a slot is free."""
    n = len(deps)
    dependents, indegree = counters(deps)
    results: list[int] = [0] * n
    remaining = n
    limiter = trio.CapacityLimiter(cap)
    send, receive = trio.open_memory_channel[int](math.inf)
    for i in range(n):
        if not indegree[i]:
            send.send_nowait(i)

    async def node(i: int) -> None:
        nonlocal remaining
        try:
            results[i] = await node_fn(i, [results[d] for d in deps[i]])
        finally:
            limiter.release_on_behalf_of(i)
        for j in dependents[i]:
            indegree[j] -= 1
            if not indegree[j]:
                send.send_nowait(j)
        remaining -= 1
        if not remaining:
            send.close()

    async with trio.open_nursery() as nursery:
        async for i in receive:
            await limiter.acquire_on_behalf_of(i)  # capacity first, then the task
            nursery.start_soon(node, i)
    return results[-1]


# -- trioflow ----------------------------------------------------------------------------------

node = trioflow.tool(outputs=["v"], name="node")(node_fn)


def graph_for(deps: Deps) -> trioflow.Graphify:
    def body() -> Any:
        refs: list[Any] = []
        for i, ds in enumerate(deps):
            refs.append(node(i=i, xs=[refs[d].v for d in ds]))
        return refs[-1].v

    return trioflow.graphify(name="bench", outputs=["v"])(body)


def prepare(graph: trioflow.Graphify, repeat: int = 3) -> tuple[float, float]:
    """Trace and lower (best CPU seconds of each over `repeat`), then cache the plan: later
    runs reuse it."""
    trace = getattr(graph, "trace", None) or graph._trace  # type: ignore[attr-defined]
    best_trace = best_lower = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        traced = trace(None)
        middle = time.process_time()
        lower(traced)
        best_trace = min(best_trace, middle - start)
        best_lower = min(best_lower, time.process_time() - middle)
    if plan_for is not None:
        plan_for(graph, {})
    else:  # an older trioflow keeps the plan on the graph
        graph.plan_for({})  # type: ignore[attr-defined]
    return best_trace, best_lower


def cpu_run(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.process_time()
    answer = trio.run(fn)
    return time.process_time() - start, answer


def interleaved(
    cases: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]], repeat: int
) -> list[tuple[str, float]]:
    """Best CPU time of each case; every repeat runs every case once, in turn. Each case's
    check gets the answer (and may do more work: it is timed with the case)."""
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(repeat):
        for name, fn, check in cases:
            gc.collect()
            start = time.process_time()
            check(trio.run(fn))
            best[name] = min(best[name], time.process_time() - start)
    return [(name, best[name]) for name, _, _ in cases]


def table(title: str, n: int, rows: list[tuple[str, float]]) -> None:
    s0w, s0s = rows[0][1], rows[1][1]
    print(f"\n{title}  (n={n:,}, load {os.getloadavg()[0]:.1f}, CPU time)")
    for name, seconds in rows:
        print(
            f"  {name:44} {seconds * 1e3:8.1f} ms {seconds / n * 1e6:7.2f} us/node "
            f"{seconds / s0w:5.2f}x S0w {seconds / s0s:5.2f}x S0s"
        )


def measure(
    title: str, deps: Deps, caps: Sequence[int], repeat: int, memory: bool, record: bool = False
) -> None:
    n = len(deps)
    answer = expected(deps)
    graph = graph_for(deps)
    trace_s, lower_s = prepare(graph)

    def equals(want: Any) -> Callable[[Any], None]:
        def check(got: Any) -> None:
            assert got == want, (got, want)

        return check

    def read_record(result: Any) -> None:
        assert result.outputs == {"v": answer} and len(result.record.nodes) == n

    for cap in caps:
        cases = [
            ("S0w: cap workers + memory channel", partial(hand_written, deps, cap), equals(answer)),
            ("S0s: task per node, acquire first", partial(hand_written_spawning, deps, cap),
             equals(answer)),
            ("trioflow @graphify run", partial(trioflow.run_async, graph, max_concurrency=cap),
             equals({"v": answer})),
        ]  # fmt: skip
        if record:
            run = partial(trioflow.run_async, graph, max_concurrency=cap, record=True)
            cases.append(("  record=True, record read once", run, read_record))
        rows = interleaved(cases, repeat)
        table(f"{title}, max_concurrency={cap}", n, rows)
        run_s = rows[2][1]
    print(
        f"  trace {trace_s / n * 1e6:.2f} us/node + lower {lower_s / n * 1e6:.2f} us/node = "
        f"{(trace_s + lower_s) / run_s:.2f}x a run (at the last cap)"
    )
    if memory:
        for label, fn in [
            ("hand-written", partial(hand_written, deps, caps[-1])),
            ("trioflow", partial(trioflow.run_async, graph, max_concurrency=caps[-1])),
        ]:
            print(f"  peak traced memory, {label}: {peak_bytes(fn) / n:.0f} B/node")


def compile_vs_run(sizes: Sequence[int], repeat: int) -> None:
    """Compile (trace + plan) against one run of the compiled graph at cap 64, per shape and
    size: best CPU time of each, taking turns in one process."""
    print(f"\ncompile vs one run, max_concurrency=64 (CPU time, best of {repeat}, in turns)")
    for n in sizes:
        for name, deps in (("W1 fan-out/fan-in", fan_out_in(n)), ("W3 20-layer DAG", layered(n)),
                           ("chain", chain(n))):  # fmt: skip
            graph = graph_for(deps)
            trace = getattr(graph, "trace", None) or graph._trace  # type: ignore[attr-defined]
            prepare(graph, 1)  # (the plan each run reuses)
            run = partial(trioflow.run_async, graph, max_concurrency=64)
            best_trace = best_run = float("inf")
            for _ in range(repeat if n < 1_000_000 else min(repeat, 3)):
                gc.collect()
                start = time.process_time()
                traced = trace(None)
                best_trace = min(best_trace, time.process_time() - start)
                del traced
                gc.collect()
                start = time.process_time()
                trio.run(run)
                best_run = min(best_run, time.process_time() - start)
            print(
                f"  {name:18} n={len(deps):>9,}  compile {best_trace / len(deps) * 1e6:5.2f} "
                f"us/node  run {best_run / len(deps) * 1e6:5.2f} us/node  "
                f"{best_trace / best_run:4.2f}x a run  (load {os.getloadavg()[0]:.1f})"
            )


def peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        trio.run(fn)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--big", action="store_true", help="add the 1M fan-out and scaling")
    parser.add_argument("--memory", action="store_true", help="peak memory per node")
    parser.add_argument("--record", action="store_true", help="record=True on a 100k graph")
    parser.add_argument("--compile", action="store_true", help="only compile vs one run")
    parser.add_argument("--repeat", type=int, help="best of this many (3; 7 for --compile)")
    args = parser.parse_args()
    header(__doc__.splitlines()[0])
    caps = (4, 64)
    if args.compile:
        sizes = (100, 1_000) if args.smoke else (10_000, 100_000)
        repeat = 1 if args.smoke else args.repeat or 7
        compile_vs_run(sizes + ((1_000_000,) if args.big else ()), repeat)
        return
    if args.smoke:
        measure("fan-out/fan-in", fan_out_in(300), caps, 1, args.memory)
        measure("random layered DAG", layered(400), caps, 1, args.memory)
        return
    repeat = args.repeat or 3
    measure("W1 fan-out/fan-in 10k", fan_out_in(10_000), caps, repeat, args.memory)
    measure("chain 1k", chain(1_000), caps, repeat, args.memory)
    measure("W3 random layered DAG 10k (20 layers, 1-3 deps)", layered(10_000), caps, repeat,
            args.memory)  # fmt: skip
    if args.record:
        measure("W1 fan-out/fan-in 100k", fan_out_in(100_000), (64,), repeat, False, record=True)
    if args.big:
        measure("fan-out 1M", fan_out_in(1_000_000), caps, 1, args.memory)
        print("\nscaling, fan-out/fan-in at max_concurrency=64 (us/node)")
        for n in (1_000, 10_000, 100_000, 1_000_000):
            deps = fan_out_in(n)
            graph = graph_for(deps)
            prepare(graph, 1)
            floor_s, _ = timed(functools.partial(hand_written, deps, 64), 1)
            ours_s, _ = timed(functools.partial(trioflow.run_async, graph, max_concurrency=64), 1)
            print(
                f"  n={n:>9,}  hand-written {floor_s / n * 1e6:6.2f}  trioflow "
                f"{ours_s / n * 1e6:6.2f}  ratio {ours_s / floor_s:4.2f}"
            )


if __name__ == "__main__":
    main()
