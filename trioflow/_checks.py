"""Argument checks shared by the decorators and the run entry points, and the outputs rule.

Each check raises a `ConfigError`/`ConfigTypeError` that names the argument and says what to
write instead, before anything runs. `outputs_dict` is the one rule for return values, shared by
tools, graph_fn bodies and graphify traces.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import keyword
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ._errors import ConfigError, ConfigTypeError

T = TypeVar("T")

__all__ = [
    "check_named",
    "adopt_metadata",
    "check_function",
    "check_max_concurrency",
    "check_name",
    "check_names",
    "check_seconds",
    "closest",
    "is_typo",
    "outputs_dict",
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


def check_name(value: object, decorator: str) -> str | None:
    """The `name=` argument of a decorator: None (use the function's name) or a non-empty str."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(
            f"{decorator}(name=...) must be a non-empty string, got {value!r}; "
            "leave it out to use the function's name"
        )
    return value


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate that `name` most likely misspells, for a "did you mean" (difflib)."""
    found = difflib.get_close_matches(name, sorted(candidates), n=1)
    return found[0] if found else None


def is_typo(key: str, name: str) -> bool:
    """Whether `key` is one slip away from `name`: a changed case, or one letter inserted,
    deleted, replaced or swapped with its neighbour (two for names of six letters or more)."""
    a, b = key.lower(), name.lower()
    if a == b:
        return key != name
    limit = 2 if len(name) >= 6 else 1
    if abs(len(a) - len(b)) > limit:
        return False
    # Optimal string alignment distance (Levenshtein plus adjacent transpositions).
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1] <= limit


def outputs_dict(owner: str, outputs: tuple[str, ...], result: Any) -> dict[str, Any]:
    """The one rule for what a tool, a graph_fn or a graphify body returns.

    A dict with exactly the declared outputs is the outputs dict. With one declared output
    `out`, a dict holding the key `out` is the outputs dict too (so it must hold nothing else);
    a dict whose only key is a typo of `out` (`otu`, `outs`, `Out`) is an error, since it is
    almost certainly not meant as the value; any other value, dicts included, is the value of
    `out`. Anything else raises `TypeError`/`ValueError` naming the keys that are wrong.
    """
    if len(outputs) == 1:
        (out,) = outputs
        if not isinstance(result, dict):
            return {out: result}
        if out not in result:
            if len(result) == 1:
                (key,) = result
                if isinstance(key, str) and is_typo(key, out):
                    raise ValueError(
                        f"{owner} returned {{{key!r}: ...}}: did you mean its output {out!r}? "
                        f"To return a dict as the value of {out!r}, return {{{out!r}: {{...}}}}"
                    )
            return {out: result}
        if len(result) == 1:
            return result
    elif result is None and not outputs:
        return {}
    elif not isinstance(result, dict):
        raise TypeError(
            f"{owner} must return a dict with outputs {list(outputs)}, got {type(result).__name__}"
        )
    if len(result) == len(outputs) and all(k in result for k in outputs):
        return result
    missing = [k for k in outputs if k not in result]
    unexpected = [k for k in result if k not in outputs]
    parts = []
    if missing:
        parts.append(f"missing outputs {missing}")
    if unexpected:
        hints = [f"{k!r} (did you mean {m!r}?)" for k in unexpected if (m := closest(k, missing))]
        parts.append(
            f"unexpected outputs {unexpected}" + (f": {', '.join(hints)}" if hints else "")
        )
    raise ValueError(f"{owner} returned {', '.join(parts)}; it declares outputs={list(outputs)}")


def check_named(
    value: object, argument: str, example: str, check: Callable[[str, Any], T]
) -> dict[str, T]:
    """Validate a mapping of non-empty string names to values (`limits=`, `executors=`,
    `rate_limits=`); `check(name, value)` validates and converts one value."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigTypeError(f"{argument} must be a mapping like {example}, got {value!r}")
    checked: dict[str, T] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{argument} keys must be non-empty strings, got {name!r}")
        checked[name] = check(name, item)
    return checked
