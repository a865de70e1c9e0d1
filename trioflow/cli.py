"""The `trioflow` command (also `python -m trioflow`).

- `trioflow run TARGET ...` runs a graph with live progress and stores it (`.trioflow/runs.db`);
- `trioflow graph TARGET --format mermaid|dot|json` draws a static graph;
- `trioflow runs list|show|export` reads stored runs;
- `trioflow demo` runs the example graphs end to end.

Exit codes: 0 done; 1 a node failed (or the run timed out); 2 bad usage; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from . import __version__, _graph_fn, _graphify, _tool
from ._cli_run import DEFAULT_STORE, add_input_arguments, add_run_arguments, command_run
from ._cli_runs import command_graph, command_runs
from ._runtime import run

__all__ = ["main"]


@_tool.tool(outputs=["y"])
async def shout(x: str) -> str:
    await trio.sleep(0.01)
    return x.upper()


@_tool.tool(outputs=["total"])
def total_length(ys: list[str]) -> int:
    return sum(len(y) for y in ys)


@_graph_fn.graph_fn(name="demo_batch", outputs=["ys", "total"], max_concurrency=4)
async def demo_batch(items: list[str]) -> dict[str, Any]:
    results = await _graph_fn.gather(*(shout(x=v) for v in items))
    ys = [r["y"] for r in results]
    return {"ys": ys, "total": (await total_length(ys=ys))["total"]}


@_tool.tool(outputs=["out"])
async def double(x: int) -> int:
    return x * 2


@_tool.tool(outputs=["sum"])
async def reduce_sum(xs: list[int]) -> int:
    return sum(xs)


@_graphify.graphify(name="demo_map_reduce", inputs=["vals"], outputs=["sum"])
def demo_map_reduce(vals: Any) -> Any:
    outs = [double(x=vals[i]) for i in range(len(vals))]  # fan-out
    return {"sum": reduce_sum(xs=[o.out for o in outs]).sum}  # fan-in


def demo() -> int:
    items = ["structured", "concurrency", "for", "workflows"]
    result = run(demo_batch, inputs={"items": items}, record=True)
    print(f"graph_fn demo_batch({items})")
    print(f"  outputs: {result.outputs}")
    for node_id, node in result.record.nodes.items():
        took = (node.finished_at or 0.0) - (node.started_at or 0.0)
        print(f"  {node_id:16} {node.state.value:9} {took * 1000:7.2f} ms")
    vals = [1, 2, 3, 4]
    graph = demo_map_reduce.compile(vals=vals)
    print(f"graphify demo_map_reduce(vals={vals}): {len(graph.nodes)} nodes")
    print(graph.to_mermaid().rstrip())
    print(f"  outputs: {run(demo_map_reduce, inputs={'vals': vals})}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioflow",
        description="trioflow: run and inspect structured-concurrency workflows.",
        epilog="Exit codes: 0 done; 1 a node failed or the run timed out; 2 bad usage; "
        "130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"trioflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_p = sub.add_parser(
        "run",
        help="run a graph with live progress, stored in .trioflow/runs.db",
        description="Run the graph TARGET (path/to/file.py:name or package.module:name). "
        "A VALUE is JSON, or a plain string when it is not JSON and does not start with "
        '{, [ or ".',
    )
    add_run_arguments(run_p)

    graph_p = sub.add_parser("graph", help="print a @graphify graph as Mermaid, DOT or JSON")
    graph_p.add_argument("target", metavar="TARGET", help="path/to/file.py:name or module:name")
    add_input_arguments(graph_p)
    graph_p.add_argument("--format", "-f", choices=("mermaid", "dot", "json"), default="mermaid")

    runs_p = sub.add_parser("runs", help="list, show or export stored runs")
    runs_sub = runs_p.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    store_help = f"the run store (default: {DEFAULT_STORE})"
    list_p = runs_sub.add_parser("list", help="the stored runs, oldest first")
    list_p.add_argument("--store", metavar="PATH", help=store_help)
    show_p = runs_sub.add_parser("show", help="a stored run's nodes as a table")
    show_p.add_argument("run_id", metavar="RUN_ID")
    show_p.add_argument("--store", metavar="PATH", help=store_help)
    export_p = runs_sub.add_parser("export", help="a stored run's record as JSON")
    export_p.add_argument("run_id", metavar="RUN_ID")
    export_p.add_argument("--store", metavar="PATH", help=store_help)

    sub.add_parser("demo", help="run the example graphs end to end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse `argv` (default `sys.argv[1:]`), run a command, return its
    exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "graph":
            return command_graph(args)
        if args.command == "runs":
            return command_runs(args)
        return demo()
    except KeyboardInterrupt:  # before or after a run (a run handles its own Ctrl-C)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
