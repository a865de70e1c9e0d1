"""radical.asyncflow, Dask and Prefect running the suite's DAGs (each imported only here)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from _workloads import Dag, burn, plan, value

Go = Any


def sync_node(i: int, xs: list[int], p: str = "") -> int:
    if p:
        s, c = plan(p, i)
        if s:
            time.sleep(s)
        if c:
            burn(c)
    return value(i, xs)


# -- radical.asyncflow --------------------------------------------------------------------------


def asyncflow_go(dag: Dag, cap: int) -> Go:
    from concurrent.futures import ThreadPoolExecutor

    from radical.asyncflow import LocalExecutionBackend, WorkflowEngine

    async def main() -> int:
        backend = await LocalExecutionBackend(ThreadPoolExecutor(max_workers=cap))
        flow = await WorkflowEngine.create(backend=backend)
        try:

            @flow.function_task  # type: ignore[misc]
            async def node(i: int, p: str, *xs: int) -> int:
                if p:
                    s, c = plan(p, i)
                    if s:
                        await asyncio.sleep(s)
                    if c:
                        burn(c)
                return value(i, list(xs))

            futures: list[Any] = []
            for i, ds in enumerate(dag.deps):
                futures.append(node(i, dag.work(i), *[futures[d] for d in ds]))
            return int(await futures[-1])
        finally:
            await flow.shutdown()

    return lambda: (asyncio.run(main()), {})


# -- Dask ---------------------------------------------------------------------------------------


def dask_go(dag: Dag, cap: int) -> Go:
    import dask

    def go() -> tuple[int, dict[str, Any]]:
        nodes: list[Any] = []
        for i, ds in enumerate(dag.deps):
            xs = [nodes[d] for d in ds]
            nodes.append(dask.delayed(sync_node)(i, xs, dag.work(i), dask_key_name=f"n{i}"))
        (answer,) = dask.compute(nodes[-1], scheduler="threads", num_workers=cap)
        return int(answer), {}

    return go


# -- Prefect ------------------------------------------------------------------------------------


def prefect_go(dag: Dag, cap: int) -> Go:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    node = task(sync_node, name="node")

    @flow(name="bench", task_runner=ThreadPoolTaskRunner(max_workers=cap))  # type: ignore[misc]
    def bench() -> int:
        futures: list[Any] = []
        for i, ds in enumerate(dag.deps):
            futures.append(node.submit(i, [futures[d] for d in ds], dag.work(i)))
        return int(futures[-1].result())

    return lambda: (bench(), {})
