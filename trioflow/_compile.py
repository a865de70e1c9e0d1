"""Tracing a `@graphify` body into a `TaskGraph` (no Trio here).

The body runs once with refs for its inputs; every tool call returns a `NodeRef` and is recorded
as a node. When the input values are known (at run time, or `graph.compile(vals=[...])`),
`len()`, iteration and `bool()` of an input ref use the real value, so a graph whose shape
depends on its inputs is built correctly. When they are not known, those operations raise
`GraphBuildError` instead of building a silently wrong graph; so do turning a ref into text, two
different tools under one name, and a graph that calls itself.
"""

from __future__ import annotations

import functools
import gc
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import attrs

from ._checks import outputs_dict
from ._errors import (
    ConfigError,
    ConfigTypeError,
    GraphBuildError,
    GraphBuildTypeError,
    GraphBuildValueError,
)
from ._gcpause import promote_young
from ._graph import (
    NODE_SPEC_SETTERS,
    OUTPUT_REF_SETTERS,
    InputRef,
    NodeKind,
    NodeSpec,
    OutputRef,
    TaskGraph,
    _project,
    iter_refs,
    lazy_nodes,
    make_output_ref,
    ref_as_text,
)
from ._plan import KINDS, UNSET, ArgPlan, Plan, classify_arg, fan_in, is_fast
from ._trace import TRACER, called_from_user_code

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = ["GraphTracer", "NodeRef", "trace"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class NodeRef:
    """A traced call: `ref.out` or `ref["out"]` is the `OutputRef` of output `out`."""

    # The output refs are made with the node and kept in the instance's `__dict__`, so `ref.out`
    # is a plain attribute read (a fan-in reads one per dependency; a failed lookup that falls
    # back to `__getattr__` costs 6x more). Names starting with `_` stay out of it, so as not to
    # hide the class's own methods: `ref._x` finds them through `__getattr__`, `ref["_x"]` works.
    __slots__ = ("__dict__", "__weakref__", "id", "outputs")
    __match_args__ = ("id", "outputs")

    id: str
    outputs: tuple[str, ...]

    def __init__(self, id: str, outputs: tuple[str, ...]) -> None:
        self.id = id
        self.outputs = outputs
        refs = self.__dict__
        for name in outputs:
            if name[:1] != "_":
                refs[name] = make_output_ref(id, name)

    def __getitem__(self, name: str) -> OutputRef:
        if name in self.outputs:
            found = self.__dict__.get(name)
            return found if type(found) is OutputRef else make_output_ref(self.id, name)
        raise GraphBuildError(
            f"node {self.id!r} has no output {name!r}",
            code="unknown-output",
            hints=(f"its outputs are {list(self.outputs)}",),
        )

    def __getattr__(self, name: str) -> OutputRef:
        # Reached for names that are not attributes: outputs starting with `_`, and mistakes.
        if name.startswith("__") or name in ("id", "outputs"):
            raise AttributeError(name)
        return self[name]

    def _not_a_value(self, op: str) -> GraphBuildError:
        return GraphBuildError(
            f"{op} of node {self.id!r} itself: a node ref is not a value",
            code="node-ref-not-a-value",
            hints=(f"use one of its outputs: {', '.join(f'ref.{o}' for o in self.outputs)}",),
        )

    def __len__(self) -> int:
        raise self._not_a_value("len()")

    def __iter__(self) -> Iterator[Any]:
        raise self._not_a_value("iteration")

    def __bool__(self) -> bool:
        raise self._not_a_value("bool()")

    def __index__(self) -> int:
        raise self._not_a_value("using it as an int")

    __int__ = __index__

    def __float__(self) -> float:
        raise self._not_a_value("float()")

    def _no_arithmetic(self, *_: object) -> Any:
        raise self._not_a_value("arithmetic or comparison")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _no_arithmetic
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _no_arithmetic
    __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = _no_arithmetic
    __lt__ = __le__ = __gt__ = __ge__ = _no_arithmetic

    # Text: see `_RefOps.__repr__` in _graph.py (an error for the user's own code, while traced).

    def __repr__(self) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(f"node {self.id!r}", "repr()")
        return f"NodeRef(id={self.id!r}, outputs={self.outputs!r})"

    def __str__(self) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(f"node {self.id!r}", "str()")
        return repr(self)

    def __format__(self, spec: str) -> str:
        if TRACER.get() is not None and called_from_user_code():
            raise ref_as_text(f"node {self.id!r}", "an f-string or format()")
        return format(repr(self), spec)


_new = object.__new__
# Slot setters of `NodeSpec` and `OutputRef` (`make_output_ref` of _graph, inlined in
# `GraphTracer._add` with the node's own).
(_set_id, _set_tool, _set_args, _set_deps, _set_outputs, _set_kind, _set_map_param, _set_target) = (
    NODE_SPEC_SETTERS
)
_set_node, _set_output, _set_path = OUTPUT_REF_SETTERS


def _target_path(obj: Any) -> str:
    fn = getattr(obj, "fn", obj)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or "<locals>" in qualname:
        return ""
    return f"{module}:{qualname}"


def _show_target(obj: Any) -> str:
    fn = getattr(obj, "fn", obj)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(obj)


@attrs.frozen(eq=False)
class _Probes:
    """Recursion check state shared by a trace and the traces it starts to probe subgraphs.

    `stack` holds the graphs whose trace reached this point without depending on an input's
    value, so every run of them reaches it too: calling one of them again never ends. `done`
    holds the graph functions already probed in this trace."""

    stack: tuple[tuple[Callable[..., Any], str], ...] = ()
    done: set[Callable[..., Any]] = attrs.field(factory=set)


_PROBES: ContextVar[_Probes | None] = ContextVar("trioflow.probes", default=None)


_ATOMS = frozenset({str, int, float, bool})

# A trace of at least this many nodes moves its objects to the collector's oldest generation
# (see `_gcpause.promote_young`): they then outnumber whatever else was young.
_PROMOTE_NODES = 1000


# What a trace knows of a callable, by name: (callable, "tool" or "graph", its import path,
# name, and for the plan: its kind, whether it takes the fast path, its executor key, one unset
# slot per output; the `map_param` of a map node; and for its NodeRefs, the outputs they hold
# (see `NodeRef`) and whether the first is one of them).
_Entry = tuple[
    Any, NodeKind, str, str, int, bool, str, list[Any], str | None, tuple[str, ...], bool
]


def _entry(target: Any, name: str, kind: NodeKind, map_param: str | None = None) -> _Entry:
    plan_kind = KINDS[kind]
    executor = "loop" if kind == "graph" else target.executor_key
    unset = [UNSET] * len(target.outputs)
    path = _target_path(target)
    fast = is_fast(target, plan_kind)
    held = tuple(out for out in target.outputs if out[:1] != "_")
    first = bool(held) and held[0] == target.outputs[0]
    return (target, kind, path, name, plan_kind, fast, executor, unset, map_param, held, first)


@attrs.define(eq=False)
class GraphTracer:
    """Records the calls a graphify body makes (the `Tracer` of `_trace`).

    A trace keeps its nodes as columns by node index: what the plan (`_plan.Plan`) reads, built
    as the trace goes, and each node's arguments. The graph's `NodeSpec`s are made from these
    columns only if something reads `graph.nodes` (`_make_nodes`): a run needs only the plan."""

    name: str
    inputs: tuple[str, ...]
    values: Mapping[str, Any] | None
    callables: dict[str, Any] = attrs.field(factory=dict)
    counters: dict[str, int] = attrs.field(factory=dict)
    # name → its `_Entry`: computed once per name (a map node has one of its own)
    known: dict[str, _Entry] = attrs.field(factory=dict)
    # The columns. The plan's columns that depend on the tool only are read off `entries` at
    # the end; each node's outputs and each constant argument get a slot in `slots` as the
    # trace meets them.
    ids: list[str] = attrs.field(factory=list)
    index: dict[str, int] = attrs.field(factory=dict)
    entries: list[_Entry] = attrs.field(factory=list)
    args: list[dict[str, Any]] = attrs.field(factory=list)
    targets: list[Any] = attrs.field(factory=list)
    out_base: list[int] = attrs.field(factory=list)
    slots: list[Any] = attrs.field(factory=list)
    arg_plans: list[ArgPlan] = attrs.field(factory=list)
    dependents: list[list[int]] = attrs.field(factory=list)
    indegree: list[int] = attrs.field(factory=list)
    # The output refs this trace made for its nodes' first outputs, by `id()` → node index:
    # an argument found here needs no checks (it is one of ours, whole). `made_refs` keeps
    # them alive for the trace, so that no other object can take one of their ids.
    made: dict[int, int] = attrs.field(factory=dict)
    made_refs: list[OutputRef] = attrs.field(factory=list)
    map_params: dict[int, str] = attrs.field(factory=dict)  # map node index → its items' input

    def known_value(self, ref: object) -> tuple[bool, Any]:
        """The value of an input ref, if this trace knows the inputs."""
        if self.values is None or not isinstance(ref, InputRef) or ref.name not in self.values:
            return False, None
        try:
            return True, _project(self.values[ref.name], ref.path)
        except (LookupError, TypeError):
            return False, None

    def _new_id(self, name: str) -> str:
        k = self.counters[name] = self.counters.get(name, 0) + 1
        return f"{name}_{k}"

    def _foreign(self, node_id: str, ref: OutputRef) -> GraphBuildError:
        return GraphBuildError(
            f"node {node_id!r}: {ref.describe()} does not belong to graph {self.name!r}",
            code="foreign-ref",
            hints=("refs cannot cross graphs; pass the value as a subgraph input",),
        )

    def _prepare(self, value: Any, deps: dict[int, None], node_id: str) -> Any:
        """Validate an argument tree: refs belong to this trace; node refs become outputs.

        `node_id` names the node (or the output) being built, for error messages."""
        kind = type(value)
        if kind is OutputRef:  # the common cases first, by exact type
            self._add_dep(value, deps, node_id)
            return value
        if kind in _ATOMS or value is None or isinstance(value, str | int | float | bool):
            return value
        if isinstance(value, NodeRef):
            if value.id not in self.index or len(value.outputs) != 1:
                raise GraphBuildError(
                    f"node {node_id!r}: a node ref was passed where a value is expected",
                    code="node-ref-not-a-value",
                    hints=(f"pass one of its outputs: ref.{value.outputs[0]}",)
                    if value.outputs
                    else (),
                )
            value = value[value.outputs[0]]
        if isinstance(value, OutputRef):
            self._add_dep(value, deps, node_id)
            return value
        if isinstance(value, InputRef):
            if value.name not in self.inputs:
                raise GraphBuildError(
                    f"node {node_id!r}: {value.describe()} is not an input of graph {self.name!r}",
                    code="foreign-ref",
                )
            return value
        if isinstance(value, list):
            return [self._prepare(v, deps, node_id) for v in value]
        if isinstance(value, tuple):
            return tuple(self._prepare(v, deps, node_id) for v in value)
        if isinstance(value, dict):
            return {k: self._prepare(v, deps, node_id) for k, v in value.items()}
        return value

    def _add_dep(self, ref: OutputRef, deps: dict[int, None], node_id: str) -> None:
        """Note `ref`'s node in `deps` (by node index) as a dependency of node `node_id`; a
        ref of another graph, or of an output its node does not have, is an error."""
        j = self.index.get(ref.node)
        if j is None:
            raise self._foreign(node_id, ref)
        outputs: tuple[str, ...] = self.targets[j].outputs
        if ref.output not in outputs:
            raise GraphBuildError(
                f"node {node_id!r}: node {ref.node!r} has no output {ref.output!r}",
                code="unknown-output",
                hints=(f"its outputs are {list(outputs)}",),
            )
        deps[j] = None

    def _register(self, name: str, target: Any) -> _Entry:
        """Remember the callable behind `name` (its `_Entry`). A different one
        under the same name is an error, since nodes find their callable by name (one of them
        would run the other's code). A graph is checked for recursion when first seen."""
        known = self.callables.get(name)
        if known is not None:
            raise GraphBuildError(
                f"graph {self.name!r} calls two different callables named {name!r}: "
                f"{_show_target(known)} and {_show_target(target)}",
                code="name-clash",
                hints=(
                    "nodes find their tool by name: give one of them another name with "
                    "@trioflow.tool(name=...)",
                ),
            )
        # Graphs (targets with `check_inputs`, the scheduler's `GraphTarget`) become subgraph
        # nodes; calling one must not make a graph call itself.
        kind: NodeKind = "graph" if hasattr(target, "check_inputs") else "tool"
        if kind == "graph":
            _check_recursion(target)
        self.callables[name] = target
        entry = self.known[name] = _entry(target, name, kind)
        return entry

    def call(
        self,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        map_param: str | None = None,
    ) -> NodeRef:
        """A tool call (or a nested graph call: a subgraph node) in the body: record a node
        and its plan (with `map_param`, the one node of a `map`: see `map`).

        `kwargs` is the call's own `**kwargs` dict: the node keeps it as its arguments, each
        value checked, with lists copied and node refs replaced by their one output."""
        name = target.name
        if map_param is None:
            spec = target.spec
            if args or not spec.named or kwargs.keys() != spec.params:
                kwargs = spec.bind(args, kwargs)  # else every input is given by name: as is
            counters = self.counters
            k = counters[name] = counters.get(name, 0) + 1
            node_id = f"{name}_{k}"
        else:
            node_id = self._new_id("map")
        entry = self.known.get(name)
        if entry is None or entry[0] is not target:
            entry = self._register(name, target)
        if map_param is not None:  # a map node
            entry = _entry(target, name, "map", map_param)
            self.map_params[len(self.out_base)] = map_param
        out_base, slots, made = self.out_base, self.slots, self.made
        deps: dict[int, None] = {}  # the nodes it depends on, by index
        pairs: list[tuple[str, int]] = []
        gathers: Any = _NONE
        trees: Any = _NONE
        # Each argument checked and filed into the plan (`_prepare` and `classify_arg`, inlined
        # for constants, and for output refs and lists of them that this trace made); anything
        # else, and any mistake, takes the general path.
        for key, value in kwargs.items():
            vtype = type(value)
            if vtype in _ATOMS or value is None:
                pairs.append((key, len(slots)))
                slots.append(value)
                continue
            if vtype is list:
                if len(value) == 1:  # (a fan-in of one: no list of slots)
                    j = made.get(id(value[0]))
                    if j is not None:
                        deps[j] = None
                        kwargs[key] = [value[0]]  # a copy: the caller may change its list later
                        if gathers is _NONE:
                            gathers = []
                        gathers.append((key, out_base[j]))
                        continue
                got: list[int] = []
                for item in value:
                    j = made.get(id(item))
                    if j is None:
                        break
                    deps[j] = None
                    got.append(out_base[j])
                else:
                    kwargs[key] = value[:]  # a copy: the caller may change its list later
                    if gathers is _NONE:
                        gathers = []
                    gathers.append((key, got[0] if len(got) == 1 else fan_in(got)))
                    continue
            else:
                j = made.get(id(value))
                if j is not None:
                    deps[j] = None
                    pairs.append((key, out_base[j]))
                    continue
            kwargs[key] = value = self._prepare(value, deps, node_id)
            if gathers is _NONE:
                gathers = []
            if trees is _NONE:
                trees = []
            classify_arg(key, value, self._slot_of, slots, pairs, gathers, trees)
        i = len(out_base)
        dependents = self.dependents
        for j in deps:
            dependents[j].append(i)
        dependents.append([])
        self.indegree.append(len(deps))
        self.ids.append(node_id)
        self.index[node_id] = i
        self.entries.append(entry)
        self.args.append(kwargs)
        self.targets.append(target)
        out_base.append(len(slots))
        slots += entry[7]
        self.arg_plans.append((pairs, gathers, trees))
        # The NodeRef with its output refs, their slots set directly (`NodeRef()` and
        # `make_output_ref` inlined).
        outputs = target.outputs
        ref: NodeRef = _new(NodeRef)
        ref.id = node_id
        ref.outputs = outputs
        held = entry[9]
        if entry[10]:  # the first output's ref: what arguments pass most
            first = _new(OutputRef)
            _set_node(first, node_id)
            _set_output(first, outputs[0])
            _set_path(first, ())
            ref.__dict__[outputs[0]] = first
            made[id(first)] = i
            self.made_refs.append(first)
            if len(held) == 1:
                return ref
        refs = ref.__dict__
        for out in held:
            if out not in refs:
                output = _new(OutputRef)
                _set_node(output, node_id)
                _set_output(output, out)
                _set_path(output, ())
                refs[out] = output
        return ref

    def _slot_of(self, ref: OutputRef) -> int:
        j = self.index[ref.node]
        outputs: tuple[str, ...] = self.targets[j].outputs
        return self.out_base[j] + outputs.index(ref.output)

    def map(self, tool: Tool, items: Any, param: str, fixed: Mapping[str, Any]) -> NodeRef:
        """`trioflow.map(tool, items)` in the body: one node that fans out at run time."""
        return self.call(tool, (), {**fixed, param: items}, param)

    def plan(self, graph: TaskGraph) -> Plan:
        """The plan built with `graph`'s nodes (its trace was this one)."""
        entries = self.entries
        return Plan(
            graph=graph,
            ids=self.ids,
            names=list(map(_NAME, entries)),
            kinds=list(map(_KIND, entries)),
            targets=self.targets,
            args=self.arg_plans,
            dependents=self.dependents,
            indegree=self.indegree,
            index=self.index,
            fast=list(map(_FAST, entries)),
            executors=list(map(_EXECUTOR, entries)),
            out_base=self.out_base,
            initial=self.slots,
            map_params=self.map_params,
        )


_NAME, _KIND, _FAST, _EXECUTOR = itemgetter(3), itemgetter(4), itemgetter(5), itemgetter(6)
_NONE: tuple[Any, ...] = ()


def _make_nodes(
    ids: list[str], entries: list[_Entry], args: list[dict[str, Any]]
) -> dict[str, NodeSpec]:
    """A traced graph's `NodeSpec`s, made from its trace's columns (what `graph.nodes` reads,
    once: see `lazy_nodes`).

    A node's dependencies are the nodes of the output refs in its arguments, in the order the
    trace met them (argument order, depth first), each once."""
    nodes: dict[str, NodeSpec] = {}
    paused = gc.isenabled()
    if paused:  # the NodeSpecs live on with the graph: see `trace`
        gc.disable()
    try:
        for node_id, entry, node_args in zip(ids, entries, args, strict=True):
            deps: dict[str, None] = {}
            for value in node_args.values():
                if type(value) is OutputRef:
                    deps[value.node] = None
                elif type(value) not in _ATOMS and value is not None:
                    for ref in iter_refs(value):
                        if type(ref) is OutputRef:
                            deps[ref.node] = None
            node = _new(NodeSpec)
            _set_id(node, node_id)
            _set_tool(node, entry[3])
            _set_args(node, node_args)
            _set_deps(node, tuple(deps))
            _set_outputs(node, entry[0].outputs)
            _set_kind(node, entry[1])
            _set_map_param(node, entry[8])
            _set_target(node, entry[2])
            nodes[node_id] = node
    finally:
        if paused:
            if len(nodes) >= _PROMOTE_NODES:
                promote_young()
            gc.enable()
    return nodes


def _check_recursion(target: Any) -> None:
    """Raise if calling the graph `target` here would nest graphs forever.

    A graph on the probe stack reached this call whatever its inputs, so calling it again
    repeats at every level of nesting. A `@graphify` not yet probed is traced once without
    input values (depth first) to find cycles through it; a trace that stops at a
    shape-dependent step (`if len(vals) > 1: ...`) may recurse with a base case and is not
    an error. graph_fn bodies are async code and are not traced."""
    probes = _PROBES.get() or _Probes()
    fn = getattr(target, "fn", None)
    for i, (seen, _) in enumerate(probes.stack):
        if seen is fn:
            cycle = " -> ".join([*(n for _, n in probes.stack[i:]), target.name])
            raise GraphBuildError(
                f"graph {target.name!r} calls itself ({cycle}) whatever its inputs, so every "
                "run would nest it again, forever",
                code="recursive-graph",
                hints=(
                    "a graph can recurse only behind a test of an input's value that ends it "
                    "(if len(vals) > 1: ...); otherwise write the loop inside a tool or a "
                    "@trioflow.graph_fn",
                ),
            )
    probe = getattr(target, "compile", None)
    if fn is None or probe is None or fn in probes.done:
        return
    probes.done.add(fn)
    try:
        probe()
    except GraphBuildError as exc:
        if exc.code == "recursive-graph":
            raise
    except Exception:
        # Any other problem of the subgraph is reported when it runs, as before: the probe only
        # looks for cycles.
        pass


def _user_location(tb: Any) -> str:
    """file:line of the innermost frame outside trioflow in a traceback."""
    where = ""
    for frame in traceback.extract_tb(tb):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def trace(
    fn: Callable[..., Any],
    *,
    name: str,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    values: Mapping[str, Any] | None,
    defaults: Mapping[str, Any] | None = None,
) -> TaskGraph:
    """Run a graphify body once with refs for its inputs and return the recorded graph.

    `values` are the inputs' values when known (else None); `defaults` the defaults of its
    optional inputs, kept in the graph so that a graph read back from `to_dict()` runs without
    them."""
    tracer = GraphTracer(name=name, inputs=inputs, values=values)
    probes = _PROBES.get() or _Probes()
    if values is None:  # this trace does not depend on input values: a probe, see _check_recursion
        probes = _Probes(stack=(*probes.stack, (fn, name)), done=probes.done)
    token = TRACER.set(tracer)
    probes_token = _PROBES.set(probes)
    # The graph is thousands of objects that all stay alive: the cyclic collector would rescan
    # them again and again while they are made (a third of a 100k-node trace). See _gcpause.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    made = 0
    try:
        result = fn(**{n: InputRef(n) for n in inputs})
        made = len(tracer.ids)
    except GraphBuildError as exc:
        if exc.graph is None:  # the innermost trace locates it
            exc.graph = name
            exc.where = _user_location(exc.__traceback__)
        raise
    except (ConfigError, ConfigTypeError) as exc:  # a bad call of a tool in the body
        # The same mistake keeps its class: a ConfigTypeError in a graph_fn is one here too.
        cls = GraphBuildTypeError if isinstance(exc, ConfigTypeError) else GraphBuildValueError
        raise cls(
            str(exc),
            code="bad-call",
            hints=("call each tool with its declared inputs, by name",),
            graph=name,
            where=_user_location(exc.__traceback__),
        ) from exc
    finally:
        if paused:
            if made >= _PROMOTE_NODES:
                promote_young()  # the graph lives on: skip the young collections' rescans
            gc.enable()
        _PROBES.reset(probes_token)
        TRACER.reset(token)
    try:
        result = outputs_dict(f"graph {name!r}", outputs, result)
    except (TypeError, ValueError) as exc:
        raise GraphBuildError(str(exc), code="bad-outputs", graph=name) from None
    bindings = {out: tracer._prepare(result[out], {}, f"output {out}") for out in outputs}
    graph = TaskGraph(
        name=name,
        inputs=inputs,
        nodes={},
        outputs=bindings,
        defaults=dict(defaults or {}),
        callables=tracer.callables,
    )
    graph._lowered.plan = tracer.plan(graph)
    lazy_nodes(graph, functools.partial(_make_nodes, tracer.ids, tracer.entries, tracer.args))
    return graph
