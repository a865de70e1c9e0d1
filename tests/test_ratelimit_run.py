"""Rate limits through `trioflow.run`: tools that take turns, in virtual time, exact.

A tool with `rate_limit=` takes a turn before each attempt (after its slots), `rate_key` picks
the bucket, the wait shows in `NodeRecord.waited`, and `context.rate_limit()` takes a turn from
plain code. The window property is checked through the scheduler with Hypothesis.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st
from test_ratelimit import Model, max_in_window, window_bound

import trioflow
from trioflow import NodeState, RateLimit


def host(url: str) -> str:
    return url.split("/")[2]


# -- through graph_fn ------------------------------------------------------------------------


async def test_calls_start_at_the_gcra_times_and_the_record_shows_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: dict[int, float] = {}

    @trioflow.tool(outputs=["y"], rate_limit="api")
    async def call(i: int) -> int:
        starts[i] = trio.current_time()
        return i

    @trioflow.graph_fn(name="fan", outputs=["ys"])
    async def fan(n: int) -> list[int]:
        return [r["y"] for r in await trioflow.map(call, range(n))]

    with trio.fail_after(100):
        result = await trioflow.run_async(
            fan,
            {"n": 7},
            max_concurrency=math.inf,
            rate_limits={"api": RateLimit(4, burst=3)},
            record=True,
        )
    assert result.outputs == {"ys": list(range(7))}
    assert sorted(starts.values()) == [0, 0, 0, 0.25, 0.5, 0.75, 1.0]
    record = result.record
    nodes = [record.nodes[f"call_{k}"] for k in range(1, 8)]
    assert all(n.state is NodeState.DONE for n in nodes)
    # RUNNING from t=0 (the node held its slot), waiting for its turn until its start
    assert [n.started_at for n in nodes] == [0.0] * 7
    assert sorted(n.waited for n in nodes) == sorted(starts.values())


async def test_rate_key_gives_each_host_its_own_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: dict[str, float] = {}

    @trioflow.tool(outputs=["page"], rate_limit="host", rate_key=lambda url: host(url))
    async def fetch(url: str) -> str:
        starts[url] = trio.current_time()
        return url

    @trioflow.graph_fn(name="crawl", outputs=["pages"])
    async def crawl(urls: list[str]) -> list[str]:
        return [r["page"] for r in await trioflow.map(fetch, urls)]

    urls = [f"http://{h}/{i}" for i in range(4) for h in ("a.com", "b.org", "c.net")]
    with trio.fail_after(100):
        await trioflow.run_async(
            crawl,
            {"urls": urls},
            max_concurrency=math.inf,
            rate_limits={"host": RateLimit(2, per=1.0)},
        )
    for h in ("a.com", "b.org", "c.net"):
        assert [starts[f"http://{h}/{i}"] for i in range(4)] == [0, 0.5, 1.0, 1.5]


async def test_every_attempt_of_a_retried_call_takes_a_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[str, int, float]] = []

    @trioflow.tool(
        outputs=["y"],
        rate_limit="api",
        retry=trioflow.Retry(attempts=3, backoff=0.25),
    )
    async def flaky(name: str, fails: int, context: trioflow.NodeContext) -> str:
        attempts.append((name, context.attempt, trio.current_time()))
        if context.attempt <= fails:
            raise ConnectionError(f"{name} attempt {context.attempt}")
        return name

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> list[str]:
        a, b = await trioflow.gather(flaky(name="a", fails=2), flaky(name="b", fails=0))
        return [a["y"], b["y"]]

    with trio.fail_after(100):
        result = await trioflow.run_async(
            g, max_concurrency=math.inf, rate_limits={"api": RateLimit(1)}, record=True
        )
    assert result.outputs == {"out": ["a", "b"]}
    # One start a second in all: a(1) and b at 0 and 1 in some order, then a's retries, each
    # asking 0.25 s after its failure and waiting for the next free second.
    times = sorted(t for _, _, t in attempts)
    assert times == [0, 1, 2, 3]
    a_times = [t for name, _, t in attempts if name == "a"]
    assert a_times[1:] == [2, 3]
    node_a = next(n for n in result.record.nodes.values() if n.attempts == 3)
    assert node_a.waited == 2.5  # its three turn waits: the backoff is not a wait


async def test_the_per_attempt_timeout_starts_when_the_turn_is_granted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["y"], rate_limit="api", timeout=1.0)
    async def work(i: int) -> int:
        await trio.sleep(0.9)
        return i

    @trioflow.graph_fn(name="g", outputs=["ys"])
    async def g() -> list[int]:
        return [r["y"] for r in await trioflow.map(work, range(4))]

    with trio.fail_after(100):
        out = await trioflow.run_async(
            g, max_concurrency=math.inf, rate_limits={"api": RateLimit(1)}
        )
    assert out == {"ys": [0, 1, 2, 3]}  # the last waited 3 s for its turn, and did not time out
    assert trio.current_time() == 3.9


async def test_the_turn_is_taken_after_the_slot_so_starts_keep_their_spacing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    @trioflow.tool(outputs=["y"], rate_limit="api")
    async def work(seconds: float) -> float:
        starts.append(trio.current_time())
        await trio.sleep(seconds)
        return seconds

    @trioflow.graph_fn(name="g", outputs=["out"])
    async def g() -> int:
        async def call(seconds: float, *, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await work(seconds=seconds)  # asks for the one slot before the next call is made

        async with trio.open_nursery() as nursery:
            for seconds in (5.0, 0.25, 0.0):
                await nursery.start(call, seconds)
        return 0

    with trio.fail_after(100):
        result = await trioflow.run_async(
            g, max_concurrency=1, rate_limits={"api": RateLimit(1)}, record=True
        )
    # Had the third taken its turn while it waited for the slot (at t=1), it would start at
    # 5.25, right after the second: two starts within one second at one a second.
    assert starts == [0, 5, 6]
    # slot and turn waits together: 5 for the slot; 5.25 for the slot and 0.75 for the turn
    assert [n.waited for n in result.record.nodes.values()] == [0, 5, 6]


async def test_the_node_is_running_while_it_waits_for_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[str, str | None, float]] = []

    def listen(event: trioflow.RunEvent) -> None:
        events.append((event.kind, event.node_id, event.at))

    @trioflow.tool(outputs=["y"], rate_limit="api")
    async def work(i: int) -> int:
        return i

    @trioflow.graph_fn(name="g", outputs=["ys"])
    async def g() -> list[int]:
        return [r["y"] for r in await trioflow.map(work, range(3))]

    with trio.fail_after(100):
        await trioflow.run_async(
            g, max_concurrency=math.inf, rate_limits={"api": RateLimit(1)}, on_event=listen
        )
    started = [at for kind, _, at in events if kind == "node_started"]
    finished = sorted(at for kind, _, at in events if kind == "node_finished")
    assert started == [0, 0, 0]
    assert finished == [0, 1, 2]


# -- definitions, errors ---------------------------------------------------------------------


@trioflow.tool(outputs=["y"], rate_limit="nope")
async def needs_nope(x: int) -> int:
    return x


@trioflow.tool(outputs=["y"])
async def free(x: int) -> int:
    return x


def test_a_static_graph_naming_an_undefined_limit_fails_before_any_node_starts() -> None:
    events: list[trioflow.RunEvent] = []

    @trioflow.graphify(name="g", outputs=["y"])
    def g(x):  # type: ignore[no-untyped-def]
        first = free(x=x)
        return {"y": needs_nope(x=first.y).y}

    for limits in (None, {"api": RateLimit(1)}):
        with pytest.raises(trioflow.ConfigError, match="'nope'") as info:
            trioflow.run(g, inputs={"x": 1}, rate_limits=limits, on_event=events.append)
        assert type(info.value) is trioflow.ConfigError
    assert not [e for e in events if e.kind == "node_started"]


async def test_a_graph_fn_call_naming_an_undefined_limit_fails_before_taking_a_slot() -> None:
    events: list[trioflow.RunEvent] = []

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(x: int) -> int:
        first = await free(x=x)
        return (await needs_nope(x=first["y"]))["y"]  # type: ignore[no-any-return]

    with trio.fail_after(10):
        with pytest.raises(trioflow.ConfigError, match="'nope'") as info:
            await trioflow.run_async(
                g, {"x": 1}, rate_limits={"api": RateLimit(1)}, on_event=events.append
            )
    assert type(info.value) is trioflow.ConfigError
    assert [e.tool for e in events if e.kind == "node_started"] == ["free"]  # never `needs_nope`


def test_tool_rate_parameters_are_checked_at_decoration() -> None:
    with pytest.raises(trioflow.ConfigError, match="rate_key must be a callable"):
        trioflow.tool(rate_limit="api", rate_key="host")  # type: ignore[call-overload]
    with pytest.raises(trioflow.ConfigError, match="rate_key= needs rate_limit="):
        trioflow.tool(rate_key=lambda url: url)
    for bad in ("", 3):
        with pytest.raises(trioflow.ConfigError, match="rate_limit must name"):
            trioflow.tool(rate_limit=bad)  # type: ignore[arg-type]
    with pytest.raises(trioflow.ConfigTypeError, match=r"rate_key=lambda url, \*\*_"):

        @trioflow.tool(rate_limit="api", rate_key=lambda url: url)
        async def fetch(url: str, retries: int = 3) -> str:
            return url


def test_open_runtime_and_run_reject_bad_rate_limit_mappings() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="RateLimit"):
        trioflow.run(g_free, inputs={"x": 1}, rate_limits={"api": 10})  # type: ignore[dict-item]

    async def main() -> None:
        async with trioflow.open_runtime(rate_limits=[1]):  # type: ignore[arg-type]
            pass

    with pytest.raises(trioflow.ConfigTypeError, match="mapping"):
        trio.run(main)


@trioflow.graph_fn(name="g_free", outputs=["y"])
async def g_free(x: int) -> int:
    return (await free(x=x))["y"]  # type: ignore[no-any-return]


async def test_rate_key_gets_the_inputs_with_defaults_once_per_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[dict[str, Any]] = []

    def region_of(**kwargs: Any) -> str:
        seen.append(kwargs)
        return str(kwargs["region"])

    @trioflow.tool(
        outputs=["y"],
        rate_limit="api",
        rate_key=region_of,
        retry=trioflow.Retry(attempts=2),
    )
    async def call(item: int, context: trioflow.NodeContext, region: str = "eu") -> int:
        if context.attempt == 1:
            raise ConnectionError("the first attempt fails")
        return item

    @trioflow.graph_fn(name="g", outputs=["ys"])
    async def g() -> list[int]:
        a, b = await trioflow.gather(call(item=1), call(item=2, region="us"))
        return [a["y"], b["y"]]

    with trio.fail_after(100):
        out = await trioflow.run_async(
            g, max_concurrency=math.inf, rate_limits={"api": RateLimit(1)}
        )
    assert out == {"ys": [1, 2]}
    assert sorted(seen, key=lambda kw: kw["item"]) == [
        {"item": 1, "region": "eu"},
        {"item": 2, "region": "us"},
    ]  # no context; defaults filled in; once per call, not per attempt
    assert trio.current_time() == 1  # two buckets: eu at 0 and 1, us at 0 and 1


async def test_a_failing_or_unhashable_rate_key_fails_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[int] = []

    @trioflow.tool(outputs=["y"], rate_limit="api", rate_key=lambda x: 1 / x)
    async def divides(x: int) -> int:
        ran.append(x)
        return x

    @trioflow.tool(outputs=["y"], rate_limit="api", rate_key=lambda x: [x])  # type: ignore[arg-type,return-value]
    async def listy(x: int) -> int:
        ran.append(x)
        return x

    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g(x: int) -> int:
        return (await divides(x=x))["y"]  # type: ignore[no-any-return]

    @trioflow.graph_fn(name="h", outputs=["y"])
    async def h(x: int) -> int:
        return (await listy(x=x))["y"]  # type: ignore[no-any-return]

    limits = {"api": RateLimit(1)}
    with trio.fail_after(10):
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(g, {"x": 0}, rate_limits=limits)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(h, {"x": 1}, rate_limits=limits)
        assert isinstance(info.value.__cause__, trioflow.ConfigTypeError)
        assert "not hashable" in str(info.value.__cause__)
    assert ran == []


# -- shared buckets, run limits, cancellation ------------------------------------------------


async def test_runs_in_a_runtime_share_its_buckets_and_add_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[tuple[str, float]] = []

    @trioflow.tool(outputs=["y"], rate_limit="api")
    async def api(tag: str) -> str:
        starts.append((tag, trio.current_time()))
        return tag

    @trioflow.tool(outputs=["y"], rate_limit="mine")
    async def mine(tag: str) -> str:
        starts.append((tag, trio.current_time()))
        return tag

    @trioflow.graph_fn(name="g", outputs=["ys"])
    async def g(tag: str, n: int) -> list[str]:
        return [r["y"] for r in await trioflow.map(api, [tag] * n)]

    @trioflow.graph_fn(name="h", outputs=["y"])
    async def h() -> str:
        return (await mine(tag="mine"))["y"]  # type: ignore[no-any-return]

    with trio.fail_after(100):
        async with trioflow.open_runtime(rate_limits={"api": RateLimit(2)}):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trioflow.run_async, g, {"tag": "a", "n": 3})
                nursery.start_soon(trioflow.run_async, g, {"tag": "b", "n": 3})
            # a run's own limit adds to the runtime's, for that run only
            await trioflow.run_async(h, rate_limits={"mine": RateLimit(1)})
            with pytest.raises(trioflow.ConfigError, match="'mine'"):
                await trioflow.run_async(h)
    api_times = sorted(t for tag, t in starts if tag != "mine")
    assert api_times == [0, 0.5, 1, 1.5, 2, 2.5]  # six calls from two runs, one bucket
    assert ("mine", 2.5) in starts  # the bucket "api" was not involved


async def test_a_run_cancelled_while_waiting_consumes_no_turns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    @trioflow.tool(outputs=["y"], rate_limit="api")
    async def call(i: int) -> int:
        starts.append(trio.current_time())
        return i

    @trioflow.graph_fn(name="g", outputs=["ys"])
    async def g(n: int) -> list[int]:
        return [r["y"] for r in await trioflow.map(call, range(n))]

    with trio.fail_after(100):
        async with trioflow.open_runtime(rate_limits={"api": RateLimit(1)}):
            result = await trioflow.run_async(
                g, {"n": 5}, max_concurrency=math.inf, timeout=1.5, on_error="collect"
            )
            assert starts == [0, 1]
            states = sorted(n.state.name for n in result.record.nodes.values() if n.tool == "call")
            assert states == ["CANCELLED"] * 3 + ["DONE"] * 2
            # the three cancelled waiters took nothing: the next turn is at 2, as after 2 starts
            await trioflow.run_async(g, {"n": 2}, max_concurrency=math.inf)
    assert starts == [0, 1, 2, 3]


# -- context.rate_limit() ---------------------------------------------------------------------


async def test_context_rate_limit_in_a_tool_body_and_a_graph_fn_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[tuple[str, float]] = []

    @trioflow.tool(outputs=["waited"])
    async def polite(context: trioflow.NodeContext) -> float:
        waited = await context.rate_limit("api", key="x")
        times.append(("tool", trio.current_time()))
        return waited

    @trioflow.graph_fn(name="g", outputs=["waits"])
    async def g() -> list[float]:
        context = trioflow.current_context()
        waits = []
        for _ in range(2):
            waits.append(await context.rate_limit("api", key="x"))
            times.append(("body", trio.current_time()))
        waits.append((await polite())["waited"])
        waits.append(await context.rate_limit("api"))  # another key: another bucket
        return waits

    with trio.fail_after(100):
        out = await trioflow.run_async(g, rate_limits={"api": RateLimit(2)})
    assert out == {"waits": [0, 0.5, 0.5, 0]}
    assert times == [("body", 0), ("body", 0.5), ("tool", 1.0)]


async def test_context_rate_limit_names_an_undefined_limit() -> None:
    @trioflow.graph_fn(name="g", outputs=["y"])
    async def g() -> float:
        return await trioflow.current_context().rate_limit("nope")

    with trio.fail_after(10):
        with pytest.raises(trioflow.ConfigError, match="'nope'"):
            await trioflow.run_async(g)
        with pytest.raises(trioflow.ConfigError, match="'nope'"):
            await trioflow.run_async(g, rate_limits={"api": RateLimit(1)})


# -- static graphs ----------------------------------------------------------------------------


async def test_a_static_map_takes_turns_per_key(autojump_clock: trio.testing.MockClock) -> None:
    starts: dict[str, float] = {}

    @trioflow.tool(outputs=["page"], rate_limit="host", rate_key=lambda url: host(url))
    async def fetch(url: str) -> str:
        starts[url] = trio.current_time()
        return url

    @trioflow.graphify(name="crawl", inputs=["urls"], outputs=["pages"])
    def crawl(urls):  # type: ignore[no-untyped-def]
        return {"pages": trioflow.map(fetch, urls).page}

    urls = [f"http://{h}/{i}" for h in ("a", "b") for i in range(3)]
    with trio.fail_after(100):
        out = await trioflow.run_async(
            crawl,
            {"urls": urls},
            max_concurrency=math.inf,
            rate_limits={"host": RateLimit(4, burst=2)},
        )
    assert out == {"pages": urls}
    for h in ("a", "b"):  # the scheduler starts ready nodes in its own order
        assert sorted(starts[f"http://{h}/{i}"] for i in range(3)) == [0, 0, 0.25]


# -- the window property through the scheduler -------------------------------------------------


@st.composite
def scheduled_calls(draw: st.DrawFn) -> tuple[RateLimit, list[tuple[float, int, int, float]]]:
    rate = draw(st.sampled_from([0.5, 1, 2, 4]) | st.floats(0.2, 10, allow_nan=False))
    per = draw(st.sampled_from([1.0, 2.0]) | st.floats(0.2, 4, allow_nan=False))
    limit = RateLimit(rate, per=per, burst=draw(st.integers(1, 3)))
    calls = draw(
        st.lists(
            st.tuples(
                st.integers(0, 40).map(lambda q: q / 8),  # when the call is made
                st.integers(0, 1),  # key
                st.integers(0, 2),  # attempts that fail before one succeeds
                st.integers(0, 4).map(lambda q: q / 8),  # retry backoff
            ),
            max_size=20,
        )
    )
    return limit, calls


@given(case=scheduled_calls(), cap=st.sampled_from([1, 2, math.inf]))
def test_attempt_starts_through_the_scheduler_keep_the_window(
    case: tuple[RateLimit, list[tuple[float, int, int, float]]], cap: float
) -> None:
    limit, calls = case
    starts: list[tuple[int, int, float]] = []  # (call, attempt, time)

    def make_tool(i: int) -> trioflow.Tool:
        _, _, fails, backoff = calls[i]

        @trioflow.tool(
            name=f"call{i}",
            outputs=["y"],
            rate_limit="api",
            rate_key=lambda key: key,
            retry=trioflow.Retry(attempts=fails + 1, backoff=backoff),
        )
        async def call(key: int, context: trioflow.NodeContext) -> int:
            starts.append((i, context.attempt, trio.current_time()))
            if context.attempt <= fails:
                raise ConnectionError("again")
            return key

        return call

    tools = [make_tool(i) for i in range(len(calls))]

    @trioflow.graph_fn(name="g", outputs=["n"])
    async def g() -> int:
        async def one(i: int) -> None:
            await trio.sleep_until(calls[i][0])
            await tools[i](key=calls[i][1])

        async with trio.open_nursery() as nursery:
            for i in range(len(calls)):
                nursery.start_soon(one, i)
        return len(calls)

    async def main() -> None:
        with trio.fail_after(100_000):
            await trioflow.run_async(g, max_concurrency=cap, rate_limits={"api": limit})

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    by_key: dict[int, list[tuple[int, int, float]]] = {}
    for i, attempt, t in starts:
        by_key.setdefault(calls[i][1], []).append((i, attempt, t))
    for rows in by_key.values():
        assert max_in_window([t for _, _, t in rows], limit.per) <= window_bound(limit)
    if cap != math.inf:
        return  # slot waits shift the arrivals; the window bound above still holds
    # With free slots, each attempt asks for its turn when the call is made (attempt 1) or
    # `backoff` after the previous attempt failed (bodies take no time). Served first come,
    # first served (ties in start order), each starts exactly when GCRA says.
    start_of = {(i, a): t for i, a, t in starts}
    asks = []
    for (i, a), t in start_of.items():
        at, key, _, backoff = calls[i]
        asked = at if a == 1 else start_of[(i, a - 1)] + backoff
        asks.append((asked, t, key))
    model = Model(limit)
    slack = Fraction(1, 10**9)
    for asked, t, key in sorted(asks, key=lambda r: (r[0], r[1])):
        expected = model.take(asked, key)
        assert expected <= Fraction(t) <= expected + slack, (asked, t, float(expected))
