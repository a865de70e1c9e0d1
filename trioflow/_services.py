"""Context services: long-lived objects that nodes reach as `context.<name>()`.

`Service` is an optional base class giving `ctx()`, a service-wide lock (`critical`), and
`run_blocking`. The registry maps names to instances; a runtime starts the registered services
(in registration order) and closes them in reverse. Locks are created inside the Trio run that
uses them, never at import or in `__init__`, so one instance works across sequential `trio.run`s.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio

from ._context import NodeContext, current_context
from ._errors import ConfigError, ServiceError

__all__ = [
    "BUILTIN_NAMES",
    "check_service_name",
    "Service",
    "ServiceAccessor",
    "critical",
    "register_context_service",
    "registered_services",
    "unregister_context_service",
]

P = ParamSpec("P")
R = TypeVar("R")

BUILTIN_NAMES = frozenset({"channel", "memory", "artifacts", "logger", "kv"})
_RESERVED = BUILTIN_NAMES | {"run_id", "graph_id", "node_id", "attempt"}

_registry: dict[str, Any] = {}


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

    `start()` and `close()` are awaited by the runtime. `ctx()` is the calling node's context.
    """

    async def start(self) -> None:
        """Called once when the runtime starts (in registration order)."""

    async def close(self) -> None:
        """Called once when the runtime closes (in reverse order)."""

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
        after the thread returns, unless `abandon_on_cancel=True`.
        """
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
