"""A progress line from run events: counts per state, updated as nodes finish."""

from __future__ import annotations

from collections import Counter

import trio

import trioflow


@trioflow.tool(outputs=["y"])
async def square(x: int) -> int:
    await trio.sleep(0.001 * x)
    return x * x


@trioflow.graph_fn(name="squares", outputs=["total"], max_concurrency=4)
async def squares(n: int) -> int:
    results = await trioflow.map(square, range(n))
    return sum(r["y"] for r in results)


class ProgressLine:
    """A listener: it must not block, so it only counts and prints one short line."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.lines: list[str] = []

    def __call__(self, event: trioflow.RunEvent) -> None:
        if event.kind == "node_finished" and event.state is not None:
            self.states[event.state.value] += 1
        elif event.kind == "run_finished":
            done = self.states["DONE"]
            self.lines.append(f"{event.run_id}: {done}/{event.known} done, {event.state}")


if __name__ == "__main__":
    progress = ProgressLine()
    outputs = trioflow.run(squares, inputs={"n": 20}, on_event=progress, run_id="demo")
    assert outputs == {"total": sum(x * x for x in range(20))}
    assert progress.lines == ["demo: 20/20 done, DONE"]
    print(progress.lines[-1])
