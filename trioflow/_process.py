"""`ProcessExecutor`: tools in a pool of local worker processes, on trio-parallel.

The pool is a trio-parallel worker context of its own, opened when the executor is entered
and closed (every worker joined) when it is exited; its workers are driven directly where
trio-parallel allows it (`_workers.DirectWorkers`: one trip through the scheduler per call,
not five to seven). A cancelled call kills its worker by default (`kill_on_cancel=True`), so
the work stops where it is; calls waiting for a free worker are simply dropped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Self

import attrs
import trio

from ._errors import ConfigError, ConfigTypeError, TrioflowError
from ._executor import QuickLimiter
from ._shipping import Failure, by_reference, call_and_capture, require, restore, shippable
from ._workers import DirectWorkers

__all__ = ["ProcessExecutor"]

_NOT_SHIPPED = (
    "(the call of {} could not travel between this process and the worker: its arguments or "
    "its result cannot be pickled)"
)

_NO_GUARD = (
    "(a worker process could not start: workers import the main module again, and it started "
    'a run at import; put the code that starts the run under `if __name__ == "__main__":`)'
)
_KEEP = 256  # functions whose `_shipped` form a ProcessExecutor keeps
# Drive trio-parallel's workers directly where it can be (`_workers`); False: always through
# trio-parallel's `run_sync` (what the tests of that path set).
_DIRECT = True


def _check_max_workers(_: object, __: object, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(
            f"ProcessExecutor(max_workers=...) must be an int or None, got {value!r}"
        )
    if value < 1:
        raise ConfigError(
            f"ProcessExecutor(max_workers=...) must be >= 1, got {value!r}; "
            "None means one worker per CPU"
        )


def _check_bool(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigTypeError(
            f"ProcessExecutor({attribute.name}=...) must be a bool, got {value!r}"
        )


@attrs.define(eq=False)
class ProcessExecutor:
    """Run tools in local worker processes (`pip install 'trioflow[process]'`).

    `max_workers` bounds the worker processes (default: one per CPU). With `kill_on_cancel`
    (the default) a cancelled call kills its worker at once; with `False`, cancellation waits
    for the call to finish. Functions, arguments and results travel with cloudpickle, so
    closures and lambdas work; scripts need the `if __name__ == "__main__":` guard because
    workers re-import the main module.
    """

    max_workers: int | None = attrs.field(default=None, validator=_check_max_workers)
    kill_on_cancel: bool = attrs.field(default=True, validator=_check_bool, kw_only=True)
    ships: ClassVar[bool] = True

    _cm: Any = attrs.field(default=None, init=False, repr=False)
    _context: Any = attrs.field(default=None, init=False, repr=False)
    # How calls reach the workers: `DirectWorkers.run_sync`, or the context's own `run_sync`
    # (where trio-parallel cannot be driven directly), with the limiter it takes.
    _run_sync: Any = attrs.field(default=None, init=False, repr=False)
    _limiter: trio.CapacityLimiter | QuickLimiter | None = attrs.field(
        default=None, init=False, repr=False
    )
    _broken: type[BaseException] = attrs.field(default=Exception, init=False, repr=False)
    # Each function met, with what is sent for it (`_shipped`).
    _refs: dict[Callable[..., Any], Callable[..., Any] | bytes] = attrs.field(
        factory=dict, init=False, repr=False
    )

    async def __aenter__(self) -> Self:
        if self._cm is not None:
            raise TrioflowError("this ProcessExecutor is already entered; use one per runtime")
        trio_parallel = require("trio_parallel", "process")
        require("cloudpickle", "process")  # without it closures and lambdas cannot ship
        workers = self.max_workers or os.cpu_count() or 1
        cm = trio_parallel.open_worker_context(
            idle_timeout=math.inf,  # workers live as long as the executor
            grace_period=10.0,  # bound on joining idle workers at exit (then SIGKILL)
        )
        self._context = context = await cm.__aenter__()
        self._cm = cm
        direct = DirectWorkers.of(context) if _DIRECT else None
        if direct is not None:
            self._run_sync, self._limiter = direct.run_sync, trio.CapacityLimiter(workers)
        else:  # (a QuickLimiter: a free worker is taken without a yield)
            self._run_sync, self._limiter = context.run_sync, QuickLimiter(workers)
        self._broken = trio_parallel.BrokenWorkerError  # a worker died: not about pickling
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        cm, self._cm, self._context, self._limiter = self._cm, None, None, None
        self._run_sync = None
        if cm is not None:
            await cm.__aexit__(None, None, None)

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` in a worker process and return its result."""
        job = self._job(fn, args, kwargs)
        try:
            return await job
        except Exception as exc:
            failed = self._failed(fn, exc)
            if failed is exc:
                raise
            raise failed from None

    def _job(
        self, fn: Callable[..., Any], args: tuple[Any, ...] | None, kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """The call of `run`, not yet awaited; an exception raised by awaiting it goes through
        `_failed`.

        (A node awaits this itself, so that none of the several suspensions of a worker's
        round trip passes through one more coroutine: see `_reactive.call_tool`.)"""
        run_sync, limiter = self._run_sync, self._limiter
        if run_sync is None or limiter is None:
            raise TrioflowError(
                "ProcessExecutor.run() needs the executor entered: `async with executor:`"
            )
        job: Coroutine[Any, Any, Any] = run_sync(
            call_and_capture,
            self._shipped(fn),
            args or None,  # (None pickles for less than an empty tuple)
            kwargs,
            kill_on_cancel=self.kill_on_cancel,
            limiter=limiter,
        )
        return job

    def _shipped(self, fn: Callable[..., Any]) -> Callable[..., Any] | bytes:
        """What to send for `fn`: its `by_reference` bytes, pickled once, if it ships by
        reference; else the function (`shippable`), pickled with each call."""
        found = self._refs.get(fn)
        if found is None:
            if len(self._refs) >= _KEEP:  # (functions made anew for each call: a few kept)
                self._refs.clear()
            shipped = shippable(fn)
            found = self._refs[fn] = by_reference(shipped) or shipped
        return found

    def _failed(self, fn: Callable[..., Any], exc: Exception) -> Exception:
        """What `run` raises for `exc`, raised by its job: the call's own exception (raised
        from None), or `exc` itself, noted if it is not about a worker that died."""
        if isinstance(exc, Failure):
            return restore(exc)
        if isinstance(exc, RuntimeError) and "bootstrapping phase" in str(exc):
            exc.add_note(_NO_GUARD)  # multiprocessing's own words for a missing main guard
        elif not isinstance(exc, self._broken):
            # Not the call's own exception: its arguments or its result failed to pickle.
            exc.add_note(_NOT_SHIPPED.format(getattr(fn, "__qualname__", fn)))
        return exc


ProcessExecutor.__module__ = "trioflow"
