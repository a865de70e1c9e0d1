"""A sync call on one of Trio's cached worker threads, with less work per call than
`trio.to_thread.run_sync`.

With many calls in flight a thread call is bound by the interpreter lock, and every step of
the hand-off counts. Per call, `trio.to_thread.run_sync` formats a thread name and sets it, and
resets it, on the OS thread through `ctypes` (about 15% of a call at 64 in flight, measured),
makes a placeholder object and four closures, and enters a generator-based context manager.
`run_in_thread` hands the call to the same thread cache (`start_thread_soon`) without those,
and keeps everything else `to_thread` gives a call:

- the caller's context variables (copied), with sniffio seeing no async library in the thread;
- `trio.from_thread.run`, `run_sync` and `check_cancelled` inside the call: the thread knows
  its Trio token and its waiting task, and the waiting task runs what the thread sends it;
- the count that `trio.testing.active_thread_count` and `wait_all_threads_completed` read;
- cancellation: checked on entry; then the call is waited for (a thread cannot be stopped),
  and `from_thread.check_cancelled` raises in the thread once its caller is cancelled.

Worker threads keep the thread cache's own names (`Trio thread N`).

It relies on Trio internals (`trio._threads`: `PARENT_TASK_DATA`, `Run`, `RunSync`,
`_active_threads_local`, `_ActiveThreadCount`), so it is used only with Trio releases it was
read and tested against (`VERIFIED`) and when those names are there; otherwise `available()`
is False and callers use `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any

import outcome
import sniffio
import trio
from trio.lowlevel import (
    Abort,
    current_task,
    current_trio_token,
    reschedule,
    start_thread_soon,
    wait_task_rescheduled,
)

__all__ = ["available", "run_in_thread"]

# The Trio releases whose `to_thread` internals this module was written and tested against.
VERIFIED = ("0.35.",)
_NEEDED = ("PARENT_TASK_DATA", "Run", "RunSync", "_active_threads_local", "_ActiveThreadCount")

_t: Any = importlib.import_module("trio._threads")
_parent: Any = getattr(_t, "PARENT_TASK_DATA", None)
_Run: Any = getattr(_t, "Run", None)
_RunSync: Any = getattr(_t, "RunSync", None)
_active_threads: Any = getattr(_t, "_active_threads_local", None)
_ActiveThreadCount: Any = getattr(_t, "_ActiveThreadCount", None)


@functools.cache
def available() -> bool:
    """Whether this Trio's thread hand-off can be driven directly (else use `to_thread`)."""
    try:
        version = importlib.metadata.version("trio")
    except importlib.metadata.PackageNotFoundError:
        return False
    return version.startswith(VERIFIED) and all(hasattr(_t, name) for name in _NEEDED)


_library = sniffio.current_async_library_cvar
_Outcome = outcome.Outcome
_Value = outcome.Value
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


@trio.lowlevel.enable_ki_protection
async def run_in_thread(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`fn(*args, **kwargs)` on a worker thread: `trio.to_thread.run_sync`'s contract with
    `abandon_on_cancel=False` and no limiter (callers bound their threads themselves).

    Only call it when `available()`."""
    await _checkpoint_if_cancelled()
    task = current_task()
    token = current_trio_token()
    task_register: list[Any] = [task]
    cancel_register: list[Any] = [None]
    context = contextvars.copy_context()
    if _library.get(None) is not None:  # (Trio itself never sets it)
        context.run(_library.set, None)

    def call() -> Any:
        parent = _parent
        parent.token = token
        parent.abandon_on_cancel = False
        parent.cancel_register = cancel_register
        parent.task_register = task_register
        try:
            result = context.run(fn, *args, **kwargs)
            if inspect.iscoroutine(result):
                result.close()  # (no "never awaited" warning)
                raise TypeError(
                    f"Trio expected a sync function, but {getattr(fn, '__qualname__', fn)!r} "
                    "appears to be asynchronous"
                )
            return result
        finally:
            del parent.token, parent.abandon_on_cancel
            del parent.cancel_register, parent.task_register

    def deliver(result: outcome.Outcome[Any]) -> None:
        # (The run cannot have finished: its task waits for this, whatever cancels it.)
        token.run_sync_soon(reschedule, task, _Value(result))

    def abort(raise_cancel: Any) -> Abort:
        cancel_register[0] = raise_cancel  # for `from_thread.check_cancelled`
        return Abort.FAILED  # the call is waited for

    try:
        active = _active_threads.get()
    except LookupError:
        active = _ActiveThreadCount(0, trio.Event())
        _active_threads.set(active)
    active.count += 1
    try:
        start_thread_soon(call, deliver)
        while True:
            message = await wait_task_rescheduled(abort)
            if isinstance(message, _Outcome):
                return message.unwrap()
            if isinstance(message, _Run):  # `from_thread.run`: run it in this task
                await message.run()
            elif isinstance(message, _RunSync):
                message.run_sync()
            else:  # pragma: no cover - nothing else is sent
                raise TypeError(f"unexpected message from a worker thread: {message!r}")
            del message
    finally:
        active.count -= 1
        if active.count == 0:
            active.event.set()
            active.event = trio.Event()
