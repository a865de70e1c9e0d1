"""Context services: long-lived objects that nodes reach as `context.<name>()`.

`Service` is an optional base class giving `ctx()`, a service-wide lock (`critical`), and
`run_blocking`. The registry maps names to instances; a runtime starts the registered services
(in registration order) and closes them in reverse. Locks are created inside the Trio run that
uses them, never at import or in `__init__`, so one instance works across sequential `trio.run`s.

One instance may serve several runtimes at once (two `run_async` calls without an enclosing
runtime, two threads each calling `run()`): its starts and closes are reference-counted per
instance, process-wide, so it is started by its first user and closed by its last, never under
a run that still uses it. One teardown rule serves registered services and SERVICE_TASK
instances alike: `aclose()`, else `close()`, else `shutdown()`; a plain `def` hook (start or
teardown) runs in a worker thread, which is waited for (a thread cannot be interrupted).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Literal, ParamSpec, TypeVar

import attrs
import trio

from ._context import NodeContext, current_context, current_runtime
from ._errors import ConfigError, ServiceError
from ._executor import to_thread

__all__ = [
    "BUILTIN_NAMES",
    "DEFAULT_CLOSE_TIMEOUT",
    "check_service_name",
    "Service",
    "ServiceAccessor",
    "acquire_service",
    "call_hook",
    "close_timeout_of",
    "critical",
    "isolated_services",
    "register_context_service",
    "registered_services",
    "release_service",
    "service_closed",
    "teardown",
    "unregister_context_service",
]

P = ParamSpec("P")
R = TypeVar("R")

BUILTIN_NAMES = frozenset({"channel", "memory", "artifacts", "logger", "kv"})
_RESERVED = BUILTIN_NAMES | {"run_id", "graph_id", "node_id", "attempt"}

_registry: dict[str, Any] = {}

DEFAULT_CLOSE_TIMEOUT = 10.0
"""Seconds one teardown may take before it is cut short and reported (per service)."""


def check_service_name(name: object) -> str:
    """A registrable service name, or a `ConfigError` saying why not."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ConfigError(
            f"a service name must be a public Python identifier, got {name!r}; "
            "nodes reach it as context.<name>()"
        )
    if name in _RESERVED:
        raise ConfigError(
            f"{name!r} is a built-in of every context and cannot be registered; choose another name"
        )
    return name


def register_context_service(name: str, instance: object) -> None:
    """Make `instance` reachable from every node as `context.<name>()`.

    Works before any runtime exists. Registering a name again replaces the instance (how tests
    swap in fakes) and keeps its place in the start order. Built-in names are refused.
    """
    _registry[check_service_name(name)] = instance


def unregister_context_service(name: str) -> None:
    """Remove a registration (tests use this to clean up)."""
    if name not in _registry:
        raise ServiceError(f"no service named {name!r} is registered")
    del _registry[name]


def registered_services() -> dict[str, Any]:
    """A copy of the process-wide registry, in registration order."""
    return dict(_registry)


@contextlib.contextmanager
def isolated_services(services: Mapping[str, object] | None = None) -> Iterator[None]:
    """A fresh, empty service registry for the block, optionally filled with `services`.

    The registry as it was comes back when the block ends, whatever was (un)registered inside:
    `with trioflow.isolated_services({"db": FakeDb()}): ...`. The registry is process-wide, so
    do not isolate it from two threads at once.
    """
    saved = dict(_registry)
    _registry.clear()
    try:
        for name, instance in (services or {}).items():
            register_context_service(name, instance)
        yield
    finally:
        _registry.clear()
        _registry.update(saved)


isolated_services.__module__ = "trioflow"


# -- one rule for starting and closing ----------------------------------------------------------


async def call_hook(method: Callable[[], Any]) -> None:
    """Call a start/teardown hook: awaited if async, else run in a worker thread (waited for)."""
    if inspect.iscoroutinefunction(method):
        await method()
        return
    result = await to_thread(method)
    if inspect.isawaitable(result):  # a plain def that hands back an awaitable
        await result


async def teardown(instance: object) -> None:
    """Close an instance: its `aclose()`, else `close()`, else `shutdown()` (sync or async)."""
    for name in ("aclose", "close", "shutdown"):
        method = getattr(instance, name, None)
        if callable(method):
            await call_hook(method)
            return


def close_timeout_of(instance: object) -> float:
    """The teardown bound of a registered service: its `close_timeout`, else the default."""
    value = getattr(instance, "close_timeout", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_CLOSE_TIMEOUT


# -- sharing one instance between runtimes: reference-counted starts and closes -----------------


@attrs.define(eq=False)
class _Lease:
    """Who uses one service instance right now, process-wide."""

    instance: object
    users: int = 0
    phase: Literal["idle", "starting", "up", "closing"] = "idle"
    waiters: list[tuple[trio.lowlevel.TrioToken, trio.Event]] = attrs.field(factory=list)

    def wake(self) -> None:
        # Waiters may sit in other threads' Trio runs: wake each through its own run's token.
        for token, event in self.waiters:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)
        self.waiters.clear()


_leases: dict[int, _Lease] = {}  # id(instance) -> lease; the lease keeps the instance alive
_leases_lock = threading.Lock()


async def acquire_service(name: str, instance: object) -> None:
    """Count one more user of `instance`, starting it (its `start()`) if it had none.

    While another runtime (in this Trio run or another thread's) is starting or closing the
    same instance, wait for it; a failed start raises `ServiceError` from the original error.
    """
    while True:
        with _leases_lock:
            lease = _leases.get(id(instance))
            if lease is None:
                lease = _leases[id(instance)] = _Lease(instance)
            if lease.phase == "up":
                lease.users += 1
                return
            if lease.phase == "idle":
                lease.phase = "starting"
                break
            event = trio.Event()
            lease.waiters.append((trio.lowlevel.current_trio_token(), event))
        await event.wait()
    started = False
    try:
        start = getattr(instance, "start", None)
        if callable(start):
            try:
                await call_hook(start)
            except Exception as exc:
                raise ServiceError(f"service {name!r} failed to start: {exc!r}") from exc
        started = True
    finally:
        with _leases_lock:
            if started:
                lease.phase = "up"
                lease.users += 1
            else:
                lease.phase = "idle"
                if lease.users == 0:
                    del _leases[id(instance)]
            lease.wake()


def release_service(instance: object) -> bool:
    """Count one user fewer; True when that was the last, and the caller must close it now
    (then call `service_closed`)."""
    with _leases_lock:
        lease = _leases[id(instance)]
        lease.users -= 1
        if lease.users > 0:
            return False
        lease.phase = "closing"
        return True


def service_closed(instance: object) -> None:
    """The last user finished closing `instance`: the next user starts it again."""
    with _leases_lock:
        lease = _leases[id(instance)]
        lease.phase = "idle"
        if lease.users == 0:
            del _leases[id(instance)]
        lease.wake()


class ServiceAccessor:
    """What `context.<name>` is: call it with no arguments for the instance, with arguments to
    call the instance (`await context.predictor("hi")` runs its `__call__`)."""

    __slots__ = ("_instance", "_name")

    def __init__(self, name: str, instance: Any) -> None:
        self._name = name
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            return self._instance
        if not callable(self._instance):
            raise ServiceError(
                f"service {self._name!r} ({type(self._instance).__name__}) is not callable; "
                f"use context.{self._name}() to get the instance"
            )
        return self._instance(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<service {self._name!r}: {self._instance!r}>"


# -- the service-wide lock -------------------------------------------------------------------


class _ServiceLock:
    """A re-entrant lock for one service in one Trio run (a critical method may call another)."""

    __slots__ = ("depth", "lock", "owner", "token")

    def __init__(self, token: object) -> None:
        self.token = token
        self.lock = trio.Lock()
        self.owner: object = None
        self.depth = 0

    async def run(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        task = trio.lowlevel.current_task()
        if self.owner is task:
            self.depth += 1
            try:
                return await fn(*args, **kwargs)
            finally:
                self.depth -= 1
        async with self.lock:
            self.owner = task
            try:
                return await fn(*args, **kwargs)
            finally:
                self.owner = None


# Locks of services that cannot hold an attribute of ours (__slots__ classes).
_slotted_locks: weakref.WeakKeyDictionary[object, _ServiceLock] = weakref.WeakKeyDictionary()


def _lock_of(service: object) -> _ServiceLock:
    # Created lazily, per Trio run: a lock made in one trio.run is useless in the next.
    token = trio.lowlevel.current_trio_token()
    lock: _ServiceLock | None = getattr(service, "_trioflow_lock", None)
    if lock is None:
        lock = _slotted_locks.get(service)
    if lock is None or lock.token is not token:
        lock = _ServiceLock(token)
        try:
            object.__setattr__(service, "_trioflow_lock", lock)
        except AttributeError:
            try:
                _slotted_locks[service] = lock
            except TypeError:
                raise ServiceError(
                    f"{type(service).__name__} has __slots__ without __weakref__, so it "
                    "cannot hold a service lock; add '__weakref__' to its __slots__"
                ) from None
    return lock


def critical(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Decorate an async service method so it runs under the service-wide lock."""

    @functools.wraps(fn)
    async def locked(self: Any, *args: Any, **kwargs: Any) -> R:
        return await _lock_of(self).run(fn, self, *args, **kwargs)

    return locked


class Service:
    """Base class for context services; every method is optional to override.

    `start()` and `close()` are awaited by the runtime (a plain `def` override runs in a worker
    thread). `close()` gets `close_timeout` seconds before it is cut short and reported.
    `ctx()` is the calling node's context.
    """

    close_timeout: float = DEFAULT_CLOSE_TIMEOUT

    async def start(self) -> None:
        """Called once before the first runtime using this instance starts its body."""

    async def close(self) -> None:
        """Called once when the last runtime using this instance closes (in reverse order)."""

    def ctx(self) -> NodeContext:
        """The `NodeContext` of the node calling this service right now."""
        return current_context()

    def critical(self) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """A decorator running a callable under this service's lock:
        `self.incr = self.critical()(self.incr)`."""

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            @functools.wraps(fn)
            async def locked(*args: P.args, **kwargs: P.kwargs) -> R:
                return await _lock_of(self).run(fn, *args, **kwargs)

            return locked

        return decorate

    async def run_blocking(
        self, fn: Callable[..., R], *args: Any, abandon_on_cancel: bool = False
    ) -> R:
        """Run a blocking callable in a worker thread, keeping the event loop responsive.

        The thread is waited for, so none outlives its caller: a cancelled caller is cancelled
        after the thread returns, unless `abandon_on_cancel=True`. Inside a runtime, threads
        are limited by the runtime's `max_concurrency` (unlimited by default), not by Trio's
        default of 40.
        """
        runtime = current_runtime()
        limiter = runtime.thread_limiter if runtime is not None else None
        call = functools.partial(fn, *args) if args else fn
        result: R = await to_thread(call, limiter=limiter, abandon_on_cancel=abandon_on_cancel)
        return result
