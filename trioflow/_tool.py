"""`@tool`: a function declared as a unit of work, with outputs, a timeout and a retry policy.

A `Tool` is a spec. What calling it does depends on where the call is made: inside a run it
returns an awaitable `ToolCall` (awaiting it runs the tool as a scheduled node); while a
`@graphify` body is traced it returns a `NodeRef`; anywhere else it is the plain function.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import attrs

from ._cache import Cache
from ._checks import (
    adopt_metadata,
    check_function,
    check_name,
    check_names,
    check_seconds,
    closest,
    outputs_dict,
)
from ._context import FRAME, NodeContext
from ._errors import ConfigError, ConfigTypeError, ContextError
from ._ratelimit import check_rate_key
from ._trace import TRACER

__all__ = [
    "InputSpec",
    "Retry",
    "Tool",
    "ToolCall",
    "map_calls",
    "normalize_outputs",
    "tool",
]


def _check_attempts(_: object, __: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"Retry(attempts=...) must be an int >= 1 (it counts the first try), got {value!r}"
        )


def _check_backoff(_: object, __: object, value: object) -> None:
    if callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(
            "Retry(backoff=...) must be seconds >= 0 or a callable attempt -> seconds, "
            f"got {value!r}"
        )


def _to_exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else value
    if not isinstance(types, Iterable):
        raise ConfigTypeError(f"Retry(retry_on=...) must be exception classes, got {value!r}")
    result = tuple(types)
    for t in result:
        if not (isinstance(t, type) and issubclass(t, Exception)):
            raise ConfigTypeError(
                f"Retry(retry_on=...) must contain Exception subclasses, got {t!r}; "
                "cancellation and KeyboardInterrupt are never retried"
            )
    return result


@attrs.frozen
class Retry:
    """How often a failing node is tried again.

    `attempts` counts the first try. `backoff` is the pause in seconds before the next attempt,
    or a callable given the 1-based number of the attempt that just failed. Only exceptions in
    `retry_on` are retried; a per-attempt `timeout` expiry counts as an error.
    """

    attempts: int = attrs.field(default=3, validator=_check_attempts)
    backoff: float | Callable[[int], float] = attrs.field(default=0.0, validator=_check_backoff)
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_to_exception_types
    )

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after `failed_attempt` (1-based) failed."""
        backoff = self.backoff
        if not callable(backoff):
            return float(backoff)
        value = backoff(failed_attempt)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise TypeError(f"Retry(backoff=...) must give seconds (a number), got {value!r}")
        if value < 0:
            raise ValueError(f"Retry(backoff=...) must give seconds >= 0, got {value!r}")
        return float(value)


def _injects_context(param: inspect.Parameter) -> bool:
    ann = param.annotation
    if ann is NodeContext:
        return True
    if isinstance(ann, str) and ann.rsplit(".", 1)[-1] == "NodeContext":
        return True
    return param.name == "context"


_SIMPLE_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@attrs.frozen(eq=False)
class InputSpec:
    """The named inputs of a tool or graph function, read from its signature once."""

    owner: str
    signature: inspect.Signature
    context_param: str | None
    params: frozenset[str]
    required: frozenset[str]
    simple: bool
    # Every parameter can be passed by name and none is the context: a call by keywords alone
    # that names every input binds as its own `kwargs` (the tracer checks this inline).
    named: bool

    @classmethod
    def of(cls, fn: Callable[..., Any], owner: str) -> InputSpec:
        sig = inspect.signature(fn)
        ctx = next((p.name for p in sig.parameters.values() if _injects_context(p)), None)
        inputs = [p for p in sig.parameters.values() if p.name != ctx]
        simple = all(p.kind in _SIMPLE_KINDS for p in inputs)
        return cls(
            owner=owner,
            signature=sig.replace(parameters=inputs),
            context_param=ctx,
            params=frozenset(p.name for p in inputs),
            required=frozenset(p.name for p in inputs if p.default is inspect.Parameter.empty),
            simple=simple,
            named=simple and ctx is None,
        )

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map a call's arguments to input names; a bad call raises `ConfigTypeError` here."""
        if self.context_param is not None and self.context_param in kwargs:
            # Passing context=context explicitly is allowed; the node gets its own context.
            kwargs = {k: v for k, v in kwargs.items() if k != self.context_param}
        if not args and self.simple:
            keys = kwargs.keys()
            if keys <= self.params and self.required <= keys:
                return kwargs
        if self.simple:
            self._check_names(kwargs)
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigTypeError(
                f"bad call to {self.owner}: {exc}; its inputs are {self.signature}"
            ) from None
        if not self.simple:
            raise ConfigTypeError(
                f"{self.owner} takes *args/**kwargs or positional-only parameters, "
                "which cannot be scheduled as named inputs; give it named parameters"
            )
        return dict(bound.arguments)

    def _check_names(self, kwargs: Mapping[str, Any]) -> None:
        """A keyword that is not an input is reported by name, with the input it misspells."""
        unknown = [k for k in kwargs if k not in self.params]
        if not unknown:
            return
        free = self.params - kwargs.keys()
        named = []
        for key in unknown:
            guess = closest(key, free)
            named.append(f"{key!r} (did you mean {guess!r}?)" if guess else repr(key))
        raise ConfigTypeError(
            f"bad call to {self.owner}: no input named {', '.join(named)}; "
            f"its inputs are {self.signature}"
        )

    def check(self, inputs: Mapping[str, Any] | None, argument: str = "inputs") -> dict[str, Any]:
        """Validate a run's `inputs=` mapping: no unknown names, every required one given."""
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping):
            raise ConfigTypeError(
                f"{argument} must be a mapping of input name to value, got {inputs!r}"
            )
        unknown = sorted(k for k in inputs if k not in self.params)
        if unknown:
            raise ConfigError(
                f"unknown {argument} {unknown} for {self.owner}; it takes {sorted(self.params)}"
            )
        missing = sorted(self.required - inputs.keys())
        if missing:
            raise ConfigError(
                f"missing required {argument} {missing} for {self.owner}; "
                f"pass {argument}={{{', '.join(repr(m) + ': ...' for m in missing)}}}"
            )
        return dict(inputs)


@attrs.frozen(eq=False, slots=False)
class Tool:
    """A function declared as a node: its name, outputs, timeout, retry and resource limits.

    Build one with `@trioflow.tool` (or `Tool.build`); the derived fields are computed once,
    so that calls pay nothing for inspection.
    """

    fn: Callable[..., Any]
    name: str
    outputs: tuple[str, ...]
    timeout: float | None
    retry: Retry | None
    limits: tuple[str, ...]
    executor: str | None
    rate_limit: str | None
    rate_key: Callable[..., Hashable] | None
    cache: Cache | None
    spec: InputSpec = attrs.field(repr=False)
    is_async: bool = attrs.field(repr=False)
    context_param: str | None = attrs.field(repr=False)
    # Where attempts run: the `executor` key, else "loop" for async and "thread" for sync tools.
    executor_key: str = attrs.field(repr=False)
    # An async tool in the loop without context, timeout, retry, rate limit or cache: the
    # schedulers run it on their inlined fast path.
    plain: bool = attrs.field(repr=False)
    # One attempt with nothing around it (no context, timeout, retry, rate limit or cache): an
    # awaited call runs it on the executor directly (`_reactive.call_tool`).
    one_attempt: bool = attrs.field(repr=False)

    @classmethod
    def build(
        cls,
        fn: Callable[..., Any],
        *,
        name: str,
        outputs: tuple[str, ...],
        timeout: float | None = None,
        retry: Retry | None = None,
        limits: tuple[str, ...] = (),
        executor: str | None = None,
        rate_limit: str | None = None,
        rate_key: Callable[..., Hashable] | None = None,
        cache: Cache | None = None,
    ) -> Tool:
        """A tool for `fn`, its derived fields computed from the function's signature."""
        spec = InputSpec.of(fn, f"tool {name!r}")
        is_async = inspect.iscoroutinefunction(fn)
        key = executor or ("loop" if is_async else "thread")
        one_attempt = (
            spec.context_param is None
            and timeout is None
            and retry is None
            and rate_limit is None
            and cache is None
        )
        plain = is_async and key == "loop" and one_attempt
        made = cls(
            fn=fn,
            name=name,
            outputs=outputs,
            timeout=timeout,
            retry=retry,
            limits=limits,
            executor=executor,
            rate_limit=rate_limit,
            rate_key=rate_key,
            cache=cache,
            spec=spec,
            is_async=is_async,
            context_param=spec.context_param,
            executor_key=key,
            plain=plain,
            one_attempt=one_attempt,
        )
        adopt_metadata(made, fn)
        return made

    # -- calling -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = TRACER.get()
        if tracer is not None:
            if not args:
                record = tracer.records.get(self)
                if record is not None:
                    ref = record(kwargs)
                    if ref is not None:
                        return ref
            return tracer.call(self, args, kwargs)
        frame = FRAME.get()
        if frame is not None:
            spec = self.spec
            if args or not spec.named or kwargs.keys() != spec.params:
                kwargs = spec.bind(args, kwargs)  # (the common case, inlined: every input named)
            call = ToolCall(kwargs)  # the call is a copy of its inputs
            call.tool = self
            call.run = frame.run
            call.used = False
            return call
        return self.fn(*args, **kwargs)

    def invoke(self, inputs: Mapping[str, Any], context: NodeContext | None) -> Any:
        """Call the function with inputs (and the context, if it takes one)."""
        if self.context_param is not None:
            return self.fn(**inputs, **{self.context_param: context})
        return self.fn(**inputs)

    def normalize(self, result: Any) -> dict[str, Any]:
        """Turn a return value into the outputs dict, or raise naming what is wrong."""
        outputs = self.outputs
        if len(outputs) == 1 and type(result) is not dict:
            return {outputs[0]: result}  # the common case: one output, returned bare
        return normalize_outputs(f"tool {self.name!r}", outputs, result)


def normalize_outputs(owner: str, outputs: tuple[str, ...], result: Any) -> dict[str, Any]:
    """The outputs dict for a return value, by the one rule of `_checks.outputs_dict`."""
    return outputs_dict(owner, outputs, result)


class ToolCall(dict[str, Any]):
    """An awaitable call of a tool inside a run; awaiting it runs the tool as a node.

    A call *is* its inputs, a dict with the tool and the run beside: one object per call, not
    two, because each object the caller keeps is rescanned by every full collection of the
    cyclic GC while it builds a million calls for `gather`. It is compared and hashed by
    identity, and always true. Like a coroutine, a call that is never awaited (nor gathered)
    warns when it is dropped.
    """

    __slots__ = ("run", "tool", "used")
    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    tool: Tool
    run: object
    used: bool

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<ToolCall {self.tool.name}({', '.join(self)})>"

    def __await__(self) -> Any:
        self.used = True
        frame = FRAME.get()
        if frame is None or (self.run is not None and frame.run is not self.run):
            raise ContextError(
                f"a call of tool {self.tool.name!r} was awaited outside the run that made it"
            )
        run: Any = frame.run
        entry = run.on_executor.get(self.tool)  # (a tool of one attempt on an executor)
        if entry is not None:
            return run.call_on_executor(self, frame, entry).__await__()
        return run.call(self, frame).__await__()

    def __del__(self) -> None:
        if not self.used:
            warnings.warn(
                f"tool call {self!r} was never awaited: it did not run; "
                "await it, or pass it to trioflow.gather()",
                RuntimeWarning,
                stacklevel=1,
            )


def map_calls(
    tool: Tool, items: Iterable[Any], param: str, fixed: Mapping[str, Any], run: object
) -> Iterator[ToolCall]:
    """The calls of a `map`, made as they are pulled: `fixed` and each item as `param`."""
    for item in items:
        call = ToolCall(fixed)
        call[param] = item
        call.tool = tool
        call.run = run
        call.used = False
        yield call


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    fn: None = None,
    /,
    *,
    outputs: Sequence[str] | None = None,
    name: str | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    limits: Sequence[str] = (),
    executor: str | None = None,
    rate_limit: str | None = None,
    rate_key: Callable[..., Hashable] | None = None,
    cache: bool | Cache | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    outputs: Sequence[str] | None = None,
    name: str | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    limits: Sequence[str] = (),
    executor: str | None = None,
    rate_limit: str | None = None,
    rate_key: Callable[..., Hashable] | None = None,
    cache: bool | Cache | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a function (async, or sync to run in a worker thread) as a trioflow tool.

    Outside a run the tool is still the plain function; inside a run, calling it returns an
    awaitable call that runs it as a scheduled node.

    Args:
        outputs: The names of what it returns (default `["result"]`); a single output may be
            returned bare.
        name: The node name (default: the function's name).
        timeout: Seconds per attempt; an expiry is retried like an error.
        retry: A `trioflow.Retry`.
        limits: Runtime resource limiters the node must hold (`open_runtime(limits=...)`).
        executor: Where attempts run: `"loop"` (async default), `"thread"` (sync default),
            `"process"`, `"ray"` or a key of the runtime's or run's `executors=`.
        rate_limit: The name of a `trioflow.RateLimit` whose turn each attempt takes.
        rate_key: Called with the tool's inputs once per call; picks the rate bucket.
        cache: `True` or a `trioflow.Cache`: reuse stored outputs across runs (needs a store).

    Raises:
        ConfigError: A bad value (names, timeout, executor key, rate options).
        ConfigTypeError: A wrong type, or a decorated object that is not a function.
    """
    out_names = ("result",) if outputs is None else check_names(outputs, "outputs")
    seconds = check_seconds(timeout, "timeout")
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigTypeError(f"retry must be a trioflow.Retry, got {retry!r}")
    limit_keys = check_names(limits, "limits")
    check_name(name, "@trioflow.tool")
    if executor is not None and (not isinstance(executor, str) or not executor):
        raise ConfigError(
            f"executor must be a key like 'process' or 'ray' (a non-empty string), got {executor!r}"
        )
    if rate_limit is not None and (not isinstance(rate_limit, str) or not rate_limit):
        raise ConfigError(f"rate_limit must name a rate limit (a string), got {rate_limit!r}")
    if rate_key is not None:
        if not callable(rate_key):
            raise ConfigError(f"rate_key must be a callable (**inputs -> key), got {rate_key!r}")
        if rate_limit is None:
            raise ConfigError("rate_key= needs rate_limit=: name the rate limit it keys")
    if cache is True:
        cache_spec: Cache | None = Cache()
    elif cache is None or cache is False:
        cache_spec = None
    elif isinstance(cache, Cache):
        cache_spec = cache
    else:
        raise ConfigTypeError(f"cache must be True, False, None or a trioflow.Cache, got {cache!r}")

    def decorate(fn: Callable[..., Any]) -> Tool:
        check_function(fn, "@trioflow.tool")
        is_async = inspect.iscoroutinefunction(fn)
        if is_async and executor == "thread":
            raise ConfigError(
                f"tool {fn.__name__!r} is an async def: it cannot run on executor 'thread'; "
                "make it a plain def, or drop executor="
            )
        made = Tool.build(
            fn,
            name=name or fn.__name__,
            outputs=out_names,
            timeout=seconds,
            retry=retry,
            limits=limit_keys,
            executor=executor,
            rate_limit=rate_limit,
            rate_key=rate_key,
            cache=cache_spec,
        )
        if rate_key is not None:
            check_rate_key(made.name, rate_key, made.spec)
        return made

    return decorate if fn is None else decorate(fn)
