"""Result caching across runs: `trioflow.Cache` and the key a cached call is stored under.

A key is the tool's name, its version (an explicit `Cache(version=...)`, else a hash of the
tool's source) and the digest of its argument values. Anything that changes one of them is a
miss; nothing else is compared, so a cached tool must be a function of its arguments.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import marshal
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._errors import ConfigError, ConfigTypeError
from ._serialize import Serializer, Unserialisable, describe

__all__ = ["Cache", "cache_key", "check_cache", "tool_version", "unkeyable"]


def _to_seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(
            f"Cache(expire=...) must be seconds, a datetime.timedelta or None, got {value!r}"
        )
    if math.isnan(value) or value <= 0:
        raise ConfigError(f"Cache(expire=...) must be positive, got {value!r}")
    return float(value)


def _check_version(_: object, __: object, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigTypeError(
            f"Cache(version=...) must be a non-empty string or None, got {value!r}"
        )


@attrs.frozen
class Cache:
    """Reuse a tool's stored output when its name, version and argument values are the same.

    `expire`: seconds (or a `timedelta`) on the wall clock from when the output was stored;
    `None` never expires. `version`: replaces the default version, a hash of the tool's source;
    bump it to invalidate every stored output of the tool.
    """

    expire: float | None = attrs.field(default=None, converter=_to_seconds)
    version: str | None = attrs.field(default=None, validator=_check_version)


Cache.__module__ = "trioflow"


def check_cache(value: object) -> Cache | None:
    """`@tool(cache=...)`: `None`/`False` (off), `True` (a default `Cache()`), or a `Cache`."""
    if value is None or value is False:
        return None
    if value is True:
        return Cache()
    if isinstance(value, Cache):
        return value
    raise ConfigTypeError(f"cache must be True, a trioflow.Cache(...) or None, got {value!r}")


_versions: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tool_version(tool: Any) -> str:
    """The tool's cache version: `Cache(version=...)`, else a hash of its function's source."""
    cache: Cache | None = check_cache(getattr(tool, "cache", None))
    if cache is not None and cache.version is not None:
        return cache.version
    found = _versions.get(tool)
    if found is None:
        fn = tool.fn
        try:
            source = inspect.getsource(fn).encode()
        except (OSError, TypeError):  # no source file (REPL, exec): hash the byte code
            code = getattr(fn, "__code__", None)
            source = marshal.dumps(code) if code is not None else repr(fn).encode()
        found = _versions[tool] = "src-" + hashlib.sha256(source).hexdigest()[:16]
    return found


def unkeyable(tool_name: str, exc: Unserialisable) -> str:
    return (
        f"tool {tool_name!r} is cached, so its arguments must be hashable as values, but "
        f"{describe(exc)}"
    )


def cache_key(
    tool: Any,
    inputs: Mapping[str, Any],
    serializer: Serializer | None = None,
    *,
    digest: str | None = None,
) -> str:
    """The store key of a cached call: tool name + version + digest of the argument values.

    Arguments that cannot be encoded raise `ConfigError` naming the tool and the argument.
    """
    if digest is None:
        try:
            digest = (serializer or _JSON).digest(inputs)
        except Unserialisable as exc:
            raise ConfigError(unkeyable(tool.name, exc)) from None
    return cache_keyer(tool)[1](digest)


def cache_keyer(tool: Any) -> tuple[str, Callable[[str], str]]:
    """The tool's cache version, and a function from an argument digest to the store key
    (sha256 of tool name + version + digest; the shared prefix is hashed once)."""
    version = tool_version(tool)
    prefix = hashlib.sha256(f"{tool.name}\x00{version}\x00".encode())

    def key(digest: str) -> str:
        h = prefix.copy()
        h.update(digest.encode())
        return h.hexdigest()

    return version, key


_JSON = Serializer("json")
