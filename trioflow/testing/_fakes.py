"""Fake and recording services: swap them in for real ones in tests.

`FakeService(submit="job-1", inspect_job=lambda job_id: {...})` answers the named methods with
canned values (or by calling the given function) and records every call with the node that
made it. `RecordingService(real)` wraps a real service and records the calls it forwards. Each
method keeps the kind the real one has: a sync method stays sync, an async one stays async
(for a fake, give `spec=` the real class to say which is which). Neither needs Hypothesis.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from .._context import FRAME
from .._services import Service

__all__ = ["Call", "FakeService", "RecordingService"]


@attrs.frozen
class Call:
    """One recorded call: method, arguments, and the id of the node that made it."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    node_id: str | None


def _node_id() -> str | None:
    frame = FRAME.get()
    return None if frame is None else frame.node_id


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's own __call__
    )


class _Recorder(Service):
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    def _recorded(self, method: str, target: Callable[..., Any], is_async: bool) -> Any:
        calls = self.calls
        if is_async:

            @functools.wraps(target)
            async def async_call(*args: Any, **kwargs: Any) -> Any:
                calls.append(Call(method, args, kwargs, _node_id()))
                result = target(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result

            return async_call

        @functools.wraps(target)
        def sync_call(*args: Any, **kwargs: Any) -> Any:
            calls.append(Call(method, args, kwargs, _node_id()))
            return target(*args, **kwargs)

        return sync_call


class FakeService(_Recorder):
    """A stand-in service whose methods return canned responses and record their calls.

    Each keyword names a method: a callable response is called with the method's arguments
    (it may be sync or async); anything else is returned as it is. `await fake(...)` (or
    `context.name(...)`) uses `__call__=`.

    Sync or async: with `spec=` (the real service's class or an instance) each method is sync
    or async as the spec's method of that name is, and a response for a method the spec does
    not have is refused. Without a spec every method is async, as most service methods are.
    """

    def __init__(self, spec: object = None, /, **responses: Any) -> None:
        super().__init__()
        if spec is not None:
            missing = sorted(n for n in responses if not callable(getattr(spec, n, None)))
            if missing:
                raise AttributeError(
                    f"{_name(spec)} has no method {', '.join(map(repr, missing))}; a fake with "
                    "spec= answers only the spec's methods"
                )
        self._spec = spec
        self._responses = responses

    def _kind(self, name: str, response: Any) -> bool:
        if self._spec is None:
            return True
        return _is_async(getattr(self._spec, name))

    def __getattr__(self, name: str) -> Any:
        responses = self.__dict__.get("_responses", {})
        if name not in responses:
            raise AttributeError(
                f"FakeService has no response for {name!r}; pass FakeService({name}=...)"
            )
        response = responses[name]
        target = response if callable(response) else (lambda *a, **k: response)
        return self._recorded(name, target, self._kind(name, response))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Sync or async as the spec's __call__ is; awaitable when there is no spec.
        return self.__getattr__("__call__")(*args, **kwargs)


class RecordingService(_Recorder):
    """Wraps a real service: forwards every method call to it and records the call.

    A method is sync or async exactly as the wrapped service's is; attributes that are not
    methods are passed through unrecorded.
    """

    def __init__(self, wrapped: object) -> None:
        super().__init__()
        self.wrapped = wrapped

    async def start(self) -> None:
        await super().start()
        start = getattr(self.wrapped, "start", None)
        if callable(start):
            result = start()
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        close = getattr(self.wrapped, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result
        await super().close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or "wrapped" not in self.__dict__:
            raise AttributeError(name)
        target = getattr(self.wrapped, name)
        return self._recorded(name, target, _is_async(target)) if callable(target) else target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = self.wrapped
        if not callable(target):
            raise TypeError(f"the wrapped {type(target).__name__} is not callable")
        return self._recorded("__call__", target, _is_async(target))(*args, **kwargs)


def _name(spec: object) -> str:
    return spec.__name__ if isinstance(spec, type) else type(spec).__name__
