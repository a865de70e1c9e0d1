"""Fake and recording services: swap them in with `register_context_service` in tests.

`FakeService(submit="job-1", inspect_job=lambda job_id: {...})` answers the named methods with
canned values (or by calling the given function) and records every call with the node that
made it. `RecordingService(real)` wraps a real service and records the calls it forwards.
"""

from __future__ import annotations

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

    def _recorded(self, method: str, target: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(Call(method, args, kwargs, _node_id()))
            result = target(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call


class FakeService(_Recorder):
    """A stand-in service whose methods return canned responses and record their calls.

    Each keyword names a method: a callable response is called with the method's arguments
    (sync or async); anything else is returned as it is. `await fake(...)` uses `__call__=`.
    """

    def __init__(self, **responses: Any) -> None:
        super().__init__()
        self._responses = responses

    def __getattr__(self, name: str) -> Any:
        responses = self.__dict__.get("_responses", {})
        if name not in responses:
            raise AttributeError(
                f"FakeService has no response for {name!r}; pass FakeService({name}=...)"
            )
        response = responses[name]
        target = response if callable(response) else (lambda *a, **k: response)
        return self._recorded(name, target)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__getattr__("__call__")(*args, **kwargs)


class RecordingService(_Recorder):
    """Wraps a real service: forwards every method call to it and records the call."""

    def __init__(self, wrapped: object) -> None:
        super().__init__()
        self.wrapped = wrapped

    async def start(self) -> None:
        await super().start()
        start = getattr(self.wrapped, "start", None)
        if callable(start):
            await start()

    async def close(self) -> None:
        close = getattr(self.wrapped, "close", None)
        if callable(close):
            await close()
        await super().close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or "wrapped" not in self.__dict__:
            raise AttributeError(name)
        target = getattr(self.wrapped, name)
        return self._recorded(name, target) if callable(target) else target
