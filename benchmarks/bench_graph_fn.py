"""graph_fn overhead: a 10,000-call fan-out and a 1,000-call chain against hand-written Trio.

The hand-written programs do the same work in the same process with a nursery and a
`trio.CapacityLimiter`: (a) every task spawned up front, each waiting on the limiter, and
(b) capacity acquired before each spawn (the stronger floor, which trioflow's gather also uses).
Each case checks its own answer.

    python benchmarks/bench_graph_fn.py [--smoke]
"""

from __future__ import annotations

import argparse
import functools

import trio
from _harness import header, report, timed

import trioflow


async def inc_plain(x: int) -> int:
    return x + 1


inc = trioflow.tool(outputs=["y"], name="inc")(inc_plain)


@trioflow.graph_fn(name="fan_out", outputs=["total"])
async def fan_out(n: int) -> int:
    results = await trioflow.gather(*(inc(x=i) for i in range(n)))
    return sum(r["y"] for r in results)


@trioflow.graph_fn(name="fan_out_map", outputs=["total"])
async def fan_out_map(n: int) -> int:
    results = await trioflow.map(inc, range(n))
    return sum(r["y"] for r in results)


@trioflow.graph_fn(name="chain", outputs=["x"])
async def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = (await inc(x=x))["y"]
    return x


async def hand_fan_out_parked(n: int, cap: int) -> int:
    limiter = trio.CapacityLimiter(cap)
    results = [0] * n

    async def one(i: int) -> None:
        async with limiter:
            results[i] = await inc_plain(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return sum(results)


async def hand_fan_out_acquire_first(n: int, cap: int) -> int:
    limiter = trio.CapacityLimiter(cap)
    results = [0] * n

    async def one(i: int) -> None:
        try:
            results[i] = await inc_plain(i)
        finally:
            limiter.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire_on_behalf_of(i)
            nursery.start_soon(one, i)
    return sum(results)


async def hand_chain(n: int, cap: int) -> int:
    limiter = trio.CapacityLimiter(cap)
    x = 0
    for _ in range(n):
        async with limiter:
            x = await inc_plain(x)
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args()
    n_fan, n_chain, repeat = (200, 50, 1) if args.smoke else (10_000, 1_000, 5)
    header(__doc__.splitlines()[0])
    for cap in (4, 64):
        expect = n_fan * (n_fan + 1) // 2
        rows = []
        for name, fn in [
            ("hand-written: spawn all, park on limiter", hand_fan_out_parked),
            ("hand-written: acquire before spawn", hand_fan_out_acquire_first),
        ]:
            seconds, answer = timed(functools.partial(fn, n_fan, cap), repeat)
            assert answer == expect, (name, answer)
            rows.append((name, seconds))
        for name, graph in [("trioflow gather", fan_out), ("trioflow map", fan_out_map)]:
            run = functools.partial(trioflow.run_async, graph, {"n": n_fan}, max_concurrency=cap)
            seconds, answer = timed(run, repeat)
            assert answer == {"total": expect}, (name, answer)
            rows.append((name, seconds))
        report(f"fan-out, max_concurrency={cap}", n_fan, rows, floor=rows[1][0])

    rows = []
    seconds, answer = timed(functools.partial(hand_chain, n_chain, 4), repeat)
    assert answer == n_chain
    rows.append(("hand-written: async with limiter per call", seconds))
    run = functools.partial(trioflow.run_async, chain, {"n": n_chain})
    seconds, answer = timed(run, repeat)
    assert answer == {"x": n_chain}
    rows.append(("trioflow chain of awaited calls", seconds))
    report("chain", n_chain, rows, floor=rows[0][0])


if __name__ == "__main__":
    main()
