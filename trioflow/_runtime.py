"""The runtime: a root nursery, the limits its runs share, and the entry points `run`/`run_async`.

`async with open_runtime() as rt:` owns everything long-lived. Runs inside it share its global
limiter and its per-resource limiters; `run()` outside any runtime opens one for that run only.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import attrs
import trio

from ._checks import check_max_concurrency
from ._context import ServiceAccess
from ._errors import ConfigError, ConfigTypeError
from ._records import RunResult
from ._run import check_run, execute_run

__all__ = ["Runtime", "current_runtime", "open_runtime", "run", "run_async"]

_RUNTIME: ContextVar[Runtime | None] = ContextVar("trioflow.runtime", default=None)


@attrs.define(eq=False)
class Runtime:
    """Everything runs share: the root nursery, the global limit, resource limits."""

    max_concurrency: float
    nursery: trio.Nursery
    global_limiter: trio.CapacityLimiter | None
    resources: dict[str, trio.CapacityLimiter]
    services: ServiceAccess | None = None


def current_runtime() -> Runtime | None:
    """The runtime the current task runs in, if any."""
    return _RUNTIME.get()


def _check_limits(limits: object) -> dict[str, float]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise ConfigTypeError(f"limits must be a mapping like {{'gpu': 1}}, got {limits!r}")
    checked: dict[str, float] = {}
    for key, value in limits.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"limits keys must be non-empty strings, got {key!r}")
        checked[key] = check_max_concurrency(value, f"limits[{key!r}]")
    return checked


@asynccontextmanager
async def open_runtime(
    *, max_concurrency: float = math.inf, limits: Mapping[str, float] | None = None
) -> AsyncIterator[Runtime]:
    """Open a runtime for the body: runs inside share its limits and its root nursery.

    `max_concurrency` caps nodes across *all* runs in the runtime; `limits` defines resource
    limiters that tools name with `@tool(limits=[...])`.
    """
    cap = check_max_concurrency(max_concurrency)
    resource_caps = _check_limits(limits)
    body_error: BaseException | None = None
    async with trio.open_nursery() as root:
        runtime = Runtime(
            max_concurrency=cap,
            nursery=root,
            global_limiter=None if cap == math.inf else trio.CapacityLimiter(cap),
            resources={k: trio.CapacityLimiter(v) for k, v in resource_caps.items()},
        )
        token = _RUNTIME.set(runtime)
        try:
            yield runtime
        except BaseException as exc:
            # Raised after the nursery closes, so the body's own exception comes out as itself
            # rather than wrapped in the root nursery's exception group.
            body_error = exc
        finally:
            _RUNTIME.reset(token)
            root.cancel_scope.cancel(reason="runtime closed")
    if body_error is not None:
        raise body_error


async def run_async(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    max_concurrency: float | None = None,
    on_error: str = "fail_fast",
    timeout: float | None = None,  # noqa: ASYNC109 - the run's own deadline, part of the API
    run_id: str | None = None,
    rng: random.Random | None = None,
    record: bool = False,
) -> Any:
    """Run a graph inside the current Trio run and return its outputs dict.

    `max_concurrency`: this run's cap (else the decorator's, else 4; `math.inf` for none).
    `on_error`: `"fail_fast"`, `"skip_dependents"` or `"collect"`. `timeout`: seconds, then
    `RunCancelled`. `rng`: a `random.Random` breaking ties between ready nodes. `record=True`
    (or `on_error="collect"`) returns a `RunResult` with `.outputs` and `.record`.
    """
    graph, options = check_run(
        target,
        inputs,
        max_concurrency=max_concurrency,
        on_error=on_error,
        timeout=timeout,
        run_id=run_id,
        rng=rng,
        record=record,
    )
    runtime = _RUNTIME.get()
    if runtime is not None:
        return await execute_run(runtime, graph, options)
    async with open_runtime() as runtime:
        return await execute_run(runtime, graph, options)


def run(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    max_concurrency: float | None = None,
    on_error: str = "fail_fast",
    timeout: float | None = None,
    run_id: str | None = None,
    rng: random.Random | None = None,
    record: bool = False,
) -> dict[str, Any] | RunResult:
    """Run a graph from synchronous code (wraps `trio.run`); see `run_async`.

    A Ctrl-C comes out as a plain `KeyboardInterrupt`, after every task was cancelled.
    """
    options = {
        "max_concurrency": max_concurrency,
        "on_error": on_error,
        "timeout": timeout,
        "run_id": run_id,
        "rng": rng,
        "record": record,
    }
    check_run(target, inputs, **options)  # type: ignore[arg-type]  # raise before trio.run
    try:
        result: dict[str, Any] | RunResult = trio.run(
            functools.partial(run_async, target, inputs, **options)  # type: ignore[arg-type]
        )
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
    return result
