"""A 2,021-node run to crash: `python tests/crash_run.py STORE RUN_ID KIND LOG [--resume]`.

KIND is `graphify` (1,900 squares, 100 partial sums of 19, one total) or `graph_fn` (the same
calls made by a reactive body, through `trioflow.map` and nested graph_fns). Every tool appends
its node's key to LOG (the file named by the `CRASH_LOG` variable, so it is not a run input)
right before it returns, so a test knows which nodes ran in which attempt. Prints the outputs
as JSON on success; exits 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys

import trio

import trioflow

N = 1900
GROUP = 19


def _log(key: str) -> None:
    path = os.environ.get("CRASH_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{key}\n".encode())  # one write, appended atomically
        finally:
            os.close(fd)


DELAY = float(os.environ.get("CRASH_DELAY", "0.004"))


@trioflow.tool(outputs=["out"])
async def square(i: int) -> int:
    await trio.sleep(DELAY)
    _log(f"square:{i}")
    return i * i


@trioflow.tool(outputs=["out"])
async def add(xs: list[int], label: str) -> int:
    await trio.sleep(DELAY)
    _log(f"add:{label}")
    return sum(xs)


@trioflow.graphify(outputs=["total", "parts"])
def static_sums(n: int) -> dict[str, object]:
    squares = [square(i=i) for i in range(n)]
    parts = [
        add(xs=[s.out for s in squares[k : k + GROUP]], label=str(k)) for k in range(0, n, GROUP)
    ]
    total = add(xs=[p.out for p in parts], label="total")
    return {"total": total.out, "parts": [p.out for p in parts]}


@trioflow.graph_fn(outputs=["out"])
async def part(start: int, stop: int) -> int:
    squares = await trioflow.map(square, range(start, stop))
    result = await add(xs=[s["out"] for s in squares], label=str(start))
    return result["out"]


@trioflow.graph_fn(outputs=["total", "parts"])
async def reactive_sums(n: int) -> dict[str, object]:
    calls = [lambda k=k: part(start=k, stop=min(k + GROUP, n)) for k in range(0, n, GROUP)]
    parts = [p["out"] for p in await trioflow.gather(*calls)]
    total = await add(xs=parts, label="total")
    return {"total": total["out"], "parts": parts}


def main(argv: list[str]) -> int:
    store_path, run_id, kind = argv[:3]
    resume = "--resume" in argv
    target = static_sums if kind == "graphify" else reactive_sums
    store = trioflow.SQLiteStore(store_path)
    try:
        outputs = trioflow.run(
            target,
            inputs={"n": N},
            store=store,
            run_id=run_id,
            resume=resume,
            max_concurrency=8,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
