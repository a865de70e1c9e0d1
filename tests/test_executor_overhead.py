"""What an awaited executor node costs on top of its executor: no extra trip through the
scheduler, and still a fair share for other tasks when the executor never suspends."""

from __future__ import annotations

import math
from typing import Any, Self

import pytest
import trio

import trioflow
from trioflow._slots import Slot


def noop(x: int) -> int:
    return x


class Inline:
    """A user executor that runs the call at once, without ever suspending."""

    ships = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class Steps(trio.abc.Instrument):
    """Counts the steps (trips through the scheduler) of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def steps_of(instrument: Steps, body: Any) -> int:
    instrument.task = trio.lowlevel.current_task()
    before = instrument.steps
    await body()
    return instrument.steps - before


async def test_a_thread_node_makes_exactly_the_executors_trips_through_the_scheduler() -> None:
    instrument = Steps()
    trio.lowlevel.add_instrument(instrument)
    executor = trioflow.ThreadExecutor()
    tool = trioflow.tool(outputs=["y"], executor="thread")(noop)
    n = 40

    @trioflow.graph_fn(outputs=["nodes", "executor"])
    async def graph() -> dict[str, int]:
        async def nodes() -> None:
            for i in range(n):
                assert (await tool(x=i))["y"] == i

        async def direct() -> None:
            for i in range(n):
                assert await executor.run(noop, i) == i

        await tool(x=0)  # the executor entered
        return {
            "nodes": await steps_of(instrument, nodes),
            "executor": await steps_of(instrument, direct),
        }

    try:
        with trio.fail_after(30):
            async with executor, trioflow.open_runtime(executors={"thread": executor}):
                out = await trioflow.run_async(graph)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    # One step per call: the resume when the thread's result is back. A node adds no pacing
    # yield (its executor went through the scheduler) and no other checkpoint that yields.
    assert out == {"nodes": n, "executor": n}


async def test_nodes_on_an_executor_that_never_suspends_still_let_others_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tool = trioflow.tool(outputs=["y"], executor="inline")(noop)
    turns: list[int] = []
    done = trio.Event()

    async def other() -> None:
        while not done.is_set():
            turns.append(len(turns))
            await trio.lowlevel.checkpoint()

    @trioflow.graph_fn(outputs=["out"])
    async def graph() -> int:
        for i in range(10):
            await tool(x=i)
        done.set()
        return 0

    with trio.fail_after(30):
        async with trioflow.open_runtime(executors={"inline": Inline()}):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                await trio.lowlevel.checkpoint()  # `other` is running
                before = len(turns)
                await trioflow.run_async(graph)
    # In virtual time a loop of nodes that never suspend yields after every node.
    assert len(turns) - before >= 10


@pytest.mark.parametrize("total", [1, 2, math.inf])
async def test_free_tokens_taken_and_given_back_by_hand_match_the_limiter(total: float) -> None:
    limiter = trio.CapacityLimiter(total)
    other = trio.CapacityLimiter(1)
    a, b = Slot(), Slot()
    assert a.take_nowait((limiter, other))
    assert limiter.statistics().borrowers == [a] and other.statistics().borrowers == [a]
    assert not b.take_nowait((limiter, other))  # `other` has no free token: all or nothing
    assert limiter.statistics().borrowers == [a]
    got: list[str] = []

    async def wait_for_tokens() -> None:
        await b.take((limiter, other))
        got.append("b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_tokens)
        await trio.testing.wait_all_tasks_blocked()
        waiting = limiter.statistics().tasks_waiting + other.statistics().tasks_waiting
        assert waiting == 1
        assert a.give_back() == (limiter, other)  # a waiter: woken by the limiter itself
    assert got == ["b"] and a.held == ()
    assert other.statistics().borrowers == [b]
    assert b.give_back() == (limiter, other)
    assert limiter.statistics().borrowed_tokens == 0 and other.statistics().borrowed_tokens == 0
    with pytest.raises(KeyError):
        limiter._borrowers.remove(b)  # really gone


@trioflow.tool(outputs=["y"])
async def double(x: int) -> int:
    return 2 * x


async def test_inlined_executor_nodes_are_stored_as_recorded() -> None:
    on_thread = trioflow.tool(outputs=["y"], name="on_thread", executor="thread")(noop)

    @trioflow.graph_fn(outputs=["out"], max_concurrency=1)
    async def graph() -> int:
        total = (await on_thread(x=1))["y"] + (await double(x=2))["y"]

        async def one(i: int) -> None:
            await on_thread(x=i)

        # Three tasks for the one token: those that wait have their row added, then started.
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
        return int(total)

    for listener in (None, [].append):  # the store's sink alone, and beside a listener
        store = trioflow.MemoryStore()
        with trio.fail_after(30):
            result = await trioflow.run_async(
                graph, store=store, run_id="r", record=True, on_event=listener
            )
        assert result.outputs == {"out": 5}
        live, stored = result.record, store.load("r")
        assert list(stored.nodes) == list(live.nodes) == [
            "on_thread_1", "double_1", "on_thread_2", "on_thread_3", "on_thread_4",
        ]  # fmt: skip
        for node_id, rec in live.nodes.items():
            assert rec.state is trioflow.NodeState.DONE, node_id
            assert rec.executor == ("loop" if node_id == "double_1" else "thread")
            assert stored.nodes[node_id].state is rec.state, node_id
            assert stored.nodes[node_id].started_at == rec.started_at, node_id
        assert store.outputs("r")["on_thread_1"] == {"y": 1}


class Later(Inline):
    """A user executor that runs the call after 10 s (of virtual time)."""

    async def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(10)
        return fn(*args, **kwargs)


async def test_an_inlined_executor_node_is_stored_running_while_it_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    later = trioflow.tool(outputs=["y"], name="later", executor="later")(noop)

    @trioflow.graph_fn(outputs=["out"])
    async def graph() -> int:
        return int((await double(x=1))["y"] + (await later(x=3))["y"])

    store = trioflow.MemoryStore()
    seen: list[dict[str, trioflow.NodeState]] = []

    async def look() -> None:
        await trio.sleep(5)
        seen.append(store.load("r").states())

    with trio.fail_after(60):
        async with trioflow.open_runtime(executors={"later": Later()}):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                out = await trioflow.run_async(graph, store=store, run_id="r")
    assert out == {"out": 5}
    assert seen == [{"double_1": trioflow.NodeState.DONE, "later_1": trioflow.NodeState.RUNNING}]
    assert store.load("r").states() == {
        "double_1": trioflow.NodeState.DONE,
        "later_1": trioflow.NodeState.DONE,
    }


async def test_a_quick_limiter_takes_a_free_token_without_a_yield_and_queues_behind_waiters() -> (
    None
):
    from trioflow._executor import QuickLimiter

    instrument = Steps()
    trio.lowlevel.add_instrument(instrument)
    quick = QuickLimiter(2)
    limiter = quick._limiter
    assert limiter is not None
    a, b, c = object(), object(), object()

    async def take_two() -> None:
        await quick.acquire_on_behalf_of(a)
        async with quick:  # trio-parallel's way in: the task is the borrower
            assert limiter.statistics().borrowed_tokens == 2
        await quick.acquire_on_behalf_of(b)

    try:
        assert await steps_of(instrument, take_two) == 0  # free tokens: no trip through Trio
    finally:
        trio.lowlevel.remove_instrument(instrument)
    got: list[str] = []

    async def third() -> None:
        await quick.acquire_on_behalf_of(c)
        got.append("c")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and limiter.statistics().tasks_waiting == 1
            quick.release_on_behalf_of(a)  # to the waiter, by the limiter itself
    assert got == ["c"] and set(limiter.statistics().borrowers) == {b, c}
    quick.release_on_behalf_of(b)
    with trio.CancelScope() as scope:  # a cancelled call takes no token, free as one is
        scope.cancel()
        await quick.acquire_on_behalf_of(a)
    assert scope.cancelled_caught and limiter.statistics().borrowers == [c]
    quick.release_on_behalf_of(c)
    assert limiter.statistics().borrowed_tokens == 0
    with pytest.raises(KeyError):
        limiter._borrowers.remove(c)  # really gone
