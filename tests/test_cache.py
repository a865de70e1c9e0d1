"""`trioflow.Cache` and the key a cached call is stored under."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import attrs
import pytest
from hypothesis import given, strategies as st

import trioflow
from trioflow._cache import cache_key, check_cache, tool_version
from trioflow._serialize import Serializer


def make_tool(fn: Any, cache: Any = True, name: str | None = None) -> trioflow.Tool:
    try:
        return trioflow.tool(outputs=["out"], name=name, cache=cache)(fn)  # type: ignore[call-arg]
    except TypeError:  # before the core seams land: set the attribute by hand
        t = trioflow.tool(outputs=["out"], name=name)(fn)
        object.__setattr__(t, "cache", check_cache(cache))
        return t


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
