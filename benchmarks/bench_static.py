"""Static graphs (@graphify) against the best hand-written Trio program for the same DAG.

The floor is a pool of `cap` workers fed by a memory channel, with dependency counters: a node
is sent to the channel when its last dependency finishes. trioflow runs the same DAG, built by
tracing a @graphify body (trace + lowering are timed separately; a graph whose shape does not
depend on its inputs is traced once and reused). Every case checks its own answer.

    python benchmarks/bench_static.py [--smoke] [--big] [--memory]

--big adds the 1,000,000-node fan-out and the 1k→1M scaling table; --memory reports peak
traced memory per node (tracemalloc; slower).
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import trio
from _harness import header, report, timed

import trioflow
from trioflow._schedule import plan_for

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


def measure(
    title: str, deps: Deps, caps: Sequence[int], repeat: int, memory: bool
) -> list[tuple[int, float, float]]:
    n = len(deps)
    answer = expected(deps)
    graph = graph_for(deps)
    start = time.perf_counter()
    plan_for(graph, {})  # trace + lower once; later runs reuse the plan
    compile_s = time.perf_counter() - start
    out: list[tuple[int, float, float]] = []
    for cap in caps:
        floor_s, got = timed(functools.partial(hand_written, deps, cap), repeat)
        assert got == answer, ("hand-written", got, answer)
        spawn_s, got = timed(functools.partial(hand_written_spawning, deps, cap), repeat)
        assert got == answer, ("hand-written spawning", got, answer)
        run = functools.partial(trioflow.run_async, graph, max_concurrency=cap)
        ours_s, result = timed(run, repeat)
        assert result == {"v": answer}, ("trioflow", result, answer)
        rows = [
            ("hand-written: cap workers + memory channel", floor_s),
            ("hand-written: task per node, acquire first", spawn_s),
            ("trioflow @graphify run", ours_s),
        ]
        report(f"{title}, max_concurrency={cap}", n, rows, floor=rows[0][0])
        out.append((cap, floor_s, ours_s))
    print(f"  (trace + lower once: {compile_s * 1e3:.1f} ms, {compile_s / n * 1e6:.2f} us/node)")
    if memory:
        for label, fn in [
            ("hand-written", functools.partial(hand_written, deps, caps[-1])),
            ("trioflow", functools.partial(trioflow.run_async, graph, max_concurrency=caps[-1])),
        ]:
            print(f"  peak traced memory, {label}: {peak_bytes(fn) / n:.0f} B/node")
    return out


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
    args = parser.parse_args()
    header(__doc__.splitlines()[0])
    caps = (4, 64)
    if args.smoke:
        measure("fan-out/fan-in", fan_out_in(300), caps, 1, args.memory)
        measure("random layered DAG", layered(400), caps, 1, args.memory)
        return
    measure("fan-out/fan-in 10k", fan_out_in(10_000), caps, 3, args.memory)
    measure("chain 1k", chain(1_000), caps, 5, args.memory)
    measure("random layered DAG 10k (20 layers, 1-3 deps)", layered(10_000), caps, 3, args.memory)
    if args.big:
        measure("fan-out 1M", fan_out_in(1_000_000), caps, 1, args.memory)
        print("\nscaling, fan-out/fan-in at max_concurrency=64 (us/node)")
        for n in (1_000, 10_000, 100_000, 1_000_000):
            deps = fan_out_in(n)
            graph = graph_for(deps)
            plan_for(graph, {})
            floor_s, _ = timed(functools.partial(hand_written, deps, 64), 1)
            ours_s, _ = timed(functools.partial(trioflow.run_async, graph, max_concurrency=64), 1)
            print(
                f"  n={n:>9,}  hand-written {floor_s / n * 1e6:6.2f}  trioflow "
                f"{ours_s / n * 1e6:6.2f}  ratio {ours_s / floor_s:4.2f}"
            )


if __name__ == "__main__":
    main()
