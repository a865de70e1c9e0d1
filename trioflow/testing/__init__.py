"""trioflow.testing: property-test graphs and schedulers with Hypothesis, in virtual time.

- Any scheduler: `check_scheduler(schedule)` drives your own async scheduler with drawn graphs
  and checks every invariant; `run_scheduler`, `Workload`, `SchedulerCase`, `SchedulerRun`,
  `TokenTracker`, `Scheduler` are its parts.
- trioflow graphs: `run_virtual()` (one run, fresh clock, runtime and services per call),
  `run_in_virtual_time()`, `Outcome`, `Deadlock`, `Stall`.
- Invariants over a `RunRecord`, each raising `AssertionError` naming the offending nodes:
  `assert_dependencies_respected`, `assert_cap_respected`, `assert_ran_at_most_once`,
  `assert_failures_contained`, `assert_failures_surfaced`, `assert_all_finished`,
  `assert_makespan_bounds`, `assert_no_leftover_tokens`.
- Strategies (need Hypothesis): `dags()`, `dag_graphs()`, `nested_dag_graphs()`,
  `durations()`, `failure_masks()`, `caps()`, `schedule_rngs()`, `interleavings()`,
  `scheduler_cases()`.
- Fakes: `FakeService`, `RecordingService`, `Call`.

Everything but the strategies (and `check_scheduler`, which uses them) imports without
Hypothesis; those raise an `ImportError` with the install line when it is missing.
"""

from typing import Any as _Any

from ._dags import Dag as Dag, DagGraph as DagGraph, PlantedFailure as PlantedFailure
from ._fakes import Call as Call, FakeService as FakeService, RecordingService as RecordingService
from ._harness import (
    Scheduler as Scheduler,
    SchedulerCase as SchedulerCase,
    SchedulerRun as SchedulerRun,
    TokenTracker as TokenTracker,
    Workload as Workload,
    check_scheduler as check_scheduler,
    run_scheduler as run_scheduler,
    timeline as timeline,
)
from ._invariants import (
    assert_all_finished as assert_all_finished,
    assert_cap_respected as assert_cap_respected,
    assert_dependencies_respected as assert_dependencies_respected,
    assert_failures_contained as assert_failures_contained,
    assert_failures_surfaced as assert_failures_surfaced,
    assert_makespan_bounds as assert_makespan_bounds,
    assert_no_leftover_tokens as assert_no_leftover_tokens,
    assert_ran_at_most_once as assert_ran_at_most_once,
    leaf_nodes as leaf_nodes,
    peak_concurrency as peak_concurrency,
)
from ._virtual import (
    Outcome as Outcome,
    live_tasks as live_tasks,
    reseed_trio as reseed_trio,
    run_in_virtual_time as run_in_virtual_time,
    run_virtual as run_virtual,
)
from ._watchdog import Deadlock as Deadlock, Stall as Stall

_STRATEGIES = (
    "caps",
    "dag_graphs",
    "dags",
    "durations",
    "failure_masks",
    "interleavings",
    "nested_dag_graphs",
    "schedule_rngs",
    "scheduler_cases",
)

try:
    from ._strategies import (
        caps as caps,
        dag_graphs as dag_graphs,
        dags as dags,
        durations as durations,
        failure_masks as failure_masks,
        interleavings as interleavings,
        nested_dag_graphs as nested_dag_graphs,
        schedule_rngs as schedule_rngs,
        scheduler_cases as scheduler_cases,
    )
except ImportError as _exc:  # Hypothesis is not installed
    if _exc.name != "hypothesis" and not str(_exc.name or "").startswith("hypothesis."):
        raise

    def __getattr__(name: str) -> _Any:
        if name in _STRATEGIES:
            raise ImportError(
                f"trioflow.testing.{name} needs Hypothesis: pip install 'trioflow[test]' "
                "(or: pip install hypothesis)",
                name="hypothesis",
            )
        raise AttributeError(f"module 'trioflow.testing' has no attribute {name!r}")
