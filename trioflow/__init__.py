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
    RunCancelled as RunCancelled,
    ServiceError as ServiceError,
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
from ._ratelimit import RateLimit as RateLimit
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
    register_context_service as register_context_service,
    unregister_context_service as unregister_context_service,
)
from ._tool import Retry as Retry, Tool as Tool, tool as tool

__version__ = "0.1.0"
