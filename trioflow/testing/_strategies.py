"""Hypothesis strategies for graphs and schedules: DAGs, durations, failure masks, caps, rngs.

Every strategy shrinks toward the smallest, simplest case (fewer nodes, fewer edges, zero
durations, no failures, no nesting, a cap of 1), so a falsified property reports a tiny
counterexample. Bounds (`max_width=`, `max_depth=`) are met by construction, never by
rejecting draws. Importing this module registers `st.from_type(Dag)` and
`st.from_type(DagGraph)`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

from hypothesis import strategies as st

from ._dags import Dag, DagGraph
from ._harness import SchedulerCase

__all__ = [
    "caps",
    "dag_graphs",
    "dags",
    "durations",
    "failure_masks",
    "interleavings",
    "nested_dag_graphs",
    "scheduler_cases",
    "schedule_rngs",
]


def _back_offsets(max_deps: int, lookback: int) -> st.SearchStrategy[list[int]]:
    """One node's dependencies as distances back (1 = the node just before it).

    Relative offsets over a fixed range keep every node's draw independent of its position, so
    Hypothesis can delete nodes while shrinking and the rest of the graph keeps its shape.
    """
    return st.lists(st.integers(1, max(lookback, 1)), max_size=max_deps, unique=True)


def _check_bounds(
    min_nodes: int, max_nodes: int, max_deps: int, max_width: int | None, max_depth: int | None
) -> None:
    if not 0 <= min_nodes <= max_nodes:
        raise ValueError(f"need 0 <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}")
    if max_deps < 0:
        raise ValueError(f"max_deps must be >= 0, got {max_deps}")
    if max_width is not None and max_width < 1:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    if max_depth is not None and max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    depth = 1 if max_deps == 0 else max_depth
    if max_width is not None and depth is not None and min_nodes > max_width * depth:
        raise ValueError(
            f"min_nodes={min_nodes} cannot fit in max_width={max_width} x depth {depth}; "
            "lower min_nodes or raise the bounds"
        )


def _build_dag(
    offsets: list[list[int]],
    *,
    max_deps: int,
    max_width: int | None = None,
    max_depth: int | None = None,
) -> Dag:
    """A DAG from per-node back offsets, placed within the width and depth bounds.

    A node whose dependencies would put it too deep drops the deepest ones; a node whose level
    is full moves to the next level with room (it depends on a node just above that level), or
    to the first level with room above it. When every level is full the graph ends there.
    """
    depth_cap = max_depth if max_depth is not None else math.inf
    width_cap = max_width if max_width is not None else math.inf
    deps: list[tuple[int, ...]] = []
    level: list[int] = []
    count: Counter[int] = Counter()
    first_at: dict[int, int] = {}
    for i, offs in enumerate(offsets):
        ds = sorted({i - o for o in offs if o <= i})
        ds = [d for d in ds if level[d] < depth_cap]
        lv = 1 + max((level[d] for d in ds), default=0)
        if count[lv] >= width_cap:
            top = int(min(depth_cap, max(level, default=0) + 1))
            room = [n for n in range(1, top + 1) if count[n] < width_cap]
            if max_deps == 0:
                room = [n for n in room if n == 1]
            if not room:
                break
            target = next((n for n in room if n > lv), room[0])
            ds = [d for d in ds if level[d] < target - 1] if target > 1 else []
            if target > 1:
                ds = (
                    [*ds[-(max_deps - 1) :], first_at[target - 1]]
                    if max_deps > 1
                    else [first_at[target - 1]]
                )
            lv = target
        deps.append(tuple(sorted(ds)))
        level.append(lv)
        count[lv] += 1
        first_at.setdefault(lv, i)
    return Dag(tuple(deps))


def dags(
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    max_deps: int = 3,
    max_width: int | None = None,
    max_depth: int | None = None,
) -> st.SearchStrategy[Dag]:
    """Random acyclic graphs: node `i` depends on up to `max_deps` distinct nodes below `i`.

    `max_width` (most nodes on one level) and `max_depth` (nodes on the longest path) are met
    by construction; a graph that cannot hold more nodes within them ends early, never below
    `min_nodes`.
    """
    _check_bounds(min_nodes, max_nodes, max_deps, max_width, max_depth)
    return st.lists(
        _back_offsets(max_deps, max_nodes - 1), min_size=min_nodes, max_size=max_nodes
    ).map(
        lambda offsets: _build_dag(
            offsets, max_deps=max_deps, max_width=max_width, max_depth=max_depth
        )
    )


def durations(
    dag: Dag, *, min_seconds: int = 0, max_seconds: int = 5
) -> st.SearchStrategy[tuple[int, ...]]:
    """Whole virtual seconds per node index (integers, so makespans compare exactly)."""
    return st.tuples(*[st.integers(min_seconds, max_seconds) for _ in range(dag.size)])


def failure_masks(dag: Dag) -> st.SearchStrategy[tuple[bool, ...]]:
    """Which nodes fail, per node index; shrinks toward no failures."""
    return st.tuples(*[st.booleans() for _ in range(dag.size)])


def caps(max_cap: int = 4, *, unlimited: bool = True) -> st.SearchStrategy[float]:
    """A concurrency cap: 1..max_cap, or `math.inf`."""
    finite = st.integers(1, max_cap)
    return st.one_of(finite, st.just(math.inf)) if unlimited else finite


def schedule_rngs() -> st.SearchStrategy[random.Random]:
    """A `random.Random` for a scheduler's tie-breaks between ready nodes.

    trioflow applies it where `run(..., rng=)` documents it (ready nodes of a static graph);
    `check_scheduler` passes it to your scheduler when it takes an `rng` keyword. To vary the
    order in which Trio itself runs tasks that wake at the same instant, use `interleavings()`.
    """
    return st.randoms(use_true_random=False)


def interleavings() -> st.SearchStrategy[int]:
    """A seed for Trio's own run-queue order (`run_virtual(..., interleaving=)`).

    Importing Hypothesis makes Trio's scheduling deterministic, so without this every example
    runs tasks that wake together in the same order. Shrinks toward 0.
    """
    return st.integers(0, 2**32 - 1)


def dag_graphs(
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    max_deps: int = 3,
    min_seconds: int = 0,
    max_seconds: int = 5,
    failures: bool = True,
    max_width: int | None = None,
    max_depth: int | None = None,
) -> st.SearchStrategy[DagGraph]:
    """A runnable `@graphify` graph over a drawn DAG, with drawn durations and failures.

    Each node's dependencies, duration and failure bit are drawn together, so a shrunk
    counterexample loses whole nodes. With `min_seconds=0`, nodes may take no virtual time,
    and then which of two such nodes ran first is up to Trio's scheduler; use `min_seconds=1`
    where a property needs to see order.
    """
    _check_bounds(min_nodes, max_nodes, max_deps, max_width, max_depth)

    def build(nodes: list[tuple[list[int], int, bool]]) -> DagGraph:
        dag = _build_dag(
            [offs for offs, _, _ in nodes],
            max_deps=max_deps,
            max_width=max_width,
            max_depth=max_depth,
        )
        n = dag.size
        return DagGraph(
            dag,
            tuple(seconds for _, seconds, _ in nodes[:n]),
            tuple(bad for _, _, bad in nodes[:n]),
        )

    return st.lists(
        st.tuples(
            _back_offsets(max_deps, max_nodes - 1),
            st.integers(min_seconds, max_seconds),
            st.booleans() if failures else st.just(False),
        ),
        min_size=min_nodes,
        max_size=max_nodes,
    ).map(build)


def _tree(items: list[tuple[list[int], int, bool, int]], max_deps: int, nesting: int) -> DagGraph:
    """Build a graph from a flat list of drawn nodes: a node whose `group` is k > 0 holds a
    nested graph made of the next k items (when nesting allows). Setting a group to 0 flattens
    that nested graph into its parent, so a shrinker can turn a nested case into a flat one."""
    offsets: list[list[int]] = []
    seconds: list[int] = []
    failures: list[bool] = []
    subgraphs: dict[int, DagGraph] = {}
    pos = 0
    while pos < len(items):
        offs, secs, bad, group = items[pos]
        pos += 1
        i = len(offsets)
        offsets.append(offs)
        seconds.append(secs)
        failures.append(bad)
        if group > 0 and nesting > 0 and pos < len(items):
            inner = items[pos : pos + group]
            pos += len(inner)
            subgraphs[i] = _tree(inner, max_deps, nesting - 1)
    return DagGraph(
        _build_dag(offsets, max_deps=max_deps), tuple(seconds), tuple(failures), subgraphs
    )


@st.composite
def nested_dag_graphs(
    draw: st.DrawFn,
    *,
    max_nodes: int = 8,
    max_nesting: int = 2,
    max_deps: int = 2,
    min_seconds: int = 0,
    max_seconds: int = 3,
    failures: bool = True,
) -> DagGraph:
    """A `DagGraph` some of whose nodes are nested `@graphify` graphs, up to `max_nesting`
    levels deep, with at most `max_nodes` nodes in all (a nested graph's node counts as one).

    Every nested graph has a name of its own (`g1`, `g2`, ...), and its inner nodes' ids are
    prefixed by its node's id (`g1_1.node_2`), as in a run record. A failing example shrinks
    toward a flat graph: flattening a nested graph is one step for the shrinker.
    """
    items = draw(
        st.lists(
            st.tuples(
                _back_offsets(max_deps, max_nodes - 1),
                st.integers(min_seconds, max_seconds),
                st.booleans() if failures else st.just(False),
                st.integers(0, 3) if max_nesting > 0 else st.just(0),
            ),
            min_size=1,
            max_size=max_nodes,
        )
    )
    return _tree(items, max_deps, max_nesting)


@st.composite
def scheduler_cases(
    draw: st.DrawFn,
    *,
    max_nodes: int = 8,
    max_cap: int = 3,
    nested: bool = True,
    failures: bool = True,
    min_seconds: int = 1,
    max_seconds: int = 3,
) -> SchedulerCase:
    """What `check_scheduler` feeds a scheduler: a graph (nested graphs included when
    `nested`), a cap (1..max_cap or inf), an rng for its tie-breaks and an interleaving seed.

    `min_seconds=1` by default: every node takes virtual time, so order is visible in the
    record whatever order Trio wakes simultaneous tasks in.
    """
    graph = draw(
        nested_dag_graphs(
            max_nodes=max_nodes,
            max_nesting=1,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            failures=failures,
        )
        if nested
        else dag_graphs(
            max_nodes=max_nodes,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            failures=failures,
        )
    )
    cap: Any = draw(caps(max_cap))
    return SchedulerCase(
        graph=graph,
        max_concurrency=cap,
        rng=draw(schedule_rngs()),
        interleaving=draw(interleavings()),
    )


st.register_type_strategy(Dag, dags())
st.register_type_strategy(DagGraph, dag_graphs())
