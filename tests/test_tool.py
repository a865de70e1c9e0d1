"""@tool: outputs contract, context injection, sync tools, timeouts and retries."""

from __future__ import annotations

import threading

import pytest
import trio

import trioflow
from trioflow import NodeContext, NodeState


def one_node_graph(t: trioflow.Tool, **inputs: object) -> trioflow.GraphFn:
    @trioflow.graph_fn(name="g", outputs=["result"])
    async def g() -> object:
        return await t(**inputs)

    return g


# -- outputs contract ------------------------------------------------------------------------


async def test_single_output_may_be_returned_bare() -> None:
    @trioflow.tool(outputs=["out"])
    async def four() -> int:
        return 4

    assert await trioflow.run_async(one_node_graph(four)) == {"result": {"out": 4}}


async def test_dict_with_exactly_the_declared_outputs_is_returned() -> None:
    @trioflow.tool(outputs=["a", "b"])
    async def two() -> dict[str, int]:
        return {"a": 1, "b": 2}

    assert await trioflow.run_async(one_node_graph(two)) == {"result": {"a": 1, "b": 2}}


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"a": 1}, "missing outputs ['b']"),
        ({"a": 1, "b": 2, "c": 3}, "unexpected outputs ['c']"),
        (5, "must return a dict"),
    ],
)
async def test_bad_outputs_fail_the_producing_node(returned: object, message: str) -> None:
    @trioflow.tool(outputs=["a", "b"])
    async def bad() -> object:
        return returned

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(one_node_graph(bad))
    assert info.value.node_id == "bad_1"
    assert info.value.tool == "bad"
    assert message in str(info.value.__cause__)
    assert info.value.record is not None
    assert info.value.record.nodes["bad_1"].state is NodeState.FAILED


async def test_single_output_dict_with_extra_keys_is_unexpected() -> None:
    @trioflow.tool(outputs=["out"])
    async def extra() -> dict[str, int]:
        return {"out": 1, "other": 2}

    with pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(one_node_graph(extra))
    assert "unexpected outputs ['other']" in str(info.value.__cause__)


# -- context ---------------------------------------------------------------------------------


async def test_context_is_injected_by_name_and_by_annotation() -> None:
    seen: list[NodeContext] = []

    @trioflow.tool(outputs=["out"])
    async def by_name(x: int, context: NodeContext) -> int:
        seen.append(context)
        return x

    @trioflow.tool(outputs=["out"])
    async def by_annotation(x: int, ctx: NodeContext) -> int:
        seen.append(ctx)
        assert trioflow.current_context() == ctx
        return x

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g(context: NodeContext) -> int:
        a = await by_name(x=1)
        b = await by_annotation(x=2, ctx=context)  # passing it explicitly is allowed
        return a["out"] + b["out"]

    assert await trioflow.run_async(g, run_id="r1") == {"out": 3}
    assert [(c.run_id, c.graph_id, c.node_id, c.attempt) for c in seen] == [
        ("r1", "g", "by_name_1", 1),
        ("r1", "g", "by_annotation_1", 1),
    ]


def test_current_context_outside_a_node_raises_a_clear_error() -> None:
    with pytest.raises(trioflow.ContextError, match="outside a trioflow node"):
        trioflow.current_context()


async def test_logger_is_stamped_with_ids(caplog: pytest.LogCaptureFixture) -> None:
    @trioflow.tool(outputs=["out"])
    async def talk(context: NodeContext) -> None:
        context.logger().warning("hello")

    caplog.set_level("INFO", logger="trioflow")
    await trioflow.run_async(one_node_graph(talk), run_id="r7")
    (record,) = [r for r in caplog.records if r.name == "trioflow.node"]
    assert record.getMessage() == "[r7/talk_1] hello"
    assert (record.run_id, record.graph_id, record.node_id) == ("r7", "g", "talk_1")  # type: ignore[attr-defined]


# -- outside a run, a tool is a plain callable -------------------------------------------------


async def test_outside_a_run_a_tool_is_the_plain_function() -> None:
    @trioflow.tool(outputs=["out"])
    async def inc(x: int) -> dict[str, int]:
        return {"out": x + 1}

    @trioflow.tool(outputs=["out"])
    def dec(x: int) -> int:
        return x - 1

    assert await inc(x=1) == {"out": 2}
    assert dec(3) == 2
    assert inc.__doc__ is None and inc.__name__ == "inc"


# -- sync tools ------------------------------------------------------------------------------


async def test_sync_tools_run_in_a_worker_thread_and_do_not_block_the_loop() -> None:
    main = threading.get_ident()
    release = threading.Event()
    ticks: list[int] = []

    @trioflow.tool(outputs=["thread"])
    def blocking() -> int:
        assert trioflow.current_context().node_id == "blocking_1"
        release.wait(10)
        return threading.get_ident()

    @trioflow.graph_fn(name="g", outputs=["thread"])
    async def g() -> int:
        async def ticker() -> None:
            for i in range(3):
                ticks.append(i)
                await trio.sleep(0.001)
            release.set()

        out, _ = await trioflow.gather(blocking(), ticker)
        return out["thread"]

    with trio.fail_after(10):
        thread = (await trioflow.run_async(g))["thread"]
    assert thread != main
    assert ticks == [0, 1, 2]  # the loop ran while the thread blocked


# -- timeouts and retries (virtual time) ------------------------------------------------------


async def test_timeout_bounds_each_attempt(autojump_clock: trio.testing.MockClock) -> None:
    @trioflow.tool(outputs=["out"], timeout=5)
    async def slow() -> None:
        await trio.sleep(100)

    with trio.fail_after(60), pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(one_node_graph(slow))
    assert isinstance(info.value.__cause__, trio.TooSlowError)
    assert trio.current_time() == pytest.approx(5)


async def test_always_failing_tool_with_three_attempts_is_called_exactly_three_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[float, int]] = []

    @trioflow.tool(outputs=["out"], retry=trioflow.Retry(attempts=3, backoff=2.0))
    async def flaky(context: NodeContext) -> None:
        calls.append((trio.current_time(), context.attempt))
        raise ValueError("boom")

    with trio.fail_after(60), pytest.raises(trioflow.NodeFailed) as info:
        await trioflow.run_async(one_node_graph(flaky), record=True)
    assert calls == [(0.0, 1), (2.0, 2), (4.0, 3)]
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.record is not None
    assert info.value.record.nodes["flaky_1"].attempts == 3


async def test_callable_backoff_gets_the_failed_attempt_number(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    @trioflow.tool(outputs=["out"], retry=trioflow.Retry(attempts=4, backoff=lambda n: 10.0**n))
    async def flaky() -> int:
        starts.append(trio.current_time())
        if len(starts) < 4:
            raise OSError("again")
        return 1

    with trio.fail_after(10_000):
        assert await trioflow.run_async(one_node_graph(flaky)) == {"result": {"out": 1}}
    assert starts == [0.0, 10.0, 110.0, 1110.0]


async def test_retry_on_limits_which_errors_are_retried() -> None:
    calls = 0

    @trioflow.tool(outputs=["out"], retry=trioflow.Retry(attempts=5, retry_on=(OSError,)))
    async def picky() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retried")

    with pytest.raises(trioflow.NodeFailed):
        await trioflow.run_async(one_node_graph(picky))
    assert calls == 1


async def test_timeout_expiry_is_retried_and_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["out"], timeout=1, retry=trioflow.Retry(attempts=2))
    async def first_slow(context: NodeContext) -> int:
        if context.attempt == 1:
            await trio.sleep(10)
        return context.attempt

    with trio.fail_after(60):
        result = await trioflow.run_async(one_node_graph(first_slow), record=True)
    assert result.outputs == {"result": {"out": 2}}
    assert result.record.nodes["first_slow_1"].attempts == 2
    assert trio.current_time() == 1.0


# -- bad declarations fail at decoration time --------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"outputs": "out"}, TypeError, "outputs must be a list of names"),
        ({"outputs": ["not an id"]}, ValueError, "identifiers"),
        ({"outputs": ["a", "a"]}, ValueError, "duplicate"),
        ({"timeout": 0}, ValueError, "timeout must be a positive"),
        ({"timeout": "5"}, TypeError, "timeout must be a number"),
        ({"retry": 3}, TypeError, "retry must be a trioflow.Retry"),
    ],
)
def test_bad_tool_arguments_raise_at_decoration(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        trioflow.tool(**kwargs)  # type: ignore[call-overload]
    assert isinstance(info.value, trioflow.TrioflowError)


def test_decorating_a_non_function_raises() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="must decorate a function"):
        trioflow.tool(outputs=["x"])(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, "attempts"),
        ({"backoff": -1}, "backoff"),
        ({"retry_on": (KeyboardInterrupt,)}, "Exception subclasses"),
    ],
)
def test_bad_retry_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(trioflow.TrioflowError, match=match):
        trioflow.Retry(**kwargs)  # type: ignore[arg-type]


async def test_bad_call_of_a_tool_raises_in_the_caller() -> None:
    @trioflow.tool(outputs=["out"])
    async def needs_x(x: int) -> int:
        return x

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> object:
        return await needs_x(y=1)

    with pytest.raises(trioflow.ConfigTypeError, match="bad call to tool 'needs_x'"):
        await trioflow.run_async(g)
