"""trioflow.testing finds scheduler bugs: three planted bugs, each falsified and shrunk small.

A toy scheduler (one task per node, an Event per node, a CapacityLimiter) runs a `DagGraph`'s
DAG in virtual time and writes an ordinary `RunRecord`. Correct, it passes every invariant;
with a bug planted, Hypothesis finds a counterexample and shrinks it to at most three nodes.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, find, given, settings, strategies as st

import trioflow
from trioflow import NodeRecord, NodeState, RunRecord
from trioflow.testing import (
    Dag,
    DagGraph,
    FakeService,
    assert_cap_respected,
    assert_dependencies_respected,
    assert_failures_contained,
    assert_makespan_bounds,
    caps,
    dag_graphs,
    dags,
    peak_concurrency,
)

BUGS = ("off-by-one cap", "skipped dependency wait", "failure does not stop dependents")


def toy_schedule(case: DagGraph, cap: int, bug: str | None = None) -> RunRecord:
    """A small scheduler with an optional planted bug; returns the run's record."""
    dag = case.dag
    ids = [case.node_id(i) for i in range(dag.size)]
    done = [trio.Event() for _ in ids]
    failed = [False] * dag.size
    records: dict[str, NodeRecord] = {}

    async def node(
        i: int, limiter: trio.CapacityLimiter, task_status: trio.TaskStatus[None]
    ) -> None:
        # started() first: the spawner resumes only after this task blocks, so nodes claim
        # their place (in the limiter's FIFO queue, say) in index order, deterministically.
        task_status.started()
        deps = dag.deps[i][:-1] if bug == "skipped dependency wait" else dag.deps[i]
        try:
            for d in deps:
                await done[d].wait()
            if any(failed[d] for d in deps) and bug != "failure does not stop dependents":
                failed[i] = True
                records[ids[i]] = NodeRecord(tool="node", state=NodeState.SKIPPED)
                return
            async with limiter:
                start = trio.current_time()
                await trio.sleep(case.durations[i])
                ok = not case.failures[i]
                failed[i] = not ok
                records[ids[i]] = NodeRecord(
                    tool="node",
                    state=NodeState.DONE if ok else NodeState.FAILED,
                    started_at=start,
                    finished_at=trio.current_time(),
                    attempts=1,
                )
        finally:
            done[i].set()

    async def main() -> RunRecord:
        limiter = trio.CapacityLimiter(cap + 1 if bug == "off-by-one cap" else cap)
        async with trio.open_nursery() as nursery:
            for i in range(dag.size):
                await nursery.start(node, i, limiter)
        return RunRecord(
            run_id="toy",
            graph_id="dag",
            nodes={k: records[k] for k in ids},
            started_at=0.0,
            finished_at=trio.current_time(),
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def edges(case: DagGraph) -> list[tuple[str, str]]:
    return [(case.node_id(d), case.node_id(i)) for d, i in case.dag.edges]


def check(case: DagGraph, cap: int, record: RunRecord) -> None:
    assert_dependencies_respected(record, edges(case))
    assert_cap_respected(record, cap)
    assert_failures_contained(record, edges(case))
    if not any(case.failures):
        durations = {case.node_id(i): float(d) for i, d in enumerate(case.durations)}
        assert_makespan_bounds(record, edges(case), durations, cap)


def violates(args: tuple[DagGraph, int], bug: str | None) -> bool:
    case, cap = args
    try:
        check(case, cap, toy_schedule(case, cap, bug))
    except AssertionError:
        return True
    return False


# Every node takes at least a virtual second, so the toy scheduler's order is visible in its
# record however Trio orders tasks that wake at the same instant.
cases = st.tuples(dag_graphs(max_nodes=8, min_seconds=1, max_seconds=3), caps(3, unlimited=False))


@given(args=cases)
@settings(max_examples=40)
def test_the_correct_toy_scheduler_passes_every_invariant(args: tuple[DagGraph, int]) -> None:
    assert not violates(args, None)


@pytest.mark.parametrize("bug", BUGS)
def test_the_kit_falsifies_a_planted_bug_and_shrinks_it(bug: str) -> None:
    case, cap = find(
        cases,
        lambda args: violates(args, bug),
        settings=settings(max_examples=2000, database=None, derandomize=True),
    )
    assert case.dag.size <= 3, case
    with pytest.raises(AssertionError) as info:
        check(case, cap, toy_schedule(case, cap, bug))
    assert "node_" in str(info.value)  # the message names the offending nodes


# -- the pieces of the kit ---------------------------------------------------------------------


def test_invariant_messages_name_the_offending_nodes() -> None:
    record = RunRecord(
        run_id="r",
        graph_id="g",
        nodes={
            "a": NodeRecord("t", NodeState.FAILED, 0.0, 2.0, 1),
            "b": NodeRecord("t", NodeState.DONE, 1.0, 3.0, 1),
            "c": NodeRecord("t", NodeState.DONE, 1.5, 3.0, 2),
        },
        started_at=0.0,
        finished_at=3.0,
    )
    with pytest.raises(AssertionError, match="c started at 1.5 before b finished at 3.0"):
        assert_dependencies_respected(record, [("b", "c")])
    with pytest.raises(AssertionError, match="b started although a never finished"):
        assert_dependencies_respected(record, [("a", "b")])
    with pytest.raises(
        AssertionError, match=r"cap 2 exceeded: 3 nodes ran at once: \['a', 'b', 'c'\]"
    ):
        assert_cap_respected(record, 2)
    with pytest.raises(AssertionError, match="b started although an ancestor failed"):
        assert_failures_contained(record, [("a", "b")])
    assert peak_concurrency(record) == (3, ["a", "b", "c"])


@given(dag=dags(min_nodes=2, max_nodes=12, max_width=3, max_depth=4))
def test_dags_respect_their_bounds(dag: Dag) -> None:
    assert 2 <= dag.size <= 12
    assert dag.width() <= 3 and dag.depth() <= 4
    assert all(d < i for d, i in dag.edges)


def test_dag_graph_evaluates_like_plain_python() -> None:
    case = DagGraph(Dag(((), (0,), (0, 1))), durations=(1, 2, 3), failures=(False,) * 3)
    assert trioflow.run(case.graph) == case.expected()
    assert case.dag.critical_path(case.durations) == 6
    assert case.calls == {0: 1, 1: 1, 2: 1}


# -- the pytest plugin -------------------------------------------------------------------------


@pytest.fixture
def trioflow_services() -> dict[str, Any]:
    return {"weather": FakeService(today="sunny")}


async def test_plugin_fixtures_give_a_runtime_with_services_in_virtual_time(
    trioflow_runtime: trioflow.Runtime,
    virtual_clock: trio.testing.MockClock,
) -> None:
    @trioflow.tool(outputs=["w"])
    async def forecast(context: trioflow.NodeContext) -> str:
        await trio.sleep(3600)  # an hour of virtual time
        return str(await context.weather().today())

    @trioflow.graph_fn(name="g", outputs=["w"])
    async def g() -> Any:
        return (await forecast())["w"]

    with trio.fail_after(7200):
        assert await trioflow.run_async(g) == {"w": "sunny"}
    assert trio.current_time() == 3600
    fake = trioflow_runtime.lookup("weather")
    assert fake.started and [c.node_id for c in fake.calls] == ["forecast_1"]


def test_plugin_profiles_are_registered() -> None:
    from trioflow.pytest_plugin import load_profile

    ci = settings.get_profile("trioflow-ci")
    assert ci.derandomize and ci.deadline is None
    assert settings.get_profile("trioflow-fast").max_examples < ci.max_examples
    assert load_profile.__doc__
    assert HealthCheck.too_slow in ci.suppress_health_check
    assert math.isfinite(ci.max_examples)


def test_the_plugin_loads_without_hypothesis() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import trioflow.pytest_plugin as p\n"
        "assert p.register_profiles() is False and p.load_profile('ci') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
