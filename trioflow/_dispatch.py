"""What calling a graph means where it is called.

In a `@graphify` trace, a subgraph node; inside a run, an awaitable nested graph; anywhere else,
a coroutine that runs the graph as a run of its own. `@graph_fn` and `@graphify` objects share
this one dispatch; it sits above the runtime, so nothing below it needs to know about runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from ._context import FRAME
from ._errors import ContextError
from ._runstate import GraphTarget
from ._runtime import run_async
from ._tool import InputSpec
from ._trace import TRACER

__all__ = ["CallableGraph", "GraphCall", "call_graph_target"]


class CallableGraph(GraphTarget, Protocol):
    @property
    def spec(self) -> InputSpec: ...

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]: ...


@attrs.frozen(eq=False)
class GraphCall:
    """An awaitable call of a graph inside a run: awaiting it runs the nested graph."""

    target: GraphTarget
    inputs: dict[str, Any]
    run: Any

    def __await__(self) -> Any:
        frame = FRAME.get()
        if frame is None or frame.run is not self.run:
            raise ContextError(
                f"a call of graph {self.target.name!r} was awaited outside the run that made it"
            )
        return frame.run.call_graph(self.target, self.inputs, frame).__await__()


def call_graph_target(target: CallableGraph, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A subgraph node in a trace, a nested graph in a run, else a run of its own."""
    tracer = TRACER.get()
    if tracer is not None:
        return tracer.call(target, args, kwargs)
    inputs = target.check_inputs(target.spec.bind(args, kwargs))
    frame = FRAME.get()
    if frame is not None:
        return GraphCall(target, inputs, frame.run)
    return run_async(target, inputs)
