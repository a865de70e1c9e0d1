"""Run events (DESIGN §16): one ordered stream of facts about a run, from the ledger."""

from __future__ import annotations

import math
from datetime import UTC

import pytest
import trio
import trio.testing

import trioflow
from trioflow import NodeState, RunEvent


@trioflow.tool(outputs=["out"])
async def slow_double(x: int) -> int:
    await trio.sleep(x)
    return 2 * x


@trioflow.tool(outputs=["out"])
async def boom(x: int) -> int:
    await trio.sleep(1)
    raise ValueError(f"boom {x}")


@trioflow.graphify(name="pair", outputs=["a", "b"])
def pair():  # type: ignore[no-untyped-def]
    first = slow_double(x=1)
    second = slow_double(x=first.out)
    return {"a": first.out, "b": second.out}


@trioflow.graph_fn(name="fan", outputs=["ys"], max_concurrency=2)
async def fan(xs: list[int]) -> list[int]:
    results = await trioflow.gather(*(slow_double(x=x) for x in xs))
    return [r["out"] for r in results]


def _brief(events: list[RunEvent]) -> list[tuple[object, ...]]:
    return [(e.kind, e.node_id, e.state, e.at, e.known) for e in events]


async def test_static_graph_events_in_order_with_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[RunEvent] = []
    t0 = trio.current_time()
    with trio.fail_after(60):
        outputs = await trioflow.run_async(pair, on_event=events.append, run_id="r1")
    assert outputs == {"a": 2, "b": 4}
    shifted = [(k, n, s, at - t0, known) for k, n, s, at, known in _brief(events)]
    assert shifted == [
        ("run_started", None, None, 0, 0),
        ("node_started", "slow_double_1", NodeState.RUNNING, 0, 2),
        ("node_finished", "slow_double_1", NodeState.DONE, 1, 2),
        ("node_started", "slow_double_2", NodeState.RUNNING, 1, 2),
        ("node_finished", "slow_double_2", NodeState.DONE, 3, 2),
        ("run_finished", None, NodeState.DONE, 3, 2),
    ]
    assert {e.run_id for e in events} == {"r1"}
    assert {e.graph_id for e in events} == {"pair"}
    assert events[1].tool == "slow_double" and events[1].inputs == {"x": 1}
    assert events[2].outputs == {"out": 2} and events[2].attempt == 1
    assert all(e.wall.tzinfo is UTC for e in events)
    assert (events[-1].wall - events[0].wall).total_seconds() == pytest.approx(3)


async def test_graph_fn_events_count_the_nodes_known_so_far(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[RunEvent] = []
    with trio.fail_after(60):
        await trioflow.run_async(fan, {"xs": [1, 1, 1]}, on_event=events.append)
    started = [e for e in events if e.kind == "node_started"]
    assert [e.node_id for e in started] == ["slow_double_1", "slow_double_2", "slow_double_3"]
    # cap 2: two workers admit one call each; the third is admitted when a worker is free
    assert [e.known for e in started] == [1, 2, 3]
    assert events[-1].kind == "run_finished" and events[-1].known == 3


async def test_failure_and_skip_events_carry_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.graphify(name="chain", outputs=["out"])
    def chain():  # type: ignore[no-untyped-def]
        return slow_double(x=boom(x=1).out).out

    events: list[RunEvent] = []
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed):
            await trioflow.run_async(chain, on_event=events.append, on_error="skip_dependents")
    finished = {e.node_id: e for e in events if e.kind == "node_finished"}
    assert finished["boom_1"].state is NodeState.FAILED
    assert finished["boom_1"].error is not None
    assert finished["boom_1"].error.type == "ValueError"
    assert finished["boom_1"].error.message == "boom 1"
    assert finished["slow_double_1"].state is NodeState.SKIPPED
    assert events[-1].kind == "run_finished" and events[-1].state is NodeState.FAILED


async def test_a_listener_exception_fails_the_run_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Full(Exception):
        pass

    ran: list[int] = []

    @trioflow.tool(outputs=["out"])
    async def step(x: int) -> int:
        ran.append(x)
        await trio.sleep(1)
        return x

    @trioflow.graph_fn(name="steps", max_concurrency=1)
    async def steps() -> None:
        for x in range(5):
            await step(x=x)

    def listener(event: RunEvent) -> None:
        if event.kind == "node_finished" and event.node_id == "step_2":
            raise Full("listener is full")

    with trio.fail_after(60):
        with pytest.raises(Full, match="listener is full"):
            await trioflow.run_async(steps, on_event=listener)
    assert ran == [0, 1]  # the run stopped at the listener's failure
    assert trio.current_time() == 2


async def test_open_runtime_listener_hears_every_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kinds: list[tuple[str, str]] = []

    def listener(event: RunEvent) -> None:
        if event.kind.startswith("run"):
            kinds.append((event.kind, event.run_id))

    with trio.fail_after(60):
        async with trioflow.open_runtime(on_event=listener):
            await trioflow.run_async(pair, run_id="a")
            await trioflow.run_async(fan, {"xs": [1]}, run_id="b")
    assert kinds == [
        ("run_started", "a"),
        ("run_finished", "a"),
        ("run_started", "b"),
        ("run_finished", "b"),
    ]


async def test_an_outer_cancel_still_finishes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[RunEvent] = []
    with trio.fail_after(60):
        with trio.move_on_after(0.5):
            await trioflow.run_async(pair, on_event=events.append)
    assert [(e.kind, e.state) for e in events[-2:]] == [
        ("node_finished", NodeState.CANCELLED),
        ("run_finished", NodeState.CANCELLED),
    ]


async def test_timeout_ends_the_stream_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    events: list[RunEvent] = []
    with trio.fail_after(60):
        with pytest.raises(trioflow.RunCancelled):
            await trioflow.run_async(pair, on_event=events.append, timeout=2)
    assert events[-1].kind == "run_finished" and events[-1].state is NodeState.CANCELLED


def test_on_event_must_be_callable() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="on_event"):
        trioflow.run(pair, on_event="print")  # type: ignore[arg-type]


async def test_without_listener_no_event_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real_init = RunEvent.__init__

    def spy(self: RunEvent, *args: object, **kwargs: object) -> None:
        built.append(self)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RunEvent, "__init__", spy)
    await trioflow.run_async(fan, {"xs": [0, 0]}, max_concurrency=math.inf)
    assert built == []
