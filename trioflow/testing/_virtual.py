"""Running graphs in virtual time for tests: `MockClock(autojump_threshold=0)`, bounded waits.

`run_virtual` runs one graph in a fresh `trio.run` under an autojumping mock clock, inside a
runtime whose global limiter it inspects afterwards, and returns an `Outcome` whether the run
succeeded or failed, so invariants can be checked on the record either way.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs
import trio
import trio.testing

from .._errors import is_run_failure
from .._records import RunRecord, RunResult
from .._runtime import open_runtime, run_async

__all__ = ["Outcome", "live_tasks", "run_virtual"]


def live_tasks() -> int:
    """How many tasks are alive in the current Trio run (the whole task tree)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@attrs.frozen
class Outcome:
    """What one virtual-time run produced."""

    outputs: dict[str, Any] | None
    error: BaseException | None
    record: RunRecord
    elapsed: float  # virtual seconds
    leftover_tokens: int  # tokens still borrowed from the runtime's limiter afterwards
    leftover_tasks: int  # tasks alive afterwards that were not alive before

    @property
    def ok(self) -> bool:
        return self.error is None


def run_virtual(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    max_concurrency: float = 4,
    on_error: str = "fail_fast",
    rng: random.Random | None = None,
    limit: float = 1e6,
) -> Outcome:
    """Run `target` in a fresh `trio.run` under `MockClock(autojump_threshold=0)`.

    The whole run is bounded by `trio.fail_after(limit)` in virtual seconds, so a deadlock fails
    at once instead of hanging. Run failures are returned in `Outcome.error`, not raised.
    """

    async def main() -> Outcome:
        before = live_tasks()
        async with open_runtime(max_concurrency=max_concurrency) as runtime:
            start = trio.current_time()
            outputs: dict[str, Any] | None = None
            error: BaseException | None = None
            with trio.fail_after(limit):
                try:
                    result = await run_async(
                        target,
                        inputs,
                        max_concurrency=max_concurrency,
                        on_error=on_error,
                        rng=rng,
                        record=True,
                    )
                except Exception as exc:
                    if not is_run_failure(exc):
                        raise
                    error = exc
                    record = _record_of(exc)
                else:
                    assert isinstance(result, RunResult)
                    outputs, record = result.outputs, result.record
            elapsed = trio.current_time() - start
            limiter = runtime.global_limiter
            leftover = 0 if limiter is None else limiter.borrowed_tokens
        return Outcome(
            outputs=outputs,
            error=error,
            record=record,
            elapsed=elapsed,
            leftover_tokens=leftover,
            leftover_tasks=live_tasks() - before,
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _record_of(exc: BaseException) -> RunRecord:
    record = getattr(exc, "record", None)
    if record is None and isinstance(exc, BaseExceptionGroup):
        record = getattr(exc.exceptions[0], "record", None)
    assert isinstance(record, RunRecord), f"run error without a record: {exc!r}"
    return record
