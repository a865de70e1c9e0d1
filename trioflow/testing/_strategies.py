"""Hypothesis strategies for graphs and schedules: DAGs, durations, failure masks, caps, rngs.

Every strategy shrinks toward the smallest, simplest case (fewer nodes, fewer edges, zero
durations, no failures, a cap of 1), so a falsified property reports a tiny counterexample.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from ._dags import Dag, DagGraph

__all__ = ["caps", "dag_graphs", "dags", "durations", "failure_masks", "schedule_rngs"]


def _back_offsets(max_deps: int, lookback: int) -> st.SearchStrategy[list[int]]:
    """One node's dependencies as distances back (1 = the node just before it).

    Relative offsets over a fixed range keep every node's draw independent of its position, so
    Hypothesis can delete nodes while shrinking and the rest of the graph keeps its shape.
    """
    return st.lists(st.integers(1, lookback), max_size=max_deps, unique=True)


def _build_dag(offsets: list[list[int]]) -> Dag:
    return Dag(
        tuple(tuple(sorted({i - o for o in offs if o <= i})) for i, offs in enumerate(offsets))
    )


@st.composite
def dags(
    draw: st.DrawFn,
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    max_deps: int = 3,
    max_width: int | None = None,
    max_depth: int | None = None,
) -> Dag:
    """Random acyclic graphs: node `i` depends on up to `max_deps` distinct nodes below `i`."""
    if not 0 <= min_nodes <= max_nodes:
        raise ValueError(f"need 0 <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}")
    offsets = draw(
        st.lists(
            _back_offsets(max_deps, max(max_nodes - 1, 1)),
            min_size=min_nodes,
            max_size=max_nodes,
        )
    )
    dag = _build_dag(offsets)
    if max_width is not None and dag.width() > max_width:
        draw(st.nothing())  # reject: Hypothesis tries again
    if max_depth is not None and dag.depth() > max_depth:
        draw(st.nothing())
    return dag


def durations(
    dag: Dag, *, min_seconds: int = 0, max_seconds: int = 5
) -> st.SearchStrategy[tuple[int, ...]]:
    """Whole virtual seconds per node (integers, so makespans compare exactly)."""
    return st.tuples(*[st.integers(min_seconds, max_seconds) for _ in range(dag.size)])


def failure_masks(dag: Dag) -> st.SearchStrategy[tuple[bool, ...]]:
    """Which nodes fail; shrinks toward no failures."""
    return st.tuples(*[st.booleans() for _ in range(dag.size)])


def caps(max_cap: int = 4, *, unlimited: bool = True) -> st.SearchStrategy[float]:
    """A concurrency cap: 1..max_cap, or `math.inf`."""
    finite = st.integers(1, max_cap)
    return st.one_of(finite, st.just(math.inf)) if unlimited else finite


def schedule_rngs() -> st.SearchStrategy[object]:
    """A `random.Random` for the scheduler's tie-breaks, so examples explore interleavings
    (importing Hypothesis makes Trio's own scheduling deterministic)."""
    return st.randoms(use_true_random=False)


@st.composite
def dag_graphs(
    draw: st.DrawFn,
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    max_deps: int = 3,
    min_seconds: int = 0,
    max_seconds: int = 5,
    failures: bool = True,
) -> DagGraph:
    """A runnable `@graphify` graph over a drawn DAG, with drawn durations and failures.

    Each node's dependencies, duration and failure bit are drawn together, so a shrunk
    counterexample loses whole nodes: failures shrink to a handful of nodes. With
    `min_seconds=0`, nodes may take no virtual time, and then which of two such nodes ran
    first is up to Trio's scheduler; use `min_seconds=1` where a property needs to see order.
    """
    nodes = draw(
        st.lists(
            st.tuples(
                _back_offsets(max_deps, max(max_nodes - 1, 1)),
                st.integers(min_seconds, max_seconds),
                st.booleans() if failures else st.just(False),
            ),
            min_size=min_nodes,
            max_size=max_nodes,
        )
    )
    dag = _build_dag([offs for offs, _, _ in nodes])
    return DagGraph(
        dag, tuple(seconds for _, seconds, _ in nodes), tuple(bad for _, _, bad in nodes)
    )
