"""Argument checks shared by the decorators and the run entry points.

Each raises a `ConfigError`/`ConfigTypeError` that names the argument and says what to write
instead, before anything runs.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import math
from collections.abc import Iterable

from ._errors import ConfigError, ConfigTypeError

__all__ = [
    "adopt_metadata",
    "check_function",
    "check_max_concurrency",
    "check_names",
    "check_seconds",
]


def check_names(value: object, argument: str) -> tuple[str, ...]:
    """Validate a list of identifier names (outputs, inputs, limits)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigTypeError(
            f"{argument} must be a list of names, got {value!r}; "
            f"write {argument}=[{value!r}] for a single name"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigError(
                f"{argument} must contain Python identifiers, got {name!r}; "
                "use names like 'out' or 'rows'"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"{argument} has duplicate names: {list(names)!r}")
    return names


def check_seconds(value: object, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(f"{argument} must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ConfigError(f"{argument} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_max_concurrency(value: object, argument: str = "max_concurrency") -> float:
    """A positive int or `math.inf`; anything else raises before the run starts."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(
            f"{argument} must be a positive int or math.inf, got {value!r}; "
            "use math.inf for no limit"
        )
    if isinstance(value, float) and not (value == math.inf or value.is_integer()):
        raise ConfigError(
            f"{argument} must be a positive int or math.inf, got {value!r}; "
            "use math.inf for no limit"
        )
    if not value >= 1:
        raise ConfigError(
            f"{argument} must be a positive int or math.inf, got {value!r}; "
            "use math.inf for no limit"
        )
    return value if value == math.inf else int(value)


def check_function(fn: object, decorator: str, *, allow_async_generators: bool = False) -> None:
    """Refuse anything that is not a plain function (or an async function)."""
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)):
        raise ConfigTypeError(
            f"{decorator} must decorate a function, got {fn!r}; "
            f"write {decorator}(...) above a def or async def"
        )
    if inspect.isgeneratorfunction(fn) or (
        inspect.isasyncgenfunction(fn) and not allow_async_generators
    ):
        raise ConfigTypeError(f"{decorator} cannot decorate a generator function: {fn!r}")


def adopt_metadata(wrapper: object, fn: object) -> None:
    """`functools.update_wrapper` for frozen attrs wrappers (docs and introspection)."""
    for attr in functools.WRAPPER_ASSIGNMENTS:
        if hasattr(fn, attr):
            object.__setattr__(wrapper, attr, getattr(fn, attr))
    object.__setattr__(wrapper, "__wrapped__", fn)
