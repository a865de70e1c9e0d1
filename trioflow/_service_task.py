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
import math
import typing
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any, Generic, Literal, TypeVar, overload

import attrs
import trio

from ._checks import adopt_metadata, check_function, check_name, check_seconds
from ._context import FRAME, current_runtime
from ._errors import ConfigError, ServiceError
from ._services import DEFAULT_CLOSE_TIMEOUT, teardown

__all__ = ["ServiceHandle", "ServiceState", "ServiceTask", "service_task", "teardown"]

T = TypeVar("T")
_log = logging.getLogger("trioflow.services")
_FORCE_GRACE = 1.0  # seconds a teardown that was cut short gets to unwind


class ServiceState(enum.StrEnum):
    """The life of a SERVICE_TASK instance."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def __repr__(self) -> str:
        return f"ServiceState.{self.name}"


# A service body: the user's function adapted to `nursery.start`, given its handle.
Body = Callable[..., Awaitable[None]]


@attrs.frozen
class _Options:
    """A service task's options, as its handle needs them."""

    restart: bool = False
    max_restarts: int = 3
    within: float = 60.0
    start_timeout: float | None = None
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT


@typing.final
@attrs.define(eq=False, init=False, repr=False)
class ServiceHandle(Generic[T]):
    """A running service: await it for the instance, cancel it to stop it.

    Handles are made by calling a service task, never directly. The state changes in one place
    (`_move`), which also keeps the rule that `await handle` answers only with a live instance,
    a failure, or "stopped": while a crashed instance is torn down and restarted it waits.
    """

    _name: str
    _body: Body
    _options: _Options
    _state: ServiceState = ServiceState.STARTING
    _restarts: int = 0
    # Shielded: an enclosing cancel does not reach the service; the runtime stops services one
    # by one, in reverse start order. `_scope` is what `cancel()` cancels.
    _life: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _ready: trio.Event = attrs.field(factory=trio.Event)
    _done: trio.Event = attrs.field(factory=trio.Event)
    _instance: Any = None
    _error: BaseException | None = None
    _close_error: ServiceError | None = None
    _ready_at: float | None = None
    _was_ready: bool = False
    _stop_requested: bool = False
    _stop_deadline: float = math.inf
    _teardown: trio.CancelScope | None = None
    _forced: bool = False
    _close_error_raised: bool = False
    _deadline_why: str = ""  # who set a tighter deadline, if anyone

    def __init__(self) -> None:
        raise TypeError("a ServiceHandle is made by calling a @trioflow.service_task")

    @classmethod
    def _create(cls, name: str, body: Body, options: _Options) -> ServiceHandle[T]:
        handle = cls.__new__(cls)
        handle.__attrs_init__(name, body, options)
        return handle

    def __repr__(self) -> str:
        return f"<ServiceHandle {self._name!r} {self._state.value} restarts={self._restarts}>"

    # -- the public surface ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The service task's name."""
        return self._name

    @property
    def state(self) -> ServiceState:
        """`STARTING`, `RUNNING`, `STOPPING`, `STOPPED` or `FAILED`."""
        return self._state

    @property
    def restarts(self) -> int:
        """How many times the service was restarted after a crash."""
        return self._restarts

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait_ready().__await__()

    async def wait_ready(self) -> T:
        """Wait until the service is ready; its instance, or its init failure raised.

        During a restart this waits for the new instance; it never returns a dead one.
        """
        while True:
            await self._ready.wait()
            if self._state is ServiceState.RUNNING:
                return self._instance  # type: ignore[no-any-return]
            if self._state is ServiceState.FAILED and self._error is not None:
                raise self._error
            if self._state in (ServiceState.STOPPED, ServiceState.FAILED):
                when = "is stopped" if self._was_ready else "was stopped before it became ready"
                raise ServiceError(f"service {self._name!r} {when}")

    @property
    def uptime(self) -> float:
        """Seconds since the service became ready (0.0 before, and once stopped)."""
        if self._state is not ServiceState.RUNNING or self._ready_at is None:
            return 0.0
        return trio.current_time() - self._ready_at

    @property
    def done(self) -> bool:
        """True once the service has stopped (or failed) and its teardown has finished."""
        return self._done.is_set()

    def cancel(self, reason: str | None = None) -> None:
        """Stop this service (its teardown runs, within `close_timeout`); others keep running."""
        if not self._stop_requested:
            self._stop_requested = True
            self._stop_by(trio.current_time() + self._options.close_timeout)
            if self._state in (ServiceState.STARTING, ServiceState.RUNNING):
                self._move(ServiceState.STOPPING)
        self._scope.cancel(reason=reason or f"service {self._name!r} cancelled")

    async def aclose(self) -> None:
        """Cancel, and wait until the teardown has finished.

        Raises `ServiceError` (from the original error) if the teardown failed or did not
        finish within `close_timeout`.
        """
        self.cancel()
        await self._done.wait()
        self._raise_close_error()

    def _raise_close_error(self) -> None:
        if self._close_error is not None:
            self._close_error_raised = True  # the runtime's exit does not raise it again
            raise self._close_error

    # -- the one place the state changes -------------------------------------------------------

    def _move(self, state: ServiceState) -> None:
        self._state = state
        if state is ServiceState.RUNNING:
            self._ready_at = trio.current_time()
            self._was_ready = True
            self._ready.set()
        elif state in (ServiceState.STOPPED, ServiceState.FAILED):
            self._ready_at = None
            self._ready.set()
        else:  # STARTING or STOPPING: no answer yet; waiters wait for the next one
            self._ready_at = None
            if self._ready.is_set():
                self._ready = trio.Event()

    def _fail(self, error: BaseException) -> None:
        _log.error("service %r failed: %r", self._name, error, exc_info=error)
        self._error = error
        self._move(ServiceState.FAILED)

    def _close_failed(self, error: ServiceError) -> None:
        _log.error("%s", error, exc_info=error.__cause__ or error)
        if self._close_error is None:
            self._close_error = error

    # -- bounded teardown ----------------------------------------------------------------------

    def _stop_by(self, deadline: float, why: str = "") -> None:
        """The teardown must end by `deadline` (only ever moved earlier)."""
        if deadline < self._stop_deadline and why:
            self._deadline_why = why
        self._stop_deadline = min(self._stop_deadline, deadline)
        if self._teardown is not None:
            self._teardown.deadline = self._stop_deadline

    def _arm(self, scope: trio.CancelScope) -> None:
        """Turn `scope` into the teardown's scope: shielded, but bounded."""
        if not self._stop_requested and self._state is ServiceState.RUNNING:
            self._move(ServiceState.STOPPING)  # a crash: nobody gets the dying instance
        if self._stop_deadline == math.inf:
            self._stop_deadline = trio.current_time() + self._options.close_timeout
        scope.shield = True
        scope.deadline = self._stop_deadline
        self._teardown = scope

    def _disarm(self, scope: trio.CancelScope) -> None:
        self._teardown = None
        if scope.cancelled_caught:
            if self._forced:
                message = f"service {self._name!r} had its teardown cut short"
            else:
                why = self._deadline_why or f"within {self._options.close_timeout}s (close_timeout)"
                message = f"service {self._name!r} did not finish its teardown {why}"
            self._close_failed(ServiceError(message))

    def _force(self) -> None:
        """The runtime gave up waiting: cut the teardown short and end the service."""
        self._forced = True
        if self._teardown is not None:
            self._teardown.cancel(reason="teardown cut short")
        self._life.cancel(reason="runtime closed")

    async def _abandon(self) -> None:
        """Cut the teardown short, and give it a moment (bounded) to unwind."""
        self._force()
        with trio.move_on_after(_FORCE_GRACE, shield=True):
            await self._done.wait()

    async def _stop(self, deadline: float, why: str) -> None:
        """Stop and wait, tearing down by `deadline` (set by `why`); the runtime's exit calls
        this."""
        self._stop_by(deadline, why)
        self.cancel(reason="runtime closing")
        await self._done.wait()
        if not self._close_error_raised:
            self._raise_close_error()

    # -- supervision, in the runtime's root nursery -------------------------------------------

    async def supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        FRAME.set(None)  # a service is not part of the node that started it
        task_status.started()
        history: collections.deque[float] = collections.deque()
        try:
            with self._life, self._scope:
                while True:
                    crashed = await self._run_once()
                    if crashed is None:
                        break
                    if self._stop_requested:  # failed while tearing down on request
                        self._close_failed(
                            ServiceError(f"service {self._name!r} failed to close: {crashed!r}")
                        )
                        self._close_error.__cause__ = crashed  # type: ignore[union-attr]
                        break
                    now = trio.current_time()
                    while history and history[0] <= now - self._options.within:
                        history.popleft()
                    if not self._options.restart or len(history) >= self._options.max_restarts:
                        self._fail(crashed)
                        break
                    history.append(now)
                    self._restarts += 1
                    _log.warning("service %r crashed (%r); restarting", self._name, crashed)
                    self._stop_deadline = math.inf
                    self._move(ServiceState.STARTING)
        finally:
            if self._state is not ServiceState.FAILED:
                self._move(ServiceState.FAILED if self._close_error else ServiceState.STOPPED)
            self._done.set()

    async def _run_body(self, *, task_status: trio.TaskStatus[Any]) -> None:
        try:
            await self._body(self, task_status=task_status)
        finally:
            if not self._stop_requested and self._state is ServiceState.RUNNING:
                self._move(ServiceState.STOPPING)  # crashed or ended: not a live instance now

    async def _run_once(self) -> BaseException | None:
        """One instance, from start to teardown; returns the crash after start, if any."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    if self._options.start_timeout is None:
                        instance = await nursery.start(self._run_body)
                    else:
                        with trio.fail_after(self._options.start_timeout):
                            instance = await nursery.start(self._run_body)
                except trio.TooSlowError:
                    self._fail(
                        ServiceError(
                            f"service {self._name!r} did not become ready within "
                            f"{self._options.start_timeout}s (start_timeout)"
                        )
                    )
                    nursery.cancel_scope.cancel()
                    return None
                except RuntimeError as exc:
                    if self._stop_requested:  # cancelled before ready (trio says so this way)
                        return None
                    self._fail(exc)
                    return None
                except Exception as exc:
                    self._fail(exc)  # an init failure: raised from `await handle`, not fatal
                    return None
                self._instance = instance
                self._move(ServiceState.RUNNING)
        except BaseExceptionGroup as group:
            crash, rest = group.split(Exception)
            error = None if crash is None else _unwrap(crash)
            if rest is not None:
                if error is not None:
                    self._fail(error)  # reported before the cancellation goes on
                raise
            return error
        return None


def _unwrap(error: BaseException) -> BaseException:
    """The original exception, not the nursery wrappers around a single one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _uses_task_status(fn: Callable[..., Any]) -> bool:
    return "task_status" in inspect.signature(fn).parameters


def _adapt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Body:
    """The service function as a `nursery.start` body taking its handle, whatever its form."""
    if _uses_task_status(fn):

        async def with_status(handle: ServiceHandle[Any], *, task_status: Any) -> None:
            await fn(*args, task_status=task_status, **kwargs)

        return with_status
    if inspect.isasyncgenfunction(fn):

        async def generator(handle: ServiceHandle[Any], *, task_status: Any) -> None:
            agen: AsyncGenerator[Any, None] = fn(*args, **kwargs)
            # The guard is entered before the generator runs, so scopes the generator holds
            # open across its `yield` nest inside it; arming it at teardown shields (and
            # bounds) the code after the `yield` without breaking the scope stack.
            guard = trio.CancelScope()
            try:
                with guard:
                    try:
                        instance = await agen.__anext__()
                    except StopAsyncIteration:
                        raise ServiceError(
                            f"service {handle.name!r} returned without a yield"
                        ) from None
                    task_status.started(instance)
                    try:
                        await trio.sleep_forever()
                    finally:
                        # Like a pytest fixture: the generator is resumed, not thrown into, so
                        # teardown code after a bare `yield` runs (on cancel, exit, failure).
                        handle._arm(guard)
                        await _finish(agen, handle.name)
            finally:
                handle._disarm(guard)

        return generator

    async def returning(handle: ServiceHandle[Any], *, task_status: Any) -> None:
        instance = await fn(*args, **kwargs)
        task_status.started(instance)
        try:
            await trio.sleep_forever()
        finally:
            scope = trio.CancelScope()
            try:
                with scope:
                    handle._arm(scope)
                    await teardown(instance)
            finally:
                handle._disarm(scope)

    return returning


async def _finish(agen: AsyncGenerator[Any, None], name: str) -> None:
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        return
    with contextlib.suppress(RuntimeError):
        await agen.aclose()
    raise ServiceError(f"service {name!r} yielded more than once; a service yields one instance")


@attrs.frozen(eq=False, slots=False)
class ServiceTask(Generic[T]):
    """A service started on demand: each call starts a new, independent instance."""

    fn: Callable[..., Any]
    name: str
    start_timeout: float | None = None
    restart: Literal["never", "on-failure"] = "never"
    max_restarts: int = 3
    within: float = 60.0
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT

    def __attrs_post_init__(self) -> None:
        adopt_metadata(self, self.fn)

    async def __call__(self, *args: Any, **kwargs: Any) -> ServiceHandle[T]:
        """Start an instance in the runtime's root nursery; returns its handle at once."""
        runtime = current_runtime()
        if runtime is None:
            raise ServiceError(
                f"starting service {self.name!r} needs a runtime: call it inside "
                "`async with trioflow.open_runtime():` or from a node of a run"
            )
        handle: ServiceHandle[T] = ServiceHandle._create(
            self.name,
            _adapt(self.fn, args, kwargs),
            _Options(
                restart=self.restart == "on-failure",
                max_restarts=self.max_restarts,
                within=self.within,
                start_timeout=self.start_timeout,
                close_timeout=self.close_timeout,
            ),
        )
        await runtime.nursery.start(handle.supervise)
        runtime.track(handle)
        return handle


@overload
def service_task(fn: Callable[..., Any], /) -> ServiceTask[Any]: ...
@overload
def service_task(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    start_timeout: float | None = None,
    restart: Literal["never", "on-failure"] = "never",
    max_restarts: int = 3,
    within: float = 60.0,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> Callable[[Callable[..., Any]], ServiceTask[Any]]: ...
def service_task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    start_timeout: float | None = None,
    restart: Literal["never", "on-failure"] = "never",
    max_restarts: int = 3,
    within: float = 60.0,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> ServiceTask[Any] | Callable[[Callable[..., Any]], ServiceTask[Any]]:
    """Declare a SERVICE_TASK: calling it starts a new instance and returns a `ServiceHandle`.

    `start_timeout` bounds the time to ready; `close_timeout` bounds each teardown (a teardown
    that overruns is cut short, logged, and raised by `aclose()` and at runtime exit).
    `restart="on-failure"` restarts a service that crashes after it was ready, at most
    `max_restarts` times within any `within` seconds; awaiting the handle meanwhile waits for
    the new instance.
    """
    check_name(name, "@trioflow.service_task")
    timeout = check_seconds(start_timeout, "start_timeout")
    if restart not in ("never", "on-failure"):
        raise ConfigError(f"restart must be 'never' or 'on-failure', got {restart!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    window = check_seconds(within, "within")
    assert window is not None
    close_bound = check_seconds(close_timeout, "close_timeout")
    if close_bound is None or close_bound == math.inf:
        raise ConfigError(
            f"close_timeout must be a finite number of seconds, got {close_timeout!r}"
        )

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
            close_timeout=close_bound,
        )

    return decorate if fn is None else decorate(fn)
