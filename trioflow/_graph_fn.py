"""`@graph_fn`: reactive graphs, plus the `gather` and `map` fan-outs used inside them.

A graph_fn body is ordinary async code. Every tool call it awaits becomes a node of the run,
gated by the run's capacity limiter; plain awaits are not nodes and are not capped. A graph_fn
awaited inside another run becomes a nested graph of that run and shares its limiter.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, overload

import attrs
import trio

from ._checks import (
    adopt_metadata,
    check_function,
    check_max_concurrency,
    check_name,
    check_names,
)
from ._context import FRAME, Frame, context_from_frame
from ._dispatch import call_graph_target
from ._errors import (
    ConfigError,
    ConfigTypeError,
    ContextError,
    NodeFailed,
    TrioflowError,
    is_run_failure,
)
from ._reactive import SEQUENCES
from ._runstate import RunState
from ._tool import (
    InputSpec,
    Tool,
    ToolCall,
    map_calls,
    normalize_outputs,
)
from ._trace import TRACER

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["GraphFn", "gather", "graph_fn", "map"]


@attrs.frozen(eq=False, slots=False)
class GraphFn:
    """A reactive graph: an async function whose awaited tool calls are scheduled nodes."""

    fn: Callable[..., Awaitable[Any]]
    name: str
    outputs: tuple[str, ...]
    max_concurrency: float | None = None
    spec: InputSpec = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "spec", InputSpec.of(self.fn, f"graph_fn {self.name!r}"))
        adopt_metadata(self, self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A subgraph node in a trace, a nested graph in a run, else a run of its own."""
        return call_graph_target(self, args, kwargs)

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        return self.spec.check(inputs)

    async def run_body(self, run: RunState, inputs: dict[str, Any], frame: Frame) -> Any:
        """Run the body in the current task with `frame` as its context."""
        ctx_param = self.spec.context_param
        try:
            if ctx_param is not None:
                result = await self.fn(**inputs, **{ctx_param: context_from_frame(frame)})
            else:
                result = await self.fn(**inputs)
            return normalize_outputs(f"graph_fn {self.name!r}", self.outputs, result)
        except Exception as exc:
            if isinstance(exc, TrioflowError) or is_run_failure(exc):
                raise
            if frame.graph_id == run.graph_id:
                # The top-level body is a node of the record when it fails, so that its
                # error is reported like any node's (also under on_error="collect").
                ledger = run.ledger
                idx = ledger.add(frame.node_id, self.name)
                ledger.start(idx)
                ledger.fail(idx, exc)
            raise NodeFailed(
                frame.node_id, self.name, f"graph {self.name!r} body failed: {exc!r}"
            ) from exc

    def tools(self) -> tuple[Tool, ...]:
        """Tools known before the run (none: a reactive graph discovers them as it runs)."""
        return ()


@overload
def graph_fn(fn: Callable[..., Awaitable[Any]], /) -> GraphFn: ...
@overload
def graph_fn(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: float | None = None,
) -> Callable[[Callable[..., Awaitable[Any]]], GraphFn]: ...
def graph_fn(
    fn: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: float | None = None,
) -> GraphFn | Callable[[Callable[..., Awaitable[Any]]], GraphFn]:
    """Declare an async function as a reactive graph.

    Every tool call it awaits is a node of the run, counted against its cap; plain awaits are
    not nodes.

    Args:
        name: The graph's name (default: the function's name).
        outputs: The names of what it returns (default `["result"]`).
        max_concurrency: Nodes at a time (default 4; a run's own `max_concurrency=` wins).

    Raises:
        ConfigError: A bad name, output list or cap.
        ConfigTypeError: The decorated object is not an `async def`.
    """
    out_names = ("result",) if outputs is None else check_names(outputs, "outputs")
    cap = None if max_concurrency is None else check_max_concurrency(max_concurrency)
    check_name(name, "@trioflow.graph_fn")

    def decorate(fn: Callable[..., Awaitable[Any]]) -> GraphFn:
        check_function(fn, "@trioflow.graph_fn")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigTypeError(
                f"@trioflow.graph_fn needs an async def, got {fn!r}; "
                "use @trioflow.graphify for a plain def traced into a static graph"
            )
        return GraphFn(fn=fn, name=name or fn.__name__, outputs=out_names, max_concurrency=cap)

    return decorate if fn is None else decorate(fn)


def _as_call(item: object) -> ToolCall | Callable[[], Awaitable[Any]]:
    if isinstance(item, ToolCall) or (callable(item) and not inspect.isawaitable(item)):
        return item
    if inspect.isawaitable(item):
        return lambda: item
    raise ConfigTypeError(
        f"gather() takes tool calls, awaitables or zero-argument async callables, got {item!r}"
    )


async def gather(*calls: Any) -> list[Any]:
    """Run calls concurrently and return their results in order.

    Tool calls run on at most `max_concurrency` workers (capacity is taken before a call
    starts); nested graph calls, awaitables and zero-argument async callables run beside them.

    Returns:
        The results in call order (a tool's output dict for each tool call).

    Raises:
        NodeFailed: Under `fail_fast`, the first failure, after the rest were cancelled;
            otherwise one failure bare, several as an `ExceptionGroup`.
        ConfigTypeError: An argument that is none of the above.
    """
    items: list[Any] = list(calls)
    del calls  # the list is the one reference: each call is freed once its node has run
    for i, item in enumerate(items):
        if type(item) is not ToolCall:
            items[i] = _as_call(item)
    frame = FRAME.get()
    if frame is not None:
        run: RunState = frame.run
        return await run.fan_out(frame, items)
    return await _plain_gather(items)


async def _plain_gather(items: list[ToolCall | Callable[[], Awaitable[Any]]]) -> list[Any]:
    """`gather` outside any run: a nursery, results in order, first failure cancels the rest."""
    results: list[Any] = [None] * len(items)
    failure: list[Exception] = []

    async def one(i: int, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[i] = await fn()
        except Exception as exc:
            failure.append(exc)
            nursery.cancel_scope.cancel(reason="a sibling failed")

    async with trio.open_nursery() as nursery:
        for i, fn in enumerate(items):
            if isinstance(fn, ToolCall):
                raise ContextError("a tool call was gathered outside the run that made it")
            nursery.start_soon(one, i, fn)
    if failure:
        raise failure[0]
    return results


def map_param(tool: Tool, param: str | None, fixed: Mapping[str, Any]) -> str:
    """The one input of `tool` that each mapped item is passed as."""
    spec = tool.spec
    unknown = sorted(set(fixed) - spec.params)
    if unknown:
        raise ConfigTypeError(
            f"map(): tool {tool.name!r} has no inputs {unknown}; its inputs are {spec.signature}"
        )
    if param is not None:
        if param not in spec.params:
            raise ConfigError(
                f"map(param={param!r}): tool {tool.name!r} has no such input; "
                f"its inputs are {sorted(spec.params)}"
            )
        free = spec.required - set(fixed) - {param}
        if free:
            raise ConfigError(f"map(): tool {tool.name!r} also needs {sorted(free)}; pass them")
        return param
    free_required = sorted(spec.required - set(fixed))
    free_all = sorted(spec.params - set(fixed))
    candidates = free_required if free_required else free_all
    if len(candidates) != 1:
        raise ConfigError(
            f"map(): cannot tell which input of tool {tool.name!r} takes the items "
            f"(candidates {candidates}); name it with param=..."
        )
    return candidates[0]


@attrs.frozen(eq=False)
class MapCall:
    """An awaitable streaming fan-out of one tool over items, inside a run."""

    tool: Tool
    items: Iterable[Any]
    param: str
    fixed: dict[str, Any]

    def __await__(self) -> Any:
        frame = FRAME.get()
        if frame is None:
            raise ContextError(f"map({self.tool.name!r}) was awaited outside its run")
        tool, param, fixed = self.tool, self.param, self.fixed
        run: RunState = frame.run
        items = self.items
        calls = map_calls(tool, items, param, fixed, run)
        return run.fan_out(frame, calls, type(items) in SEQUENCES).__await__()


def map(tool: Tool, items: Any, *, param: str | None = None, **fixed: Any) -> Any:
    """Fan a tool out over items: each item is passed as the tool's one free input.

    In a `graph_fn`, `await trioflow.map(...)` returns the output dicts in item order; items
    are pulled as capacity frees up, so a generator of a million items is never held at once.
    In a `graphify`, it returns a ref whose outputs are lists in item order.

    Args:
        tool: A `@trioflow.tool`.
        items: An iterable (graph_fn) or a ref to a list (graphify).
        param: The input each item is passed as, when more than one is free.
        **fixed: Inputs passed unchanged to every call.

    Raises:
        ConfigError: No single free input, or `param` names none.
        ConfigTypeError: `tool` is not a tool, or `fixed` names unknown inputs.
        ContextError: Awaited outside any run.
    """
    if not isinstance(tool, Tool):
        raise ConfigTypeError(f"map() takes a @trioflow.tool as its first argument, got {tool!r}")
    name = map_param(tool, param, fixed)
    tracer = TRACER.get()
    if tracer is not None:
        return tracer.map(tool, items, name, fixed)
    if FRAME.get() is None:
        raise ContextError(
            "trioflow.map() runs inside a run: call it from a @graph_fn body or a tool, "
            "or in a @graphify body"
        )
    return MapCall(tool, items, name, dict(fixed))
