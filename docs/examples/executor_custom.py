"""A toy executor of your own: sync tools in threads, at most `n` at a time."""

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import trio

import trioflow


class FewThreads:
    """Runs each call in a Trio worker thread, at most `n` at once (a trioflow.Executor)."""

    ships = False  # the call stays in this process: nothing is pickled

    def __init__(self, n: int) -> None:
        self.n = n

    async def __aenter__(self) -> Self:  # once per runtime, on first use
        self.limiter = trio.CapacityLimiter(self.n)
        return self

    async def __aexit__(self, *exc_info: object) -> None:  # at runtime exit
        return None

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self.limiter)


running, peak = 0, 0
lock = threading.Lock()


@trioflow.tool(outputs=["row"], executor="db")  # a key: the run decides what "db" is
def query(i: int) -> int:
    global running, peak
    with lock:
        running += 1
        peak = max(peak, running)
    time.sleep(0.02)  # a blocking driver call
    with lock:
        running -= 1
    return i * 10


@trioflow.graph_fn(name="report", outputs=["rows"], max_concurrency=8)
async def report(n: int) -> list[int]:
    return [r["row"] for r in await trioflow.map(query, range(n))]


if __name__ == "__main__":
    rows = trioflow.run(report, inputs={"n": 6}, executors={"db": FewThreads(2)})["rows"]
    print(rows, "at most", peak, "at once")
    assert rows == [0, 10, 20, 30, 40, 50] and peak <= 2
