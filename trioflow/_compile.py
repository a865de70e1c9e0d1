"""Tracing a `@graphify` body into a `TaskGraph` (no Trio here).

The body runs once with refs for its inputs; every tool call returns a `NodeRef` and is recorded
as a node. When the input values are known (at run time, or `graph.compile(vals=[...])`),
`len()`, iteration and `bool()` of an input ref use the real value, so a graph whose shape
depends on its inputs is built correctly. When they are not known, those operations raise
`GraphBuildError` instead of building a silently wrong graph; so do turning a ref into text, two
different tools under one name, and a graph that calls itself.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
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
from ._graph import InputRef, NodeKind, NodeSpec, OutputRef, TaskGraph, _project, ref_as_text
from ._trace import TRACER, called_from_user_code

if TYPE_CHECKING:
    from ._tool import Tool

__all__ = ["GraphTracer", "NodeRef", "trace"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@attrs.define(eq=False, repr=False)
class NodeRef:
    """A traced call: `ref.out` or `ref["out"]` is the `OutputRef` of output `out`."""

    id: str
    outputs: tuple[str, ...]

    def __getitem__(self, name: str) -> OutputRef:
        if name not in self.outputs:
            raise GraphBuildError(
                f"node {self.id!r} has no output {name!r}",
                code="unknown-output",
                hints=(f"its outputs are {list(self.outputs)}",),
            )
        return OutputRef(self.id, name)

    def __getattr__(self, name: str) -> OutputRef:
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


@attrs.define(eq=False)
class GraphTracer:
    """Records the calls a graphify body makes (the `Tracer` of `_trace`)."""

    name: str
    inputs: tuple[str, ...]
    values: Mapping[str, Any] | None
    nodes: dict[str, NodeSpec] = attrs.field(factory=dict)
    callables: dict[str, Any] = attrs.field(factory=dict)
    counters: dict[str, int] = attrs.field(factory=dict)
    # name → (callable, "tool" or "graph", import path): computed once per name
    known: dict[str, tuple[Any, NodeKind, str]] = attrs.field(factory=dict)

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

    def _prepare(self, value: Any, deps: dict[str, None], node_id: str) -> Any:
        """Validate an argument tree: refs belong to this trace; node refs become outputs.

        `node_id` names the node (or the output) being built, for error messages."""
        if value is None or isinstance(value, str | int | float | bool):
            return value
        if isinstance(value, NodeRef):
            if value.id not in self.nodes or len(value.outputs) != 1:
                raise GraphBuildError(
                    f"node {node_id!r}: a node ref was passed where a value is expected",
                    code="node-ref-not-a-value",
                    hints=(f"pass one of its outputs: ref.{value.outputs[0]}",)
                    if value.outputs
                    else (),
                )
            value = OutputRef(value.id, value.outputs[0])
        if isinstance(value, OutputRef):
            if value.node not in self.nodes:
                raise GraphBuildError(
                    f"node {node_id!r}: {value.describe()} does not belong to graph {self.name!r}",
                    code="foreign-ref",
                    hints=("refs cannot cross graphs; pass the value as a subgraph input",),
                )
            deps[value.node] = None
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

    def _register(self, name: str, target: Any) -> tuple[Any, NodeKind, str]:
        """Remember the callable behind `name`: `(target, kind, import path)`. A different one
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
        entry = self.known[name] = (target, kind, _target_path(target))
        return entry

    def _add(
        self,
        name: str,
        node_id: str,
        target: Any,
        args: Mapping[str, Any],
        kind: NodeKind | None = None,
        map_param: str | None = None,
    ) -> NodeRef:
        entry = self.known.get(name)
        if entry is None or entry[0] is not target:
            entry = self._register(name, target)
        deps: dict[str, None] = {}
        prepare = self._prepare
        prepared = {key: prepare(v, deps, node_id) for key, v in args.items()}
        outputs: tuple[str, ...] = target.outputs
        self.nodes[node_id] = NodeSpec(
            id=node_id,
            tool=name,
            args=prepared,
            deps=tuple(deps),
            outputs=outputs,
            kind=kind or entry[1],
            map_param=map_param,
            target=entry[2],
        )
        return NodeRef(node_id, outputs)

    def call(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NodeRef:
        """A tool call (or a nested graph call: a subgraph node) in the body: record a node."""
        inputs = target.spec.bind(args, kwargs)
        name = target.name
        return self._add(name, self._new_id(name), target, inputs)

    def map(self, tool: Tool, items: Any, param: str, fixed: Mapping[str, Any]) -> NodeRef:
        """`trioflow.map(tool, items)` in the body: one node that fans out at run time."""
        return self._add(
            tool.name, self._new_id("map"), tool, {**fixed, param: items}, "map", param
        )


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
    try:
        result = fn(**{n: InputRef(n) for n in inputs})
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
        _PROBES.reset(probes_token)
        TRACER.reset(token)
    try:
        result = outputs_dict(f"graph {name!r}", outputs, result)
    except (TypeError, ValueError) as exc:
        raise GraphBuildError(str(exc), code="bad-outputs", graph=name) from None
    bindings = {out: tracer._prepare(result[out], {}, f"output {out}") for out in outputs}
    return TaskGraph(
        name=name,
        inputs=inputs,
        nodes=tracer.nodes,
        outputs=bindings,
        defaults=dict(defaults or {}),
        callables=tracer.callables,
    )
