"""A CPU-bound tool on local worker processes: the same graph, one core per worker."""

import hashlib
import time
from typing import Any

import trioflow


@trioflow.tool(outputs=["digest"], executor="process")  # runs in a worker process
def crunch(seed: int, rounds: int) -> str:
    data = str(seed).encode()
    for _ in range(rounds):  # pure-Python CPU work: threads would take turns on the GIL
        data = hashlib.sha256(data).digest()
    return data.hex()[:12]


@trioflow.tool(outputs=["report"])
async def summarize(digests: list[str]) -> str:
    return f"{len(digests)} digests, first {digests[0]}"


@trioflow.graphify(name="crunch_all", outputs=["report"])
def crunch_all(seeds: Any) -> Any:
    digests = trioflow.map(crunch, seeds, rounds=20_000)  # one node per seed
    return summarize(digests=digests.digest).report


def main() -> None:
    started = time.perf_counter()
    result = trioflow.run(crunch_all, inputs={"seeds": list(range(8))}, record=True)
    print(result.outputs["report"], f"in {time.perf_counter() - started:.2f}s")
    executors = {n.executor for n in result.record.nodes.values() if n.tool == "crunch"}
    assert executors == {"process"}


# Worker processes re-import this module: without the guard, each would run main() again.
if __name__ == "__main__":
    main()
