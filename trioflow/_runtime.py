"""The runtime: a root nursery, the limits its runs share, and the entry points `run`/`run_async`.

`async with open_runtime() as rt:` owns everything long-lived. Runs inside it share its global
limiter and its per-resource limiters; `run()` outside any runtime opens one for that run only.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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
from ._checks import check_max_concurrency, check_named
from ._context import RUNTIME, NodeContext, current_runtime
from ._durable import check_durable, run_durable
from ._errors import ConfigTypeError, ContextError, ServiceError
from ._events import Listener, combine_listeners
from ._executor import Executor, ExecutorTable, check_executors
from ._ratelimit import RateLimit, RateLimits
from ._records import RunResult
from ._run import RunSeams, check_run, execute_run
from ._service_task import ServiceHandle
from ._services import (
    DEFAULT_CLOSE_TIMEOUT,
    ServiceAccessor,
    acquire_service,
    check_service_name,
    close_timeout_of,
    registered_services,
    release_service,
    service_closed,
    teardown,
)
from ._store import RunStore, check_store

__all__ = [
    "RunServices",
    "Runtime",
    "current_runtime",
    "open_runtime",
    "run",
    "run_async",
]


_CLOSE_TIMEOUT = 30.0
S = TypeVar("S", bound="Stoppable")
_log = logging.getLogger("trioflow.runtime")


class Stoppable(Protocol):
    """Something the runtime stops on exit, in reverse order: SERVICE_TASK handles."""

    async def aclose(self) -> None: ...


@attrs.frozen
class _Stop:
    """One teardown the runtime owes at exit: a service, a SERVICE_TASK, a shared instance."""

    name: str
    stop: Callable[[float, str], Awaitable[None]]  # given its deadline, and why that one
    bound: float
    force: Callable[[], Awaitable[None]] | None = None  # ends it when the bound passed


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
    # `Service.run_blocking` threads: as many as the runtime's cap allows, not Trio's 40.
    thread_limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(math.inf)
    )
    artifacts_dir: Path = attrs.field(factory=default_artifacts_dir)
    executor_table: ExecutorTable = attrs.field(factory=ExecutorTable)
    on_event: Listener | None = None
    rates: RateLimits = attrs.field(factory=lambda: RateLimits.of(None))  # shared buckets
    store: Any = None
    hub: MessageHub = attrs.field(factory=MessageHub)
    kv_store: KeyValueStore = attrs.field(factory=KeyValueStore)
    _local: dict[str, Any] = attrs.field(factory=dict)
    _stops: list[_Stop] = attrs.field(factory=list)  # in start order
    _handles: list[ServiceHandle[Any]] = attrs.field(factory=list)
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
        await self._acquire(register_check, instance)

    async def _acquire(self, name: str, instance: object) -> None:
        # Started by its first user (in this or another runtime), closed by its last.
        await acquire_service(name, instance)

        async def release(deadline: float, why: str) -> None:
            if release_service(instance):
                try:
                    await teardown(instance)
                except Exception as exc:
                    raise ServiceError(f"service {name!r} failed to close: {exc!r}") from exc
                finally:
                    service_closed(instance)

        self._stops.append(_Stop(repr(name), release, close_timeout_of(instance)))

    async def _start_registered(self) -> None:
        for name, instance in registered_services().items():
            await self._acquire(name, instance)

    def shared(self, key: object, factory: Callable[[], S]) -> S:
        """A per-runtime object for `key`, made on first use and stopped on exit (its
        `aclose()`), like the one instance behind an AGENT_TOOL_AS_SERVICE tool."""
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = factory()
            self.track(found)
        return found

    def track(self, stoppable: Stoppable) -> None:
        """Stop `stoppable` when the runtime closes, in reverse start order with the services
        (its `aclose()`, within the default close timeout)."""
        if isinstance(stoppable, ServiceHandle):
            self._handles.append(stoppable)
            self._stops.append(
                _Stop(
                    repr(stoppable.name),
                    stoppable._stop,
                    stoppable._options.close_timeout,
                    stoppable._abandon,
                )
            )
            return

        async def stop(deadline: float, why: str) -> None:
            await stoppable.aclose()

        name = getattr(stoppable, "name", None)
        label = repr(name) if isinstance(name, str) else repr(stoppable)
        self._stops.append(_Stop(label, stop, DEFAULT_CLOSE_TIMEOUT))

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C arrives at an await, where it is caught
    async def _shutdown(self) -> tuple[list[Exception], BaseException | None]:
        """Tear everything down one by one, in reverse start order, each within its bound.

        Each teardown is shielded from outside cancellation (a cancelled runtime still closes
        its services properly) but bounded: by its own close timeout, and by the caller's
        deadline while that has not passed. Returns the teardown errors and a Ctrl-C that
        arrived meanwhile (the rest are still torn down before it is raised).
        """
        errors: list[Exception] = []
        interrupted: BaseException | None = None
        caller_deadline = trio.current_effective_deadline()  # -inf if already cancelled
        while self._stops:
            stop = self._stops.pop()
            now = trio.current_time()
            deadline = now + stop.bound
            why = f"within {stop.bound}s"
            if now < caller_deadline < deadline:
                deadline, why = caller_deadline, "before the caller's deadline"
            scope = trio.CancelScope(shield=True, deadline=deadline)
            try:
                with scope:
                    try:  # one failing teardown must not keep the others from running
                        await stop.stop(deadline, why)
                    except ServiceError as exc:  # names the service already
                        if stop.force is None:  # a SERVICE_TASK logged its own
                            _log.error("%s", exc, exc_info=exc.__cause__ or exc)
                        errors.append(exc)
                    except Exception as exc:
                        error = ServiceError(f"service {stop.name} failed to close: {exc!r}")
                        error.__cause__ = exc
                        _log.error("%s", error, exc_info=exc)
                        errors.append(error)
            except KeyboardInterrupt as exc:  # re-raised by open_runtime once all is closed
                interrupted = interrupted or exc
            if scope.cancelled_caught:
                if stop.force is not None:  # so that the next teardown starts after this one
                    try:
                        await stop.force()
                    except KeyboardInterrupt as exc:
                        interrupted = interrupted or exc
                error = ServiceError(f"service {stop.name} did not close {why}")
                _log.error("%s; moving on to the next", error)
                errors.append(error)
        self._force_all()
        return errors, interrupted

    def _force_all(self) -> None:
        """End every SERVICE_TASK still running: none may outlive the root nursery."""
        for handle in self._handles:
            if not handle.done:
                handle._force()

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


def _check_limits(limits: object) -> dict[str, float]:
    return check_named(
        limits, "limits", "{'gpu': 1}", lambda key, n: check_max_concurrency(n, f"limits[{key!r}]")
    )


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
    Services start in registration order; on exit, even when the body failed or was cancelled,
    SERVICE_TASKs and services are torn down one by one in reverse start order, each within
    its close timeout (see docs/services.md for what is raised).
    """
    cap = check_max_concurrency(max_concurrency)
    resource_caps = _check_limits(limits)
    executor_map = check_executors(executors)
    rates = check_rate_limits(rate_limits)
    store = check_store(store)
    if on_event is not None and not callable(on_event):
        raise ConfigTypeError(f"on_event must be a callable taking a RunEvent, got {on_event!r}")
    body_error: BaseException | None = None
    close_errors: list[Exception] = []
    interrupted: BaseException | None = None
    nursery_error: BaseExceptionGroup[BaseException] | None = None
    try:
        async with trio.open_nursery() as root:
            runtime = Runtime(
                max_concurrency=cap,
                nursery=root,
                global_limiter=None if cap == math.inf else trio.CapacityLimiter(cap),
                thread_limiter=trio.CapacityLimiter(cap),
                resources={k: trio.CapacityLimiter(v) for k, v in resource_caps.items()},
                executor_table=ExecutorTable(executor_map),
                on_event=on_event,
                rates=RateLimits.of(rates),
                store=store,
            )
            if artifacts_dir is not None:
                runtime.artifacts_dir = Path(artifacts_dir)
            token = RUNTIME.set(runtime)
            try:
                await runtime._start_registered()
                yield runtime
            except BaseException as exc:  # re-raised below, after teardown, as itself
                body_error = exc
            finally:
                RUNTIME.reset(token)
                try:
                    close_errors, interrupted = await runtime._shutdown()
                    with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                        try:
                            await runtime.executor_table.aclose()
                        except Exception as exc:
                            _log.error("executors failed to close: %r", exc, exc_info=exc)
                            close_errors.append(exc)
                finally:  # even if something above was interrupted: nothing outlives the root
                    runtime._force_all()
                    root.cancel_scope.cancel(reason="runtime closed")
    except BaseExceptionGroup as group:  # a Ctrl-C that landed in a service task, say
        nursery_error = group
    error = _exit_error(body_error, close_errors, interrupted, nursery_error)
    if error is not None:
        raise error


def _exit_error(
    body: BaseException | None,
    close_errors: list[Exception],
    interrupted: BaseException | None,
    nursery: BaseExceptionGroup[BaseException] | None,
) -> BaseException | None:
    """What leaves `open_runtime`: never a wrapper group around a cancel or a Ctrl-C, never a
    lost error.

    A Ctrl-C wins (bare `KeyboardInterrupt`); then the body's own exception, as itself (any
    teardown errors are logged and attached as notes); then the teardown errors (one
    `ServiceError` naming the services); then the body's `Cancelled` (bare).
    """
    leaves: list[BaseException] = []
    if nursery is not None:
        _leaves(nursery, leaves)
    interrupts = [e for e in (body, interrupted, *leaves) if isinstance(e, KeyboardInterrupt)]
    others = [e for e in leaves if isinstance(e, Exception)]
    close = _close_error([*close_errors, *others])
    if interrupts:
        first = interrupts[0]
        if close is not None:
            first.add_note(f"while the runtime closed: {close}")
        if isinstance(body, Exception):
            first.__context__ = body
        return first
    if isinstance(body, Exception):
        if close is not None:
            body.add_note(f"and while the runtime closed: {close}")
            for error in close_errors:
                body.add_note(f"  {error}")
        return body
    if close is not None:
        if body is not None:
            close.__context__ = body
        return close
    if body is not None:
        return body
    cancels = [e for e in leaves if isinstance(e, trio.Cancelled)]
    return cancels[0] if cancels else None


def _leaves(error: BaseException, into: list[BaseException]) -> None:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            _leaves(inner, into)
    else:
        into.append(error)


def _close_error(errors: list[Exception]) -> ServiceError | None:
    """One `ServiceError` for the teardowns that failed: the error itself if one, else one
    naming them all, caused by a group of them."""
    if not errors:
        return None
    if len(errors) == 1 and isinstance(errors[0], ServiceError):
        return errors[0]
    summary = "; ".join(str(e) for e in errors)
    combined = ServiceError(f"{len(errors)} teardowns failed at runtime exit: {summary}")
    combined.__cause__ = ExceptionGroup("runtime teardown errors", errors)
    return combined


def check_rate_limits(rate_limits: object) -> dict[str, RateLimit]:
    """Validate a `rate_limits={name: RateLimit(...)}` mapping before anything starts."""

    def one(name: str, limit: object) -> RateLimit:
        if not isinstance(limit, RateLimit):
            raise ConfigTypeError(
                f"rate_limits[{name!r}] must be a trioflow.RateLimit, got {limit!r}"
            )
        return limit

    return check_named(rate_limits, "rate_limits", "{'api': trioflow.RateLimit(10)}", one)


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
    runtime = RUNTIME.get()
    store = check_durable(store, resume, options, runtime.store if runtime else None)
    if runtime is not None:
        return await _execute(runtime, graph, options, own_rates, store, resume)
    async with open_runtime() as runtime:
        return await _execute(runtime, graph, options, own_rates, store, resume)


async def _execute(
    runtime: Runtime,
    graph: Any,
    options: Any,
    rate_limits: dict[str, RateLimit],
    store: RunStore | None = None,
    resume: bool = False,
) -> dict[str, Any] | RunResult:
    listener = combine_listeners([runtime.on_event, options.on_event])
    rates = runtime.rates.overlay(rate_limits)  # the run's own limits on top of the runtime's
    seams = RunSeams(listener=listener, rates=rates if rates.names() else None)
    if store is not None:  # the run's own store, else the runtime's (see check_durable)
        result: dict[str, Any] | RunResult = await run_durable(
            runtime, graph, options, seams, store, resume
        )
        return result
    return await execute_run(runtime, graph, options, seams)


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
