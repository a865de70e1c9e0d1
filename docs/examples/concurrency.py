"""graph_fn concurrency: a capped fan-out, a streaming map, and a nested graph, in Trio."""

import math

import trio
import trio.testing

import trioflow

running = 0
peak = 0


@trioflow.tool(outputs=["y"])
async def fetch(url: str) -> str:
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        await trio.sleep(1)  # virtual time below: this costs nothing
        return url.upper()
    finally:
        running -= 1


@trioflow.graph_fn(name="crawl", outputs=["pages"])
async def crawl(urls: list[str]) -> list[str]:
    # map streams: capacity is taken before each task is spawned.
    results = await trioflow.map(fetch, urls)
    return [r["y"] for r in results]


@trioflow.graph_fn(name="two_sites", outputs=["pages"], max_concurrency=3)
async def two_sites(a: list[str], b: list[str]) -> list[str]:
    # Nested graphs share this run's limiter: concurrency does not multiply.
    left, right = await trioflow.gather(crawl(urls=a), crawl(urls=b))
    return left["pages"] + right["pages"]


async def main() -> None:
    urls = [f"u{i}" for i in range(6)]
    with trio.fail_after(60):
        out = await trioflow.run_async(two_sites, {"a": urls, "b": urls})
    print(out["pages"][:3], "peak", peak, "time", trio.current_time())
    assert peak == 3 and trio.current_time() == 4.0  # 12 one-second calls, 3 at a time

    # math.inf lifts the cap; a run's max_concurrency wins over the decorator's.
    with trio.fail_after(60):
        await trioflow.run_async(two_sites, {"a": urls, "b": urls}, max_concurrency=math.inf)
    assert peak == 12


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
