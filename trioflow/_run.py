"""One run of a graph: its options, its deadline, and what comes out of it.

Options are checked before anything starts. When the run ends, every node's record is final
(nothing is left RUNNING), every trioflow error leaving the run carries `.record`, and Trio's own
`Cancelled` from an enclosing scope passes through untouched. The run emits `run_started` and
`run_finished` around its nodes' events; a listener's exception fails the run, as itself.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._attempt import node_failed
from ._checks import check_max_concurrency
from ._context import FRAME, Frame, ServiceAccess
from ._errors import ConfigError, ConfigTypeError, RunCancelled, _RunError, is_run_failure
from ._events import Listener
from ._executor import Executor, ExecutorTable, check_executors
from ._graph import TaskGraph
from ._ledger import Ledger, Sink
from ._records import NodeState, RunRecord, RunResult
from ._runstate import ErrorPolicy, GraphTarget, NodeMemo, RateTurns, RunState
from ._schedule import CompiledGraph
from ._tool import Tool

__all__ = ["RunOptions", "RunSeams", "RuntimeLike", "check_run", "execute_run"]

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
    @property
    def executor_table(self) -> ExecutorTable: ...
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
    executors: dict[str, Executor] = attrs.field(factory=dict)
    on_event: Listener | None = None
    run_id_given: bool = False


@attrs.frozen
class RunSeams:
    """What the layers above the run plug into it: listeners, rate turns, a memo, a sink."""

    listener: Listener | None = None
    rates: RateTurns | None = None
    memo: NodeMemo | None = None
    sink: Sink | None = None


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
    executors: Mapping[str, Executor] | None = None,
    on_event: Listener | None = None,
) -> tuple[RunnableTarget, RunOptions]:
    """Validate everything about a run before anything starts."""
    if isinstance(target, TaskGraph):
        target = CompiledGraph.of(target)
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
    if not isinstance(record, bool):
        raise ConfigTypeError(f"record must be True or False, got {record!r}")
    if on_event is not None and not callable(on_event):
        raise ConfigTypeError(f"on_event must be a callable taking a RunEvent, got {on_event!r}")
    return graph, RunOptions(
        inputs=checked_inputs,
        max_concurrency=cap,
        on_error=on_error,  # type: ignore[arg-type]
        timeout=None if timeout is None else float(timeout),
        run_id=run_id or uuid.uuid4().hex,
        rng=rng,
        record=record,
        executors=check_executors(executors),
        on_event=on_event,
        run_id_given=run_id is not None,
    )


def attach_record(exc: BaseException, record: RunRecord) -> None:
    """Give every trioflow run error inside `exc` (a group's leaves too) the run's record."""
    if isinstance(exc, _RunError):
        exc.record = record
    elif isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            attach_record(inner, record)


async def execute_run(
    runtime: RuntimeLike,
    graph: RunnableTarget,
    options: RunOptions,
    seams: RunSeams = RunSeams(),
) -> dict[str, Any] | RunResult:
    """Run `graph` to the end inside `runtime`; see `trioflow.run_async`."""
    clock = trio.lowlevel.current_clock().current_time
    ledger = Ledger(options.run_id, graph.name, clock, seams.listener, seams.sink)
    executors = runtime.executor_table
    if options.executors:
        executors = ExecutorTable(options.executors, parent=executors)
    run = RunState(
        run_id=options.run_id,
        graph_id=graph.name,
        limiter=trio.CapacityLimiter(options.max_concurrency),
        ledger=ledger,
        policy=options.on_error,
        rng=options.rng,
        global_limiter=runtime.global_limiter,
        resources=runtime.resources,
        services=runtime.services_for(options.run_id),
        executors=executors,
        rates=seams.rates,
        memo=seams.memo,
    )
    run.check_tools(graph.tools())
    outputs: dict[str, Any] | None = None
    error: Exception | None = None
    frame = Frame(run, graph.name, graph.name, 1, None)
    ledger.run_started()
    started = ledger.t0
    deadline = math.inf if options.timeout is None else started + options.timeout
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            ledger.on_listener_error = scope.cancel
            if ledger.listener_error is not None:  # run_started's listener failed
                scope.cancel()
            token = FRAME.set(frame)
            try:
                outputs = await graph.run_body(run, options.inputs, frame)
            except Exception as exc:
                error = exc
            finally:
                FRAME.reset(token)
                ledger.finish_unfinished()
    except BaseException:  # cancelled from outside (or interrupted): still say how it ended
        ledger.run_finished(NodeState.CANCELLED)
        raise
    finally:
        if executors is not runtime.executor_table:
            with trio.move_on_after(_EXECUTOR_CLOSE_TIMEOUT, shield=True):
                await executors.aclose()
    finished = clock()

    def record() -> RunRecord:
        return ledger.snapshot(started, finished, final=True)

    collect = options.on_error == "collect"
    listener_error = ledger.listener_error
    if listener_error is not None:
        ledger.run_finished(NodeState.FAILED)
        raise listener_error
    if error is not None:
        rec = record()
        attach_record(error, rec)
        ledger.run_finished(NodeState.FAILED)
        if collect and is_run_failure(error):
            return RunResult(outputs=outputs or {}, record=rec)
        raise error
    if scope.cancelled_caught:
        rec = record()
        ledger.run_finished(NodeState.CANCELLED)
        if collect:
            return RunResult(outputs=outputs or {}, record=rec)
        cancelled = RunCancelled(
            f"run {run.run_id!r} of {graph.name!r} timed out after {options.timeout}s; "
            f"running nodes were cancelled: {_cancelled_ids(rec)}"
        )
        cancelled.record = rec
        earlier = ledger.failures()
        if earlier:
            # Failures that happened before the deadline are raised too, never only recorded.
            errors: list[Exception] = []
            for idx, original in earlier:
                node = node_failed(ledger.ids[idx], ledger.tools[idx], original)
                node.__cause__ = original
                node.record = rec
                errors.append(node)
            raise ExceptionGroup(
                f"run {run.run_id!r} timed out after {len(errors)} node(s) had failed",
                [*errors, cancelled],
            )
        raise cancelled
    assert outputs is not None
    failed = NodeState.FAILED in ledger.states  # members compare by identity: a C scan
    ledger.run_finished(NodeState.FAILED if failed and collect else NodeState.DONE)
    if options.record or collect:
        return RunResult(outputs=outputs, record=record)
    return outputs


_EXECUTOR_CLOSE_TIMEOUT = 30.0


def _cancelled_ids(record: RunRecord) -> str:
    ids = [n for n, rec in record.nodes.items() if rec.state is NodeState.CANCELLED]
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return shown or "none"
