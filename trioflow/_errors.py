"""The trioflow exception hierarchy.

Everything trioflow raises on its own account derives from `TrioflowError`. A user's exception is
never replaced: a failing node raises `NodeFailed` *from* the original, so `__cause__` holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._records import RunRecord

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "ContextError",
    "DependencyFailed",
    "GraphBuildAttributeError",
    "GraphBuildError",
    "GraphBuildTypeError",
    "GraphBuildValueError",
    "NodeFailed",
    "RemoteError",
    "RunCancelled",
    "ResumeMismatch",
    "ServiceError",
    "StoreError",
    "TrioflowError",
]


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> Any:
    """Unpickle a trioflow error without calling its `__init__` (whose signature varies)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class TrioflowError(Exception):
    """Base class of every error trioflow raises itself."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigError(TrioflowError, ValueError):
    """A bad argument value, raised before anything runs."""


class ConfigTypeError(TrioflowError, TypeError):
    """A wrong-typed argument (or a decorator on a non-function), raised before anything runs."""


class ContextError(TrioflowError, RuntimeError):
    """A node-only facility (`current_context()`, `Service.ctx()`) was used outside a node."""


class GraphBuildError(TrioflowError):
    """Tracing a `@graphify` body failed.

    `message` says what went wrong, `code` names the problem (`"shape-dependent"`,
    `"bad-call"`, ...), `hints` say what to do; `graph` and `where` (`file:line` in the body)
    locate it once the trace knows them. `str(exc)` puts them together.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        hints: Sequence[str] = (),
        graph: str | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hints = tuple(hints)
        self.graph = graph
        self.where = where

    def __str__(self) -> str:
        text = f"[{self.code}] "
        if self.graph is not None:
            text += f"tracing graph {self.graph!r}"
            text += f" at {self.where}: " if self.where else ": "
        text += self.message
        return "".join([text, *(f"\n  hint: {h}" for h in self.hints)])

    @property
    def hint(self) -> str:
        """The first hint (or an empty string)."""
        return self.hints[0] if self.hints else ""


class GraphBuildValueError(GraphBuildError, ConfigError):
    """A bad argument value met while tracing (code `"bad-call"`): a `GraphBuildError` with the
    graph and source line, and the `ConfigError` the same call raises outside a trace."""


class GraphBuildTypeError(GraphBuildError, ConfigTypeError):
    """A bad call met while tracing (code `"bad-call"`): a `GraphBuildError` with the graph and
    source line, and the `ConfigTypeError` the same call raises in a graph_fn."""


class GraphBuildAttributeError(GraphBuildError, AttributeError):
    """An attribute of a ref read while tracing (`vals.upper()`): a `GraphBuildError` (code
    `"value-op"`) that is still an `AttributeError`, so `hasattr()` keeps working."""


class _RunError(TrioflowError):
    """An error that leaves a run; `record` is filled in when it does."""

    record: RunRecord | None = None


def is_run_failure(exc: BaseException) -> bool:
    """A run error, or an exception group made only of run errors."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_run_failure(e) for e in exc.exceptions)
    return isinstance(exc, _RunError)


class NodeFailed(_RunError):
    """A node raised; the original exception is `__cause__`."""

    def __init__(self, node_id: str, tool: str, message: str | None = None) -> None:
        self.node_id = node_id
        self.tool = tool
        super().__init__(message or f"node {node_id!r} (tool {tool!r}) failed")


class DependencyFailed(_RunError):
    """An awaited output can never be produced because the node producing it failed."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        self.missing = tuple(missing)
        super().__init__(message)


class RunCancelled(_RunError):
    """The run's own `timeout=` expired; running nodes were cancelled."""


class ServiceError(TrioflowError):
    """A service could not be found, started, or used."""


class StoreError(TrioflowError):
    """A run store cannot be used: its file is corrupted, truncated, not a trioflow store, or
    written by an incompatible version; the message says which and what to do."""


class ResumeMismatch(TrioflowError):
    """`resume=True` found a stored run that does not match this one (graph, content hash or
    input values); nothing was reused. The message says what differs."""


class RemoteError(TrioflowError):
    """An exception raised in another process that could not come back as itself.

    It could not be pickled where it was raised, or not unpickled here. `type_name` is the
    qualified name of its class, `message` its `str()`, `remote_traceback` the formatted
    traceback from the worker; `str()` is `"TypeName: message"`.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(type_name, message, remote_traceback)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
