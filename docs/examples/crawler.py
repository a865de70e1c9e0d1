"""A polite crawler: at most 4 fetches at once in the runtime, 2 requests a second per host."""

import math
from urllib.parse import urlsplit

import trio
import trio.testing

import trioflow
from trioflow import RateLimit

HOSTS = ["a.example", "b.example", "c.example"]
starts: dict[str, list[float]] = {}
running = peak = 0


@trioflow.tool(
    outputs=["page"],
    rate_limit="per_host",
    rate_key=lambda url: urlsplit(url).hostname,  # one bucket per host
    retry=trioflow.Retry(attempts=3, retry_on=ConnectionError),  # each attempt takes a turn
    timeout=5,  # per attempt, counted from the turn, not from the wait
)
async def fetch(url: str) -> str:
    global running, peak
    host = urlsplit(url).hostname or ""
    starts.setdefault(host, []).append(trio.current_time())
    running += 1
    peak = max(peak, running)
    try:
        await trio.sleep(0.25)  # a fake network; virtual time below: this costs nothing
        return f"<html>{url}</html>"
    finally:
        running -= 1


@trioflow.graph_fn(name="crawl", outputs=["pages"])
async def crawl(urls: list[str]) -> list[str]:
    return [r["page"] for r in await trioflow.map(fetch, urls)]


async def main() -> None:
    urls = [f"https://{host}/{i}" for i in range(4) for host in HOSTS]
    limits = {"per_host": RateLimit(2, per=1.0, burst=2)}
    with trio.fail_after(60):
        async with trioflow.open_runtime(max_concurrency=4, rate_limits=limits):
            result = await trioflow.run_async(
                crawl, {"urls": urls}, max_concurrency=math.inf, record=True
            )
    assert len(result.outputs["pages"]) == 12 and peak == 4
    for host in HOSTS:
        print(host, "started at", starts[host])
    # Per host: a burst of two, then one every 0.5 s. b and c start their second page at 0.25,
    # when the first four fetches free their slots; a's third waits for its turn at 0.5,
    # holding its slot (the turn is taken after the slot, so starts keep their spacing).
    assert starts == {
        "a.example": [0, 0, 0.5, 1.0],
        "b.example": [0, 0.25, 0.5, 1.0],
        "c.example": [0, 0.25, 0.5, 1.0],
    }
    # NodeRecord.waited: seconds each fetch waited for a slot and for its turn, together
    waited = sorted(rec.waited for rec in result.record.nodes.values())
    print("waited:", waited, "done at", trio.current_time())
    assert waited == [0] * 4 + [0.25, 0.25, 0.5, 0.5, 0.5, 1, 1, 1]
    assert trio.current_time() == 1.25


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
