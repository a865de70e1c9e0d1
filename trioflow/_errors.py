"""The trioflow exception hierarchy.

Everything trioflow raises on its own account derives from `TrioflowError`. A user's exception is
never replaced: a failing node raises `NodeFailed` *from* the original, so `__cause__` holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._records import RunRecord

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "ContextError",
    "DependencyFailed",
    "GraphBuildError",
    "NodeFailed",
    "RemoteError",
    "RunCancelled",
    "ServiceError",
    "TrioflowError",
]


class TrioflowError(Exception):
    """Base class of every error trioflow raises itself."""


class ConfigError(TrioflowError, ValueError):
    """A bad argument value, raised before anything runs."""


class ConfigTypeError(TrioflowError, TypeError):
    """A wrong-typed argument (or a decorator on a non-function), raised before anything runs."""


class ContextError(TrioflowError, RuntimeError):
    """A node-only facility (`current_context()`, `Service.ctx()`) was used outside a node."""


class GraphBuildError(TrioflowError):
    """Tracing a `@graphify` body failed; `code` names the problem, `hints` say what to do."""

    def __init__(self, message: str, *, code: str, hints: Sequence[str] = ()) -> None:
        self.code = code
        self.hints = tuple(hints)
        text = f"[{code}] {message}"
        if self.hints:
            text += "\n" + "\n".join(f"  hint: {h}" for h in self.hints)
        super().__init__(text)

    @property
    def hint(self) -> str:
        """The first hint (or an empty string)."""
        return self.hints[0] if self.hints else ""


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

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.node_id, self.tool, str(self)))


class DependencyFailed(_RunError):
    """An awaited output can never be produced because the node producing it failed."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        self.missing = tuple(missing)
        super().__init__(message)


class RunCancelled(_RunError):
    """The run's own `timeout=` expired; running nodes were cancelled."""


class ServiceError(TrioflowError):
    """A service could not be found, started, or used."""


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
