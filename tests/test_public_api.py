"""The public surface changes only on purpose."""

from __future__ import annotations

import subprocess
import sys

import trioflow

PUBLIC = {
    "ConfigError", "ConfigTypeError", "ContextError", "DependencyFailed", "ErrorInfo",
    "GraphBuildError", "GraphFn", "Graphify", "InputRef", "NodeRef", "NodeSpec", "OutputRef",
    "TaskGraph", "graphify", "NodeContext", "NodeFailed", "NodeRecord", "NodeState",
    "Retry", "RunCancelled", "RunRecord", "RunResult", "Runtime", "ServiceError", "Tool",
    "TrioflowError", "current_context", "current_runtime", "gather", "graph_fn", "map",
    "open_runtime", "run", "run_async", "tool", "ChannelMessage", "MemoryEvent", "Service",
    "ServiceHandle", "ServiceState", "ServiceTask", "critical", "register_context_service",
    "service_task", "unregister_context_service", "FlowType", "task",
    "RunEvent", "Executor", "LoopExecutor", "ThreadExecutor", "Cache", "RateLimit",
}  # fmt: skip


def test_public_names() -> None:
    # ("@py_*" names come from pytest rewriting asserts in a plugin's distribution.)
    names = {n for n in dir(trioflow) if not n.startswith(("_", "@"))}
    modules = {"cli", "testing", "pytest_plugin"}
    assert names - modules == PUBLIC


def test_errors_form_one_hierarchy() -> None:
    for name in PUBLIC:
        obj = getattr(trioflow, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, trioflow.TrioflowError), name
    assert issubclass(trioflow.ConfigError, ValueError)
    assert issubclass(trioflow.ConfigTypeError, TypeError)


def test_import_starts_no_thread_and_opens_no_socket() -> None:
    code = (
        "import threading, socket\n"
        "opened = []\n"
        "class S(socket.socket):\n"
        "    def __init__(self, *a, **k):\n"
        "        opened.append(a); super().__init__(*a, **k)\n"
        "socket.socket = S\n"
        "import trioflow\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert opened == [], opened\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
