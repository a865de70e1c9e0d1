"""Invariant checks over a run's record: each raises `AssertionError` naming the offending nodes.

They hold for any correct scheduler, so they work as properties in Hypothesis tests of your
graphs, and of schedulers (trioflow's own tests plant scheduler bugs and watch them fail).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import trio

from .._graph import TaskGraph
from .._records import NodeState, RunRecord

__all__ = [
    "assert_all_finished",
    "assert_cap_respected",
    "assert_dependencies_respected",
    "assert_failures_contained",
    "assert_failures_surfaced",
    "assert_makespan_bounds",
    "assert_no_leftover_tokens",
    "assert_ran_at_most_once",
    "leaf_nodes",
    "peak_concurrency",
]

Edges = Iterable[tuple[str, str]]


def _edges(graph: TaskGraph | Edges) -> list[tuple[str, str]]:
    return graph.edges if isinstance(graph, TaskGraph) else list(graph)


def leaf_nodes(record: RunRecord) -> list[str]:
    """Nodes that hold capacity while they run: those with no nested nodes inside them."""
    ids = list(record.nodes)
    parents = {node_id.rsplit(".", 1)[0] for node_id in ids if "." in node_id}
    # A nested id "a.b_1.c_2" makes both "a" and "a.b_1" parents.
    for node_id in ids:
        parts = node_id.split(".")
        parents.update(".".join(parts[:k]) for k in range(1, len(parts)))
    return [node_id for node_id in ids if node_id not in parents]


def assert_dependencies_respected(record: RunRecord, graph: TaskGraph | Edges) -> None:
    """No node started before every dependency finished (`finished_at[dep] <= started_at`)."""
    bad = []
    for dep, node in _edges(graph):
        n, d = record.nodes.get(node), record.nodes.get(dep)
        if n is None or n.started_at is None:
            continue
        if d is None or d.finished_at is None or d.state is not NodeState.DONE:
            bad.append(f"{node} started although {dep} never finished")
        elif d.finished_at > n.started_at:
            bad.append(f"{node} started at {n.started_at} before {dep} finished at {d.finished_at}")
    if bad:
        raise AssertionError("dependency order violated: " + "; ".join(bad))


def peak_concurrency(
    record: RunRecord, nodes: Iterable[str] | None = None
) -> tuple[int, list[str]]:
    """The most nodes running at once, and which.

    Intervals are half-open (an end at time t frees its slot before a start at t). A node that
    took zero time is counted with the intervals open at its instant, not with other
    zero-time nodes at that instant: virtual time cannot tell whether those overlapped, so the
    count never reports an overlap that did not happen.
    """
    chosen = leaf_nodes(record) if nodes is None else list(nodes)
    spans: list[tuple[float, float, str]] = []
    instants: list[tuple[float, str]] = []
    for node_id in chosen:
        rec = record.nodes[node_id]
        if rec.started_at is None:
            continue
        end = rec.finished_at if rec.finished_at is not None else float("inf")
        if end > rec.started_at:
            spans.append((rec.started_at, end, node_id))
        else:
            instants.append((rec.started_at, node_id))
    events = sorted([(end, 0, n) for _, end, n in spans] + [(st, 1, n) for st, _, n in spans])
    running: set[str] = set()
    peak: tuple[int, list[str]] = (0, [])
    for _, kind, node_id in events:
        if kind == 0:
            running.discard(node_id)
        else:
            running.add(node_id)
            if len(running) > peak[0]:
                peak = (len(running), sorted(running))
    for t, node_id in instants:
        open_at = [n for start, end, n in spans if start < t < end]
        if len(open_at) + 1 > peak[0]:
            peak = (len(open_at) + 1, sorted([*open_at, node_id]))
    return peak


def assert_cap_respected(record: RunRecord, cap: float, nodes: Iterable[str] | None = None) -> None:
    """At no time did more than `cap` (leaf) nodes run."""
    peak, which = peak_concurrency(record, nodes)
    if peak > cap:
        raise AssertionError(f"cap {cap} exceeded: {peak} nodes ran at once: {which}")


def assert_ran_at_most_once(
    record: RunRecord, calls: Mapping[str, int] | None = None, *, max_attempts: int = 1
) -> None:
    """No node body ran twice: at most `max_attempts` attempts each, and each `calls` ≤ 1."""
    bad = [
        f"{k} ({r.attempts} attempts)" for k, r in record.nodes.items() if r.attempts > max_attempts
    ]
    if calls is not None:
        bad += [f"{k} ({n} calls)" for k, n in calls.items() if n > max_attempts]
    if bad:
        raise AssertionError("nodes ran more than once: " + ", ".join(sorted(bad)))


def assert_failures_contained(
    record: RunRecord, graph: TaskGraph | Edges, *, skipped: bool = True
) -> None:
    """No descendant of a failed node started; with `skipped`, each one is recorded SKIPPED."""
    dependents: dict[str, list[str]] = {}
    for dep, node in _edges(graph):
        dependents.setdefault(dep, []).append(node)
    failed = [k for k, r in record.nodes.items() if r.state is NodeState.FAILED]
    seen: set[str] = set()
    stack = list(failed)
    bad = []
    while stack:
        for node in dependents.get(stack.pop(), []):
            if node in seen:
                continue
            seen.add(node)
            stack.append(node)
            rec = record.nodes.get(node)
            if rec is None:
                continue
            if rec.started_at is not None:
                bad.append(f"{node} started although an ancestor failed")
            elif skipped and rec.state is not NodeState.SKIPPED:
                bad.append(f"{node} is {rec.state.value}, expected SKIPPED")
    if bad:
        raise AssertionError(f"failure of {sorted(failed)} not contained: " + "; ".join(bad))


def assert_makespan_bounds(
    record: RunRecord,
    graph: TaskGraph | Edges,
    durations: Mapping[str, float],
    cap: float,
    *,
    exact_when_unlimited: bool = True,
) -> None:
    """The run took as long as the graph allows, no less and not wildly more (virtual time).

    Lower bound: the critical path and total work / cap. Upper bound (any greedy list
    schedule, Graham): total work / cap + the critical path. With an unlimited cap and every
    node done, the makespan equals the critical path exactly.
    """
    if record.started_at is None or record.finished_at is None:
        raise AssertionError("the record has no start/finish time")
    makespan = record.finished_at - record.started_at
    deps: dict[str, list[str]] = {node: [] for node in durations}
    for dep, node in _edges(graph):
        deps.setdefault(node, []).append(dep)
    finish: dict[str, float] = {}

    def longest(node: str) -> float:
        if node not in finish:
            finish[node] = (
                max((longest(d) for d in deps.get(node, [])), default=0.0) + durations[node]
            )
        return finish[node]

    critical = max((longest(n) for n in durations), default=0.0)
    total = sum(durations.values())
    lower = max(critical, total / cap)
    upper = total / cap + critical
    all_done = all(r.state is NodeState.DONE for r in record.nodes.values())
    if all_done and makespan < lower - 1e-9:
        raise AssertionError(f"makespan {makespan} is below the lower bound {lower}")
    if makespan > upper + 1e-9:
        raise AssertionError(f"makespan {makespan} exceeds the greedy bound {upper}")
    if (
        all_done
        and exact_when_unlimited
        and cap == float("inf")
        and abs(makespan - critical) > 1e-9
    ):
        raise AssertionError(
            f"with no cap the makespan {makespan} must equal the critical path {critical}"
        )


def assert_all_finished(record: RunRecord) -> None:
    """No node is left RUNNING or PENDING once the run has returned or raised."""
    bad = [
        f"{k} is {r.state.value}"
        for k, r in record.nodes.items()
        if r.state in (NodeState.RUNNING, NodeState.PENDING)
    ]
    if bad:
        raise AssertionError("nodes left unfinished after the run: " + ", ".join(bad))


def assert_failures_surfaced(
    record: RunRecord,
    error: BaseException | None,
    failing: Iterable[str],
    *,
    collect: bool = False,
) -> None:
    """Every injected failure that happened is raised or reported, never lost.

    `failing` are the nodes set to fail. Each one whose body ran and was not cancelled must be
    FAILED with an error in the record; and unless the run's policy is `collect` (which
    reports instead of raising), the run must have raised.
    """
    bad = []
    happened = []
    for node in sorted(failing):
        rec = record.nodes.get(node)
        if rec is None or rec.started_at is None or rec.state is NodeState.CANCELLED:
            continue
        happened.append(node)
        if rec.state is not NodeState.FAILED:
            bad.append(f"{node} failed but is recorded {rec.state.value}")
        elif rec.error is None:
            bad.append(f"{node} is FAILED with no error recorded")
    if happened and error is None and not collect:
        bad.append(f"the run returned normally although {', '.join(happened)} failed")
    if bad:
        raise AssertionError("a failure was swallowed: " + "; ".join(bad))


def assert_no_leftover_tokens(tokens: Any) -> None:
    """Nothing is still borrowed after the run, and nothing was released twice.

    Takes a `TokenTracker` (names the nodes and any double release), a
    `trio.CapacityLimiter` (names its borrowers), an `Outcome` (names the nodes where
    `run_virtual` could tell), or a count (negative: more releases than acquires).
    """
    problems: list[str] = list(getattr(tokens, "problems", ()))
    holders: list[str] = []
    if hasattr(tokens, "holders"):
        holders = tokens.holders()
    elif isinstance(tokens, trio.CapacityLimiter):
        holders = sorted(repr(b) for b in tokens.statistics().borrowers)
    elif hasattr(tokens, "leftover_tokens"):
        count = tokens.leftover_tokens
        holders = list(tokens.leaked_by) or ([f"{count} unnamed borrower(s)"] if count else [])
    elif isinstance(tokens, int):
        if tokens < 0:
            problems.append(
                f"{-tokens} more token releases than acquires: a double release somewhere"
            )
        elif tokens:
            holders = [f"{tokens} unnamed borrower(s)"]
    else:
        raise TypeError(f"assert_no_leftover_tokens cannot read tokens from {tokens!r}")
    if holders:
        problems.append("tokens still held after the run by " + ", ".join(holders))
    if problems:
        raise AssertionError("; ".join(problems))
