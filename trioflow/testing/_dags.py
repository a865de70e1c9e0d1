"""Random DAGs as data, and a runnable `@graphify` graph built from one.

A `Dag` lists, for each node index, the lower indexes it depends on, so every drawn graph is
acyclic by construction and its indexes are a topological order. `DagGraph` turns a DAG (plus
durations in virtual seconds and a failure mask) into a real trioflow graph of one generic tool,
and evaluates the same graph in plain Python for comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .._graphify import Graphify, graphify
from .._tool import Tool, tool

__all__ = ["Dag", "DagGraph", "PlantedFailure"]


class PlantedFailure(Exception):
    """Raised by a `DagGraph` node whose failure-mask bit is set."""


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

    def depth(self) -> int:
        """Nodes on the longest path."""
        level = [0] * self.size
        for i, ds in enumerate(self.deps):
            level[i] = 1 + max((level[d] for d in ds), default=0)
        return max(level, default=0)

    def width(self) -> int:
        """The most nodes on one level (levels by longest path from a root)."""
        level = [0] * self.size
        for i, ds in enumerate(self.deps):
            level[i] = 1 + max((level[d] for d in ds), default=0)
        return max(Counter(level).values(), default=0)

    def critical_path(self, durations: Sequence[float]) -> float:
        """The length of the longest path, weighting each node by its duration."""
        finish = [0.0] * self.size
        for i, ds in enumerate(self.deps):
            finish[i] = max((finish[d] for d in ds), default=0.0) + durations[i]
        return max(finish, default=0.0)


def node_value(index: int, inputs: Sequence[int]) -> int:
    return (index + 1 + 31 * sum(inputs)) % 1_000_003


@attrs.define(eq=False)
class DagGraph:
    """A runnable graph for a `Dag`: node `i` is `node_{i+1}`, sleeps `durations[i]` virtual
    seconds, fails if `failures[i]`, and otherwise returns a value computed from its inputs.
    The graph's output `sinks` lists the values of the nodes nothing depends on."""

    dag: Dag
    durations: tuple[int, ...]
    failures: tuple[bool, ...]
    calls: Counter[int] = attrs.field(factory=Counter)
    tool: Tool = attrs.field(init=False)
    graph: Graphify = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not len(self.durations) == len(self.failures) == self.dag.size:
            raise ValueError("durations and failures need one entry per node")
        calls = self.calls

        @tool(outputs=["value"], name="node")
        async def node(index: int, inputs: list[int], seconds: int, fail: bool) -> int:
            calls[index] += 1
            await trio.sleep(seconds)
            if fail:
                raise PlantedFailure(f"node {index} fails on purpose")
            return node_value(index, inputs)

        dag, durations, failures = self.dag, self.durations, self.failures

        def body() -> dict[str, Any]:
            refs: list[Any] = []
            for i, ds in enumerate(dag.deps):
                refs.append(
                    node(
                        index=i,
                        inputs=[refs[d].value for d in ds],
                        seconds=durations[i],
                        fail=failures[i],
                    )
                )
            return {"sinks": [refs[i].value for i in dag.sinks()]}

        self.tool = node
        self.graph = graphify(name="dag", outputs=["sinks"])(body)

    def node_id(self, index: int) -> str:
        return f"node_{index + 1}"

    def expected(self) -> dict[str, Any]:
        """The outputs a correct engine returns when nothing fails (plain Python)."""
        values: list[int] = []
        for i, ds in enumerate(self.dag.deps):
            values.append(node_value(i, [values[d] for d in ds]))
        return {"sinks": [values[i] for i in self.dag.sinks()]}

    def doomed(self) -> set[int]:
        """Failing nodes and every descendant of one."""
        bad = set()
        for i, ds in enumerate(self.dag.deps):
            if self.failures[i] or any(d in bad for d in ds):
                bad.add(i)
        return bad
