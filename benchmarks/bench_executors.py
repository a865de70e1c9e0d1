"""Executors: what trioflow adds to thread / process / Ray, and what processes buy for CPU work.

For each executor, the same trivial call three ways, all in one Trio run with the executors
already warm:
  - by hand: the executor driven directly from Trio (`trio.to_thread.run_sync`,
    trio-parallel's `run_sync`, a Ray object ref's future bridged into Trio with a TrioToken);
  - trioflow executor: `await executor.run(fn, ...)` (shipping wrapper and error transport);
  - trioflow node: a `@tool(executor=key)` awaited in a graph_fn (the whole node: ledger,
    events, capacity, shipping check).
Round trip = one call in flight (µs per call); throughput = 64 in flight (calls/s). Then a
CPU-bound graph (64 nodes x ~50 ms of pure Python) on "thread" vs "process", and the time from
cancel to return per executor. Each case checks its own answer.

    python benchmarks/bench_executors.py [--smoke]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from _harness import header

import trioflow


def noop(x: int) -> int:
    return x


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def sleep_loop(started: str, seconds: float) -> None:
    pathlib.Path(started).write_text("started")
    for _ in range(int(seconds / 0.01)):
        time.sleep(0.01)


def sleep_blocking(started: str, seconds: float) -> None:
    pathlib.Path(started).write_text("started")
    time.sleep(seconds)


async def per_call(call: Callable[[int], Awaitable[int]], n: int) -> float:
    """Seconds per call, one in flight."""
    start = time.perf_counter()
    for i in range(n):
        assert await call(i) == i
    return (time.perf_counter() - start) / n


async def throughput(call: Callable[[int], Awaitable[int]], n: int, width: int = 64) -> float:
    """Calls per second with `width` in flight."""
    limiter = trio.CapacityLimiter(width)
    got: list[int] = []

    async def one(i: int) -> None:
        async with limiter:
            got.append(await call(i))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire()  # capacity before spawn, as trioflow does
            limiter.release()
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - start
    assert sorted(got) == list(range(n))
    return n / elapsed


def ray_by_hand() -> Callable[[int], Awaitable[int]]:
    import ray

    remote_noop = ray.remote(max_retries=0)(noop)

    async def call(x: int) -> int:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = remote_noop.remote(x).future()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return int(future.result())

    return call


def node_caller(key: str) -> Callable[[int], Awaitable[int]]:
    tool = trioflow.tool(outputs=["y"], name=f"noop_{key}", executor=key)(noop)

    async def call(x: int) -> int:
        return int((await tool(x=x))["y"])

    return call


async def in_graph(body: Callable[[], Awaitable[Any]], max_concurrency: float = 64) -> Any:
    """Run `body` as a graph_fn (tool calls inside become nodes)."""

    @trioflow.graph_fn(name="bench", outputs=["out"], max_concurrency=max_concurrency)
    async def graph() -> Any:
        return await body()

    return (await trioflow.run_async(graph))["out"]


async def cancel_to_return(ex: Any, fn: Callable[..., None], seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = pathlib.Path(tmp, "started")
        scope = trio.CancelScope()
        returned: list[float] = []

        async def call() -> None:
            with scope:
                await ex.run(fn, str(started), seconds)
            returned.append(time.perf_counter())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            while not await trio.Path(started).exists():  # noqa: ASYNC110 - another process
                await trio.sleep(0.005)
            await trio.sleep(0.2)  # well inside the work
            began = time.perf_counter()
            scope.cancel()
        return returned[0] - began


async def main(args: argparse.Namespace) -> None:
    n1, n64, cpu_nodes = (5, 20, 4) if args.smoke else (args.n, args.n * 4, 64)
    rounds = 1 if args.smoke else args.rounds
    burn_n = 20_000 if args.smoke else calibrate(0.05)
    kinds = ["thread", "process"] + ([] if args.no_ray else ["ray"])
    executors = {
        "thread": trioflow.ThreadExecutor(),
        "process": trioflow.ProcessExecutor(),
        "ray": trioflow.RayExecutor(init_options={"num_cpus": os.cpu_count() or 2}),
    }
    started = time.perf_counter()
    if True:
        async with trioflow.open_runtime(executors={k: executors[k] for k in kinds}):
            for kind in kinds:  # the runtime enters each executor on first use
                t0 = time.perf_counter()
                await in_graph(lambda kind=kind: per_call(node_caller(kind), 1))
                print(f"  first node on {kind:8} {time.perf_counter() - t0:6.2f} s (start-up)")
            print(
                f"\nround trip (1 in flight, n={n1}) and throughput (64 in flight, n={n64}), "
                f"best of {rounds} interleaved rounds"
            )
            print(
                f"  {'executor':9} {'path':18} {'round trip':>12} {'vs hand':>8} "
                f"{'calls/s':>10} {'vs hand':>8}"
            )
            for kind in kinds:
                ex = executors[kind]
                hand: Callable[[int], Awaitable[int]]
                if kind == "thread":

                    async def hand(x: int) -> int:
                        return int(await trio.to_thread.run_sync(noop, x))

                elif kind == "process":
                    ctx = ex._context
                    limiter = trio.CapacityLimiter(os.cpu_count() or 1)

                    async def hand(x: int, ctx: Any = ctx, limiter: Any = limiter) -> int:
                        return int(
                            await ctx.run_sync(noop, x, kill_on_cancel=True, limiter=limiter)
                        )

                else:
                    hand = ray_by_hand()

                async def via_executor(x: int, ex: Any = ex) -> int:
                    return int(await ex.run(noop, x))

                node = node_caller(kind)
                for call in (hand, via_executor):  # warm up: workers started, code imported
                    await per_call(call, 3)
                await in_graph(lambda node=node: per_call(node, 3))
                paths = {
                    "by hand": (hand, None),
                    "trioflow executor": (via_executor, None),
                    "trioflow node": (node, in_graph),
                }
                best: dict[str, list[float]] = {p: [math.inf, 0.0] for p in paths}
                for _ in range(rounds):  # interleaved rounds, best of each: load is noisy
                    for path, (call, wrap) in paths.items():
                        if wrap is None:
                            rt, tp = await per_call(call, n1), await throughput(call, n64)
                        else:
                            rt = await wrap(lambda call=call: per_call(call, n1))
                            tp = await wrap(lambda call=call: throughput(call, n64))
                        best[path][0] = min(best[path][0], rt)
                        best[path][1] = max(best[path][1], tp)
                rows = [(path, rt, tp) for path, (rt, tp) in best.items()]
                base_rt, base_tp = rows[0][1], rows[0][2]
                for path, rt, tp in rows:
                    print(
                        f"  {kind:9} {path:18} {rt * 1e6:9.0f} us {rt / base_rt:7.2f}x "
                        f"{tp:10.0f} {tp / base_tp:7.2f}x"
                    )

            print(f"\nCPU-bound graph: {cpu_nodes} nodes x burn({burn_n}) (~50 ms each)")
            walls = {}
            expected = burn(burn_n)
            for kind in ("thread", "process"):
                tool = trioflow.tool(outputs=["y"], name=f"burn_{kind}", executor=kind)(burn)

                async def body(tool: Any = tool) -> list[int]:
                    return [r["y"] for r in await trioflow.map(tool, [burn_n] * cpu_nodes)]

                t0 = time.perf_counter()
                out = await in_graph(body)
                walls[kind] = time.perf_counter() - t0
                assert out == [expected] * cpu_nodes
                print(f"  {kind:8} {walls[kind]:7.2f} s  trioflow graph")
            # The same work driven by hand, as a control for what this machine gives processes.
            ctx, limiter = executors["process"]._context, trio.CapacityLimiter(os.cpu_count() or 1)
            for kind in ("thread", "process"):
                got: list[int] = []

                async def one(kind: str = kind, got: list[int] = got) -> None:
                    if kind == "thread":
                        got.append(await trio.to_thread.run_sync(burn, burn_n))
                    else:
                        got.append(await ctx.run_sync(burn, burn_n, limiter=limiter))

                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(cpu_nodes):
                        nursery.start_soon(one)
                walls[f"{kind} by hand"] = time.perf_counter() - t0
                assert got == [expected] * cpu_nodes
                print(f"  {kind:8} {walls[f'{kind} by hand']:7.2f} s  by hand")
            print(
                f"  process is {walls['thread'] / walls['process']:.2f}x faster than thread "
                f"(by hand: {walls['thread by hand'] / walls['process by hand']:.2f}x); "
                f"CPUs usable here: {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.1f}"
            )

            print("\ncancel -> return (a call cancelled 0.2 s into 3 s of work)")
            cases = [
                ("thread", sleep_loop, "waits for the thread"),
                ("process", sleep_loop, "worker killed"),
            ]
            if not args.no_ray:
                cases += [
                    ("ray", sleep_loop, "interrupted between bytecodes"),
                    ("ray", sleep_blocking, "blocked in C: worker killed after 1 s"),
                ]
            for kind, fn, how in cases:
                waited = await cancel_to_return(executors[kind], fn, 3.0 if not args.smoke else 1.0)
                print(f"  {kind:8} {fn.__name__:15} {waited * 1000:8.1f} ms  ({how})")
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


def calibrate(seconds: float) -> int:
    n = 100_000
    t0 = time.perf_counter()
    burn(n)
    return max(1, int(n * seconds / (time.perf_counter() - t0)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it still runs")
    parser.add_argument("--n", type=int, default=200, help="calls per round-trip measurement")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    parser.add_argument(
        "--no-ray", action="store_true", help="skip Ray (it takes seconds to start)"
    )
    arguments = parser.parse_args()
    header("bench_executors: trioflow on thread / process / Ray against each driven by hand")
    print(f"load: {os.getloadavg()}")
    trio.run(main, arguments)
    sys.exit(0)
