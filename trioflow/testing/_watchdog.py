"""Telling a deadlock from a slow run, in virtual time.

Under `MockClock(autojump_threshold=0)` a run whose tasks all wait on each other makes virtual
time jump straight to the test's own deadline, and the test fails with a bare `TooSlowError`.
`watch_progress` runs beside the code under test instead: each time every other task is
blocked it looks at Trio's next deadline. None at all (or none before the limit) means nothing
can ever wake the run again: it reports a `Deadlock` with the caller's snapshot of what was
stuck. Otherwise it lets the clock jump to that deadline, exactly as autojump would.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import trio
import trio.testing

from .._executor import threads_waited_on
from .._records import RunRecord

__all__ = ["Deadlock", "Stall", "threads_busy", "watch_progress"]

# Real seconds to wait for worker threads before looking again (they are not Trio tasks, so a
# run waiting on one looks blocked though it is not).
_THREAD_POLL = 0.005
# Real seconds the run must stay idle before a deadlock is declared: a worker thread marks
# itself idle a moment before it hands its result back to Trio.
_CONFIRM = 0.02


class Deadlock(AssertionError):
    """The run stopped making progress: every task waits and nothing can wake one.

    `record` is the run's record at that moment (None where none could be taken), `stuck` the
    nodes that were running or ready but never started, `at` the virtual time it happened.
    """

    def __init__(
        self,
        message: str,
        *,
        at: float,
        record: RunRecord | None = None,
        stuck: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.at = at
        self.record = record
        self.stuck = tuple(stuck)


class Stall(Deadlock):
    """The run was still waiting on a timer when its virtual-time limit came."""


def threads_busy() -> bool:
    """Whether a Trio worker thread (`trio.to_thread`, whatever its limiter) is running a job.

    Exact for trioflow's own threads (sync tools, `run_blocking`) and for `trio.to_thread` on
    Trio's default limiter; other threads are seen through Trio's thread cache, which marks a
    worker idle a moment before its result is back.
    """
    if threads_waited_on() or trio.to_thread.current_default_thread_limiter().borrowed_tokens:
        return True
    try:  # trio's thread cache: a worker that is not idle is running a job
        from trio._core._thread_cache import THREAD_CACHE, WorkerThread
    except ImportError:  # pragma: no cover - a future trio; the limiter check above remains
        return False
    idle = THREAD_CACHE._idle_workers
    for thread in threading.enumerate():
        owner = getattr(getattr(thread, "_target", None), "__self__", None)
        if isinstance(owner, WorkerThread) and owner not in idle:
            return True
    return False


async def _stuck_for_good() -> bool:
    """Idle with no timer: confirm over a short real-time cushion (threads may be handing back)."""
    await trio.testing.wait_all_tasks_blocked(cushion=_CONFIRM)
    wait = trio.lowlevel.current_statistics().seconds_to_next_deadline
    return math.isinf(wait) and not threads_busy()


async def watch_progress(
    *,
    limit: float,
    on_stall: Callable[[Deadlock], Any],
    snapshot: Callable[[], tuple[RunRecord | None, Sequence[str]]],
) -> None:
    """Watch the rest of the run; call `on_stall` (once) with a `Deadlock` or a `Stall` when it
    stops making progress, then return. Cancel it when the code under test is done.

    `limit` is in virtual seconds from now. `snapshot()` gives the record and the stuck nodes.
    """
    give_up_at = trio.current_time() + limit
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if threads_busy():
            await trio.testing.wait_all_tasks_blocked(cushion=_THREAD_POLL)
            continue
        now = trio.current_time()
        wait = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if math.isinf(wait) and not await _stuck_for_good():
            continue
        if math.isinf(wait) or now + wait > give_up_at:
            record, stuck = snapshot()
            names = ", ".join(stuck) or "no node"
            if math.isinf(wait):
                error: Deadlock = Deadlock(
                    f"deadlock at t={now:g}: every task is waiting and nothing can wake one; "
                    f"stuck: {names}",
                    at=now,
                    record=record,
                    stuck=stuck,
                )
            else:
                error = Stall(
                    f"no finish within the limit of {limit:g} virtual seconds: at t={now:g} the "
                    f"next timer is {wait:g}s away; stuck: {names}",
                    at=now,
                    record=record,
                    stuck=stuck,
                )
            on_stall(error)
            return
        # Let virtual time move: with this task asleep too, autojump takes the clock to the
        # earliest deadline, which wakes whoever set it (and, at worst a moment later, us).
        await trio.sleep_until(now + wait)
