"""A `TaskGraph` lowered to index arrays: what a static run reads (no Trio here).

A graph traced by `@graphify` gets its plan from the tracer, built in the same pass as it
records the calls (see `_compile.GraphTracer`): tracing already meets every argument and
dependency once, and a second pass over a large graph would cost more than the trace. A graph
built any other way (`TaskGraph.from_dict`, by hand) is lowered here on its first run. Either
way the plan is kept with the graph (`TaskGraph._lowered`) and reused by every later run of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import attrs

from ._gcpause import gc_paused
from ._graph import InputRef, OutputRef, TaskGraph, resolve

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = [
    "ATOMS",
    "CONST",
    "GATHER",
    "GATHER1",
    "GATHER2",
    "GATHER3",
    "GATHER4",
    "GRAPH",
    "KINDS",
    "MAP",
    "SLOT",
    "TOOL",
    "TREE",
    "UNSET",
    "ArgShape",
    "Args",
    "Plan",
    "add_arg",
    "arg_shape",
    "arg_values",
    "classify",
    "distinct",
    "fan_in",
    "fan_in_slots",
    "filing",
    "is_fast",
    "output_slot",
    "plan_of_graph",
    "spec_args",
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

# Where a run keeps the nodes' outputs: one flat list of slots. Node i's first output is slot
# i; the others of a node with several are at the end of the list, slots `Plan.extra[i]`,
# `Plan.extra[i] - 1`, ... (negative indexes: so a trace numbers them before it knows how many
# nodes there are, and a node's first output needs no look-up).
#
# How a node gets its arguments: one tuple, `(shape, x1, x2, ...)`, with the x of each argument
# in the order of the call (one, except for `GATHER2`...), read as its kind says:
CONST = 0  # x is the value, a constant
SLOT = 1  # x is a slot: a whole output of another node
GATHER1 = 2  # x is a slot: the argument is a list of that one output
GATHER = 3  # x gets the list from the slots (`fan_in`): a fan-in of many outputs, or none
TREE = 4  # x is anything else holding refs (a projection, a dict, a mixed list): resolved
# A fan-in of 2, 3 or 4 outputs (kind `GATHER2 - 2 + n`) has n slots, one x each.
GATHER2, GATHER3, GATHER4 = 5, 6, 7
_SPREAD = {GATHER2: 2, GATHER3: 3, GATHER4: 4}  # kind → how many x it has
# The shape (`ArgShape`), shared by every node called with the same names and kinds, has the
# names and a function that builds the arguments from the slots at run time.
Args = tuple[Any, ...]
_KIND_BITS = 3  # a shape's kinds packed in an int (`arg_shape`), `_KIND_BITS` per argument

# Exact types whose values are constants as they are.
ATOMS = frozenset({int, str, float, bool, type(None)})
_TREES = frozenset({InputRef, OutputRef, list, tuple, dict})


@attrs.frozen(eq=False)
class ArgShape:
    """The names and kinds of a node's arguments, and `build(values, args, lookup)`, which
    makes its arguments dict from a run's slots (`values`), the node's arguments tuple and the
    run's ref lookup (for trees)."""

    names: tuple[str, ...]
    kinds: tuple[int, ...]
    at: tuple[int, ...]  # where each argument's x (its first, for a `GATHER2`...) is
    build: Callable[[list[Any], Args, Callable[[Any], Any]], dict[str, Any]]


# What each kind's argument reads, in the generated `build` (`a[k]` is its first x).
_READS = {
    CONST: "a[{k}]",
    SLOT: "v[a[{k}]]",
    GATHER1: "[v[a[{k}]]]",
    GATHER: "list(a[{k}](v))",
    TREE: "resolve(a[{k}], lookup)",
}
for _kind, _n in _SPREAD.items():
    _READS[_kind] = "[" + ", ".join(f"v[a[{{k}} + {m}]]" for m in range(_n)) + "]"
# The order a node's arguments dict has at run time (as it always had): the constants and whole
# outputs, then the lists of outputs, then the trees, each in call order.
_GROUP = {CONST: 0, SLOT: 0, TREE: 2} | {kind: 1 for kind in (GATHER1, GATHER, *_SPREAD)}


@functools.lru_cache(maxsize=4096)
def arg_shape(names: tuple[str, ...], code: int) -> ArgShape:
    """The shape of arguments `names` with kinds `code` (packed: the last argument's kind in
    the lowest `_KIND_BITS` bits), one per distinct shape and shared by every graph.

    Its `build` is generated code, as attrs and cattrs make theirs: one dict display per shape
    builds a node's arguments in one call, with no loop over them and no test of their kinds
    at run time (the names are written as string literals, `repr`)."""
    kinds: list[int] = []
    for _ in names:
        kinds.append(code & ((1 << _KIND_BITS) - 1))
        code >>= _KIND_BITS
    kinds.reverse()
    at: list[int] = []  # each argument's first x, in the arguments tuple
    k = 1
    for kind in kinds:
        at.append(k)
        k += _SPREAD.get(kind, 1)
    order = sorted(range(len(names)), key=lambda p: _GROUP[kinds[p]])
    items = ", ".join(f"{names[p]!r}: {_READS[kinds[p]].format(k=at[p])}" for p in order)
    source = f"def build(v, a, lookup):\n    return {{{items}}}\n"
    scope: dict[str, Any] = {"resolve": resolve}
    exec(compile(source, f"<trioflow arguments {', '.join(names)}>", "exec"), scope)
    return ArgShape(names, tuple(kinds), tuple(at), scope["build"])


# -- filing a traced call's arguments (`filing`) --------------------------------------------
# What a tracer (`_compile.GraphTracer.call`) does with most calls: every argument a constant
# atom, a whole output ref the trace made, or a list of those. Their filing is generated code
# per argument names and kinds (one list argument at most, of any length: a fan-in), straight
# code with no loop over the arguments and no test of their kinds but guards: it sets the
# node's arguments tuple and the nodes it depends on, and any other call, or an argument of
# another kind than the one seen, makes it return None (the tracer then takes its general
# path). The tracer wraps it in the code that records the node (`_compile.recorder`).
_AS_LIST = frozenset({GATHER1, GATHER, *_SPREAD})


def distinct(js: tuple[int, ...]) -> tuple[int, ...]:
    """`js` each once, in order (a node that reads one output twice depends on it once)."""
    return js if len(set(js)) == len(js) else tuple(dict.fromkeys(js))


def _deps_lines(js: list[str], indent: str) -> list[str]:
    """Lines that set the nodes the slots `js` (variables) belong to, each once: `d` with
    `deps = None` for one node, else the tuple `deps`."""
    if not js:
        return [f"{indent}deps = ()"]
    if len(js) == 1:
        return [f"{indent}d = {js[0]}", f"{indent}deps = None"]
    if len(js) == 2:
        a, b = js
        return [
            f"{indent}if {a} == {b}:",
            f"{indent}    d = {a}",
            f"{indent}    deps = None",
            f"{indent}else:",
            f"{indent}    deps = ({a}, {b})",
        ]
    return [f"{indent}deps = distinct(({', '.join(js)},))"]


def _guard_ref(value: str, j: str, indent: str) -> list[str]:
    """Lines that set slot variable `j` from `value`, a whole output ref this trace made (by
    identity: its node's first output, found at the index the ref holds), or return None."""
    return [
        f"{indent}if type({value}) is not OutputRef:",
        f"{indent}    return None",
        f"{indent}try:",
        f"{indent}    {j} = {value}._at",
        f"{indent}    if made[{j}] is not {value}:",
        f"{indent}        return None",
        f"{indent}except (AttributeError, IndexError):  # (not made by a trace, or a bigger one)",
        f"{indent}    return None",
    ]


@functools.lru_cache(maxsize=4096)
def filing(
    names: tuple[str, ...], code: int
) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]] | None:
    """The filing of calls with arguments `names` of kinds `code` (as `arg_shape`): the lines
    of a function body that reads `kwargs` and `made` (node index → its first output's ref,
    which holds that index: see `_graph.SET_TRACE_INDEX`) and sets `node_args`, and `d` or
    `deps` (see `_deps_lines`), or returns None; and the names it needs beside those, with
    their values. None if the arguments are not all constants, whole refs and (one) list of
    them. The list may have any length: its kind (and the call's shape) is chosen by it."""
    kinds = arg_shape(names, code).kinds
    lists = [p for p, kind in enumerate(kinds) if kind in _AS_LIST]
    if len(lists) > 1 or any(kind not in (CONST, SLOT) and kind not in _AS_LIST for kind in kinds):
        return None
    scope: dict[str, Any] = {
        "ATOMS": ATOMS,
        "OutputRef": OutputRef,
        "fan_in": fan_in,
        "distinct": distinct,
    }
    # The call's arguments, by name: the same names in any order (the node's arguments are
    # kept in `names` order), and no others.
    lines = [f"if len(kwargs) != {len(names)}:", "    return None"]
    if names:
        lines += ["try:", *(f"    v{p} = kwargs[{name!r}]" for p, name in enumerate(names))]
        lines += ["except KeyError:", "    return None"]
    slots: list[str] = []  # the whole refs' slot variables
    for p, kind in enumerate(kinds):
        if kind == CONST:
            lines += [f"if type(v{p}) not in ATOMS:", "    return None"]
        elif kind == SLOT:
            lines += _guard_ref(f"v{p}", f"j{p}", "")
            slots.append(f"j{p}")

    def ending(list_kind: int, xs: list[str], indent: str) -> list[str]:
        """The line that sets the arguments tuple with the list's kind and x's `xs`."""
        kinds_now = [list_kind if kind in _AS_LIST else kind for kind in kinds]
        packed = 0
        for kind in kinds_now:
            packed = packed << _KIND_BITS | kind
        shape = f"S{len(scope)}"
        scope[shape] = arg_shape(names, packed)
        items = [shape]
        for p, kind in enumerate(kinds_now):
            items += (
                xs if kind == list_kind and p in lists else [f"v{p}" if kind == CONST else f"j{p}"]
            )
        return [f"{indent}node_args = ({', '.join(items)},)"]

    if not lists:
        lines += ending(-1, [], "") + _deps_lines(slots, "")
    else:
        p = lists[0]
        lines += [f"if type(v{p}) is not list:", "    return None", f"n = len(v{p})"]
        for n in range(1, 5):  # (fan-ins of one to four: a slot each, see GATHER2)
            refs = [f"r{m}" for m in range(n)]
            js = [f"k{m}" for m in range(n)]
            lines += [f"{'if' if n == 1 else 'elif'} n == {n}:", f"    {', '.join(refs)}, = v{p}"]
            for ref, j in zip(refs, js, strict=True):
                lines += _guard_ref(ref, j, "    ")
            kind = GATHER1 if n == 1 else GATHER2 - 2 + n
            lines += ending(kind, js, "    ") + _deps_lines(slots + js, "    ")
        lines += ["else:", "    got = []", f"    for r in v{p}:"]
        lines += _guard_ref("r", "k", "        ")
        lines += ["        got.append(k)"]
        lines += ending(GATHER, ["fan_in(got)"], "    ")
        lines += [f"    deps = distinct(({''.join(j + ', ' for j in slots)}*got,))"]
    return tuple(lines), tuple(scope.items())


def output_slot(i: int, k: int, extra: Mapping[int, int]) -> int:
    """The slot of node i's output number k (its first: slot i; see above)."""
    return extra[i] - k + 1 if k else i


def _no_slots(values: list[Any]) -> tuple[()]:
    return ()


def fan_in(slots: list[int]) -> Callable[[list[Any]], Any]:
    """How a fan-in of several outputs (or none) reads them from the run's slots: an
    `itemgetter` (or, for an empty list argument, a getter of none)."""
    return itemgetter(*slots) if slots else _no_slots


class _SlotNumbers:
    """A sequence whose item at every index (negative ones too) is that index."""

    def __getitem__(self, slot: int) -> int:
        return slot


_SLOT_NUMBERS = _SlotNumbers()


def fan_in_slots(getter: Callable[[Any], Any]) -> tuple[int, ...]:
    """The slots a `fan_in` getter reads (it reads them from a sequence of slot numbers)."""
    slots: tuple[int, ...] = getter(_SLOT_NUMBERS)
    return slots


def is_fast(target: Any, kind: int) -> bool:
    """Whether node runs of `target` take the scheduler's inline path (plain async tools)."""
    return kind == TOOL and target.plain and not target.limits


def classify(value: Any, slot_of: Callable[[OutputRef], int]) -> tuple[int, Any]:
    """The kind and x of one (checked) argument value (for a `GATHER2`..., its x's in a
    tuple: see `add_arg`): a whole output ref reads its node's slot (`slot_of(ref)`), a list
    of them is a fan-in, any other ref-holding value a tree, and anything else a constant."""
    kind = type(value)
    if kind in ATOMS:
        return CONST, value
    if kind is OutputRef and not value.path:
        return SLOT, slot_of(value)
    if kind is list:
        slots = []
        for v in value:
            if type(v) is not OutputRef or v.path:
                return TREE, value
            slots.append(slot_of(v))
        if len(slots) == 1:
            return GATHER1, slots[0]
        if 2 <= len(slots) <= 4:
            return GATHER2 - 2 + len(slots), tuple(slots)
        return GATHER, fan_in(slots)
    if kind in _TREES or isinstance(value, InputRef | OutputRef | list | tuple | dict):
        return TREE, value
    return CONST, value


def add_arg(xs: list[Any], kind: int, x: Any) -> None:
    """Add an argument `classify` filed to a node's arguments `xs`."""
    if kind in _SPREAD:
        xs.extend(x)
    else:
        xs.append(x)


def arg_values(args: Args) -> Iterator[tuple[str, int, Any]]:
    """A node's arguments as (name, kind, x), in call order (for a `GATHER2`..., its x's in a
    tuple)."""
    shape: ArgShape = args[0]
    for name, kind, k in zip(shape.names, shape.kinds, shape.at, strict=True):
        n = _SPREAD.get(kind)
        yield name, kind, args[k : k + n] if n else args[k]


def spec_args(args: Args, ref_at: Callable[[int], OutputRef]) -> dict[str, Any]:
    """A node's `NodeSpec` arguments from its plan arguments, in call order; `ref_at(slot)` is
    the output ref of a slot."""
    found: dict[str, Any] = {}
    for name, kind, x in arg_values(args):
        if kind == SLOT:
            found[name] = ref_at(x)
        elif kind == GATHER1:
            found[name] = [ref_at(x)]
        elif kind == GATHER:
            found[name] = [ref_at(s) for s in fan_in_slots(x)]
        elif kind in _SPREAD:
            found[name] = [ref_at(s) for s in x]
        else:
            found[name] = x
    return found


@attrs.frozen(eq=False)
class Plan:
    """A TaskGraph lowered to index arrays, once per graph."""

    graph: TaskGraph
    ids: list[str]
    names: list[str]
    kinds: list[int]
    targets: list[Any]
    # Node i's arguments: `(shape, x1, ..., xn)` (see `ArgShape`); its arguments dict in a run
    # is `args[i][0].build(values, args[i], lookup)`.
    args: list[Args]
    # Node i's dependents, in order (a list, or a tuple of one or none).
    dependents: Sequence[Sequence[int]]
    indegree: list[int]
    # True for plain async tools (no timeout, retry, limits or context): the inline fast path.
    fast: list[bool]
    executors: list[str]
    # Node i → the slot of its second output, for nodes with several (see above).
    extra: dict[int, int]
    # The slots a run starts from: UNSET in every one.
    initial: list[Any]
    # A map node's index → the input its items are passed as (no NodeSpec needed at run time).
    map_params: dict[int, str] = attrs.field(factory=dict)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Node id → node index, made when first read (see `node_of`)."""
        return {node_id: i for i, node_id in enumerate(self.ids)}

    def node_of(self, ref: OutputRef) -> int:
        """The index of `ref`'s node. A ref a trace made holds its node's index there, which
        is the plan's (`_graph.SET_TRACE_INDEX`), checked here by id: a run of a traced graph
        resolves its outputs and argument trees without `index`, which it would build first."""
        try:
            j: int = ref._at
            if self.ids[j] == ref.node:
                return j
        except (AttributeError, IndexError):
            pass
        return self.index[ref.node]

    def tools(self) -> list[Tool]:
        """The distinct tools of the graph (each checked once before a run, not per node)."""
        from ._tool import Tool  # the compiler layer stands below tools (no Trio here)

        return list({id(t): t for t in self.targets if isinstance(t, Tool)}.values())

    def slot(self, i: int, output: str) -> int:
        """The value slot of node i's output `output`."""
        outputs: tuple[str, ...] = self.targets[i].outputs
        return output_slot(i, outputs.index(output), self.extra)

    def shipped_args(self, i: int) -> dict[str, Any]:
        """Node i's arguments that are not plain outputs of other nodes: what a shipping
        executor must be able to send before the node runs (refs inside trees pickle as
        plain data)."""
        return {name: x for name, kind, x in arg_values(self.args[i]) if kind in (CONST, TREE)}


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
    dependents: list[list[int]] = [[] for _ in nodes]  # (the trace's tuples compare as lists)
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
    extra: dict[int, int] = {}
    extra_slots = 0
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
        if found[4] > 1:
            extra[len(targets) - 1] = -1 - extra_slots
            extra_slots += found[4] - 1

    def slot_of(ref: OutputRef) -> int:
        j = index[ref.node]
        outputs: tuple[str, ...] = targets[j].outputs
        return output_slot(j, outputs.index(ref.output), extra)

    args: list[Args] = []
    for node in nodes:
        xs: list[Any] = [None]
        code = 0
        for value in node.args.values():
            kind, x = classify(value, slot_of)
            add_arg(xs, kind, x)
            code = code << _KIND_BITS | kind
        xs[0] = arg_shape(tuple(node.args), code)
        args.append(tuple(xs))
    return Plan(
        graph=graph,
        ids=ids,
        names=[node.tool for node in nodes],
        kinds=kinds,
        targets=targets,
        args=args,
        dependents=dependents,
        indegree=indegree,
        fast=fast,
        executors=executors,
        extra=extra,
        initial=[UNSET] * (len(nodes) + extra_slots),
        map_params={i: n.map_param for i, n in enumerate(nodes) if n.map_param is not None},
    )
