"""Testing any async scheduler: drive it with drawn graphs in virtual time, check every invariant.

A scheduler under test is an async function

    async def schedule(graph: Workload, *, max_concurrency: float) -> None

(optionally also taking `rng=` — a `random.Random` for its tie-breaks — and `nursery=` — a
long-lived nursery, like a runtime's root nursery, it may start background tasks in). It must
run every node of `graph` by awaiting `graph.run(node)` once the node's dependencies are done,
never more than `max_concurrency` at once, and return or raise when the graph is finished.

The kit owns the node bodies, so it sees the truth: when each body started and ended and how,
whether one was still running when the scheduler returned, what was raised. `run_scheduler`
runs one case under `MockClock(autojump_threshold=0)` with a deadlock watchdog;
`SchedulerRun.check()` checks every invariant on the result; `check_scheduler` does both for
many drawn cases with Hypothesis, which shrinks a failure to a tiny graph.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
import trio.testing

from .._records import ErrorInfo, NodeRecord, NodeState, RunRecord
from ._dags import DagGraph, PlantedFailure
from ._invariants import (
    assert_cap_respected,
    assert_dependencies_respected,
    assert_failures_contained,
    assert_makespan_bounds,
    assert_no_leftover_tokens,
    assert_ran_at_most_once,
    leaf_nodes,
)
from ._virtual import live_tasks, reseed_trio
from ._watchdog import Deadlock, watch_progress

__all__ = [
    "Scheduler",
    "SchedulerCase",
    "SchedulerRun",
    "TokenTracker",
    "Workload",
    "check_scheduler",
    "run_scheduler",
]

_INSTALL_HINT = "pip install 'trioflow[test]' (or: pip install hypothesis)"


class Scheduler(Protocol):
    """The shape of a scheduler `check_scheduler` can test (`rng=`, `nursery=` optional)."""

    def __call__(self, graph: Workload, *, max_concurrency: float) -> Awaitable[Any]: ...


class TokenTracker:
    """A capacity limiter whose borrowers are node ids, so leaks and double releases are named.

    `await acquire(node)`, `release(node)`, or `async with hold(node):`. A release by a node
    that holds no token is recorded as a double release (and ignored, so the count stays
    sane); `leaked()` lists the nodes still holding a token. Works at `math.inf` too.
    """

    def __init__(self, total_tokens: float) -> None:
        self._limiter = trio.CapacityLimiter(total_tokens)
        self.problems: list[str] = []

    @property
    def total_tokens(self) -> float:
        return self._limiter.total_tokens

    @property
    def borrowed_tokens(self) -> int:
        return self._limiter.borrowed_tokens

    @property
    def available_tokens(self) -> float:
        return self._limiter.available_tokens

    def holders(self) -> list[str]:
        """The nodes holding a token now, sorted."""
        return sorted(str(b) for b in self._limiter.statistics().borrowers)

    leaked = holders

    async def acquire(self, node: str) -> None:
        if node in self._limiter.statistics().borrowers:
            self.problems.append(f"{node} acquired a second token while holding one")
        await self._limiter.acquire_on_behalf_of(node)

    def acquire_nowait(self, node: str) -> None:
        self._limiter.acquire_on_behalf_of_nowait(node)

    def release(self, node: str) -> None:
        if node not in self._limiter.statistics().borrowers:
            self.problems.append(f"{node} released a token it does not hold (a double release)")
            return
        self._limiter.release_on_behalf_of(node)

    @asynccontextmanager
    async def hold(self, node: str) -> Any:
        await self.acquire(node)
        try:
            yield
        finally:
            self.release(node)


@attrs.define(eq=False)
class _Truth:
    """What really happened to one node's body."""

    tool: str
    state: NodeState = NodeState.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: BaseException | None = None
    skipped: bool = False


@attrs.define(eq=False)
class _Shared:
    """State shared by a workload and its nested workloads."""

    truth: dict[str, _Truth]
    tokens: TokenTracker
    running: set[str] = attrs.field(factory=set)
    raised: dict[str, BaseException] = attrs.field(factory=dict)
    reported: dict[str, BaseException] = attrs.field(factory=dict)


class Workload:
    """The graph a scheduler under test runs; the kit observes every node body.

    - `nodes`: node ids in a topological order; `deps[node]` / `dependents[node]`: id tuples.
    - `await run(node)`: the node's body (it sleeps its duration in virtual seconds and may
      raise `PlantedFailure`). For a node that holds a nested graph (`subgraph(node)` is not
      None) pass `nested=`: an async function the body calls with the nested `Workload`, to
      run it with the same scheduler and the same capacity.
    - `limiter`: a `TokenTracker` with `max_concurrency` tokens, keyed by node id; use it (or
      your own limiter) to cap leaf nodes. Leaks and double releases through it are reported.
    - `report(node, error)`: report a failure you do not raise (a "collect" policy).
    - `skip(node)`: say a node will not run (a dependency failed).
    """

    def __init__(self, graph: DagGraph, shared: _Shared) -> None:
        self._graph = graph
        self._shared = shared
        self.nodes: tuple[str, ...] = tuple(graph.ids)
        self.deps: dict[str, tuple[str, ...]] = {
            graph.ids[i]: tuple(graph.ids[d] for d in ds) for i, ds in enumerate(graph.dag.deps)
        }
        dependents: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node, ds in self.deps.items():
            for d in ds:
                dependents[d].append(node)
        self.dependents: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in dependents.items()}
        self._index = {node: i for i, node in enumerate(self.nodes)}

    def __repr__(self) -> str:
        return f"Workload({list(self.nodes)})"

    @property
    def limiter(self) -> TokenTracker:
        return self._shared.tokens

    def subgraph(self, node: str) -> Workload | None:
        """The nested graph a node holds, or None for a plain (leaf) node."""
        sub = self._graph.subgraphs.get(self._index[node])
        return None if sub is None else Workload(sub, self._shared)

    def report(self, node: str, error: BaseException) -> None:
        self._shared.reported[node] = error

    def skip(self, node: str) -> None:
        self._shared.truth[node].skipped = True

    async def run(
        self, node: str, *, nested: Callable[[Workload], Awaitable[Any]] | None = None
    ) -> None:
        """Run a node's body. It raises `PlantedFailure` if the node is set to fail, and what
        `nested` raises for a nested graph."""
        i = self._index.get(node)
        if i is None:
            raise KeyError(f"{node!r} is not a node of this graph; it has {list(self.nodes)}")
        shared, graph = self._shared, self._graph
        truth = shared.truth[node]
        sub = self.subgraph(node)
        if sub is not None and nested is None:
            raise TypeError(
                f"{node} holds a nested graph: call graph.run({node!r}, nested=fn) with an async "
                "fn that runs the nested Workload it is given"
            )
        now = trio.current_time
        truth.attempts += 1
        if truth.started_at is None:
            truth.started_at = now()
        truth.state = NodeState.RUNNING
        shared.running.add(node)
        try:
            if sub is not None:
                assert nested is not None
                await nested(sub)
            else:
                await trio.sleep(graph.seconds[i])
                if graph.failures[i]:
                    exc = PlantedFailure(f"{node} fails on purpose")
                    shared.raised[node] = exc
                    raise exc
        except Exception as exc:
            truth.state, truth.error = NodeState.FAILED, exc
            raise
        except BaseException:
            truth.state = NodeState.CANCELLED
            raise
        else:
            truth.state = NodeState.DONE
        finally:
            truth.finished_at = now()
            shared.running.discard(node)


@attrs.frozen
class SchedulerCase:
    """One drawn case for a scheduler: the graph, the cap, an rng and an interleaving seed."""

    graph: DagGraph
    max_concurrency: float
    rng: random.Random | None = None
    interleaving: int | None = None

    def __repr__(self) -> str:
        # Copy-pasteable: `run_scheduler(schedule, <this>)` replays the case (without its rng).
        cap = "math.inf" if self.max_concurrency == math.inf else repr(self.max_concurrency)
        return (
            f"SchedulerCase({self.graph!r}, max_concurrency={cap}, "
            f"interleaving={self.interleaving!r})"
        )


def _record(shared: _Shared, graph: DagGraph, started: float, finished: float) -> RunRecord:
    nodes = {}
    for node_id in graph.node_ids:
        t = shared.truth[node_id]
        state = t.state
        if state is NodeState.PENDING and t.skipped:
            state = NodeState.SKIPPED
        error = None if t.error is None else ErrorInfo.from_exception(t.error)
        nodes[node_id] = NodeRecord(t.tool, state, t.started_at, t.finished_at, t.attempts, error)
    return RunRecord(
        run_id="check", graph_id=graph.name, nodes=nodes, started_at=started, finished_at=finished
    )


def _contains(error: BaseException | None, target: BaseException) -> bool:
    """Whether `target` is `error`, inside it (groups), or in its cause/context chain."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        if exc is target:
            return True
        seen.add(id(exc))
        stack += [exc.__cause__, exc.__context__]
        if isinstance(exc, BaseExceptionGroup):
            stack += list(exc.exceptions)
    return False


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@attrs.frozen
class SchedulerRun:
    """What one run of a scheduler under test did (the truth the kit observed)."""

    case: SchedulerCase
    record: RunRecord  # node id → what really happened (leaf and nested-graph nodes)
    error: BaseException | None  # what the scheduler raised
    returned: Any
    deadlock: Deadlock | None
    orphans: tuple[str, ...]  # nodes whose body was still running when the scheduler returned
    leftover_tasks: int  # tasks alive when the scheduler returned that were not before
    raised: Mapping[str, BaseException]  # node id → the failure its body raised
    reported: Mapping[str, BaseException]  # node id → failures reported with graph.report()
    tokens: TokenTracker

    def violations(self, *, work_conserving: bool = True) -> list[str]:
        """Every invariant this run broke, each naming the nodes ("" when all held)."""
        case, record = self.case, self.record
        graph, cap = case.graph, case.max_concurrency
        edges = graph.edges
        out: list[str] = []

        def check(fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except AssertionError as exc:
                out.append(str(exc))

        if self.deadlock is not None:
            out.append(str(self.deadlock))
        if self.orphans:
            out.append(
                f"no task may outlive the run: {', '.join(self.orphans)} still running after the "
                "scheduler returned"
            )
        elif self.leftover_tasks > 0:
            out.append(
                f"no task may outlive the run: {self.leftover_tasks} task(s) still alive after "
                "the scheduler returned"
            )
        check(assert_dependencies_respected, record, edges)
        check(assert_cap_respected, record, cap)
        check(assert_ran_at_most_once, record)
        check(assert_failures_contained, record, edges, skipped=False)
        check(assert_no_leftover_tokens, self.tokens)
        lost = [
            node
            for node, exc in self.raised.items()
            if node not in self.reported and not _contains(self.error, exc)
        ]
        if lost:
            how = "returned normally" if self.error is None else f"raised {self.error!r}"
            out.append(
                f"failure of {', '.join(sorted(lost))} was swallowed: the scheduler {how} "
                "without it (raise it, chained, or report it with graph.report)"
            )
        if self.error is None and self.deadlock is None:
            doomed = _doomed(record, edges)
            unfinished = [
                k
                for k, r in record.nodes.items()
                if r.state is not NodeState.DONE and k not in doomed
            ]
            if unfinished:
                out.append(
                    f"the scheduler returned normally but {', '.join(unfinished)} did not finish "
                    f"({', '.join(record.nodes[k].state.value for k in unfinished)})"
                )
            if work_conserving and not self.raised and not graph.subgraphs:
                check(assert_makespan_bounds, record, edges, graph.durations, cap)
        return out

    def check(self, *, work_conserving: bool = True) -> None:
        """Raise `AssertionError` listing every broken invariant and the run's timeline.

        `work_conserving=False` skips the makespan bound (for a scheduler that may idle while
        work is ready)."""
        problems = self.violations(work_conserving=work_conserving)
        if problems:
            raise AssertionError(
                "scheduler broke "
                + ("an invariant" if len(problems) == 1 else f"{len(problems)} invariants")
                + ":\n  - "
                + "\n  - ".join(problems)
                + f"\ncase: {self.case!r}\n"
                + timeline(self.record)
            )


def _doomed(record: RunRecord, edges: Sequence[tuple[str, str]]) -> set[str]:
    """Failed nodes, their descendants, and nested-graph nodes holding one."""
    dependents: dict[str, list[str]] = {}
    for dep, node in edges:
        dependents.setdefault(dep, []).append(node)
    stack = [k for k, r in record.nodes.items() if r.state is NodeState.FAILED]
    for k in list(stack):
        parts = k.split(".")
        stack += [".".join(parts[:n]) for n in range(1, len(parts))]
    doomed: set[str] = set()
    while stack:
        node = stack.pop()
        if node in doomed:
            continue
        doomed.add(node)
        stack += dependents.get(node, [])
        stack += [k for k in record.nodes if k.startswith(node + ".")]
    return doomed


def timeline(record: RunRecord) -> str:
    """One line per node: its state and when it ran (virtual seconds)."""

    def span(r: NodeRecord) -> str:
        if r.started_at is None:
            return "never started"
        end = "..." if r.finished_at is None else f"{r.finished_at:g}"
        return f"{r.started_at:g}-{end}"

    leaves = set(leaf_nodes(record))
    return "\n".join(
        f"  {k:<14} {r.state.value:<9} {span(r)}" + ("" if k in leaves else "  (nested graph)")
        for k, r in record.nodes.items()
    )


def run_scheduler(
    schedule: Callable[..., Awaitable[Any]],
    case: SchedulerCase | DagGraph,
    *,
    max_concurrency: float | None = None,
    rng: random.Random | None = None,
    interleaving: int | None = None,
    limit: float = 1e6,
) -> SchedulerRun:
    """Run `schedule` once on a case, in a fresh `trio.run` under `MockClock(autojump_threshold=0)`.

    A deadlock (every task waiting, nothing to wake one) or a run still going after `limit`
    virtual seconds is cancelled and reported in `SchedulerRun.deadlock` with the record and
    the stuck nodes. Nothing is raised for a misbehaving scheduler: call `.check()`.
    """
    if isinstance(case, DagGraph):
        case = SchedulerCase(
            graph=case,
            max_concurrency=4 if max_concurrency is None else max_concurrency,
            rng=rng,
            interleaving=interleaving,
        )
    elif max_concurrency is not None or rng is not None or interleaving is not None:
        raise TypeError("pass max_concurrency/rng/interleaving in the SchedulerCase, not here")
    graph = case.graph
    graph.calls.clear()
    kwargs: dict[str, Any] = {"max_concurrency": case.max_concurrency}
    if case.rng is not None and _accepts(schedule, "rng"):
        kwargs["rng"] = case.rng
    wants_nursery = _accepts(schedule, "nursery")

    async def main() -> SchedulerRun:
        if case.interleaving is not None:
            reseed_trio(case.interleaving)
        truth = {g.ids[i]: _Truth("graph" if i in g.subgraphs else "node") for g, i in graph.walk()}
        shared = _Shared(truth=truth, tokens=TokenTracker(case.max_concurrency))
        workload = Workload(graph, shared)
        error: BaseException | None = None
        returned: Any = None
        stalled: list[Deadlock] = []
        orphans: tuple[str, ...] = ()
        leftover = 0

        def snapshot() -> tuple[RunRecord, list[str]]:
            now = trio.current_time()
            record = _record(shared, graph, 0.0, now)
            stuck = sorted(shared.running) + [
                k
                for k, r in record.nodes.items()
                if r.started_at is None
                and all(record.nodes[d].state is NodeState.DONE for d in _deps_of(graph, k))
                and _parent_running(k, shared.running)
            ]
            return record, stuck

        started = trio.current_time()
        async with trio.open_nursery() as outer:  # a runtime's root nursery, as it were
            with trio.CancelScope() as run_scope:

                def stop(found: Deadlock) -> None:
                    stalled.append(found)
                    run_scope.cancel(reason="the run stopped making progress")

                async with trio.open_nursery() as watch:
                    watch.start_soon(
                        lambda: watch_progress(limit=limit, on_stall=stop, snapshot=snapshot)
                    )
                    before = live_tasks()
                    try:
                        if wants_nursery:
                            kwargs["nursery"] = outer
                        returned = await schedule(workload, **kwargs)
                    except Exception as exc:
                        error = exc
                    finally:
                        orphans = tuple(sorted(shared.running))
                        leftover = live_tasks() - before
                        watch.cancel_scope.cancel()
            finished = trio.current_time()
            outer.cancel_scope.cancel(reason="the scheduler under test returned")
        if stalled and isinstance(error, trio.TooSlowError):
            error = None
        return SchedulerRun(
            case=case,
            record=_record(shared, graph, started, finished),
            error=error,
            returned=returned,
            deadlock=stalled[0] if stalled else None,
            orphans=() if stalled else orphans,
            leftover_tasks=0 if stalled else max(leftover, 0),
            raised=dict(shared.raised),
            reported=dict(shared.reported),
            tokens=shared.tokens,
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _deps_of(graph: DagGraph, node_id: str) -> list[str]:
    for g, i in graph.walk():
        if g.ids[i] == node_id:
            return [g.ids[d] for d in g.dag.deps[i]]
    return []


def _parent_running(node_id: str, running: set[str]) -> bool:
    """A nested node can be stuck only while its nested-graph node runs."""
    parent = node_id.rpartition(".")[0]
    return not parent or parent in running


def check_scheduler(
    schedule: Callable[..., Awaitable[Any]],
    *,
    cases: Any = None,
    settings: Any = None,
    work_conserving: bool = True,
) -> None:
    """Property-test a scheduler: run it on many drawn cases and check every invariant.

    `cases` is a Hypothesis strategy of `SchedulerCase` (default `scheduler_cases()`:
    nested graphs, failures, caps 1..3 or inf); `settings` a `hypothesis.settings` (default:
    the active profile). A failure is shrunk and raised as an `AssertionError` that lists the
    broken invariants and the shrunk case's timeline. Needs Hypothesis.
    """
    try:
        from hypothesis import given
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(f"check_scheduler needs Hypothesis: {_INSTALL_HINT}") from exc
    from ._strategies import scheduler_cases

    strategy = cases if cases is not None else scheduler_cases()

    @given(case=strategy)
    def scheduler_property(case: SchedulerCase) -> None:
        run_scheduler(schedule, case).check(work_conserving=work_conserving)

    test = settings(scheduler_property) if settings is not None else scheduler_property
    test()
