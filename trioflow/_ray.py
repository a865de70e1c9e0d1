"""`RayExecutor`: tools as Ray tasks, on a private local cluster or a real one.

Ray is started (or joined) on one long-lived thread that the executor owns from enter to exit:
Ray ties its processes to the thread that started them, so a short-lived worker thread would
take the cluster down with it. A task's result is bridged into Trio without asyncio: Ray's
completion callback for the object ref reschedules the waiting task through the run's
`TrioToken`. Cancelling the waiting task cancels the Ray task (`ray.cancel`), and the wait for
it to stop is bounded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

import attrs
import trio

from ._errors import ConfigError, ConfigTypeError, RemoteError, TrioflowError
from ._shipping import Failure, call_and_capture, require, restore, shippable

__all__ = ["RayExecutor", "ray_task", "ray_task_outputs"]

# Per-task Ray options a user may set; everything else about a task is trioflow's.
_TASK_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "resources",
        "memory",
        "accelerator_type",
        "runtime_env",
        "scheduling_strategy",
        "max_retries",
        "retry_exceptions",
        "label_selector",
    }
)
# How long a cancelled call waits for its Ray task to stop before killing its worker, and
# then for the kill to be seen; and how long exit waits for Ray to shut down.
_CANCEL_GRACE = 1.0
_SHUTDOWN_TIMEOUT = 60.0


def _restore_sigint() -> None:
    # ray.cancel(force=False) interrupts the task's main thread the way Ctrl-C does, which is a
    # silent no-op if the worker inherited SIGINT = SIG_IGN (a background job of a
    # non-interactive shell, as CI may be). Put Python's own handler back first.
    if (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def ray_task(fn: Callable[..., Any], names: tuple[str, ...], *values: Any) -> Any:
    """The Ray task that runs one call (on the worker).

    Arguments arrive flat, so that object refs among them are resolved by Ray on the worker:
    the positional ones, then one per keyword in `names` (each Ray argument costs time).
    """
    _restore_sigint()
    values = _fetch_nested(values)
    n_args = len(values) - len(names)
    kwargs = dict(zip(names, values[n_args:], strict=True))
    return call_and_capture(fn, values[:n_args], kwargs)


def _bind(fn: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., Any]:
    def task(*values: Any) -> Any:
        return ray_task(fn, names, *values)

    task.__qualname__ = task.__name__ = f"trioflow:{getattr(fn, '__qualname__', 'call')}"
    return task


def _fetch_nested(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # A fan-in argument arrives as a list of object refs: Ray resolves only top-level refs.
    ray = sys.modules.get("ray")
    if ray is None:
        return values
    ref = ray.ObjectRef
    return tuple(
        ray.get(v) if type(v) is list and any(isinstance(x, ref) for x in v) else v for v in values
    )


def ray_task_outputs(
    owner: str,
    outputs: tuple[str, ...],
    fn: Callable[..., Any],
    names: tuple[str, ...],
    *values: Any,
) -> tuple[Any, ...]:
    """A Ray task with one return per declared output, after a small status return.

    The outputs stay in the object store; the driver waits for the status alone.
    """
    _restore_sigint()
    values = _fetch_nested(values)
    n_args = len(values) - len(names)
    kwargs = dict(zip(names, values[n_args:], strict=True))
    produced = call_and_capture(_call_and_split, (owner, outputs, fn, values[:n_args], kwargs), {})
    return (None, *produced)


def _call_and_split(
    owner: str,
    outputs: tuple[str, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[Any]:
    from ._tool import normalize_outputs

    result = normalize_outputs(owner, outputs, fn(*args, **kwargs))
    return [result[name] for name in outputs]


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - _TASK_OPTIONS)
    if unknown:
        raise ConfigError(
            f"RayExecutor got unknown task options {unknown}; it takes {sorted(_TASK_OPTIONS)} "
            "(pass ray.init() arguments as init_options={...})"
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigTypeError(f"RayExecutor({key}=...) must be a number, got {value!r}")
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"RayExecutor({key}=...) must be >= 0, got {value!r}")
    resources = options.get("resources")
    if resources is not None and not (
        isinstance(resources, Mapping)
        and all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in resources.items()
        )
    ):
        raise ConfigTypeError(
            f"RayExecutor(resources=...) must map resource names to amounts, got {resources!r}"
        )
    # trioflow's Retry is the one retry policy; Ray's own is opt-in.
    return {"max_retries": 0, **options}


def _check_address(_: object, __: object, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigTypeError(
            f"RayExecutor(address=...) must be None (a private local cluster), 'auto', "
            f"'host:port' or 'ray://host:port', got {value!r}"
        )


@attrs.define(eq=False, init=False)
class RayExecutor:
    """Run tools as Ray tasks (`pip install 'trioflow[ray]'`).

    `address=None` starts a private local cluster bound to 127.0.0.1 when the executor is
    entered and shuts it down at exit; any other address (`"auto"`, `"host:port"`,
    `"ray://host:10001"`) joins that cluster and exit only disconnects. If Ray is already
    initialised in this process, that connection is used and left open. `options` are
    per-task Ray options (`num_cpus`, `num_gpus`, `resources`, ...); `init_options` go to
    `ray.init()`. A cancelled call cancels its Ray task.
    """

    address: str | None = attrs.field(validator=_check_address)
    options: Mapping[str, Any]
    init_options: Mapping[str, Any]
    ships: ClassVar[bool] = True

    _ray: Any = attrs.field(default=None, repr=False)
    _remote: Any = attrs.field(default=None, repr=False)
    _remote_outputs: dict[int, Any] = attrs.field(factory=dict, repr=False)
    _bound: weakref.WeakKeyDictionary[Any, Any] = attrs.field(
        factory=weakref.WeakKeyDictionary, repr=False
    )
    _stop: threading.Event | None = attrs.field(default=None, repr=False)
    _stopped: trio.Event | None = attrs.field(default=None, repr=False)

    def __init__(
        self,
        address: str | None = None,
        *,
        init_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if init_options is not None and not isinstance(init_options, Mapping):
            raise ConfigTypeError(
                f"RayExecutor(init_options=...) must be a mapping, got {init_options!r}"
            )
        self.__attrs_init__(address, _check_options(options), dict(init_options or {}))

    async def __aenter__(self) -> Self:
        if self._remote is not None:
            raise TrioflowError("this RayExecutor is already entered; use one per runtime")
        ray = require("ray", "ray")
        require("cloudpickle", "ray")
        if not ray.is_initialized():
            await self._start(ray)
        self._ray = ray
        self._remote = ray.remote(**self.options)(ray_task)
        return self

    async def _start(self, ray: Any) -> None:
        """Call `ray.init` on a thread that lives until exit (Ray dies with its thread)."""
        if self.address is None:
            kwargs: dict[str, Any] = {
                "address": "local",  # never attach to a stale cluster
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
            }
        else:
            kwargs = {"address": self.address}
        kwargs.update(self.init_options)
        token = trio.lowlevel.current_trio_token()
        started, stopped, stop = trio.Event(), trio.Event(), threading.Event()
        error: list[BaseException] = []

        def host() -> None:
            try:
                ray.init(**kwargs)
            except BaseException as exc:  # handed to the Trio side and raised there
                error.append(exc)
                token.run_sync_soon(started.set)
                return
            token.run_sync_soon(started.set)
            stop.wait()
            ray.shutdown()

        def deliver(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # exit always waits for it
                token.run_sync_soon(stopped.set)

        trio.lowlevel.start_thread_soon(host, deliver, name="trioflow ray host")
        self._stop, self._stopped = stop, stopped
        try:
            with trio.CancelScope(shield=True):  # ray.init cannot be interrupted
                await started.wait()
            if error:
                raise error[0]
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await self._shutdown()
            raise

    async def _shutdown(self) -> None:
        stop, stopped, self._stop, self._stopped = self._stop, self._stopped, None, None
        if stop is None or stopped is None:
            return
        stop.set()
        with trio.move_on_after(_SHUTDOWN_TIMEOUT, shield=True):
            await stopped.wait()

    async def __aexit__(self, *exc_info: object) -> None:
        self._remote = None
        self._remote_outputs.clear()
        self._bound.clear()
        await self._shutdown()

    # -- calls ---------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Submit one call as a Ray task; returns its `ObjectRef` (object refs among the
        arguments are resolved on the worker)."""
        if self._remote is None:
            raise TrioflowError("RayExecutor.run() needs the executor entered: `async with ...`")
        fn = shippable(fn)
        names = tuple(kwargs)
        bound = self._bound_task(fn, names)
        if bound is not None:
            return bound.remote(*args, *kwargs.values())
        return self._remote.remote(fn, names, *args, *kwargs.values())

    def _bound_task(self, fn: Callable[..., Any], names: tuple[str, ...]) -> Any:
        """A Ray task with `fn` and the keyword names built in, for a function called more
        than once: Ray exports it to the workers once, instead of pickling the function (and
        sending the names) with every call."""
        try:
            found = self._bound.get(fn)
        except TypeError:  # not weak-referenceable
            return None
        if found is None:
            self._bound[fn] = {}  # seen once: a one-off lambda is not worth an export
            return None
        task = found.get(names)
        if task is None:
            task = found[names] = self._ray.remote(**self.options)(_bind(fn, names))
        return task

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as a Ray task and return its result."""
        return await self.result(self.submit(fn, *args, **kwargs))

    async def run_outputs(
        self,
        owner: str,
        outputs: tuple[str, ...],
        keep: frozenset[str],
        fn: Callable[..., Any],
        /,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run a tool function as a Ray task; its outputs dict, with the outputs named in
        `keep` left in the object store (as `ObjectRef`s) and the others fetched.

        trioflow uses this for outputs of a static graph that only other Ray nodes read: they
        then travel from worker to worker without passing through this process.
        """
        if self._remote is None:
            raise TrioflowError("RayExecutor.run() needs the executor entered: `async with ...`")
        n = len(outputs) + 1
        remote = self._remote_outputs.get(n)
        if remote is None:
            ray = self._ray
            remote = self._remote_outputs[n] = ray.remote(**self.options, num_returns=n)(
                ray_task_outputs
            )
        refs = remote.remote(owner, outputs, shippable(fn), tuple(kwargs), *kwargs.values())
        await self.result(refs[0])  # the status: raises the task's exception
        produced: dict[str, Any] = {}
        for name, ref in zip(outputs, refs[1:], strict=True):
            produced[name] = ref if name in keep else await self.result(ref)
        return produced

    async def wait(self, ref: Any) -> concurrent.futures.Future[Any]:
        """Wait for a Ray task; cancelling the wait cancels it.

        Returns a done `concurrent.futures.Future` with its outcome, as `ref.future()` would
        give it (a task's exception as Ray's `RayTaskError`)."""
        value = await self._arrival(ref)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if isinstance(value, self._ray.exceptions.RayTaskError):
            future.set_exception(value.as_instanceof_cause())
        elif isinstance(value, self._ray.exceptions.RayError):
            future.set_exception(value)
        else:
            future.set_result(value)
        return future

    async def result(self, ref: Any) -> Any:
        """The value of a submitted call; its exception unwrapped to the original class."""
        value = await self._arrival(ref)
        if isinstance(value, self._ray.exceptions.RayError):
            if isinstance(value, self._ray.exceptions.RayTaskError):
                raise _unwrap(value) from None
            raise value
        return value

    async def _arrival(self, ref: Any) -> Any:
        """Wait for `ref`'s object in this task and return it: the value, or Ray's error
        object (not raised). Cancelling the wait cancels the Ray task."""
        arrival = _Arrival(trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
        on_completed = getattr(ref, "_on_completed", None)
        if on_completed is not None:
            on_completed(arrival.completed)
        else:  # (a Ray without it: through the public future)
            ref.future().add_done_callback(arrival.future_done)
        try:
            await trio.lowlevel.wait_task_rescheduled(arrival.abort)
        except BaseException:
            # Cancelled (or Ctrl-C): stop the task, and wait (bounded) until it has stopped,
            # so that nothing it does after the cancel point happens after we return.
            if arrival.arrived:  # (between the cancel and this task's wake-up)
                raise
            stopped = arrival.stopped = trio.Event()
            self._ray.cancel(ref, force=False)
            with trio.move_on_after(_CANCEL_GRACE, shield=True):
                await stopped.wait()
            if not stopped.is_set():
                self._ray.cancel(ref, force=True)  # kills the worker process
                with trio.move_on_after(_CANCEL_GRACE, shield=True):
                    await stopped.wait()
            raise
        return arrival.value


class _Arrival:
    """A Ray object's arrival, brought from Ray's callback thread to the task waiting for it.

    Ray calls `completed` with the object once it is ready (`ObjectRef._on_completed`, what
    `ref.future()` is built on): the waiting task is rescheduled directly, with no
    `concurrent.futures.Future` and no `trio.Event` between them. After the wait was cancelled,
    the arrival sets `stopped` instead."""

    __slots__ = ("arrived", "stopped", "task", "token", "value")

    def __init__(self, task: trio.lowlevel.Task, token: trio.lowlevel.TrioToken) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.token = token
        self.value: Any = None
        self.arrived = False
        self.stopped: trio.Event | None = None

    def completed(self, value: Any) -> None:  # in a Ray thread
        with contextlib.suppress(trio.RunFinishedError):  # the waiter is always there
            self.token.run_sync_soon(self._arrive, value)

    def future_done(self, future: concurrent.futures.Future[Any]) -> None:  # in a Ray thread
        error = future.exception()
        self.completed(error if error is not None else future.result())

    def _arrive(self, value: Any) -> None:
        self.value = value
        self.arrived = True
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)
        elif self.stopped is not None:
            self.stopped.set()

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None  # (`stopped` is set on arrival from now on)
        return trio.lowlevel.Abort.SUCCEEDED


def _unwrap(err: Any) -> Exception:
    """The user's exception inside Ray's `RayTaskError`, or a `RemoteError`."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, Failure):
        return restore(cause)
    if isinstance(cause, Exception) and not _is_ray_error(cause):
        # Not the call's own exception (that arrives as a Failure): its result did not pickle.
        cause.add_note(
            "(the result of the Ray task could not be pickled to come back from the worker)"
        )
        return cause
    traceback_text = getattr(err, "traceback_str", "") or ""
    message = str(cause) if cause is not None else str(err)
    type_name = type(cause).__qualname__ if cause is not None else "RayTaskError"
    return RemoteError(type_name, message, traceback_text)


def _is_ray_error(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError)


RayExecutor.__module__ = "trioflow"
