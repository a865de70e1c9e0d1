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
import itertools
import operator
import os
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

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
    SET_TRACE_INDEX,
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
from ._plan import (
    _KIND_BITS,
    GATHER,
    GATHER1,
    GATHER2,
    KINDS,
    SLOT,
    UNSET,
    Args,
    ArgShape,
    Plan,
    add_arg,
    arg_shape,
    classify,
    fan_in,
    filing,
    is_fast,
    output_slot,
    spec_args,
)
from ._trace import TRACER, called_from_user_code

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = ["GraphTracer", "NodeRef", "trace"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class NodeRef:
    """A traced call: `ref.out` or `ref["out"]` is the `OutputRef` of output `out`."""

    # The output refs are made with the node and kept in slots, of a subclass per set of output
    # names (`_ref_class`), so `ref.out` is a plain attribute read (a fan-in reads one per
    # dependency; a failed lookup that falls back to `__getattr__` costs 6x more), and a ref
    # has no `__dict__` (a dict per node would cost more than the rest of the node's trace).
    # Names starting with `_`, `id`, `outputs` and names that are not identifiers get no slot,
    # so as not to hide the class's own attributes: `ref["_x"]` works, and `ref._x` finds it
    # through `__getattr__`. The first output's slot is `__first__` under another name (see
    # `_ref_class`): the tracer sets it with a plain attribute store.
    __slots__ = ("__first__", "__weakref__", "id", "outputs")
    __match_args__ = ("id", "outputs")
    _held: ClassVar[tuple[str, ...]] = ()  # the outputs this class has a slot for

    id: str
    outputs: tuple[str, ...]
    __first__: OutputRef

    def __new__(cls, id: str, outputs: tuple[str, ...]) -> Self:
        held = _held_outputs(outputs)
        made = object.__new__(_ref_class(held, bool(held) and held[0] == outputs[0]))
        return cast("Self", made)  # (of a subclass)

    def __init__(self, id: str, outputs: tuple[str, ...]) -> None:
        self.id = id
        self.outputs = outputs
        for name in self._held:
            setattr(self, name, make_output_ref(id, name))

    def __reduce__(self) -> tuple[type[NodeRef], tuple[str, tuple[str, ...]]]:
        return (NodeRef, (self.id, self.outputs))

    def __getitem__(self, name: str) -> OutputRef:
        if name in self.outputs:
            if name in self._held:
                found: OutputRef = getattr(self, name)
                return found
            return make_output_ref(self.id, name)
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


def _held_outputs(outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs a NodeRef keeps in slots (see `NodeRef`)."""
    return tuple(
        out
        for out in outputs
        if out[:1] != "_" and out not in ("id", "outputs") and out.isidentifier()
    )


@functools.lru_cache(maxsize=1024)
def _ref_class(held: tuple[str, ...], first: bool) -> type[NodeRef]:
    """The NodeRef class with a slot for each output in `held`; with `first`, `held[0]` is
    the first output, whose slot is every NodeRef's `__first__`."""
    if not held:
        return NodeRef
    namespace: dict[str, Any] = {"_held": held, "__module__": "trioflow"}
    namespace["__slots__"] = held[1:] if first else held
    if first:
        namespace[held[0]] = NodeRef.__dict__["__first__"]  # the same slot, by its own name
    cls: type[NodeRef] = type("NodeRef", (NodeRef,), namespace)
    cls.__qualname__ = NodeRef.__qualname__
    return cls


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


def _no_record(kwargs: dict[str, Any]) -> None:
    """The recorder of a callee whose calls the general path files (see `recorder`)."""
    return None


def _ended(*args: Any) -> NodeRef:
    raise AssertionError("a trace that ended recorded a call")  # (see `GraphTracer.unbind`)


@attrs.define(eq=False)
class _Callee:
    """What a trace knows of a callable it met, by name (a map node has one of its own)."""

    target: Any
    kind: NodeKind
    path: str  # its import path
    name: str
    # For the plan: its kind, whether it takes the fast path, its executor key.
    plan_kind: int
    fast: bool
    executor: str
    outputs: tuple[str, ...]
    map_param: str | None
    # For its NodeRefs: their class, the outputs they hold (see `NodeRef`), and whether the
    # first output is one of them.
    ref_class: type[NodeRef]
    held: tuple[str, ...]
    first: bool
    # Its node ids, in order (`_node_ids`: shared by every callee that numbers its nodes by
    # the same name).
    ids: Iterator[str]
    # Its first output (if it has one), whether it has more, and whether the first is the
    # only one its NodeRefs hold.
    output: str | None
    more: bool
    only: bool
    # The argument names of its last call, their kinds and `ArgShape`: a call with the same
    # names needs no check of them, and most calls of a callable have the same shape.
    names: tuple[str, ...] | None = None
    code: int = -1
    shape: ArgShape | None = None
    # Bound to a trace's columns (see `recorder`): `record(kwargs)` records a call with the
    # names and kinds of the last one, or returns None; `finish(...)` records a call the
    # general path filed.
    record: Callable[[dict[str, Any]], NodeRef | None] = _no_record
    finish: Callable[[str, Args, int | None, Collection[int] | None], NodeRef] = _ended

    @classmethod
    def of(
        cls,
        target: Any,
        name: str,
        kind: NodeKind,
        ids: Iterator[str],
        map_param: str | None = None,
    ) -> _Callee:
        plan_kind = KINDS[kind]
        outputs: tuple[str, ...] = target.outputs
        held = _held_outputs(outputs)
        first = bool(held) and held[0] == outputs[0]
        return cls(
            target=target,
            kind=kind,
            path=_target_path(target),
            name=name,
            plan_kind=plan_kind,
            fast=is_fast(target, plan_kind),
            executor="loop" if kind == "graph" else target.executor_key,
            outputs=outputs,
            map_param=map_param,
            ref_class=_ref_class(held, first),
            held=held,
            first=first,
            ids=ids,
            output=outputs[0] if outputs else None,
            more=len(outputs) > 1,
            only=first and len(held) == 1,
        )


def _node_ids(name: str) -> Iterator[str]:
    """`name_1`, `name_2`, ...: the ids of the nodes a trace numbers by `name` (each made by
    one C-level `next()`: no counter to read and write back, no f-string)."""
    return map(operator.add, itertools.repeat(f"{name}_"), map(str, itertools.count(1)))


# -- recording a call: generated code bound to a trace ----------------------------------------
# A call is recorded in the trace's columns (see `GraphTracer`) by a function bound to the
# trace and the callee (its columns and constants in a closure): `finish` for calls the
# general path filed, and, for the calls a generated filing takes (`_plan.filing`), `record`,
# that filing and the same recording in one function. The recording is written once, here.
_BIND = """\
def bind(tracer, callee):
    node_ids, made, dependents = tracer.node_ids, tracer.made, tracer.dependents
    indegree, callees, args, extra = tracer.indegree, tracer.callees, tracer.args, tracer.extra
    ids, ref_class, outputs, output = callee.ids, callee.ref_class, callee.outputs, callee.output
    more, first_held, only, held = callee.more, callee.first, callee.only, callee.held
"""
# The node `node_id`, with arguments `node_args`, depends on node `d` (if `deps` is None) or
# on the nodes `deps`; its NodeRef with its output refs, their slots set directly (`NodeRef()`
# and `make_output_ref` inlined). In parts: what depends on the callee's outputs is chosen when
# a recorder is generated (it is made for one callee), and tested by `finish`.
_RECORD_NODE = """\
i = len(made)
if deps is None:  # (one dependency: most nodes)
    found = dependents[d]
    if not found:  # (a node's first dependent in a tuple: most nodes have one)
        dependents[d] = (i,)
    elif type(found) is tuple:
        dependents[d] = [found[0], i]
    else:
        found.append(i)
    indegree.append(1)
else:
    one = (i,)  # (shared by the nodes it is the first dependent of: a fan-in's)
    for j in deps:
        found = dependents[j]
        if not found:
            dependents[j] = one
        elif type(found) is tuple:
            dependents[j] = [found[0], i]
        else:
            found.append(i)
    indegree.append(len(deps))
dependents.append(())
node_ids.append(node_id)
callees.append(callee)
args.append(node_args)
"""
_RECORD_MORE = """\
extra[i] = -1 - tracer.extra_slots  # several outputs: the slots of the others
tracer.extra_slots += len(outputs) - 1
"""
_RECORD_REF = """\
ref = _new(ref_class)
ref.id = node_id
ref.outputs = outputs
"""
_RECORD_FIRST = """\
first = _new(OutputRef)  # the first output's ref: what arguments pass most
_set_node(first, node_id)
_set_output(first, output)
_set_path(first, ())
_set_at(first, i)
ref.__first__ = first
made.append(first)
"""
_RECORD_OTHERS = """\
for out in held:
    if out != outputs[0] or not first_held:
        setattr(ref, out, make_output_ref(node_id, out))
return ref
"""


def _recording(flags: tuple[bool, bool, bool] | None) -> list[str]:
    """The lines that record a node: for a callee whose `(more, first, only)` are `flags`, or
    for any callee (testing them) if None."""
    if flags is None:
        return [
            *_RECORD_NODE.splitlines(),
            "if more:",
            *("    " + line for line in _RECORD_MORE.splitlines()),
            *_RECORD_REF.splitlines(),
            "if first_held:",
            *("    " + line for line in _RECORD_FIRST.splitlines()),
            "    if only:",
            "        return ref",
            "else:",
            "    made.append(None)",
            *_RECORD_OTHERS.splitlines(),
        ]
    more, first, only = flags
    return [
        *_RECORD_NODE.splitlines(),
        *(_RECORD_MORE.splitlines() if more else []),
        *_RECORD_REF.splitlines(),
        *(_RECORD_FIRST.splitlines() if first else ["made.append(None)"]),
        *(["return ref"] if only else _RECORD_OTHERS.splitlines()),
    ]


_Binder = Callable[["GraphTracer", "_Callee"], Callable[..., Any]]


def _indent(lines: Iterator[str] | Sequence[str], by: str) -> str:
    return "".join(f"{by}{line}\n" for line in lines)


def _compile_binder(source: str, name: str, scope: dict[str, Any]) -> _Binder:
    scope |= {
        "_new": _new,
        "OutputRef": OutputRef,
        "_set_node": _set_node,
        "_set_output": _set_output,
        "_set_path": _set_path,
        "_set_at": SET_TRACE_INDEX,
        "make_output_ref": make_output_ref,
    }
    exec(compile(source, name, "exec"), scope)
    found: _Binder = scope["bind"]
    return found


_bind_finish = _compile_binder(
    _BIND
    + "    def finish(node_id, node_args, d, deps):\n"
    + _indent(_recording(None), "        ")
    + "    return finish\n",
    "<trioflow recording>",
    {},
)


@functools.lru_cache(maxsize=4096)
def recorder(names: tuple[str, ...], code: int, flags: tuple[bool, bool, bool]) -> _Binder | None:
    """What binds `record` (see above) for calls with arguments `names` of kinds `code` to a
    trace and a callee whose `(more, first, only)` are `flags`; None if those calls have no
    generated filing."""
    found = filing(names, code)
    if found is None:
        return None
    lines, scope = found
    source = (
        _BIND
        + "    def record(kwargs):\n"
        + _indent(lines, "        ")
        + "        node_id = next(ids)\n"
        + _indent(_recording(flags), "        ")
        + "    return record\n"
    )
    return _compile_binder(source, f"<trioflow recording {', '.join(names)}>", dict(scope))


@attrs.define(eq=False)
class GraphTracer:
    """Records the calls a graphify body makes (the `Tracer` of `_trace`).

    A trace keeps its nodes as columns by node index: what the plan (`_plan.Plan`) reads,
    built as the trace goes. Nothing else is kept per node: the graph's `NodeSpec`s are made
    from these columns if something reads `graph.nodes` (`_make_nodes`), and a run needs only
    the plan."""

    name: str
    inputs: tuple[str, ...]
    values: Mapping[str, Any] | None
    callables: dict[str, Any] = attrs.field(factory=dict)
    ids: dict[str, Iterator[str]] = attrs.field(factory=dict)  # by name: see `_node_ids`
    known: dict[str, _Callee] = attrs.field(factory=dict)
    # The columns. The plan's columns that depend on the callable only are read off `callees`
    # at the end.
    node_ids: list[str] = attrs.field(factory=list)
    callees: list[_Callee] = attrs.field(factory=list)
    args: list[Args] = attrs.field(factory=list)
    dependents: list[Sequence[int]] = attrs.field(factory=list)
    indegree: list[int] = attrs.field(factory=list)
    # Per node, the output ref this trace made for its first output (None if it made none):
    # an argument that is this very object needs no checks (it is one of ours, whole), and
    # reads slot j, its node's index (see `_plan`), which the ref holds (`SET_TRACE_INDEX`).
    made: list[OutputRef | None] = attrs.field(factory=list)
    # Node index → the slot of its second output, for nodes with several (see `_plan`).
    extra: dict[int, int] = attrs.field(factory=dict)
    extra_slots: int = 0
    map_params: dict[int, str] = attrs.field(factory=dict)  # map node index → its items' input
    bound: list[_Callee] = attrs.field(factory=list)  # the callees bound to this trace
    # Node id → index, for the refs the trace did not make (by identity): filled from
    # `node_ids` when such a ref comes (see `_node_index`), not per node.
    _index: dict[str, int] = attrs.field(factory=dict)
    # Target → its callee's `record`, for targets whose last call took a generated filing
    # (see `Tracer.records`).
    records: dict[Any, Callable[[dict[str, Any]], Any]] = attrs.field(factory=dict)

    def bind(self, callee: _Callee) -> _Callee:
        """`callee` with its `finish` bound to this trace."""
        callee.finish = _bind_finish(self, callee)
        self.bound.append(callee)
        return callee

    def unbind(self) -> None:
        """Unbind the callees from this trace when it ends (their functions hold it, and
        the graph holds them)."""
        for callee in self.bound:
            callee.record, callee.finish = _no_record, _ended
        self.records.clear()

    def known_value(self, ref: object) -> tuple[bool, Any]:
        """The value of an input ref, if this trace knows the inputs."""
        if self.values is None or not isinstance(ref, InputRef) or ref.name not in self.values:
            return False, None
        try:
            return True, _project(self.values[ref.name], ref.path)
        except (LookupError, TypeError):
            return False, None

    def _ids(self, name: str) -> Iterator[str]:
        """The ids of the nodes numbered by `name` (tool and subgraph nodes by their
        callable's name, map nodes by "map")."""
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = _node_ids(name)
        return found

    def _node_index(self, node_id: str) -> int | None:
        """The index of node `node_id` in this trace, or None if it has none."""
        index, ids = self._index, self.node_ids
        if len(index) < len(ids):  # (the nodes recorded since the last lookup)
            index.update(zip(ids[len(index) :], range(len(index), len(ids)), strict=True))
        return index.get(node_id)

    def _made_index(self, ref: OutputRef) -> int | None:
        """The index of the node of `ref` if this trace made this very ref for its first
        output (see `made`), else None."""
        try:
            j: int = ref._at
            return j if self.made[j] is ref else None
        except (AttributeError, IndexError):
            return None

    def _ref_index(self, ref: OutputRef) -> int | None:
        """The index of `ref`'s node in this trace (from the ref itself if the trace made it,
        else by id), or None if it has none."""
        j = self._made_index(ref)
        return self._node_index(ref.node) if j is None else j

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
            if self._node_index(value.id) is None or len(value.outputs) != 1:
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
        j = self._ref_index(ref)
        if j is None:
            raise self._foreign(node_id, ref)
        outputs = self.callees[j].outputs
        if ref.output not in outputs:
            raise GraphBuildError(
                f"node {node_id!r}: node {ref.node!r} has no output {ref.output!r}",
                code="unknown-output",
                hints=(f"its outputs are {list(outputs)}",),
            )
        deps[j] = None

    def _register(self, name: str, target: Any) -> _Callee:
        """Remember the callable behind `name` (its `_Callee`). A different one
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
        callee = self.known[name] = self.bind(_Callee.of(target, name, kind, self._ids(name)))
        return callee

    def call(
        self,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        map_param: str | None = None,
    ) -> NodeRef:
        """A tool call (or a nested graph call: a subgraph node) in the body: record a node
        and its plan (with `map_param`, the one node of a `map`: see `map`).

        Each argument is checked and filed into the node's plan arguments (`_plan.Args`);
        nothing else of the call is kept (its NodeSpec's arguments are made from them)."""
        name = target.name
        callee = self.known.get(name)
        names = tuple(kwargs)
        same = callee is not None and callee.target is target and names == callee.names
        if map_param is None:
            if args or not same:  # (a call with the names of the last one was checked)
                spec = target.spec
                if args or not spec.named or kwargs.keys() != spec.params:
                    kwargs = spec.bind(args, kwargs)  # else every input is given by name
                    names = tuple(kwargs)
                    same = False
                if callee is None or callee.target is not target:
                    callee = self._register(name, target)
            else:  # most calls: recorded by the generated code for their names and kinds
                ref = callee.record(kwargs)  # type: ignore[union-attr]  # (same: not None)
                if ref is not None:
                    return ref
            assert callee is not None  # (registered, or the same as last time)
        else:  # a map node
            if callee is None or callee.target is not target:
                self._register(name, target)
            callee = self.bind(_Callee.of(target, name, "map", self._ids("map"), map_param))
            same = False
        node_id = next(callee.ids)
        node_args, deps = self._file(callee, names, same, kwargs, node_id)
        if map_param is not None:
            self.map_params[len(self.made)] = map_param
        return callee.finish(node_id, node_args, None, deps)

    def _file(
        self,
        callee: _Callee,
        names: tuple[str, ...],
        same: bool,
        kwargs: dict[str, Any],
        node_id: str,
    ) -> tuple[Args, Collection[int]]:
        """The general path of `call`: each argument checked and filed into the node's
        arguments tuple, with the nodes it depends on; the callee's shape and recorder kept
        for its next calls."""
        made_index = self._made_index
        deps: dict[int, None] = {}  # the nodes it depends on, by index
        xs: list[Any] = [None]  # the plan arguments: (shape, x1, ..., xn), see _plan
        code = 0  # their kinds (`_plan.arg_shape`)
        # Each argument checked and filed (`_prepare` and `classify`, inlined for constants,
        # and for output refs and lists of them that this trace made, found by identity:
        # each reads the slot of its node, the node's index); anything else, and any mistake,
        # takes the general path.
        for value in kwargs.values():
            vtype = type(value)
            if vtype in _ATOMS or value is None:
                xs.append(value)
                code <<= _KIND_BITS  # (CONST is 0)
                continue
            if vtype is OutputRef:
                j = made_index(value)
                if j is not None:
                    deps[j] = None
                    xs.append(j)
                    code = code << _KIND_BITS | SLOT
                    continue
            elif vtype is list:
                got: list[int] = []
                for item in value:
                    if type(item) is not OutputRef:
                        break
                    j = made_index(item)
                    if j is None:
                        break
                    deps[j] = None
                    got.append(j)
                else:
                    n = len(got)
                    if n == 1:  # (a fan-in of one: no list of slots)
                        xs += got
                        code = code << _KIND_BITS | GATHER1
                    elif 2 <= n <= 4:  # (see _plan.GATHER2)
                        xs += got
                        code = code << _KIND_BITS | (GATHER2 - 2 + n)
                    else:
                        xs.append(fan_in(got))
                        code = code << _KIND_BITS | GATHER
                    continue
            kind, x = classify(self._prepare(value, deps, node_id), self._slot_of)
            add_arg(xs, kind, x)
            code = code << _KIND_BITS | kind
        if code != callee.code or not same:
            callee.names, callee.code, callee.shape = names, code, arg_shape(names, code)
            flags = (callee.more, callee.first, callee.only)
            bind = recorder(names, code, flags) if callee.kind != "map" else None
            if bind is None:
                callee.record = _no_record
                self.records.pop(callee.target, None)
            else:
                callee.record = self.records[callee.target] = bind(self, callee)
        xs[0] = callee.shape
        return tuple(xs), deps

    def _slot_of(self, ref: OutputRef) -> int:
        j = self._ref_index(ref)
        assert j is not None  # (`_prepare` checked it)
        return output_slot(j, self.callees[j].outputs.index(ref.output), self.extra)

    def map(self, tool: Tool, items: Any, param: str, fixed: Mapping[str, Any]) -> NodeRef:
        """`trioflow.map(tool, items)` in the body: one node that fans out at run time."""
        return self.call(tool, (), {**fixed, param: items}, param)

    def plan(self, graph: TaskGraph) -> Plan:
        """The plan built with `graph`'s nodes (its trace was this one)."""
        callees = self.callees
        # (Comprehensions: an attribute read in one is cheaper than an `attrgetter` call.)
        return Plan(
            graph=graph,
            ids=self.node_ids,
            names=[c.name for c in callees],
            kinds=[c.plan_kind for c in callees],
            targets=[c.target for c in callees],
            args=self.args,
            dependents=self.dependents,
            indegree=self.indegree,
            fast=[c.fast for c in callees],
            executors=[c.executor for c in callees],
            extra=self.extra,
            initial=[UNSET] * (len(callees) + self.extra_slots),
            map_params=self.map_params,
        )


def _make_nodes(
    ids: list[str],
    callees: list[_Callee],
    args: list[Args],
    made: list[OutputRef | None],
    extra: dict[int, int],
) -> dict[str, NodeSpec]:
    """A traced graph's `NodeSpec`s, made from its trace's columns (what `graph.nodes` reads,
    once: see `lazy_nodes`).

    A node's arguments are read back from its plan arguments, in call order, with an output
    ref for each slot (the one the trace made, for a first output). Its dependencies are the
    nodes of the output refs in its arguments, in the order the trace met them (argument
    order, depth first), each once."""
    # The refs of the other outputs, by slot (see `_plan`), made once each here.
    refs: dict[int, OutputRef] = {}
    for j in extra:
        outputs = callees[j].outputs
        for k in range(1, len(outputs)):
            refs[output_slot(j, k, extra)] = make_output_ref(ids[j], outputs[k])

    def ref_at(slot: int) -> OutputRef:
        if slot < 0:
            return refs[slot]
        ref = made[slot]
        if ref is None:  # (an output the trace made no ref for: named `_x`, say)
            ref = made[slot] = make_output_ref(ids[slot], callees[slot].outputs[0])
        return ref

    nodes: dict[str, NodeSpec] = {}
    paused = gc.isenabled()
    if paused:  # the NodeSpecs live on with the graph: see `trace`
        gc.disable()
    try:
        for node_id, callee, node_args in zip(ids, callees, args, strict=True):
            values = spec_args(node_args, ref_at)
            deps: dict[str, None] = {}
            for value in values.values():
                if type(value) is OutputRef:
                    deps[value.node] = None
                elif type(value) not in _ATOMS and value is not None:
                    for ref in iter_refs(value):
                        if type(ref) is OutputRef:
                            deps[ref.node] = None
            node = _new(NodeSpec)
            _set_id(node, node_id)
            _set_tool(node, callee.name)
            _set_args(node, values)
            _set_deps(node, tuple(deps))
            _set_outputs(node, callee.outputs)
            _set_kind(node, callee.kind)
            _set_map_param(node, callee.map_param)
            _set_target(node, callee.path)
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
        made = len(tracer.made)
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
        tracer.unbind()
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
    lazy_nodes(
        graph,
        functools.partial(
            _make_nodes,
            graph._lowered.plan.ids,
            tracer.callees,
            tracer.args,
            tracer.made,
            tracer.extra,
        ),
    )
    return graph
