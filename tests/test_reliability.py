"""Errors never vanish and runs never hang (issue 9): regression tests for the run core."""

from __future__ import annotations

import gc
import time
import warnings

import pytest
import trio
import trio.testing

import trioflow
from trioflow import NodeState


@trioflow.tool(outputs=["out"])
async def ok(x: int, seconds: float = 0) -> int:
    await trio.sleep(seconds)
    return x


@trioflow.tool(outputs=["out"])
async def fails(x: int, seconds: float = 0) -> int:
    await trio.sleep(seconds)
    raise ValueError(f"fails {x}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


# -- errors that vanish ---------------------------------------------------------------------


async def test_collect_reports_a_graph_fn_body_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.graph_fn(name="body_fails")
    async def body_fails() -> int:
        await ok(x=1)
        raise KeyError("the body itself")

    with trio.fail_after(10):
        result = await trioflow.run_async(body_fails, on_error="collect")
    assert result.outputs == {}
    assert not result.ok
    assert result.errors["body_fails"].type == "KeyError"
    assert result.record.nodes["body_fails"].state is NodeState.FAILED
    assert result.record.nodes["ok_1"].state is NodeState.DONE


async def test_a_failure_before_the_deadline_is_raised_with_run_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.graphify(name="g", outputs=["a", "b"])
    def g():  # type: ignore[no-untyped-def]
        return {"a": fails(x=1, seconds=1).out, "b": ok(x=2, seconds=100).out}

    with trio.fail_after(200):
        with pytest.raises(ExceptionGroup) as info:
            await trioflow.run_async(g, on_error="skip_dependents", timeout=5)
    leaves = _leaves(info.value)
    kinds = sorted(type(e).__name__ for e in leaves)
    assert kinds == ["NodeFailed", "RunCancelled"]
    failed = next(e for e in leaves if isinstance(e, trioflow.NodeFailed))
    assert failed.node_id == "fails_1"
    assert isinstance(failed.__cause__, ValueError)
    assert failed.record is not None
    assert trio.current_time() == 5
    with pytest.raises(ExceptionGroup):  # `except*` sees both
        try:
            raise info.value
        except* trioflow.RunCancelled:
            pass


def test_fail_fast_failure_is_not_lost_behind_a_slow_thread_and_a_deadline() -> None:
    @trioflow.tool(outputs=["out"])
    def slow_sync() -> int:
        time.sleep(0.3)
        return 1

    @trioflow.graphify(name="g", outputs=["a", "b"])
    def g():  # type: ignore[no-untyped-def]
        return {"a": fails(x=1).out, "b": slow_sync().out}

    with pytest.raises(BaseException) as info:
        trioflow.run(g, timeout=0.1)
    names = [type(e).__name__ for e in _leaves(info.value)]
    assert "NodeFailed" in names, names


async def test_collect_lists_one_error_per_failed_map_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["out"])
    async def odd_fails(x: int) -> int:
        await trio.sleep(x)
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    @trioflow.graphify(name="g", outputs=["out"])
    def g(xs):  # type: ignore[no-untyped-def]
        return trioflow.map(odd_fails, xs).out

    with trio.fail_after(60):
        result = await trioflow.run_async(
            g, {"xs": [0, 1, 2, 3]}, on_error="collect", max_concurrency=10
        )
    assert sorted(result.errors) == ["map_1.odd_fails_2", "map_1.odd_fails_4"]
    states = result.record.states()
    assert states["map_1"] is NodeState.FAILED
    assert states["map_1.odd_fails_1"] is NodeState.DONE
    assert states["map_1.odd_fails_3"] is NodeState.DONE


async def test_static_run_time_errors_name_their_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["items"])
    async def three() -> list[int]:
        return [1, 2, 3]

    @trioflow.graphify(name="not_iterable", outputs=["out"])
    def not_iterable(n):  # type: ignore[no-untyped-def]
        return trioflow.map(ok, n).out

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(not_iterable, {"n": 5})
    assert info.value.node_id == "map_1"
    assert isinstance(info.value.__cause__, TypeError)
    assert info.value.record is not None
    assert info.value.record.nodes["map_1"].state is NodeState.FAILED

    @trioflow.graphify(name="out_of_range", outputs=["out"])
    def out_of_range():  # type: ignore[no-untyped-def]
        return ok(x=three().items[5]).out

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(out_of_range)
    assert info.value.node_id == "ok_1"
    assert isinstance(info.value.__cause__, IndexError)
    assert info.value.record is not None
    assert info.value.record.nodes["ok_1"].state is NodeState.FAILED


@pytest.mark.parametrize("backoff", [lambda n: 1 / 0, lambda n: "soon"])
async def test_a_bad_retry_backoff_fails_its_node(
    autojump_clock: trio.testing.MockClock, backoff: object
) -> None:
    @trioflow.tool(outputs=["out"], retry=trioflow.Retry(attempts=3, backoff=backoff))  # type: ignore[arg-type]
    async def flaky() -> int:
        raise OSError("flaky")

    @trioflow.graph_fn(name="g")
    async def g() -> object:
        return (await flaky())["out"]

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(g)
    assert info.value.node_id == "flaky_1"
    assert isinstance(info.value.__cause__, ZeroDivisionError | TypeError)
    assert info.value.record is not None
    assert info.value.record.nodes["flaky_1"].state is NodeState.FAILED


# -- timeouts and cancellation ---------------------------------------------------------------


def test_a_sync_tool_timeout_fails_the_node_after_its_thread_returns() -> None:
    @trioflow.tool(outputs=["out"], timeout=0.05)
    def sleepy() -> int:
        time.sleep(0.2)
        return 1

    @trioflow.graph_fn(name="g")
    async def g() -> object:
        return (await sleepy())["out"]

    with pytest.raises(trioflow.NodeFailed) as info:
        trioflow.run(g)
    cause = info.value.__cause__
    assert isinstance(cause, trio.TooSlowError)
    assert "sleepy_1" in str(cause) and "0.05" in str(cause) and "attempt 1" in str(cause)


def test_a_run_deadline_that_passes_while_a_thread_runs_cancels_the_run() -> None:
    @trioflow.tool(outputs=["out"])
    def sleepy() -> int:
        time.sleep(0.2)
        return 1

    @trioflow.graph_fn(name="g")
    async def g() -> object:
        return (await sleepy())["out"]

    with pytest.raises(trioflow.RunCancelled) as info:
        trioflow.run(g, timeout=0.05)
    assert info.value.record is not None
    assert info.value.record.nodes["sleepy_1"].state is NodeState.CANCELLED
    assert "sleepy_1" in str(info.value)


# -- inputs that silently gave a wrong result -------------------------------------------------


async def test_an_unawaited_tool_call_warns_naming_it() -> None:
    @trioflow.graph_fn(name="g")
    async def g() -> None:
        ok(x=1)  # never awaited

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await trioflow.run_async(g)
        gc.collect()
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert any("never awaited" in m and "ok" in m for m in messages), messages


async def test_a_call_awaited_in_another_run_is_refused() -> None:
    kept: list[object] = []

    @trioflow.graph_fn(name="make")
    async def make() -> None:
        call = ok(x=1)
        call.used = True  # type: ignore[attr-defined]  # (keep the drop silent)
        kept.append(call)

    @trioflow.graph_fn(name="use")
    async def use() -> object:
        return await kept[0]  # type: ignore[misc]

    await trioflow.run_async(make)
    with pytest.raises(trioflow.ContextError, match="outside the run that made it"):
        await trioflow.run_async(use)


async def test_sync_run_inside_trio_says_use_run_async() -> None:
    @trioflow.graph_fn(name="g")
    async def g() -> int:
        return 1

    with pytest.raises(trioflow.ContextError, match="run_async"):
        trioflow.run(g)


def test_record_must_be_a_bool() -> None:
    @trioflow.graph_fn(name="g")
    async def g() -> int:
        return 1

    with pytest.raises(trioflow.ConfigTypeError, match="record"):
        trioflow.run(g, record="yes")  # type: ignore[arg-type]


# -- sync tools and threads ------------------------------------------------------------------


def test_sync_tools_honour_max_concurrency_beyond_trios_40_threads() -> None:
    import threading

    barrier = threading.Barrier(45, timeout=10)  # needs 45 threads at once

    @trioflow.tool(outputs=["out"])
    def meet(i: int) -> int:
        barrier.wait()
        return i

    @trioflow.graph_fn(name="g")
    async def g() -> list[int]:
        return [r["out"] for r in await trioflow.map(meet, range(45))]

    assert trioflow.run(g, max_concurrency=45) == {"result": list(range(45))}


def test_sync_tools_never_run_more_threads_than_the_cap() -> None:
    import threading

    running = [0, 0]
    lock = threading.Lock()

    @trioflow.tool(outputs=["out"])
    def count(i: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return i

    @trioflow.graph_fn(name="g")
    async def g() -> None:
        await trioflow.map(count, range(40))

    trioflow.run(g, max_concurrency=3)
    assert running[1] == 3
