"""The same kind of graph on Ray: one changed line sends every "process" tool to a cluster."""

import hashlib
from typing import Any

import trioflow


@trioflow.tool(outputs=["digest"], executor="process")  # the tool still says "process"
def crunch(seed: int, rounds: int) -> str:
    data = str(seed).encode()
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()
    return data.hex()[:12]


@trioflow.graphify(name="crunch_all", outputs=["digests"])
def crunch_all(seeds: Any) -> Any:
    return trioflow.map(crunch, seeds, rounds=20_000).digest


def main() -> None:
    # address=None: a private local cluster bound to 127.0.0.1, started when first used and
    # shut down when the run ends. On a real cluster: trioflow.RayExecutor(address="auto").
    cluster = trioflow.RayExecutor(init_options={"num_cpus": 2})
    result = trioflow.run(
        crunch_all,
        inputs={"seeds": list(range(8))},
        executors={"process": cluster},  # <- the one changed line
        record=True,
    )
    print(len(result.outputs["digests"]), "digests, first", result.outputs["digests"][0])
    assert {n.executor for n in result.record.nodes.values() if n.tool == "crunch"} == {"process"}


if __name__ == "__main__":
    main()
