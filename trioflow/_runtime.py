"""The runtime: a root nursery, the limits its runs share, and the entry points `run`/`run_async`.

`async with open_runtime() as rt:` owns everything long-lived. Runs inside it share its global
limiter and its per-resource limiters; `run()` outside any runtime opens one for that run only.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, overload

import attrs
import trio

from ._builtins import (
    ArtifactStore,
    Channel,
    ChannelMessage,
    KeyValueStore,
    MessageHub,
    NodeMemory,
    RunMemory,
)
from ._checks import check_max_concurrency
from ._context import NodeContext
from ._errors import ConfigError, ConfigTypeError, ContextError, ServiceError
from ._events import Listener, combine_listeners
from ._executor import Executor, ExecutorTable, check_executors
from ._ratelimit import RateLimit
from ._records import RunResult
from ._run import RunSeams, check_run, execute_run
from ._services import ServiceAccessor, check_service_name, registered_services

__all__ = [
    "RunServices",
    "Runtime",
    "current_runtime",
    "open_runtime",
    "run",
    "run_async",
]

_RUNTIME: ContextVar[Runtime | None] = ContextVar("trioflow.runtime", default=None)


_CLOSE_TIMEOUT = 30.0
S = TypeVar("S", bound="Stoppable")
_log = logging.getLogger("trioflow.runtime")


class Stoppable(Protocol):
    """Something the runtime stops on exit, in reverse order: SERVICE_TASK handles."""

    async def aclose(self) -> None: ...


def default_artifacts_dir() -> Path:
    """`$TRIOFLOW_ARTIFACTS`, else `~/.cache/trioflow/artifacts` (created on first put)."""
    env = os.environ.get("TRIOFLOW_ARTIFACTS")
    return Path(env) if env else Path.home() / ".cache" / "trioflow" / "artifacts"


@attrs.define(eq=False)
class Runtime:
    """Everything runs share: the root nursery, limits, services and the built-ins."""

    max_concurrency: float
    nursery: trio.Nursery
    global_limiter: trio.CapacityLimiter | None
    resources: dict[str, trio.CapacityLimiter]
    artifacts_dir: Path = attrs.field(factory=default_artifacts_dir)
    executor_table: ExecutorTable = attrs.field(factory=ExecutorTable)
    on_event: Listener | None = None
    rate_limits: dict[str, RateLimit] = attrs.field(factory=dict)
    store: Any = None
    hub: MessageHub = attrs.field(factory=MessageHub)
    kv_store: KeyValueStore = attrs.field(factory=KeyValueStore)
    _local: dict[str, Any] = attrs.field(factory=dict)
    _started: list[tuple[str, Any]] = attrs.field(factory=list)
    _stoppables: list[Stoppable] = attrs.field(factory=list)
    _artifacts: ArtifactStore | None = None
    _shared: dict[object, Any] = attrs.field(factory=dict)

    # -- services ----------------------------------------------------------------------------

    def lookup(self, name: str) -> Any:
        """The service registered under `name` (this runtime's own first, then the global)."""
        if name in self._local:
            return self._local[name]
        registry = registered_services()
        if name in registry:
            return registry[name]
        known = sorted({*self._local, *registry})
        raise ServiceError(
            f"no service named {name!r}; registered: {known or 'none'}; register one with "
            f"trioflow.register_context_service({name!r}, instance)"
        )

    async def register(self, name: str, instance: object) -> None:
        """Register a service for this runtime only, and start it now; closed on exit."""
        register_check = check_service_name(name)
        self._local[register_check] = instance
        await self._start_one(register_check, instance)

    async def _start_one(self, name: str, instance: object) -> None:
        start = getattr(instance, "start", None)
        if callable(start) and inspect.iscoroutinefunction(start):
            try:
                await start()
            except Exception as exc:
                raise ServiceError(f"service {name!r} failed to start: {exc!r}") from exc
        self._started.append((name, instance))

    async def _start_registered(self) -> None:
        for name, instance in registered_services().items():
            await self._start_one(name, instance)

    def shared(self, key: object, factory: Callable[[], S]) -> S:
        """A per-runtime object for `key`, made on first use and stopped on exit (its
        `aclose()`), like the one instance behind an AGENT_TOOL_AS_SERVICE tool."""
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = factory()
            self.track(found)
        return found

    def track(self, stoppable: Stoppable) -> None:
        """Stop `stoppable` when the runtime closes (SERVICE_TASKs, in reverse start order)."""
        self._stoppables.append(stoppable)

    async def _shutdown(self) -> list[BaseException]:
        """Stop tracked services, then close started services, each in reverse order."""
        errors: list[BaseException] = []
        closers: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (repr(stoppable), stoppable.aclose) for stoppable in reversed(self._stoppables)
        ]
        for name, instance in reversed(self._started):
            close = getattr(instance, "close", None)
            if callable(close) and inspect.iscoroutinefunction(close):
                closers.append((name, close))
        self._stoppables.clear()
        self._started.clear()
        for name, close in closers:
            try:  # one failing teardown must not keep the others from running
                await close()
            except Exception as exc:
                _log.error("service %s failed to close: %r", name, exc, exc_info=exc)
                errors.append(exc)
        return errors

    # -- built-ins ---------------------------------------------------------------------------

    @property
    def artifacts(self) -> ArtifactStore:
        """The content-addressed artifact store (created on first use)."""
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.artifacts_dir)
        return self._artifacts

    def messages(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ChannelMessage]]:
        """Subscribe to channel messages: `async with rt.messages() as m: async for msg in m`."""
        return self.hub.subscribe()

    def services_for(self, run_id: str) -> RunServices:
        """What the nodes of one run see as `context.<name>()` and the built-ins."""
        return RunServices(self, run_id)


@attrs.define(eq=False)
class RunServices:
    """One run's view of the runtime's services; owns the run's memory."""

    runtime: Runtime
    run_id: str
    _memory: RunMemory | None = None

    def lookup_service(self, name: str) -> ServiceAccessor:
        return ServiceAccessor(name, self.runtime.lookup(name))

    def builtin(self, name: str, context: NodeContext) -> Any:
        if name == "channel":
            return Channel(self.runtime.hub, self.run_id, context.graph_id, context.node_id)
        if name == "memory":
            if self._memory is None:
                self._memory = RunMemory(self.run_id)
            return NodeMemory(self._memory, context.node_id)
        if name == "artifacts":
            return self.runtime.artifacts
        if name == "kv":
            return self.runtime.kv_store
        raise ServiceError(f"no built-in named {name!r}")  # pragma: no cover


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
    *,
    max_concurrency: float = math.inf,
    limits: Mapping[str, float] | None = None,
    artifacts_dir: str | os.PathLike[str] | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    on_event: Listener | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime: start the registered services, run the body, then tear down.

    `max_concurrency` caps nodes across *all* runs in the runtime; `limits` defines resource
    limiters that tools name with `@tool(limits=[...])`; `artifacts_dir` is where
    `context.artifacts()` stores files. `executors` adds executor keys (or replaces the
    built-ins `"loop"`, `"thread"`, `"process"`, `"ray"`); each is entered on first use and
    exited here. `rate_limits` defines named `trioflow.RateLimit`s, `store` is the default run
    store of every run in the runtime, and `on_event` hears the `RunEvent`s of every run.
    Services start in registration order; on exit,
    SERVICE_TASKs are stopped and then services closed, each in reverse order, even when the
    body failed or was cancelled.
    """
    cap = check_max_concurrency(max_concurrency)
    resource_caps = _check_limits(limits)
    executor_map = check_executors(executors)
    rates = check_rate_limits(rate_limits)
    if on_event is not None and not callable(on_event):
        raise ConfigTypeError(f"on_event must be a callable taking a RunEvent, got {on_event!r}")
    body_error: BaseException | None = None
    close_errors: list[BaseException] = []
    async with trio.open_nursery() as root:
        runtime = Runtime(
            max_concurrency=cap,
            nursery=root,
            global_limiter=None if cap == math.inf else trio.CapacityLimiter(cap),
            resources={k: trio.CapacityLimiter(v) for k, v in resource_caps.items()},
            executor_table=ExecutorTable(executor_map),
            on_event=on_event,
            rate_limits=rates,
            store=store,
        )
        if artifacts_dir is not None:
            runtime.artifacts_dir = Path(artifacts_dir)
        token = _RUNTIME.set(runtime)
        try:
            await runtime._start_registered()
            yield runtime
        except BaseException as exc:
            # Raised after the nursery closes, so the body's own exception comes out as itself
            # rather than wrapped in the root nursery's exception group.
            body_error = exc
        finally:
            _RUNTIME.reset(token)
            # Teardown runs even when the body was cancelled: shielded, but bounded.
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                close_errors = await runtime._shutdown()
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await runtime.executor_table.aclose()
            root.cancel_scope.cancel(reason="runtime closed")
    if body_error is not None:
        raise body_error
    if close_errors:
        raise ServiceError(f"{len(close_errors)} service(s) failed to close") from close_errors[0]


def check_rate_limits(rate_limits: object) -> dict[str, RateLimit]:
    """Validate a `rate_limits={name: RateLimit(...)}` mapping before anything starts."""
    if rate_limits is None:
        return {}
    if not isinstance(rate_limits, Mapping):
        raise ConfigTypeError(
            f"rate_limits must be a mapping like {{'api': trioflow.RateLimit(10)}}, "
            f"got {rate_limits!r}"
        )
    checked: dict[str, RateLimit] = {}
    for name, limit in rate_limits.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"rate_limits keys must be non-empty strings, got {name!r}")
        if not isinstance(limit, RateLimit):
            raise ConfigTypeError(
                f"rate_limits[{name!r}] must be a trioflow.RateLimit, got {limit!r}"
            )
        checked[name] = limit
    return checked


@overload
async def run_async(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["fail_fast", "skip_dependents"] = "fail_fast",
    record: Literal[False] = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any]: ...
@overload
async def run_async(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["fail_fast", "skip_dependents", "collect"] = "fail_fast",
    record: Literal[True],
    max_concurrency: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> RunResult: ...
@overload
async def run_async(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["collect"],
    record: bool = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> RunResult: ...
@overload
async def run_async(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: str = "fail_fast",
    record: bool = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any] | RunResult: ...
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
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any] | RunResult:
    """Run a graph inside the current Trio run and return its outputs dict.

    `max_concurrency`: this run's cap (else the decorator's, else 4; `math.inf` for none).
    `on_error`: `"fail_fast"`, `"skip_dependents"` or `"collect"`. `timeout`: seconds, then
    `RunCancelled`. `rng`: a `random.Random` breaking ties between ready nodes. `record=True`
    (or `on_error="collect"`) returns a `RunResult` with `.outputs` and `.record`. `on_event`
    hears this run's `RunEvent`s; `executors` and `rate_limits` add to the runtime's; `store`
    (default: the runtime's) persists the run, and `resume=True` finishes a stored run.
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
        executors=executors,
        on_event=on_event,
    )
    own_rates = check_rate_limits(rate_limits)
    runtime = _RUNTIME.get()
    if runtime is not None:
        return await _execute(runtime, graph, options, own_rates)
    async with open_runtime() as runtime:
        return await _execute(runtime, graph, options, own_rates)


async def _execute(
    runtime: Runtime, graph: Any, options: Any, rate_limits: dict[str, RateLimit]
) -> dict[str, Any] | RunResult:
    listener = combine_listeners([runtime.on_event, options.on_event])
    return await execute_run(runtime, graph, options, RunSeams(listener=listener))


@overload
def run(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["fail_fast", "skip_dependents"] = "fail_fast",
    record: Literal[False] = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any]: ...
@overload
def run(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["fail_fast", "skip_dependents", "collect"] = "fail_fast",
    record: Literal[True],
    max_concurrency: float | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> RunResult: ...
@overload
def run(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: Literal["collect"],
    record: bool = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> RunResult: ...
@overload
def run(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    on_error: str = "fail_fast",
    record: bool = False,
    max_concurrency: float | None = None,
    timeout: float | None = None,
    run_id: str | None = None,
    rng: random.Random | None = None,
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any] | RunResult: ...
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
    on_event: Listener | None = None,
    executors: Mapping[str, Executor] | None = None,
    rate_limits: Mapping[str, RateLimit] | None = None,
    store: Any = None,
    resume: bool = False,
) -> dict[str, Any] | RunResult:
    """Run a graph from synchronous code (wraps `trio.run`); see `run_async`.

    A Ctrl-C comes out as a plain `KeyboardInterrupt`, after every task was cancelled.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass
    else:
        raise ContextError(
            "trioflow.run() was called inside a Trio run; use `await trioflow.run_async(...)`"
        )
    options: dict[str, Any] = {
        "max_concurrency": max_concurrency,
        "on_error": on_error,
        "timeout": timeout,
        "run_id": run_id,
        "rng": rng,
        "record": record,
        "on_event": on_event,
        "executors": executors,
        "rate_limits": rate_limits,
        "store": store,
        "resume": resume,
    }
    try:
        return trio.run(functools.partial(run_async, target, inputs, **options))
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
