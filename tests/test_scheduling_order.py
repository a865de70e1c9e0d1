"""Start order, tie-breaks and cancellation points: the behaviours a mutant once got past.

Each test here failed against one planted mutant of the schedulers: initial ready nodes started
in reverse order, `rng` ignored, the per-node cancellation check removed, a pre-start check
moved after the first node started.
"""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

import trioflow


@trioflow.tool(outputs=["out"])
async def tick(i: int) -> int:
    await trio.sleep(1)
    return i


def roots(n: int) -> trioflow.Graphify:
    @trioflow.graphify(name="roots", outputs=["out"])
    def g():  # type: ignore[no-untyped-def]
        return [tick(i=i).out for i in range(n)]

    return g


def start_order(record: trioflow.RunRecord) -> list[str]:
    started = {k: v.started_at for k, v in record.nodes.items()}
    return sorted(started, key=lambda k: (started[k], list(started).index(k)))


async def test_static_ready_nodes_start_in_insertion_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        result = await trioflow.run_async(roots(6), max_concurrency=1, record=True)
    t0 = result.record.started_at
    assert [(n, rec.started_at - t0) for n, rec in result.record.nodes.items()] == [  # type: ignore[operator]
        (f"tick_{k}", k - 1) for k in range(1, 7)
    ]


async def test_graph_fn_calls_start_in_call_order(autojump_clock: trio.testing.MockClock) -> None:
    @trioflow.graph_fn(name="g", max_concurrency=1)
    async def g() -> None:
        await trioflow.gather(*(tick(i=i) for i in range(6)))

    with trio.fail_after(60):
        result = await trioflow.run_async(g, record=True)
    assert start_order(result.record) == [f"tick_{k}" for k in range(1, 7)]


@pytest.mark.parametrize("static", [True, False])
async def test_an_rng_changes_the_order_and_the_same_seed_repeats_it(
    autojump_clock: trio.testing.MockClock, static: bool
) -> None:
    async def order(seed: int) -> list[int]:
        seen: list[int] = []

        @trioflow.tool(outputs=["out"])
        async def spy(i: int) -> int:
            seen.append(i)
            await trio.sleep(1)
            return i

        @trioflow.graphify(name="s", outputs=["out"])
        def s():  # type: ignore[no-untyped-def]
            return [spy(i=i).out for i in range(8)]

        @trioflow.graph_fn(name="r")
        async def r() -> None:
            await trioflow.gather(*(spy(i=i) for i in range(8)))

        graph = s if static else r
        await trioflow.run_async(graph, max_concurrency=1, rng=random.Random(seed))
        assert sorted(seen) == list(range(8))
        return seen

    with trio.fail_after(600):
        orders = [await order(seed) for seed in range(5)]
        again = await order(3)
    assert again == orders[3]
    assert any(o != sorted(o) for o in orders), orders


@pytest.mark.parametrize("static", [True, False])
async def test_a_cancel_stops_the_next_node_even_when_tools_never_yield(static: bool) -> None:
    ran: list[int] = []
    scope = trio.CancelScope()

    @trioflow.tool(outputs=["out"])
    async def busy(i: int) -> int:
        ran.append(i)  # never awaits anything
        if i == 3:
            scope.cancel()
        return i

    @trioflow.graphify(name="s", outputs=["out"])
    def s():  # type: ignore[no-untyped-def]
        return [busy(i=i).out for i in range(50)]

    @trioflow.graph_fn(name="r")
    async def r() -> None:
        await trioflow.map(busy, range(50))

    with scope:
        await trioflow.run_async(s if static else r, max_concurrency=1)
    assert ran == [0, 1, 2, 3]


async def test_undefined_limits_and_executors_fail_before_any_static_node_runs() -> None:
    ran: list[str] = []

    @trioflow.tool(outputs=["out"])
    async def first() -> int:
        ran.append("first")
        return 1

    @trioflow.tool(outputs=["out"], limits=["gpu"])
    async def needs_gpu(x: int) -> int:
        ran.append("gpu")
        return x

    @trioflow.tool(outputs=["out"], executor="nowhere")
    def needs_nowhere(x: int) -> int:
        ran.append("nowhere")
        return x

    @trioflow.graphify(name="gpu", outputs=["out"])
    def gpu():  # type: ignore[no-untyped-def]
        return needs_gpu(x=first().out).out

    @trioflow.graphify(name="nowhere", outputs=["out"])
    def nowhere():  # type: ignore[no-untyped-def]
        return needs_nowhere(x=first().out).out

    with pytest.raises(trioflow.ConfigError, match=r"limits=\['gpu'\]"):
        await trioflow.run_async(gpu)
    with pytest.raises(trioflow.ConfigError, match="executor 'nowhere'"):
        await trioflow.run_async(nowhere)
    assert ran == []


async def test_an_undefined_executor_in_a_graph_fn_fails_before_its_node_takes_a_slot() -> None:
    @trioflow.tool(outputs=["out"], executor="nowhere")
    def needs_nowhere(x: int) -> int:
        return x

    @trioflow.graph_fn(name="g")
    async def g() -> None:
        await needs_nowhere(x=1)

    with pytest.raises(trioflow.ConfigError, match="executor 'nowhere'") as info:
        await trioflow.run_async(g, max_concurrency=math.inf)
    assert not isinstance(info.value, BaseExceptionGroup)


@trioflow.tool(outputs=["out"])
async def hold(seconds: float, after: list[int]) -> int:
    await trio.sleep(seconds)
    return len(after)


def simulate(deps: list[list[int]], seconds: list[float], cap: int) -> list[float]:
    """Start times under the documented rule: whenever capacity is free, the ready node with
    the lowest index (insertion order) starts."""
    n = len(deps)
    left = [len(d) for d in deps]
    dependents: list[list[int]] = [[] for _ in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    ready = sorted(i for i in range(n) if not left[i])
    running: list[tuple[float, int]] = []
    start = [math.nan] * n
    now = 0.0
    while ready or running:
        while ready and len(running) < cap:
            i = ready.pop(0)
            start[i] = now
            running.append((now + seconds[i], i))
        running.sort()
        now, i = running.pop(0)
        for d in dependents[i]:
            left[d] -= 1
            if not left[d]:
                ready.append(d)
        ready.sort()
    return start


@pytest.mark.parametrize("seed", range(12))
async def test_ready_nodes_start_lowest_index_first_under_cap(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Random DAGs whose nodes finish one at a time (distinct powers of two as durations make
    every finish time distinct): each node starts exactly when the lowest-index-first rule says,
    including nodes that become ready below ones already waiting (the scheduler's heap) and
    above them (its sorted FIFO)."""
    rng = random.Random(seed)
    n = rng.randint(5, 24)
    deps = [sorted(rng.sample(range(i), rng.randint(0, min(i, 3)))) for i in range(n)]
    seconds = [float(2**k) for k in rng.sample(range(n), n)]
    cap = rng.randint(1, 4)

    @trioflow.graphify(name="dag", outputs=["out"])
    def dag():  # type: ignore[no-untyped-def]
        refs: list[trioflow.NodeRef] = []
        for i in range(n):
            refs.append(hold(seconds=seconds[i], after=[refs[d].out for d in deps[i]]))
        return [r.out for r in refs]

    with trio.fail_after(2**n * n + 10):
        result = await trioflow.run_async(dag, max_concurrency=cap, record=True)
    t0 = result.record.started_at
    got = [rec.started_at - t0 for rec in result.record.nodes.values()]  # type: ignore[operator]
    assert got == simulate(deps, seconds, cap)
