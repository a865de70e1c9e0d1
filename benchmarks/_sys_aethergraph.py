"""AetherGraph (PyPI `aethergraph`) running the suite's DAGs: its @graphify and its @graph_fn.

In a module of its own: AetherGraph validates the source file of every decorated graph at
decoration time (no for/while/try in graph bodies), so its graphs are built by helpers here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aethergraph as ag
from _workloads import Dag, Svc, burn, plan, value
from aethergraph.core.runtime.graph_runner import run_async
from aethergraph.runtime import register_context_service

# Its per-node INFO lines would be part of its time; a user would turn them off too.
logging.disable(logging.INFO)

Go = Any


@ag.tool(outputs=["v"], name="node")
async def node(i: int, xs: list[int], p: str = "") -> dict[str, int]:
    if p:
        s, c = plan(p, i)
        if s:
            await asyncio.sleep(s)
        if c:
            burn(c)
    return {"v": value(i, xs)}


@ag.tool(outputs=["v"], name="svc_node")
async def svc_node(i: int, xs: list[int], context: ag.NodeContext) -> dict[str, int]:
    return {"v": context.bench_svc().call_sync(i, xs)}


def trace(dag: Dag) -> Any:
    refs: list[Any] = []
    for i, ds in enumerate(dag.deps):
        p = dag.work(i)
        xs = [refs[d].v for d in ds]
        refs.append(svc_node(i=i, xs=xs) if p == "svc" else node(i=i, xs=xs, p=p))
    return refs[-1].v


async def graph_fn_body(dag: Dag, context: Any) -> int:
    vals = [0] * dag.n

    def call(i: int) -> Any:
        p = dag.work(i)
        xs = [vals[d] for d in dag.deps[i]]
        if p == "svc":  # immediate mode does not inject the context: pass the body's
            return svc_node(i=i, xs=xs, context=context)
        return node(i=i, xs=xs, p=p)

    for layer in dag.layers:
        results = await asyncio.gather(*(call(i) for i in layer))
        for i, r in zip(layer, results, strict=True):
            vals[i] = r["v"]
    return vals[-1]


def with_service(dag: Dag, main: Any) -> Go:
    def go() -> tuple[int, dict[str, Any]]:
        svc = Svc() if dag.profile == "svc" else None
        if svc is not None:
            register_context_service("bench_svc", svc)
        answer = asyncio.run(main())
        if svc is not None and svc.calls != dag.n - 2:
            raise AssertionError(f"service called {svc.calls} times, expected {dag.n - 2}")
        return answer, {}

    return go


def graphify_go(dag: Dag, cap: int) -> Go:
    @ag.graphify(name=f"bench_{time.monotonic_ns()}", inputs=[], outputs=["v"])
    def bench() -> Any:
        return {"v": trace(dag)}

    async def main() -> int:
        out = await run_async(bench(), {}, max_concurrency=cap)
        return int(out["v"])

    return with_service(dag, main)


def graph_fn_go(dag: Dag, cap: int) -> Go:
    @ag.graph_fn(name=f"bench_fn_{time.monotonic_ns()}", inputs=[], outputs=["v"])
    async def bench(*, context: ag.NodeContext) -> dict[str, int]:
        return {"v": await graph_fn_body(dag, context)}

    async def main() -> int:
        out = await run_async(bench, {}, max_concurrency=cap)
        return int(out["v"])

    return with_service(dag, main)
