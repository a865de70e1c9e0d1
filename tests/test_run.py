"""Runs: options, records, deadlines, cancellation, runtime-wide limits, bad arguments."""

from __future__ import annotations

import json
import math
import signal

import pytest
import trio
from helpers import Probe

import trioflow
from trioflow import NodeState
from trioflow.testing import live_tasks


def make_fan(probe: Probe, seconds: float = 1.0, **graph_kwargs: object) -> trioflow.GraphFn:
    @trioflow.tool(outputs=["y"])
    async def work(x: int) -> int:
        await probe.work(x, seconds)
        return x

    @trioflow.graph_fn(name="fan", outputs=["ys"], **graph_kwargs)  # type: ignore[call-overload]
    async def fan(n: int) -> list[int]:
        return [r["y"] for r in await trioflow.gather(*(work(x=i) for i in range(n)))]

    return fan  # type: ignore[no-any-return]


def test_sync_run_returns_the_outputs() -> None:
    fan = make_fan(Probe(), seconds=0)
    assert trioflow.run(fan, inputs={"n": 3}) == {"ys": [0, 1, 2]}


async def test_record_round_trips_through_json(autojump_clock: trio.testing.MockClock) -> None:
    @trioflow.tool(outputs=["y"])
    async def maybe(x: int) -> int:
        await trio.sleep(x)
        if x == 2:
            raise ValueError("two")
        return x

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> int:
        await maybe(x=1)
        try:
            await maybe(x=2)
        except trioflow.NodeFailed:
            pass
        return 0

    with trio.fail_after(10):
        result = await trioflow.run_async(g, record=True, run_id="abc")
    record = result.record
    data = json.loads(json.dumps(record.to_dict()))
    assert trioflow.RunRecord.from_dict(data) == record
    assert data["nodes"]["maybe_2"]["state"] == "FAILED"
    assert data["nodes"]["maybe_2"]["error"]["type"] == "ValueError"
    assert "two" in data["nodes"]["maybe_2"]["error"]["traceback"]
    assert result.errors == {"maybe_2": record.nodes["maybe_2"].error}


async def test_run_timeout_cancels_tool_bodies_and_raises_run_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    fan = make_fan(probe, seconds=100)
    baseline = live_tasks()
    with trio.fail_after(1000), pytest.raises(trioflow.RunCancelled) as info:
        await trioflow.run_async(fan, {"n": 3}, timeout=5)
    assert trio.current_time() == 5
    assert sorted(probe.cancelled) == [0, 1, 2]  # type: ignore[type-var]
    assert info.value.record is not None
    assert set(info.value.record.states().values()) == {NodeState.CANCELLED}
    assert live_tasks() == baseline


async def test_collect_returns_a_result_even_when_the_timeout_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fan = make_fan(Probe(), seconds=100)
    with trio.fail_after(1000):
        result = await trioflow.run_async(fan, {"n": 2}, timeout=5, on_error="collect")
    assert isinstance(result, trioflow.RunResult)
    assert result.outputs == {}
    assert set(result.record.states().values()) == {NodeState.CANCELLED}


async def test_an_enclosing_cancel_scope_propagates_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    fan = make_fan(probe, seconds=100)
    baseline = live_tasks()
    with trio.fail_after(1000):
        with trio.move_on_after(3) as scope:
            await trioflow.run_async(fan, {"n": 4})
    assert scope.cancelled_caught
    assert sorted(probe.cancelled) == [0, 1, 2, 3]  # type: ignore[type-var]
    assert live_tasks() == baseline


async def test_no_task_outlives_a_failed_run(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()

    @trioflow.tool(outputs=["y"])
    async def work(x: int) -> None:
        await probe.work(x, 50)

    @trioflow.tool(outputs=["y"])
    async def boom() -> None:
        await trio.sleep(1)
        raise RuntimeError("boom")

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=math.inf)
    async def g() -> None:
        async def nested() -> None:
            await trioflow.gather(work(x=1), work(x=2))

        await trioflow.gather(nested, boom(), work(x=3))

    baseline = live_tasks()
    with trio.fail_after(100), pytest.raises(trioflow.NodeFailed):
        await trioflow.run_async(g)
    assert live_tasks() == baseline
    assert sorted(probe.cancelled) == [1, 2, 3]  # type: ignore[type-var]
    assert trio.current_time() == 1


async def test_skip_dependents_lets_siblings_finish_and_raises_every_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[int] = []

    @trioflow.tool(outputs=["y"])
    async def work(x: int) -> int:
        await trio.sleep(x)
        if x % 2:
            raise ValueError(x)
        done.append(x)
        return x

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await trioflow.gather(*(work(x=i) for i in range(1, 5)))

    with trio.fail_after(100), pytest.raises(ExceptionGroup) as info:
        await trioflow.run_async(g, on_error="skip_dependents")
    assert done == [2, 4]
    failed = info.value.exceptions
    assert sorted(e.node_id for e in failed) == ["work_1", "work_3"]  # type: ignore[attr-defined]
    assert all(e.record is not None for e in failed)  # type: ignore[attr-defined]


async def test_collect_returns_the_errors_of_a_failed_graph_fn() -> None:
    @trioflow.tool(outputs=["y"])
    async def boom() -> None:
        raise ValueError("x")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await boom()

    result = await trioflow.run_async(g, on_error="collect")
    assert result.outputs == {}
    assert list(result.errors) == ["boom_1"]
    assert not result.ok


# -- runtime-wide limits ---------------------------------------------------------------------


async def test_runs_in_one_runtime_share_its_global_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probe = Probe()
    fan = make_fan(probe, seconds=1, max_concurrency=math.inf)
    with trio.fail_after(100):
        async with trioflow.open_runtime(max_concurrency=3):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(trioflow.run_async, fan, {"n": 3})
    assert probe.peak == 3
    assert trio.current_time() == 4


async def test_resource_limits_are_held_per_key(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()

    @trioflow.tool(outputs=["y"], limits=["gpu"])
    async def on_gpu(x: int) -> None:
        await probe.work(x, 1)

    @trioflow.tool(outputs=["y"])
    async def on_cpu(x: int) -> None:
        await probe.work(-x, 1)

    @trioflow.graph_fn(name="g", outputs=["out"], max_concurrency=10)
    async def g() -> None:
        await trioflow.gather(*(on_gpu(x=i) for i in range(1, 4)), on_cpu(x=1), on_cpu(x=2))

    with trio.fail_after(100):
        async with trioflow.open_runtime(limits={"gpu": 1}):
            await trioflow.run_async(g)
    assert trio.current_time() == 3  # gpu work is serialised; cpu work ran beside it
    assert probe.peak == 3


async def test_an_undefined_resource_limit_fails_the_call() -> None:
    @trioflow.tool(outputs=["y"], limits=["tpu"])
    async def on_tpu() -> None:
        raise AssertionError("must not run")

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await on_tpu()

    with pytest.raises(trioflow.ConfigError, match=r"limits=\['tpu'\]"):
        await trioflow.run_async(g)


# -- bad arguments raise before anything runs -------------------------------------------------


def started_graph() -> tuple[trioflow.GraphFn, list[int]]:
    started: list[int] = []

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g(x: int, y: int = 0) -> int:
        started.append(x)
        return x

    return g, started


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inputs": {"x": 1, "z": 2}}, ValueError, r"unknown inputs \['z'\]"),
        ({"inputs": {}}, ValueError, r"missing required inputs \['x'\]"),
        ({"inputs": [1]}, TypeError, "inputs must be a mapping"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be a positive int"),
        ({"max_concurrency": -3}, ValueError, "math.inf for no limit"),
        ({"max_concurrency": math.nan}, ValueError, "max_concurrency"),
        ({"max_concurrency": 2.5}, ValueError, "max_concurrency"),
        ({"max_concurrency": "4"}, TypeError, "max_concurrency"),
        ({"max_concurrency": True}, TypeError, "max_concurrency"),
        ({"on_error": "ignore"}, ValueError, "on_error must be one of"),
        ({"timeout": -1}, ValueError, "timeout must be a positive"),
        ({"run_id": 5}, ValueError, "run_id"),
        ({"rng": 42}, TypeError, "rng must be a random.Random"),
    ],
)
def test_bad_run_arguments_raise_before_anything_runs(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    g, started = started_graph()
    kwargs = {"inputs": {"x": 1}, **kwargs}
    with pytest.raises(error, match=match) as info:
        trioflow.run(g, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, trioflow.TrioflowError)
    assert started == []


async def test_bad_arguments_to_run_async_are_not_exception_groups() -> None:
    g, started = started_graph()
    with pytest.raises(trioflow.ConfigError):
        await trioflow.run_async(g, {"x": 1}, max_concurrency=0)
    with pytest.raises(trioflow.ConfigTypeError, match="takes a @trioflow.graph_fn"):
        await trioflow.run_async(print)
    with pytest.raises(trioflow.ConfigError, match=r"limits\['gpu'\]"):
        async with trioflow.open_runtime(limits={"gpu": 0}):
            pass
    assert started == []


def test_graph_fn_needs_an_async_def() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="needs an async def"):
        trioflow.graph_fn(name="g")(lambda: None)
    with pytest.raises(trioflow.ConfigError, match="max_concurrency"):
        trioflow.graph_fn(name="g", max_concurrency=0)


# -- KeyboardInterrupt -----------------------------------------------------------------------


def test_keyboard_interrupt_from_sync_run_is_plain_after_everything_was_cancelled() -> None:
    cancelled: list[str] = []

    @trioflow.tool(outputs=["y"])
    async def sleeper(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(name)

    @trioflow.tool(outputs=["y"])
    async def interrupter() -> None:
        await trio.sleep(0.01)
        signal.raise_signal(signal.SIGINT)
        await trio.sleep_forever()

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> None:
        await trioflow.gather(sleeper(name="a"), sleeper(name="b"), interrupter())

    with pytest.raises(KeyboardInterrupt) as info:
        trioflow.run(g)
    assert type(info.value) is KeyboardInterrupt
    assert sorted(cancelled) == ["a", "b"]


def test_a_final_record_reads_compares_serialises_and_pickles_like_a_dict() -> None:
    import pickle

    @trioflow.tool(outputs=["out"])
    async def w(x: int) -> int:
        return x

    @trioflow.graph_fn(name="g")
    async def g() -> int:
        return sum(r["out"] for r in await trioflow.gather(*(w(x=i) for i in range(3))))

    record = trioflow.run(g, record=True).record
    assert list(record.nodes) == ["w_1", "w_2", "w_3"]
    assert "w_2" in record.nodes and "w_9" not in record.nodes
    assert record.nodes["w_2"].state is NodeState.DONE
    again = trioflow.RunRecord.from_dict(record.to_dict())
    assert again == record and record == again
    assert type(again.nodes) is dict
    assert pickle.loads(pickle.dumps(record)) == record
