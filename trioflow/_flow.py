"""`FlowType` and `@task`: the seed API's three modes, in one decorator.

- `FUNCTION_TASK`: a fresh call every time (a `@tool`).
- `SERVICE_TASK`: each call starts a service instance and returns its handle (`@service_task`).
- `AGENT_TOOL_AS_SERVICE`: a factory that returns a callable instance, run once per runtime on
  first use; the result is a tool whose inputs are the instance's call signature, and every
  call (across runs in the runtime) reuses the one instance, closed when the runtime closes.
"""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, overload

import attrs
import trio

from ._checks import check_function, check_name
from ._context import current_runtime
from ._errors import ConfigError, ConfigTypeError, ServiceError
from ._service_task import ServiceTask, service_task, teardown
from ._tool import Tool, tool

__all__ = ["FlowType", "task"]


class FlowType(enum.StrEnum):
    """How a `@task` runs: a fresh call, a started service, or a tool backed by one service."""

    FUNCTION_TASK = "FUNCTION_TASK"
    SERVICE_TASK = "SERVICE_TASK"
    AGENT_TOOL_AS_SERVICE = "AGENT_TOOL_AS_SERVICE"


@attrs.define(eq=False)
class _Shared:
    """The one instance of an agent tool in one runtime."""

    name: str
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    instance: Any = None
    started: bool = False

    async def aclose(self) -> None:
        if self.started:
            self.started = False
            await teardown(self.instance)


def _call_signature(factory: Callable[..., Any]) -> inspect.Signature:
    try:  # the factory's own closure resolves classes defined next to it
        local = dict(inspect.getclosurevars(factory).nonlocals)
        hints = typing.get_type_hints(factory, localns=local)
    except Exception:  # unresolvable annotations: fall through to the error below
        hints = {}
    cls = hints.get("return")
    mro = cls.__mro__[:-1] if isinstance(cls, type) else ()  # not object's
    call = next((k.__dict__["__call__"] for k in mro if "__call__" in k.__dict__), None)
    if call is None:
        raise ConfigTypeError(
            f"AGENT_TOOL_AS_SERVICE factory {factory.__name__!r} must annotate its return type "
            "with the instance's class (one with a __call__), so that the call signature "
            "becomes the tool's inputs"
        )
    params = list(inspect.signature(call).parameters.values())[1:]  # drop self
    return inspect.Signature(params)


def _agent_tool(
    factory: Callable[..., Awaitable[Any]], outputs: Sequence[str] | None, name: str | None
) -> Tool:
    if not inspect.iscoroutinefunction(factory):
        raise ConfigTypeError(f"an AGENT_TOOL_AS_SERVICE factory must be an async def: {factory!r}")
    signature = _call_signature(factory)
    key = object()

    async def call(**inputs: Any) -> Any:
        runtime = current_runtime()
        if runtime is None:
            raise ServiceError(f"agent tool {call.__name__!r} needs a runtime (call it in a run)")
        shared: _Shared = runtime.shared(key, functools.partial(_Shared, factory.__name__))
        async with shared.lock:
            if not shared.started:
                shared.instance = await factory()
                shared.started = True
        result = shared.instance(**inputs)
        return await result if inspect.isawaitable(result) else result

    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__name__ = call.__qualname__ = factory.__name__
    call.__doc__ = factory.__doc__
    call.__module__ = factory.__module__
    return tool(outputs=outputs, name=name or factory.__name__)(call)


@overload
def task(fn: Callable[..., Any], /) -> Tool: ...
@overload
def task(
    fn: None = None,
    /,
    *,
    flow_type: Literal[FlowType.SERVICE_TASK],
    outputs: None = None,
    name: str | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], ServiceTask[Any]]: ...
@overload
def task(
    fn: None = None,
    /,
    *,
    flow_type: Literal[
        FlowType.FUNCTION_TASK, FlowType.AGENT_TOOL_AS_SERVICE
    ] = FlowType.FUNCTION_TASK,
    outputs: Sequence[str] | None = None,
    name: str | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], Tool]: ...
def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    flow_type: FlowType = FlowType.FUNCTION_TASK,
    outputs: Sequence[str] | None = None,
    name: str | None = None,
    **options: Any,
) -> Any:
    """Declare a task of one of the three `FlowType`s (see the module docstring)."""
    if not isinstance(flow_type, FlowType):
        raise ConfigError(f"flow_type must be a trioflow.FlowType, got {flow_type!r}")
    check_name(name, "@trioflow.task")

    def decorate(fn: Callable[..., Any]) -> Any:
        check_function(fn, "@trioflow.task", allow_async_generators=True)
        if flow_type is FlowType.FUNCTION_TASK:
            return tool(outputs=outputs, name=name, **options)(fn)
        if flow_type is FlowType.SERVICE_TASK:
            if outputs is not None:
                raise ConfigError("a SERVICE_TASK has no outputs; it returns a service handle")
            return service_task(name=name, **options)(fn)
        if options:
            raise ConfigError(f"AGENT_TOOL_AS_SERVICE takes no options {sorted(options)}")
        return _agent_tool(fn, outputs, name)

    return decorate if fn is None else decorate(fn)
