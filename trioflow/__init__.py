"""trioflow: a structured-concurrency workflow engine for Trio.

Write plain async code: `@tool` functions become scheduled nodes, `@graph_fn` bodies become
reactive graphs under a concurrency cap, `@graphify` bodies are traced into static graphs, and
services live in the runtime's root nursery. Every task lives inside a nursery that a run or
the runtime owns.
"""

from ._builtins import ChannelMessage as ChannelMessage, MemoryEvent as MemoryEvent
from ._cache import Cache as Cache
from ._compile import NodeRef as NodeRef
from ._context import NodeContext as NodeContext, current_context as current_context
from ._errors import (
    ConfigError as ConfigError,
    ConfigTypeError as ConfigTypeError,
    ContextError as ContextError,
    DependencyFailed as DependencyFailed,
    GraphBuildError as GraphBuildError,
    NodeFailed as NodeFailed,
    RemoteError as RemoteError,
    ResumeMismatch as ResumeMismatch,
    RunCancelled as RunCancelled,
    ServiceError as ServiceError,
    StoreError as StoreError,
    TrioflowError as TrioflowError,
)
from ._events import RunEvent as RunEvent
from ._executor import (
    Executor as Executor,
    LoopExecutor as LoopExecutor,
    ThreadExecutor as ThreadExecutor,
)
from ._flow import FlowType as FlowType, task as task
from ._graph import (
    InputRef as InputRef,
    NodeSpec as NodeSpec,
    OutputRef as OutputRef,
    TaskGraph as TaskGraph,
)
from ._graph_fn import GraphFn as GraphFn, gather as gather, graph_fn as graph_fn, map as map
from ._graphify import Graphify as Graphify, graphify as graphify
from ._process import ProcessExecutor as ProcessExecutor
from ._ratelimit import RateLimit as RateLimit
from ._ray import RayExecutor as RayExecutor
from ._records import (
    ErrorInfo as ErrorInfo,
    NodeRecord as NodeRecord,
    NodeState as NodeState,
    RunRecord as RunRecord,
    RunResult as RunResult,
)
from ._runtime import (
    Runtime as Runtime,
    current_runtime as current_runtime,
    open_runtime as open_runtime,
    run as run,
    run_async as run_async,
)
from ._service_task import (
    ServiceHandle as ServiceHandle,
    ServiceState as ServiceState,
    ServiceTask as ServiceTask,
    service_task as service_task,
)
from ._services import (
    Service as Service,
    critical as critical,
    isolated_services as isolated_services,
    register_context_service as register_context_service,
    unregister_context_service as unregister_context_service,
)
from ._sqlite import SQLiteStore as SQLiteStore
from ._store import MemoryStore as MemoryStore, RunInfo as RunInfo, RunStore as RunStore
from ._tool import Retry as Retry, Tool as Tool, tool as tool

__version__ = "0.1.0"


def _claim_public_names() -> None:
    """Public classes and functions report `trioflow.X` (tracebacks, reprs, pickles), as Trio's
    names do. attrs classes resolve their string annotations first, in their own module."""
    import attrs

    for obj in list(globals().values()):
        if not (isinstance(obj, type) or callable(obj)) or isinstance(obj, type(attrs)):
            continue
        if not str(getattr(obj, "__module__", "")).startswith("trioflow._"):
            continue
        if isinstance(obj, type) and attrs.has(obj):
            attrs.resolve_types(obj)
        obj.__module__ = "trioflow"


_claim_public_names()
del _claim_public_names
