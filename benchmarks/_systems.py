"""The systems the suite compares: hand-written floors, trioflow, and other engines.

Each system turns a `Dag` and a `max_concurrency` into a zero-argument `go()` that runs the
whole workflow (building the system's own graph from the dependency lists is part of the run)
and returns `(answer, extra)`. The cell runner (`_cell.py`) times `go()` in a fresh process.
Engines are imported only inside `prepare`, so listing the systems needs none of them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from _workloads import Dag, Svc, burn, plan, value

Go = Callable[[], tuple[int, dict[str, Any]]]
FAN_ONLY = frozenset({"W1", "W4", "W5", "W6"})


@dataclass(frozen=True)
class System:
    key: str
    label: str
    kind: str  # "floor" (hand-written), "trioflow", "engine"
    modules: tuple[str, ...]  # what must be importable; else the system is "skipped"
    prepare: Callable[[Dag, int], Go]
    workloads: frozenset[str] | None = None  # None: every workload
    max_n: int | None = None  # larger sizes are "skipped" (too slow to be worth a budget)
    rerun: bool = False  # also time a second run in the same process (graph reused)
    note: str = ""


def counters(deps: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    dependents: list[list[int]] = [[] for _ in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    return dependents, [len(ds) for ds in deps]


def check_calls(svc: Any, dag: Dag) -> None:
    if svc is not None and svc.calls != dag.n - 2:
        raise AssertionError(f"service called {svc.calls} times, expected {dag.n - 2}")


# -- Trio floors --------------------------------------------------------------------------------


async def trio_node(i: int, xs: list[int], p: str, svc: Any) -> int:
    if p:
        if p == "svc":
            return int(await svc.call(i, xs))
        s, c = plan(p, i)
        if s:
            await trio.sleep(s)
        if c:
            burn(c)
    return value(i, xs)


async def trio_service(*, task_status: trio.TaskStatus[Svc] = trio.TASK_STATUS_IGNORED) -> None:
    svc = Svc()
    await trio.lowlevel.checkpoint()
    task_status.started(svc)
    await trio.sleep_forever()


async def trio_with_service(dag: Dag, body: Callable[[Any], Any]) -> tuple[int, dict[str, Any]]:
    extra: dict[str, Any] = {}
    if dag.profile != "svc":
        return await body(None), extra
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        svc = await nursery.start(trio_service)
        extra["cold_s"] = time.perf_counter() - start
        answer = await body(svc)
        nursery.cancel_scope.cancel()
    check_calls(svc, dag)
    return answer, extra


async def trio_pool_run(dag: Dag, cap: int, svc: Any) -> int:
    """`cap` workers fed by a memory channel; a node is sent when its in-degree reaches 0."""
    deps = dag.deps
    n = len(deps)
    works = [dag.work(i) for i in range(n)]
    dependents, indegree = counters(deps)
    results = [0] * n
    remaining = n
    send, receive = trio.open_memory_channel[int](math.inf)
    for i in range(n):
        if not indegree[i]:
            send.send_nowait(i)

    async def worker() -> None:
        nonlocal remaining
        async for i in receive:
            results[i] = await trio_node(i, [results[d] for d in deps[i]], works[i], svc)
            for j in dependents[i]:
                indegree[j] -= 1
                if not indegree[j]:
                    send.send_nowait(j)
            remaining -= 1
            if not remaining:
                send.close()

    async with trio.open_nursery() as nursery:
        for _ in range(min(cap, n)):
            nursery.start_soon(worker)
    return results[-1]


async def trio_spawn_run(dag: Dag, cap: int, svc: Any) -> int:
    """One task per node, spawned when it is ready and a slot is free (capacity first)."""
    deps = dag.deps
    n = len(deps)
    works = [dag.work(i) for i in range(n)]
    dependents, indegree = counters(deps)
    results = [0] * n
    remaining = n
    limiter = trio.CapacityLimiter(cap)
    send, receive = trio.open_memory_channel[int](math.inf)
    for i in range(n):
        if not indegree[i]:
            send.send_nowait(i)

    async def node(i: int) -> None:
        nonlocal remaining
        try:
            results[i] = await trio_node(i, [results[d] for d in deps[i]], works[i], svc)
        finally:
            limiter.release_on_behalf_of(i)
        for j in dependents[i]:
            indegree[j] -= 1
            if not indegree[j]:
                send.send_nowait(j)
        remaining -= 1
        if not remaining:
            send.close()

    async with trio.open_nursery() as nursery:
        async for i in receive:
            await limiter.acquire_on_behalf_of(i)
            nursery.start_soon(node, i)
    return results[-1]


def trio_floor(run: Callable[[Dag, int, Any], Any]) -> Callable[[Dag, int], Go]:
    def prepare(dag: Dag, cap: int) -> Go:
        async def main() -> tuple[int, dict[str, Any]]:
            return await trio_with_service(dag, lambda svc: run(dag, cap, svc))

        return lambda: trio.run(main)

    return prepare


# -- asyncio floors -----------------------------------------------------------------------------


async def asyncio_node(i: int, xs: list[int], p: str, svc: Any) -> int:
    if p:
        if p == "svc":
            return int(await svc.call(i, xs))
        s, c = plan(p, i)
        if s:
            await asyncio.sleep(s)
        if c:
            burn(c)
    return value(i, xs)


async def asyncio_with_service(dag: Dag, body: Callable[[Any], Any]) -> tuple[int, dict[str, Any]]:
    extra: dict[str, Any] = {}
    if dag.profile != "svc":
        return await body(None), extra
    ready: asyncio.Future[Svc] = asyncio.get_running_loop().create_future()

    async def service() -> None:
        await asyncio.sleep(0)
        ready.set_result(Svc())
        await asyncio.Event().wait()

    start = time.perf_counter()
    task = asyncio.create_task(service())
    svc = await ready
    extra["cold_s"] = time.perf_counter() - start
    try:
        answer = await body(svc)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    check_calls(svc, dag)
    return answer, extra


async def asyncio_pool_run(dag: Dag, cap: int, svc: Any) -> int:
    deps = dag.deps
    n = len(deps)
    works = [dag.work(i) for i in range(n)]
    dependents, indegree = counters(deps)
    results = [0] * n
    remaining = n
    workers = min(cap, n)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        if not indegree[i]:
            queue.put_nowait(i)

    async def worker() -> None:
        nonlocal remaining
        while True:
            i = await queue.get()
            if i < 0:
                return
            results[i] = await asyncio_node(i, [results[d] for d in deps[i]], works[i], svc)
            for j in dependents[i]:
                indegree[j] -= 1
                if not indegree[j]:
                    queue.put_nowait(j)
            remaining -= 1
            if not remaining:
                for _ in range(workers):
                    queue.put_nowait(-1)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    return results[-1]


async def asyncio_spawn_run(dag: Dag, cap: int, svc: Any) -> int:
    deps = dag.deps
    n = len(deps)
    works = [dag.work(i) for i in range(n)]
    dependents, indegree = counters(deps)
    results = [0] * n
    slots = asyncio.Semaphore(cap)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        if not indegree[i]:
            queue.put_nowait(i)

    async def node(i: int) -> None:
        try:
            results[i] = await asyncio_node(i, [results[d] for d in deps[i]], works[i], svc)
        finally:
            slots.release()
        for j in dependents[i]:
            indegree[j] -= 1
            if not indegree[j]:
                queue.put_nowait(j)

    async with asyncio.TaskGroup() as group:
        for _ in range(n):
            i = await queue.get()
            await slots.acquire()
            group.create_task(node(i))
    return results[-1]


def asyncio_floor(run: Callable[[Dag, int, Any], Any]) -> Callable[[Dag, int], Go]:
    def prepare(dag: Dag, cap: int) -> Go:
        async def main() -> tuple[int, dict[str, Any]]:
            return await asyncio_with_service(dag, lambda svc: run(dag, cap, svc))

        return lambda: asyncio.run(main())

    return prepare


# -- trioflow (public API only) ------------------------------------------------------------------


def trioflow_tools() -> tuple[Any, Any]:
    import trioflow

    async def node(i: int, xs: list[int], p: str = "") -> int:
        if p:
            s, c = plan(p, i)
            if s:
                await trio.sleep(s)
            if c:
                burn(c)
        return value(i, xs)

    async def svc_node(i: int, xs: list[int], context: trioflow.NodeContext) -> int:
        return int(await context.bench_svc().call(i, xs))

    return (
        trioflow.tool(outputs=["v"], name="node")(node),
        trioflow.tool(outputs=["v"], name="svc_node")(svc_node),
    )


def trioflow_go(dag: Dag, cap: int, target: Any) -> Go:
    import trioflow

    async def main() -> tuple[int, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if dag.profile != "svc":
            out = await trioflow.run_async(target, max_concurrency=cap)
            return out["v"], extra

        @trioflow.service_task
        async def start_service() -> Svc:
            await trio.lowlevel.checkpoint()
            return Svc()

        async with trioflow.open_runtime():
            start = time.perf_counter()
            svc = await (await start_service())
            extra["cold_s"] = time.perf_counter() - start
            trioflow.register_context_service("bench_svc", svc)
            try:
                out = await trioflow.run_async(target, max_concurrency=cap)
            finally:
                trioflow.unregister_context_service("bench_svc")
        check_calls(svc, dag)
        return out["v"], extra

    return lambda: trio.run(main)


def trioflow_graphify(dag: Dag, cap: int) -> Go:
    import trioflow

    node, svc_node = trioflow_tools()
    deps = dag.deps

    def body() -> Any:
        refs: list[Any] = []
        for i, ds in enumerate(deps):
            p = dag.work(i)
            xs = [refs[d].v for d in ds]
            refs.append(svc_node(i=i, xs=xs) if p == "svc" else node(i=i, xs=xs, p=p))
        return refs[-1].v

    return trioflow_go(dag, cap, trioflow.graphify(name="bench", outputs=["v"])(body))


def trioflow_graph_fn(dag: Dag, cap: int) -> Go:
    """Layer by layer: one awaited call for a layer of one node, `gather` for wider layers."""
    import trioflow

    node, svc_node = trioflow_tools()
    deps = dag.deps

    async def body() -> int:
        vals = [0] * len(deps)

        def call(i: int) -> Any:
            p = dag.work(i)
            xs = [vals[d] for d in deps[i]]
            return svc_node(i=i, xs=xs) if p == "svc" else node(i=i, xs=xs, p=p)

        for layer in dag.layers:
            if len(layer) == 1:
                vals[layer[0]] = (await call(layer[0]))["v"]
                continue
            results = await trioflow.gather(*(call(i) for i in layer))
            for i, r in zip(layer, results, strict=True):
                vals[i] = r["v"]
        return vals[-1]

    return trioflow_go(dag, cap, trioflow.graph_fn(name="bench", outputs=["v"])(body))


def trioflow_map(dag: Dag, cap: int) -> Go:
    """Fan-outs only: the middle layer as one `trioflow.map` over the node index."""
    import trioflow

    node, svc_node = trioflow_tools()
    width = dag.n - 2

    async def body() -> int:
        src = (await node(i=0, xs=[]))["v"]
        items = range(1, width + 1)
        if dag.profile == "svc":
            mids = await trioflow.map(svc_node, items, param="i", xs=[src])
        else:
            mids = await trioflow.map(node, items, param="i", xs=[src], p=dag.profile)
        return int((await node(i=width + 1, xs=[m["v"] for m in mids]))["v"])

    return trioflow_go(dag, cap, trioflow.graph_fn(name="bench_map", outputs=["v"])(body))


# -- other engines (each in its own module, imported on use) -------------------------------------


def lazy(module: str, name: str) -> Callable[[Dag, int], Go]:
    def prepare(dag: Dag, cap: int) -> Go:
        import importlib

        return getattr(importlib.import_module(module), name)(dag, cap)  # type: ignore[no-any-return]

    return prepare


SYSTEMS: dict[str, System] = {
    s.key: s
    for s in [
        System(
            "trio-pool",
            "Trio: cap workers + memory channel",
            "floor",
            ("trio",),
            trio_floor(trio_pool_run),
        ),
        System(
            "trio-spawn",
            "Trio: task per node when ready",
            "floor",
            ("trio",),
            trio_floor(trio_spawn_run),
        ),
        System(
            "asyncio-pool",
            "asyncio: cap workers + Queue",
            "floor",
            (),
            asyncio_floor(asyncio_pool_run),
        ),
        System(
            "asyncio-spawn",
            "asyncio: task per node when ready",
            "floor",
            (),
            asyncio_floor(asyncio_spawn_run),
        ),
        System(
            "trioflow-graphify",
            "trioflow @graphify",
            "trioflow",
            ("trioflow",),
            trioflow_graphify,
            rerun=True,
            note="time includes tracing and lowering; `rerun` reuses the traced graph",
        ),
        System(
            "trioflow-graph_fn",
            "trioflow @graph_fn gather",
            "trioflow",
            ("trioflow",),
            trioflow_graph_fn,
            note="layer by layer: an awaited call per 1-node layer, gather per wider layer",
        ),
        System(
            "trioflow-map",
            "trioflow @graph_fn map",
            "trioflow",
            ("trioflow",),
            trioflow_map,
            workloads=FAN_ONLY,
        ),
        System(
            "aethergraph-graphify",
            "AetherGraph @graphify",
            "engine",
            ("aethergraph",),
            lazy("_sys_aethergraph", "graphify_go"),
            max_n=100_000,
            note="INFO logging off; per-node logging would add to its time",
        ),
        System(
            "aethergraph-graph_fn",
            "AetherGraph @graph_fn",
            "engine",
            ("aethergraph",),
            lazy("_sys_aethergraph", "graph_fn_go"),
            max_n=100_000,
            note="its graph_fn runs tools inline and ignores max_concurrency (all of a "
            "layer run at once with asyncio.gather)",
        ),
        System(
            "radical.asyncflow",
            "radical.asyncflow",
            "engine",
            ("radical.asyncflow",),
            lazy("_sys_engines", "asyncflow_go"),
            workloads=frozenset({"W1", "W2", "W3", "W4", "W5"}),
            max_n=100_000,
            note="LocalExecutionBackend on a ThreadPoolExecutor(max_workers=cap)",
        ),
        System(
            "dask",
            "Dask delayed (threads)",
            "engine",
            ("dask",),
            lazy("_sys_engines", "dask_go"),
            workloads=frozenset({"W1", "W2", "W3", "W4", "W5"}),
            max_n=100_000,
            note="dask.delayed, scheduler='threads', num_workers=cap; building the graph "
            "(an expression per delayed call in dask 2026) is most of its time",
        ),
        System(
            "prefect",
            "Prefect .submit",
            "engine",
            ("prefect",),
            lazy("_sys_engines", "prefect_go"),
            workloads=frozenset({"W1", "W2", "W3", "W4", "W5"}),
            max_n=10_000,
            note="tasks .submit()ted in a flow on ThreadPoolTaskRunner(max_workers=cap), "
            "its temporary local server; logging at WARNING",
        ),
    ]
}
