"""@graph_fn: awaited tool calls are capped nodes; gather, map, nesting."""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
from helpers import Probe

import trioflow
from trioflow import NodeState
from trioflow.testing import live_tasks


def probe_tool(probe: Probe, seconds: float = 1.0) -> trioflow.Tool:
    @trioflow.tool(outputs=["y"])
    async def work(x: int) -> int:
        await probe.work(x, seconds)
        return x * 10

    return work


@pytest.mark.parametrize(
    ("decorator_cap", "run_cap", "expected_peak"),
    [(None, None, 4), (2, None, 2), (2, 3, 3), (None, math.inf, 20), (1, None, 1)],
)
async def test_awaited_tool_calls_are_capped(
    autojump_clock: trio.testing.MockClock,
    decorator_cap: int | None,
    run_cap: float | None,
    expected_peak: int,
) -> None:
    probe = Probe()
    work = probe_tool(probe)

    @trioflow.graph_fn(name="fan", outputs=["ys"], max_concurrency=decorator_cap)
    async def fan(n: int) -> list[int]:
        results = await trioflow.gather(*(work(x=i) for i in range(n)))
        return [r["y"] for r in results]

    with trio.fail_after(100):
        out = await trioflow.run_async(fan, {"n": 20}, max_concurrency=run_cap)
    assert out == {"ys": [i * 10 for i in range(20)]}
    assert probe.peak == expected_peak
    assert trio.current_time() == math.ceil(20 / expected_peak)


async def test_plain_awaits_in_the_body_are_not_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    peak = 0

    async def plain() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=1)
    async def g() -> None:
        await trioflow.gather(*([plain] * 5))

    with trio.fail_after(10):
        await trioflow.run_async(g)
    assert peak == 5


async def test_every_awaited_call_is_a_recorded_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    work = probe_tool(probe)

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=2)
    async def g() -> int:
        a = await work(x=1)
        rest = await trioflow.gather(work(x=2), work(x=3))
        return a["y"] + sum(r["y"] for r in rest)

    with trio.fail_after(10):
        result = await trioflow.run_async(g, record=True, run_id="run-1")
    assert result.outputs == {"out": 60}
    rec = result.record
    assert (rec.run_id, rec.graph_id) == ("run-1", "g")
    assert list(rec.nodes) == ["work_1", "work_2", "work_3"]
    assert [(n.state, n.started_at, n.finished_at) for n in rec.nodes.values()] == [
        (NodeState.DONE, 0.0, 1.0),
        (NodeState.DONE, 1.0, 2.0),
        (NodeState.DONE, 1.0, 2.0),
    ]
    assert (rec.started_at, rec.finished_at) == (0.0, 2.0)


async def test_gather_first_failure_cancels_the_rest_and_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    slow = probe_tool(probe, seconds=10)

    @trioflow.tool(outputs=["y"])
    async def boom() -> None:
        await trio.sleep(1)
        raise ValueError("boom")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await trioflow.gather(slow(x=1), boom(), slow(x=2))

    with trio.fail_after(60), pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(g)
    assert info.value.node_id == "boom_1"
    assert isinstance(info.value.__cause__, ValueError)
    assert sorted(probe.cancelled) == [1, 2]  # type: ignore[type-var]
    assert trio.current_time() == 1.0  # nobody waited for the slow ones
    assert info.value.record is not None
    assert info.value.record.states() == {
        "work_1": NodeState.CANCELLED,
        "boom_1": NodeState.FAILED,
        "work_2": NodeState.CANCELLED,
    }


async def test_a_failure_the_body_catches_is_handled() -> None:
    @trioflow.tool(outputs=["y"])
    async def boom() -> None:
        raise ValueError("boom")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> str:
        try:
            await boom()
        except trioflow.NodeFailed as exc:
            return type(exc.__cause__).__name__
        return "not raised"

    result = await trioflow.run_async(g, record=True)
    assert result.outputs == {"out": "ValueError"}
    assert result.record.nodes["boom_1"].state is NodeState.FAILED
    assert result.record.nodes["boom_1"].error.type == "ValueError"


async def test_map_returns_outputs_in_item_order_and_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    work = probe_tool(probe, seconds=1)
    peak_tasks = 0

    @trioflow.tool(outputs=["y"])
    async def counted(x: int) -> int:
        nonlocal peak_tasks
        peak_tasks = max(peak_tasks, live_tasks())
        return await work.fn(x=x)

    @trioflow.graph_fn(name="g", outputs=["ys"], max_concurrency=3)
    async def g(n: int) -> list[int]:
        results = await trioflow.map(counted, (i for i in range(n)))
        return [r["y"] for r in results]

    baseline = live_tasks()
    with trio.fail_after(1000):
        out = await trioflow.run_async(g, {"n": 300})
    assert out == {"ys": [i * 10 for i in range(300)]}
    assert probe.peak == 3
    assert peak_tasks <= baseline + 3 + 1  # capacity is taken before a task is spawned
    assert live_tasks() == baseline


async def test_map_with_fixed_arguments_and_param() -> None:
    @trioflow.tool(outputs=["out"])
    async def scale(x: int, factor: int) -> int:
        return x * factor

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> list[int]:
        a = await trioflow.map(scale, [1, 2, 3], factor=10)
        b = await trioflow.map(scale, [1, 2], param="factor", x=7)
        return [r["out"] for r in a + b]

    assert await trioflow.run_async(g) == {"out": [10, 20, 30, 7, 14]}


def test_map_needs_to_know_which_input_takes_the_items() -> None:
    @trioflow.tool(outputs=["out"])
    async def two(a: int, b: int) -> int:
        return a + b

    with pytest.raises(trioflow.ConfigError, match="param="):
        trioflow.map(two, [1, 2])
    with pytest.raises(trioflow.ContextError, match="runs inside a run"):
        trioflow.map(two, [1, 2], b=1)


async def test_nested_graph_fn_shares_the_parent_run_and_limiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    work = probe_tool(probe)

    @trioflow.graph_fn(name="inner", outputs=["ys"], max_concurrency=100)
    async def inner(base: int) -> list[int]:
        results = await trioflow.gather(*(work(x=base + i) for i in range(4)))
        return [r["y"] for r in results]

    @trioflow.graph_fn(name="outer", outputs=["ys"], max_concurrency=3)
    async def outer() -> list[int]:
        parts = await trioflow.gather(inner(base=0), inner(base=10), inner(base=20))
        return [y for p in parts for y in p["ys"]]

    with trio.fail_after(100):
        result = await trioflow.run_async(outer, record=True, run_id="r")
    assert result.outputs["ys"] == [10 * x for b in (0, 10, 20) for x in range(b, b + 4)]
    assert probe.peak == 3  # the nested cap of 100 does not multiply the parent's 3
    nodes = result.record.nodes
    assert nodes["inner_1"].tool == "inner"
    assert "inner_2.work_4" in nodes
    assert all(n.state is NodeState.DONE for n in nodes.values())


async def test_a_tool_awaiting_a_nested_graph_lends_its_slot_at_cap_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["y"])
    async def leaf(x: int) -> int:
        await trio.sleep(1)
        return x + 1

    @trioflow.graph_fn(name="inner", outputs=["y"])
    async def inner(x: int) -> int:
        first = await leaf(x=x)
        both = await trioflow.gather(leaf(x=first["y"]), leaf(x=first["y"]))
        return both[0]["y"] + both[1]["y"]

    @trioflow.tool(outputs=["y"])
    async def parent(x: int) -> int:
        # A tool holding the only slot awaits a nested graph (and another tool call).
        nested = await inner(x=x)
        again = await leaf(x=nested["y"])
        return again["y"]

    @trioflow.graph_fn(name="outer", outputs=["ys"], max_concurrency=1)
    async def outer() -> list[int]:
        results = await trioflow.gather(parent(x=0), parent(x=100))
        return [r["y"] for r in results]

    with trio.fail_after(100):
        out = await trioflow.run_async(outer, max_concurrency=1)
    assert out == {"ys": [5, 205]}


async def test_awaiting_a_graph_fn_directly_runs_it(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()
    work = probe_tool(probe)

    @trioflow.graph_fn(name="batch", outputs=["ys"])
    async def batch(items: list[int]) -> list[int]:
        return [r["y"] for r in await trioflow.gather(*(work(x=v) for v in items))]

    with trio.fail_after(10):
        assert await batch(items=[1, 2]) == {"ys": [10, 20]}


async def test_gather_outside_a_run_is_a_plain_concurrent_gather() -> None:
    async def one() -> int:
        await trio.lowlevel.checkpoint()
        return 1

    assert await trioflow.gather(one, one()) == [1, 1]


async def test_errors_of_the_map_iterable_come_out_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    work = probe_tool(probe, seconds=5)

    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("the source broke")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> str:
        try:
            await trioflow.map(work, items())
        except ValueError as exc:  # the caller's own error, not an exception group
            return str(exc)
        return "no error"

    with trio.fail_after(100):
        assert await trioflow.run_async(g) == {"out": "the source broke"}
    assert sorted(probe.cancelled) == [1, 2]  # type: ignore[type-var]  # started calls stopped


async def test_a_bad_limit_in_a_gather_is_a_plain_config_error() -> None:
    @trioflow.tool(outputs=["y"], limits=["tpu"])
    async def on_tpu() -> None:
        raise AssertionError("must not run")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await trioflow.gather(on_tpu(), on_tpu())

    with pytest.raises(trioflow.ConfigError, match="tpu"):
        await trioflow.run_async(g)


async def test_a_gather_of_several_tools_holds_each_ones_own_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calls of different tools in one gather: each holds its own tool's limit (a worker that
    ran one tool must not reuse its limiters for the next tool), and a second tool with an
    undefined limit is still refused."""
    running = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}

    async def work(key: str, i: int) -> int:
        running[key] += 1
        most[key] = max(most[key], running[key])
        await trio.sleep(1)
        running[key] -= 1
        return i

    @trioflow.tool(outputs=["y"], limits=["a"])
    async def on_a(i: int) -> int:
        return await work("a", i)

    @trioflow.tool(outputs=["y"], limits=["b"])
    async def on_b(i: int) -> int:
        return await work("b", i)

    @trioflow.tool(outputs=["y"], limits=["tpu"])
    async def on_tpu(i: int) -> int:
        raise AssertionError("must not run")

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=2)
    async def g() -> list[int]:
        # Two workers: after the first second, one of them moves from an a-call to b-calls.
        calls = [on_a(i=0), *(on_b(i=i) for i in range(1, 5))]
        return [r["y"] for r in await trioflow.gather(*calls)]

    @trioflow.graph_fn(name="bad", outputs=["out"])
    async def bad() -> None:
        await trioflow.gather(on_a(i=1), on_tpu(i=2))

    async with trioflow.open_runtime(limits={"a": 1, "b": 1}):
        with trio.fail_after(100):
            start = trio.current_time()
            assert await trioflow.run_async(g) == {"out": [0, 1, 2, 3, 4]}
            assert most == {"a": 1, "b": 1}
            assert trio.current_time() - start == 4  # the b-calls one at a time
            with pytest.raises(trioflow.ConfigError, match="tpu"):
                await trioflow.run_async(bad)


async def test_a_map_node_starts_after_the_callers_iterable_made_its_item() -> None:
    """A worker may stamp a node's start with the previous node's finish when nothing ran in
    between; a map's iterable is the caller's code, so its time is not the node's. (Real time:
    in virtual time every worker yields after each node, and nothing is reused.)"""

    @trioflow.tool(outputs=["y"])
    async def echo(x: int) -> int:
        return x

    def slowly() -> Iterator[int]:
        for x in range(8):
            if x % 2:  # every other item is slow to make, right after a quick node
                time.sleep(0.02)  # the caller's own blocking code, on purpose
            yield x

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=1)
    async def g() -> list[dict[str, int]]:
        return await trioflow.map(echo, slowly())

    with trio.fail_after(30):
        result = await trioflow.run_async(g, record=True)
    nodes = [n for n in result.record.nodes.values() if n.tool == "echo"]
    assert len(nodes) == 8
    for before, after in itertools.pairwise(nodes):
        assert before.finished_at is not None and after.started_at is not None
        assert after.started_at >= before.finished_at
    for before, slow in zip(nodes[0::2], nodes[1::2], strict=True):
        assert slow.started_at - before.finished_at >= 0.019  # type: ignore[operator]


def _live_calls() -> int:
    gc.collect()  # (calls other tests dropped)
    return sum(type(o).__name__ == "ToolCall" for o in gc.get_objects())


async def test_a_tool_call_is_one_object_holding_plain_inputs() -> None:
    """A call the body keeps costs the collector one object, not two; its inputs still reach
    the tool, the events and the record as a plain dict, and calls compare by identity."""
    seen: list[object] = []

    @trioflow.tool(outputs=["y"])
    async def echo(x: int, tag: object = "t") -> int:
        return x

    @trioflow.tool(outputs=["y"])
    async def nothing() -> int:
        return 0

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> list[int]:
        gc.collect()
        gc.disable()  # (a collection would free other garbage in between)
        try:
            before = len(gc.get_objects())
            tag = ["a"]  # (inputs that are all atomic would be an untracked dict anyway)
            calls = [echo(x=i, tag=tag) for i in range(1000)]
            made = len(gc.get_objects()) - before
        finally:
            gc.enable()
        assert 1000 <= made < 1100, made  # one tracked object per call (was two)
        twin = echo(x=0, tag=tag)
        assert twin != calls[0] and twin == twin and len({twin, calls[0]}) == 2
        empty = nothing()
        assert empty  # a call of a tool without inputs is still true
        out = await trioflow.gather(*calls, twin, empty)
        return [r["y"] for r in out]

    def listen(event: trioflow.RunEvent) -> None:
        if event.kind == "node_started":
            seen.append(event.inputs)

    with trio.fail_after(30):
        result = await trioflow.run_async(g, on_event=listen)
    assert result["out"] == [*range(1000), 0, 0]
    assert seen and all(type(inputs) is dict for inputs in seen)
    assert {"x": 5, "tag": ["a"]} in seen


async def test_gather_frees_each_call_once_its_node_has_run() -> None:
    """gather holds no call it has already run: at cap 1, the last node sees at most the
    calls not yet run (itself included), not all of them."""
    live: list[int] = []

    @trioflow.tool(outputs=["y"])
    async def count(x: int) -> int:
        live.append(_live_calls())
        return x

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=1)
    async def g() -> int:
        return len(await trioflow.gather(*(count(x=i) for i in range(20))))

    with trio.fail_after(30):
        assert await trioflow.run_async(g) == {"out": 20}
    assert live[0] == 20
    assert live[-1] <= 2, live  # (the last one, and at most one not yet freed)
