"""The public surface changes only on purpose."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import trioflow

PUBLIC = {
    "ConfigError", "ConfigTypeError", "ContextError", "DependencyFailed", "ErrorInfo",
    "GraphBuildError", "GraphFn", "Graphify", "InputRef", "NodeRef", "NodeSpec", "OutputRef",
    "TaskGraph", "graphify", "NodeContext", "NodeFailed", "NodeRecord", "NodeState",
    "Retry", "RunCancelled", "RunRecord", "RunResult", "Runtime", "ServiceError", "Tool",
    "TrioflowError", "current_context", "current_runtime", "gather", "graph_fn", "map",
    "open_runtime", "run", "run_async", "tool", "ChannelMessage", "MemoryEvent", "Service",
    "ServiceHandle", "ServiceState", "ServiceTask", "critical", "register_context_service",
    "service_task", "unregister_context_service", "isolated_services", "FlowType", "task",
    "ProcessExecutor", "RayExecutor", "RemoteError",
    "RunEvent", "Executor", "LoopExecutor", "ThreadExecutor", "Cache", "RateLimit",
    "MemoryStore", "ResumeMismatch", "RunInfo", "RunStore", "SQLiteStore", "StoreError",
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


def test_public_names_report_the_trioflow_module() -> None:
    for name in PUBLIC:
        obj = getattr(trioflow, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "trioflow", name  # tracebacks say trioflow.NodeFailed


def test_public_errors_pickle_as_trioflow_names() -> None:
    import pickle

    errors = [
        trioflow.ConfigError("bad"),
        trioflow.ConfigTypeError("bad type"),
        trioflow.ContextError("outside"),
        trioflow.ServiceError("no service"),
        trioflow.RunCancelled("timed out"),
        trioflow.NodeFailed("a_1", "a"),
        trioflow.DependencyFailed("gone", missing=["y"]),
        trioflow.GraphBuildError("len()", code="shape-dependent", hints=["h"], graph="g"),
    ]
    for error in errors:
        data = pickle.dumps(error, protocol=0)  # text: the class is named as module + name
        assert f"trioflow\n{type(error).__name__}".encode() in data, type(error)
        again = pickle.loads(data)
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert vars(again) == vars(error)


@pytest.mark.parametrize(
    "decorate",
    [
        lambda: trioflow.tool(name=""),
        lambda: trioflow.graph_fn(name=3),  # type: ignore[arg-type]
        lambda: trioflow.graphify(name=""),
        lambda: trioflow.service_task(name=""),
        lambda: trioflow.task(name=""),
        lambda: trioflow.task(name="", flow_type=trioflow.FlowType.SERVICE_TASK),
    ],
)
def test_every_decorator_checks_its_name_the_same_way(decorate: Any) -> None:
    with pytest.raises(trioflow.ConfigError, match=r"\(name=\.\.\.\) must be a non-empty string"):
        decorate()


def test_the_reference_page_lists_every_public_name() -> None:
    import pathlib
    import re

    page = (pathlib.Path(__file__).parent.parent / "docs" / "reference.md").read_text()
    listed = set(re.findall(r"^::: trioflow\.(\w+)$", page, re.M))
    names = {n for n in dir(trioflow) if not n.startswith(("_", "@"))}
    modules = {"cli", "testing", "pytest_plugin", "executors"}
    assert names - modules - listed == set()
