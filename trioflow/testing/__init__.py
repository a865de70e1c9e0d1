"""trioflow.testing: property-test graphs and schedulers with Hypothesis, in virtual time.

- Strategies: `dags()`, `durations()`, `failure_masks()`, `caps()`, `schedule_rngs()`,
  `dag_graphs()` (a runnable `@graphify` graph over a drawn DAG).
- Invariants over a `RunRecord`: `assert_dependencies_respected`, `assert_cap_respected`,
  `assert_ran_at_most_once`, `assert_failures_contained`, `assert_makespan_bounds`,
  `assert_no_leftover_tokens`; each raises `AssertionError` naming the offending nodes.
- `run_virtual()`: one run under `MockClock(autojump_threshold=0)`, bounded by `fail_after`.

Importing this module needs Hypothesis (`pip install trioflow[test]`).
"""

from ._dags import Dag as Dag
from ._dags import DagGraph as DagGraph
from ._dags import PlantedFailure as PlantedFailure
from ._invariants import (
    assert_cap_respected as assert_cap_respected,
)
from ._invariants import (
    assert_dependencies_respected as assert_dependencies_respected,
)
from ._invariants import (
    assert_failures_contained as assert_failures_contained,
)
from ._invariants import (
    assert_makespan_bounds as assert_makespan_bounds,
)
from ._invariants import (
    assert_no_leftover_tokens as assert_no_leftover_tokens,
)
from ._invariants import (
    assert_ran_at_most_once as assert_ran_at_most_once,
)
from ._invariants import (
    leaf_nodes as leaf_nodes,
)
from ._invariants import (
    peak_concurrency as peak_concurrency,
)
from ._strategies import (
    caps as caps,
)
from ._strategies import (
    dag_graphs as dag_graphs,
)
from ._strategies import (
    dags as dags,
)
from ._strategies import (
    durations as durations,
)
from ._strategies import (
    failure_masks as failure_masks,
)
from ._strategies import (
    schedule_rngs as schedule_rngs,
)
from ._virtual import Outcome as Outcome
from ._virtual import live_tasks as live_tasks
from ._virtual import run_virtual as run_virtual
