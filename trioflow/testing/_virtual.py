"""Running graphs in virtual time for tests: a fresh clock, runtime and services per call.

`run_virtual` runs one graph in a fresh `trio.run` under an autojumping mock clock, inside a
fresh runtime (with the services it is given), and returns an `Outcome` whether the run
succeeded or failed, so invariants can be checked on the record either way. Nothing is carried
from one call to the next, so it is the form to use inside a Hypothesis `@given` test: one call
per example. A run that stops making progress comes back as a `Deadlock` naming the stuck
nodes, not as a bare `TooSlowError`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import trio
import trio.testing

from .._context import FRAME
from .._errors import is_run_failure
from .._records import NodeRecord, NodeState, RunRecord, RunResult
from .._runtime import open_runtime, run_async
from ._watchdog import Deadlock, watch_progress

__all__ = ["Outcome", "live_tasks", "reseed_trio", "run_in_virtual_time", "run_virtual"]

T = TypeVar("T")
# The runtime limiter run_virtual counts leftover tokens on when the run's cap is unlimited.
_COUNTING_CAP = 2**62

Services = Mapping[str, object] | Callable[[], Mapping[str, object]]


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


def reseed_trio(seed: int) -> None:
    """Seed the order in which Trio runs tasks that are ready together.

    Under Hypothesis (which Trio detects) that order is a deterministic shuffle from this seed,
    so each seed is one reproducible interleaving; elsewhere Trio's order stays random.
    """
    import trio._core._run as core_run

    shuffle = getattr(core_run, "_r", None)
    if isinstance(shuffle, random.Random):
        shuffle.seed(seed)


@attrs.frozen
class Outcome:
    """What one virtual-time run produced."""

    outputs: dict[str, Any] | None
    error: BaseException | None  # the run's error (a `Deadlock` if it stopped making progress)
    record: RunRecord
    elapsed: float  # virtual seconds
    leftover_tokens: int  # tokens still borrowed from the runtime's limiter afterwards
    leftover_tasks: int  # tasks alive afterwards that were not alive before
    leaked_by: tuple[str, ...] = ()  # the nodes still holding those tokens, where known

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def deadlock(self) -> Deadlock | None:
        return self.error if isinstance(self.error, Deadlock) else None


def run_in_virtual_time(
    fn: Callable[..., Awaitable[T]], *args: Any, limit: float = 1e6, interleaving: int | None = None
) -> T:
    """`trio.run(fn, *args)` under a fresh `MockClock(autojump_threshold=0)`.

    A run that stops making progress raises `Deadlock` (a stuck run) or `Stall` (still waiting
    on a timer after `limit` virtual seconds) instead of hanging. Use it for per-example async
    code in a sync `@given` test.
    """

    async def main() -> T:
        if interleaving is not None:
            reseed_trio(interleaving)
        stalled: list[Deadlock] = []
        result: list[T] = []
        async with trio.open_nursery() as nursery:

            def stop(found: Deadlock) -> None:
                stalled.append(found)
                nursery.cancel_scope.cancel(reason="the run stopped making progress")

            nursery.start_soon(
                lambda: watch_progress(limit=limit, on_stall=stop, snapshot=lambda: (None, ()))
            )
            result.append(await fn(*args))
            nursery.cancel_scope.cancel()
        if stalled:
            raise stalled[0]
        return result[0]

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@attrs.define(eq=False)
class _Live:
    """A live view of a run from its events: who is running, and which slot each holds."""

    nodes: dict[str, NodeRecord] = attrs.field(factory=dict)
    slots: dict[int, str] = attrs.field(factory=dict)

    def __call__(self, event: Any) -> None:
        node_id = getattr(event, "node_id", None)
        if node_id is None:
            return
        kind = event.kind
        if kind == "node_started":
            old = self.nodes.get(node_id)
            self.nodes[node_id] = NodeRecord(
                tool=event.tool or "",
                state=NodeState.RUNNING,
                started_at=old.started_at if old is not None else event.at,
                attempts=getattr(event, "attempt", 1),
            )
            frame = FRAME.get()
            if frame is not None and frame.slot is not None:
                self.slots[id(frame.slot)] = node_id
        elif kind == "node_finished":
            old = self.nodes.get(node_id) or NodeRecord(tool=event.tool or "")
            self.nodes[node_id] = attrs.evolve(old, state=event.state, finished_at=event.at)

    def snapshot(self, graph_id: str, now: float) -> tuple[RunRecord, list[str]]:
        record = RunRecord(
            run_id="virtual", graph_id=graph_id, nodes=dict(self.nodes), finished_at=now
        )
        stuck = [k for k, r in self.nodes.items() if r.state is NodeState.RUNNING]
        return record, stuck


def run_virtual(
    target: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    max_concurrency: float = 4,
    on_error: str = "fail_fast",
    rng: random.Random | None = None,
    services: Services | None = None,
    interleaving: int | None = None,
    limit: float = 1e6,
    count_tokens: bool = True,
) -> Outcome:
    """Run `target` in a fresh `trio.run` under `MockClock(autojump_threshold=0)`.

    Each call has its own clock (starting at 0), its own runtime and its own `services`
    (name → instance, or a zero-argument function returning that mapping), registered on that
    runtime only. `rng` breaks ties between ready nodes where trioflow applies it;
    `interleaving` seeds Trio's own task order (see `interleavings()`). Run failures are
    returned in `Outcome.error`, not raised; so is a `Deadlock` (every task waiting, nothing
    to wake one) or a `Stall` (still waiting after `limit` virtual seconds), with the stuck
    nodes and the record so far.

    The runtime's limiter has `max_concurrency` tokens, or 2**62 when that is `math.inf`, so
    leftover tokens are counted (and named in `leaked_by`) at any cap; `count_tokens=False`
    runs an unlimited cap with no runtime limiter, as a plain `open_runtime()` does.
    """
    named = dict(services() if callable(services) else services or {})
    live = _Live()

    async def main() -> Outcome:
        if interleaving is not None:
            reseed_trio(interleaving)
        before = live_tasks()
        runtime_cap: float = max_concurrency
        if count_tokens and not math.isfinite(max_concurrency):
            runtime_cap = _COUNTING_CAP
        stalled: list[Deadlock] = []
        outputs: dict[str, Any] | None = None
        error: BaseException | None = None
        record: RunRecord | None = None
        name = getattr(target, "name", "graph")
        async with open_runtime(max_concurrency=runtime_cap) as runtime:
            for key, instance in named.items():
                await runtime.register(key, instance)
            start = trio.current_time()
            async with trio.open_nursery() as watch:

                def stop(found: Deadlock) -> None:
                    stalled.append(found)
                    run_scope.cancel(reason="the run stopped making progress")

                watch.start_soon(
                    lambda: watch_progress(
                        limit=limit,
                        on_stall=stop,
                        snapshot=lambda: live.snapshot(name, trio.current_time()),
                    )
                )
                with trio.CancelScope() as run_scope:
                    try:
                        result = await run_async(
                            target,
                            inputs,
                            max_concurrency=max_concurrency,
                            on_error=on_error,
                            rng=rng,
                            record=True,
                            on_event=live,
                        )
                    except Exception as exc:
                        if not is_run_failure(exc):
                            raise
                        error = exc
                        record = _record_of(exc)
                    else:
                        assert isinstance(result, RunResult)
                        outputs, record = result.outputs, result.record
                watch.cancel_scope.cancel()
            elapsed = trio.current_time() - start
            limiter = runtime.global_limiter
            leftover = 0 if limiter is None else limiter.borrowed_tokens
            leaked_by: tuple[str, ...] = ()
            if limiter is not None and leftover:
                leaked_by = tuple(
                    sorted(
                        live.slots.get(id(b), f"an unknown borrower {b!r}")
                        for b in limiter.statistics().borrowers
                    )
                )
        if stalled:
            error = stalled[0]
            record = stalled[0].record
        if record is None:
            record = live.snapshot(name, trio.current_time())[0]
        return Outcome(
            outputs=outputs,
            error=error,
            record=record,
            elapsed=elapsed,
            leftover_tokens=leftover,
            leftover_tasks=live_tasks() - before,
            leaked_by=leaked_by,
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _record_of(exc: BaseException) -> RunRecord:
    record = getattr(exc, "record", None)
    if record is None and isinstance(exc, BaseExceptionGroup):
        record = getattr(exc.exceptions[0], "record", None)
    assert isinstance(record, RunRecord), f"run error without a record: {exc!r}"
    return record
