"""The context of the node that is running: ids, attempt, and access to the runtime's services.

A node's identity lives in one contextvar (`FRAME`), set by the scheduler around each node body.
`NodeContext` objects are built from it on demand, so nodes that never ask for their context pay
nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._errors import ConfigError, ContextError, ServiceError

if TYPE_CHECKING:
    from ._builtins import ArtifactStore, Channel, KeyValueStore, NodeMemory
    from ._runtime import Runtime
    from ._slots import Slot

__all__ = ["FRAME", "Frame", "NodeContext", "ServiceAccess", "current_context"]

_log = logging.getLogger("trioflow.node")


class ServiceAccess(Protocol):
    """What a context needs from the runtime: services by name, and the built-ins."""

    def lookup_service(self, name: str) -> Any: ...

    def builtin(self, name: str, context: NodeContext) -> Any: ...


class RateTurn(Protocol):
    """What `context.rate_limit()` needs: the run's rate limits (see `_ratelimit`)."""

    async def turn(self, name: str, key: Hashable = None) -> float: ...


class RunLike(Protocol):
    run_id: str

    @property
    def services(self) -> ServiceAccess | None: ...
    @property
    def rates(self) -> RateTurn | None: ...


class Frame:
    """Where the current task is: which run, graph and node, and the capacity it holds."""

    __slots__ = ("attempt", "graph_id", "node_id", "run", "slot")

    def __init__(
        self, run: Any, graph_id: str, node_id: str, attempt: int, slot: Slot | None
    ) -> None:
        self.run = run
        self.graph_id = graph_id
        self.node_id = node_id
        self.attempt = attempt
        self.slot = slot


FRAME: ContextVar[Frame | None] = ContextVar("trioflow.frame", default=None)

RUNTIME: ContextVar[Runtime | None] = ContextVar("trioflow.runtime", default=None)
"""The runtime the current task runs in (set by `open_runtime`)."""


def current_runtime() -> Runtime | None:
    """The runtime the current task runs in, if any."""
    return RUNTIME.get()


class _NodeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra['run_id']}/{extra['node_id']}] {msg}", kwargs


@attrs.frozen
class NodeContext:
    """The running node's identity, and its door to the runtime.

    `context.<name>()` returns the service registered under `name`; the built-ins are
    `channel()`, `memory()`, `artifacts()`, `logger()` and `kv()`.
    """

    run_id: str
    graph_id: str
    node_id: str
    attempt: int = 1
    _services: ServiceAccess | None = attrs.field(
        default=None, alias="services", eq=False, repr=False
    )
    _rates: RateTurn | None = attrs.field(default=None, alias="rates", eq=False, repr=False)

    async def rate_limit(self, name: str, key: Hashable = None) -> float:
        """Wait for a turn of the run's rate limit `name` (its bucket `key`), like a tool with
        `rate_limit=name` does before each attempt; returns the seconds waited."""
        if self._rates is None:
            raise ConfigError(
                f"no rate limit named {name!r}: this context's run defines none; define it "
                f"with open_runtime(rate_limits={{{name!r}: trioflow.RateLimit(...)}}) or "
                "run(..., rate_limits=...)"
            )
        return await self._rates.turn(name, key)

    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A stdlib logger adapter whose records carry `run_id`, `graph_id` and `node_id`."""
        return _NodeLogger(
            _log, {"run_id": self.run_id, "graph_id": self.graph_id, "node_id": self.node_id}
        )

    def channel(self) -> Channel:
        """Messages out of the run: `await context.channel().send_text("...")`."""
        found: Channel = self._runtime_services("channel").builtin("channel", self)
        return found

    def memory(self) -> NodeMemory:
        """This run's append-only event log: `await context.memory().record(kind, data)`."""
        found: NodeMemory = self._runtime_services("memory").builtin("memory", self)
        return found

    def artifacts(self) -> ArtifactStore:
        """The content-addressed artifact store: `uri = await context.artifacts().put(b"..")`."""
        found: ArtifactStore = self._runtime_services("artifacts").builtin("artifacts", self)
        return found

    def kv(self) -> KeyValueStore:
        """The runtime's key-value store: `await context.kv().set(key, value)`."""
        found: KeyValueStore = self._runtime_services("kv").builtin("kv", self)
        return found

    def _runtime_services(self, name: str) -> ServiceAccess:
        if self._services is None:
            raise ServiceError(
                f"context.{name}() needs a runtime; this context was made outside any run"
            )
        return self._services

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._runtime_services(name).lookup_service(name)


def context_from_frame(frame: Frame) -> NodeContext:
    run: RunLike = frame.run
    return NodeContext(
        run_id=run.run_id,
        graph_id=frame.graph_id,
        node_id=frame.node_id,
        attempt=frame.attempt,
        services=run.services,
        rates=run.rates,
    )


def current_context() -> NodeContext:
    """The `NodeContext` of the node running in this task (or thread).

    Raises `ContextError` outside a node, e.g. at import time or in plain Trio code.
    """
    frame = FRAME.get()
    if frame is None:
        raise ContextError(
            "current_context() was called outside a trioflow node; call it from a @tool, "
            "a @graph_fn body or a service method invoked by one"
        )
    return context_from_frame(frame)
