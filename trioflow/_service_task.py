"""SERVICE_TASK: a service started on demand in the runtime's root nursery.

`handle = await start_server(8080)` returns at once; `await handle` waits until the service is
ready and returns its instance (or re-raises its init failure); `handle.cancel()` stops that
service alone and runs its teardown; `await handle.aclose()` also waits for the teardown.

A service function may return its instance (trioflow then calls the instance's `aclose()`,
`close()` or `shutdown()` on teardown), be an async generator (`yield instance`; the code after
the yield is the teardown, like a pytest fixture), or take `task_status` and call
`task_status.started(instance)` itself.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Literal, TypeVar

import attrs
import trio

from ._checks import adopt_metadata, check_function, check_name, check_seconds
from ._context import FRAME
from ._errors import ConfigError, ServiceError

__all__ = ["ServiceHandle", "ServiceState", "ServiceTask", "service_task", "teardown"]

T = TypeVar("T")
_log = logging.getLogger("trioflow.services")


class ServiceState(enum.StrEnum):
    """The life of a SERVICE_TASK instance."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def __repr__(self) -> str:
        return f"ServiceState.{self.name}"


async def teardown(instance: object) -> None:
    """Close an instance: its `aclose()`, else `close()`, else `shutdown()` (sync or async)."""
    for name in ("aclose", "close", "shutdown"):
        method = getattr(instance, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                await result
            return


def _uses_task_status(fn: Callable[..., Any]) -> bool:
    return "task_status" in inspect.signature(fn).parameters


@attrs.define(eq=False)
class ServiceHandle(Generic[T]):
    """A running service: await it for the instance, cancel it to stop it."""

    name: str
    _body: Callable[..., Awaitable[None]] = attrs.field(alias="body", repr=False)
    _restart: bool = attrs.field(alias="restart", default=False)
    _max_restarts: int = attrs.field(alias="max_restarts", default=3)
    _within: float = attrs.field(alias="within", default=60.0)
    _start_timeout: float | None = attrs.field(alias="start_timeout", default=None)
    state: ServiceState = ServiceState.STARTING
    restarts: int = 0
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False, repr=False)
    _ready: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _done: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _instance: Any = attrs.field(default=None, init=False, repr=False)
    _error: BaseException | None = attrs.field(default=None, init=False, repr=False)
    _ready_at: float | None = attrs.field(default=None, init=False, repr=False)

    # -- the public surface ----------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait_ready().__await__()

    async def wait_ready(self) -> T:
        """Wait until the service is ready; its instance, or its init failure raised."""
        while True:
            await self._ready.wait()
            if self.state is ServiceState.RUNNING:
                return self._instance  # type: ignore[no-any-return]
            if self._error is not None:
                raise self._error
            if self.state is ServiceState.STARTING:  # restarting: wait for the new instance
                continue
            raise ServiceError(f"service {self.name!r} was stopped before it became ready")

    @property
    def uptime(self) -> float:
        """Seconds since the service became ready (0.0 before, and once stopped)."""
        if self.state is not ServiceState.RUNNING or self._ready_at is None:
            return 0.0
        return trio.current_time() - self._ready_at

    def cancel(self, reason: str | None = None) -> None:
        """Stop this service (its teardown runs); other services keep running."""
        if self.state in (ServiceState.STARTING, ServiceState.RUNNING):
            self.state = ServiceState.STOPPING
        self._scope.cancel(reason=reason or f"service {self.name!r} cancelled")

    async def aclose(self) -> None:
        """Cancel, and wait until the teardown has finished."""
        self.cancel()
        await self._done.wait()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- supervision, in the runtime's root nursery -------------------------------------------

    async def supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        FRAME.set(None)  # a service is not part of the node that started it
        task_status.started()
        history: collections.deque[float] = collections.deque()
        try:
            with self._scope:
                while True:
                    crashed = await self._run_once()
                    if crashed is None:
                        break
                    now = trio.current_time()
                    while history and history[0] <= now - self._within:
                        history.popleft()
                    if not self._restart or len(history) >= self._max_restarts:
                        self._fail(crashed)
                        break
                    history.append(now)
                    self.restarts += 1
                    _log.warning("service %r crashed (%r); restarting", self.name, crashed)
                    self._ready = trio.Event()
                    self.state = ServiceState.STARTING
        finally:
            if self.state is not ServiceState.FAILED:
                self.state = ServiceState.STOPPED
            self._ready.set()
            self._done.set()

    def _fail(self, error: BaseException) -> None:
        _log.error("service %r failed: %r", self.name, error, exc_info=error)
        self.state = ServiceState.FAILED
        self._error = error
        self._ready.set()

    async def _run_once(self) -> BaseException | None:
        """One instance, from start to teardown; returns the crash after start, if any."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    if self._start_timeout is None:
                        instance = await nursery.start(self._body)
                    else:
                        with trio.fail_after(self._start_timeout):
                            instance = await nursery.start(self._body)
                except trio.TooSlowError:
                    self._fail(
                        ServiceError(
                            f"service {self.name!r} did not become ready within "
                            f"{self._start_timeout}s (start_timeout)"
                        )
                    )
                    nursery.cancel_scope.cancel()
                    return None
                except RuntimeError as exc:
                    if self._scope.cancel_called:  # cancelled before ready (trio says so this way)
                        return None
                    self._fail(exc)
                    return None
                except Exception as exc:
                    self._fail(exc)  # an init failure: raised from `await handle`, not fatal
                    return None
                self._instance = instance
                self._ready_at = trio.current_time()
                self.state = ServiceState.RUNNING
                self._ready.set()
        except BaseExceptionGroup as group:
            crash, rest = group.split(Exception)
            if rest is not None:
                raise rest from None
            assert crash is not None
            self._ready_at = None
            error: BaseException = crash
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]  # the original exception, not nursery wrappers
            return error
        return None


def _adapt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The service function as a `task_status` function, whatever its form."""
    if _uses_task_status(fn):

        async def with_status(*, task_status: trio.TaskStatus[Any]) -> None:
            await fn(*args, task_status=task_status, **kwargs)

        return with_status
    if inspect.isasyncgenfunction(fn):
        manager = contextlib.asynccontextmanager(fn)

        async def generator(*, task_status: trio.TaskStatus[Any]) -> None:
            async with manager(*args, **kwargs) as instance:
                task_status.started(instance)
                await trio.sleep_forever()

        return generator

    async def returning(*, task_status: trio.TaskStatus[Any]) -> None:
        instance = await fn(*args, **kwargs)
        task_status.started(instance)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await teardown(instance)

    return returning


@attrs.frozen(eq=False, slots=False)
class ServiceTask(Generic[T]):
    """A service started on demand: each call starts a new, independent instance."""

    fn: Callable[..., Any]
    name: str
    start_timeout: float | None = None
    restart: Literal["never", "on-failure"] = "never"
    max_restarts: int = 3
    within: float = 60.0

    def __attrs_post_init__(self) -> None:
        adopt_metadata(self, self.fn)

    async def __call__(self, *args: Any, **kwargs: Any) -> ServiceHandle[T]:
        """Start an instance in the runtime's root nursery; returns its handle at once."""
        from ._runtime import current_runtime

        runtime = current_runtime()
        if runtime is None:
            raise ServiceError(
                f"starting service {self.name!r} needs a runtime: call it inside "
                "`async with trioflow.open_runtime():` or from a node of a run"
            )
        handle: ServiceHandle[T] = ServiceHandle(
            name=self.name,
            body=_adapt(self.fn, args, kwargs),
            restart=self.restart == "on-failure",
            max_restarts=self.max_restarts,
            within=self.within,
            start_timeout=self.start_timeout,
        )
        await runtime.nursery.start(handle.supervise)
        runtime.track(handle)
        return handle


def service_task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    start_timeout: float | None = None,
    restart: Literal["never", "on-failure"] = "never",
    max_restarts: int = 3,
    within: float = 60.0,
) -> Any:
    """Declare a SERVICE_TASK: calling it starts a new instance and returns a `ServiceHandle`.

    `start_timeout` bounds the time to ready. `restart="on-failure"` restarts a service that
    crashes after it was ready, at most `max_restarts` times within any `within` seconds.
    """
    check_name(name, "@trioflow.service_task")
    timeout = check_seconds(start_timeout, "start_timeout")
    if restart not in ("never", "on-failure"):
        raise ConfigError(f"restart must be 'never' or 'on-failure', got {restart!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    window = check_seconds(within, "within")
    assert window is not None

    def decorate(fn: Callable[..., Any]) -> ServiceTask[Any]:
        check_function(fn, "@trioflow.service_task", allow_async_generators=True)
        if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            raise ConfigError(
                f"@trioflow.service_task needs an async def or async generator, got {fn!r}"
            )
        return ServiceTask(
            fn=fn,
            name=name or fn.__name__,
            start_timeout=timeout,
            restart=restart,
            max_restarts=max_restarts,
            within=window,
        )

    return decorate if fn is None else decorate(fn)
