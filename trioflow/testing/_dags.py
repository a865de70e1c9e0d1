"""Random DAGs as data, and a runnable `@graphify` graph built from one.

A `Dag` lists, for each node index, the lower indexes it depends on, so every drawn graph is
acyclic by construction and its indexes are a topological order. `DagGraph` turns a DAG (plus
durations in virtual seconds, a failure mask and, optionally, nested DAGs for some nodes) into a
real trioflow graph of one generic tool, and evaluates the same graph in plain Python for
comparison. Everything a test compares against a `RunRecord` is keyed by node id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from .._graphify import Graphify, graphify
from .._tool import Tool, tool

__all__ = ["Dag", "DagGraph", "PlantedFailure"]

_MODULUS = 1_000_003


class PlantedFailure(Exception):
    """Raised by a node whose failure-mask bit is set."""


@attrs.frozen
class Dag:
    """`deps[i]` are the nodes node `i` depends on (all lower than `i`)."""

    deps: tuple[tuple[int, ...], ...]

    def __attrs_post_init__(self) -> None:
        for i, ds in enumerate(self.deps):
            if any(not 0 <= d < i for d in ds) or len(set(ds)) != len(ds):
                raise ValueError(f"node {i} must depend on distinct lower nodes, got {ds}")

    @property
    def size(self) -> int:
        return len(self.deps)

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(d, i) for i, ds in enumerate(self.deps) for d in ds]

    def dependents(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.deps]
        for d, i in self.edges:
            out[d].append(i)
        return out

    def sinks(self) -> list[int]:
        dependents = self.dependents()
        return [i for i in range(self.size) if not dependents[i]]

    def levels(self) -> list[int]:
        """Each node's level: 1 for a root, else 1 + the deepest dependency's level."""
        level = [0] * self.size
        for i, ds in enumerate(self.deps):
            level[i] = 1 + max((level[d] for d in ds), default=0)
        return level

    def depth(self) -> int:
        """Nodes on the longest path."""
        return max(self.levels(), default=0)

    def width(self) -> int:
        """The most nodes on one level (levels by longest path from a root)."""
        return max(Counter(self.levels()).values(), default=0)

    def critical_path(self, durations: Sequence[float]) -> float:
        """The length of the longest path, weighting each node by its duration."""
        finish = [0.0] * self.size
        for i, ds in enumerate(self.deps):
            finish[i] = max((finish[d] for d in ds), default=0.0) + durations[i]
        return max(finish, default=0.0)


def _flat_sum(inputs: Sequence[Any]) -> int:
    return sum(_flat_sum(v) if isinstance(v, list) else v for v in inputs)


def node_value(index: int, inputs: Sequence[Any]) -> int:
    """What node `index` returns given its inputs (a nested graph's value is a list)."""
    return (index + 1 + 31 * _flat_sum(inputs)) % _MODULUS


def _by_index(values: Any, size: int, what: str) -> tuple[Any, ...]:
    if isinstance(values, Mapping):
        raise TypeError(f"DagGraph takes {what} as a sequence, one entry per node index")
    found: tuple[Any, ...] = tuple(values)
    if len(found) != size:
        raise ValueError(f"{what}: need one entry per node ({size}), got {len(found)}")
    return found


@attrs.define(eq=False, repr=False)
class DagGraph:
    """A runnable graph for a `Dag`, with everything keyed by node id.

    Node `i` is a call of the tool `node` that sleeps `durations[i]` virtual seconds, fails
    with `PlantedFailure` if `failures[i]`, and otherwise returns a value computed from its
    inputs. A node listed in `subgraphs` is instead a nested `@graphify` graph over its own
    `DagGraph` (named `g1`, `g2`, ... in trace order: unique in the whole tree); its inner
    nodes have ids `<its id>.<inner id>`, as in a run record. The graph's output `sinks` lists
    the values of the nodes nothing depends on.

    `node_id(i)`, `durations` (leaf node id → seconds), `failing` (leaf ids that fail), `edges`
    (id pairs) and `calls` (node id → how many times its body ran) are keyed as the invariants
    expect, nested graphs included.
    """

    dag: Dag
    seconds: tuple[int, ...] = attrs.field(alias="durations")
    failures: tuple[bool, ...]
    subgraphs: dict[int, DagGraph] = attrs.field(factory=dict)
    calls: Counter[str] = attrs.field(factory=Counter, init=False)
    ids: list[str] = attrs.field(init=False)
    name: str = attrs.field(init=False, default="dag")
    tool: Tool = attrs.field(init=False)
    graph: Graphify = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.seconds = _by_index(self.seconds, self.dag.size, "durations")
        self.failures = tuple(bool(f) for f in _by_index(self.failures, self.dag.size, "failures"))
        if any(not 0 <= i < self.dag.size for i in self.subgraphs):
            raise ValueError(f"subgraphs must be keyed by node index, got {sorted(self.subgraphs)}")
        graphs: dict[str, DagGraph] = {}
        self._assign("", "dag", iter(range(1, 1 << 30)), graphs, self.calls)
        calls = self.calls

        @tool(outputs=["value"], name="node")
        async def node(graph: str, index: int, inputs: list[Any], seconds: int, fail: bool) -> int:
            node_id = graphs[graph].ids[index]
            calls[node_id] += 1
            await trio.sleep(seconds)
            if fail:
                raise PlantedFailure(f"{node_id} fails on purpose")
            return node_value(index, inputs)

        self._build(node)

    def _assign(
        self,
        prefix: str,
        name: str,
        names: Iterator[int],
        graphs: dict[str, DagGraph],
        calls: Counter[str],
    ) -> None:
        """Ids as the tracer gives them (`<name>_<k>`, k per name in trace order)."""
        self.name, self.calls = name, calls
        graphs[name] = self
        counts: Counter[str] = Counter()
        self.ids = []
        for i in range(self.dag.size):
            sub = self.subgraphs.get(i)
            local = f"g{next(names)}" if sub is not None else "node"
            counts[local] += 1
            self.ids.append(f"{prefix}{local}_{counts[local]}")
            if sub is not None:
                sub._assign(self.ids[i] + ".", local, names, graphs, calls)

    def _build(self, node: Tool) -> None:
        self.tool = node
        for sub in self.subgraphs.values():
            sub._build(node)
        dag, name, seconds, failures, subs = (
            self.dag,
            self.name,
            self.seconds,
            self.failures,
            self.subgraphs,
        )

        def refs_for(inputs: Any) -> list[Any]:
            refs: list[Any] = []
            for i, ds in enumerate(dag.deps):
                args = [refs[d].value for d in ds] if ds or inputs is None else inputs
                sub = subs.get(i)
                if sub is not None:
                    refs.append(sub.graph(inputs=args))
                else:
                    refs.append(
                        node(graph=name, index=i, inputs=args, seconds=seconds[i], fail=failures[i])
                    )
            return [refs[i].value for i in dag.sinks()]

        if name == "dag":

            def root() -> dict[str, Any]:
                return {"sinks": refs_for(None)}

            self.graph = graphify(name=name, outputs=["sinks"])(root)
        else:

            def nested(inputs: Any) -> dict[str, Any]:
                return {"value": refs_for(inputs)}

            self.graph = graphify(name=name, outputs=["value"])(nested)

    def __repr__(self) -> str:
        subs = f", subgraphs={self.subgraphs!r}" if self.subgraphs else ""
        return (
            f"DagGraph({self.dag!r}, durations={self.seconds!r}, failures={self.failures!r}{subs})"
        )

    # -- keyed by node id --------------------------------------------------------------------

    def node_id(self, index: int) -> str:
        """The run record's id of node `index` of this graph."""
        return self.ids[index]

    def walk(self) -> Iterator[tuple[DagGraph, int]]:
        """Every (graph, index) in the tree, each nested graph's node before its inner nodes."""
        for i in range(self.dag.size):
            yield self, i
            sub = self.subgraphs.get(i)
            if sub is not None:
                yield from sub.walk()

    @property
    def size(self) -> int:
        """Nodes in the whole tree: nested graph nodes and their inner nodes included."""
        return sum(1 for _ in self.walk())

    @property
    def node_ids(self) -> list[str]:
        """Every node id in the tree, each nested graph's node before its inner nodes."""
        return [g.ids[i] for g, i in self.walk()]

    @property
    def durations(self) -> dict[str, float]:
        """Leaf node id → the virtual seconds it sleeps (nested graphs' leaves included)."""
        return {g.ids[i]: float(g.seconds[i]) for g, i in self.walk() if i not in g.subgraphs}

    @property
    def failing(self) -> set[str]:
        """Ids of the leaf nodes that fail when they run."""
        return {g.ids[i] for g, i in self.walk() if i not in g.subgraphs and g.failures[i]}

    @property
    def edges(self) -> list[tuple[str, str]]:
        """`(dependency, dependent)` id pairs, nested graphs' edges included."""
        return [(g.ids[d], g.ids[i]) for g, i in self.walk() for d in g.dag.deps[i]]

    def expected(self) -> dict[str, Any]:
        """The outputs a correct engine returns when nothing fails (plain Python)."""
        return {"sinks": self._sinks(None)}

    def _sinks(self, inputs: list[Any] | None) -> list[Any]:
        values: list[Any] = []
        for i, ds in enumerate(self.dag.deps):
            args = [values[d] for d in ds] if ds or inputs is None else inputs
            sub = self.subgraphs.get(i)
            values.append(sub._sinks(args) if sub is not None else node_value(i, args))
        return [values[i] for i in self.dag.sinks()]

    def doomed(self) -> set[int]:
        """Indexes (in this graph) of the nodes that cannot succeed: failing ones, nested
        graphs holding a failing node, and every descendant of one."""
        bad: set[int] = set()
        for i, ds in enumerate(self.dag.deps):
            sub = self.subgraphs.get(i)
            fails = bool(sub.failing) if sub is not None else self.failures[i]
            if fails or any(d in bad for d in ds):
                bad.add(i)
        return bad
