"""What run events cost: a 10k-node static fan-out and a graph_fn map, without a listener and
with one that appends every event to a list, measured interleaved in one process.

Target (issue 8): no listener costs nothing measurable; a list-appending listener adds <= 1 µs
per node. `--smoke` runs tiny sizes and checks the answers.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from _harness import header

import trioflow


@trioflow.tool(outputs=["out"])
async def work(x: int) -> int:
    return x


@trioflow.tool(outputs=["total"])
async def total(xs: list[int]) -> int:
    return sum(xs)


def fan(n: int) -> trioflow.Graphify:
    @trioflow.graphify(name="fan", outputs=["total"])
    def g():  # type: ignore[no-untyped-def]
        return total(xs=[work(x=i).out for i in range(n)]).total

    return g


@trioflow.graph_fn(name="mapped", outputs=["total"])
async def mapped(n: int) -> int:
    return sum(r["out"] for r in await trioflow.map(work, range(n)))


def once(graph: Any, inputs: dict[str, Any], listener: Callable[..., None] | None) -> float:
    gc.collect()
    start = time.perf_counter()
    trioflow.run(graph, inputs=inputs, max_concurrency=64, on_event=listener)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n, repeat = (50, 1) if args.smoke else (args.n, args.repeat)
    header("run events: cost per node of no listener vs a list-appending listener")
    print(f"load average: {os.getloadavg()}")
    static = fan(n)
    static.compile()  # trace once, outside the timing
    for name, graph, inputs, nodes in [
        ("graphify fan-out", static, {}, n + 1),
        ("graph_fn map", mapped, {"n": n}, n),
    ]:
        events: list[trioflow.RunEvent] = []
        bare: list[float] = []
        heard: list[float] = []
        for _ in range(repeat):  # interleaved, so load drifts hit both alike
            bare.append(once(graph, inputs, None))
            events.clear()
            heard.append(once(graph, inputs, events.append))
        assert len(events) == 2 * nodes + 2, len(events)
        assert events[-1].state is trioflow.NodeState.DONE
        b, h = statistics.median(bare) / nodes * 1e6, statistics.median(heard) / nodes * 1e6
        print(f"\n{name} (n={nodes:,}, median of {repeat})")
        print(f"  no listener            {b:7.2f} us/node")
        print(f"  list.append listener   {h:7.2f} us/node   (+{h - b:.2f} us/node)")
    print(f"\nload average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
