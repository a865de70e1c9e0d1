"""A `TaskGraph` lowered to index arrays: what a static run reads (no Trio here).

A graph traced by `@graphify` gets its plan from the tracer, built in the same pass as it
records the calls (see `_compile.GraphTracer`): tracing already meets every argument and
dependency once, and a second pass over a large graph would cost more than the trace. A graph
built any other way (`TaskGraph.from_dict`, by hand) is lowered here on its first run. Either
way the plan is kept with the graph (`TaskGraph._lowered`) and reused by every later run of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import attrs

from ._gcpause import gc_paused
from ._graph import InputRef, OutputRef, TaskGraph

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = [
    "ATOMS",
    "GRAPH",
    "KINDS",
    "MAP",
    "TOOL",
    "UNSET",
    "ArgPlan",
    "Gathers",
    "Plan",
    "Trees",
    "classify_arg",
    "fan_in",
    "is_fast",
    "plan_of_graph",
    "take_plan",
]

TOOL, MAP, GRAPH = 0, 1, 2
KINDS = {"tool": TOOL, "map": MAP, "graph": GRAPH}


class _Unset:
    """The value of an output slot whose node has not produced it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()

# How a node gets its arguments. Every value a node reads sits in one flat list per run: each
# node's outputs (`Plan.out_base[i]` is node i's first slot) and the graph's constant
# arguments, the slots in the order the trace met them. `pairs` are arguments read from one
# slot (a constant or a whole output); `gathers` build a list (a fan-in: one slot, or a getter
# of several or none, see `fan_in`); `trees` are anything else, resolved ref by ref.
Pairs = Sequence[tuple[str, int]]
Gathers = Sequence[tuple[str, "int | Callable[[list[Any]], Any]"]]
Trees = Sequence[tuple[str, Any]]
ArgPlan = tuple[Pairs, Gathers, Trees]

# Exact types whose values are constants read from a slot as they are.
ATOMS = frozenset({int, str, float, bool, type(None)})
_TREES = frozenset({InputRef, OutputRef, list, tuple, dict})


@attrs.frozen(eq=False)
class Plan:
    """A TaskGraph lowered to index arrays, once per graph."""

    graph: TaskGraph
    ids: list[str]
    names: list[str]
    kinds: list[int]
    targets: list[Any]
    args: list[ArgPlan]
    dependents: list[list[int]]
    indegree: list[int]
    index: dict[str, int]
    # True for plain async tools (no timeout, retry, limits or context): the inline fast path.
    fast: list[bool]
    executors: list[str]
    # Node i's outputs are slots out_base[i] ... out_base[i] + len(targets[i].outputs) - 1.
    out_base: list[int]
    # The flat value list a run starts from: UNSET in every output slot, and the constants.
    initial: list[Any]
    # A map node's index → the input its items are passed as (no NodeSpec needed at run time).
    map_params: dict[int, str] = attrs.field(factory=dict)

    def tools(self) -> list[Tool]:
        """The distinct tools of the graph (each checked once before a run, not per node)."""
        from ._tool import Tool  # the compiler layer stands below tools (no Trio here)

        return list({id(t): t for t in self.targets if isinstance(t, Tool)}.values())

    def slot(self, i: int, output: str) -> int:
        """The value slot of node i's output `output`."""
        outputs: tuple[str, ...] = self.targets[i].outputs
        return self.out_base[i] + outputs.index(output)

    def shipped_args(self, i: int) -> dict[str, Any]:
        """Node i's arguments that are not plain outputs of other nodes: what a shipping
        executor must be able to send before the node runs (refs inside trees pickle as
        plain data)."""
        pairs, _, trees = self.args[i]
        initial = self.initial
        found = {name: initial[s] for name, s in pairs if initial[s] is not UNSET}
        found.update(trees)
        return found


def _no_slots(values: list[Any]) -> tuple[()]:
    return ()


def fan_in(slots: list[int]) -> int | Callable[[list[Any]], Any]:
    """How a gather reads its list from the run's values: one slot, or a getter of several
    (an `itemgetter`), or of none (an empty list argument is an empty fan-in)."""
    if len(slots) == 1:
        return slots[0]
    return itemgetter(*slots) if slots else _no_slots


def is_fast(target: Any, kind: int) -> bool:
    """Whether node runs of `target` take the scheduler's inline path (plain async tools)."""
    return kind == TOOL and target.plain and not target.limits


def classify_arg(
    name: str,
    value: Any,
    slot_of: Any,
    values: list[Any],
    pairs: list[tuple[str, int]],
    gathers: list[tuple[str, int | Callable[[list[Any]], Any]]],
    trees: list[tuple[str, Any]],
) -> None:
    """File one argument of a node into its plan: a constant gets a new slot in `values`, a
    whole output ref its node's slot (`slot_of(ref)`), a list of whole output refs a gather;
    anything else is a tree."""
    kind = type(value)
    if kind in ATOMS:
        pairs.append((name, len(values)))
        values.append(value)
    elif kind is OutputRef and not value.path:
        pairs.append((name, slot_of(value)))
    elif kind is list:
        slots = []
        for v in value:
            if type(v) is not OutputRef or v.path:
                trees.append((name, value))
                return
            slots.append(slot_of(v))
        gathers.append((name, fan_in(slots)))
    elif kind in _TREES or isinstance(value, InputRef | OutputRef | list | tuple | dict):
        trees.append((name, value))
    else:
        pairs.append((name, len(values)))
        values.append(value)


def plan_of_graph(graph: TaskGraph) -> Plan:
    """The graph's plan: the one its trace built, else lowered now, once, and kept with the
    graph for every run of it."""
    box = graph._lowered
    plan: Plan | None = box.plan
    if plan is None:
        with gc_paused():  # every object made here stays alive with the plan
            plan = box.plan = _lower(graph)
    return plan


def take_plan(graph: TaskGraph) -> Plan:
    """The plan of a graph traced for one run only: taken out of the graph, so that the two
    do not hold each other (the graph is then freed when the run drops its plan, not by a
    later collection of the cycle)."""
    plan = plan_of_graph(graph)
    graph._lowered.plan = None
    return plan


def _lower(graph: TaskGraph) -> Plan:
    nodes = list(graph.nodes.values())
    ids = [node.id for node in nodes]
    index = {node_id: i for i, node_id in enumerate(ids)}
    dependents: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for i, node in enumerate(nodes):
        deps = node.deps
        if deps:
            indegree[i] = len(deps)
            for dep in deps:
                dependents[index[dep]].append(i)
    kinds: list[int] = []
    targets: list[Any] = []
    fast: list[bool] = []
    executors: list[str] = []
    out_base: list[int] = []
    width = 0
    # Per (tool name, kind): nodes of one tool share their target and everything derived from it.
    seen: dict[tuple[str, str], tuple[int, Any, bool, str, int]] = {}
    for node in nodes:
        key = (node.tool, node.kind)
        found = seen.get(key)
        if found is None:
            kind = KINDS[node.kind]
            target = graph.callable_for(node)
            executor = target.executor_key if kind != GRAPH else "loop"
            found = seen[key] = (kind, target, is_fast(target, kind), executor, len(target.outputs))
        kinds.append(found[0])
        targets.append(found[1])
        fast.append(found[2])
        executors.append(found[3])
        out_base.append(width)
        width += found[4]
    values: list[Any] = [UNSET] * width

    def slot_of(ref: OutputRef) -> int:
        j = index[ref.node]
        outputs: tuple[str, ...] = targets[j].outputs
        return out_base[j] + outputs.index(ref.output)

    args: list[ArgPlan] = []
    for node in nodes:
        pairs: list[tuple[str, int]] = []
        gathers: list[tuple[str, int | Callable[[list[Any]], Any]]] = []
        trees: list[tuple[str, Any]] = []
        for name, value in node.args.items():
            classify_arg(name, value, slot_of, values, pairs, gathers, trees)
        args.append((tuple(pairs), tuple(gathers), tuple(trees)))
    return Plan(
        graph=graph,
        ids=ids,
        names=[node.tool for node in nodes],
        kinds=kinds,
        targets=targets,
        args=args,
        dependents=dependents,
        indegree=indegree,
        index=index,
        fast=fast,
        executors=executors,
        out_base=out_base,
        initial=values,
        map_params={i: n.map_param for i, n in enumerate(nodes) if n.map_param is not None},
    )
