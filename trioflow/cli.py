"""`python -m trioflow demo`: run an example graph end to end and print what happened."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from . import _graph_fn, _graphify, _tool
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run an example graph end to end")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
