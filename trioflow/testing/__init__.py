"""trioflow.testing: property-test graphs and schedulers with Hypothesis, in virtual time.

- Strategies: `dags()`, `durations()`, `failure_masks()`, `caps()`, `schedule_rngs()`,
  `dag_graphs()` (a runnable `@graphify` graph over a drawn DAG).
- Invariants over a `RunRecord`: `assert_dependencies_respected`, `assert_cap_respected`,
  `assert_ran_at_most_once`, `assert_failures_contained`, `assert_makespan_bounds`,
  `assert_no_leftover_tokens`; each raises `AssertionError` naming the offending nodes.
- `run_virtual()`: one run under `MockClock(autojump_threshold=0)`, bounded by `fail_after`.
- `FakeService` / `RecordingService`: stand-ins that record every call and the calling node.

Importing this module needs Hypothesis (`pip install trioflow[test]`).
"""

from ._dags import Dag as Dag, DagGraph as DagGraph, PlantedFailure as PlantedFailure
from ._fakes import Call as Call, FakeService as FakeService, RecordingService as RecordingService
from ._invariants import (
    assert_cap_respected as assert_cap_respected,
    assert_dependencies_respected as assert_dependencies_respected,
    assert_failures_contained as assert_failures_contained,
    assert_makespan_bounds as assert_makespan_bounds,
    assert_no_leftover_tokens as assert_no_leftover_tokens,
    assert_ran_at_most_once as assert_ran_at_most_once,
    leaf_nodes as leaf_nodes,
    peak_concurrency as peak_concurrency,
)
from ._strategies import (
    caps as caps,
    dag_graphs as dag_graphs,
    dags as dags,
    durations as durations,
    failure_masks as failure_masks,
    schedule_rngs as schedule_rngs,
)
from ._virtual import Outcome as Outcome, live_tasks as live_tasks, run_virtual as run_virtual
