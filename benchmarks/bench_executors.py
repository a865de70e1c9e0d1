"""Executors: what trioflow adds to thread / process / Ray, and what processes buy for CPU work.

For each executor, the same trivial call three ways, all in one Trio run with the executors
already warm:
  - by hand: the executor driven directly from Trio (`trio.to_thread.run_sync`,
    trio-parallel's `run_sync`, a Ray object ref's future bridged into Trio with a TrioToken);
  - trioflow executor: `await executor.run(fn, ...)` (shipping wrapper and error transport);
  - trioflow node: a `@tool(executor=key)` awaited in a graph_fn (the whole node: ledger,
    events, capacity, shipping check);
  - trioflow map (64 in flight only): `trioflow.map(tool, range(n))`, the way a graph_fn fans
    out: the run's 64 workers pull the calls (the other paths spawn a task per call).
Like with like: the same function and argument, the same harness (one call in flight, or 64
tasks in flight with a task per call), the same concurrency (threads: no cap below the 64 in
flight on either side — Trio's default of 40 threads would cap the hand-driven side only;
processes: one worker per CPU on both sides), wall time and this process's CPU time (worker
threads included, worker processes not). The machine is shared and its speed drifts, so the
paths take turns inside one run: call by call at 1 in flight (mean per call, preempted calls
left out), batch by batch at 64 (median batch; the ratio is the median of each batch's ratio
to the hand-driven batch of its turn). Then a CPU-bound graph (64 nodes x ~50 ms of pure
Python) on "thread" vs "process", each next to the same work driven by hand (the four take
turns; best of two), and the time from cancel to return per executor. Each case checks its own
answer.

    python benchmarks/bench_executors.py [--smoke] [--no-ray] [--rounds N] [--n N]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from _harness import header

# Measure this checkout's trioflow (a worktree's), not whichever one the venv has installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

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


Call = Callable[[int], Awaitable[int]]


async def per_call(call: Call, n: int) -> tuple[float, float]:
    """Wall and CPU seconds per call, one call in flight."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        assert await call(i) == i
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


async def in_flight(call: Call, n: int, width: int = 64) -> tuple[float, float]:
    """Wall and CPU seconds per call with `width` calls in flight (a task per call)."""
    limiter = trio.CapacityLimiter(width)
    got: list[int] = []

    async def one(i: int) -> None:
        async with limiter:
            got.append(await call(i))

    wall, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire()  # capacity before spawn, as trioflow does
            limiter.release()
            nursery.start_soon(one, i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert sorted(got) == list(range(n))
    return wall / n, cpu / n


async def alternate(paths: dict[str, Call], n: int) -> dict[str, tuple[float, float]]:
    """Mean wall and CPU seconds per call, one in flight, the paths taking turns call by call.

    A call more than 5x slower than its path's median was preempted by another process (the
    machine is shared) and is left out; anything trioflow does now and then (a yield every
    millisecond, a collection) is far below that and stays in."""
    times: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
    order = list(paths.items())
    clock, cpu_clock = time.perf_counter, time.process_time
    for i in range(n):
        k = i % len(order)
        for path, call in order[k:] + order[:k]:
            wall, cpu = clock(), cpu_clock()
            got = await call(i)
            times[path].append((clock() - wall, cpu_clock() - cpu))
            assert got == i
    means = {}
    for path, pairs in times.items():
        cut = 5 * statistics.median(wall for wall, _ in pairs)
        kept = [(wall, cpu) for wall, cpu in pairs if wall <= cut]
        means[path] = (
            statistics.fmean(wall for wall, _ in kept),
            statistics.fmean(cpu for _, cpu in kept),
        )
    return means


Batch = Callable[[int], Awaitable[tuple[float, float]]]


async def alternate_wide(
    paths: dict[str, Batch], n: int, batches: int
) -> dict[str, tuple[float, float, float, float]]:
    """Wall and CPU seconds per call with 64 in flight, the paths taking turns batch by batch
    (the order rotated): the median batch of each path, and the median of each batch's ratio
    to the hand-driven batch of its turn (machine speed drifts between turns more than
    within one)."""
    got: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
    order = list(paths.items())
    for b in range(batches):
        k = b % len(order)
        for path, batch in order[k:] + order[:k]:
            got[path].append(await batch(n))
    hand = got[order[0][0]]
    found = {}
    for path, pairs in got.items():
        ratios = [(w / hw, c / hc) for (w, c), (hw, hc) in zip(pairs, hand, strict=True)]
        found[path] = (*median_of(pairs), *median_of(ratios))
    return found


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


def mapped(key: str) -> Batch:
    """A batch of n calls as trioflow runs a fan-out: `trioflow.map` over the run's
    `max_concurrency` (64) workers, which pull the calls in order (no task per call)."""
    tool = trioflow.tool(outputs=["y"], name=f"noop_{key}", executor=key)(noop)

    async def batch(n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        got = await trioflow.map(tool, range(n))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert [r["y"] for r in got] == list(range(n))
        return wall / n, cpu / n

    return batch


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
    cpu_rounds = 1 if args.smoke else 2
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
                f"\nper-call wall and CPU time (this process, worker threads included), "
                f"1 in flight ({n1 * rounds} calls each, alternating call by call) and 64 in "
                f"flight ({n64 * rounds} calls each, alternating in {rounds} batches); "
                f"load {os.getloadavg()[0]:.1f}"
            )
            print(
                f"  {'executor':8} {'in flight':>9} {'path':18} {'wall':>9} {'vs hand':>8} "
                f"{'CPU':>9} {'vs hand':>8}"
            )
            for kind in kinds:
                ex = executors[kind]
                hand: Call
                if kind == "thread":
                    # The same concurrency as ThreadExecutor: no cap below the calls in flight
                    # (Trio's default limiter would hold the hand-driven side to 40 threads).
                    threads = trio.CapacityLimiter(math.inf)

                    async def hand(x: int, threads: Any = threads) -> int:
                        return int(await trio.to_thread.run_sync(noop, x, limiter=threads))

                elif kind == "process":
                    # The same pool and the same number of workers as ProcessExecutor.
                    ctx = ex._context
                    workers = trio.CapacityLimiter(os.cpu_count() or 1)

                    async def hand(x: int, ctx: Any = ctx, workers: Any = workers) -> int:
                        return int(
                            await ctx.run_sync(noop, x, kill_on_cancel=True, limiter=workers)
                        )

                else:
                    hand = ray_by_hand()

                async def via_executor(x: int, ex: Any = ex) -> int:
                    return int(await ex.run(noop, x))

                node = node_caller(kind)
                # "by hand, again" is the same program as "by hand", taking its own turns: how
                # far it is from 1.00x is the noise floor of the comparison on this machine.
                paths: dict[str, Call] = {
                    "by hand": hand,
                    "by hand, again": hand,
                    "trioflow executor": via_executor,
                    "trioflow node": node,
                }
                # All in one graph_fn run, so that the paths alternate call by call (1 in
                # flight) or batch by batch (64): the machine's speed drifts (other processes),
                # and interleaving gives each path the same share of it. Only `node` makes
                # nodes; the others are plain awaits in the body.
                for call in paths.values():  # warm up: workers started, code imported
                    await in_graph(lambda call=call: in_flight(call, 64))
                one = await in_graph(lambda paths=paths: alternate(paths, n1 * rounds))
                batches: dict[str, Batch] = {
                    path: functools.partial(in_flight, call) for path, call in paths.items()
                }
                batches["trioflow map"] = mapped(kind)
                wide = await in_graph(lambda b=batches: alternate_wide(b, n64, rounds))
                base_wall, base_cpu = one["by hand"]
                rows = [
                    (1, path, wall, wall / base_wall, cpu, cpu / base_cpu)
                    for path, (wall, cpu) in one.items()
                ] + [(64, path, w, w_x, c, c_x) for path, (w, c, w_x, c_x) in wide.items()]
                for width, path, wall, wall_x, cpu, cpu_x in rows:
                    print(
                        f"  {kind:8} {width:9} {path:18} {wall * 1e6:6.1f} us "
                        f"{wall_x:7.2f}x {cpu * 1e6:6.1f} us {cpu_x:7.2f}x"
                    )

            print(
                f"\nCPU-bound graph: {cpu_nodes} nodes x burn({burn_n}) (~50 ms each); "
                f"best of {cpu_rounds}, the four cases taking turns"
            )
            expected = burn(burn_n)
            # The same work driven by hand, as a control for what this machine gives processes.
            ctx, limiter = executors["process"]._context, trio.CapacityLimiter(os.cpu_count() or 1)
            cpu_cases: dict[str, Callable[[], Awaitable[list[int]]]] = {}
            for kind in ("thread", "process"):
                tool = trioflow.tool(outputs=["y"], name=f"burn_{kind}", executor=kind)(burn)

                async def body(tool: Any = tool) -> list[int]:
                    return [r["y"] for r in await trioflow.map(tool, [burn_n] * cpu_nodes)]

                async def graph(body: Any = body) -> list[int]:
                    return list(await in_graph(body))

                async def by_hand(kind: str = kind) -> list[int]:
                    got: list[int] = []

                    async def one() -> None:
                        if kind == "thread":
                            got.append(await trio.to_thread.run_sync(burn, burn_n))
                        else:
                            got.append(await ctx.run_sync(burn, burn_n, limiter=limiter))

                    async with trio.open_nursery() as nursery:
                        for _ in range(cpu_nodes):
                            nursery.start_soon(one)
                    return got

                cpu_cases[kind] = graph
                cpu_cases[f"{kind} by hand"] = by_hand
            walls = dict.fromkeys(cpu_cases, math.inf)
            order = list(cpu_cases)
            for turn in range(cpu_rounds):
                for name in order[turn % 4 :] + order[: turn % 4]:
                    t0 = time.perf_counter()
                    out = await cpu_cases[name]()
                    walls[name] = min(walls[name], time.perf_counter() - t0)
                    assert out == [expected] * cpu_nodes
            for name in order:
                how = "by hand" if name.endswith("by hand") else "trioflow graph"
                print(f"  {name.split()[0]:8} {walls[name]:7.2f} s  {how}")
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


def median_of(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return (
        statistics.median(wall for wall, _ in samples),
        statistics.median(cpu for _, cpu in samples),
    )


def calibrate(seconds: float) -> int:
    n = 100_000
    t0 = time.perf_counter()
    burn(n)
    return max(1, int(n * seconds / (time.perf_counter() - t0)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it still runs")
    parser.add_argument(
        "--n", type=int, default=100, help="calls per path and round at 1 in flight (x4 at 64)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds (batches at 64)")
    parser.add_argument(
        "--no-ray", action="store_true", help="skip Ray (it takes seconds to start)"
    )
    arguments = parser.parse_args()
    header("bench_executors: trioflow on thread / process / Ray against each driven by hand")
    print(f"load: {os.getloadavg()}")
    trio.run(main, arguments)
    sys.exit(0)
