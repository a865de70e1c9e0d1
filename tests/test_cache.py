"""`trioflow.Cache` and the key a cached call is stored under."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, strategies as st

import trioflow
from trioflow import NodeState
from trioflow._cache import cache_key, check_cache, tool_version
from trioflow._serialize import Serializer


def make_tool(fn: Any, cache: Any = True, name: str | None = None) -> trioflow.Tool:
    return trioflow.tool(outputs=["out"], name=name, cache=cache)(fn)


async def double(x: Any) -> Any:
    return x


async def double_edited(x: Any) -> Any:
    return x  # the same body, another function: the source differs


def test_cache_is_frozen_attrs_with_checked_fields() -> None:
    c = trioflow.Cache(expire=dt.timedelta(minutes=2), version="v2")
    assert c == trioflow.Cache(expire=120, version="v2")
    assert c.expire == 120.0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.version = "v3"  # type: ignore[misc]
    assert trioflow.Cache.__module__ == "trioflow"
    for bad in (0, -1, math.nan, dt.timedelta(0)):
        with pytest.raises(trioflow.ConfigError, match="expire"):
            trioflow.Cache(expire=bad)
    with pytest.raises(trioflow.ConfigTypeError, match="expire"):
        trioflow.Cache(expire="1h")  # type: ignore[arg-type]
    with pytest.raises(trioflow.ConfigTypeError, match="version"):
        trioflow.Cache(version=3)  # type: ignore[arg-type]


def test_cache_argument_forms() -> None:
    assert check_cache(None) is None and check_cache(False) is None
    assert check_cache(True) == trioflow.Cache()
    c = trioflow.Cache(version="x")
    assert check_cache(c) is c
    with pytest.raises(trioflow.ConfigTypeError, match="cache"):
        check_cache("yes")


def test_same_tool_and_arguments_give_the_same_key() -> None:
    t = make_tool(double)
    assert cache_key(t, {"x": [1, 2, {"a": (3, 4)}]}) == cache_key(t, {"x": [1, 2, {"a": (3, 4)}]})
    assert cache_key(t, {"x": {"b": 1, "a": 2}}) == cache_key(t, {"x": {"a": 2, "b": 1}})


@given(st.integers(), st.integers())
def test_a_changed_argument_is_always_another_key(a: int, b: int) -> None:
    t = make_tool(double)
    assert (cache_key(t, {"x": a}) == cache_key(t, {"x": b})) == (a == b)


def test_name_and_version_are_part_of_the_key() -> None:
    base = make_tool(double)
    renamed = make_tool(double, name="other")
    edited = make_tool(double_edited, name="double")
    v1 = make_tool(double, trioflow.Cache(version="1"))
    v2 = make_tool(double, trioflow.Cache(version="2"))
    keys = {cache_key(t, {"x": 1}) for t in (base, renamed, edited, v1, v2)}
    assert len(keys) == 5
    assert tool_version(v1) == "1"
    assert tool_version(base) == tool_version(make_tool(double))  # the source is the default
    assert tool_version(base) != tool_version(edited)


def test_unserialisable_arguments_of_a_cached_tool_name_the_tool() -> None:
    t = make_tool(double, name="fetch")
    with pytest.raises(trioflow.ConfigError, match="'fetch'.*builtins.object") as info:
        cache_key(t, {"x": [object()]})
    assert "argument 'x'" in str(info.value) or "['x']" in str(info.value)


def test_a_pickle_store_keys_unusual_arguments_by_their_pickle() -> None:
    t = make_tool(double)
    pickled = Serializer("pickle")
    assert cache_key(t, {"x": len}, pickled) == cache_key(t, {"x": len}, pickled)
    assert cache_key(t, {"x": len}, pickled) != cache_key(t, {"x": abs}, pickled)


# -- caching in runs ------------------------------------------------------------------------------

ran: list[Any] = []


@trioflow.tool(outputs=["out"], cache=True)
async def slow_square(x: int) -> int:
    ran.append(x)
    await trio.sleep(10)
    return x * x


@trioflow.tool(outputs=["out"], cache=trioflow.Cache(expire=60, version="v1"))
async def fetch(url: str) -> str:
    ran.append(url)
    return f"page of {url}"


@trioflow.graphify(outputs=["a", "b"])
def pair(x: int, y: int) -> dict[str, Any]:
    return {"a": slow_square(x=x).out, "b": slow_square(x=y).out}


@trioflow.graph_fn(outputs=["pages"])
async def crawl(urls: list[str]) -> list[str]:
    got = await trioflow.gather(*(fetch(url=u) for u in urls))
    return [g["out"] for g in got]


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


async def test_a_cached_output_is_reused_by_the_next_run(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        first = await trioflow.run_async(pair, {"x": 2, "y": 3}, store=store, record=True)
        start = trio.current_time()
        second = await trioflow.run_async(pair, {"x": 2, "y": 4}, store=store, record=True)
    assert ran == [2, 3, 4]  # y=4 is another argument value: a miss
    assert first.outputs == {"a": 4, "b": 9} and second.outputs == {"a": 4, "b": 16}
    hit, miss = second.record.nodes["slow_square_1"], second.record.nodes["slow_square_2"]
    assert (hit.state, hit.cached, hit.attempts) == (NodeState.DONE, True, 0)
    assert (miss.cached, miss.attempts) == (False, 1)
    assert not any(r.cached for r in first.record.nodes.values())
    assert trio.current_time() - start == 10  # only the miss took its 10 s
    assert store.load(second.record.run_id).nodes["slow_square_1"].cached


async def test_equal_calls_in_one_run_share_a_finished_output(autojump_clock: Any) -> None:
    store = trioflow.MemoryStore()

    @trioflow.graph_fn(outputs=["out"])
    async def twice() -> int:
        a = await slow_square(x=5)
        b = await slow_square(x=5)
        return a["out"] + b["out"]

    with trio.fail_after(60):
        assert await trioflow.run_async(twice, store=store) == {"out": 50}
    assert ran == [5]


async def test_an_expired_or_reversioned_output_is_a_miss(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioflow import _durable

    store = trioflow.MemoryStore()
    now = [1_000_000.0]
    monkeypatch.setattr(_durable, "_wall_now", lambda: now[0])
    with trio.fail_after(60):
        await trioflow.run_async(crawl, {"urls": ["a", "b"]}, store=store)
        now[0] += 59
        await trioflow.run_async(crawl, {"urls": ["a"]}, store=store)
        assert ran == ["a", "b"]  # a hit 59 s later
        now[0] += 2
        await trioflow.run_async(crawl, {"urls": ["a"]}, store=store)
        assert ran == ["a", "b", "a"]  # expired after 60 s (wall clock), stored again
        bumped = make_tool(fetch.fn, trioflow.Cache(version="v2"), name="fetch")

        @trioflow.graph_fn(name="crawl", outputs=["pages"])
        async def crawl2(urls: list[str]) -> list[str]:
            return [(await bumped(url=u))["out"] for u in urls]

        await trioflow.run_async(crawl2, {"urls": ["a"]}, store=store)
    assert ran == ["a", "b", "a", "a"]  # another version: a miss


async def test_a_cached_tool_without_a_store_fails_before_the_run(autojump_clock: Any) -> None:
    with pytest.raises(trioflow.ConfigError, match="tool 'slow_square' is cached.*store="):
        await trioflow.run_async(pair, {"x": 1, "y": 2})
    assert ran == []
    with pytest.raises(trioflow.ConfigError, match="tool 'fetch' is cached"):
        await trioflow.run_async(crawl, {"urls": ["a"]})
    assert ran == []


async def test_unkeyable_arguments_of_a_cached_tool_fail_its_node(autojump_clock: Any) -> None:
    @trioflow.graph_fn(outputs=["out"])
    async def bad() -> str:
        return (await fetch(url=object()))["out"]  # type: ignore[arg-type]

    store = trioflow.MemoryStore()
    with trio.fail_after(60):
        with pytest.raises(trioflow.NodeFailed) as info:
            await trioflow.run_async(bad, store=store, run_id="r")
    assert isinstance(info.value.__cause__, trioflow.ConfigError)
    assert "tool 'fetch' is cached" in str(info.value.__cause__)
    assert store.load("r").nodes["fetch_1"].state is NodeState.FAILED
    assert ran == []


async def test_a_run_reads_a_tools_cache_rows_once(autojump_clock: Any) -> None:
    reads: list[str] = []

    class Counting(trioflow.MemoryStore):
        def cache_get(self, key: str) -> Any:
            reads.append("one")
            return super().cache_get(key)

        def cache_of(self, tool: str, version: str, limit: int) -> Any:
            reads.append(f"all {tool}")
            return super().cache_of(tool, version, limit)

    store = Counting()
    with trio.fail_after(60):
        await trioflow.run_async(crawl, {"urls": [str(i) for i in range(20)]}, store=store)
        reads.clear()
        ran.clear()
        result = await trioflow.run_async(
            crawl, {"urls": [str(i) for i in range(20)]}, store=store, record=True
        )
    assert ran == [] and all(r.cached for r in result.record.nodes.values())
    assert reads == ["all fetch"]
