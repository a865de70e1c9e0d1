"""Properties of the static scheduler on random DAGs, in virtual time, using trioflow.testing.

Random DAGs (edges low → high index), caps 1..4 or inf, durations, failure masks, and an rng for
tie-breaks: results equal a plain-Python evaluation, every edge is respected, the cap is never
exceeded, each node runs at most once, with no cap the makespan is the critical path exactly,
failures are contained, and nothing (token or task) is left behind.
"""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

import trioflow
from trioflow import NodeState
from trioflow.testing import (
    DagGraph,
    Outcome,
    PlantedFailure,
    assert_cap_respected,
    assert_dependencies_respected,
    assert_failures_contained,
    assert_makespan_bounds,
    assert_no_leftover_tokens,
    assert_ran_at_most_once,
    caps,
    dag_graphs,
    run_virtual,
    schedule_rngs,
)


def check_common(case: DagGraph, outcome: Outcome, cap: float) -> None:
    graph = case.graph.compile()
    record = outcome.record
    assert list(record.nodes) == [case.node_id(i) for i in range(case.dag.size)]
    assert_dependencies_respected(record, graph)
    assert_cap_respected(record, cap)
    assert_ran_at_most_once(record, case.calls)
    assert_no_leftover_tokens(outcome.leftover_tokens)
    assert outcome.leftover_tasks == 0
    assert not any(r.state in (NodeState.RUNNING, NodeState.PENDING) for r in record.nodes.values())


@given(case=dag_graphs(failures=False), cap=caps(), rng=st.none() | schedule_rngs())
def test_random_dags_compute_the_right_values_within_the_cap(
    case: DagGraph, cap: float, rng: random.Random | None
) -> None:
    outcome = run_virtual(case.graph, max_concurrency=cap, rng=rng)
    assert outcome.ok, outcome.error
    assert outcome.outputs == case.expected()
    check_common(case, outcome, cap)
    assert_makespan_bounds(outcome.record, case.graph.compile(), case.durations, cap)


@given(case=dag_graphs(), cap=caps(), rng=st.none() | schedule_rngs())
def test_skip_dependents_contains_every_failure(
    case: DagGraph, cap: float, rng: random.Random | None
) -> None:
    outcome = run_virtual(case.graph, max_concurrency=cap, rng=rng, on_error="skip_dependents")
    check_common(case, outcome, cap)
    assert_failures_contained(outcome.record, case.graph.compile())
    doomed = case.doomed()
    runs_and_fails = {
        i for i, bad in enumerate(case.failures) if bad and not set(case.dag.deps[i]) & doomed
    }
    failing = {case.node_id(i) for i in runs_and_fails}
    states = outcome.record.states()
    for i in range(case.dag.size):
        expected = (
            NodeState.FAILED
            if i in runs_and_fails
            else NodeState.SKIPPED
            if i in doomed
            else NodeState.DONE
        )
        assert states[case.node_id(i)] is expected
    if not failing:
        assert outcome.ok and outcome.outputs == case.expected()
        return
    error = outcome.error
    errors = list(error.exceptions) if isinstance(error, ExceptionGroup) else [error]
    assert {e.node_id for e in errors} == failing  # type: ignore[union-attr]
    assert all(isinstance(e.__cause__, PlantedFailure) for e in errors)  # type: ignore[union-attr]


@given(case=dag_graphs(), cap=caps(), rng=st.none() | schedule_rngs())
def test_fail_fast_stops_at_the_first_failure(
    case: DagGraph, cap: float, rng: random.Random | None
) -> None:
    outcome = run_virtual(case.graph, max_concurrency=cap, rng=rng)
    check_common(case, outcome, cap)
    assert_failures_contained(outcome.record, case.graph.compile(), skipped=False)
    if not any(case.failures):
        assert outcome.ok and outcome.outputs == case.expected()
        return
    assert isinstance(outcome.error, trioflow.NodeFailed)
    assert isinstance(outcome.error.__cause__, PlantedFailure)
    failed = [k for k, r in outcome.record.nodes.items() if r.state is NodeState.FAILED]
    assert outcome.error.node_id in failed
    # Nothing started after the first failure.
    first_failure = min(outcome.record.nodes[k].finished_at for k in failed)  # type: ignore[type-var]
    assert all(
        r.started_at is None or r.started_at <= first_failure for r in outcome.record.nodes.values()
    )


@given(case=dag_graphs(), cap=caps())
def test_collect_returns_what_could_be_computed(case: DagGraph, cap: float) -> None:
    outcome = run_virtual(case.graph, max_concurrency=cap, on_error="collect")
    assert outcome.ok
    check_common(case, outcome, cap)
    record = outcome.record
    failed = {k for k, r in record.nodes.items() if r.state is NodeState.FAILED}
    doomed = case.doomed()
    assert failed == {
        case.node_id(i)
        for i, bad in enumerate(case.failures)
        if bad and not set(case.dag.deps[i]) & doomed
    }
    assert_failures_contained(record, case.graph.compile())
    sinks_ok = not (set(case.dag.sinks()) & case.doomed())
    assert outcome.outputs == (case.expected() if sinks_ok else {})
