"""`trioflow graph` (draw a static graph) and `trioflow runs list|show|export` (read the store)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from ._cli_output import Messages
from ._cli_run import DEFAULT_STORE
from ._cli_target import UsageError, load_inputs, load_target
from ._errors import ConfigError, GraphBuildError, TrioflowError
from ._graph_fn import GraphFn
from ._progress import format_seconds
from ._records import NodeState, RunRecord

__all__ = ["command_graph", "command_runs"]

EXIT_USAGE = 2
_STATE_STYLE = {
    "DONE": "green",
    "FAILED": "bold red",
    "CANCELLED": "yellow",
    "SKIPPED": "dim",
    "RUNNING": "cyan",
    "PENDING": "dim",
}


def _fail(message: str, hint: str) -> int:
    Messages().error(message, hint)
    return EXIT_USAGE


def _stdout() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log or a pipe: do not squeeze the tables to 80 columns
        console = Console(highlight=False, width=160)
    return console


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# -- trioflow graph -----------------------------------------------------------------------------


def command_graph(args: argparse.Namespace) -> int:
    try:
        graph = load_target(args.target)
        inputs = load_inputs(args.input, args.inputs)
        if isinstance(graph, GraphFn):
            raise UsageError(
                f"{args.target} is a @graph_fn: its graph is discovered as it runs",
                "draw a @graphify graph, or run it and look at trioflow runs show RUN_ID",
            )
        try:
            task_graph = graph.compile(**{**graph.defaults, **inputs})
        except GraphBuildError as exc:
            hint = exc.hint or "see the trioflow graphify docs"
            first = str(exc).splitlines()[0]
            raise UsageError(f"building the graph failed: {first}", hint) from exc
        except ConfigError as exc:
            hint = "pass the graph's inputs with --input NAME=VALUE or --inputs FILE.json"
            raise UsageError(str(exc), hint) from exc
    except UsageError as exc:
        return _fail(exc.message, exc.hint)
    if args.format == "mermaid":
        text = task_graph.to_mermaid()
    elif args.format == "dot":
        text = task_graph.to_dot()
    else:
        text = json.dumps(task_graph.to_dict(), indent=2) + "\n"
    print(text, end="")
    return 0


# -- trioflow runs ------------------------------------------------------------------------------


def _open_store(path: str | None) -> Any:
    """The store at `path`, or None when there is no such file (reading never creates one)."""
    path = path or DEFAULT_STORE
    if not Path(path).is_file():
        return None
    from . import SQLiteStore

    return SQLiteStore(path)


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


def _duration(start: Any, end: Any) -> str:
    if start is None or end is None:
        return "-"
    delta = end - start
    seconds = delta.total_seconds() if hasattr(delta, "total_seconds") else float(delta)
    return format_seconds(seconds)


def _state(state: Any) -> str:
    text = str(getattr(state, "value", state))
    return f"[{_STATE_STYLE.get(text, '')}]{text}[/]"


def _load(store: Any, run_id: str) -> RunRecord | None:
    try:
        record: RunRecord = store.load(run_id)
    except KeyError:
        return None
    return record


def command_runs(args: argparse.Namespace) -> int:
    path = args.store or DEFAULT_STORE
    try:
        store = _open_store(args.store)
    except (OSError, TrioflowError) as exc:
        return _fail(f"cannot read the run store {path}: {exc}", "give --store PATH of a run store")
    try:
        if args.runs_command == "list":
            return _list(store, path)
        if store is None:
            return _fail(
                f"no run {args.run_id!r}: there is no run store at {path}",
                "run a graph first (trioflow run ...), or give --store PATH",
            )
        record = _load(store, args.run_id)
        if record is None:
            known = [info.run_id for info in store.runs()][-3:]
            return _fail(
                f"no run {args.run_id!r} in {path}",
                f"recent runs: {', '.join(known)}" if known else "the store has no runs yet",
            )
        if args.runs_command == "export":
            print(json.dumps(record.to_dict(), indent=2, default=str))
            return 0
        info = next((i for i in store.runs() if i.run_id == args.run_id), None)
        _show(record, info, path)
        return 0
    finally:
        _close(store)


def _list(store: Any, path: str) -> int:
    console = _stdout()
    infos = [] if store is None else list(store.runs())
    if not infos:
        Messages().say(f"no runs in {path}")
        return 0
    from rich.table import Table

    infos.sort(key=lambda i: (i.started_at is None, i.started_at or 0))
    table = Table(title=f"runs in {path}", title_justify="left", box=None, header_style="bold")
    for column in ("run id", "graph", "state", "started", "duration"):
        table.add_column(column, no_wrap=column != "graph")
    table.add_column("done", justify="right")
    table.add_column("failed", justify="right")
    for info in infos:
        try:
            record = store.load(info.run_id)
        except KeyError:  # pragma: no cover - listed runs are loadable
            record = None
        states = record.states().values() if record is not None else []
        done = sum(1 for s in states if s is NodeState.DONE)
        failed = sum(1 for s in states if s is NodeState.FAILED)
        table.add_row(
            escape(info.run_id),
            escape(str(info.graph)),
            _state(info.state),
            _when(info.started_at),
            _duration(info.started_at, info.finished_at),
            f"{done}/{len(states)}",
            f"[red]{failed}[/]" if failed else "0",
        )
    console.print(table)
    return 0


def _show(record: RunRecord, info: Any, path: str) -> None:
    console = _stdout()
    state = _state(info.state) if info is not None else "-"
    started = info.started_at if info is not None else None
    finished = info.finished_at if info is not None else None
    console.print(
        f"[bold]run {escape(record.run_id)}[/] of [bold]{escape(record.graph_id)}[/]: {state} · "
        f"started {_when(started)} · took {_duration(started, finished)} · {escape(path)}"
    )
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("tool")
    table.add_column("state")
    table.add_column("attempts", justify="right")
    table.add_column("time", justify="right")
    table.add_column("cached")
    table.add_column("error", overflow="fold")
    for node_id, node in record.nodes.items():
        error = node.error
        table.add_row(
            escape(node_id),
            escape(node.tool),
            _state(node.state),
            str(node.attempts),
            _duration(node.started_at, node.finished_at) if node.attempts else "-",
            "yes" if getattr(node, "cached", False) else "",
            escape(f"{error.type}: {error.message}") if error is not None else "",
        )
    console.print(table)
    counts: dict[str, int] = {}
    for node in record.nodes.values():
        counts[node.state.value] = counts.get(node.state.value, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no nodes"
    console.print(f"{len(record.nodes)} nodes: {summary}")
