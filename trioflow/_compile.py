"""Tracing a `@graphify` body into a `TaskGraph` (no Trio here).

The body runs once with refs for its inputs; every tool call returns a `NodeRef` and is recorded
as a node. When the input values are known (at run time, or `graph.compile(vals=[...])`),
`len()`, iteration and `bool()` of an input ref use the real value, so a graph whose shape
depends on its inputs is built correctly. When they are not known, those operations raise
`GraphBuildError` instead of building a silently wrong graph.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from ._errors import ConfigError, ConfigTypeError, GraphBuildError
from ._graph import InputRef, NodeKind, NodeSpec, OutputRef, TaskGraph, _project
from ._tool import TRACER, Tool

__all__ = ["NodeRef", "Tracer", "trace"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@attrs.define(eq=False)
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


def _target_path(obj: Any) -> str:
    fn = getattr(obj, "fn", obj)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or "<locals>" in qualname:
        return ""
    return f"{module}:{qualname}"


@attrs.define(eq=False)
class Tracer:
    """Records the calls a graphify body makes."""

    name: str
    inputs: tuple[str, ...]
    values: Mapping[str, Any] | None
    nodes: dict[str, NodeSpec] = attrs.field(factory=dict)
    callables: dict[str, Any] = attrs.field(factory=dict)
    counters: dict[str, int] = attrs.field(factory=dict)
    paths: dict[str, str] = attrs.field(factory=dict)  # name → import path, computed once

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

    def _add(
        self,
        name: str,
        node_id: str,
        target: Any,
        args: dict[str, Any],
        kind: NodeKind,
        map_param: str | None = None,
    ) -> NodeRef:
        deps: dict[str, None] = {}
        prepare = self._prepare
        prepared = {key: prepare(v, deps, node_id) for key, v in args.items()}
        outputs: tuple[str, ...] = target.outputs
        if self.callables.get(name) is not target:
            self.callables[name] = target
            self.paths[name] = _target_path(target)
        self.nodes[node_id] = NodeSpec(
            id=node_id,
            tool=name,
            args=prepared,
            deps=tuple(deps),
            outputs=outputs,
            kind=kind,
            map_param=map_param,
            target=self.paths[name],
        )
        return NodeRef(node_id, outputs)

    def call(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NodeRef:
        """A tool call (or a nested graph call) in the body: record a node."""
        inputs = target.spec.bind(args, kwargs)
        kind: NodeKind = "tool" if isinstance(target, Tool) else "graph"
        name = target.name
        return self._add(name, self._new_id(name), target, inputs, kind)

    def map(self, tool: Tool, items: Any, param: str, fixed: dict[str, Any]) -> NodeRef:
        """`trioflow.map(tool, items)` in the body: one node that fans out at run time."""
        return self._add(
            tool.name, self._new_id("map"), tool, {**fixed, param: items}, "map", param
        )


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
) -> TaskGraph:
    """Run a graphify body once with refs for its inputs and return the recorded graph."""
    tracer = Tracer(name=name, inputs=inputs, values=values)
    token = TRACER.set(tracer)
    try:
        result = fn(**{n: InputRef(n) for n in inputs})
    except GraphBuildError as exc:
        where = _user_location(exc.__traceback__)
        message = str(exc).split("\n", 1)[0].removeprefix(f"[{exc.code}] ")
        raise GraphBuildError(
            f"tracing graph {name!r} at {where}: {message}", code=exc.code, hints=exc.hints
        ) from None
    except (ConfigError, ConfigTypeError) as exc:  # a bad call of a tool in the body
        where = _user_location(exc.__traceback__)
        raise GraphBuildError(
            f"tracing graph {name!r} at {where}: {exc}",
            code="bad-call",
            hints=("call each tool with its declared inputs, by name",),
        ) from exc
    finally:
        TRACER.reset(token)
    if len(outputs) == 1 and not (isinstance(result, dict) and outputs[0] in result):
        result = {outputs[0]: result}
    if not isinstance(result, dict):
        raise GraphBuildError(
            f"graph {name!r} returned {type(result).__name__}; return a dict of its outputs "
            f"{list(outputs)}",
            code="bad-outputs",
        )
    if set(result) != set(outputs):
        raise GraphBuildError(
            f"graph {name!r} returned outputs {sorted(result)} but declares {list(outputs)}",
            code="bad-outputs",
        )
    bindings = {out: tracer._prepare(result[out], {}, f"output {out}") for out in outputs}
    return TaskGraph(
        name=name,
        inputs=inputs,
        nodes=tracer.nodes,
        outputs=bindings,
        callables=tracer.callables,
    )
