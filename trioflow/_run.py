"""One run of a graph: its options, its deadline, and what comes out of it.

Options are checked before anything starts. When the run ends, every node's record is final
(nothing is left RUNNING), every trioflow error leaving the run carries `.record`, and Trio's own
`Cancelled` from an enclosing scope passes through untouched.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._checks import check_max_concurrency
from ._context import FRAME, Frame, ServiceAccess
from ._errors import ConfigError, ConfigTypeError, RunCancelled, _RunError, is_run_failure
from ._execute import ErrorPolicy, GraphTarget, RunState
from ._graph import TaskGraph
from ._records import RunRecord, RunResult
from ._schedule import CompiledGraph
from ._tool import Tool

__all__ = ["RunOptions", "RuntimeLike", "check_run", "execute_run"]

DEFAULT_MAX_CONCURRENCY = 4
_POLICIES = ("fail_fast", "skip_dependents", "collect")


class RunnableTarget(GraphTarget, Protocol):
    @property
    def max_concurrency(self) -> float | None: ...

    def tools(self) -> Sequence[Tool]: ...


class RuntimeLike(Protocol):
    """What a run needs from the runtime it runs in."""

    @property
    def global_limiter(self) -> trio.CapacityLimiter | None: ...
    @property
    def resources(self) -> Mapping[str, trio.CapacityLimiter]: ...
    def services_for(self, run_id: str) -> ServiceAccess: ...


@attrs.frozen
class RunOptions:
    """A run's checked options."""

    inputs: dict[str, Any]
    max_concurrency: float
    on_error: ErrorPolicy
    timeout: float | None
    run_id: str
    rng: random.Random | None
    record: bool


def check_run(
    target: object,
    inputs: Mapping[str, Any] | None,
    *,
    max_concurrency: float | None,
    on_error: str,
    timeout: float | None,
    run_id: str | None,
    rng: random.Random | None,
    record: bool,
) -> tuple[RunnableTarget, RunOptions]:
    """Validate everything about a run before anything starts."""
    if isinstance(target, TaskGraph):
        target = CompiledGraph(target)
    if not (hasattr(target, "run_body") and hasattr(target, "check_inputs")):
        raise ConfigTypeError(
            f"run() takes a @trioflow.graph_fn or @trioflow.graphify graph, got {target!r}"
        )
    graph: RunnableTarget = target  # type: ignore[assignment]
    checked_inputs = graph.check_inputs(inputs)
    if max_concurrency is None:
        cap: float = graph.max_concurrency or DEFAULT_MAX_CONCURRENCY
    else:
        cap = check_max_concurrency(max_concurrency)
    if on_error not in _POLICIES:
        raise ConfigError(f"on_error must be one of {list(_POLICIES)}, got {on_error!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigTypeError(f"timeout must be seconds (a number) or None, got {timeout!r}")
        if math.isnan(timeout) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigError(f"run_id must be a non-empty string, got {run_id!r}")
    if rng is not None and not isinstance(rng, random.Random):
        raise ConfigTypeError(f"rng must be a random.Random, got {rng!r}")
    return graph, RunOptions(
        inputs=checked_inputs,
        max_concurrency=cap,
        on_error=on_error,  # type: ignore[arg-type]
        timeout=None if timeout is None else float(timeout),
        run_id=run_id or uuid.uuid4().hex,
        rng=rng,
        record=bool(record),
    )


def attach_record(exc: BaseException, record: RunRecord) -> None:
    """Give every trioflow run error inside `exc` (a group's leaves too) the run's record."""
    if isinstance(exc, _RunError):
        exc.record = record
    elif isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            attach_record(inner, record)


async def execute_run(
    runtime: RuntimeLike, graph: RunnableTarget, options: RunOptions
) -> dict[str, Any] | RunResult:
    """Run `graph` to the end inside `runtime`; see `trioflow.run_async`."""
    run = RunState(
        run_id=options.run_id,
        graph_id=graph.name,
        limiter=trio.CapacityLimiter(options.max_concurrency),
        policy=options.on_error,
        rng=options.rng,
        global_limiter=runtime.global_limiter,
        resources=runtime.resources,
        services=runtime.services_for(options.run_id),
    )
    run.check_limits(graph.tools())
    ledger = run.ledger
    started = trio.current_time()
    outputs: dict[str, Any] | None = None
    error: Exception | None = None
    frame = Frame(run, graph.name, graph.name, 1, None)
    deadline = math.inf if options.timeout is None else started + options.timeout
    with trio.CancelScope(deadline=deadline) as scope:
        token = FRAME.set(frame)
        try:
            outputs = await graph.run_body(run, options.inputs, frame)
        except Exception as exc:
            error = exc
        finally:
            FRAME.reset(token)
            ledger.finish_unfinished(trio.current_time())

    def record() -> RunRecord:
        return ledger.snapshot(run.run_id, graph.name, started, trio.current_time())

    collect = options.on_error == "collect"
    if error is not None:
        rec = record()
        attach_record(error, rec)
        if collect and is_run_failure(error):
            return RunResult(outputs=outputs or {}, record=rec)
        raise error
    if scope.cancelled_caught:
        rec = record()
        if collect:
            return RunResult(outputs=outputs or {}, record=rec)
        cancelled = RunCancelled(
            f"run {run.run_id!r} of {graph.name!r} timed out after {options.timeout}s; "
            "running nodes were cancelled"
        )
        cancelled.record = rec
        raise cancelled
    assert outputs is not None
    if options.record or collect:
        return RunResult(outputs=outputs, record=record())
    return outputs
