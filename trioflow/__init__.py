"""trioflow: a structured-concurrency workflow engine for Trio.

Write plain async code; `@tool` functions become scheduled nodes, `@graph_fn` bodies become
reactive graphs under a concurrency cap, and every task lives inside a nursery that a run or
the runtime owns.
"""

from ._compile import NodeRef as NodeRef
from ._context import NodeContext as NodeContext
from ._context import current_context as current_context
from ._errors import (
    ConfigError as ConfigError,
)
from ._errors import (
    ConfigTypeError as ConfigTypeError,
)
from ._errors import (
    ContextError as ContextError,
)
from ._errors import (
    DependencyFailed as DependencyFailed,
)
from ._errors import (
    GraphBuildError as GraphBuildError,
)
from ._errors import (
    NodeFailed as NodeFailed,
)
from ._errors import (
    RunCancelled as RunCancelled,
)
from ._errors import (
    ServiceError as ServiceError,
)
from ._errors import (
    TrioflowError as TrioflowError,
)
from ._graph import (
    InputRef as InputRef,
)
from ._graph import (
    NodeSpec as NodeSpec,
)
from ._graph import (
    OutputRef as OutputRef,
)
from ._graph import (
    TaskGraph as TaskGraph,
)
from ._graph_fn import GraphFn as GraphFn
from ._graph_fn import gather as gather
from ._graph_fn import graph_fn as graph_fn
from ._graph_fn import map as map
from ._graphify import Graphify as Graphify
from ._graphify import graphify as graphify
from ._records import (
    ErrorInfo as ErrorInfo,
)
from ._records import (
    NodeRecord as NodeRecord,
)
from ._records import (
    NodeState as NodeState,
)
from ._records import (
    RunRecord as RunRecord,
)
from ._records import (
    RunResult as RunResult,
)
from ._runtime import (
    Runtime as Runtime,
)
from ._runtime import (
    current_runtime as current_runtime,
)
from ._runtime import (
    open_runtime as open_runtime,
)
from ._runtime import (
    run as run,
)
from ._runtime import (
    run_async as run_async,
)
from ._tool import Retry as Retry
from ._tool import Tool as Tool
from ._tool import tool as tool

__version__ = "0.1.0"
