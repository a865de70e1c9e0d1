"""`@graphify`: a plain function traced into a static `TaskGraph`, then run by the scheduler.

A graph whose shape does not depend on its input values is traced once and reused. One whose
shape does (`len(vals)`) is traced again for each run, with the values known.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

import attrs

from ._checks import (
    adopt_metadata,
    check_function,
    check_max_concurrency,
    check_name,
    check_names,
)
from ._compile import trace
from ._context import Frame
from ._dispatch import call_graph_target
from ._errors import ConfigError, ConfigTypeError
from ._graph import TaskGraph
from ._runstate import RunState
from ._schedule import plan_for, run_plan
from ._tool import InputSpec, Tool

__all__ = ["Graphify", "graphify"]


@attrs.frozen(eq=False, slots=False)
class Graphify:
    """A static graph: its body is traced into a `TaskGraph` and lowered into one nursery."""

    fn: Callable[..., Any]
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_concurrency: float | None = None
    spec: InputSpec = attrs.field(init=False, repr=False)
    defaults: dict[str, Any] = attrs.field(init=False, repr=False)
    # The scheduler's cache of lowered plans (see `_schedule.plan_for`).
    plans: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        spec = InputSpec.of(self.fn, f"graphify {self.name!r}")
        object.__setattr__(self, "spec", spec)
        params = inspect.signature(self.fn).parameters
        object.__setattr__(
            self,
            "defaults",
            {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty},
        )
        adopt_metadata(self, self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A subgraph node in a trace, a nested graph in a run, else a run of its own."""
        return call_graph_target(self, args, kwargs)

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**self.defaults, **self.spec.check(inputs)}

    def compile(self, **inputs: Any) -> TaskGraph:
        """The `TaskGraph` for these input values (or, with none, for any values).

        With no inputs, a body whose shape depends on an input raises `GraphBuildError`
        (code `"shape-dependent"`).
        """
        if not inputs:
            return self.trace(None)
        unknown = sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise ConfigError(
                f"unknown inputs {unknown} for graphify {self.name!r}; it takes {list(self.inputs)}"
            )
        return self.trace({**self.defaults, **inputs})

    def trace(self, values: Mapping[str, Any] | None) -> TaskGraph:
        """Trace the body into a `TaskGraph` (with input values where they are known)."""
        return trace(
            self.fn,
            name=self.name,
            inputs=self.inputs,
            outputs=self.outputs,
            values=values,
            defaults=self.defaults,
        )

    async def run_body(self, run: RunState, inputs: dict[str, Any], frame: Frame) -> Any:
        return await run_plan(run, plan_for(self, inputs), inputs, frame)

    def tools(self) -> tuple[Tool, ...]:
        return ()


@overload
def graphify(fn: Callable[..., Any], /) -> Graphify: ...
@overload
def graphify(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: float | None = None,
) -> Callable[[Callable[..., Any]], Graphify]: ...
def graphify(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: float | None = None,
) -> Graphify | Callable[[Callable[..., Any]], Graphify]:
    """Declare a plain function as a static graph, traced into a `TaskGraph`.

    Inside the body, tool calls return refs (`ref.out` is an output). A body whose shape
    depends on an input's value is traced again with the values of each run.

    Args:
        name: The graph's name (default: the function's name).
        inputs: The graph's inputs (default: the function's parameters; must match them).
        outputs: The names of what it returns (default `["result"]`).
        max_concurrency: Nodes at a time (default 4; a run's own `max_concurrency=` wins).

    Raises:
        ConfigError: Bad names, inputs that do not match the parameters, a bad cap.
        ConfigTypeError: The decorated object is not a plain `def`.
        GraphBuildError: Later, when the body is traced (`compile()` or a run) and does
            something that cannot become a graph.
    """
    out_names = ("result",) if outputs is None else check_names(outputs, "outputs")
    in_names = None if inputs is None else check_names(inputs, "inputs")
    cap = None if max_concurrency is None else check_max_concurrency(max_concurrency)
    check_name(name, "@trioflow.graphify")

    def decorate(fn: Callable[..., Any]) -> Graphify:
        check_function(fn, "@trioflow.graphify")
        if inspect.iscoroutinefunction(fn):
            raise ConfigTypeError(
                f"@trioflow.graphify traces a plain def, got the async def {fn!r}; "
                "use @trioflow.graph_fn for async code"
            )
        params = list(inspect.signature(fn).parameters)
        declared = tuple(params) if in_names is None else in_names
        if set(declared) != set(params):
            raise ConfigError(
                f"@trioflow.graphify(inputs={list(declared)}) does not match the parameters "
                f"{params} of {fn.__name__}; name every parameter once"
            )
        return Graphify(
            fn=fn, name=name or fn.__name__, inputs=declared, outputs=out_names, max_concurrency=cap
        )

    return decorate if fn is None else decorate(fn)
